//! `infra node watch`: no controller, no spend (docs/CAMPAIGN.md).
//!
//! One watcher per node, started (and its settings refreshed) each time a
//! controller checks or installs the agent. Every poll it asks two things:
//! does a step run on this node (the agent's own records under
//! `$ROOT/run/`: a `pid` without an `rc`, and that process alive), and did
//! the controller's lease (`<phase>/_state/lease.json`, read-only for the
//! node) change its `renewed_at` since the last read. Either counts as
//! activity, timed with the node's own monotonic clock (never compared
//! with the controller's clock). After `idle_minutes` of no activity the
//! node stops billing: it deletes its own fleet without terminating its
//! instances (`DeleteFleets`, `TerminateInstances=false`: the fleet stops
//! replacing, the other nodes keep running their steps and idle out on
//! their own), then shuts down (`InstanceInitiatedShutdownBehavior` is
//! `terminate`).
//!
//! The starting call writes the spec to `$ROOT/watch/spec.json` (a running
//! watcher re-reads it every poll), and when no watcher holds
//! `$ROOT/watch/lock` starts one in the background: a transient systemd
//! unit when systemd runs the machine and `"systemd": true`, else a process
//! in its own session. Either way it returns at once.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::fsio;
use super::{Fail, EXIT_USAGE};

/// What the controller sends (and the watcher re-reads every poll).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WatchSpec {
    pub bucket: String,
    /// `<phase>/_state/lease.json`
    pub lease_key: String,
    /// Idle minutes per node group (the node finds its group in its tags).
    #[serde(default)]
    pub idle_minutes: std::collections::BTreeMap<String, u32>,
    /// For a node whose group is not in the map (or unknown).
    #[serde(default = "default_idle")]
    pub default_idle_minutes: u32,
    /// Seconds between polls; 0: a sixth of the idle time, 2 to 20 s.
    #[serde(default)]
    pub poll_seconds: f64,
    /// Start the watcher under systemd when the machine runs it.
    #[serde(default)]
    pub systemd: bool,
    /// Internal: this process is the watcher itself (not the starter).
    #[serde(default)]
    pub foreground: bool,
}

fn default_idle() -> u32 {
    20
}

impl WatchSpec {
    pub fn idle_for(&self, group: Option<&str>) -> Duration {
        let m = group
            .and_then(|g| self.idle_minutes.get(g).copied())
            .unwrap_or(self.default_idle_minutes)
            .max(1);
        Duration::from_secs(u64::from(m) * 60)
    }

    pub fn poll(&self, idle: Duration) -> Duration {
        if self.poll_seconds > 0.0 && self.poll_seconds.is_finite() {
            return Duration::from_secs_f64(self.poll_seconds.clamp(0.2, 300.0));
        }
        Duration::from_secs_f64((idle.as_secs_f64() / 6.0).clamp(2.0, 20.0))
    }
}

fn dir(root: &Path) -> PathBuf {
    root.join("watch")
}

/// The node's own tag naming its group, and its fleet's id.
const TAG_NODE_GROUP: &str = "infra:node-group";
const TAG_FLEET: &str = "aws:ec2:fleet-id";

/// The marker the user data leaves when it armed the boot-time idle timer
/// (a node that never got an agent stops billing too); a watcher disarms it.
const BOOT_TIMER_MARKER: &str = "/etc/infra/idle-boot-timer";

pub async fn watch(root: &Path, s: WatchSpec) -> Result<i32, Fail> {
    let d = dir(root);
    fsio::mkdirs(&d)?;
    let mut stored = s.clone();
    stored.foreground = false;
    let text = serde_json::to_vec_pretty(&stored).unwrap_or_default();
    if !s.foreground {
        fsio::write_atomic(&d.join("spec.json"), &text)?;
        if held(&d.join("lock")) {
            println!("infra-node: the idle watcher runs; its settings are updated");
            return Ok(0);
        }
        return start(root, &s).map(|()| 0);
    }
    let Some(_lock) = try_lock(&d.join("lock"))? else {
        return Ok(0);
    };
    let _ = fsio::write_atomic(
        &d.join("pid"),
        format!("{}\n", std::process::id()).as_bytes(),
    );
    disarm_boot_timer();
    run(root, &d).await
}

