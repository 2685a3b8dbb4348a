//! `infra plan`: validate, render tasks (and stacks), schedule, estimate,
//! and the budget's verdict. Changes nothing but the rendered files.

use std::collections::HashSet;

use serde::Serialize;

use super::context::{held, journal_path, remaining_with, render_tasks_warned, spent, Ctx};
use super::error::AppError;
use crate::cost::estimate as est;
use crate::plan::NodeGroup;
use crate::report::progress::human_duration;
use crate::runner::journal;
use crate::stacks;
use crate::tasks::TaskDef;

#[derive(Debug, Serialize)]
pub struct PlanView {
    pub plan: String,
    pub name: String,
    /// The plan file, as the user sees it.
    pub file: String,
    pub phase: String,
    pub project: String,
    pub provider: String,
    pub region: String,
    pub tasks: usize,
    /// Task definition files written (new or different) this time.
    pub written: usize,
    pub remaining: usize,
    /// Completed tasks whose definition changed since they ran
    /// (`infra run --changed` runs them again).
    pub changed: usize,
    /// Where the task definitions are.
    pub tasks_dir: String,
    pub layers: Vec<LayerRow>,
    pub node_groups: Vec<NodeGroup>,
    /// Fields of the plan no template reads.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    pub schedule: Option<Schedule>,
    pub stacks: Option<StacksView>,
    /// Slurm: the holder job each node group submits per allocation.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allocations: Vec<crate::provider::slurm::argv::AllocLine>,
    /// What `infra apply` would change of what is deployed (AWS).
    pub changes: Option<super::plan_changes::ChangesView>,
    pub estimate: est::Estimate,
    pub verdict: est::Verdict,
}

