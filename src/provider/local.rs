//! The local provider: nodes are folders on this machine with a number of
//! slots each, the bucket is `results/`, and Run Command is a process spawn.
//! Each node has its own loopback address so multi-node tasks talk over
//! distinct addresses as they would between instances. `LocalAttempt` is
//! the transport the shared sequencer (`provider::sequence`) runs an
//! attempt's steps over.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use super::env::{task_env, Phase, RankNode, Shape};
use super::process::{
    become_subreaper, has_entry, has_var, reap_orphans, reap_orphans_but, still_running,
    stop_adopted, stop_marked, stop_marked_groups, Exit, PidLog, Spawned,
};
use super::sequence::{self, Check, HealthEnd, StartError, Started, StepEnd, StepTransport, Usage};
pub use super::sequence::{expand_vars, wait_stop};
use crate::plan::Plan;
use crate::runner::exec::{AttemptRequest, BoxFuture, Executor, Outcome};
use crate::tasks::Step;

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
fn empty_dir(dir: &Path) -> std::io::Result<()> {
    if let Ok(mut d) = std::fs::read_dir(dir) {
        if d.next().is_none() {
            return Ok(());
        }
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)
}

pub fn marker(plan: &Plan) -> String {
    format!("INFRA_STATE_DIR={}", plan.state_dir().display())
}

/// Stop what the tasks of a run that died left running, daemons included
/// (not what the setup started: it is not run again), but for the attempts
/// in `keep` (task id, attempt): the new run adopts those.
pub fn stop_task_leftovers(plan: &Plan, keep: &[(String, u32)]) -> usize {
    let marker = marker(plan);
    let pid_log = plan.state_dir().join("pids.log");
    let kept = |env: &[Vec<u8>]| {
        keep.iter().any(|(task, attempt)| {
            has_entry(env, &format!("INFRA_TASK_ID={task}"))
                && has_entry(env, &format!("INFRA_ATTEMPT={attempt}"))
        })
    };
    let mut groups = reap_orphans_but(&pid_log, &marker, &kept);
    stop_marked_groups(
        &|env| has_entry(env, &marker) && has_var(env, "INFRA_TASK_ID") && !kept(env),
        &mut groups,
    );
    groups.len()
}

/// `.infra/<phase>/checkpoints/`: a folder per task and rank
/// ([`TaskDef::checkpoint_name`](crate::tasks::TaskDef::checkpoint_name)),
/// the task's `$INFRA_CHECKPOINT_DIR`, kept across attempts.
pub fn checkpoint_root(state_dir: &Path) -> PathBuf {
    state_dir.join("checkpoints")
}

