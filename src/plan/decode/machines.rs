//! The machines: `infrastructure` (the single pool of the phase system) or
//! `node_groups` (several named pools), and the one local node a plan
//! without either runs on.

use serde_json::{Map, Value};

use crate::plan::diag::{unsafe_id_reason, Diags};
use crate::plan::fields::{boolean, child, count, obj, positive, string, whole, Obj};
use crate::plan::json::{Pos, Spanned};
use crate::plan::model::{
    Market, NodeGroup, ProviderKind, DEFAULT_IDLE_SHUTDOWN_MINUTES, MAX_IDLE_SHUTDOWN_MINUTES,
};

const INFRA_FIELDS: &[&str] = &[
    "instance_type",
    "node_count",
    "gpu_count_per_node",
    "tp_size",
    "model",
    "vllm_version",
    "venv_path",
    "market",
    "efa",
    "placement",
    "ami",
    "volume_gb",
    "slots",
    "max_lifetime_hours",
    "idle_shutdown_minutes",
    "workers_per_slot",
];

const GROUP_FIELDS: &[&str] = &[
    "instance_type",
    "count",
    "market",
    "efa",
    "placement",
    "ami",
    "volume_gb",
    "slots",
    "max_lifetime_hours",
    "idle_shutdown_minutes",
    "gpus",
    "workers_per_slot",
    "availability_zone",
];

/// The plan's machines and, for the `infrastructure` form, its fields as
/// template variables.
pub(super) struct Machines {
    pub infrastructure: Map<String, Value>,
    pub groups: Vec<NodeGroup>,
}

pub(super) fn machines(d: &mut Diags, top: &Obj, provider: ProviderKind) -> Machines {
    let mut groups: Vec<NodeGroup> = Vec::new();
    let mut infrastructure = Map::new();
    if let Some((vars, g)) = top.get("infrastructure").and_then(|v| pool(d, v)) {
        infrastructure = vars;
        groups.push(g);
    }
    if let Some(v) = top.get("node_groups") {
        node_groups(d, v, &mut groups, provider);
    }
    if groups.is_empty() && top.get("infrastructure").is_none() && top.get("node_groups").is_none()
    {
        // A plan with no machines runs on one local node with one slot.
        groups.push(local_node(top.pos));
        if provider == ProviderKind::Aws {
            d.hint(
                "",
                top.pos,
                "an AWS plan needs machines",
                "add \"infrastructure\" or \"node_groups\"",
            );
        }
    }
    Machines {
        infrastructure,
        groups,
    }
}

