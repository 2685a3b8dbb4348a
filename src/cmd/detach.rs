//! `--detach`, `infra attach` and `infra stop`: a campaign whose controller
//! runs without this process (AWS: a small instance in the cloud; local: a
//! background daemon). The provider starts and reads the controller; this
//! file builds its command line and shows what happened.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::context::{gate_with, journal_path, render_tasks, Ctx};
use super::error::{exit, AppError};
use crate::campaign::{control, StopRequest};
use crate::cli::{OrderArg, RerunArgs, RunArgs};
use crate::plan;
use crate::provider::{DetachRequest, Detached, ProviderError};
use crate::runner::journal::{self, Status};
use crate::tasks::TaskDef;

/// What the detached campaign runs: `infra run` with its selection, or
/// `infra up`.
pub enum Campaign<'a> {
    Run(&'a RunArgs),
    Up {
        phase: &'a str,
        keep: bool,
        retry_failed: bool,
        order: OrderArg,
        again: RerunArgs,
    },
}

impl Campaign<'_> {
    fn phase(&self) -> &str {
        match self {
            Campaign::Run(a) => &a.phase,
            Campaign::Up { phase, .. } => phase,
        }
    }

    /// The controller's command lines: the same as the user's, without
    /// `--detach`. A controller has nobody to ask: `--yes` (the user's
    /// `--detach` is the consent; the plan's checks ran here first).
    pub fn commands(&self) -> Vec<Vec<String>> {
        let s = |x: &str| x.to_string();
        match self {
            Campaign::Run(a) => {
                let mut c = vec![s("run"), a.phase.clone()];
                c.extend(a.select.iter().cloned());
                if a.retry_failed {
                    c.push(s("--retry-failed"));
                }
                c.extend(super::rerun::forward(&a.again));
                if a.take_over {
                    c.push(s("--take-over"));
                }
                if a.fresh {
                    c.push(s("--fresh"));
                }
                c.push(s("--order"));
                c.push(s(match a.order {
                    OrderArg::Fifo => "fifo",
                    OrderArg::LongestFirst => "longest-first",
                }));
                vec![c]
            }
            Campaign::Up {
                phase,
                keep,
                retry_failed,
                order,
                again,
            } => {
                let mut c = vec![s("up"), s(phase), s("--yes")];
                if *keep {
                    c.push(s("--keep"));
                }
                if *retry_failed {
                    c.push(s("--retry-failed"));
                }
                if *order == OrderArg::Fifo {
                    c.push(s("--order"));
                    c.push(s("fifo"));
                }
                c.extend(super::rerun::forward(again));
                vec![c]
            }
        }
    }
}

#[derive(Debug, Serialize)]
pub struct DetachView {
    pub plan: String,
    pub provider: String,
    #[serde(flatten)]
    pub detached: Detached,
    /// What to type next.
    pub commands: Vec<String>,
}

/// `infra run|up <phase> --detach`: the plan's checks and the budget here,
/// then hand the campaign over and return.
pub async fn detach(ctx: &Ctx, what: Campaign<'_>) -> Result<i32, AppError> {
    let phase = what.phase();
    let (plan, catalog, from) = ctx.prepare(phase)?;
    super::journal::check_before_run(&plan)?;
    let (all, _) = render_tasks(&plan)?;
    let tasks: Vec<TaskDef> = match &what {
        Campaign::Run(a) => {
            let selected: HashSet<String> = plan::select::select(&plan, &a.select)?
                .into_iter()
                .map(|p| p.id.clone())
                .collect();
            all.iter()
                .filter(|t| selected.contains(&t.id))
                .cloned()
                .collect()
        }
        Campaign::Up { .. } => all.clone(),
    };
    let provider = ctx.provider(&plan);
    // completed tasks the controller will run again cost as much
    let again = match &what {
        Campaign::Run(a) => &a.again,
        Campaign::Up { again, .. } => again,
    };
    let prints = crate::tasks::fingerprint::all(&plan, &all);
    let again =
        super::rerun::reruns(&plan, &tasks, again, provider.results_are_local(), &prints)?.keys();
    let estimate = gate_with(&plan, &tasks, &again, &catalog, &from, true)?;
    controller_fits(&plan, &catalog, &estimate)?;
    if let Some(l) = provider.lease(&plan).await? {
        if !l.expired(chrono::Utc::now()) {
            return Err(ProviderError::Failed(format!(
                "{} is controlled already: {} on {} (pid {}) since {}\n  (hint: `infra attach {}` follows it, `infra stop {}` stops it)",
                plan.name_key,
                l.holder.place,
                l.holder.host,
                l.holder.pid,
                l.since.format("%Y-%m-%d %H:%M:%S UTC"),
                plan.name_key,
                plan.name_key
            ))
            .into());
        }
    }
    let req = DetachRequest {
        commands: what.commands(),
        global: global_args(ctx),
        cwd: ctx.cwd.clone(),
        hours: estimate.hours,
    };
    let detached = provider.detach(&plan, &catalog, &req).await?;
    let p = &plan.name_key;
    let view = DetachView {
        plan: p.clone(),
        provider: provider.name().to_string(),
        commands: vec![
            format!("infra attach {p}"),
            format!("infra status {p}"),
            format!("infra stop {p}"),
        ],
        detached,
    };
    ctx.emit("detach", &text(ctx, &view), &view);
    Ok(exit::OK)
}

