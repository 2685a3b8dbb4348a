//! Stacks and nodes of a phase on AWS: create or update a stack (showing
//! its events, asking before a change), delete one, wait for the nodes,
//! and the phase's recorded state. `provider.rs` strings them together.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use super::agent;
use super::cfn::{self, Source, StackInfo};
use super::config::Clients;
use super::ec2;
use super::executor::GroupSpec;
use super::node_commands::NodeKit;
use super::s3;
use super::state::{self, AwsNode, AwsState};
use crate::catalog::Catalog;
use crate::plan::Plan;
use crate::provider::{Confirm, ProviderError};
use crate::stacks::names;

/// The tags every stack gets (CloudFormation passes them on to the
/// resources, which the sweep of `destroy` relies on).
pub(super) fn stack_tags(plan: &Plan, base: bool) -> Vec<(String, String)> {
    let mut t = vec![(names::TAG_PROJECT.to_string(), plan.project.clone())];
    if base {
        t.push((names::TAG_STACK.to_string(), "base".into()));
    } else {
        t.push((names::TAG_PHASE.to_string(), plan.name_key.clone()));
    }
    t
}

/// Create or update one stack, showing its events; on failure the failing
/// resources, the rollback, and exit code 4.
pub(super) async fn deploy(
    c: &Clients,
    log: &dyn Fn(&str),
    confirm: &Confirm,
    name: &str,
    source: Source,
    params: &[(String, String)],
    tags: &[(String, String)],
) -> Result<StackInfo, ProviderError> {
    let long = Duration::from_secs(3 * 3600);
    let mut existing = cfn::describe(c, name).await?;
    if let Some(s) = &existing {
        if s.in_progress() {
            log(&format!("stack {name} is {}; waiting for it", s.status));
            let w = cfn::wait(
                c,
                &s.id,
                "update",
                cfn::seen_events(c, &s.id).await,
                long,
                &mut |l: &str| log(l),
            )
            .await?;
            existing = (w.stack.status != "DELETE_COMPLETE").then_some(w.stack);
        }
    }
    if let Some(s) = &existing {
        if s.dead() {
            log(&format!(
                "stack {name} is {} from an earlier failed deployment: deleting it first",
                s.status
            ));
            let seen = cfn::seen_events(c, &s.id).await;
            cfn::delete(c, &s.id).await?;
            let w = cfn::wait(c, &s.id, "delete", seen, long, &mut |l: &str| log(l)).await?;
            if !w.ok {
                return Err(ProviderError::Failed(delete_failure(name, &w)));
            }
            existing = None;
        }
    }
    match existing {
        None => {
            log(&format!("creating stack {name}"));
            let id = cfn::create(c, name, &source, params, tags).await?;
            let w = cfn::wait(
                c,
                &id,
                "create",
                Default::default(),
                long,
                &mut |l: &str| log(l),
            )
            .await?;
            if !w.ok {
                return Err(ProviderError::Failed(cfn::failure_message("create", &w)));
            }
            log(&format!("stack {name}: {}", w.stack.status));
            Ok(w.stack)
        }
        Some(s) => {
            let keep: Vec<String> = s.parameters.clone();
            match cfn::preview_update(c, name, &source, params, &keep, tags).await? {
                None => {
                    log(&format!("stack {name} is up to date"));
                    Ok(s)
                }
                Some((cs, changes)) => {
                    log(cfn::format_changes(name, &changes).trim_end());
                    if let Err(e) = confirm(
                        &format!("apply these changes to stack {name}?"),
                        &format!("stack {name} would change"),
                    ) {
                        cfn::discard_change_set(c, name, &cs).await;
                        return Err(e);
                    }
                    let seen = cfn::seen_events(c, &s.id).await;
                    cfn::execute_change_set(c, name, &cs).await?;
                    let w =
                        cfn::wait(c, &s.id, "update", seen, long, &mut |l: &str| log(l)).await?;
                    if !w.ok {
                        return Err(ProviderError::Failed(cfn::failure_message("update", &w)));
                    }
                    log(&format!("stack {name}: {}", w.stack.status));
                    Ok(w.stack)
                }
            }
        }
    }
}

