//! The command layer: resolves settings from arguments, calls the engine,
//! prints, and maps every error to an exit code in one place.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::json;
use thiserror::Error;

use crate::catalog::Catalog;
use crate::cli::{CatalogCmd, Cli, Cmd, Global, OrderArg, ProviderArg, ReportFormat, RunArgs};
use crate::cost::{estimate as est, ledger};
use crate::plan::{self, LoadError, Plan, ProviderKind};
use crate::provider::local;
use crate::report::progress::{human_duration, Reporter};
use crate::runner::journal::{self, Status};
use crate::runner::run::{self as runner, Paths, RunOptions, RunSummary};
use crate::stacks;

use crate::runner::scheduler::Policy;
use crate::tasks::render::{render_all, write_all, RenderError};
use crate::tasks::TaskDef;

pub mod exit {
    pub const OK: i32 = 0;
    pub const TASK_FAILURES: i32 = 1;
    pub const BAD_INPUT: i32 = 2;
    pub const BUDGET: i32 = 3;
    pub const PROVIDER: i32 = 4;
    pub const INTERRUPTED: i32 = 130;
}

#[derive(Debug, Error)]
pub enum AppError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error(transparent)]
    Select(#[from] plan::select::SelectError),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Budget(String),
    #[error("{0}")]
    Provider(String),
    #[error(transparent)]
    Run(#[from] runner::RunError),
    #[error(transparent)]
    Journal(#[from] journal::JournalError),
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl AppError {
    pub fn exit_code(&self) -> i32 {
        match self {
            AppError::Load(_) | AppError::Render(_) | AppError::Select(_) | AppError::Usage(_) => {
                exit::BAD_INPUT
            }
            AppError::Budget(_) => exit::BUDGET,
            AppError::Provider(_)
            | AppError::Run(_)
            | AppError::Journal(_)
            | AppError::Io { .. } => exit::PROVIDER,
        }
    }
}

fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> AppError {
    let path = path.into();
    move |source| AppError::Io { path, source }
}

pub fn main(cli: Cli) -> i32 {
    // One thread drives everything: infra waits on processes and the network
    // and does little work of its own. Worker threads only added wake-ups
    // between threads on the dispatch path (a 2,000-task local run took
    // 16 % longer on ext4 with two workers; docs/BENCHMARKS.md). Blocking
    // file work is short; `spawn_blocking` still has its own threads.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return exit::PROVIDER;
        }
    };
    let json_mode = cli.global.json;
    match rt.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            if json_mode {
                let _ = writeln!(
                    std::io::stdout(),
                    "{}",
                    json!({"error": e.to_string(), "exit_code": e.exit_code()})
                );
            }
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

/// Settings resolved once from the arguments.
pub struct Ctx {
    pub cwd: PathBuf,
    pub json: bool,
    pub provider: Option<ProviderKind>,
    pub region: Option<String>,
    pub profile: Option<String>,
    /// The user's refreshed catalog (`infra catalog refresh`), if any.
    pub catalog_path: PathBuf,
    pub yes: bool,
    /// How often the budget watchdog looks at the spend.
    pub watchdog_interval: std::time::Duration,
}

impl Ctx {
    fn from(g: &Global) -> Result<Ctx, AppError> {
        let cwd = match &g.dir {
            Some(d) => d.clone(),
            None => std::env::current_dir().map_err(io_err("."))?,
        };
        let catalog_path = match std::env::var_os("INFRA_CATALOG") {
            Some(p) => PathBuf::from(p),
            None => std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .unwrap_or_else(|| PathBuf::from(".cache"))
                .join("infra")
                .join("catalog.json"),
        };
        Ok(Ctx {
            cwd,
            json: g.json,
            region: g.region.clone(),
            profile: g.profile.clone(),
            catalog_path,
            yes: false,
            watchdog_interval: std::env::var("INFRA_WATCHDOG_SECONDS")
                .ok()
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|v| *v > 0.0 && v.is_finite())
                .map(std::time::Duration::from_secs_f64)
                .unwrap_or(std::time::Duration::from_secs(30)),
            provider: g.provider.map(|p| match p {
                ProviderArg::Local => ProviderKind::Local,
                ProviderArg::Aws => ProviderKind::Aws,
            }),
        })
    }

    pub fn load(&self, name: &str) -> Result<Plan, AppError> {
        let mut p = plan::load(name, &self.cwd)?;
        if let Some(pk) = self.provider {
            p.provider = pk;
        }
        if let Some(r) = &self.region {
            p.region = r.clone();
        }
        Ok(p)
    }

    pub fn catalog(&self) -> Result<(Catalog, String), AppError> {
        let cat = Catalog::load_or_builtin(&self.catalog_path)
            .map_err(|e| AppError::Usage(e.to_string()))?;
        let from = if self.catalog_path.is_file() {
            format!("refreshed catalog {}", self.catalog_path.display())
        } else {
            "built-in catalog".to_string()
        };
        Ok((cat, from))
    }

    /// Load the plan and check it against the catalog and AWS's limits:
    /// every problem at once, before anything is rendered.
    pub fn prepare(&self, name: &str) -> Result<(Plan, Catalog, String), AppError> {
        let plan = self.load(name)?;
        let (catalog, from) = self.catalog()?;
        let mut d = plan::diag::Diags::default();
        stacks::validate(&plan, &catalog, &mut d);
        if !d.is_empty() {
            let file = plan
                .source
                .strip_prefix(&self.cwd)
                .map(|p| p.to_path_buf())
                .unwrap_or_else(|_| plan.source.clone());
            return Err(AppError::Load(LoadError::Invalid(plan::PlanErrors {
                file,
                diags: d.list,
            })));
        }
        Ok((plan, catalog, from))
    }

    pub fn out(&self, human: &str, json_value: serde_json::Value) {
        let mut o = std::io::stdout().lock();
        if self.json {
            let _ = writeln!(
                o,
                "{}",
                serde_json::to_string_pretty(&json_value).unwrap_or_default()
            );
        } else if !human.is_empty() {
            let _ = writeln!(o, "{human}");
        }
    }
}

async fn dispatch(cli: Cli) -> Result<i32, AppError> {
    let ctx = Ctx::from(&cli.global)?;
    match cli.command {
        Cmd::Plan { phase } => cmd_plan(&ctx, &phase).map(|_| exit::OK),
        Cmd::Apply { phase, yes } => cmd_apply(&ctx, &phase, yes).await,
        Cmd::Run(args) => cmd_run(&ctx, &args).await,
        Cmd::Up {
            phase,
            keep,
            yes,
            retry_failed,
        } => {
            cmd_plan(&ctx, &phase)?;
            cmd_apply(&ctx, &phase, yes).await?;
            let args = RunArgs {
                phase: phase.clone(),
                select: vec!["all".into()],
                retry_failed,
                order: OrderArg::LongestFirst,
            };
            let code = cmd_run(&ctx, &args).await?;
            if code == exit::INTERRUPTED {
                eprintln!("interrupted: nodes left up; `infra run {phase}` resumes, `infra destroy {phase}` removes them");
                return Ok(code);
            }
            if keep {
                eprintln!("--keep: nodes left up; `infra destroy {phase}` removes them");
            } else {
                cmd_destroy(&ctx, Some(&phase), Default::default()).await?;
            }
            Ok(code)
        }
        Cmd::Status { phase } => cmd_status(&ctx, &phase).await,
        Cmd::List { phase } => cmd_list(&ctx, phase.as_deref()),
        Cmd::Logs {
            phase,
            pattern,
            stderr,
        } => cmd_logs(&ctx, &phase, &pattern, stderr),
        Cmd::Results { phase, format } => crate::results::cmd_results(&ctx, &phase, format),
        Cmd::Destroy {
            phase,
            all,
            yes: _,
            delete_results,
            force,
        } => {
            cmd_destroy(
                &ctx,
                phase.as_deref(),
                crate::provider::aws::cli::DestroyOpts {
                    all,
                    delete_results,
                    force,
                },
            )
            .await
        }
        Cmd::Budget {
            phase,
            format,
            output,
        } => cmd_budget(&ctx, phase.as_deref(), format, output.as_deref()).await,
        Cmd::Catalog {
            action: CatalogCmd::Show { instance_type },
        } => cmd_catalog_show(&ctx, instance_type.as_deref()),
        Cmd::Catalog {
            action: CatalogCmd::Refresh,
        } => cmd_catalog_refresh(&ctx).await,
        Cmd::Schema => {
            let _ = writeln!(
                std::io::stdout(),
                "{}",
                serde_json::to_string_pretty(&plan::schema::schema()).unwrap_or_default()
            );
            Ok(exit::OK)
        }
    }
}

/// Render every task definition of the plan into `.infra/<phase>/tasks/`.
pub fn render_tasks(plan: &Plan) -> Result<(Vec<TaskDef>, usize), AppError> {
    let all: Vec<&plan::Pattern> = plan.patterns().collect();
    let rendered = render_all(plan, &all)?;
    let dir = plan.state_dir().join("tasks");
    let written = write_all(&dir, &rendered.tasks).map_err(io_err(&dir))?;
    Ok((rendered.tasks, written))
}

/// Tasks not yet completed according to the journal.
fn remaining<'a>(plan: &Plan, tasks: &'a [TaskDef]) -> Vec<&'a TaskDef> {
    let state = journal::read(&plan.state_dir().join("journal.jsonl"))
        .map(|(s, _)| s)
        .unwrap_or_default();
    tasks
        .iter()
        .filter(|t| state.status_of(&t.key) != Status::Succeeded)
        .collect()
}

