//! The run's state between events, and one method per event.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, watch};

use super::{io_at, Paths, RunError, RunEvent, RunOptions, RunSummary};
use crate::runner::exec::{
    AttemptRequest, Executor, Measured, NodeChange, Outcome, Resume, Seat, StepNote, StepNotes,
};
use crate::runner::finalize::{finalize, runtime_json, Ended};
use crate::runner::journal::{self, Entry, InFlight, Journal, State, Status};
use crate::runner::lock::{self, Lock};
use crate::runner::scheduler::{order, Placement, Policy, Pool};
use crate::tasks::TaskDef;

/// An attempt handed to the executor.
pub(super) struct Attempt {
    /// The task's index.
    pub(super) idx: usize,
    pub(super) number: u32,
    pub(super) placement: Placement,
    pub(super) started: chrono::DateTime<chrono::Utc>,
}

/// An attempt that ended, as its task sends it back to the loop.
pub(super) struct Done {
    pub(super) attempt: Attempt,
    pub(super) outcome: Outcome,
}

/// One run's state between events. Tasks are named by their index in
/// `tasks`.
pub(super) struct Runner<'a, E: ?Sized> {
    exec: Arc<E>,
    paths: &'a Paths,
    opts: &'a RunOptions,
    report: &'a mut dyn FnMut(&RunEvent),
    tasks: Vec<Arc<TaskDef>>,
    journal: Journal,
    run_no: u32,
    /// Held until the run's summary is written.
    _lock: Lock,
    clock: Instant,
    pub(super) staging_root: PathBuf,
    pub(super) pool: Pool,
    node_names: Vec<String>,
    pub(super) node_changes: Option<mpsc::UnboundedReceiver<NodeChange>>,
    /// Queued, in dispatch order.
    pub(super) pending: VecDeque<usize>,
    /// Failed tasks waiting out their backoff: (when, task).
    pub(super) waiting: Vec<(tokio::time::Instant, usize)>,
    /// Failed attempts per task; they count against the task's `attempts`.
    pub(super) failures: HashMap<usize, u32>,
    /// The number of the task's last attempt (all runs together).
    pub(super) attempts: HashMap<usize, u32>,
    pub(super) running: usize,
    /// Why the run stops, once it does: nothing more is dispatched.
    pub(super) stopping: Option<String>,
    /// Since when the queue has waited for nodes with nothing running.
    pub(super) starved: Option<tokio::time::Instant>,
    pub(super) summary: RunSummary,
    /// Turns true to cancel the running attempts.
    cancel_tx: watch::Sender<bool>,
    pub(super) cancel_rx: watch::Receiver<bool>,
    done_tx: mpsc::UnboundedSender<Done>,
    pub(super) done_rx: mpsc::UnboundedReceiver<Done>,
    notes_tx: mpsc::UnboundedSender<StepNote>,
    pub(super) notes_rx: mpsc::UnboundedReceiver<StepNote>,
}

