//! Which completed tasks run again, and why: `--rerun` (all of the
//! selection's), `--changed` (those whose definition changed since they
//! ran), and any whose result folder is gone (deleted by hand). The
//! runner moves their results to the history and journals it
//! (`runner::rerun`); `infra plan` and `infra status` count them from here.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::context::journal_path;
use super::error::AppError;
use crate::cli::RerunArgs;
use crate::plan::decode::rel;
use crate::plan::Plan;
use crate::runner::journal::{self, State, Status, TaskState};
use crate::runner::rerun::{result_present, stamp, Rerun, Reruns};
use crate::tasks::fingerprint::{self, Fingerprint};
use crate::tasks::TaskDef;

/// When the user asked for the run: now, or what a detached controller's
/// command line says.
fn asked_at(again: &RerunArgs) -> Result<DateTime<Utc>, AppError> {
    match &again.rerun_asked_at {
        None => Ok(Utc::now()),
        Some(t) => DateTime::parse_from_rfc3339(t)
            .map(|d| d.with_timezone(&Utc))
            .map_err(|e| {
                AppError::Usage(format!(
                    "--rerun-asked-at {t:?} is not an RFC 3339 time: {e}"
                ))
            }),
    }
}

/// `again` as the arguments of a detached controller's command line
/// (`--rerun` with the time it was asked for).
pub fn forward(again: &RerunArgs) -> Vec<String> {
    let mut c = Vec::new();
    if again.rerun {
        c.push("--rerun".to_string());
        c.push("--rerun-asked-at".to_string());
        c.push(
            again
                .rerun_asked_at
                .clone()
                .unwrap_or_else(|| Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        );
    }
    if again.changed {
        c.push("--changed".to_string());
    }
    c
}

/// The task's template, as a re-run's reason names it.
fn template_name(plan: &Plan, t: &TaskDef) -> String {
    let p = plan.template_path(&t.backend);
    p.file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| rel(&p, &plan.root))
}

/// Why a completed task's definition is not the one that ran, if it is not
/// (unknown for a success journaled before definitions were).
fn changed(
    plan: &Plan,
    t: &TaskDef,
    s: &TaskState,
    prints: &HashMap<String, Fingerprint>,
) -> Option<String> {
    let (ran, now) = (s.ran.as_ref()?, prints.get(&t.key)?);
    fingerprint::what_changed(ran, now, &template_name(plan, t))
}

/// Why a completed task's result counts as missing, if it does.
/// `results_local`: the provider keeps results only on this machine (AWS
/// brings a missing folder back from the bucket instead).
fn gone(plan: &Plan, t: &TaskDef, results_local: bool) -> Option<String> {
    let dir = plan.results_dir();
    (results_local && !result_present(&dir, &t.id)).then(|| {
        format!(
            "its result is missing (no {})",
            rel(&dir.join(&t.id).join("runtime.json"), &plan.root)
        )
    })
}

/// The completed tasks among `tasks` that run again, each with its reason.
pub fn reruns(
    plan: &Plan,
    tasks: &[TaskDef],
    again: &RerunArgs,
    results_local: bool,
    prints: &HashMap<String, Fingerprint>,
) -> Result<Reruns, AppError> {
    let at = asked_at(again)?;
    let (state, _) = journal::read(&journal_path(plan))?;
    let mut out = Reruns {
        tasks: Vec::new(),
        stamp: stamp(at),
    };
    for t in tasks {
        let Some(s) = completed(&state, t) else {
            continue;
        };
        // completed after the ask: this run (or its first start) ran it
        let asked = again.rerun
            && s.succeeded_at
                .as_deref()
                .and_then(|x| DateTime::parse_from_rfc3339(x).ok())
                .is_none_or(|d| d <= at);
        let why = gone(plan, t, results_local).or_else(|| {
            let changed = changed(plan, t, s, prints);
            match changed {
                Some(c) if again.changed || asked => Some(c),
                _ if asked => Some("asked for with --rerun".to_string()),
                _ => None,
            }
        });
        if let Some(reason) = why {
            out.tasks.push(Rerun {
                task: t.id.clone(),
                key: t.key.clone(),
                reason,
            });
        }
    }
    Ok(out)
}

fn completed<'a>(state: &'a State, t: &TaskDef) -> Option<&'a TaskState> {
    state
        .tasks
        .get(&t.key)
        .filter(|s| s.status == Status::Succeeded)
}

/// What `infra plan` and `infra status` say of the completed tasks.
#[derive(Debug, Default)]
pub struct Completed {
    /// Completed tasks whose definition changed since they ran.
    pub changed: Vec<String>,
    /// Completed tasks whose result is missing (they run again).
    pub gone: Vec<String>,
}

/// The completed tasks among `tasks` whose definition changed, or whose
/// result is missing.
pub fn completed_tasks(
    plan: &Plan,
    state: &State,
    tasks: &[TaskDef],
    results_local: bool,
) -> Completed {
    let prints = fingerprint::all(plan, tasks);
    let mut out = Completed::default();
    for t in tasks {
        let Some(s) = completed(state, t) else {
            continue;
        };
        if gone(plan, t, results_local).is_some() {
            out.gone.push(t.id.clone());
        } else if changed(plan, t, s, &prints).is_some() {
            out.changed.push(t.id.clone());
        }
    }
    out
}
