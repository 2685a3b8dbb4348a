//! `infra apply`: the budget's gate, then the provider brings the nodes up.

use std::io::{BufRead, IsTerminal, Write};

use serde::Serialize;

use super::context::{gate, render_tasks, Ctx};
use super::error::{exit, AppError};
use crate::provider::{Applied, ProviderError};

#[derive(Debug, Serialize)]
pub struct ApplyView {
    pub plan: String,
    #[serde(flatten)]
    pub applied: Applied,
}

/// Ask on the terminal before a change (`--yes` skips the question; with no
/// terminal the change is refused, exit 2).
pub fn confirmer(yes: bool) -> impl Fn(&str, &str) -> Result<(), ProviderError> {
    move |question: &str, what: &str| {
        if yes {
            return Ok(());
        }
        if !std::io::stdin().is_terminal() {
            return Err(ProviderError::Usage(format!("{what}, and there is no terminal to ask for confirmation\n  (hint: review the changes above, then run again with --yes)")));
        }
        let _ = write!(std::io::stderr(), "{question} [y/N] ");
        let _ = std::io::stderr().flush();
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
        if matches!(line.trim(), "y" | "Y" | "yes") {
            Ok(())
        } else {
            Err(ProviderError::Usage(
                "not confirmed: nothing was changed".into(),
            ))
        }
    }
}

pub async fn apply(ctx: &Ctx, name: &str, yes: bool) -> Result<i32, AppError> {
    let (plan, catalog, from) = match super::saved_plan::read(ctx, name)? {
        // a plan saved by `infra plan -o`: exactly what was reviewed
        Some(saved) => super::saved_plan::load(ctx, &saved, name)?,
        None => ctx.prepare(name)?,
    };
    let (tasks, _) = render_tasks(&plan)?;
    gate(&plan, &tasks, &catalog, &from, true)?;
    let provider = ctx.provider(&plan);
    let confirm = confirmer(yes);
    let applied = provider.apply(&plan, &catalog, &confirm).await?;
    let view = ApplyView {
        plan: plan.name_key.clone(),
        applied,
    };
    ctx.emit("apply", &text(&view, &ctx.rel(&view.applied.state)), &view);
    Ok(exit::OK)
}

/// What `infra apply` shows: the stacks and nodes that are up.
pub fn text(v: &ApplyView, state: &str) -> String {
    let a = &v.applied;
    if a.stacks.is_empty() {
        let slots: u32 = a.nodes.iter().map(|n| n.slots).sum();
        return format!(
            "applied {}: {} {} node(s), {} slot(s) in {}",
            v.plan,
            a.nodes.len(),
            a.provider,
            slots,
            state
        );
    }
    let stacks: Vec<&str> = a.stacks.iter().map(|s| s.name.as_str()).collect();
    let mut h = format!(
        "applied {}: stacks {} up, {} node(s), bucket {}",
        v.plan,
        stacks.join(" and "),
        a.nodes.len(),
        a.bucket.as_deref().unwrap_or("-")
    );
    for n in &a.nodes {
        h.push_str(&format!(
            "\n  {:<12} {} {} {} {} {}",
            n.name,
            n.id,
            n.instance_type,
            n.market,
            n.zone.as_deref().unwrap_or("-"),
            n.address
        ));
    }
    h
}
