//! A doe-suite suite design (`doe-suite-config/designs/<suite>.yml`), read
//! and checked: every problem is collected with its place in the file and
//! a fix, before anything is converted.

use serde_json::{Map, Value};

use super::yaml::{Marked, Node, Pos};
use crate::plan::diag::did_you_mean;

use super::etl::decode_etl;
pub use super::etl::{EtlExtractor, EtlPipeline, EXTRACTORS};
use super::factors::check_factors;

/// One problem in a design.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub pos: Pos,
    /// Where in the design (`exp_a.host_types.client.n`).
    pub path: String,
    pub message: String,
    pub hint: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}\n    (hint: {})",
            self.pos, self.path, self.message, self.hint
        )
    }
}

#[derive(Default)]
pub(crate) struct Problems(pub Vec<Problem>);

impl Problems {
    pub fn add(
        &mut self,
        pos: Pos,
        path: &str,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.0.push(Problem {
            pos,
            path: path.to_string(),
            message: message.into(),
            hint: hint.into(),
        });
    }
}

/// The commands of one host instance: `main` first, then the background
/// commands in the design's order.
pub type Cmds = Vec<(String, String)>;

#[derive(Debug, Clone, PartialEq)]
pub struct HostType {
    pub name: String,
    pub n: u32,
    pub check_status: bool,
    pub init_roles: Vec<String>,
    /// One entry per instance.
    pub cmds: Vec<Cmds>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Experiment {
    pub name: String,
    pub pos: Pos,
    pub n_repetitions: u32,
    pub common_roles: Vec<String>,
    pub host_types: Vec<HostType>,
    /// `base_experiment` with `$SUITE_VARS$` merged in (the experiment's
    /// own values win), in document order.
    pub base: Map<String, Value>,
    pub factor_levels: Vec<Map<String, Value>>,
    pub except_filters: Vec<Map<String, Value>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Suite {
    pub name: String,
    pub experiments: Vec<Experiment>,
    pub etl: Vec<EtlPipeline>,
}

const EXPERIMENT_FIELDS: &[&str] = &[
    "n_repetitions",
    "common_roles",
    "host_types",
    "base_experiment",
    "factor_levels",
    "except_filters",
];
const HOST_TYPE_FIELDS: &[&str] = &["n", "check_status", "init_roles", "$CMD$"];
/// Names doe-suite reserves (its `RESERVED_KEYWORDS`).
const RESERVED: &[&str] = &[
    "state",
    "$FACTOR$",
    "is_controller_yes",
    "is_controller_no",
    "check_status_yes",
    "check_status_no",
    "localhost",
    "n_repetitions",
    "common_roles",
    "host_types",
    "base_experiment",
    "factor_levels",
    "n",
    "init_roles",
    "check_status",
    "$CMD$",
];

pub(crate) fn entries(m: &Marked) -> &[(String, Pos, Marked)] {
    match &m.node {
        Node::Map(e) => e,
        _ => &[],
    }
}

fn is_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Check a design and read it. `name` is the suite's name (the file stem).
pub fn decode(name: &str, doc: &Marked) -> Result<Suite, Vec<Problem>> {
    let mut p = Problems::default();
    if !is_name(&name.replace('-', "_")) {
        p.add(
            doc.pos,
            "(file name)",
            format!("suite name \"{name}\" (the design's file name) has characters a result folder cannot use"),
            "name the file with letters, digits, '-' and '_' (doe-suite's suite names)",
        );
    }
    if !matches!(doc.node, Node::Map(_)) {
        p.add(
            doc.pos,
            "(top level)",
            format!("a suite design is a mapping of experiment names to experiments, not {}", doc.kind()),
            "start with `my_experiment:` followed by its n_repetitions, host_types, base_experiment",
        );
        return Err(p.0);
    }
    let suite_vars = doc.get("$SUITE_VARS$");
    if let Some(v) = suite_vars {
        if !matches!(v.node, Node::Map(_)) {
            p.add(
                v.pos,
                "$SUITE_VARS$",
                format!("must be a mapping, not {}", v.kind()),
                "e.g. `$SUITE_VARS$: {seed: 1}`",
            );
        } else {
            no_includes(&mut p, v, "$SUITE_VARS$");
        }
    }
    let mut experiments = Vec::new();
    let mut etl = Vec::new();
    for (key, kpos, v) in entries(doc) {
        match key.as_str() {
            "$SUITE_VARS$" => {}
            "$ETL$" => etl = decode_etl(&mut p, v),
            _ => {
                if RESERVED.contains(&key.as_str()) || !is_name(key) || key.len() > 200 {
                    p.add(
                        *kpos,
                        key,
                        format!("experiment name \"{key}\" is not allowed"),
                        if RESERVED.contains(&key.as_str()) {
                            "it is a doe-suite keyword; indent it under an experiment, or rename the experiment".to_string()
                        } else {
                            "use letters, digits and '_' (at most 200), as doe-suite requires".to_string()
                        },
                    );
                    continue;
                }
                if let Some(e) = decode_experiment(&mut p, key, *kpos, v, suite_vars) {
                    experiments.push(e);
                }
            }
        }
    }
    if experiments.is_empty() && p.0.is_empty() {
        p.add(
            doc.pos,
            "(top level)",
            "the design has no experiment",
            "add `my_experiment:` with n_repetitions, host_types and base_experiment",
        );
    }
    for pl in &etl {
        for e in pl.experiments.iter().flatten() {
            if !experiments.iter().any(|x| &x.name == e) {
                let pos = doc.get("$ETL$").map_or(doc.pos, |v| v.pos);
                p.add(
                    pos,
                    &format!("$ETL$.{}.experiments", pl.name),
                    format!("experiment \"{e}\" is not in the suite"),
                    did_you_mean(e, experiments.iter().map(|x| x.name.as_str())),
                );
            }
        }
    }
    if p.0.is_empty() {
        Ok(Suite {
            name: name.to_string(),
            experiments,
            etl,
        })
    } else {
        p.0.sort_by_key(|x| x.pos);
        Err(p.0)
    }
}

/// `$INCLUDE_VARS$` reads files beside the design; not converted.
fn no_includes(p: &mut Problems, v: &Marked, path: &str) {
    for (k, kpos, child) in entries(v) {
        let here = format!("{path}.{k}");
        if k == "$INCLUDE_VARS$" {
            p.add(
                *kpos,
                &here,
                "$INCLUDE_VARS$ is not supported by the import",
                "copy the variables of the included design_vars file into this mapping",
            );
        }
        no_includes(p, child, &here);
    }
}

/// A string or a list of strings (`init_roles`, `common_roles`).
fn names(p: &mut Problems, v: &Marked, path: &str) -> Vec<String> {
    match &v.node {
        Node::Str(s) => vec![s.clone()],
        Node::Seq(items) => items
            .iter()
            .filter_map(|i| match &i.node {
                Node::Str(s) => Some(s.clone()),
                _ => {
                    p.add(
                        i.pos,
                        path,
                        format!("a role is a name, not {}", i.kind()),
                        "e.g. `setup-small`",
                    );
                    None
                }
            })
            .collect(),
        _ => {
            p.add(
                v.pos,
                path,
                format!("must be a role name or a list of them, not {}", v.kind()),
                "e.g. `[setup-common]`",
            );
            Vec::new()
        }
    }
}

fn count(p: &mut Problems, v: &Marked, path: &str, example: &str) -> Option<u32> {
    match &v.node {
        Node::Int(i) if *i >= 1 && *i <= 10_000 => Some(*i as u32),
        _ => {
            p.add(
                v.pos,
                path,
                format!("must be a whole number from 1 to 10000, not {}", show(v)),
                format!("e.g. `{example}`"),
            );
            None
        }
    }
}

pub(crate) fn show(v: &Marked) -> String {
    match &v.node {
        Node::Str(s) => format!("\"{s}\""),
        _ => v.to_json().to_string(),
    }
}

fn decode_experiment(
    p: &mut Problems,
    name: &str,
    pos: Pos,
    v: &Marked,
    suite_vars: Option<&Marked>,
) -> Option<Experiment> {
    if !matches!(v.node, Node::Map(_)) {
        p.add(
            v.pos,
            name,
            format!("an experiment is a mapping, not {}", v.kind()),
            "give it n_repetitions, host_types and base_experiment",
        );
        return None;
    }
    let before = p.0.len();
    for (k, kpos, _) in entries(v) {
        if !EXPERIMENT_FIELDS.contains(&k.as_str()) {
            p.add(
                *kpos,
                &format!("{name}.{k}"),
                format!("unknown field \"{k}\""),
                did_you_mean(k, EXPERIMENT_FIELDS.iter().copied()),
            );
        }
    }
    let n_repetitions = match v.get("n_repetitions") {
        Some(r) => count(p, r, &format!("{name}.n_repetitions"), "n_repetitions: 2").unwrap_or(1),
        None => 1,
    };
    let common_roles = v
        .get("common_roles")
        .map(|r| names(p, r, &format!("{name}.common_roles")))
        .unwrap_or_default();
    let host_types = match v.get("host_types") {
        None => {
            p.add(
                v.pos,
                &format!("{name}.host_types"),
                "missing field host_types",
                "e.g. `host_types: {small: {n: 1, $CMD$: \"echo hi\"}}`",
            );
            Vec::new()
        }
        Some(h) => decode_host_types(p, name, h),
    };
    let base = match v.get("base_experiment") {
        None => {
            p.add(
                v.pos,
                &format!("{name}.base_experiment"),
                "missing field base_experiment",
                "e.g. `base_experiment: {size: {$FACTOR$: [1, 2]}}` (`{}` for no config)",
            );
            Map::new()
        }
        Some(b) if matches!(b.node, Node::Map(_)) || b.node == Node::Null => {
            no_includes(p, b, &format!("{name}.base_experiment"));
            let mut base = match b.to_json() {
                Value::Object(m) => m,
                _ => Map::new(),
            };
            if let Some(sv) = suite_vars {
                if let Value::Object(vars) = sv.to_json() {
                    include_vars(&mut base, &vars);
                }
            }
            base
        }
        Some(b) => {
            p.add(
                b.pos,
                &format!("{name}.base_experiment"),
                format!("must be a mapping, not {}", b.kind()),
                "e.g. `base_experiment: {size: 10}`",
            );
            Map::new()
        }
    };
    let maps = |p: &mut Problems, field: &str, example: &str| -> Vec<Map<String, Value>> {
        match v.get(field) {
            None => Vec::new(),
            Some(l) => match &l.node {
                Node::Seq(items) => items
                    .iter()
                    .filter_map(|i| match i.to_json() {
                        Value::Object(m) => Some(m),
                        _ => {
                            p.add(
                                i.pos,
                                &format!("{name}.{field}"),
                                format!("each entry is a mapping, not {}", i.kind()),
                                format!("e.g. `{example}`"),
                            );
                            None
                        }
                    })
                    .collect(),
                _ => {
                    p.add(
                        l.pos,
                        &format!("{name}.{field}"),
                        format!("must be a list of mappings, not {}", l.kind()),
                        format!("e.g. `{field}: [{example}]`"),
                    );
                    Vec::new()
                }
            },
        }
    };
    let factor_levels = maps(p, "factor_levels", "{size: 10}");
    let except_filters = maps(p, "except_filters", "{size: 10, opt: False}");
    let e = Experiment {
        name: name.to_string(),
        pos,
        n_repetitions,
        common_roles,
        host_types,
        base,
        factor_levels,
        except_filters,
    };
    check_factors(p, &e, v);
    (p.0.len() == before).then_some(e)
}

/// doe-suite's `include_vars`: every leaf of `vars` not already in `base`.
fn include_vars(base: &mut Map<String, Value>, vars: &Map<String, Value>) {
    for (k, v) in vars {
        match (base.get_mut(k), v) {
            (None, _) => {
                base.insert(k.clone(), v.clone());
            }
            (Some(Value::Object(b)), Value::Object(inner)) => include_vars(b, inner),
            _ => {}
        }
    }
}

fn decode_host_types(p: &mut Problems, exp: &str, h: &Marked) -> Vec<HostType> {
    let Node::Map(list) = &h.node else {
        p.add(
            h.pos,
            &format!("{exp}.host_types"),
            format!("must be a mapping of host type names, not {}", h.kind()),
            "e.g. `host_types: {small: {n: 1, $CMD$: \"echo hi\"}}`",
        );
        return Vec::new();
    };
    if list.is_empty() {
        p.add(
            h.pos,
            &format!("{exp}.host_types"),
            "no host type",
            "add one, e.g. `small: {n: 1, $CMD$: \"echo hi\"}`",
        );
    }
    let mut out = Vec::new();
    for (name, _, ht) in list {
        let path = format!("{exp}.host_types.{name}");
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            || name.is_empty()
        {
            p.add(
                ht.pos,
                &path,
                format!("host type \"{name}\" cannot name a result folder"),
                "use letters, digits, '-' and '_' (doe-suite's group_vars folder names)",
            );
            continue;
        }
        if !matches!(ht.node, Node::Map(_)) {
            p.add(
                ht.pos,
                &path,
                format!("a host type is a mapping, not {}", ht.kind()),
                "e.g. `{n: 1, $CMD$: \"echo hi\"}`",
            );
            continue;
        }
        for (k, kpos, _) in entries(ht) {
            if !HOST_TYPE_FIELDS.contains(&k.as_str()) {
                p.add(
                    *kpos,
                    &format!("{path}.{k}"),
                    format!("unknown field \"{k}\""),
                    did_you_mean(k, HOST_TYPE_FIELDS.iter().copied()),
                );
            }
        }
        let n = match ht.get("n") {
            Some(v) => count(p, v, &format!("{path}.n"), "n: 2"),
            None => Some(1),
        };
        let check_status = match ht.get("check_status").map(|v| &v.node) {
            None => true,
            Some(Node::Bool(b)) => *b,
            Some(_) => {
                let v = ht.get("check_status").unwrap_or(ht);
                p.add(
                    v.pos,
                    &format!("{path}.check_status"),
                    format!("must be True or False, not {}", show(v)),
                    "`check_status: False` for a server the experiment does not wait for",
                );
                true
            }
        };
        let init_roles = ht
            .get("init_roles")
            .map(|r| names(p, r, &format!("{path}.init_roles")))
            .unwrap_or_default();
        let Some(cmd) = ht.get("$CMD$") else {
            p.add(ht.pos, &format!("{path}.$CMD$"), "missing field $CMD$", "the command each instance runs, e.g. `$CMD$: \"./bench --size [% my_run.size %]\"`");
            continue;
        };
        let Some(n) = n else { continue };
        let cmds = decode_cmd(p, &format!("{path}.$CMD$"), cmd, n);
        if let Some(cmds) = cmds {
            out.push(HostType {
                name: name.clone(),
                n,
                check_status,
                init_roles,
                cmds,
            });
        }
    }
    out
}

/// `$CMD$`: a command, `{main: .., bg: ..}`, or a list (one per instance)
/// of either; normalised to one `Cmds` per instance, as doe-suite does.
fn decode_cmd(p: &mut Problems, path: &str, v: &Marked, n: u32) -> Option<Vec<Cmds>> {
    let one = |p: &mut Problems, v: &Marked, path: &str| -> Option<Cmds> {
        match &v.node {
            Node::Str(s) => Some(vec![("main".to_string(), s.clone())]),
            Node::Map(m) => {
                let mut cmds: Cmds = Vec::new();
                let mut ok = true;
                for (k, kpos, c) in m {
                    match &c.node {
                        Node::Str(s) => cmds.push((k.clone(), s.clone())),
                        _ => {
                            p.add(
                                c.pos,
                                &format!("{path}.{k}"),
                                format!("a command is a string, not {}", c.kind()),
                                "quote the command: `main: \"./run.sh\"`",
                            );
                            ok = false;
                        }
                    }
                    if !k
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                        || k.is_empty()
                    {
                        p.add(
                            *kpos,
                            &format!("{path}.{k}"),
                            format!("command name \"{k}\" cannot name a step"),
                            "use letters, digits, '-' and '_'",
                        );
                        ok = false;
                    }
                }
                let Some(i) = cmds.iter().position(|(k, _)| k == "main") else {
                    p.add(v.pos, path, "missing cmd for main", "every instance needs a `main:` command; the others run in the background beside it");
                    return None;
                };
                let main = cmds.remove(i);
                cmds.insert(0, main);
                ok.then_some(cmds)
            }
            _ => {
                p.add(
                    v.pos,
                    path,
                    format!(
                        "a command is a string or a mapping with `main`, not {}",
                        v.kind()
                    ),
                    "e.g. `$CMD$: \"./run.sh\"` or `$CMD$: {main: ./run.sh, monitor: ./mon.sh}`",
                );
                None
            }
        }
    };
    match &v.node {
        Node::Seq(items) => {
            if items.len() != n as usize {
                p.add(
                    v.pos,
                    path,
                    format!("cmd list length ({}) does not match the number of instances n = {n}", items.len()),
                    "give one command per instance, or a single command (not a list) for all of them",
                );
                return None;
            }
            let mut all = Vec::new();
            for (i, item) in items.iter().enumerate() {
                all.push(one(p, item, &format!("{path}[{i}]"))?);
            }
            Some(all)
        }
        _ => one(p, v, path).map(|c| vec![c; n as usize]),
    }
}