/// Start the watcher in the background: systemd when asked and present,
/// else its own session.
fn start(root: &Path, s: &WatchSpec) -> Result<(), Fail> {
    let exe = std::env::current_exe()
        .map_err(|e| Fail::new(1, format!("cannot find the agent's own binary: {e}")))?;
    let mut fg = s.clone();
    fg.foreground = true;
    let spec = serde_json::to_string(&fg).unwrap_or_default();
    // never on the emulator: its "nodes" are folders of the test machine
    let sandbox = std::env::var_os("INFRA_SANDBOX_DIR").is_some_and(|v| !v.is_empty());
    if s.systemd && !sandbox && Path::new("/run/systemd/system").is_dir() {
        if let Some(run) = fsio::which("systemd-run") {
            let st = std::process::Command::new(run)
                .args([
                    "--unit=infra-watch",
                    "--collect",
                    "--property=Restart=on-failure",
                    "--property=RestartSec=5",
                    &format!("--setenv=INFRA_NODE_ROOT={}", root.display()),
                ])
                .arg(&exe)
                .args(["node", "watch", "--spec", &spec])
                .status();
            if st.is_ok_and(|s| s.success()) {
                println!("infra-node: idle watcher started (systemd unit infra-watch)");
                return Ok(());
            }
        }
    }
    let log = dir(root).join("watch.log");
    let open = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| fsio::write_fail(&log, &e))
    };
    let env = vec![(
        "INFRA_NODE_ROOT".to_string(),
        root.to_string_lossy().into_owned(),
    )];
    let args = ["node", "watch", "--spec", spec.as_str()].map(std::ffi::OsStr::new);
    let pid = super::proc::spawn_session(&exe, &args, root, &env, open()?, open()?)
        .map_err(|e| Fail::new(1, format!("cannot start the idle watcher: {e}")))?;
    println!("infra-node: idle watcher started (pid {pid})");
    Ok(())
}

fn held(path: &Path) -> bool {
    matches!(try_lock(path), Ok(None))
}

/// The exclusive lock, or None when another process holds it.
fn try_lock(path: &Path) -> Result<Option<std::fs::File>, Fail> {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| fsio::write_fail(path, &e))?;
    // SAFETY: flock on a descriptor we own.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    Ok((r == 0).then_some(f))
}

fn disarm_boot_timer() {
    if !Path::new(BOOT_TIMER_MARKER).exists() {
        return;
    }
    if let Some(sc) = fsio::which("systemctl") {
        let _ = std::process::Command::new(sc)
            .args(["stop", "infra-idle-boot.timer"])
            .status();
    }
    // the marker stays: after a reboot the timer runs again until the
    // next watcher stops it
    println!("infra-node: boot-time idle timer disarmed; the watcher takes over");
}

/// When the last step of the node ended: the newest `rc` (written by the
/// step's agent, on this node's clock).
pub fn last_step_end(root: &Path) -> Option<std::time::SystemTime> {
    let mut newest = None;
    for rc in glob_rc(root) {
        if let Ok(t) = std::fs::metadata(&rc).and_then(|m| m.modified()) {
            newest = newest.max(Some(t));
        }
    }
    newest
}

fn glob_rc(root: &Path) -> Vec<PathBuf> {
    let dirs = |d: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(d)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for task in dirs(&root.join("run")) {
        for attempt in dirs(&task) {
            for key in dirs(&attempt) {
                out.push(key.join("rc"));
            }
        }
    }
    out
}