impl<'a, E: Executor + ?Sized> Runner<'a, E> {
    /// Lock the phase, journal the run's start, queue what still has to run
    /// (in the policy's order) and report the start.
    pub(super) fn start(
        tasks: Vec<TaskDef>,
        exec: Arc<E>,
        paths: &'a Paths,
        provider: &str,
        opts: &'a RunOptions,
        report: &'a mut dyn FnMut(&RunEvent),
    ) -> Result<Self, RunError> {
        std::fs::create_dir_all(&paths.state_dir).map_err(io_at(&paths.state_dir))?;
        std::fs::create_dir_all(&paths.results_dir).map_err(io_at(&paths.results_dir))?;
        let lock = lock::take(&paths.state_dir.join("run.lock"))?;
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

        let pool = Pool::new(exec.node_names());
        let node_names: Vec<String> = pool.nodes.iter().map(|n| n.name.clone()).collect();
        let node_changes = exec.node_changes();
        let mut summary = RunSummary {
            selected: tasks.len(),
            ..Default::default()
        };
        let tasks: Vec<Arc<TaskDef>> = tasks.into_iter().map(Arc::new).collect();
        // completed tasks run again deliberately: results to the history
        crate::runner::rerun::mark(&opts.reruns, &mut journal, &mut state, paths, report)?;
        // attempts whose controller was lost: adopted, not run again
        let in_flight: Vec<(usize, InFlight)> = tasks
            .iter()
            .enumerate()
            .filter_map(|(i, t)| Some((i, state.tasks.get(&t.key)?.in_flight.clone()?)))
            .collect();
        let mut todo = to_run(&tasks, &state, opts.retry_failed, &mut summary);
        // (their attempts and failures so far count as for the queued ones)
        let known = todo.clone();
        todo.retain(|i| !in_flight.iter().any(|(j, _)| j == i));
        check_placeable(&tasks, &todo, &pool)?;
        let est: Vec<Option<f64>> = todo.iter().map(|i| tasks[*i].estimate_seconds).collect();
        let pending: VecDeque<usize> = order(&est, opts.policy.unwrap_or(Policy::LongestFirst))
            .into_iter()
            .map(|k| todo[k])
            .collect();
        report(&RunEvent::Start {
            selected: tasks.len(),
            already_done: summary.already_done,
            to_run: pending.len() + in_flight.len(),
            slots: pool.nodes.iter().map(|n| n.busy.len()).sum(),
        });

        let earlier = |i: &usize| state.tasks.get(&tasks[*i].key);
        let failures = known
            .iter()
            .map(|i| {
                let f = earlier(i).map(|t| t.failures).unwrap_or(0);
                (*i, if opts.retry_failed { 0 } else { f })
            })
            .collect();
        let attempts = known
            .iter()
            .map(|i| (*i, earlier(i).map(|t| t.attempts).unwrap_or(0)))
            .collect();
        let (cancel_tx, cancel_rx) = watch::channel(false);
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let (notes_tx, notes_rx) = mpsc::unbounded_channel();
        let mut r = Runner {
            exec,
            paths,
            opts,
            report,
            tasks,
            journal,
            run_no,
            _lock: lock,
            clock,
            staging_root: paths.state_dir.join("staging"),
            pool,
            node_names,
            node_changes,
            pending,
            waiting: Vec::new(),
            failures,
            attempts,
            running: 0,
            stopping: None,
            starved: None,
            summary,
            cancel_tx,
            cancel_rx,
            done_tx,
            done_rx,
            notes_tx,
            notes_rx,
        };
        // in flight but not selected: the provider's start-up stopped them
        let selected: std::collections::HashSet<&str> =
            r.tasks.iter().map(|t| t.key.as_str()).collect();
        let mut orphans: Vec<(&String, &crate::runner::journal::TaskState)> = state
            .tasks
            .iter()
            .filter(|(k, t)| t.in_flight.is_some() && !selected.contains(k.as_str()))
            .collect();
        orphans.sort_by(|a, b| a.0.cmp(b.0));
        for (key, t) in orphans {
            r.journal.append(Entry::Requeued {
                task: t.id.clone(),
                key: key.clone(),
                attempt: t.in_flight.as_ref().map_or(0, |f| f.attempt),
                reason: "its controller was lost, and this run did not select it: its steps were stopped".into(),
            })?;
        }
        for (i, f) in in_flight {
            r.adopt(i, f)?;
        }
        Ok(r)
    }

