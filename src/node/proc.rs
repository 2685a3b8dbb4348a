//! Process control of a step: its own session, the agent as a child
//! subreaper, the whole tree stopped with SIGTERM, a grace period, then
//! SIGKILL, and every process tagged in its environment so that a later
//! agent (`reap`) finds a step left by an agent that died.
//!
//! Why a subreaper and not `systemd-run --scope`: the agent must work on any
//! AMI and in the emulator (no systemd there, and none on this build
//! machine to test it with). The subreaper catches every descendant that
//! leaves the step's process group or session (`setsid`, double fork) for
//! as long as the agent lives; the environment tag catches them after it
//! died. A process that both clears its environment and outlives its agent
//! escapes both; a cgroup would be needed for that.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::provider::process::{has_entry, leader_gone};

/// The variable naming the step a process belongs to:
/// `<task>/<attempt>/<key>`.
pub const STEP_VAR: &str = "INFRA_STEP";
/// The variable naming the node folder of the agent that started it (on the
/// emulator many "nodes" share one machine; `reap` stays in its own).
pub const ROOT_VAR: &str = "INFRA_STEP_ROOT";

/// Make this process the reaper of its orphaned descendants (Linux 3.4+).
pub fn become_subreaper() {
    crate::provider::process::become_subreaper();
}

/// Start `program args` in a new session (and so its own process group),
/// stdin from /dev/null, stdout and stderr to the files; its pid.
pub fn spawn_session(
    program: &Path,
    args: &[&std::ffi::OsStr],
    cwd: &Path,
    env: &[(String, String)],
    stdout: File,
    stderr: File,
) -> std::io::Result<i32> {
    let mut c = Command::new(program);
    c.args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    for (k, v) in env {
        c.env(k, v);
    }
    // SAFETY: setsid is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        c.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = c.spawn()?;
    // std neither waits for nor kills a dropped Child: the agent reaps it
    Ok(child.id() as i32)
}

/// Every live process: pid -> (parent pid, state letter).
fn table() -> HashMap<i32, (i32, u8)> {
    let mut out = HashMap::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) S ppid ...": comm may hold anything, so from the last ')'
        let Some(close) = stat.iter().rposition(|b| *b == b')') else {
            continue;
        };
        let rest = String::from_utf8_lossy(&stat[close + 1..]);
        let mut f = rest.split_whitespace();
        let state = f.next().and_then(|s| s.bytes().next()).unwrap_or(b'?');
        let ppid = f.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        out.insert(pid, (ppid, state));
    }
    out
}

/// A process's environment entries (empty when it is gone or a zombie).
pub fn environ(pid: i32) -> Vec<Vec<u8>> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|kv| !kv.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

/// What belongs to a step: descendants of this process, and processes whose
/// environment `tagged` recognises.
pub struct Tree<'a> {
    /// Count the descendants of this process (the agent that runs the step).
    pub descendants_of: Option<i32>,
    pub tagged: &'a dyn Fn(&[Vec<u8>]) -> bool,
}

impl Tree<'_> {
    /// The live (not zombie) processes of the tree, never this process.
    pub fn members(&self) -> Vec<i32> {
        let me = std::process::id() as i32;
        let t = table();
        let mut found: HashSet<i32> = HashSet::new();
        if let Some(top) = self.descendants_of {
            let mut kids: HashMap<i32, Vec<i32>> = HashMap::new();
            for (pid, (ppid, _)) in &t {
                kids.entry(*ppid).or_default().push(*pid);
            }
            let mut todo = vec![top];
            while let Some(p) = todo.pop() {
                for k in kids.get(&p).into_iter().flatten() {
                    if found.insert(*k) {
                        todo.push(*k);
                    }
                }
            }
        }
        for pid in t.keys() {
            if *pid > 1 && *pid != me && !found.contains(pid) && (self.tagged)(&environ(*pid)) {
                found.insert(*pid);
            }
        }
        found
            .into_iter()
            .filter(|p| *p != me && t.get(p).is_some_and(|(_, s)| *s != b'Z' && *s != b'X'))
            .collect()
    }
}

/// Reap every exited child of this process (adopted orphans included),
/// keeping the wait status of `leader` when it is among them.
pub struct Reaper {
    pub leader: i32,
    pub status: Option<i32>,
}

