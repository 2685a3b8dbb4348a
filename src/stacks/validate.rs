//! Checks of a plan against the catalog and the limits of CloudFormation,
//! EC2 and EFA, run by `infra plan` before anything is rendered. Pure: every
//! problem becomes a diagnostic with the JSON path of the field, a position
//! and a fix.

use std::collections::BTreeSet;

use crate::catalog::{Catalog, InstanceType};
use crate::plan::diag::{closest, Diags};
use crate::plan::{Market, NodeGroup, Plan};

use super::names::stack_name_problem;
use super::shape::{is_default_dlami, resources_per_group, MAX_ZONES};

/// CloudFormation's limit of resources per template.
pub const MAX_RESOURCES: usize = 500;
/// Nodes one group may have: EC2 Fleet, SSM targeting and the runner's
/// polling are sized for this; more belongs in several groups or phases.
pub const MAX_NODES_PER_GROUP: u32 = 1000;
/// Nodes a plan may have in all.
pub const MAX_NODES: u32 = 2000;
/// Root volume the Deep Learning AMIs need (their snapshot size).
pub const DLAMI_MIN_VOLUME_GB: u32 = 75;

/// The JSON path of a node group field; the `infrastructure` form names
/// some fields differently.
pub fn field(g: &NodeGroup, name: &str) -> String {
    let name = match (g.path.as_str(), name) {
        ("infrastructure", "count") => "node_count",
        ("infrastructure", "gpus") => "gpu_count_per_node",
        _ => name,
    };
    if g.path.is_empty() {
        name.to_string()
    } else {
        format!("{}.{name}", g.path)
    }
}

