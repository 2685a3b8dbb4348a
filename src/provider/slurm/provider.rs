//! The Slurm provider's lifecycle. `apply` submits a holder job per
//! allocation a node group asks for (`sbatch`), waits until each runs and
//! names those still pending with `squeue`'s reason; a run's steps go into
//! them with `srun` (`executor.rs`); `destroy` cancels them (`scancel`)
//! and checks that `squeue` has none of them left. The lease, a detached
//! controller and a stop request are those of the local provider: the
//! controller runs on the machine infra is started on (a login node).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::argv::{self, AllocSpec};
use super::cluster;
use super::executor::SlurmExecutor;
use super::meter;
use super::state::{self, Allocation, SlurmState};
use crate::campaign::{LeaseDoc, StopRequest};
use crate::catalog::Catalog;
use crate::cost::hours::{self, Held};
use crate::plan::Plan;
use crate::provider::local_provider::LocalProvider;
use crate::provider::{
    Applied, Confirm, ControllerLog, DestroyOpts, Destroyed, DetachRequest, Detached, Finished,
    Fut, Infra, NodeRow, Provider, ProviderError, Resource, RunSession, Settings, Started,
};
use crate::runner::run::RunSummary;

pub struct SlurmProvider {
    settings: Settings,
    local: LocalProvider,
}

impl SlurmProvider {
    pub fn new(settings: Settings) -> SlurmProvider {
        SlurmProvider {
            local: LocalProvider::new(settings.clone()),
            settings,
        }
    }

    fn poll(&self) -> Duration {
        self.settings.poll.unwrap_or(Duration::from_secs(2))
    }
}

/// One writer of the state file at a time in this process (the run's
/// monitor and the provider).
static STATE: Mutex<()> = Mutex::new(());

/// Change the phase's recorded allocations.
pub(super) fn record(plan: &Plan, f: impl FnOnce(&mut SlurmState)) -> std::io::Result<SlurmState> {
    let _g = STATE.lock().unwrap_or_else(|e| e.into_inner());
    let mut st = state::load(plan).unwrap_or_else(|| SlurmState {
        version: 1,
        phase: plan.name_key.clone(),
        allocations: Vec::new(),
    });
    f(&mut st);
    state::save(plan, &st)?;
    Ok(st)
}

/// Submit one allocation of `group`, recorded at once (so `destroy`
/// cancels it whatever happens next).
pub(super) async fn submit(plan: &Plan, group: &str) -> Result<Allocation, String> {
    let g = plan
        .node_group(group)
        .ok_or_else(|| format!("no node group \"{group}\""))?;
    let spec = AllocSpec::of(plan, g);
    let name = state::load(plan).unwrap_or_default().next_name(group);
    let dir = state::alloc_dir(&plan.state_dir(), &name);
    std::fs::create_dir_all(dir.join("work"))
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let args = argv::sbatch(
        &spec,
        &format!("{}{name}", argv::job_prefix(plan)),
        &dir.join("holder.out"),
        &plan.root,
    );
    let job = cluster::submit(&args).await?;
    let a = Allocation {
        name,
        group: group.to_string(),
        job_id: job,
        node: String::new(),
        addr: String::new(),
        cpus: 0,
        setup: None,
        ended: None,
        port_offset: 0,
    };
    record(plan, |st| st.allocations.push(a.clone())).map_err(|e| e.to_string())?;
    Ok(a)
}

/// Run the plan's setup once in allocation `a` (again when it changed).
pub(super) async fn setup(plan: &Plan, a: &mut Allocation) -> Result<(), String> {
    if plan.setup.is_empty() {
        return Ok(());
    }
    let hash = crate::provider::local::setup_hash(plan);
    if a.setup.as_deref() == Some(hash.as_str()) {
        return Ok(());
    }
    let dir = state::alloc_dir(&plan.state_dir(), &a.name);
    let log = dir.join("setup.log");
    let spec = plan
        .node_group(&a.group)
        .map(|g| AllocSpec::of(plan, g))
        .unwrap_or_default();
    let script = format!("set -e\n{}", plan.setup.join("\n"));
    let env = vec![
        (
            "INFRA_STATE_DIR".to_string(),
            plan.state_dir().display().to_string(),
        ),
        ("INFRA_NODE_NAME".to_string(), a.name.clone()),
        ("INFRA_NODE_ADDR".to_string(), a.addr.clone()),
        // as the steps see it: a setup can tell the cluster from a cloud node
        ("INFRA_PROVIDER".to_string(), "slurm".to_string()),
        (
            "INFRA_SCRIPTS".to_string(),
            plan.root.join("scripts").display().to_string(),
        ),
        ("INFRA_ROOT".to_string(), plan.root.display().to_string()),
    ];
    let argv = argv::srun(&spec, &a.job_id, &dir, &script, &env);
    let open = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| format!("cannot write {}: {e}", log.display()))
    };
    let _ = std::fs::remove_file(&log);
    let exit = dir.join("setup.exit");
    let sp = crate::provider::process::spawn_argv(&argv, &dir, &env, open()?, open()?, None, &exit)
        .map_err(|e| format!("setup could not start in {}: {e}", a.name))?;
    let code = sp.wait().await.code;
    if code != 0 {
        return Err(format!(
            "setup failed in allocation {} (job {}) with exit code {code} (log: {})",
            a.name,
            a.job_id,
            log.display()
        ));
    }
    a.setup = Some(hash);
    Ok(())
}

