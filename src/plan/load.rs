//! Finding and reading plan files; the only part of `plan` that does I/O.

use std::path::{Path, PathBuf};

use thiserror::Error;

use super::decode::{decode, default_root_for, Source};
use super::diag::{closest, Diag, PlanErrors};
use super::json::{parse, Pos};
use super::model::Plan;

pub const MAX_PLAN_BYTES: u64 = 4 * 1024 * 1024;

#[derive(Debug, Error)]
pub enum LoadError {
    #[error("no plan named \"{name}\" (looked for {looked})\n  (hint: {hint})")]
    NotFound {
        name: String,
        looked: String,
        hint: String,
    },
    #[error("cannot read plan {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("plan {path} is {size} bytes, larger than the {MAX_PLAN_BYTES}-byte limit\n  (hint: split the campaign into phases, or describe large sweeps with a \"grid\")")]
    TooLarge { path: PathBuf, size: u64 },
    #[error("{0}")]
    Invalid(PlanErrors),
}

/// `phase15` → `plans/phase15.json` under `cwd`; anything with a `/` or a
/// `.json` suffix is a path.
pub fn resolve(name: &str, cwd: &Path) -> Result<PathBuf, LoadError> {
    let as_path = Path::new(name);
    if name.contains('/') || name.ends_with(".json") {
        let p = if as_path.is_absolute() {
            as_path.to_path_buf()
        } else {
            cwd.join(as_path)
        };
        if p.is_file() {
            return Ok(p);
        }
        return Err(LoadError::NotFound {
            name: name.into(),
            looked: p.display().to_string(),
            hint: "check the path".into(),
        });
    }
    let candidate = project_dir(cwd).join("plans").join(format!("{name}.json"));
    if candidate.is_file() {
        return Ok(candidate);
    }
    let known = list_plans(&project_dir(cwd).join("plans"));
    let near = closest(name, known.iter().map(String::as_str), 3);
    let hint = if let Some(n) = near.first() {
        format!("did you mean \"{n}\"? plans here: {}", known.join(", "))
    } else if known.is_empty() {
        "run infra from the folder that holds plans/, or give a path to the plan file".into()
    } else {
        format!("plans here: {}", known.join(", "))
    };
    Err(LoadError::NotFound {
        name: name.into(),
        looked: format!("plans/{name}.json"),
        hint,
    })
}

/// The project folder for a command run in `cwd`: the nearest of `cwd`
/// and its parents that holds `plans/` (so `infra` works from inside
/// `plans/` or `scripts/` too, as git does from a subfolder); `cwd` when
/// none does.
pub fn project_dir(cwd: &Path) -> PathBuf {
    cwd.ancestors()
        .find(|d| d.join("plans").is_dir())
        .unwrap_or(cwd)
        .to_path_buf()
}

pub fn list_plans(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let p = e.path();
                    (p.extension().is_some_and(|x| x == "json") && p.is_file())
                        .then(|| p.file_stem().map(|s| s.to_string_lossy().to_string()))
                        .flatten()
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Parse and validate plan text. `file` only labels messages and anchors
/// relative paths; `file_exists` answers for template files.
pub fn parse_plan(
    text: &str,
    file: &Path,
    file_exists: &dyn Fn(&Path) -> bool,
) -> Result<Plan, PlanErrors> {
    parse_plan_in(text, file, None, file_exists)
}

/// `parse_plan` for a plan that belongs to the project `root` (its state,
/// results, scripts and shared templates) though it lies elsewhere.
pub fn parse_plan_in(
    text: &str,
    file: &Path,
    root: Option<&Path>,
    file_exists: &dyn Fn(&Path) -> bool,
) -> Result<Plan, PlanErrors> {
    let (default_root, plan_dir) = default_root_for(file);
    let root = root.map(Path::to_path_buf).unwrap_or(default_root);
    let name_key = file
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "plan".into());
    check_phase_name(&name_key, file)?;
    let node = parse(text).map_err(|e| PlanErrors {
        file: file.to_path_buf(),
        diags: vec![Diag {
            path: String::new(),
            pos: e.pos,
            message: format!("invalid JSON: {}", e.message),
            hint: Some(
                e.hint
                    .unwrap_or_else(|| "fix the syntax at this position".into()),
            ),
        }],
    })?;
    let src = Source {
        file,
        name_key: &name_key,
        root: &root,
        plan_dir: &plan_dir,
        file_exists,
    };
    decode(&node, &src).map_err(|d| PlanErrors {
        file: file.to_path_buf(),
        diags: d.list,
    })
}

