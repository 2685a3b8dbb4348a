//! `infra run` and `infra up`: the same runner, summary and exit codes on
//! every provider.

use std::collections::HashSet;

use serde::Serialize;

use super::context::{gate_with, journal_path, render_tasks, Ctx};
use super::error::{exit, run_exit_code, AppError};
use crate::campaign::keeper::Keeper;
use crate::cli::{OrderArg, RerunArgs, RunArgs};
use crate::plan;
use crate::provider::{DestroyOpts, Finished, ProviderError};
use crate::report::progress::{human_duration, Outlook, Reporter};
use crate::runner::journal::{self, Status};
use crate::runner::run::{self as runner, Paths, RunOptions, RunSummary};
use crate::runner::scheduler::Policy;
use crate::tasks::TaskDef;

#[derive(Debug, Serialize)]
pub struct SummaryView {
    pub plan: String,
    pub provider: String,
    pub summary: RunSummary,
    /// Where the results are, as the user sees it.
    pub results: String,
    /// The failed tasks' file, as the user sees it.
    pub failed_file: String,
    /// The phase's tasks this run did not select (`infra run <phase> L0`).
    pub not_selected: usize,
    #[serde(flatten)]
    pub finished: Finished,
}

pub async fn run(ctx: &Ctx, args: &RunArgs) -> Result<i32, AppError> {
    let (plan, catalog, from) = ctx.prepare(&args.phase)?;
    super::journal::check_before_run(&plan)?;
    let provider = ctx.provider(&plan);
    // one controller at a time: the lease is taken before the shared state
    // is read and before anything is reaped or started, and renewed until
    // the run ends
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(None);
    let keeper = match provider.lease_store(&plan).await? {
        Some(store) => Some(take_lease(ctx, store, &plan, args.take_over, stop_tx).await?),
        None => None,
    };
    let result = run_leased(
        ctx,
        args,
        &plan,
        &catalog,
        &from,
        provider.as_ref(),
        stop_rx,
    )
    .await;
    if let Some(k) = keeper {
        k.release().await;
    }
    result
}

/// Take the phase's lease for this process, or say who holds it (exit 4),
/// and keep it renewed.
async fn take_lease(
    ctx: &Ctx,
    store: std::sync::Arc<dyn crate::campaign::LeaseStore>,
    plan: &plan::Plan,
    take_over: bool,
    stop_tx: tokio::sync::watch::Sender<Option<String>>,
) -> Result<Keeper, AppError> {
    let holder = ctx.holder();
    let held = crate::campaign::acquire(store.as_ref(), &plan.name_key, holder, take_over).await?;
    if let Some(prev) = &held.took_over {
        eprintln!(
            "took over the campaign from {} (its lease {}); what it left running is adopted",
            crate::campaign::lease::who(prev),
            if take_over {
                "had expired"
            } else {
                "was left by a controller of this machine that is gone"
            }
        );
    }
    let phase = plan.name_key.clone();
    Ok(Keeper::start(
        store,
        held,
        ctx.lease_renew,
        stop_tx,
        Box::new(move |why| {
            // not ours any more: stop controlling at once, stopping nothing
            // (the new holder adopts the steps); like a crash, the journal
            // stays consistent
            eprintln!("error: {phase}: {why}");
            std::process::exit(super::error::exit::PROVIDER);
        }),
        Box::new(|w| eprintln!("{w}")),
    ))
}

