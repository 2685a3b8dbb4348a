//! The doe-suite result tree of a plan with `"results_layout":
//! "doe-suite"`: `results/<suite>_<id>/<exp>/run_<i>/rep_<j>/` with the
//! run's `config.json`, and per host `<host_type>/host_<k>/` holding what
//! the command wrote under `results/` (its `stdout.log` and `stderr.log`
//! among it) and `runtime_info.yaml`. Built from a task's result folder
//! (`results/<phase>/<task>/doe/<host_type>/host_<k>/`, as the templates of
//! `infra import doe-suite` leave it) as each task finishes; the
//! extractors' rows of each job are kept and the suite's table rebuilt.

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use super::extract::{extract_job, to_csv, Job, RUNTIME_INFO};
use crate::plan::Plan;
use crate::tasks::TaskDef;

/// One suite id's tree.
#[derive(Debug, Clone)]
pub struct SuiteTree {
    pub suite: String,
    pub id: String,
    /// `results/<suite>_<id>/`.
    pub dir: PathBuf,
    /// Per-job rows of the extractors, `.infra/<phase>/doe-suite/<id>/`.
    rows_dir: PathBuf,
}

/// The table of a suite id, beside its experiments.
pub const TABLE: &str = "results.csv";
/// What the extractors found wrong, one line each.
pub const ERRORS: &str = "extract-errors.txt";

fn id_file(plan: &Plan) -> PathBuf {
    plan.state_dir().join("doe-suite-id")
}

