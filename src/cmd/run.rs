//! `infra run` and `infra up`: the same runner, summary and exit codes on
//! every provider.

use std::collections::HashSet;

use serde::Serialize;

use super::context::{gate, render_tasks, Ctx};
use super::error::{exit, run_exit_code, AppError};
use crate::cli::{OrderArg, RunArgs};
use crate::plan;
use crate::provider::{DestroyOpts, Finished};
use crate::report::progress::{human_duration, Reporter};
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
    #[serde(flatten)]
    pub finished: Finished,
}

pub async fn run(ctx: &Ctx, args: &RunArgs) -> Result<i32, AppError> {
    let (plan, catalog, from) = ctx.prepare(&args.phase)?;
    super::journal::check_before_run(&plan)?;
    let (tasks, _) = render_tasks(&plan)?;
    let selected: HashSet<String> = plan::select::select(&plan, &args.select)?
        .into_iter()
        .map(|p| p.id.clone())
        .collect();
    let tasks: Vec<TaskDef> = tasks
        .into_iter()
        .filter(|t| selected.contains(&t.id))
        .collect();
    gate(&plan, &tasks, &catalog, &from)?;
    let provider = ctx.provider(&plan);
    let mut session = provider.open_run(&plan, &catalog).await?;
    // the provider merged what other machines spent and metered the nodes'
    // idle time: the budget looks again
    gate(&plan, &tasks, &catalog, &from)?;
    let started = session.start().await?;
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
    };
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(None);
    let mut rep = Reporter::new(ctx.progress_bar);
    let summary = runner::run(
        tasks,
        started.executor,
        &paths,
        provider.name(),
        &opts,
        stop_rx,
        &mut |e| rep.event(e),
    )
    .await;
    rep.finish();
    let summary = summary?;
    let finished = session.finish(&summary).await?;
    let code = run_exit_code(&summary);
    let view = SummaryView {
        plan: plan.name_key.clone(),
        provider: provider.name().to_string(),
        summary,
        results: ctx.rel(&plan.results_dir()),
        failed_file: ctx.rel(&plan.results_dir().join("failed-tasks.csv")),
        finished,
    };
    ctx.emit(&summary_text(&view), &view);
    Ok(code)
}

/// The run's last lines: what ran, what failed and where to look.
pub fn summary_text(v: &SummaryView) -> String {
    let s = &v.summary;
    let mut h = format!(
        "{}: {} succeeded, {} failed, {} already done{}{} in {}\nresults in {}",
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

/// `infra up`: plan, apply, run all, destroy (unless `--keep` or the run
/// was interrupted).
pub async fn up(
    ctx: &Ctx,
    phase: &str,
    keep: bool,
    yes: bool,
    retry_failed: bool,
) -> Result<i32, AppError> {
    super::plan::plan(ctx, phase)?;
    super::journal::check_before_run(&ctx.load(phase)?)?;
    super::apply::apply(ctx, phase, yes).await?;
    let args = RunArgs {
        phase: phase.to_string(),
        select: vec!["all".into()],
        retry_failed,
        order: OrderArg::LongestFirst,
    };
    let code = run(ctx, &args).await?;
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
