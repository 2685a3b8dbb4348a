//! `infra list`: the plans of the project, or the layers and patterns of one.

use serde::Serialize;

use super::context::Ctx;
use super::error::{exit, AppError};
use crate::plan;
use crate::report::progress::human_duration;

#[derive(Debug, Serialize)]
pub struct PlansView {
    pub plans: Vec<PlanRow>,
}

#[derive(Debug, Serialize)]
pub struct PlanRow {
    pub plan: String,
    pub valid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layers: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tasks: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct LayersView {
    pub plan: String,
    pub name: String,
    pub phase: String,
    pub layers: Vec<LayerView>,
}

#[derive(Debug, Serialize)]
pub struct LayerView {
    pub id: String,
    pub name: String,
    pub priority: Option<String>,
    pub patterns: Vec<PatternView>,
}

#[derive(Debug, Serialize)]
pub struct PatternView {
    pub id: String,
    pub backend: String,
    pub node_group: String,
    pub key: String,
    pub estimate_seconds: Option<f64>,
    pub factors: serde_json::Map<String, serde_json::Value>,
}

pub fn list(ctx: &Ctx, name: Option<&str>) -> Result<i32, AppError> {
    match name {
        None => {
            let project = plan::load::project_dir(&ctx.cwd);
            let plans = plan::load::list_plans(&project.join("plans"))
                .into_iter()
                .map(|n| match plan::load(&n, &project) {
                    Ok(p) => PlanRow {
                        valid: true,
                        phase: Some(p.phase.clone()),
                        name: Some(p.name.clone()),
                        layers: Some(p.layers.len()),
                        tasks: Some(p.pattern_count()),
                        error: None,
                        plan: n,
                    },
                    Err(e) => PlanRow {
                        valid: false,
                        phase: None,
                        name: None,
                        layers: None,
                        tasks: None,
                        error: Some(e.to_string()),
                        plan: n,
                    },
                })
                .collect();
            let view = PlansView { plans };
            ctx.emit("list", &plans_text(&view), &view);
        }
        Some(n) => {
            let p = ctx.load(n)?;
            let view = LayersView {
                plan: p.name_key.clone(),
                name: p.name.clone(),
                phase: p.phase.clone(),
                layers: p
                    .layers
                    .iter()
                    .map(|l| LayerView {
                        id: l.id.clone(),
                        name: l.name.clone(),
                        priority: l.priority.clone(),
                        patterns: l
                            .patterns
                            .iter()
                            .map(|pt| PatternView {
                                id: pt.id.clone(),
                                backend: pt.backend.clone(),
                                node_group: pt.node_group.clone(),
                                key: pt.key.clone(),
                                estimate_seconds: pt.estimate.map(|d| d.as_secs_f64()),
                                factors: pt.factors.clone(),
                            })
                            .collect(),
                    })
                    .collect(),
            };
            ctx.emit("list", &layers_text(&view), &view);
        }
    }
    Ok(exit::OK)
}

/// The project's plans, one line each.
pub fn plans_text(v: &PlansView) -> String {
    let mut h = String::new();
    // columns as wide as their longest value
    let wplan = v
        .plans
        .iter()
        .map(|p| p.plan.len())
        .max()
        .unwrap_or(0)
        .max(4);
    let wphase = v
        .plans
        .iter()
        .filter_map(|p| p.phase.as_ref().map(String::len))
        .max()
        .unwrap_or(0);
    for p in &v.plans {
        match (&p.phase, p.layers, p.tasks, &p.name) {
            (Some(phase), Some(layers), Some(tasks), Some(name)) if p.valid => {
                h.push_str(&format!(
                    "{:<wplan$}  phase {:<wphase$}  {:>3} layer(s) {:>6} task(s)  {}\n",
                    p.plan, phase, layers, tasks, name
                ))
            }
            _ => h.push_str(&format!(
                "{:<wplan$}  (invalid: run `infra plan {}`)\n",
                p.plan, p.plan
            )),
        }
    }
    if v.plans.is_empty() {
        h.push_str(
            "no plans in plans/ (run infra in the project folder, the one that holds plans/)\n",
        );
    }
    h
}

/// One plan's layers and patterns.
pub fn layers_text(v: &LayersView) -> String {
    let mut h = format!("{} — {}\n", v.plan, v.name);
    for l in &v.layers {
        h.push_str(&format!(
            "{} {} {}\n",
            l.id,
            l.priority.as_deref().unwrap_or(""),
            l.name
        ));
        for pt in &l.patterns {
            h.push_str(&format!(
                "  {:<40} {:<12} {}\n",
                pt.id,
                pt.backend,
                pt.estimate_seconds.map(human_duration).unwrap_or_default()
            ));
        }
    }
    h
}
