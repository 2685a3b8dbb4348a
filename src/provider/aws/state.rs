//! What is deployed for a phase, as last seen: `.infra/<phase>/aws-state.json`.
//! Written by `apply`, refreshed by `run` and `status`; the cloud stays the
//! truth (stack outputs and tagged instances are looked up again), this
//! file keeps node names stable across runs so the journal reads well.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::plan::Plan;

pub const STATE_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AwsState {
    pub version: u32,
    pub project: String,
    pub phase: String,
    pub region: String,
    pub base_stack: String,
    pub compute_stack: String,
    pub bucket: String,
    pub security_group: Option<String>,
    pub vpc: Option<String>,
    /// Every node this phase has had; gone ones keep their name so that a
    /// name in the journal never means two instances.
    pub nodes: Vec<AwsNode>,
    pub updated: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AwsNode {
    /// `<group>-<n>`, stable for the instance's life.
    pub name: String,
    pub instance_id: String,
    pub group: String,
    pub instance_type: String,
    /// `spot` or `on-demand`.
    pub market: String,
    pub az: String,
    pub private_ip: String,
    pub launch_time: String,
    /// EC2 state when last seen (`running`, `terminated`...).
    pub state: String,
}

impl AwsNode {
    pub fn alive(&self) -> bool {
        matches!(self.state.as_str(), "pending" | "running")
    }
}

pub fn path(plan: &Plan) -> PathBuf {
    plan.state_dir().join("aws-state.json")
}

pub fn load(plan: &Plan) -> Option<AwsState> {
    let text = std::fs::read_to_string(path(plan)).ok()?;
    serde_json::from_str(&text).ok()
}

pub fn save(plan: &Plan, st: &AwsState) -> std::io::Result<PathBuf> {
    let p = path(plan);
    write_atomic(&p, &serde_json::to_vec_pretty(st).unwrap_or_default())?;
    Ok(p)
}

pub fn remove(plan: &Plan) {
    let _ = std::fs::remove_file(path(plan));
}

fn write_atomic(p: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = p.with_extension("json.tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(tmp, p)
}

/// A live instance as EC2 describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub instance_id: String,
    pub group: String,
    pub instance_type: String,
    pub market: String,
    pub az: String,
    pub private_ip: String,
    pub launch_time: String,
    pub state: String,
    /// EC2's reason for the last state change (e.g. a spot interruption).
    pub state_reason: Option<String>,
    /// EC2's StateTransitionReason, which carries the time of a termination.
    pub transition_reason: Option<String>,
}

/// Merge what EC2 shows into the known nodes: known instances keep their
/// names and take the new state; unknown ones get the next free
/// `<group>-<n>` (in launch order, then id); known ones EC2 no longer
/// lists are marked `terminated`. Returns the indices of the new nodes.
pub fn merge(nodes: &mut Vec<AwsNode>, seen: &[Seen]) -> Vec<usize> {
    for n in nodes.iter_mut() {
        match seen.iter().find(|s| s.instance_id == n.instance_id) {
            Some(s) => {
                n.state = s.state.clone();
                if !s.private_ip.is_empty() {
                    n.private_ip = s.private_ip.clone();
                }
            }
            None => n.state = "terminated".into(),
        }
    }
    let mut fresh: Vec<&Seen> = seen
        .iter()
        .filter(|s| !nodes.iter().any(|n| n.instance_id == s.instance_id))
        .collect();
    fresh.sort_by(|a, b| {
        a.launch_time
            .cmp(&b.launch_time)
            .then(a.instance_id.cmp(&b.instance_id))
    });
    let mut added = Vec::new();
    for s in fresh {
        if !matches!(s.state.as_str(), "pending" | "running") {
            continue;
        }
        let next = nodes
            .iter()
            .filter(|n| n.group == s.group)
            .filter_map(|n| {
                n.name
                    .rsplit_once('-')
                    .and_then(|(_, i)| i.parse::<usize>().ok())
            })
            .max()
            .map_or(0, |m| m + 1);
        nodes.push(AwsNode {
            name: format!("{}-{next}", s.group),
            instance_id: s.instance_id.clone(),
            group: s.group.clone(),
            instance_type: s.instance_type.clone(),
            market: s.market.clone(),
            az: s.az.clone(),
            private_ip: s.private_ip.clone(),
            launch_time: s.launch_time.clone(),
            state: s.state.clone(),
        });
        added.push(nodes.len() - 1);
    }
    added
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(id: &str, group: &str, state: &str, t: &str) -> Seen {
        Seen {
            instance_id: id.into(),
            group: group.into(),
            instance_type: "c6i.xlarge".into(),
            market: "spot".into(),
            az: "us-east-1a".into(),
            private_ip: "10.0.0.4".into(),
            launch_time: t.into(),
            state: state.into(),
            state_reason: None,
            transition_reason: None,
        }
    }

    #[test]
    fn names_are_stable_and_never_reused() {
        let mut nodes = Vec::new();
        let added = merge(
            &mut nodes,
            &[
                seen("i-b", "cpu", "running", "2"),
                seen("i-a", "cpu", "running", "1"),
                seen("i-g", "gpu", "pending", "1"),
            ],
        );
        assert_eq!(added, vec![0, 1, 2]);
        let names: Vec<(&str, &str)> = nodes
            .iter()
            .map(|n| (n.name.as_str(), n.instance_id.as_str()))
            .collect();
        assert_eq!(
            names,
            [("cpu-0", "i-a"), ("gpu-0", "i-g"), ("cpu-1", "i-b")]
        );
        // i-a is interrupted and replaced by i-c
        let added = merge(
            &mut nodes,
            &[
                seen("i-a", "cpu", "terminated", "1"),
                seen("i-b", "cpu", "running", "2"),
                seen("i-c", "cpu", "running", "3"),
                seen("i-g", "gpu", "running", "1"),
            ],
        );
        assert_eq!(added, vec![3]);
        assert_eq!(nodes[3].name, "cpu-2");
        assert!(!nodes[0].alive());
        assert!(nodes[2].alive());
        // a node EC2 forgot is gone
        merge(&mut nodes, &[seen("i-c", "cpu", "running", "3")]);
        assert_eq!(nodes.iter().filter(|n| n.alive()).count(), 1);
    }
}