fn spent(plan: &Plan) -> f64 {
    ledger::spent(&ledger::read(&plan.root), Some(&plan.name_key))
}

fn estimate_text(e: &est::Estimate, v: &est::Verdict) -> String {
    let mut h = String::new();
    let hours = e
        .hours
        .map(|x| human_duration(x * 3600.0))
        .unwrap_or_else(|| "unknown".into());
    h.push_str(&format!(
        "  estimate ({} in {}, prices from the {} of {}):
",
        hours, e.region, e.prices_from, e.prices_date
    ));
    h.push_str(&format!(
        "    {:<12} {:<14} {:<10} {:>5} {:>10} {:>11} {:>11} {:>11}
",
        "group", "type", "market", "nodes", "$/h", "total", "worst AZ", "on-demand"
    ));
    for g in &e.groups {
        let money = |x: Option<f64>| x.map(|v| format!("${v:.2}")).unwrap_or_else(|| "-".into());
        h.push_str(&format!(
            "    {:<12} {:<14} {:<10} {:>5} {:>10} {:>11} {:>11} {:>11}
",
            g.group,
            g.instance_type,
            g.market,
            g.nodes,
            money(Some(g.hourly_usd)),
            money(Some(g.total_usd)),
            money(Some(g.total_worst_usd)),
            money(g.total_on_demand_usd)
        ));
    }
    h.push_str(&format!(
        "    {:<12} {:<14} {:<10} {:>5} {:>10} {:>11} {:>11} {:>11}
",
        "total",
        "",
        "",
        "",
        format!("${:.2}", e.hourly_usd),
        format!("${:.2}", e.total_usd),
        format!("${:.2}", e.total_worst_usd),
        e.total_on_demand_usd
            .map(|v| format!("${v:.2}"))
            .unwrap_or_else(|| "-".into())
    ));
    match (v.budget_usd, v.remaining_usd) {
        (Some(b), Some(r)) => h.push_str(&format!(
            "  budget: ${b:.2}, spent ${:.2}, remaining ${r:.2}{} -> {}\n",
            v.spent_usd,
            v.max_hourly_usd
                .map(|m| format!(", cap ${m:.2}/h"))
                .unwrap_or_default(),
            if v.ok { "OK" } else { "REFUSED" }
        )),
        _ => h.push_str("  budget: none set\n"),
    }
    for r in &v.reasons {
        h.push_str(&format!("    refused: {r}\n"));
    }
    for w in &v.warnings {
        h.push_str(&format!("    warning: {w}\n"));
    }
    h
}

