//! Live logs on the local provider: `infra logs --follow` and `-n`, running
//! tasks in `infra status`, and failures that end with the task's last
//! stderr line.

use std::io::Read;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

/// One local node; the tasks `ids`, each running `command` (JSON-escaped).
fn live_plan(p: &Project, phase: &str, ids: &[&str], command: &str, attempts: u32) {
    let patterns: Vec<String> = ids
        .iter()
        .map(|i| format!(r#"{{"id": "{i}", "backend": "live"}}"#))
        .collect();
    p.write(
        &format!("plans/{phase}.json"),
        &format!(
            r#"{{"phase": "{phase}", "name": "live logs",
  "node_groups": {{ "cpu": {{ "instance_type": "c6i.xlarge", "count": 1, "market": "spot", "slots": 1 }} }},
  "retry": {{ "attempts": {attempts}, "backoff_seconds": 0.2, "backoff_max_seconds": 0.2 }},
  "layers": [{{"id": "L0", "patterns": [{}]}}]}}"#,
            patterns.join(",")
        ),
    );
    p.write(
        "plans/templates/live.json.hbs",
        &one_step_template(command, ""),
    );
}

/// A child's stdout, collected by a thread as it comes.
fn collect(child: &mut std::process::Child) -> Arc<Mutex<String>> {
    let seen = Arc::new(Mutex::new(String::new()));
    let mut out = child.stdout.take().unwrap();
    let s = seen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            s.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    seen
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_exit(child: &mut std::process::Child, timeout: Duration) -> i32 {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn logs_follow_started_before_the_run_shows_new_lines_while_the_task_runs_and_ends_with_it() {
    let p = Project::new();
    live_plan(
        &p,
        "lf",
        &["lf-a"],
        "for i in 1 2 3 4 5 6; do echo line $i; echo err $i >&2; sleep 1; done",
        1,
    );
    p.infra(&["plan", "lf"]).ok();
    // before the task runs: it waits
    let mut follow = p
        .cmd(&["logs", "lf", "lf-a", "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let seen = collect(&mut follow);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        follow.try_wait().unwrap().is_none(),
        "--follow of a task that has not run waits for it"
    );
    let mut run = p
        .cmd(&["run", "lf", "all"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // the first lines arrive while the task still runs
    wait_for("line 2 from --follow", Duration::from_secs(30), || {
        seen.lock().unwrap().contains("line 2\n")
    });
    assert!(
        !p.exists("results/lf/lf-a/runtime.json"),
        "the lines came before the task ended:\n{}",
        seen.lock().unwrap()
    );
    assert_eq!(wait_exit(&mut run, Duration::from_secs(60)), 0);
    assert_eq!(
        wait_exit(&mut follow, Duration::from_secs(20)),
        0,
        "--follow ends with the task"
    );
    std::thread::sleep(Duration::from_millis(200));
    let out = seen.lock().unwrap().clone();
    for i in 1..=6 {
        assert_eq!(
            out.matches(&format!("line {i}\n")).count(),
            1,
            "each line once:\n{out}"
        );
        assert!(out.contains(&format!("err {i}")), "stderr too:\n{out}");
    }
    assert!(out.contains("== stderr =="), "{out}");
    let (a, b) = (out.find("line 1\n").unwrap(), out.find("line 6\n").unwrap());
    assert!(a < b, "in order:\n{out}");

    // a finished task: -n, and --follow prints it and ends at once
    let r = p.infra(&["logs", "lf", "lf-a", "-n", "2", "--stderr"]);
    r.ok();
    assert_eq!(r.stdout, "err 5\nerr 6\n");
    let r = p.infra(&["logs", "lf", "lf-a", "-n", "1"]);
    r.ok();
    assert_eq!(r.stdout, "line 6\n== stderr ==\nerr 6\n");
    let r = p.infra(&["logs", "lf", "lf-a", "--follow", "-n", "1", "--stderr"]);
    r.ok();
    assert_eq!(r.stdout, "err 6\n");
}

#[test]
fn logs_follow_goes_on_with_the_next_attempt_after_a_retry() {
    let p = Project::new();
    let marker = p.path().join("first-done");
    let cmd = format!(
        "if [ -f {m} ]; then echo second try; sleep 2; echo second done; else touch {m}; echo first try; sleep 1; echo gave up >&2; exit 3; fi",
        m = marker.display()
    );
    live_plan(&p, "lr", &["lr-a"], &cmd, 2);
    let mut follow = p
        .cmd(&["logs", "lr", "lr-a", "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let seen = collect(&mut follow);
    std::thread::sleep(Duration::from_millis(500));
    p.infra(&["run", "lr", "all"]).ok();
    assert_eq!(wait_exit(&mut follow, Duration::from_secs(20)), 0);
    std::thread::sleep(Duration::from_millis(200));
    let out = seen.lock().unwrap().clone();
    assert!(
        out.contains("first try") && out.contains("gave up") && out.contains("second done"),
        "both attempts:\n{out}"
    );
    assert!(out.find("first try") < out.find("second try"), "{out}");
}

#[test]
fn status_lists_running_tasks_with_node_attempt_and_elapsed_time() {
    let p = Project::new();
    live_plan(&p, "st", &["st-a"], "echo started; sleep 41.5", 1);
    let mut run = p
        .cmd(&["run", "st", "all"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the task to start", Duration::from_secs(30), || {
        std::fs::read_to_string(p.path().join(".infra/st/journal.jsonl"))
            .unwrap_or_default()
            .contains("\"step_started\"")
    });
    std::thread::sleep(Duration::from_millis(1200));
    let r = p.infra(&["status", "st"]);
    r.ok();
    let line = r
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("running: st-a"))
        .unwrap_or_else(|| panic!("a running line:\n{}", r.stdout));
    assert!(
        line.contains("attempt 1 on cpu-0 for "),
        "{line}\n{}",
        r.stdout
    );
    let j: Value = serde_json::from_str(&p.infra(&["--json", "status", "st"]).ok().stdout).unwrap();
    let row = &j["running_tasks"][0];
    assert_eq!(row["task"], "st-a", "{j}");
    assert_eq!(row["attempt"], 1);
    assert_eq!(row["nodes"][0], "cpu-0");
    assert!(row["elapsed_seconds"].as_f64().unwrap() >= 1.0, "{row}");
    assert!(row["since"].as_str().is_some_and(|s| !s.is_empty()));
    // what is there so far, while it runs
    let r = p.infra(&["logs", "st", "st-a"]);
    r.ok();
    assert!(r.stdout.contains("started"), "{}", r.stdout);
    // Ctrl-C: the run stops its step (a kill -9 would leave it running)
    // SAFETY: a signal to our own child
    unsafe {
        libc::kill(run.id() as i32, libc::SIGINT);
    }
    assert_eq!(wait_exit(&mut run, Duration::from_secs(30)), 130);
    // and then nothing runs
    let r = p.infra(&["status", "st"]);
    r.ok();
    assert!(!r.stdout.contains("running: st-a"), "{}", r.stdout);
}

#[test]
fn a_failed_line_ends_with_the_tasks_last_stderr_line() {
    let p = Project::new();
    live_plan(
        &p,
        "fl",
        &["fl-a"],
        "echo Traceback >&2; echo '  ValueError: bad seed  ' >&2; echo >&2; exit 3",
        1,
    );
    let r = p.infra(&["run", "fl", "all"]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    let want = "step \"main\" exited with code 3: ValueError: bad seed";
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(
        all.lines()
            .any(|l| l.contains("FAILED fl-a") && l.ends_with(want)),
        "{all}"
    );
    // wherever the failure is told: the journal, status, failed-tasks.csv
    let failed = journal(&p, "fl")
        .into_iter()
        .find(|e| e["event"] == "failed")
        .unwrap();
    assert_eq!(failed["error"], want);
    let r = p.infra(&["status", "fl"]);
    r.ok();
    assert!(
        r.stdout.contains(&format!("failed: fl-a — {want}")),
        "{}",
        r.stdout
    );
    assert!(p
        .read("results/fl/failed-tasks.csv")
        .contains("ValueError: bad seed"));
}

#[test]
fn a_failed_line_carries_at_most_200_characters_of_stderr() {
    let p = Project::new();
    live_plan(
        &p,
        "fw",
        &["fw-a"],
        "printf 'x%.0s' $(seq 1 5000) >&2; exit 4",
        1,
    );
    let r = p.infra(&["run", "fw", "all"]);
    assert_eq!(r.code, 1);
    let failed = journal(&p, "fw")
        .into_iter()
        .find(|e| e["event"] == "failed")
        .unwrap();
    let e = failed["error"].as_str().unwrap();
    let tail = e
        .strip_prefix("step \"main\" exited with code 4: ")
        .unwrap_or_else(|| panic!("{e}"));
    assert_eq!(tail, format!("{}...", "x".repeat(200)));
}
