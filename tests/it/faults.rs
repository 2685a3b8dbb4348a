//! Faults from outside the plan, on the local provider with real processes
//! and real file systems: `results/` on another (or a full) file system, a
//! task that daemonizes, signals (SIGHUP, SIGINT, during the setup).

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// A tmpfs mounted over a folder of a project, unmounted when dropped.
struct Mount(PathBuf);

impl Mount {
    /// None (with the reason printed) when this machine cannot mount.
    fn tmpfs(at: &Path, size: &str) -> Option<Mount> {
        std::fs::create_dir_all(at).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Mount(at.to_path_buf())),
            Ok(o) => {
                eprintln!(
                    "skipped: cannot mount a tmpfs on {} ({})",
                    at.display(),
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("skipped: cannot run mount ({e})");
                None
            }
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Tasks that write `bytes` bytes into their declared output and sleep a
/// little (so that siblings overlap).
fn output_plan(p: &Project, phase: &str, tasks: &[(&str, usize)]) {
    p.write(
        "plans/templates/out.json.hbs",
        r#"{"outputs": ["out.bin"], "steps": [{"name": "main", "command": "head -c {{bytes}} /dev/zero > out.bin; sleep 0.3"}]}"#,
    );
    let pats: Vec<String> = tasks
        .iter()
        .map(|(id, b)| format!("{{\"id\": \"{id}\", \"backend\": \"out\", \"bytes\": {b}}}"))
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

#[test]
fn results_on_another_file_system_are_copied_not_a_cross_device_error() {
    let p = Project::new();
    let Some(_m) = Mount::tmpfs(&p.path().join("results"), "64m") else {
        return;
    };
    output_plan(
        &p,
        "xdev",
        &[("xdev-a", 10), ("xdev-b", 2000), ("xdev-c", 0)],
    );
    let r = p.infra(&["run", "xdev", "all"]);
    r.ok();
    for (id, len) in [("xdev-a", 10), ("xdev-b", 2000), ("xdev-c", 0)] {
        let rt: serde_json::Value =
            serde_json::from_str(&p.read(&format!("results/xdev/{id}/runtime.json"))).unwrap();
        assert_eq!(rt["status"], "succeeded", "{id}");
        let out = std::fs::metadata(p.path().join(format!("results/xdev/{id}/out.bin"))).unwrap();
        assert_eq!(out.len(), len, "{id}");
        assert!(p.exists(&format!("results/xdev/{id}/stdout.log")));
    }
    // no copy left half-way, no staging left
    let names: Vec<String> = std::fs::read_dir(p.path().join("results/xdev"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(!p.exists(".infra/xdev/staging"));
}

#[test]
fn a_full_results_disk_fails_those_tasks_once_and_the_run_goes_on() {
    let p = Project::new();
    let Some(_m) = Mount::tmpfs(&p.path().join("results"), "512k") else {
        return;
    };
    // two results that cannot fit, three that do
    output_plan(
        &p,
        "full",
        &[
            ("full-big-1", 2_000_000),
            ("full-ok-1", 10),
            ("full-big-2", 2_000_000),
            ("full-ok-2", 10),
            ("full-ok-3", 10),
        ],
    );
    let r = p.infra(&["--json", "run", "full", "all", "--order", "fifo"]);
    assert_eq!(
        r.code, 1,
        "task failures, not a provider error\n{}",
        r.stderr
    );
    let s = json_event(&r.stdout, "summary");
    assert_eq!(s["summary"]["succeeded"], 3, "{s}");
    assert_eq!(s["summary"]["failed"], 2, "{s}");
    assert!(
        s["summary"]["results_error"]
            .as_str()
            .unwrap()
            .contains("No space left on device"),
        "{s}"
    );
    assert_eq!(
        r.stderr.matches("cannot save results").count(),
        1,
        "the disk error is said once\n{}",
        r.stderr
    );
    for id in ["full-ok-1", "full-ok-2", "full-ok-3"] {
        assert!(p.exists(&format!("results/full/{id}/out.bin")), "{id}");
    }
    let j = journal(&p, "full");
    for id in ["full-big-1", "full-big-2"] {
        let failed = j
            .iter()
            .find(|e| e["event"] == "failed" && e["task"] == id)
            .unwrap_or_else(|| panic!("{id} failed in the journal: {j:?}"));
        assert!(
            failed["error"]
                .as_str()
                .unwrap()
                .contains("could not be saved"),
            "{failed}"
        );
        assert!(!p.exists(&format!("results/full/{id}")), "no half result");
    }
    let csv = p.read("results/full/failed-tasks.csv");
    assert!(
        csv.contains("full-big-1") && csv.contains("full-big-2"),
        "{csv}"
    );
    assert!(csv.contains("could not be saved"), "{csv}");
    assert_eq!(j.last().unwrap()["event"], "run_finished");
}

/// Live processes whose command line contains `needle`.
fn procs_with(needle: &str) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(needle) {
            out.push((pid, cmd));
        }
    }
    out
}

/// Wait until no process has `needle` in its command line (killed
/// processes take a moment to go).
#[track_caller]
fn assert_none_left(needle: &str, when: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = procs_with(needle);
        if left.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            for (pid, _) in &left {
                unsafe { libc::kill(*pid, libc::SIGKILL) };
            }
            panic!("{when}: still running: {left:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[track_caller]
fn wait_for(what: &str, secs: u64, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !ok() {
        assert!(Instant::now() < deadline, "waited for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A marker unique to this test process: a sleep of this many seconds.
fn marker(base: u32) -> String {
    format!("{base}.{}", std::process::id())
}

fn one_task_plan(p: &Project, phase: &str, command: &str, extra: &str) {
    p.write(
        "plans/templates/one.json.hbs",
        &one_step_template(command, ""),
    );
    p.write(
        &format!("plans/{phase}.json"),
        &format!(
            r#"{{"phase": "{phase}", "name": "{phase}", {extra}
      "layers": [{{"id": "L0", "patterns": [{{"id": "{phase}-1", "backend": "one"}}]}}]}}"#
        ),
    );
}

#[test]
fn a_task_that_daemonizes_is_stopped_with_its_attempt() {
    let p = Project::new();
    let m = marker(7001);
    one_task_plan(
        &p,
        "dmn",
        &format!("setsid sleep {m} & sleep 0.5; echo started"),
        "",
    );
    let r = p.infra(&["run", "dmn", "all"]);
    r.ok();
    assert_none_left(&format!("sleep {m}"), "after the run");
    let log = p.read("results/dmn/dmn-1/stdout.log");
    assert!(
        log.contains("stopped 1 process(es) the task left running"),
        "{log}"
    );
}

#[test]
fn a_daemon_of_a_task_whose_run_died_is_stopped_by_destroy() {
    let p = Project::new();
    let m = marker(7002);
    one_task_plan(
        &p,
        "dmk",
        &format!("setsid sleep {m} & sleep 7003.{}", std::process::id()),
        "",
    );
    let mut child = p
        .cmd(&["run", "dmk", "all"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the daemon", 20, || {
        !procs_with(&format!("sleep {m}")).is_empty()
    });
    child.kill().unwrap(); // SIGKILL: nothing of infra's own stop runs
    child.wait().unwrap();
    assert!(!procs_with(&format!("sleep {m}")).is_empty());
    p.infra(&["destroy", "dmk"]).ok();
    assert_none_left(&format!("sleep {m}"), "after destroy");
    assert_none_left(
        &format!("sleep 7003.{}", std::process::id()),
        "after destroy",
    );
}

/// `n` tasks that each sleep `secs` seconds (a marker in their command
/// line) on 2 slots.
fn sleepers(p: &Project, phase: &str, n: usize, secs: &str) {
    p.write(
        "plans/templates/zz.json.hbs",
        &one_step_template(&format!("sleep {secs}"), ""),
    );
    let pats: Vec<String> = (0..n)
        .map(|i| format!("{{\"id\": \"{phase}-{i}\", \"backend\": \"zz\"}}"))
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

/// Start `infra run <phase> all`, wait until `running` of its tasks run,
/// and send `sig`.
fn signal_mid_run(p: &Project, phase: &str, needle: &str, running: usize, sig: i32) -> Child {
    let child = p
        .cmd(&["run", phase, "all"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the tasks to run", 20, || {
        procs_with(needle).len() >= running
    });
    unsafe { libc::kill(child.id() as i32, sig) };
    child
}

/// The journal's last `run_finished`, checked against what the run did:
/// every selected task that did not succeed or fail is pending.
fn check_stopped_journal(p: &Project, phase: &str, n: usize, signal: &str) {
    let j = journal(p, phase);
    let last = j.last().unwrap();
    assert_eq!(last["event"], "run_finished", "{j:?}");
    assert!(last["reason"].as_str().unwrap().contains(signal), "{last}");
    let requeued = j.iter().filter(|e| e["event"] == "requeued").count();
    assert!(requeued >= 2, "the running tasks were re-queued: {j:?}");
    let ended = last["succeeded"].as_u64().unwrap() + last["failed"].as_u64().unwrap();
    assert_eq!(
        last["pending"].as_u64().unwrap(),
        n as u64 - ended,
        "re-queued tasks are pending: {last}"
    );
}

#[test]
fn sighup_stops_the_run_like_sigterm_and_leaves_no_task_running() {
    let p = Project::new();
    let secs = marker(7004);
    sleepers(&p, "hup", 5, &secs);
    let child = signal_mid_run(&p, "hup", &format!("sleep {secs}"), 2, libc::SIGHUP);
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_none_left(&format!("sleep {secs}"), "after SIGHUP");
    check_stopped_journal(&p, "hup", 5, "SIGHUP");
}

#[test]
fn after_sigint_the_journal_counts_the_requeued_tasks_as_pending() {
    let p = Project::new();
    let secs = marker(7005);
    sleepers(&p, "int", 3, &secs);
    let child = signal_mid_run(&p, "int", &format!("sleep {secs}"), 2, libc::SIGINT);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    assert_none_left(&format!("sleep {secs}"), "after SIGINT");
    check_stopped_journal(&p, "int", 3, "SIGINT");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("3 not run"),
        "the summary agrees:\n{stdout}"
    );
}

#[test]
fn ctrl_c_during_the_setup_of_a_run_stops_the_setup() {
    let p = Project::new();
    let secs = marker(7006);
    one_task_plan(&p, "stp", "true", &format!(r#""setup": ["sleep {secs}"],"#));
    // nodes without their setup yet: `run` runs it
    let child = p
        .cmd(&["run", "stp", "all"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the setup", 20, || {
        !procs_with(&format!("sleep {secs}")).is_empty()
    });
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("SIGINT"), "{stderr}");
    assert_none_left(&format!("sleep {secs}"), "after Ctrl-C during the setup");
}

#[test]
fn ctrl_c_during_the_setup_of_apply_stops_the_setup() {
    let p = Project::new();
    let secs = marker(7007);
    one_task_plan(&p, "sta", "true", &format!(r#""setup": ["sleep {secs}"],"#));
    let child = p
        .cmd(&["apply", "sta"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the setup", 20, || {
        !procs_with(&format!("sleep {secs}")).is_empty()
    });
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert_none_left(
        &format!("sleep {secs}"),
        "after Ctrl-C during apply's setup",
    );
}

#[test]
fn under_nohup_a_hangup_does_not_stop_the_run() {
    use std::os::unix::process::CommandExt;
    let p = Project::new();
    let secs = format!("1.{}", std::process::id());
    sleepers(&p, "noh", 2, &secs);
    let mut cmd = p.cmd(&["run", "noh", "all"]);
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGHUP, libc::SIG_IGN);
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    wait_for("the tasks to run", 20, || {
        procs_with(&format!("sleep {secs}")).len() >= 2
    });
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_closed_terminal_stops_the_run_like_sigterm() {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::process::CommandExt;
    let p = Project::new();
    let secs = marker(7008);
    sleepers(&p, "tty", 3, &secs);
    // a terminal of its own: infra leads its session, the terminal controls it
    // SAFETY: plain pty calls; each descriptor gets one owner.
    let master = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    assert!(master >= 0);
    let master = unsafe { OwnedFd::from_raw_fd(master) };
    let mut name = [0 as libc::c_char; 128];
    unsafe {
        use std::os::fd::AsRawFd;
        assert_eq!(libc::grantpt(master.as_raw_fd()), 0);
        assert_eq!(libc::unlockpt(master.as_raw_fd()), 0);
        assert_eq!(
            libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()),
            0
        );
    }
    let slave_path = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }
        .to_string_lossy()
        .to_string();
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&slave_path)
        .unwrap();
    let mut cmd = p.cmd(&["run", "tty", "all"]);
    cmd.env("CI", "1")
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            libc::ioctl(0, libc::TIOCSCTTY, 0);
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop(cmd); // the parent's copies of the terminal's other end
    wait_for("the tasks to run", 20, || {
        procs_with(&format!("sleep {secs}")).len() >= 2
    });
    drop(master); // the terminal goes away: a hangup
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert_none_left(&format!("sleep {secs}"), "after the terminal closed");
    check_stopped_journal(&p, "tty", 3, "SIGHUP");
}
