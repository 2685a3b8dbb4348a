//! The local provider's lifecycle: nodes are folders on this machine
//! (`local.rs` runs the steps), the spend is simulated at the plan's prices.

use std::sync::Arc;

use super::local::{self, LocalExecutor, LocalNode, LocalState};
use super::{
    local_detach, Applied, Confirm, ControllerLog, DestroyOpts, Destroyed, DetachRequest, Detached,
    Finished, Fut, Infra, NodeRow, Provider, ProviderError, RunSession, Settings, Started,
};
use crate::campaign::{control, local_paths, LeaseDoc, StopRequest};
use crate::catalog::Catalog;
use crate::cost::ledger;
use crate::plan::Plan;
use crate::runner::run::RunSummary;

pub struct LocalProvider {
    settings: Settings,
}

impl LocalProvider {
    pub fn new(settings: Settings) -> LocalProvider {
        LocalProvider { settings }
    }
}

/// The nodes a plan asks for, priced from the catalog.
fn nodes(plan: &Plan, catalog: &Catalog) -> Vec<LocalNode> {
    local::nodes_for(
        plan,
        &|it, market| {
            catalog
                .price(it, &plan.region, market)
                .map(|p| p.usd_per_hour)
        },
        &|it| catalog.get(it).map(|t| (t.vcpus, t.gpus)),
    )
}

fn market_of(plan: &Plan, group: &str) -> String {
    plan.node_group(group)
        .map(|g| g.market.as_str())
        .unwrap_or("on-demand")
        .to_string()
}

fn rows(plan: &Plan, nodes: &[LocalNode]) -> Vec<NodeRow> {
    nodes
        .iter()
        .map(|n| NodeRow {
            name: n.name.clone(),
            group: n.group.clone(),
            id: n.name.clone(),
            instance_type: n.instance_type.clone(),
            market: market_of(plan, &n.group),
            zone: None,
            state: "ready".into(),
            address: n.addr.clone(),
            slots: n.slots,
            online: true,
        })
        .collect()
}

fn apply_nodes(plan: &Plan, catalog: &Catalog) -> Result<LocalState, ProviderError> {
    local::apply(plan, nodes(plan, catalog)).map_err(ProviderError::io(plan.state_dir()))
}

