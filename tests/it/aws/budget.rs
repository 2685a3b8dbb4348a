//! The budget on the AWS path: metered spend from the instances' lifetimes
//! and spot prices, the ledger mirrored to the bucket, and a run whose
//! budget runs out midway on the emulator.

use super::*;

/// `n` one-second tasks on two p4d.24xlarge spot nodes, with a small
/// estimate so the gate lets the run start.
fn costly_plan(a: &Aws, phase: &str, project: &str, n: usize, budget: &str) {
    let ids: Vec<String> = (1..=n).map(|i| i.to_string()).collect();
    a.p.write(
        &format!("plans/{phase}.json"),
        &format!(
            r#"{{ "phase": "{phase}", "name": "costly", "project": "{project}", "provider": "aws", "region": "us-east-1",
  "budget": {budget},
  "estimate": {{ "default": "0.1s", "provisioning": "1s", "setup": "0s" }},
  "node_groups": {{ "gpu": {{ "instance_type": "p4d.24xlarge", "count": 2, "market": "spot", "slots": 2 }} }},
  "layers": [ {{ "id": "L0", "grid": {{ "backend": "tick", "id": "{phase}-t{{n}}", "factors": {{ "n": [{}] }} }} }} ] }}"#,
            ids.join(", ")
        ),
    );
    a.p.write(
        "plans/templates/tick.json.hbs",
        r#"{ "outputs": ["out.txt"], "steps": [ {"name": "main", "command": "sleep 1; echo {{n}} > out.txt"} ] }"#,
    );
}

