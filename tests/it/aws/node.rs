//! The node agent on the emulator: process control (a step that ignores
//! SIGTERM, and a daemon it left behind, are killed at the step's timeout
//! and at a stop), a full disk on the node, and what a node's credentials
//! may not touch.

use super::*;

/// One single-node task whose one step runs `command` with `timeout`.
fn command_plan(a: &Aws, phase: &str, project: &str, command: &str, timeout: u64) {
    a.p.write(
        &format!("plans/{phase}.json"),
        &format!(
            r#"{{ "phase": "{phase}", "name": "agent", "project": "{project}", "provider": "aws", "region": "us-east-1",
  "retry": {{ "attempts": 1 }},
  "node_groups": {{ "cpu": {{ "instance_type": "c6i.xlarge", "count": 1, "market": "spot", "slots": 1 }} }},
  "layers": [ {{ "id": "L0", "grid": {{ "backend": "cmd", "id": "{phase}-t{{n}}", "factors": {{ "n": [1] }} }} }} ] }}"#
        ),
    );
    a.p.write(
        "plans/templates/cmd.json.hbs",
        &format!(
            r#"{{ "steps": [ {{"name": "main", "timeout_seconds": {timeout}, "command": {}}} ] }}"#,
            serde_json::to_string(command).unwrap()
        ),
    );
}

/// Processes whose command line contains `needle` (this machine is every
/// node of the emulator).
fn processes_with(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(needle) && !cmd.contains("pgrep") {
            found.push(format!("{}: {cmd}", e.file_name().to_string_lossy()));
        }
    }
    found
}

const STUBBORN: &str = "trap '' TERM; setsid sh -c 'trap \"\" TERM; exec sleep 4241.5' & trap '' TERM; sleep 4242.5; true";

#[test]
fn a_term_ignoring_step_and_its_escaped_daemon_are_killed_at_the_timeout() {
    let a = Aws::new("agent_timeout");
    command_plan(&a, "kt", "killtimeout", STUBBORN, 3);
    ok(&a.infra(&["apply", "kt", "--yes"]), "apply");
    let started = Instant::now();
    let r = a.infra(&["run", "kt", "all"]);
    assert_eq!(r.code, 1, "the task fails by its timeout\n{}", r.stderr);
    assert!(r.stderr.contains("timed out"), "{}", r.stderr);
    // TERM ignored: the grace (10 s) and then KILL, not the hour of sleep
    assert!(started.elapsed() < Duration::from_secs(90), "{:?}", started.elapsed());
    wait_for("no process of the step", Duration::from_secs(5), || {
        processes_with("sleep 424").is_empty()
    });
    ok(&a.infra(&["destroy", "kt", "--all"]), "destroy");
}

#[test]
fn a_term_ignoring_step_and_its_escaped_daemon_are_killed_at_a_stop() {
    let a = Aws::new("agent_stop");
    let stubborn = STUBBORN.replace("424", "525");
    command_plan(&a, "ks", "killstop", &stubborn, 3600);
    ok(&a.infra(&["apply", "ks", "--yes"]), "apply");
    let child = a
        .cmd(&["run", "ks", "all"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the step and its daemon", Duration::from_secs(60), || {
        processes_with("sleep 525").len() >= 2
    });
    // SAFETY: a signal to our own child
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let out = child.wait_with_output().unwrap();
    let status = out.status;
    let r = Run::from(out);
    assert_eq!(r.code, 130, "{status:?}\n{}", r.stderr);
    wait_for("no process of the step", Duration::from_secs(5), || {
        processes_with("sleep 525").is_empty()
    });
    assert!(processes_with("sleep 525").is_empty(), "{:?}", processes_with("sleep 525"));
    ok(&a.infra(&["destroy", "ks", "--all"]), "destroy");
}
