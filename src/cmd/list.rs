//! `infra list`: the plans of the project, or the layers and patterns of one.

use serde_json::json;

use super::context::Ctx;
use super::error::{exit, AppError};
use crate::plan;
use crate::report::progress::human_duration;

pub fn list(ctx: &Ctx, name: Option<&str>) -> Result<i32, AppError> {
    match name {
        None => {
            let names = plan::load::list_plans(&ctx.cwd.join("plans"));
            let mut rows = Vec::new();
            let mut h = String::new();
            for n in &names {
                match plan::load(n, &ctx.cwd) {
                    Ok(p) => {
                        h.push_str(&format!(
                            "{:<16} phase {:<8} {:>3} layer(s) {:>6} task(s)  {}\n",
                            n,
                            p.phase,
                            p.layers.len(),
                            p.pattern_count(),
                            p.name
                        ));
                        rows.push(json!({"plan": n, "phase": p.phase, "name": p.name, "layers": p.layers.len(), "tasks": p.pattern_count(), "valid": true}));
                    }
                    Err(e) => {
                        h.push_str(&format!("{n:<16} (invalid: run `infra plan {n}`)\n"));
                        rows.push(json!({"plan": n, "valid": false, "error": e.to_string()}));
                    }
                }
            }
            if names.is_empty() {
                h.push_str("no plans in plans/\n");
            }
            ctx.out(h.trim_end(), json!({"plans": rows}));
        }
        Some(n) => {
            let p = ctx.load(n)?;
            let mut h = format!("{} — {}\n", p.name_key, p.name);
            let mut layers = Vec::new();
            for l in &p.layers {
                h.push_str(&format!(
                    "{} {} {}\n",
                    l.id,
                    l.priority.as_deref().unwrap_or(""),
                    l.name
                ));
                let mut pats = Vec::new();
                for pt in &l.patterns {
                    h.push_str(&format!(
                        "  {:<40} {:<12} {}\n",
                        pt.id,
                        pt.backend,
                        pt.estimate
                            .map(|d| human_duration(d.as_secs_f64()))
                            .unwrap_or_default()
                    ));
                    pats.push(json!({"id": pt.id, "backend": pt.backend, "node_group": pt.node_group, "key": pt.key,
                        "estimate_seconds": pt.estimate.map(|d| d.as_secs_f64()), "factors": pt.factors}));
                }
                layers.push(
                    json!({"id": l.id, "name": l.name, "priority": l.priority, "patterns": pats}),
                );
            }
            ctx.out(
                h.trim_end(),
                json!({"plan": p.name_key, "phase": p.phase, "layers": layers}),
            );
        }
    }
    Ok(exit::OK)
}
