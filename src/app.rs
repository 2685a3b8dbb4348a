//! The command layer: resolves settings from arguments, calls the engine,
//! prints, and maps every error to an exit code in one place.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::json;
use thiserror::Error;

use crate::cli::{Cli, Cmd, Global, OrderArg, ProviderArg, RunArgs};
use crate::plan::{self, LoadError, Plan, ProviderKind};
use crate::provider::local;
use crate::report::progress::{human_duration, Reporter};
use crate::runner::journal::{self, Status};
use crate::runner::run::{self as runner, Paths, RunOptions, RunSummary};
use crate::runner::scheduler::{simulate, Policy, Pool, SimTask};
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
    Io { path: PathBuf, source: std::io::Error },
}

impl AppError {
    pub fn exit_code(&self) -> i32 {
        match self {
            AppError::Load(_) | AppError::Render(_) | AppError::Select(_) | AppError::Usage(_) => exit::BAD_INPUT,
            AppError::Budget(_) => exit::BUDGET,
            AppError::Provider(_) | AppError::Run(_) | AppError::Journal(_) | AppError::Io { .. } => exit::PROVIDER,
        }
    }
}

fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> AppError {
    let path = path.into();
    move |source| AppError::Io { path, source }
}

pub fn main(cli: Cli) -> i32 {
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
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
                let _ = writeln!(std::io::stdout(), "{}", json!({"error": e.to_string(), "exit_code": e.exit_code()}));
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
}