fn cmd_plan(ctx: &Ctx, name: &str) -> Result<(), AppError> {
    let (plan, catalog, prices_from) = ctx.prepare(name)?;
    let (tasks, written) = render_tasks(&plan)?;
    let all: Vec<&TaskDef> = tasks.iter().collect();
    let sim = est::schedule(&plan, &all);
    let left = remaining(&plan, &tasks);
    let estimate = est::estimate(&plan, &left, &catalog, &prices_from);
    let verdict = est::verdict(&plan, &estimate, spent(&plan));
    let deployable = plan.node_groups.iter().all(|g| g.instance_type != "local");
    let rendered = if deployable {
        let st = stacks::render(&plan, &catalog).map_err(|e| AppError::Provider(e.to_string()))?;
        // `write` puts the files under `<dir>/stacks/`
        stacks::write(&plan.state_dir(), &st).map_err(|e| AppError::Provider(e.to_string()))?;
        Some(st)
    } else {
        None
    };
    let mut h = String::new();
    h.push_str(&format!(
        "plan {} ({}): {}\n",
        plan.name_key,
        plan::decode::rel(&plan.source, &ctx.cwd),
        plan.name
    ));
    h.push_str(&format!(
        "  provider {}, project {}, region {}\n",
        plan.provider.as_str(),
        plan.project,
        plan.region
    ));
    h.push_str("  node groups:\n");
    for g in &plan.node_groups {
        h.push_str(&format!(
            "    {:<12} {} x {} ({}{}), {} slot(s) per node\n",
            g.name,
            g.count,
            g.instance_type,
            g.market.as_str(),
            if g.efa { ", EFA" } else { "" },
            g.slots
        ));
    }
    h.push_str("  layers:\n");
    for l in &plan.layers {
        let sample: Vec<&str> = l.patterns.iter().take(3).map(|p| p.id.as_str()).collect();
        h.push_str(&format!(
            "    {:<8} {:<4} {:>6} task(s){}  {}{}\n",
            l.id,
            l.priority.as_deref().unwrap_or(""),
            l.patterns.len(),
            if l.grid_cells > 0 {
                format!(" (grid: {} cells)", l.grid_cells)
            } else {
                String::new()
            },
            sample.join(", "),
            if l.patterns.len() > 3 { ", ..." } else { "" }
        ));
    }
    h.push_str(&format!(
        "  tasks: {} rendered into {} ({} changed), {} still to run\n",
        tasks.len(),
        plan::decode::rel(&plan.state_dir().join("tasks"), &ctx.cwd),
        written,
        left.len()
    ));
    if let Some(s) = &sim {
        h.push_str(&format!(
            "  schedule: makespan {} (lower bound {}), longest estimate first\n",
            human_duration(s.makespan),
            human_duration(s.lower_bound)
        ));
    }
    if let Some(st) = &rendered {
        h.push_str(&format!(
            "  stacks (written to {}):\n",
            plan::decode::rel(&plan.state_dir().join("stacks"), &ctx.cwd)
        ));
        for stack in [&st.base, &st.compute] {
            let sum = stack.summary();
            h.push_str(&format!(
                "    {} — {} resources, {} bytes{}\n",
                stack.name,
                sum.len(),
                stack.body.len(),
                if stack.needs_upload {
                    " (over 51,200: uploaded to the bucket, deployed by TemplateURL)"
                } else {
                    ""
                }
            ));
            for r in sum.iter().take(40) {
                h.push_str(&format!(
                    "      {:<28} {:<36} {}\n",
                    r.logical_id, r.resource_type, r.key_properties
                ));
            }
            if sum.len() > 40 {
                h.push_str(&format!("      ... {} more\n", sum.len() - 40));
            }
        }
    }
    h.push_str(&estimate_text(&estimate, &verdict));
    let layers: Vec<serde_json::Value> = plan.layers.iter().map(|l| json!({"id": l.id, "name": l.name, "tasks": l.patterns.len(), "grid_cells": l.grid_cells})).collect();
    let stacks_json = rendered.as_ref().map(|st| {
        [&st.base, &st.compute]
            .iter()
            .map(|s| json!({"name": s.name, "bytes": s.body.len(), "needs_upload": s.needs_upload,
                "resources": s.summary().iter().map(|r| json!({"logical_id": r.logical_id, "type": r.resource_type, "properties": r.key_properties})).collect::<Vec<_>>()}))
            .collect::<Vec<_>>()
    });
    ctx.out(
        h.trim_end(),
        json!({
            "plan": plan.name_key, "phase": plan.phase, "project": plan.project, "provider": plan.provider.as_str(),
            "tasks": tasks.len(), "written": written, "remaining": left.len(), "layers": layers,
            "node_groups": plan.node_groups,
            "schedule": sim.map(|s| json!({"makespan_seconds": s.makespan, "lower_bound_seconds": s.lower_bound})),
            "stacks": stacks_json,
            "estimate": estimate, "verdict": verdict,
        }),
    );
    Ok(())
}