impl Provider for LocalProvider {
    fn name(&self) -> &'static str {
        "local"
    }

    fn apply<'a>(
        &'a self,
        plan: &'a Plan,
        catalog: &'a Catalog,
        _confirm: &'a Confirm,
    ) -> Fut<'a, Result<Applied, ProviderError>> {
        Box::pin(async move {
            let st = apply_nodes(plan, catalog)?;
            // a signal during the setup stops it (dropped, it is killed)
            let mut signals = crate::runner::signals::Interrupts::listen()
                .map_err(ProviderError::io(plan.state_dir()))?;
            tokio::select! {
                r = local::run_setup(plan, &st.nodes) => r.map_err(ProviderError::Failed)?,
                why = signals.recv() => {
                    return Err(ProviderError::Interrupted(format!(
                        "{why} during the setup: the setup was stopped\n  (hint: `infra apply {}` runs it again)",
                        plan.name_key
                    )))
                }
            };
            Ok(Applied {
                provider: "local",
                region: None,
                stacks: Vec::new(),
                bucket: None,
                nodes: rows(plan, &st.nodes),
                state: plan.state_dir().join("nodes"),
                details: serde_json::Value::Null,
            })
        })
    }

    fn open_run<'a>(
        &'a self,
        plan: &'a Plan,
        catalog: &'a Catalog,
    ) -> Fut<'a, Result<Box<dyn RunSession + 'a>, ProviderError>> {
        Box::pin(async move {
            let st = match local::load_state(plan) {
                Some(st) => st,
                None => {
                    self.settings.log(&format!(
                        "no local nodes for {} yet: applying",
                        plan.name_key
                    ));
                    apply_nodes(plan, catalog)?
                }
            };
            let session: Box<dyn RunSession + 'a> = Box::new(LocalRun {
                provider: self,
                plan,
                state: st,
                started: chrono::Utc::now(),
                keep: Vec::new(),
            });
            Ok(session)
        })
    }

    fn status<'a>(&'a self, plan: &'a Plan) -> Fut<'a, Result<Infra, ProviderError>> {
        Box::pin(async move {
            let nodes = local::load_state(plan).map(|s| s.nodes).unwrap_or_default();
            Ok(Infra {
                nodes: rows(plan, &nodes),
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
            let (nodes, killed) =
                local::destroy(plan).map_err(ProviderError::io(plan.state_dir()))?;
            Ok(Destroyed {
                removed: format!(
                    "{nodes} local node(s) removed, {killed} leftover process group(s) stopped"
                ),
                details: serde_json::json!({"nodes_removed": nodes, "processes_stopped": killed}),
                ..Default::default()
            })
        })
    }

    fn sync_ledger<'a>(&'a self, _plan: &'a Plan) -> Fut<'a, Result<(), ProviderError>> {
        // one machine, one ledger
        Box::pin(async { Ok(()) })
    }

    fn recorded_nodes(&self, plan: &Plan) -> usize {
        local::load_state(plan).map(|s| s.nodes.len()).unwrap_or(0)
    }

    fn lease_store<'a>(
        &'a self,
        plan: &'a Plan,
    ) -> Fut<'a, Result<Option<Arc<dyn crate::campaign::LeaseStore>>, ProviderError>> {
        let store: Arc<dyn crate::campaign::LeaseStore> = Arc::new(
            crate::campaign::local_store::LocalStore::new(&plan.state_dir()),
        );
        Box::pin(async move { Ok(Some(store)) })
    }

    fn lease<'a>(&'a self, plan: &'a Plan) -> Fut<'a, Result<Option<LeaseDoc>, ProviderError>> {
        Box::pin(async move { Ok(control::read_lease(&plan.state_dir())) })
    }

    fn detach<'a>(
        &'a self,
        plan: &'a Plan,
        _catalog: &'a Catalog,
        req: &'a DetachRequest,
    ) -> Fut<'a, Result<Detached, ProviderError>> {
        Box::pin(async move {
            let dir = plan.state_dir();
            if let Some(pid) = local_detach::running_daemon(&dir) {
                return Err(ProviderError::Failed(format!(
                    "a detached controller of {} runs already (pid {pid})\n  (hint: `infra attach {}` follows it, `infra stop {}` stops it)",
                    plan.name_key, plan.name_key, plan.name_key
                )));
            }
            let [args] = req.commands.as_slice() else {
                return Err(ProviderError::Usage(
                    "the local daemon runs one command".into(),
                ));
            };
            // a stop request left from an earlier campaign would stop this one
            control::clear_stop(&dir);
            let exe =
                std::env::current_exe().map_err(ProviderError::io("the running executable"))?;
            let log = local_paths::controller_log(&dir);
            let mut all = req.global.clone();
            all.extend(args.iter().cloned());
            let pid = local_detach::spawn(
                &exe,
                &all,
                &req.cwd,
                &log,
                &local_paths::controller_pid(&dir),
            )
            .map_err(ProviderError::io(&log))?;
            Ok(Detached {
                place: control::LOCAL_DAEMON.to_string(),
                pid: Some(pid),
                log: log.display().to_string(),
                ..Default::default()
            })
        })
    }

    fn controller_log<'a>(
        &'a self,
        plan: &'a Plan,
        from: u64,
    ) -> Fut<'a, Result<ControllerLog, ProviderError>> {
        Box::pin(async move {
            let dir = plan.state_dir();
            // whether it runs first: what it wrote before it ended is read after
            let running = local_detach::running_daemon(&dir).is_some();
            let log = local_paths::controller_log(&dir);
            let bytes = local_detach::read_from(&log, from).map_err(ProviderError::io(&log))?;
            Ok(ControllerLog { bytes, running })
        })
    }

    fn request_stop<'a>(
        &'a self,
        plan: &'a Plan,
        req: &'a StopRequest,
    ) -> Fut<'a, Result<bool, ProviderError>> {
        Box::pin(async move {
            let dir = plan.state_dir();
            let daemon = local_detach::running_daemon(&dir);
            let holder = control::read_lease(&dir).filter(|l| !l.expired(chrono::Utc::now()));
            if daemon.is_none() && holder.is_none() {
                return Ok(false);
            }
            control::request_stop(&dir, req).map_err(ProviderError::io(&dir))?;
            // the daemon is ours: it stops at once, as after a Ctrl-C (a
            // foreground holder sees the request at its next renewal)
            if let Some(pid) = daemon {
                local_detach::interrupt(pid);
            }
            Ok(true)
        })
    }

    fn stop_pending<'a>(&'a self, plan: &'a Plan) -> Fut<'a, Result<bool, ProviderError>> {
        Box::pin(async move {
            let dir = plan.state_dir();
            if control::stop_requested(&dir).is_none() {
                return Ok(false);
            }
            let live_lease =
                control::read_lease(&dir).is_some_and(|l| !l.expired(chrono::Utc::now()));
            if local_detach::running_daemon(&dir).is_some() || live_lease {
                return Ok(true);
            }
            // its controller is gone: the request is done with
            control::clear_stop(&dir);
            Ok(false)
        })
    }
}