fn ledger(a: &Aws) -> Vec<Value> {
    a.p.read(".infra/ledger.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_run_whose_budget_runs_out_on_aws_stops_dispatching_deletes_the_stack_and_stays_within_one_interval(
) {
    let a = Aws::new("budget_runs_out");
    // $0.05 at the emulator's $4.93/h (two p4d.24xlarge in the cheapest
    // zone) lasts about 36 s from the launch; 120 one-second tasks on 4
    // slots need longer than that
    costly_plan(
        &a,
        "money",
        "budgetaws",
        120,
        r#"{"usd": 0.05, "hard_stop": true}"#,
    );
    ok(&a.infra(&["apply", "money", "--yes"]), "apply");
    let interval = 1.0;
    let out = a
        .cmd(&["run", "money", "all"])
        .env("INFRA_WATCHDOG_SECONDS", interval.to_string())
        .output()
        .unwrap();
    let r = Run::from(out);
    assert_eq!(r.code, 3, "stopped by the budget:\n{}", r.stderr);
    assert!(
        r.stderr.contains("deleting the compute stack"),
        "{}",
        r.stderr
    );
    // dispatching stopped, and the journal says why
    let j = journal(&a.p, "money");
    let last = j.last().unwrap();
    assert_eq!(last["event"], "run_finished");
    assert!(
        last["reason"].as_str().unwrap().starts_with("budget"),
        "{last}"
    );
    let done = j.iter().filter(|e| e["event"] == "succeeded").count();
    assert!(
        done > 0 && done < 120,
        "dispatching stopped midway ({done} done)"
    );
    // the compute stack is gone and no instance of the project runs
    let left = a.boto(
        "st = [s['StackName'] for s in cfn.describe_stacks()['Stacks'] if 'compute' in s['StackName'] and s['StackStatus'] != 'DELETE_COMPLETE']\n\
         inst = [i['InstanceId'] for r in ec2.describe_instances(Filters=[{'Name': 'tag:infra:project', 'Values': ['budgetaws']}])['Reservations'] for i in r['Instances'] if i['State']['Name'] in ('pending', 'running')]\n\
         print(json.dumps({'stacks': st, 'instances': inst}))",
    );
    assert_eq!(left["stacks"], json!([]), "{left}");
    assert_eq!(left["instances"], json!([]), "{left}");
    // metered spend, from the instances' lifetimes and spot prices: over
    // the budget by at most one watchdog interval's worth (plus the time
    // the stack deletion takes to terminate them, which the bill includes)
    let l = ledger(&a);
    assert!(!l.is_empty());
    assert!(
        l.iter()
            .all(|e| e["kind"] == "metered" && e["instance"].is_string()),
        "{l:?}"
    );
    assert!(
        l.iter().all(|e| e["price_source"] == "spot price history"),
        "{l:?}"
    );
    let spent: f64 = l.iter().map(|e| e["usd"].as_f64().unwrap()).sum();
    let per_instance: HashMap<&str, f64> = l
        .iter()
        .map(|e| {
            (
                e["instance"].as_str().unwrap(),
                e["usd_per_hour"].as_f64().unwrap(),
            )
        })
        .collect();
    let hourly: f64 = per_instance.values().sum();
    let deletion = 5.0; // seconds the emulator takes to delete the stack, at most
    let slack = hourly * (interval + deletion) / 3600.0;
    println!("budget $0.05, metered ${spent:.4} at ${hourly:.2}/h, allowed slack ${slack:.4}");
    assert!(
        spent > 0.03,
        "the nodes ran until the budget was nearly spent: {spent}"
    );
    assert!(
        spent <= 0.05 + slack,
        "metered {spent} > budget + slack {slack}"
    );
    // no instance is billed twice for the same time
    for id in per_instance.keys() {
        let mut spans: Vec<(String, String)> = l
            .iter()
            .filter(|e| e["instance"] == *id)
            .map(|e| {
                (
                    e["start"].as_str().unwrap().to_string(),
                    e["end"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        spans.sort();
        for w in spans.windows(2) {
            assert!(w[0].1 <= w[1].0, "overlapping spans for {id}: {spans:?}");
        }
    }
    // each task is charged a slot's share of its own node's metered price,
    // not the catalog's spot median ($8.00/h)
    let metered: Vec<f64> = per_instance.values().copied().collect();
    let mut charged = 0;
    for e in std::fs::read_dir(a.p.path().join("results/money")).unwrap() {
        let Ok(text) = std::fs::read_to_string(e.unwrap().path().join("runtime.json")) else {
            continue;
        };
        let rt: Value = serde_json::from_str(&text).unwrap();
        if rt["status"] != "succeeded" {
            continue;
        }
        let slots = 2.0;
        let per_hour = rt["cost_usd"].as_f64().unwrap() * 3600.0 * slots
            / rt["wall_seconds"].as_f64().unwrap();
        assert!(
            metered.iter().any(|m| (per_hour - m).abs() < 0.03 * m),
            "{} charged at ${per_hour:.3}/h; metered prices {metered:?}",
            rt["task"]
        );
        charged += 1;
    }
    assert_eq!(charged, done);
    // the report says why it stopped, and the next run is refused
    let rep: Value =
        serde_json::from_str(&a.infra(&["budget", "money", "--format", "json"]).stdout).unwrap();
    assert!(
        rep[0]["stopped_by_budget"]
            .as_str()
            .unwrap()
            .starts_with("budget"),
        "{rep}"
    );
    let again = a.infra(&["run", "money", "all"]);
    assert_eq!(again.code, 3, "{}", again.stderr);
    ok(
        &a.infra(&["destroy", "money", "--all", "--delete-results", "--force"]),
        "destroy",
    );
}

#[test]
fn the_ledger_is_mirrored_to_the_bucket_so_a_second_machine_sees_the_spend() {
    let a = Aws::new("ledger_mirror");
    sleeper_plan(&a, "mirror", "mirrorproj", 4, 0.2, 1, 2);
    ok(&a.infra(&["apply", "mirror", "--yes"]), "apply");
    ok(&a.infra(&["run", "mirror", "all"]), "run");
    let mine = ledger(&a);
    assert!(!mine.is_empty());
    let bucket = a.state("mirror")["bucket"].as_str().unwrap().to_string();
    let keys = a.boto(&format!(
        "print(json.dumps([o['Key'] for o in s3.list_objects_v2(Bucket={bucket:?}, Prefix='_ledger/').get('Contents', [])]))"
    ));
    assert!(
        !keys.as_array().unwrap().is_empty(),
        "no ledger object in the bucket"
    );
    // a second machine: the same plan and deployment state, an empty ledger
    let b = Aws {
        p: Project::new(),
        acct: a.acct.clone(),
        home: tempfile::tempdir().unwrap(),
    };
    for f in [
        "plans/mirror.json",
        "plans/templates/sleeper.json.hbs",
        ".infra/mirror/aws-state.json",
    ] {
        b.p.write(f, &a.p.read(f));
    }
    let r = b.infra(&["budget", "mirror", "--format", "json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("merged"), "{}", r.stderr);
    let theirs = ledger(&b);
    let sum = |l: &[Value]| l.iter().map(|e| e["usd"].as_f64().unwrap()).sum::<f64>();
    assert!(
        (sum(&theirs) - sum(&mine)).abs() < 1e-9,
        "{theirs:?} vs {mine:?}"
    );
    let rep: Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(
        rep[0]["metered_usd"].as_f64().unwrap_or(0.0) > 0.0 || r.stdout.contains("metered"),
        "{rep}"
    );
    // pulling again adds nothing
    let r = b.infra(&["budget", "mirror"]);
    assert!(!r.stderr.contains("merged"), "{}", r.stderr);
    assert_eq!(ledger(&b).len(), theirs.len());
    ok(
        &a.infra(&["destroy", "mirror", "--all", "--delete-results", "--force"]),
        "destroy",
    );
    // destroy metered the last span up to the termination
    let after = ledger(&a);
    assert!(
        after.len() > mine.len(),
        "destroy added the tail of the instance's life"
    );
}