impl Reaper {
    pub fn new(leader: i32) -> Reaper {
        Reaper {
            leader,
            status: None,
        }
    }

    pub fn reap(&mut self) {
        loop {
            let mut status = 0;
            // SAFETY: waits for any child of ours without blocking.
            let r = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if r <= 0 {
                return;
            }
            if r == self.leader {
                self.status = Some(status);
            }
        }
    }

    /// Block until the leader has exited (it has, or is about to).
    pub fn wait_leader(&mut self) {
        while self.status.is_none() {
            let mut status = 0;
            // SAFETY: waits for our own child.
            let r = unsafe { libc::waitpid(self.leader, &mut status, 0) };
            if r == self.leader {
                self.status = Some(status);
            } else if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                // not our child any more (reaped elsewhere): unknown
                self.status = Some(-1);
            }
        }
        self.reap();
    }

    /// The leader's exit code, or 128 + the signal that ended it.
    pub fn code(&self) -> i32 {
        match self.status {
            Some(s) if s >= 0 && libc::WIFEXITED(s) => libc::WEXITSTATUS(s),
            Some(s) if s >= 0 && libc::WIFSIGNALED(s) => 128 + libc::WTERMSIG(s),
            _ => 1,
        }
    }
}

/// Peak RSS (KiB) of the largest process this agent (recursively) waited
/// for: the step's tree, since the agent is their subreaper.
pub fn children_peak_rss_kb() -> u64 {
    // SAFETY: rusage is plain data that getrusage fills.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    ru.ru_maxrss.max(0) as u64
}

fn signal(pids: &[i32], group: Option<i32>, sig: i32) {
    // SAFETY: plain kill syscalls on the step's processes.
    unsafe {
        if let Some(g) = group {
            libc::killpg(g, sig);
        }
        for p in pids {
            // one signal per process: a second SIGTERM would run a
            // task's TERM trap twice
            if group.is_some_and(|g| libc::getpgid(*p) == g) {
                continue;
            }
            libc::kill(*p, sig);
        }
    }
}

/// Stop a tree: SIGTERM to the group `group` and to every member, again to
/// members that appear meanwhile, up to `grace`; then SIGKILL to whatever is
/// left until nothing is; exited children are reaped throughout. The number
/// of processes signalled.
pub async fn kill_tree(
    tree: &Tree<'_>,
    group: Option<i32>,
    grace: Duration,
    reaper: &mut Reaper,
) -> usize {
    let mut termed: HashSet<i32> = HashSet::new();
    let deadline = tokio::time::Instant::now() + grace;
    loop {
        reaper.reap();
        let live = tree.members();
        let new: Vec<i32> = live
            .iter()
            .copied()
            .filter(|p| !termed.contains(p))
            .collect();
        signal(&new, group.filter(|_| termed.is_empty()), libc::SIGTERM);
        termed.extend(new);
        if live.is_empty() || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // whatever is left: SIGKILL until the tree is empty (a forking process
    // may add members between a scan and the signals)
    for round in 0..200 {
        reaper.reap();
        let live = tree.members();
        if live.is_empty() {
            break;
        }
        termed.extend(live.iter().copied());
        signal(&live, group.filter(|_| round == 0), libc::SIGKILL);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    reaper.reap();
    termed.len()
}

/// Wait until `pid` (a child) has exited, without reaping it: through a
/// pidfd on the event loop, else by polling.
pub async fn exited(pid: i32) {
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: pidfd_open returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    if fd >= 0 {
        // SAFETY: a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: the AsyncFd owns the descriptor and closes it when dropped.
        let afd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
        };
        if let Ok(afd) = afd {
            let _ = afd.readable().await;
            return;
        }
    }
    while !leader_gone(pid) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The environment tag of one step.
pub fn step_tag(task: &str, attempt: u32, key: &str) -> String {
    format!("{task}/{attempt}/{key}")
}

/// True when `env` belongs to a step started from the node folder `root`
/// (any step when `step` is None).
pub fn tagged_by(env: &[Vec<u8>], root: &str, step: Option<&str>) -> bool {
    has_entry(env, &format!("{ROOT_VAR}={root}"))
        && match step {
            Some(s) => has_entry(env, &format!("{STEP_VAR}={s}")),
            None => crate::provider::process::has_var(env, STEP_VAR),
        }
}
