//! `AwsExecutor`: runs one attempt of a task on EC2 nodes through SSM Run
//! Command, for the same runner (journal, retries, resume) as the local
//! provider.
//!
//! A step is one SendCommand to its rank's node, running the node wrapper
//! (`scripts/infra-node.sh step`), which uploads the step's logs, runtime
//! and outputs to `s3://<bucket>/<phase>/<task>/attempt-<n>/`. A background
//! step is a long-running SendCommand; its health check a second, short one
//! on the same node that loops until the URL (or command) answers. At the
//! end `stop` ends the background steps, and the attempt's prefix is
//! downloaded into the runner's staging folder. Statuses come from the
//! shared `Poller`. Nodes are watched by tag: a node that disappears (or
//! whose wrapper saw a spot interruption notice) is reported to the runner
//! (`NodeChange::Lost`) and its attempts end `Outcome::Lost`; a new
//! instance of the fleet joins once SSM reaches it (and setup ran on it).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch, Notify};

use super::config::Clients;
use super::ec2;
use super::script::{self, BundleRef, StepArgs};
use super::ssm::{self, End, Ended, Poller};
use super::state::{self, AwsState};
use crate::provider::env::{task_env, Phase, RankNode, Shape};
use crate::provider::local::{expand_vars, wait_stop};
use crate::runner::exec::{AttemptRequest, BoxFuture, Executor, Measured, NodeChange, Outcome};
use crate::tasks::{Step, TaskDef};

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
    pub slots: u32,
    pub gpus: u32,
    pub vcpus: u32,
    pub workers_per_slot: Option<u32>,
    pub hourly_usd: f64,
}

/// Everything the executor needs that does not change during a run.
pub struct Setup {
    pub clients: Clients,
    pub bundle: BundleRef,
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
    s: Setup,
    pub poller: Arc<Poller>,
    nodes: RwLock<Vec<Arc<Node>>>,
    state: Mutex<AwsState>,
    changes_tx: mpsc::UnboundedSender<NodeChange>,
    changes_rx: Mutex<Option<mpsc::UnboundedReceiver<NodeChange>>>,
    joining: Mutex<HashSet<String>>,
    check_now: Notify,
    pub stats: ExecStats,
}

/// How long stopped steps get to upload and exit before CancelCommand.
const STOP_GRACE: Duration = Duration::from_secs(30);
/// The same when the run is being stopped (Ctrl-C).
const CANCEL_GRACE: Duration = Duration::from_secs(8);

enum StepEnd {
    Ok,
    Fail(String),
    Lost(String),
    Stopped,
}

struct Flight {
    cmd: String,
    instance: String,
    rx: Option<oneshot::Receiver<Ended>>,
    /// The step's key: its folder under `steps/` (`<index>` or `<index>-<try>`).
    key: String,
    /// The rank within the task, and the runner's index of its node.
    rank: usize,
    node: usize,
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

