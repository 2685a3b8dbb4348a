//! The local provider's nodes: folders on this machine, each with its own
//! loopback address and slots, recorded in `.infra/<phase>/local-nodes.json`;
//! bringing them up and down, and the plan's setup run once per node. (The
//! executor and the transport that run steps on them are in `local.rs`.)

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::local::marker;
use super::process::{has_entry, reap_orphans, stop_marked_groups, PidLog, Spawned};
use crate::plan::Plan;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LocalNode {
    pub name: String,
    pub group: String,
    pub index: usize,
    pub addr: String,
    pub slots: u32,
    pub gpus: u32,
    pub vcpus: u32,
    pub workers_per_slot: Option<u32>,
    pub instance_type: String,
    pub hourly_usd: f64,
    /// Slots of other nodes on the same host before this one's (Slurm:
    /// allocations that share a machine): its slots' ports come after
    /// theirs. 0 for a node alone on its address.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub port_offset: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LocalState {
    pub version: u32,
    pub phase: String,
    pub nodes: Vec<LocalNode>,
    pub created: String,
}

pub fn loopback(index: usize) -> String {
    format!("127.0.{}.{}", 1 + index / 250, 2 + index % 250)
}

/// The nodes a plan asks for, laid out on this machine.
pub fn nodes_for(
    plan: &Plan,
    price: &dyn Fn(&str, crate::plan::Market) -> Option<f64>,
    vcpus_of: &dyn Fn(&str) -> Option<(u32, u32)>,
) -> Vec<LocalNode> {
    let mut out = Vec::new();
    let host_cpus = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    for g in &plan.node_groups {
        let (vcpus, cat_gpus) = vcpus_of(&g.instance_type).unwrap_or((host_cpus, 0));
        for i in 0..g.count {
            let index = out.len();
            out.push(LocalNode {
                name: format!("{}-{}", g.name, i),
                group: g.name.clone(),
                index,
                addr: loopback(index),
                slots: g.slots,
                gpus: g.gpus.unwrap_or(cat_gpus),
                vcpus,
                workers_per_slot: g.workers_per_slot,
                instance_type: g.instance_type.clone(),
                hourly_usd: price(&g.instance_type, g.market).unwrap_or(0.0),
                port_offset: 0,
            });
        }
    }
    out
}

pub fn state_path(plan: &Plan) -> PathBuf {
    plan.state_dir().join("local-nodes.json")
}

pub fn load_state(plan: &Plan) -> Option<LocalState> {
    let text = std::fs::read_to_string(state_path(plan)).ok()?;
    serde_json::from_str(&text).ok()
}

pub fn node_dir(plan: &Plan, node: &str) -> PathBuf {
    plan.state_dir().join("nodes").join(node)
}

/// Create the node folders and record them (idempotent).
pub fn apply(plan: &Plan, nodes: Vec<LocalNode>) -> std::io::Result<LocalState> {
    for n in &nodes {
        std::fs::create_dir_all(node_dir(plan, &n.name).join("work"))?;
    }
    let state = LocalState {
        version: 1,
        phase: plan.name_key.clone(),
        nodes,
        created: chrono::Utc::now().to_rfc3339(),
    };
    let path = state_path(plan);
    std::fs::create_dir_all(plan.state_dir())?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&state).unwrap_or_default())?;
    std::fs::rename(tmp, path)?;
    Ok(state)
}

/// Kill anything left running, remove node folders; results stay.
pub fn destroy(plan: &Plan) -> std::io::Result<(usize, usize)> {
    let marker = marker(plan);
    let mut groups = reap_orphans(&plan.state_dir().join("pids.log"), &marker);
    // what left its process group (a daemon) is found by its environment
    stop_marked_groups(&|env| has_entry(env, &marker), &mut groups);
    let killed = groups.len();
    let mut removed = 0;
    if let Some(st) = load_state(plan) {
        removed = st.nodes.len();
    }
    let nodes = plan.state_dir().join("nodes");
    if nodes.exists() {
        std::fs::remove_dir_all(&nodes)?;
    }
    let _ = std::fs::remove_file(state_path(plan));
    Ok((removed, killed))
}

/// Make `dir` an empty folder, touching the file system only when it is
/// missing or holds something.
pub(crate) fn empty_dir(dir: &Path) -> std::io::Result<()> {
    if let Ok(mut d) = std::fs::read_dir(dir) {
        if d.next().is_none() {
            return Ok(());
        }
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)
}

/// Kills a process group when dropped: a setup whose command was stopped
/// (its future dropped) does not outlive it.
struct KillOnDrop(Option<i32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take() {
            let sp = Spawned { pid };
            sp.signal_group(libc::SIGKILL);
            Spawned::wait_blocking(pid);
        }
    }
}

/// Nodes that have run the plan's setup, keyed by a hash of it.
pub fn setup_marker(plan: &Plan, node: &str) -> PathBuf {
    node_dir(plan, node).join("setup.done")
}

pub fn setup_hash(plan: &Plan) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(plan.setup.join("\n").as_bytes());
    d.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Run the plan's setup once per node (again only when it changed).
pub async fn run_setup(
    plan: &Plan,
    nodes: &[LocalNode],
) -> Result<BTreeMap<String, String>, String> {
    let mut done = BTreeMap::new();
    if plan.setup.is_empty() {
        return Ok(done);
    }
    let hash = setup_hash(plan);
    for n in nodes {
        let marker_file = setup_marker(plan, &n.name);
        if std::fs::read_to_string(&marker_file).ok().as_deref() == Some(hash.as_str()) {
            continue;
        }
        let dir = node_dir(plan, &n.name);
        let _ = std::fs::create_dir_all(&dir);
        let log = dir.join("setup.log");
        let (o, e) = match (
            File::create(&log),
            OpenOptions::new().append(true).open(&log),
        ) {
            (Ok(o), Ok(e)) => (o, e),
            _ => return Err(format!("cannot write {}", log.display())),
        };
        let env = vec![
            (
                "INFRA_STATE_DIR".to_string(),
                plan.state_dir().display().to_string(),
            ),
            ("INFRA_NODE_NAME".to_string(), n.name.clone()),
            ("INFRA_NODE_ADDR".to_string(), n.addr.clone()),
            // as the steps see it: a setup can tell a local trial from a cloud node
            ("INFRA_PROVIDER".to_string(), "local".to_string()),
            (
                "INFRA_SCRIPTS".to_string(),
                plan.root.join("scripts").display().to_string(),
            ),
            ("INFRA_ROOT".to_string(), plan.root.display().to_string()),
        ];
        let script = plan.setup.join("\n");
        let sp = super::process::spawn(
            &format!("set -e\n{script}"),
            &dir,
            &env,
            o,
            e,
            Some(&PidLog::open(&plan.state_dir().join("pids.log"))),
        )
        .map_err(|e| format!("setup could not start on {}: {e}", n.name))?;
        // dropped before it ends (a signal stopped the command): killed
        let mut guard = KillOnDrop(Some(sp.pid));
        let exit = sp.wait().await;
        guard.0 = None;
        if exit.code != 0 {
            return Err(format!(
                "setup failed on node {} with exit code {} (log: {})",
                n.name,
                exit.code,
                log.display()
            ));
        }
        let _ = std::fs::write(&marker_file, &hash);
        done.insert(n.name.clone(), hash.clone());
    }
    Ok(done)
}
