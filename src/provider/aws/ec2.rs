//! EC2 and SSM node discovery: the phase's instances by tag, whether SSM
//! reaches them, why some did not come up, and the sweep for anything
//! billable left after a destroy.

use std::collections::HashSet;

use aws_sdk_ec2::types::{Filter, InstanceLifecycleType};
use aws_sdk_ssm::types::{InstanceInformationStringFilter, PingStatus};
use aws_smithy_types::date_time::Format;

use super::config::Clients;
use super::error::{api, AwsError};
use super::state::Seen;
use crate::stacks::names::{TAG_NODE_GROUP, TAG_PHASE, TAG_PROJECT};

fn tag_filter(key: &str, value: &str) -> Filter {
    Filter::builder()
        .name(format!("tag:{key}"))
        .values(value)
        .build()
}

fn tag_of<'a>(tags: impl IntoIterator<Item = (&'a str, &'a str)>, key: &str) -> Option<&'a str> {
    tags.into_iter().find(|(k, _)| *k == key).map(|(_, v)| v)
}

/// Instances tagged with the project (and phase), in every state.
pub async fn instances(
    c: &Clients,
    project: &str,
    phase: Option<&str>,
) -> Result<Vec<Seen>, AwsError> {
    instances_tagged(c, project, phase.map(|p| (TAG_PHASE, p))).await
}

/// The instances of the phase's detached controller (tagged
/// `infra:controller-of`, never `infra:phase`), in every state; their
/// group is `controller`.
pub async fn controllers(c: &Clients, project: &str, phase: &str) -> Result<Vec<Seen>, AwsError> {
    let tag = crate::stacks::controller::TAG_CONTROLLER_OF;
    let mut v = instances_tagged(c, project, Some((tag, phase))).await?;
    for s in &mut v {
        s.group = "controller".into();
    }
    Ok(v)
}

async fn instances_tagged(
    c: &Clients,
    project: &str,
    tag: Option<(&str, &str)>,
) -> Result<Vec<Seen>, AwsError> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut req = c
            .ec2
            .describe_instances()
            .filters(tag_filter(TAG_PROJECT, project))
            .set_next_token(token.clone());
        if let Some((k, v)) = tag {
            req = req.filters(tag_filter(k, v));
        }
        let page = req
            .send()
            .await
            .map_err(api("describe the phase's instances"))?;
        for r in page.reservations() {
            for i in r.instances() {
                let tags = i
                    .tags()
                    .iter()
                    .filter_map(|t| Some((t.key()?, t.value().unwrap_or_default())));
                out.push(Seen {
                    instance_id: i.instance_id().unwrap_or_default().to_string(),
                    group: tag_of(tags, TAG_NODE_GROUP).unwrap_or_default().to_string(),
                    instance_type: i
                        .instance_type()
                        .map(|t| t.as_str().to_string())
                        .unwrap_or_default(),
                    market: if i.instance_lifecycle() == Some(&InstanceLifecycleType::Spot) {
                        "spot"
                    } else {
                        "on-demand"
                    }
                    .into(),
                    az: i
                        .placement()
                        .and_then(|p| p.availability_zone())
                        .unwrap_or_default()
                        .to_string(),
                    private_ip: i.private_ip_address().unwrap_or_default().to_string(),
                    launch_time: i
                        .launch_time()
                        .and_then(|t| t.fmt(Format::DateTime).ok())
                        .unwrap_or_default(),
                    state: i
                        .state()
                        .and_then(|s| s.name())
                        .map(|n| n.as_str().to_string())
                        .unwrap_or_default(),
                    state_reason: i
                        .state_reason()
                        .and_then(|r| r.message())
                        .map(str::to_string),
                    transition_reason: i
                        .state_transition_reason()
                        .filter(|r| !r.is_empty())
                        .map(str::to_string),
                });
            }
        }
        token = page
            .next_token()
            .map(str::to_string)
            .filter(|t| !t.is_empty());
        if token.is_none() {
            break;
        }
    }
    Ok(out)
}

/// The instances among `ids` that SSM reports Online.
pub async fn ssm_online(c: &Clients, ids: &[String]) -> Result<HashSet<String>, AwsError> {
    let mut online = HashSet::new();
    for chunk in ids.chunks(50) {
        let filter = InstanceInformationStringFilter::builder()
            .key("InstanceIds")
            .set_values(Some(chunk.to_vec()))
            .build()
            .map_err(|e| AwsError::Failed(e.to_string()))?;
        let mut token: Option<String> = None;
        loop {
            let page = c
                .ssm
                .describe_instance_information()
                .filters(filter.clone())
                .set_next_token(token.clone())
                .send()
                .await
                .map_err(api("ask SSM which nodes are online"))?;
            for info in page.instance_information_list() {
                if info.ping_status() == Some(&PingStatus::Online) {
                    if let Some(id) = info.instance_id() {
                        online.insert(id.to_string());
                    }
                }
            }
            token = page
                .next_token()
                .map(str::to_string)
                .filter(|t| !t.is_empty());
            if token.is_none() {
                break;
            }
        }
    }
    Ok(online)
}

