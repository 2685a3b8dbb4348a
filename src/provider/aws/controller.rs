//! A detached campaign on AWS, the user's side and the bucket's objects:
//! `--detach` uploads the campaign package (`<phase>/_state/campaign/`: the
//! plan, its templates, the scripts, the journal so far, and the command
//! lines to run) and the Linux build of infra, then creates the
//! controller's stack (`stacks::controller`) and returns; `attach` reads
//! `<phase>/_state/controller.log`, `stop` writes `<phase>/_state/stop.json`,
//! `status` reads `<phase>/_state/lease.json`. The controller itself is
//! `infra controller` (cmd/controller.rs).

use serde::{Deserialize, Serialize};

use super::agent::{self, Arch};
use super::cfn::{self, Source};
use super::config::Clients;
use super::error::AwsError;
use super::layout;
use super::s3;
use crate::campaign::{LeaseDoc, StopRequest};
use crate::catalog::Catalog;
use crate::plan::Plan;
use crate::provider::{ControllerCost, ControllerLog, DetachRequest, Detached, ProviderError};
use crate::stacks::{self, controller as cstack, names};

/// The package's file naming what the controller runs.
pub const PACKAGE_SPEC: &str = "controller.json";

/// `controller.json` of the package.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PackageSpec {
    /// The command lines to run in order, each without the program name.
    pub commands: Vec<Vec<String>>,
    /// Options every command line gets (`--provider`, `--region`).
    pub global: Vec<String>,
    /// The plan file, by its path in the package.
    pub plan: String,
    /// Tear the compute stack down at the end, whatever the commands left
    /// (false only with `up --keep`).
    pub teardown: bool,
}

/// The bucket of the plan's project in its region, if it exists.
pub async fn bucket(c: &Clients, plan: &Plan) -> Result<Option<String>, AwsError> {
    s3::find_bucket(c, &names::bucket_prefix(&plan.project), &c.settings.region).await
}

/// The files of the campaign package, by their path in the project folder.
pub fn package_files(plan: &Plan, spec: &PackageSpec) -> Result<s3::Files, ProviderError> {
    let mut files = s3::Files::new();
    let rel = |p: &std::path::Path| -> Result<String, ProviderError> {
        p.strip_prefix(&plan.root)
            .map(|r| r.to_string_lossy().replace('\\', "/"))
            .map_err(|_| {
                ProviderError::Usage(format!(
                    "{} is outside the project folder {}: a detached controller gets only the project's files\n  (hint: move it under the project folder)",
                    p.display(),
                    plan.root.display()
                ))
            })
    };
    let add = |path: &std::path::Path, files: &mut s3::Files| -> Result<(), ProviderError> {
        let key = rel(path)?;
        let bytes = std::fs::read(path).map_err(ProviderError::io(path))?;
        files.insert(key, bytes);
        Ok(())
    };
    add(&plan.source, &mut files)?;
    // every template the patterns use
    let mut seen = std::collections::BTreeSet::new();
    for p in plan.patterns() {
        let t = plan.template_path(&p.backend);
        if seen.insert(t.clone()) && t.is_file() {
            add(&t, &mut files)?;
        }
    }
    let scripts = plan.root.join("scripts");
    s3::collect_dir(&scripts, "scripts", &mut files).map_err(ProviderError::io(&scripts))?;
    // the journal so far: the controller continues the campaign where it is
    let journal = plan.state_dir().join("journal.jsonl");
    if journal.is_file() {
        add(&journal, &mut files)?;
    }
    files.insert(
        PACKAGE_SPEC.to_string(),
        serde_json::to_vec_pretty(spec).unwrap_or_default(),
    );
    Ok(files)
}

/// Replace the package under `<phase>/_state/campaign/`.
async fn upload_package(
    c: &Clients,
    bucket: &str,
    phase: &str,
    files: &s3::Files,
) -> Result<(), AwsError> {
    let prefix = layout::campaign_prefix(phase);
    for (key, _) in s3::list(c, bucket, &prefix).await? {
        if !files.contains_key(&key[prefix.len()..]) {
            delete(c, bucket, &key).await?;
        }
    }
    for (rel, bytes) in files {
        s3::put(c, bucket, &format!("{prefix}{rel}"), bytes.clone()).await?;
    }
    Ok(())
}

