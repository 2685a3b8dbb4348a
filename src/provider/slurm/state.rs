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
    /// Slots of the phase's other allocations on the same node before
    /// this one's: its slots' ports come after theirs (`LocalNode`'s
    /// `port_offset`). Kept, so that a later controller gives the same.
    #[serde(default)]
    pub port_offset: u32,
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

    /// The port offset of allocation `job` that now runs on `node`: after
    /// the slots of the phase's other live allocations there (`slots` of a
    /// group).
    pub fn port_offset_for(&self, job: &str, node: &str, slots: &dyn Fn(&str) -> u32) -> u32 {
        self.live()
            .filter(|a| a.job_id != job && a.node == node && !node.is_empty())
            .map(|a| a.port_offset + slots(&a.group))
            .max()
            .unwrap_or(0)
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
            port_offset: 0,
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

    #[test]
    fn allocations_on_one_node_take_ports_after_each_other_s_slots() {
        let a = |job: &str, node: &str, off: u32| Allocation {
            name: format!("cpu-{job}"),
            group: "cpu".into(),
            job_id: job.into(),
            node: node.into(),
            addr: String::new(),
            cpus: 1,
            setup: None,
            ended: None,
            port_offset: off,
        };
        let mut st = SlurmState {
            version: 1,
            phase: "p".into(),
            allocations: vec![a("1", "n1", 0), a("2", "n1", 4), a("3", "n2", 0)],
        };
        let slots = |_: &str| 4;
        assert_eq!(st.port_offset_for("4", "n1", &slots), 8);
        assert_eq!(st.port_offset_for("4", "n2", &slots), 4);
        assert_eq!(st.port_offset_for("4", "n3", &slots), 0);
        // an allocation that ended frees nothing it did not hold: only live ones count
        st.allocations[1].ended = Some("gone".into());
        assert_eq!(st.port_offset_for("4", "n1", &slots), 4);
    }
}
