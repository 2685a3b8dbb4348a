//! Where tasks run: this machine (`local`), AWS, or a Slurm cluster.
//!
//! Every command that needs "where things run" goes through one trait,
//! [`Provider`]: apply, a run (its executor, and what happens before and
//! after it), status, destroy, and the shared ledger. The commands hold no
//! provider branch; [`for_plan`] is the one place that picks the provider.
//! Both run an attempt's steps through one sequencer (`sequence`), each
//! over its own transport.

pub mod aws;
pub mod env;
pub mod launch;
pub mod live_log;
pub mod local;
pub mod local_detach;
pub mod local_nodes;
pub mod local_provider;
pub mod process;
pub mod sequence;
pub mod slurm;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use thiserror::Error;

use crate::campaign::{LeaseDoc, StopRequest};
use crate::catalog::Catalog;
use crate::plan::{Plan, ProviderKind};
use crate::runner::exec::Executor;
use crate::runner::run::RunSummary;

/// A future borrowed from the provider for the length of one call; the
/// commands await it on the one-thread runtime, so it need not be `Send`.
pub type Fut<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// Progress lines for the user (stderr).
pub type Log = Arc<dyn Fn(&str) + Send + Sync>;

/// Asked before a change that needs the user's consent (a stack update);
/// `Ok` to go on. `question` is what to ask, `what` what would happen.
pub type Confirm = dyn Fn(&str, &str) -> Result<(), ProviderError>;

