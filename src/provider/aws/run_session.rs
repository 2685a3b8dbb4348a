//! One `infra run` on AWS, between `open_run` and the summary: the nodes
//! online in SSM, the bundle, the executor, what an earlier run left, the
//! setup; afterwards the state, the budget stop's teardown, the metering.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::campaign_sync::BucketJournal;
use super::config::Clients;
use super::deploy::online;
use super::deploy::{self, Looked};
use super::executor::{self, AwsExecutor};
use super::layout;
use super::meter;
use super::node_commands::Target;
use super::state::{self, AwsState};
use crate::campaign::segments::Pusher;
use crate::catalog::Catalog;
use crate::cost::ledger;
use crate::plan::Plan;
use crate::provider::{Finished, Fut, ProviderError, RunSession, Settings, Started};
use crate::runner::run::RunSummary;

/// One `infra run` on AWS: the same runner as locally, with `AwsExecutor`.
pub(super) struct AwsRun<'a> {
    pub(super) settings: &'a Settings,
    pub(super) plan: &'a Plan,
    pub(super) catalog: &'a Catalog,
    pub(super) c: Clients,
    pub(super) st: AwsState,
    pub(super) looked: Looked,
    /// The metering when the run opened, and when it was done.
    pub(super) metered: Vec<ledger::Spend>,
    pub(super) metered_at: Instant,
    pub(super) exec: Option<Arc<AwsExecutor>>,
    /// Attempts this run adopts: the reap leaves them running.
    pub(super) keep: Vec<(String, u32)>,
    /// Uploads the journal to the bucket while the run goes on.
    pub(super) pusher: Option<Pusher>,
}

