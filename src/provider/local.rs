//! The local provider: nodes are folders on this machine with a number of
//! slots each, the bucket is `results/`, and Run Command is a process spawn.
//! Each node has its own loopback address so multi-node tasks talk over
//! distinct addresses as they would between instances.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::env::{task_env, Phase, RankNode, Shape};
use super::process::{reap_orphans, Exit, PidLog, Spawned};
use crate::plan::Plan;
use crate::runner::exec::{AttemptRequest, BoxFuture, Executor, Measured, Outcome};
use crate::tasks::{Health, Step, TaskDef};

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
    let killed = reap_orphans(&plan.state_dir().join("pids.log"), &marker(plan));
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

pub struct LocalExecutor {
    pub nodes: Vec<LocalNode>,
    pub state_dir: PathBuf,
    pub root: PathBuf,
    pub phase: String,
    pub phase_name: String,
    pub pid_log: PidLog,
    pub node_dirs: Vec<PathBuf>,
}

impl LocalExecutor {
    pub fn new(plan: &Plan, state: &LocalState) -> LocalExecutor {
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
        }
    }

    fn env_for(&self, req: &AttemptRequest, rank: usize, work: &Path) -> Vec<(String, String)> {
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
            provider: "local",
        };
        let path = |p: &Path| p.display().to_string();
        let extra = vec![
            ("INFRA_STATE_DIR".into(), path(&self.state_dir)),
            ("INFRA_OUTPUT_DIR".into(), path(&req.staging)),
            ("INFRA_WORK_DIR".into(), path(work)),
            ("INFRA_SCRIPTS".into(), path(&self.root.join("scripts"))),
            ("INFRA_ROOT".into(), path(&self.root)),
        ];
        task_env(&phase, req, rank, &nodes, &shape, extra)
    }
}

fn open_append(p: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(p)
}