#[derive(Debug, Error)]
pub enum ProviderError {
    /// Bad input found by the provider (a refused confirmation, a plan the
    /// cloud cannot take): exit 2, nothing was changed.
    #[error("{0}")]
    Usage(String),
    /// A plan mistake found while rendering the stacks (unknown type, too
    /// many zones): exit 2.
    #[error(transparent)]
    Stack(#[from] crate::stacks::StackError),
    #[error(transparent)]
    Aws(#[from] aws::error::AwsError),
    #[error(transparent)]
    Run(#[from] crate::runner::run::RunError),
    #[error(transparent)]
    Journal(#[from] crate::runner::journal::JournalError),
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A ledger entry with a negative or non-finite amount (forged or
    /// broken): the budget gate refuses, exit 3.
    #[error(transparent)]
    Ledger(#[from] crate::cost::ledger::BadEntry),
    /// Nodes that did not come up, a setup that failed, stacks left behind.
    #[error("{0}")]
    Failed(String),
    /// A signal (Ctrl-C, SIGTERM, SIGHUP) stopped the work before the run
    /// began; what it had started was stopped: exit 130.
    #[error("{0}")]
    Interrupted(String),
}

impl ProviderError {
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ProviderError {
        let path = path.into();
        move |source| ProviderError::Io { path, source }
    }

    /// True when the input was at fault (exit 2), not the provider (exit 4).
    pub fn is_bad_input(&self) -> bool {
        use crate::stacks::StackError as S;
        match self {
            ProviderError::Usage(_) => true,
            ProviderError::Aws(aws::error::AwsError::Usage(_)) => true,
            ProviderError::Stack(s) => matches!(
                s,
                S::NoMachines
                    | S::UnknownInstanceType { .. }
                    | S::TooManyZones { .. }
                    | S::TooLarge { .. }
            ),
            _ => false,
        }
    }
}

/// What the provider needs from the command layer, resolved once from the
/// arguments and the environment.
#[derive(Clone)]
pub struct Settings {
    /// `--region`, else the plan's.
    pub region: Option<String>,
    pub profile: Option<String>,
    /// One endpoint for every AWS service (`AWS_ENDPOINT_URL`).
    pub endpoint: Option<String>,
    /// `AWS_MAX_ATTEMPTS`.
    pub max_attempts: Option<u32>,
    /// How often stacks, nodes and commands are polled (`INFRA_POLL_SECONDS`).
    pub poll: Option<Duration>,
    /// How long nodes may take to come up (`INFRA_NODES_TIMEOUT_SECONDS`).
    pub nodes_timeout: Option<Duration>,
    /// How long a run waits for replacement nodes
    /// (`INFRA_REPLACEMENT_WAIT_SECONDS`, default 600 s).
    pub replacement_wait: Duration,
    /// Builds of the node agent by variable (`INFRA_NODE_BINARY_X86_64`,
    /// `INFRA_NODE_BINARY_AARCH64`): a path each.
    pub node_binaries: std::collections::BTreeMap<String, String>,
    /// How often a run uploads its new journal lines where the campaign's
    /// state is kept (AWS: the bucket); `INFRA_JOURNAL_SYNC_SECONDS`,
    /// default 2 s.
    pub journal_sync: Duration,
    pub log: Log,
}

impl Settings {
    pub fn log(&self, line: &str) {
        (self.log)(line)
    }
}

/// The provider of a plan: the one place that looks at its kind.
pub fn for_plan(plan: &Plan, settings: &Settings) -> Box<dyn Provider> {
    match plan.provider {
        ProviderKind::Local => Box::new(local_provider::LocalProvider::new(settings.clone())),
        ProviderKind::Aws => Box::new(aws::provider::AwsProvider::new(settings.clone())),
        ProviderKind::Slurm => Box::new(slurm::SlurmProvider::new(settings.clone())),
    }
}

/// The whole lifecycle of a phase on one provider.
pub trait Provider {
    /// `local` or `aws`, as the journal and the ledger record it.
    fn name(&self) -> &'static str;

    /// Bring the phase's nodes up and run the plan's setup on them.
    fn apply<'a>(
        &'a self,
        plan: &'a Plan,
        catalog: &'a Catalog,
        confirm: &'a Confirm,
    ) -> Fut<'a, Result<Applied, ProviderError>>;

    /// The deployed phase, ready for a run: nodes applied when there are
    /// none yet (local), the shared ledger merged and the nodes' idle time
    /// metered (AWS). Nothing runs yet: the budget is checked after this.
    fn open_run<'a>(
        &'a self,
        plan: &'a Plan,
        catalog: &'a Catalog,
    ) -> Fut<'a, Result<Box<dyn RunSession + 'a>, ProviderError>>;

    /// Nodes and stacks as they are now.
    fn status<'a>(&'a self, plan: &'a Plan) -> Fut<'a, Result<Infra, ProviderError>>;

    /// Remove the phase's nodes (results stay).
    fn destroy<'a>(
        &'a self,
        plan: &'a Plan,
        catalog: &'a Catalog,
        opts: DestroyOpts,
    ) -> Fut<'a, Result<Destroyed, ProviderError>>;

    /// Merge what other machines recorded of the phase's spend into this
    /// machine's ledger (best effort; a note says what could not be read).
    /// Err only for an entry with a negative or non-finite amount
    /// ([`ProviderError::Ledger`]): it is refused, never skipped.
    fn sync_ledger<'a>(&'a self, plan: &'a Plan) -> Fut<'a, Result<(), ProviderError>>;

    /// Bring this machine's copy of the campaign (`.infra/<phase>/`'s
    /// journal) up to date with where the provider keeps it, so that any
    /// checkout sees the same campaign. AWS: the journal's segments in the
    /// bucket (found from the cloud when this checkout has no `.infra/`);
    /// lines this machine never uploaded go up, or are kept aside when the
    /// bucket has moved on. Local: this machine is where the campaign
    /// lives; nothing to do.
    fn sync_campaign<'a>(&'a self, _plan: &'a Plan) -> Fut<'a, Result<(), ProviderError>> {
        Box::pin(async { Ok(()) })
    }

    /// Fetch the results of ended tasks (all, or the task `only`) that this
    /// machine does not have into `results/<phase>/`, as the machine that
    /// ran them has them; says what could not be fetched. Local: nothing.
    fn fetch_results<'a>(
        &'a self,
        _plan: &'a Plan,
        _only: Option<&'a str>,
    ) -> Fut<'a, Result<(), ProviderError>> {
        Box::pin(async { Ok(()) })
    }

    /// Remove the checkpoints (`$INFRA_CHECKPOINT_DIR`, every rank) of the
    /// tasks `tasks` (`infra run --fresh`); how many folders went. AWS:
    /// `<phase>/checkpoints/<task>/` in the bucket (the nodes' copies are
    /// replaced by the bucket's at the next attempt); local:
    /// `.infra/<phase>/checkpoints/`.
    fn clear_checkpoints<'a>(
        &'a self,
        plan: &'a Plan,
        tasks: &'a [String],
    ) -> Fut<'a, Result<usize, ProviderError>> {
        Box::pin(async move {
            crate::provider::local::clear_checkpoints(&plan.state_dir(), tasks).map_err(|e| {
                ProviderError::Failed(format!(
                    "cannot remove the checkpoints under {}: {e}",
                    crate::provider::local::checkpoint_root(&plan.state_dir()).display()
                ))
            })
        })
    }

    /// The size in bytes of each task's checkpoint (its ranks' folders
    /// together), by task id; tasks without one are left out.
    fn checkpoint_sizes<'a>(
        &'a self,
        plan: &'a Plan,
    ) -> Fut<'a, Result<std::collections::BTreeMap<String, u64>, ProviderError>> {
        Box::pin(async move {
            let mut out = std::collections::BTreeMap::new();
            let root = crate::provider::local::checkpoint_root(&plan.state_dir());
            if let Ok(rd) = std::fs::read_dir(root) {
                for e in rd.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let task = crate::tasks::model::checkpoint_task(&name).to_string();
                    let b = crate::provider::local::dir_bytes(&e.path());
                    if b > 0 {
                        *out.entry(task).or_insert(0) += b;
                    }
                }
            }
            Ok(out)
        })
    }

    /// Whether `results/<phase>/` on this machine is the only place the
    /// results are (local): a result folder missing there is then a result
    /// missing, and its task runs again. False where `fetch_results`
    /// brings a missing folder back (AWS: the bucket).
    fn results_are_local(&self) -> bool {
        true
    }

    /// What is new in the logs of attempt `attempt` of `task` since
    /// `cursor`, which moves on (`infra logs --follow`). Default: the
    /// attempt's folder on this machine (`live_log::read_local`).
    fn live_log<'a>(
        &'a self,
        plan: &'a Plan,
        task: &'a str,
        attempt: u32,
        cursor: &'a mut live_log::LiveCursor,
    ) -> Fut<'a, Result<Vec<live_log::LogChunk>, ProviderError>> {
        Box::pin(async move { Ok(live_log::read_local(plan, task, attempt, cursor)) })
    }

    /// The nodes this machine's state says are up (no cloud call): a
    /// finished campaign whose nodes are gone burns nothing.
    fn recorded_nodes(&self, plan: &Plan) -> usize;

    /// Where the phase's controller lease lives (`campaign::lease`): the
    /// bucket on AWS, `.infra/<phase>/` locally. None when the phase has
    /// nowhere to keep one yet (nothing deployed).
    fn lease_store<'a>(
        &'a self,
        plan: &'a Plan,
    ) -> Fut<'a, Result<Option<std::sync::Arc<dyn crate::campaign::LeaseStore>>, ProviderError>>;
    /// The campaign's lease (who controls it), if any: read only; the
    /// controller that holds it writes it.
    fn lease<'a>(&'a self, plan: &'a Plan) -> Fut<'a, Result<Option<LeaseDoc>, ProviderError>>;

    /// Hand the campaign to a controller that runs without this process
    /// (`--detach`); returns once it is started.
    fn detach<'a>(
        &'a self,
        plan: &'a Plan,
        catalog: &'a Catalog,
        req: &'a DetachRequest,
    ) -> Fut<'a, Result<Detached, ProviderError>>;

    /// A detached controller's output from byte `from` on, and whether it
    /// is still there (`infra attach`).
    fn controller_log<'a>(
        &'a self,
        plan: &'a Plan,
        from: u64,
    ) -> Fut<'a, Result<ControllerLog, ProviderError>>;

    /// `infra stop`: ask the controller to stop (`stop.json`); `Ok(false)`
    /// when no controller runs the campaign (nothing was written).
    fn request_stop<'a>(
        &'a self,
        plan: &'a Plan,
        req: &'a StopRequest,
    ) -> Fut<'a, Result<bool, ProviderError>>;

    /// Whether a stop request is still pending (the controller removes it
    /// once it has stopped).
    fn stop_pending<'a>(&'a self, plan: &'a Plan) -> Fut<'a, Result<bool, ProviderError>>;
}

