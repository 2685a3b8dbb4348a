//! The whole plan: its sections decoded in the order of the format, every
//! problem collected, then the checks that need more than one section.

use std::collections::BTreeMap;

use crate::plan::diag::Diags;
use crate::plan::fields::obj;
use crate::plan::json::{Node, Pos, Spanned};
use crate::plan::model::Plan;

use super::layers::Scope;
use super::source::Source;
use super::{
    budget, estimate, header, layers, layout, machines, names, settings, slurm, templates,
};

const TOP_FIELDS: &[&str] = &[
    "$schema",
    "phase",
    "name",
    "description",
    "project",
    "provider",
    "region",
    "availability_zone",
    "infrastructure",
    "common_settings",
    "budget",
    "node_groups",
    "slurm",
    "setup",
    "templates",
    "estimate",
    "retry",
    "checkpoint_interval",
    "stop_grace_seconds",
    "layers",
    "results_layout",
    "extractors",
];

/// The plan in `root_node`, or every problem found in it.
pub fn decode(root_node: &Spanned, src: &Source) -> Result<Plan, Diags> {
    let mut d = Diags::default();
    let Some(top) = obj(&mut d, root_node, "") else {
        return Err(d);
    };
    top.known(&mut d, TOP_FIELDS);
    names::check_strings(&mut d, root_node, "");
    let head = header::header(&mut d, &top, src.root);
    let machines = machines::machines(&mut d, &top, head.provider);
    let common_settings = settings::common_settings(&mut d, &top);
    let budget = budget::budget(&mut d, &top);
    let slurm = slurm::slurm(&mut d, &top, &machines.groups);
    let setup = settings::setup(&mut d, &top);
    let templates = templates::templates(&mut d, &top, src.plan_dir, src.root);
    let estimates = estimate::estimates(&mut d, &top);
    let retry = estimate::retry(&mut d, &top);
    let (checkpoint_interval, stop_grace) = estimate::interruptions(&mut d, &top);
    let results_layout = layout::results_layout(&mut d, &top);
    let extractors = layout::extractors(&mut d, &top);

    let group_names: Vec<String> = machines.groups.iter().map(|g| g.name.clone()).collect();
    let scope = Scope {
        id_prefix: &head.id_prefix,
        infrastructure: &machines.infrastructure,
        common_settings: &common_settings,
        default_group: group_names
            .first()
            .cloned()
            .unwrap_or_else(|| "default".into()),
        group_names,
        legacy: top.get("infrastructure").is_some(),
        estimates: &estimates,
    };
    let Some(decoded) = layers::layers(&mut d, &top, &scope) else {
        return Err(d);
    };
    names::check_case_collisions(&mut d, &decoded.seen_ids, "pattern id");
    estimate::check_targets(
        &mut d,
        &estimates,
        &decoded.layers,
        &decoded.seen_ids,
        &decoded.seen_layers,
    );

    let mut plan = Plan {
        name_key: src.name_key.to_string(),
        source: src.file.to_path_buf(),
        root: src.root.to_path_buf(),
        plan_dir: src.plan_dir.to_path_buf(),
        phase: head.phase,
        id_prefix: head.id_prefix,
        name: head.name,
        description: head.description,
        project: head.project,
        provider: head.provider,
        region: head.region,
        availability_zone: head.availability_zone,
        infrastructure: machines.infrastructure,
        common_settings,
        budget,
        node_groups: machines.groups,
        slurm,
        setup,
        templates,
        estimate: estimates.plan,
        retry,
        checkpoint_interval,
        stop_grace,
        layers: decoded.layers,
        results_layout,
        extractors,
        positions: value_positions(root_node),
    };
    templates::project_templates(&mut plan, src);
    templates::check_backends(&mut d, &plan, src);
    slurm::check_time_limits(&mut d, &plan);
    if d.is_empty() {
        plan.layers.shrink_to_fit();
        Ok(plan)
    } else {
        Err(d)
    }
}

/// Positions of the top-level values and of `budget`'s, by path.
fn value_positions(top: &Spanned) -> BTreeMap<String, Pos> {
    let mut out = BTreeMap::new();
    if let Node::Obj(fields) = &top.node {
        for (k, v) in fields {
            out.insert(k.clone(), v.pos);
            if k == "budget" {
                if let Node::Obj(inner) = &v.node {
                    for (k2, v2) in inner {
                        out.insert(format!("budget.{k2}"), v2.pos);
                    }
                }
            }
        }
    }
    out
}
