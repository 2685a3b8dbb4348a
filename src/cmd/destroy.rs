//! `infra destroy`: the provider removes the phase's nodes (and stacks);
//! results stay; anything billable left is named, exit 4.

use serde::Serialize;

use super::context::Ctx;
use super::error::{exit, AppError};
use crate::provider::{DestroyOpts, Destroyed, ProviderError};
use crate::runner::lock;

#[derive(Debug, Serialize)]
pub struct DestroyView {
    pub plan: String,
    pub provider: String,
    #[serde(flatten)]
    pub destroyed: Destroyed,
    /// Where the results are kept, as the user sees it.
    pub results: String,
}

pub async fn destroy(ctx: &Ctx, name: Option<&str>, opts: DestroyOpts) -> Result<i32, AppError> {
    let Some(name) = name else {
        return Err(AppError::Usage(
            "name the phase to destroy: infra destroy <phase>".into(),
        ));
    };
    let plan = ctx.load(name)?;
    if lock::is_held(&plan.state_dir().join("run.lock")) {
        return Err(AppError::Usage(format!(
            "`infra run {name}` is still running\n  (hint: stop it with Ctrl-C first)"
        )));
    }
    let (catalog, _) = ctx.catalog()?;
    let provider = ctx.provider(&plan);
    // a controller elsewhere (another machine, a detached one) drives the
    // campaign: its steps are not stopped from here
    if let Ok(Some(store)) = provider.lease_store(&plan).await {
        if let Ok(Some((doc, _))) = store.read().await {
            let me = ctx.holder();
            let mine = doc.holder.pid == me.pid && doc.holder.host == me.host;
            if !mine && doc.live(&me, chrono::Utc::now()) {
                return Err(AppError::Provider(ProviderError::Failed(format!(
                    "{name} is controlled by {}: destroying its nodes would stop the steps it runs\n  (hint: `infra stop {name}` first, then `infra destroy {name}`)",
                    crate::campaign::lease::who(&doc.holder)
                ))));
            }
        }
    }
    let all = opts.all;
    let destroyed = provider.destroy(&plan, &catalog, opts).await?;
    if let Err(e) = crate::stacks::deployed::forget(&plan.state_dir(), all) {
        eprintln!(
            "warning: {} not updated: {e}",
            crate::stacks::deployed::path(&plan.state_dir()).display()
        );
    }
    let view = DestroyView {
        plan: plan.name_key.clone(),
        provider: provider.name().to_string(),
        destroyed,
        results: ctx.rel(&plan.results_dir()),
    };
    ctx.emit("destroy", &text(&view), &view);
    if view.destroyed.leftovers.is_empty() {
        Ok(exit::OK)
    } else {
        Err(AppError::Provider(ProviderError::Failed(
            view.destroyed.leftover_hint.clone(),
        )))
    }
}

/// What `infra destroy` shows.
pub fn text(v: &DestroyView) -> String {
    let d = &v.destroyed;
    let mut clauses = vec![d.removed.clone()];
    clauses.extend(d.notes.iter().cloned());
    let mut h = format!(
        "destroyed {}: {}; {} kept in {}",
        v.plan,
        clauses.join("; "),
        if d.remote_results {
            "local results"
        } else {
            "results"
        },
        v.results
    );
    for f in &d.forced {
        h.push_str(&format!("\n  removed {} {} ({})", f.kind, f.id, f.detail));
    }
    if let Some(checked) = &d.checked {
        if d.leftovers.is_empty() {
            h.push_str(&format!("\nnothing billable {checked} is left"));
        } else {
            h.push_str("\nstill there (and possibly billed):");
            for l in &d.leftovers {
                h.push_str(&format!("\n  {} {} ({})", l.kind, l.id, l.detail));
            }
        }
    }
    h
}
