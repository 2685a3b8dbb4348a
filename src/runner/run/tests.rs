//! The runner's event methods, one at a time, with a scripted executor.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Mutex;

use super::runner::Runner;
use super::*;
use crate::plan::RetryPolicy;
use crate::runner::exec::{AttemptRequest, BoxFuture, Measured, Outcome};
use crate::runner::journal::{self, Status};

pub(super) fn task(i: usize, nodes: u32) -> TaskDef {
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
        checkpoint_interval_seconds: 300,
        stop_grace_seconds: 30,
        estimate_seconds: None,
        partition: None,
        env: Default::default(),
        outputs: vec![],
        table: vec![],
        requires: vec![],
        steps: vec![],
        factors: Default::default(),
        vars: Default::default(),
    }
}

pub(super) fn tasks_with_attempts(n: usize, attempts: u32) -> Vec<TaskDef> {
    (0..n)
        .map(|i| TaskDef {
            attempts,
            ..task(i, 1)
        })
        .collect()
}

pub(super) fn paths_in(dir: &tempfile::TempDir) -> Paths {
    Paths {
        state_dir: dir.path().join("state"),
        results_dir: dir.path().join("results"),
    }
}

/// How a scripted attempt ends.
#[derive(Debug, Clone, Copy)]
pub(super) enum Then {
    Succeed,
    Fail,
    Lose,
    /// Runs until the run cancels it.
    Hang,
}

/// Ends each task's attempts as its script says (then succeeds).
pub(super) struct Scripted {
    slots: u32,
    script: Mutex<HashMap<String, VecDeque<Then>>>,
    ran: Mutex<Vec<(String, u32)>>,
}

impl Scripted {
    pub(super) fn new(slots: u32, script: &[(&str, &[Then])]) -> Arc<Scripted> {
        Arc::new(Scripted {
            slots,
            script: Mutex::new(
                script
                    .iter()
                    .map(|(id, s)| (id.to_string(), s.iter().copied().collect()))
                    .collect(),
            ),
            ran: Mutex::new(Vec::new()),
        })
    }
}

impl Executor for Scripted {
    fn node_names(&self) -> Vec<(String, String, u32)> {
        vec![("n-0".into(), "g".into(), self.slots)]
    }
    fn run_attempt(self: Arc<Self>, req: AttemptRequest) -> BoxFuture<Outcome> {
        Box::pin(async move {
            let then = self
                .script
                .lock()
                .unwrap()
                .get_mut(&req.task.id)
                .and_then(|s| s.pop_front())
                .unwrap_or(Then::Succeed);
            self.ran
                .lock()
                .unwrap()
                .push((req.task.id.clone(), req.attempt));
            std::fs::create_dir_all(&req.staging).unwrap();
            let measured = Measured {
                exit_code: Some(0),
                wall_seconds: 0.01,
                peak_rss_kb: 0,
                checkpoint_bytes: None,
            };
            match then {
                Then::Succeed => Outcome::Succeeded(measured),
                Then::Fail => Outcome::Failed {
                    error: "exit 1".into(),
                    measured: Measured {
                        exit_code: Some(1),
                        ..measured
                    },
                },
                Then::Lose => Outcome::Lost {
                    reason: "node gone".into(),
                },
                Then::Hang => {
                    let mut stop = req.stop;
                    let _ = stop.wait_for(|s| *s).await;
                    Outcome::Cancelled
                }
            }
        })
    }
}

/// What the runner reported, readable while the runner lives.
#[derive(Clone, Default)]
struct Log(Rc<RefCell<Vec<RunEvent>>>);

impl Log {
    fn reporter(&self) -> impl FnMut(&RunEvent) {
        let log = self.0.clone();
        move |e| log.borrow_mut().push(e.clone())
    }
    fn events(&self) -> Vec<RunEvent> {
        self.0.borrow().clone()
    }
    fn last(&self) -> RunEvent {
        self.0.borrow().last().cloned().expect("an event")
    }
}

fn retry(backoff_ms: u64) -> RunOptions {
    RunOptions {
        retry: RetryPolicy {
            attempts: 3,
            backoff: Duration::from_millis(backoff_ms),
            backoff_max: Duration::from_secs(10),
        },
        ..Default::default()
    }
}

/// Wait for the next attempt to end and hand it to the runner.
async fn next_done<E: Executor + ?Sized>(r: &mut Runner<'_, E>) {
    let done = r.done_rx.recv().await.expect("an attempt ends");
    r.on_attempt_done(done).unwrap();
}