/// `infrastructure`: its fields as variables, and the group `default`.
fn pool(d: &mut Diags, v: &Spanned) -> Option<(Map<String, Value>, NodeGroup)> {
    let o = obj(d, v, "infrastructure")?;
    o.known(d, INFRA_FIELDS);
    let vars = match v.to_value() {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    let it = o
        .required(d, "instance_type", "\"g5.12xlarge\"")
        .and_then(|v| string(d, v, "infrastructure.instance_type"));
    let n = o
        .required(d, "node_count", "2")
        .and_then(|v| count(d, v, "infrastructure.node_count", 1000));
    let gpus = o
        .get("gpu_count_per_node")
        .and_then(|v| whole(d, v, "infrastructure.gpu_count_per_node", 64));
    if let Some(v) = o.get("tp_size") {
        count(d, v, "infrastructure.tp_size", 64);
    }
    let mut g = group_common(d, &o, "default", it.unwrap_or_default(), n.unwrap_or(1));
    g.gpus = gpus;
    Some((vars, g))
}

/// `node_groups`: one group per field, after those already in `groups`.
fn node_groups(d: &mut Diags, v: &Spanned, groups: &mut Vec<NodeGroup>, provider: ProviderKind) {
    let Some(o) = obj(d, v, "node_groups") else {
        return;
    };
    if !groups.is_empty() {
        d.hint(
            "node_groups",
            v.pos,
            "both \"infrastructure\" and \"node_groups\" describe machines",
            "keep one: \"infrastructure\" for a single pool, \"node_groups\" for several",
        );
    }
    if o.fields.is_empty() {
        d.hint("node_groups", v.pos, "no node groups", "add at least one group, e.g. \"cpu\": {\"instance_type\": \"c6i.4xlarge\", \"count\": 1}");
    }
    for (gname, gv) in o.fields {
        let path = o.child(gname);
        if let Some(r) = unsafe_id_reason(gname) {
            d.hint(
                &path,
                gv.pos,
                format!("node group name \"{gname}\" is not usable in names: {r}"),
                "use letters, digits, '-' and '_'",
            );
        }
        let Some(go) = obj(d, gv, &path) else {
            continue;
        };
        go.known(d, GROUP_FIELDS);
        // a Slurm allocation has no instance type (its `slurm` section says what it asks for)
        let it = if provider == ProviderKind::Slurm && go.get("instance_type").is_none() {
            Some("slurm".to_string())
        } else {
            go.required(d, "instance_type", "\"c6i.4xlarge\"")
                .and_then(|v| string(d, v, &child(&path, "instance_type")))
        };
        let n = go
            .required(d, "count", "1")
            .and_then(|v| count(d, v, &child(&path, "count"), 10_000));
        let mut g = group_common(d, &go, gname, it.unwrap_or_default(), n.unwrap_or(1));
        g.gpus = go
            .get("gpus")
            .and_then(|v| whole(d, v, &child(&path, "gpus"), 64));
        g.availability_zone = go
            .get("availability_zone")
            .and_then(|v| string(d, v, &child(&path, "availability_zone")));
        groups.push(g);
    }
}

/// The one node of a plan without machines: this machine, one slot.
pub(super) fn local_node(pos: Pos) -> NodeGroup {
    NodeGroup {
        name: "default".into(),
        instance_type: "local".into(),
        count: 1,
        market: Market::OnDemand,
        efa: false,
        efa_set: None,
        placement: None,
        ami: None,
        volume_gb: 100,
        slots: 1,
        max_lifetime_hours: None,
        idle_shutdown_minutes: DEFAULT_IDLE_SHUTDOWN_MINUTES,
        gpus: None,
        workers_per_slot: None,
        availability_zone: None,
        pos,
        path: String::new(),
    }
}

/// The fields both forms share (market, EFA, placement, image, volume,
/// slots, lifetime, workers).
fn group_common(
    d: &mut Diags,
    o: &Obj,
    name: &str,
    instance_type: String,
    nodes: u32,
) -> NodeGroup {
    let market = match o.get("market") {
        None => Market::OnDemand,
        Some(v) => match string(d, v, &o.child("market")).as_deref() {
            Some("spot") => Market::Spot,
            Some("on-demand") | Some("ondemand") | Some("on_demand") => Market::OnDemand,
            Some(other) => {
                d.hint(
                    &o.child("market"),
                    v.pos,
                    format!("unknown market \"{other}\""),
                    "use \"spot\" or \"on-demand\"",
                );
                Market::OnDemand
            }
            None => Market::OnDemand,
        },
    };
    let efa_set = o.get("efa").and_then(|v| boolean(d, v, &o.child("efa")));
    let placement = o.get("placement").and_then(|v| {
        let p = string(d, v, &o.child("placement"))?;
        if !["cluster", "spread", "partition"].contains(&p.as_str()) {
            d.hint(
                &o.child("placement"),
                v.pos,
                format!("unknown placement \"{p}\""),
                "use \"cluster\", \"spread\" or \"partition\"",
            );
        }
        Some(p)
    });
    let ami = o.get("ami").and_then(|v| string(d, v, &o.child("ami")));
    if let (Some(a), Some(v)) = (&ami, o.get("ami")) {
        if !(a.starts_with("ami-")
            || a.starts_with("/aws/service/")
            || a.starts_with("resolve:ssm:")
            || a.starts_with('/'))
        {
            d.hint(&o.child("ami"), v.pos, format!("\"{a}\" is neither an AMI id nor an SSM parameter path"), "use \"ami-0123456789abcdef0\" or a path like \"/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64\"");
        }
    }
    let volume_gb = o
        .get("volume_gb")
        .and_then(|v| count(d, v, &o.child("volume_gb"), 16_384))
        .unwrap_or(100);
    let slots = o
        .get("slots")
        .and_then(|v| count(d, v, &o.child("slots"), 1024))
        .unwrap_or(1);
    let max_lifetime_hours = o
        .get("max_lifetime_hours")
        .and_then(|v| positive(d, v, &o.child("max_lifetime_hours"), 8760.0));
    let idle_shutdown_minutes = o
        .get("idle_shutdown_minutes")
        .and_then(|v| {
            count(
                d,
                v,
                &o.child("idle_shutdown_minutes"),
                MAX_IDLE_SHUTDOWN_MINUTES,
            )
        })
        .unwrap_or(DEFAULT_IDLE_SHUTDOWN_MINUTES);
    let workers_per_slot = o
        .get("workers_per_slot")
        .and_then(|v| count(d, v, &o.child("workers_per_slot"), 1024));
    NodeGroup {
        name: name.to_string(),
        instance_type,
        count: nodes,
        market,
        efa: efa_set.unwrap_or(false),
        efa_set,
        placement,
        ami,
        volume_gb,
        slots,
        max_lifetime_hours,
        idle_shutdown_minutes,
        gpus: None,
        workers_per_slot,
        availability_zone: None,
        pos: o.pos,
        path: o.path.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::decode::testing::{hints, lines, node, top};

    fn decode(text: &str, provider: ProviderKind) -> (Machines, Diags) {
        let n = node(text);
        let mut d = Diags::default();
        let m = machines(&mut d, &top(&n), provider);
        (m, d)
    }

    #[test]
    fn infrastructure_is_one_default_group_and_its_fields_are_variables() {
        let (m, d) = decode(
            r#"{"infrastructure": {"instance_type": "g5.12xlarge", "node_count": 2, "gpu_count_per_node": 4, "model": "m"}}"#,
            ProviderKind::Aws,
        );
        assert!(d.is_empty(), "{:?}", lines(&d));
        assert_eq!(m.infrastructure["model"], "m");
        assert_eq!(m.infrastructure["node_count"], 2);
        let [g] = &m.groups[..] else {
            panic!("{:?}", m.groups)
        };
        assert_eq!(
            (g.name.as_str(), g.instance_type.as_str(), g.count, g.gpus),
            ("default", "g5.12xlarge", 2, Some(4))
        );
        assert_eq!(
            (g.market, g.efa, g.volume_gb, g.slots),
            (Market::OnDemand, false, 100, 1)
        );
        assert_eq!(g.path, "infrastructure");
        assert_eq!(g.pos, Pos { line: 1, col: 20 });
    }

    #[test]
    fn node_groups_keep_their_order_and_own_fields() {
        let (m, d) = decode(
            r#"{"node_groups": {
  "gpu": {"instance_type": "p4d.24xlarge", "count": 1, "efa": true, "gpus": 8, "market": "spot"},
  "cpu": {"instance_type": "c6i.xlarge", "count": 3, "slots": 4, "workers_per_slot": 2,
          "availability_zone": "us-east-1b", "placement": "spread", "ami": "ami-0123", "volume_gb": 50,
          "max_lifetime_hours": 1.5}}}"#,
            ProviderKind::Aws,
        );
        assert!(d.is_empty(), "{:?}", lines(&d));
        assert!(m.infrastructure.is_empty());
        let names: Vec<&str> = m.groups.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names, ["gpu", "cpu"]);
        let (gpu, cpu) = (&m.groups[0], &m.groups[1]);
        assert_eq!(
            (gpu.efa, gpu.gpus, gpu.market),
            (true, Some(8), Market::Spot)
        );
        assert_eq!(gpu.path, "node_groups.gpu");
        assert_eq!(gpu.pos, Pos { line: 2, col: 10 });
        assert_eq!(
            (cpu.count, cpu.slots, cpu.workers_per_slot),
            (3, 4, Some(2))
        );
        assert_eq!(cpu.availability_zone.as_deref(), Some("us-east-1b"));
        assert_eq!(cpu.placement.as_deref(), Some("spread"));
        assert_eq!(cpu.ami.as_deref(), Some("ami-0123"));
        assert_eq!((cpu.volume_gb, cpu.max_lifetime_hours), (50, Some(1.5)));
    }

    #[test]
    fn group_problems_name_the_field() {
        let (_, d) = decode(
            r#"{"node_groups": {"a b": {"instance_type": "c6i.xlarge", "cnt": 1, "market": "cheap", "placement": "near", "ami": "ubuntu", "volume_gb": 0}}}"#,
            ProviderKind::Local,
        );
        assert_eq!(
            lines(&d),
            [
                "1:25 node_groups.a b: node group name \"a b\" is not usable in names: it contains ' '",
                "1:64 node_groups.a b.cnt: unknown field \"cnt\"",
                "1:25 node_groups.a b.count: missing required field \"count\" in node_groups.a b",
                "1:77 node_groups.a b.market: unknown market \"cheap\"",
                "1:99 node_groups.a b.placement: unknown placement \"near\"",
                "1:114 node_groups.a b.ami: \"ubuntu\" is neither an AMI id nor an SSM parameter path",
                "1:137 node_groups.a b.volume_gb: must be at least 1, found 0",
            ]
        );
        assert!(
            hints(&d)[1].contains("did you mean \"count\""),
            "{}",
            hints(&d)[1]
        );
    }

    #[test]
    fn idle_shutdown_minutes_defaults_to_20_and_refuses_zero_negative_and_absurd() {
        let (m, d) = decode(
            r#"{"node_groups": {"a": {"instance_type": "c6i.xlarge", "count": 1},
  "b": {"instance_type": "c6i.xlarge", "count": 1, "idle_shutdown_minutes": 1}}}"#,
            ProviderKind::Aws,
        );
        assert!(d.is_empty(), "{:?}", lines(&d));
        assert_eq!(m.groups[0].idle_shutdown_minutes, 20);
        assert_eq!(m.groups[1].idle_shutdown_minutes, 1);
        let (m, d) = decode(
            r#"{"infrastructure": {"instance_type": "c6i.xlarge", "node_count": 1, "idle_shutdown_minutes": 5}}"#,
            ProviderKind::Aws,
        );
        assert!(d.is_empty(), "{:?}", lines(&d));
        assert_eq!(m.groups[0].idle_shutdown_minutes, 5);
        for (bad, why) in [
            ("0", "must be at least 1, found 0"),
            ("-3", "must be positive, found -3"),
            ("100000", "100000 is too large (at most 1440)"),
            ("\"20m\"", "expected a whole number"),
        ] {
            let (_, d) = decode(
                &format!(
                    r#"{{"node_groups": {{"a": {{"instance_type": "c6i.xlarge", "count": 1, "idle_shutdown_minutes": {bad}}}}}}}"#
                ),
                ProviderKind::Aws,
            );
            let l = lines(&d);
            assert_eq!(l.len(), 1, "{l:?}");
            assert!(
                l[0].contains("node_groups.a.idle_shutdown_minutes: ") && l[0].contains(why),
                "{l:?}"
            );
        }
    }

    #[test]
    fn both_forms_at_once_are_refused() {
        let (m, d) = decode(
            r#"{"infrastructure": {"instance_type": "x", "node_count": 1}, "node_groups": {}}"#,
            ProviderKind::Local,
        );
        assert_eq!(
            lines(&d),
            [
                "1:76 node_groups: both \"infrastructure\" and \"node_groups\" describe machines",
                "1:76 node_groups: no node groups",
            ]
        );
        assert_eq!(m.groups.len(), 1);
    }

    #[test]
    fn infrastructure_counts_are_bounded() {
        let (_, d) = decode(
            r#"{"infrastructure": {"instance_type": "x", "node_count": 1001, "gpu_count_per_node": -1, "tp_size": 0}}"#,
            ProviderKind::Local,
        );
        assert_eq!(
            lines(&d),
            [
                "1:57 infrastructure.node_count: 1001 is too large (at most 1000)",
                "1:85 infrastructure.gpu_count_per_node: expected a whole number from 0 to 64, found -1",
                "1:100 infrastructure.tp_size: must be at least 1, found 0",
            ]
        );
    }

    #[test]
    fn a_plan_without_machines_runs_on_one_local_node() {
        let (m, d) = decode(r#"{"phase": 1}"#, ProviderKind::Local);
        assert!(d.is_empty());
        let [g] = &m.groups[..] else {
            panic!("{:?}", m.groups)
        };
        assert_eq!(
            (g.name.as_str(), g.instance_type.as_str()),
            ("default", "local")
        );
        assert_eq!((g.count, g.slots, g.path.as_str()), (1, 1, ""));
        let (_, d) = decode(r#"{"phase": 1}"#, ProviderKind::Aws);
        assert_eq!(lines(&d), ["1:1 : an AWS plan needs machines"]);
    }
}