/// Bring the plan's allocations up: what runs stays, what is missing is
/// submitted; wait until all run (naming those pending and why), then run
/// the setup in each.
async fn bring_up(p: &SlurmProvider, plan: &Plan) -> Result<SlurmState, ProviderError> {
    let prefix = argv::job_prefix(plan);
    let rows = cluster::list(&prefix)
        .await
        .map_err(ProviderError::Failed)?;
    // the hours held since they were last recorded (between runs)
    record_hours(p, plan, &rows);
    // what the cluster no longer has ended
    record(plan, |st| {
        for a in st.allocations.iter_mut().filter(|a| a.ended.is_none()) {
            if !rows.contains_key(&a.job_id) {
                a.ended = Some("not in squeue".into());
            }
        }
    })
    .map_err(ProviderError::io(state::path(plan)))?;
    for g in &plan.node_groups {
        let live = state::load(plan)
            .unwrap_or_default()
            .live()
            .filter(|a| a.group == g.name)
            .count();
        for _ in live..g.count as usize {
            let a = submit(plan, &g.name)
                .await
                .map_err(|e| refused(&g.name, e))?;
            p.settings
                .log(&format!("submitted {} (job {})", a.name, a.job_id));
        }
    }
    wait_running(p, plan).await?;
    let mut st = state::load(plan).unwrap_or_default();
    for a in st.allocations.iter_mut().filter(|a| a.ended.is_none()) {
        setup(plan, a).await.map_err(ProviderError::Failed)?;
    }
    let setups: Vec<(String, Option<String>)> = st
        .allocations
        .iter()
        .map(|a| (a.job_id.clone(), a.setup.clone()))
        .collect();
    record(plan, |s| {
        for a in s.allocations.iter_mut() {
            if let Some((_, h)) = setups.iter().find(|(j, _)| *j == a.job_id) {
                a.setup = h.clone();
            }
        }
    })
    .map_err(ProviderError::io(state::path(plan)))
}

/// The slots of node group `group`.
pub(super) fn slots_of(plan: &Plan, group: &str) -> u32 {
    plan.node_group(group).map(|g| g.slots).unwrap_or(1)
}

/// Record in the ledger what the phase's jobs in `rows` held so far (a
/// failure is said, not fatal: the next recording catches up).
fn record_hours(
    p: &SlurmProvider,
    plan: &Plan,
    rows: &std::collections::BTreeMap<String, cluster::JobRow>,
) -> Option<Held> {
    match meter::record_all(plan, rows) {
        Ok(h) => Some(h),
        Err(e) => {
            p.settings
                .log(&format!("the allocation hours were not recorded: {e}"));
            None
        }
    }
}

/// What sbatch refused: the plan's fault (exit 2, with the field of the
/// `slurm` section to fix) when sbatch says a value is invalid, else the
/// cluster's (exit 4).
fn refused(group: &str, e: String) -> ProviderError {
    let lower = e.to_lowercase();
    let field = [
        ("invalid partition", "partition"),
        ("invalid account", "account"),
        ("invalid qos", "qos"),
        ("invalid feature", "constraint"),
        (
            "invalid generic resource",
            "node_groups.<group>.gres (or the group's gpus)",
        ),
        ("memory specification", "node_groups.<group>.mem"),
        (
            "requested node configuration is not available",
            "node_groups.<group> (cpus_per_task, mem, gres)",
        ),
    ]
    .iter()
    .find(|(k, _)| lower.contains(k))
    .map(|(_, f)| f.replace("<group>", group));
    match field {
        Some(f) => ProviderError::Usage(format!(
            "the cluster refused an allocation of node group {group}: {e}\n  (hint: fix \"slurm.{f}\" in the plan; `sinfo` lists partitions and features, `sacctmgr show assoc user=$USER` your accounts and qos)"
        )),
        None => ProviderError::Failed(format!(
            "cannot submit an allocation of node group {group}: {e}\n  (hint: check the plan's \"slurm\" section against `sinfo` and `sacctmgr show assoc user=$USER`)"
        )),
    }
}

