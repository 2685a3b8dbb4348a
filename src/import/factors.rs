//! Where `$FACTOR$` stands in an experiment's config, and the checks of
//! `factor_levels` and `except_filters` against it (doe-suite's
//! `check_factor_levels`, `check_except_filters`).

use serde_json::{Map, Value};

use super::design::{entries, show, Experiment, Problems};
use super::yaml::{Marked, Node, Pos};
use crate::plan::diag::did_you_mean;

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

pub(crate) fn check_factors(p: &mut Problems, e: &Experiment, v: &Marked) {
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
