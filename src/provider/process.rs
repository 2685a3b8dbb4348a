//! Child processes in their own process groups: spawn, wait with rusage,
//! kill the whole group. Shared by the local provider's steps and health
//! checks.
//!
//! Over 700 lines: every spawner here shares the private set of process
//! group leaders (`leaders`) and `start`; split, those would be public.

use std::fs::File;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

pub struct Spawned {
    pub pid: i32,
}

#[derive(Debug, Clone, Copy)]
pub struct Exit {
    /// Exit code, or 128 + signal number.
    pub code: i32,
    pub max_rss_kb: u64,
}

/// Start `command` in its own process group. Commands that are one plain
/// program call (no shell syntax at all, the program found on PATH and not a
/// shell builtin) are executed directly, as `bash -c` itself would exec them,
/// without paying for bash's start-up; everything else runs under `bash -c`.
/// The process group id is appended to `pid_log` so a later run or `destroy`
/// can stop what a crashed run left behind.
pub fn spawn(
    command: &str,
    cwd: &Path,
    env: &[(String, String)],
    stdout: File,
    stderr: File,
    pid_log: Option<&PidLog>,
) -> std::io::Result<Spawned> {
    spawn_with(command, cwd, env, stdout, stderr, pid_log, None)
}

/// The wrapper that leaves a step's exit code in a file: a controller that
/// starts after the one that spawned the step died cannot wait for it, but
/// reads how it ended there. Only bash built-ins, so a task's own PATH
/// cannot break it; the code is 128 + signal when the step was killed. The
/// wrapper's own usage (wait4) covers the step's, which it reaped.
/// SIGTERM to the group (a stop) must not end the wrapper before the step:
/// it catches TERM with a no-op (a caught signal is reset for the step, an
/// ignored one would be inherited) and waits for the step, which gets the
/// stop's whole grace.
const EXIT_WRAPPER: &str = r#"trap : TERM; f=$1; shift; "$@"; c=$?; printf '%s
' "$c" >"$f"; exit "$c""#;

/// `argv` (no shell: each element one argument) in its own process group,
/// its exit code left in `exit_file` (see `EXIT_WRAPPER`). The Slurm
/// provider's steps (`srun ... bash -c <command>`) start this way.
pub fn spawn_argv(
    argv: &[std::ffi::OsString],
    cwd: &Path,
    env: &[(String, String)],
    stdout: File,
    stderr: File,
    pid_log: Option<&PidLog>,
    exit_file: &Path,
) -> std::io::Result<Spawned> {
    let mut c = Command::new("bash");
    c.arg("-c")
        .arg(EXIT_WRAPPER)
        .arg("infra-step")
        .arg(exit_file)
        .args(argv);
    let child = start(c, cwd, env, &stdout, &stderr)?;
    let pid = child.id() as i32;
    drop(child);
    leaders().insert(pid);
    if let Some(log) = pid_log {
        log.record(pid);
    }
    Ok(Spawned { pid })
}

/// Run `program args` to its end, its output captured. The child counts
/// as one of ours meanwhile, so that `stop_adopted` (which reaps the
/// orphans a subreaper inherits) does not reap it before it is waited for.
pub fn output_of(
    program: &str,
    args: &[std::ffi::OsString],
) -> std::io::Result<std::process::Output> {
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = child.id() as i32;
    leaders().insert(pid);
    let out = child.wait_with_output();
    leaders().remove(&pid);
    out
}