/// Wait until every live allocation runs; record its node.
async fn wait_running(p: &SlurmProvider, plan: &Plan) -> Result<(), ProviderError> {
    let prefix = argv::job_prefix(plan);
    let timeout = p
        .settings
        .nodes_timeout
        .unwrap_or(Duration::from_secs(1800));
    let start = Instant::now();
    let mut told = Instant::now();
    loop {
        let rows = cluster::list(&prefix)
            .await
            .map_err(ProviderError::Failed)?;
        let st = state::load(plan).unwrap_or_default();
        let mut waiting = Vec::new();
        let mut ran = Vec::new();
        for a in st.live() {
            match rows.get(&a.job_id) {
                Some(r) if r.running() => {
                    if a.node.is_empty() {
                        ran.push((a.job_id.clone(), r.node.clone(), cluster::node_addr(&r.node).await, r.cpus));
                    }
                }
                Some(r) if r.state == "PENDING" || r.state == "CONFIGURING" => {
                    waiting.push(format!("{} (job {}): {}", a.name, a.job_id, r.reason))
                }
                r => {
                    return Err(ProviderError::Failed(format!(
                        "allocation {} (job {}) ended before it ran{}\n  (hint: its output is in {}; `infra apply {}` submits it again)",
                        a.name,
                        a.job_id,
                        r.map(|r| format!(": {}", r.state)).unwrap_or_default(),
                        state::alloc_dir(&plan.state_dir(), &a.name).join("holder.out").display(),
                        plan.name_key
                    )))
                }
            }
        }
        if !ran.is_empty() {
            record(plan, |st| {
                for (job, node, addr, cpus) in &ran {
                    let off = st.port_offset_for(job, node, &|g| slots_of(plan, g));
                    if let Some(a) = st.allocations.iter_mut().find(|a| &a.job_id == job) {
                        a.node = node.clone();
                        a.addr = addr.clone();
                        a.cpus = *cpus;
                        a.port_offset = off;
                    }
                }
            })
            .map_err(ProviderError::io(state::path(plan)))?;
        }
        if waiting.is_empty() {
            return Ok(());
        }
        if start.elapsed() > timeout {
            return Err(ProviderError::Failed(format!(
                "{} allocation(s) still pending after {} s: {}\n  (hint: `squeue --me` shows why; `infra destroy {}` cancels them; INFRA_NODES_TIMEOUT_SECONDS waits longer)",
                waiting.len(),
                timeout.as_secs(),
                waiting.join(", "),
                plan.name_key
            )));
        }
        if told.elapsed() >= Duration::from_secs(10) || start.elapsed() < p.poll() {
            p.settings.log(&format!(
                "waiting for {} allocation(s): {}",
                waiting.len(),
                waiting.join(", ")
            ));
            told = Instant::now();
        }
        tokio::time::sleep(p.poll()).await;
    }
}

fn rows(
    plan: &Plan,
    st: &SlurmState,
    live: &std::collections::BTreeMap<String, cluster::JobRow>,
) -> Vec<NodeRow> {
    st.live()
        .map(|a| {
            let r = live.get(&a.job_id);
            NodeRow {
                name: a.name.clone(),
                group: a.group.clone(),
                id: a.job_id.clone(),
                instance_type: "slurm allocation".into(),
                market: "allocation".into(),
                zone: None,
                state: match r {
                    Some(r) if r.state == "PENDING" => format!("pending ({})", r.reason),
                    Some(r) => r.state.to_lowercase(),
                    None => "gone".into(),
                },
                address: if a.node.is_empty() {
                    "-".into()
                } else {
                    a.node.clone()
                },
                slots: plan.node_group(&a.group).map(|g| g.slots).unwrap_or(1),
                online: r.is_some_and(|r| r.running()),
            }
        })
        .collect()
}