/// The phase name (the plan's file name without `.json`) reaches shell
/// scripts, user data, stack names and paths: only letters, digits, `-`,
/// `_` and `.` are allowed. The names of infra's own top-level prefixes in
/// the bucket (`_infra`, `_ledger`, `_templates`) are refused: the phase's
/// node-writable prefixes would fall inside them.
fn check_phase_name(name: &str, file: &Path) -> Result<(), PlanErrors> {
    use crate::provider::aws::layout::RESERVED_PHASES;
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if RESERVED_PHASES.contains(&name) {
        return Err(PlanErrors {
            file: file.to_path_buf(),
            diags: vec![Diag {
                path: String::new(),
                pos: Pos { line: 1, col: 1 },
                message: format!(
                    "the plan's file name gives the phase name {name:?}, which infra keeps for itself in the results bucket"
                ),
                hint: Some(format!(
                    "rename the file, e.g. to plans/{}.json",
                    name.trim_start_matches('_')
                )),
            }],
        });
    }
    if !name.is_empty() && name.chars().all(ok) {
        return Ok(());
    }
    let fixed: String = name.chars().filter(|c| ok(*c)).collect();
    let fixed = if fixed.is_empty() {
        "phase1".into()
    } else {
        fixed
    };
    Err(PlanErrors {
        file: file.to_path_buf(),
        diags: vec![Diag {
            path: String::new(),
            pos: Pos { line: 1, col: 1 },
            message: format!(
                "the plan's file name gives the phase name {name:?}, which has characters other than letters, digits, '-', '_' and '.'"
            ),
            hint: Some(format!(
                "rename the file, e.g. to plans/{fixed}.json (the name ends up in shell scripts, stack names and paths)"
            )),
        }],
    })
}

/// The plan file as messages name it: relative to the project folder.
fn display_path(file: &Path, cwd: &Path) -> PathBuf {
    file.strip_prefix(cwd)
        .map(Path::to_path_buf)
        .unwrap_or_else(|_| file.to_path_buf())
}

pub fn load(name: &str, cwd: &Path) -> Result<Plan, LoadError> {
    let path = resolve(name, cwd)?;
    let meta = std::fs::metadata(&path).map_err(|source| LoadError::Io {
        path: path.clone(),
        source,
    })?;
    if meta.len() > MAX_PLAN_BYTES {
        return Err(LoadError::TooLarge {
            path,
            size: meta.len(),
        });
    }
    let bytes = std::fs::read(&path).map_err(|source| LoadError::Io {
        path: path.clone(),
        source,
    })?;
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let upto = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            let line = upto.iter().filter(|b| **b == b'\n').count() as u32 + 1;
            return Err(LoadError::Invalid(PlanErrors {
                file: display_path(&path, cwd),
                diags: vec![Diag {
                    path: String::new(),
                    pos: Pos { line, col: 1 },
                    message: "the file is not valid UTF-8".into(),
                    hint: Some("save the plan as UTF-8 text".into()),
                }],
            }));
        }
    };
    load_text(&text, &path, cwd)
}

/// A plan's text as if read from `path` (a saved plan carries the text it
/// was reviewed with: `infra apply FILE`).
pub fn load_text(text: &str, path: &Path, cwd: &Path) -> Result<Plan, LoadError> {
    // a plan outside any plans/ folder, loaded from inside a project,
    // belongs to that project (`infra plan /tmp/copy.json`)
    let in_plans = path
        .parent()
        .and_then(|d| d.file_name())
        .is_some_and(|n| n == "plans");
    let project = project_dir(cwd);
    let root = (!in_plans && project.join("plans").is_dir()).then_some(project.as_path());
    parse_plan_in(text, path, root, &|p: &Path| p.is_file()).map_err(|mut e| {
        e.file = display_path(&e.file, cwd);
        LoadError::Invalid(e)
    })
}
