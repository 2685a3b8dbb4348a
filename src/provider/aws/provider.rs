//! The AWS provider's lifecycle: apply (base stack, compute stack, nodes
//! up and online, setup), a run (the shared runner with `AwsExecutor`),
//! status, destroy, and the ledger shared through the bucket.

use std::collections::HashSet;
use std::time::Instant;

use serde_json::json;

use super::campaign_sync;
use super::cfn::{self, Source, StackInfo};
use super::config::{self, AwsSettings, Clients};
use super::controller;
pub(super) use super::deploy::deploy_base;
use super::deploy::{self, Looked};
use super::ec2;
use super::error::AwsError;
use super::executor;
use super::fleet_restore;
use super::layout;
use super::meter;
use super::node_commands::Target;
use super::run_session::AwsRun;
use super::s3;
use super::ssm::Poller;
use super::state::{self, AwsState};
use crate::campaign::{LeaseDoc, StopRequest};
use crate::catalog::Catalog;
use crate::cost::ledger;
use crate::plan::Plan;
use crate::provider::{
    Applied, Confirm, ControllerLog, DestroyOpts, Destroyed, DetachRequest, Detached, Fut, Infra,
    NodeRow, Provider, ProviderError, Resource, RunSession, Settings, StackRow,
};
use crate::stacks::{self, names};

pub struct AwsProvider {
    settings: Settings,
}

impl AwsProvider {
    pub fn new(settings: Settings) -> AwsProvider {
        AwsProvider { settings }
    }

    /// The SDK settings for a plan: `--region` or the plan's, and the
    /// endpoint, attempts and polling the command layer resolved.
    pub fn sdk_settings(&self, plan: &Plan) -> AwsSettings {
        sdk_settings(&self.settings, &plan.region)
    }

    fn log(&self, line: &str) {
        self.settings.log(line)
    }

    async fn connect(&self, plan: &Plan) -> Result<Clients, ProviderError> {
        Ok(config::connect(&self.sdk_settings(plan)).await?)
    }

