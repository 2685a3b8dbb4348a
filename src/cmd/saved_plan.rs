//! `infra plan <phase> -o FILE` saves the reviewed plan; `infra apply FILE`
//! applies exactly that: the plan's text as it was reviewed (later edits
//! of the plan file do not count), refused (exit 2, nothing changed) when
//! what is deployed changed since, or when the plan no longer renders the
//! same stacks (a refreshed catalog, another version of infra).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::context::Ctx;
use super::error::AppError;
use crate::catalog::Catalog;
use crate::plan::{Plan, ProviderKind};
use crate::stacks::deployed;

/// The top-level key that marks a saved plan.
const MARK: &str = "infra_saved_plan";

#[derive(Debug, Serialize, Deserialize)]
pub struct SavedPlan {
    pub infra_saved_plan: u32,
    /// The phase as reviewed (`phase15`, `phase15@local`).
    pub phase: String,
    /// The plan file it was read from, and its text then.
    pub plan_file: String,
    pub plan_text: String,
    pub provider: String,
    pub region: String,
    /// The digest of the stacks it renders (`None`: the local provider).
    pub stacks_digest: Option<String>,
    /// The digest of what was deployed when it was reviewed (`None`:
    /// nothing).
    pub deployed_digest: Option<String>,
    pub estimate_usd: f64,
    pub saved_at: String,
}

fn stacks_digest(plan: &Plan, catalog: &Catalog) -> Result<Option<String>, AppError> {
    if plan.provider != ProviderKind::Aws {
        return Ok(None);
    }
    let s = crate::stacks::render(plan, catalog)?;
    Ok(Some(deployed::digest_of(&s)))
}

fn deployed_digest(plan: &Plan) -> Option<String> {
    deployed::read(&plan.state_dir()).map(|d| d.digest)
}

/// Save the plan just reviewed to `out`.
pub fn save(
    ctx: &Ctx,
    plan: &Plan,
    catalog: &Catalog,
    estimate_usd: f64,
    out: &Path,
) -> Result<(), AppError> {
    let text = std::fs::read_to_string(&plan.source).map_err(super::error::io_err(&plan.source))?;
    let saved = SavedPlan {
        infra_saved_plan: 1,
        phase: plan.name_key.clone(),
        plan_file: plan.source.display().to_string(),
        plan_text: text,
        provider: plan.provider.as_str().to_string(),
        region: plan.region.clone(),
        stacks_digest: stacks_digest(plan, catalog)?,
        deployed_digest: deployed_digest(plan),
        estimate_usd,
        saved_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    };
    let path = if out.is_absolute() {
        out.to_path_buf()
    } else {
        ctx.cwd.join(out)
    };
    let mut bytes = serde_json::to_vec_pretty(&saved).unwrap_or_default();
    bytes.push(b'\n');
    std::fs::write(&path, bytes).map_err(super::error::io_err(&path))?;
    eprintln!(
        "saved the reviewed plan to {}; `infra apply {}` applies exactly it",
        ctx.rel(&path),
        ctx.rel(&path)
    );
    Ok(())
}

/// `name` as a saved plan, when it is a file that holds one.
pub fn read(ctx: &Ctx, name: &str) -> Result<Option<SavedPlan>, AppError> {
    let p = Path::new(name);
    let path = if p.is_absolute() {
        p.to_path_buf()
    } else {
        ctx.cwd.join(p)
    };
    if !path.is_file() {
        return Ok(None);
    }
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(None);
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return Ok(None);
    };
    if v.get(MARK).is_none() {
        return Ok(None);
    }
    let saved: SavedPlan = serde_json::from_value(v).map_err(|e| {
        AppError::Usage(format!(
            "{name} is not a plan saved by `infra plan -o`: {e}\n  (hint: save it again with `infra plan <phase> -o {name}`)"
        ))
    })?;
    if saved.infra_saved_plan != 1 {
        return Err(AppError::Usage(format!(
            "{name} was saved by another version of infra (format {})\n  (hint: save it again with `infra plan <phase> -o {name}`)",
            saved.infra_saved_plan
        )));
    }
    Ok(Some(saved))
}

/// The saved plan loaded and checked against what is deployed and what it
/// renders now: the plan `infra apply` applies, or why it must not.
pub fn load(ctx: &Ctx, saved: &SavedPlan, file: &str) -> Result<(Plan, Catalog, String), AppError> {
    let provider: ProviderKind = saved
        .provider
        .parse()
        .map_err(|_| AppError::Usage(format!("{file}: unknown provider {:?}", saved.provider)))?;
    let loaded =
        crate::plan::load::load_text(&saved.plan_text, Path::new(&saved.plan_file), &ctx.cwd)?;
    // the provider and region it was reviewed for, whatever this command line says
    let plan = ctx.completed(ctx.overridden(loaded, Some(provider), Some(&saved.region)))?;
    let (plan, catalog, from) = ctx.prepare_loaded(plan)?;
    let redo = format!(
        "review it again: `infra plan {} -o {file}`, then `infra apply {file}`",
        saved.plan_file
    );
    let now = deployed_digest(&plan);
    if now != saved.deployed_digest {
        let when = deployed::read(&plan.state_dir())
            .map(|d| format!("applied {}", d.applied_at))
            .unwrap_or_else(|| "destroyed".into());
        return Err(AppError::Usage(format!(
            "{file}: what is deployed of {} changed since the plan was saved at {} (now: {when}); nothing was applied\n  (hint: {redo})",
            plan.name_key, saved.saved_at
        )));
    }
    if stacks_digest(&plan, &catalog)? != saved.stacks_digest {
        return Err(AppError::Usage(format!(
            "{file}: the saved plan no longer renders the stacks that were reviewed (the catalog was refreshed, or infra changed); nothing was applied\n  (hint: {redo})"
        )));
    }
    Ok((plan, catalog, from))
}
