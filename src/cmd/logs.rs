//! `infra logs`: a task's stdout and stderr, finished or running, streamed
//! byte for byte (binary output included, any size).

use std::io::Read;
use std::path::Path;

use serde_json::json;

use super::context::{sync_campaign, Ctx};
use super::error::{exit, AppError};
use crate::plan;

/// The newest running attempt's folder of `pattern` in `staging`: exactly
/// `<pattern>.<attempt>`, never a longer id that starts the same.
fn running_attempt(staging: &Path, pattern: &str) -> Option<std::path::PathBuf> {
    std::fs::read_dir(staging).ok().and_then(|rd| {
        rd.flatten()
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.strip_prefix(pattern)
                    .and_then(|rest| rest.strip_prefix('.'))
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            })
            .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
            .map(|e| e.path())
    })
}

/// Copy a file to the command's output in chunks; a missing file is empty.
/// Whether anything was written.
fn stream(ctx: &Ctx, path: &Path) -> Result<bool, AppError> {
    let Ok(mut f) = std::fs::File::open(path) else {
        return Ok(false);
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut any = false;
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => return Ok(any),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(AppError::Io {
                    path: path.into(),
                    source,
                })
            }
        };
        ctx.write_bytes(&buf[..n]);
        any = true;
    }
}

pub async fn logs(
    ctx: &Ctx,
    name: &str,
    pattern: &str,
    only_stderr: bool,
) -> Result<i32, AppError> {
    let plan = ctx.load(name)?;
    plan::select::select(&plan, &[pattern.to_string()])?;
    // an ended task's logs from the bucket when this machine lacks them
    sync_campaign(ctx, &plan).await;
    if let Err(e) = ctx
        .provider(&plan)
        .fetch_results(&plan, Some(pattern))
        .await
    {
        eprintln!(
            "warning: {}: the logs were not fetched ({e})",
            plan.name_key
        );
    }
    let done = plan.results_dir().join(pattern);
    // a finished result, else the newest running attempt
    let dir = if done.join("runtime.json").exists() {
        Some(done)
    } else {
        running_attempt(&plan.state_dir().join("staging"), pattern)
    };
    let Some(dir) = dir else {
        return Err(AppError::Usage(format!("no logs for \"{pattern}\" yet\n  (hint: it has not run; `infra status {name}` shows what has)")));
    };
    if ctx.json {
        // JSON holds text: bytes that are not UTF-8 become U+FFFD here;
        // the human form streams them unchanged
        let read = |f: &str| {
            std::fs::read(dir.join(f))
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        ctx.out("", json!({"task": pattern, "dir": dir, "stdout": read("stdout.log"), "stderr": read("stderr.log")}));
    } else {
        if !only_stderr {
            stream(ctx, &dir.join("stdout.log"))?;
        }
        let err = dir.join("stderr.log");
        if std::fs::metadata(&err).is_ok_and(|m| m.len() > 0) {
            if !only_stderr {
                ctx.write("== stderr ==\n");
            }
            stream(ctx, &err)?;
        }
    }
    Ok(exit::OK)
}