fn results_runtime(paths: &Paths, id: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(paths.results_dir.join(id).join("runtime.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[tokio::test]
async fn a_failed_attempt_waits_out_its_backoff_then_runs_again() {
    let dir = tempfile::tempdir().unwrap();
    let paths = paths_in(&dir);
    let opts = retry(500);
    let exec = Scripted::new(1, &[("t0", &[Then::Fail])]);
    let log = Log::default();
    let mut report = log.reporter();
    let mut r = Runner::start(
        tasks_with_attempts(1, 3),
        exec.clone(),
        &paths,
        "fake",
        &opts,
        &mut report,
    )
    .unwrap();

    r.dispatch().unwrap();
    assert_eq!(r.running, 1);
    next_done(&mut r).await;
    assert_eq!(r.failures[&0], 1);
    assert!(r.pending.is_empty(), "not queued before its backoff ends");
    assert_eq!(r.waiting.len(), 1);
    assert!(!r.is_over());
    assert!(matches!(
        log.last(),
        RunEvent::Retrying { attempt: 1, delay_seconds, .. } if delay_seconds == 0.5
    ));
    assert!(
        r.staging_root.join("t0.1.failed").is_dir(),
        "the failed attempt's logs are kept"
    );
    let due = r.next_retry().unwrap();
    assert!(due > tokio::time::Instant::now() + Duration::from_millis(300));

    r.on_retry_due();
    assert!(r.pending.is_empty(), "not due yet");
    tokio::time::sleep_until(due).await;
    r.on_retry_due();
    assert_eq!(r.pending, [0]);
    assert!(r.waiting.is_empty());

    r.dispatch().unwrap();
    next_done(&mut r).await;
    assert!(r.is_over());
    let s = r.finish().unwrap();
    assert_eq!((s.succeeded, s.failed, s.pending), (1, 0, 0));
    assert_eq!(
        *exec.ran.lock().unwrap(),
        [("t0".into(), 1), ("t0".into(), 2)]
    );
    let rt = results_runtime(&paths, "t0");
    assert_eq!(rt["status"], "succeeded");
    assert_eq!(rt["attempts"], 2);
}

#[tokio::test]
async fn a_task_that_used_its_attempts_fails_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let paths = paths_in(&dir);
    let opts = retry(10);
    let exec = Scripted::new(1, &[("t0", &[Then::Fail, Then::Fail])]);
    let log = Log::default();
    let mut report = log.reporter();
    let mut r = Runner::start(
        tasks_with_attempts(1, 2),
        exec,
        &paths,
        "fake",
        &opts,
        &mut report,
    )
    .unwrap();

    r.dispatch().unwrap();
    next_done(&mut r).await;
    tokio::time::sleep_until(r.next_retry().unwrap()).await;
    r.on_retry_due();
    r.dispatch().unwrap();
    next_done(&mut r).await;
    assert!(r.waiting.is_empty() && r.pending.is_empty());
    assert!(matches!(log.last(), RunEvent::Failed { attempt: 2, .. }));
    let s = r.finish().unwrap();
    assert_eq!((s.succeeded, s.failed), (0, 1));
    assert_eq!(s.failed_tasks, ["t0"]);
    let rt = results_runtime(&paths, "t0");
    assert_eq!(rt["status"], "failed");
    assert_eq!(rt["error"], "exit 1");
}

#[tokio::test]
async fn a_failure_while_the_run_stops_is_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let paths = paths_in(&dir);
    let opts = retry(10);
    let exec = Scripted::new(1, &[("t0", &[Then::Fail])]);
    let log = Log::default();
    let mut report = log.reporter();
    let mut r = Runner::start(
        tasks_with_attempts(1, 3),
        exec,
        &paths,
        "fake",
        &opts,
        &mut report,
    )
    .unwrap();

    r.dispatch().unwrap();
    r.on_stop_request("enough");
    next_done(&mut r).await;
    assert!(r.waiting.is_empty());
    assert_eq!(r.summary.failed, 1);
    assert!(r.is_over());
}

#[tokio::test]
async fn a_lost_attempt_is_requeued_first_without_counting_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let paths = paths_in(&dir);
    let opts = RunOptions::default();
    let exec = Scripted::new(1, &[("t0", &[Then::Lose])]);
    let log = Log::default();
    let mut report = log.reporter();
    // one attempt each: a loss must not use it up
    let mut r = Runner::start(
        tasks_with_attempts(2, 1),
        exec.clone(),
        &paths,
        "fake",
        &opts,
        &mut report,
    )
    .unwrap();

    r.dispatch().unwrap();
    assert_eq!(r.pending, [1]);
    next_done(&mut r).await;
    assert_eq!(r.pending, [0, 1], "first in line again");
    assert_eq!(r.failures[&0], 0);
    assert!(matches!(log.last(), RunEvent::Requeued { ref reason, .. } if reason == "node gone"));
    assert!(!r.staging_root.join("t0.1").exists());

    while !r.is_over() {
        r.dispatch().unwrap();
        next_done(&mut r).await;
    }
    let s = r.finish().unwrap();
    assert_eq!((s.succeeded, s.failed), (2, 0));
    assert_eq!(
        *exec.ran.lock().unwrap(),
        [("t0".into(), 1), ("t0".into(), 2), ("t1".into(), 1)]
    );
}

