//! A run's allocations: the local executor runs the steps (folders on the
//! shared file system) through `srun --jobid=<allocation> --overlap`
//! (`SlurmLauncher`); this executor adds what a cluster does to them. An
//! allocation that ends (scancel, time limit, preemption, node failure) is
//! reported as `NodeChange::Lost` (its attempts end `Outcome::Lost` and
//! their tasks are queued again) and a replacement is submitted, which
//! joins as `NodeChange::Added` once it runs. No task starts on an
//! allocation with less time left than the task's estimate (plus the
//! plan's `dispatch_margin`): that allocation takes no more tasks and a
//! replacement is asked for. The hours the allocations hold go to the
//! ledger as they are held (`meter.rs`), and the budget's hours are
//! watched against what the phase held in all, earlier runs included.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::argv::{self, AllocSpec};
use super::cluster;
use super::meter;
use super::state::{self, Allocation};
use crate::cost::hours::{self, Held};
use crate::plan::Plan;
use crate::provider::launch::Launcher;
use crate::provider::local::{LocalExecutor, LocalNode};
use crate::provider::process::PidLog;
use crate::provider::Log;
use crate::runner::exec::{AttemptRequest, BoxFuture, Executor, NodeChange, Outcome};

/// One allocation of the run, by node index.
#[derive(Debug, Clone)]
pub(super) struct Node {
    pub name: String,
    pub group: String,
    pub job: String,
    pub spec: AllocSpec,
    /// When its time limit ends, as `squeue` last said (None: no limit).
    pub ends: Option<Instant>,
    /// Gone, or taking no more tasks.
    pub lost: bool,
    /// Attempts running on it.
    pub active: usize,
}

/// What the launcher and the monitor share.
pub(super) struct Allocs {
    nodes: Mutex<Vec<Node>>,
    tx: mpsc::UnboundedSender<NodeChange>,
    /// Groups whose lost allocation wants a replacement.
    replace: Mutex<Vec<String>>,
    prefix: String,
}

impl Allocs {
    /// Place nothing more on `node` (once): the runner is told, and a
    /// replacement is asked for.
    fn retire(&self, node: usize, reason: String) {
        let mut nodes = self.nodes.lock().unwrap();
        let Some(n) = nodes.get_mut(node) else { return };
        if n.lost {
            return;
        }
        n.lost = true;
        self.replace.lock().unwrap().push(n.group.clone());
        let _ = self.tx.send(NodeChange::Lost { node, reason });
    }

    fn get(&self, node: usize) -> Option<Node> {
        self.nodes.lock().unwrap().get(node).cloned()
    }
}

/// Steps into allocations with `srun --jobid --overlap`.
pub(super) struct SlurmLauncher {
    allocs: Arc<Allocs>,
}

impl Launcher for SlurmLauncher {
    fn argv(
        &self,
        node: usize,
        cwd: &Path,
        command: &str,
        env: &[(String, String)],
    ) -> Vec<OsString> {
        let n = self.allocs.get(node).expect("a node of the run");
        argv::srun(&n.spec, &n.job, cwd, command, env)
    }

    fn node_gone(&self, nodes: &[usize]) -> Option<String> {
        // a step that failed: was it its allocation that went?
        let rows = cluster::list_blocking(&self.allocs.prefix).ok()?;
        for &i in nodes {
            let n = self.allocs.get(i)?;
            let state = rows.get(&n.job).map(|r| r.state.as_str());
            if state != Some("RUNNING") {
                let reason = format!(
                    "allocation {} (job {}) ended{}",
                    n.name,
                    n.job,
                    state.map(|s| format!(": {s}")).unwrap_or_default()
                );
                self.allocs.retire(i, reason.clone());
                return Some(reason);
            }
        }
        None
    }

    fn provider(&self) -> &'static str {
        "slurm"
    }
}

pub struct SlurmExecutor {
    shared: Arc<Shared>,
}