pub async fn delete(c: &Clients, bucket: &str, key: &str) -> Result<(), AwsError> {
    c.s3.delete_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(super::error::api(format!("delete s3://{bucket}/{key}")))?;
    Ok(())
}

/// `--detach` on AWS: the base stack (for the bucket), the build of infra,
/// the package, and the controller's stack; returns once CloudFormation
/// has taken the stack (the instance starts on its own).
pub async fn detach(
    c: &Clients,
    log: &dyn Fn(&str),
    plan: &Plan,
    catalog: &Catalog,
    req: &DetachRequest,
    binaries: &std::collections::BTreeMap<String, String>,
) -> Result<Detached, ProviderError> {
    let name = cstack::stack_name(plan);
    if let Some(s) = cfn::describe(c, &name).await? {
        if !s.dead() && s.status != "DELETE_COMPLETE" {
            return Err(ProviderError::Failed(format!(
                "a controller of {} runs already (stack {name}, {})\n  (hint: `infra attach {}` follows it, `infra stop {}` stops it)",
                plan.name_key, s.status, plan.name_key, plan.name_key
            )));
        }
        if s.dead() {
            cfn::delete(c, &s.id).await?;
        }
    }
    let (itype, usd) = cstack::instance_type(plan, catalog).ok_or_else(|| {
        ProviderError::Failed(format!(
            "the catalog prices no x86_64 type with {} GiB in {}: no controller can be chosen",
            cstack::MIN_MEMORY_GIB,
            plan.region
        ))
    })?;
    // the bucket comes with the base stack
    let rendered = stacks::render(plan, catalog)?;
    let phase = plan.name_key.clone();
    let refuse = move |q: &str, what: &str| -> Result<(), ProviderError> {
        Err(ProviderError::Usage(format!(
            "{q}\n{what}\n  (hint: `infra apply {phase}` first: --detach does not change a deployed base stack)"
        )))
    };
    let bin = agent::find(Arch::X86_64, binaries).map_err(|e| {
        ProviderError::Usage(format!(
            "{e}\n  (hint: {})",
            agent::build_hint(Arch::X86_64)
        ))
    })?;
    // the build is hashed while the base stack is looked at (or created)
    let (base, sha) = tokio::join!(
        super::provider::deploy_base(c, log, &refuse, plan, &rendered),
        agent::hash(&bin)
    );
    let looked = super::deploy::looked_up(&base?, None)?;
    let bucket = looked.bucket;
    let agent = agent::upload_hashed(c, &bucket, &bin, sha?).await?;
    // the plan by its path in the package (a phase name or a path on this
    // machine would not resolve there)
    let plan_arg = plan
        .source
        .strip_prefix(&plan.root)
        .map(|p| p.to_string_lossy().replace('\\', "/"))
        .unwrap_or_else(|_| plan.name_key.clone());
    let commands = req
        .commands
        .iter()
        .map(|c| {
            let mut c = c.clone();
            if c.len() > 1 {
                c[1] = plan_arg.clone();
            }
            c
        })
        .collect();
    let spec = PackageSpec {
        plan: plan_arg,
        commands,
        global: req.global.clone(),
        teardown: !req.commands.iter().any(|c| c.iter().any(|a| a == "--keep")),
    };
    let files = package_files(plan, &spec)?;
    upload_package(c, &bucket, &plan.name_key, &files).await?;
    // a stop request of an earlier campaign would stop this one at once
    delete(c, &bucket, &layout::stop_key(&plan.name_key)).await?;
    delete(c, &bucket, &layout::controller_log_key(&plan.name_key)).await?;
    log(&format!(
        "campaign package: {} file(s) in s3://{bucket}/{}",
        files.len(),
        layout::campaign_prefix(&plan.name_key)
    ));
    let stack = cstack::render(plan, catalog)?;
    let dir = plan.state_dir().join("stacks");
    std::fs::create_dir_all(&dir).map_err(ProviderError::io(&dir))?;
    let file = dir.join("controller.json");
    std::fs::write(&file, &stack.body).map_err(ProviderError::io(&file))?;
    let params = vec![
        ("AgentKey".to_string(), agent.key.clone()),
        ("AgentSha256".to_string(), agent.sha256.clone()),
    ];
    log(&format!("creating stack {name} ({itype})"));
    cfn::create(
        c,
        &name,
        &Source::Body(stack.body.clone()),
        &params,
        &cstack::tags(plan),
    )
    .await?;
    Ok(Detached {
        place: format!("aws (the {itype} instance of stack {name}, starting)"),
        pid: None,
        log: format!(
            "s3://{bucket}/{}",
            layout::controller_log_key(&plan.name_key)
        ),
        stack: Some(name),
        cost: Some(ControllerCost {
            instance_type: itype,
            usd_per_hour: usd,
            hours: req.hours,
            usd: req.hours.map(|h| h * usd),
            why: cstack::why(),
        }),
    })
}