struct LocalRun<'a> {
    provider: &'a LocalProvider,
    plan: &'a Plan,
    state: LocalState,
    started: chrono::DateTime<chrono::Utc>,
    keep: Vec<(String, u32)>,
}

impl RunSession for LocalRun<'_> {
    fn keep(&mut self, attempts: Vec<(String, u32)>) {
        self.keep = attempts;
    }

    fn start(&mut self) -> Fut<'_, Result<Started, ProviderError>> {
        Box::pin(async move {
            let plan = self.plan;
            {
                // what a crashed run left is stopped only once no other run
                // holds the phase (its processes carry the same marker)
                let _lock = crate::runner::run::lock_phase(&plan.state_dir())?;
                let killed = local::stop_task_leftovers(plan, &self.keep);
                if killed > 0 {
                    self.provider.settings.log(&format!(
                        "stopped {killed} process group(s) left by an earlier run"
                    ));
                }
                local::run_setup(plan, &self.state.nodes)
                    .await
                    .map_err(ProviderError::Failed)?;
            }
            let executor = Arc::new(LocalExecutor::new(plan, &self.state));
            self.started = chrono::Utc::now();
            Ok(Started {
                executor,
                hourly_usd: self.state.nodes.iter().map(|n| n.hourly_usd).sum(),
                spent_before_usd: ledger::spent(&ledger::read(&plan.root)?, Some(&plan.name_key)),
            })
        })
    }

    fn finish<'s>(
        &'s mut self,
        summary: &'s RunSummary,
    ) -> Fut<'s, Result<Finished, ProviderError>> {
        Box::pin(async move {
            let plan = self.plan;
            // whatever a task left running and no attempt's end caught
            let marker = local::marker(plan);
            super::process::stop_adopted(&|env| {
                super::process::has_entry(env, &marker)
                    && super::process::has_var(env, "INFRA_TASK_ID")
            });
            // what the same nodes would have cost for as long as the run lasted
            let span = ledger::RunSpan {
                phase: &plan.name_key,
                provider: "local",
                start: self.started,
                end: chrono::Utc::now(),
                hours: summary.wall_seconds / 3600.0,
                kind: "simulated",
            };
            let entries: Vec<ledger::Spend> = self
                .state
                .nodes
                .iter()
                .map(|n| {
                    span.spend(
                        n.name.clone(),
                        &n.group,
                        &n.instance_type,
                        &market_of(plan, &n.group),
                        n.hourly_usd,
                    )
                })
                .collect();
            ledger::append(&plan.root, &entries)
                .map_err(ProviderError::io(ledger::path(&plan.root)))?;
            if summary.budget_stop {
                let (nodes, _) =
                    local::destroy(plan).map_err(ProviderError::io(plan.state_dir()))?;
                self.provider.settings.log(&format!(
                    "budget reached: dispatching stopped and {nodes} node(s) destroyed; results so far are in {}",
                    crate::plan::decode::rel(&plan.results_dir(), &plan.root)
                ));
            }
            Ok(Finished::default())
        })
    }
}
