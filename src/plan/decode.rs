//! From the parsed file to a `Plan`, collecting every problem on the way.
//!
//! Hand-written rather than derived: serde stops at the first problem and
//! knows nothing of line numbers; users want the whole list at once.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::diag::{did_you_mean, unsafe_id_reason, Diags};
use super::grid;
use super::json::{Node, Pos, Spanned};
use super::model::*;

/// Largest number of tasks a plan may expand to.
pub const MAX_TASKS: usize = 1_000_000;

pub(crate) struct Obj<'a> {
    pub path: String,
    pub pos: Pos,
    pub fields: &'a [(String, Spanned)],
}

impl<'a> Obj<'a> {
    pub fn get(&self, key: &str) -> Option<&'a Spanned> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn child(&self, key: &str) -> String {
        child(&self.path, key)
    }

    pub fn known(&self, d: &mut Diags, known: &[&str]) {
        for (k, v) in self.fields {
            if !known.contains(&k.as_str()) {
                d.hint(
                    &self.child(k),
                    v.pos,
                    format!("unknown field \"{k}\""),
                    did_you_mean(k, known.iter().copied()),
                );
            }
        }
    }

    pub fn required(&self, d: &mut Diags, key: &str, example: &str) -> Option<&'a Spanned> {
        let v = self.get(key);
        if v.is_none() {
            let at = if self.path.is_empty() {
                "the plan".to_string()
            } else {
                self.path.clone()
            };
            d.hint(
                &self.child(key),
                self.pos,
                format!("missing required field \"{key}\" in {at}"),
                format!("add \"{key}\": {example}"),
            );
        }
        v
    }
}

pub(crate) fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

pub(crate) fn obj<'a>(d: &mut Diags, v: &'a Spanned, path: &str) -> Option<Obj<'a>> {
    match &v.node {
        Node::Obj(fields) => Some(Obj {
            path: path.to_string(),
            pos: v.pos,
            fields,
        }),
        _ => {
            d.hint(
                path,
                v.pos,
                format!("expected an object, found {}", v.kind()),
                "write an object: { \"field\": value, ... }",
            );
            None
        }
    }
}

pub(crate) fn string(d: &mut Diags, v: &Spanned, path: &str) -> Option<String> {
    match &v.node {
        Node::Str(s) => Some(s.clone()),
        _ => {
            d.hint(
                path,
                v.pos,
                format!("expected a string, found {}", v.kind()),
                "write text in double quotes",
            );
            None
        }
    }
}

pub(crate) fn boolean(d: &mut Diags, v: &Spanned, path: &str) -> Option<bool> {
    match &v.node {
        Node::Bool(b) => Some(*b),
        _ => {
            d.hint(
                path,
                v.pos,
                format!("expected true or false, found {}", v.kind()),
                "write true or false without quotes",
            );
            None
        }
    }
}

pub(crate) fn number(d: &mut Diags, v: &Spanned, path: &str) -> Option<f64> {
    match &v.node {
        Node::Num(n) => n.as_f64().filter(|f| f.is_finite()),
        _ => {
            d.hint(
                path,
                v.pos,
                format!("expected a number, found {}", v.kind()),
                "write a number without quotes, e.g. 1000",
            );
            None
        }
    }
}

/// A positive whole number no larger than `max`.
pub(crate) fn count(d: &mut Diags, v: &Spanned, path: &str, max: u64) -> Option<u32> {
    let Node::Num(n) = &v.node else {
        d.hint(
            path,
            v.pos,
            format!("expected a whole number, found {}", v.kind()),
            "write a whole number without quotes, e.g. 2",
        );
        return None;
    };
    match n.as_u64() {
        Some(0) => {
            d.hint(
                path,
                v.pos,
                "must be at least 1, found 0",
                "use a count of 1 or more",
            );
            None
        }
        Some(k) if k > max => {
            d.hint(
                path,
                v.pos,
                format!("{k} is too large (at most {max})"),
                format!("use a value between 1 and {max}"),
            );
            None
        }
        Some(k) => Some(k as u32),
        None if n.as_i64().is_some() || n.as_f64().is_some_and(|f| f < 0.0) => {
            d.hint(
                path,
                v.pos,
                format!("must be positive, found {n}"),
                format!("use a value between 1 and {max}"),
            );
            None
        }
        None => {
            d.hint(
                path,
                v.pos,
                format!("expected a whole number, found {n}"),
                "remove the fractional part",
            );
            None
        }
    }
}

