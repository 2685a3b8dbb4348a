//! The dispatch loop: queue → free slots → executor → journal → results.
//! It draws nothing; it reports events to a callback.
//!
//! [`run`] sets up a [`Runner`] (the run's state) and feeds it one event at a
//! time, one method per event: an attempt ended, retries came due, a node
//! came or went, a stop was asked for (Ctrl-C, SIGTERM, SIGHUP, the caller), the
//! queue starved for nodes, the budget watchdog ticked. Between events the
//! runner starts what fits; at the end it writes the run's summary.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use thiserror::Error;
use tokio::sync::{mpsc, watch};

use self::runner::Runner;
use super::exec::{Executor, NodeChange};
use super::journal::JournalError;
use super::lock::{self, LockError};
use super::scheduler::Policy;
pub use super::signals::Interrupts;
use crate::tasks::TaskDef;

pub use super::lock::Lock;

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
        /// The running attempts are cancelled (else they finish).
        cancel_running: bool,
    },
    /// A node went away (spot interruption, termination); nothing more runs on it.
    NodeLost {
        node: String,
        reason: String,
    },
    /// An attempt an earlier controller started (it crashed, was killed,
    /// or ran on another machine) was taken over where it runs.
    Adopted {
        task: String,
        attempt: u32,
        nodes: Vec<String>,
    },
    /// A completed task runs again: why (`--rerun`, `--changed`, its
    /// result folder gone).
    Rerun {
        task: String,
        reason: String,
    },
    /// A node joined (a fleet's replacement).
    NodeAdded {
        node: String,
        group: String,
    },
    /// A result could not be saved (a full disk, a read-only folder): said
    /// once per run; each task concerned fails with the reason.
    ResultsUnsaved {
        path: String,
        error: String,
    },
}

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub retry_failed: bool,
    pub policy: Option<Policy>,
    pub retry: crate::plan::RetryPolicy,
    pub watchdog: Option<Watchdog>,
    /// Completed tasks to run again, and where their results go.
    pub reruns: super::rerun::Reruns,
    /// The tasks' definitions by content key, journaled with each success
    /// (`infra plan` and `--changed` compare them with the current ones).
    pub fingerprints: std::collections::HashMap<String, crate::tasks::fingerprint::Fingerprint>,
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
    /// The first error that kept a result from being saved, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub results_error: Option<String>,
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

impl From<LockError> for RunError {
    fn from(e: LockError) -> RunError {
        match e {
            LockError::Held { path } => RunError::Locked { path },
            LockError::Io { path, source } => RunError::Io { path, source },
        }
    }
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> RunError {
    let path = path.to_path_buf();
    move |source| RunError::Io { path, source }
}

/// Take the phase's run lock, or fail at once if another run holds it.
pub fn lock_phase(state_dir: &Path) -> Result<Lock, RunError> {
    std::fs::create_dir_all(state_dir).map_err(io_at(state_dir))?;
    Ok(lock::take(&state_dir.join("run.lock"))?)
}

/// What stops a run from outside: a request (with its reason) and the
/// signals.
pub struct Stops {
    pub requested: watch::Receiver<Option<String>>,
    /// The signals' listeners, made before the setup by the command layer;
    /// None: the run makes its own.
    pub signals: Option<Interrupts>,
}

/// Run `tasks` on `exec` until all have ended or the run stops, and say how
/// it went. `stops` asks for a stop from outside; `report` gets every event
/// as it happens.
pub async fn run<E: Executor + ?Sized>(
    tasks: Vec<TaskDef>,
    exec: Arc<E>,
    paths: &Paths,
    provider: &str,
    opts: &RunOptions,
    stops: Stops,
    report: &mut dyn FnMut(&RunEvent),
) -> Result<RunSummary, RunError> {
    let Stops {
        requested: mut stop_rx,
        signals,
    } = stops;
    let mut signals = match signals {
        Some(s) => s,
        None => Interrupts::listen().map_err(io_at(&paths.state_dir))?,
    };
    let mut r = Runner::start(tasks, exec, paths, provider, opts, report)?;
    let watch_every = opts
        .watchdog
        .as_ref()
        .map(|w| w.interval)
        .unwrap_or(Duration::from_secs(3600));
    let mut ticker = tokio::time::interval(watch_every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let fatal = loop {
        if let Err(e) = r.dispatch() {
            break e;
        }
        if r.is_over() {
            return r.finish();
        }
        r.update_starved();
        let retry_due = r.next_retry();
        let starved = r.starved;
        // (the futures are dropped before a handler runs, so handlers may use `r`)
        let mut handled = Ok(());
        tokio::select! {
            Some(done) = r.done_rx.recv() => handled = r.on_attempt_done(done),
            Some(note) = r.notes_rx.recv() => handled = r.on_step_note(note),
            _ = sleep_until(retry_due) => r.on_retry_due(),
            why = signals.recv() => r.on_interrupt(why),
            Ok(()) = stop_rx.changed() => {
                let why = stop_rx.borrow().clone();
                if let Some(why) = why {
                    r.on_stop_request(&why);
                }
            }
            Some(ch) = next_change(&mut r.node_changes) => r.on_node_change(ch),
            _ = sleep_until(starved) => r.on_starved(),
            _ = ticker.tick(), if opts.watchdog.is_some() => r.on_watchdog_tick(),
        }
        if let Err(e) = handled {
            break e;
        }
    };
    // the journal cannot be written: what runs is stopped, not abandoned
    // (the journal says it was dispatched: the next run runs it again)
    r.abandon().await;
    Err(fatal)
}

/// Sleep until `at`; with no `at`, forever.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The next node change; with no channel (the nodes never change), never.
async fn next_change(
    changes: &mut Option<mpsc::UnboundedReceiver<NodeChange>>,
) -> Option<NodeChange> {
    match changes {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

mod runner;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod whole_runs;
