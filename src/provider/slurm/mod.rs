//! The Slurm provider: a node group's nodes are allocations on a cluster
//! that `sbatch` reaches (a holder job each), steps run inside them with
//! `srun --jobid=<allocation> --overlap`, and the project folder is on the
//! file system the cluster shares, so logs, outputs and checkpoints are
//! where the local provider has them.
//!
//! `argv.rs` builds every `sbatch`/`srun` command line (pure, no shell),
//! `cluster.rs` runs them and reads `squeue`, `state.rs` is the phase's
//! allocations on disk, `provider.rs` the lifecycle, `executor.rs` a run's
//! allocations (losses, replacements, the time left).

pub mod argv;
pub mod cluster;
pub mod executor;
pub mod meter;
pub mod provider;
pub mod state;

pub use provider::SlurmProvider;
