//! `AwsExecutor`: the EC2 nodes of a run, for the same runner (journal,
//! retries, resume) as the local provider. Each attempt's steps go through
//! the shared sequencer (`provider::sequence`) over the SSM transport in
//! `transport.rs`.
//!
//! Nodes are watched by tag: a node that disappears (or whose wrapper saw a
//! spot interruption notice) is reported to the runner (`NodeChange::Lost`)
//! and its attempts end `Outcome::Lost`; a new instance of the fleet joins
//! once SSM reaches it (and setup ran on it).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, Notify};

use super::config::Clients;
use super::ec2;
pub use super::node_commands::{reap, setup_nodes};
use super::node_commands::{NodeKit, Target};
use super::ssm::Poller;
use super::state::{self, AwsState};
use crate::runner::exec::NodeChange;

/// A node as the executor uses it.
#[derive(Debug)]
pub struct Node {
    pub name: String,
    pub group: String,
    pub instance_id: String,
    pub addr: String,
    pub spec: GroupSpec,
    gone: Mutex<Option<String>>,
}

impl Node {
    pub fn gone(&self) -> Option<String> {
        self.gone.lock().ok().and_then(|g| g.clone())
    }
}

/// What the nodes of a group offer (from the plan and the catalog).
#[derive(Debug, Clone)]
pub struct GroupSpec {
    /// The nodes' CPU architecture: which build of the agent they run.
    pub arch: super::agent::Arch,
    pub slots: u32,
    pub gpus: u32,
    pub vcpus: u32,
    pub workers_per_slot: Option<u32>,
    pub hourly_usd: f64,
}

/// Everything the executor needs that does not change during a run.
pub struct Setup {
    pub clients: Clients,
    /// The bundle and the agent builds.
    pub kit: Arc<NodeKit>,
    pub bucket: String,
    pub project: String,
    /// The plan's name (`phase15`): S3 prefix, tags, state folder.
    pub name_key: String,
    /// The plan's `phase` value.
    pub phase: String,
    pub groups: BTreeMap<String, GroupSpec>,
    pub state: AwsState,
    pub state_path: std::path::PathBuf,
    /// Hash of the plan's setup commands, when it has any.
    pub setup_hash: Option<String>,
    /// Metered $/h by instance id; a node not in it costs its group's
    /// catalog price.
    pub metered_usd_per_hour: HashMap<String, f64>,
    /// How long the runner waits for replacement nodes.
    pub replacement_wait: Duration,
    /// Interval of the node check (DescribeInstances by tag).
    pub node_check: Duration,
    /// Progress lines (stderr).
    pub log: Arc<dyn Fn(&str) + Send + Sync>,
}

/// Call counters for the API-call figures.
#[derive(Debug, Default)]
pub struct ExecStats {
    pub send_command: AtomicU64,
    pub cancel_command: AtomicU64,
    pub describe_instances: AtomicU64,
    pub describe_instance_information: AtomicU64,
    pub s3_list: AtomicU64,
    pub s3_get: AtomicU64,
}

pub struct AwsExecutor {
    pub(super) s: Setup,
    pub poller: Arc<Poller>,
    nodes: RwLock<Vec<Arc<Node>>>,
    state: Mutex<AwsState>,
    changes_tx: mpsc::UnboundedSender<NodeChange>,
    pub(super) changes_rx: Mutex<Option<mpsc::UnboundedReceiver<NodeChange>>>,
    joining: Mutex<HashSet<String>>,
    check_now: Notify,
    pub stats: ExecStats,
}

impl AwsExecutor {
    /// Start the executor with the nodes that are alive now (their indices
    /// are the runner's), and its node watcher.
    pub fn start(s: Setup, live: Vec<(String, String, String, String)>) -> Arc<AwsExecutor> {
        let (tx, rx) = mpsc::unbounded_channel();
        let nodes = live
            .into_iter()
            .filter_map(|(name, group, instance_id, addr)| {
                let spec = s.groups.get(&group)?.clone();
                Some(Arc::new(Node {
                    name,
                    group,
                    instance_id,
                    addr,
                    spec,
                    gone: Mutex::new(None),
                }))
            })
            .collect();
        let poller = Poller::start(s.clients.clone());
        let ex = Arc::new(AwsExecutor {
            state: Mutex::new(s.state.clone()),
            s,
            poller,
            nodes: RwLock::new(nodes),
            changes_tx: tx,
            changes_rx: Mutex::new(Some(rx)),
            joining: Mutex::new(HashSet::new()),
            check_now: Notify::new(),
            stats: ExecStats::default(),
        });
        let weak = Arc::downgrade(&ex);
        let every = ex.s.node_check;
        tokio::spawn(async move { watch_nodes(weak, every).await });
        ex
    }

    pub fn nodes(&self) -> Vec<Arc<Node>> {
        self.nodes.read().map(|n| n.clone()).unwrap_or_default()
    }

    pub(super) fn node(&self, i: usize) -> Option<Arc<Node>> {
        self.nodes.read().ok().and_then(|n| n.get(i).cloned())
    }

