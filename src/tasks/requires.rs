//! What a template requires of its nodes (`"requires": ["efa"]`): a node
//! group that runs such a template gets it by default where its instance
//! type can have it, and a pattern whose group cannot give it is refused,
//! never run without it (an "efa" benchmark silently over TCP).

use std::collections::BTreeSet;

use super::model::REQUIREMENTS;
use super::render::render_some;
use crate::catalog::Catalog;
use crate::plan::{Pattern, Plan, ProviderKind};

/// Turn EFA on for every node group that the plan leaves unsaid (`efa`
/// absent), whose instance type has EFA, and that runs a pattern whose
/// template requires it. Slurm allocations have the cluster's own fabric.
pub fn efa_by_default(plan: &mut Plan, catalog: &Catalog) {
    if plan.provider == ProviderKind::Slurm {
        return;
    }
    let candidates: BTreeSet<String> = plan
        .node_groups
        .iter()
        .filter(|g| g.efa_set.is_none() && catalog.get(&g.instance_type).is_some_and(|t| t.efa))
        .map(|g| g.name.clone())
        .collect();
    if candidates.is_empty() {
        return;
    }
    // One pattern per (group, backend) tells what the backend's template
    // requires; rendered as if the group had EFA, so that the requirement
    // itself does not refuse it. A pattern that does not render is left to
    // the real rendering, which reports it.
    let mut trial = plan.clone();
    for g in &mut trial.node_groups {
        if candidates.contains(&g.name) {
            g.efa = true;
        }
    }
    let mut seen: BTreeSet<(String, String)> = BTreeSet::new();
    let firsts: Vec<&Pattern> = trial
        .patterns()
        .filter(|p| candidates.contains(&p.node_group))
        .filter(|p| seen.insert((p.node_group.clone(), p.backend.clone())))
        .collect();
    let mut wanted: BTreeSet<String> = BTreeSet::new();
    for p in firsts {
        if let Ok(r) = render_some(&trial, &[p]) {
            if r.tasks
                .iter()
                .any(|t| t.requires.iter().any(|x| x == "efa"))
            {
                wanted.insert(p.node_group.clone());
            }
        }
    }
    for g in &mut plan.node_groups {
        if wanted.contains(&g.name) {
            g.efa = true;
        }
    }
}

/// Whether pattern `p`'s group gives what its template requires: an error
/// (message, hint) naming the group and the fix otherwise.
pub(crate) fn check(plan: &Plan, p: &Pattern, requires: &[String]) -> Result<(), (String, String)> {
    for r in requires {
        if !REQUIREMENTS.contains(&r.as_str()) {
            return Err((
                format!("\"requires\" names {r:?}, which infra does not know"),
                format!("use one of: {}", REQUIREMENTS.join(", ")),
            ));
        }
    }
    if !requires.iter().any(|r| r == "efa") || plan.provider == ProviderKind::Slurm {
        return Ok(());
    }
    let Some(g) = plan.node_group(&p.node_group) else {
        return Ok(()); // an unknown group is reported by the plan's checks
    };
    if g.efa {
        return Ok(());
    }
    let name = &g.name;
    let it = &g.instance_type;
    if g.efa_set == Some(false) {
        return Err((
            format!("the template requires EFA, but node group \"{name}\" ({it}) has \"efa\": false: the pattern would run over TCP"),
            format!("remove \"efa\": false from node group \"{name}\" (EFA is then on by default), or run the pattern on a group with EFA"),
        ));
    }
    Err((
        format!("the template requires EFA, but node group \"{name}\" runs {it}, which has no EFA: the pattern would run over TCP"),
        format!("give node group \"{name}\" an EFA-capable type (`infra catalog` lists them: g5.12xlarge, p4d.24xlarge, p5.48xlarge...), or run the pattern on a group with EFA"),
    ))
}