impl Provider for SlurmProvider {
    fn name(&self) -> &'static str {
        "slurm"
    }

    fn apply<'a>(
        &'a self,
        plan: &'a Plan,
        _catalog: &'a Catalog,
        _confirm: &'a Confirm,
    ) -> Fut<'a, Result<Applied, ProviderError>> {
        Box::pin(async move {
            let st = bring_up(self, plan).await?;
            let live = cluster::list(&argv::job_prefix(plan))
                .await
                .map_err(ProviderError::Failed)?;
            Ok(Applied {
                provider: "slurm",
                region: None,
                stacks: Vec::new(),
                bucket: None,
                nodes: rows(plan, &st, &live),
                state: state::path(plan),
                details: serde_json::json!({
                    "jobs": st.live().map(|a| a.job_id.clone()).collect::<Vec<_>>()
                }),
            })
        })
    }

    fn open_run<'a>(
        &'a self,
        plan: &'a Plan,
        _catalog: &'a Catalog,
    ) -> Fut<'a, Result<Box<dyn RunSession + 'a>, ProviderError>> {
        Box::pin(async move {
            // submits what is missing, and waits for it
            let st = bring_up(self, plan).await?;
            let session: Box<dyn RunSession + 'a> = Box::new(SlurmRun {
                provider: self,
                plan,
                state: st,
                keep: Vec::new(),
                executor: None,
            });
            Ok(session)
        })
    }

    fn status<'a>(&'a self, plan: &'a Plan) -> Fut<'a, Result<Infra, ProviderError>> {
        Box::pin(async move {
            let st = state::load(plan).unwrap_or_default();
            let live = if st.live().next().is_some() {
                cluster::list(&argv::job_prefix(plan))
                    .await
                    .map_err(ProviderError::Failed)?
            } else {
                Default::default()
            };
            Ok(Infra {
                nodes: rows(plan, &st, &live),
                ..Default::default()
            })
        })
    }

    fn destroy<'a>(
        &'a self,
        plan: &'a Plan,
        _catalog: &'a Catalog,
        _opts: DestroyOpts,
    ) -> Fut<'a, Result<Destroyed, ProviderError>> {
        Box::pin(async move {
            let prefix = argv::job_prefix(plan);
            let st = state::load(plan).unwrap_or_default();
            let mut ids: Vec<String> = st.live().map(|a| a.job_id.clone()).collect();
            // and whatever of the phase the state file does not know
            let found = cluster::list(&prefix)
                .await
                .map_err(ProviderError::Failed)?;
            for id in found.keys() {
                if !ids.contains(id) {
                    ids.push(id.clone());
                }
            }
            let stopped = crate::provider::local::stop_task_leftovers(plan, &[]);
            // what they held, up to now
            record_hours(self, plan, &found);
            cluster::cancel(&ids).await.map_err(ProviderError::Failed)?;
            // scancel returns before the jobs are gone
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut left = cluster::list(&prefix)
                .await
                .map_err(ProviderError::Failed)?;
            while !left.is_empty() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(500)).await;
                left = cluster::list(&prefix)
                    .await
                    .map_err(ProviderError::Failed)?;
            }
            let leftovers: Vec<Resource> = left
                .values()
                .map(|r| Resource {
                    kind: "slurm job".into(),
                    id: r.id.clone(),
                    detail: format!("{} {}", r.name, r.state),
                })
                .collect();
            if leftovers.is_empty() {
                let _ = std::fs::remove_file(state::path(plan));
            }
            Ok(Destroyed {
                removed: format!(
                    "cancelled {} allocation(s){}",
                    ids.len(),
                    if stopped > 0 {
                        format!(", stopped {stopped} leftover step(s)")
                    } else {
                        String::new()
                    }
                ),
                checked: Some(format!("in squeue --me (jobs named {prefix}*)")),
                leftover_hint: format!(
                    "`squeue --me` shows them; `scancel {}` cancels them",
                    left.keys().cloned().collect::<Vec<_>>().join(" ")
                ),
                leftovers,
                details: serde_json::json!({ "cancelled": ids }),
                ..Default::default()
            })
        })
    }

    /// The hours the phase's allocations held up to now go to the ledger
    /// (`infra budget`, `infra status`): best effort, nothing to do when
    /// none is up.
    fn sync_ledger<'a>(&'a self, plan: &'a Plan) -> Fut<'a, Result<(), ProviderError>> {
        Box::pin(async move {
            if state::load(plan).is_some_and(|s| s.live().next().is_some()) {
                if let Ok(rows) = cluster::list(&argv::job_prefix(plan)).await {
                    record_hours(self, plan, &rows);
                }
            }
            Ok(())
        })
    }

    fn recorded_nodes(&self, plan: &Plan) -> usize {
        state::load(plan).map(|s| s.live().count()).unwrap_or(0)
    }

    fn lease_store<'a>(
        &'a self,
        plan: &'a Plan,
    ) -> Fut<'a, Result<Option<Arc<dyn crate::campaign::LeaseStore>>, ProviderError>> {
        self.local.lease_store(plan)
    }

    fn lease<'a>(&'a self, plan: &'a Plan) -> Fut<'a, Result<Option<LeaseDoc>, ProviderError>> {
        self.local.lease(plan)
    }

    fn detach<'a>(
        &'a self,
        plan: &'a Plan,
        catalog: &'a Catalog,
        req: &'a DetachRequest,
    ) -> Fut<'a, Result<Detached, ProviderError>> {
        self.local.detach(plan, catalog, req)
    }

    fn controller_log<'a>(
        &'a self,
        plan: &'a Plan,
        from: u64,
    ) -> Fut<'a, Result<ControllerLog, ProviderError>> {
        self.local.controller_log(plan, from)
    }

    fn request_stop<'a>(
        &'a self,
        plan: &'a Plan,
        req: &'a StopRequest,
    ) -> Fut<'a, Result<bool, ProviderError>> {
        self.local.request_stop(plan, req)
    }

    fn stop_pending<'a>(&'a self, plan: &'a Plan) -> Fut<'a, Result<bool, ProviderError>> {
        self.local.stop_pending(plan)
    }
}