async fn run_leased(
    ctx: &Ctx,
    args: &RunArgs,
    plan: &plan::Plan,
    catalog: &crate::catalog::Catalog,
    from: &str,
    provider: &dyn crate::provider::Provider,
    stop_rx: tokio::sync::watch::Receiver<Option<String>>,
) -> Result<i32, AppError> {
    // the campaign as any checkout left it (AWS: the bucket's journal):
    // nothing completed runs again. A run needs it: a failure stops it.
    // `--new` (doe-suite layout): a new suite id runs every task again
    let renewed;
    let args = if args.new {
        let mut a = args.clone();
        a.again.rerun = true;
        renewed = a;
        &renewed
    } else {
        args
    };
    provider.sync_campaign(plan).await.map_err(|e| {
        ProviderError::Failed(format!(
            "{}: the campaign's shared state was not read: {e}\n  (hint: nothing was started; a run needs it so as not to run completed tasks again)",
            plan.name_key
        ))
    })?;
    let (all, _) = render_tasks(plan)?;
    let selected: HashSet<String> = plan::select::select(plan, &args.select)?
        .into_iter()
        .map(|p| p.id.clone())
        .collect();
    let tasks: Vec<TaskDef> = all
        .iter()
        .filter(|t| selected.contains(&t.id))
        .cloned()
        .collect();
    let selected_count = tasks.len();
    // completed tasks that run again (`--rerun`, `--changed`, a result gone)
    let prints = crate::tasks::fingerprint::all(plan, &all);
    let reruns = super::rerun::reruns(
        plan,
        &tasks,
        &args.again,
        provider.results_are_local(),
        &prints,
    )?;
    let again = reruns.keys();
    gate_with(plan, &tasks, &again, catalog, from, true)?;
    if provider.recorded_nodes(plan) == 0 {
        // no nodes yet: nothing to run brings none up, and what is brought
        // up must be what `apply` would pay for (the whole campaign left)
        let not_selected = all.len() - tasks.len();
        if let Some(code) = nothing_to_run(
            ctx,
            plan,
            &tasks,
            not_selected,
            args,
            provider.name(),
            &again,
        )? {
            return Ok(code);
        }
        gate_with(plan, &all, &again, catalog, from, false)?;
    }
    let mut session = provider.open_run(plan, catalog).await?;
    // attempts an earlier controller left running: adopted, not stopped
    let (adopted, open) = {
        let (state, _) = journal::read(&journal_path(plan))?;
        let keys: HashSet<String> = tasks.iter().map(|t| t.key.clone()).collect();
        let keep = journal::adoptable(&state, &keys);
        session.keep(keep.clone());
        // what this run will run (for the progress's ETA)
        let open: Vec<String> = tasks
            .iter()
            .filter(|t| match state.status_of(&t.key) {
                Status::Succeeded => again.contains(&t.key),
                Status::Failed => args.retry_failed,
                _ => true,
            })
            .map(|t| t.id.clone())
            .collect();
        (keep, open)
    };
    if args.fresh {
        fresh_checkpoints(ctx, plan, provider, &tasks, &adopted).await?;
    } else if args.again.rerun || args.again.changed {
        // a completed task run again on purpose starts from scratch: its
        // checkpoint is that of the run that completed (a task re-run
        // because its result folder is gone keeps it)
        let again_tasks: Vec<TaskDef> = tasks
            .iter()
            .filter(|t| again.contains(&t.key))
            .cloned()
            .collect();
        let ids: Vec<String> = again_tasks.iter().map(|t| t.id.clone()).collect();
        let n = provider.clear_checkpoints(plan, &ids).await?;
        if n > 0 {
            ctx.provider_settings.log(&format!(
                "removed {n} checkpoint folder(s) of the {} task(s) run again",
                ids.len()
            ));
        }
    }
    // the provider merged what other machines spent and metered the nodes'
    // idle time: the budget looks again (its warnings were said)
    gate_with(plan, &tasks, &again, catalog, from, false)?;
    // from here a signal stops the work instead of killing infra: the
    // setup (dropped with `start`, which stops it) or the run
    let mut signals =
        runner::Interrupts::listen().map_err(super::error::io_err(plan.state_dir()))?;
    let started = tokio::select! {
        s = session.start() => s?,
        why = signals.recv() => {
            return Err(ProviderError::Interrupted(format!(
                "{why} before the run began: what the setup started was stopped, no task ran\n  (hint: `infra run {}` starts again)",
                plan.name_key
            ))
            .into())
        }
    };
    let paths = Paths {
        state_dir: plan.state_dir(),
        results_dir: plan.results_dir(),
    };
    let watchdog = plan.budget.as_ref().map(|b| runner::Watchdog {
        budget_usd: b.usd,
        spent_before_usd: started.spent_before_usd,
        hourly_usd: started.hourly_usd,
        hard_stop: b.hard_stop,
        interval: ctx.watchdog_interval,
    });
    let opts = RunOptions {
        retry_failed: args.retry_failed,
        policy: Some(match args.order {
            OrderArg::Fifo => Policy::Fifo,
            OrderArg::LongestFirst => Policy::LongestFirst,
        }),
        retry: plan.retry.clone(),
        watchdog,
        reruns,
        fingerprints: prints,
    };
    // `infra stop` (through the lease keeper) pauses the campaign like a
    // Ctrl-C: the run ends as interrupted
    let stop_seen = stop_rx.clone();
    let stops = runner::Stops {
        requested: stop_rx,
        signals: Some(signals),
    };
    let outlook = Outlook {
        estimates: tasks
            .iter()
            .filter_map(|t| Some((t.id.clone(), t.estimate_seconds?)))
            .collect(),
        hourly_usd: started.hourly_usd,
        spent_before_usd: started.spent_before_usd,
        heartbeat: ctx.progress_interval,
    };
    let settings = crate::results::failed::settings_of_plan(plan);
    let mut rep = Reporter::with_outlook(ctx.progress_bar, outlook);
    rep.queued(open);
    let doe = super::doe::open(plan, args.new, &tasks)?;
    let summary = runner::run(
        tasks,
        started.executor,
        &paths,
        provider.name(),
        &opts,
        stops,
        &mut |e| {
            rep.event(e);
            if matches!(e, crate::runner::run::RunEvent::Failed { .. }) {
                failed_csv(plan, &all, &settings, false);
            }
            if ctx.json {
                ctx.json_doc("run", &serde_json::to_value(e).unwrap_or_default());
            }
            if let Some(d) = &doe {
                d.on_event(e);
            }
        },
    )
    .await;
    rep.finish();
    // also the failures of earlier runs, and without those run again
    failed_csv(plan, &all, &settings, false);
    if let Some(d) = &doe {
        d.finish();
    }
    let mut summary = summary?;
    if stop_seen.borrow().is_some() {
        summary.interrupted = true;
    }
    let finished = session.finish(&summary).await?;
    let code = run_exit_code(&summary);
    let view = SummaryView {
        plan: plan.name_key.clone(),
        provider: provider.name().to_string(),
        summary,
        results: ctx.rel(&plan.results_dir()),
        failed_file: ctx.rel(&plan.results_dir().join("failed-tasks.csv")),
        not_selected: all.len().saturating_sub(selected_count),
        finished,
    };
    ctx.emit("summary", &summary_text(&view), &view);
    Ok(code)
}

