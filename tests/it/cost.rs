//! Estimates, the budget gate, the watchdog, the ledger and the report.

use std::path::Path;

use infra::catalog::Catalog;
use infra::cost::estimate::{
    estimate, verdict, GP3_USD_PER_GB_MONTH, HOURS_PER_MONTH, PUBLIC_IPV4_USD_PER_HOUR,
};
use infra::plan::load::parse_plan;

use crate::common::*;

/// The reference CSV's us-east-1/eu-north-1 spot median for a type.
fn csv_spot_median(instance_type: &str, region: &str) -> f64 {
    let text = std::fs::read_to_string(repo().join("src/catalog/aws-instances.csv")).unwrap();
    let header: Vec<&str> = text.lines().next().unwrap().split(',').collect();
    let col = header
        .iter()
        .position(|h| *h == "spot_usd_hr_median")
        .unwrap();
    text.lines()
        .map(|l| l.split(',').collect::<Vec<_>>())
        .find(|f| f[0] == instance_type && f[1] == region)
        .map(|f| f[col].parse().unwrap())
        .unwrap()
}

#[test]
fn the_statistics_team_estimate_matches_a_hand_computation_and_is_over_1000_usd_in_us_east_1() {
    let path = repo().join("plans/tables.json");
    let plan = parse_plan(&std::fs::read_to_string(&path).unwrap(), &path, &|_| true).unwrap();
    let cat = Catalog::builtin();
    let tasks_dir = tempfile::tempdir().unwrap();
    // estimate from the rendered tasks, as `infra plan` does
    let p = Project::with_examples();
    // refused (exit 3), but the tasks are rendered
    assert_eq!(p.infra(&["plan", "tables"]).code, 3);
    let _ = tasks_dir;
    let tasks: Vec<infra::tasks::TaskDef> = std::fs::read_dir(p.path().join(".infra/tables/tasks"))
        .unwrap()
        .flatten()
        .map(|e| serde_json::from_str(&std::fs::read_to_string(e.path()).unwrap()).unwrap())
        .collect();
    let refs: Vec<&infra::tasks::TaskDef> = tasks.iter().collect();
    let e = estimate(&plan, &refs, &cat, "built-in catalog");
    // by hand: 720 h x (3 c6i.4xlarge + 1 g5.xlarge) at the spot median and
    // 4 public IPv4 addresses, plus 4 x 100 GB of gp3
    let c6i = csv_spot_median("c6i.4xlarge", "us-east-1");
    let g5 = csv_spot_median("g5.xlarge", "us-east-1");
    let hourly = 3.0 * c6i + g5 + 4.0 * PUBLIC_IPV4_USD_PER_HOUR;
    let storage = 4.0 * 100.0 * GP3_USD_PER_GB_MONTH / HOURS_PER_MONTH * 720.0;
    let by_hand = 720.0 * hourly + storage;
    println!("statistics plan: ${hourly:.4}/h, 720 h, by hand ${by_hand:.2}, estimate ${:.2} (worst AZ ${:.2}, on-demand {:?})", e.total_usd, e.total_worst_usd, e.total_on_demand_usd);
    assert_eq!(e.hours, Some(720.0));
    assert!(
        (e.hourly_usd - hourly).abs() < 1e-3,
        "{} vs {hourly}",
        e.hourly_usd
    );
    assert!(
        (e.total_usd - by_hand).abs() < 0.01,
        "{} vs {by_hand}",
        e.total_usd
    );
    assert!(e.total_worst_usd > e.total_usd);
    assert!(
        e.total_on_demand_usd.unwrap() > 2.0 * e.total_usd,
        "on-demand for comparison"
    );
    // the seed's region: over the $1000
    let v = verdict(&plan, &e, 0.0);
    assert!(!v.ok, "{:?}", v.reasons);
    assert!(e.total_usd > 1000.0);
    assert!(
        v.reasons[0].contains("exceeds the remaining budget $1000.00"),
        "{:?}",
        v.reasons
    );
    // `infra plan` says by how much, and what would fit
    let r = p.infra(&["plan", "tables"]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    let over = format!("over by ${:.2}", e.total_usd - 1000.0);
    assert!(r.stdout.contains(&over), "{over} in {}", r.stdout);
    assert!(r.stdout.contains("what would fit:"), "{}", r.stdout);
    assert!(r.stdout.contains("region eu-north-1"), "{}", r.stdout);
    assert!(
        r.stdout.contains("group cpu: 2 node(s) instead of 3"),
        "{}",
        r.stdout
    );
    // each suggestion fits when applied
    let mut north = plan.clone();
    north.region = "eu-north-1".into();
    let en = estimate(&north, &refs, &cat, "built-in catalog");
    assert!(
        en.total_usd < 1000.0 && verdict(&north, &en, 0.0).ok,
        "{}",
        en.total_usd
    );
    let mut fewer = plan.clone();
    fewer.node_groups[0].count = 2;
    assert!(estimate(&fewer, &refs, &cat, "built-in catalog").total_usd < 1000.0);
    // apply is refused the same way, naming what would fit
    let a = p.infra(&["apply", "tables", "--yes"]);
    assert_eq!(a.code, 3);
    assert!(
        a.stderr.contains("what would fit: region eu-north-1"),
        "{}",
        a.stderr
    );
}

fn budget_plan(p: &Project, budget: &str) {
    p.write(
        "plans/templates/work.json.hbs",
        r#"{"steps": [{"name": "work", "command": "sleep 1"}]}"#,
    );
    let pats: Vec<String> = (0..40)
        .map(|i| format!("{{\"id\": \"b-{i:02}\", \"backend\": \"work\"}}"))
        .collect();
    p.write("plans/money.json", &format!(r#"{{"phase": "b", "name": "budget runs out",
      "budget": {budget},
      "node_groups": {{"gpu": {{"instance_type": "p4d.24xlarge", "count": 2, "slots": 2, "gpus": 8}}}},
      "estimate": {{"default": "0.1s"}},
      "layers": [{{"id": "L0", "patterns": [{}]}}]}}"#, pats.join(",")));
}

#[test]
fn the_gate_refuses_a_plan_over_budget_with_exit_3_and_starts_nothing() {
    let p = Project::new();
    budget_plan(&p, r#"{"usd": 0.001}"#);
    let r = p.infra(&["run", "money", "all"]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(
        r.stderr.contains("exceeds the remaining budget"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("budget.usd"),
        "names what to change: {}",
        r.stderr
    );
    assert!(!p.exists("results/money"));
    budget_plan(&p, r#"{"usd": 100, "max_hourly_usd": 30}"#);
    let r = p.infra(&["apply", "money"]);
    assert_eq!(r.code, 3);
    assert!(r.stderr.contains("max_hourly_usd"), "{}", r.stderr);
    assert!(!p.exists(".infra/money/nodes"));
}

#[test]
fn a_forged_negative_entry_in_the_local_ledger_is_refused_instead_of_lowering_the_spend() {
    let p = Project::new();
    // over budget by itself; a ledger entry of -$1000 used to make it fit
    // ("spent $-1000.00 ... -> OK")
    budget_plan(&p, r#"{"usd": 0.001}"#);
    p.write(
        ".infra/ledger.jsonl",
        r#"{"v":1,"phase":"money","provider":"local","node":"n","group":"gpu","instance_type":"p4d.24xlarge","market":"on-demand","start":"2026-01-01T00:00:00.000Z","end":"2026-01-01T01:00:00.000Z","hours":1.0,"usd_per_hour":1.0,"usd":-1000.0,"kind":"simulated"}
"#,
    );
    for args in [
        &["plan", "money"][..],
        &["budget", "money"][..],
        &["apply", "money"][..],
        &["run", "money", "all"][..],
    ] {
        let r = p.infra(args);
        assert_eq!(r.code, 3, "{args:?}: {}{}", r.stdout, r.stderr);
        assert!(
            r.stderr.contains("ledger.jsonl line 1 has usd -1000"),
            "{args:?}: {}",
            r.stderr
        );
    }
    assert!(!p.exists("results/money"));
    assert!(!p.exists(".infra/money/nodes"));
}

#[test]
fn a_run_whose_budget_runs_out_stops_dispatching_destroys_nodes_and_stays_within_one_interval() {
    let p = Project::new();
    // 2 x p4d.24xlarge on demand at catalog prices: about $44/h, so $0.03 lasts about 2.5 s
    budget_plan(&p, r#"{"usd": 0.03, "hard_stop": true}"#);
    let interval = 0.5;
    let out = p
        .cmd(&["run", "money", "all"])
        .env("INFRA_WATCHDOG_SECONDS", interval.to_string())
        .output()
        .unwrap();
    let r = Run::from(out);
    assert_eq!(r.code, 3, "stopped by the budget: {}", r.stderr);
    assert!(r.stderr.contains("budget"), "{}", r.stderr);
    let j = journal(&p, "money");
    let last = j.last().unwrap();
    assert_eq!(last["event"], "run_finished");
    assert!(
        last["reason"].as_str().unwrap().starts_with("budget"),
        "{last}"
    );
    let done = j.iter().filter(|e| e["event"] == "succeeded").count();
    assert!(done < 40, "dispatching stopped ({done} done)");
    assert!(!p.exists(".infra/money/nodes"), "the nodes were destroyed");
    // metered spend: within one watchdog interval's worth of the budget
    let ledger: Vec<serde_json::Value> = p
        .read(".infra/ledger.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let spent: f64 = ledger.iter().map(|e| e["usd"].as_f64().unwrap()).sum();
    let hourly: f64 = ledger
        .iter()
        .map(|e| e["usd_per_hour"].as_f64().unwrap())
        .sum();
    println!(
        "budget $0.03, spent ${spent:.4} at ${hourly:.2}/h, slack ${:.4}",
        hourly * interval / 3600.0
    );
    assert!(
        spent <= 0.03 + hourly * interval / 3600.0 + 1e-9,
        "spent {spent}"
    );
    assert!(spent > 0.0);
    // the report says why it stopped
    let r = p.infra(&["budget", "money", "--format", "json"]);
    let rep: serde_json::Value = serde_json::from_str(&r.ok().stdout).unwrap();
    assert!(rep[0]["stopped_by_budget"]
        .as_str()
        .unwrap()
        .starts_with("budget"));
    // the next run is refused: the remaining budget cannot pay the rest
    let r = p.infra(&["run", "money", "all"]);
    assert_eq!(r.code, 3, "{}", r.stderr);
}

#[test]
fn the_budget_report_in_every_format_after_a_local_campaign() {
    let p = Project::with_examples();
    p.infra(&["run", "quickstart", "all"]).ok();
    let r = p.infra(&["budget", "quickstart"]);
    r.ok();
    assert!(
        r.stdout.contains("estimated") && r.stdout.contains("spent"),
        "{}",
        r.stdout
    );
    let r = p.infra(&["budget", "quickstart", "--format", "json"]);
    let rep: serde_json::Value = serde_json::from_str(&r.ok().stdout).unwrap();
    let q = &rep[0];
    assert_eq!(q["tasks_done"], 5);
    assert!(
        q["metered_usd"].as_f64().unwrap() > 0.0,
        "simulated spend at c6i.xlarge prices"
    );
    assert_eq!(q["groups"][0]["instance_type"], "c6i.xlarge");
    let metered_tasks: f64 = q["patterns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["metered_usd"].as_f64().unwrap())
        .sum();
    assert!(metered_tasks > 0.0, "per-task cost is recorded");
    let rt: serde_json::Value =
        serde_json::from_str(&p.read("results/quickstart/quickstart-L0-sum-1e6/runtime.json"))
            .unwrap();
    assert!(rt["cost_usd"].as_f64().unwrap() > 0.0);
    let r = p.infra(&["budget", "quickstart", "--format", "csv"]);
    assert!(r
        .ok()
        .stdout
        .starts_with("level,phase,group,pattern,status,estimated_usd,spent_usd"));
    assert_eq!(
        r.stdout
            .lines()
            .filter(|l| l.starts_with("pattern,"))
            .count(),
        5
    );
    p.infra(&["budget", "--format", "html", "-o", "budget.html"])
        .ok();
    let html = p.read("budget.html");
    assert!(
        html.contains("<svg") && html.contains("quickstart") && !html.contains("<script"),
        "self-contained"
    );
    assert!(html.contains("cumulative spend"));
}

#[test]
fn catalog_show_prints_a_type_and_suggests_close_names() {
    let p = Project::new();
    let r = p.infra(&["catalog", "show", "p5.48xlarge", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&r.ok().stdout).unwrap();
    assert_eq!(v["instance_types"][0]["details"]["max_efa_interfaces"], 32);
    let r = p.infra(&["catalog", "show", "p5.48xlarg"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("did you mean \"p5.48xlarge\""),
        "{}",
        r.stderr
    );
    let _ = Path::new(".");
}

#[test]
fn a_multi_card_efa_group_adds_the_nat_gateway_to_the_estimate() {
    let text = |efa: bool| {
        format!(
            r#"{{"phase": "n", "name": "nat", "provider": "aws", "region": "us-east-1",
      "estimate": {{"duration": "10h"}},
      "node_groups": {{"gpu": {{"instance_type": "p4d.24xlarge", "count": 2, "efa": {efa}}}}},
      "layers": [{{"id": "L0", "patterns": [{{"id": "n-a", "backend": "x"}}]}}]}}"#
        )
    };
    let cat = Catalog::builtin();
    let path = Path::new("plans/nat.json");
    let with = parse_plan(&text(true), path, &|_| true).unwrap();
    let without = parse_plan(&text(false), path, &|_| true).unwrap();
    let e = estimate(&with, &[], &cat, "built-in catalog");
    let plain = estimate(&without, &[], &cat, "built-in catalog");
    let nat = e
        .groups
        .iter()
        .find(|g| g.instance_type == "NAT gateway")
        .expect("a NAT gateway line");
    // $0.045/h for the gateway and $0.005/h for its address, for 10 h
    assert!((nat.total_usd - 0.5).abs() < 1e-9, "{nat:?}");
    // behind the NAT gateway the nodes have no public address of their own
    // (2 x $0.005/h for 10 h fewer)
    let ipv4 = 2.0 * PUBLIC_IPV4_USD_PER_HOUR * 10.0;
    assert!((e.total_usd - plain.total_usd - (0.5 - ipv4)).abs() < 1e-6);
    assert!(e.groups.iter().all(|g| g.public_ipv4_usd == 0.0), "{e:?}");
    assert!(
        (plain.groups[0].public_ipv4_usd - ipv4).abs() < 1e-9,
        "{plain:?}"
    );
    assert!(plain
        .groups
        .iter()
        .all(|g| g.instance_type != "NAT gateway"));
}

#[test]
fn plan_exits_3_when_the_budget_refuses() {
    let p = Project::new();
    budget_plan(&p, r#"{"usd": 0.001}"#);
    let r = p.infra(&["plan", "money"]);
    assert_eq!(r.code, 3, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("-> REFUSED"), "{}", r.stdout);
    assert!(r.stdout.contains("refused: the estimate"), "{}", r.stdout);
    budget_plan(&p, r#"{"usd": 1000}"#);
    let r = p.infra(&["plan", "money"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
}

/// Two g5.48xlarge in a region the built-in catalog has no price for.
fn unpriced_plan(p: &Project, provider: &str, budget: &str) {
    p.write(
        "plans/templates/work.json.hbs",
        r#"{"steps": [{"name": "work", "command": "true"}]}"#,
    );
    p.write(
        "plans/far.json",
        &format!(
            r#"{{"phase": "far", "name": "unpriced region", "provider": "{provider}", "region": "ap-southeast-2",
      {budget}
      "node_groups": {{"gpu": {{"instance_type": "g5.48xlarge", "count": 2}}}},
      "estimate": {{"default": "3h55m"}},
      "layers": [{{"id": "L0", "patterns": [{{"id": "far-a", "backend": "work"}}]}}]}}"#
        ),
    );
}

#[test]
fn a_region_without_prices_is_refused_not_counted_as_zero() {
    let p = Project::new();
    unpriced_plan(&p, "aws", r#""budget": {"usd": 1000},"#);
    for cmd in ["plan", "apply"] {
        let r = p.infra(&[cmd, "far"]);
        assert_eq!(r.code, 3, "{cmd}: {}\n{}", r.stdout, r.stderr);
        let all = format!("{}{}", r.stdout, r.stderr);
        assert!(
            all.contains("no catalog price for node group(s) gpu (g5.48xlarge) in ap-southeast-2")
                && all.contains("infra catalog refresh --region ap-southeast-2")
                && all.contains("accept_unpriced"),
            "{cmd}: {all}"
        );
    }
    assert!(
        !p.exists(".infra/far/aws-state.json"),
        "nothing was deployed"
    );
    // without a budget too: nothing tells what it would cost
    unpriced_plan(&p, "aws", "");
    assert_eq!(p.infra(&["plan", "far"]).code, 3);
    // the plan can say it accepts them
    unpriced_plan(
        &p,
        "aws",
        r#""budget": {"usd": 1000, "accept_unpriced": true},"#,
    );
    let r = p.infra(&["plan", "far"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("they count as $0"), "{}", r.stdout);
    // a local trial spends nothing: a warning
    unpriced_plan(&p, "local", r#""budget": {"usd": 1000},"#);
    let r = p.infra(&["plan", "far"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
}

#[test]
fn a_finished_campaign_whose_nodes_are_gone_shows_no_burn_rate() {
    let p = Project::new();
    crate::output::mixed_plan(&p, r#""budget": { "usd": 5 },"#);
    let _ = p.infra(&["run", "mixed"]);
    let burn = |p: &Project| {
        let r = p.infra(&["--json", "budget", "mixed"]);
        let v: serde_json::Value = serde_json::from_str(&r.ok().stdout).unwrap();
        v[0]["burn_rate_usd_per_hour"].clone()
    };
    assert!(
        burn(&p).as_f64().is_some_and(|b| b > 0.0),
        "nodes up: {}",
        burn(&p)
    );
    p.infra(&["destroy", "mixed"]).ok();
    assert!(burn(&p).is_null(), "nodes gone: {}", burn(&p));
    let r = p.infra(&["budget", "mixed"]);
    assert!(r.stdout.contains("burn rate -/h"), "{}", r.stdout);
}

#[test]
fn run_of_one_task_does_not_bring_up_nodes_the_budget_refused_for_apply() {
    let p = Project::new();
    // the whole campaign (40 tasks) costs about $0.012, one task about $0.001
    budget_plan(&p, r#"{"usd": 0.005}"#);
    let r = p.infra(&["apply", "money"]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    let r = p.infra(&["run", "money", "b-00"]);
    assert_eq!(
        r.code, 3,
        "run applies what apply refused: {}\n{}",
        r.stdout, r.stderr
    );
    assert!(
        r.stderr.contains("exceeds the remaining budget"),
        "{}",
        r.stderr
    );
    assert!(
        !p.exists(".infra/money/local-nodes.json"),
        "no node was brought up"
    );
    assert!(!p.exists("results/money/b-00"));
}

#[test]
fn run_with_nothing_left_to_run_brings_up_no_nodes() {
    let p = Project::new();
    crate::output::mixed_plan(&p, r#""budget": { "usd": 5 },"#);
    let _ = p.infra(&["run", "mixed"]);
    p.infra(&["destroy", "mixed"]).ok();
    assert!(!p.exists(".infra/mixed/local-nodes.json"));
    let r = p.infra(&["run", "mixed", "mixed-t1", "mixed-t3"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("mixed: 0 succeeded, 0 failed, 1 already done, 1 failed earlier (--retry-failed runs them)"),
        "{}",
        r.stdout
    );
    assert!(
        !p.exists(".infra/mixed/local-nodes.json"),
        "no node was brought up"
    );
    assert!(!r.stderr.contains("applying"), "{}", r.stderr);
}

/// A budget stop's summary adds up with what `status` says afterwards, and
/// a soft stop says the running tasks finish (not that they are stopped).
#[test]
fn a_budget_stops_summary_adds_up_with_status() {
    let p = Project::new();
    p.write(
        "plans/templates/s.json.hbs",
        r#"{"steps": [{"name": "main", "command": "sleep 2"}]}"#,
    );
    p.write(
        "plans/bs.json",
        r#"{"phase": "bs", "name": "budget stop", "provider": "local",
 "budget": {"usd": 0.03, "hard_stop": false},
 "node_groups": {"gpu": {"instance_type": "p4d.24xlarge", "count": 1, "slots": 1}},
 "layers": [{"id": "L0", "grid": {"backend": "s", "id": "bs-{n}", "factors": {"n": [1, 2, 3, 4, 5]}}}]}"#,
    );
    let r = Run::from(
        p.cmd(&["run", "bs", "bs-1", "bs-2", "bs-3", "bs-4"])
            .env("INFRA_WATCHDOG_SECONDS", "1")
            .output()
            .unwrap(),
    );
    assert_eq!(r.code, 3, "a budget stop: {}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr
            .contains("nothing more starts, running tasks finish"),
        "{}",
        r.stderr
    );
    assert!(
        !r.stderr.contains("running tasks are being stopped"),
        "{}",
        r.stderr
    );
    let num = |after: &str| -> usize {
        let i = r
            .stdout
            .find(after)
            .unwrap_or_else(|| panic!("{after:?} in {}", r.stdout));
        r.stdout[..i]
            .rsplit([' ', ','])
            .find(|w| !w.is_empty())
            .unwrap()
            .parse()
            .unwrap()
    };
    let (ok, not_run) = (num(" succeeded"), num(" not run"));
    assert_eq!(ok + not_run, 4, "{}", r.stdout);
    assert!(
        r.stdout
            .contains("1 other task(s) of the phase not selected"),
        "{}",
        r.stdout
    );
    let s: serde_json::Value =
        serde_json::from_str(&p.infra(&["--json", "status", "bs"]).stdout).unwrap();
    assert_eq!(s["counts"]["succeeded"], ok, "{s}");
    assert_eq!(
        s["counts"]["pending"],
        not_run + 1,
        "the one not selected too: {s}"
    );
}