/// [`spawn`], and when `exit_file` is given, the command's exit code is
/// written there when it ends (see `EXIT_WRAPPER`).
pub fn spawn_with(
    command: &str,
    cwd: &Path,
    env: &[(String, String)],
    stdout: File,
    stderr: File,
    pid_log: Option<&PidLog>,
    exit_file: Option<&Path>,
) -> std::io::Result<Spawned> {
    if let Some(f) = exit_file {
        let path_var = env
            .iter()
            .rev()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var("PATH").ok());
        let (program, args) = direct_exec(command, path_var.as_deref(), cwd).unwrap_or_else(|| {
            (
                PathBuf::from("bash"),
                vec!["-c".to_string(), command.to_string()],
            )
        });
        let argv: Vec<std::ffi::OsString> = std::iter::once(program.into_os_string())
            .chain(args.into_iter().map(Into::into))
            .collect();
        return spawn_argv(&argv, cwd, env, stdout, stderr, pid_log, f);
    }
    let path_var = env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .or_else(|| std::env::var("PATH").ok());
    let direct = direct_exec(command, path_var.as_deref(), cwd);
    let child = match direct {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args);
            match start(c, cwd, env, &stdout, &stderr) {
                // gone since it was found: bash reports it as usual
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                r => Some(r?),
            }
        }
        None => None,
    };
    let child = match child {
        Some(c) => c,
        None => {
            let mut c = Command::new("bash");
            c.arg("-c").arg(command);
            start(c, cwd, env, &stdout, &stderr)?
        }
    };
    let pid = child.id() as i32;
    drop(child); // std does not reap or kill on drop; wait4 below reaps
    leaders().insert(pid);
    if let Some(log) = pid_log {
        log.record(pid);
    }
    Ok(Spawned { pid })
}

fn start(
    mut c: Command,
    cwd: &Path,
    env: &[(String, String)],
    stdout: &File,
    stderr: &File,
) -> std::io::Result<std::process::Child> {
    c.current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(stdout.try_clone()?)
        .stderr(stderr.try_clone()?);
    for (k, v) in env {
        c.env(k, v);
    }
    // Its own process group, so a timeout or Ctrl-C kills everything it
    // started. `process_group` (unlike a pre_exec hook) keeps std on the
    // posix_spawn path, which avoids copying this process's page tables.
    c.process_group(0);
    c.spawn()
}

/// The process groups this state folder started, one id per line: a later
/// run or `destroy` stops what a crashed run left behind. One short
/// O_APPEND write per process on a file kept open; no file is created or
/// deleted per task (ext4 slows down under that churn).
pub struct PidLog {
    file: Option<File>,
}

impl PidLog {
    pub fn open(path: &Path) -> PidLog {
        PidLog {
            file: std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .ok(),
        }
    }

    fn record(&self, pid: i32) {
        if let Some(mut f) = self.file.as_ref() {
            let _ = f.write_all(format!("{pid}\n").as_bytes());
        }
    }
}

/// Bash builtins and keywords: a command starting with one of these needs
/// bash even when it looks like a plain program call (`true` and `false`
/// are left out: the programs of those names do exactly what the builtins do).
const SHELL_WORDS: &[&str] = &[
    ".",
    ":",
    "[",
    "[[",
    "alias",
    "bg",
    "bind",
    "break",
    "builtin",
    "caller",
    "case",
    "cd",
    "command",
    "compgen",
    "complete",
    "compopt",
    "continue",
    "declare",
    "dirs",
    "disown",
    "do",
    "done",
    "echo",
    "elif",
    "else",
    "enable",
    "esac",
    "eval",
    "exec",
    "exit",
    "export",
    "fc",
    "fg",
    "fi",
    "for",
    "function",
    "getopts",
    "hash",
    "help",
    "history",
    "if",
    "in",
    "jobs",
    "kill",
    "let",
    "local",
    "logout",
    "mapfile",
    "popd",
    "printf",
    "pushd",
    "pwd",
    "read",
    "readarray",
    "readonly",
    "return",
    "select",
    "set",
    "shift",
    "shopt",
    "source",
    "suspend",
    "test",
    "then",
    "time",
    "times",
    "trap",
    "type",
    "typeset",
    "ulimit",
    "umask",
    "unalias",
    "unset",
    "until",
    "wait",
    "while",
];

