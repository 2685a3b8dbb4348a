//! `infra budget`: estimated against spent, per phase, as a table, CSV,
//! JSON or an HTML page.

use super::context::{journal_path, remaining, render_tasks, sync_campaign, Ctx};
use super::error::{exit, io_err, AppError};
use crate::cli::ReportFormat;
use crate::cost::{estimate as est, ledger};
use crate::plan;
use crate::runner::journal::{self, Status};
use crate::tasks::TaskDef;

fn phase_report(
    ctx: &Ctx,
    name: &str,
    spend: &[ledger::Spend],
) -> Result<crate::cost::report::PhaseReport, AppError> {
    use crate::cost::report::{build, Inputs, PatternRow};
    let (plan, catalog, from) = ctx.prepare(name)?;
    let (tasks, _) = render_tasks(&plan)?;
    let all: Vec<&TaskDef> = tasks.iter().collect();
    let left = remaining(&plan, &tasks);
    let full = est::estimate(&plan, &all, &catalog, &from);
    let rest = est::estimate(&plan, &left, &catalog, &from);
    let (state, _) = journal::read(&journal_path(&plan))?;
    let slot_price = |t: &TaskDef| {
        // as the estimate has it: a Slurm cluster has no dollar price
        if plan.provider == crate::plan::ProviderKind::Slurm {
            return Some(0.0);
        }
        let g = plan.node_group(&t.node_group)?;
        let p = catalog
            .price(&g.instance_type, &plan.region, g.market)?
            .usd_per_hour;
        Some(p / g.slots.max(1) as f64 * t.nodes as f64)
    };
    let patterns: Vec<PatternRow> = tasks
        .iter()
        .map(|t| {
            let st = state.tasks.get(&t.key);
            PatternRow {
                task: t.id.clone(),
                status: format!("{:?}", state.status_of(&t.key)).to_lowercase(),
                estimated_usd: t
                    .estimate_seconds
                    .and_then(|s| slot_price(t).map(|p| (p * s / 3600.0 * 1e4).round() / 1e4)),
                metered_usd: st.and_then(|x| x.cost_usd),
                wall_seconds: st.and_then(|x| x.wall_seconds),
            }
        })
        .collect();
    let done = tasks
        .iter()
        .filter(|t| state.status_of(&t.key) == Status::Succeeded)
        .count();
    let stopped = state.last_stop.clone().filter(|r| r.starts_with("budget"));
    Ok(build(Inputs {
        phase: &plan.name_key,
        name: &plan.name,
        provider: plan.provider.as_str(),
        // a budget in hours only (Slurm) has no dollar amount
        budget_usd: plan
            .budget
            .as_ref()
            .map(|b| b.usd)
            .filter(|u| u.is_finite()),
        max_hourly_usd: plan.budget.as_ref().and_then(|b| b.max_hourly_usd),
        full: &full,
        remaining: &rest,
        spend,
        patterns,
        tasks_done: done,
        stopped_by_budget: stopped,
        nodes_up: ctx.provider(&plan).recorded_nodes(&plan),
        budget_gpu_hours: plan.budget.as_ref().and_then(|b| b.gpu_hours),
        budget_node_hours: plan.budget.as_ref().and_then(|b| b.node_hours),
        remaining_alloc_hours: est::alloc_hours(&plan, rest.hours),
    }))
}

pub async fn budget(
    ctx: &Ctx,
    phase: Option<&str>,
    format: ReportFormat,
    output: Option<&std::path::Path>,
) -> Result<i32, AppError> {
    use crate::cost::report;
    let names: Vec<String> = match phase {
        Some(p) => vec![p.to_string()],
        None => plan::load::list_plans(&plan::load::project_dir(&ctx.cwd).join("plans")),
    };
    // what other machines recorded (AWS: in the bucket)
    for n in &names {
        if let Ok(plan) = ctx.load(n) {
            ctx.provider(&plan).sync_ledger(&plan).await?;
            sync_campaign(ctx, &plan).await;
        }
    }
    let spend = ledger::read(&ctx.cwd)?;
    let mut reports = Vec::new();
    for n in &names {
        match phase_report(ctx, n, &spend) {
            Ok(r) => reports.push(r),
            Err(e) if phase.is_some() => return Err(e),
            Err(_) => eprintln!("skipping {n}: the plan is not valid (`infra plan {n}` says why)"),
        }
    }
    let text = match (format, ctx.json) {
        (ReportFormat::Json, _) | (_, true) => {
            serde_json::to_string_pretty(&reports).unwrap_or_default() + "\n"
        }
        (ReportFormat::Table, _) => report::table(&reports),
        (ReportFormat::Csv, _) => report::csv(&reports),
        (ReportFormat::Html, _) => report::html(
            &reports,
            &chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        ),
    };
    match output {
        Some(path) => {
            let path = if path.is_absolute() {
                path.to_path_buf()
            } else {
                ctx.cwd.join(path)
            };
            std::fs::write(&path, text).map_err(io_err(&path))?;
            eprintln!("wrote {}", path.display());
        }
        None => ctx.write(&text),
    }
    Ok(exit::OK)
}