pub(crate) fn positive(d: &mut Diags, v: &Spanned, path: &str, max: f64) -> Option<f64> {
    let f = number(d, v, path)?;
    if f <= 0.0 {
        d.hint(
            path,
            v.pos,
            format!("must be greater than 0, found {f}"),
            "use a positive amount",
        );
        None
    } else if f > max {
        d.hint(
            path,
            v.pos,
            format!("{f} is too large (at most {max})"),
            format!("use a value up to {max}"),
        );
        None
    } else {
        Some(f)
    }
}

/// Seconds as a number, or a string like "90s", "30m", "2h", "1h30m".
pub(crate) fn duration(d: &mut Diags, v: &Spanned, path: &str) -> Option<Duration> {
    let hint = "write seconds as a number or a string like \"90s\", \"30m\", \"2h\", \"1h30m\"";
    let secs = match &v.node {
        Node::Num(n) => n.as_f64(),
        Node::Str(s) => parse_duration(s),
        _ => None,
    };
    match secs {
        Some(s) if s.is_finite() && (0.0..=365.0 * 86400.0).contains(&s) => {
            Some(Duration::from_secs_f64(s))
        }
        Some(s) if s < 0.0 => {
            d.hint(path, v.pos, "a duration cannot be negative", hint);
            None
        }
        _ => {
            d.hint(
                path,
                v.pos,
                format!("invalid duration {}", v.to_value()),
                hint,
            );
            None
        }
    }
}

pub fn parse_duration(s: &str) -> Option<f64> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(f) = s.parse::<f64>() {
        return Some(f);
    }
    let mut total = 0.0;
    let mut num = String::new();
    let mut any = false;
    for c in s.chars() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
        } else {
            let unit = match c {
                's' => 1.0,
                'm' => 60.0,
                'h' => 3600.0,
                'd' => 86400.0,
                _ => return None,
            };
            let n: f64 = num.parse().ok()?;
            total += n * unit;
            num.clear();
            any = true;
        }
    }
    if !num.is_empty() || !any {
        return None;
    }
    Some(total)
}

