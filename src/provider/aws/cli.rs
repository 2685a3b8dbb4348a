//! The AWS side of `infra apply`, `run`, `status` and `destroy`. `app.rs`
//! loads and checks the plan (and the budget), then calls these.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::cfn::{self, Source, StackInfo};
use super::config::{self, AwsSettings, Clients};
use super::ec2;
use super::error::AwsError;
use super::executor::{self, AwsExecutor, GroupSpec};
use super::meter;
use super::s3;
use super::script;
use super::ssm::Poller;
use super::state::{self, AwsNode, AwsState};
use crate::app::{exit, AppError, Ctx};
use crate::catalog::Catalog;
use crate::cli::{OrderArg, RunArgs};
use crate::cost::ledger;
use crate::plan::{self, Plan};
use crate::report::progress::Reporter;
use crate::runner::journal::{self, Status};
use crate::runner::run::{self as runner, Paths, RunOptions};
use crate::runner::scheduler::Policy;
use crate::stacks::{self, names};
use crate::tasks::TaskDef;

impl From<AwsError> for AppError {
    fn from(e: AwsError) -> AppError {
        match e {
            AwsError::Usage(m) => AppError::Usage(m),
            other => AppError::Provider(other.to_string()),
        }
    }
}

fn env_f64(name: &str) -> Option<f64> {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v > 0.0)
}

/// Settings from the arguments, the plan and the environment, resolved once:
/// `AWS_ENDPOINT_URL` (every service), `AWS_MAX_ATTEMPTS`, and
/// `INFRA_POLL_SECONDS` (how often stacks, nodes and commands are polled).
pub fn settings(ctx: &Ctx, plan: &Plan) -> AwsSettings {
    let mut s = AwsSettings::new(ctx.region.clone().unwrap_or_else(|| plan.region.clone()));
    s.profile = ctx.profile.clone();
    s.endpoint = std::env::var("AWS_ENDPOINT_URL")
        .ok()
        .filter(|e| !e.trim().is_empty());
    if let Some(n) = env_f64("AWS_MAX_ATTEMPTS") {
        s.max_attempts = n as u32;
    }
    if let Some(p) = env_f64("INFRA_POLL_SECONDS") {
        s.poll = Duration::from_secs_f64(p.clamp(0.05, 60.0));
    }
    s
}

fn progress(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The tags every stack gets (CloudFormation passes them on to the
/// resources, which the sweep of `destroy` relies on).
fn stack_tags(plan: &Plan, base: bool) -> Vec<(String, String)> {
    let mut t = vec![(names::TAG_PROJECT.to_string(), plan.project.clone())];
    if base {
        t.push((names::TAG_STACK.to_string(), "base".into()));
    } else {
        t.push((names::TAG_PHASE.to_string(), plan.name_key.clone()));
    }
    t
}

fn confirm(yes: bool, question: &str, what: &str) -> Result<(), AppError> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(AppError::Usage(format!("{what}, and there is no terminal to ask for confirmation\n  (hint: review the changes above, then run again with --yes)")));
    }
    let _ = write!(std::io::stderr(), "{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    if matches!(line.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(AppError::Usage("not confirmed: nothing was changed".into()))
    }
}