struct SlurmRun<'a> {
    provider: &'a SlurmProvider,
    plan: &'a Plan,
    state: SlurmState,
    keep: Vec<(String, u32)>,
    executor: Option<Arc<SlurmExecutor>>,
}

impl RunSession for SlurmRun<'_> {
    fn keep(&mut self, attempts: Vec<(String, u32)>) {
        self.keep = attempts;
    }

    fn start(&mut self) -> Fut<'_, Result<Started, ProviderError>> {
        Box::pin(async move {
            let plan = self.plan;
            {
                let _lock = crate::runner::run::lock_phase(&plan.state_dir())?;
                // the srun processes a crashed run left (they carry its marker)
                let killed = crate::provider::local::stop_task_leftovers(plan, &self.keep);
                if killed > 0 {
                    self.provider
                        .settings
                        .log(&format!("stopped {killed} step(s) left by an earlier run"));
                }
            }
            let live: Vec<Allocation> = self.state.live().cloned().collect();
            // the time each has left, before the first task is placed
            let rows = cluster::list(&argv::job_prefix(plan))
                .await
                .map_err(ProviderError::Failed)?;
            // the hours the phase held before this run: the meter starts there
            let before = match record_hours(self.provider, plan, &rows) {
                Some(h) => h,
                None => hours::held(&crate::cost::ledger::read(&plan.root)?, &plan.name_key),
            };
            let left = rows
                .into_values()
                .filter_map(|r| Some((r.id, r.left?)))
                .collect();
            let executor = Arc::new(SlurmExecutor::new(
                plan,
                &live,
                &left,
                before,
                self.provider.poll(),
                self.provider.settings.replacement_wait,
                self.provider.settings.log.clone(),
            ));
            self.executor = Some(executor.clone());
            Ok(Started {
                executor,
                hourly_usd: 0.0,
                spent_before_usd: 0.0,
            })
        })
    }

    fn finish<'s>(
        &'s mut self,
        summary: &'s RunSummary,
    ) -> Fut<'s, Result<Finished, ProviderError>> {
        Box::pin(async move {
            let plan = self.plan;
            if let Some(ex) = &self.executor {
                ex.flush().await;
                // what the run held, and the phase in all, as the budget counts it
                let (run, total) = ex.held();
                let cap = plan
                    .budget
                    .as_ref()
                    .map(|b| {
                        [
                            ("GPU-hours", b.gpu_hours, total.gpu_hours),
                            ("node-hours", b.node_hours, total.node_hours),
                        ]
                        .iter()
                        .filter_map(|(w, c, used)| {
                            c.map(|c| {
                                format!(
                                    " (budget: {c} {w}; the phase used {}, {} remain)",
                                    hours::fmt(*used),
                                    hours::fmt((c - used).max(0.0))
                                )
                            })
                        })
                        .collect::<String>()
                    })
                    .unwrap_or_default();
                self.provider.settings.log(&format!(
                    "allocations held {} node-hours, {} GPU-hours in this run{cap}",
                    hours::fmt(run.node_hours),
                    hours::fmt(run.gpu_hours)
                ));
            }
            if summary.budget_stop {
                let st = state::load(plan).unwrap_or_default();
                let ids: Vec<String> = st.live().map(|a| a.job_id.clone()).collect();
                cluster::cancel(&ids).await.map_err(ProviderError::Failed)?;
                self.provider.settings.log(&format!(
                    "budget reached: dispatching stopped and {} allocation(s) cancelled",
                    ids.len()
                ));
            }
            Ok(Finished::default())
        })
    }
}