fn delete_failure(name: &str, w: &cfn::Waited) -> String {
    let mut s = format!("failed to delete stack {name}: it is {}", w.stack.status);
    if let Some(r) = &w.stack.reason {
        s.push_str(&format!(" ({r})"));
    }
    if !w.failures.is_empty() {
        s.push_str("\n  blocked by:");
        for f in &w.failures {
            s.push_str(&format!("\n    {f}"));
        }
    }
    s.push_str(&format!(
        "\n  (hint: remove or empty what blocks it, then run `infra destroy` again; or keep those resources: \
         `aws cloudformation delete-stack --stack-name {name} --retain-resources <logical ids>`)"
    ));
    s
}

/// What the tool looks up instead of the user: the bucket, the security
/// group, the VPC (base stack outputs) and the fleets (compute outputs).
pub(super) struct Looked {
    pub bucket: String,
    pub security_group: Option<String>,
    pub vpc: Option<String>,
    pub fleets: Vec<String>,
}

pub(super) fn looked_up(
    base: &StackInfo,
    compute: Option<&StackInfo>,
) -> Result<Looked, ProviderError> {
    let bucket = base.outputs.get("BucketName").cloned().ok_or_else(|| {
        ProviderError::Failed(format!(
            "stack {} has no BucketName output\n  (hint: `infra apply` updates it)",
            base.name
        ))
    })?;
    Ok(Looked {
        bucket,
        security_group: base.outputs.get("SecurityGroupId").cloned(),
        vpc: base.outputs.get("VpcId").cloned(),
        fleets: compute
            .map(|c| {
                c.outputs
                    .iter()
                    .filter(|(k, _)| k.starts_with("Fleet") && k.ends_with("Id"))
                    .map(|(_, v)| v.clone())
                    .collect()
            })
            .unwrap_or_default(),
    })
}

/// The task bundle: the project's `scripts/`, the phase's task definitions,
/// the setup script. (The node agent is shipped on its own: agent.rs.)
fn bundle_files(plan: &Plan) -> Result<s3::Files, ProviderError> {
    let mut files = s3::Files::new();
    let scripts = plan.root.join("scripts");
    s3::collect_dir(&scripts, "scripts", &mut files).map_err(|source| ProviderError::Io {
        path: scripts.clone(),
        source,
    })?;
    let tasks = plan.state_dir().join("tasks");
    s3::collect_dir(&tasks, "tasks", &mut files).map_err(|source| ProviderError::Io {
        path: tasks.clone(),
        source,
    })?;
    files.insert("setup.sh".to_string(), plan.setup.join("\n").into_bytes());
    Ok(files)
}

/// Upload what the nodes need: the task bundle, and the node agent for each
/// architecture among the plan's groups (once per build).
pub(super) async fn node_kit(
    c: &Clients,
    log: &dyn Fn(&str),
    plan: &Plan,
    bucket: &str,
    binaries: &BTreeMap<String, String>,
) -> Result<NodeKit, ProviderError> {
    let files = bundle_files(plan)?;
    let up = s3::upload_bundle(c, bucket, &plan.name_key, &files).await?;
    log(&format!(
        "bundle s3://{bucket}/{}/_bundle: {} file(s), {} uploaded, {} removed",
        plan.name_key, up.files, up.uploaded, up.deleted
    ));
    let mut agents = BTreeMap::new();
    for arch in node_archs(plan) {
        let bin = agent::find(arch, binaries).map_err(|e| {
            ProviderError::Usage(format!("{e}\n  (hint: {})", agent::build_hint(arch)))
        })?;
        agents.insert(arch, agent::upload(c, bucket, &bin).await?);
    }
    Ok(
        NodeKit::new(up.bundle, agents, bucket, &plan.name_key)
            .with_watch(watch_spec(plan, bucket)),
    )
}

/// The spec of the nodes' idle watcher (`infra node watch`, src/node/
/// watch.rs): the lease to read and each group's `idle_shutdown_minutes`.
pub fn watch_spec(plan: &Plan, bucket: &str) -> serde_json::Value {
    let idle: BTreeMap<&str, u32> = plan
        .node_groups
        .iter()
        .map(|g| (g.name.as_str(), g.idle_shutdown_minutes))
        .collect();
    serde_json::json!({
        "bucket": bucket,
        "lease_key": super::layout::lease_key(&plan.name_key),
        "idle_minutes": idle,
        "default_idle_minutes": plan.node_groups.iter().map(|g| g.idle_shutdown_minutes).min()
            .unwrap_or(crate::plan::DEFAULT_IDLE_SHUTDOWN_MINUTES),
        "systemd": true,
    })
}

/// The CPU architectures of the plan's node groups.
pub fn node_archs(plan: &Plan) -> std::collections::BTreeSet<agent::Arch> {
    plan.node_groups
        .iter()
        .filter(|g| g.instance_type != "local")
        .map(|g| agent::Arch::of_instance_type(&g.instance_type))
        .collect()
}