struct Shared {
    plan: Plan,
    allocs: Arc<Allocs>,
    inner: RwLock<Arc<LocalExecutor>>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<NodeChange>>>,
    margin: Duration,
    poll: Duration,
    replacement_wait: Duration,
    log: Log,
    /// The hours the phase had held when the run began (the ledger).
    before: Held,
    /// The hours the phase has held in all, as last metered.
    total: Mutex<Held>,
    /// The phase's jobs as `squeue` last listed them: one that is gone
    /// is recorded as last seen.
    seen: Mutex<BTreeMap<String, cluster::JobRow>>,
    /// What the ledger had of the phase when the meter last wrote.
    recorded: Mutex<Option<meter::Recorded>>,
    /// The budget's hours are spent: no replacement is waited for.
    exhausted: std::sync::atomic::AtomicBool,
}

/// The executor's view of an allocation that runs.
pub(super) fn local_node(plan: &Plan, a: &Allocation, index: usize) -> LocalNode {
    let g = plan.node_group(&a.group);
    LocalNode {
        name: a.name.clone(),
        group: a.group.clone(),
        index,
        addr: if a.addr.is_empty() {
            a.node.clone()
        } else {
            a.addr.clone()
        },
        slots: g.map(|g| g.slots).unwrap_or(1),
        gpus: g.and_then(|g| g.gpus).unwrap_or(0),
        vcpus: a.cpus.max(1),
        workers_per_slot: g.and_then(|g| g.workers_per_slot),
        instance_type: format!("job {}", a.job_id),
        hourly_usd: 0.0,
        port_offset: a.port_offset,
    }
}

