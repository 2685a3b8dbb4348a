//! `infra logs`: a task's stdout and stderr, finished or running.

use serde_json::json;

use super::context::Ctx;
use super::error::{exit, AppError};
use crate::plan;

pub fn logs(ctx: &Ctx, name: &str, pattern: &str, only_stderr: bool) -> Result<i32, AppError> {
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
        if !only_stderr {
            ctx.write(&read("stdout.log"));
        }
        let err = read("stderr.log");
        if !err.is_empty() {
            if !only_stderr {
                ctx.write("== stderr ==\n");
            }
            ctx.write(&err);
        }
    }
    Ok(exit::OK)
}
