//! `infra status`: nodes and stacks (from the provider), tasks (from the
//! journal), the same keys on every provider.

use std::collections::BTreeMap;

use serde::Serialize;

use super::context::{journal_path, render_tasks, sync_campaign, Ctx};
use super::error::{exit, AppError};
use crate::campaign::control::ControllerView;
use crate::provider::Infra;
use crate::runner::journal::{self, Damage, InFlight, Status};
use crate::runner::lock;
use crate::runner::rerun::result_present;

#[derive(Debug, Serialize)]
pub struct StatusView {
    pub plan: String,
    pub name: String,
    pub provider: String,
    pub tasks: usize,
    /// Tasks per status (`succeeded`, `failed`, `running`, `pending`).
    pub counts: BTreeMap<String, usize>,
    /// Tasks nobody runs now and that have not succeeded, sorted.
    pub missing: Vec<String>,
    /// Completed tasks whose result folder is gone (deleted by hand): they
    /// count as missing, and `infra run` runs them again.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub results_gone: Vec<String>,
    /// Tasks a run on this machine (or the campaign's live controller) is
    /// running now.
    pub running: Vec<String>,
    /// The attempts running now: task, attempt, nodes, since when.
    pub running_tasks: Vec<RunningRow>,
    pub failed: Vec<FailedRow>,
    /// Whether an `infra run` of the phase holds its lock on this machine.
    pub run_in_progress: bool,
    /// Who controls the campaign (its lease): where, host, since, alive;
    /// null without a lease.
    pub controller: Option<ControllerView>,
    /// What the finished tasks cost (the journal's per-task costs).
    pub spend_usd: f64,
    /// What the phase has spent as the ledger says (`infra budget`'s
    /// figure: metered node time on AWS, idle time included).
    pub metered_usd: f64,
    /// Bytes of each task's checkpoint (`$INFRA_CHECKPOINT_DIR`), by task.
    pub checkpoints: BTreeMap<String, u64>,
    pub last_stop: Option<String>,
    /// Damaged journal lines (skipped; `infra journal repair` drops them).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub journal_damage: Vec<Damage>,
    #[serde(flatten)]
    pub infra: Infra,
}

#[derive(Debug, Serialize)]
pub struct RunningRow {
    pub task: String,
    pub attempt: u32,
    pub nodes: Vec<String>,
    /// When it was dispatched (the journal's time), and the seconds since.
    pub since: String,
    pub elapsed_seconds: Option<f64>,
}

impl RunningRow {
    fn of(id: &str, f: &InFlight, now: chrono::DateTime<chrono::Utc>) -> RunningRow {
        let elapsed = chrono::DateTime::parse_from_rfc3339(&f.dispatched)
            .ok()
            .map(|t| {
                ((now - t.with_timezone(&chrono::Utc))
                    .num_milliseconds()
                    .max(0) as f64
                    / 1000.0)
                    .round()
            });
        RunningRow {
            task: id.to_string(),
            attempt: f.attempt,
            nodes: f.nodes.clone(),
            since: f.dispatched.clone(),
            elapsed_seconds: elapsed,
        }
    }
}

/// `1h02m`, `3m05s`, `42s`.
fn duration_text(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, _) => format!("{h}h{m:02}m"),
    }
}

#[derive(Debug, Serialize)]
pub struct FailedRow {
    pub task: String,
    pub error: Option<String>,
}

pub async fn status(ctx: &Ctx, name: &str) -> Result<i32, AppError> {
    let plan = ctx.load(name)?;
    let (tasks, _) = render_tasks(&plan)?;
    let provider = ctx.provider(&plan);
    let infra = provider.status(&plan).await?;
    sync_campaign(ctx, &plan).await;
    let controller = provider
        .lease(&plan)
        .await?
        .map(|l| ControllerView::of(&l, chrono::Utc::now()));
    let scan = journal::read_lenient(&journal_path(&plan))?;
    let journal_damage = scan.damaged.clone();
    let state = scan.state;
    let run_in_progress = lock::is_held(&plan.state_dir().join("run.lock"));
    // the spend `infra budget` shows (AWS: the bucket's ledger merged first)
    if let Err(e) = provider.sync_ledger(&plan).await {
        eprintln!("warning: the shared ledger was not read: {e}");
    }
    let metered = super::context::spent(&plan)?;
    let checkpoints = provider.checkpoint_sizes(&plan).await.unwrap_or_else(|e| {
        eprintln!("warning: the checkpoints' sizes were not read: {e}");
        BTreeMap::new()
    });
    // a run elsewhere (a detached controller) runs while its lease lives
    let active = run_in_progress || controller.as_ref().is_some_and(|c| c.alive);
    let now = chrono::Utc::now();
    let mut running_tasks = Vec::new();
    let mut counts = BTreeMap::new();
    let mut missing = Vec::new();
    let mut failed = Vec::new();
    let mut running = Vec::new();
    let mut results_gone = Vec::new();
    let results_local = provider.results_are_local();
    for t in &tasks {
        let mut s = state.status_of(&t.key);
        // what `infra run` and `infra results` count as done: a result
        if s == Status::Succeeded && results_local && !result_present(&plan.results_dir(), &t.id) {
            s = Status::Pending;
            results_gone.push(t.id.clone());
        }
        *counts
            .entry(format!("{s:?}").to_lowercase())
            .or_insert(0usize) += 1;
        match s {
            Status::Succeeded => {}
            Status::Failed => failed.push(FailedRow {
                task: t.id.clone(),
                error: state.tasks.get(&t.key).and_then(|x| x.last_error.clone()),
            }),
            // what a run that is gone left as running is missing
            Status::Running if active => {
                running.push(t.id.clone());
                let f = state.tasks.get(&t.key).and_then(|x| x.in_flight.as_ref());
                running_tasks.extend(f.map(|f| RunningRow::of(&t.id, f, now)));
            }
            Status::Running | Status::Pending => missing.push(t.id.clone()),
        }
    }
    missing.sort();
    let view = StatusView {
        plan: plan.name_key.clone(),
        name: plan.name.clone(),
        provider: provider.name().to_string(),
        tasks: tasks.len(),
        counts,
        missing,
        results_gone,
        running,
        running_tasks,
        failed,
        run_in_progress,
        controller,
        // + 0.0: an empty f64 sum is -0.0, shown as "$-0.00"
        spend_usd: state.tasks.values().filter_map(|t| t.cost_usd).sum::<f64>() + 0.0,
        metered_usd: metered + 0.0,
        checkpoints,
        last_stop: state.last_stop.clone(),
        journal_damage,
        infra,
    };
    ctx.emit("status", &text(&view), &view);
    Ok(exit::OK)
}