impl SlurmExecutor {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        plan: &Plan,
        allocations: &[Allocation],
        left: &BTreeMap<String, Duration>,
        before: Held,
        poll: Duration,
        replacement_wait: Duration,
        log: Log,
    ) -> SlurmExecutor {
        crate::provider::process::become_subreaper();
        let (tx, rx) = mpsc::unbounded_channel();
        let nodes: Vec<Node> = allocations
            .iter()
            .map(|a| node_of(plan, a, left.get(&a.job_id).copied()))
            .collect();
        let allocs = Arc::new(Allocs {
            nodes: Mutex::new(nodes),
            tx,
            replace: Mutex::new(Vec::new()),
            prefix: argv::job_prefix(plan),
        });
        let locals: Vec<LocalNode> = allocations
            .iter()
            .enumerate()
            .map(|(i, a)| local_node(plan, a, i))
            .collect();
        let inner = LocalExecutor {
            node_dirs: allocations
                .iter()
                .map(|a| state::alloc_dir(&plan.state_dir(), &a.name))
                .collect(),
            nodes: locals,
            state_dir: plan.state_dir(),
            root: plan.root.clone(),
            phase: plan.phase.clone(),
            phase_name: plan.name_key.clone(),
            pid_log: PidLog::open(&plan.state_dir().join("pids.log")),
            launcher: Some(Arc::new(SlurmLauncher {
                allocs: allocs.clone(),
            })),
        };
        let margin = plan
            .slurm
            .as_ref()
            .map(|s| s.dispatch_margin)
            .unwrap_or_default();
        SlurmExecutor {
            shared: Arc::new(Shared {
                plan: plan.clone(),
                allocs,
                inner: RwLock::new(Arc::new(inner)),
                rx: Mutex::new(Some(rx)),
                margin,
                poll,
                replacement_wait,
                log,
                before,
                total: Mutex::new(before),
                seen: Mutex::new(BTreeMap::new()),
                recorded: Mutex::new(None),
                exhausted: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }
}

fn node_of(plan: &Plan, a: &Allocation, left: Option<Duration>) -> Node {
    let spec = plan
        .node_group(&a.group)
        .map(|g| AllocSpec::of(plan, g))
        .unwrap_or_default();
    Node {
        name: a.name.clone(),
        group: a.group.clone(),
        job: a.job_id.clone(),
        spec,
        ends: left.map(|l| Instant::now() + l),
        lost: false,
        active: 0,
    }
}

fn mins(d: Duration) -> String {
    let m = d.as_secs_f64() / 60.0;
    if m < 1.0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{m:.0} min")
    }
}

impl SlurmExecutor {
    /// The hours the run's allocations held, and the phase's in all
    /// (earlier runs included), as last metered.
    pub fn held(&self) -> (Held, Held) {
        let total = *self.shared.total.lock().unwrap();
        (total.since(self.shared.before), total)
    }

    /// Record all the allocations held so far (the run ends).
    pub async fn flush(&self) {
        let sh = &self.shared;
        match cluster::list(&sh.allocs.prefix).await {
            Ok(rows) => {
                hold(sh, &rows, true);
            }
            Err(e) => (sh.log)(&format!("squeue: {e}")),
        }
    }
}

/// Record what the allocations held (`rows`: squeue now; a job gone since
/// the last look is recorded as last seen): what reaches [`meter::FLUSH`],
/// or everything with `all`. The phase's hours in all.
fn hold(sh: &Shared, rows: &BTreeMap<String, cluster::JobRow>, all: bool) -> Option<Held> {
    let mut seen = sh.seen.lock().unwrap();
    let gone: BTreeSet<String> = seen
        .keys()
        .filter(|k| !rows.contains_key(*k))
        .cloned()
        .collect();
    for (k, r) in rows {
        seen.insert(k.clone(), r.clone());
    }
    let min = if all { Duration::ZERO } else { meter::FLUSH };
    let mut recorded = sh.recorded.lock().unwrap();
    match meter::record(&sh.plan, &seen, min, &gone, Some(&mut recorded)) {
        Ok(total) => {
            seen.retain(|k, _| !gone.contains(k));
            *sh.total.lock().unwrap() = total;
            Some(total)
        }
        Err(e) => {
            (sh.log)(&format!("the allocation hours were not recorded: {e}"));
            None
        }
    }
}

/// Hours with the digits that matter (0.0021, 12.5).
pub(super) fn hours(h: f64) -> String {
    hours::fmt(h)
}

/// Record what the allocations held, and watch the budget's hours (the
/// phase's in all, earlier runs included); past them (with `hard_stop`),
/// every allocation is retired and cancelled: the run stops placing
/// tasks. True once exhausted.
async fn meter(sh: &Shared, rows: &BTreeMap<String, cluster::JobRow>) -> bool {
    let Some(held) = hold(sh, rows, false) else {
        return false;
    };
    let Some(b) = sh.plan.budget.as_ref().filter(|b| b.hard_stop) else {
        return false;
    };
    let over = match (b.gpu_hours, b.node_hours) {
        (Some(c), _) if held.gpu_hours >= c => Some(format!(
            "{} GPU-hours of the budget's {c}",
            hours(held.gpu_hours)
        )),
        (_, Some(c)) if held.node_hours >= c => Some(format!(
            "{} node-hours of the budget's {c}",
            hours(held.node_hours)
        )),
        _ => None,
    };
    let Some(what) = over else { return false };
    let reason = format!("budget reached: the allocations held {what}");
    sh.exhausted
        .store(true, std::sync::atomic::Ordering::SeqCst);
    (sh.log)(&format!("{reason}: every allocation is cancelled"));
    let nodes = sh.allocs.nodes.lock().unwrap().clone();
    let mut jobs = Vec::new();
    for (i, n) in nodes.iter().enumerate().filter(|(_, n)| !n.lost) {
        jobs.push(n.job.clone());
        sh.allocs.retire(i, reason.clone());
    }
    sh.allocs.replace.lock().unwrap().clear();
    hold(sh, rows, true);
    let _ = cluster::cancel(&jobs).await;
    true
}

impl Executor for SlurmExecutor {
    fn node_names(&self) -> Vec<(String, String, u32)> {
        self.shared.inner.read().unwrap().node_names()
    }

    fn run_attempt(self: Arc<Self>, req: AttemptRequest) -> BoxFuture<Outcome> {
        let sh = &self.shared;
        for seat in &req.seats {
            let Some(n) = sh.allocs.get(seat.node) else {
                continue;
            };
            if n.lost {
                let reason = format!("allocation {} (job {}) takes no more tasks", n.name, n.job);
                return Box::pin(async move { Outcome::Lost { reason } });
            }
            let (Some(ends), Some(est)) = (n.ends, req.task.estimate_seconds) else {
                continue;
            };
            let need = Duration::from_secs_f64(est.max(0.0)) + sh.margin;
            let left = ends.saturating_duration_since(Instant::now());
            if left < need {
                let reason = format!(
                    "allocation {} (job {}) has {} left, less than {}'s estimate{}: no more tasks start on it",
                    n.name,
                    n.job,
                    mins(left),
                    req.task.id,
                    if sh.margin.is_zero() { String::new() } else { format!(" plus the margin of {}", mins(sh.margin)) }
                );
                sh.allocs.retire(seat.node, reason.clone());
                return Box::pin(async move { Outcome::Lost { reason } });
            }
        }
        let inner = sh.inner.read().unwrap().clone();
        let nodes: Vec<usize> = req.seats.iter().map(|s| s.node).collect();
        let count = move |allocs: &Allocs, up: bool| {
            let mut all = allocs.nodes.lock().unwrap();
            for &i in &nodes {
                if let Some(n) = all.get_mut(i) {
                    n.active = if up {
                        n.active + 1
                    } else {
                        n.active.saturating_sub(1)
                    };
                }
            }
        };
        count(&sh.allocs, true);
        let allocs = sh.allocs.clone();
        let attempt = inner.run_attempt(req);
        Box::pin(async move {
            let out = attempt.await;
            count(&allocs, false);
            out
        })
    }

    fn node_changes(&self) -> Option<mpsc::UnboundedReceiver<NodeChange>> {
        let rx = self.shared.rx.lock().unwrap().take()?;
        tokio::spawn(monitor(Arc::downgrade(&self.shared)));
        Some(rx)
    }

    fn replacement_wait(&self) -> Duration {
        if self
            .shared
            .exhausted
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Duration::ZERO;
        }
        self.shared.replacement_wait
    }
}

