//! The dispatch loop: queue → free slots → executor → journal → results.
//! It draws nothing; it reports events to a callback.

use std::collections::{HashMap, VecDeque};
use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use thiserror::Error;
use tokio::sync::{mpsc, watch};

use super::exec::{AttemptRequest, Executor, Measured, NodeChange, Outcome, Seat};
use super::journal::{self, Entry, Journal, JournalError, Status};
use super::scheduler::{order, Placement, Policy, Pool};
use crate::tasks::TaskDef;

#[derive(Debug, Error)]
pub enum RunError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("another `infra run` is already running this phase (lock {path})\n  (hint: wait for it, or stop it with Ctrl-C)")]
    Locked { path: PathBuf },
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{count} selected task(s) need a node group with no nodes or too few nodes: {examples}\n  (hint: raise the group's count or change the tasks' \"nodes\")")]
    Unplaceable { count: usize, examples: String },
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RunEvent {
    Start {
        selected: usize,
        already_done: usize,
        to_run: usize,
        slots: usize,
    },
    Dispatched {
        task: String,
        attempt: u32,
        nodes: Vec<String>,
    },
    Succeeded {
        task: String,
        attempt: u32,
        wall_seconds: f64,
    },
    Retrying {
        task: String,
        attempt: u32,
        error: String,
        delay_seconds: f64,
    },
    Failed {
        task: String,
        attempt: u32,
        error: String,
    },
    Requeued {
        task: String,
        reason: String,
    },
    Stopping {
        reason: String,
    },
    /// A node went away (spot interruption, termination); nothing more runs on it.
    NodeLost {
        node: String,
        reason: String,
    },
    /// A node joined (a fleet's replacement).
    NodeAdded {
        node: String,
        group: String,
    },
}

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub retry_failed: bool,
    pub policy: Option<Policy>,
    pub retry: crate::plan::RetryPolicy,
    pub watchdog: Option<Watchdog>,
}

/// Stops the run before the budget is spent: metered spend is what the
/// nodes cost while the run lasts; when the next interval would reach the
/// budget, dispatching stops (and running tasks are cancelled on a hard stop).
#[derive(Debug, Clone)]
pub struct Watchdog {
    pub budget_usd: f64,
    pub spent_before_usd: f64,
    pub hourly_usd: f64,
    pub hard_stop: bool,
    pub interval: Duration,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct RunSummary {
    pub selected: usize,
    pub already_done: usize,
    pub succeeded: usize,
    pub failed: usize,
    pub skipped_failed: usize,
    pub pending: usize,
    pub interrupted: bool,
    pub reason: String,
    pub failed_tasks: Vec<String>,
    pub wall_seconds: f64,
    /// What the nodes cost during this run (node-hours x price).
    pub metered_usd: f64,
    pub budget_stop: bool,
}

/// Where a phase's files live.
#[derive(Debug, Clone)]
pub struct Paths {
    pub state_dir: PathBuf,
    pub results_dir: PathBuf,
}

impl Paths {
    pub fn journal(&self) -> PathBuf {
        self.state_dir.join("journal.jsonl")
    }
}

/// Held while a run owns a phase's state folder.
pub struct Lock {
    _file: std::fs::File,
}

/// Take the phase's run lock, or fail at once if another run holds it.
pub fn lock_phase(state_dir: &Path) -> Result<Lock, RunError> {
    std::fs::create_dir_all(state_dir).map_err(|source| RunError::Io {
        path: state_dir.into(),
        source,
    })?;
    lock(&state_dir.join("run.lock"))
}

fn lock(path: &Path) -> Result<Lock, RunError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|source| RunError::Io {
            path: path.into(),
            source,
        })?;
    // SAFETY: flock on a descriptor we own; released when the file closes or the process dies.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r != 0 {
        return Err(RunError::Locked { path: path.into() });
    }
    Ok(Lock { _file: file })
}

