//! Plan → CloudFormation: builds the values each template needs, renders
//! `stacks/*.json.hbs` with Handlebars (strict; every inserted value is
//! JSON-escaped, every value in the user-data script is shell-quoted first),
//! and parses the result back as JSON.
//!
//! The base stack's values reach the compute stack through exports named
//! `<project>-base-<Output>` and `Fn::ImportValue`: no parameters to pass
//! between stacks, and CloudFormation refuses to delete a base stack (or an
//! export) that a phase still uses.

use chrono::{DateTime, Utc};
use handlebars::{Handlebars, RenderErrorReason};
use serde::Serialize;
use serde_json::{json, Value};

use super::limits::{group_limits, usd_string, GroupLimits};
use super::model::{RenderedStack, StackError, Stacks, MAX_BODY};
use super::names::{
    base_stack_name, bucket_prefix, compute_stack_name, export_name, launch_template_name,
    unique_logical_ids, TAG_NODE_GROUP, TAG_PHASE, TAG_PROJECT, TAG_STACK,
};
use super::policy;
use super::shape::{is_default_dlami, placement_strategy, MAX_ZONES};
use crate::catalog::{Catalog, InstanceType};
use crate::plan::{NodeGroup, Plan};
use crate::tasks::shell;

const BASE_TEMPLATE: &str = include_str!("../../stacks/base.json.hbs");
const COMPUTE_TEMPLATE: &str = include_str!("../../stacks/compute.json.hbs");
const USERDATA_TEMPLATE: &str = include_str!("../../stacks/userdata.sh.hbs");

/// Default images, as SSM parameter paths that EC2 resolves at launch
/// (`resolve:ssm:` in the launch template): Amazon Linux 2023 for CPU
/// types, the Deep Learning Base AMI (NVIDIA driver, CUDA, EFA; Amazon Linux
/// 2023) for GPU and EFA types, the Neuron DLAMI for Trainium.
pub const DEFAULT_AMI_CPU: &str =
    "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64";
pub const DEFAULT_AMI_GPU: &str = "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-amazon-linux-2023/latest/ami-id";
pub const DEFAULT_AMI_NEURON: &str =
    "/aws/service/neuron/dlami/multi-framework/amazon-linux-2023/latest/image_id";

/// Number of zones a plan without any availability zone spreads over; every
/// region has at least two.
const DEFAULT_ZONES: u8 = 2;

/// The launch template's `ImageId`: an AMI id as given, an SSM parameter
/// path as `resolve:ssm:<path>`.
fn image_id(g: &NodeGroup, t: &InstanceType) -> String {
    let path = match g.ami.as_deref() {
        Some(a) if a.starts_with("ami-") || a.starts_with("resolve:ssm:") => return a.to_string(),
        Some(a) => a,
        None if g.instance_type.starts_with("trn") || g.instance_type.starts_with("inf") => {
            DEFAULT_AMI_NEURON
        }
        None if is_default_dlami(t, g.efa) => DEFAULT_AMI_GPU,
        None => DEFAULT_AMI_CPU,
    };
    format!("resolve:ssm:{path}")
}

/// The root device of the image: Ubuntu images use /dev/sda1, Amazon Linux
/// (every default here) /dev/xvda.
fn root_device(image: &str) -> &'static str {
    if image.to_ascii_lowercase().contains("ubuntu") {
        "/dev/sda1"
    } else {
        "/dev/xvda"
    }
}

// ---------------------------------------------------------------- layout

#[derive(Debug, Clone, PartialEq)]
enum Zone {
    Named(String),
    /// The n-th zone of the region (`Fn::Select` over `Fn::GetAZs`).
    Index(u8),
}

impl Zone {
    /// The zone in the base template: a zone the plan names is a parameter
    /// (defaulting to it) rather than a literal, as cfn-lint asks (W3010).
    fn value(&self, param: &str) -> Value {
        match self {
            Zone::Named(_) => json!({"Ref": param}),
            Zone::Index(i) => json!({"Fn::Select": [i, {"Fn::GetAZs": ""}]}),
        }
    }

    fn label(&self) -> String {
        match self {
            Zone::Named(z) => z.clone(),
            Zone::Index(i) => format!("the region's zone {}", i + 1),
        }
    }
}

