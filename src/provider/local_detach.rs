//! `--detach` on the local provider: the campaign runs in a background
//! daemon — the same executable with the same command line minus
//! `--detach`, in its own session (a closed terminal or a Ctrl-C in it does
//! not reach it), stdin from /dev/null, stdout and stderr appended to
//! `.infra/<phase>/controller.log`. Its pid is kept in
//! `.infra/<phase>/controller.pid` for `attach` and `stop`.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::campaign::control::{LOCAL_DAEMON, WHERE_ENV};
use crate::campaign::local_paths;

/// Start `exe <args>` as a daemon in `cwd`, its output appended to `log`;
/// its pid (also written to `pid_file`).
pub fn spawn(
    exe: &Path,
    args: &[String],
    cwd: &Path,
    log: &Path,
    pid_file: &Path,
) -> std::io::Result<u32> {
    if let Some(d) = log.parent() {
        std::fs::create_dir_all(d)?;
    }
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let err = out.try_clone()?;
    let mut c = Command::new(exe);
    c.args(args)
        .current_dir(cwd)
        .env(WHERE_ENV, LOCAL_DAEMON)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
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
    let pid = child.id();
    // not waited for: the daemon outlives this process (its parent becomes
    // init, which reaps it)
    std::mem::forget(child);
    std::fs::write(pid_file, format!("{pid}\n"))?;
    Ok(pid)
}

/// The recorded daemon's pid, if it still runs.
pub fn running_daemon(state_dir: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(local_paths::controller_pid(state_dir)).ok()?;
    let pid: u32 = text.trim().parse().ok()?;
    alive(pid).then_some(pid)
}

/// Whether process `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        // no /proc: ask the kernel
        // SAFETY: signal 0 only checks that the process exists.
        return unsafe { libc::kill(pid as i32, 0) } == 0;
    };
    // "<pid> (<comm>) <state> ...": the state follows the last ')'
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z') | Some('X') | None)
}

/// Ask the daemon to stop like a Ctrl-C (SIGINT: its running tasks are
/// stopped and re-queued, the journal stays consistent).
pub fn interrupt(pid: u32) -> bool {
    // SAFETY: a signal to one process we started.
    unsafe { libc::kill(pid as i32, libc::SIGINT) == 0 }
}

/// `log`'s bytes from `from` on (empty when it is missing or shorter).
pub fn read_from(log: &Path, from: u64) -> std::io::Result<Vec<u8>> {
    let mut f = match std::fs::File::open(log) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    if f.metadata()?.len() <= from {
        return Ok(Vec::new());
    }
    f.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_missing_one_is_not() {
        assert!(alive(std::process::id()));
        assert!(!alive(u32::MAX / 2));
    }

    #[test]
    fn a_log_is_read_from_an_offset() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("log");
        assert!(read_from(&p, 0).unwrap().is_empty());
        std::fs::write(&p, b"hello world").unwrap();
        assert_eq!(read_from(&p, 6).unwrap(), b"world");
        assert!(read_from(&p, 11).unwrap().is_empty());
    }
}