/// `checkpoints: 3 task(s), 12.5 MiB (largest: t-2 8.0 MiB)`.
fn checkpoints_line(c: &BTreeMap<String, u64>) -> String {
    let total: u64 = c.values().sum();
    let mut line = format!("checkpoints: {} task(s), {}", c.len(), human_bytes(total));
    if let Some((t, b)) = c.iter().max_by_key(|(t, b)| (**b, std::cmp::Reverse(*t))) {
        if c.len() > 1 {
            line.push_str(&format!(" (largest: {t} {})", human_bytes(*b)));
        }
    }
    line
}

fn human_bytes(b: u64) -> String {
    indicatif::HumanBytes(b).to_string()
}

/// What `infra status` shows.
pub fn text(v: &StatusView) -> String {
    let mut h = format!(
        "{} ({}): {} task(s), provider {}{}\n",
        v.plan,
        v.name,
        v.tasks,
        v.provider,
        v.infra
            .region
            .as_deref()
            .map(|r| format!(", region {r}"))
            .unwrap_or_default()
    );
    if !v.infra.stacks.is_empty() {
        let stacks: Vec<String> = v
            .infra
            .stacks
            .iter()
            .map(|s| {
                format!(
                    "{}: {}",
                    s.name,
                    s.status.as_deref().unwrap_or("not deployed")
                )
            })
            .collect();
        h.push_str(&format!("  stacks: {}\n", stacks.join("; ")));
    }
    if let Some(b) = &v.infra.bucket {
        h.push_str(&format!("  bucket: {b}\n"));
    }
    if v.infra.nodes.is_empty() {
        h.push_str("  nodes: none (not applied)\n");
    } else {
        h.push_str(&format!("  nodes: {}\n", v.infra.nodes.len()));
        for n in &v.infra.nodes {
            h.push_str(&format!(
                "    {:<12} {:<20} {:<14} {:<10} {:<12} {:<11} {:<7} {}\n",
                n.name,
                n.id,
                n.instance_type,
                n.market,
                n.zone.as_deref().unwrap_or("-"),
                n.state,
                if n.online { "online" } else { "-" },
                n.address
            ));
        }
    }
    h.push_str(&format!(
        "  run: {}\n",
        if v.run_in_progress {
            "in progress"
        } else {
            "not running"
        }
    ));
    h.push_str(&format!(
        "  {}\n",
        ControllerView::line(v.controller.as_ref())
    ));
    let c = |k: &str| v.counts.get(k).copied().unwrap_or(0);
    h.push_str(&format!(
        "  tasks: {} done, {} failed, {} running, {} queued\n",
        c("succeeded"),
        c("failed"),
        v.running.len(),
        v.missing.len()
    ));
    h.push_str(&format!(
        "  spend so far: ${:.2} (as `infra budget` counts it; finished tasks: ${:.2})\n",
        v.metered_usd, v.spend_usd
    ));
    for r in v.running_tasks.iter().take(50) {
        h.push_str(&format!(
            "  running: {} attempt {} on {}{}\n",
            r.task,
            r.attempt,
            r.nodes.join(", "),
            r.elapsed_seconds
                .map(|s| format!(" for {}", duration_text(s)))
                .unwrap_or_default()
        ));
    }
    if v.running_tasks.len() > 50 {
        h.push_str(&format!(
            "  running: ... and {} more\n",
            v.running_tasks.len() - 50
        ));
    }
    if !v.checkpoints.is_empty() {
        h.push_str(&format!("  {}\n", checkpoints_line(&v.checkpoints)));
    }
    if !v.missing.is_empty() {
        h.push_str(&format!(
            "  missing: {}{}\n",
            v.missing
                .iter()
                .take(20)
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", "),
            if v.missing.len() > 20 {
                format!(" ... and {} more", v.missing.len() - 20)
            } else {
                String::new()
            }
        ));
    }
    if !v.results_gone.is_empty() {
        h.push_str(&format!(
            "  result folder gone: {}{} (`infra run {}` runs them again)\n",
            v.results_gone
                .iter()
                .take(20)
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", "),
            if v.results_gone.len() > 20 {
                format!(" ... and {} more", v.results_gone.len() - 20)
            } else {
                String::new()
            },
            v.plan
        ));
    }
    for d in &v.journal_damage {
        h.push_str(&format!(
            "  warning: journal line {} is damaged and was skipped: {}\n",
            d.line, d.message
        ));
    }
    if !v.journal_damage.is_empty() {
        h.push_str(&format!(
            "  (hint: `infra journal repair {}` drops the damaged line(s) and keeps a copy; `infra run` refuses until then)\n",
            v.plan
        ));
    }
    for f in v.failed.iter().take(20) {
        h.push_str(&format!(
            "  failed: {} — {}\n",
            f.task,
            f.error.as_deref().unwrap_or("")
        ));
    }
    h
}