/// Where subnets go and which groups use which: the zones the plan names
/// (plan first, then groups, in order); without any, one zone when a group
/// uses EFA and two otherwise. EFA groups all use one zone; a group with
/// several EFA network cards cannot have a public address and launches in
/// a private subnet behind a NAT gateway.
struct Layout {
    zones: Vec<Zone>,
    /// Index of the zone the EFA groups use.
    efa_zone: usize,
    nat: bool,
}

fn layout(plan: &Plan, catalog: &Catalog) -> Layout {
    let mut named: Vec<String> = Vec::new();
    for z in plan.availability_zone.iter().chain(
        plan.node_groups
            .iter()
            .filter_map(|g| g.availability_zone.as_ref()),
    ) {
        if !named.contains(z) {
            named.push(z.clone());
        }
    }
    let any_efa = plan.node_groups.iter().any(|g| g.efa);
    let zones: Vec<Zone> = if !named.is_empty() {
        named.iter().cloned().map(Zone::Named).collect()
    } else if any_efa {
        vec![Zone::Index(0)]
    } else {
        (0..DEFAULT_ZONES).map(Zone::Index).collect()
    };
    let efa_name = plan.availability_zone.clone().or_else(|| {
        plan.node_groups
            .iter()
            .filter(|g| g.efa)
            .find_map(|g| g.availability_zone.clone())
    });
    let efa_zone = efa_name.map(|z| zone_index(&zones, &z)).unwrap_or(0);
    let nat = plan.node_groups.iter().any(|g| multi_card_efa(g, catalog));
    Layout {
        zones,
        efa_zone,
        nat,
    }
}

pub(crate) fn efa_interfaces(g: &NodeGroup, catalog: &Catalog) -> u32 {
    if !g.efa {
        return 0;
    }
    catalog
        .get(&g.instance_type)
        .map(|t| t.max_efa_interfaces.max(1))
        .unwrap_or(1)
}

/// The group needs the NAT gateway of the base stack (its nodes have no
/// public address: several EFA cards rule one out).
pub(crate) fn multi_card_efa(g: &NodeGroup, catalog: &Catalog) -> bool {
    efa_interfaces(g, catalog) > 1
}

fn zone_index(zones: &[Zone], name: &str) -> usize {
    zones
        .iter()
        .position(|z| *z == Zone::Named(name.to_string()))
        .unwrap_or(0)
}

/// Indices of the zones a group's fleet may launch in.
fn group_zones(plan: &Plan, layout: &Layout, g: &NodeGroup) -> Vec<usize> {
    if let Some(z) = &g.availability_zone {
        vec![zone_index(&layout.zones, z)]
    } else if g.efa {
        vec![layout.efa_zone]
    } else if let Some(z) = &plan.availability_zone {
        vec![zone_index(&layout.zones, z)]
    } else {
        (0..layout.zones.len()).collect()
    }
}

fn zone_param(i: usize) -> String {
    format!("Zone{}", i + 1)
}

fn subnet_id(i: usize) -> String {
    format!("Subnet{}", i + 1)
}

// ---------------------------------------------------------------- views

#[derive(Serialize)]
struct BaseView {
    project: String,
    export_prefix: String,
    bucket_prefix: String,
    name_prefix: String,
    tags: Value,
    zone_params: Vec<ZoneParam>,
    subnets: Vec<SubnetView>,
    nat: Option<NatView>,
    ssm_policy: &'static str,
    legacy_node_policy: Value,
    noncurrent_days: u32,
    abort_upload_days: u32,
}

#[derive(Serialize)]
struct ZoneParam {
    name: String,
    zone: String,
}

#[derive(Serialize)]
struct SubnetView {
    id: String,
    name: String,
    az: Value,
    az_label: String,
    cidr: String,
}

#[derive(Serialize)]
struct NatView {
    public_subnet: String,
    az: Value,
    cidr: String,
}

#[derive(Serialize)]
struct ComputeView {
    project: String,
    phase: String,
    ssm_policy: &'static str,
    node_policy: Value,
    role_tags: Value,
    imports: Imports,
    groups: Vec<GroupView>,
}

#[derive(Serialize)]
struct Imports {
    security_group: String,
    bucket: String,
}

#[derive(Serialize)]
struct GroupView {
    id: String,
    name: String,
    lt_name: String,
    instance_type: String,
    count: u32,
    spot: bool,
    single_az: bool,
    ami: String,
    root_device: &'static str,
    volume_gb: u32,
    interfaces: Vec<InterfaceView>,
    overrides: Vec<OverrideView>,
    placement: Option<PlacementView>,
    cap: Option<String>,
    lifetime_hours: String,
    valid_until_param: String,
    userdata: String,
    tags: Value,
}

