//! The node agent on the emulator: process control (a step that ignores
//! SIGTERM, and a daemon it left behind, are killed at the step's timeout
//! and at a stop), a full disk on the node, and what a node's credentials
//! may not touch.

use std::path::Path;

use super::*;

/// One single-node task whose one step runs `command` with `timeout`.
fn command_plan(a: &Aws, phase: &str, project: &str, command: &str, timeout: u64) {
    a.p.write(
        &format!("plans/{phase}.json"),
        &format!(
            r#"{{ "phase": "{phase}", "name": "agent", "project": "{project}", "provider": "aws", "region": "us-east-1",
  "retry": {{ "attempts": 1 }}, "stop_grace_seconds": 10,
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
    assert!(
        started.elapsed() < Duration::from_secs(90),
        "{:?}",
        started.elapsed()
    );
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
    assert!(
        processes_with("sleep 525").is_empty(),
        "{:?}",
        processes_with("sleep 525")
    );
    ok(&a.infra(&["destroy", "ks", "--all"]), "destroy");
}

/// What a task can do with its node's credentials: write its phase's
/// results, but not the bundle every later node runs, the manifest, the
/// ledger the budget reads, or the agent binaries. The emulator evaluates
/// the rendered node role's policies for requests signed with an
/// instance's credentials (tests/emulator/awsemu/node_auth.py).
#[test]
fn a_task_cannot_write_the_bundle_the_ledger_or_the_binaries_with_the_nodes_credentials() {
    let a = Aws::new("agent_trust");
    let attempt = |what: &str, key: &str| {
        format!(
            "if aws s3 cp /etc/hostname \"s3://$INFRA_BUCKET/{key}\" 2>>denied.txt; then echo WROTE-{what}; else echo DENIED-{what}; fi; "
        )
    };
    let command = [
        attempt("BUNDLE", "nt/_bundle/scripts/evil.sh"),
        attempt("MANIFEST", "nt/_bundle.manifest"),
        attempt("LEDGER", "_ledger/nt/evil.jsonl"),
        attempt("BINARY", "_infra/bin/evil/x86_64/infra"),
        attempt("OTHERPHASE", "other/results/t/attempt-1/x"),
        attempt("RESULTS", "nt/results/nt-t1/extra.txt"),
        "cat denied.txt >&2".to_string(),
    ]
    .concat();
    command_plan(&a, "nt", "nodetrust", &command, 300);
    ok(&a.infra(&["apply", "nt", "--yes"]), "apply");
    ok(&a.infra(&["run", "nt", "all"]), "run");
    let out = a.p.read("results/nt/nt-t1/stdout.log");
    for denied in ["BUNDLE", "MANIFEST", "LEDGER", "BINARY", "OTHERPHASE"] {
        assert!(
            out.contains(&format!("DENIED-{denied}")),
            "{denied}:\n{out}"
        );
    }
    assert!(
        out.contains("WROTE-RESULTS"),
        "its own results prefix is writable:\n{out}"
    );
    let err = a.p.read("results/nt/nt-t1/stderr.log");
    assert!(err.contains("AccessDenied"), "{err}");
    // and nothing of it reached the bucket
    let b = a.state("nt")["bucket"].as_str().unwrap().to_string();
    let there = a.boto(&format!(
        "import botocore\nout = []\nfor k in ['nt/_bundle/scripts/evil.sh', '_ledger/nt/evil.jsonl', '_infra/bin/evil/x86_64/infra']:\n    try:\n        s3.head_object(Bucket={b:?}, Key=k); out.append(k)\n    except botocore.exceptions.ClientError:\n        pass\nprint(json.dumps(out))"
    ));
    assert_eq!(there, json!([]), "forged objects in the bucket");
    ok(
        &a.infra(&["budget", "nt"]),
        "the budget reads a clean ledger",
    );
    ok(&a.infra(&["destroy", "nt", "--all"]), "destroy");
}

/// A campaign runs with nothing but the agent and basic tools on the nodes:
/// the emulator's minimal PATH has no aws, curl, wget or python3.
#[test]
fn a_campaign_runs_with_no_aws_curl_or_python_on_the_nodes_path() {
    let a = Aws::new("agent_minimal");
    a.control("POST", "config", json!({"node_path": "minimal"}));
    command_plan(
        &a,
        "mp",
        "minimalpath",
        "for t in aws curl wget python3; do if command -v $t; then echo found $t; exit 9; fi; done; echo clean > clean.txt; sleep 0.2; echo done",
        300,
    );
    ok(&a.infra(&["apply", "mp", "--yes"]), "apply");
    let r = a.infra(&["run", "mp", "all"]);
    ok(&r, "run");
    assert!(a.p.read("results/mp/mp-t1/stdout.log").contains("done"));
    let rt: Value = serde_json::from_str(&a.p.read("results/mp/mp-t1/runtime.json")).unwrap();
    assert_eq!(rt["status"], "succeeded", "{rt}");
    ok(&a.infra(&["destroy", "mp", "--all"]), "destroy");
}

/// A tmpfs mounted over a folder for the length of a test.
struct Mounted(PathBuf);

impl Mounted {
    fn tmpfs(at: &Path, size: &str) -> Mounted {
        std::fs::create_dir_all(at).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .expect("mount (the AWS tests run as root, like CI)");
        assert!(
            st.success(),
            "cannot mount a tmpfs at {at:?} (the tests run as root)"
        );
        Mounted(at.to_path_buf())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A full disk on the node fails the attempt with a clear error; it is
/// never a success (the shell wrapper wrote an empty command file and
/// recorded a step that never ran as succeeded).
#[test]
fn a_full_disk_on_the_node_fails_the_attempt_never_a_success() {
    let a = Aws::new("agent_disk");
    command_plan(&a, "fd", "fulldisk", "echo ran > ran.txt", 300);
    ok(&a.infra(&["apply", "fd", "--yes"]), "apply");
    let (_, id) = node_ids(&a, "fd").pop().expect("a node");
    let run_dir = emulator()
        ._dir
        .path()
        .join("state/instances")
        .join(&id)
        .join("run");
    let _disk = Mounted::tmpfs(&run_dir, "256k");
    // fill it
    let _ = std::fs::write(run_dir.join("filler"), vec![b'x'; 512 * 1024]);
    let r = a.infra(&["run", "fd", "all"]);
    assert_eq!(r.code, 1, "the task fails\n{}", r.stderr);
    assert!(
        r.stderr.contains("a write failed (disk full?)") && r.stderr.contains("No space left"),
        "{}",
        r.stderr
    );
    let j = journal(&a.p, "fd");
    assert!(j.iter().all(|e| e["event"] != "succeeded"), "{j:?}");
    drop(_disk);
    ok(&a.infra(&["destroy", "fd", "--all"]), "destroy");
}