    /// An attempt an earlier controller started and did not see end: go
    /// on with it where it runs (the same attempt: losing a controller
    /// costs none), or, when that cannot be, queue its task again.
    fn adopt(&mut self, i: usize, f: InFlight) -> Result<(), RunError> {
        let t = self.tasks[i].clone();
        let seats: Vec<(&str, u32)> = f
            .nodes
            .iter()
            .map(String::as_str)
            .zip(f.slots.iter().copied())
            .collect();
        let placement = if f.adoptable() {
            self.pool.take(&seats)
        } else {
            None
        };
        let Some(placement) = placement else {
            let reason = if f.steps.is_empty() {
                "its controller was lost before a step started"
            } else {
                "its controller was lost and its node is gone"
            };
            self.journal.append(Entry::Requeued {
                task: t.id.clone(),
                key: t.key.clone(),
                attempt: f.attempt,
                reason: reason.into(),
            })?;
            self.pending.push_front(i);
            return Ok(());
        };
        self.journal.append(Entry::Adopted {
            task: t.id.clone(),
            key: t.key.clone(),
            attempt: f.attempt,
        })?;
        (self.report)(&RunEvent::Adopted {
            task: t.id.clone(),
            attempt: f.attempt,
            nodes: f.nodes.clone(),
        });
        let started = chrono::DateTime::parse_from_rfc3339(&f.dispatched)
            .map(|d| d.with_timezone(&chrono::Utc))
            .unwrap_or_else(|_| chrono::Utc::now());
        let elapsed = (chrono::Utc::now() - started).to_std().unwrap_or_default();
        let resume = Resume {
            steps: f
                .steps
                .iter()
                .map(|s| (s.step, s.try_no, s.handle.clone()))
                .collect(),
            elapsed,
        };
        self.launch(i, f.attempt, placement, started, Some(resume));
        Ok(())
    }

    /// A step started: its handle goes to the journal (a controller that
    /// starts after this one died adopts the step by it).
    pub(super) fn on_step_note(&mut self, n: StepNote) -> Result<(), RunError> {
        let Some(t) = self.tasks.get(n.task).cloned() else {
            return Ok(());
        };
        self.journal.append(Entry::StepStarted {
            task: t.id.clone(),
            key: t.key.clone(),
            attempt: n.attempt,
            step: n.step,
            try_no: n.try_no,
            handle: n.handle,
        })?;
        Ok(())
    }

    /// Nothing runs and nothing more will start.
    pub(super) fn is_over(&self) -> bool {
        self.running == 0
            && (self.stopping.is_some() || (self.pending.is_empty() && self.waiting.is_empty()))
    }

    /// When the next failed task's backoff ends.
    pub(super) fn next_retry(&self) -> Option<tokio::time::Instant> {
        self.waiting.iter().map(|(t, _)| *t).min()
    }

    /// Nothing runs, nothing waits for a retry, and the queue fits on no
    /// node left: wait a while for new nodes (`on_starved` then stops).
    pub(super) fn update_starved(&mut self) {
        self.starved = if self.running == 0
            && self.waiting.is_empty()
            && !self.pending.is_empty()
            && self.stopping.is_none()
        {
            Some(
                self.starved
                    .unwrap_or_else(|| tokio::time::Instant::now() + self.exec.replacement_wait()),
            )
        } else {
            None
        };
    }

    /// Start what fits on the free slots, in queue order; the rest stays
    /// queued in its order. Nothing starts once the run is stopping.
    pub(super) fn dispatch(&mut self) -> Result<(), RunError> {
        if self.stopping.is_some() {
            return Ok(());
        }
        // (group, ranks) that found no placement this round
        let mut blocked: Vec<(String, u32)> = Vec::new();
        let mut kept = VecDeque::with_capacity(self.pending.len());
        while let Some(i) = self.pending.pop_front() {
            // nothing free anywhere: the rest of the queue waits as it is
            if self.pool.free_slots() == 0 {
                kept.push_back(i);
                kept.extend(self.pending.drain(..));
                break;
            }
            let t = &self.tasks[i];
            if blocked
                .iter()
                .any(|(g, n)| *g == t.node_group && *n == t.nodes)
            {
                kept.push_back(i);
                continue;
            }
            let Some(placement) = self.pool.place(&t.node_group, t.nodes) else {
                blocked.push((t.node_group.clone(), t.nodes));
                kept.push_back(i);
                continue;
            };
            self.start_attempt(i, placement)?;
        }
        self.pending = kept;
        Ok(())
    }

