//! A lost controller costs no attempt on AWS either: after a `kill -9` of
//! `infra run`, the next run adopts the steps still running on the nodes
//! (their SSM commands) and collects those that ended meanwhile (their
//! `runtime.json` in the bucket).

use super::*;

/// Kill `infra run` (SIGKILL) once `n` steps have started; returns when
/// the run began and how long its steps took to start.
fn run_and_kill(a: &Aws, phase: &str, n: usize) -> (Instant, Duration) {
    let t0 = Instant::now();
    let mut child = a
        .cmd(&["run", phase, "all"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("every step to start", Duration::from_secs(120), || {
        std::fs::read_to_string(a.p.path().join(format!(".infra/{phase}/journal.jsonl")))
            .unwrap_or_default()
            .matches("\"event\":\"step_started\"")
            .count()
            >= n
    });
    let starting = t0.elapsed();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    (t0, starting)
}

/// Every task succeeded once with attempt 1, started once, nothing re-queued.
fn check_one_attempt_each(a: &Aws, phase: &str, n: usize) {
    let j = journal(&a.p, phase);
    for i in 1..=n {
        let id = format!("{phase}-t{i}");
        let ok: Vec<&Value> = j
            .iter()
            .filter(|e| e["event"] == "succeeded" && e["task"] == id.as_str())
            .collect();
        assert_eq!(ok.len(), 1, "{id}: {j:#?}");
        assert_eq!(ok[0]["attempt"], 1, "{id} kept its first attempt");
        let log = a.p.read(&format!("results/{phase}/{id}/stdout.log"));
        assert_eq!(log.matches(&format!("start {i} on")).count(), 1, "{log}");
        assert!(log.contains(&format!("done {i}")), "{log}");
        assert_eq!(
            a.p.read(&format!("results/{phase}/{id}/out.txt")).trim(),
            i.to_string()
        );
    }
    assert!(
        !j.iter().any(|e| e["event"] == "requeued"),
        "nothing was stopped or re-queued: {j:#?}"
    );
}

#[test]
fn kill_9_of_run_and_a_restart_adopt_the_steps_in_flight_on_aws() {
    let a = Aws::new("adopt");
    sleeper_plan(&a, "ad", "adopting", 4, 20.0, 2, 2);
    ok(&a.infra(&["apply", "ad", "--yes"]), "apply");
    let (t0, starting) = run_and_kill(&a, "ad", 4);
    std::thread::sleep(Duration::from_secs(5));
    let r = a.infra(&["run", "ad", "all"]);
    ok(&r, "the second run");
    let took = t0.elapsed();
    assert!(r.stderr.contains("adopt  ad-t1"), "{}", r.stderr);
    assert!(
        !r.stderr.contains("left running by an earlier run"),
        "no step was stopped:\n{}",
        r.stderr
    );
    check_one_attempt_each(&a, "ad", 4);
    // an uninterrupted run takes its start (until the steps run) and one
    // task length (20 s): at most one task length more
    let bound = starting + Duration::from_secs(20 + 20);
    assert!(took < bound, "took {took:?}, more than {bound:?}");
    ok(&a.infra(&["destroy", "ad", "--all"]), "destroy");
}

#[test]
fn a_step_that_ended_while_no_controller_ran_is_collected_not_run_again_on_aws() {
    let a = Aws::new("adoptend");
    sleeper_plan(&a, "ae", "adoptend", 2, 2.0, 1, 2);
    ok(&a.infra(&["apply", "ae", "--yes"]), "apply");
    run_and_kill(&a, "ae", 2);
    // both steps end and upload with no controller watching
    wait_for("both runtime.json", Duration::from_secs(60), || {
        let v = a.boto(
            "r = s3.list_objects_v2(Bucket=[b['Name'] for b in s3.list_buckets()['Buckets']][0])\n\
             print(json.dumps([o['Key'] for o in r.get('Contents', []) if o['Key'].endswith('runtime.json')]))",
        );
        v.as_array().map(|a| a.len()).unwrap_or(0) >= 2
    });
    let r = a.infra(&["run", "ae", "all"]);
    ok(&r, "the second run");
    check_one_attempt_each(&a, "ae", 2);
    let j = journal(&a.p, "ae");
    let second = j.iter().rposition(|e| e["event"] == "run_started").unwrap();
    assert!(
        !j[second..].iter().any(|e| e["event"] == "dispatched"),
        "nothing was dispatched again: {j:#?}"
    );
    ok(&a.infra(&["destroy", "ae", "--all"]), "destroy");
}

/// The same campaign from a second checkout: the repository's files only,
/// its own HOME, the same account.
fn second_checkout(a: &Aws, phase: &str) -> Aws {
    let b = Aws {
        p: Project::new(),
        acct: a.acct.clone(),
        home: tempfile::tempdir().unwrap(),
    };
    for rel in [
        format!("plans/{phase}.json"),
        "plans/templates/sleeper.json.hbs".to_string(),
    ] {
        b.p.write(&rel, &a.p.read(&rel));
    }
    b
}

#[test]
fn a_second_controller_exits_4_naming_the_holder_of_the_lease() {
    let a = Aws::new("lease");
    sleeper_plan(&a, "ls", "leasing", 2, 8.0, 1, 2);
    ok(&a.infra(&["apply", "ls", "--yes"]), "apply");
    let first = a
        .cmd(&["run", "ls", "all"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = first.id();
    wait_for("the first run's steps", Duration::from_secs(120), || {
        std::fs::read_to_string(a.p.path().join(".infra/ls/journal.jsonl"))
            .unwrap_or_default()
            .contains("\"event\":\"step_started\"")
    });
    let b = second_checkout(&a, "ls");
    let r = b.infra(&["run", "ls", "all"]);
    assert_eq!(r.code, 4, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("ls is controlled by")
            && r.stderr.contains(&format!("(pid {pid}, this machine)")),
        "{}",
        r.stderr
    );
    // --take-over of a lease that is still renewed is refused too
    let r = b.infra(&["run", "ls", "all", "--take-over"]);
    assert_eq!(r.code, 4, "{}\n{}", r.stdout, r.stderr);
    // the same from the first checkout (another process of this machine)
    let r = a.infra(&["run", "ls", "all"]);
    assert_eq!(r.code, 4, "{}\n{}", r.stdout, r.stderr);
    let out = first.wait_with_output().unwrap();
    assert!(out.status.success(), "the first run was not disturbed");
    // its lease is given up at its end
    let v = a.boto(
        "b = [x['Name'] for x in s3.list_buckets()['Buckets']][0]\n\
         r = s3.list_objects_v2(Bucket=b, Prefix='ls/_state/')\n\
         print(json.dumps([o['Key'] for o in r.get('Contents', [])]))",
    );
    assert!(
        !v.as_array()
            .unwrap()
            .iter()
            .any(|k| k.as_str().unwrap().ends_with("lease.json")),
        "{v}"
    );
    // once the first is gone, the second checkout continues the campaign
    // from the bucket's journal, running nothing that completed
    let r = b.infra(&["run", "ls", "all"]);
    ok(&r, "the second checkout's run");
    assert!(
        r.stdout.contains("0 succeeded, 0 failed, 2 already done"),
        "{}\n{}",
        r.stdout,
        r.stderr
    );
    ok(&a.infra(&["destroy", "ls", "--all"]), "destroy");
}
