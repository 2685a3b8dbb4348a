//! Where a campaign lives: its controller's lease, the stop request, and
//! (on AWS) the journal segments and the package a detached controller
//! runs from. The provider-neutral types are here; the keys in the bucket
//! are spelled out in `provider/aws/layout.rs`, the local files in
//! [`local_paths`].

pub mod control;
pub mod lease;
pub mod segments;

pub use lease::{acquire, Held, Holder, LeaseDoc, LeaseError, LeaseStore, StopRequest};

/// The local provider's counterparts of the bucket's `_state/` objects,
/// under `.infra/<phase>/`.
pub mod local_paths {
    use std::path::{Path, PathBuf};

    /// `.infra/<phase>/lease.json`: who controls the campaign.
    pub fn lease(state_dir: &Path) -> PathBuf {
        state_dir.join("lease.json")
    }

    /// `.infra/<phase>/stop.json`: `infra stop` asks the controller to stop.
    pub fn stop(state_dir: &Path) -> PathBuf {
        state_dir.join("stop.json")
    }

    /// `.infra/<phase>/controller.log`: a detached local controller's output.
    pub fn controller_log(state_dir: &Path) -> PathBuf {
        state_dir.join("controller.log")
    }

    /// `.infra/<phase>/controller.pid`: the process id of a detached local
    /// controller (`--detach`), for `attach` and `stop`.
    pub fn controller_pid(state_dir: &Path) -> PathBuf {
        state_dir.join("controller.pid")
    }
}

pub mod keeper;
pub mod local_store;