/// Canonical JSON (sorted keys) for content hashes.
pub fn canonical(v: &Value) -> String {
    fn sort(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let sorted: BTreeMap<&String, Value> =
                    m.iter().map(|(k, v)| (k, sort(v))).collect();
                let mut out = Map::new();
                for (k, v) in sorted {
                    out.insert(k.clone(), v);
                }
                Value::Object(out)
            }
            Value::Array(a) => Value::Array(a.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    sort(v).to_string()
}

pub fn content_key(
    id: &str,
    backend: &str,
    vars: &Map<String, Value>,
    partition: Option<(u32, u32)>,
) -> String {
    let v = serde_json::json!({
        "id": id, "backend": backend, "vars": Value::Object(vars.clone()),
        "partition": partition.map(|(i, k)| vec![i, k]),
    });
    let digest = Sha256::digest(canonical(&v).as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Where the plan came from and how to check the files it names.
pub struct Source<'a> {
    pub file: &'a Path,
    pub name_key: &'a str,
    pub root: &'a Path,
    pub plan_dir: &'a Path,
    pub file_exists: &'a dyn Fn(&Path) -> bool,
}

const TOP_FIELDS: &[&str] = &[
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
    "setup",
    "templates",
    "estimate",
    "retry",
    "layers",
];

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
    "gpus",
    "workers_per_slot",
    "availability_zone",
];

const LAYER_FIELDS: &[&str] = &[
    "id",
    "name",
    "priority",
    "description",
    "patterns",
    "grid",
    "node_group",
    "partitions",
    "settings",
    "estimate",
];

/// Pattern fields with a meaning of their own; every other field is a
/// setting that overrides `common_settings`.
const PATTERN_RESERVED: &[&str] = &["id", "backend", "estimate", "node_group"];

pub fn decode(root_node: &Spanned, src: &Source) -> Result<Plan, Diags> {
    let mut d = Diags::default();
    let Some(top) = obj(&mut d, root_node, "") else {
        return Err(d);
    };
    top.known(&mut d, TOP_FIELDS);

    // phase
    let mut phase = String::from("0");
    let mut id_prefix = String::from("p0-");
    if let Some(v) = top.required(&mut d, "phase", "15") {
        match &v.node {
            Node::Num(n) if n.as_u64().is_some() => {
                phase = n.to_string();
                id_prefix = format!("p{phase}-");
            }
            Node::Str(s) if unsafe_id_reason(s).is_none() => {
                phase = s.clone();
                id_prefix = if s.starts_with(|c: char| c.is_ascii_digit()) {
                    format!("p{s}-")
                } else {
                    format!("{s}-")
                };
            }
            _ => d.hint(
                "phase",
                v.pos,
                format!(
                    "expected a phase number or a simple name, found {}",
                    v.to_value()
                ),
                "use a whole number such as 15 or a name of letters, digits, '-' and '_'",
            ),
        }
    }
    let name = top
        .required(&mut d, "name", "\"what this phase measures\"")
        .and_then(|v| string(&mut d, v, "name"))
        .unwrap_or_default();
    let description = top
        .get("description")
        .and_then(|v| string(&mut d, v, "description"))
        .unwrap_or_default();

    let project = match top.get("project") {
        Some(v) => {
            let p = string(&mut d, v, "project").unwrap_or_default();
            check_project(&mut d, &p, v.pos);
            p
        }
        None => default_project(src.root),
    };

    let provider = match top.get("provider") {
        None => ProviderKind::Local,
        Some(v) => match string(&mut d, v, "provider").as_deref() {
            Some("local") => ProviderKind::Local,
            Some("aws") => ProviderKind::Aws,
            Some(other) => {
                d.hint(
                    "provider",
                    v.pos,
                    format!("unknown provider \"{other}\""),
                    "use \"local\" (this machine, $0) or \"aws\"",
                );
                ProviderKind::Local
            }
            None => ProviderKind::Local,
        },
    };
    let region = top
        .get("region")
        .and_then(|v| string(&mut d, v, "region"))
        .unwrap_or_else(|| "us-east-1".into());
    if !region
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        || region.is_empty()
    {
        d.hint(
            "region",
            top.get("region").map(|v| v.pos).unwrap_or(top.pos),
            format!("invalid region \"{region}\""),
            "use an AWS region code such as \"us-east-1\"",
        );
    }
    let availability_zone = top
        .get("availability_zone")
        .and_then(|v| string(&mut d, v, "availability_zone"));

    // infrastructure (the phase system's single pool)
    let mut infrastructure = Map::new();
    let mut groups: Vec<NodeGroup> = Vec::new();
    if let Some(v) = top.get("infrastructure") {
        if let Some(o) = obj(&mut d, v, "infrastructure") {
            o.known(&mut d, INFRA_FIELDS);
            infrastructure = match v.to_value() {
                Value::Object(m) => m,
                _ => Map::new(),
            };
            let it = o
                .required(&mut d, "instance_type", "\"g5.12xlarge\"")
                .and_then(|v| string(&mut d, v, "infrastructure.instance_type"));
            let n = o
                .required(&mut d, "node_count", "2")
                .and_then(|v| count(&mut d, v, "infrastructure.node_count", 1000));
            let gpus = o
                .get("gpu_count_per_node")
                .and_then(|v| whole(&mut d, v, "infrastructure.gpu_count_per_node", 64));
            if let Some(v) = o.get("tp_size") {
                count(&mut d, v, "infrastructure.tp_size", 64);
            }
            let mut g = group_common(
                &mut d,
                &o,
                "default",
                it.unwrap_or_default(),
                n.unwrap_or(1),
            );
            g.gpus = gpus;
            groups.push(g);
        }
    }
    if let Some(v) = top.get("node_groups") {
        if let Some(o) = obj(&mut d, v, "node_groups") {
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
                let Some(go) = obj(&mut d, gv, &path) else {
                    continue;
                };
                go.known(&mut d, GROUP_FIELDS);
                let it = go
                    .required(&mut d, "instance_type", "\"c6i.4xlarge\"")
                    .and_then(|v| string(&mut d, v, &child(&path, "instance_type")));
                let n = go
                    .required(&mut d, "count", "1")
                    .and_then(|v| count(&mut d, v, &child(&path, "count"), 10_000));
                let mut g =
                    group_common(&mut d, &go, gname, it.unwrap_or_default(), n.unwrap_or(1));
                g.gpus = go
                    .get("gpus")
                    .and_then(|v| whole(&mut d, v, &child(&path, "gpus"), 64));
                g.availability_zone = go
                    .get("availability_zone")
                    .and_then(|v| string(&mut d, v, &child(&path, "availability_zone")));
                groups.push(g);
            }
        }
    }
    if groups.is_empty() && top.get("infrastructure").is_none() && top.get("node_groups").is_none()
    {
        // A plan with no machines runs on one local node with one slot.
        groups.push(NodeGroup {
            name: "default".into(),
            instance_type: "local".into(),
            count: 1,
            market: Market::OnDemand,
            efa: false,
            placement: None,
            ami: None,
            volume_gb: 100,
            slots: 1,
            max_lifetime_hours: None,
            gpus: None,
            workers_per_slot: None,
            availability_zone: None,
            pos: top.pos,
            path: String::new(),
        });
        if provider == ProviderKind::Aws {
            d.hint(
                "",
                top.pos,
                "an AWS plan needs machines",
                "add \"infrastructure\" or \"node_groups\"",
            );
        }
    }

    let common_settings = match top.get("common_settings") {
        Some(v) => match obj(&mut d, v, "common_settings") {
            Some(_) => match v.to_value() {
                Value::Object(m) => m,
                _ => Map::new(),
            },
            None => Map::new(),
        },
        None => Map::new(),
    };

    let budget = top.get("budget").and_then(|v| {
        let o = obj(&mut d, v, "budget")?;
        o.known(&mut d, &["usd", "max_hourly_usd", "hard_stop"]);
        let usd = o
            .required(&mut d, "usd", "1000")
            .and_then(|v| positive(&mut d, v, "budget.usd", 10_000_000.0));
        let max_hourly_usd = o
            .get("max_hourly_usd")
            .and_then(|v| positive(&mut d, v, "budget.max_hourly_usd", 100_000.0));
        let hard_stop = o
            .get("hard_stop")
            .and_then(|v| boolean(&mut d, v, "budget.hard_stop"))
            .unwrap_or(true);
        Some(Budget {
            usd: usd?,
            max_hourly_usd,
            hard_stop,
        })
    });

    let setup = match top.get("setup") {
        None => Vec::new(),
        Some(v) => match &v.node {
            Node::Arr(items) => items
                .iter()
                .enumerate()
                .filter_map(|(i, it)| string(&mut d, it, &format!("setup[{i}]")))
                .collect(),
            Node::Str(s) => vec![s.clone()],
            _ => {
                d.hint(
                    "setup",
                    v.pos,
                    format!("expected a list of commands, found {}", v.kind()),
                    "write \"setup\": [\"pip install -r requirements.txt\"]",
                );
                Vec::new()
            }
        },
    };

    let mut templates = BTreeMap::new();
    if let Some(v) = top.get("templates") {
        if let Some(o) = obj(&mut d, v, "templates") {
            for (k, tv) in o.fields {
                if let Some(p) = string(&mut d, tv, &o.child(k)) {
                    templates.insert(k.clone(), src.plan_dir.join(p));
                }
            }
        }
    }

    let mut estimate = Estimates::default();
    let mut pattern_estimates: HashMap<String, (Duration, Pos, String)> = HashMap::new();
    let mut layer_estimates: HashMap<String, (Duration, Pos, String)> = HashMap::new();
    if let Some(v) = top.get("estimate") {
        if let Some(o) = obj(&mut d, v, "estimate") {
            o.known(
                &mut d,
                &[
                    "default",
                    "provisioning",
                    "setup",
                    "duration",
                    "patterns",
                    "layers",
                ],
            );
            estimate.default = o
                .get("default")
                .and_then(|v| duration(&mut d, v, "estimate.default"));
            estimate.provisioning = o
                .get("provisioning")
                .and_then(|v| duration(&mut d, v, "estimate.provisioning"));
            estimate.setup = o
                .get("setup")
                .and_then(|v| duration(&mut d, v, "estimate.setup"));
            estimate.duration = o
                .get("duration")
                .and_then(|v| duration(&mut d, v, "estimate.duration"));
            for (key, map) in [
                ("patterns", &mut pattern_estimates),
                ("layers", &mut layer_estimates),
            ] {
                if let Some(pv) = o.get(key) {
                    if let Some(po) = obj(&mut d, pv, &o.child(key)) {
                        for (id, dv) in po.fields {
                            let path = po.child(id);
                            if let Some(dur) = duration(&mut d, dv, &path) {
                                map.insert(id.clone(), (dur, dv.pos, path));
                            }
                        }
                    }
                }
            }
        }
    }

    let mut retry = RetryPolicy::default();
    if let Some(v) = top.get("retry") {
        if let Some(o) = obj(&mut d, v, "retry") {
            o.known(
                &mut d,
                &["attempts", "backoff_seconds", "backoff_max_seconds"],
            );
            if let Some(a) = o
                .get("attempts")
                .and_then(|v| count(&mut d, v, "retry.attempts", 20))
            {
                retry.attempts = a;
            }
            if let Some(b) = o
                .get("backoff_seconds")
                .and_then(|v| duration(&mut d, v, "retry.backoff_seconds"))
            {
                retry.backoff = b;
            }
            if let Some(b) = o
                .get("backoff_max_seconds")
                .and_then(|v| duration(&mut d, v, "retry.backoff_max_seconds"))
            {
                retry.backoff_max = b;
            }
        }
    }

    // layers and patterns
    let legacy = top.get("infrastructure").is_some();
    let group_names: Vec<String> = groups.iter().map(|g| g.name.clone()).collect();
    let default_group = group_names
        .first()
        .cloned()
        .unwrap_or_else(|| "default".into());
    let mut layers = Vec::new();
    let mut seen_layers: HashMap<String, Pos> = HashMap::new();
    let mut seen_ids: HashMap<String, Pos> = HashMap::new();
    let mut total = 0usize;
    if let Some(v) = top.required(
        &mut d,
        "layers",
        "[{\"id\": \"L0\", \"name\": \"...\", \"patterns\": [...]}]",
    ) {
        match &v.node {
            Node::Arr(items) => {
                if items.is_empty() {
                    d.hint(
                        "layers",
                        v.pos,
                        "no layers",
                        "add a layer with at least one pattern",
                    );
                }
                for (li, lv) in items.iter().enumerate() {
                    let lpath = format!("layers[{li}]");
                    let Some(lo) = obj(&mut d, lv, &lpath) else {
                        continue;
                    };
                    lo.known(&mut d, LAYER_FIELDS);
                    let Some(lid) = lo
                        .required(&mut d, "id", "\"L0\"")
                        .and_then(|v| string(&mut d, v, &child(&lpath, "id")))
                    else {
                        continue;
                    };
                    let lid_pos = lo.get("id").map(|v| v.pos).unwrap_or(lv.pos);
                    if let Some(r) = unsafe_id_reason(&lid) {
                        d.hint(
                            &child(&lpath, "id"),
                            lid_pos,
                            format!("layer id \"{lid}\" is not safe as a file name: {r}"),
                            "use letters, digits, '-', '_' and '.'",
                        );
                    }
                    if let Some(first) = seen_layers.insert(lid.clone(), lid_pos) {
                        d.hint(
                            &child(&lpath, "id"),
                            lid_pos,
                            format!("duplicate layer id \"{lid}\" (first at {first})"),
                            "give every layer its own id",
                        );
                    }
                    let lname = lo
                        .get("name")
                        .and_then(|v| string(&mut d, v, &child(&lpath, "name")))
                        .unwrap_or_else(|| lid.clone());
                    let priority = lo
                        .get("priority")
                        .and_then(|v| string(&mut d, v, &child(&lpath, "priority")));
                    let ldesc = lo
                        .get("description")
                        .and_then(|v| string(&mut d, v, &child(&lpath, "description")))
                        .unwrap_or_default();
                    let lgroup = lo.get("node_group").and_then(|v| {
                        let g = string(&mut d, v, &child(&lpath, "node_group"))?;
                        if !group_names.contains(&g) {
                            d.hint(
                                &child(&lpath, "node_group"),
                                v.pos,
                                format!("unknown node group \"{g}\""),
                                did_you_mean(&g, group_names.iter().map(String::as_str)),
                            );
                        }
                        Some(g)
                    });
                    let partitions = lo
                        .get("partitions")
                        .and_then(|v| count(&mut d, v, &child(&lpath, "partitions"), 10_000));
                    let lsettings = match lo.get("settings") {
                        Some(v) => obj(&mut d, v, &child(&lpath, "settings"))
                            .map(|_| v.to_value())
                            .and_then(|v| v.as_object().cloned())
                            .unwrap_or_default(),
                        None => Map::new(),
                    };
                    let lestimate = lo
                        .get("estimate")
                        .and_then(|v| duration(&mut d, v, &child(&lpath, "estimate")))
                        .or_else(|| layer_estimates.get(&lid).map(|e| e.0));

                    // raw patterns: (id, backend, overrides, factors, estimate, node_group, pos, path)
                    let mut raws: Vec<RawPattern> = Vec::new();
                    if let Some(pv) = lo.get("patterns") {
                        match &pv.node {
                            Node::Arr(ps) => {
                                for (pi, p) in ps.iter().enumerate() {
                                    let ppath = format!("{lpath}.patterns[{pi}]");
                                    if let Some(r) =
                                        decode_pattern(&mut d, p, &ppath, legacy, &group_names)
                                    {
                                        raws.push(r);
                                    }
                                }
                            }
                            _ => d.hint(
                                &child(&lpath, "patterns"),
                                pv.pos,
                                format!("expected an array of patterns, found {}", pv.kind()),
                                "write \"patterns\": [{\"id\": ..., \"backend\": ...}]",
                            ),
                        }
                    }
                    let mut grid_cells = 0;
                    if let Some(gv) = lo.get("grid") {
                        let budget_left = MAX_TASKS.saturating_sub(total + raws.len());
                        let cells = grid::expand(&mut d, gv, &child(&lpath, "grid"), budget_left);
                        grid_cells = cells.len();
                        raws.extend(cells);
                    }
                    if lo.get("patterns").is_none() && lo.get("grid").is_none() {
                        d.hint(
                            &lpath,
                            lv.pos,
                            format!("layer \"{lid}\" has neither \"patterns\" nor \"grid\""),
                            "add \"patterns\": [...] or a \"grid\"",
                        );
                    }

                    let mut patterns =
                        Vec::with_capacity(raws.len() * partitions.unwrap_or(1) as usize);
                    for raw in raws {
                        if raw.id_path_is_template {
                            // grid ids were checked by the grid expander
                        } else if let Some(r) = unsafe_id_reason(&raw.id) {
                            d.hint(
                                &raw.path,
                                raw.pos,
                                format!(
                                    "pattern id {:?} is not safe as a file name and S3 key: {r}",
                                    raw.id
                                ),
                                "use letters, digits, '-', '_' and '.'",
                            );
                            continue;
                        }
                        if !raw.id.starts_with(&id_prefix) {
                            d.hint(&raw.path, raw.pos, format!("pattern id \"{}\" does not start with the phase prefix \"{id_prefix}\"", raw.id), format!("rename it to \"{id_prefix}{}\"", raw.id));
                        }
                        let mut vars = infrastructure.clone();
                        for (k, v) in &common_settings {
                            vars.insert(k.clone(), v.clone());
                        }
                        for (k, v) in &lsettings {
                            vars.insert(k.clone(), v.clone());
                        }
                        for (k, v) in raw.overrides {
                            vars.insert(k, v);
                        }
                        let node_group = raw
                            .node_group
                            .or_else(|| lgroup.clone())
                            .unwrap_or_else(|| default_group.clone());
                        let est = raw
                            .estimate
                            .or_else(|| pattern_estimates.get(&raw.id).map(|e| e.0))
                            .or(lestimate)
                            .or(estimate.default);
                        let parts = partitions.unwrap_or(1);
                        for part in 0..parts {
                            let (id, partition) = if partitions.is_some() {
                                (
                                    format!("{}-part{}of{}", raw.id, part + 1, parts),
                                    Some((part, parts)),
                                )
                            } else {
                                (raw.id.clone(), None)
                            };
                            if let Some(first) = seen_ids.insert(id.clone(), raw.pos) {
                                d.hint(
                                    &child(&raw.path, "id"),
                                    raw.pos,
                                    format!("duplicate pattern id \"{id}\" (first at {first})"),
                                    "pattern ids must be unique across the plan",
                                );
                                continue;
                            }
                            let key = content_key(&id, &raw.backend, &vars, partition);
                            patterns.push(Pattern {
                                id,
                                layer: lid.clone(),
                                backend: raw.backend.clone(),
                                vars: vars.clone(),
                                factors: raw.factors.clone(),
                                estimate: est,
                                node_group: node_group.clone(),
                                partition,
                                key,
                                pos: raw.pos,
                            });
                        }
                    }
                    total += patterns.len();
                    if total > MAX_TASKS {
                        d.hint(
                            &lpath,
                            lv.pos,
                            format!("the plan expands to more than {MAX_TASKS} tasks"),
                            "split the campaign into several phases",
                        );
                        return Err(d);
                    }
                    layers.push(Layer {
                        id: lid,
                        name: lname,
                        priority,
                        description: ldesc,
                        node_group: lgroup,
                        partitions,
                        grid_cells,
                        patterns,
                    });
                }
            }
            _ => d.hint(
                "layers",
                v.pos,
                format!("expected an array of layers, found {}", v.kind()),
                "write \"layers\": [{\"id\": \"L0\", \"patterns\": [...]}]",
            ),
        }
    }

    for (id, (_, pos, path)) in &pattern_estimates {
        let base_known = layers
            .iter()
            .flat_map(|l| &l.patterns)
            .any(|p| &p.id == id || p.id.starts_with(&format!("{id}-part")));
        if !base_known {
            d.hint(
                path,
                *pos,
                format!("estimate for unknown pattern \"{id}\""),
                did_you_mean(id, seen_ids.keys().map(String::as_str).take(50)),
            );
        }
    }
    for (id, (_, pos, path)) in &layer_estimates {
        if !seen_layers.contains_key(id) {
            d.hint(
                path,
                *pos,
                format!("estimate for unknown layer \"{id}\""),
                did_you_mean(id, seen_layers.keys().map(String::as_str)),
            );
        }
    }

    // every backend needs a template file
    let mut checked: HashMap<String, bool> = HashMap::new();
    let mut plan = Plan {
        name_key: src.name_key.to_string(),
        source: src.file.to_path_buf(),
        root: src.root.to_path_buf(),
        plan_dir: src.plan_dir.to_path_buf(),
        phase,
        id_prefix,
        name,
        description,
        project,
        provider,
        region,
        availability_zone,
        infrastructure,
        common_settings,
        budget,
        node_groups: groups,
        setup,
        templates,
        estimate,
        retry,
        layers,
        positions: value_positions(root_node),
    };
    let mut backends: Vec<(String, Pos, String)> = Vec::new();
    for l in &plan.layers {
        for p in &l.patterns {
            if !checked.contains_key(&p.backend) {
                let ok = (src.file_exists)(&plan.template_path(&p.backend));
                checked.insert(p.backend.clone(), ok);
                if !ok {
                    backends.push((p.backend.clone(), p.pos, p.id.clone()));
                }
            }
        }
    }
    let known_backends: Vec<String> = plan.templates.keys().cloned().collect();
    for (b, pos, id) in backends {
        let path = plan.template_path(&b);
        let mut hint = format!(
            "create {} or map the backend in \"templates\"",
            rel(&path, src.root)
        );
        if !known_backends.is_empty() {
            hint.push_str(&format!(
                "; {}",
                did_you_mean(&b, known_backends.iter().map(String::as_str))
            ));
        }
        d.hint(
            &format!("pattern {id}.backend"),
            pos,
            format!(
                "unknown backend \"{b}\": no template {}",
                rel(&path, src.root)
            ),
            hint,
        );
    }
    if d.is_empty() {
        plan.layers.shrink_to_fit();
        Ok(plan)
    } else {
        Err(d)
    }
}

