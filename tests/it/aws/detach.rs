//! `infra up --detach` on the emulator: the campaign runs on a controller
//! instance in the cloud (the emulator runs its user data, addition 14),
//! with no `infra` process of this machine; afterwards nothing of the phase
//! is billable.

use super::*;

/// Whether the fresh-checkout half of the acceptance runs: it needs the
/// campaign's state in the bucket (issue 15 item 1, another branch). The
/// integrator sets this to true when merging that work.
const STATE_IN_THE_BUCKET: bool = true;

/// `(pid, argv)` of every process whose argv[0] is an `infra` executable.
fn infra_processes() -> Vec<(u32, Vec<String>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let argv: Vec<String> = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if argv.first().is_some_and(|a| a.ends_with("/infra")) {
            out.push((pid, argv));
        }
    }
    out
}

/// The stacks of the account that are not deleted.
fn live_stacks(a: &Aws) -> Vec<String> {
    a.boto(
        "print(json.dumps([s['StackName'] for s in cfn.list_stacks()['StackSummaries'] if s['StackStatus'] != 'DELETE_COMPLETE']))",
    )
    .as_array()
    .unwrap()
    .iter()
    .map(|s| s.as_str().unwrap().to_string())
    .collect()
}

#[test]
fn up_detach_returns_at_once_the_campaign_completes_in_the_cloud_and_leaves_nothing_billable() {
    let a = Aws::new("detach_up");
    sleeper_plan(&a, "det", "detachy", 4, 2.0, 2, 1);
    let ours = env!("CARGO_BIN_EXE_infra");
    let started = Instant::now();
    let r = a.infra(&["up", "det", "--detach"]);
    ok(&r, "up --detach");
    eprintln!(
        "up --detach returned after {:?}\n{}",
        started.elapsed(),
        r.stderr
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "--detach returns within 30 s: {:?}",
        started.elapsed()
    );
    // what it says: the controller's own line of the estimate, and what next
    assert!(
        r.stdout.contains("controller: ") && r.stdout.contains("on demand, $"),
        "{}",
        r.stdout
    );
    for c in ["infra attach det", "infra status det", "infra stop det"] {
        assert!(r.stdout.contains(c), "{}", r.stdout);
    }
    assert!(r.stdout.contains("detachy-det-controller"), "{}", r.stdout);
    // status shows the controller's stack while it is there
    let r = a.infra(&["--json", "status", "det"]);
    ok(&r, "status while detached");
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(
        v["stacks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["role"] == "controller" && s["name"] == "detachy-det-controller"),
        "{v}"
    );
    // from here no `infra` of this machine runs the campaign: only the
    // controller instance's (a copy under the emulator's instance folders)
    let mut seen_controller = false;
    let deadline = Instant::now() + Duration::from_secs(420);
    loop {
        for (pid, argv) in infra_processes() {
            let text = argv.join(" ");
            if argv[0] == ours {
                assert!(
                    !text.contains(&a.p.path().display().to_string()),
                    "an infra of this machine runs the campaign: {pid}: {text}"
                );
            } else if argv[0].contains("/instances/i-") && text.contains("controller --spec") {
                seen_controller = true;
            }
        }
        if !live_stacks(&a).iter().any(|s| s.ends_with("-controller")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the controller did not finish: {:?}\n{}",
            live_stacks(&a),
            a.infra(&["attach", "det"]).stdout
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        seen_controller,
        "the controller instance ran `infra controller`"
    );
    // its output stays in the bucket: the whole campaign, to its end
    let r = a.infra(&["attach", "det"]);
    ok(&r, "attach after the end");
    assert!(
        r.stdout.contains("det: 4 succeeded, 0 failed"),
        "{}\n{}",
        r.stdout,
        r.stderr
    );
    assert!(r.stdout.contains("infra controller: done"), "{}", r.stdout);
    // every result is in the bucket
    let keys = a.boto(
        "b = [x['Name'] for x in s3.list_buckets()['Buckets']][0]\n\
         print(json.dumps(sorted(o['Key'] for o in s3.list_objects_v2(Bucket=b, Prefix='det/results/').get('Contents', []) if o['Key'].endswith('/out.txt'))))",
    );
    assert_eq!(keys.as_array().unwrap().len(), 4, "{keys}");
    // the controller's instance is in the ledger like a node: the budget
    // pays for it (it metered itself from the cloud; `budget` merges that)
    ok(&a.infra(&["budget", "det"]), "budget");
    let ledger = a.p.read(".infra/ledger.jsonl");
    assert!(
        ledger.lines().any(|l| serde_json::from_str::<Value>(l)
            .map(|v| v["group"] == "controller" && v["usd"].as_f64().unwrap_or(0.0) > 0.0)
            .unwrap_or(false)),
        "no controller spend in the ledger:\n{ledger}"
    );
    // nothing of the phase is billable: compute stack deleted, controller
    // terminated and its stack gone; the bucket kept
    let left = a.boto(
        "live = [i['InstanceId'] for r in ec2.describe_instances(Filters=[{'Name': 'tag:infra:project', 'Values': ['detachy']}])['Reservations'] \
                 for i in r['Instances'] if i['State']['Name'] not in ('terminated', 'shutting-down')]\n\
         fleets = [f['FleetId'] for f in ec2.describe_fleets()['Fleets'] if not f['FleetState'].startswith('deleted')]\n\
         ctl = [i['State']['Name'] for r in ec2.describe_instances(Filters=[{'Name': 'tag:infra:role', 'Values': ['controller']}])['Reservations'] for i in r['Instances']]\n\
         buckets = [b['Name'] for b in s3.list_buckets()['Buckets']]\n\
         print(json.dumps({'instances': live, 'fleets': fleets, 'controllers': ctl, 'buckets': buckets}))",
    );
    assert_eq!(left["instances"], json!([]), "{left}");
    assert_eq!(left["fleets"], json!([]), "{left}");
    assert_eq!(left["controllers"], json!(["terminated"]), "{left}");
    assert_eq!(left["buckets"].as_array().unwrap().len(), 1, "{left}");
    let stacks = live_stacks(&a);
    assert_eq!(
        stacks,
        vec!["detachy-base".to_string()],
        "only the base stack (no instance) stays"
    );
    // nobody controls it now
    let r = a.infra(&["--json", "status", "det"]);
    ok(&r, "status");
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(v["controller"].is_null(), "{v}");
    // a fresh checkout (the repository's files only, its own HOME) sees it done
    if STATE_IN_THE_BUCKET {
        let fresh = Aws {
            p: Project::new(),
            acct: a.acct.clone(),
            home: tempfile::tempdir().unwrap(),
        };
        for f in ["plans/det.json", "plans/templates/sleeper.json.hbs"] {
            fresh.p.write(f, &a.p.read(f));
        }
        let r = fresh.infra(&["--json", "status", "det"]);
        ok(&r, "status from a fresh checkout");
        let v: Value = serde_json::from_str(&r.stdout).unwrap();
        assert_eq!(v["counts"]["succeeded"], 4, "{v}");
        let r = fresh.infra(&["results", "det"]);
        ok(&r, "results from a fresh checkout");
        for i in 1..=4 {
            assert!(
                fresh.p.exists(&format!("results/det/det-t{i}/out.txt")),
                "{}",
                r.stderr
            );
        }
    } else {
        eprintln!("fresh checkout part skipped: STATE_IN_THE_BUCKET is false (issue 15 item 1 not merged)");
    }
}

#[test]
fn stop_of_a_detached_aws_campaign_requeues_the_running_tasks_and_tears_everything_down() {
    let a = Aws::new("detach_stop");
    // (the plan writes the seconds as an f64 prints: 313.5, not 313.50)
    let secs: f64 = format!("313.{}", std::process::id() % 1000)
        .parse()
        .unwrap();
    sleeper_plan(&a, "dst", "stopper", 3, secs, 2, 1);
    ok(&a.infra(&["up", "dst", "--detach"]), "up --detach");
    // both nodes busy (the nodes' steps run on this machine)
    let needle = format!("sleep {secs}");
    let running = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
            .filter(|c| {
                String::from_utf8_lossy(c)
                    .replace('\0', " ")
                    .contains(&needle)
            })
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    while running() < 2 {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for two running steps; the controller says:\n{}",
            a.infra(&["attach", "dst"]).stdout
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let t = Instant::now();
    let r = a.infra(&["stop", "dst"]);
    ok(&r, "stop");
    assert!(
        r.stdout.contains("dst: stopped"),
        "{}\n{}",
        r.stdout,
        r.stderr
    );
    assert!(t.elapsed() < Duration::from_secs(240), "{:?}", t.elapsed());
    wait_for("the steps to end", Duration::from_secs(30), || {
        running() == 0
    });
    wait_for(
        "the controller's stack to go",
        Duration::from_secs(120),
        || !live_stacks(&a).iter().any(|s| s.ends_with("-controller")),
    );
    let log = a.infra(&["attach", "dst"]).stdout;
    // the controller's lease keeper or its wrapper saw the request first
    assert!(
        log.contains("stop requested") || log.contains("stopped by `infra stop`"),
        "{log}"
    );
    assert!(log.contains("infra controller: done"), "{log}");
    // the controller's journal: the running tasks re-queued, none lost
    let state = emulator().control("GET", "health", Value::Null)["state_dir"]
        .as_str()
        .unwrap()
        .to_string();
    let journal = std::fs::read_dir(format!("{state}/instances"))
        .unwrap()
        .flatten()
        .map(|e| {
            e.path()
                .join("var/lib/infra-controller/campaign/.infra/dst/journal.jsonl")
        })
        .find(|p| p.is_file())
        .expect("the controller's journal");
    let j: Vec<Value> = std::fs::read_to_string(journal)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let last = j
        .iter()
        .rev()
        .find(|e| e["event"] == "run_finished")
        .unwrap();
    assert_eq!(last["pending"], 3, "{last}");
    assert!(
        j.iter().filter(|e| e["event"] == "requeued").count() >= 2,
        "{j:?}"
    );
    // nothing billable
    let left = a.boto(
        "live = [i['InstanceId'] for r in ec2.describe_instances(Filters=[{'Name': 'tag:infra:project', 'Values': ['stopper']}])['Reservations'] \
                 for i in r['Instances'] if i['State']['Name'] not in ('terminated', 'shutting-down')]\n\
         print(json.dumps(live))",
    );
    assert_eq!(left, json!([]), "{left}");
    assert_eq!(live_stacks(&a), vec!["stopper-base".to_string()]);
    assert!(!a.p.exists(".infra/dst/stop.json"));
}

/// `--detach` puts a controller instance in the cloud for the whole
/// campaign: a budget that pays for the nodes but not for it refuses (exit
/// 3, naming the controller), and nothing is created.
#[test]
fn detach_refuses_when_the_budget_cannot_pay_for_the_controller_too() {
    let a = Aws::new("detach_budget");
    sleeper_plan(&a, "detb", "detbudget", 2, 1.0, 1, 1);
    // a month of one node: the controller's month is what tips it
    let mut v: Value = serde_json::from_str(&a.p.read("plans/detb.json")).unwrap();
    v["estimate"] = json!({"duration": "720h"});
    a.p.write("plans/detb.json", &v.to_string());
    let r = a.infra(&["--json", "plan", "detb"]);
    ok(&r, "plan");
    let nodes: f64 = serde_json::from_str::<Value>(&r.stdout).unwrap()["estimate"]["total_usd"]
        .as_f64()
        .unwrap();
    v["budget"] = json!({"usd": nodes + 1.0});
    a.p.write("plans/detb.json", &v.to_string());
    let r = a.infra(&["up", "detb", "--detach"]);
    assert_eq!(r.code, 3, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("with its controller in the cloud")
            && r.stderr.contains("nothing was started"),
        "{}",
        r.stderr
    );
    assert!(live_stacks(&a).is_empty(), "{:?}", live_stacks(&a));
    // without --detach the same budget pays for the nodes
    let r = a.infra(&["--json", "plan", "detb"]);
    ok(&r, "plan within the budget");
}