    /// The clients for reading the campaign's shared state; `None` when
    /// there are no credentials and this machine never deployed the phase:
    /// then nothing can be known beyond this machine, and nothing is said.
    async fn connect_to_share(&self, plan: &Plan) -> Result<Option<Clients>, AwsError> {
        match config::connect(&self.sdk_settings(plan)).await {
            Ok(c) => Ok(Some(c)),
            Err(AwsError::NoCredentials { .. }) if state::load(plan).is_none() => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// SDK settings from the command layer's settings, for `region` unless
/// `--region` says otherwise.
pub fn sdk_settings(s: &Settings, region: &str) -> AwsSettings {
    let mut a = AwsSettings::new(s.region.clone().unwrap_or_else(|| region.to_string()));
    a.profile = s.profile.clone();
    a.endpoint = s.endpoint.clone();
    if let Some(n) = s.max_attempts {
        a.max_attempts = n;
    }
    if let Some(p) = s.poll {
        a.poll = p;
    }
    a
}

fn node_rows(nodes: &[state::AwsNode], online: &HashSet<String>) -> Vec<NodeRow> {
    nodes
        .iter()
        .map(|n| NodeRow {
            name: n.name.clone(),
            group: n.group.clone(),
            id: n.instance_id.clone(),
            instance_type: n.instance_type.clone(),
            market: n.market.clone(),
            zone: Some(n.az.clone()),
            state: n.state.clone(),
            address: n.private_ip.clone(),
            slots: 0,
            online: online.contains(&n.instance_id),
        })
        .collect()
}

fn stack_row(role: &'static str, name: &str, s: Option<&StackInfo>) -> StackRow {
    StackRow {
        role,
        name: name.to_string(),
        status: s.map(|s| s.status.clone()),
    }
}

/// Merge the bucket's ledger into the local one and meter the phase's
/// instances up to now; failures are warnings (the run goes on, and the
/// next metering picks up the time), except a ledger entry with a negative
/// or non-finite amount (`ProviderError::Ledger`): it is refused, loudly.
async fn sync_and_meter(
    c: &Clients,
    log: &dyn Fn(&str),
    plan: &Plan,
    catalog: &Catalog,
    bucket: Option<&str>,
) -> Result<Vec<ledger::Spend>, ProviderError> {
    if let Some(bucket) = bucket {
        match meter::pull(c, bucket, &plan.root).await {
            Ok(n) if n > 0 => log(&format!(
                "ledger: {n} entr(ies) from other machines (s3://{bucket}/{})",
                meter::PREFIX
            )),
            Ok(_) => {}
            Err(AwsError::Ledger(bad)) => return Err(ProviderError::Ledger(bad)),
            Err(e) => log(&format!(
                "warning: cannot read the ledger in the bucket: {e}"
            )),
        }
    }
    match meter::meter(c, plan, catalog, bucket).await {
        Ok(m) => Ok(m),
        Err(AwsError::Ledger(bad)) => Err(ProviderError::Ledger(bad)),
        Err(e) => {
            log(&format!("warning: cannot meter the phase's instances: {e}"));
            Ok(Vec::new())
        }
    }
}

/// The deployed phase, checked against the cloud: stacks, bucket, live
/// nodes (names from the state file, new instances named).
async fn deployed(c: &Clients, plan: &Plan) -> Result<(AwsState, Looked), ProviderError> {
    let base_name = names::base_stack_name(&plan.project);
    let compute_name = names::compute_stack_name(&plan.project, &plan.name_key);
    let not_applied = || {
        ProviderError::Failed(format!(
            "{} is not deployed\n  (hint: `infra apply {}` first)",
            plan.name_key, plan.name_key
        ))
    };
    let base = cfn::describe(c, &base_name)
        .await?
        .filter(|s| !s.dead())
        .ok_or_else(not_applied)?;
    let compute = cfn::describe(c, &compute_name)
        .await?
        .filter(|s| !s.dead())
        .ok_or_else(not_applied)?;
    let looked = deploy::looked_up(&base, Some(&compute))?;
    let seen = ec2::instances(c, &plan.project, Some(&plan.name_key)).await?;
    let nodes = deploy::known_nodes(plan, &compute_name, &seen);
    let mut st = deploy::new_state(plan, &looked, (&base_name, &compute_name), nodes);
    state::merge(&mut st.nodes, &seen);
    Ok((st, looked))
}

impl AwsProvider {
    async fn apply_(
        &self,
        plan: &Plan,
        catalog: &Catalog,
        confirm: &Confirm,
    ) -> Result<Applied, ProviderError> {
        let log = |l: &str| self.log(l);
        let c = self.connect(plan).await?;
        let rendered = stacks::render(plan, catalog)?;
        stacks::write(&plan.state_dir(), &rendered)?;
        let base = deploy_base(&c, &log, confirm, plan, &rendered).await?;
        let looked = deploy::looked_up(&base, None)?;
        // compute
        let source = if rendered.compute.needs_upload {
            let key = layout::template_key(&format!(
                "{}-{}.json",
                rendered.compute.name,
                &s3::sha256_hex(rendered.compute.body.as_bytes())[..12]
            ));
            s3::put(
                &c,
                &looked.bucket,
                &key,
                rendered.compute.body.clone().into_bytes(),
            )
            .await?;
            log(&format!(
                "stack {} is {} bytes: deployed from s3://{}/{key}",
                rendered.compute.name,
                rendered.compute.body.len(),
                looked.bucket
            ));
            Source::Url(config::object_url(&c.settings, &looked.bucket, &key))
        } else {
            Source::Body(rendered.compute.body.clone())
        };
        // fleets deleted by idle nodes come back; the deadline of a stack
        // created now is sized from the budget that remains (an existing
        // stack keeps its expiry: `deploy` keeps its parameters)
        let exists =
            fleet_restore::restore_fleets(&c, &log, plan, catalog, Some(&looked.bucket)).await?;
        let spent = if exists {
            0.0
        } else {
            fleet_restore::spent_so_far(&c, plan, Some(&looked.bucket)).await
        };
        let params = stacks::compute_parameters(plan, catalog, chrono::Utc::now(), spent);
        let compute = deploy::deploy(
            &c,
            &log,
            confirm,
            &rendered.compute.name,
            source,
            &params,
            &deploy::stack_tags(plan, false),
        )
        .await?;
        let looked = deploy::looked_up(&base, Some(&compute))?;
        // what is deployed now: `infra plan` diffs against it
        let hourly = crate::cost::estimate::estimate(plan, &[], catalog, "").hourly_usd;
        crate::stacks::deployed::record(&plan.state_dir(), &rendered, hourly).map_err(
            ProviderError::io(crate::stacks::deployed::path(&plan.state_dir())),
        )?;
        // nodes
        let timeout = deploy::nodes_timeout(plan, self.settings.nodes_timeout);
        let ready = deploy::wait_for_nodes(&c, &log, plan, &looked.fleets, timeout).await?;
        let all = ec2::instances(&c, &plan.project, Some(&plan.name_key)).await?;
        let mut st = deploy::known_nodes(plan, &rendered.compute.name, &all);
        state::merge(&mut st, &all);
        let mut state_ = deploy::new_state(
            plan,
            &looked,
            (&rendered.base.name, &rendered.compute.name),
            st,
        );
        deploy::save(plan, &mut state_)?;
        // setup, once per node (the wrapper remembers)
        if let Some(hash) = deploy::setup_hash(plan) {
            let kit =
                deploy::node_kit(&c, &log, plan, &looked.bucket, &self.settings.node_binaries)
                    .await?;
            let poller = Poller::start(c.clone());
            let groups = deploy::group_specs(plan, catalog);
            let nodes: Vec<Target> = state_
                .nodes
                .iter()
                .filter(|n| ready.iter().any(|r| r.instance_id == n.instance_id))
                .filter_map(|n| {
                    Some(Target {
                        name: n.name.clone(),
                        instance_id: n.instance_id.clone(),
                        addr: n.private_ip.clone(),
                        arch: groups.get(&n.group)?.arch,
                    })
                })
                .collect();
            log(&format!("running setup on {} node(s)", nodes.len()));
            executor::setup_nodes(&c, &poller, &kit, &hash, &nodes)
                .await
                .map_err(ProviderError::Failed)?;
        }
        let live: Vec<state::AwsNode> =
            state_.nodes.iter().filter(|n| n.alive()).cloned().collect();
        // EFA is there and carries traffic, or the apply fails naming the node
        let efa = super::efa_check::verify(&c, &log, plan, catalog, &live).await?;
        let ids: HashSet<String> = live.iter().map(|n| n.instance_id.clone()).collect();
        let mut details = json!({"security_group": looked.security_group, "vpc": looked.vpc, "fleets": looked.fleets});
        if let Some(e) = efa {
            details["efa"] = json!(e);
        }
        Ok(Applied {
            provider: "aws",
            region: Some(plan.region.clone()),
            stacks: vec![
                stack_row("base", &base.name, Some(&base)),
                stack_row("compute", &compute.name, Some(&compute)),
            ],
            bucket: Some(looked.bucket.clone()),
            nodes: node_rows(&live, &ids),
            state: state::path(plan),
            details,
        })
    }

    async fn open_run_<'a>(
        &'a self,
        plan: &'a Plan,
        catalog: &'a Catalog,
    ) -> Result<Box<dyn RunSession + 'a>, ProviderError> {
        let c = self.connect(plan).await?;
        {
            let log = |l: &str| self.log(l);
            fleet_restore::restore_fleets(&c, &log, plan, catalog, None).await?;
        }
        let (st, looked) = deployed(&c, plan).await?;
        // what other machines recorded, then the nodes' time since the last
        // metering (idle since apply, or a run that crashed): the command
        // layer checks the budget again against that
        let log = |l: &str| self.log(l);
        let metered = sync_and_meter(&c, &log, plan, catalog, Some(&looked.bucket)).await?;
        Ok(Box::new(AwsRun {
            settings: &self.settings,
            plan,
            catalog,
            c,
            st,
            looked,
            metered,
            metered_at: Instant::now(),
            exec: None,
            keep: Vec::new(),
            pusher: None,
        }))
    }

    async fn status_(&self, plan: &Plan) -> Result<Infra, ProviderError> {
        let c = self.connect(plan).await?;
        let base_name = names::base_stack_name(&plan.project);
        let compute_name = names::compute_stack_name(&plan.project, &plan.name_key);
        let base = cfn::describe(&c, &base_name).await?;
        let compute = cfn::describe(&c, &compute_name).await?;
        let seen = ec2::instances(&c, &plan.project, Some(&plan.name_key)).await?;
        let mut nodes = deploy::known_nodes(plan, &compute_name, &seen);
        state::merge(&mut nodes, &seen);
        let running: Vec<String> = nodes
            .iter()
            .filter(|n| n.state == "running")
            .map(|n| n.instance_id.clone())
            .collect();
        let online = deploy::online(&c, running).await?;
        let mut stacks = vec![
            stack_row("base", &base_name, base.as_ref()),
            stack_row("compute", &compute_name, compute.as_ref()),
        ];
        // a detached campaign's controller, while its stack is there
        let controller_name = stacks::controller::stack_name(plan);
        if let Some(s) = cfn::describe(&c, &controller_name)
            .await?
            .filter(|s| s.status != "DELETE_COMPLETE")
        {
            stacks.push(stack_row("controller", &controller_name, Some(&s)));
        }
        Ok(Infra {
            region: Some(c.settings.region.clone()),
            bucket: base
                .as_ref()
                .and_then(|b| b.outputs.get("BucketName").cloned()),
            stacks,
            nodes: node_rows(&nodes, &online),
        })
    }

    async fn destroy_(
        &self,
        plan: &Plan,
        catalog: &Catalog,
        o: DestroyOpts,
    ) -> Result<Destroyed, ProviderError> {
        let log = |l: &str| self.log(l);
        let c = self.connect(plan).await?;
        if o.delete_results {
            // what any checkout ran counts: a fresh checkout must not delete
            // results it never fetched
            campaign_sync::pull(&c, plan, &log).await.map_err(|e| {
                ProviderError::Failed(format!(
                    "--delete-results refused: the campaign's journal in the bucket was not read ({e})\n  (hint: nothing was deleted)"
                ))
            })?;
            let missing = campaign_sync::missing_results(plan)?;
            if !missing.is_empty() {
                return Err(ProviderError::Failed(format!(
                    "--delete-results refused: {} finished task(s) have no results in {}: {}{}\n  (hint: nothing was deleted; fetch them first, or destroy without --delete-results)",
                    missing.len(),
                    crate::plan::decode::rel(&plan.results_dir(), &plan.root),
                    missing.iter().take(5).cloned().collect::<Vec<_>>().join(", "),
                    if missing.len() > 5 { ", ..." } else { "" }
                )));
            }
        }
        let base_name = names::base_stack_name(&plan.project);
        let compute_name = names::compute_stack_name(&plan.project, &plan.name_key);
        let bucket = match cfn::describe(&c, &base_name)
            .await?
            .and_then(|b| b.outputs.get("BucketName").cloned())
        {
            Some(b) => Some(b),
            None => {
                s3::find_bucket(&c, &names::bucket_prefix(&plan.project), &c.settings.region)
                    .await?
            }
        };
        let mut deleted = Vec::new();
        if deploy::delete_stack(&c, &log, &compute_name).await? {
            deleted.push(compute_name.clone());
        }
        if o.all && deploy::delete_stack(&c, &log, &base_name).await? {
            deleted.push(base_name.clone());
        }
        let bucket_note = self
            .bucket_after_destroy(&c, plan, bucket.as_deref(), o)
            .await?;
        // the instances' lifetimes up to their termination
        // (a refused ledger does not stop the clean-up: it is said, loudly)
        if let Err(e) = sync_and_meter(&c, &log, plan, catalog, bucket.as_deref()).await {
            log(&format!("error: {e}"));
        }
        // anything billable left, by tag
        let phase = if o.all {
            None
        } else {
            Some(plan.name_key.as_str())
        };
        let mut left = ec2::sweep(&c, &plan.project, phase, o.all).await?;
        let mut forced = Vec::new();
        if !left.is_empty() && o.force {
            forced = left.clone();
            let errors = ec2::force_remove(&c, &left).await;
            for e in &errors {
                log(&format!("could not remove: {e}"));
            }
            left = ec2::sweep(&c, &plan.project, phase, o.all).await?;
            // VPCs are not billable; they go with the base stack
            left.retain(|l| l.kind != "vpc" || !o.force);
        }
        if let Some(mut st) = state::load(plan) {
            for n in st.nodes.iter_mut() {
                n.state = "terminated".into();
            }
            let _ = deploy::save(plan, &mut st);
        }
        let resource = |l: &ec2::Leftover| Resource {
            kind: l.kind.to_string(),
            id: l.id.clone(),
            detail: l.detail.clone(),
        };
        Ok(Destroyed {
            removed: if deleted.is_empty() {
                "no stack was deployed".to_string()
            } else {
                format!("deleted {}", deleted.join(", "))
            },
            notes: vec![bucket_note.clone()],
            remote_results: true,
            forced: forced.iter().map(resource).collect(),
            leftovers: left.iter().map(resource).collect(),
            checked: Some(format!(
                "tagged {}={}{}",
                names::TAG_PROJECT,
                plan.project,
                phase
                    .map(|p| format!(", {}={p}", names::TAG_PHASE))
                    .unwrap_or_default()
            )),
            leftover_hint: format!(
                "{} resource(s) tagged with project {} are still there\n  (hint: `infra destroy {} --force{}` terminates them)",
                left.len(),
                plan.project,
                plan.name_key,
                if o.all { " --all" } else { "" }
            ),
            details: json!({"deleted_stacks": deleted, "bucket": bucket, "bucket_note": bucket_note}),
        })
    }

    /// The bucket after `destroy`: kept unless asked, and then only the
    /// checked results go (the bucket itself with `--all` once it is empty).
    async fn bucket_after_destroy(
        &self,
        c: &Clients,
        plan: &Plan,
        bucket: Option<&str>,
        o: DestroyOpts,
    ) -> Result<String, ProviderError> {
        let Some(b) = bucket else {
            return Ok("no bucket".to_string());
        };
        if !o.delete_results {
            return Ok(format!("bucket {b} kept (results stay there)"));
        }
        // every version: the bucket is versioned, and asked to delete the
        // results, nothing of them is kept
        let n = s3::delete_prefix_versions(c, b, &layout::phase_prefix(&plan.name_key)).await?;
        // the journal's segments went too: this machine's journal is not
        // uploaded again (nor the results with it) by the next command
        crate::campaign::segments::forget_store(&plan.state_dir())
            .map_err(ProviderError::Failed)?;
        let mut note = format!("{n} object(s) of {} deleted from bucket {b}", plan.name_key);
        if o.all {
            let rest: Vec<(String, i64)> = s3::list(c, b, "")
                .await?
                .into_iter()
                .filter(|(k, _)| !layout::is_infra_key(k))
                .collect();
            if rest.is_empty() {
                s3::delete_prefix_versions(c, b, "").await?;
                if s3::delete_bucket(c, b).await? {
                    note = format!("bucket {b} emptied and deleted");
                }
            } else {
                let mut prefixes: Vec<&str> = rest
                    .iter()
                    .filter_map(|(k, _)| k.split('/').next())
                    .collect();
                prefixes.dedup();
                note.push_str(&format!(
                    "; bucket kept: it still holds {}",
                    prefixes.join(", ")
                ));
            }
        }
        Ok(note)
    }

    async fn sync_ledger_(&self, plan: &Plan) -> Result<(), ProviderError> {
        // a fresh checkout has no state of the phase: the bucket is found
        // from the cloud (it used to be read from the state only, and such
        // a checkout showed no spend)
        let pulled = match self.connect_to_share(plan).await {
            Ok(None) => return Ok(()),
            Ok(Some(c)) => match campaign_sync::find_bucket(&c, plan).await {
                Ok(Some(bucket)) => meter::pull(&c, &bucket, &plan.root)
                    .await
                    .map(|n| (n, bucket)),
                Ok(None) => return Ok(()),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        match pulled {
            Ok((0, _)) => {}
            Ok((n, bucket)) => self.log(&format!(
                "{}: {n} ledger entr(ies) merged from s3://{bucket}/{}",
                plan.name_key,
                meter::PREFIX
            )),
            Err(AwsError::Ledger(bad)) => return Err(ProviderError::Ledger(bad)),
            Err(e) => self.log(&format!(
                "{}: the bucket's ledger was not read ({e}); showing this machine's ledger only",
                plan.name_key
            )),
        }
        Ok(())
    }
}

impl Provider for AwsProvider {
    fn name(&self) -> &'static str {
        "aws"
    }

    fn apply<'a>(
        &'a self,
        plan: &'a Plan,
        catalog: &'a Catalog,
        confirm: &'a Confirm,
    ) -> Fut<'a, Result<Applied, ProviderError>> {
        Box::pin(self.apply_(plan, catalog, confirm))
    }