/// The last suite id of `plan`, if it has one.
pub fn last_id(plan: &Plan) -> Option<String> {
    std::fs::read_to_string(id_file(plan))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

impl SuiteTree {
    /// The tree of a new suite id when `new` (or when there is none yet),
    /// else of the last one. Ids are Unix seconds, as doe-suite's; a new
    /// one is always larger than the last.
    pub fn open(plan: &Plan, new: bool, now_unix: u64) -> std::io::Result<(SuiteTree, bool)> {
        let last = last_id(plan);
        let (id, created) = match (&last, new) {
            (Some(l), false) => (l.clone(), false),
            _ => {
                let after = last
                    .as_deref()
                    .and_then(|l| l.parse::<u64>().ok())
                    .map_or(0, |l| l + 1);
                let id = now_unix.max(after).to_string();
                std::fs::create_dir_all(plan.state_dir())?;
                std::fs::write(id_file(plan), format!("{id}\n"))?;
                (id, true)
            }
        };
        Ok((SuiteTree::at(plan, &id), created))
    }

    pub fn at(plan: &Plan, id: &str) -> SuiteTree {
        SuiteTree {
            suite: plan.phase.clone(),
            id: id.to_string(),
            dir: plan
                .root
                .join("results")
                .join(format!("{}_{id}", plan.phase)),
            rows_dir: plan.state_dir().join("doe-suite").join(id),
        }
    }

    /// The job folder of a task (`None` for a task that is not a doe-suite job).
    pub fn job_dir(&self, t: &TaskDef) -> Option<(PathBuf, u64, u64)> {
        let run = t.vars.get("doe_run").and_then(Value::as_u64)?;
        let rep = t.vars.get("doe_rep").and_then(Value::as_u64)?;
        Some((
            self.dir
                .join(&t.layer)
                .join(format!("run_{run}"))
                .join(format!("rep_{rep}")),
            run,
            rep,
        ))
    }

    /// Put the finished task's result (in `results_dir/<task>/`) into the
    /// tree, replacing an earlier one, and extract its rows. False for a
    /// task that is not a doe-suite job or left no result.
    pub fn place(&self, plan: &Plan, t: &TaskDef) -> std::io::Result<bool> {
        let Some((rep_dir, run, rep)) = self.job_dir(t) else {
            return Ok(false);
        };
        let src = plan.results_dir().join(&t.id);
        let Ok(runtime) = std::fs::read_to_string(src.join("runtime.json")) else {
            return Ok(false);
        };
        let runtime: Value = serde_json::from_str(&runtime).unwrap_or(Value::Null);
        if rep_dir.exists() {
            std::fs::remove_dir_all(&rep_dir)?;
        }
        std::fs::create_dir_all(&rep_dir)?;
        let doe = src.join("doe");
        for ht in sorted_dirs(&doe) {
            for host in sorted_dirs(&doe.join(&ht)) {
                let from = doe.join(&ht).join(&host);
                let config = from.join("config.json");
                if config.exists() && !rep_dir.join("config.json").exists() {
                    std::fs::copy(&config, rep_dir.join("config.json"))?;
                }
                let to = rep_dir.join(&ht).join(&host);
                std::fs::create_dir_all(&to)?;
                if from.join("results").is_dir() {
                    copy_dir(&from.join("results"), &to)?;
                }
                std::fs::write(to.join(RUNTIME_INFO), runtime_info(&runtime))?;
            }
        }
        if !plan.extractors.is_empty() {
            let job = Job {
                suite: &self.suite,
                suite_id: &self.id,
                exp: &t.layer,
                run,
                rep,
            };
            let x = extract_job(&plan.extractors, &rep_dir, &job);
            std::fs::create_dir_all(&self.rows_dir)?;
            let doc = json!({"rows": x.rows, "errors": x.errors});
            std::fs::write(
                self.rows_dir.join(format!("{}.json", t.id)),
                serde_json::to_vec(&doc).unwrap_or_default(),
            )?;
            self.write_table()?;
        }
        Ok(true)
    }

    /// Rebuild `results.csv` (and `extract-errors.txt`) from every job's rows.
    pub fn write_table(&self) -> std::io::Result<(usize, usize)> {
        let mut rows: Vec<Map<String, Value>> = Vec::new();
        let mut errors: Vec<String> = Vec::new();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.rows_dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        for f in files {
            let Ok(text) = std::fs::read_to_string(&f) else {
                continue;
            };
            let Ok(doc) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            if let Some(r) = doc["rows"].as_array() {
                rows.extend(r.iter().filter_map(|x| x.as_object().cloned()));
            }
            if let Some(e) = doc["errors"].as_array() {
                errors.extend(e.iter().filter_map(|x| x.as_str().map(str::to_string)));
            }
        }
        let key = |r: &Map<String, Value>| {
            (
                r.get("exp_name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                r.get("run").and_then(Value::as_u64).unwrap_or(0),
                r.get("rep").and_then(Value::as_u64).unwrap_or(0),
                r.get("host_type")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                r.get("host_idx").and_then(Value::as_u64).unwrap_or(0),
            )
        };
        rows.sort_by_key(key);
        errors.sort();
        std::fs::create_dir_all(&self.dir)?;
        std::fs::write(self.dir.join(TABLE), to_csv(&rows))?;
        let err_path = self.dir.join(ERRORS);
        if errors.is_empty() {
            let _ = std::fs::remove_file(err_path);
        } else {
            std::fs::write(err_path, errors.join("\n") + "\n")?;
        }
        Ok((rows.len(), errors.len()))
    }
}

/// `runtime_info.yaml`: the job's wall time and peak memory (measured for
/// the task as a whole) and how it ended.
fn runtime_info(rt: &Value) -> String {
    let s = |k: &str| rt.get(k).cloned().unwrap_or(Value::Null);
    let yaml = |v: Value| match v {
        Value::Null => "null".to_string(),
        Value::String(s) => serde_json::to_string(&s).unwrap_or_default(),
        other => other.to_string(),
    };
    format!(
        "# written by infra: the job's measurements (all hosts of the job together)\nstatus: {}\nexit_code: {}\nattempts: {}\nwall_time_seconds: {}\nmax_rss_kb: {}\nstarted: {}\nended: {}\n",
        yaml(s("status")),
        yaml(s("exit_code")),
        yaml(s("attempts")),
        yaml(s("wall_seconds")),
        yaml(s("peak_rss_kb")),
        yaml(s("started")),
        yaml(s("ended")),
    )
}

fn sorted_dirs(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    v.sort();
    v
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let dst = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &dst)?;
        } else {
            std::fs::copy(e.path(), dst)?;
        }
    }
    Ok(())
}
