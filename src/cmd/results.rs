//! `infra results`: the per-task outputs aggregated into one table
//! (`table.csv` or `table.json`), its metadata and the failed tasks.

use serde_json::{json, Map, Value};

use super::context::{render_tasks, sync_campaign, Ctx};
use super::error::{exit, AppError};
use crate::cli::TableFormat;
use crate::results::csv;
use crate::results::table::{build, typed, ColType};

/// `raw_csv`: cells exactly as the tasks wrote them (no quote before
/// formula-looking cells). The campaign's state and the results this
/// machine lacks are fetched first (AWS: from the bucket).
/// `--float-format`: `shortest` (None) or `%.Nf` (N decimals, at most 17).
pub fn float_format(s: &str) -> Result<Option<usize>, AppError> {
    if s == "shortest" {
        return Ok(None);
    }
    s.strip_prefix("%.")
        .and_then(|r| r.strip_suffix('f'))
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|n| *n <= 17)
        .map(Some)
        .ok_or_else(|| {
            AppError::Usage(format!(
                "--float-format {s:?}: not a float format\n  (hint: `%.6f` for six decimals, or `shortest`)"
            ))
        })
}

pub async fn results(
    ctx: &Ctx,
    phase: &str,
    format: TableFormat,
    raw_csv: bool,
    float_decimals: Option<usize>,
) -> Result<i32, AppError> {
    let plan = ctx.load(phase)?;
    let (tasks, _) = render_tasks(&plan)?;
    sync_campaign(ctx, &plan).await;
    if let Err(e) = ctx.provider(&plan).fetch_results(&plan, None).await {
        eprintln!(
            "warning: {}: results were not fetched ({e}); the table holds this machine's",
            plan.name_key
        );
    }
    let dir = plan.results_dir();
    std::fs::create_dir_all(&dir).map_err(|source| AppError::Io {
        path: dir.clone(),
        source,
    })?;
    let settings = crate::results::failed::settings_of_plan(&plan);
    let table = build(&dir, &tasks, &settings);
    let io = |source| AppError::Io {
        path: dir.clone(),
        source,
    };
    let names: Vec<String> = table.columns.iter().map(|c| c.0.clone()).collect();
    // each cell in its column's type, computed as it is written
    let typed_rows = || {
        table.rows.iter().map(|r| {
            table
                .columns
                .iter()
                .enumerate()
                .map(|(i, (_, t, _))| typed(r.get(i), *t))
        })
    };
    let out_file = match format {
        TableFormat::Csv => {
            let p = dir.join("table.csv");
            // a float column's cells with the decimals asked for
            let fixed = |v: Value, t: ColType| match (float_decimals, t, v.as_f64()) {
                (Some(d), ColType::Float, Some(f)) if f.is_finite() => {
                    Value::String(format!("{f:.d$}"))
                }
                _ => v,
            };
            let rows = table.rows.iter().map(|r| {
                table
                    .columns
                    .iter()
                    .enumerate()
                    .map(|(i, (_, t, _))| Some(fixed(typed(r.get(i), *t), *t)))
                    .collect::<Vec<_>>()
            });
            csv::write(&p, &names, rows, raw_csv).map_err(io)?;
            p
        }
        TableFormat::Json => {
            let p = dir.join("table.json");
            let objects: Vec<Map<String, Value>> = typed_rows()
                .map(|r| names.iter().cloned().zip(r).collect())
                .collect();
            std::fs::write(&p, serde_json::to_vec_pretty(&objects).unwrap_or_default())
                .map_err(io)?;
            p
        }
    };
    // the failed tasks: the file the run writes, written the same way
    super::run::failed_csv(&plan, &tasks, &settings, raw_csv);
    let _ = std::fs::remove_file(dir.join("failed.csv"));
    let meta = json!({
        "phase": plan.name_key,
        "plan": plan.name,
        "file": out_file.file_name().map(|f| f.to_string_lossy().to_string()),
        "exported_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "row_count": table.rows.len(),
        // the names the deep-learning team's export used
        "total_runs": table.rows.len(),
        "export_date": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "column_types": table.columns.iter().map(|(n, t, _)| (n.clone(), Value::from(t.name()))).collect::<Map<String, Value>>(),
        "float_format": float_decimals.map(|d| format!("%.{d}f")).unwrap_or_else(|| "shortest".into()),
        "tasks": table.tasks,
        "tasks_finished": table.done,
        "tasks_failed": table.failed.len(),
        "partial": table.partial,
        "columns": table.columns.iter().map(|(n, t, d)| json!({"name": n, "type": t.name(), "description": d})).collect::<Vec<_>>(),
        "problems": table.problems,
    });
    let mut mb = serde_json::to_vec_pretty(&meta).unwrap_or_default();
    mb.push(b'\n');
    std::fs::write(dir.join("table.metadata.json"), mb).map_err(io)?;
    let mut h = format!(
        "{}: {} row(s) from {} of {} task(s) into {}{}; {} failed in failed-tasks.csv",
        plan.name_key,
        table.rows.len(),
        table.done - table.failed.len(),
        table.tasks,
        ctx.rel(&out_file),
        if table.partial {
            " (partial: the campaign is not finished)"
        } else {
            ""
        },
        table.failed.len()
    );
    for p in &table.problems {
        h.push_str(&format!("\n  warning: {p}"));
    }
    ctx.out("results", &h, meta);
    Ok(exit::OK)
}
