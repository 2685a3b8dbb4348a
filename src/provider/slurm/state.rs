//! The phase's allocations, as `.infra/<phase>/slurm-state.json` records
//! them: what `destroy` cancels and what a run adopts.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::plan::Plan;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Allocation {
    /// `<group>-<n>`: unique in the phase, a replacement takes the next n.
    pub name: String,
    pub group: String,
    pub job_id: String,
    /// The node Slurm gave it (empty while pending).
    #[serde(default)]
    pub node: String,
    /// The node's address (`scontrol show node`'s NodeAddr).
    #[serde(default)]
    pub addr: String,
    /// CPUs the allocation holds.
    #[serde(default)]
    pub cpus: u32,
    /// The hash of the plan's setup once it ran there.
    #[serde(default)]
    pub setup: Option<String>,
    /// It ended (cancelled, time limit, node failure): kept for the record.
    #[serde(default)]
    pub ended: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct SlurmState {
    pub version: u32,
    pub phase: String,
    pub allocations: Vec<Allocation>,
}

impl SlurmState {
    pub fn live(&self) -> impl Iterator<Item = &Allocation> {
        self.allocations.iter().filter(|a| a.ended.is_none())
    }

    /// The next free name of `group` (`gpu-3`).
    pub fn next_name(&self, group: &str) -> String {
        let n = self
            .allocations
            .iter()
            .filter(|a| a.group == group)
            .filter_map(|a| a.name.rsplit_once('-')?.1.parse::<u32>().ok())
            .map(|n| n + 1)
            .max()
            .unwrap_or(0);
        format!("{group}-{n}")
    }
}

pub fn path(plan: &Plan) -> PathBuf {
    plan.state_dir().join("slurm-state.json")
}

/// The folder of an allocation on the shared file system: its working
/// folders (`work/slot-<n>`), its holder job's output, the setup's log.
pub fn alloc_dir(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join("slurm").join(name)
}

pub fn load(plan: &Plan) -> Option<SlurmState> {
    let text = std::fs::read_to_string(path(plan)).ok()?;
    serde_json::from_str(&text).ok()
}

pub fn save(plan: &Plan, st: &SlurmState) -> std::io::Result<()> {
    let p = path(plan);
    std::fs::create_dir_all(plan.state_dir())?;
    let tmp = p.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(st).unwrap_or_default())?;
    std::fs::rename(tmp, p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replacement_takes_the_next_name_of_its_group() {
        let a = |name: &str, group: &str| Allocation {
            name: name.into(),
            group: group.into(),
            job_id: "1".into(),
            node: String::new(),
            addr: String::new(),
            cpus: 1,
            setup: None,
            ended: None,
        };
        let st = SlurmState {
            version: 1,
            phase: "p".into(),
            allocations: vec![a("gpu-0", "gpu"), a("gpu-1", "gpu"), a("cpu-0", "cpu")],
        };
        assert_eq!(st.next_name("gpu"), "gpu-2");
        assert_eq!(st.next_name("cpu"), "cpu-1");
        assert_eq!(st.next_name("big"), "big-0");
    }
}
