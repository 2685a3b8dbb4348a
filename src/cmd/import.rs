//! `infra import doe-suite <design.yml>`: write the plan and its templates.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{AppError, Ctx};
use crate::import::doe_suite;
use crate::import::to_plan::{Imported, Options};

#[derive(Debug, Serialize)]
pub struct ImportView {
    pub suite: String,
    pub plan: String,
    pub templates: Vec<String>,
    /// Experiment, runs, tasks (runs × repetitions).
    pub experiments: Vec<ExperimentCount>,
    /// Ansible roles to write as the plan's `setup` by hand.
    pub setup_to_write: Vec<RoleView>,
    pub not_converted: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct ExperimentCount {
    pub name: String,
    pub runs: usize,
    pub tasks: usize,
}

#[derive(Debug, Serialize)]
pub struct RoleView {
    pub role: String,
    pub used_by: String,
}

pub struct ImportArgs<'a> {
    pub design: &'a Path,
    pub output: Option<&'a Path>,
    pub instance_type: &'a str,
    pub force: bool,
}

pub fn doe_suite(ctx: &Ctx, a: &ImportArgs) -> Result<i32, AppError> {
    let design = ctx.cwd.join(a.design);
    let text = std::fs::read_to_string(&design).map_err(|e| {
        AppError::Usage(format!(
            "cannot read the design {}: {e}\n  (hint: give the path of a suite design, e.g. doe-suite-config/designs/my_suite.yml)",
            a.design.display()
        ))
    })?;
    let suite = design
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let opts = Options {
        instance_type: a.instance_type.to_string(),
        source: a.design.display().to_string(),
    };
    let imported = doe_suite::import(&a.design.display().to_string(), &suite, &text, &opts)
        .map_err(|e| AppError::Usage(e.to_string()))?;
    let plan_path = match a.output {
        Some(o) => ctx.cwd.join(o),
        None => ctx.cwd.join("plans").join(format!("{suite}.json")),
    };
    let plan_dir = plan_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut files: Vec<(PathBuf, String)> = vec![(plan_path.clone(), plan_text(&imported))];
    for (backend, t) in &imported.templates {
        files.push((
            plan_dir
                .join("templates")
                .join(format!("{backend}.json.hbs")),
            t.clone(),
        ));
    }
    if !a.force {
        if let Some((p, _)) = files
            .iter()
            .find(|(p, t)| std::fs::read_to_string(p).is_ok_and(|old| old != *t))
        {
            return Err(AppError::Usage(format!(
                "{} exists and differs from what the import writes\n  (hint: pass --force to replace it, or -o to write the plan elsewhere)",
                ctx.rel(p)
            )));
        }
    }
    for (p, t) in &files {
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).map_err(|source| AppError::Io {
                path: d.to_path_buf(),
                source,
            })?;
        }
        std::fs::write(p, t).map_err(|source| AppError::Io {
            path: p.clone(),
            source,
        })?;
    }
    let view = ImportView {
        suite: imported.suite.clone(),
        plan: ctx.rel(&plan_path),
        templates: files[1..].iter().map(|(p, _)| ctx.rel(p)).collect(),
        experiments: imported
            .counts
            .iter()
            .map(|(n, r, t)| ExperimentCount {
                name: n.clone(),
                runs: *r,
                tasks: *t,
            })
            .collect(),
        setup_to_write: imported
            .roles
            .iter()
            .map(|(w, r)| RoleView {
                role: r.clone(),
                used_by: w.clone(),
            })
            .collect(),
        not_converted: imported.not_converted.clone(),
    };
    ctx.emit("import", &text_of(&view), &view);
    Ok(super::exit::OK)
}

fn plan_text(i: &Imported) -> String {
    let mut s = serde_json::to_string_pretty(&i.plan).unwrap_or_default();
    s.push('\n');
    s
}

/// The human summary of an import.
pub fn text_of(v: &ImportView) -> String {
    let tasks: usize = v.experiments.iter().map(|e| e.tasks).sum();
    let mut s = format!(
        "imported suite {}: {} experiment(s) as layers, {tasks} task(s)\n",
        v.suite,
        v.experiments.len()
    );
    for e in &v.experiments {
        s.push_str(&format!(
            "  {:<24} {} run(s), {} task(s)\n",
            e.name, e.runs, e.tasks
        ));
    }
    s.push_str(&format!("wrote {}\n", v.plan));
    for t in &v.templates {
        s.push_str(&format!("wrote {t}\n"));
    }
    if !v.setup_to_write.is_empty() {
        s.push_str(
            "setup to write by hand (Ansible roles; put their commands in the plan's `setup`):\n",
        );
        for r in &v.setup_to_write {
            s.push_str(&format!("  {:<24} {}\n", r.role, r.used_by));
        }
    }
    if !v.not_converted.is_empty() {
        s.push_str("not converted:\n");
        for n in &v.not_converted {
            s.push_str(&format!("  - {n}\n"));
        }
    }
    s
}