#[derive(Serialize)]
struct InterfaceView {
    card: u32,
    device: u32,
    efa: bool,
    subnet_export: Option<String>,
    public_ip: bool,
}

#[derive(Serialize)]
struct OverrideView {
    subnet_export: Option<String>,
}

#[derive(Serialize)]
struct PlacementView {
    id: String,
    strategy: String,
}

#[derive(Serialize)]
struct UserDataView<'a> {
    project: &'a str,
    phase: &'a str,
    group: &'a str,
    instance_type: &'a str,
    slots: u32,
    efa: bool,
    lifetime_minutes: u64,
    /// The boot-time idle timer: `idle_shutdown_minutes` + a margin for a
    /// controller to install the agent (whose watcher disarms it).
    boot_idle_minutes: u32,
}

/// Minutes a fresh node waits for a controller's agent install beyond
/// `idle_shutdown_minutes` before its boot-time idle timer stops it.
pub const BOOT_IDLE_MARGIN_MINUTES: u32 = 10;

pub(super) fn tag(key: &str, value: &str) -> Value {
    json!({"Key": key, "Value": value})
}

fn base_view(plan: &Plan, layout: &Layout) -> BaseView {
    let stack = base_stack_name(&plan.project);
    let subnets = layout
        .zones
        .iter()
        .enumerate()
        .map(|(i, z)| SubnetView {
            id: subnet_id(i),
            name: format!("public-{}", i + 1),
            az: z.value(&zone_param(i)),
            az_label: z.label(),
            cidr: format!("10.0.{}.0/20", i * 16),
        })
        .collect();
    let nat = layout.nat.then(|| NatView {
        public_subnet: subnet_id(layout.efa_zone),
        az: layout.zones[layout.efa_zone].value(&zone_param(layout.efa_zone)),
        cidr: "10.0.128.0/20".into(),
    });
    let zone_params = layout
        .zones
        .iter()
        .enumerate()
        .filter_map(|(i, z)| match z {
            Zone::Named(name) => Some(ZoneParam {
                name: zone_param(i),
                zone: name.clone(),
            }),
            Zone::Index(_) => None,
        })
        .collect();
    BaseView {
        zone_params,
        project: plan.project.clone(),
        export_prefix: stack.clone(),
        bucket_prefix: bucket_prefix(&plan.project),
        name_prefix: stack,
        tags: json!([tag(TAG_PROJECT, &plan.project), tag(TAG_STACK, "base")]),
        subnets,
        nat,
        ssm_policy: policy::SSM_MANAGED_POLICY,
        legacy_node_policy: policy::legacy_statements(&bucket_prefix(&plan.project)),
        noncurrent_days: policy::NONCURRENT_VERSION_DAYS,
        abort_upload_days: policy::ABORT_UPLOAD_DAYS,
    }
}

/// The launch template's network interfaces: one per EFA card (without a
/// public address when there are several, which reach out through the NAT),
/// else one public interface.
fn interfaces(plan: &Plan, g: &NodeGroup, n_efa: u32) -> Vec<InterfaceView> {
    let private = n_efa > 1;
    if g.efa {
        (0..n_efa)
            .map(|i| InterfaceView {
                card: i,
                device: u32::from(i > 0),
                efa: true,
                subnet_export: private.then(|| export_name(&plan.project, "PrivateSubnetId")),
                public_ip: !private,
            })
            .collect()
    } else {
        vec![InterfaceView {
            card: 0,
            device: 0,
            efa: false,
            subnet_export: None,
            public_ip: true,
        }]
    }
}

/// The fleet's overrides: one per subnet the group may use, or one without a
/// subnet when the interfaces name theirs (`private`).
fn overrides(plan: &Plan, layout: &Layout, g: &NodeGroup, private: bool) -> Vec<OverrideView> {
    if private {
        vec![OverrideView {
            subnet_export: None,
        }]
    } else {
        group_zones(plan, layout, g)
            .into_iter()
            .map(|i| OverrideView {
                subnet_export: Some(export_name(&plan.project, &format!("{}Id", subnet_id(i)))),
            })
            .collect()
    }
}

