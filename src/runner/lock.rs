//! The one file lock: an advisory `flock` on a file, taken without waiting,
//! released when the holder drops it or its process dies.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Held while it lives; dropping it releases the lock.
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

#[derive(Debug, Error)]
pub enum LockError {
    #[error("{path} is locked by another process")]
    Held { path: PathBuf },
    #[error("cannot open {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Take the lock on `path` (the file is created if missing), or fail at once
/// with `LockError::Held` if another holder has it.
pub fn take(path: &Path) -> Result<Lock, LockError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|source| LockError::Io {
            path: path.into(),
            source,
        })?;
    if !try_flock(&file) {
        return Err(LockError::Held { path: path.into() });
    }
    Ok(Lock { _file: file })
}

/// Whether someone holds the lock on `path` now. A missing or unopenable
/// file is not held. (It takes the lock for a moment if it is free.)
pub fn is_held(path: &Path) -> bool {
    let Ok(file) = OpenOptions::new().write(true).open(path) else {
        return false;
    };
    // released when `file` drops
    !try_flock(&file)
}

/// An exclusive, non-blocking flock on `file`; true when we got it.
fn try_flock(file: &File) -> bool {
    // SAFETY: flock on a descriptor we own; released when the file closes or the process dies.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    r == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_cannot_be_taken_twice_and_is_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.lock");
        assert!(!is_held(&path), "no file: not held");
        let lock = take(&path).unwrap();
        assert!(is_held(&path));
        assert!(matches!(take(&path), Err(LockError::Held { .. })));
        drop(lock);
        assert!(!is_held(&path));
        let _again = take(&path).unwrap();
    }

    #[test]
    fn is_held_does_not_create_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.lock");
        assert!(!is_held(&path));
        assert!(!path.exists());
    }

    #[test]
    fn a_lock_in_a_missing_folder_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope/run.lock");
        assert!(matches!(take(&path), Err(LockError::Io { .. })));
    }
}
