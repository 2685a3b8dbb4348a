//! `results/<phase>/failed-tasks.csv`: the tasks that failed for good, one
//! row each, from their `runtime.json`: `task`, `layer`, the task's
//! parameters and settings (the columns `table.csv` gives them), then
//! `attempts`, `error` (which ends with the task's last stderr line),
//! `stderr_tail` (the last lines of its stderr) and `ended`. The run rewrites it whenever a task fails for good and at its
//! end; `infra results` writes the same file the same way. A task run
//! again with success leaves it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::table::{settings_of, Settings};
use crate::tasks::TaskDef;

pub const FILE: &str = "failed-tasks.csv";

/// The columns after the parameters.
const TAIL: [&str; 4] = ["attempts", "error", "stderr_tail", "ended"];

/// How many of the last lines of a failed task's stderr its row carries.
pub const STDERR_LINES: usize = 5;

/// The last [`STDERR_LINES`] non-empty lines of `<dir>/stderr.log`
/// (the last attempt's), joined with newlines; at most 2,000 bytes.
pub fn stderr_tail(dir: &Path) -> Option<String> {
    let bytes = std::fs::read(dir.join("stderr.log")).ok()?;
    let start = bytes.len().saturating_sub(64 * 1024);
    let text = String::from_utf8_lossy(&bytes[start..]);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect();
    let tail = lines[lines.len().saturating_sub(STDERR_LINES)..].join("\n");
    let mut tail = tail.as_str();
    while tail.len() > 2000 {
        let cut = tail
            .char_indices()
            .nth(1)
            .map(|(i, _)| i)
            .unwrap_or(tail.len());
        tail = &tail[cut..];
    }
    (!tail.is_empty()).then(|| tail.to_string())
}

/// A failed task's row: its cells by column name (`dir`: its results
/// folder, for the stderr's last lines).
pub fn row(t: &TaskDef, rt: &Value, settings: &Settings, dir: &Path) -> Map<String, Value> {
    let mut f = Map::new();
    f.insert("task".into(), Value::String(t.id.clone()));
    f.insert("layer".into(), Value::String(t.layer.clone()));
    for (k, v) in &t.factors {
        f.insert(k.clone(), v.clone());
    }
    for k in settings_of(t, settings) {
        f.insert(k.clone(), t.vars[k.as_str()].clone());
    }
    for k in TAIL {
        let v = if k == "stderr_tail" {
            stderr_tail(dir).map(Value::String).unwrap_or(Value::Null)
        } else {
            rt[k].clone()
        };
        f.insert(k.into(), v);
    }
    f
}

/// The columns of `rows`: `task`, `layer`, the parameters (in the order
/// the rows first name them), then `attempts`, `error`, `ended`.
pub fn columns(rows: &[Map<String, Value>]) -> Vec<String> {
    let mut cols: Vec<String> = vec!["task".into(), "layer".into()];
    for r in rows {
        for c in r.keys() {
            if !cols_fixed(c) && !cols.iter().any(|x| x == c) {
                cols.push(c.clone());
            }
        }
    }
    cols.extend(TAIL.iter().map(|c| c.to_string()));
    cols
}

fn cols_fixed(c: &str) -> bool {
    c == "task"
        || c == "layer"
        || TAIL.contains(&c)
        || super::table::RUNTIME.iter().any(|(r, _)| *r == c)
}

/// Write `rows` to `<dir>/failed-tasks.csv` (atomically).
pub fn write(
    dir: &Path,
    cols: &[String],
    rows: &[Map<String, Value>],
    raw_csv: bool,
) -> std::io::Result<PathBuf> {
    let path = dir.join(FILE);
    super::csv::write(
        &path,
        cols,
        rows.iter().map(|f| cols.iter().map(|c| f.get(c))),
        raw_csv,
    )?;
    Ok(path)
}

/// What the journal knows of a task that failed for good: its attempts and
/// last error (its `runtime.json` may be missing: a full disk).
pub type Journaled = HashMap<String, (u32, Option<String>)>;

/// Write `<results_dir>/failed-tasks.csv` for the tasks the journal says
/// failed for good (`failed`, by task id): each row from the task's
/// `runtime.json`, or from the journal when that is missing or older. No
/// failed task: the file goes. The number of rows.
pub fn rewrite(
    results_dir: &Path,
    tasks: &[TaskDef],
    settings: &Settings,
    failed: &Journaled,
    raw_csv: bool,
) -> std::io::Result<usize> {
    let mut rows = Vec::new();
    for t in tasks {
        let Some((attempts, error)) = failed.get(&t.id) else {
            continue;
        };
        let rt = std::fs::read_to_string(results_dir.join(&t.id).join("runtime.json"))
            .ok()
            .and_then(|text| serde_json::from_str::<Value>(&text).ok())
            .filter(|rt| rt["status"] == "failed")
            .unwrap_or_else(|| serde_json::json!({"attempts": attempts, "error": error}));
        rows.push(row(t, &rt, settings, &results_dir.join(&t.id)));
    }
    if rows.is_empty() {
        return match std::fs::remove_file(results_dir.join(FILE)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(0),
        };
    }
    std::fs::create_dir_all(results_dir)?;
    let cols = columns(&rows);
    write(results_dir, &cols, &rows, raw_csv)?;
    Ok(rows.len())
}

/// `common_settings` and each layer's `settings`, by layer: what becomes
/// columns beside a task's parameters.
pub fn settings_of_plan(plan: &crate::plan::Plan) -> Settings {
    plan.layers
        .iter()
        .map(|l| {
            let mut keys: Vec<String> = plan.common_settings.keys().cloned().collect();
            keys.extend(
                l.settings
                    .keys()
                    .filter(|k| !plan.common_settings.contains_key(*k))
                    .cloned(),
            );
            (l.id.clone(), keys)
        })
        .collect()
}
