//! Completed tasks that run again deliberately (`infra run --rerun`,
//! `--changed`, a result folder deleted by hand): their previous result
//! moves to `results/<phase>/.history/<time>/<task>/` and the journal says
//! they run again (`Entry::Rerun`), so that their old success no longer
//! counts and they get a fresh attempt budget.

use std::path::{Path, PathBuf};

use super::journal::{Entry, Journal, State, Status};
use super::run::{Paths, RunError, RunEvent};

/// The folder of `results/<phase>/` that keeps the results of tasks run
/// again, one subfolder per run (`<time>/<task>/`).
pub const HISTORY: &str = ".history";

/// A completed task to run again, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Rerun {
    pub task: String,
    /// Its content key.
    pub key: String,
    pub reason: String,
}

/// The tasks a run runs again, and the history folder of this run.
#[derive(Debug, Clone, Default)]
pub struct Reruns {
    pub tasks: Vec<Rerun>,
    /// The run's folder under `.history/` (see [`stamp`]).
    pub stamp: String,
}

impl Reruns {
    /// The content keys of the tasks.
    pub fn keys(&self) -> std::collections::HashSet<String> {
        self.tasks.iter().map(|r| r.key.clone()).collect()
    }
}

/// Whether the result of `task` is in `results_dir`: its `runtime.json`
/// is there (`infra results` reads nothing else first). A completed task
/// whose result is not present runs again.
pub fn result_present(results_dir: &Path, task: &str) -> bool {
    results_dir.join(task).join("runtime.json").is_file()
}

/// The history folder's name for a run asked for at `at`: UTC, sortable
/// (`20261128T013409.123Z`).
pub fn stamp(at: chrono::DateTime<chrono::Utc>) -> String {
    at.format("%Y%m%dT%H%M%S%.3fZ").to_string()
}

/// Where the previous result of `task` goes: a name no earlier move took.
fn history_path(results_dir: &Path, stamp: &str, task: &str) -> PathBuf {
    let dir = results_dir.join(HISTORY).join(stamp);
    let mut to = dir.join(task);
    let mut n = 2;
    while to.symlink_metadata().is_ok() {
        to = dir.join(format!("{task}.{n}"));
        n += 1;
    }
    to
}

/// Under the run's lock: each task of `reruns` that the journal still
/// says completed has its result moved to the history (first: a crash
/// before the journal line leaves a completed task without its result,
/// which runs again anyway), then the journal says it runs again.
pub(crate) fn mark(
    reruns: &Reruns,
    journal: &mut Journal,
    state: &mut State,
    paths: &Paths,
    report: &mut dyn FnMut(&RunEvent),
) -> Result<(), RunError> {
    let results = &paths.results_dir;
    for r in &reruns.tasks {
        if state.status_of(&r.key) != Status::Succeeded {
            continue;
        }
        let from = results.join(&r.task);
        if from.symlink_metadata().is_ok() {
            let to = history_path(results, &reruns.stamp, &r.task);
            let io = |source| RunError::Io {
                path: to.clone(),
                source,
            };
            if let Some(dir) = to.parent() {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
            std::fs::rename(&from, &to).map_err(io)?;
        }
        let e = Entry::Rerun {
            task: r.task.clone(),
            key: r.key.clone(),
            reason: r.reason.clone(),
        };
        journal.append(e.clone())?;
        state.apply(&e);
        report(&RunEvent::Rerun {
            task: r.task.clone(),
            reason: r.reason.clone(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_history_stamp_sorts_as_time_does() {
        use chrono::TimeZone;
        let a = chrono::Utc
            .with_ymd_and_hms(2026, 11, 28, 1, 34, 9)
            .unwrap();
        let b = a + chrono::Duration::milliseconds(1500);
        assert_eq!(stamp(a), "20261128T013409.000Z");
        assert!(stamp(a) < stamp(b));
    }

    #[test]
    fn a_second_move_into_the_same_history_folder_keeps_both() {
        let dir = tempfile::tempdir().unwrap();
        let p = history_path(dir.path(), "s", "t-1");
        assert_eq!(p, dir.path().join(".history/s/t-1"));
        std::fs::create_dir_all(&p).unwrap();
        assert_eq!(
            history_path(dir.path(), "s", "t-1"),
            dir.path().join(".history/s/t-1.2")
        );
    }
}