/// When every selected task is done (or failed, without `--retry-failed`)
/// and none runs again:
/// the summary of a run that starts nothing, and its exit code.
fn nothing_to_run(
    ctx: &Ctx,
    plan: &plan::Plan,
    tasks: &[TaskDef],
    not_selected: usize,
    args: &RunArgs,
    provider: &str,
    again: &HashSet<String>,
) -> Result<Option<i32>, AppError> {
    let (state, _) = journal::read(&journal_path(plan))?;
    let mut summary = RunSummary {
        selected: tasks.len(),
        ..Default::default()
    };
    for t in tasks {
        match state.status_of(&t.key) {
            Status::Succeeded if !again.contains(&t.key) => summary.already_done += 1,
            Status::Failed if !args.retry_failed => summary.skipped_failed += 1,
            _ => return Ok(None),
        }
    }
    let view = SummaryView {
        plan: plan.name_key.clone(),
        provider: provider.to_string(),
        summary,
        results: ctx.rel(&plan.results_dir()),
        failed_file: ctx.rel(&plan.results_dir().join("failed-tasks.csv")),
        not_selected,
        finished: Finished::default(),
    };
    ctx.emit("summary", &summary_text(&view), &view);
    Ok(Some(run_exit_code(&view.summary)))
}

/// The run's last lines: what ran, what failed and where to look.
pub fn summary_text(v: &SummaryView) -> String {
    let s = &v.summary;
    let mut h = format!(
        "{}: {} succeeded, {} failed, {} already done{}{}{} in {}\nresults in {}",
        v.plan,
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
        if v.not_selected > 0 {
            format!(
                ", {} other task(s) of the phase not selected",
                v.not_selected
            )
        } else {
            String::new()
        },
        human_duration(s.wall_seconds),
        v.results,
    );
    if !s.failed_tasks.is_empty() {
        h.push_str(&format!(
            "\nfailed: {} (see {})",
            s.failed_tasks.join(", "),
            v.failed_file
        ));
    }
    h
}