struct Done {
    idx: usize,
    attempt: u32,
    placement: Placement,
    outcome: Outcome,
    started: chrono::DateTime<chrono::Utc>,
}

pub async fn run<E: Executor + ?Sized>(
    tasks: Vec<TaskDef>,
    exec: Arc<E>,
    paths: &Paths,
    provider: &str,
    opts: &RunOptions,
    mut stop_rx_external: watch::Receiver<Option<String>>,
    report: &mut dyn FnMut(&RunEvent),
) -> Result<RunSummary, RunError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RunError::Io { path, source }
    };
    std::fs::create_dir_all(&paths.state_dir).map_err(io(&paths.state_dir))?;
    std::fs::create_dir_all(&paths.results_dir).map_err(io(&paths.results_dir))?;
    let _lock = lock(&paths.state_dir.join("run.lock"))?;
    let clock = Instant::now();
    let (mut state, _) = journal::read(&paths.journal())?;
    let mut journal = Journal::open(&paths.journal())?;
    let run_no = state.runs + 1;
    journal.append(Entry::RunStarted {
        run: run_no,
        pid: std::process::id(),
        provider: provider.into(),
        selected: tasks.len(),
    })?;
    state.apply(&Entry::RunStarted {
        run: run_no,
        pid: 0,
        provider: String::new(),
        selected: 0,
    });

    let mut pool = Pool::new(exec.node_names());
    let mut node_names: Vec<String> = pool.nodes.iter().map(|n| n.name.clone()).collect();
    let mut node_changes = exec.node_changes();
    // since when the queue has waited for nodes with nothing running
    let mut starved: Option<tokio::time::Instant> = None;
    let mut summary = RunSummary {
        selected: tasks.len(),
        ..Default::default()
    };
    let tasks: Vec<Arc<TaskDef>> = tasks.into_iter().map(Arc::new).collect();

    // what still has to run
    let mut todo = Vec::new();
    for (i, t) in tasks.iter().enumerate() {
        match state.status_of(&t.key) {
            Status::Succeeded => summary.already_done += 1,
            Status::Failed if !opts.retry_failed => summary.skipped_failed += 1,
            _ => todo.push(i),
        }
    }
    let mut unplaceable = Vec::new();
    todo.retain(|i| {
        let t = &tasks[*i];
        let nodes = pool
            .nodes
            .iter()
            .filter(|n| n.group == t.node_group && !n.busy.is_empty())
            .count();
        let ok = nodes >= t.nodes as usize;
        if !ok {
            unplaceable.push(t.id.clone());
        }
        ok
    });
    if !unplaceable.is_empty() {
        return Err(RunError::Unplaceable {
            count: unplaceable.len(),
            examples: unplaceable
                .iter()
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let est: Vec<Option<f64>> = todo.iter().map(|i| tasks[*i].estimate_seconds).collect();
    let mut pending: VecDeque<usize> = order(&est, opts.policy.unwrap_or(Policy::LongestFirst))
        .into_iter()
        .map(|k| todo[k])
        .collect();
    let total_slots: usize = pool.nodes.iter().map(|n| n.busy.len()).sum();
    report(&RunEvent::Start {
        selected: tasks.len(),
        already_done: summary.already_done,
        to_run: pending.len(),
        slots: total_slots,
    });

    let failures: HashMap<usize, u32> = pending
        .iter()
        .map(|i| {
            (
                *i,
                if opts.retry_failed {
                    0
                } else {
                    state
                        .tasks
                        .get(&tasks[*i].key)
                        .map(|t| t.failures)
                        .unwrap_or(0)
                },
            )
        })
        .collect();
    let mut failures = failures;
    let mut attempts: HashMap<usize, u32> = pending
        .iter()
        .map(|i| {
            (
                *i,
                state
                    .tasks
                    .get(&tasks[*i].key)
                    .map(|t| t.attempts)
                    .unwrap_or(0),
            )
        })
        .collect();
    let mut waiting: Vec<(tokio::time::Instant, usize)> = Vec::new();
    let (stop_tx, stop_rx) = watch::channel(false);
    let (tx, mut rx) = mpsc::unbounded_channel::<Done>();
    let mut running = 0usize;
    let mut stopping: Option<String> = None;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(io(&paths.state_dir))?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(io(&paths.state_dir))?;
    let staging_root = paths.state_dir.join("staging");
    let watch_every = opts
        .watchdog
        .as_ref()
        .map(|w| w.interval)
        .unwrap_or(Duration::from_secs(3600));
    let mut ticker = tokio::time::interval(watch_every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        if stopping.is_none() {
            let mut blocked: Vec<(String, u32)> = Vec::new();
            let mut kept = VecDeque::with_capacity(pending.len());
            while let Some(i) = pending.pop_front() {
                // nothing free anywhere: the rest of the queue waits as it is
                if pool.free_slots() == 0 {
                    kept.push_back(i);
                    kept.extend(pending.drain(..));
                    break;
                }
                let t = &tasks[i];
                if blocked
                    .iter()
                    .any(|(g, n)| *g == t.node_group && *n == t.nodes)
                {
                    kept.push_back(i);
                    continue;
                }
                let k = (t.node_group.clone(), t.nodes);
                let Some(placement) = pool.place(&t.node_group, t.nodes) else {
                    blocked.push(k);
                    kept.push_back(i);
                    continue;
                };
                let attempt = attempts.get(&i).copied().unwrap_or(0) + 1;
                attempts.insert(i, attempt);
                let nodes: Vec<String> = placement
                    .iter()
                    .map(|(n, _)| node_names[*n].clone())
                    .collect();
                journal.append(Entry::Dispatched {
                    task: t.id.clone(),
                    key: t.key.clone(),
                    attempt,
                    nodes: nodes.clone(),
                })?;
                report(&RunEvent::Dispatched {
                    task: t.id.clone(),
                    attempt,
                    nodes,
                });
                let staging = staging_root.join(format!("{}.{}", t.id, attempt));
                let _ = std::fs::remove_dir_all(&staging);
                let req = AttemptRequest {
                    task: t.clone(),
                    attempt,
                    seats: placement
                        .iter()
                        .map(|(n, s)| Seat { node: *n, slot: *s })
                        .collect(),
                    staging,
                    stop: stop_rx.clone(),
                };
                let exec2 = exec.clone();
                let tx2 = tx.clone();
                running += 1;
                let started = chrono::Utc::now();
                tokio::spawn(async move {
                    let outcome = exec2.run_attempt(req).await;
                    let _ = tx2.send(Done {
                        idx: i,
                        attempt,
                        placement,
                        outcome,
                        started,
                    });
                });
            }
            pending = kept;
        }
        if running == 0 && (stopping.is_some() || (pending.is_empty() && waiting.is_empty())) {
            break;
        }
        // nothing runs, nothing waits for a retry, and the queue fits on no
        // node left: wait a while for new nodes, then stop
        starved = if running == 0 && waiting.is_empty() && !pending.is_empty() && stopping.is_none()
        {
            Some(starved.unwrap_or_else(|| tokio::time::Instant::now() + exec.replacement_wait()))
        } else {
            None
        };
        let next_wake = waiting.iter().map(|(t, _)| *t).min();
        tokio::select! {
            Some(done) = rx.recv() => {
                running -= 1;
                pool.release(&done.placement);
                let t = tasks[done.idx].clone();
                let staging = staging_root.join(format!("{}.{}", t.id, done.attempt));
                let nodes: Vec<String> = done.placement.iter().map(|(n, _)| node_names[*n].clone()).collect();
                let slot_share = |m: &Measured| -> f64 {
                    done.placement.iter().map(|(n, _)| {
                        let slots = pool.nodes[*n].busy.len().max(1) as f64;
                        exec.node_hourly_usd(*n) * m.wall_seconds / 3600.0 / slots
                    }).sum()
                };
                match done.outcome {
                    Outcome::Succeeded(m) => {
                        let cost = slot_share(&m);
                        finalize(paths, &t, &staging, &runtime_json(&t, "succeeded", done.attempt, &nodes, &done.started, &m, cost, None))
                            .map_err(io(&paths.results_dir))?;
                        journal.append(Entry::Succeeded { task: t.id.clone(), key: t.key.clone(), attempt: done.attempt, wall_seconds: m.wall_seconds, cost_usd: cost })?;
                        summary.succeeded += 1;
                        report(&RunEvent::Succeeded { task: t.id.clone(), attempt: done.attempt, wall_seconds: m.wall_seconds });
                    }
                    Outcome::Failed { error, measured } => {
                        let f = failures.entry(done.idx).or_insert(0);
                        *f += 1;
                        if *f < t.attempts && stopping.is_none() {
                            let delay: Duration = opts.retry.delay_before(*f + 1);
                            journal.append(Entry::AttemptFailed { task: t.id.clone(), key: t.key.clone(), attempt: done.attempt, error: error.clone(), retry_in_seconds: delay.as_secs_f64() })?;
                            report(&RunEvent::Retrying { task: t.id.clone(), attempt: done.attempt, error, delay_seconds: delay.as_secs_f64() });
                            // keep this attempt's logs beside the final result
                            let _ = std::fs::rename(&staging, staging_root.join(format!("{}.{}.failed", t.id, done.attempt)));
                            waiting.push((tokio::time::Instant::now() + delay, done.idx));
                        } else {
                            let cost = slot_share(&measured);
                            finalize(paths, &t, &staging, &runtime_json(&t, "failed", done.attempt, &nodes, &done.started, &measured, cost, Some(&error)))
                                .map_err(io(&paths.results_dir))?;
                            append_failed_csv(&paths.results_dir, &t.id, done.attempt, &error).map_err(io(&paths.results_dir))?;
                            journal.append(Entry::Failed { task: t.id.clone(), key: t.key.clone(), attempt: done.attempt, error: error.clone() })?;
                            summary.failed += 1;
                            summary.failed_tasks.push(t.id.clone());
                            report(&RunEvent::Failed { task: t.id.clone(), attempt: done.attempt, error });
                        }
                    }
                    Outcome::Lost { reason } => {
                        // the executor reports the node before the attempt: apply it first so
                        // that the task is not placed on the same node again
                        while let Some(ch) = node_changes.as_mut().and_then(|r| r.try_recv().ok()) {
                            apply_node_change(&mut pool, &mut node_names, ch, report);
                        }
                        journal.append(Entry::Requeued { task: t.id.clone(), key: t.key.clone(), attempt: done.attempt, reason: reason.clone() })?;
                        report(&RunEvent::Requeued { task: t.id.clone(), reason });
                        let _ = std::fs::remove_dir_all(&staging);
                        pending.push_front(done.idx);
                    }
                    Outcome::Cancelled => {
                        let reason = stopping.clone().unwrap_or_else(|| "cancelled".into());
                        journal.append(Entry::Requeued { task: t.id.clone(), key: t.key.clone(), attempt: done.attempt, reason: reason.clone() })?;
                        let _ = std::fs::remove_dir_all(&staging);
                        report(&RunEvent::Requeued { task: t.id.clone(), reason });
                    }
                }
            }
            _ = async { match next_wake { Some(w) => tokio::time::sleep_until(w).await, None => std::future::pending().await } } => {
                let now = tokio::time::Instant::now();
                let (ready, rest): (Vec<_>, Vec<_>) = waiting.into_iter().partition(|(t, _)| *t <= now);
                waiting = rest;
                for (_, i) in ready.into_iter().rev() {
                    pending.push_front(i);
                }
            }
            _ = sigint.recv() => { stop(&mut stopping, &stop_tx, "interrupted (SIGINT)", true, report); summary.interrupted = true; }
            _ = sigterm.recv() => { stop(&mut stopping, &stop_tx, "interrupted (SIGTERM)", true, report); summary.interrupted = true; }
            Ok(()) = stop_rx_external.changed() => {
                let why = stop_rx_external.borrow().clone();
                if let Some(why) = why { stop(&mut stopping, &stop_tx, &why, true, report); }
            }
            Some(ch) = async { match node_changes.as_mut() { Some(r) => r.recv().await, None => std::future::pending().await } } => {
                apply_node_change(&mut pool, &mut node_names, ch, report);
            }
            _ = async { match starved { Some(w) => tokio::time::sleep_until(w).await, None => std::future::pending().await } } => {
                let groups: std::collections::BTreeSet<&str> = pending.iter().map(|i| tasks[*i].node_group.as_str()).collect();
                let why = format!(
                    "{} task(s) need more nodes of group {} than are left, and no replacement came within {:.0}s",
                    pending.len(),
                    groups.into_iter().collect::<Vec<_>>().join(", "),
                    exec.replacement_wait().as_secs_f64()
                );
                stop(&mut stopping, &stop_tx, &why, true, report);
            }
            _ = ticker.tick(), if opts.watchdog.is_some() => {
                if let Some(w) = &opts.watchdog {
                    let spent = w.spent_before_usd + w.hourly_usd * clock.elapsed().as_secs_f64() / 3600.0;
                    let next = spent + w.hourly_usd * w.interval.as_secs_f64() / 3600.0;
                    if next >= w.budget_usd && stopping.is_none() {
                        let why = format!(
                            "budget: ${spent:.4} spent of ${:.4}; the next {:.0}s at ${:.2}/h would reach it ({})",
                            w.budget_usd, w.interval.as_secs_f64(), w.hourly_usd,
                            if w.hard_stop { "hard stop: running tasks cancelled" } else { "running tasks finish" }
                        );
                        summary.budget_stop = true;
                        stop(&mut stopping, &stop_tx, &why, w.hard_stop, report);
                    }
                }
            }
        }
    }
    summary.pending = pending.len() + waiting.len();
    summary.reason = stopping.clone().unwrap_or_else(|| "done".into());
    summary.wall_seconds = clock.elapsed().as_secs_f64();
    summary.metered_usd = (0..pool.nodes.len())
        .map(|i| exec.node_hourly_usd(i))
        .sum::<f64>()
        * summary.wall_seconds
        / 3600.0;
    journal.append(Entry::RunFinished {
        run: run_no,
        succeeded: summary.succeeded,
        failed: summary.failed,
        pending: summary.pending,
        reason: summary.reason.clone(),
    })?;
    let _ = std::fs::remove_dir_all(&staging_root);
    Ok(summary)
}

fn apply_node_change(
    pool: &mut Pool,
    names: &mut Vec<String>,
    ch: NodeChange,
    report: &mut dyn FnMut(&RunEvent),
) {
    match ch {
        NodeChange::Lost { node, reason } => {
            if pool.nodes.get(node).is_some_and(|n| !n.retired) {
                pool.retire(node);
                report(&RunEvent::NodeLost {
                    node: names.get(node).cloned().unwrap_or_default(),
                    reason,
                });
            }
        }
        NodeChange::Added {
            node,
            name,
            group,
            slots,
        } => {
            // indices are the executor's; they only grow
            if node == pool.nodes.len() {
                pool.add(name.clone(), group.clone(), slots);
                names.push(name.clone());
                report(&RunEvent::NodeAdded { node: name, group });
            }
        }
    }
}

fn stop(
    stopping: &mut Option<String>,
    tx: &watch::Sender<bool>,
    why: &str,
    cancel_running: bool,
    report: &mut dyn FnMut(&RunEvent),
) {
    if stopping.is_none() {
        *stopping = Some(why.to_string());
        if cancel_running {
            let _ = tx.send(true);
        }
        report(&RunEvent::Stopping {
            reason: why.to_string(),
        });
    }
}

#[allow(clippy::too_many_arguments)]
fn runtime_json(
    t: &TaskDef,
    status: &str,
    attempt: u32,
    nodes: &[String],
    started: &chrono::DateTime<chrono::Utc>,
    m: &Measured,
    cost: f64,
    error: Option<&str>,
) -> serde_json::Value {
    serde_json::json!({
        "task": t.id,
        "key": t.key,
        "phase": t.phase,
        "layer": t.layer,
        "status": status,
        "exit_code": m.exit_code,
        "error": error,
        "attempts": attempt,
        "nodes": nodes,
        "node_group": t.node_group,
        "started": started.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "ended": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "wall_seconds": (m.wall_seconds * 1000.0).round() / 1000.0,
        "peak_rss_kb": m.peak_rss_kb,
        "cost_usd": (cost * 1e6).round() / 1e6,
        "factors": t.factors,
    })
}

/// Move an attempt's staging folder into `results/<phase>/<task>/` whole:
/// a crash leaves either the old result or the new one, never half of each.
fn finalize(
    paths: &Paths,
    t: &TaskDef,
    staging: &Path,
    runtime: &serde_json::Value,
) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec_pretty(runtime)?;
    bytes.push(b'\n');
    let runtime_path = staging.join("runtime.json");
    if std::fs::write(&runtime_path, &bytes).is_err() {
        // the executor made no staging folder (it failed before)
        std::fs::create_dir_all(staging)?;
        std::fs::write(&runtime_path, &bytes)?;
    }
    let dest = paths.results_dir.join(&t.id);
    let old = paths.results_dir.join(format!(".{}.old", t.id));
    let _ = std::fs::remove_dir_all(&old);
    // a result of an earlier attempt is replaced whole
    let replaced = match std::fs::rename(&dest, &old) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(e),
    };
    std::fs::rename(staging, &dest)?;
    if replaced {
        let _ = std::fs::remove_dir_all(&old);
    }
    Ok(())
}

pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn append_failed_csv(dir: &Path, id: &str, attempt: u32, error: &str) -> std::io::Result<()> {
    let path = dir.join("failed-tasks.csv");
    let new = !path.exists();
    let mut f = OpenOptions::new().create(true).append(true).open(&path)?;
    if new {
        writeln!(f, "time,pattern,attempt,error")?;
    }
    writeln!(
        f,
        "{},{},{},{}",
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        csv_field(id),
        attempt,
        csv_field(error)
    )?;
    f.sync_data()
}

#[cfg(test)]
mod node_change_tests {
    //! The runner with an executor whose nodes come and go.
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    use super::*;
    use crate::runner::exec::BoxFuture;

    struct Fickle {
        changes: Mutex<Option<mpsc::UnboundedReceiver<NodeChange>>>,
        tx: mpsc::UnboundedSender<NodeChange>,
        lost: AtomicBool,
        replace: bool,
        ran: Mutex<Vec<(String, usize)>>,
    }

    impl Fickle {
        fn new(replace: bool) -> Arc<Fickle> {
            let (tx, rx) = mpsc::unbounded_channel();
            Arc::new(Fickle {
                changes: Mutex::new(Some(rx)),
                tx,
                lost: AtomicBool::new(false),
                replace,
                ran: Mutex::new(Vec::new()),
            })
        }
    }

