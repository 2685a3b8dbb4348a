//! How the steps of one attempt move on AWS, for the shared sequencer.
//!
//! A step is one SendCommand to its rank's node, running the node agent
//! (`infra node step`, src/node/), which enforces the step's timeout and
//! uploads the step's logs, runtime and outputs to
//! `s3://<bucket>/<phase>/results/<task>/attempt-<n>/` (`layout`). A background step is a
//! long-running SendCommand; its health check a second, short one on the
//! same node that loops until the URL (or command) answers. `stop` asks the
//! agents to end their steps (CancelCommand for those that do not), and
//! `collect` downloads the attempt's prefix into the runner's staging
//! folder. Statuses come from the executor's shared `Poller`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use super::executor::{AwsExecutor, Node};
use super::layout;
use super::script::{self, StepArgs};

use super::ssm::{self, End, Ended};
use crate::provider::env::{task_env, Phase, RankNode, Shape};
use crate::provider::sequence::{
    self, wait_stop, Check, HealthEnd, StartError, Started, StepEnd, StepTransport, Usage,
};
use crate::runner::exec::{AttemptRequest, BoxFuture, Executor, NodeChange, Outcome};
use crate::tasks::{Step, TaskDef};

/// How long stopped steps get, beyond the task's own grace between TERM and
/// KILL, to save their checkpoint, upload and exit before CancelCommand.
const STOP_MARGIN: Duration = Duration::from_secs(30);
/// The same when the run is being stopped (Ctrl-C): less patience, but
/// never less than the agent's grace (a CancelCommand before the agent's
/// KILL would leave a step that ignores TERM running).
const CANCEL_MARGIN: Duration = Duration::from_secs(8);

/// A command in flight on one node.
pub(crate) struct Flight {
    cmd: String,
    instance: String,
    /// When SSM says it was requested (for a later controller's polling).
    requested: Option<chrono::DateTime<chrono::Utc>>,
    rx: Option<oneshot::Receiver<Ended>>,
    /// The step's key: its folder under `steps/` (`<index>` or `<index>-<try>`).
    key: String,
    /// The rank within the task, and the runner's index of its node.
    rank: usize,
    node: usize,
}

/// One attempt of a task on its nodes (one per rank).
pub(crate) struct AwsAttempt {
    ex: Arc<AwsExecutor>,
    task: Arc<TaskDef>,
    attempt: u32,
    staging: PathBuf,
    nodes: Vec<Arc<Node>>,
    node_idx: Vec<usize>,
    /// `<phase>/results/<task>/attempt-<n>` in the bucket.
    prefix: String,
    dest: String,
    envs: Vec<Vec<(String, String)>>,
    /// The steps started, in order: (key, step name, rank).
    keys: Vec<(String, String, usize)>,
}

impl AwsAttempt {
    /// Err: a node of the attempt is gone (or unknown).
    pub(crate) fn open(ex: Arc<AwsExecutor>, req: &AttemptRequest) -> Result<AwsAttempt, String> {
        let mut nodes = Vec::new();
        let mut node_idx = Vec::new();
        for seat in &req.seats {
            let n = ex
                .node(seat.node)
                .ok_or_else(|| format!("node #{} is unknown", seat.node))?;
            if let Some(r) = n.gone() {
                return Err(format!("node {} is gone: {r}", n.name));
            }
            nodes.push(n);
            node_idx.push(seat.node);
        }
        let prefix = layout::attempt_prefix(&ex.s.name_key, &req.task.id, req.attempt);
        let dest = format!("s3://{}/{prefix}", ex.s.bucket);
        let envs = (0..req.seats.len())
            .map(|r| env_for(&ex, req, r, &nodes, &dest))
            .collect();
        Ok(AwsAttempt {
            ex,
            task: req.task.clone(),
            attempt: req.attempt,
            staging: req.staging.clone(),
            nodes,
            node_idx,
            prefix,
            dest,
            envs,
            keys: Vec::new(),
        })
    }

    fn comment(&self, what: &str) -> String {
        format!(
            "infra {} {} a{} {what}",
            self.ex.s.name_key, self.task.id, self.attempt
        )
    }