/// A replacement on its way: submitted, not running yet.
struct Pending {
    alloc: Allocation,
    since: Instant,
}

/// Every `poll`: the allocations' state from `squeue` (time left, losses),
/// replacements submitted for lost ones, and joined once they run. Ends
/// when the executor is dropped.
async fn monitor(weak: Weak<Shared>) {
    let mut pending: Vec<Pending> = Vec::new();
    let mut submitted = 0usize;
    let mut exhausted = false;
    loop {
        let Some(sh) = weak.upgrade() else { return };
        let poll = sh.poll;
        drop(sh);
        tokio::time::sleep(poll).await;
        let Some(sh) = weak.upgrade() else { return };
        let rows = match cluster::list(&sh.allocs.prefix).await {
            Ok(r) => r,
            Err(e) => {
                (sh.log)(&format!("squeue: {e}"));
                continue;
            }
        };
        if !exhausted {
            exhausted = meter(&sh, &rows).await;
        } else {
            hold(&sh, &rows, false);
        }
        if exhausted {
            // nothing is replaced after the budget is spent
            sh.allocs.replace.lock().unwrap().clear();
            continue;
        }
        // losses and time left
        let nodes = sh.allocs.nodes.lock().unwrap().clone();
        for (i, n) in nodes.iter().enumerate().filter(|(_, n)| !n.lost) {
            match rows.get(&n.job) {
                Some(r) if r.running() => {
                    if let Some(l) = r.left {
                        if let Some(x) = sh.allocs.nodes.lock().unwrap().get_mut(i) {
                            x.ends = Some(Instant::now() + l);
                        }
                    }
                }
                r => {
                    let reason = format!(
                        "allocation {} (job {}) ended{}",
                        n.name,
                        n.job,
                        r.map(|r| format!(": {}", r.state)).unwrap_or_default()
                    );
                    mark_ended(&sh.plan, &n.job, &reason);
                    sh.allocs.retire(i, reason);
                }
            }
        }
        // a retired allocation (too little time left) whose last attempt
        // ended gives its resources back
        let idle: Vec<(String, String)> = sh
            .allocs
            .nodes
            .lock()
            .unwrap()
            .iter()
            .filter(|n| n.lost && n.active == 0)
            .filter(|n| rows.get(&n.job).is_some_and(|r| r.running()))
            .map(|n| (n.name.clone(), n.job.clone()))
            .collect();
        for (name, job) in idle {
            if cluster::cancel(std::slice::from_ref(&job)).await.is_ok() {
                (sh.log)(&format!(
                    "cancelled {name} (job {job}): it takes no more tasks and runs none"
                ));
                mark_ended(&sh.plan, &job, "released: too little time left");
            }
        }
        // replacements: at most twice the allocations the plan asks for
        let wanted: Vec<String> = std::mem::take(&mut *sh.allocs.replace.lock().unwrap());
        let limit = 2 * sh
            .plan
            .node_groups
            .iter()
            .map(|g| g.count as usize)
            .sum::<usize>();
        for group in wanted {
            if submitted >= limit {
                (sh.log)(&format!(
                    "no replacement for a lost allocation of {group}: {limit} replacements were submitted in this run already"
                ));
                continue;
            }
            match super::provider::submit(&sh.plan, &group).await {
                Ok(a) => {
                    submitted += 1;
                    (sh.log)(&format!(
                        "submitted {} (job {}) to replace a lost allocation of {group}",
                        a.name, a.job_id
                    ));
                    pending.push(Pending {
                        alloc: a,
                        since: Instant::now(),
                    });
                }
                Err(e) => (sh.log)(&format!("cannot submit a replacement for {group}: {e}")),
            }
        }
        // replacements that run join the run
        let mut still = Vec::new();
        for mut p in pending {
            match rows.get(&p.alloc.job_id) {
                Some(r) if r.running() => {
                    p.alloc.node = r.node.clone();
                    p.alloc.addr = cluster::node_addr(&r.node).await;
                    p.alloc.cpus = r.cpus;
                    p.alloc.port_offset = state::load(&sh.plan)
                        .unwrap_or_default()
                        .port_offset_for(&p.alloc.job_id, &r.node, &|g| {
                            super::provider::slots_of(&sh.plan, g)
                        });
                    if let Err(e) = super::provider::setup(&sh.plan, &mut p.alloc).await {
                        (sh.log)(&format!("{e}: it is cancelled"));
                        let _ = cluster::cancel(std::slice::from_ref(&p.alloc.job_id)).await;
                        mark_ended(&sh.plan, &p.alloc.job_id, "its setup failed");
                        continue;
                    }
                    join(&sh, p.alloc, r.left);
                }
                Some(r) => {
                    if p.since.elapsed() > Duration::from_secs(30)
                        && p.since.elapsed().as_secs() % 60 < poll.as_secs().max(1)
                    {
                        (sh.log)(&format!(
                            "replacement {} (job {}) still pending: {}",
                            p.alloc.name, p.alloc.job_id, r.reason
                        ));
                    }
                    still.push(p);
                }
                // submitted a moment ago: not listed yet
                None if p.since.elapsed() < Duration::from_secs(10) => still.push(p),
                None => {
                    (sh.log)(&format!(
                        "replacement {} (job {}) ended before it ran",
                        p.alloc.name, p.alloc.job_id
                    ));
                    mark_ended(&sh.plan, &p.alloc.job_id, "ended before it ran");
                }
            }
        }
        pending = still;
    }
}

