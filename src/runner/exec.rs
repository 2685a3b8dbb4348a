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
}

#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    pub exit_code: Option<i32>,
    pub wall_seconds: f64,
    pub peak_rss_kb: u64,
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