/// Create or update one stack, showing its events; on failure the failing
/// resources, the rollback, and exit code 4.
async fn deploy(
    c: &Clients,
    yes: bool,
    name: &str,
    source: Source,
    params: &[(String, String)],
    tags: &[(String, String)],
) -> Result<StackInfo, AppError> {
    let long = Duration::from_secs(3 * 3600);
    let mut existing = cfn::describe(c, name).await?;
    if let Some(s) = &existing {
        if s.in_progress() {
            progress(&format!("stack {name} is {}; waiting for it", s.status));
            let w = cfn::wait(
                c,
                &s.id,
                "update",
                cfn::seen_events(c, &s.id).await,
                long,
                &mut progress,
            )
            .await?;
            existing = (w.stack.status != "DELETE_COMPLETE").then_some(w.stack);
        }
    }
    if let Some(s) = &existing {
        if s.dead() {
            progress(&format!(
                "stack {name} is {} from an earlier failed deployment: deleting it first",
                s.status
            ));
            let seen = cfn::seen_events(c, &s.id).await;
            cfn::delete(c, &s.id).await?;
            let w = cfn::wait(c, &s.id, "delete", seen, long, &mut progress).await?;
            if !w.ok {
                return Err(AppError::Provider(delete_failure(name, &w)));
            }
            existing = None;
        }
    }
    match existing {
        None => {
            progress(&format!("creating stack {name}"));
            let id = cfn::create(c, name, &source, params, tags).await?;
            let w = cfn::wait(c, &id, "create", Default::default(), long, &mut progress).await?;
            if !w.ok {
                return Err(AppError::Provider(cfn::failure_message("create", &w)));
            }
            progress(&format!("stack {name}: {}", w.stack.status));
            Ok(w.stack)
        }
        Some(s) => {
            let keep: Vec<String> = s.parameters.clone();
            match cfn::preview_update(c, name, &source, params, &keep, tags).await? {
                None => {
                    progress(&format!("stack {name} is up to date"));
                    Ok(s)
                }
                Some((cs, changes)) => {
                    progress(cfn::format_changes(name, &changes).trim_end());
                    if let Err(e) = confirm(
                        yes,
                        &format!("apply these changes to stack {name}?"),
                        &format!("stack {name} would change"),
                    ) {
                        cfn::discard_change_set(c, name, &cs).await;
                        return Err(e);
                    }
                    let seen = cfn::seen_events(c, &s.id).await;
                    cfn::execute_change_set(c, name, &cs).await?;
                    let w = cfn::wait(c, &s.id, "update", seen, long, &mut progress).await?;
                    if !w.ok {
                        return Err(AppError::Provider(cfn::failure_message("update", &w)));
                    }
                    progress(&format!("stack {name}: {}", w.stack.status));
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
struct Looked {
    bucket: String,
    security_group: Option<String>,
    vpc: Option<String>,
    fleets: Vec<String>,
}

fn looked_up(base: &StackInfo, compute: Option<&StackInfo>) -> Result<Looked, AppError> {
    let bucket = base.outputs.get("BucketName").cloned().ok_or_else(|| {
        AppError::Provider(format!(
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
/// the node wrapper, the setup script.
fn bundle_files(plan: &Plan) -> Result<s3::Files, AppError> {
    let mut files = s3::Files::new();
    let scripts = plan.root.join("scripts");
    s3::collect_dir(&scripts, "scripts", &mut files).map_err(|source| AppError::Io {
        path: scripts.clone(),
        source,
    })?;
    let tasks = plan.state_dir().join("tasks");
    s3::collect_dir(&tasks, "tasks", &mut files).map_err(|source| AppError::Io {
        path: tasks.clone(),
        source,
    })?;
    files.insert(
        script::WRAPPER_KEY.to_string(),
        script::WRAPPER.as_bytes().to_vec(),
    );
    files.insert("setup.sh".to_string(), plan.setup.join("\n").into_bytes());
    Ok(files)
}

async fn upload_bundle(
    c: &Clients,
    plan: &Plan,
    bucket: &str,
) -> Result<script::BundleRef, AppError> {
    let files = bundle_files(plan)?;
    let up = s3::upload_bundle(c, bucket, &plan.name_key, &files).await?;
    progress(&format!(
        "bundle s3://{bucket}/{}/_bundle: {} file(s), {} uploaded, {} removed",
        plan.name_key, up.files, up.uploaded, up.deleted
    ));
    Ok(up.bundle)
}

fn group_specs(plan: &Plan, catalog: &Catalog) -> BTreeMap<String, GroupSpec> {
    plan.node_groups
        .iter()
        .map(|g| {
            let t = catalog.get(&g.instance_type);
            (
                g.name.clone(),
                GroupSpec {
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

fn nodes_timeout(plan: &Plan) -> Duration {
    if let Some(s) = env_f64("INFRA_NODES_TIMEOUT_SECONDS") {
        return Duration::from_secs_f64(s);
    }
    let provisioning = plan
        .estimate
        .provisioning
        .unwrap_or(Duration::from_secs(600));
    (provisioning * 2).max(Duration::from_secs(900))
}

/// Wait until every node of every group is running and online in SSM;
/// name the ones that are not, and why, when time runs out.
async fn wait_for_nodes(
    c: &Clients,
    plan: &Plan,
    fleets: &[String],
    timeout: Duration,
) -> Result<Vec<state::Seen>, AppError> {
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
            progress(&line);
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
            return Err(AppError::Provider(msg));
        }
        tokio::time::sleep(c.settings.poll.max(Duration::from_millis(200))).await;
    }
}

fn new_state(plan: &Plan, looked: &Looked, names_: (&str, &str), nodes: Vec<AwsNode>) -> AwsState {
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

fn save(plan: &Plan, st: &mut AwsState) -> Result<(), AppError> {
    st.updated = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    state::save(plan, st).map_err(|source| AppError::Io {
        path: state::path(plan),
        source,
    })?;
    Ok(())
}

/// The nodes the state file knows that EC2 still lists (terminated ones
/// stay listed for a while, and keep their names); a state file from
/// another deployment (account, region) is ignored.
fn known_nodes(plan: &Plan, compute_stack: &str, seen: &[state::Seen]) -> Vec<AwsNode> {
    let mut nodes = state::load(plan)
        .filter(|s| s.compute_stack == compute_stack)
        .map(|s| s.nodes)
        .unwrap_or_default();
    nodes.retain(|n| seen.iter().any(|s| s.instance_id == n.instance_id));
    nodes
}

fn setup_hash(plan: &Plan) -> Option<String> {
    (!plan.setup.is_empty()).then(|| crate::provider::local::setup_hash(plan))
}

/// `infra apply` on AWS: base stack, compute stack, nodes up and online,
/// setup run, state recorded.
pub async fn apply(ctx: &Ctx, plan: &Plan, catalog: &Catalog, yes: bool) -> Result<i32, AppError> {
    let c = config::connect(&settings(ctx, plan)).await?;
    let rendered = stacks::render(plan, catalog).map_err(|e| AppError::Provider(e.to_string()))?;
    stacks::write(&plan.state_dir(), &rendered).map_err(|e| AppError::Provider(e.to_string()))?;
    // base: the bucket survives a deleted base stack; then it is not created again
    let prefix = names::bucket_prefix(&plan.project);
    // (an existing stack keeps its parameters' values: see `deploy`)
    let create_bucket = if s3::find_bucket(&c, &prefix, &c.settings.region)
        .await?
        .is_some()
        && cfn::describe(&c, &rendered.base.name)
            .await?
            .is_none_or(|s| s.dead())
    {
        "false"
    } else {
        "true"
    };
    let base_params = vec![("CreateBucket".to_string(), create_bucket.to_string())];
    if rendered.base.needs_upload {
        return Err(AppError::Provider(format!(
            "the base stack {} is over 51,200 bytes and cannot go through the bucket it creates",
            rendered.base.name
        )));
    }
    let base = deploy(
        &c,
        yes,
        &rendered.base.name,
        Source::Body(rendered.base.body.clone()),
        &base_params,
        &stack_tags(plan, true),
    )
    .await?;
    let looked = looked_up(&base, None)?;
    // compute
    let source = if rendered.compute.needs_upload {
        let key = format!(
            "_templates/{}-{}.json",
            rendered.compute.name,
            &s3::sha256_hex(rendered.compute.body.as_bytes())[..12]
        );
        s3::put(
            &c,
            &looked.bucket,
            &key,
            rendered.compute.body.clone().into_bytes(),
        )
        .await?;
        progress(&format!(
            "stack {} is {} bytes: deployed from s3://{}/{key}",
            rendered.compute.name,
            rendered.compute.body.len(),
            looked.bucket
        ));
        Source::Url(config::object_url(&c.settings, &looked.bucket, &key))
    } else {
        Source::Body(rendered.compute.body.clone())
    };
    let params = stacks::compute_parameters(plan, catalog, chrono::Utc::now());
    let compute = deploy(
        &c,
        yes,
        &rendered.compute.name,
        source,
        &params,
        &stack_tags(plan, false),
    )
    .await?;
    let looked = looked_up(&base, Some(&compute))?;
    // nodes
    let ready = wait_for_nodes(&c, plan, &looked.fleets, nodes_timeout(plan)).await?;
    let all = ec2::instances(&c, &plan.project, Some(&plan.name_key)).await?;
    let mut st = known_nodes(plan, &rendered.compute.name, &all);
    state::merge(&mut st, &all);
    let mut state_ = new_state(
        plan,
        &looked,
        (&rendered.base.name, &rendered.compute.name),
        st,
    );
    save(plan, &mut state_)?;
    // setup, once per node (the wrapper remembers)
    if let Some(hash) = setup_hash(plan) {
        let bundle = upload_bundle(&c, plan, &looked.bucket).await?;
        let poller = Poller::start(c.clone());
        let nodes: Vec<(String, String, String)> = state_
            .nodes
            .iter()
            .filter(|n| ready.iter().any(|r| r.instance_id == n.instance_id))
            .map(|n| (n.name.clone(), n.instance_id.clone(), n.private_ip.clone()))
            .collect();
        progress(&format!("running setup on {} node(s)", nodes.len()));
        executor::setup_nodes(
            &c,
            &poller,
            &bundle,
            &looked.bucket,
            &plan.name_key,
            &hash,
            &nodes,
        )
        .await
        .map_err(AppError::Provider)?;
    }
    let live: Vec<&AwsNode> = state_.nodes.iter().filter(|n| n.alive()).collect();
    let mut h = format!(
        "applied {}: stacks {} and {} up, {} node(s), bucket {}",
        plan.name_key,
        base.name,
        compute.name,
        live.len(),
        looked.bucket
    );
    for n in &live {
        h.push_str(&format!(
            "\n  {:<12} {} {} {} {} {}",
            n.name, n.instance_id, n.instance_type, n.market, n.az, n.private_ip
        ));
    }
    ctx.out(
        &h,
        json!({"plan": plan.name_key, "provider": "aws", "region": plan.region,
               "stacks": {"base": {"name": base.name, "status": base.status}, "compute": {"name": compute.name, "status": compute.status}},
               "bucket": looked.bucket, "security_group": looked.security_group, "vpc": looked.vpc, "fleets": looked.fleets,
               "nodes": live, "state": state::path(plan)}),
    );
    Ok(exit::OK)
}

/// The deployed phase, checked against the cloud: stacks, bucket, live
/// nodes (names from the state file, new instances named).
async fn deployed(c: &Clients, plan: &Plan) -> Result<(AwsState, Looked), AppError> {
    let base_name = names::base_stack_name(&plan.project);
    let compute_name = names::compute_stack_name(&plan.project, &plan.name_key);
    let not_applied = || {
        AppError::Provider(format!(
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
    let looked = looked_up(&base, Some(&compute))?;
    let seen = ec2::instances(c, &plan.project, Some(&plan.name_key)).await?;
    let nodes = known_nodes(plan, &compute_name, &seen);
    let mut st = new_state(plan, &looked, (&base_name, &compute_name), nodes);
    state::merge(&mut st.nodes, &seen);
    Ok((st, looked))
}

/// `infra run` on AWS: the same runner as locally, with `AwsExecutor`.
pub async fn run(
    ctx: &Ctx,
    plan: &Plan,
    catalog: &Catalog,
    tasks: Vec<TaskDef>,
    args: &RunArgs,
) -> Result<i32, AppError> {
    let c = config::connect(&settings(ctx, plan)).await?;
    let (mut st, looked) = deployed(&c, plan).await?;
    // what other machines recorded, then the nodes' time since the last
    // metering (idle since apply, or a run that crashed): the budget is
    // checked again against that
    let metered_now = sync_ledger(&c, plan, catalog, Some(&looked.bucket)).await;
    let metered_at = Instant::now();
    let (_, from) = ctx.catalog()?;
    crate::app::gate(ctx, plan, &tasks, catalog, &from)?;
    let alive: Vec<String> = st
        .nodes
        .iter()
        .filter(|n| n.state == "running")
        .map(|n| n.instance_id.clone())
        .collect();
    let online = if alive.is_empty() {
        HashSet::new()
    } else {
        ec2::ssm_online(&c, &alive).await?
    };
    let groups = group_specs(plan, catalog);
    let live: Vec<(String, String, String, String)> = st
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
    let offline: Vec<&str> = st
        .nodes
        .iter()
        .filter(|n| n.state == "running" && !online.contains(&n.instance_id))
        .map(|n| n.name.as_str())
        .collect();
    if !offline.is_empty() {
        progress(&format!(
            "not online in SSM, not used: {}",
            offline.join(", ")
        ));
    }
    save(plan, &mut st)?;
    let bundle = upload_bundle(&c, plan, &looked.bucket).await?;
    let ids: Vec<String> = live.iter().map(|l| l.2.clone()).collect();
    // what each instance costs by the hour, as metered (its zone's spot
    // price): tasks are charged at their own nodes' prices
    let metered_price: HashMap<String, f64> = metered_now
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
    let exec = AwsExecutor::start(
        executor::Setup {
            clients: c.clone(),
            bundle: bundle.clone(),
            bucket: looked.bucket.clone(),
            project: plan.project.clone(),
            name_key: plan.name_key.clone(),
            phase: plan.phase.clone(),
            groups: groups.clone(),
            state: st.clone(),
            state_path: state::path(plan),
            setup_hash: setup_hash(plan),
            metered_usd_per_hour: metered_price,
            replacement_wait: Duration::from_secs_f64(
                env_f64("INFRA_REPLACEMENT_WAIT_SECONDS").unwrap_or(600.0),
            ),
            node_check: (c.settings.poll * 5).max(Duration::from_secs(1)),
            log: Arc::new(|l: &str| progress(l)),
        },
        live.clone(),
    );
    // steps a dead `infra run` left running
    if !ids.is_empty() {
        let stopped = executor::reap(
            &c,
            &exec.poller,
            &bundle,
            &looked.bucket,
            &plan.name_key,
            &ids,
        )
        .await;
        if stopped > 0 {
            progress(&format!(
                "stopped {stopped} step(s) left running by an earlier run"
            ));
        }
    }
    if let Some(hash) = setup_hash(plan) {
        let nodes: Vec<(String, String, String)> = live
            .iter()
            .map(|l| (l.0.clone(), l.2.clone(), l.3.clone()))
            .collect();
        executor::setup_nodes(
            &c,
            &exec.poller,
            &bundle,
            &looked.bucket,
            &plan.name_key,
            &hash,
            &nodes,
        )
        .await
        .map_err(AppError::Provider)?;
    }
    let paths = Paths {
        state_dir: plan.state_dir(),
        results_dir: plan.results_dir(),
    };
    // the nodes also burn while the bundle uploads and setup runs
    let spent_before = ledger::spent(&ledger::read(&plan.root), Some(&plan.name_key))
        + hourly * metered_at.elapsed().as_secs_f64() / 3600.0;
    let watchdog = plan.budget.as_ref().map(|b| runner::Watchdog {
        budget_usd: b.usd,
        spent_before_usd: spent_before,
        hourly_usd: hourly,
        hard_stop: b.hard_stop,
        interval: ctx.watchdog_interval,
    });
    let opts = RunOptions {
        retry_failed: args.retry_failed,
        policy: Some(if args.order == OrderArg::Fifo {
            Policy::Fifo
        } else {
            Policy::LongestFirst
        }),
        retry: plan.retry.clone(),
        watchdog,
    };
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(None);
    let mut rep = Reporter::new();
    let summary = runner::run(
        tasks,
        exec.clone(),
        &paths,
        "aws",
        &opts,
        stop_rx,
        &mut |e| rep.event(e),
    )
    .await;
    rep.finish();
    let summary = summary?;
    let mut st = exec.state();
    save(plan, &mut st)?;
    let calls = json!({
        "poll_rounds": exec.poller.stats.rounds.load(std::sync::atomic::Ordering::Relaxed),
        "list_command_invocations": exec.poller.stats.list_calls.load(std::sync::atomic::Ordering::Relaxed),
        "send_command": exec.stats.send_command.load(std::sync::atomic::Ordering::Relaxed),
        "cancel_command": exec.stats.cancel_command.load(std::sync::atomic::Ordering::Relaxed),
        "describe_instances": exec.stats.describe_instances.load(std::sync::atomic::Ordering::Relaxed),
        "describe_instance_information": exec.stats.describe_instance_information.load(std::sync::atomic::Ordering::Relaxed),
    });
    if summary.budget_stop {
        progress("budget reached: deleting the compute stack");
        let _ = delete_stack(&c, &st.compute_stack).await;
    }
    // every node's lifetime up to now (or to their termination after a budget stop), at its spot price history
    if let Err(e) = meter::meter(&c, plan, catalog, Some(&looked.bucket)).await {
        progress(&format!(
            "warning: the spend of this run is not metered: {e}"
        ));
    }
    let mut h = format!(
        "{}: {} succeeded, {} failed, {} already done{} in {}\nresults in {}",
        plan.name_key,
        summary.succeeded,
        summary.failed,
        summary.already_done,
        if summary.pending > 0 {
            format!(", {} not run ({})", summary.pending, summary.reason)
        } else {
            String::new()
        },
        crate::report::progress::human_duration(summary.wall_seconds),
        plan::decode::rel(&plan.results_dir(), &ctx.cwd),
    );
    if !summary.failed_tasks.is_empty() {
        h.push_str(&format!("\nfailed: {}", summary.failed_tasks.join(", ")));
    }
    ctx.out(
        &h,
        json!({"plan": plan.name_key, "provider": "aws", "summary": summary, "api_calls": calls}),
    );
    Ok(if summary.budget_stop {
        exit::BUDGET
    } else if summary.interrupted {
        exit::INTERRUPTED
    } else if summary.failed > 0 {
        exit::TASK_FAILURES
    } else if summary.pending > 0 {
        exit::PROVIDER
    } else {
        exit::OK
    })
}

/// Merge the bucket's ledger into the local one and meter the phase's
/// instances up to now; failures are warnings (the run goes on, and the
/// next metering picks up the time).
async fn sync_ledger(
    c: &Clients,
    plan: &Plan,
    catalog: &Catalog,
    bucket: Option<&str>,
) -> Vec<ledger::Spend> {
    if let Some(bucket) = bucket {
        match meter::pull(c, bucket, &plan.root).await {
            Ok(n) if n > 0 => progress(&format!(
                "ledger: {n} entr(ies) from other machines (s3://{bucket}/{})",
                meter::PREFIX
            )),
            Ok(_) => {}
            Err(e) => progress(&format!(
                "warning: cannot read the ledger in the bucket: {e}"
            )),
        }
    }
    meter::meter(c, plan, catalog, bucket)
        .await
        .unwrap_or_else(|e| {
            progress(&format!("warning: cannot meter the phase's instances: {e}"));
            Vec::new()
        })
}

/// `infra budget`: merge the bucket's ledger of a deployed phase into the
/// local one (best effort: without credentials or a bucket, the local
/// ledger is what there is, and a note says so).
pub async fn pull_ledger(ctx: &Ctx, plan: &Plan) {
    let Some(st) = state::load(plan) else {
        return;
    };
    if st.bucket.is_empty() {
        return;
    }
    let pulled = match config::connect(&settings(ctx, plan)).await {
        Ok(c) => meter::pull(&c, &st.bucket, &plan.root).await,
        Err(e) => Err(e),
    };
    match pulled {
        Ok(0) => {}
        Ok(n) => eprintln!(
            "{}: {n} ledger entr(ies) merged from s3://{}/{}",
            plan.name_key,
            st.bucket,
            meter::PREFIX
        ),
        Err(e) => eprintln!(
            "{}: the bucket's ledger was not read ({e}); showing this machine's ledger only",
            plan.name_key
        ),
    }
}

/// `infra status` on AWS: stacks, nodes (type, market, AZ, state, SSM), tasks.
pub async fn status(ctx: &Ctx, plan: &Plan, tasks: &[TaskDef]) -> Result<i32, AppError> {
    let c = config::connect(&settings(ctx, plan)).await?;
    let base_name = names::base_stack_name(&plan.project);
    let compute_name = names::compute_stack_name(&plan.project, &plan.name_key);
    let base = cfn::describe(&c, &base_name).await?;
    let compute = cfn::describe(&c, &compute_name).await?;
    let seen = ec2::instances(&c, &plan.project, Some(&plan.name_key)).await?;
    let mut nodes = known_nodes(plan, &compute_name, &seen);
    state::merge(&mut nodes, &seen);
    let running: Vec<String> = nodes
        .iter()
        .filter(|n| n.state == "running")
        .map(|n| n.instance_id.clone())
        .collect();
    let online = if running.is_empty() {
        HashSet::new()
    } else {
        ec2::ssm_online(&c, &running).await?
    };
    let (jstate, _) = journal::read(&plan.state_dir().join("journal.jsonl"))?;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut failed = Vec::new();
    for t in tasks {
        let s = jstate.status_of(&t.key);
        *counts.entry(format!("{s:?}").to_lowercase()).or_insert(0) += 1;
        if s == Status::Failed {
            failed.push(json!({"task": t.id, "error": jstate.tasks.get(&t.key).and_then(|x| x.last_error.clone())}));
        }
    }
    let stack_line = |name: &str, s: &Option<StackInfo>| match s {
        Some(s) => format!("{name}: {}", s.status),
        None => format!("{name}: not deployed"),
    };
    let mut h = format!(
        "{} ({}): {} task(s), provider aws, region {}\n",
        plan.name_key,
        plan.name,
        tasks.len(),
        c.settings.region
    );
    h.push_str(&format!(
        "  stacks: {}; {}\n",
        stack_line(&base_name, &base),
        stack_line(&compute_name, &compute)
    ));
    if let Some(b) = base.as_ref().and_then(|b| b.outputs.get("BucketName")) {
        h.push_str(&format!("  bucket: {b}\n"));
    }
    h.push_str("  nodes:\n");
    let mut node_rows = Vec::new();
    for n in &nodes {
        let ssm = if online.contains(&n.instance_id) {
            "online"
        } else {
            "-"
        };
        h.push_str(&format!(
            "    {:<12} {:<20} {:<14} {:<10} {:<12} {:<11} ssm {:<7} {}\n",
            n.name, n.instance_id, n.instance_type, n.market, n.az, n.state, ssm, n.private_ip
        ));
        node_rows.push(json!({"node": n, "ssm_online": online.contains(&n.instance_id)}));
    }
    if nodes.is_empty() {
        h.push_str("    none\n");
    }
    let c_ = |k: &str| counts.get(k).copied().unwrap_or(0);
    h.push_str(&format!(
        "  tasks: {} done, {} failed, {} queued\n",
        c_("succeeded"),
        c_("failed"),
        c_("pending") + c_("running")
    ));
    for f in failed.iter().take(20) {
        h.push_str(&format!(
            "  failed: {} — {}\n",
            f["task"].as_str().unwrap_or(""),
            f["error"].as_str().unwrap_or("")
        ));
    }
    ctx.out(
        h.trim_end(),
        json!({"plan": plan.name_key, "provider": "aws", "stacks": {"base": base.map(|s| json!({"name": s.name, "status": s.status})),
               "compute": compute.map(|s| json!({"name": s.name, "status": s.status}))},
               "nodes": node_rows, "tasks": tasks.len(), "counts": counts, "failed": failed, "last_stop": jstate.last_stop}),
    );
    Ok(exit::OK)
}

async fn delete_stack(c: &Clients, name: &str) -> Result<bool, AppError> {
    let Some(s) = cfn::describe(c, name).await? else {
        return Ok(false);
    };
    progress(&format!("deleting stack {name}"));
    let seen = cfn::seen_events(c, &s.id).await;
    cfn::delete(c, &s.id).await?;
    let w = cfn::wait(
        c,
        &s.id,
        "delete",
        seen,
        Duration::from_secs(3 * 3600),
        &mut progress,
    )
    .await?;
    if !w.ok {
        return Err(AppError::Provider(delete_failure(name, &w)));
    }
    progress(&format!("stack {name}: DELETE_COMPLETE"));
    Ok(true)
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

/// Succeeded tasks of the journal whose results are not on this machine.
fn missing_results(plan: &Plan) -> Result<Vec<String>, AppError> {
    let (js, _) = journal::read(&plan.state_dir().join("journal.jsonl"))?;
    let mut missing: Vec<String> = js
        .tasks
        .values()
        .filter(|t| t.status == Status::Succeeded)
        .filter(|t| {
            let d = plan.results_dir().join(&t.id);
            !(d.join("runtime.json").is_file() && d.join("stdout.log").is_file())
        })
        .map(|t| t.id.clone())
        .collect();
    missing.sort();
    Ok(missing)
}

/// `infra destroy` on AWS.
pub async fn destroy(
    ctx: &Ctx,
    plan: &Plan,
    catalog: &Catalog,
    o: DestroyOpts,
) -> Result<i32, AppError> {
    let c = config::connect(&settings(ctx, plan)).await?;
    if o.delete_results {
        let missing = missing_results(plan)?;
        if !missing.is_empty() {
            return Err(AppError::Provider(format!(
                "--delete-results refused: {} finished task(s) have no results in {}: {}{}\n  (hint: nothing was deleted; fetch them first, or destroy without --delete-results)",
                missing.len(),
                plan::decode::rel(&plan.results_dir(), &ctx.cwd),
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
            s3::find_bucket(&c, &names::bucket_prefix(&plan.project), &c.settings.region).await?
        }
    };
    let mut deleted = Vec::new();
    if delete_stack(&c, &compute_name).await? {
        deleted.push(compute_name.clone());
    }
    if o.all && delete_stack(&c, &base_name).await? {
        deleted.push(base_name.clone());
    }
    // the bucket: kept unless asked, and then only the checked results
    let mut bucket_note = match &bucket {
        Some(b) => format!("bucket {b} kept (results stay there)"),
        None => "no bucket".to_string(),
    };
    if let (true, Some(b)) = (o.delete_results, &bucket) {
        let n = s3::delete_prefix(&c, b, &format!("{}/", plan.name_key)).await?;
        let _ = s3::delete_prefix(&c, b, &format!("{}/_bundle.manifest", plan.name_key)).await;
        bucket_note = format!("{n} object(s) of {} deleted from bucket {b}", plan.name_key);
        if o.all {
            let rest: Vec<(String, i64)> = s3::list(&c, b, "")
                .await?
                .into_iter()
                .filter(|(k, _)| !k.starts_with("_templates/") && !k.starts_with(meter::PREFIX))
                .collect();
            if rest.is_empty() {
                s3::delete_prefix(&c, b, "").await?;
                if s3::delete_bucket(&c, b).await? {
                    bucket_note = format!("bucket {b} emptied and deleted");
                }
            } else {
                let mut prefixes: Vec<&str> = rest
                    .iter()
                    .filter_map(|(k, _)| k.split('/').next())
                    .collect();
                prefixes.dedup();
                bucket_note.push_str(&format!(
                    "; bucket kept: it still holds {}",
                    prefixes.join(", ")
                ));
            }
        }
    }
    // the instances' lifetimes up to their termination
    sync_ledger(&c, plan, catalog, bucket.as_deref()).await;
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
            progress(&format!("could not remove: {e}"));
        }
        left = ec2::sweep(&c, &plan.project, phase, o.all).await?;
        // VPCs are not billable; they go with the base stack
        left.retain(|l| l.kind != "vpc" || !o.force);
    }
    if let Some(mut st) = state::load(plan) {
        for n in st.nodes.iter_mut() {
            n.state = "terminated".into();
        }
        let _ = save(plan, &mut st);
    }
    let results = plan::decode::rel(&plan.results_dir(), &ctx.cwd);
    let mut h = format!(
        "destroyed {}: {}; {}; local results kept in {results}",
        plan.name_key,
        if deleted.is_empty() {
            "no stack was deployed".to_string()
        } else {
            format!("deleted {}", deleted.join(", "))
        },
        bucket_note
    );
    for f in &forced {
        h.push_str(&format!("\n  removed {} {} ({})", f.kind, f.id, f.detail));
    }
    if left.is_empty() {
        h.push_str(&format!(
            "\nnothing billable tagged {}={}{} is left",
            names::TAG_PROJECT,
            plan.project,
            phase
                .map(|p| format!(", {}={p}", names::TAG_PHASE))
                .unwrap_or_default()
        ));
    } else {
        h.push_str("\nstill there (and possibly billed):");
        for l in &left {
            h.push_str(&format!("\n  {} {} ({})", l.kind, l.id, l.detail));
        }
    }
    ctx.out(
        &h,
        json!({"plan": plan.name_key, "provider": "aws", "deleted_stacks": deleted, "bucket": bucket, "bucket_note": bucket_note,
               "removed": forced, "leftovers": left, "results": plan.results_dir()}),
    );
    if left.is_empty() {
        Ok(exit::OK)
    } else {
        Err(AppError::Provider(format!(
            "{} resource(s) tagged with project {} are still there\n  (hint: `infra destroy {} --force{}` terminates them)",
            left.len(),
            plan.project,
            plan.name_key,
            if o.all { " --all" } else { "" }
        )))
    }
}
