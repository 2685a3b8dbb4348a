//! A controller that dies (`kill -9` of `infra run`) costs no attempt and
//! no work: the next `infra run` adopts the steps still running and
//! collects those that ended meanwhile (local provider; the same on the
//! emulator is in `aws/adopt.rs`).

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::{journal, one_step_template, Project};

fn wait_for(what: &str, secs: u64, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !ok() {
        assert!(Instant::now() < deadline, "waited for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `n` tasks on one node with `n` slots; each appends a line to
/// `marks/<task>` when it starts, sleeps `secs`, and writes an output.
fn plan(p: &Project, phase: &str, n: usize, secs: u32) {
    p.write(
        "plans/templates/mark.json.hbs",
        &one_step_template(
            &format!(
                "mkdir -p \\\"$INFRA_ROOT/marks\\\" && echo start >> \\\"$INFRA_ROOT/marks/$INFRA_TASK_ID\\\" && sleep {secs} && echo finished && echo 42 > out.txt"
            ),
            "\"outputs\": [\"out.txt\"],",
        ),
    );
    let pats: Vec<String> = (0..n)
        .map(|i| format!("{{\"id\": \"{phase}-{i}\", \"backend\": \"mark\"}}"))
        .collect();
    p.write(
        &format!("plans/{phase}.json"),
        &format!(
            r#"{{"phase": "{phase}", "name": "{phase}",
      "node_groups": {{"cpu": {{"instance_type": "c6i.xlarge", "count": 1, "slots": {n}}}}},
      "layers": [{{"id": "L0", "patterns": [{}]}}]}}"#,
            pats.join(",")
        ),
    );
}

fn count(p: &Project, phase: &str, event: &str) -> usize {
    std::fs::read_to_string(p.path().join(format!(".infra/{phase}/journal.jsonl")))
        .unwrap_or_default()
        .matches(&format!("\"event\":\"{event}\""))
        .count()
}

/// `kill -9` of the run once every task's step has started; returns when
/// the run was started and how long its steps took to start.
fn run_and_kill(p: &Project, phase: &str, n: usize) -> (Instant, Duration) {
    let t0 = Instant::now();
    let mut child = p
        .cmd(&["run", phase, "all"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("every step to start", 30, || {
        count(p, phase, "step_started") >= n
    });
    let starting = t0.elapsed();
    child.kill().unwrap(); // SIGKILL: nothing of infra's own stop runs
    child.wait().unwrap();
    (t0, starting)
}

/// Every task succeeded once, with attempt 1, its step started once.
fn check_one_attempt_each(p: &Project, phase: &str, n: usize) {
    let j = journal(p, phase);
    for i in 0..n {
        let id = format!("{phase}-{i}");
        let ok: Vec<_> = j
            .iter()
            .filter(|e| e["event"] == "succeeded" && e["task"] == id.as_str())
            .collect();
        assert_eq!(ok.len(), 1, "{id}: {j:#?}");
        assert_eq!(ok[0]["attempt"], 1, "{id} kept its first attempt");
        assert_eq!(
            p.read(&format!("marks/{id}")),
            "start\n",
            "{id}'s step started once"
        );
        let rt: serde_json::Value =
            serde_json::from_str(&p.read(&format!("results/{phase}/{id}/runtime.json"))).unwrap();
        assert_eq!(rt["attempts"], 1, "{rt}");
        assert_eq!(rt["status"], "succeeded", "{rt}");
        assert_eq!(p.read(&format!("results/{phase}/{id}/out.txt")), "42\n");
        assert!(p
            .read(&format!("results/{phase}/{id}/stdout.log"))
            .contains("finished"));
    }
    assert!(
        !j.iter().any(|e| e["event"] == "requeued"),
        "nothing was stopped or re-queued: {j:#?}"
    );
}

#[test]
fn kill_9_of_run_and_a_restart_adopt_the_running_steps_locally() {
    let p = Project::new();
    plan(&p, "adl", 4, 20);
    let (t0, starting) = run_and_kill(&p, "adl", 4);
    std::thread::sleep(Duration::from_secs(5));
    let r = p.infra(&["run", "adl", "all"]);
    r.ok();
    let took = t0.elapsed();
    assert!(
        r.stderr.contains("adopt  adl-0") || r.stdout.contains("adopt  adl-0"),
        "{}\n{}",
        r.stdout,
        r.stderr
    );
    assert!(
        !r.stderr.contains("left by an earlier run"),
        "no step was stopped:\n{}",
        r.stderr
    );
    check_one_attempt_each(&p, "adl", 4);
    let j = journal(&p, "adl");
    assert_eq!(
        j.iter().filter(|e| e["event"] == "adopted").count(),
        4,
        "{j:#?}"
    );
    // an uninterrupted run takes its start and one task length (20 s): at
    // most one task length more
    let bound = starting + Duration::from_secs(40);
    assert!(took < bound, "took {took:?}, more than {bound:?}");
}

#[test]
fn a_step_that_ended_while_no_controller_ran_is_collected_not_run_again_locally() {
    let p = Project::new();
    plan(&p, "adf", 2, 2);
    run_and_kill(&p, "adf", 2);
    // the steps end with nobody watching
    wait_for("both steps to end", 30, || {
        (0..2).all(|i| {
            std::fs::read_to_string(
                p.path()
                    .join(format!(".infra/adf/staging/adf-{i}.1/stdout.log")),
            )
            .unwrap_or_default()
            .contains("finished")
        })
    });
    std::thread::sleep(Duration::from_millis(300));
    let r = p.infra(&["run", "adf", "all"]);
    r.ok();
    check_one_attempt_each(&p, "adf", 2);
    let j = journal(&p, "adf");
    let second = j.iter().rposition(|e| e["event"] == "run_started").unwrap();
    assert!(
        !j[second..].iter().any(|e| e["event"] == "dispatched"),
        "nothing was dispatched again: {j:#?}"
    );
}

#[test]
fn a_second_run_of_a_phase_exits_4_naming_the_controller_and_a_stop_request_stops_the_first() {
    let p = Project::new();
    plan(&p, "lsl", 2, 30);
    let first = p
        .cmd(&["run", "lsl", "all"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("INFRA_LEASE_RENEW_SECONDS", "1")
        .spawn()
        .unwrap();
    let pid = first.id();
    wait_for("the steps to start", 30, || {
        count(&p, "lsl", "step_started") >= 2
    });
    let r = p.infra(&["run", "lsl", "all"]);
    assert_eq!(r.code, 4, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("lsl is controlled by")
            && r.stderr.contains(&format!("(pid {pid}, this machine)")),
        "{}",
        r.stderr
    );
    let lease: serde_json::Value = serde_json::from_str(&p.read(".infra/lsl/lease.json")).unwrap();
    assert_eq!(lease["holder"]["pid"], pid);
    assert_eq!(lease["holder"]["where"], "this machine");
    // what `infra stop` writes: the controller stops, its tasks re-queued
    p.write(
        ".infra/lsl/stop.json",
        r#"{"requested_at": "2026-11-27T10:00:00Z", "by": "tester@here"}"#,
    );
    let t = Instant::now();
    let out = first.wait_with_output().unwrap();
    assert!(t.elapsed() < Duration::from_secs(20), "it stopped at once");
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("stopped by `infra stop` (tester@here"),
        "{err}"
    );
    let j = journal(&p, "lsl");
    assert_eq!(
        j.iter().filter(|e| e["event"] == "requeued").count(),
        2,
        "{j:#?}"
    );
    assert_eq!(j.last().unwrap()["event"], "run_finished");
    assert!(!p.exists(".infra/lsl/stop.json"), "the request is removed");
    assert!(!p.exists(".infra/lsl/lease.json"), "the lease is given up");
}

#[test]
fn an_attempt_in_flight_that_the_next_run_does_not_select_is_stopped_and_requeued() {
    let p = Project::new();
    plan(&p, "ads", 2, 8);
    run_and_kill(&p, "ads", 2);
    // only the first task: the second one's step is stopped, and the
    // journal says so (it is not left "in flight" for a later adoption)
    let r = p.infra(&["run", "ads", "ads-0"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let j = journal(&p, "ads");
    let requeued: Vec<_> = j.iter().filter(|e| e["event"] == "requeued").collect();
    assert_eq!(requeued.len(), 1, "{j:#?}");
    assert_eq!(requeued[0]["task"], "ads-1");
    assert!(requeued[0]["reason"]
        .as_str()
        .unwrap()
        .contains("did not select it"));
    assert!(
        r.stderr
            .contains("stopped 1 process group(s) left by an earlier run"),
        "{}",
        r.stderr
    );
    // it runs afresh later, as its next attempt
    p.infra(&["run", "ads", "ads-1"]).ok();
    assert_eq!(p.read("marks/ads-1"), "start\nstart\n");
    let j = journal(&p, "ads");
    let ok = j
        .iter()
        .find(|e| e["event"] == "succeeded" && e["task"] == "ads-1")
        .unwrap();
    assert_eq!(ok["attempt"], 2, "{j:#?}");
}