fn list(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Add a diagnostic for every problem the stacks would have.
pub fn validate(plan: &Plan, catalog: &Catalog, d: &mut Diags) {
    if let Some(why) = stack_name_problem(&plan.project) {
        d.hint(
            "project",
            plan.pos_of("project"),
            format!("project \"{}\" cannot name a stack: {why}", plan.project),
            "set \"project\" to a name that starts with a letter, e.g. \"study-2024\"",
        );
    }
    for g in &plan.node_groups {
        group(plan, catalog, g, d);
    }
    zones(plan, d);
    sizes(plan, d);
    budget(plan, catalog, d);
}

fn group(plan: &Plan, catalog: &Catalog, g: &NodeGroup, d: &mut Diags) {
    let it = g.instance_type.as_str();
    // Slurm allocations are no instances: their `slurm` section is checked
    // when the plan is decoded
    if plan.provider == crate::plan::ProviderKind::Slurm {
        return;
    }
    if it == "local" {
        if !plan.provider.is_local() {
            d.hint(&field(g, "instance_type"), g.pos, "instance type \"local\" exists only on the local provider", "set \"instance_type\" to an EC2 type such as \"c6i.xlarge\", or run with --provider local");
        }
        return;
    }
    let Some(t) = catalog.get(it) else {
        let near = closest(it, catalog.names(), 3);
        let hint = if near.is_empty() {
            format!("use a type from the catalog ({} types, `infra catalog show`), or run `infra catalog refresh` if \"{it}\" is new", catalog.instance_types.len())
        } else {
            format!("did you mean {}? (`infra catalog show` lists all; run `infra catalog refresh` if \"{it}\" is new)", list(&near))
        };
        d.hint(
            &field(g, "instance_type"),
            g.pos,
            format!("unknown instance type \"{it}\""),
            hint,
        );
        return;
    };

    if g.efa && !t.efa {
        let near = catalog.nearest_efa(it);
        let hint = if near.is_empty() {
            "set \"efa\": false".to_string()
        } else {
            format!(
                "use a type with EFA such as {}, or set \"efa\": false",
                list(&near[..near.len().min(3)])
            )
        };
        d.hint(
            &field(g, "efa"),
            g.pos,
            format!("\"efa\" is true but {it} has no EFA"),
            hint,
        );
    }
    if g.efa {
        if let Some(p) = g.placement.as_deref().filter(|p| *p != "cluster") {
            d.hint(
                &field(g, "placement"),
                g.pos,
                format!("EFA needs a cluster placement group, found \"{p}\""),
                "remove \"placement\" or set it to \"cluster\"",
            );
        }
    }
    if let Some(n) = g.gpus {
        if n != t.gpus {
            let others: Vec<&str> = catalog.with_gpus(n).into_iter().take(4).collect();
            let alt = if others.is_empty() {
                format!("no type in the catalog has {n} GPUs")
            } else {
                format!("or choose a type with {n}: {}", list(&others))
            };
            d.hint(
                &field(g, "gpus"),
                g.pos,
                format!(
                    "{it} has {} GPU{}, the plan says {n}",
                    t.gpus,
                    if t.gpus == 1 { "" } else { "s" }
                ),
                format!(
                    "set \"{}\" to {}, {alt}",
                    field(g, "gpus").rsplit('.').next().unwrap_or("gpus"),
                    t.gpus
                ),
            );
        }
    }
    if g.count > MAX_NODES_PER_GROUP {
        d.hint(
            &field(g, "count"),
            g.pos,
            format!(
                "{} nodes in one group is more than the {MAX_NODES_PER_GROUP} a group may have",
                g.count
            ),
            "split the nodes into several node groups, or the work into several phases",
        );
    }
    if g.ami.is_none() && is_default_dlami(t, g.efa) && g.volume_gb < DLAMI_MIN_VOLUME_GB {
        d.hint(&field(g, "volume_gb"), g.pos, format!("{} GiB is smaller than the {DLAMI_MIN_VOLUME_GB} GiB root volume of the Deep Learning AMI", g.volume_gb), format!("set \"volume_gb\" to {DLAMI_MIN_VOLUME_GB} or more, or give an \"ami\""));
    }

    prices(plan, catalog, g, t, d);
}

/// The type is offered in the plan's region, on the group's market; only
/// where the catalog covers the region at all.
fn prices(plan: &Plan, catalog: &Catalog, g: &NodeGroup, t: &InstanceType, d: &mut Diags) {
    let it = g.instance_type.as_str();
    let region = plan.region.as_str();
    if catalog.knows_region(region) {
        match t.prices.get(region) {
            None => {
                let offered: Vec<&str> = t.prices.keys().map(String::as_str).collect();
                d.hint(&field(g, "instance_type"), g.pos, format!("{it} is not offered in {region} (catalog {})", catalog.date), format!("choose another type, a region where it is offered ({}), or run `infra catalog refresh`", offered.join(", ")));
            }
            Some(p) => match g.market {
                Market::Spot if p.spot.is_none() => {
                    d.hint(
                        &field(g, "market"),
                        g.pos,
                        format!("{it} has no spot market in {region}"),
                        "set \"market\": \"on-demand\"",
                    );
                }
                Market::OnDemand if p.on_demand.is_none() => {
                    let alt = if p.spot.is_some() {
                        "set \"market\": \"spot\", or choose another type"
                    } else {
                        "choose another type"
                    };
                    d.hint(
                        &field(g, "market"),
                        g.pos,
                        format!("{it} is not sold on demand in {region}"),
                        alt,
                    );
                }
                _ => {}
            },
        }
    }
}

fn zones(plan: &Plan, d: &mut Diags) {
    let region = plan.region.as_str();
    let in_region = |z: &str| z.starts_with(region) && z.len() > region.len();
    if let Some(z) = plan.availability_zone.as_deref().filter(|z| !in_region(z)) {
        d.hint(
            "availability_zone",
            plan.pos_of("availability_zone"),
            format!("availability zone \"{z}\" is not in region \"{region}\""),
            format!("use a zone of {region} such as \"{region}a\", or change \"region\""),
        );
    }
    let mut named: BTreeSet<&str> = BTreeSet::new();
    named.extend(plan.availability_zone.as_deref());
    // EFA groups: all in one zone
    let mut efa_zone: Option<(&str, &NodeGroup)> = None;
    for g in &plan.node_groups {
        if let Some(z) = g.availability_zone.as_deref() {
            named.insert(z);
            if !in_region(z) {
                d.hint(
                    &field(g, "availability_zone"),
                    g.pos,
                    format!("availability zone \"{z}\" is not in region \"{region}\""),
                    format!("use a zone of {region} such as \"{region}a\""),
                );
            }
        }
        if !g.efa {
            continue;
        }
        let z = g
            .availability_zone
            .as_deref()
            .or(plan.availability_zone.as_deref());
        if let (Some(gz), Some(pz)) = (
            g.availability_zone.as_deref(),
            plan.availability_zone.as_deref(),
        ) {
            if gz != pz {
                d.hint(&field(g, "availability_zone"), g.pos, format!("EFA group \"{}\" is in \"{gz}\" but the plan's zone is \"{pz}\"", g.name), format!("EFA works within one availability zone: remove the group's \"availability_zone\" or make it \"{pz}\""));
                continue;
            }
        }
        match (efa_zone, z) {
            (None, Some(z)) => efa_zone = Some((z, g)),
            (Some((first, fg)), Some(z)) if first != z => {
                d.hint(&field(g, "availability_zone"), g.pos, format!("EFA groups \"{}\" ({first}) and \"{}\" ({z}) are in different availability zones", fg.name, g.name), format!("put every EFA group in one zone: set \"availability_zone\": \"{first}\" on the plan and remove it from the groups"));
            }
            _ => {}
        }
    }
    if named.len() > MAX_ZONES {
        d.hint("node_groups", plan.pos_of("node_groups"), format!("the node groups use {} availability zones, more than the {MAX_ZONES} the base stack lays out", named.len()), "use fewer distinct \"availability_zone\" values");
    }
}

fn sizes(plan: &Plan, d: &mut Diags) {
    let resources: usize = plan
        .node_groups
        .iter()
        .map(resources_per_group)
        .sum::<usize>()
        + 1;
    if resources > MAX_RESOURCES {
        d.hint("node_groups", plan.pos_of("node_groups"), format!("the compute stack would have {resources} resources, more than CloudFormation's {MAX_RESOURCES} per template"), "use fewer node groups (each adds 2 or 3 resources; a group's node count adds none), or split them across phases");
    }
    let nodes: u32 = plan
        .node_groups
        .iter()
        .map(|g| g.count)
        .fold(0u32, u32::saturating_add);
    if nodes > MAX_NODES {
        let at = if plan.node_groups.len() == 1 {
            field(&plan.node_groups[0], "count")
        } else {
            "node_groups".to_string()
        };
        d.hint(
            &at,
            plan.node_groups
                .first()
                .map(|g| g.pos)
                .unwrap_or(plan.pos_of("node_groups")),
            format!(
                "the plan asks for {nodes} nodes, more than the {MAX_NODES} one phase may have"
            ),
            "split the campaign into phases, or use larger instance types and more slots per node",
        );
    }
}

fn budget(plan: &Plan, catalog: &Catalog, d: &mut Diags) {
    let Some(b) = &plan.budget else { return };
    let Some(cap) = b.max_hourly_usd else { return };
    if plan.provider == crate::plan::ProviderKind::Slurm {
        return;
    }
    let cheapest = plan
        .node_groups
        .iter()
        .filter_map(|g| {
            catalog
                .price(&g.instance_type, &plan.region, g.market)
                .map(|p| (p.usd_per_hour, g))
        })
        .min_by(|a, b| a.0.total_cmp(&b.0));
    if let Some((price, g)) = cheapest {
        if cap < price {
            d.hint(
                "budget.max_hourly_usd",
                plan.pos_of("budget.max_hourly_usd"),
                format!("a budget of ${cap}/h cannot pay for one node: the cheapest, {} ({} in {}), costs ${price}/h", g.instance_type, g.market.as_str(), plan.region),
                format!("raise \"max_hourly_usd\" to at least {price}, or use smaller or spot instances"),
            );
        }
    }
}
