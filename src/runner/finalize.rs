//! What an ended attempt leaves on disk: its `runtime.json` and its staging
//! folder moved into `results/<phase>/<task>/` (`failed-tasks.csv` is
//! rewritten from those by the command layer: `results::failed`).

use std::path::Path;

use super::exec::Measured;
use crate::tasks::TaskDef;

/// How an attempt ended, for its `runtime.json`.
pub(super) struct Ended<'a> {
    pub status: &'a str,
    pub attempt: u32,
    pub nodes: &'a [String],
    pub started: &'a chrono::DateTime<chrono::Utc>,
    pub measured: &'a Measured,
    pub cost_usd: f64,
    pub error: Option<&'a str>,
}

/// The `runtime.json` of an attempt that ended now.
pub(super) fn runtime_json(t: &TaskDef, e: &Ended) -> serde_json::Value {
    let m = e.measured;
    serde_json::json!({
        "task": t.id,
        "key": t.key,
        "phase": t.phase,
        "layer": t.layer,
        "status": e.status,
        "exit_code": m.exit_code,
        "error": e.error,
        "attempts": e.attempt,
        "nodes": e.nodes,
        "node_group": t.node_group,
        "started": e.started.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "ended": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "wall_seconds": (m.wall_seconds * 1000.0).round() / 1000.0,
        "peak_rss_kb": m.peak_rss_kb,
        "checkpoint_bytes": m.checkpoint_bytes,
        "cost_usd": (e.cost_usd * 1e6).round() / 1e6,
        "factors": t.factors,
    })
}

/// Write `runtime` into the attempt's staging folder and move the folder to
/// `results_dir/<task>/` whole: a crash leaves either the old result or the
/// new one, never half of each. When `results/` is on another file system
/// the folder is copied beside its destination first (and synced), then
/// renamed into place; the staging folder goes only once that is done.
pub(super) fn finalize(
    results_dir: &Path,
    t: &TaskDef,
    staging: &Path,
    runtime: &serde_json::Value,
) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec_pretty(runtime)?;
    bytes.push(b'\n');
    let runtime_path = staging.join("runtime.json");
    if std::fs::write(&runtime_path, &bytes).is_err() {
        // the executor made no staging folder (it failed before)
        std::fs::create_dir_all(staging)?;
        std::fs::write(&runtime_path, &bytes)?;
    }
    let dest = results_dir.join(&t.id);
    let old = results_dir.join(format!(".{}.old", t.id));
    let _ = std::fs::remove_dir_all(&old);
    // a result of an earlier attempt is replaced whole
    let replaced = match std::fs::rename(&dest, &old) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(e),
    };
    let copied = results_dir.join(format!(".{}.new", t.id));
    let moved = match std::fs::rename(staging, &dest) {
        // another file system: a synced copy beside the destination, then
        // one rename on that file system
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            let _ = std::fs::remove_dir_all(&copied);
            copy_synced(staging, &copied).and_then(|()| std::fs::rename(&copied, &dest))
        }
        r => r,
    };
    if let Err(e) = moved {
        let _ = std::fs::remove_dir_all(&copied);
        if replaced {
            let _ = std::fs::rename(&old, &dest);
        }
        return Err(e);
    }
    if replaced {
        let _ = std::fs::remove_dir_all(&old);
    }
    // what was copied across is in place: the staging folder can go
    let _ = std::fs::remove_dir_all(staging);
    Ok(())
}

/// Copy the folder `from` to `to` (which must not exist), each file and
/// folder synced to disk before the caller renames `to` into place.
fn copy_synced(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let kind = e.file_type()?;
        if kind.is_dir() {
            copy_synced(&src, &dst)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
        } else {
            std::fs::copy(&src, &dst)?;
            std::fs::File::open(&dst)?.sync_all()?;
        }
    }
    std::fs::File::open(to)?.sync_all()
}