fn compute_view(
    plan: &Plan,
    catalog: &Catalog,
    layout: &Layout,
    limits: &[GroupLimits],
) -> Result<ComputeView, StackError> {
    let ids = unique_logical_ids(plan.node_groups.iter().map(|g| g.name.as_str()));
    let shell_hb = shell_registry()?;
    let mut groups = Vec::new();
    for ((g, id), lim) in plan.node_groups.iter().zip(ids).zip(limits) {
        let t = catalog
            .get(&g.instance_type)
            .ok_or_else(|| StackError::UnknownInstanceType {
                group: g.name.clone(),
                instance_type: g.instance_type.clone(),
            })?;
        let n_efa = efa_interfaces(g, catalog);
        let private = n_efa > 1;
        let interfaces = interfaces(plan, g, n_efa);
        let overrides = overrides(plan, layout, g, private);
        let strategy = placement_strategy(g);
        let ami = image_id(g, t);
        let userdata = render_text(
            &shell_hb,
            "userdata.sh.hbs",
            &UserDataView {
                project: &plan.project,
                phase: &plan.name_key,
                group: &g.name,
                instance_type: &g.instance_type,
                slots: g.slots,
                efa: g.efa,
                lifetime_minutes: lim.lifetime_minutes(),
                boot_idle_minutes: g.idle_shutdown_minutes + BOOT_IDLE_MARGIN_MINUTES,
            },
        )?;
        let name_tag = launch_template_name(plan, &g.name);
        groups.push(GroupView {
            lt_name: name_tag.clone(),
            name: g.name.clone(),
            instance_type: g.instance_type.clone(),
            count: g.count,
            spot: g.market == crate::plan::Market::Spot,
            single_az: g.efa || strategy == Some("cluster"),
            root_device: root_device(&ami),
            ami,
            volume_gb: g.volume_gb,
            interfaces,
            overrides,
            placement: strategy.map(|s| PlacementView {
                id: format!("PlacementGroup{id}"),
                strategy: s.to_string(),
            }),
            cap: lim.hourly_cap_usd.map(usd_string),
            lifetime_hours: format!("{}", (lim.lifetime_hours * 100.0).round() / 100.0),
            valid_until_param: format!("ValidUntil{id}"),
            userdata,
            tags: json!([
                tag("Name", &name_tag),
                tag(TAG_PROJECT, &plan.project),
                tag(TAG_PHASE, &plan.name_key),
                tag(TAG_NODE_GROUP, &g.name),
            ]),
            id,
        });
    }
    Ok(ComputeView {
        project: plan.project.clone(),
        phase: plan.name_key.clone(),
        ssm_policy: policy::SSM_MANAGED_POLICY,
        node_policy: policy::node_statements(
            &bucket_prefix(&plan.project),
            &plan.project,
            &plan.name_key,
        ),
        role_tags: json!([
            tag(TAG_PROJECT, &plan.project),
            tag(TAG_PHASE, &plan.name_key),
        ]),
        imports: Imports {
            security_group: export_name(&plan.project, "SecurityGroupId"),
            bucket: export_name(&plan.project, "BucketName"),
        },
        groups,
    })
}

// ---------------------------------------------------------------- handlebars

pub(super) fn json_registry() -> Handlebars<'static> {
    let mut hb = Handlebars::new();
    hb.set_strict_mode(true);
    // Every `{{value}}` lands inside a JSON string literal.
    hb.register_escape_fn(shell::json_escape);
    hb.register_helper("json", Box::new(crate::tasks::render::json_helper));
    hb.register_helper("tags", Box::new(tags_helper));
    hb
}

fn shell_registry() -> Result<Handlebars<'static>, StackError> {
    let mut hb = Handlebars::new();
    hb.set_strict_mode(true);
    // Values land in a shell script that is also an Fn::Sub string: quote
    // for the shell, then keep CloudFormation from reading "${" in them.
    hb.register_escape_fn(super::comment::user_data_escape);
    hb.register_helper("comment", Box::new(super::comment::comment_helper));
    hb.register_template_string("userdata.sh.hbs", USERDATA_TEMPLATE)
        .map_err(|e| StackError::Template {
            template: "userdata.sh.hbs",
            message: e.to_string(),
        })?;
    Ok(hb)
}