    fn node(&self, i: usize) -> Option<Arc<Node>> {
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
    fn lose(&self, i: usize, reason: &str) {
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
    async fn confirm_gone(&self, i: usize) -> Option<String> {
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
        if let Some(hash) = &self.s.setup_hash {
            (self.s.log)(&format!(
                "node {name} ({}) joined; running setup",
                s.instance_id
            ));
            if let Err(e) = setup_nodes(
                &self.s.clients,
                &self.poller,
                &self.s.bundle,
                &self.s.bucket,
                &self.s.name_key,
                hash,
                &[(name.clone(), s.instance_id.clone(), s.private_ip.clone())],
            )
            .await
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

    fn env_for(
        &self,
        req: &AttemptRequest,
        rank: usize,
        nodes: &[Arc<Node>],
        dest: &str,
    ) -> Vec<(String, String)> {
        let ranks: Vec<RankNode> = nodes
            .iter()
            .map(|n| RankNode {
                name: &n.name,
                addr: &n.addr,
            })
            .collect();
        let spec = &nodes[rank].spec;
        let shape = Shape {
            gpus: spec.gpus,
            vcpus: spec.vcpus,
            slots: spec.slots,
            workers_per_slot: spec.workers_per_slot,
        };
        let phase = Phase {
            phase: &self.s.phase,
            name: &self.s.name_key,
            provider: "aws",
        };
        let extra = vec![
            ("INFRA_BUCKET".into(), self.s.bucket.clone()),
            ("INFRA_RESULTS_URL".into(), dest.to_string()),
        ];
        task_env(&phase, req, rank, &ranks, &shape, extra)
    }

    async fn send(
        &self,
        node: &Arc<Node>,
        script: String,
        timeout: u64,
        comment: String,
    ) -> Result<String, StepEnd> {
        if let Some(r) = node.gone() {
            return Err(StepEnd::Lost(r));
        }
        self.stats.send_command.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("{}/_ssm", self.s.name_key);
        let ids = [node.instance_id.clone()];
        let send = ssm::SendSpec {
            instances: &ids,
            script,
            execution_timeout: timeout,
            comment,
            output: Some((&self.s.bucket, &prefix)),
        };
        match ssm::send(&self.s.clients, &send).await {
            Ok(id) => Ok(id),
            Err(ssm::SendError::NotReachable(m)) => {
                let idx = self.index_of(node);
                match idx {
                    Some(i) => match self.confirm_gone(i).await {
                        Some(r) => Err(StepEnd::Lost(r)),
                        None => {
                            // running but out of SSM's reach: use it no more (else its tasks would bounce back to it)
                            let why = format!("not reachable through SSM: {m}");
                            self.lose(i, &why);
                            Err(StepEnd::Lost(format!("node {} is {why}", node.name)))
                        }
                    },
                    None => Err(StepEnd::Lost(m)),
                }
            }
            Err(e) => Err(StepEnd::Fail(e.to_string())),
        }
    }

    fn index_of(&self, node: &Arc<Node>) -> Option<usize> {
        self.nodes
            .read()
            .ok()?
            .iter()
            .position(|n| Arc::ptr_eq(n, node))
    }

    async fn cancel_flight(&self, f: &mut Flight) {
        self.stats.cancel_command.fetch_add(1, Ordering::Relaxed);
        ssm::cancel(&self.s.clients, &f.cmd).await;
        self.poller.forget(&f.cmd, &f.instance);
        f.rx = None;
    }

    /// Ask the wrappers of `flights` to stop (they stop their step's process
    /// group, upload what they have and exit), wait up to `grace` for them,
    /// then CancelCommand what is still running.
    async fn stop_flights(
        &self,
        req: &AttemptRequest,
        nodes: &[Arc<Node>],
        flights: &mut [&mut Flight],
        grace: Duration,
    ) {
        let mut per_node: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        for f in flights.iter() {
            if f.rx.is_some() {
                per_node.entry(f.rank).or_default().push(f.key.clone());
            }
        }
        for (rank, keys) in &per_node {
            let mut args = vec![req.task.id.clone(), req.attempt.to_string()];
            args.extend(keys.iter().cloned());
            let script = script::command(&self.s.bundle, &[], "stop", &args);
            let comment = format!(
                "infra {} {} a{} stop",
                self.s.name_key, req.task.id, req.attempt
            );
            // nobody waits for the stop command itself
            let _ = self.send(&nodes[*rank], script, 60, comment).await;
        }
        let deadline = tokio::time::Instant::now() + grace + self.s.clients.settings.poll * 3;
        for f in flights.iter_mut() {
            if let Some(rx) = f.rx.take() {
                if tokio::time::timeout_at(deadline, rx).await.is_err() {
                    f.rx = None;
                    self.stats.cancel_command.fetch_add(1, Ordering::Relaxed);
                    ssm::cancel(&self.s.clients, &f.cmd).await;
                    self.poller.forget(&f.cmd, &f.instance);
                }
            }
        }
    }

    /// What a foreground step's end means.
    async fn judge(&self, step: &Step, f: &Flight, e: Ended) -> StepEnd {
        let name = &step.name;
        match e.end {
            End::Success => StepEnd::Ok,
            End::Failed(script::EXIT_INTERRUPTED) => {
                self.lose(f.node, "spot interruption notice");
                StepEnd::Lost(format!(
                    "spot interruption notice on the node while step \"{name}\" ran"
                ))
            }
            End::Failed(script::EXIT_TIMEOUT) => StepEnd::Fail(format!(
                "step \"{name}\" timed out after {} s",
                step.timeout_seconds.unwrap_or(0)
            )),
            End::Failed(script::EXIT_UPLOAD) => StepEnd::Fail(format!(
                "step \"{name}\" could not upload its results to S3: {}",
                tail(&e.output)
            )),
            End::Failed(script::EXIT_BUNDLE) => StepEnd::Fail(format!(
                "the node could not fetch the task bundle for step \"{name}\": {}",
                tail(&e.output)
            )),
            End::Failed(code) if code >= 0 => {
                StepEnd::Fail(format!("step \"{name}\" exited with code {code}"))
            }
            End::NodeGone(r) => StepEnd::Lost(r),
            End::Failed(_) | End::Undeliverable | End::NotFound => {
                match self.confirm_gone(f.node).await {
                    Some(r) => StepEnd::Lost(r),
                    None => StepEnd::Fail(format!(
                        "step \"{name}\" ended without an exit code ({}): {}",
                        e.details,
                        tail(&e.output)
                    )),
                }
            }
            End::TimedOut => {
                StepEnd::Fail(format!("step \"{name}\" timed out (SSM executionTimeout)"))
            }
            End::Cancelled => StepEnd::Fail(format!("step \"{name}\" was cancelled outside infra")),
        }
    }

    async fn attempt(self: Arc<Self>, mut req: AttemptRequest) -> Outcome {
        let started = Instant::now();
        let t: Arc<TaskDef> = req.task.clone();
        let mut nodes = Vec::new();
        let mut node_idx = Vec::new();
        for seat in &req.seats {
            match self.node(seat.node) {
                Some(n) => {
                    if let Some(r) = n.gone() {
                        return Outcome::Lost {
                            reason: format!("node {} is gone: {r}", n.name),
                        };
                    }
                    nodes.push(n);
                    node_idx.push(seat.node);
                }
                None => {
                    return Outcome::Lost {
                        reason: format!("node #{} is unknown", seat.node),
                    }
                }
            }
        }
        if let Err(e) = std::fs::create_dir_all(&req.staging) {
            return Outcome::Failed {
                error: format!("cannot create {}: {e}", req.staging.display()),
                measured: Measured {
                    exit_code: None,
                    wall_seconds: 0.0,
                    peak_rss_kb: 0,
                },
            };
        }
        let prefix = format!("{}/{}/attempt-{}", self.s.name_key, t.id, req.attempt);
        let dest = format!("s3://{}/{prefix}", self.s.bucket);
        let envs: Vec<Vec<(String, String)>> = (0..req.seats.len())
            .map(|r| self.env_for(&req, r, &nodes, &dest))
            .collect();
        let mut bgs: Vec<Flight> = Vec::new();
        let mut keys: Vec<(String, String, usize)> = Vec::new(); // (key, step name, rank)
        let mut outcome: Option<StepEnd> = None;

        'steps: for (k, step) in t.steps.iter().enumerate() {
            let rank = step.node as usize;
            let node = nodes[rank].clone();
            let mut env = envs[rank].clone();
            env.extend(step.env.iter().map(|(k, v)| (k.clone(), v.clone())));
            env.push(("INFRA_STEP".into(), step.name.clone()));
            let tries = step.retries + 1;
            for try_no in 1..=tries {
                let key = if try_no == 1 {
                    k.to_string()
                } else {
                    format!("{k}-{try_no}")
                };
                let args = script::step_args(&StepArgs {
                    task: &t.id,
                    attempt: req.attempt,
                    key: &key,
                    name: &step.name,
                    rank: step.node,
                    dest: &dest,
                    timeout_seconds: if step.background {
                        None
                    } else {
                        step.timeout_seconds
                    },
                    background: step.background,
                    outputs: &t.outputs,
                    command: &step.command,
                });
                let exec_timeout = match (step.background, step.timeout_seconds) {
                    (false, Some(s)) => s + 300,
                    _ => ssm::MAX_EXECUTION_SECONDS,
                };
                let comment = format!(
                    "infra {} {} a{} {}",
                    self.s.name_key, t.id, req.attempt, step.name
                );
                let cmd = match self
                    .send(
                        &node,
                        script::command(&self.s.bundle, &env, "step", &args),
                        exec_timeout,
                        comment,
                    )
                    .await
                {
                    Ok(c) => c,
                    Err(e) => {
                        outcome = Some(e);
                        break 'steps;
                    }
                };
                keys.push((key.clone(), step.name.clone(), rank));
                let rx = self.poller.watch(&cmd, &node.instance_id);
                let mut flight = Flight {
                    cmd,
                    instance: node.instance_id.clone(),
                    rx: Some(rx),
                    key: key.clone(),
                    rank,
                    node: node_idx[rank],
                };
                if step.background {
                    match self
                        .wait_healthy(
                            &req,
                            &mut req.stop.clone(),
                            step,
                            &key,
                            &env,
                            &node,
                            &mut flight,
                        )
                        .await
                    {
                        StepEnd::Ok => {
                            bgs.push(flight);
                            continue 'steps;
                        }
                        StepEnd::Fail(_) if try_no < tries => {
                            self.stop_flights(&req, &nodes, &mut [&mut flight], STOP_GRACE)
                                .await;
                            continue;
                        }
                        other => {
                            bgs.push(flight);
                            outcome = Some(other);
                            break 'steps;
                        }
                    }
                }
                let ended = tokio::select! {
                    r = flight.rx.as_mut().expect("just set") => Some(r.unwrap_or(Ended { end: End::NotFound, details: String::new(), output: String::new() })),
                    _ = wait_stop(&mut req.stop) => None,
                };
                let Some(ended) = ended else {
                    // stopped below, with the background steps
                    bgs.push(flight);
                    outcome = Some(StepEnd::Stopped);
                    break 'steps;
                };
                flight.rx = None;
                match self.judge(step, &flight, ended).await {
                    StepEnd::Ok => continue 'steps,
                    StepEnd::Fail(msg) => {
                        if try_no == tries {
                            outcome = Some(StepEnd::Fail(msg));
                            break 'steps;
                        }
                    }
                    other => {
                        outcome = Some(other);
                        break 'steps;
                    }
                }
            }
        }
        // stop the background steps (they upload their logs); on Ctrl-C also
        // the running step, with less patience before CancelCommand
        if !bgs.is_empty() {
            let grace = if matches!(outcome, Some(StepEnd::Stopped)) {
                CANCEL_GRACE
            } else {
                STOP_GRACE
            };
            let mut refs: Vec<&mut Flight> = bgs.iter_mut().collect();
            self.stop_flights(&req, &nodes, &mut refs, grace).await;
        }
        // a failure on one node while another went away: the node's fault
        if let Some(StepEnd::Fail(_)) = &outcome {
            for (r, i) in node_idx.iter().enumerate() {
                if let Some(reason) = self.node(*i).and_then(|n| n.gone()) {
                    outcome = Some(StepEnd::Lost(format!(
                        "node {} went away: {reason}",
                        nodes[r].name
                    )));
                    break;
                }
            }
        }
        match outcome {
            Some(StepEnd::Stopped) => return Outcome::Cancelled,
            Some(StepEnd::Lost(reason)) => return Outcome::Lost { reason },
            _ => {}
        }
        let collected = self.collect(&req.staging, &prefix, &keys, &nodes).await;
        let measured = |peak: u64, code: Option<i32>| Measured {
            exit_code: code,
            wall_seconds: started.elapsed().as_secs_f64(),
            peak_rss_kb: peak,
        };
        let (peak, last_code) = match collected {
            Ok(x) => x,
            Err(e) => {
                return Outcome::Failed {
                    error: format!(
                        "cannot collect the results from s3://{}/{prefix}: {e}",
                        self.s.bucket
                    ),
                    measured: measured(0, None),
                }
            }
        };
        if let Some(StepEnd::Fail(error)) = outcome {
            return Outcome::Failed {
                error,
                measured: measured(peak, last_code),
            };
        }
        for o in &t.outputs {
            if !req.staging.join(o).exists() {
                return Outcome::Failed {
                    error: format!("declared output \"{o}\" was not produced"),
                    measured: measured(peak, last_code),
                };
            }
        }
        Outcome::Succeeded(measured(peak, last_code.or(Some(0))))
    }

    #[allow(clippy::too_many_arguments)]
    async fn wait_healthy(
        &self,
        req: &AttemptRequest,
        stop: &mut watch::Receiver<bool>,
        step: &Step,
        key: &str,
        env: &[(String, String)],
        node: &Arc<Node>,
        bg: &mut Flight,
    ) -> StepEnd {
        let Some(h) = &step.health else {
            return StepEnd::Ok;
        };
        let url = h.http.as_ref().map(|u| expand_vars(u, env));
        let args = script::health_args(
            &req.task.id,
            req.attempt,
            key,
            h.timeout_seconds,
            h.interval_seconds,
            url.as_deref(),
            h.command.as_deref(),
        );
        let comment = format!(
            "infra {} {} a{} health {}",
            self.s.name_key, req.task.id, req.attempt, step.name
        );
        let cmd = match self
            .send(
                node,
                script::command(&self.s.bundle, env, "health", &args),
                h.timeout_seconds + 300,
                comment,
            )
            .await
        {
            Ok(c) => c,
            Err(e) => return e,
        };
        let rx = self.poller.watch(&cmd, &node.instance_id);
        let mut health = Flight {
            cmd,
            instance: node.instance_id.clone(),
            rx: Some(rx),
            key: key.to_string(),
            rank: bg.rank,
            node: bg.node,
        };
        let what = url.clone().or(h.command.clone()).unwrap_or_default();
        let res = tokio::select! {
            r = health.rx.as_mut().expect("set") => {
                health.rx = None;
                match r.map(|e| e.end) {
                    Ok(End::Success) => StepEnd::Ok,
                    Ok(End::Failed(script::HEALTH_STEP_ENDED)) => StepEnd::Fail(format!("background step \"{}\" exited before it became healthy", step.name)),
                    Ok(End::Failed(script::EXIT_INTERRUPTED)) => {
                        self.lose(bg.node, "spot interruption notice");
                        StepEnd::Lost(format!("spot interruption notice on the node while step \"{}\" started", step.name))
                    }
                    Ok(End::Failed(1)) => StepEnd::Fail(format!("background step \"{}\" was not healthy after {} s ({what})", step.name, h.timeout_seconds)),
                    Ok(End::NodeGone(r)) => StepEnd::Lost(r),
                    Ok(other) => match self.confirm_gone(bg.node).await {
                        Some(r) => StepEnd::Lost(r),
                        None => StepEnd::Fail(format!("the health check of step \"{}\" failed ({other:?})", step.name)),
                    },
                    Err(_) => StepEnd::Fail("the health check was lost".into()),
                }
            }
            r = bg.rx.as_mut().expect("set") => {
                bg.rx = None;
                match r.map(|e| e.end) {
                    Ok(End::Failed(script::EXIT_INTERRUPTED)) => {
                        self.lose(bg.node, "spot interruption notice");
                        StepEnd::Lost(format!("spot interruption notice on the node while step \"{}\" started", step.name))
                    }
                    Ok(End::NodeGone(r)) => StepEnd::Lost(r),
                    _ => StepEnd::Fail(format!("background step \"{}\" exited before it became healthy", step.name)),
                }
            }
            _ = wait_stop(stop) => StepEnd::Stopped,
        };
        if health.rx.is_some() {
            self.cancel_flight(&mut health).await;
        }
        res
    }

    /// Download the attempt's prefix and lay it out like the local
    /// provider: stdout.log and stderr.log (steps in order, with headers),
    /// the outputs at the top. Returns the peak RSS and the last exit code.
    async fn collect(
        &self,
        staging: &Path,
        prefix: &str,
        keys: &[(String, String, usize)],
        nodes: &[Arc<Node>],
    ) -> Result<(u64, Option<i32>), String> {
        let tmp = staging.join(".s3");
        let _ = std::fs::remove_dir_all(&tmp);
        self.stats.s3_list.fetch_add(1, Ordering::Relaxed);
        let files = super::s3::download_prefix(
            &self.s.clients,
            &self.s.bucket,
            &format!("{prefix}/"),
            &tmp,
        )
        .await
        .map_err(|e| e.to_string())?;
        self.stats
            .s3_get
            .fetch_add(files.len() as u64, Ordering::Relaxed);
        let mut out = String::new();
        let mut err = String::new();
        let mut peak = 0u64;
        let mut last = None;
        for (key, name, rank) in keys {
            let dir = tmp.join("steps").join(key);
            let try_note = key
                .split_once('-')
                .map(|(_, t)| format!(", try {t}"))
                .unwrap_or_default();
            out.push_str(&format!(
                "== infra: step {name} on {} (rank {rank}){try_note} ==\n",
                nodes[*rank].name
            ));
            let o = std::fs::read_to_string(dir.join("stdout.log")).unwrap_or_default();
            out.push_str(&o);
            if !o.is_empty() && !o.ends_with('\n') {
                out.push('\n');
            }
            let e = std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
            err.push_str(&e);
            if let Ok(text) = std::fs::read_to_string(dir.join("runtime.json")) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                    peak = peak.max(v["peak_rss_kb"].as_u64().unwrap_or(0));
                    if v["background"] == serde_json::Value::Bool(true) {
                        out.push_str(&format!("== infra: stopped background step {name} ==\n"));
                    } else {
                        last = v["exit_code"].as_i64().map(|c| c as i32);
                    }
                }
            }
        }
        std::fs::write(staging.join("stdout.log"), out).map_err(|e| e.to_string())?;
        std::fs::write(staging.join("stderr.log"), err).map_err(|e| e.to_string())?;
        let files_dir = tmp.join("files");
        if let Ok(rd) = std::fs::read_dir(&files_dir) {
            for e in rd.flatten() {
                let to = staging.join(e.file_name());
                let _ = std::fs::remove_dir_all(&to);
                std::fs::rename(e.path(), &to).map_err(|e| e.to_string())?;
            }
        }
        let _ = std::fs::remove_dir_all(&tmp);
        Ok((peak, last))
    }
}

fn tail(s: &str) -> String {
    let t = s.trim();
    let start = t.char_indices().rev().nth(400).map(|(i, _)| i).unwrap_or(0);
    t[start..].replace('\n', " | ")
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

impl Executor for AwsExecutor {
    fn node_names(&self) -> Vec<(String, String, u32)> {
        self.nodes()
            .iter()
            .map(|n| (n.name.clone(), n.group.clone(), n.spec.slots))
            .collect()
    }

    fn run_attempt(self: Arc<Self>, req: AttemptRequest) -> BoxFuture<Outcome> {
        Box::pin(self.attempt(req))
    }

    fn node_hourly_usd(&self, node: usize) -> f64 {
        self.node(node)
            .map(|n| {
                self.s
                    .metered_usd_per_hour
                    .get(&n.instance_id)
                    .copied()
                    .unwrap_or(n.spec.hourly_usd)
            })
            .unwrap_or(0.0)
    }

    fn node_changes(&self) -> Option<mpsc::UnboundedReceiver<NodeChange>> {
        self.changes_rx.lock().ok()?.take()
    }

    fn replacement_wait(&self) -> Duration {
        self.s.replacement_wait
    }
}

/// Run the plan's setup on nodes `(name, instance id, private ip)` (the
/// wrapper skips nodes where this setup already ran); one SendCommand per
/// node, since each gets its own environment.
pub async fn setup_nodes(
    c: &Clients,
    poller: &Poller,
    bundle: &BundleRef,
    bucket: &str,
    name_key: &str,
    hash: &str,
    nodes: &[(String, String, String)],
) -> Result<(), String> {
    let dest = format!("s3://{bucket}/{name_key}/_setup");
    let prefix = format!("{name_key}/_ssm");
    let mut waits = Vec::new();
    for (name, iid, addr) in nodes {
        let env = vec![
            ("INFRA_NODE_NAME".to_string(), name.clone()),
            ("INFRA_NODE_ADDR".to_string(), addr.clone()),
            ("INFRA_PROVIDER".to_string(), "aws".to_string()),
            ("INFRA_BUCKET".to_string(), bucket.to_string()),
        ];
        let script = script::command(bundle, &env, "setup", &[hash.to_string(), dest.clone()]);
        let ids = [iid.clone()];
        let send = ssm::SendSpec {
            instances: &ids,
            script,
            execution_timeout: ssm::MAX_EXECUTION_SECONDS,
            comment: format!("infra {name_key} setup {name}"),
            output: Some((bucket, &prefix)),
        };
        let cmd = ssm::send(c, &send)
            .await
            .map_err(|e| format!("cannot start setup on node {name}: {e}"))?;
        waits.push((name.clone(), iid.clone(), poller.watch(&cmd, iid)));
    }
    let mut errors = Vec::new();
    for (name, iid, rx) in waits {
        match rx.await.map(|e| e.end) {
            Ok(End::Success) => {}
            Ok(End::Failed(code)) => errors.push(format!(
                "setup failed on node {name} ({iid}) with exit code {code} (log: {dest}/{iid}.log)"
            )),
            Ok(other) => errors.push(format!(
                "setup did not finish on node {name} ({iid}): {other:?}"
            )),
            Err(_) => errors.push(format!("setup on node {name} was lost")),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n  "))
    }
}

/// Stop every step a dead `infra run` left on the nodes (one SendCommand
/// for up to 50 nodes) and wait for it.
pub async fn reap(
    c: &Clients,
    poller: &Poller,
    bundle: &BundleRef,
    bucket: &str,
    name_key: &str,
    instance_ids: &[String],
) -> usize {
    let prefix = format!("{name_key}/_ssm");
    let mut stopped = 0;
    for chunk in instance_ids.chunks(50) {
        let script = script::command(bundle, &[], "reap", &[]);
        let send = ssm::SendSpec {
            instances: chunk,
            script,
            execution_timeout: 120,
            comment: format!("infra {name_key} reap"),
            output: Some((bucket, &prefix)),
        };
        let Ok(cmd) = ssm::send(c, &send).await else {
            continue;
        };
        // every node's invocation is watched before any is awaited: one
        // polling round for the chunk, not one per node
        let waits: Vec<_> = chunk.iter().map(|iid| poller.watch(&cmd, iid)).collect();
        for rx in waits {
            if let Ok(e) = rx.await {
                if let Some(n) = e
                    .output
                    .split("stopped ")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                    .and_then(|n| n.parse::<usize>().ok())
                {
                    stopped += n;
                }
            }
        }
    }
    stopped
}
