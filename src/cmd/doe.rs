//! The doe-suite layout during `infra run` and `up` (plans with
//! `"results_layout": "doe-suite"`): the suite id (`--new` starts one,
//! otherwise the last goes on) and every finished task placed into
//! `results/<suite>_<id>/` as the runner reports it.

use std::collections::HashMap;

use super::AppError;
use crate::plan::layout::ResultsLayout;
use crate::plan::Plan;
use crate::results::doe_tree::{SuiteTree, TABLE};
use crate::runner::run::RunEvent;
use crate::tasks::TaskDef;

pub struct DoeHook<'a> {
    plan: &'a Plan,
    pub tree: SuiteTree,
    tasks: HashMap<String, TaskDef>,
}

/// The hook of a run of `plan` (`None` without the doe-suite layout).
pub fn open<'a>(
    plan: &'a Plan,
    new: bool,
    tasks: &[TaskDef],
) -> Result<Option<DoeHook<'a>>, AppError> {
    if plan.results_layout != ResultsLayout::DoeSuite {
        if new {
            return Err(AppError::Usage(format!(
                "--new starts a new doe-suite suite id, and {} has no \"results_layout\": \"doe-suite\"\n  (hint: use --rerun to run completed tasks again)",
                plan.name_key
            )));
        }
        return Ok(None);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (tree, created) =
        SuiteTree::open(plan, new, now).map_err(super::error::io_err(plan.state_dir()))?;
    eprintln!(
        "{} suite id {}: results in results/{}_{}/",
        if created { "new" } else { "continuing" },
        tree.id,
        tree.suite,
        tree.id
    );
    Ok(Some(DoeHook {
        plan,
        tree,
        tasks: tasks.iter().map(|t| (t.id.clone(), t.clone())).collect(),
    }))
}

impl DoeHook<'_> {
    /// A task ended for good: its result goes into the tree.
    pub fn on_event(&self, e: &RunEvent) {
        let (RunEvent::Succeeded { task, .. } | RunEvent::Failed { task, .. }) = e else {
            return;
        };
        if let Some(t) = self.tasks.get(task) {
            if let Err(err) = self.tree.place(self.plan, t) {
                eprintln!(
                    "warning: {task}: not placed in results/{}_{}: {err}",
                    self.tree.suite, self.tree.id
                );
            }
        }
    }

    /// After the run: tasks done before this id's tree had them (a result
    /// fetched later, an id that started after they ran) are placed too.
    pub fn finish(&self) {
        for t in self.tasks.values() {
            let missing = self.tree.job_dir(t).is_some_and(|(d, _, _)| !d.exists());
            if missing {
                let _ = self.tree.place(self.plan, t);
            }
        }
        if !self.plan.extractors.is_empty() {
            if let Ok((rows, errors)) = self.tree.write_table() {
                eprintln!(
                    "results/{}_{}/{TABLE}: {rows} row(s){}",
                    self.tree.suite,
                    self.tree.id,
                    if errors > 0 {
                        format!(", {errors} extraction problem(s) in extract-errors.txt")
                    } else {
                        String::new()
                    }
                );
            }
        }
    }
}