/// The program and arguments of a command that needs no shell: only words
/// of characters that no shell treats specially, separated by spaces.
fn direct_exec(
    command: &str,
    path_var: Option<&str>,
    cwd: &Path,
) -> Option<(PathBuf, Vec<String>)> {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./,:@+%".contains(c);
    if command.is_empty() || !command.chars().all(|c| c == ' ' || plain(c)) {
        return None;
    }
    let mut words = command.split(' ').filter(|w| !w.is_empty());
    let first = words.next()?;
    if SHELL_WORDS.contains(&first) {
        return None;
    }
    let program = if first.contains('/') {
        let p = cwd.join(first);
        is_executable(&p).then_some(p)?
    } else {
        lookup(first, path_var?)?
    };
    Some((program, words.map(str::to_string).collect()))
}

/// `name` searched on `path_var`, remembered for the life of the process (a
/// campaign runs the same few programs thousands of times; a program removed
/// meanwhile fails to start and the command goes to bash instead).
fn lookup(name: &str, path_var: &str) -> Option<PathBuf> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    type Cache = Mutex<HashMap<(String, String), Option<PathBuf>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let key = (name.to_string(), path_var.to_string());
    if let Some(hit) = cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
        return hit;
    }
    let found = path_var
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| is_executable(p));
    if let Ok(mut c) = cache.lock() {
        c.insert(key, found.clone());
    }
    found
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// What `wait` reports when the leader cannot be reaped.
const UNKNOWN_EXIT: Exit = Exit {
    code: -1,
    max_rss_kb: 0,
};

/// Wait for `pid` on the runtime's event loop through a pidfd (Linux 5.3+),
/// without a thread per child; None when pidfd_open is not available.
async fn wait_pidfd(pid: i32) -> Option<Exit> {
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: pidfd_open returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    if fd < 0 {
        return None;
    }
    // SAFETY: fd is a fresh descriptor that nothing else owns; the AsyncFd
    // owns it from here and closes it (after deregistering) when dropped.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let afd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
    }
    .ok()?;
    loop {
        // readable once the process has exited
        let mut ready = afd.readable().await.ok()?;
        match reap(pid, libc::WNOHANG) {
            Ok(Some(exit)) => return Some(exit),
            Ok(None) => ready.clear_ready(),
            Err(_) => return Some(UNKNOWN_EXIT),
        }
    }
}

/// wait4 with rusage: the exit, Ok(None) while it still runs (WNOHANG), or
/// the error (not our child).
fn reap(pid: i32, flags: i32) -> std::io::Result<Option<Exit>> {
    let mut status = 0i32;
    // SAFETY: rusage is plain data; wait4 fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        let r = unsafe { libc::wait4(pid, &mut status, flags, &mut ru) };
        if r == pid {
            leaders().remove(&pid);
            break;
        }
        if r == 0 {
            return Ok(None);
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        -1
    };
    Ok(Some(Exit {
        code,
        max_rss_kb: ru.ru_maxrss.max(0) as u64,
    }))
}

impl Spawned {
    /// Block until the leader exits (run it on a blocking thread).
    pub fn wait_blocking(pid: i32) -> Exit {
        reap(pid, 0).ok().flatten().unwrap_or(UNKNOWN_EXIT)
    }

    pub async fn wait(&self) -> Exit {
        let pid = self.pid;
        if let Some(exit) = wait_pidfd(pid).await {
            return exit;
        }
        // kernels without pidfd_open: a blocking thread waits
        tokio::task::spawn_blocking(move || Spawned::wait_blocking(pid))
            .await
            .unwrap_or(UNKNOWN_EXIT)
    }

    pub fn signal_group(&self, sig: i32) {
        // SAFETY: plain syscall on our own child's process group.
        unsafe {
            libc::killpg(self.pid, sig);
        }
    }

    /// SIGTERM the group, then SIGKILL after `grace` if anything is left.
    pub async fn kill_group(&self, grace: Duration) {
        self.signal_group(libc::SIGTERM);
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline
            && group_alive(self.pid)
            && !leader_gone(self.pid)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.signal_group(libc::SIGKILL);
    }
}