#[tokio::test]
async fn a_stop_cancels_the_running_attempts_and_requeues_them() {
    let dir = tempfile::tempdir().unwrap();
    let paths = paths_in(&dir);
    let opts = RunOptions::default();
    let exec = Scripted::new(2, &[("t0", &[Then::Hang]), ("t1", &[Then::Hang])]);
    let log = Log::default();
    let mut report = log.reporter();
    let mut r = Runner::start(
        tasks_with_attempts(3, 1),
        exec,
        &paths,
        "fake",
        &opts,
        &mut report,
    )
    .unwrap();

    r.dispatch().unwrap();
    assert_eq!((r.running, r.pending.len()), (2, 1));
    r.on_stop_request("asked to stop");
    assert!(*r.cancel_rx.borrow(), "running attempts are cancelled");
    assert!(!r.summary.interrupted, "not an interrupt");
    next_done(&mut r).await;
    r.dispatch().unwrap();
    assert_eq!(r.running, 1, "nothing starts once stopping");
    next_done(&mut r).await;
    assert!(r.is_over());
    let requeued: Vec<_> = log
        .events()
        .into_iter()
        .filter_map(|e| match e {
            RunEvent::Requeued { task, reason } => Some((task, reason)),
            _ => None,
        })
        .collect();
    assert_eq!(requeued.len(), 2, "{requeued:?}");
    assert!(requeued.iter().all(|(_, why)| why == "asked to stop"));
    let s = r.finish().unwrap();
    assert_eq!(s.reason, "asked to stop");
    assert_eq!(s.succeeded, 0);
    let (state, _) = journal::read(&paths.journal()).unwrap();
    for key in ["k0", "k1", "k2"] {
        assert_eq!(state.status_of(key), Status::Pending, "{key}");
    }
}

#[tokio::test]
async fn an_interrupt_marks_the_run_and_the_first_stop_wins() {
    let dir = tempfile::tempdir().unwrap();
    let paths = paths_in(&dir);
    let opts = RunOptions::default();
    let log = Log::default();
    let mut report = log.reporter();
    let mut r = Runner::start(
        tasks_with_attempts(1, 1),
        Scripted::new(1, &[]),
        &paths,
        "fake",
        &opts,
        &mut report,
    )
    .unwrap();
    r.on_interrupt("interrupted (SIGINT)");
    r.on_stop_request("later");
    assert!(r.summary.interrupted);
    assert!(*r.cancel_rx.borrow());
    r.dispatch().unwrap();
    assert_eq!(r.running, 0);
    let stops: Vec<_> = log
        .events()
        .into_iter()
        .filter(|e| matches!(e, RunEvent::Stopping { .. }))
        .collect();
    assert_eq!(stops.len(), 1);
    let s = r.finish().unwrap();
    assert_eq!(s.reason, "interrupted (SIGINT)");
    assert_eq!(s.pending, 1);
}