    pub fn state(&self) -> AwsState {
        self.state
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    fn save_state(&self) {
        let st = self.state();
        if let Ok(bytes) = serde_json::to_vec_pretty(&st) {
            let tmp = self.s.state_path.with_extension("json.tmp");
            if std::fs::write(&tmp, bytes).is_ok() {
                let _ = std::fs::rename(tmp, &self.s.state_path);
            }
        }
    }

    /// Node `i` is gone (or going): say so once, to the runner and the poller.
    pub(super) fn lose(&self, i: usize, reason: &str) {
        let Some(n) = self.node(i) else { return };
        {
            let Ok(mut g) = n.gone.lock() else { return };
            if g.is_some() {
                return;
            }
            *g = Some(reason.to_string());
        }
        let _ = self.changes_tx.send(NodeChange::Lost {
            node: i,
            reason: format!("{} ({}): {reason}", n.name, n.instance_id),
        });
        self.poller.node_gone(&n.instance_id, reason);
        if let Ok(mut st) = self.state.lock() {
            if let Some(sn) = st.nodes.iter_mut().find(|x| x.instance_id == n.instance_id) {
                if sn.alive() {
                    sn.state = "lost".into();
                }
            }
        }
        self.save_state();
    }

    /// After a command died oddly: is the instance really gone? One
    /// DescribeInstances for the phase (it also finds replacements).
    pub(super) async fn confirm_gone(&self, i: usize) -> Option<String> {
        if let Some(r) = self.node(i).and_then(|n| n.gone()) {
            return Some(r);
        }
        self.check_nodes().await;
        self.node(i).and_then(|n| n.gone())
    }

    /// Compare the nodes with what EC2 shows: lose the ones that are gone,
    /// let new running instances of the phase join.
    async fn check_nodes(&self) {
        self.stats
            .describe_instances
            .fetch_add(1, Ordering::Relaxed);
        let Ok(seen) =
            ec2::instances(&self.s.clients, &self.s.project, Some(&self.s.name_key)).await
        else {
            return;
        };
        for (i, n) in self.nodes().iter().enumerate() {
            if n.gone().is_some() {
                continue;
            }
            match seen.iter().find(|s| s.instance_id == n.instance_id) {
                Some(s) if matches!(s.state.as_str(), "pending" | "running") => {}
                Some(s) => {
                    let why = match &s.state_reason {
                        Some(r) => format!("instance {}: {r}", s.state),
                        None => format!("instance {}", s.state),
                    };
                    self.lose(i, &why);
                }
                None => self.lose(i, "instance no longer listed by EC2"),
            }
        }
        let known: HashSet<String> = self
            .state()
            .nodes
            .iter()
            .map(|n| n.instance_id.clone())
            .collect();
        let fresh: Vec<state::Seen> = seen
            .into_iter()
            .filter(|s| {
                s.state == "running"
                    && !known.contains(&s.instance_id)
                    && self.s.groups.contains_key(&s.group)
            })
            .filter(|s| {
                self.joining
                    .lock()
                    .map(|j| !j.contains(&s.instance_id))
                    .unwrap_or(false)
            })
            .collect();
        if fresh.is_empty() {
            return;
        }
        let ids: Vec<String> = fresh.iter().map(|s| s.instance_id.clone()).collect();
        self.stats
            .describe_instance_information
            .fetch_add(1, Ordering::Relaxed);
        let Ok(online) = ec2::ssm_online(&self.s.clients, &ids).await else {
            return;
        };
        for s in fresh
            .into_iter()
            .filter(|s| online.contains(&s.instance_id))
        {
            if let Ok(mut j) = self.joining.lock() {
                j.insert(s.instance_id.clone());
            }
            self.join(s).await;
        }
    }

    /// A new instance joins: setup first (when the plan has one), then the
    /// runner hears of it.
    async fn join(&self, s: state::Seen) {
        let name = {
            let Ok(mut st) = self.state.lock() else {
                return;
            };
            let added = state::merge(&mut st.nodes, std::slice::from_ref(&s));
            match added.first() {
                Some(i) => st.nodes[*i].name.clone(),
                None => return,
            }
        };
        self.save_state();
        let Some(arch) = self.s.groups.get(&s.group).map(|g| g.arch) else {
            return;
        };
        // the agent first (a replacement has none), then the setup
        if let Err(e) = self
            .s
            .kit
            .ensure(
                &self.s.clients,
                &self.poller,
                &[(s.instance_id.clone(), arch)],
            )
            .await
        {
            (self.s.log)(&format!("node {name} is not used: {e}"));
            return;
        }
        if let Some(hash) = &self.s.setup_hash {
            (self.s.log)(&format!(
                "node {name} ({}) joined; running setup",
                s.instance_id
            ));
            let target = Target {
                name: name.clone(),
                instance_id: s.instance_id.clone(),
                addr: s.private_ip.clone(),
                arch,
            };
            if let Err(e) =
                setup_nodes(&self.s.clients, &self.poller, &self.s.kit, hash, &[target]).await
            {
                (self.s.log)(&format!("node {name} is not used: {e}"));
                return;
            }
        }
        let Some(spec) = self.s.groups.get(&s.group).cloned() else {
            return;
        };
        let node = Arc::new(Node {
            name: name.clone(),
            group: s.group.clone(),
            instance_id: s.instance_id.clone(),
            addr: s.private_ip.clone(),
            spec: spec.clone(),
            gone: Mutex::new(None),
        });
        let idx = {
            let Ok(mut nodes) = self.nodes.write() else {
                return;
            };
            nodes.push(node);
            nodes.len() - 1
        };
        let _ = self.changes_tx.send(NodeChange::Added {
            node: idx,
            name,
            group: s.group,
            slots: spec.slots,
        });
    }

    pub(super) fn index_of(&self, node: &Arc<Node>) -> Option<usize> {
        self.nodes
            .read()
            .ok()?
            .iter()
            .position(|n| Arc::ptr_eq(n, node))
    }
}

async fn watch_nodes(weak: Weak<AwsExecutor>, every: Duration) {
    loop {
        let Some(ex) = weak.upgrade() else { return };
        let notified = ex.check_now.notified();
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = notified => {}
        }
        ex.check_nodes().await;
    }
}