    fn open_run<'a>(
        &'a self,
        plan: &'a Plan,
        catalog: &'a Catalog,
    ) -> Fut<'a, Result<Box<dyn RunSession + 'a>, ProviderError>> {
        Box::pin(self.open_run_(plan, catalog))
    }

    fn status<'a>(&'a self, plan: &'a Plan) -> Fut<'a, Result<Infra, ProviderError>> {
        Box::pin(self.status_(plan))
    }

    fn clear_checkpoints<'a>(
        &'a self,
        plan: &'a Plan,
        tasks: &'a [String],
    ) -> Fut<'a, Result<usize, ProviderError>> {
        Box::pin(async move {
            let Some(c) = self.connect_to_share(plan).await? else {
                return Ok(0);
            };
            let Some(bucket) = campaign_sync::find_bucket(&c, plan).await? else {
                return Ok(0);
            };
            let root = format!("{}/", layout::checkpoints_prefix(&plan.name_key));
            let mut folders = std::collections::BTreeSet::new();
            for (key, _) in s3::list(&c, &bucket, &root).await? {
                let Some((folder, _)) = key[root.len()..].split_once('/') else {
                    continue;
                };
                if tasks
                    .iter()
                    .any(|t| crate::tasks::model::is_checkpoint_of(folder, t))
                {
                    s3::delete(&c, &bucket, &key).await?;
                    folders.insert(folder.to_string());
                }
            }
            Ok(folders.len())
        })
    }

    fn checkpoint_sizes<'a>(
        &'a self,
        plan: &'a Plan,
    ) -> Fut<'a, Result<std::collections::BTreeMap<String, u64>, ProviderError>> {
        Box::pin(async move {
            let mut out = std::collections::BTreeMap::new();
            let Some(c) = self.connect_to_share(plan).await? else {
                return Ok(out);
            };
            let Some(bucket) = campaign_sync::find_bucket(&c, plan).await? else {
                return Ok(out);
            };
            let root = format!("{}/", layout::checkpoints_prefix(&plan.name_key));
            for (key, size) in s3::list(&c, &bucket, &root).await? {
                if let Some((folder, _)) = key[root.len()..].split_once('/') {
                    let task = crate::tasks::model::checkpoint_task(folder).to_string();
                    *out.entry(task).or_insert(0) += size.max(0) as u64;
                }
            }
            Ok(out)
        })
    }

    fn lease_store<'a>(
        &'a self,
        plan: &'a Plan,
    ) -> Fut<'a, Result<Option<std::sync::Arc<dyn crate::campaign::LeaseStore>>, ProviderError>>
    {
        Box::pin(async move {
            let c = self.connect(plan).await?;
            let base = cfn::describe(&c, &names::base_stack_name(&plan.project)).await?;
            let Some(bucket) = base.and_then(|b| b.outputs.get("BucketName").cloned()) else {
                return Ok(None);
            };
            let store: std::sync::Arc<dyn crate::campaign::LeaseStore> =
                std::sync::Arc::new(super::lease::S3Lease {
                    c,
                    bucket,
                    phase: plan.name_key.clone(),
                });
            Ok(Some(store))
        })
    }

    fn destroy<'a>(
        &'a self,
        plan: &'a Plan,
        catalog: &'a Catalog,
        opts: DestroyOpts,
    ) -> Fut<'a, Result<Destroyed, ProviderError>> {
        Box::pin(self.destroy_(plan, catalog, opts))
    }

    fn sync_ledger<'a>(&'a self, plan: &'a Plan) -> Fut<'a, Result<(), ProviderError>> {
        Box::pin(self.sync_ledger_(plan))
    }

    fn sync_campaign<'a>(&'a self, plan: &'a Plan) -> Fut<'a, Result<(), ProviderError>> {
        Box::pin(async move {
            let Some(c) = self.connect_to_share(plan).await? else {
                return Ok(());
            };
            let log = |l: &str| self.log(l);
            Ok(campaign_sync::pull(&c, plan, &log).await?)
        })
    }

    fn fetch_results<'a>(
        &'a self,
        plan: &'a Plan,
        only: Option<&'a str>,
    ) -> Fut<'a, Result<(), ProviderError>> {
        Box::pin(async move {
            let Some(c) = self.connect_to_share(plan).await? else {
                return Ok(());
            };
            let f = campaign_sync::fetch_results(&c, plan, only).await?;
            if f.fetched > 0 {
                self.log(&format!(
                    "{}: {} result(s) fetched from the bucket",
                    plan.name_key, f.fetched
                ));
            }
            if !f.missing.is_empty() {
                self.log(&format!(
                    "warning: {}: the bucket holds no result of {} ended task(s): {}{}",
                    plan.name_key,
                    f.missing.len(),
                    f.missing
                        .iter()
                        .take(5)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", "),
                    if f.missing.len() > 5 { ", ..." } else { "" }
                ));
            }
            Ok(())
        })
    }

    fn results_are_local(&self) -> bool {
        false
    }

    fn recorded_nodes(&self, plan: &Plan) -> usize {
        state::load(plan)
            .map(|s| s.nodes.iter().filter(|n| n.alive()).count())
            .unwrap_or(0)
    }

    fn lease<'a>(&'a self, plan: &'a Plan) -> Fut<'a, Result<Option<LeaseDoc>, ProviderError>> {
        Box::pin(async move {
            let c = self.connect(plan).await?;
            Ok(controller::lease(&c, plan).await?)
        })
    }

    fn detach<'a>(
        &'a self,
        plan: &'a Plan,
        catalog: &'a Catalog,
        req: &'a DetachRequest,
    ) -> Fut<'a, Result<Detached, ProviderError>> {
        Box::pin(async move {
            let c = self.connect(plan).await?;
            let log = |l: &str| self.log(l);
            controller::detach(&c, &log, plan, catalog, req, &self.settings.node_binaries).await
        })
    }

    fn live_log<'a>(
        &'a self,
        plan: &'a Plan,
        task: &'a str,
        attempt: u32,
        cursor: &'a mut crate::provider::live_log::LiveCursor,
    ) -> Fut<'a, Result<Vec<crate::provider::live_log::LogChunk>, ProviderError>> {
        Box::pin(async move {
            let Some(c) = self.connect_to_share(plan).await? else {
                return Ok(Vec::new());
            };
            Ok(super::live_log::read_plan(&c, plan, task, attempt, cursor).await?)
        })
    }

    fn controller_log<'a>(
        &'a self,
        plan: &'a Plan,
        from: u64,
    ) -> Fut<'a, Result<ControllerLog, ProviderError>> {
        Box::pin(async move {
            let c = self.connect(plan).await?;
            Ok(controller::controller_log(&c, plan, from).await?)
        })
    }

    fn request_stop<'a>(
        &'a self,
        plan: &'a Plan,
        req: &'a StopRequest,
    ) -> Fut<'a, Result<bool, ProviderError>> {
        Box::pin(async move {
            let c = self.connect(plan).await?;
            Ok(controller::request_stop(&c, plan, req).await?)
        })
    }

    fn stop_pending<'a>(&'a self, plan: &'a Plan) -> Fut<'a, Result<bool, ProviderError>> {
        Box::pin(async move {
            let c = self.connect(plan).await?;
            Ok(controller::stop_pending(&c, plan).await?)
        })
    }
}
