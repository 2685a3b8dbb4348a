//! `infra plan` of a deployed phase: what `infra apply` would change, as
//! Terraform shows it (`+` add, `~` change in place, `-/+` replace, `-`
//! remove), and what the nodes would cost per hour then.

use serde::Serialize;

use crate::plan::Plan;
use crate::stacks::deployed::{self, Deployed};
use crate::stacks::diff::{diff, Action, ResourceChange};
use crate::stacks::Stacks;

#[derive(Debug, Serialize)]
pub struct ChangesView {
    /// When what is deployed was applied.
    pub applied_at: String,
    pub resources: Vec<ResourceChange>,
    pub add: usize,
    pub change: usize,
    pub replace: usize,
    pub remove: usize,
    /// What the nodes cost per hour: deployed, and after this plan.
    pub hourly_usd_deployed: f64,
    pub hourly_usd_planned: f64,
}

/// The changes from what is deployed to `stacks`; `None` when nothing of
/// the phase is deployed.
pub fn changes(plan: &Plan, stacks: &Stacks, hourly_usd: f64) -> Option<ChangesView> {
    let d: Deployed = deployed::read(&plan.state_dir())?;
    let mut resources = Vec::new();
    for (role, rendered) in [("base", &stacks.base), ("compute", &stacks.compute)] {
        let old = d.stacks.get(role).map(|s| &s.template);
        resources.extend(diff(&rendered.name, old, Some(&rendered.template)));
    }
    let count = |a: Action| resources.iter().filter(|c| c.action == a).count();
    Some(ChangesView {
        applied_at: d.applied_at.clone(),
        add: count(Action::Add),
        change: count(Action::Change),
        replace: count(Action::Replace),
        remove: count(Action::Remove),
        resources,
        hourly_usd_deployed: d.hourly_usd,
        hourly_usd_planned: hourly_usd,
    })
}

/// The changes as `infra plan` prints them.
pub fn text(c: &ChangesView) -> String {
    let mut h = format!("  deployed (applied {}):", c.applied_at);
    if c.resources.is_empty() {
        h.push_str(" no change; `infra apply` changes nothing\n");
        return h;
    }
    h.push_str(" `infra apply` would change\n");
    let id_w = c
        .resources
        .iter()
        .map(|r| r.logical_id.len())
        .max()
        .unwrap_or(0);
    let ty_w = c
        .resources
        .iter()
        .map(|r| r.resource_type.len())
        .max()
        .unwrap_or(0);
    for r in &c.resources {
        let props = if r.properties.is_empty() {
            String::new()
        } else {
            format!("  {}", r.properties.join(", "))
        };
        h.push_str(&format!(
            "    {:<3} {:<id_w$}  {:<ty_w$}  {}{}\n",
            r.action.mark(),
            r.logical_id,
            r.resource_type,
            r.stack,
            props,
        ));
    }
    let delta = c.hourly_usd_planned - c.hourly_usd_deployed;
    let delta = if delta.abs() < 0.005 {
        "no change".to_string()
    } else {
        format!(
            "{}${:.2}/h",
            if delta > 0.0 { "+" } else { "-" },
            delta.abs()
        )
    };
    h.push_str(&format!(
        "    {} to add, {} to change, {} to replace, {} to remove; nodes ${:.2}/h -> ${:.2}/h ({delta})\n",
        c.add, c.change, c.replace, c.remove, c.hourly_usd_deployed, c.hourly_usd_planned
    ));
    if c.replace > 0 {
        h.push_str("    (a replaced fleet or launch template starts new nodes: running steps on the old ones end)\n");
    }
    h
}