    /// Journal and report the task's next attempt, and hand it to the
    /// executor; its end comes back on `done_rx`.
    fn start_attempt(&mut self, i: usize, placement: Placement) -> Result<(), RunError> {
        let t = self.tasks[i].clone();
        let attempt = self.attempts.get(&i).copied().unwrap_or(0) + 1;
        self.attempts.insert(i, attempt);
        let nodes = self.names_of(&placement);
        self.journal.append(Entry::Dispatched {
            task: t.id.clone(),
            key: t.key.clone(),
            attempt,
            nodes: nodes.clone(),
            slots: placement.iter().map(|(_, s)| *s).collect(),
        })?;
        (self.report)(&RunEvent::Dispatched {
            task: t.id.clone(),
            attempt,
            nodes,
        });
        let _ = std::fs::remove_dir_all(self.staging(&t, attempt));
        self.launch(i, attempt, placement, chrono::Utc::now(), None);
        Ok(())
    }

    /// Hand attempt `attempt` of task `i` to the executor; its end comes
    /// back on `done_rx`.
    fn launch(
        &mut self,
        i: usize,
        attempt: u32,
        placement: Placement,
        started: chrono::DateTime<chrono::Utc>,
        resume: Option<Resume>,
    ) {
        let t = self.tasks[i].clone();
        let staging = self.staging(&t, attempt);
        let req = AttemptRequest {
            task: t,
            attempt,
            seats: placement
                .iter()
                .map(|(n, s)| Seat { node: *n, slot: *s })
                .collect(),
            staging,
            stop: self.cancel_rx.clone(),
            notes: StepNotes {
                task: i,
                attempt,
                tx: Some(self.notes_tx.clone()),
            },
            resume,
        };
        let exec = self.exec.clone();
        let done_tx = self.done_tx.clone();
        self.running += 1;
        tokio::spawn(async move {
            let outcome = exec.run_attempt(req).await;
            let attempt = Attempt {
                idx: i,
                number: attempt,
                placement,
                started,
            };
            let _ = done_tx.send(Done { attempt, outcome });
        });
    }