pub(crate) fn rel(p: &Path, root: &Path) -> String {
    p.strip_prefix(root).unwrap_or(p).display().to_string()
}

/// A non-negative whole number up to `max` (GPU counts may be 0).
fn whole(d: &mut Diags, v: &Spanned, path: &str, max: u64) -> Option<u32> {
    match &v.node {
        Node::Num(n) if n.as_u64().is_some_and(|k| k <= max) => n.as_u64().map(|k| k as u32),
        _ => {
            d.hint(
                path,
                v.pos,
                format!(
                    "expected a whole number from 0 to {max}, found {}",
                    v.to_value()
                ),
                format!("use a value from 0 to {max}"),
            );
            None
        }
    }
}

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
    let efa = o
        .get("efa")
        .and_then(|v| boolean(d, v, &o.child("efa")))
        .unwrap_or(false);
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
    let workers_per_slot = o
        .get("workers_per_slot")
        .and_then(|v| count(d, v, &o.child("workers_per_slot"), 1024));
    NodeGroup {
        name: name.to_string(),
        instance_type,
        count: nodes,
        market,
        efa,
        placement,
        ami,
        volume_gb,
        slots,
        max_lifetime_hours,
        gpus: None,
        workers_per_slot,
        availability_zone: None,
        pos: o.pos,
        path: o.path.clone(),
    }
}

