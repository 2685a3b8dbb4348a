//! The phase's run lock (a `flock` on `.infra/<phase>/run.lock`).

use std::os::fd::AsRawFd;
use std::path::Path;

/// Whether another process holds the lock file at `path`.
pub fn is_held(path: &Path) -> bool {
    let Ok(f) = std::fs::OpenOptions::new().write(true).open(path) else {
        return false;
    };
    // SAFETY: flock on our own descriptor; released when `f` drops.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    r != 0
}