/// The controller in the cloud bills too (its spend is metered into the
/// ledger like a node's): the budget must pay for it over the campaign's
/// estimated hours, on top of the nodes.
fn controller_fits(
    plan: &plan::Plan,
    catalog: &crate::catalog::Catalog,
    e: &crate::cost::estimate::Estimate,
) -> Result<(), AppError> {
    if plan.provider != plan::ProviderKind::Aws {
        return Ok(());
    }
    let (Some((t, usd_h)), Some(h)) = (
        crate::stacks::controller::instance_type(plan, catalog),
        e.hours,
    ) else {
        return Ok(());
    };
    let mut with = e.clone();
    with.total_usd += usd_h * h;
    with.total_worst_usd += usd_h * h;
    with.hourly_usd += usd_h;
    let v = crate::cost::estimate::verdict(plan, &with, super::context::spent(plan)?);
    if v.ok {
        return Ok(());
    }
    Err(AppError::Budget(format!(
        "the budget refuses {} with its controller in the cloud ({t} on-demand, ${usd_h:.4}/h for {h:.1} h: ${:.2}):\n  {}\n  (nothing was started; `infra run {}` without --detach runs it from this machine, or raise \"budget.usd\")",
        plan.name_key,
        usd_h * h,
        v.reasons.join("\n  "),
        plan.name_key
    )))
}

/// The options every command line of the controller carries.
fn global_args(ctx: &Ctx) -> Vec<String> {
    let mut g = Vec::new();
    if let Some(p) = ctx.provider {
        g.push("--provider".to_string());
        g.push(p.as_str().to_string());
    }
    if let Some(r) = &ctx.region {
        g.push("--region".to_string());
        g.push(r.clone());
    }
    g
}

/// What `--detach` says.
pub fn text(ctx: &Ctx, v: &DetachView) -> String {
    let d = &v.detached;
    let mut h = format!("{}: detached; the controller runs as {}", v.plan, d.place);
    if let Some(pid) = d.pid {
        h.push_str(&format!(" (pid {pid})"));
    }
    h.push('\n');
    if let Some(s) = &d.stack {
        h.push_str(&format!("  its stack: {s}\n"));
    }
    if let Some(c) = &d.cost {
        h.push_str(&format!(
            "  controller: {} on demand, ${:.4}/h{} ({})\n",
            c.instance_type,
            c.usd_per_hour,
            match (c.hours, c.usd) {
                (Some(hours), Some(usd)) => format!(" x {hours:.1} h = ${usd:.2}"),
                _ => String::new(),
            },
            c.why
        ));
    }
    let log = std::path::Path::new(&d.log);
    h.push_str(&format!(
        "  its output: {}\n",
        if log.is_absolute() {
            ctx.rel(log)
        } else {
            d.log.clone()
        }
    ));
    for c in &v.commands {
        h.push_str(&format!("  {c}\n"));
    }
    h
}

/// `infra attach <phase>`: the controller's output from where it is, then
/// followed until the controller ends.
pub async fn attach(ctx: &Ctx, phase: &str) -> Result<i32, AppError> {
    let plan = ctx.load(phase)?;
    let provider = ctx.provider(&plan);
    let mut offset = 0u64;
    let mut seen_running = false;
    // with --json: each line of the controller's output as {"event": "log"}
    let mut partial: Vec<u8> = Vec::new();
    let relay = |bytes: &[u8], partial: &mut Vec<u8>, end: bool| {
        if !ctx.json {
            ctx.write_bytes(bytes);
            return;
        }
        partial.extend_from_slice(bytes);
        while let Some(i) = partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = partial.drain(..=i).collect();
            let text = String::from_utf8_lossy(&line[..i]).into_owned();
            ctx.json_doc("log", &serde_json::json!({ "line": text }));
        }
        if end && !partial.is_empty() {
            let text = String::from_utf8_lossy(partial).into_owned();
            partial.clear();
            ctx.json_doc("log", &serde_json::json!({ "line": text }));
        }
    };
    let poll = ctx
        .provider_settings
        .poll
        .unwrap_or(Duration::from_secs(2))
        .min(Duration::from_secs(2));
    loop {
        let log = provider.controller_log(&plan, offset).await?;
        if !log.bytes.is_empty() {
            offset += log.bytes.len() as u64;
            relay(&log.bytes, &mut partial, false);
        }
        if !log.running {
            if !seen_running && offset == 0 {
                eprintln!(
                    "no detached controller runs {}\n  (hint: `infra run {} all --detach` starts one)",
                    plan.name_key, plan.name_key
                );
                return Ok(exit::OK);
            }
            // its last lines, written as it ended
            let last = provider.controller_log(&plan, offset).await?;
            relay(&last.bytes, &mut partial, true);
            ctx.out(
                "ended",
                "",
                serde_json::json!({ "plan": plan.name_key, "controller": "ended" }),
            );
            eprintln!("the controller of {} has ended", plan.name_key);
            return Ok(exit::OK);
        }
        seen_running = true;
        tokio::time::sleep(poll).await;
    }
}