pub(super) fn group_specs(plan: &Plan, catalog: &Catalog) -> BTreeMap<String, GroupSpec> {
    plan.node_groups
        .iter()
        .map(|g| {
            let t = catalog.get(&g.instance_type);
            (
                g.name.clone(),
                GroupSpec {
                    arch: super::agent::Arch::of_instance_type(&g.instance_type),
                    slots: g.slots,
                    gpus: g.gpus.or(t.map(|t| t.gpus)).unwrap_or(0),
                    vcpus: t.map(|t| t.vcpus).unwrap_or(1),
                    workers_per_slot: g.workers_per_slot,
                    hourly_usd: catalog
                        .price(&g.instance_type, &plan.region, g.market)
                        .map(|p| p.usd_per_hour)
                        .unwrap_or(0.0),
                },
            )
        })
        .collect()
}

pub(super) fn nodes_timeout(plan: &Plan, set: Option<Duration>) -> Duration {
    if let Some(s) = set {
        return s;
    }
    let provisioning = plan
        .estimate
        .provisioning
        .unwrap_or(Duration::from_secs(600));
    (provisioning * 2).max(Duration::from_secs(900))
}

/// Wait until every node of every group is running and online in SSM;
/// name the ones that are not, and why, when time runs out.
pub(super) async fn wait_for_nodes(
    c: &Clients,
    log: &dyn Fn(&str),
    plan: &Plan,
    fleets: &[String],
    timeout: Duration,
) -> Result<Vec<state::Seen>, ProviderError> {
    let started = Instant::now();
    let mut last = String::new();
    loop {
        let seen = ec2::instances(c, &plan.project, Some(&plan.name_key)).await?;
        let running: Vec<&state::Seen> = seen.iter().filter(|s| s.state == "running").collect();
        let ids: Vec<String> = running.iter().map(|s| s.instance_id.clone()).collect();
        let online = if ids.is_empty() {
            HashSet::new()
        } else {
            ec2::ssm_online(c, &ids).await?
        };
        let mut ready: Vec<state::Seen> = Vec::new();
        let mut line = Vec::new();
        let mut all = true;
        for g in &plan.node_groups {
            let up: Vec<&&state::Seen> = running.iter().filter(|s| s.group == g.name).collect();
            let on: Vec<&&state::Seen> = up
                .iter()
                .filter(|s| online.contains(&s.instance_id))
                .copied()
                .collect();
            line.push(format!(
                "{} {}/{} running, {}/{} online",
                g.name,
                up.len(),
                g.count,
                on.len(),
                g.count
            ));
            if (on.len() as u32) < g.count {
                all = false;
            }
            ready.extend(on.iter().map(|s| (**s).clone()));
        }
        let line = format!("nodes: {}", line.join("; "));
        if line != last {
            log(&line);
            last = line;
        }
        if all {
            return Ok(ready);
        }
        if started.elapsed() > timeout {
            let mut msg = format!(
                "not every node of {} came up within {} s:",
                plan.name_key,
                timeout.as_secs()
            );
            for g in &plan.node_groups {
                let mine: Vec<&state::Seen> = seen.iter().filter(|s| s.group == g.name).collect();
                let on = mine
                    .iter()
                    .filter(|s| s.state == "running" && online.contains(&s.instance_id))
                    .count();
                if (on as u32) < g.count {
                    msg.push_str(&format!(
                        "\n  group {}: {} of {} node(s) ready",
                        g.name, on, g.count
                    ));
                    for s in &mine {
                        let why = match (s.state.as_str(), online.contains(&s.instance_id)) {
                            ("running", true) => continue,
                            ("running", false) => "running but not online in SSM (agent not started, no route to SSM, or the instance role lacks AmazonSSMManagedInstanceCore)".to_string(),
                            (st, _) => format!("{st}{}", s.state_reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default()),
                        };
                        msg.push_str(&format!(
                            "\n    {} ({} {}): {why}",
                            s.instance_id, s.instance_type, s.market
                        ));
                    }
                    if (mine.len() as u32) < g.count {
                        msg.push_str(&format!(
                            "\n    {} node(s) never launched",
                            g.count as usize - mine.len().min(g.count as usize)
                        ));
                    }
                }
            }
            let problems = ec2::fleet_problems(c, fleets).await;
            if !problems.is_empty() {
                msg.push_str("\n  EC2 says:");
                for p in problems {
                    msg.push_str(&format!("\n    {p}"));
                }
            }
            msg.push_str(&format!("\n  (hint: `infra status {}` shows the nodes; spot capacity or price may be short in this zone; `infra destroy {}` removes what was created)", plan.name_key, plan.name_key));
            return Err(ProviderError::Failed(msg));
        }
        tokio::time::sleep(c.settings.poll.max(Duration::from_millis(200))).await;
    }
}