/// What `--detach` hands to a controller.
#[derive(Debug, Clone)]
pub struct DetachRequest {
    /// The command lines the controller runs in order, each without the
    /// program name and without `--detach` (e.g. `["up", "p", "--yes"]`);
    /// the project folder is the controller's working folder.
    pub commands: Vec<Vec<String>>,
    /// The project folder's global options (`--provider`, `--region`...).
    pub global: Vec<String>,
    /// The folder the command lines were given in (a plan given as a path
    /// is relative to it).
    pub cwd: std::path::PathBuf,
    /// Estimated hours of the campaign (the controller's cost).
    pub hours: Option<f64>,
}

/// What `--detach` started.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Detached {
    /// `local daemon` or `aws:<instance-id>` (or the stack while the
    /// instance is being launched).
    #[serde(rename = "where")]
    pub place: String,
    /// The local daemon's process id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Where its output goes.
    pub log: String,
    /// The controller's own stack (AWS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stack: Option<String>,
    /// What the controller costs (AWS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<ControllerCost>,
}

/// The controller instance's price, shown as its own line of the estimate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ControllerCost {
    pub instance_type: String,
    pub usd_per_hour: f64,
    pub hours: Option<f64>,
    pub usd: Option<f64>,
    /// Why this type.
    pub why: String,
}

