//! What the runner asks of a provider: run one attempt of one task on the
//! slots it was given, and say how it ended.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::tasks::TaskDef;

/// A slot on a node, as given to one rank of a task.
#[derive(Debug, Clone)]
pub struct Seat {
    pub node: usize,
    pub slot: u32,
}

pub struct AttemptRequest {
    pub task: Arc<TaskDef>,
    pub attempt: u32,
    pub seats: Vec<Seat>,
    /// Where stdout.log, stderr.log and the outputs go.
    pub staging: PathBuf,
    /// Turns true when the run stops (Ctrl-C, budget).
    pub stop: watch::Receiver<bool>,
    /// Tells the runner each started step's handle, for the journal.
    pub notes: StepNotes,
    /// An attempt an earlier controller started: its steps are adopted,
    /// not started again.
    pub resume: Option<Resume>,
}

/// A started step's handle, on its way to the journal.
#[derive(Debug, Clone, PartialEq)]
pub struct StepNote {
    /// The task's index in the run.
    pub task: usize,
    pub attempt: u32,
    pub step: usize,
    pub try_no: u32,
    pub handle: serde_json::Value,
}

/// Where an attempt's step handles go (the run loop journals them).
#[derive(Debug, Clone)]
pub struct StepNotes {
    pub task: usize,
    pub attempt: u32,
    pub tx: Option<mpsc::UnboundedSender<StepNote>>,
}

impl StepNotes {
    /// Nowhere (tests, one-off attempts).
    pub fn none() -> StepNotes {
        StepNotes {
            task: 0,
            attempt: 0,
            tx: None,
        }
    }

    pub fn send(&self, step: usize, try_no: u32, handle: serde_json::Value) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(StepNote {
                task: self.task,
                attempt: self.attempt,
                step,
                try_no,
                handle,
            });
        }
    }
}

/// What the journal knows of an attempt whose controller was lost.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Resume {
    /// Its started steps in order: (step index, try, handle).
    pub steps: Vec<(usize, u32, serde_json::Value)>,
    /// How long it had run when it was adopted.
    pub elapsed: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    pub exit_code: Option<i32>,
    pub wall_seconds: f64,
    pub peak_rss_kb: u64,
    /// The size of the task's checkpoint folder after the attempt.
    pub checkpoint_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Succeeded(Measured),
    /// The task's own failure: counts against its attempts.
    Failed {
        error: String,
        measured: Measured,
    },
    /// Not the task's fault (node gone, spot interruption): run it again.
    Lost {
        reason: String,
    },
    /// The run was stopped while the attempt ran.
    Cancelled,
}

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A change to the set of nodes while a run goes on (cloud providers: a spot
/// interruption, a fleet's replacement instance).
#[derive(Debug, Clone, PartialEq)]
pub enum NodeChange {
    /// Place nothing more on this node: it is gone or about to go. Attempts
    /// running on it end as `Outcome::Lost`.
    Lost { node: usize, reason: String },
    /// A node joined; `node` is the next index (`node_names().len()` plus
    /// the nodes added before it).
    Added {
        node: usize,
        name: String,
        group: String,
        slots: u32,
    },
}

pub trait Executor: Send + Sync + 'static {
    fn node_names(&self) -> Vec<(String, String, u32)>;
    fn run_attempt(self: Arc<Self>, req: AttemptRequest) -> BoxFuture<Outcome>;
    /// Hourly price of a node (for per-task cost), in USD.
    fn node_hourly_usd(&self, _node: usize) -> f64 {
        0.0
    }
    /// Node changes during the run; the runner takes the receiver once.
    /// `None`: the nodes never change (the local provider).
    fn node_changes(&self) -> Option<mpsc::UnboundedReceiver<NodeChange>> {
        None
    }
    /// How long the runner waits for new nodes when the nodes left cannot
    /// run what is queued, before it stops with those tasks pending.
    fn replacement_wait(&self) -> Duration {
        Duration::ZERO
    }
}