/// Why nodes may be missing, as EC2 says it: the fleets' errors (capacity,
/// price, quota) and their states.
pub async fn fleet_problems(c: &Clients, fleet_ids: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    if fleet_ids.is_empty() {
        return out;
    }
    match c
        .ec2
        .describe_fleets()
        .set_fleet_ids(Some(fleet_ids.to_vec()))
        .send()
        .await
    {
        Ok(r) => {
            for f in r.fleets() {
                let id = f.fleet_id().unwrap_or_default();
                let state = f.fleet_state().map(|s| s.as_str()).unwrap_or_default();
                if !matches!(state, "active" | "") {
                    out.push(format!("fleet {id} is {state}"));
                }
                for e in f.errors() {
                    let it = e
                        .launch_template_and_overrides()
                        .and_then(|l| l.overrides())
                        .and_then(|o| o.instance_type())
                        .map(|t| format!(" ({})", t.as_str()))
                        .unwrap_or_default();
                    out.push(format!(
                        "fleet {id}{it}: {}: {}",
                        e.error_code().unwrap_or("error"),
                        e.error_message().unwrap_or_default()
                    ));
                }
            }
        }
        Err(e) => out.push(format!(
            "cannot describe fleets {}: {}",
            fleet_ids.join(", "),
            super::error::describe(&e)
        )),
    }
    // open or failed spot requests say why they are not fulfilled (capacity, price)
    if let Ok(r) = c
        .ec2
        .describe_spot_instance_requests()
        .filters(
            Filter::builder()
                .name("state")
                .values("open")
                .values("failed")
                .build(),
        )
        .send()
        .await
    {
        for s in r.spot_instance_requests() {
            if let Some(st) = s.status() {
                out.push(format!(
                    "spot request {}: {}: {}",
                    s.spot_instance_request_id().unwrap_or_default(),
                    st.code().unwrap_or_default(),
                    st.message().unwrap_or_default()
                ));
            }
        }
    }
    out
}

/// Something still there after a destroy, and possibly still billed.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Leftover {
    pub kind: &'static str,
    pub id: String,
    pub detail: String,
}

/// Everything tagged with the project (and phase) that costs money or
/// blocks a clean slate: live instances, active fleets, volumes, network
/// interfaces; with `whole_project` also NAT gateways, Elastic IPs, VPCs.
pub async fn sweep(
    c: &Clients,
    project: &str,
    phase: Option<&str>,
    whole_project: bool,
) -> Result<Vec<Leftover>, AwsError> {
    let mut out = Vec::new();
    for i in instances(c, project, phase).await? {
        if !matches!(i.state.as_str(), "terminated" | "shutting-down") {
            out.push(Leftover {
                kind: "instance",
                id: i.instance_id,
                detail: format!("{} {} {} in {}", i.state, i.instance_type, i.market, i.az),
            });
        }
    }
    let has_tags = |tags: &[aws_sdk_ec2::types::Tag]| {
        let t = tags
            .iter()
            .filter_map(|t| Some((t.key()?, t.value().unwrap_or_default())));
        let ok_project = tag_of(t.clone(), TAG_PROJECT) == Some(project);
        let ok_phase = phase.is_none_or(|p| tag_of(t, TAG_PHASE) == Some(p));
        ok_project && ok_phase
    };
    let fleets = c
        .ec2
        .describe_fleets()
        .send()
        .await
        .map_err(api("describe EC2 fleets"))?;
    for f in fleets.fleets() {
        let state = f.fleet_state().map(|s| s.as_str()).unwrap_or_default();
        if has_tags(f.tags()) && !state.starts_with("deleted") {
            out.push(Leftover {
                kind: "fleet",
                id: f.fleet_id().unwrap_or_default().into(),
                detail: format!("EC2 fleet, {state}"),
            });
        }
    }
    let sfr = c
        .ec2
        .describe_spot_fleet_requests()
        .send()
        .await
        .map_err(api("describe spot fleet requests"))?;
    for f in sfr.spot_fleet_request_configs() {
        let state = f
            .spot_fleet_request_state()
            .map(|s| s.as_str())
            .unwrap_or_default();
        if has_tags(f.tags()) && matches!(state, "submitted" | "active" | "modifying") {
            out.push(Leftover {
                kind: "spot-fleet",
                id: f.spot_fleet_request_id().unwrap_or_default().into(),
                detail: format!("spot fleet request, {state}"),
            });
        }
    }
    let mut vreq = c
        .ec2
        .describe_volumes()
        .filters(tag_filter(TAG_PROJECT, project));
    if let Some(p) = phase {
        vreq = vreq.filters(tag_filter(TAG_PHASE, p));
    }
    for v in vreq
        .send()
        .await
        .map_err(api("describe volumes"))?
        .volumes()
    {
        let state = v.state().map(|s| s.as_str()).unwrap_or_default();
        if state != "deleted" {
            out.push(Leftover {
                kind: "volume",
                id: v.volume_id().unwrap_or_default().into(),
                detail: format!("{} GiB, {state}", v.size().unwrap_or(0)),
            });
        }
    }
    let mut nreq = c
        .ec2
        .describe_network_interfaces()
        .filters(tag_filter(TAG_PROJECT, project));
    if let Some(p) = phase {
        nreq = nreq.filters(tag_filter(TAG_PHASE, p));
    }
    for n in nreq
        .send()
        .await
        .map_err(api("describe network interfaces"))?
        .network_interfaces()
    {
        out.push(Leftover {
            kind: "network-interface",
            id: n.network_interface_id().unwrap_or_default().into(),
            detail: n
                .status()
                .map(|s| s.as_str().to_string())
                .unwrap_or_default(),
        });
    }
    if whole_project {
        let nat = c
            .ec2
            .describe_nat_gateways()
            .filter(tag_filter(TAG_PROJECT, project))
            .send()
            .await
            .map_err(api("describe NAT gateways"))?;
        for g in nat.nat_gateways() {
            let state = g.state().map(|s| s.as_str()).unwrap_or_default();
            if !matches!(state, "deleted" | "deleting" | "failed") {
                out.push(Leftover {
                    kind: "nat-gateway",
                    id: g.nat_gateway_id().unwrap_or_default().into(),
                    detail: state.into(),
                });
            }
        }
        let eips = c
            .ec2
            .describe_addresses()
            .filters(tag_filter(TAG_PROJECT, project))
            .send()
            .await
            .map_err(api("describe Elastic IPs"))?;
        for a in eips.addresses() {
            out.push(Leftover {
                kind: "elastic-ip",
                id: a.allocation_id().unwrap_or_default().into(),
                detail: a.public_ip().unwrap_or_default().into(),
            });
        }
        let vpcs = c
            .ec2
            .describe_vpcs()
            .filters(tag_filter(TAG_PROJECT, project))
            .send()
            .await
            .map_err(api("describe VPCs"))?;
        for v in vpcs.vpcs() {
            out.push(Leftover {
                kind: "vpc",
                id: v.vpc_id().unwrap_or_default().into(),
                detail: v.cidr_block().unwrap_or_default().into(),
            });
        }
    }
    Ok(out)
}