    /// An attempt ended: free its slots and record it by how it ended.
    pub(super) fn on_attempt_done(&mut self, done: Done) -> Result<(), RunError> {
        let Done {
            attempt: a,
            outcome,
        } = done;
        self.running -= 1;
        self.pool.release(&a.placement);
        let t = self.tasks[a.idx].clone();
        let staging = self.staging(&t, a.number);
        match outcome {
            Outcome::Succeeded(m) => {
                let cost_usd = match self.write_result(&t, &a, &staging, "succeeded", &m, None) {
                    Ok(cost) => cost,
                    Err(e) => {
                        // the task ran, but what it produced is not kept:
                        // it fails with the reason, and the run goes on
                        let path = self.paths.results_dir.join(&t.id);
                        let error = self.unsaved(&path, e);
                        return self.failed_for_good(&t, a.number, error);
                    }
                };
                self.journal.append(Entry::Succeeded {
                    task: t.id.clone(),
                    key: t.key.clone(),
                    attempt: a.number,
                    wall_seconds: m.wall_seconds,
                    cost_usd,
                    definition: self.opts.fingerprints.get(&t.key).cloned(),
                })?;
                self.summary.succeeded += 1;
                (self.report)(&RunEvent::Succeeded {
                    task: t.id.clone(),
                    attempt: a.number,
                    wall_seconds: m.wall_seconds,
                });
            }
            Outcome::Failed { error, measured } => {
                let failures = self.failures.entry(a.idx).or_insert(0);
                *failures += 1;
                let failures = *failures;
                if failures < t.attempts && self.stopping.is_none() {
                    self.retry_later(&t, &a, failures, error, &staging)?;
                } else {
                    let saved =
                        self.write_result(&t, &a, &staging, "failed", &measured, Some(&error));
                    let error = match saved {
                        Ok(_) => error,
                        Err(e) => {
                            let path = self.paths.results_dir.join(&t.id);
                            format!("{error}; {}", self.unsaved(&path, e))
                        }
                    };
                    self.failed_for_good(&t, a.number, error)?;
                }
            }
            Outcome::Lost { reason } => {
                // the executor reports the node before the attempt: apply it
                // first, so that the task is not placed on the same node again
                while let Some(ch) = self.node_changes.as_mut().and_then(|r| r.try_recv().ok()) {
                    self.on_node_change(ch);
                }
                self.journal.append(Entry::Requeued {
                    task: t.id.clone(),
                    key: t.key.clone(),
                    attempt: a.number,
                    reason: reason.clone(),
                })?;
                (self.report)(&RunEvent::Requeued {
                    task: t.id.clone(),
                    reason,
                });
                let _ = std::fs::remove_dir_all(&staging);
                // not the task's fault: no failure counted, first in line
                self.pending.push_front(a.idx);
            }
            Outcome::Cancelled => {
                let reason = self.stopping.clone().unwrap_or_else(|| "cancelled".into());
                self.journal.append(Entry::Requeued {
                    task: t.id.clone(),
                    key: t.key.clone(),
                    attempt: a.number,
                    reason: reason.clone(),
                })?;
                let _ = std::fs::remove_dir_all(&staging);
                (self.report)(&RunEvent::Requeued {
                    task: t.id.clone(),
                    reason,
                });
                // not run: it counts as pending, as the journal says
                self.pending.push_back(a.idx);
            }
        }
        Ok(())
    }

    /// A result that could not be saved: the reason the task fails with.
    /// The first such error of the run is reported (once: a full disk
    /// would otherwise say so once per task).
    fn unsaved(&mut self, path: &Path, e: std::io::Error) -> String {
        let error = format!("its result could not be saved in {}: {e}", path.display());
        if self.summary.results_error.is_none() {
            self.summary.results_error = Some(error.clone());
            (self.report)(&RunEvent::ResultsUnsaved {
                path: self.paths.results_dir.display().to_string(),
                error: e.to_string(),
            });
        }
        error
    }

    /// Write the ended attempt's `runtime.json` and move its staging folder
    /// into the results; what the attempt cost.
    fn write_result(
        &self,
        t: &TaskDef,
        a: &Attempt,
        staging: &Path,
        status: &str,
        measured: &Measured,
        error: Option<&str>,
    ) -> std::io::Result<f64> {
        let nodes = self.names_of(&a.placement);
        let cost_usd = self.cost_usd(&a.placement, measured);
        let ended = Ended {
            status,
            attempt: a.number,
            nodes: &nodes,
            started: &a.started,
            measured,
            cost_usd,
            error,
        };
        finalize(
            &self.paths.results_dir,
            t,
            staging,
            &runtime_json(t, &ended),
        )?;
        Ok(cost_usd)
    }

    /// A failed attempt with attempts left: its task waits out the backoff
    /// before attempt `failures + 1`.
    fn retry_later(
        &mut self,
        t: &TaskDef,
        a: &Attempt,
        failures: u32,
        error: String,
        staging: &Path,
    ) -> Result<(), RunError> {
        let attempt = a.number;
        let delay = self.opts.retry.delay_before(failures + 1);
        self.journal.append(Entry::AttemptFailed {
            task: t.id.clone(),
            key: t.key.clone(),
            attempt,
            error: error.clone(),
            retry_in_seconds: delay.as_secs_f64(),
        })?;
        (self.report)(&RunEvent::Retrying {
            task: t.id.clone(),
            attempt,
            error,
            delay_seconds: delay.as_secs_f64(),
        });
        // keep this attempt's logs beside the final result
        let kept = self
            .staging_root
            .join(format!("{}.{}.failed", t.id, attempt));
        let _ = std::fs::rename(staging, kept);
        self.waiting
            .push((tokio::time::Instant::now() + delay, a.idx));
        Ok(())
    }