/// A slice of a detached controller's output.
#[derive(Debug, Default)]
pub struct ControllerLog {
    pub bytes: Vec<u8>,
    /// The controller is still there (its process, or its instance's stack).
    pub running: bool,
}

/// One run on a provider, between `open_run` and the summary.
pub trait RunSession {
    /// The attempts (task id, attempt) that an earlier controller left
    /// running and this run adopts: `start` must leave them running.
    /// Called before `start`.
    fn keep(&mut self, _attempts: Vec<(String, u32)>) {}

    /// Stop what an earlier run left (but what `keep` named), run the
    /// setup where it is missing, and hand over the executor.
    fn start(&mut self) -> Fut<'_, Result<Started, ProviderError>>;

    /// After the runner: record the spend, tear the nodes down after a
    /// budget stop, save the provider's state.
    fn finish<'s>(
        &'s mut self,
        summary: &'s RunSummary,
    ) -> Fut<'s, Result<Finished, ProviderError>>;
}

pub struct Started {
    pub executor: Arc<dyn Executor>,
    /// What the nodes of the run cost by the hour, for the watchdog.
    pub hourly_usd: f64,
    /// The phase's spend before the first task (the ledger, plus the time
    /// the nodes burnt while the run was prepared).
    pub spent_before_usd: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct Finished {
    /// Provider-specific counters (AWS: API calls per kind).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_calls: Option<serde_json::Value>,
}

/// What `apply` brought up.
#[derive(Debug, Serialize)]
pub struct Applied {
    pub provider: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    pub stacks: Vec<StackRow>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    pub nodes: Vec<NodeRow>,
    /// Where the provider keeps its state of the phase.
    pub state: PathBuf,
    /// Provider-specific details for `--json` (security group, VPC, fleets).
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub details: serde_json::Value,
}

/// Nodes and stacks of a phase, the same shape on every provider.
#[derive(Debug, Default, Serialize)]
pub struct Infra {
    /// The cloud region (`None` locally).
    pub region: Option<String>,
    pub stacks: Vec<StackRow>,
    pub bucket: Option<String>,
    pub nodes: Vec<NodeRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StackRow {
    /// `base`, `compute`, or `controller` (a detached campaign's).
    pub role: &'static str,
    pub name: String,
    /// CloudFormation's status; `None`: not deployed.
    pub status: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeRow {
    pub name: String,
    pub group: String,
    /// The instance id on AWS; the node's folder name locally.
    pub id: String,
    pub instance_type: String,
    pub market: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// `running`, `terminated`, ... (local nodes: `ready`).
    pub state: String,
    /// Its private (local: loopback) address.
    pub address: String,
    pub slots: u32,
    /// Reachable for commands (SSM online); always true locally.
    pub online: bool,
}

/// What `infra destroy` was asked to do.
#[derive(Debug, Clone, Copy, Default)]
pub struct DestroyOpts {
    /// Also the base stack (network, role, bucket's stack).
    pub all: bool,
    /// Empty the phase's results from the bucket (after checking they are here).
    pub delete_results: bool,
    /// Terminate whatever billable resource is left.
    pub force: bool,
}

/// What `destroy` removed and what is still there.
#[derive(Debug, Default, Serialize)]
pub struct Destroyed {
    /// What was removed, as one clause ("deleted stack-a, stack-b").
    pub removed: String,
    /// Further clauses (the bucket kept or emptied).
    pub notes: Vec<String>,
    /// Resources removed by `--force`.
    pub forced: Vec<Resource>,
    /// Billable resources still there afterwards (exit 4).
    pub leftovers: Vec<Resource>,
    /// What was checked for leftovers, when something was ("tagged
    /// infra:project=x"); `None`: nothing to check (local).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checked: Option<String>,
    /// Results also live elsewhere (the bucket): the ones on this machine
    /// are called local.
    pub remote_results: bool,
    /// The hint when something is left.
    #[serde(skip)]
    pub leftover_hint: String,
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub details: serde_json::Value,
}

#[derive(Debug, Clone, Serialize)]
pub struct Resource {
    pub kind: String,
    pub id: String,
    pub detail: String,
}