    impl Executor for Fickle {
        fn node_names(&self) -> Vec<(String, String, u32)> {
            vec![("n-0".into(), "g".into(), 1), ("n-1".into(), "g".into(), 1)]
        }
        fn run_attempt(self: Arc<Self>, req: AttemptRequest) -> BoxFuture<Outcome> {
            Box::pin(async move {
                let node = req.seats[0].node;
                self.ran.lock().unwrap().push((req.task.id.clone(), node));
                tokio::time::sleep(Duration::from_millis(30)).await;
                if node == 0 && !self.lost.swap(true, Ordering::SeqCst) {
                    // the node reports itself gone before the attempt ends
                    let _ = self.tx.send(NodeChange::Lost {
                        node: 0,
                        reason: "spot interruption".into(),
                    });
                    if self.replace {
                        let _ = self.tx.send(NodeChange::Added {
                            node: 2,
                            name: "n-2".into(),
                            group: "g".into(),
                            slots: 1,
                        });
                    }
                    return Outcome::Lost {
                        reason: "node n-0 got a spot interruption notice".into(),
                    };
                }
                let _ = std::fs::create_dir_all(&req.staging);
                Outcome::Succeeded(Measured {
                    exit_code: Some(0),
                    wall_seconds: 0.03,
                    peak_rss_kb: 0,
                })
            })
        }
        fn node_changes(&self) -> Option<mpsc::UnboundedReceiver<NodeChange>> {
            self.changes.lock().unwrap().take()
        }
        fn replacement_wait(&self) -> Duration {
            Duration::from_millis(300)
        }
    }

