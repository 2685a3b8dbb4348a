//! The plan's `slurm` section, resolved: where the allocations go
//! (partition, account, qos, constraint), how long they hold, what each
//! node group's allocation asks for, and how steps run inside them
//! (a container, CUDA MPS). Decoded by `decode::slurm`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

/// `slurm`: defaults for every allocation, and per node group.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct SlurmSection {
    pub partition: Option<String>,
    pub account: Option<String>,
    pub qos: Option<String>,
    pub constraint: Option<String>,
    /// An allocation's time limit (`--time`), unless its group gives one.
    pub time_limit: Option<Duration>,
    /// More `sbatch` options, one argument each (`"--exclusive"`).
    pub sbatch_options: Vec<String>,
    /// More `srun` options for every step, one argument each.
    pub srun_options: Vec<String>,
    /// No task starts on an allocation with less time left than its
    /// estimate plus this margin.
    pub dispatch_margin: Duration,
    /// Steps run in this container (unless their group has its own).
    pub container: Option<Container>,
    /// Start CUDA MPS in each allocation before its first step.
    pub mps: bool,
    /// Per node group (its name).
    pub groups: BTreeMap<String, SlurmGroup>,
}

/// What one node group's allocations ask for beyond `count` and `gpus`.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct SlurmGroup {
    /// `--gres` (default `gpu:<gpus>` when the group has GPUs).
    pub gres: Option<String>,
    pub cpus_per_task: Option<u32>,
    /// `--mem`, as Slurm writes it (`160G`).
    pub mem: Option<String>,
    pub time_limit: Option<Duration>,
    pub partition: Option<String>,
    pub constraint: Option<String>,
    pub container: Option<Container>,
    pub mps: Option<bool>,
}

/// `apptainer exec` / `singularity exec` around every step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Container {
    /// `apptainer` or `singularity`.
    pub runtime: String,
    /// The image (`.sif` file, or `docker://...`).
    pub image: String,
    /// `--bind` values (`/data:/data`).
    pub binds: Vec<String>,
    pub overlay: Option<String>,
    /// `--nv` (GPUs in the container): default true.
    pub nv: bool,
}
