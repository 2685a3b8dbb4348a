//! Checked file writes: every write the agent makes either happens or ends
//! the run with exit 176 and the file's name and the OS error (a full disk
//! must never turn into a successful attempt). Also the lock files.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::{Fail, EXIT_WRITE};

/// Exit 176: `what` (a path) could not be written.
pub fn write_fail(path: &Path, e: &std::io::Error) -> Fail {
    Fail::new(EXIT_WRITE, format!("cannot write {}: {e}", path.display()))
}

/// Write `bytes` to `path` (created or truncated), checked.
pub fn write(path: &Path, bytes: &[u8]) -> Result<(), Fail> {
    let mut f = File::create(path).map_err(|e| write_fail(path, &e))?;
    f.write_all(bytes).map_err(|e| write_fail(path, &e))?;
    f.flush().map_err(|e| write_fail(path, &e))
}

fn tmp_of(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp{}", std::process::id()));
    path.with_file_name(name)
}

/// Write `bytes` to a temporary file beside `path`, then rename it into
/// place: readers see the old content or the whole new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Fail> {
    let tmp = tmp_of(path);
    if let Err(f) = write(&tmp, bytes) {
        let _ = std::fs::remove_file(&tmp);
        return Err(f);
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        write_fail(path, &e)
    })
}

/// `mkdir -p`, checked.
pub fn mkdirs(path: &Path) -> Result<(), Fail> {
    std::fs::create_dir_all(path).map_err(|e| write_fail(path, &e))
}

/// `rm -rf`, checked (a folder that is not there is fine).
pub fn remove_all(path: &Path) -> Result<(), Fail> {
    let r = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => Err(e),
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
    };
    r.map_err(|e| Fail::new(EXIT_WRITE, format!("cannot remove {}: {e}", path.display())))
}

/// An exclusive lock on a file (`flock`), held until dropped.
pub struct Lock {
    _file: File,
}

/// Wait for the exclusive lock on `path` (created when missing).
pub fn lock(path: &Path) -> Result<Lock, Fail> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| write_fail(path, &e))?;
    loop {
        // SAFETY: flock on a descriptor we own.
        let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if r == 0 {
            return Ok(Lock { _file: file });
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(Fail::new(
                EXIT_WRITE,
                format!("cannot lock {}: {e}", path.display()),
            ));
        }
    }
}

/// SHA-256 of bytes, lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(bytes);
    let mut s = String::with_capacity(64);
    for b in d {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The first executable `name` on `$PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The shell that runs a task's command: bash, else sh.
pub fn shell() -> PathBuf {
    which("bash").unwrap_or_else(|| PathBuf::from("/bin/sh"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_to_a_full_device_fails_with_176_and_the_path() {
        let f = write(Path::new("/dev/full"), b"x").unwrap_err();
        assert_eq!(f.code, EXIT_WRITE);
        assert!(f.msg.contains("/dev/full"), "{}", f.msg);
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("rc");
        write_atomic(&p, b"0\n").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"0\n");
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