#[derive(Debug, Serialize)]
pub struct LayerRow {
    pub id: String,
    pub name: String,
    pub priority: Option<String>,
    pub tasks: usize,
    pub grid_cells: usize,
    /// The first few pattern ids.
    pub sample: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Schedule {
    pub makespan_seconds: f64,
    pub lower_bound_seconds: f64,
}

#[derive(Debug, Serialize)]
pub struct StacksView {
    /// Where they were written.
    pub dir: String,
    pub list: Vec<StackView>,
}

#[derive(Debug, Serialize)]
pub struct StackView {
    pub name: String,
    pub bytes: usize,
    pub needs_upload: bool,
    pub resources: Vec<ResourceRow>,
}

#[derive(Debug, Serialize)]
pub struct ResourceRow {
    pub logical_id: String,
    #[serde(rename = "type")]
    pub resource_type: String,
    pub properties: String,
}

pub fn plan(ctx: &Ctx, name: &str, out: Option<&std::path::Path>) -> Result<PlanView, AppError> {
    let (plan, catalog, prices_from) = ctx.prepare(name)?;
    let (tasks, written, warnings) = render_tasks_warned(&plan)?;
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    let all: Vec<&TaskDef> = tasks.iter().collect();
    let sim = est::schedule(&plan, &all);
    // completed tasks whose result is gone run again: still to run
    let state = journal::read(&journal_path(&plan))
        .map(|(s, _)| s)
        .unwrap_or_default();
    let results_local = ctx.provider(&plan).results_are_local();
    let done = super::rerun::completed_tasks(&plan, &state, &tasks, results_local);
    let gone: HashSet<String> = tasks
        .iter()
        .filter(|t| done.gone.contains(&t.id))
        .map(|t| t.key.clone())
        .collect();
    let left = remaining_with(&plan, &tasks, &gone);
    let estimate = est::estimate(&plan, &left, &catalog, &prices_from);
    let mut verdict = est::verdict_held(&plan, &estimate, spent(&plan)?, held(&plan)?);
    if let Some(rem) = verdict.remaining_usd {
        verdict.fits =
            crate::cost::fit::what_fits(&plan, &left, &catalog, &prices_from, &estimate, rem);
    }
    let slurm = plan.provider == crate::plan::ProviderKind::Slurm;
    let deployable = !slurm && plan.node_groups.iter().all(|g| g.instance_type != "local");
    let mut changes = None;
    let stacks = if deployable {
        let st = stacks::render(&plan, &catalog)?;
        // `write` puts the files under `<dir>/stacks/`
        stacks::write(&plan.state_dir(), &st)?;
        if plan.provider == crate::plan::ProviderKind::Aws {
            let hourly = est::estimate(&plan, &[], &catalog, &prices_from).hourly_usd;
            changes = super::plan_changes::changes(&plan, &st, hourly);
        }
        Some(StacksView {
            dir: ctx.rel(&plan.state_dir().join("stacks")),
            list: [&st.base, &st.compute]
                .iter()
                .map(|s| StackView {
                    name: s.name.clone(),
                    bytes: s.body.len(),
                    needs_upload: s.needs_upload,
                    resources: s
                        .summary()
                        .into_iter()
                        .map(|r| ResourceRow {
                            logical_id: r.logical_id,
                            resource_type: r.resource_type,
                            properties: r.key_properties,
                        })
                        .collect(),
                })
                .collect(),
        })
    } else {
        None
    };
    let view = PlanView {
        plan: plan.name_key.clone(),
        name: plan.name.clone(),
        file: ctx.rel(&plan.source),
        phase: plan.phase.clone(),
        project: plan.project.clone(),
        provider: plan.provider.as_str().to_string(),
        region: plan.region.clone(),
        tasks: tasks.len(),
        written,
        remaining: left.len(),
        changed: done.changed.len(),
        tasks_dir: ctx.rel(&plan.state_dir().join("tasks")),
        layers: plan
            .layers
            .iter()
            .map(|l| LayerRow {
                id: l.id.clone(),
                name: l.name.clone(),
                priority: l.priority.clone(),
                tasks: l.patterns.len(),
                grid_cells: l.grid_cells,
                sample: l.patterns.iter().take(3).map(|p| p.id.clone()).collect(),
            })
            .collect(),
        node_groups: plan.node_groups.clone(),
        warnings,
        schedule: sim.map(|s| Schedule {
            makespan_seconds: s.makespan,
            lower_bound_seconds: s.lower_bound,
        }),
        stacks,
        allocations: if slurm {
            crate::provider::slurm::argv::plan_lines(&plan)
        } else {
            Vec::new()
        },
        changes,
        estimate,
        verdict,
    };
    if let Some(out) = out {
        super::saved_plan::save(ctx, &plan, &catalog, view.estimate.total_usd, out)?;
    }
    ctx.emit("plan", &text(&view), &view);
    // `up` goes on to apply and run: what the plan said is not said again
    for w in &view.verdict.warnings {
        super::context::said(w);
    }
    Ok(view)
}

/// What `infra plan` shows.
pub fn text(v: &PlanView) -> String {
    let mut h = String::new();
    h.push_str(&format!("plan {} ({}): {}\n", v.plan, v.file, v.name));
    h.push_str(&format!(
        "  provider {}, project {}, region {}\n",
        v.provider, v.project, v.region
    ));
    h.push_str("  node groups:\n");
    for g in &v.node_groups {
        h.push_str(&format!(
            "    {:<12} {} x {} ({}{}), {} slot(s) per node\n",
            g.name,
            g.count,
            g.instance_type,
            g.market.as_str(),
            match (g.efa, g.efa_set) {
                (true, None) => ", EFA: its templates require it",
                (true, _) => ", EFA",
                _ => "",
            },
            g.slots
        ));
    }
    h.push_str("  layers:\n");
    for l in &v.layers {
        h.push_str(&format!(
            "    {:<8} {:<4} {:>6} task(s){}  {}{}\n",
            l.id,
            l.priority.as_deref().unwrap_or(""),
            l.tasks,
            if l.grid_cells > 0 {
                format!(" (grid: {} cells)", l.grid_cells)
            } else {
                String::new()
            },
            l.sample.join(", "),
            if l.tasks > 3 { ", ..." } else { "" }
        ));
    }
    h.push_str(&format!(
        "  tasks: {} rendered into {} ({} written), {} still to run\n",
        v.tasks, v.tasks_dir, v.written, v.remaining
    ));
    if v.changed > 0 {
        h.push_str(&format!(
            "  {} completed task(s) changed since they ran: `infra run {} --changed` re-runs them\n",
            v.changed, v.plan
        ));
    }
    if let Some(s) = &v.schedule {
        h.push_str(&format!(
            "  schedule: makespan {} (lower bound {}), longest estimate first\n",
            human_duration(s.makespan_seconds),
            human_duration(s.lower_bound_seconds)
        ));
    }
    if let (Some(st), "local") = (&v.stacks, v.provider.as_str()) {
        // the stacks are for `--provider aws`; this machine uses none
        let names: Vec<&str> = st.list.iter().map(|s| s.name.as_str()).collect();
        h.push_str(&format!(
            "  stacks: none on the local provider ({} for --provider aws written to {})\n",
            names.join(", "),
            st.dir
        ));
    } else if let Some(st) = &v.stacks {
        h.push_str(&format!("  stacks (written to {}):\n", st.dir));
        for stack in &st.list {
            h.push_str(&format!(
                "    {} — {} resources, {} bytes{}\n",
                stack.name,
                stack.resources.len(),
                stack.bytes,
                if stack.needs_upload {
                    " (over 51,200: uploaded to the bucket, deployed by TemplateURL)"
                } else {
                    ""
                }
            ));
            for r in stack.resources.iter().take(40) {
                h.push_str(&format!(
                    "      {:<28} {:<36} {}\n",
                    r.logical_id, r.resource_type, r.properties
                ));
            }
            if stack.resources.len() > 40 {
                h.push_str(&format!("      ... {} more\n", stack.resources.len() - 40));
            }
        }
    }
    if !v.allocations.is_empty() {
        h.push_str("  allocations (a holder job per node, steps run in it with srun --overlap):\n");
        for a in &v.allocations {
            h.push_str(&format!("    {} × {}: {}\n", a.group, a.count, a.sbatch));
        }
    }
    if let Some(c) = &v.changes {
        h.push_str(&super::plan_changes::text(c));
    }
    h.push_str(&estimate_text(&v.estimate, &v.verdict));
    h
}

/// The estimate's table and the budget's verdict.
pub fn estimate_text(e: &est::Estimate, v: &est::Verdict) -> String {
    let mut h = String::new();
    let hours = e
        .hours
        .map(|x| human_duration(x * 3600.0))
        .unwrap_or_else(|| "unknown".into());
    h.push_str(&format!(
        "  estimate ({} in {}, prices from the {} of {}):\n",
        hours, e.region, e.prices_from, e.prices_date
    ));
    let row = |cols: [&str; 8]| {
        format!(
            "    {:<12} {:<14} {:<10} {:>5} {:>10} {:>11} {:>11} {:>11}\n",
            cols[0], cols[1], cols[2], cols[3], cols[4], cols[5], cols[6], cols[7]
        )
    };
    let money = |x: Option<f64>| x.map(|v| format!("${v:.2}")).unwrap_or_else(|| "-".into());
    h.push_str(&row([
        "group",
        "type",
        "market",
        "nodes",
        "$/h",
        "total",
        "worst AZ",
        "on-demand",
    ]));
    for g in &e.groups {
        h.push_str(&row([
            &g.group,
            &g.instance_type,
            &g.market,
            &g.nodes.to_string(),
            &money(Some(g.hourly_usd)),
            &money(Some(g.total_usd)),
            &money(Some(g.total_worst_usd)),
            &money(g.total_on_demand_usd),
        ]));
    }
    h.push_str(&row([
        "total",
        "",
        "",
        "",
        &money(Some(e.hourly_usd)),
        &money(Some(e.total_usd)),
        &money(Some(e.total_worst_usd)),
        &money(e.total_on_demand_usd),
    ]));
    if let Some(n) = &e.bucket_note {
        h.push_str(&format!("  {n}\n"));
    }
    match (v.budget_usd, v.remaining_usd) {
        (Some(b), Some(r)) => h.push_str(&format!(
            "  budget: ${b:.2}, spent ${:.2}, remaining ${r:.2}{} -> {}\n",
            v.spent_usd,
            v.max_hourly_usd
                .map(|m| format!(", cap ${m:.2}/h"))
                .unwrap_or_default(),
            if v.ok { "OK" } else { "REFUSED" }
        )),
        _ if v.hours.is_some() => {}
        _ => h.push_str("  budget: none set\n"),
    }
    if let Some(a) = &v.hours {
        // a small budget's hours keep their digits (0.002, not 0.0)
        let hh = |x: f64| {
            if x >= 1.0 {
                format!("{x:.1}")
            } else {
                crate::cost::hours::fmt(x)
            }
        };
        let n = |x: Option<f64>| x.map(hh).unwrap_or_else(|| "?".into());
        let used = if a.used_gpu_hours > 0.0 || a.used_node_hours > 0.0 {
            format!(
                ", of which {} GPU-h, {} node-h used (remaining {} GPU-h, {} node-h)",
                hh(a.used_gpu_hours),
                hh(a.used_node_hours),
                a.remaining_gpu_hours
                    .map(|x| hh(x.max(0.0)))
                    .unwrap_or_else(|| "any".into()),
                a.remaining_node_hours
                    .map(|x| hh(x.max(0.0)))
                    .unwrap_or_else(|| "any".into()),
            )
        } else {
            String::new()
        };
        h.push_str(&format!(
            "  budget: {} GPU-h, {} node-h estimated; allowed {} GPU-h, {} node-h{used} -> {}\n",
            n(a.gpu_hours),
            n(a.node_hours),
            a.budget_gpu_hours.map(hh).unwrap_or_else(|| "any".into()),
            a.budget_node_hours.map(hh).unwrap_or_else(|| "any".into()),
            if v.ok { "OK" } else { "REFUSED" }
        ));
    }
    for r in &v.reasons {
        h.push_str(&format!("    refused: {r}\n"));
    }
    if let Some((over, fits)) = v.fits.split_first() {
        h.push_str(&format!("    {over}\n"));
        if !fits.is_empty() {
            h.push_str("    what would fit:\n");
            for f in fits {
                h.push_str(&format!("      - {f}\n"));
            }
        }
    }
    for w in &v.warnings {
        h.push_str(&format!("    warning: {w}\n"));
    }
    h
}