    fn task(i: usize, nodes: u32) -> TaskDef {
        TaskDef {
            version: 1,
            id: format!("t{i}"),
            key: format!("k{i}"),
            phase: "p".into(),
            layer: "L0".into(),
            backend: "b".into(),
            node_group: "g".into(),
            nodes,
            attempts: 1,
            estimate_seconds: None,
            partition: None,
            env: Default::default(),
            outputs: vec![],
            table: vec![],
            steps: vec![],
            factors: Default::default(),
            vars: Default::default(),
        }
    }

    async fn go(
        exec: Arc<Fickle>,
        tasks: Vec<TaskDef>,
    ) -> (RunSummary, Vec<RunEvent>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths {
            state_dir: dir.path().join("state"),
            results_dir: dir.path().join("results"),
        };
        let (_tx, rx) = watch::channel(None);
        let mut events = Vec::new();
        let s = run(
            tasks,
            exec,
            &paths,
            "fake",
            &RunOptions::default(),
            rx,
            &mut |e| events.push(e.clone()),
        )
        .await
        .unwrap();
        (s, events, dir)
    }

    #[tokio::test]
    async fn a_lost_node_takes_no_more_tasks_and_its_replacement_does() {
        let exec = Fickle::new(true);
        let (s, events, _dir) = go(exec.clone(), (0..4).map(|i| task(i, 1)).collect()).await;
        assert_eq!(s.succeeded, 4, "{events:?}");
        let ran = exec.ran.lock().unwrap().clone();
        assert_eq!(
            ran.iter().filter(|(_, n)| *n == 0).count(),
            1,
            "nothing more on the lost node: {ran:?}"
        );
        assert_eq!(ran.len(), 5, "the lost attempt ran again: {ran:?}");
        assert!(events
            .iter()
            .any(|e| matches!(e, RunEvent::Requeued { .. })));
        assert!(events
            .iter()
            .any(|e| matches!(e, RunEvent::NodeLost { node, .. } if node == "n-0")));
        assert!(events
            .iter()
            .any(|e| matches!(e, RunEvent::NodeAdded { node, .. } if node == "n-2")));
    }

    #[tokio::test]
    async fn without_a_replacement_the_run_stops_with_the_tasks_pending() {
        let exec = Fickle::new(false);
        // two-node tasks: after the loss one node is left, too few
        let (s, _events, _dir) = go(exec, (0..2).map(|i| task(i, 2)).collect()).await;
        assert_eq!(s.succeeded, 0);
        assert!(s.pending >= 1, "{s:?}");
        assert!(s.reason.contains("no replacement came"), "{}", s.reason);
    }
}