fn check_project(d: &mut Diags, p: &str, pos: Pos) {
    let ok = !p.is_empty()
        && p.len() <= 40
        && p.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !p.starts_with('-')
        && !p.ends_with('-');
    if !ok {
        d.hint(
            "project",
            pos,
            format!("project name \"{p}\" cannot name stacks and buckets"),
            "use 1 to 40 lowercase letters, digits and '-'",
        );
    }
}

/// The project name when the plan gives none: the folder holding `plans/`,
/// lower-cased and reduced to what stack and bucket names accept.
pub fn default_project(root: &Path) -> String {
    let base = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    let name = base
        .file_name()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    while out.contains("--") {
        out = out.replace("--", "-");
    }
    let out = out.trim_matches('-').chars().take(40).collect::<String>();
    let out = out.trim_end_matches('-').to_string();
    if out.is_empty() {
        "infra".into()
    } else {
        out
    }
}

pub(crate) struct RawPattern {
    pub id: String,
    pub backend: String,
    pub overrides: Map<String, Value>,
    pub factors: Map<String, Value>,
    pub estimate: Option<Duration>,
    pub node_group: Option<String>,
    pub pos: Pos,
    pub path: String,
    pub id_path_is_template: bool,
}

fn decode_pattern(
    d: &mut Diags,
    p: &Spanned,
    path: &str,
    legacy: bool,
    groups: &[String],
) -> Option<RawPattern> {
    let o = obj(d, p, path)?;
    let id = o
        .required(d, "id", "\"p15-L0-efa-4k-c1\"")
        .and_then(|v| string(d, v, &o.child("id")));
    let backend = o
        .required(d, "backend", "\"efa\"")
        .and_then(|v| string(d, v, &o.child("backend")));
    if let (Some(b), Some(v)) = (&backend, o.get("backend")) {
        if let Some(r) = unsafe_id_reason(b) {
            d.hint(
                &o.child("backend"),
                v.pos,
                format!("backend \"{b}\" cannot name a template file: {r}"),
                "use letters, digits, '-' and '_'",
            );
        }
    }
    if legacy {
        for f in ["prompt_tokens", "concurrency"] {
            o.required(d, f, "1");
        }
    }
    for f in [
        "prompt_tokens",
        "concurrency",
        "max_tokens",
        "max_num_batched_tokens",
        "max_model_len",
    ] {
        if let Some(v) = o.get(f) {
            count(d, v, &o.child(f), 100_000_000);
        }
    }
    if let Some(v) = o.get("gpu_memory_utilization") {
        if let Some(f) = number(d, v, &o.child("gpu_memory_utilization")) {
            if !(f > 0.0 && f <= 1.0) {
                d.hint(
                    &o.child("gpu_memory_utilization"),
                    v.pos,
                    format!("{f} is not a fraction"),
                    "use a value in (0, 1], e.g. 0.9",
                );
            }
        }
    }
    let estimate = o
        .get("estimate")
        .and_then(|v| duration(d, v, &o.child("estimate")));
    let node_group = o.get("node_group").and_then(|v| {
        let g = string(d, v, &o.child("node_group"))?;
        if !groups.contains(&g) {
            d.hint(
                &o.child("node_group"),
                v.pos,
                format!("unknown node group \"{g}\""),
                did_you_mean(&g, groups.iter().map(String::as_str)),
            );
        }
        Some(g)
    });
    let mut overrides = Map::new();
    for (k, v) in o.fields {
        if !PATTERN_RESERVED.contains(&k.as_str()) {
            overrides.insert(k.clone(), v.to_value());
        }
    }
    Some(RawPattern {
        id: id?,
        backend: backend?,
        factors: overrides.clone(),
        overrides,
        estimate,
        node_group,
        pos: o.get("id").map(|v| v.pos).unwrap_or(p.pos),
        path: path.to_string(),
        id_path_is_template: false,
    })
}

pub fn default_root_for(file: &Path) -> (PathBuf, PathBuf) {
    let plan_dir = file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let plan_dir = if plan_dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        plan_dir
    };
    let root = if plan_dir.file_name().is_some_and(|n| n == "plans") {
        plan_dir
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."))
    } else {
        plan_dir.clone()
    };
    (root, plan_dir)
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
