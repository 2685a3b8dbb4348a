//! A run on another provider than the plan's is its own campaign: a local
//! trial of an AWS plan keeps its journal, results and (simulated) spend
//! apart from the AWS campaign's, so `infra budget` never counts it and a
//! later AWS run never skips what only the trial did.

use crate::common::*;
use serde_json::Value;

fn aws_plan(p: &Project) {
    p.write(
        "plans/templates/echo.json.hbs",
        &one_step_template("echo {{pattern_id}}; [ {{pattern_id}} != tr-bad ]", ""),
    );
    p.write(
        "plans/tr.json",
        r#"{"phase": "tr", "name": "trial", "project": "trial", "provider": "aws", "region": "us-east-1",
      "budget": {"usd": 5},
      "node_groups": {"cpu": {"instance_type": "c6i.xlarge", "count": 1, "market": "on-demand"}},
      "layers": [{"id": "L0", "patterns": [
        {"id": "tr-a", "backend": "echo", "estimate": "1s"},
        {"id": "tr-bad", "backend": "echo", "estimate": "1s"}]}]}"#,
    );
}

fn budget(p: &Project, args: &[&str]) -> Value {
    let r = p.infra(args);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    v[0].clone()
}

#[test]
fn a_local_trial_of_an_aws_plan_never_touches_the_aws_campaigns_journal_results_or_budget() {
    let p = Project::new();
    aws_plan(&p);
    let r = p.infra(&["--provider", "local", "run", "tr"]);
    assert_eq!(r.code, 1, "one task fails: {}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("results/tr@local/failed-tasks.csv"),
        "{}",
        r.stdout
    );

    // the trial's state, results and spend are under tr@local
    assert!(p.exists(".infra/tr@local/journal.jsonl"));
    assert!(p.exists("results/tr@local/tr-a/runtime.json"));
    assert!(
        !p.exists(".infra/tr/journal.jsonl"),
        "the AWS campaign has no journal"
    );
    assert!(!p.exists("results/tr"), "nor results");
    let ledger = p.read(".infra/ledger.jsonl");
    assert!(
        !ledger.is_empty() && ledger.lines().all(|l| l.contains("\"phase\":\"tr@local\"")),
        "{ledger}"
    );

    // the AWS campaign's budget counts nothing and knows no task
    let aws = budget(&p, &["--json", "budget", "tr"]);
    assert_eq!(aws["phase"], "tr");
    assert_eq!(aws["metered_usd"].as_f64(), Some(0.0), "{aws}");
    assert_eq!(aws["tasks_done"], 0, "{aws}");
    assert!(
        aws["patterns"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["status"] == "pending"),
        "{aws}"
    );

    // the trial, asked for as such, shows its own
    let trial = budget(&p, &["--json", "--provider", "local", "budget", "tr"]);
    assert_eq!(trial["phase"], "tr@local");
    assert!(trial["metered_usd"].as_f64().unwrap() > 0.0, "{trial}");
    assert_eq!(trial["tasks_done"], 1, "{trial}");

    // and a second trial continues the first: the succeeded task is kept
    let again = p.infra(&["--provider", "local", "run", "tr"]);
    assert_eq!(again.code, 0, "{}\n{}", again.stdout, again.stderr);
    assert!(again.stdout.contains("1 already done"), "{}", again.stdout);
}
