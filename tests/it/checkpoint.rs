//! Work survives an attempt on the local provider: `$INFRA_CHECKPOINT_DIR`
//! is kept across attempts and runs (a failed attempt, a `kill -9` of the
//! run and of its steps), `--fresh` clears it, and a stopped task gets its
//! grace (`stop_grace_seconds`) before SIGKILL. The same on the emulator,
//! with a spot notice, is in `aws/checkpoint.rs`.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::{journal, Project};

/// A task that counts to `n`, one line per number in
/// `$INFRA_CHECKPOINT_DIR/progress.txt`, skipping the numbers already
/// there; it fails once at `fail_at` (0: never) while the file `mark` does
/// not exist. On SIGTERM it notes how far it got and exits.
pub(crate) const PROGRESS_SH: &str = r#"#!/bin/bash
set -u
c="$INFRA_CHECKPOINT_DIR"
n=$1; per=$2; fail_at=$3; mark=$4
trap 'echo "TERM after $(wc -l < "$c/progress.txt") lines" >> "$c/events.txt"; exit 143' TERM
have=0
[ -f "$c/progress.txt" ] && have=$(wc -l < "$c/progress.txt")
echo "resumed with $have lines"
for i in $(seq 1 "$n"); do
  grep -qx "$i" "$c/progress.txt" 2>/dev/null && continue
  echo "$i" >> "$c/progress.txt"
  if [ "$i" = "$fail_at" ] && [ ! -e "$mark" ]; then
    mkdir -p "$(dirname "$mark")"; touch "$mark"
    echo "failing at $i" >&2
    exit 3
  fi
  sleep "$per" & wait $!
done
cp "$c/progress.txt" out.txt
echo "counted to $n"
"#;

/// How many lines the task found in its checkpoint when it started (the
/// `resumed with N lines` it printed).
pub(crate) fn resumed_lines(log: &str) -> usize {
    log.lines()
        .find_map(|l| {
            l.strip_prefix("resumed with ")?
                .strip_suffix(" lines")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("{log}"))
}

/// The whole count, once each.
pub(crate) fn counted(n: usize) -> String {
    (1..=n).map(|i| format!("{i}\n")).collect()
}

fn progress_plan(p: &Project, phase: &str, n: usize, per: f64, fail_at: usize, attempts: u32) {
    p.write("scripts/progress.sh", PROGRESS_SH);
    p.write(
        "plans/templates/count.json.hbs",
        &format!(
            r#"{{ "outputs": ["out.txt"], "steps": [ {{"name": "count", "command": "bash \"$INFRA_SCRIPTS/progress.sh\" {n} {per} {fail_at} \"$INFRA_ROOT/marks/$INFRA_TASK_ID.failed\""}} ] }}"#
        ),
    );
    p.write(
        &format!("plans/{phase}.json"),
        &format!(
            r#"{{"phase": "{phase}", "name": "{phase}", "retry": {{"attempts": {attempts}, "backoff_seconds": 0}},
      "node_groups": {{"cpu": {{"instance_type": "c6i.xlarge", "count": 1, "slots": 1}}}},
      "layers": [{{"id": "L0", "patterns": [{{"id": "{phase}-0", "backend": "count"}}]}}]}}"#
        ),
    );
}

fn progress_lines(p: &Project, phase: &str) -> usize {
    std::fs::read_to_string(
        p.path()
            .join(format!(".infra/{phase}/checkpoints/{phase}-0/progress.txt")),
    )
    .unwrap_or_default()
    .lines()
    .count()
}

