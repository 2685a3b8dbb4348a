//! A doe-suite suite design (`doe-suite-config/designs/<suite>.yml`), read
//! and checked: every problem is collected with its place in the file and
//! a fix, before anything is converted.

use serde_json::{Map, Value};

use super::yaml::{Marked, Node, Pos};
use crate::plan::diag::did_you_mean;

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

/// One extractor of a `$ETL$` pipeline (doe-suite's names).
#[derive(Debug, Clone, PartialEq)]
pub struct EtlExtractor {
    pub kind: String,
    pub file_regex: Vec<String>,
    /// `CsvExtractor`'s options.
    pub delimiter: Option<String>,
    pub has_header: Option<bool>,
    pub fieldnames: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EtlPipeline {
    pub name: String,
    /// `None` for `"*"`.
    pub experiments: Option<Vec<String>>,
    pub extractors: Vec<EtlExtractor>,
    /// Transformers and loaders are Python and are not converted.
    pub has_python_steps: bool,
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
pub const EXTRACTORS: &[&str] = &[
    "JsonExtractor",
    "YamlExtractor",
    "CsvExtractor",
    "ErrorExtractor",
    "IgnoreExtractor",
];

fn entries(m: &Marked) -> &[(String, Pos, Marked)] {
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

fn show(v: &Marked) -> String {
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

/// Where `$FACTOR$` stands in a config (paths of keys).
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Factors {
    /// `x: $FACTOR$` (levels in `factor_levels`).
    pub level_list: Vec<Vec<String>>,
    /// `x: {$FACTOR$: [levels]}`, with the levels.
    pub cross: Vec<(Vec<String>, Vec<Value>)>,
}

pub(crate) fn find_factors(m: &Map<String, Value>) -> Factors {
    fn walk(m: &Map<String, Value>, path: &mut Vec<String>, out: &mut Factors) {
        for (k, v) in m {
            if k == "$FACTOR$" {
                if let Value::Array(levels) = v {
                    out.cross.push((path.clone(), levels.clone()));
                }
                continue;
            }
            path.push(k.clone());
            match v {
                Value::String(s) if s == "$FACTOR$" => out.level_list.push(path.clone()),
                Value::Object(inner) => walk(inner, path, out),
                _ => {}
            }
            path.pop();
        }
    }
    let mut out = Factors::default();
    walk(m, &mut Vec::new(), &mut out);
    out
}

/// Leaf paths of a mapping (doe-suite's `nested_dict_iter`).
pub(crate) fn leaf_paths(m: &Map<String, Value>) -> Vec<Vec<String>> {
    fn walk(m: &Map<String, Value>, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        for (k, v) in m {
            path.push(k.clone());
            match v {
                Value::Object(inner) if !inner.is_empty() => walk(inner, path, out),
                _ => out.push(path.clone()),
            }
            path.pop();
        }
    }
    let mut out = Vec::new();
    walk(m, &mut Vec::new(), &mut out);
    out
}

/// The position of the value at `path` under `v`, else `v`'s.
fn pos_at(v: &Marked, path: &[&str]) -> Pos {
    let mut cur = v;
    for k in path {
        match cur.get(k) {
            Some(n) => cur = n,
            None => break,
        }
    }
    cur.pos
}

fn check_factors(p: &mut Problems, e: &Experiment, v: &Marked) {
    let name = &e.name;
    // a cross factor's value must be a list of levels
    if let Some(b) = v.get("base_experiment") {
        fn walk(p: &mut Problems, m: &Marked, path: &str) {
            for (k, kpos, child) in entries(m) {
                let here = format!("{path}.{k}");
                if k == "$FACTOR$" {
                    match &child.node {
                        Node::Seq(l) if !l.is_empty() => {}
                        _ => p.add(
                            child.pos,
                            &here,
                            format!("if $FACTOR$ is the key, its value must be a non-empty list of levels, not {}", show(child)),
                            "e.g. `size: {$FACTOR$: [10, 20]}`, or `size: $FACTOR$` with the levels in factor_levels",
                        ),
                    }
                    let _ = kpos;
                } else {
                    walk(p, child, &here);
                }
            }
        }
        walk(p, b, &format!("{name}.base_experiment"));
    }
    let f = find_factors(&e.base);
    let mut expected: Vec<Vec<String>> = f.level_list.clone();
    expected.sort();
    let fl_node = v.get("factor_levels");
    for (i, level) in e.factor_levels.iter().enumerate() {
        let mut actual = leaf_paths(level);
        actual.sort();
        if actual != expected {
            let pos = match fl_node.map(|n| &n.node) {
                Some(Node::Seq(items)) => items.get(i).map_or(v.pos, |n| n.pos),
                _ => v.pos,
            };
            let show = |l: &[Vec<String>]| {
                if l.is_empty() {
                    "none".to_string()
                } else {
                    l.iter().map(|p| p.join(".")).collect::<Vec<_>>().join(", ")
                }
            };
            p.add(
                pos,
                &format!("{name}.factor_levels[{i}]"),
                format!(
                    "expected factors do not match actual factors: expected {} (the `$FACTOR$` values of base_experiment), found {}",
                    show(&expected),
                    show(&actual)
                ),
                "give every factor_levels entry exactly one level for each `x: $FACTOR$` of base_experiment",
            );
        }
    }
    if e.factor_levels.is_empty() && !expected.is_empty() {
        let pos = pos_at(v, &["base_experiment"]);
        p.add(
            pos,
            &format!("{name}.factor_levels"),
            format!(
                "base_experiment has `$FACTOR$` values ({}) but the experiment has no factor_levels",
                expected.iter().map(|p| p.join(".")).collect::<Vec<_>>().join(", ")
            ),
            "list their levels: `factor_levels: [{x: 1}, {x: 2}]`, or use `x: {$FACTOR$: [1, 2]}`",
        );
    }
    let mut all: Vec<Vec<String>> = expected.clone();
    all.extend(f.cross.iter().map(|(p, _)| p.clone()));
    let ef_node = v.get("except_filters");
    for (i, filt) in e.except_filters.iter().enumerate() {
        for path in leaf_paths(filt) {
            if !all.contains(&path) {
                let pos = match ef_node.map(|n| &n.node) {
                    Some(Node::Seq(items)) => items.get(i).map_or(v.pos, |n| n.pos),
                    _ => v.pos,
                };
                let names: Vec<String> = all.iter().map(|p| p.join(".")).collect();
                p.add(
                    pos,
                    &format!("{name}.except_filters[{i}]"),
                    format!(
                        "except_filters entry names \"{}\", which is not a factor",
                        path.join(".")
                    ),
                    did_you_mean(&path.join("."), names.iter().map(String::as_str)),
                );
            }
        }
    }
}

fn decode_etl(p: &mut Problems, v: &Marked) -> Vec<EtlPipeline> {
    let mut out = Vec::new();
    for (name, _, pl) in entries(v) {
        let path = format!("$ETL$.{name}");
        let experiments = match pl.get("experiments").map(|e| (&e.node, e)) {
            Some((Node::Str(s), _)) if s == "*" => None,
            Some((Node::Str(s), _)) => Some(vec![s.clone()]),
            Some((Node::Seq(items), _)) => Some(
                items
                    .iter()
                    .filter_map(|i| match &i.node {
                        Node::Str(s) => Some(s.clone()),
                        _ => None,
                    })
                    .collect(),
            ),
            Some((_, e)) => {
                p.add(
                    e.pos,
                    &format!("{path}.experiments"),
                    format!(
                        "must be \"*\" or a list of experiment names, not {}",
                        e.kind()
                    ),
                    "e.g. `experiments: [exp_a]`",
                );
                None
            }
            None => None,
        };
        let mut extractors = Vec::new();
        if let Some(ex) = pl.get("extractors") {
            for (kind, kpos, opts) in entries(ex) {
                if !EXTRACTORS.contains(&kind.as_str()) {
                    p.add(
                        *kpos,
                        &format!("{path}.extractors.{kind}"),
                        format!("extractor \"{kind}\" is not one the import converts"),
                        format!(
                            "{} (a project's own Python extractor needs a rewrite as one of these)",
                            did_you_mean(kind, EXTRACTORS.iter().copied())
                        ),
                    );
                    continue;
                }
                let o = opts.to_json();
                let file_regex = match o.get("file_regex") {
                    Some(Value::String(s)) => vec![s.clone()],
                    Some(Value::Array(a)) => a
                        .iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect(),
                    _ => Vec::new(),
                };
                extractors.push(EtlExtractor {
                    kind: kind.clone(),
                    file_regex,
                    delimiter: o
                        .get("delimiter")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                    has_header: o.get("has_header").and_then(Value::as_bool),
                    fieldnames: o.get("fieldnames").and_then(Value::as_array).map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str().map(str::to_string))
                            .collect()
                    }),
                });
            }
        }
        let has_python_steps = ["transformers", "loaders"].iter().any(|k| {
            pl.get(k).is_some_and(|t| {
                !matches!(&t.node, Node::Seq(l) if l.is_empty())
                    && !matches!(&t.node, Node::Map(m) if m.is_empty())
            })
        });
        out.push(EtlPipeline {
            name: name.clone(),
            experiments,
            extractors,
            has_python_steps,
        });
    }
    out
}
