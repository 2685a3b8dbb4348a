//! How a step's command reaches its node when the node is not this
//! machine's process table but a cluster's allocation (Slurm: `srun
//! --jobid=<allocation> --overlap ...`). The local executor runs its steps
//! through a `Launcher` when it has one, and everything else of an attempt
//! (working folders, checkpoints, logs, outputs, health checks, adoption)
//! stays the same: the folders live on the file system the cluster shares.

use std::ffi::OsString;
use std::path::Path;

pub trait Launcher: Send + Sync {
    /// The argument vector (no shell) that runs `command` on node `node`
    /// in the folder `cwd`; `env` is the step's environment (the launcher
    /// passes it on).
    fn argv(
        &self,
        node: usize,
        cwd: &Path,
        command: &str,
        env: &[(String, String)],
    ) -> Vec<OsString>;

    /// One of `nodes` that went away, with the reason: a step that failed
    /// then is the node's fault (`Outcome::Lost`), not the task's.
    fn node_gone(&self, nodes: &[usize]) -> Option<String>;

    /// The provider's name in the tasks' environment (`INFRA_PROVIDER`).
    fn provider(&self) -> &'static str;
}