/// A step runs on the node: a `pid` without an `rc` whose process lives.
pub fn step_running(root: &Path) -> bool {
    let dirs = |d: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(d)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default()
    };
    for task in dirs(&root.join("run")) {
        for attempt in dirs(&task) {
            for key in dirs(&attempt) {
                if key.join("rc").exists() {
                    continue;
                }
                let pid = std::fs::read_to_string(key.join("pid"))
                    .ok()
                    .and_then(|p| p.trim().parse::<i32>().ok());
                match pid {
                    Some(p) if !crate::provider::process::leader_gone(p) => return true,
                    Some(_) => {}
                    // the step's agent made the folder and starts it now
                    None => {
                        let young = std::fs::metadata(&key)
                            .and_then(|m| m.modified())
                            .ok()
                            .and_then(|t| t.elapsed().ok())
                            .is_some_and(|e| e < Duration::from_secs(120));
                        if young {
                            return true;
                        }
                    }
                }
            }
        }
    }
    false
}

/// The idle clock: activity resets it; `renewed_at` values are compared
/// with the previous read only (the node's clock times them).
#[derive(Debug)]
pub struct IdleClock {
    last_activity: Instant,
    last_renewal: Option<String>,
    was_busy: bool,
}

impl IdleClock {
    pub fn new(now: Instant) -> IdleClock {
        IdleClock {
            last_activity: now,
            last_renewal: None,
            was_busy: false,
        }
    }

    /// Activity at `t` (a step's end, read from its `rc`), if later than
    /// what the clock knows.
    pub fn activity_at(&mut self, t: Instant) {
        if t > self.last_activity {
            self.last_activity = t;
        }
    }

    /// How long until the node counts as idle (zero when it does).
    pub fn remaining(&self, now: Instant, idle: Duration) -> Duration {
        idle.saturating_sub(now.duration_since(self.last_activity))
    }

    /// One poll's findings; true when the node has been idle for `idle`.
    pub fn observe(
        &mut self,
        now: Instant,
        busy: bool,
        renewed_at: Option<&str>,
        idle: Duration,
    ) -> bool {
        // the first poll that finds no step counts as activity too: the
        // step ended after the last poll that saw it, so the idle time is
        // never shorter than `idle`
        if busy || self.was_busy {
            self.last_activity = now;
        }
        self.was_busy = busy;
        if let Some(r) = renewed_at {
            if self.last_renewal.as_deref() != Some(r) {
                self.last_renewal = Some(r.to_string());
                self.last_activity = now;
            }
        }
        now.duration_since(self.last_activity) >= idle
    }
}

fn read_spec(d: &Path) -> Option<WatchSpec> {
    let text = std::fs::read(d.join("spec.json")).ok()?;
    serde_json::from_slice(&text).ok()
}

fn log(msg: &str) {
    println!(
        "{} infra-node watch: {msg}",
        chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ")
    );
}

/// The instance's own group and fleet, from its tags.
async fn whoami(ec2: &aws_sdk_ec2::Client, iid: &str) -> (Option<String>, Option<String>) {
    let out = match ec2.describe_instances().instance_ids(iid).send().await {
        Ok(o) => o,
        Err(e) => {
            log(&format!(
                "cannot read this instance's tags ({}); the default idle time applies and the fleet is not stopped",
                aws_sdk_ec2::error::DisplayErrorContext(&e)
            ));
            return (None, None);
        }
    };
    let tags: Vec<(String, String)> = out
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .flat_map(|i| i.tags())
        .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
        .collect();
    let get = |k: &str| tags.iter().find(|t| t.0 == k).map(|t| t.1.clone());
    (get(TAG_NODE_GROUP), get(TAG_FLEET))
}