/// The budget gate of `apply` and `run`: exit 3 with the numbers.
pub fn gate(
    ctx: &Ctx,
    plan: &Plan,
    tasks: &[TaskDef],
    catalog: &Catalog,
    from: &str,
) -> Result<est::Estimate, AppError> {
    let left = remaining(plan, tasks);
    let e = est::estimate(plan, &left, catalog, from);
    let v = est::verdict(plan, &e, spent(plan));
    for w in &v.warnings {
        eprintln!("warning: {w}");
    }
    if !v.ok {
        let _ = ctx;
        return Err(AppError::Budget(format!(
            "the budget refuses {}:\n  {}\n  (nothing was started; no flag overrides the budget, edit the plan to change it)",
            plan.name_key,
            v.reasons.join("\n  ")
        )));
    }
    Ok(e)
}

fn local_nodes(plan: &Plan, catalog: &Catalog) -> Vec<local::LocalNode> {
    local::nodes_for(
        plan,
        &|it, market| {
            catalog
                .price(it, &plan.region, market)
                .map(|p| p.usd_per_hour)
        },
        &|it| catalog.get(it).map(|t| (t.vcpus, t.gpus)),
    )
}

async fn cmd_apply(ctx: &Ctx, name: &str, yes: bool) -> Result<i32, AppError> {
    let (plan, catalog, from) = ctx.prepare(name)?;
    let (tasks, _) = render_tasks(&plan)?;
    gate(ctx, &plan, &tasks, &catalog, &from)?;
    if plan.provider == ProviderKind::Aws {
        return crate::provider::aws::cli::apply(ctx, &plan, &catalog, yes).await;
    }
    let st = local::apply(&plan, local_nodes(&plan, &catalog)).map_err(io_err(plan.state_dir()))?;
    local::run_setup(&plan, &st.nodes)
        .await
        .map_err(AppError::Provider)?;
    let slots: u32 = st.nodes.iter().map(|n| n.slots).sum();
    ctx.out(
        &format!(
            "applied {}: {} local node(s), {} slot(s) in {}",
            plan.name_key,
            st.nodes.len(),
            slots,
            plan::decode::rel(&plan.state_dir().join("nodes"), &ctx.cwd)
        ),
        json!({"plan": plan.name_key, "provider": "local", "nodes": st.nodes}),
    );
    Ok(exit::OK)
}

