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
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Files (relative to the task's working folder, on whichever rank writes them) to collect.
    #[serde(default)]
    pub outputs: Vec<String>,
    /// Outputs whose rows go into `infra results` (JSON object or array of
    /// objects, or CSV); they are collected like any output.
    #[serde(default)]
    pub table: Vec<String>,
    pub steps: Vec<StepSpec>,
}

fn one() -> u32 {
    1
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
    pub estimate_seconds: Option<f64>,
    pub partition: Option<(u32, u32)>,
    pub env: BTreeMap<String, String>,
    pub outputs: Vec<String>,
    pub table: Vec<String>,
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
