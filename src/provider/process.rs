//! Child processes in their own process groups: spawn, wait with rusage,
//! kill the whole group. Shared by the local provider's steps and health
//! checks.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

pub struct Spawned {
    pub pid: i32,
    pid_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy)]
pub struct Exit {
    /// Exit code, or 128 + signal number.
    pub code: i32,
    pub max_rss_kb: u64,
}

pub fn spawn(
    command: &str,
    cwd: &Path,
    env: &[(String, String)],
    stdout: File,
    stderr: File,
    pid_dir: Option<&Path>,
) -> std::io::Result<Spawned> {
    let mut c = Command::new("bash");
    c.arg("-c")
        .arg(command)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    for (k, v) in env {
        c.env(k, v);
    }
    // Its own process group, so a timeout or Ctrl-C kills everything it
    // started. `process_group` (unlike a pre_exec hook) keeps std on the
    // posix_spawn path, which avoids copying this process's page tables.
    c.process_group(0);
    let child = c.spawn()?;
    let pid = child.id() as i32;
    drop(child); // std does not reap or kill on drop; wait4 below reaps
    let pid_file = pid_dir.map(|d| d.join(pid.to_string()));
    if let Some(f) = &pid_file {
        let _ = std::fs::write(f, "");
    }
    Ok(Spawned { pid, pid_file })
}

impl Spawned {
    /// Block until the leader exits (run it on a blocking thread).
    pub fn wait_blocking(pid: i32) -> Exit {
        let mut status = 0i32;
        // SAFETY: rusage is plain data; wait4 fills it.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        loop {
            let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
            if r == pid {
                break;
            }
            if r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Exit {
                code: -1,
                max_rss_kb: 0,
            };
        }
        let code = if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else if libc::WIFSIGNALED(status) {
            128 + libc::WTERMSIG(status)
        } else {
            -1
        };
        Exit {
            code,
            max_rss_kb: ru.ru_maxrss.max(0) as u64,
        }
    }

    pub async fn wait(&self) -> Exit {
        let pid = self.pid;
        tokio::task::spawn_blocking(move || Spawned::wait_blocking(pid))
            .await
            .unwrap_or(Exit {
                code: -1,
                max_rss_kb: 0,
            })
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

    pub fn forget_pid_file(&self) {
        if let Some(f) = &self.pid_file {
            let _ = std::fs::remove_file(f);
        }
    }
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

/// Kill process groups left by a run that died (kill -9): their ids are in
/// `pid_dir`, and each must carry our state dir in its environment so a
/// reused pid of an unrelated process is never touched.
pub fn reap_orphans(pid_dir: &Path, marker: &str) -> usize {
    let mut killed = 0;
    let Ok(rd) = std::fs::read_dir(pid_dir) else {
        return 0;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if let Ok(pgid) = name.parse::<i32>() {
            let env = std::fs::read(format!("/proc/{pgid}/environ")).unwrap_or_default();
            let ours = env.split(|b| *b == 0).any(|kv| kv == marker.as_bytes());
            if ours && group_alive(pgid) {
                unsafe {
                    libc::killpg(pgid, libc::SIGKILL);
                }
                killed += 1;
            }
        }
        let _ = std::fs::remove_file(e.path());
    }
    killed
}