async fn cmd_run(ctx: &Ctx, args: &RunArgs) -> Result<i32, AppError> {
    let (plan, catalog, from) = ctx.prepare(&args.phase)?;
    let (tasks, _) = render_tasks(&plan)?;
    let selected: std::collections::HashSet<String> = plan::select::select(&plan, &args.select)?
        .into_iter()
        .map(|p| p.id.clone())
        .collect();
    let tasks: Vec<TaskDef> = tasks
        .into_iter()
        .filter(|t| selected.contains(&t.id))
        .collect();
    gate(ctx, &plan, &tasks, &catalog, &from)?;
    if plan.provider == ProviderKind::Aws {
        return crate::provider::aws::cli::run(ctx, &plan, &catalog, tasks, args).await;
    }
    let st = match local::load_state(&plan) {
        Some(st) => st,
        None => {
            eprintln!("no local nodes for {} yet: applying", plan.name_key);
            local::apply(&plan, local_nodes(&plan, &catalog)).map_err(io_err(plan.state_dir()))?
        }
    };
    {
        // what a crashed run left is stopped only once no other run holds
        // the phase (its processes carry the same marker)
        let _lock = runner::lock_phase(&plan.state_dir())?;
        let killed = crate::provider::process::reap_orphans(
            &plan.state_dir().join("pids.log"),
            &local::marker(&plan),
        );
        if killed > 0 {
            eprintln!("stopped {killed} process group(s) left by an earlier run");
        }
        local::run_setup(&plan, &st.nodes)
            .await
            .map_err(AppError::Provider)?;
    }
    let hourly: f64 = st.nodes.iter().map(|n| n.hourly_usd).sum();
    let exec = Arc::new(local::LocalExecutor::new(&plan, &st));
    let paths = Paths {
        state_dir: plan.state_dir(),
        results_dir: plan.results_dir(),
    };
    let watchdog = plan.budget.as_ref().map(|b| runner::Watchdog {
        budget_usd: b.usd,
        spent_before_usd: spent(&plan),
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
    let started = chrono::Utc::now();
    let summary = runner::run(tasks, exec, &paths, "local", &opts, stop_rx, &mut |e| {
        rep.event(e)
    })
    .await;
    rep.finish();
    let summary = summary?;
    // what the same nodes would have cost for as long as the run lasted
    let end = chrono::Utc::now();
    let hours = summary.wall_seconds / 3600.0;
    let span = ledger::RunSpan {
        phase: &plan.name_key,
        provider: "local",
        start: started,
        end,
        hours,
        kind: "simulated",
    };
    let entries: Vec<ledger::Spend> = st
        .nodes
        .iter()
        .map(|n| {
            let market = plan
                .node_group(&n.group)
                .map(|g| g.market.as_str())
                .unwrap_or("on-demand");
            span.spend(
                n.name.clone(),
                &n.group,
                &n.instance_type,
                market,
                n.hourly_usd,
            )
        })
        .collect();
    ledger::append(&plan.root, &entries).map_err(io_err(ledger::path(&plan.root)))?;
    if summary.budget_stop {
        let (nodes, _) = local::destroy(&plan).map_err(io_err(plan.state_dir()))?;
        eprintln!("budget reached: dispatching stopped and {nodes} node(s) destroyed; results so far are in {}", plan::decode::rel(&plan.results_dir(), &ctx.cwd));
    }
    print_summary(ctx, &plan, &summary);
    Ok(if summary.budget_stop {
        exit::BUDGET
    } else if summary.interrupted {
        exit::INTERRUPTED
    } else if summary.failed > 0 {
        exit::TASK_FAILURES
    } else {
        exit::OK
    })
}

pub(crate) fn print_summary(ctx: &Ctx, plan: &Plan, s: &RunSummary) {
    let mut h = format!(
        "{}: {} succeeded, {} failed, {} already done{}{} in {}\nresults in {}",
        plan.name_key,
        s.succeeded,
        s.failed,
        s.already_done,
        if s.skipped_failed > 0 {
            format!(
                ", {} failed earlier (--retry-failed runs them)",
                s.skipped_failed
            )
        } else {
            String::new()
        },
        if s.pending > 0 {
            format!(", {} not run ({})", s.pending, s.reason)
        } else {
            String::new()
        },
        human_duration(s.wall_seconds),
        plan::decode::rel(&plan.results_dir(), &ctx.cwd),
    );
    if !s.failed_tasks.is_empty() {
        h.push_str(&format!(
            "\nfailed: {} (see {})",
            s.failed_tasks.join(", "),
            plan::decode::rel(&plan.results_dir().join("failed-tasks.csv"), &ctx.cwd)
        ));
    }
    ctx.out(&h, json!({"plan": plan.name_key, "summary": s}));
}

async fn cmd_status(ctx: &Ctx, name: &str) -> Result<i32, AppError> {
    let plan = ctx.load(name)?;
    let (tasks, _) = render_tasks(&plan)?;
    if plan.provider == ProviderKind::Aws {
        return crate::provider::aws::cli::status(ctx, &plan, &tasks).await;
    }
    let (state, _) = journal::read(&plan.state_dir().join("journal.jsonl"))?;
    let mut counts = std::collections::BTreeMap::new();
    let mut missing = Vec::new();
    let mut failed = Vec::new();
    let mut running = Vec::new();
    for t in &tasks {
        let s = state.status_of(&t.key);
        *counts
            .entry(format!("{s:?}").to_lowercase())
            .or_insert(0usize) += 1;
        match s {
            Status::Succeeded => {}
            Status::Failed => failed.push(json!({"task": t.id, "error": state.tasks.get(&t.key).and_then(|x| x.last_error.clone())})),
            Status::Running => running.push(t.id.clone()),
            Status::Pending => missing.push(t.id.clone()),
        }
    }
    let nodes = local::load_state(&plan)
        .map(|s| s.nodes)
        .unwrap_or_default();
    let lock_held = is_locked(&plan.state_dir().join("run.lock"));
    let spend: f64 = state.tasks.values().filter_map(|t| t.cost_usd).sum();
    let mut h = format!(
        "{} ({}): {} task(s)\n",
        plan.name_key,
        plan.name,
        tasks.len()
    );
    h.push_str(&format!(
        "  nodes: {}\n",
        if nodes.is_empty() {
            "none (not applied)".to_string()
        } else {
            format!(
                "{} local node(s): {}",
                nodes.len(),
                nodes
                    .iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    ));
    h.push_str(&format!(
        "  run: {}\n",
        if lock_held {
            "in progress"
        } else {
            "not running"
        }
    ));
    h.push_str(&format!(
        "  tasks: {} done, {} failed, {} running, {} queued\n",
        counts.get("succeeded").unwrap_or(&0),
        counts.get("failed").unwrap_or(&0),
        if lock_held { running.len() } else { 0 },
        missing.len() + if lock_held { 0 } else { running.len() }
    ));
    h.push_str(&format!(
        "  spend so far (at catalog prices): ${spend:.2}\n"
    ));
    if !missing.is_empty() || (!lock_held && !running.is_empty()) {
        let mut all: Vec<&String> = missing
            .iter()
            .chain(if lock_held { [].iter() } else { running.iter() })
            .collect();
        all.sort();
        h.push_str(&format!(
            "  missing: {}{}\n",
            all.iter()
                .take(20)
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            if all.len() > 20 {
                format!(" ... and {} more", all.len() - 20)
            } else {
                String::new()
            }
        ));
    }
    for f in failed.iter().take(20) {
        h.push_str(&format!(
            "  failed: {} — {}\n",
            f["task"].as_str().unwrap_or(""),
            f["error"].as_str().unwrap_or("")
        ));
    }
    ctx.out(
        h.trim_end(),
        json!({"plan": plan.name_key, "tasks": tasks.len(), "counts": counts, "missing": missing, "running": running, "failed": failed,
               "nodes": nodes, "run_in_progress": lock_held, "spend_usd": spend, "last_stop": state.last_stop}),
    );
    Ok(exit::OK)
}

pub(crate) fn is_locked(path: &std::path::Path) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(f) = std::fs::OpenOptions::new().write(true).open(path) else {
        return false;
    };
    // SAFETY: flock on our own descriptor; released when `f` drops.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    r != 0
}

fn cmd_list(ctx: &Ctx, name: Option<&str>) -> Result<i32, AppError> {
    match name {
        None => {
            let names = plan::load::list_plans(&ctx.cwd.join("plans"));
            let mut rows = Vec::new();
            let mut h = String::new();
            for n in &names {
                match plan::load(n, &ctx.cwd) {
                    Ok(p) => {
                        h.push_str(&format!(
                            "{:<16} phase {:<8} {:>3} layer(s) {:>6} task(s)  {}\n",
                            n,
                            p.phase,
                            p.layers.len(),
                            p.pattern_count(),
                            p.name
                        ));
                        rows.push(json!({"plan": n, "phase": p.phase, "name": p.name, "layers": p.layers.len(), "tasks": p.pattern_count(), "valid": true}));
                    }
                    Err(e) => {
                        h.push_str(&format!("{n:<16} (invalid: run `infra plan {n}`)\n"));
                        rows.push(json!({"plan": n, "valid": false, "error": e.to_string()}));
                    }
                }
            }
            if names.is_empty() {
                h.push_str("no plans in plans/\n");
            }
            ctx.out(h.trim_end(), json!({"plans": rows}));
        }
        Some(n) => {
            let p = ctx.load(n)?;
            let mut h = format!("{} — {}\n", p.name_key, p.name);
            let mut layers = Vec::new();
            for l in &p.layers {
                h.push_str(&format!(
                    "{} {} {}\n",
                    l.id,
                    l.priority.as_deref().unwrap_or(""),
                    l.name
                ));
                let mut pats = Vec::new();
                for pt in &l.patterns {
                    h.push_str(&format!(
                        "  {:<40} {:<12} {}\n",
                        pt.id,
                        pt.backend,
                        pt.estimate
                            .map(|d| human_duration(d.as_secs_f64()))
                            .unwrap_or_default()
                    ));
                    pats.push(json!({"id": pt.id, "backend": pt.backend, "node_group": pt.node_group, "key": pt.key,
                        "estimate_seconds": pt.estimate.map(|d| d.as_secs_f64()), "factors": pt.factors}));
                }
                layers.push(
                    json!({"id": l.id, "name": l.name, "priority": l.priority, "patterns": pats}),
                );
            }
            ctx.out(
                h.trim_end(),
                json!({"plan": p.name_key, "phase": p.phase, "layers": layers}),
            );
        }
    }
    Ok(exit::OK)
}

fn cmd_logs(ctx: &Ctx, name: &str, pattern: &str, only_stderr: bool) -> Result<i32, AppError> {
    let plan = ctx.load(name)?;
    plan::select::select(&plan, &[pattern.to_string()])?;
    let done = plan.results_dir().join(pattern);
    // a finished result, else the newest running attempt
    let dir = if done.join("runtime.json").exists() {
        Some(done)
    } else {
        let staging = plan.state_dir().join("staging");
        std::fs::read_dir(&staging).ok().and_then(|rd| {
            rd.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with(&format!("{pattern}."))
                })
                .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
                .map(|e| e.path())
        })
    };
    let Some(dir) = dir else {
        return Err(AppError::Usage(format!("no logs for \"{pattern}\" yet\n  (hint: it has not run; `infra status {name}` shows what has)")));
    };
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    if ctx.json {
        ctx.out("", json!({"task": pattern, "dir": dir, "stdout": read("stdout.log"), "stderr": read("stderr.log")}));
    } else {
        let mut o = std::io::stdout().lock();
        if !only_stderr {
            let _ = write!(o, "{}", read("stdout.log"));
        }
        let err = read("stderr.log");
        if !err.is_empty() {
            if !only_stderr {
                let _ = writeln!(o, "== stderr ==");
            }
            let _ = write!(o, "{err}");
        }
    }
    Ok(exit::OK)
}

async fn cmd_destroy(
    ctx: &Ctx,
    name: Option<&str>,
    opts: crate::provider::aws::cli::DestroyOpts,
) -> Result<i32, AppError> {
    let Some(name) = name else {
        return Err(AppError::Usage(
            "name the phase to destroy: infra destroy <phase>".into(),
        ));
    };
    let plan = ctx.load(name)?;
    if is_locked(&plan.state_dir().join("run.lock")) {
        return Err(AppError::Usage(format!(
            "`infra run {name}` is still running\n  (hint: stop it with Ctrl-C first)"
        )));
    }
    if plan.provider == ProviderKind::Aws {
        let (catalog, _) = ctx.catalog()?;
        return crate::provider::aws::cli::destroy(ctx, &plan, &catalog, opts).await;
    }
    let (nodes, killed) = local::destroy(&plan).map_err(io_err(plan.state_dir()))?;
    ctx.out(
        &format!("destroyed {}: {} local node(s) removed, {} leftover process group(s) stopped; results kept in {}", plan.name_key, nodes, killed, plan::decode::rel(&plan.results_dir(), &ctx.cwd)),
        json!({"plan": plan.name_key, "nodes_removed": nodes, "processes_stopped": killed, "results": plan.results_dir()}),
    );
    Ok(exit::OK)
}

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
    let (state, _) = journal::read(&plan.state_dir().join("journal.jsonl"))?;
    let slot_price = |t: &TaskDef| {
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
        budget_usd: plan.budget.as_ref().map(|b| b.usd),
        max_hourly_usd: plan.budget.as_ref().and_then(|b| b.max_hourly_usd),
        full: &full,
        remaining: &rest,
        spend,
        patterns,
        tasks_done: done,
        stopped_by_budget: stopped,
    }))
}