    async fn send(
        &self,
        node: &Arc<Node>,
        script: String,
        timeout: u64,
        comment: String,
    ) -> Result<ssm::Sent, StartError> {
        let ex = &self.ex;
        if let Some(r) = node.gone() {
            return Err(StartError::Lost(r));
        }
        ex.stats.send_command.fetch_add(1, Ordering::Relaxed);
        let prefix = layout::ssm_output_prefix(&ex.s.name_key);
        let ids = [node.instance_id.clone()];
        let send = ssm::SendSpec {
            instances: &ids,
            script,
            execution_timeout: timeout,
            comment,
            output: Some((&ex.s.bucket, &prefix)),
        };
        match ssm::send(&ex.s.clients, &send).await {
            Ok(sent) => Ok(sent),
            Err(ssm::SendError::NotReachable(m)) => match ex.index_of(node) {
                Some(i) => match ex.confirm_gone(i).await {
                    Some(r) => Err(StartError::Lost(r)),
                    None => {
                        // running but out of SSM's reach: use it no more (else its tasks would bounce back to it)
                        let why = format!("not reachable through SSM: {m}");
                        ex.lose(i, &why);
                        Err(StartError::Lost(format!("node {} is {why}", node.name)))
                    }
                },
                None => Err(StartError::Lost(m)),
            },
            Err(e) => Err(StartError::Failed(e.to_string())),
        }
    }

    async fn cancel_flight(&self, f: &mut Flight) {
        self.ex.stats.cancel_command.fetch_add(1, Ordering::Relaxed);
        ssm::cancel(&self.ex.s.clients, &f.cmd).await;
        self.ex.poller.forget(&f.cmd, &f.instance);
        f.rx = None;
    }

    /// Ask the wrappers of `flights` to stop (they stop their step's process
    /// group, upload what they have and exit), wait up to `grace` for them,
    /// then CancelCommand what is still running.
    async fn stop_flights(&self, flights: &mut [&mut Flight], grace: Duration) {
        let mut per_node: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        for f in flights.iter() {
            if f.rx.is_some() {
                per_node.entry(f.rank).or_default().push(f.key.clone());
            }
        }
        for (rank, keys) in &per_node {
            let spec = script::stop_spec(&self.task.id, self.attempt, keys);
            let Ok(script) = self
                .ex
                .s
                .kit
                .script(self.nodes[*rank].spec.arch, &[], "stop", &spec)
            else {
                continue;
            };
            // nobody waits for the stop command itself
            let _ = self
                .send(&self.nodes[*rank], script, 60, self.comment("stop"))
                .await;
        }
        let deadline = tokio::time::Instant::now() + grace + self.ex.s.clients.settings.poll * 3;
        for f in flights.iter_mut() {
            if let Some(rx) = f.rx.take() {
                if tokio::time::timeout_at(deadline, rx).await.is_err() {
                    self.cancel_flight(f).await;
                }
            }
        }
    }

    /// What a foreground step's end means.
    async fn judge(&self, step: &Step, f: &Flight, e: Ended) -> StepEnd {
        let name = &step.name;
        match e.end {
            End::Success => StepEnd::Exited(0),
            End::Failed(script::EXIT_INTERRUPTED) => {
                self.ex.lose(f.node, "spot interruption notice");
                StepEnd::Lost(format!(
                    "spot interruption notice on the node while step \"{name}\" ran"
                ))
            }
            End::Failed(script::EXIT_TIMEOUT) => StepEnd::TimedOut,
            End::Failed(script::EXIT_UPLOAD) => StepEnd::Failed(format!(
                "step \"{name}\" could not upload its results to S3: {}",
                tail(&e.output)
            )),
            End::Failed(script::EXIT_BUNDLE) => StepEnd::Failed(format!(
                "the node could not fetch the task bundle for step \"{name}\", or a file failed its SHA-256 check: {}",
                tail(&e.output)
            )),
            End::Failed(script::EXIT_CHECKPOINT) => StepEnd::Failed(format!(
                "the node could not restore the task's checkpoint before step \"{name}\" (nothing ran): {}",
                tail(&e.output)
            )),
            End::Failed(script::EXIT_NO_AGENT) => StepEnd::Failed(format!(
                "the node agent is not installed on the node of step \"{name}\": {}",
                tail(&e.output)
            )),
            End::Failed(script::EXIT_NODE_IO) => StepEnd::Failed(format!(
                "step \"{name}\" failed on the node: a write failed (disk full?): {}",
                tail(&e.output)
            )),
            // SSM said failed: never a success
            End::Failed(0) => StepEnd::Failed(format!("step \"{name}\" exited with code 0")),
            End::Failed(code) if code > 0 => StepEnd::Exited(code),
            End::NodeGone(r) => StepEnd::Lost(r),
            End::Failed(_) | End::Undeliverable | End::NotFound => {
                match self.ex.confirm_gone(f.node).await {
                    Some(r) => StepEnd::Lost(r),
                    None => StepEnd::Failed(format!(
                        "step \"{name}\" ended without an exit code ({}): {}",
                        e.details,
                        tail(&e.output)
                    )),
                }
            }
            End::TimedOut => {
                StepEnd::Failed(format!("step \"{name}\" timed out (SSM executionTimeout)"))
            }
            End::Cancelled => {
                StepEnd::Failed(format!("step \"{name}\" was cancelled outside infra"))
            }
        }
    }