/// When the process started (clock ticks after boot, `/proc/<pid>/stat`
/// field 22): with the pid, it names one process even after pids wrap.
pub fn start_time(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // fields after the command name (which may hold spaces and parentheses)
    let rest = s.rsplit_once(')')?.1;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The process `pid` that started at `start` still runs (not a zombie).
pub fn still_running(pid: i32, start: u64) -> bool {
    start_time(pid) == Some(start) && !leader_gone(pid)
}

/// True when the process has exited (a zombie or gone), without reaping it.
pub fn leader_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

pub fn group_alive(pgid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::killpg(pgid, 0) == 0 }
}

/// The processes `spawn` started and nobody has reaped yet: the children
/// of this process that are not adopted orphans.
fn leaders() -> std::sync::MutexGuard<'static, std::collections::HashSet<i32>> {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};
    static LEADERS: OnceLock<Mutex<HashSet<i32>>> = OnceLock::new();
    LEADERS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// Make this process the reaper of its orphaned descendants (Linux 3.4+):
/// a task that daemonizes (`setsid server &`) leaves its process group and
/// session, but stays a child of infra, where `stop_adopted` finds it.
pub fn become_subreaper() {
    // SAFETY: a flag on this process; no pointer is passed.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
}

/// The children of this process (every thread's).
fn children() -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc/self/task") {
        for t in rd.flatten() {
            if let Ok(text) = std::fs::read_to_string(t.path().join("children")) {
                out.extend(
                    text.split_whitespace()
                        .filter_map(|p| p.parse::<i32>().ok()),
                );
            }
        }
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

/// SIGKILL `pid`, and its process group when it leads one (a daemon's
/// workers).
fn kill_hard(pid: i32) {
    // SAFETY: plain syscalls on a process chosen by its environment.
    unsafe {
        if libc::getpgid(pid) == pid {
            libc::killpg(pid, libc::SIGKILL);
        }
        libc::kill(pid, libc::SIGKILL);
    }
}

