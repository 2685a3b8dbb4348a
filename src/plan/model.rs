//! The resolved plan: what the rest of the tool works from. Built by
//! `decode` from the parsed file; every field here is already validated.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};

use super::json::Pos;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    Local,
    Aws,
    Slurm,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Local => "local",
            ProviderKind::Aws => "aws",
            ProviderKind::Slurm => "slurm",
        }
    }

    /// Whether nodes are worker slots on this machine.
    pub fn is_local(self) -> bool {
        self == ProviderKind::Local
    }
}

/// The provider a name (`local`, `aws`) stands for.
impl std::str::FromStr for ProviderKind {
    type Err = String;

    fn from_str(name: &str) -> Result<ProviderKind, String> {
        [ProviderKind::Local, ProviderKind::Aws, ProviderKind::Slurm]
            .into_iter()
            .find(|k| k.as_str() == name)
            .ok_or_else(|| format!("unknown provider \"{name}\" (local, aws or slurm)"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Market {
    Spot,
    OnDemand,
}

impl Market {
    pub fn as_str(self) -> &'static str {
        match self {
            Market::Spot => "spot",
            Market::OnDemand => "on-demand",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Budget {
    pub usd: f64,
    pub max_hourly_usd: Option<f64>,
    pub hard_stop: bool,
    /// Node groups the catalog has no price for count as $0 instead of
    /// being refused.
    pub accept_unpriced: bool,
    /// Slurm: the most GPU-hours / node-hours the allocations may hold
    /// (a cluster has no dollar price; `usd` is then unlimited unless set).
    pub gpu_hours: Option<f64>,
    pub node_hours: Option<f64>,
}

/// `checkpoint_interval` when neither the plan nor the template gives one.
pub const DEFAULT_CHECKPOINT_INTERVAL_SECONDS: u64 = 300;
/// `stop_grace_seconds` when neither the plan nor the template gives one.
pub const DEFAULT_STOP_GRACE_SECONDS: u64 = 30;
/// The longest grace after a spot interruption notice: AWS gives two
/// minutes, and the checkpoint and the results still have to go up.
pub const MAX_SPOT_GRACE_SECONDS: u64 = 90;
/// The longest `stop_grace_seconds` accepted.
pub const MAX_STOP_GRACE_SECONDS: u64 = 3600;

/// `idle_shutdown_minutes` when the plan gives none.
pub const DEFAULT_IDLE_SHUTDOWN_MINUTES: u32 = 20;
/// The largest `idle_shutdown_minutes` accepted: a day (idling longer than
/// that without a controller is a mistake, not a setting).
pub const MAX_IDLE_SHUTDOWN_MINUTES: u64 = 1440;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeGroup {
    pub name: String,
    pub instance_type: String,
    pub count: u32,
    pub market: Market,
    /// EFA on every network card: what the plan says, else on where a
    /// template the group runs requires it and the type can have it
    /// (`tasks::requires::efa_by_default`).
    pub efa: bool,
    /// `efa` as the plan gives it (None: not given).
    pub efa_set: Option<bool>,
    /// `cluster`, `spread` or `partition` (EC2 placement strategies).
    pub placement: Option<String>,
    pub ami: Option<String>,
    pub volume_gb: u32,
    pub slots: u32,
    pub max_lifetime_hours: Option<f64>,
    /// Minutes a node that runs no step and sees no renewal of the
    /// controller's lease waits before it stops billing (it deletes its
    /// fleet and shuts down; docs/CAMPAIGN.md "No controller, no spend").
    pub idle_shutdown_minutes: u32,
    /// GPUs per node as the plan states it (checked against the catalog).
    pub gpus: Option<u32>,
    /// Workers a task in one slot should use (`INFRA_N_WORKERS`).
    pub workers_per_slot: Option<u32>,
    pub availability_zone: Option<String>,
    pub pos: Pos,
    /// JSON path of the group in the plan, for later validators.
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetryPolicy {
    /// Total attempts per task, the first included.
    pub attempts: u32,
    pub backoff: Duration,
    pub backoff_max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 1,
            backoff: Duration::from_secs(1),
            backoff_max: Duration::from_secs(8),
        }
    }
}

impl RetryPolicy {
    /// Delay before attempt `next` (2, 3, ...): 1, 2, 4, 8 s style.
    pub fn delay_before(&self, next: u32) -> Duration {
        let exp = next.saturating_sub(2).min(30);
        let d = self.backoff.saturating_mul(1u32 << exp);
        d.min(self.backoff_max)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Estimates {
    pub default: Option<Duration>,
    pub provisioning: Option<Duration>,
    pub setup: Option<Duration>,
    /// An explicit campaign duration, replacing the scheduled one.
    pub duration: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Layer {
    pub id: String,
    pub name: String,
    pub priority: Option<String>,
    pub description: String,
    pub node_group: Option<String>,
    pub partitions: Option<u32>,
    /// The layer's `settings`: template variables its patterns share (and
    /// result columns).
    pub settings: Map<String, Value>,
    /// Number of patterns generated by the layer's grid (0 without one).
    pub grid_cells: usize,
    pub patterns: Vec<Pattern>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pattern {
    pub id: String,
    pub layer: String,
    pub backend: String,
    /// Template variables: infrastructure, common settings, grid cell and the
    /// pattern's own overrides, in that order of precedence (last wins).
    pub vars: Map<String, Value>,
    /// What varies: a grid cell's factors, or a hand-written pattern's own settings.
    pub factors: Map<String, Value>,
    pub estimate: Option<Duration>,
    pub node_group: String,
    pub partition: Option<(u32, u32)>,
    /// Content identity: a hash of what the task is, not where it sits.
    pub key: String,
    pub pos: Pos,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// The phase: the plan file's stem, with `@<provider>` appended when
    /// `--provider` runs it elsewhere than the plan says (`phase15@local`).
    pub name_key: String,
    pub source: PathBuf,
    /// The folder holding `plans/`, `scripts/`, `.infra/`, `results/`.
    pub root: PathBuf,
    pub plan_dir: PathBuf,
    pub phase: String,
    pub id_prefix: String,
    pub name: String,
    pub description: String,
    pub project: String,
    pub provider: ProviderKind,
    pub region: String,
    pub availability_zone: Option<String>,
    pub infrastructure: Map<String, Value>,
    pub common_settings: Map<String, Value>,
    pub budget: Option<Budget>,
    pub node_groups: Vec<NodeGroup>,
    /// `slurm`: the allocations of the Slurm provider (`None`: Slurm's
    /// defaults).
    pub slurm: Option<super::slurm::SlurmSection>,
    pub setup: Vec<String>,
    pub templates: BTreeMap<String, PathBuf>,
    pub estimate: Estimates,
    pub retry: RetryPolicy,
    /// How often a running task's `$INFRA_CHECKPOINT_DIR` goes to the bucket
    /// (`checkpoint_interval`; a template's `checkpoint_interval_seconds`
    /// overrides it).
    pub checkpoint_interval: Duration,
    /// Between SIGTERM and SIGKILL when a task is stopped
    /// (`stop_grace_seconds`; at most [`MAX_SPOT_GRACE_SECONDS`] on a spot
    /// notice; a template's `stop_grace_seconds` overrides it).
    pub stop_grace: Duration,
    pub layers: Vec<Layer>,
    /// `results_layout`: also the doe-suite result tree (docs/DOE-SUITE.md).
    pub results_layout: super::layout::ResultsLayout,
    /// `extractors`: result files to table rows in that layout.
    pub extractors: Vec<super::layout::Extractor>,
    /// Where each top-level value (and each of `budget`'s) is in the file,
    /// by path (`availability_zone`, `budget.max_hourly_usd`), for
    /// diagnostics found after decoding.
    pub positions: BTreeMap<String, Pos>,
}

impl Plan {
    /// The position of the value at `path`, else of the plan's start.
    pub fn pos_of(&self, path: &str) -> Pos {
        self.positions
            .get(path)
            .copied()
            .unwrap_or(Pos { line: 1, col: 1 })
    }

    pub fn patterns(&self) -> impl Iterator<Item = &Pattern> {
        self.layers.iter().flat_map(|l| l.patterns.iter())
    }

    pub fn pattern_count(&self) -> usize {
        self.layers.iter().map(|l| l.patterns.len()).sum()
    }

    pub fn node_group(&self, name: &str) -> Option<&NodeGroup> {
        self.node_groups.iter().find(|g| g.name == name)
    }

    /// The phase as the plan's file names it: `name_key` without the
    /// `@<provider>` a run on another provider than the plan's appends.
    pub fn phase_name(&self) -> &str {
        self.name_key.split('@').next().unwrap_or(&self.name_key)
    }

    pub fn state_dir(&self) -> PathBuf {
        self.root.join(".infra").join(&self.name_key)
    }

    pub fn results_dir(&self) -> PathBuf {
        self.root.join("results").join(&self.name_key)
    }

    pub fn template_path(&self, backend: &str) -> PathBuf {
        self.templates.get(backend).cloned().unwrap_or_else(|| {
            self.plan_dir
                .join("templates")
                .join(format!("{backend}.json.hbs"))
        })
    }
}