/// Remove what `sweep` found (instances terminated, fleets deleted with
/// their instances, volumes and interfaces that are free deleted). Returns
/// what could not be removed, with the reason.
pub async fn force_remove(c: &Clients, left: &[Leftover]) -> Vec<String> {
    let mut errors = Vec::new();
    let ids = |kind: &str| -> Vec<String> {
        left.iter()
            .filter(|l| l.kind == kind)
            .map(|l| l.id.clone())
            .collect()
    };
    let fleets = ids("fleet");
    if !fleets.is_empty() {
        if let Err(e) = c
            .ec2
            .delete_fleets()
            .set_fleet_ids(Some(fleets))
            .terminate_instances(true)
            .send()
            .await
        {
            errors.push(format!("delete fleets: {}", super::error::describe(&e)));
        }
    }
    let sfr = ids("spot-fleet");
    if !sfr.is_empty() {
        if let Err(e) = c
            .ec2
            .cancel_spot_fleet_requests()
            .set_spot_fleet_request_ids(Some(sfr))
            .terminate_instances(true)
            .send()
            .await
        {
            errors.push(format!(
                "cancel spot fleet requests: {}",
                super::error::describe(&e)
            ));
        }
    }
    let inst = ids("instance");
    if !inst.is_empty() {
        if let Err(e) = c
            .ec2
            .terminate_instances()
            .set_instance_ids(Some(inst))
            .send()
            .await
        {
            errors.push(format!(
                "terminate instances: {}",
                super::error::describe(&e)
            ));
        }
    }
    for v in ids("volume") {
        if let Err(e) = c.ec2.delete_volume().volume_id(&v).send().await {
            errors.push(format!("delete volume {v}: {}", super::error::describe(&e)));
        }
    }
    for n in ids("network-interface") {
        if let Err(e) = c
            .ec2
            .delete_network_interface()
            .network_interface_id(&n)
            .send()
            .await
        {
            errors.push(format!(
                "delete network interface {n}: {}",
                super::error::describe(&e)
            ));
        }
    }
    for g in ids("nat-gateway") {
        if let Err(e) = c.ec2.delete_nat_gateway().nat_gateway_id(&g).send().await {
            errors.push(format!(
                "delete NAT gateway {g}: {}",
                super::error::describe(&e)
            ));
        }
    }
    for a in ids("elastic-ip") {
        if let Err(e) = c.ec2.release_address().allocation_id(&a).send().await {
            errors.push(format!(
                "release Elastic IP {a}: {}",
                super::error::describe(&e)
            ));
        }
    }
    errors
}
