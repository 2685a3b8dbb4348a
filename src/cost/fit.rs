//! What would fit a budget the estimate exceeds: `infra plan` (and the
//! gate of apply and run) says by how much it is over, and what would fit
//! instead, each estimated the same way: the cheapest region of the
//! catalog that prices every group, fewer hours of node time, fewer nodes
//! in a group (the same tasks on fewer nodes take longer).

use super::estimate::{estimate, Estimate};
use crate::catalog::Catalog;
use crate::plan::Plan;
use crate::tasks::TaskDef;

/// The lines to show; empty when the estimate fits `remaining`.
pub fn what_fits(
    plan: &Plan,
    tasks: &[&TaskDef],
    catalog: &Catalog,
    from: &str,
    est: &Estimate,
    remaining: f64,
) -> Vec<String> {
    if est.total_usd <= remaining + 1e-9 || !est.unpriced.is_empty() {
        return Vec::new();
    }
    let mut out = vec![format!(
        "over by ${:.2}: the estimate ${:.2}, ${:.2} left to spend",
        est.total_usd - remaining,
        est.total_usd,
        remaining.max(0.0)
    )];
    // the cheapest region that prices every group
    let mut best: Option<(f64, String)> = None;
    for r in catalog.regions() {
        if r == plan.region {
            continue;
        }
        let mut p = plan.clone();
        p.region = r.to_string();
        let e = estimate(&p, tasks, catalog, from);
        if !e.unpriced.is_empty() || e.total_usd <= 0.0 {
            continue;
        }
        if best.as_ref().is_none_or(|(usd, _)| e.total_usd < *usd) {
            best = Some((e.total_usd, r.to_string()));
        }
    }
    if let Some((usd, r)) = best.filter(|(usd, _)| *usd <= remaining) {
        out.push(format!(
            "region {r}, the cheapest in the catalog for these types: ${usd:.2} (set \"region\": \"{r}\")"
        ));
    }
    // fewer hours of node time
    if let Some(hours) = est.hours.filter(|h| *h > 0.0 && est.hourly_usd > 0.0) {
        let fit = remaining / est.hourly_usd;
        if fit > 0.0 {
            out.push(format!(
                "at most {:.1} h of the nodes (the estimate is {:.1} h at ${:.2}/h): fewer or shorter tasks",
                fit, hours, est.hourly_usd
            ));
        }
    }
    // fewer nodes in one group
    for (i, g) in plan.node_groups.iter().enumerate() {
        for count in (1..g.count).rev() {
            let mut p = plan.clone();
            p.node_groups[i].count = count;
            let e = estimate(&p, tasks, catalog, from);
            if e.total_usd <= remaining + 1e-9 {
                out.push(format!(
                    "group {}: {count} node(s) instead of {}: ${:.2}{}",
                    g.name,
                    g.count,
                    e.total_usd,
                    e.hours
                        .map(|h| format!(" over {h:.1} h"))
                        .unwrap_or_default()
                ));
                break;
            }
        }
    }
    out
}
