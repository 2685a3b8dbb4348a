//! Whole runs (signals, ticker, the loop) with fake executors: one behind
//! `Arc<dyn Executor>`, one whose nodes come and go.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use super::tests::{paths_in, task, tasks_with_attempts, Scripted, Then};
use super::*;
use crate::runner::exec::{AttemptRequest, BoxFuture, Measured, Outcome};

#[tokio::test]
async fn a_run_takes_a_shared_dyn_executor() {
    let exec: Arc<dyn Executor> = Scripted::new(2, &[("t1", &[Then::Fail])]);
    let (s, _events, _dir) = go(exec, tasks_with_attempts(3, 1)).await;
    assert_eq!((s.succeeded, s.failed), (2, 1));
    assert_eq!(s.reason, "done");
}

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
                checkpoint_bytes: None,
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

/// A whole run (signals, ticker, the loop) of `tasks` on `exec`.
async fn go<E: Executor + ?Sized>(
    exec: Arc<E>,
    tasks: Vec<TaskDef>,
) -> (RunSummary, Vec<RunEvent>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let paths = paths_in(&dir);
    let (_tx, rx) = watch::channel(None);
    let mut events = Vec::new();
    let s = run(
        tasks,
        exec,
        &paths,
        "fake",
        &RunOptions::default(),
        Stops {
            requested: rx,
            signals: None,
        },
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