/// The lease in the bucket, if any.
pub async fn lease(c: &Clients, plan: &Plan) -> Result<Option<LeaseDoc>, AwsError> {
    let Some(bucket) = bucket(c, plan).await? else {
        return Ok(None);
    };
    Ok(s3::get(c, &bucket, &layout::lease_key(&plan.name_key))
        .await?
        .and_then(|b| serde_json::from_slice(&b).ok()))
}

/// Whether the controller's stack is there (being created or running).
pub async fn controller_running(c: &Clients, plan: &Plan) -> Result<bool, AwsError> {
    Ok(cfn::describe(c, &cstack::stack_name(plan))
        .await?
        .is_some_and(|s| !s.dead() && s.status != "DELETE_COMPLETE"))
}

/// The controller's log from byte `from`.
pub async fn controller_log(
    c: &Clients,
    plan: &Plan,
    from: u64,
) -> Result<ControllerLog, AwsError> {
    let running = controller_running(c, plan).await?;
    let Some(bucket) = bucket(c, plan).await? else {
        return Ok(ControllerLog {
            bytes: Vec::new(),
            running,
        });
    };
    let key = layout::controller_log_key(&plan.name_key);
    let bytes = s3::get(c, &bucket, &key).await?.unwrap_or_default();
    let bytes = bytes
        .get(from as usize..)
        .map(<[u8]>::to_vec)
        .unwrap_or_default();
    Ok(ControllerLog { bytes, running })
}

/// Write the stop request when a controller runs; false when none does.
pub async fn request_stop(c: &Clients, plan: &Plan, req: &StopRequest) -> Result<bool, AwsError> {
    let live_lease = lease(c, plan)
        .await?
        .is_some_and(|l| !l.expired(chrono::Utc::now()));
    if !live_lease && !controller_running(c, plan).await? {
        return Ok(false);
    }
    let Some(bucket) = bucket(c, plan).await? else {
        return Ok(false);
    };
    s3::put(
        c,
        &bucket,
        &layout::stop_key(&plan.name_key),
        serde_json::to_vec_pretty(req).unwrap_or_default(),
    )
    .await?;
    Ok(true)
}

/// The stop request is still there and someone may still act on it.
pub async fn stop_pending(c: &Clients, plan: &Plan) -> Result<bool, AwsError> {
    let Some(bucket) = bucket(c, plan).await? else {
        return Ok(false);
    };
    let key = layout::stop_key(&plan.name_key);
    if s3::get(c, &bucket, &key).await?.is_none() {
        return Ok(false);
    }
    let live_lease = lease(c, plan)
        .await?
        .is_some_and(|l| !l.expired(chrono::Utc::now()));
    if live_lease || controller_running(c, plan).await? {
        return Ok(true);
    }
    delete(c, &bucket, &key).await?;
    Ok(false)
}