/// `infra stop <phase>`: write the stop request and (unless `--no-wait`)
/// wait until the controller has stopped; then the campaign's state.
pub async fn stop(ctx: &Ctx, phase: &str, no_wait: bool) -> Result<i32, AppError> {
    let plan = ctx.load(phase)?;
    let provider = ctx.provider(&plan);
    let req = StopRequest {
        requested_at: chrono::Utc::now(),
        by: control::who(),
    };
    if !provider.request_stop(&plan, &req).await? {
        ctx.out(
            "stop",
            &format!("{}: no controller runs it; nothing to stop", plan.name_key),
            serde_json::json!({"plan": plan.name_key, "stopped": false, "reason": "no controller"}),
        );
        return Ok(exit::OK);
    }
    if no_wait {
        ctx.out(
            "stop",
            &format!(
                "{}: stop requested; `infra status {}` shows when it has stopped",
                plan.name_key, plan.name_key
            ),
            serde_json::json!({"plan": plan.name_key, "stopped": false, "requested": true}),
        );
        return Ok(exit::OK);
    }
    eprintln!(
        "stop requested; waiting for the controller of {}",
        plan.name_key
    );
    let deadline = Instant::now() + ctx.stop_wait;
    while provider.stop_pending(&plan).await? {
        if Instant::now() > deadline {
            return Err(ProviderError::Failed(format!(
                "the controller of {} did not stop within {} s (the request stays; it stops at its next look)\n  (hint: `infra status {}` shows who controls it)",
                plan.name_key,
                ctx.stop_wait.as_secs(),
                plan.name_key
            ))
            .into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (state, _) = journal::read(&journal_path(&plan)).unwrap_or_default();
    let (tasks, _) = render_tasks(&plan)?;
    let mut done = 0;
    let mut failed = 0;
    let mut queued = 0;
    for t in &tasks {
        match state.status_of(&t.key) {
            Status::Succeeded => done += 1,
            Status::Failed => failed += 1,
            _ => queued += 1,
        }
    }
    ctx.out(
            "stop",
        &format!(
            "{}: stopped; {done} done, {failed} failed, {queued} queued (`infra run {}` continues it)",
            plan.name_key, plan.name_key
        ),
        serde_json::json!({"plan": plan.name_key, "stopped": true, "done": done, "failed": failed, "queued": queued}),
    );
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_controller_runs_the_users_command_line_without_detach() {
        let a = RunArgs {
            phase: "p".into(),
            select: vec!["L0".into(), "p-x".into()],
            retry_failed: true,
            again: RerunArgs::default(),
            order: OrderArg::Fifo,
            detach: true,
            take_over: false,
            fresh: true,
            new: false,
        };
        assert_eq!(
            Campaign::Run(&a).commands(),
            vec![vec![
                "run",
                "p",
                "L0",
                "p-x",
                "--retry-failed",
                "--fresh",
                "--order",
                "fifo"
            ]]
        );
        let up = Campaign::Up {
            phase: "p",
            keep: true,
            retry_failed: false,
            order: OrderArg::LongestFirst,
            again: RerunArgs::default(),
        };
        assert_eq!(up.commands(), vec![vec!["up", "p", "--yes", "--keep"]]);
        let fifo = Campaign::Up {
            phase: "p",
            keep: false,
            retry_failed: false,
            order: OrderArg::Fifo,
            again: RerunArgs::default(),
        };
        assert_eq!(
            fifo.commands(),
            vec![vec!["up", "p", "--yes", "--order", "fifo"]]
        );
        // a re-run goes with the time it was asked for: a controller
        // started again by its supervisor runs nothing twice
        let again = RerunArgs {
            rerun: true,
            changed: true,
            rerun_asked_at: None,
        };
        let up_again = Campaign::Up {
            phase: "p",
            keep: false,
            retry_failed: false,
            order: OrderArg::LongestFirst,
            again: again.clone(),
        };
        let c = &up_again.commands()[0];
        assert_eq!(&c[..4], ["up", "p", "--yes", "--rerun"]);
        assert_eq!(c[4], "--rerun-asked-at");
        assert!(chrono::DateTime::parse_from_rfc3339(&c[5]).is_ok(), "{c:?}");
        assert_eq!(c[6], "--changed");
        // every command line parses as the CLI's own
        for c in Campaign::Run(&a)
            .commands()
            .into_iter()
            .chain(up.commands())
            .chain(up_again.commands())
        {
            use clap::Parser;
            let cli =
                crate::cli::Cli::try_parse_from(std::iter::once("infra".to_string()).chain(c))
                    .unwrap();
            assert!(!matches!(cli.command, crate::cli::Cmd::Run(ref r) if r.detach));
        }
    }
}
