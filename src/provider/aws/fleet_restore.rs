//! Bringing back fleets that idle nodes deleted (docs/CAMPAIGN.md, "No
//! controller, no spend"): a node that ran no step and saw no renewal of
//! the controller's lease for `idle_shutdown_minutes` deletes its own fleet
//! (`DeleteFleets`, instances kept) before it shuts down, so that the
//! fleet does not replace it. CloudFormation does not notice: the stack
//! still names the deleted fleet. The next `apply`, `run` or `up` finds
//! such fleets (DescribeFleets: `deleted_running`, `deleted_terminating`,
//! `deleted`, or gone), tells the user, and has CloudFormation replace them
//! by giving their `ValidUntil<Group>` parameter a fresh value, sized from
//! the budget that remains (the previous template, every other parameter
//! kept): only those fleets are created again.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_cloudformation::types::{Capability, Parameter};

use super::cfn;
use super::config::Clients;
use super::error::api;
use crate::catalog::Catalog;
use crate::plan::Plan;
use crate::provider::ProviderError;
use crate::stacks::{self, names};

/// A fleet of the stack that no longer runs: (group, logical id suffix,
/// fleet id, its state).
#[derive(Debug, Clone, PartialEq)]
pub struct GoneFleet {
    pub group: String,
    pub id: String,
    pub fleet_id: String,
    pub state: String,
}

/// The stack's fleets that were deleted outside CloudFormation.
pub async fn deleted_fleets(
    c: &Clients,
    plan: &Plan,
    stack: &cfn::StackInfo,
) -> Result<Vec<GoneFleet>, ProviderError> {
    let mut wanted: BTreeMap<String, (String, String)> = BTreeMap::new();
    for (group, id) in stacks::group_ids(plan) {
        if let Some(fid) = stack.outputs.get(&format!("Fleet{id}Id")) {
            wanted.insert(fid.clone(), (group, id));
        }
    }
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let out = c
        .ec2
        .describe_fleets()
        .set_fleet_ids(Some(wanted.keys().cloned().collect()))
        .send()
        .await
        .map_err(api("describe the phase's fleets"))?;
    let mut states: BTreeMap<String, String> = BTreeMap::new();
    for f in out.fleets() {
        if let Some(id) = f.fleet_id() {
            let s = f.fleet_state().map(|s| s.as_str()).unwrap_or_default();
            states.insert(id.to_string(), s.to_string());
        }
    }
    Ok(wanted
        .into_iter()
        .filter_map(|(fid, (group, id))| {
            let state = states.get(&fid).cloned().unwrap_or_else(|| "gone".into());
            state.starts_with("deleted").then_some(())?;
            Some(GoneFleet {
                group,
                id,
                fleet_id: fid,
                state,
            })
        })
        .collect())
}

/// What was spent on the phase so far: the ledger in the bucket merged into
/// the local one first (another machine may have spent), then the local
/// ledger's total for the phase (0 when unreadable: the whole budget).
pub async fn spent_so_far(c: &Clients, plan: &Plan, bucket: Option<&str>) -> f64 {
    if let Some(b) = bucket {
        let _ = super::meter::pull(c, b, &plan.root).await;
    }
    crate::cost::ledger::read(&plan.root)
        .map(|e| crate::cost::ledger::spent(&e, Some(&plan.name_key)))
        .unwrap_or(0.0)
}

/// Find the phase's deleted fleets and have CloudFormation create them
/// again. Returns whether the compute stack exists (created, or being
/// created or updated): then `deploy` keeps its parameters, and what was
/// spent matters only here. One DescribeStacks when nothing is to do (and
/// one DescribeFleets when the stack is settled). `bucket`: where the
/// ledger of other machines is merged from, for the fresh expiry.
pub async fn restore_fleets(
    c: &Clients,
    log: &dyn Fn(&str),
    plan: &Plan,
    catalog: &Catalog,
    bucket: Option<&str>,
) -> Result<bool, ProviderError> {
    let name = names::compute_stack_name(&plan.project, &plan.name_key);
    let Some(stack) = cfn::describe(c, &name).await? else {
        return Ok(false);
    };
    if stack.dead() || stack.status.starts_with("DELETE") {
        return Ok(false);
    }
    if stack.in_progress() {
        return Ok(true);
    }
    let gone = match deleted_fleets(c, plan, &stack).await {
        Ok(g) => g,
        Err(e) => {
            log(&format!("warning: cannot check the phase's fleets: {e}"));
            return Ok(true);
        }
    };
    if gone.is_empty() {
        return Ok(true);
    }
    for g in &gone {
        log(&format!(
            "fleet {} of node group {} is {}: it was deleted by its idle nodes (no step ran and no controller renewed the lease for idle_shutdown_minutes), or by hand; creating it again",
            g.fleet_id, g.group, g.state
        ));
    }
    let spent_usd = spent_so_far(c, plan, bucket).await;
    let fresh: BTreeMap<String, String> =
        stacks::compute_parameters(plan, catalog, chrono::Utc::now(), spent_usd)
            .into_iter()
            .filter(|(k, _)| gone.iter().any(|g| *k == format!("ValidUntil{}", g.id)))
            .collect();
    let params: Vec<Parameter> = stack
        .parameters
        .iter()
        .map(|k| match fresh.get(k) {
            Some(v) => Parameter::builder()
                .parameter_key(k)
                .parameter_value(v)
                .build(),
            None => Parameter::builder()
                .parameter_key(k)
                .use_previous_value(true)
                .build(),
        })
        .collect();
    let seen = cfn::seen_events(c, &stack.id).await;
    c.cfn
        .update_stack()
        .stack_name(&stack.id)
        .use_previous_template(true)
        .set_parameters(Some(params))
        .capabilities(Capability::CapabilityIam)
        .capabilities(Capability::CapabilityNamedIam)
        .send()
        .await
        .map_err(api("create the deleted fleets again"))?;
    let w = cfn::wait(
        c,
        &stack.id,
        "update",
        seen,
        Duration::from_secs(3 * 3600),
        &mut |l: &str| log(l),
    )
    .await?;
    if !w.ok {
        return Err(ProviderError::Failed(cfn::failure_message("update", &w)));
    }
    log(&format!(
        "stack {name}: {} fleet(s) created again",
        gone.len()
    ));
    Ok(true)
}