fn watchdog(spent_before_usd: f64, hard_stop: bool) -> RunOptions {
    RunOptions {
        watchdog: Some(Watchdog {
            budget_usd: 1.0,
            spent_before_usd,
            // $0.01 per 10 s interval
            hourly_usd: 3.6,
            hard_stop,
            interval: Duration::from_secs(10),
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn the_watchdog_stops_dispatch_when_the_next_interval_would_reach_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let paths = paths_in(&dir);
    let opts = watchdog(0.995, false);
    let log = Log::default();
    let mut report = log.reporter();
    let mut r = Runner::start(
        tasks_with_attempts(2, 1),
        Scripted::new(1, &[]),
        &paths,
        "fake",
        &opts,
        &mut report,
    )
    .unwrap();

    r.dispatch().unwrap();
    r.on_watchdog_tick();
    assert!(r.summary.budget_stop);
    let why = r.stopping.clone().unwrap();
    assert!(why.starts_with("budget: $0.99"), "{why}");
    assert!(why.ends_with("(running tasks finish)"), "{why}");
    assert!(
        !*r.cancel_rx.borrow(),
        "a soft stop lets running tasks finish"
    );
    next_done(&mut r).await;
    r.dispatch().unwrap();
    assert_eq!(r.running, 0, "nothing more is dispatched");
    let s = r.finish().unwrap();
    assert_eq!((s.succeeded, s.pending), (1, 1));
    assert!(s.budget_stop);
}

#[tokio::test]
async fn the_watchdog_lets_the_run_go_on_below_the_budget_and_cancels_on_a_hard_stop() {
    let dir = tempfile::tempdir().unwrap();
    let paths = paths_in(&dir);
    let far = watchdog(0.5, true);
    let mut report = |_: &RunEvent| {};
    let mut r = Runner::start(
        tasks_with_attempts(1, 1),
        Scripted::new(1, &[]),
        &paths,
        "fake",
        &far,
        &mut report,
    )
    .unwrap();
    r.on_watchdog_tick();
    assert!(r.stopping.is_none() && !r.summary.budget_stop);
    r.finish().unwrap();

    let near = watchdog(0.995, true);
    let mut r = Runner::start(
        tasks_with_attempts(1, 1),
        Scripted::new(1, &[]),
        &paths,
        "fake",
        &near,
        &mut report,
    )
    .unwrap();
    r.on_watchdog_tick();
    assert!(r.summary.budget_stop);
    assert!(*r.cancel_rx.borrow(), "a hard stop cancels running tasks");
}

#[tokio::test]
async fn node_changes_are_applied_once_and_in_index_order() {
    let dir = tempfile::tempdir().unwrap();
    let paths = paths_in(&dir);
    let opts = RunOptions::default();
    let log = Log::default();
    let mut report = log.reporter();
    let mut r = Runner::start(
        tasks_with_attempts(1, 1),
        Scripted::new(1, &[]),
        &paths,
        "fake",
        &opts,
        &mut report,
    )
    .unwrap();
    let lost = || NodeChange::Lost {
        node: 0,
        reason: "spot".into(),
    };
    let added = |node| NodeChange::Added {
        node,
        name: format!("n-{node}"),
        group: "g".into(),
        slots: 1,
    };
    r.on_node_change(lost());
    r.on_node_change(lost());
    r.on_node_change(added(5));
    assert!(r.pool.nodes[0].retired);
    assert_eq!(r.pool.nodes.len(), 1, "an index out of order is ignored");
    // the only node is gone: the queue starves
    r.dispatch().unwrap();
    r.update_starved();
    assert!(r.starved.is_some());
    r.on_node_change(added(1));
    assert_eq!(r.pool.nodes.len(), 2);
    r.dispatch().unwrap();
    assert_eq!(r.running, 1, "the new node takes the task");
    r.update_starved();
    assert!(r.starved.is_none());
    let changes: Vec<_> = log
        .events()
        .into_iter()
        .filter(|e| matches!(e, RunEvent::NodeLost { .. } | RunEvent::NodeAdded { .. }))
        .collect();
    assert_eq!(changes.len(), 2, "{changes:?}");
}

#[tokio::test]
async fn a_starved_queue_stops_the_run_with_its_tasks_pending() {
    let dir = tempfile::tempdir().unwrap();
    let paths = paths_in(&dir);
    let opts = RunOptions::default();
    let mut report = |_: &RunEvent| {};
    let mut r = Runner::start(
        tasks_with_attempts(2, 1),
        Scripted::new(1, &[]),
        &paths,
        "fake",
        &opts,
        &mut report,
    )
    .unwrap();
    r.on_node_change(NodeChange::Lost {
        node: 0,
        reason: "gone".into(),
    });
    r.dispatch().unwrap();
    r.update_starved();
    r.on_starved();
    assert!(r.is_over());
    let s = r.finish().unwrap();
    assert_eq!(s.pending, 2);
    assert_eq!(
        s.reason,
        "2 task(s) need more nodes of group g than are left, and no replacement came within 0s"
    );
}

#[tokio::test]
async fn a_second_run_of_the_phase_fails_on_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let paths = paths_in(&dir);
    let _held = lock_phase(&paths.state_dir).unwrap();
    let opts = RunOptions::default();
    let mut report = |_: &RunEvent| {};
    let r = Runner::start(
        tasks_with_attempts(1, 1),
        Scripted::new(1, &[]),
        &paths,
        "fake",
        &opts,
        &mut report,
    );
    assert!(matches!(r, Err(RunError::Locked { .. })));
}

#[tokio::test]
async fn tasks_too_wide_for_their_group_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let paths = paths_in(&dir);
    let opts = RunOptions::default();
    let mut report = |_: &RunEvent| {};
    let r = Runner::start(
        vec![task(0, 1), task(1, 2)],
        Scripted::new(1, &[]),
        &paths,
        "fake",
        &opts,
        &mut report,
    );
    let Err(RunError::Unplaceable { count, examples }) = r else {
        panic!("expected Unplaceable");
    };
    assert_eq!((count, examples.as_str()), (1, "t1"));
}