    /// A task that used its attempts (or failed while the run stops): into
    /// the journal and the summary (the command layer rewrites the
    /// failed-tasks CSV on the event).
    fn failed_for_good(
        &mut self,
        t: &TaskDef,
        attempt: u32,
        error: String,
    ) -> Result<(), RunError> {
        self.journal.append(Entry::Failed {
            task: t.id.clone(),
            key: t.key.clone(),
            attempt,
            error: error.clone(),
        })?;
        self.summary.failed += 1;
        self.summary.failed_tasks.push(t.id.clone());
        (self.report)(&RunEvent::Failed {
            task: t.id.clone(),
            attempt,
            error,
        });
        Ok(())
    }

    /// Backoffs ended: those tasks go to the front of the queue, in the
    /// order they failed.
    pub(super) fn on_retry_due(&mut self) {
        let now = tokio::time::Instant::now();
        let (ready, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|(t, _)| *t <= now);
        self.waiting = rest;
        for (_, i) in ready.into_iter().rev() {
            self.pending.push_front(i);
        }
    }

    /// A node went (nothing more is placed on it) or joined.
    pub(super) fn on_node_change(&mut self, ch: NodeChange) {
        match ch {
            NodeChange::Lost { node, reason } => {
                if self.pool.nodes.get(node).is_some_and(|n| !n.retired) {
                    self.pool.retire(node);
                    (self.report)(&RunEvent::NodeLost {
                        node: self.node_names.get(node).cloned().unwrap_or_default(),
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
                if node == self.pool.nodes.len() {
                    self.pool.add(name.clone(), group.clone(), slots);
                    self.node_names.push(name.clone());
                    (self.report)(&RunEvent::NodeAdded { node: name, group });
                }
            }
        }
    }

    /// Ctrl-C or SIGTERM: stop and cancel the running attempts.
    pub(super) fn on_interrupt(&mut self, why: &str) {
        self.stop(why, true);
        self.summary.interrupted = true;
    }

    /// The caller asked the run to stop: cancel the running attempts.
    pub(super) fn on_stop_request(&mut self, why: &str) {
        self.stop(why, true);
    }

    /// No node came in time for what is queued: stop with it pending.
    pub(super) fn on_starved(&mut self) {
        let groups: BTreeSet<&str> = self
            .pending
            .iter()
            .map(|i| self.tasks[*i].node_group.as_str())
            .collect();
        let why = format!(
            "{} task(s) need more nodes of group {} than are left, and no replacement came within {:.0}s",
            self.pending.len(),
            groups.into_iter().collect::<Vec<_>>().join(", "),
            self.exec.replacement_wait().as_secs_f64()
        );
        self.stop(&why, true);
    }

    /// The budget watchdog: stop when the next interval would reach the
    /// budget (cancelling the running attempts on a hard stop).
    pub(super) fn on_watchdog_tick(&mut self) {
        let opts = self.opts;
        let Some(w) = &opts.watchdog else {
            return;
        };
        let spent = w.spent_before_usd + w.hourly_usd * self.clock.elapsed().as_secs_f64() / 3600.0;
        let next = spent + w.hourly_usd * w.interval.as_secs_f64() / 3600.0;
        if next >= w.budget_usd && self.stopping.is_none() {
            let why = format!(
                "budget: ${spent:.4} spent of ${:.4}; the next {:.0}s at ${:.2}/h would reach it ({})",
                w.budget_usd,
                w.interval.as_secs_f64(),
                w.hourly_usd,
                if w.hard_stop {
                    "hard stop: running tasks cancelled"
                } else {
                    "running tasks finish"
                }
            );
            self.summary.budget_stop = true;
            self.stop(&why, w.hard_stop);
        }
    }

    /// The first stop wins: nothing more is dispatched, and the running
    /// attempts are cancelled if `cancel_running`.
    fn stop(&mut self, why: &str, cancel_running: bool) {
        if self.stopping.is_none() {
            self.stopping = Some(why.to_string());
            if cancel_running {
                let _ = self.cancel_tx.send(true);
            }
            (self.report)(&RunEvent::Stopping {
                reason: why.to_string(),
                cancel_running,
            });
        }
    }

    /// A fatal error (the journal cannot be written): cancel the running
    /// attempts and wait for them to end, recording nothing more.
    pub(super) async fn abandon(&mut self) {
        let _ = self.cancel_tx.send(true);
        while self.running > 0 {
            let Some(done) = self.done_rx.recv().await else {
                break;
            };
            self.running -= 1;
            self.pool.release(&done.attempt.placement);
        }
    }

    /// The end: the summary, the journal's `RunFinished`, no staging left.
    pub(super) fn finish(mut self) -> Result<RunSummary, RunError> {
        let s = &mut self.summary;
        s.pending = self.pending.len() + self.waiting.len();
        s.reason = self.stopping.clone().unwrap_or_else(|| "done".into());
        s.wall_seconds = self.clock.elapsed().as_secs_f64();
        s.metered_usd = (0..self.pool.nodes.len())
            .map(|i| self.exec.node_hourly_usd(i))
            .sum::<f64>()
            * s.wall_seconds
            / 3600.0;
        self.journal.append(Entry::RunFinished {
            run: self.run_no,
            succeeded: s.succeeded,
            failed: s.failed,
            pending: s.pending,
            reason: s.reason.clone(),
        })?;
        let _ = std::fs::remove_dir_all(&self.staging_root);
        Ok(self.summary)
    }

    fn names_of(&self, placement: &Placement) -> Vec<String> {
        placement
            .iter()
            .map(|(n, _)| self.node_names[*n].clone())
            .collect()
    }

    fn staging(&self, t: &TaskDef, attempt: u32) -> PathBuf {
        self.staging_root.join(format!("{}.{}", t.id, attempt))
    }

    /// The attempt's share of its nodes' price: each rank pays its slot.
    fn cost_usd(&self, placement: &Placement, m: &Measured) -> f64 {
        placement
            .iter()
            .map(|(n, _)| {
                let slots = self.pool.nodes[*n].busy.len().max(1) as f64;
                self.exec.node_hourly_usd(*n) * m.wall_seconds / 3600.0 / slots
            })
            .sum()
    }
}

/// The selected tasks that still have to run (counting the others in
/// `summary`): not succeeded, and not failed unless `retry_failed`.
fn to_run(
    tasks: &[Arc<TaskDef>],
    state: &State,
    retry_failed: bool,
    summary: &mut RunSummary,
) -> Vec<usize> {
    let mut todo = Vec::new();
    for (i, t) in tasks.iter().enumerate() {
        match state.status_of(&t.key) {
            Status::Succeeded => summary.already_done += 1,
            Status::Failed if !retry_failed => summary.skipped_failed += 1,
            _ => todo.push(i),
        }
    }
    todo
}

/// Every task to run must fit on its group's nodes.
fn check_placeable(tasks: &[Arc<TaskDef>], todo: &[usize], pool: &Pool) -> Result<(), RunError> {
    let unplaceable: Vec<&str> = todo
        .iter()
        .map(|i| &tasks[*i])
        .filter(|t| {
            let nodes = pool
                .nodes
                .iter()
                .filter(|n| n.group == t.node_group && !n.busy.is_empty())
                .count();
            nodes < t.nodes as usize
        })
        .map(|t| t.id.as_str())
        .collect();
    if unplaceable.is_empty() {
        return Ok(());
    }
    Err(RunError::Unplaceable {
        count: unplaceable.len(),
        examples: unplaceable[..unplaceable.len().min(3)].join(", "),
    })
}