/// `{{{tags "vpc"}}}`: the root `tags` plus a `Name` tag
/// `<name_prefix>-<suffix>`, as a JSON array.
fn tags_helper(
    h: &handlebars::Helper,
    _: &Handlebars,
    ctx: &handlebars::Context,
    _: &mut handlebars::RenderContext,
    out: &mut dyn handlebars::Output,
) -> handlebars::HelperResult {
    let suffix = h
        .param(0)
        .and_then(|p| p.value().as_str())
        .ok_or(RenderErrorReason::ParamNotFoundForIndex("tags", 0))?;
    let root = ctx.data();
    let prefix = root["name_prefix"]
        .as_str()
        .ok_or_else(|| RenderErrorReason::MissingVariable(Some("name_prefix".into())))?;
    let mut tags = vec![tag("Name", &format!("{prefix}-{suffix}"))];
    tags.extend(root["tags"].as_array().cloned().unwrap_or_default());
    out.write(&serde_json::to_string(&tags).unwrap_or_default())?;
    Ok(())
}

pub(super) fn render_text(
    hb: &Handlebars,
    name: &'static str,
    view: &impl Serialize,
) -> Result<String, StackError> {
    hb.render(name, view).map_err(|e| StackError::Template {
        template: name,
        message: e.to_string(),
    })
}

pub(super) fn render_json(
    hb: &mut Handlebars,
    name: &'static str,
    source: &str,
    view: &impl Serialize,
) -> Result<Value, StackError> {
    hb.register_template_string(name, source)
        .map_err(|e| StackError::Template {
            template: name,
            message: e.to_string(),
        })?;
    let text = render_text(hb, name, view)?;
    serde_json::from_str(&text).map_err(|e| StackError::Json {
        template: name,
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    })
}

// ---------------------------------------------------------------- API

/// Render the base and compute stacks of `plan`. Run `validate` first: this
/// returns an error, not a diagnostic, for what it cannot render.
pub fn render(plan: &Plan, catalog: &Catalog) -> Result<Stacks, StackError> {
    if plan.node_groups.iter().all(|g| g.instance_type == "local") {
        return Err(StackError::NoMachines);
    }
    if let Some(g) = plan
        .node_groups
        .iter()
        .find(|g| catalog.get(&g.instance_type).is_none())
    {
        return Err(StackError::UnknownInstanceType {
            group: g.name.clone(),
            instance_type: g.instance_type.clone(),
        });
    }
    let layout = layout(plan, catalog);
    if layout.zones.len() > MAX_ZONES {
        return Err(StackError::TooManyZones {
            count: layout.zones.len(),
            max: MAX_ZONES,
        });
    }
    let limits = group_limits(plan, catalog);
    let mut hb = json_registry();
    let base = render_json(
        &mut hb,
        "base.json.hbs",
        BASE_TEMPLATE,
        &base_view(plan, &layout),
    )?;
    let compute = render_json(
        &mut hb,
        "compute.json.hbs",
        COMPUTE_TEMPLATE,
        &compute_view(plan, catalog, &layout, &limits)?,
    )?;
    let stacks = Stacks {
        base: RenderedStack::new(base_stack_name(&plan.project), base),
        compute: RenderedStack::new(compute_stack_name(&plan.project, &plan.name_key), compute),
    };
    for s in [&stacks.base, &stacks.compute] {
        if s.body.len() > MAX_BODY {
            return Err(StackError::TooLarge {
                name: s.name.clone(),
                bytes: s.body.len(),
            });
        }
    }
    Ok(stacks)
}

/// Parameter values for deploying the compute stack at `now`: each group's
/// `ValidUntil<Group>` (now + the group's lifetime, sized from the budget
/// that remains after `spent_usd`). Pass them on create; on update keep the
/// previous values (a new expiry replaces the fleet), except for a fleet
/// that is replaced anyway (`provider::aws::deploy::restore_fleets`).
pub fn compute_parameters(
    plan: &Plan,
    catalog: &Catalog,
    now: DateTime<Utc>,
    spent_usd: f64,
) -> Vec<(String, String)> {
    let ids = unique_logical_ids(plan.node_groups.iter().map(|g| g.name.as_str()));
    ids.into_iter()
        .zip(super::limits::group_limits_remaining(
            plan, catalog, spent_usd,
        ))
        .map(|(id, l)| (format!("ValidUntil{id}"), l.valid_until(now)))
        .collect()
}

/// The logical id suffix of each node group (`Fleet<id>`, `ValidUntil<id>`),
/// in plan order.
pub fn group_ids(plan: &Plan) -> Vec<(String, String)> {
    plan.node_groups
        .iter()
        .map(|g| g.name.clone())
        .zip(unique_logical_ids(
            plan.node_groups.iter().map(|g| g.name.as_str()),
        ))
        .collect()
}

#[cfg(test)]
mod tests;