/// A running replacement becomes the run's next node.
fn join(sh: &Shared, a: Allocation, left: Option<Duration>) {
    let mut inner_guard = sh.inner.write().unwrap();
    let old = inner_guard.clone();
    let index = old.nodes.len();
    let mut nodes = old.nodes.clone();
    nodes.push(local_node(&sh.plan, &a, index));
    let mut dirs = old.node_dirs.clone();
    dirs.push(state::alloc_dir(&sh.plan.state_dir(), &a.name));
    sh.allocs
        .nodes
        .lock()
        .unwrap()
        .push(node_of(&sh.plan, &a, left));
    *inner_guard = Arc::new(LocalExecutor {
        nodes,
        node_dirs: dirs,
        state_dir: old.state_dir.clone(),
        root: old.root.clone(),
        phase: old.phase.clone(),
        phase_name: old.phase_name.clone(),
        pid_log: PidLog::open(&old.state_dir.join("pids.log")),
        launcher: old.launcher.clone(),
    });
    drop(inner_guard);
    let slots = sh.plan.node_group(&a.group).map(|g| g.slots).unwrap_or(1);
    let _ = super::provider::record(&sh.plan, |st| {
        if let Some(x) = st.allocations.iter_mut().find(|x| x.job_id == a.job_id) {
            *x = a.clone();
        }
    });
    let _ = sh.allocs.tx.send(NodeChange::Added {
        node: index,
        name: a.name.clone(),
        group: a.group.clone(),
        slots,
    });
}

/// Record in the phase's state that job `job` ended.
fn mark_ended(plan: &Plan, job: &str, why: &str) {
    let _ = super::provider::record(plan, |st| {
        if let Some(a) = st.allocations.iter_mut().find(|a| a.job_id == job) {
            a.ended.get_or_insert_with(|| why.to_string());
        }
    });
}
