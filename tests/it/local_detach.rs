//! `--detach` on the local provider: the campaign runs in a background
//! daemon of its own session; `attach` follows it to the end, `stop`
//! stops it with the journal consistent, `status` says who controls it.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::*;

/// `n` tasks of one step each running `command`, two slots.
fn tasks(p: &Project, phase: &str, n: usize, command: &str) {
    p.write(
        "plans/templates/d.json.hbs",
        &one_step_template(command, ""),
    );
    let pats: Vec<String> = (0..n)
        .map(|i| format!("{{\"id\": \"{phase}-{i}\", \"backend\": \"d\"}}"))
        .collect();
    p.write(
        &format!("plans/{phase}.json"),
        &format!(
            r#"{{"phase": "{phase}", "name": "{phase}",
      "node_groups": {{"cpu": {{"instance_type": "c6i.xlarge", "count": 1, "slots": 2}}}},
      "layers": [{{"id": "L0", "patterns": [{}]}}]}}"#,
            pats.join(",")
        ),
    );
}

/// The daemon's pid from `--detach --json`.
fn detach(p: &Project, phase: &str) -> u32 {
    let t = Instant::now();
    let r = p.infra(&["--json", "run", phase, "all", "--detach"]);
    r.ok();
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "--detach returns at once: {:?}",
        t.elapsed()
    );
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["where"], "local daemon", "{v}");
    assert!(v["log"]
        .as_str()
        .unwrap()
        .ends_with(&format!(".infra/{phase}/controller.log")));
    assert_eq!(
        v["commands"],
        serde_json::json!([
            format!("infra attach {phase}"),
            format!("infra status {phase}"),
            format!("infra stop {phase}")
        ])
    );
    v["pid"].as_u64().unwrap() as u32
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, r)| r.trim_start().to_string()))
        .is_some_and(|r| !r.starts_with('Z') && !r.starts_with('X'))
}

/// The session id of `pid` (field 6 of /proc/<pid>/stat).
fn session(pid: u32) -> Option<i64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = s.rsplit_once(')')?;
    rest.split_whitespace().nth(3)?.parse().ok()
}

#[test]
fn run_detach_returns_at_once_and_attach_follows_the_daemon_to_the_end() {
    let p = Project::new();
    tasks(&p, "dl", 4, "sleep 1; echo done > out.txt");
    let pid = detach(&p, "dl");
    // the daemon leads its own session: a closed terminal does not reach it
    assert_eq!(session(pid), Some(pid as i64), "setsid");
    assert!(alive(pid));
    let r = p.infra(&["attach", "dl"]);
    r.ok();
    assert!(
        r.stdout.contains("dl: 4 succeeded, 0 failed"),
        "attach shows the controller's output to its end:\n{}\n{}",
        r.stdout,
        r.stderr
    );
    assert!(r.stderr.contains("has ended"), "{}", r.stderr);
    assert!(!alive(pid), "attach returned when the daemon ended");
    for i in 0..4 {
        assert!(p.exists(&format!("results/dl/dl-{i}/runtime.json")));
    }
    let log = p.read(".infra/dl/controller.log");
    assert!(log.contains("4 succeeded"), "{log}");
    // a second attach shows the whole output again and returns
    let r = p.infra(&["attach", "dl"]);
    r.ok();
    assert!(r.stdout.contains("4 succeeded"), "{}", r.stdout);
    // status: nobody controls it now
    let r = p.infra(&["--json", "status", "dl"]);
    r.ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(v["controller"].is_null(), "{v}");
    assert_eq!(v["counts"]["succeeded"], 4);
    let r = p.infra(&["status", "dl"]);
    assert!(r.stdout.contains("controller: none"), "{}", r.stdout);
}

#[test]
fn stop_stops_a_long_detached_run_with_the_running_tasks_requeued() {
    let p = Project::new();
    let secs = format!("7301.{}", std::process::id());
    tasks(&p, "ds", 3, &format!("sleep {secs}"));
    let pid = detach(&p, "ds");
    // both slots busy
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let j =
            std::fs::read_to_string(p.path().join(".infra/ds/journal.jsonl")).unwrap_or_default();
        if j.matches("\"dispatched\"").count() >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "two tasks dispatched:\n{j}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // a second --detach is refused while the daemon runs
    let r = p.infra(&["run", "ds", "all", "--detach"]);
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(
        r.stderr.contains("runs already") || r.stderr.contains("is controlled already"),
        "{}",
        r.stderr
    );
    // `attach` in the background sees the stop too
    let attach = p
        .cmd(&["attach", "ds"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let r = p.infra(&["stop", "ds"]);
    r.ok();
    assert!(t.elapsed() < Duration::from_secs(40), "{:?}", t.elapsed());
    assert!(
        r.stdout.contains("ds: stopped; 0 done, 0 failed, 3 queued"),
        "{}\n{}",
        r.stdout,
        r.stderr
    );
    assert!(!alive(pid), "the daemon is gone once stop returns");
    assert!(!p.exists(".infra/ds/stop.json"), "the request is done with");
    // nothing of it runs
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&format!("sleep {secs}")))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // the journal: the running tasks re-queued, the run finished as interrupted
    let j = journal(&p, "ds");
    let last = j.last().unwrap();
    assert_eq!(last["event"], "run_finished", "{j:?}");
    assert_eq!(last["pending"], 3, "{last}");
    assert!(
        j.iter().filter(|e| e["event"] == "requeued").count() >= 2,
        "{j:?}"
    );
    let out = attach.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("interrupted") || shown.contains("not run"),
        "{shown}"
    );
    // nothing left to stop
    let r = p.infra(&["stop", "ds"]);
    r.ok();
    assert!(r.stdout.contains("no controller runs it"), "{}", r.stdout);
}