/// Reap the adopted child `pid` (it was killed: it ends at once), giving
/// up after a second.
fn reap_adopted(pid: i32) {
    for _ in 0..1000 {
        let mut status = 0;
        // SAFETY: wait for one child of ours that `spawn` did not start.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r != 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Stop the orphans this process adopted (as the subreaper) whose
/// environment `ours` recognises, with what they started, and reap the
/// adopted orphans that already exited. The number stopped.
pub fn stop_adopted(ours: &dyn Fn(&[Vec<u8>]) -> bool) -> usize {
    let mut stopped = 0;
    // a killed orphan's own children come to us next: a few rounds
    for _ in 0..8 {
        let mut found = false;
        for pid in children() {
            if leaders().contains(&pid) {
                continue;
            }
            if leader_gone(pid) {
                reap_adopted(pid);
                continue;
            }
            if ours(&environ(pid)) {
                kill_hard(pid);
                reap_adopted(pid);
                stopped += 1;
                found = true;
            }
        }
        if !found {
            break;
        }
    }
    stopped
}

/// Stop every process on this machine (but this one) whose environment
/// `ours` recognises, with its process group when it leads one: what a
/// crashed run, or a task that daemonized before infra died, left behind.
/// Returns how many processes were stopped.
pub fn stop_marked(ours: &dyn Fn(&[Vec<u8>]) -> bool) -> usize {
    let mut groups = std::collections::HashSet::new();
    stop_marked_groups(ours, &mut groups)
}

/// [`stop_marked`], skipping processes of the groups already in `groups`
/// (killed a moment ago: a SIGKILLed process stays visible in /proc until
/// the kernel has ended it) and adding the group of each process it stops,
/// so `groups.len()` counts process groups, each once.
pub fn stop_marked_groups(
    ours: &dyn Fn(&[Vec<u8>]) -> bool,
    groups: &mut std::collections::HashSet<i32>,
) -> usize {
    let me = std::process::id() as i32;
    let mut stopped = 0;
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return 0;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if pid <= 1 || pid == me || leaders().contains(&pid) {
            continue;
        }
        // SAFETY: reads the process group of a pid; no pointer is passed.
        let pgid = unsafe { libc::getpgid(pid) };
        if pgid > 0 && groups.contains(&pgid) {
            continue;
        }
        if ours(&environ(pid)) {
            kill_hard(pid);
            stopped += 1;
            groups.insert(if pgid > 0 { pgid } else { pid });
        }
    }
    stopped
}

/// True when `env` holds the entry `kv` (`NAME=value`) exactly.
pub fn has_entry(env: &[Vec<u8>], kv: &str) -> bool {
    env.iter().any(|e| e == kv.as_bytes())
}

/// True when `env` defines `name`.
pub fn has_var(env: &[Vec<u8>], name: &str) -> bool {
    env.iter()
        .any(|e| e.len() > name.len() && e.starts_with(name.as_bytes()) && e[name.len()] == b'=')
}

/// Kill process groups left by a run that died (kill -9): their ids are in
/// the pid log, and each must carry our state dir in its environment so a
/// reused pid of an unrelated process is never touched. The log is emptied.
pub fn reap_orphans(pid_log: &Path, marker: &str) -> std::collections::HashSet<i32> {
    reap_orphans_but(pid_log, marker, &|_| false)
}

/// [`reap_orphans`], sparing the groups whose leader's environment `keep`
/// recognises (steps a new controller adopts): they stay in the log.
/// Returns the process groups it killed.
pub fn reap_orphans_but(
    pid_log: &Path,
    marker: &str,
    keep: &dyn Fn(&[Vec<u8>]) -> bool,
) -> std::collections::HashSet<i32> {
    let mut pids: Vec<i32> = Vec::new();
    if pid_log.is_dir() {
        // the layout of earlier versions: one file per process group
        if let Ok(rd) = std::fs::read_dir(pid_log) {
            pids.extend(
                rd.flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok()),
            );
        }
        let _ = std::fs::remove_dir_all(pid_log);
    } else if let Ok(text) = std::fs::read_to_string(pid_log) {
        pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        let _ = std::fs::remove_file(pid_log);
    }
    pids.sort_unstable();
    pids.dedup();
    let mut killed = std::collections::HashSet::new();
    let mut kept = Vec::new();
    for pgid in pids.into_iter().filter(|p| *p > 1) {
        let env = environ(pgid);
        let ours = has_entry(&env, marker);
        if ours && group_alive(pgid) && keep(&env) {
            kept.push(pgid);
            continue;
        }
        if ours && group_alive(pgid) {
            // SAFETY: plain syscall on a process group that carries our marker.
            unsafe {
                libc::killpg(pgid, libc::SIGKILL);
            }
            killed.insert(pgid);
        }
    }
    if !kept.is_empty() {
        let log = PidLog::open(pid_log);
        for pgid in kept {
            log.record(pgid);
        }
    }
    killed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_program_calls_skip_the_shell_and_the_rest_do_not() {
        let path = Some("/usr/bin:/bin");
        let cwd = Path::new("/");
        let (p, args) = direct_exec("env -0 a,b", path, cwd).expect("env is a plain program");
        assert!(p.ends_with("env"), "{p:?}");
        assert_eq!(args, vec!["-0", "a,b"]);
        assert!(
            direct_exec("true", path, cwd).is_some(),
            "true acts the same as a program"
        );
        for cmd in [
            "echo hi",
            "cd /tmp",
            "env $HOME",
            "env a; env",
            "env 'a b'",
            "env \"a\"",
            "env > out",
            "env a=b",
            "X=1 env",
            "env *",
            "env ~",
            "env\tx",
            "env\nenv",
            "no-such-program-anywhere",
            "",
        ] {
            assert!(
                direct_exec(cmd, path, cwd).is_none(),
                "{cmd:?} must go through bash"
            );
        }
    }
}