/// `${VAR}` from `env`; unknown names stay as written.
pub fn expand_vars(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        match after.find('}') {
            Some(j) => {
                let name = &after[..j];
                match env.iter().rev().find(|(k, _)| k == name) {
                    Some((_, v)) => out.push_str(v),
                    None => out.push_str(&rest[i..i + 3 + j]),
                }
                rest = &after[j + 1..];
            }
            None => {
                out.push_str(&rest[i..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
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

struct Bg {
    proc: Spawned,
    name: String,
}

enum StepEnd {
    Exited(Exit),
    TimedOut(u64),
    Stopped,
}

impl LocalExecutor {
    async fn wait_step(
        &self,
        sp: &Spawned,
        timeout: Option<u64>,
        stop: &mut tokio::sync::watch::Receiver<bool>,
    ) -> StepEnd {
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
                StepEnd::Exited(e)
            }
            _ = sleep => {
                sp.kill_group(Duration::from_secs(2)).await;
                waiter.await;
                StepEnd::TimedOut(timeout.unwrap_or(0))
            }
            _ = wait_stop(stop) => {
                sp.kill_group(Duration::from_secs(2)).await;
                waiter.await;
                StepEnd::Stopped
            }
        }
    }

    async fn attempt(self: Arc<Self>, mut req: AttemptRequest) -> Outcome {
        let started = Instant::now();
        let mut peak = 0u64;
        let mut last_code = None;
        let measured = |peak: u64, code: Option<i32>| Measured {
            exit_code: code,
            wall_seconds: started.elapsed().as_secs_f64(),
            peak_rss_kb: peak,
        };
        if let Err(e) = std::fs::create_dir_all(&req.staging) {
            return Outcome::Failed {
                error: format!("cannot create {}: {e}", req.staging.display()),
                measured: measured(0, None),
            };
        }
        let stdout_path = req.staging.join("stdout.log");
        let stderr_path = req.staging.join("stderr.log");
        let task: Arc<TaskDef> = req.task.clone();
        // a fresh working folder per rank: one folder per slot, emptied
        // after every task, so a task creates and deletes no folder of its
        // own when it leaves nothing behind
        let mut works = Vec::new();
        for seat in &req.seats {
            let w = self.node_dirs[seat.node]
                .join("work")
                .join(format!("slot-{}", seat.slot));
            if let Err(e) = empty_dir(&w) {
                return Outcome::Lost {
                    reason: format!(
                        "node {} cannot create {}: {e}",
                        self.nodes[seat.node].name,
                        w.display()
                    ),
                };
            }
            works.push(w);
        }
        let envs: Vec<Vec<(String, String)>> = (0..req.seats.len())
            .map(|r| self.env_for(&req, r, &works[r]))
            .collect();
        let mut bgs: Vec<Bg> = Vec::new();
        let mut failure: Option<String> = None;
        let mut stopped = false;

        'steps: for step in &task.steps {
            let rank = step.node as usize;
            let mut env = envs[rank].clone();
            env.extend(step.env.iter().map(|(k, v)| (k.clone(), v.clone())));
            env.push(("INFRA_STEP".into(), step.name.clone()));
            let tries = step.retries + 1;
            for attempt_of_step in 1..=tries {
                let (mut out, err) = match (open_append(&stdout_path), open_append(&stderr_path)) {
                    (Ok(o), Ok(e)) => (o, e),
                    _ => {
                        failure = Some("cannot open the task's log files".into());
                        break 'steps;
                    }
                };
                let _ = writeln!(
                    out,
                    "== infra: step {} on {} (rank {rank}){} ==",
                    step.name,
                    self.nodes[req.seats[rank].node].name,
                    if attempt_of_step > 1 {
                        format!(", try {attempt_of_step}")
                    } else {
                        String::new()
                    }
                );
                let sp = match super::process::spawn(
                    &step.command,
                    &works[rank],
                    &env,
                    out,
                    err,
                    Some(&self.pid_log),
                ) {
                    Ok(sp) => sp,
                    Err(e) => {
                        failure = Some(format!("step \"{}\" could not start: {e}", step.name));
                        break 'steps;
                    }
                };
                if step.background {
                    match self.wait_healthy(&sp, step, &env, &mut req.stop).await {
                        Ok(()) => {
                            bgs.push(Bg {
                                proc: sp,
                                name: step.name.clone(),
                            });
                            continue 'steps;
                        }
                        Err(HealthEnd::Stopped) => {
                            sp.kill_group(Duration::from_secs(2)).await;
                            sp.wait().await;
                            stopped = true;
                            break 'steps;
                        }
                        Err(HealthEnd::Failed(msg)) => {
                            sp.kill_group(Duration::from_secs(2)).await;
                            let e = sp.wait().await;
                            peak = peak.max(e.max_rss_kb);
                            if attempt_of_step == tries {
                                failure = Some(msg);
                                break 'steps;
                            }
                            continue;
                        }
                    }
                }
                let end = self
                    .wait_step(&sp, step.timeout_seconds, &mut req.stop)
                    .await;
                match end {
                    StepEnd::Exited(e) => {
                        peak = peak.max(e.max_rss_kb);
                        last_code = Some(e.code);
                        if e.code == 0 {
                            continue 'steps;
                        }
                        if attempt_of_step == tries {
                            failure = Some(format!(
                                "step \"{}\" exited with code {}",
                                step.name, e.code
                            ));
                            break 'steps;
                        }
                    }
                    StepEnd::TimedOut(t) => {
                        last_code = Some(124);
                        if attempt_of_step == tries {
                            failure = Some(format!("step \"{}\" timed out after {t} s", step.name));
                            break 'steps;
                        }
                    }
                    StepEnd::Stopped => {
                        stopped = true;
                        break 'steps;
                    }
                }
            }
        }
        // stop the servers
        for bg in bgs.iter().rev() {
            bg.proc.kill_group(Duration::from_secs(2)).await;
            let e = bg.proc.wait().await;
            peak = peak.max(e.max_rss_kb);
            let _ = writeln_file(
                &stdout_path,
                &format!("== infra: stopped background step {} ==", bg.name),
            );
        }
        if stopped {
            return Outcome::Cancelled;
        }
        if failure.is_none() {
            for o in &task.outputs {
                // the first rank whose folder has it
                let from = works
                    .iter()
                    .map(|w| w.join(o))
                    .find(|p| p.exists())
                    .unwrap_or_else(|| works[0].join(o));
                let to = req.staging.join(o);
                if let Some(parent) = to.parent() {
                    let _ = std::fs::create_dir_all(parent);
                }
                if let Err(e) = copy_any(&from, &to) {
                    failure = Some(format!("declared output \"{o}\" was not produced ({e})"));
                    break;
                }
            }
        }
        for w in &works {
            let _ = empty_dir(w);
        }
        match failure {
            None => Outcome::Succeeded(measured(peak, last_code.or(Some(0)))),
            Some(error) => Outcome::Failed {
                error,
                measured: measured(peak, last_code),
            },
        }
    }

    async fn wait_healthy(
        &self,
        sp: &Spawned,
        step: &Step,
        env: &[(String, String)],
        stop: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), HealthEnd> {
        let Some(h) = &step.health else { return Ok(()) };
        let Health {
            http,
            command,
            timeout_seconds,
            interval_seconds,
        } = h;
        let deadline = Instant::now() + Duration::from_secs(*timeout_seconds);
        let interval = Duration::from_secs_f64(interval_seconds.clamp(0.05, 60.0));
        let url = http.as_ref().map(|u| expand_vars(u, env));
        loop {
            if *stop.borrow() {
                return Err(HealthEnd::Stopped);
            }
            if !super::process::group_alive(sp.pid) || super::process::leader_gone(sp.pid) {
                return Err(HealthEnd::Failed(format!(
                    "background step \"{}\" exited before it became healthy",
                    step.name
                )));
            }
            let ok = match (&url, command) {
                (Some(u), _) => http_ok(u).await,
                (None, Some(c)) => {
                    let dev = || File::create("/dev/null");
                    match (dev(), dev()) {
                        (Ok(o), Ok(e)) => {
                            match super::process::spawn(c, Path::new("."), env, o, e, None) {
                                Ok(p) => {
                                    let r = tokio::time::timeout(Duration::from_secs(10), p.wait())
                                        .await;
                                    if r.is_err() {
                                        p.signal_group(libc::SIGKILL);
                                        p.wait().await;
                                    }
                                    matches!(r, Ok(Exit { code: 0, .. }))
                                }
                                Err(_) => false,
                            }
                        }
                        _ => false,
                    }
                }
                _ => true,
            };
            if ok {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(HealthEnd::Failed(format!(
                    "background step \"{}\" was not healthy after {timeout_seconds} s ({})",
                    step.name,
                    url.clone().or(command.clone()).unwrap_or_default()
                )));
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = wait_stop(stop) => return Err(HealthEnd::Stopped),
            }
        }
    }
}

enum HealthEnd {
    Stopped,
    Failed(String),
}

pub async fn wait_stop(stop: &mut tokio::sync::watch::Receiver<bool>) {
    loop {
        if *stop.borrow() {
            return;
        }
        if stop.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
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
        Box::pin(self.attempt(req))
    }

    fn node_hourly_usd(&self, node: usize) -> f64 {
        self.nodes.get(node).map(|n| n.hourly_usd).unwrap_or(0.0)
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
        let exit = sp.wait().await;
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