pub(super) fn new_state(
    plan: &Plan,
    looked: &Looked,
    names_: (&str, &str),
    nodes: Vec<AwsNode>,
) -> AwsState {
    AwsState {
        version: state::STATE_VERSION,
        project: plan.project.clone(),
        phase: plan.name_key.clone(),
        region: plan.region.clone(),
        base_stack: names_.0.to_string(),
        compute_stack: names_.1.to_string(),
        bucket: looked.bucket.clone(),
        security_group: looked.security_group.clone(),
        vpc: looked.vpc.clone(),
        nodes,
        updated: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    }
}

pub(super) fn save(plan: &Plan, st: &mut AwsState) -> Result<(), ProviderError> {
    st.updated = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    state::save(plan, st).map_err(|source| ProviderError::Io {
        path: state::path(plan),
        source,
    })?;
    Ok(())
}

/// The nodes the state file knows that EC2 still lists (terminated ones
/// stay listed for a while, and keep their names); a state file from
/// another deployment (account, region) is ignored.
pub(super) fn known_nodes(plan: &Plan, compute_stack: &str, seen: &[state::Seen]) -> Vec<AwsNode> {
    let mut nodes = state::load(plan)
        .filter(|s| s.compute_stack == compute_stack)
        .map(|s| s.nodes)
        .unwrap_or_default();
    nodes.retain(|n| seen.iter().any(|s| s.instance_id == n.instance_id));
    nodes
}

pub(super) fn setup_hash(plan: &Plan) -> Option<String> {
    (!plan.setup.is_empty()).then(|| crate::provider::local::setup_hash(plan))
}

pub(super) async fn delete_stack(
    c: &Clients,
    log: &dyn Fn(&str),
    name: &str,
) -> Result<bool, ProviderError> {
    let Some(s) = cfn::describe(c, name).await? else {
        return Ok(false);
    };
    log(&format!("deleting stack {name}"));
    let seen = cfn::seen_events(c, &s.id).await;
    cfn::delete(c, &s.id).await?;
    let w = cfn::wait(
        c,
        &s.id,
        "delete",
        seen,
        Duration::from_secs(3 * 3600),
        &mut |l: &str| log(l),
    )
    .await?;
    if !w.ok {
        return Err(ProviderError::Failed(delete_failure(name, &w)));
    }
    log(&format!("stack {name}: DELETE_COMPLETE"));
    Ok(true)
}

/// Instances of `ids` online in SSM.
pub(super) async fn online(
    c: &Clients,
    ids: Vec<String>,
) -> Result<HashSet<String>, ProviderError> {
    if ids.is_empty() {
        return Ok(HashSet::new());
    }
    Ok(ec2::ssm_online(c, &ids).await?)
}

/// Create or update the project's base stack (network, role, bucket).
pub(super) async fn deploy_base(
    c: &Clients,
    log: &dyn Fn(&str),
    confirm: &Confirm,
    plan: &Plan,
    rendered: &crate::stacks::Stacks,
) -> Result<StackInfo, ProviderError> {
    // base: the bucket survives a deleted base stack; then it is not created again
    let prefix = names::bucket_prefix(&plan.project);
    // (an existing stack keeps its parameters' values: see `deploy`)
    let create_bucket = if s3::find_bucket(c, &prefix, &c.settings.region)
        .await?
        .is_some()
        && cfn::describe(c, &rendered.base.name)
            .await?
            .is_none_or(|s| s.dead())
    {
        "false"
    } else {
        "true"
    };
    let base_params = vec![("CreateBucket".to_string(), create_bucket.to_string())];
    if rendered.base.needs_upload {
        return Err(ProviderError::Failed(format!(
            "the base stack {} is over 51,200 bytes and cannot go through the bucket it creates",
            rendered.base.name
        )));
    }
    let base = deploy(
        c,
        log,
        confirm,
        &rendered.base.name,
        Source::Body(rendered.base.body.clone()),
        &base_params,
        &stack_tags(plan, true),
    )
    .await?;
    Ok(base)
}