async fn run(root: &Path, d: &Path) -> Result<i32, Fail> {
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    let ec2 = aws_sdk_ec2::Client::new(&conf);
    let s3 = super::upload::S3::default();
    let iid = super::spot::instance_id(root).await;
    let (group, fleet) = whoami(&ec2, &iid).await;
    let mut clock = IdleClock::new(Instant::now());
    let mut spec = read_spec(d).ok_or_else(|| Fail::new(EXIT_USAGE, "no watch/spec.json"))?;
    log(&format!(
        "watching instance {iid} (group {}, fleet {}): idle after {} min without a step or a lease renewal",
        group.as_deref().unwrap_or("?"),
        fleet.as_deref().unwrap_or("?"),
        spec.idle_for(group.as_deref()).as_secs() / 60
    ));
    let mut last_error: Option<String> = None;
    loop {
        if let Some(s) = read_spec(d) {
            spec = s;
        }
        let idle = spec.idle_for(group.as_deref());
        // a poll, or less when the idle time ends sooner
        let wait = spec
            .poll(idle)
            .min(clock.remaining(Instant::now(), idle))
            .max(Duration::from_millis(200));
        tokio::time::sleep(wait).await;
        // the node's folder is gone (the emulator's sandbox removed)
        if !root.is_dir() {
            return Ok(0);
        }
        let renewed = match s3.get(&spec.bucket, &spec.lease_key).await {
            Ok(bytes) => {
                last_error = None;
                serde_json::from_slice::<serde_json::Value>(&bytes)
                    .ok()
                    .and_then(|v| {
                        let r = v.get("renewed_at")?.as_str()?.to_string();
                        let t = v.get("token").and_then(|t| t.as_str()).unwrap_or("");
                        Some(format!("{t}@{r}"))
                    })
            }
            Err(e) => {
                // no lease (the controller ended cleanly) or no answer: no
                // renewal seen
                if !e.contains("NoSuchKey") && last_error.as_deref() != Some(e.as_str()) {
                    log(&format!("cannot read the lease: {e}"));
                    last_error = Some(e);
                }
                None
            }
        };
        let busy = step_running(root);
        // a step shorter than a poll is never seen running: its end counts
        if let Some(ago) = last_step_end(root).and_then(|t| t.elapsed().ok()) {
            if let Some(at) = Instant::now().checked_sub(ago) {
                clock.activity_at(at);
            }
        }
        if clock.observe(Instant::now(), busy, renewed.as_deref(), idle) {
            let mins = idle.as_secs() / 60;
            log(&format!(
                "no step and no lease renewal for {mins} min: this node stops billing"
            ));
            let _ = fsio::write_atomic(
                &d.join("stopped"),
                format!("idle {mins} min without a controller\n").as_bytes(),
            );
            stop_billing(&ec2, fleet.as_deref()).await;
            // the machine goes down; should the shutdown not happen, try
            // again after a poll
            let retry = idle.saturating_sub(spec.poll(idle));
            clock = IdleClock::new(
                Instant::now()
                    .checked_sub(retry)
                    .unwrap_or_else(Instant::now),
            );
        }
    }
}