/// Remove the checkpoint folders of `tasks` (every rank); how many went.
pub fn clear_checkpoints(state_dir: &Path, tasks: &[String]) -> std::io::Result<usize> {
    let root = checkpoint_root(state_dir);
    let Ok(rd) = std::fs::read_dir(&root) else {
        return Ok(0);
    };
    let mut removed = 0;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if tasks
            .iter()
            .any(|t| crate::tasks::model::is_checkpoint_of(&name, t))
        {
            std::fs::remove_dir_all(e.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// The bytes of the files under `dir` (0 when it is missing).
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

/// Where a step's exit code is left (see `process::spawn_with`):
/// `.infra/<phase>/steps/<task>/<attempt>/<step>-<try>.exit`.
fn exit_file(state_dir: &Path, task: &str, attempt: u32, index: usize, try_no: u32) -> PathBuf {
    exit_dir(state_dir, task, attempt).join(format!("{index}-{try_no}.exit"))
}

fn exit_dir(state_dir: &Path, task: &str, attempt: u32) -> PathBuf {
    state_dir.join("steps").join(task).join(attempt.to_string())
}

pub struct LocalExecutor {
    pub nodes: Vec<LocalNode>,
    pub state_dir: PathBuf,
    pub root: PathBuf,
    pub phase: String,
    pub phase_name: String,
    pub pid_log: PidLog,
    pub node_dirs: Vec<PathBuf>,
    /// How steps reach their node when it is not this machine (Slurm).
    pub launcher: Option<Arc<dyn super::launch::Launcher>>,
}

impl LocalExecutor {
    pub fn new(plan: &Plan, state: &LocalState) -> LocalExecutor {
        // a task that daemonizes stays our descendant: stopped with its attempt
        become_subreaper();
        let pid_log = PidLog::open(&plan.state_dir().join("pids.log"));
        LocalExecutor {
            node_dirs: state
                .nodes
                .iter()
                .map(|n| node_dir(plan, &n.name))
                .collect(),
            nodes: state.nodes.clone(),
            state_dir: plan.state_dir(),
            root: plan.root.clone(),
            phase: plan.phase.clone(),
            phase_name: plan.name_key.clone(),
            pid_log,
            launcher: None,
        }
    }

    fn env_for(
        &self,
        req: &AttemptRequest,
        rank: usize,
        work: &Path,
        checkpoint: &Path,
    ) -> Vec<(String, String)> {
        let node = &self.nodes[req.seats[rank].node];
        let nodes: Vec<RankNode> = req
            .seats
            .iter()
            .map(|s| RankNode {
                name: &self.nodes[s.node].name,
                addr: &self.nodes[s.node].addr,
            })
            .collect();
        let shape = Shape {
            gpus: node.gpus,
            vcpus: node.vcpus,
            slots: node.slots,
            workers_per_slot: node.workers_per_slot,
        };
        let phase = Phase {
            phase: &self.phase,
            name: &self.phase_name,
            provider: self.launcher.as_ref().map_or("local", |l| l.provider()),
        };
        let path = |p: &Path| p.display().to_string();
        let extra = vec![
            ("INFRA_STATE_DIR".into(), path(&self.state_dir)),
            ("INFRA_OUTPUT_DIR".into(), path(&req.staging)),
            ("INFRA_WORK_DIR".into(), path(work)),
            ("INFRA_CHECKPOINT_DIR".into(), path(checkpoint)),
            ("INFRA_SCRIPTS".into(), path(&self.root.join("scripts"))),
            ("INFRA_ROOT".into(), path(&self.root)),
        ];
        task_env(&phase, req, rank, &nodes, &shape, extra)
    }
}

fn open_append(p: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(p)
}

/// One HTTP/1.0 GET; true on a 2xx answer.
pub async fn http_ok(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:80")
    };
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(&addr).await.ok()?;
        s.write_all(
            format!("GET {path} HTTP/1.0\r\nHost: {hostport}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .ok()?;
        // read the whole (small) answer so the server sees an orderly close
        let mut buf = Vec::new();
        let _ = (&mut s).take(64 * 1024).read_to_end(&mut buf).await;
        let head = String::from_utf8_lossy(&buf[..buf.len().min(64)]).to_string();
        let code: u32 = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((200..300).contains(&code))
    };
    tokio::time::timeout(Duration::from_secs(2), fut)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// One attempt's steps on this machine: a process group per step, the logs
/// appended to the staging folder, a working folder per rank.
pub(crate) struct LocalAttempt {
    ex: Arc<LocalExecutor>,
    task: String,
    attempt: u32,
    /// The node of each rank.
    nodes: Vec<usize>,
    works: Vec<PathBuf>,
    /// Each rank's `$INFRA_CHECKPOINT_DIR`.
    checkpoints: Vec<PathBuf>,
    /// Between SIGTERM and SIGKILL when a step is stopped or times out.
    grace: Duration,
    envs: Vec<Vec<(String, String)>>,
    staging: PathBuf,
    usage: Usage,
}

/// A started step: its process group until it is reaped.
pub(crate) struct LocalStep {
    proc: Option<Spawned>,
    name: String,
    /// Where its exit code is left.
    exit_file: PathBuf,
    /// A step an earlier controller started: not our child, so followed
    /// by its pid and start time, and its end read from `exit_file`.
    adopted: Option<(i32, u64)>,
}

/// How often an adopted step (not our child) is looked at.
const ADOPTED_POLL: Duration = Duration::from_millis(200);

impl LocalStep {
    /// An adopted step that still runs.
    fn adopted_running(&self) -> bool {
        self.adopted
            .is_some_and(|(pid, start)| still_running(pid, start))
    }

    /// How an adopted step ended, from its exit file (a moment's grace
    /// for the wrapper's write).
    async fn adopted_end(&self) -> Option<i32> {
        for _ in 0..10 {
            if let Ok(t) = std::fs::read_to_string(&self.exit_file) {
                if let Ok(code) = t.trim().parse::<i32>() {
                    return Some(code);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// Stop an adopted step's process group: TERM, up to `grace`, KILL.
    async fn kill_adopted(&self, grace: Duration) {
        let Some((pid, _)) = self.adopted else {
            return;
        };
        let sp = Spawned { pid };
        sp.signal_group(libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && self.adopted_running() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sp.signal_group(libc::SIGKILL);
    }
}

impl LocalAttempt {
    /// A fresh working folder per rank: one folder per slot, emptied after
    /// every task, so a task creates and deletes no folder of its own when
    /// it leaves nothing behind.
    fn open(ex: Arc<LocalExecutor>, req: &AttemptRequest) -> Result<LocalAttempt, String> {
        let mut works = Vec::new();
        for seat in &req.seats {
            let w = ex.node_dirs[seat.node]
                .join("work")
                .join(format!("slot-{}", seat.slot));
            // an adopted attempt goes on with what its folder holds
            let ready = if req.resume.is_some() {
                std::fs::create_dir_all(&w)
            } else {
                empty_dir(&w)
            };
            ready.map_err(|e| {
                format!(
                    "node {} cannot create {}: {e}",
                    ex.nodes[seat.node].name,
                    w.display()
                )
            })?;
            works.push(w);
        }
        // kept across attempts (and runs) until `infra run --fresh`
        let mut checkpoints = Vec::new();
        for r in 0..req.seats.len() {
            let c = checkpoint_root(&ex.state_dir).join(req.task.checkpoint_name(r));
            std::fs::create_dir_all(&c)
                .map_err(|e| format!("cannot create {}: {e}", c.display()))?;
            checkpoints.push(c);
        }
        let envs = (0..req.seats.len())
            .map(|r| ex.env_for(req, r, &works[r], &checkpoints[r]))
            .collect();
        Ok(LocalAttempt {
            grace: Duration::from_secs(req.task.stop_grace_seconds),
            checkpoints,
            task: req.task.id.clone(),
            attempt: req.attempt,
            nodes: req.seats.iter().map(|s| s.node).collect(),
            ex,
            works,
            envs,
            staging: req.staging.clone(),
            usage: Usage::default(),
        })
    }

    fn reaped(&mut self, e: Exit) {
        self.usage.peak_rss_kb = self.usage.peak_rss_kb.max(e.max_rss_kb);
    }

    /// Wait for a step an earlier controller started: it is not our
    /// child, so it is looked at until it ends, and its exit code read
    /// from its exit file. Its timeout counts from the adoption.
    async fn wait_adopted(
        &mut self,
        started: &mut LocalStep,
        step: &Step,
        stop: &mut watch::Receiver<bool>,
    ) -> StepEnd {
        let deadline = step
            .timeout_seconds
            .map(|t| tokio::time::Instant::now() + Duration::from_secs(t));
        while started.adopted_running() {
            if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                started.kill_adopted(self.grace).await;
                started.adopted = None;
                self.usage.last_exit_code = Some(124);
                return StepEnd::TimedOut;
            }
            tokio::select! {
                _ = tokio::time::sleep(ADOPTED_POLL) => {}
                // killed by `stop`, with the background steps
                _ = wait_stop(stop) => return StepEnd::Stopped,
            }
        }
        started.adopted = None;
        match started.adopted_end().await {
            Some(code) => {
                self.usage.last_exit_code = Some(code);
                StepEnd::Exited(code)
            }
            None => StepEnd::Lost(format!(
                "step \"{}\" ended while no controller watched it and left no exit code",
                step.name
            )),
        }
    }
}

impl StepTransport for LocalAttempt {
    type Step = LocalStep;

    fn env(&self, rank: usize) -> &[(String, String)] {
        &self.envs[rank]
    }

    async fn start(
        &mut self,
        index: usize,
        step: &Step,
        try_no: u32,
        env: &[(String, String)],
    ) -> Result<LocalStep, StartError> {
        let rank = step.node as usize;
        let (mut out, err) = match (
            open_append(&self.staging.join("stdout.log")),
            open_append(&self.staging.join("stderr.log")),
        ) {
            (Ok(o), Ok(e)) => (o, e),
            _ => {
                return Err(StartError::Failed(
                    "cannot open the task's log files".into(),
                ))
            }
        };
        let _ = writeln!(
            out,
            "== infra: step {} on {} (rank {rank}){} ==",
            step.name,
            self.ex.nodes[self.nodes[rank]].name,
            if try_no > 1 {
                format!(", try {try_no}")
            } else {
                String::new()
            }
        );
        let exit = exit_file(&self.ex.state_dir, &self.task, self.attempt, index, try_no);
        let _ = std::fs::remove_file(&exit);
        if let Some(d) = exit.parent() {
            let _ = std::fs::create_dir_all(d);
        }
        let spawned = match &self.ex.launcher {
            Some(l) => super::process::spawn_argv(
                &l.argv(self.nodes[rank], &self.works[rank], &step.command, env),
                &self.works[rank],
                env,
                out,
                err,
                Some(&self.ex.pid_log),
                &exit,
            ),
            None => super::process::spawn_with(
                &step.command,
                &self.works[rank],
                env,
                out,
                err,
                Some(&self.ex.pid_log),
                Some(&exit),
            ),
        };
        let sp = spawned.map_err(|e| {
            StartError::Failed(format!("step \"{}\" could not start: {e}", step.name))
        })?;
        Ok(LocalStep {
            proc: Some(sp),
            name: step.name.clone(),
            exit_file: exit,
            adopted: None,
        })
    }

    fn handle(&self, s: &LocalStep) -> serde_json::Value {
        let pid = s.proc.as_ref().map(|p| p.pid).or(s.adopted.map(|a| a.0));
        let start = pid.and_then(super::process::start_time);
        serde_json::json!({
            "pid": pid,
            "start": start,
            "exit_file": s.exit_file.display().to_string(),
        })
    }

    async fn adopt(
        &mut self,
        index: usize,
        step: &Step,
        try_no: u32,
        handle: &serde_json::Value,
    ) -> Result<LocalStep, StartError> {
        let exit = exit_file(&self.ex.state_dir, &self.task, self.attempt, index, try_no);
        let pid = handle["pid"].as_i64().map(|p| p as i32);
        let start = handle["start"].as_u64();
        Ok(LocalStep {
            proc: None,
            name: step.name.clone(),
            exit_file: exit,
            adopted: Some((pid.unwrap_or(0), start.unwrap_or(0))),
        })
    }

    async fn wait(
        &mut self,
        started: &mut LocalStep,
        step: &Step,
        stop: &mut watch::Receiver<bool>,
    ) -> StepEnd {
        if started.adopted.is_some() {
            return self.wait_adopted(started, step, stop).await;
        }
        let end = {
            let Some(sp) = &started.proc else {
                return StepEnd::Failed(format!("step \"{}\" is not running", step.name));
            };
            let timeout = step.timeout_seconds;
            let waiter = sp.wait();
            tokio::pin!(waiter);
            let sleep = async {
                match timeout {
                    Some(t) => tokio::time::sleep(Duration::from_secs(t)).await,
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                e = &mut waiter => {
                    // a foreground step's leftovers die with it
                    sp.signal_group(libc::SIGKILL);
                    self.reaped(e);
                    self.usage.last_exit_code = Some(e.code);
                    StepEnd::Exited(e.code)
                }
                _ = sleep => {
                    sp.kill_group(self.grace).await;
                    waiter.await;
                    self.usage.last_exit_code = Some(124);
                    StepEnd::TimedOut
                }
                // killed by `stop`, with the background steps
                _ = wait_stop(stop) => return StepEnd::Stopped,
            }
        };
        // it ended and was reaped: nothing left to stop
        started.proc = None;
        end
    }

    async fn wait_healthy(
        &mut self,
        started: &mut LocalStep,
        _step: &Step,
        check: &Check<'_>,
        env: &[(String, String)],
        stop: &mut watch::Receiver<bool>,
    ) -> HealthEnd {
        let leader = match (&started.proc, started.adopted) {
            (Some(sp), _) => sp.pid,
            (None, Some((pid, _))) if started.adopted_running() => pid,
            _ => return HealthEnd::ExitedEarly,
        };
        let deadline = Instant::now() + Duration::from_secs(check.timeout_seconds);
        let interval = Duration::from_secs_f64(check.interval_seconds.clamp(0.05, 60.0));
        loop {
            if *stop.borrow() {
                return HealthEnd::Stopped;
            }
            if !super::process::group_alive(leader) || super::process::leader_gone(leader) {
                return HealthEnd::ExitedEarly;
            }
            let ok = match (&check.url, check.command) {
                (Some(u), _) => http_ok(u).await,
                (None, Some(c)) => command_ok(c, env).await,
                _ => true,
            };
            if ok {
                return HealthEnd::Healthy;
            }
            if Instant::now() >= deadline {
                return HealthEnd::NotHealthy;
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = wait_stop(stop) => return HealthEnd::Stopped,
            }
        }
    }

    async fn stop(&mut self, mut steps: Vec<Started<LocalStep>>, _cancelled: bool) {
        // the last started first: a client before its server
        for s in steps.iter_mut().rev() {
            if s.step.adopted.is_some() {
                s.step.kill_adopted(self.grace).await;
                s.step.adopted = None;
            }
            if let Some(sp) = s.step.proc.take() {
                sp.kill_group(self.grace).await;
                let e = sp.wait().await;
                self.reaped(e);
            }
            if s.healthy {
                let _ = writeln_file(
                    &self.staging.join("stdout.log"),
                    &format!("== infra: stopped background step {} ==", s.step.name),
                );
            }
        }
    }

    fn node_gone(&self) -> Option<String> {
        self.ex.launcher.as_ref()?.node_gone(&self.nodes)
    }

    async fn collect(&mut self) -> Result<Usage, String> {
        // the logs are written in place
        self.usage.checkpoint_bytes = Some(self.checkpoints.iter().map(|c| dir_bytes(c)).sum());
        Ok(self.usage)
    }

    fn output(&mut self, path: &str) -> Result<(), Option<String>> {
        // the first rank whose folder has it
        let found = self.works.iter().map(|w| w.join(path)).find(|p| p.exists());
        let to = self.staging.join(path);
        if found.is_none() && to.exists() {
            // an earlier controller of this (adopted) attempt collected it
            // and emptied the folders before it died: the staging folder
            // is this attempt's own (a new attempt starts without one)
            return Ok(());
        }
        let from = found.unwrap_or_else(|| self.works[0].join(path));
        if let Some(parent) = to.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        copy_any(&from, &to).map_err(|e| Some(e.to_string()))
    }

    fn release(&mut self) {
        for w in &self.works {
            let _ = empty_dir(w);
        }
    }
}

/// A health-check command: true when it exits 0 within 10 s.
async fn command_ok(c: &str, env: &[(String, String)]) -> bool {
    let dev = || File::create("/dev/null");
    let (Ok(o), Ok(e)) = (dev(), dev()) else {
        return false;
    };
    let Ok(p) = super::process::spawn(c, Path::new("."), env, o, e, None) else {
        return false;
    };
    let r = tokio::time::timeout(Duration::from_secs(10), p.wait()).await;
    if r.is_err() {
        p.signal_group(libc::SIGKILL);
        p.wait().await;
    }
    matches!(r, Ok(Exit { code: 0, .. }))
}

fn writeln_file(p: &Path, line: &str) -> std::io::Result<()> {
    let mut f = open_append(p)?;
    writeln!(f, "{line}")
}

fn copy_any(from: &Path, to: &Path) -> std::io::Result<()> {
    let meta = std::fs::metadata(from)?;
    if meta.is_dir() {
        std::fs::create_dir_all(to)?;
        for e in std::fs::read_dir(from)? {
            let e = e?;
            copy_any(&e.path(), &to.join(e.file_name()))?;
        }
        Ok(())
    } else {
        std::fs::copy(from, to).map(|_| ())
    }
}

impl Executor for LocalExecutor {
    fn node_names(&self) -> Vec<(String, String, u32)> {
        self.nodes
            .iter()
            .map(|n| (n.name.clone(), n.group.clone(), n.slots))
            .collect()
    }

    fn run_attempt(self: Arc<Self>, req: AttemptRequest) -> BoxFuture<Outcome> {
        // every process of the attempt carries these in its environment
        let marks = [
            format!("INFRA_STATE_DIR={}", self.state_dir.display()),
            format!("INFRA_TASK_ID={}", req.task.id),
            format!("INFRA_ATTEMPT={}", req.attempt),
        ];
        let stdout = req.staging.join("stdout.log");
        let adopted = req.resume.is_some();
        let exits = exit_dir(&self.state_dir, &req.task.id, req.attempt);
        Box::pin(async move {
            let outcome = sequence::run(req, move |req| LocalAttempt::open(self, req)).await;
            // what left the steps' process groups (`setsid daemon &`) and was
            // re-parented to infra ends with the attempt (an adopted
            // attempt's processes are no children of ours: found anywhere)
            let ours = |env: &[Vec<u8>]| marks.iter().all(|m| has_entry(env, m));
            let mut stopped = stop_adopted(&ours);
            if adopted {
                stopped += stop_marked(&ours);
            }
            let _ = std::fs::remove_dir_all(&exits);
            if stopped > 0 {
                let _ = writeln_file(
                    &stdout,
                    &format!("== infra: stopped {stopped} process(es) the task left running =="),
                );
            }
            outcome
        })
    }

    fn node_hourly_usd(&self, node: usize) -> f64 {
        self.nodes.get(node).map(|n| n.hourly_usd).unwrap_or(0.0)
    }
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
