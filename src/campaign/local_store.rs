//! The local provider's lease: `.infra/<phase>/lease.json` says who holds
//! it, and an advisory lock on `.infra/<phase>/lease.lock`, held for the
//! controller's life, makes it exclusive (a dead controller's lock goes
//! with it, so its lease is free at once).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::lease::{BoxFut, LeaseDoc, LeaseStore, StopRequest};
use super::local_paths;
use crate::runner::lock::{self, Lock, LockError};

pub struct LocalStore {
    dir: PathBuf,
    lock: Mutex<Option<Lock>>,
}

const TAG: &str = "local";

impl LocalStore {
    pub fn new(state_dir: &Path) -> LocalStore {
        LocalStore {
            dir: state_dir.to_path_buf(),
            lock: Mutex::new(None),
        }
    }

    fn lock_path(&self) -> PathBuf {
        self.dir.join("lease.lock")
    }

    fn holding(&self) -> bool {
        self.lock.lock().map(|l| l.is_some()).unwrap_or(false)
    }

    fn write(&self, doc: &LeaseDoc) -> Result<(), String> {
        let path = local_paths::lease(&self.dir);
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(doc).map_err(|e| e.to_string())?;
        std::fs::write(&tmp, text)
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    }
}

impl LeaseStore for LocalStore {
    fn read(&self) -> BoxFut<'_, Result<Option<(LeaseDoc, String)>, String>> {
        Box::pin(async move {
            // a lease file whose lock nobody holds is a dead controller's
            if !self.holding() && !lock::is_held(&self.lock_path()) {
                return Ok(None);
            }
            let text = match std::fs::read_to_string(local_paths::lease(&self.dir)) {
                Ok(t) => t,
                Err(_) => return Ok(None),
            };
            Ok(serde_json::from_str(&text)
                .ok()
                .map(|d| (d, TAG.to_string())))
        })
    }

    fn create<'a>(&'a self, doc: &'a LeaseDoc) -> BoxFut<'a, Result<Option<String>, String>> {
        Box::pin(async move {
            std::fs::create_dir_all(&self.dir)
                .map_err(|e| format!("cannot create {}: {e}", self.dir.display()))?;
            match lock::take(&self.lock_path()) {
                Ok(l) => {
                    if let Ok(mut g) = self.lock.lock() {
                        *g = Some(l);
                    }
                    self.write(doc)?;
                    Ok(Some(TAG.to_string()))
                }
                Err(LockError::Held { .. }) => Ok(None),
                Err(e) => Err(e.to_string()),
            }
        })
    }

    fn replace<'a>(
        &'a self,
        doc: &'a LeaseDoc,
        _etag: &'a str,
    ) -> BoxFut<'a, Result<Option<String>, String>> {
        Box::pin(async move {
            if !self.holding() {
                return self.create(doc).await;
            }
            self.write(doc)?;
            Ok(Some(TAG.to_string()))
        })
    }

    fn release<'a>(&'a self, _etag: &'a str) -> BoxFut<'a, Result<(), String>> {
        Box::pin(async move {
            if self.holding() {
                let _ = std::fs::remove_file(local_paths::lease(&self.dir));
                if let Ok(mut g) = self.lock.lock() {
                    *g = None;
                }
            }
            Ok(())
        })
    }

    fn stop_request(&self) -> BoxFut<'_, Option<StopRequest>> {
        Box::pin(async move {
            let text = std::fs::read_to_string(local_paths::stop(&self.dir)).ok()?;
            serde_json::from_str(&text).ok()
        })
    }

    fn request_stop<'a>(&'a self, req: &'a StopRequest) -> BoxFut<'a, Result<(), String>> {
        Box::pin(async move {
            let path = local_paths::stop(&self.dir);
            let text = serde_json::to_vec_pretty(req).map_err(|e| e.to_string())?;
            std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
        })
    }

    fn clear_stop(&self) -> BoxFut<'_, ()> {
        Box::pin(async move {
            let _ = std::fs::remove_file(local_paths::stop(&self.dir));
        })
    }

    fn location(&self) -> String {
        local_paths::lease(&self.dir).display().to_string()
    }
}
