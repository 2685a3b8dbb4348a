//! `infra journal repair <phase>`: drop the damaged lines of a phase's
//! journal, keep every valid one, and say what was dropped. Also the check
//! `run` makes before it starts: a damaged journal stops it with exit 2.

use serde_json::json;

use super::context::{journal_path, Ctx};
use super::error::{exit, AppError};
use crate::runner::journal::{self, JournalError};
use crate::runner::lock;

pub fn repair(ctx: &Ctx, name: &str) -> Result<i32, AppError> {
    let plan = ctx.load(name)?;
    let path = journal_path(&plan);
    if lock::is_held(&plan.state_dir().join("run.lock")) {
        return Err(AppError::Usage(format!(
            "an `infra run` of {} is writing its journal\n  (hint: repair it once the run has stopped)",
            plan.name_key
        )));
    }
    let r = journal::repair(&path)?;
    let mut h = match &r.backup {
        None => format!(
            "{}: the journal is intact ({} line(s)); nothing to repair",
            ctx.rel(&path),
            r.kept
        ),
        Some(b) => format!(
            "{}: kept {} valid line(s), dropped {}; the original is {}",
            ctx.rel(&path),
            r.kept,
            r.dropped.len(),
            ctx.rel(b)
        ),
    };
    for d in &r.dropped {
        h.push_str(&format!("\n  dropped line {}: {}", d.line, d.message));
    }
    if r.backup.is_some() {
        h.push_str(&format!(
            "\n  (tasks whose outcome was on a dropped line run again; `infra status {}` shows them)",
            plan.name_key
        ));
    }
    ctx.out(
        "journal",
        &h,
        json!({
            "journal": path,
            "kept": r.kept,
            "dropped": r.dropped,
            "backup": r.backup,
        }),
    );
    Ok(exit::OK)
}

/// Refuse to run on a damaged journal (exit 2, naming the line and the
/// repair), rather than repair it on the fly: a dropped line may be a
/// task's outcome, and running it again costs money, so the user decides.
pub fn check_before_run(plan: &crate::plan::Plan) -> Result<(), AppError> {
    match journal::read(&journal_path(plan)) {
        Ok(_) => Ok(()),
        Err(e @ JournalError::Corrupt { .. }) => {
            Err(AppError::Usage(format!("{e}\n  (nothing was started)")))
        }
        Err(e) => Err(e.into()),
    }
}