/// `--fresh`: remove the checkpoints of the selected tasks, but not of
/// those still running from an earlier controller (adopted: their running
/// step owns the folder).
async fn fresh_checkpoints(
    ctx: &Ctx,
    plan: &plan::Plan,
    provider: &dyn crate::provider::Provider,
    tasks: &[TaskDef],
    adopted: &[(String, u32)],
) -> Result<(), AppError> {
    let running: HashSet<&str> = adopted.iter().map(|(t, _)| t.as_str()).collect();
    let ids: Vec<String> = tasks
        .iter()
        .filter(|t| !running.contains(t.id.as_str()))
        .map(|t| t.id.clone())
        .collect();
    let n = provider.clear_checkpoints(plan, &ids).await?;
    ctx.provider_settings.log(&format!(
        "--fresh: removed {n} checkpoint folder(s) of {} selected task(s)",
        ids.len()
    ));
    if !running.is_empty() {
        let mut names: Vec<&str> = running.into_iter().collect();
        names.sort_unstable();
        ctx.provider_settings.log(&format!(
            "--fresh: kept the checkpoints of {} task(s) still running from an earlier controller: {}",
            names.len(),
            names.join(", ")
        ));
    }
    Ok(())
}

/// Rewrite `results/<phase>/failed-tasks.csv`: the tasks the journal says
/// failed for good, from their results (a failed write is said, and the
/// run goes on: the journal has every failure).
pub fn failed_csv(
    plan: &plan::Plan,
    all: &[TaskDef],
    settings: &crate::results::table::Settings,
    raw_csv: bool,
) -> usize {
    let failed: crate::results::failed::Journaled = match journal::read(&journal_path(plan)) {
        Ok((state, _)) => all
            .iter()
            .filter(|t| state.status_of(&t.key) == Status::Failed)
            .filter_map(|t| {
                let st = state.tasks.get(&t.key)?;
                Some((t.id.clone(), (st.attempts, st.last_error.clone())))
            })
            .collect(),
        Err(_) => return 0,
    };
    let dir = plan.results_dir();
    match crate::results::failed::rewrite(&dir, all, settings, &failed, raw_csv) {
        Ok(n) => n,
        Err(e) => {
            eprintln!(
                "warning: {} not written: {e}",
                dir.join(crate::results::failed::FILE).display()
            );
            0
        }
    }
}

/// `infra up`: plan, apply, run all, destroy (unless `--keep` or the run
/// was interrupted).
/// `up --rerun` / `--changed`: the budget looks at the completed tasks
/// that run again before `apply` brings anything up (`apply`'s own gate
/// counts only the tasks not completed), so that a refused run leaves no
/// node up (on Slurm no allocation holding hours).
fn gate_reruns(ctx: &Ctx, phase: &str, again: &RerunArgs) -> Result<(), AppError> {
    let (plan, catalog, from) = ctx.prepare(phase)?;
    let (all, _) = render_tasks(&plan)?;
    let prints = crate::tasks::fingerprint::all(&plan, &all);
    let results_local = ctx.provider(&plan).results_are_local();
    let reruns = super::rerun::reruns(&plan, &all, again, results_local, &prints)?;
    gate_with(&plan, &all, &reruns.keys(), &catalog, &from, false)?;
    Ok(())
}