impl Ctx {
    fn from(g: &Global) -> Result<Ctx, AppError> {
        let cwd = match &g.dir {
            Some(d) => d.clone(),
            None => std::env::current_dir().map_err(io_err("."))?,
        };
        Ok(Ctx {
            cwd,
            json: g.json,
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
        Ok(p)
    }

    pub fn out(&self, human: &str, json_value: serde_json::Value) {
        let mut o = std::io::stdout().lock();
        if self.json {
            let _ = writeln!(o, "{}", serde_json::to_string_pretty(&json_value).unwrap_or_default());
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
        Cmd::Up { phase, keep, yes, retry_failed } => {
            cmd_plan(&ctx, &phase)?;
            cmd_apply(&ctx, &phase, yes).await?;
            let args = RunArgs { phase: phase.clone(), select: vec!["all".into()], retry_failed, order: OrderArg::LongestFirst };
            let code = cmd_run(&ctx, &args).await?;
            if code == exit::INTERRUPTED {
                eprintln!("interrupted: nodes left up; `infra run {phase}` resumes, `infra destroy {phase}` removes them");
                return Ok(code);
            }
            if keep {
                eprintln!("--keep: nodes left up; `infra destroy {phase}` removes them");
            } else {
                cmd_destroy(&ctx, Some(&phase), false).await?;
            }
            Ok(code)
        }
        Cmd::Status { phase } => cmd_status(&ctx, &phase),
        Cmd::List { phase } => cmd_list(&ctx, phase.as_deref()),
        Cmd::Logs { phase, pattern, stderr } => cmd_logs(&ctx, &phase, &pattern, stderr),
        Cmd::Results { phase, format } => crate::results::cmd_results(&ctx, &phase, format),
        Cmd::Destroy { phase, all, yes: _ } => cmd_destroy(&ctx, phase.as_deref(), all).await,
        Cmd::Budget { .. } => Err(AppError::Provider("`infra budget` is not available in this build yet".into())),
        Cmd::Catalog { .. } => Err(AppError::Provider("`infra catalog` is not available in this build yet".into())),
        Cmd::Schema => {
            let _ = writeln!(std::io::stdout(), "{}", serde_json::to_string_pretty(&plan::schema::schema()).unwrap_or_default());
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

fn pool_for(plan: &Plan) -> Pool {
    Pool::new(plan.node_groups.iter().flat_map(|g| (0..g.count).map(move |i| (format!("{}-{i}", g.name), g.name.clone(), g.slots))))
}

fn schedule(plan: &Plan, tasks: &[TaskDef]) -> Option<crate::runner::scheduler::Simulation> {
    if tasks.iter().all(|t| t.estimate_seconds.is_none()) {
        return None;
    }
    let sim: Vec<SimTask> = tasks.iter().map(|t| SimTask { seconds: t.estimate_seconds.unwrap_or(0.0), ranks: t.nodes, group: t.node_group.clone() }).collect();
    Some(simulate(&sim, &pool_for(plan), Policy::LongestFirst))
}

fn cmd_plan(ctx: &Ctx, name: &str) -> Result<(), AppError> {
    let plan = ctx.load(name)?;
    let (tasks, written) = render_tasks(&plan)?;
    let sim = schedule(&plan, &tasks);
    let mut h = String::new();
    h.push_str(&format!("plan {} ({}): {}\n", plan.name_key, plan::decode::rel(&plan.source, &ctx.cwd), plan.name));
    h.push_str(&format!("  provider {}, project {}, region {}\n", plan.provider.as_str(), plan.project, plan.region));
    h.push_str("  node groups:\n");
    for g in &plan.node_groups {
        h.push_str(&format!(
            "    {:<12} {} x {} ({}{}), {} slot(s) per node\n",
            g.name, g.count, g.instance_type, g.market.as_str(), if g.efa { ", EFA" } else { "" }, g.slots
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
            if l.grid_cells > 0 { format!(" (grid: {} cells)", l.grid_cells) } else { String::new() },
            sample.join(", "),
            if l.patterns.len() > 3 { ", ..." } else { "" }
        ));
    }
    h.push_str(&format!("  tasks: {} rendered into {} ({} changed)\n", tasks.len(), plan::decode::rel(&plan.state_dir().join("tasks"), &ctx.cwd), written));
    if let Some(s) = &sim {
        h.push_str(&format!(
            "  schedule: makespan {} (lower bound {}), longest estimate first\n",
            human_duration(s.makespan),
            human_duration(s.lower_bound)
        ));
    }
    let layers: Vec<serde_json::Value> = plan.layers.iter().map(|l| json!({"id": l.id, "name": l.name, "tasks": l.patterns.len(), "grid_cells": l.grid_cells})).collect();
    ctx.out(
        h.trim_end(),
        json!({
            "plan": plan.name_key, "phase": plan.phase, "project": plan.project, "provider": plan.provider.as_str(),
            "tasks": tasks.len(), "written": written, "layers": layers,
            "node_groups": plan.node_groups,
            "schedule": sim.map(|s| json!({"makespan_seconds": s.makespan, "lower_bound_seconds": s.lower_bound})),
        }),
    );
    Ok(())
}

fn require_local(plan: &Plan, what: &str) -> Result<(), AppError> {
    if plan.provider == ProviderKind::Aws {
        return Err(AppError::Provider(format!(
            "the aws provider cannot {what} in this build\n  (hint: try the campaign locally first with --provider local)"
        )));
    }
    Ok(())
}

fn local_nodes(plan: &Plan) -> Vec<local::LocalNode> {
    local::nodes_for(plan, &|_, _| None, &|_| None)
}

async fn cmd_apply(ctx: &Ctx, name: &str, _yes: bool) -> Result<i32, AppError> {
    let plan = ctx.load(name)?;
    render_tasks(&plan)?;
    require_local(&plan, "apply")?;
    let st = local::apply(&plan, local_nodes(&plan)).map_err(io_err(plan.state_dir()))?;
    local::run_setup(&plan, &st.nodes).await.map_err(AppError::Provider)?;
    let slots: u32 = st.nodes.iter().map(|n| n.slots).sum();
    ctx.out(
        &format!("applied {}: {} local node(s), {} slot(s) in {}", plan.name_key, st.nodes.len(), slots, plan::decode::rel(&plan.state_dir().join("nodes"), &ctx.cwd)),
        json!({"plan": plan.name_key, "provider": "local", "nodes": st.nodes}),
    );
    Ok(exit::OK)
}

async fn cmd_run(ctx: &Ctx, args: &RunArgs) -> Result<i32, AppError> {
    let plan = ctx.load(&args.phase)?;
    let (tasks, _) = render_tasks(&plan)?;
    let selected: std::collections::HashSet<String> = plan::select::select(&plan, &args.select)?.into_iter().map(|p| p.id.clone()).collect();
    let tasks: Vec<TaskDef> = tasks.into_iter().filter(|t| selected.contains(&t.id)).collect();
    require_local(&plan, "run tasks")?;
    let st = match local::load_state(&plan) {
        Some(st) => st,
        None => {
            eprintln!("no local nodes for {} yet: applying", plan.name_key);
            local::apply(&plan, local_nodes(&plan)).map_err(io_err(plan.state_dir()))?
        }
    };
    let killed = crate::provider::process::reap_orphans(&plan.state_dir().join("pids"), &local::marker(&plan));
    if killed > 0 {
        eprintln!("stopped {killed} process group(s) left by an earlier run");
    }
    local::run_setup(&plan, &st.nodes).await.map_err(AppError::Provider)?;
    let exec = Arc::new(local::LocalExecutor::new(&plan, &st));
    let paths = Paths { state_dir: plan.state_dir(), results_dir: plan.results_dir() };
    let opts = RunOptions {
        retry_failed: args.retry_failed,
        policy: Some(if args.order == OrderArg::Fifo { Policy::Fifo } else { Policy::LongestFirst }),
        retry: plan.retry.clone(),
    };
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(None);
    let mut rep = Reporter::new();
    let summary = runner::run(tasks, exec, &paths, "local", &opts, stop_rx, &mut |e| rep.event(e)).await;
    rep.finish();
    let summary = summary?;
    print_summary(ctx, &plan, &summary);
    Ok(if summary.interrupted {
        exit::INTERRUPTED
    } else if summary.failed > 0 {
        exit::TASK_FAILURES
    } else {
        exit::OK
    })
}

fn print_summary(ctx: &Ctx, plan: &Plan, s: &RunSummary) {
    let mut h = format!(
        "{}: {} succeeded, {} failed, {} already done{}{} in {}\nresults in {}",
        plan.name_key,
        s.succeeded,
        s.failed,
        s.already_done,
        if s.skipped_failed > 0 { format!(", {} failed earlier (--retry-failed runs them)", s.skipped_failed) } else { String::new() },
        if s.pending > 0 { format!(", {} not run ({})", s.pending, s.reason) } else { String::new() },
        human_duration(s.wall_seconds),
        plan::decode::rel(&plan.results_dir(), &ctx.cwd),
    );
    if !s.failed_tasks.is_empty() {
        h.push_str(&format!("\nfailed: {} (see {})", s.failed_tasks.join(", "), plan::decode::rel(&plan.results_dir().join("failed-tasks.csv"), &ctx.cwd)));
    }
    ctx.out(&h, json!({"plan": plan.name_key, "summary": s}));
}

fn cmd_status(ctx: &Ctx, name: &str) -> Result<i32, AppError> {
    let plan = ctx.load(name)?;
    let (tasks, _) = render_tasks(&plan)?;
    let (state, _) = journal::read(&plan.state_dir().join("journal.jsonl"))?;
    let mut counts = std::collections::BTreeMap::new();
    let mut missing = Vec::new();
    let mut failed = Vec::new();
    let mut running = Vec::new();
    for t in &tasks {
        let s = state.status_of(&t.key);
        *counts.entry(format!("{s:?}").to_lowercase()).or_insert(0usize) += 1;
        match s {
            Status::Succeeded => {}
            Status::Failed => failed.push(json!({"task": t.id, "error": state.tasks.get(&t.key).and_then(|x| x.last_error.clone())})),
            Status::Running => running.push(t.id.clone()),
            Status::Pending => missing.push(t.id.clone()),
        }
    }
    let nodes = local::load_state(&plan).map(|s| s.nodes).unwrap_or_default();
    let lock_held = is_locked(&plan.state_dir().join("run.lock"));
    let spend: f64 = state.tasks.values().filter_map(|t| t.cost_usd).sum();
    let mut h = format!("{} ({}): {} task(s)\n", plan.name_key, plan.name, tasks.len());
    h.push_str(&format!(
        "  nodes: {}\n",
        if nodes.is_empty() { "none (not applied)".to_string() } else { format!("{} local node(s): {}", nodes.len(), nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>().join(", ")) }
    ));
    h.push_str(&format!("  run: {}\n", if lock_held { "in progress" } else { "not running" }));
    h.push_str(&format!(
        "  tasks: {} done, {} failed, {} running, {} queued\n",
        counts.get("succeeded").unwrap_or(&0),
        counts.get("failed").unwrap_or(&0),
        if lock_held { running.len() } else { 0 },
        missing.len() + if lock_held { 0 } else { running.len() }
    ));
    h.push_str(&format!("  spend so far (at catalog prices): ${spend:.2}\n"));
    if !missing.is_empty() || (!lock_held && !running.is_empty()) {
        let mut all: Vec<&String> = missing.iter().chain(if lock_held { [].iter() } else { running.iter() }).collect();
        all.sort();
        h.push_str(&format!("  missing: {}{}\n", all.iter().take(20).map(|s| s.as_str()).collect::<Vec<_>>().join(", "), if all.len() > 20 { format!(" ... and {} more", all.len() - 20) } else { String::new() }));
    }
    for f in failed.iter().take(20) {
        h.push_str(&format!("  failed: {} — {}\n", f["task"].as_str().unwrap_or(""), f["error"].as_str().unwrap_or("")));
    }
    ctx.out(
        h.trim_end(),
        json!({"plan": plan.name_key, "tasks": tasks.len(), "counts": counts, "missing": missing, "running": running, "failed": failed,
               "nodes": nodes, "run_in_progress": lock_held, "spend_usd": spend, "last_stop": state.last_stop}),
    );
    Ok(exit::OK)
}

fn is_locked(path: &std::path::Path) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(f) = std::fs::OpenOptions::new().write(true).open(path) else { return false };
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
                        h.push_str(&format!("{:<16} phase {:<8} {:>3} layer(s) {:>6} task(s)  {}\n", n, p.phase, p.layers.len(), p.pattern_count(), p.name));
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
                h.push_str(&format!("{} {} {}\n", l.id, l.priority.as_deref().unwrap_or(""), l.name));
                let mut pats = Vec::new();
                for pt in &l.patterns {
                    h.push_str(&format!("  {:<40} {:<12} {}\n", pt.id, pt.backend, pt.estimate.map(|d| human_duration(d.as_secs_f64())).unwrap_or_default()));
                    pats.push(json!({"id": pt.id, "backend": pt.backend, "node_group": pt.node_group, "key": pt.key,
                        "estimate_seconds": pt.estimate.map(|d| d.as_secs_f64()), "factors": pt.factors}));
                }
                layers.push(json!({"id": l.id, "name": l.name, "priority": l.priority, "patterns": pats}));
            }
            ctx.out(h.trim_end(), json!({"plan": p.name_key, "phase": p.phase, "layers": layers}));
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
                .filter(|e| e.file_name().to_string_lossy().starts_with(&format!("{pattern}.")))
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

async fn cmd_destroy(ctx: &Ctx, name: Option<&str>, _all: bool) -> Result<i32, AppError> {
    let Some(name) = name else {
        return Err(AppError::Usage("name the phase to destroy: infra destroy <phase>".into()));
    };
    let plan = ctx.load(name)?;
    require_local(&plan, "destroy")?;
    if is_locked(&plan.state_dir().join("run.lock")) {
        return Err(AppError::Usage(format!("`infra run {name}` is still running\n  (hint: stop it with Ctrl-C first)")));
    }
    let (nodes, killed) = local::destroy(&plan).map_err(io_err(plan.state_dir()))?;
    ctx.out(
        &format!("destroyed {}: {} local node(s) removed, {} leftover process group(s) stopped; results kept in {}", plan.name_key, nodes, killed, plan::decode::rel(&plan.results_dir(), &ctx.cwd)),
        json!({"plan": plan.name_key, "nodes_removed": nodes, "processes_stopped": killed, "results": plan.results_dir()}),
    );
    Ok(exit::OK)
}