    /// Download the attempt's prefix and lay it out like the local
    /// provider: stdout.log and stderr.log (steps in order, with headers),
    /// the outputs at the top. Returns the peak RSS and the last exit code.
    async fn download(&self) -> Result<Usage, String> {
        let ex = &self.ex;
        let staging = &self.staging;
        let tmp = staging.join(".s3");
        let _ = std::fs::remove_dir_all(&tmp);
        ex.stats.s3_list.fetch_add(1, Ordering::Relaxed);
        let files = super::s3::download_prefix(
            &ex.s.clients,
            &ex.s.bucket,
            &format!("{}/", self.prefix),
            &tmp,
        )
        .await
        .map_err(|e| e.to_string())?;
        ex.stats
            .s3_get
            .fetch_add(files.len() as u64, Ordering::Relaxed);
        let mut out: Vec<u8> = Vec::new();
        let mut err: Vec<u8> = Vec::new();
        let mut usage = Usage::default();
        let mut ck_bytes: BTreeMap<usize, u64> = BTreeMap::new();
        for (key, name, rank) in &self.keys {
            let dir = tmp.join("steps").join(key);
            let try_note = key
                .split_once('-')
                .map(|(_, t)| format!(", try {t}"))
                .unwrap_or_default();
            out.extend_from_slice(
                format!(
                    "== infra: step {name} on {} (rank {rank}){try_note} ==\n",
                    self.nodes[*rank].name
                )
                .as_bytes(),
            );
            // byte for byte: a step's output need not be text
            let o = std::fs::read(dir.join("stdout.log")).unwrap_or_default();
            out.extend_from_slice(&o);
            if !o.is_empty() && !o.ends_with(b"\n") {
                out.push(b'\n');
            }
            let e = std::fs::read(dir.join("stderr.log")).unwrap_or_default();
            err.extend_from_slice(&e);
            if let Ok(text) = std::fs::read_to_string(dir.join("runtime.json")) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                    usage.peak_rss_kb = usage
                        .peak_rss_kb
                        .max(v["peak_rss_kb"].as_u64().unwrap_or(0));
                    // the last step of each rank that saved it: the
                    // folders of the ranks add up
                    if let Some(b) = v["checkpoint_bytes"].as_u64() {
                        ck_bytes.insert(*rank, b);
                    }
                    if v["background"] == serde_json::Value::Bool(true) {
                        out.extend_from_slice(
                            format!("== infra: stopped background step {name} ==\n").as_bytes(),
                        );
                    } else {
                        usage.last_exit_code = v["exit_code"].as_i64().map(|c| c as i32);
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
        if !ck_bytes.is_empty() {
            usage.checkpoint_bytes = Some(ck_bytes.values().sum());
        }
        Ok(usage)
    }
}

impl StepTransport for AwsAttempt {
    type Step = Flight;

    fn env(&self, rank: usize) -> &[(String, String)] {
        &self.envs[rank]
    }

    async fn start(
        &mut self,
        index: usize,
        step: &Step,
        try_no: u32,
        env: &[(String, String)],
    ) -> Result<Flight, StartError> {
        let rank = step.node as usize;
        let node = self.nodes[rank].clone();
        let key = if try_no == 1 {
            index.to_string()
        } else {
            format!("{index}-{try_no}")
        };
        let spec = script::step_spec(
            &StepArgs {
                task: &self.task.id,
                attempt: self.attempt,
                key: &key,
                name: &step.name,
                rank: step.node,
                dest: &self.dest,
                // a background step runs until it is stopped
                timeout_seconds: if step.background {
                    None
                } else {
                    step.timeout_seconds
                },
                background: step.background,
                outputs: &self.task.outputs,
                command: &step.command,
                grace_seconds: self.task.stop_grace_seconds,
                spot_grace_seconds: self.task.spot_grace_seconds(),
                checkpoint: Some((
                    format!(
                        "s3://{}/{}/{}",
                        self.ex.s.bucket,
                        layout::checkpoints_prefix(&self.ex.s.name_key),
                        self.task.checkpoint_name(rank)
                    ),
                    self.task.checkpoint_name(rank),
                    self.task.checkpoint_interval_seconds,
                )),
            },
            &self.ex.s.kit.bundle,
        );
        let script = self
            .ex
            .s
            .kit
            .script(node.spec.arch, env, "step", &spec)
            .map_err(StartError::Failed)?;
        let exec_timeout = match (step.background, step.timeout_seconds) {
            (false, Some(s)) => s + 300,
            _ => ssm::MAX_EXECUTION_SECONDS,
        };
        let cmd = self
            .send(&node, script, exec_timeout, self.comment(&step.name))
            .await?;
        self.keys.push((key.clone(), step.name.clone(), rank));
        // the agent's runtime.json tells how the step ended
        let probe = (
            self.ex.s.bucket.clone(),
            format!("{}/steps/{key}/runtime.json", self.prefix),
        );
        let rx = self
            .ex
            .poller
            .watch_step(&cmd, &node.instance_id, Some(probe));
        Ok(Flight {
            cmd: cmd.id,
            instance: node.instance_id.clone(),
            requested: cmd.requested,
            rx: Some(rx),
            key,
            rank,
            node: self.node_idx[rank],
        })
    }

    fn handle(&self, f: &Flight) -> serde_json::Value {
        serde_json::json!({
            "command": f.cmd,
            "instance": f.instance,
            "key": f.key,
            "rank": f.rank,
            "requested": f.requested.map(|t| t.to_rfc3339()),
        })
    }

    async fn adopt(
        &mut self,
        _index: usize,
        step: &Step,
        _try_no: u32,
        handle: &serde_json::Value,
    ) -> Result<Flight, StartError> {
        let rank = step.node as usize;
        let (Some(cmd), Some(instance), Some(key)) = (
            handle["command"].as_str(),
            handle["instance"].as_str(),
            handle["key"].as_str(),
        ) else {
            return Err(StartError::Lost(format!(
                "the journal does not say where step \"{}\" runs",
                step.name
            )));
        };
        let node = self.nodes[rank].clone();
        if node.instance_id != instance {
            return Err(StartError::Lost(format!(
                "step \"{}\" ran on {instance}, which is no longer node {}",
                step.name, node.name
            )));
        }
        if let Some(r) = node.gone() {
            return Err(StartError::Lost(r));
        }
        let requested = handle["requested"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&chrono::Utc));
        let sent = ssm::Sent {
            id: cmd.to_string(),
            requested,
        };
        self.keys.push((key.to_string(), step.name.clone(), rank));
        // whether it still runs or ended meanwhile, its runtime.json tells
        let probe = (
            self.ex.s.bucket.clone(),
            format!("{}/steps/{key}/runtime.json", self.prefix),
        );
        let rx = self.ex.poller.watch_step(&sent, instance, Some(probe));
        Ok(Flight {
            cmd: sent.id,
            instance: instance.to_string(),
            requested,
            rx: Some(rx),
            key: key.to_string(),
            rank,
            node: self.node_idx[rank],
        })
    }

    fn adopted_ended(
        &mut self,
        _index: usize,
        step: &Step,
        _try_no: u32,
        handle: &serde_json::Value,
    ) {
        if let Some(key) = handle["key"].as_str() {
            self.keys
                .push((key.to_string(), step.name.clone(), step.node as usize));
        }
    }

    async fn wait(
        &mut self,
        f: &mut Flight,
        step: &Step,
        stop: &mut watch::Receiver<bool>,
    ) -> StepEnd {
        let Some(rx) = f.rx.as_mut() else {
            return StepEnd::Failed(format!("step \"{}\" is not running", step.name));
        };
        let ended = tokio::select! {
            r = rx => r.unwrap_or(Ended { end: End::NotFound, details: String::new(), output: String::new() }),
            // stopped by `stop`, with the background steps
            _ = wait_stop(stop) => return StepEnd::Stopped,
        };
        f.rx = None;
        self.judge(step, f, ended).await
    }

    async fn wait_healthy(
        &mut self,
        bg: &mut Flight,
        step: &Step,
        check: &Check<'_>,
        env: &[(String, String)],
        stop: &mut watch::Receiver<bool>,
    ) -> HealthEnd {
        let node = self.nodes[bg.rank].clone();
        let spec = script::health_spec(
            &self.task.id,
            self.attempt,
            &bg.key,
            check.timeout_seconds,
            check.interval_seconds,
            check.url.as_deref(),
            check.command,
            &self.ex.s.kit.bundle,
        );
        let script = match self.ex.s.kit.script(node.spec.arch, env, "health", &spec) {
            Ok(s) => s,
            Err(e) => return HealthEnd::Failed(e),
        };
        let cmd = match self
            .send(
                &node,
                script,
                check.timeout_seconds + 300,
                self.comment(&format!("health {}", step.name)),
            )
            .await
        {
            Ok(c) => c,
            Err(StartError::Failed(e)) => return HealthEnd::Failed(e),
            Err(StartError::Lost(r)) => return HealthEnd::Lost(r),
        };
        let rx = self.ex.poller.watch(&cmd, &node.instance_id);
        let mut health = Flight {
            cmd: cmd.id,
            instance: node.instance_id.clone(),
            requested: cmd.requested,
            rx: Some(rx),
            key: bg.key.clone(),
            rank: bg.rank,
            node: bg.node,
        };
        let interrupted = |node: usize| {
            self.ex.lose(node, "spot interruption notice");
            HealthEnd::Lost(format!(
                "spot interruption notice on the node while step \"{}\" started",
                step.name
            ))
        };
        let res = tokio::select! {
            r = health.rx.as_mut().expect("set") => {
                health.rx = None;
                match r.map(|e| e.end) {
                    Ok(End::Success) => HealthEnd::Healthy,
                    Ok(End::Failed(script::HEALTH_STEP_ENDED)) => HealthEnd::ExitedEarly,
                    Ok(End::Failed(script::EXIT_INTERRUPTED)) => interrupted(bg.node),
                    Ok(End::Failed(1)) => HealthEnd::NotHealthy,
                    Ok(End::NodeGone(r)) => HealthEnd::Lost(r),
                    Ok(other) => match self.ex.confirm_gone(bg.node).await {
                        Some(r) => HealthEnd::Lost(r),
                        None => HealthEnd::Failed(format!("the health check of step \"{}\" failed ({other:?})", step.name)),
                    },
                    Err(_) => HealthEnd::Failed("the health check was lost".into()),
                }
            }
            r = bg.rx.as_mut().expect("started") => {
                bg.rx = None;
                match r.map(|e| e.end) {
                    Ok(End::Failed(script::EXIT_INTERRUPTED)) => interrupted(bg.node),
                    Ok(End::NodeGone(r)) => HealthEnd::Lost(r),
                    _ => HealthEnd::ExitedEarly,
                }
            }
            _ = wait_stop(stop) => HealthEnd::Stopped,
        };
        if health.rx.is_some() {
            self.cancel_flight(&mut health).await;
        }
        res
    }

    async fn stop(&mut self, mut steps: Vec<Started<Flight>>, cancelled: bool) {
        // on Ctrl-C, less patience before CancelCommand
        let grace = Duration::from_secs(self.task.stop_grace_seconds)
            + if cancelled {
                CANCEL_MARGIN
            } else {
                STOP_MARGIN
            };
        let mut flights: Vec<&mut Flight> = steps.iter_mut().map(|s| &mut s.step).collect();
        self.stop_flights(&mut flights, grace).await;
    }

    fn node_gone(&self) -> Option<String> {
        self.node_idx.iter().enumerate().find_map(|(r, i)| {
            let reason = self.ex.node(*i).and_then(|n| n.gone())?;
            Some(format!("node {} went away: {reason}", self.nodes[r].name))
        })
    }

    async fn collect(&mut self) -> Result<Usage, String> {
        self.download().await.map_err(|e| {
            format!(
                "cannot collect the results from s3://{}/{}: {e}",
                self.ex.s.bucket, self.prefix
            )
        })
    }

    fn output(&mut self, path: &str) -> Result<(), Option<String>> {
        // the node wrapper uploaded it; `collect` put it in place
        if self.staging.join(path).exists() {
            Ok(())
        } else {
            Err(None)
        }
    }

    fn release(&mut self) {}
}

fn env_for(
    ex: &AwsExecutor,
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
        phase: &ex.s.phase,
        name: &ex.s.name_key,
        provider: "aws",
    };
    let extra = vec![
        ("INFRA_BUCKET".into(), ex.s.bucket.clone()),
        ("INFRA_RESULTS_URL".into(), dest.to_string()),
    ];
    task_env(&phase, req, rank, &ranks, &shape, extra)
}

fn tail(s: &str) -> String {
    let t = s.trim();
    let start = t.char_indices().rev().nth(400).map(|(i, _)| i).unwrap_or(0);
    t[start..].replace('\n', " | ")
}

/// The runner reaches the AWS nodes through the shared sequencer over
/// this transport.
impl Executor for AwsExecutor {
    fn node_names(&self) -> Vec<(String, String, u32)> {
        self.nodes()
            .iter()
            .map(|n| (n.name.clone(), n.group.clone(), n.spec.slots))
            .collect()
    }

    fn run_attempt(self: Arc<Self>, req: AttemptRequest) -> BoxFuture<Outcome> {
        Box::pin(sequence::run(req, move |req| AwsAttempt::open(self, req)))
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