pub async fn up(
    ctx: &Ctx,
    phase: &str,
    keep: bool,
    yes: bool,
    retry_failed: bool,
    order: OrderArg,
    again: RerunArgs,
) -> Result<i32, AppError> {
    super::plan::plan(ctx, phase, None)?;
    super::journal::check_before_run(&ctx.load(phase)?)?;
    if again.rerun || again.changed {
        gate_reruns(ctx, phase, &again)?;
    }
    if let Err(e) = super::apply::apply(ctx, phase, yes).await {
        return Err(torn_down(ctx, phase, keep, "apply", e).await);
    }
    let args = RunArgs {
        phase: phase.to_string(),
        select: vec!["all".into()],
        retry_failed,
        order,
        again,
        take_over: false,
        fresh: false,
        detach: false,
        new: false,
    };
    let code = match run(ctx, &args).await {
        Ok(c) => c,
        Err(e) => return Err(torn_down(ctx, phase, keep, "run", e).await),
    };
    if code == exit::INTERRUPTED {
        eprintln!("interrupted: nodes left up; `infra run {phase}` resumes, `infra destroy {phase}` removes them");
        return Ok(code);
    }
    if keep {
        eprintln!("--keep: nodes left up; `infra destroy {phase}` removes them");
    } else {
        super::destroy::destroy(ctx, Some(phase), DestroyOpts::default()).await?;
    }
    Ok(code)
}

/// `infra up` after its apply or run failed: what the apply created is
/// destroyed (unless `--keep`), so that nothing bills with no one watching;
/// the error is returned as it was. Refusals (bad input, the budget) and
/// interruptions created nothing to remove, or leave it on purpose.
async fn torn_down(ctx: &Ctx, phase: &str, keep: bool, what: &str, e: AppError) -> AppError {
    let code = e.exit_code();
    if matches!(code, exit::BAD_INPUT | exit::BUDGET | exit::INTERRUPTED) {
        return e;
    }
    if keep {
        eprintln!("--keep: the {what} failed and the nodes are left up; `infra destroy {phase}` removes them");
        return e;
    }
    eprintln!("the {what} failed (the error follows): destroying what it created, so that nothing bills (`infra up --keep` leaves it up to look at)");
    if let Err(d) = super::destroy::destroy(ctx, Some(phase), DestroyOpts::default()).await {
        eprintln!(
            "warning: destroy failed too ({d}); `infra destroy {phase}` removes what is left"
        );
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(f: impl FnOnce(&mut RunSummary)) -> SummaryView {
        let mut summary = RunSummary {
            selected: 4,
            succeeded: 2,
            failed: 1,
            already_done: 1,
            wall_seconds: 75.0,
            failed_tasks: vec!["t-3".into()],
            ..Default::default()
        };
        f(&mut summary);
        SummaryView {
            plan: "demo".into(),
            provider: "local".into(),
            summary,
            results: "results/demo".into(),
            failed_file: "results/demo/failed-tasks.csv".into(),
            not_selected: 0,
            finished: Finished::default(),
        }
    }

    #[test]
    fn summary_with_a_failure() {
        insta::assert_snapshot!(summary_text(&view(|_| {})));
    }

    #[test]
    fn summary_with_tasks_not_run_and_failures_of_an_earlier_run() {
        insta::assert_snapshot!(summary_text(&view(|s| {
            s.failed = 0;
            s.failed_tasks.clear();
            s.skipped_failed = 2;
            s.pending = 3;
            s.reason = "no replacement came within 3s".into();
        })));
    }
}