async fn cmd_budget(
    ctx: &Ctx,
    phase: Option<&str>,
    format: ReportFormat,
    output: Option<&std::path::Path>,
) -> Result<i32, AppError> {
    use crate::cost::report;
    let names: Vec<String> = match phase {
        Some(p) => vec![p.to_string()],
        None => plan::load::list_plans(&ctx.cwd.join("plans")),
    };
    // deployed AWS phases: what other machines recorded in the bucket
    for n in &names {
        if let Ok(plan) = ctx.load(n) {
            if plan.provider == ProviderKind::Aws {
                crate::provider::aws::cli::pull_ledger(ctx, &plan).await;
            }
        }
    }
    let spend = ledger::read(&ctx.cwd);
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
        None => {
            let _ = write!(std::io::stdout(), "{text}");
        }
    }
    Ok(exit::OK)
}

fn cmd_catalog_show(ctx: &Ctx, instance_type: Option<&str>) -> Result<i32, AppError> {
    let (cat, from) = ctx.catalog()?;
    let region = ctx.region.clone().unwrap_or_else(|| "us-east-1".into());
    let names: Vec<&str> = match instance_type {
        Some(t) => {
            if cat.get(t).is_none() {
                return Err(AppError::Usage(format!(
                    "\"{t}\" is not in the catalog\n  (hint: {})",
                    plan::diag::did_you_mean(t, cat.names())
                )));
            }
            vec![t]
        }
        None => cat.names().collect(),
    };
    let mut h = format!(
        "{} ({}, prices of {}), region {region}\n",
        from, cat.source, cat.date
    );
    h.push_str(&format!(
        "{:<16} {:>5} {:>8} {:>4} {:<6} {:>4} {:>10} {:>10} {:>10}\n",
        "type", "vcpu", "mem GiB", "gpu", "efa", "nics", "on-demand", "spot med", "spot max"
    ));
    let mut rows = Vec::new();
    for n in &names {
        let Some(t) = cat.get(n) else { continue };
        let od = cat
            .price(n, &region, crate::plan::Market::OnDemand)
            .map(|p| p.usd_per_hour);
        let sp = cat
            .price(n, &region, crate::plan::Market::Spot)
            .and_then(|p| p.spot);
        let m = |x: Option<f64>| x.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into());
        h.push_str(&format!(
            "{:<16} {:>5} {:>8} {:>4} {:<6} {:>4} {:>10} {:>10} {:>10}\n",
            n,
            t.vcpus,
            t.memory_gib,
            t.gpus,
            if t.efa {
                format!("yes/{}", t.max_efa_interfaces)
            } else {
                "no".into()
            },
            t.network_cards,
            m(od),
            m(sp.map(|s| s.median)),
            m(sp.map(|s| s.max))
        ));
        rows.push(json!({"instance_type": n, "details": t}));
    }
    ctx.out(
        h.trim_end(),
        json!({"source": from, "date": cat.date, "region": region, "instance_types": rows}),
    );
    Ok(exit::OK)
}

async fn cmd_catalog_refresh(ctx: &Ctx) -> Result<i32, AppError> {
    use crate::provider::aws::{config::AwsSettings, pricing};
    let region = ctx.region.clone().unwrap_or_else(|| "us-east-1".into());
    let mut settings = AwsSettings::new(region.clone());
    settings.profile = ctx.profile.clone();
    settings.endpoint = std::env::var("AWS_ENDPOINT_URL")
        .ok()
        .filter(|e| !e.trim().is_empty());
    let (base, _) = ctx.catalog()?;
    eprintln!("refreshing {} instance types for {region} from the Pricing API, spot price history and DescribeInstanceTypes", base.instance_types.len());
    let (cat, report) = pricing::refresh(&settings, base, &region).await?;
    let path = &ctx.catalog_path;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, cat.to_json()).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    ctx.out(
        &format!(
            "catalog for {region} refreshed into {}: {} types, {} on-demand prices, {} spot prices, {} hardware records{}",
            path.display(), report.types, report.on_demand, report.spot, report.hardware,
            if report.missing.is_empty() { String::new() } else { format!("; no price for {}", report.missing.join(", ")) }
        ),
        json!({"path": path, "report": report}),
    );
    Ok(exit::OK)
}