/// Delete the node's fleet (its instances keep running), then shut down.
async fn stop_billing(ec2: &aws_sdk_ec2::Client, fleet: Option<&str>) {
    if let Some(f) = fleet {
        match ec2
            .delete_fleets()
            .fleet_ids(f)
            .terminate_instances(false)
            .send()
            .await
        {
            Ok(out) => {
                let failed: Vec<String> = out
                    .unsuccessful_fleet_deletions()
                    .iter()
                    .filter_map(|u| u.error().and_then(|e| e.message()).map(str::to_string))
                    .collect();
                if failed.is_empty() {
                    log(&format!("fleet {f} deleted (its instances keep running)"));
                } else {
                    log(&format!("fleet {f} not deleted: {}", failed.join("; ")));
                }
            }
            Err(e) => log(&format!(
                "cannot delete fleet {f}: {}",
                aws_sdk_ec2::error::DisplayErrorContext(&e)
            )),
        }
    }
    for (cmd, args) in [("shutdown", &["-h", "now"][..]), ("poweroff", &[][..])] {
        let Some(p) = fsio::which(cmd).or_else(|| {
            ["/usr/sbin", "/sbin"]
                .iter()
                .map(|d| Path::new(d).join(cmd))
                .find(|p| p.exists())
        }) else {
            continue;
        };
        match std::process::Command::new(&p).args(args).status() {
            Ok(st) if st.success() => {
                log(&format!(
                    "{} {}: shutting down",
                    p.display(),
                    args.join(" ")
                ));
                return;
            }
            Ok(st) => log(&format!("{} failed: {st}", p.display())),
            Err(e) => log(&format!("cannot run {}: {e}", p.display())),
        }
    }
    log("no shutdown command worked");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_only_after_the_idle_time_without_a_step_or_a_new_renewal() {
        let t0 = Instant::now();
        let idle = Duration::from_secs(60);
        let s = |n: u64| t0 + Duration::from_secs(n);
        let mut c = IdleClock::new(t0);
        assert!(!c.observe(s(10), false, Some("a"), idle));
        // the same renewal again is no renewal
        assert!(!c.observe(s(69), false, Some("a"), idle));
        assert!(c.observe(s(70), false, Some("a"), idle));
        // a new renewal resets the clock
        let mut c = IdleClock::new(t0);
        assert!(!c.observe(s(50), false, Some("a"), idle));
        assert!(!c.observe(s(100), false, Some("b"), idle));
        assert!(!c.observe(s(159), false, None, idle));
        assert!(c.observe(s(160), false, None, idle));
        // a running step keeps the node, whatever the lease says
        let mut c = IdleClock::new(t0);
        for n in (0..=600).step_by(30) {
            assert!(!c.observe(s(n), true, None, idle));
        }
        // the step ended between the polls at 600 and 630: idle from 630
        assert!(!c.observe(s(630), false, None, idle));
        assert_eq!(c.remaining(s(650), idle), Duration::from_secs(40));
        assert!(!c.observe(s(689), false, None, idle));
        assert!(c.observe(s(690), false, None, idle));
        assert_eq!(c.remaining(s(700), idle), Duration::ZERO);
        // a step that ended between two polls, never seen running
        let mut c = IdleClock::new(t0);
        c.activity_at(s(25));
        c.activity_at(s(5));
        assert!(!c.observe(s(84), false, None, idle));
        assert!(c.observe(s(85), false, None, idle));
    }

    #[test]
    fn a_step_runs_while_its_pid_lives_and_has_no_rc() {
        let d = tempfile::tempdir().unwrap();
        assert!(!step_running(d.path()));
        let k = d.path().join("run/t/1/0");
        std::fs::create_dir_all(&k).unwrap();
        // just made, no pid yet: starting
        assert!(step_running(d.path()));
        std::fs::write(k.join("pid"), format!("{}\n", std::process::id())).unwrap();
        assert!(step_running(d.path()));
        std::fs::write(k.join("rc"), "0\n").unwrap();
        assert!(!step_running(d.path()));
        let end = last_step_end(d.path()).unwrap();
        assert!(end.elapsed().unwrap() < Duration::from_secs(60));
        std::fs::remove_file(k.join("rc")).unwrap();
        // a pid that is gone: not running
        std::fs::write(k.join("pid"), "999999999\n").unwrap();
        assert!(!step_running(d.path()));
    }

    #[test]
    fn spec_defaults_and_the_poll_interval() {
        let s: WatchSpec = serde_json::from_str(
            r#"{"bucket":"b","lease_key":"p/_state/lease.json","idle_minutes":{"cpu":1}}"#,
        )
        .unwrap();
        assert_eq!(s.idle_for(Some("cpu")), Duration::from_secs(60));
        assert_eq!(s.idle_for(Some("gpu")), Duration::from_secs(1200));
        assert_eq!(s.idle_for(None), Duration::from_secs(1200));
        assert_eq!(s.poll(Duration::from_secs(60)), Duration::from_secs(10));
        assert_eq!(s.poll(Duration::from_secs(1200)), Duration::from_secs(20));
        assert!(!s.systemd && !s.foreground);
    }
}