#[test]
fn the_next_attempt_goes_on_from_the_checkpoint_the_failed_one_left() {
    let p = Project::new();
    progress_plan(&p, "ck", 20, 0.02, 7, 2);
    p.infra(&["run", "ck", "all"]).ok();
    assert_eq!(p.read("results/ck/ck-0/out.txt"), counted(20));
    let log = p.read("results/ck/ck-0/stdout.log");
    assert!(
        log.contains("resumed with 7 lines"),
        "attempt 2 started from attempt 1's 7 lines:\n{log}"
    );
    let rt: serde_json::Value =
        serde_json::from_str(&p.read("results/ck/ck-0/runtime.json")).unwrap();
    assert_eq!(rt["attempts"], 2, "{rt}");
    assert_eq!(
        rt["checkpoint_bytes"].as_u64(),
        Some(counted(20).len() as u64),
        "{rt}"
    );
    // kept after the task: a later re-run could go on from it
    assert_eq!(progress_lines(&p, "ck"), 20);
    let st = p.infra(&["status", "ck"]);
    assert!(
        st.stdout.contains("checkpoints: 1 task(s), 51 B"),
        "{}",
        st.stdout
    );
    let st = p.infra(&["status", "ck", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&st.stdout).unwrap();
    assert_eq!(v["checkpoints"]["ck-0"], 51, "{v}");
    // run again on purpose: from scratch, not from the completed run's
    // checkpoint (which would skip every line)
    let r = p.infra(&["run", "ck", "all", "--rerun"]);
    r.ok();
    assert!(
        r.stderr
            .contains("removed 1 checkpoint folder(s) of the 1 task(s) run again"),
        "{}",
        r.stderr
    );
    let log = p.read("results/ck/ck-0/stdout.log");
    assert!(log.contains("resumed with 0 lines"), "{log}");
    assert_eq!(p.read("results/ck/ck-0/out.txt"), counted(20));
}

#[test]
fn a_crash_of_the_run_and_its_steps_loses_no_checkpointed_work() {
    let p = Project::new();
    progress_plan(&p, "cr", 20, 0.5, 0, 1);
    let mut child = p
        .cmd(&["run", "cr", "all"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while progress_lines(&p, "cr") < 5 {
        assert!(Instant::now() < deadline, "the task did not count to 5");
        std::thread::sleep(Duration::from_millis(50));
    }
    // the machine "reboots": infra and the step die at once, nothing of
    // infra's own stop runs
    let step = journal(&p, "cr")
        .into_iter()
        .find(|e| e["event"] == "step_started")
        .expect("the step was journaled");
    let pid = step["handle"]["pid"].as_i64().unwrap() as i32;
    child.kill().unwrap();
    child.wait().unwrap();
    // SAFETY: SIGKILL to the process group of the step this test started.
    unsafe {
        libc::killpg(pid, libc::SIGKILL);
    }
    let before = progress_lines(&p, "cr");
    assert!(before >= 5);
    let r = p.infra(&["run", "cr", "all"]);
    r.ok();
    assert_eq!(p.read("results/cr/cr-0/out.txt"), counted(20));
    let log = p.read("results/cr/cr-0/stdout.log");
    let resumed = resumed_lines(&log);
    assert!(
        resumed >= before,
        "the new attempt started from the {before} lines counted before the crash, not from {resumed}:\n{log}"
    );
}

#[test]
fn fresh_clears_the_checkpoint_before_the_run() {
    let p = Project::new();
    progress_plan(&p, "fr", 20, 0.02, 7, 1);
    let r = p.infra(&["run", "fr", "all"]);
    assert_ne!(r.code, 0, "the only attempt fails: {}", r.stderr);
    assert_eq!(progress_lines(&p, "fr"), 7);
    let r = p.infra(&["run", "fr", "all", "--retry-failed", "--fresh"]);
    r.ok();
    assert!(
        r.stderr
            .contains("--fresh: removed 1 checkpoint folder(s) of 1 selected task(s)"),
        "{}",
        r.stderr
    );
    let log = p.read("results/fr/fr-0/stdout.log");
    assert!(log.contains("resumed with 0 lines"), "{log}");
    assert!(!log.contains("resumed with 7 lines"), "{log}");
    assert_eq!(p.read("results/fr/fr-0/out.txt"), counted(20));
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let exists = unsafe { libc::kill(pid, 0) == 0 };
    exists
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[test]
fn a_stopped_task_gets_its_grace_a_term_trapping_one_saves_a_term_ignoring_one_is_killed() {
    let p = Project::new();
    p.write(
        "plans/templates/saver.json.hbs",
        r#"{ "steps": [ {"name": "main", "command": "trap 'sleep 1; echo saved > \"$INFRA_CHECKPOINT_DIR/saved\"; exit 143' TERM; echo $$ > \"$INFRA_ROOT/saver.pid\"; while :; do sleep 0.2 & wait $!; done"} ] }"#,
    );
    p.write(
        "plans/templates/stubborn.json.hbs",
        r#"{ "steps": [ {"name": "main", "command": "trap '' TERM; echo $$ > \"$INFRA_ROOT/stubborn.pid\"; while :; do sleep 0.2; done"} ] }"#,
    );
    p.write(
        "plans/gr.json",
        r#"{"phase": "gr", "name": "gr", "stop_grace_seconds": 4,
      "node_groups": {"cpu": {"instance_type": "c6i.xlarge", "count": 1, "slots": 2}},
      "layers": [{"id": "L0", "patterns": [{"id": "gr-save", "backend": "saver"}, {"id": "gr-stub", "backend": "stubborn"}]}]}"#,
    );
    let child = p
        .cmd(&["run", "gr", "all"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(p.exists("saver.pid") && p.exists("stubborn.pid")) {
        assert!(Instant::now() < deadline, "the tasks did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let stubborn: i32 = p.read("stubborn.pid").trim().parse().unwrap();
    let t0 = Instant::now();
    // Ctrl-C
    // SAFETY: SIGINT to the infra process this test started.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let out = child.wait_with_output().unwrap();
    let took = t0.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    // the trapping task used its second and saved its checkpoint
    assert_eq!(
        p.read(".infra/gr/checkpoints/gr-save/saved"),
        "saved\n",
        "{stderr}"
    );
    // the ignoring one was killed once the 4 s grace were over, not before
    assert!(
        !pid_alive(stubborn),
        "the TERM-ignoring task is still running"
    );
    assert!(
        took >= Duration::from_millis(3500) && took < Duration::from_secs(30),
        "stopped after {took:?} (grace 4 s)\n{stderr}"
    );
}