impl AwsRun<'_> {
    async fn start_(&mut self) -> Result<Started, ProviderError> {
        let (plan, c) = (self.plan, &self.c);
        let log = |l: &str| self.settings.log(l);
        let alive: Vec<String> = self
            .st
            .nodes
            .iter()
            .filter(|n| n.state == "running")
            .map(|n| n.instance_id.clone())
            .collect();
        let online = online(c, alive).await?;
        let groups = deploy::group_specs(plan, self.catalog);
        let live: Vec<(String, String, String, String)> = self
            .st
            .nodes
            .iter()
            .filter(|n| online.contains(&n.instance_id) && groups.contains_key(&n.group))
            .map(|n| {
                (
                    n.name.clone(),
                    n.group.clone(),
                    n.instance_id.clone(),
                    n.private_ip.clone(),
                )
            })
            .collect();
        let offline: Vec<&str> = self
            .st
            .nodes
            .iter()
            .filter(|n| n.state == "running" && !online.contains(&n.instance_id))
            .map(|n| n.name.as_str())
            .collect();
        if !offline.is_empty() {
            log(&format!(
                "not online in SSM, not used: {}",
                offline.join(", ")
            ));
        }
        deploy::save(plan, &mut self.st)?;
        let kit = Arc::new(
            deploy::node_kit(
                c,
                &log,
                plan,
                &self.looked.bucket,
                &self.settings.node_binaries,
            )
            .await?,
        );
        let ids: Vec<String> = live.iter().map(|l| l.2.clone()).collect();
        // what each instance costs by the hour, as metered (its zone's spot
        // price): tasks are charged at their own nodes' prices
        let metered_price: HashMap<String, f64> = self
            .metered
            .iter()
            .filter_map(|e| Some((e.instance.clone()?, e.usd_per_hour)))
            .collect();
        // the watchdog burns at the nodes' metered prices (their zone's spot
        // price), the catalog's where a node has not been metered
        let hourly: f64 = live
            .iter()
            .filter_map(|l| {
                metered_price
                    .get(&l.2)
                    .copied()
                    .or_else(|| groups.get(&l.1).map(|g| g.hourly_usd))
            })
            .sum();
        let log_arc = self.settings.log.clone();
        let exec = AwsExecutor::start(
            executor::Setup {
                clients: c.clone(),
                kit: kit.clone(),
                bucket: self.looked.bucket.clone(),
                project: plan.project.clone(),
                name_key: plan.name_key.clone(),
                phase: plan.phase.clone(),
                groups: groups.clone(),
                state: self.st.clone(),
                state_path: state::path(plan),
                setup_hash: deploy::setup_hash(plan),
                metered_usd_per_hour: metered_price,
                replacement_wait: self.settings.replacement_wait,
                node_check: (c.settings.poll * 5).max(Duration::from_secs(1)),
                log: Arc::new(move |l: &str| log_arc(l)),
            },
            live.clone(),
        );
        // steps a dead `infra run` left running
        let arch_of = |group: &str| groups.get(group).map(|g| g.arch);
        if !ids.is_empty() {
            let nodes: Vec<_> = live
                .iter()
                .filter_map(|l| Some((l.2.clone(), arch_of(&l.1)?)))
                .collect();
            let stopped = executor::reap(c, &exec.poller, &kit, &nodes, &self.keep)
                .await
                .map_err(ProviderError::Failed)?;
            if stopped > 0 {
                log(&format!(
                    "stopped {stopped} step(s) left running by an earlier run"
                ));
            }
        }
        if let Some(hash) = deploy::setup_hash(plan) {
            let nodes: Vec<Target> = live
                .iter()
                .filter_map(|l| {
                    Some(Target {
                        name: l.0.clone(),
                        instance_id: l.2.clone(),
                        addr: l.3.clone(),
                        arch: arch_of(&l.1)?,
                    })
                })
                .collect();
            executor::setup_nodes(c, &exec.poller, &kit, &hash, &nodes)
                .await
                .map_err(ProviderError::Failed)?;
        }
        // the nodes also burn while the bundle uploads and setup runs
        let spent_before = ledger::spent(&ledger::read(&plan.root)?, Some(&plan.name_key))
            + hourly * self.metered_at.elapsed().as_secs_f64() / 3600.0;
        self.exec = Some(exec.clone());
        // the journal goes to the bucket as it grows: any checkout sees the
        // campaign (`campaign::segments`)
        self.pusher = Some(Pusher::start(
            Arc::new(BucketJournal::new(c, &self.looked.bucket, plan)),
            format!(
                "s3://{}/{}",
                self.looked.bucket,
                layout::journal_prefix(&plan.name_key)
            ),
            plan.state_dir(),
            self.settings.journal_sync,
            self.settings.log.clone(),
        ));
        Ok(Started {
            executor: exec,
            hourly_usd: hourly,
            spent_before_usd: spent_before,
        })
    }

    async fn finish_(&mut self, summary: &RunSummary) -> Result<Finished, ProviderError> {
        // the journal's last lines (the run's end, after a stop too)
        if let Some(p) = self.pusher.take() {
            p.finish().await;
        }
        let (plan, c) = (self.plan, &self.c);
        let Some(exec) = self.exec.take() else {
            return Ok(Finished::default());
        };
        let mut st = exec.state();
        deploy::save(plan, &mut st)?;
        let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let calls = json!({
            "poll_rounds": n(&exec.poller.stats.rounds),
            "list_command_invocations": n(&exec.poller.stats.list_calls),
            "max_list_calls_per_round": n(&exec.poller.stats.max_calls_per_round),
            "max_list_calls_beyond_in_flight": n(&exec.poller.stats.max_extra_calls),
            "max_in_flight": n(&exec.poller.stats.max_in_flight),
            "get_command_invocation": n(&exec.poller.stats.get_calls),
            "ends_read_from_runtime_json": n(&exec.poller.stats.probes),
            "send_command": n(&exec.stats.send_command),
            "cancel_command": n(&exec.stats.cancel_command),
            "describe_instances": n(&exec.stats.describe_instances),
            "describe_instance_information": n(&exec.stats.describe_instance_information),
        });
        if summary.budget_stop {
            self.settings
                .log("budget reached: deleting the compute stack");
            let log = |l: &str| self.settings.log(l);
            let _ = deploy::delete_stack(c, &log, &st.compute_stack).await;
        }
        // every node's lifetime up to now (or to their termination after a
        // budget stop), at its spot price history
        if let Err(e) = meter::meter(c, plan, self.catalog, Some(&self.looked.bucket)).await {
            self.settings.log(&format!(
                "warning: the spend of this run is not metered: {e}"
            ));
        }
        Ok(Finished {
            api_calls: Some(calls),
        })
    }
}

impl RunSession for AwsRun<'_> {
    fn keep(&mut self, attempts: Vec<(String, u32)>) {
        self.keep = attempts;
    }

    fn start(&mut self) -> Fut<'_, Result<Started, ProviderError>> {
        Box::pin(self.start_())
    }

    fn finish<'s>(
        &'s mut self,
        summary: &'s RunSummary,
    ) -> Fut<'s, Result<Finished, ProviderError>> {
        Box::pin(self.finish_(summary))
    }
}
