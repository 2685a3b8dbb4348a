//! Task definitions: what one pattern runs, on which node, in which order.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// What a backend's template renders to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateOutput {
    /// Nodes the task occupies (a slot on each).
    #[serde(default = "one")]
    pub nodes: u32,
    /// Names for node ranks: `"node": "producer"` means rank 0 if listed first.
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
    /// Total attempts; overrides the plan's `retry.attempts`.
    #[serde(default)]
    pub attempts: Option<u32>,
    /// Seconds between syncs of `$INFRA_CHECKPOINT_DIR` to the bucket;
    /// overrides the plan's `checkpoint_interval`.
    #[serde(default)]
    pub checkpoint_interval_seconds: Option<u64>,
    /// Seconds between SIGTERM and SIGKILL when the task is stopped;
    /// overrides the plan's `stop_grace_seconds`.
    #[serde(default)]
    pub stop_grace_seconds: Option<u64>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Files (relative to the task's working folder, on whichever rank writes them) to collect.
    #[serde(default)]
    pub outputs: Vec<String>,
    /// Outputs whose rows go into `infra results` (JSON object or array of
    /// objects, or CSV); they are collected like any output.
    #[serde(default)]
    pub table: Vec<String>,
    /// What the task needs of its nodes (`"efa"`): a group that can give
    /// it gets it by default, one that cannot is refused.
    #[serde(default)]
    pub requires: Vec<String>,
    pub steps: Vec<StepSpec>,
}

/// What a template may require of its nodes.
pub const REQUIREMENTS: &[&str] = &["efa"];

fn one() -> u32 {
    1
}

/// See [`TaskDef::checkpoint_name`].
pub fn checkpoint_name(task: &str, rank: usize) -> String {
    if rank == 0 {
        task.to_string()
    } else {
        format!("{task}+rank{rank}")
    }
}

/// The task of checkpoint folder `name` (see [`checkpoint_name`]).
pub fn checkpoint_task(name: &str) -> &str {
    name.split_once("+rank").map_or(name, |(t, _)| t)
}

/// True when `name` is a checkpoint folder of `task` (any rank).
pub fn is_checkpoint_of(name: &str, task: &str) -> bool {
    name == task
        || name
            .strip_prefix(task)
            .and_then(|r| r.strip_prefix("+rank"))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn default_checkpoint_interval() -> u64 {
    crate::plan::model::DEFAULT_CHECKPOINT_INTERVAL_SECONDS
}

fn default_stop_grace() -> u64 {
    crate::plan::model::DEFAULT_STOP_GRACE_SECONDS
}

impl TaskDef {
    /// The name of rank `rank`'s checkpoint folder: the task id for rank 0,
    /// `<id>+rank<r>` for the others (`+` is never in an id). Keyed by the
    /// pattern id, not the content hash: a task whose parameters changed
    /// goes on from its checkpoint (`infra run --fresh` clears them).
    pub fn checkpoint_name(&self, rank: usize) -> String {
        checkpoint_name(&self.id, rank)
    }

    /// The grace after a spot interruption notice: the stop grace, at most
    /// `MAX_SPOT_GRACE_SECONDS`.
    pub fn spot_grace_seconds(&self) -> u64 {
        self.stop_grace_seconds
            .min(crate::plan::model::MAX_SPOT_GRACE_SECONDS)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    pub name: String,
    /// A node rank (0, 1, ...) or a role name from `roles`.
    #[serde(default)]
    pub node: Option<Value>,
    pub command: String,
    #[serde(default)]
    pub background: bool,
    #[serde(default)]
    pub health: Option<Health>,
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
    #[serde(default)]
    pub retries: u32,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// A URL that must answer 2xx; `${VAR}` expands from the step's environment.
    #[serde(default)]
    pub http: Option<String>,
    /// A command that must exit 0.
    #[serde(default)]
    pub command: Option<String>,
    #[serde(default = "health_timeout")]
    pub timeout_seconds: u64,
    #[serde(default = "health_interval")]
    pub interval_seconds: f64,
}

fn health_timeout() -> u64 {
    300
}
fn health_interval() -> f64 {
    1.0
}

/// A rendered, checked task definition (`.infra/<phase>/tasks/<id>.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskDef {
    pub version: u32,
    pub id: String,
    pub key: String,
    pub phase: String,
    pub layer: String,
    pub backend: String,
    pub node_group: String,
    pub nodes: u32,
    pub attempts: u32,
    /// Seconds between syncs of `$INFRA_CHECKPOINT_DIR` (where a provider
    /// syncs it: AWS).
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval_seconds: u64,
    /// Seconds between SIGTERM and SIGKILL when the task is stopped (a spot
    /// notice gives at most `MAX_SPOT_GRACE_SECONDS`).
    #[serde(default = "default_stop_grace")]
    pub stop_grace_seconds: u64,
    pub estimate_seconds: Option<f64>,
    pub partition: Option<(u32, u32)>,
    pub env: BTreeMap<String, String>,
    pub outputs: Vec<String>,
    pub table: Vec<String>,
    /// What the task needs of its nodes (see [`TemplateOutput::requires`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<String>,
    pub steps: Vec<Step>,
    pub factors: Map<String, Value>,
    pub vars: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub name: String,
    /// Node rank within the task, 0-based.
    pub node: u32,
    pub command: String,
    pub background: bool,
    pub health: Option<Health>,
    pub timeout_seconds: Option<u64>,
    pub retries: u32,
    pub env: BTreeMap<String, String>,
}
