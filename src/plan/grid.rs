//! Factor grids: a layer's `grid` expands into one pattern per cell of the
//! cross product of its factors, less exclusions, plus inclusions, times
//! repetitions. Pure: the same grid yields the same cells in the same order.

use std::time::Duration;

use serde_json::{Map, Value};

use super::decode::{child, count, duration, obj, string, RawPattern};
use super::diag::{did_you_mean, unsafe_id_reason, Diags};
use super::json::{Node, Pos, Spanned};

const GRID_FIELDS: &[&str] = &[
    "backend",
    "id",
    "factors",
    "exclude",
    "include",
    "repetitions",
    "settings",
    "estimate",
    "estimate_by",
];

pub(crate) fn values_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

/// How a level prints inside an id or a CSV cell.
pub fn level_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".into(),
        other => other.to_string(),
    }
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Fill `{name}` placeholders from `vars`; `None` names the missing one.
pub fn fill_id(template: &str, vars: &Map<String, Value>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let Some(end) = after.find('}') else {
            return Err("an unclosed '{'".into());
        };
        let name = &after[..end];
        match vars.get(name) {
            Some(v) => out.push_str(&sanitize(&level_text(v))),
            None => return Err(format!("{{{name}}} is not a factor")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn placeholders(template: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let after = &rest[start + 1..];
        let Some(end) = after.find('}') else { break };
        names.push(after[..end].to_string());
        rest = &after[end + 1..];
    }
    names
}

pub(crate) fn expand(d: &mut Diags, v: &Spanned, path: &str, max_cells: usize) -> Vec<RawPattern> {
    let Some(o) = obj(d, v, path) else {
        return Vec::new();
    };
    o.known(d, GRID_FIELDS);
    let backend = o
        .required(d, "backend", "\"train\"")
        .and_then(|v| string(d, v, &o.child("backend")));
    let id_tpl = o
        .required(d, "id", "\"sweep-{variant}-lr{lr}-s{seed}\"")
        .and_then(|v| string(d, v, &o.child("id")));
    let id_pos = o.get("id").map(|v| v.pos).unwrap_or(o.pos);
    let reps = o
        .get("repetitions")
        .and_then(|v| count(d, v, &o.child("repetitions"), 100_000))
        .unwrap_or(1);
    let settings = o
        .get("settings")
        .and_then(|v| obj(d, v, &o.child("settings")).map(|_| v.to_value()))
        .and_then(|v| v.as_object().cloned())
        .unwrap_or_default();
    let estimate = o
        .get("estimate")
        .and_then(|v| duration(d, v, &o.child("estimate")));

    // factors, in the order written
    let mut factors: Vec<(String, Vec<Value>, Pos)> = Vec::new();
    if let Some(fv) = o.required(d, "factors", "{\"lr\": [0.1, 0.01], \"seed\": [0, 1, 2]}") {
        if let Some(fo) = obj(d, fv, &o.child("factors")) {
            if fo.fields.is_empty() {
                d.hint(
                    &fo.path,
                    fv.pos,
                    "a grid needs at least one factor",
                    "add \"factors\": {\"seed\": [0, 1, 2]}",
                );
            }
            for (name, lv) in fo.fields {
                let fpath = fo.child(name);
                if unsafe_id_reason(name).is_some() || name == "rep" {
                    d.hint(
                        &fpath,
                        lv.pos,
                        format!("factor name \"{name}\" is not usable as a variable"),
                        "use letters, digits and '_' (and not \"rep\", which repetitions use)",
                    );
                }
                match &lv.node {
                    Node::Arr(items) if !items.is_empty() => {
                        let mut levels: Vec<Value> = Vec::new();
                        for (i, it) in items.iter().enumerate() {
                            let val = it.to_value();
                            if matches!(val, Value::Object(_) | Value::Array(_) | Value::Null) {
                                d.hint(
                                    &format!("{fpath}[{i}]"),
                                    it.pos,
                                    format!("level {} is not a string, number or boolean", val),
                                    "use scalar levels",
                                );
                                continue;
                            }
                            if levels.iter().any(|l| values_equal(l, &val)) {
                                d.hint(
                                    &format!("{fpath}[{i}]"),
                                    it.pos,
                                    format!("level {val} appears twice"),
                                    "list each level once",
                                );
                                continue;
                            }
                            levels.push(val);
                        }
                        factors.push((name.clone(), levels, lv.pos));
                    }
                    Node::Arr(_) => d.hint(
                        &fpath,
                        lv.pos,
                        format!("factor \"{name}\" has no levels"),
                        "list at least one level",
                    ),
                    _ => d.hint(
                        &fpath,
                        lv.pos,
                        format!(
                            "factor \"{name}\" must be a list of levels, found {}",
                            lv.kind()
                        ),
                        format!("write \"{name}\": [1, 2, 3]"),
                    ),
                }
            }
        }
    }
    let names: Vec<&str> = factors.iter().map(|(n, _, _)| n.as_str()).collect();

    // the id template must tell cells apart
    if let Some(t) = &id_tpl {
        for ph in placeholders(t) {
            if !names.contains(&ph.as_str()) && (ph != "rep") {
                d.hint(
                    &o.child("id"),
                    id_pos,
                    format!("id template mentions {{{ph}}}, which is not a factor"),
                    did_you_mean(&ph, names.iter().copied()),
                );
            }
        }
        let used = placeholders(t);
        for (n, levels, _) in &factors {
            if levels.len() > 1 && !used.contains(n) {
                d.hint(
                    &o.child("id"),
                    id_pos,
                    format!(
                        "id template does not mention factor {{{n}}}, so cells would share ids"
                    ),
                    format!("add {{{n}}} to the id, e.g. \"{t}-{{{n}}}\""),
                );
            }
        }
        if reps > 1 && !used.iter().any(|u| u == "rep") {
            d.hint(
                &o.child("id"),
                id_pos,
                "id template does not mention {rep} but the grid has repetitions",
                format!("add {{rep}}, e.g. \"{t}-r{{rep}}\""),
            );
        }
    }

    let parse_cells = |d: &mut Diags, key: &str, full: bool| -> Vec<(Map<String, Value>, Pos)> {
        let mut out = Vec::new();
        let Some(ev) = o.get(key) else { return out };
        let Node::Arr(items) = &ev.node else {
            d.hint(
                &o.child(key),
                ev.pos,
                format!("expected a list of cells, found {}", ev.kind()),
                "write a list of objects, e.g. [{\"lr\": 0.1}]",
            );
            return out;
        };
        for (i, it) in items.iter().enumerate() {
            let ipath = format!("{}[{i}]", o.child(key));
            let Some(io) = obj(d, it, &ipath) else {
                continue;
            };
            let mut cell = Map::new();
            for (k, kv) in io.fields {
                let val = kv.to_value();
                match factors.iter().find(|(n, _, _)| n == k) {
                    None => d.hint(&child(&ipath, k), kv.pos, format!("\"{k}\" is not a factor of this grid"), did_you_mean(k, names.iter().copied())),
                    Some((_, levels, _)) if !full && !levels.iter().any(|l| values_equal(l, &val)) => d.hint(
                        &child(&ipath, k), kv.pos, format!("{val} is not a level of factor \"{k}\", so this exclusion matches nothing"),
                        format!("levels: {}", levels.iter().map(|l| l.to_string()).collect::<Vec<_>>().join(", ")),
                    ),
                    Some(_) => {}
                }
                cell.insert(k.clone(), val);
            }
            if full {
                for n in &names {
                    if !cell.contains_key(*n) {
                        d.hint(
                            &ipath,
                            it.pos,
                            format!("included cell does not set factor \"{n}\""),
                            "an included cell gives a level for every factor",
                        );
                    }
                }
            }
            if cell.is_empty() && !full {
                d.hint(
                    &ipath,
                    it.pos,
                    "an empty exclusion would drop every cell",
                    "name at least one factor level",
                );
            }
            out.push((cell, it.pos));
        }
        out
    };
    let excludes = parse_cells(d, "exclude", false);
    let includes = parse_cells(d, "include", true);

    // estimate_by: factor -> level -> duration
    let mut estimate_by: Vec<(String, Vec<(Value, Duration)>)> = Vec::new();
    if let Some(ev) = o.get("estimate_by") {
        if let Some(eo) = obj(d, ev, &o.child("estimate_by")) {
            for (f, fv) in eo.fields {
                let Some((_, levels, _)) = factors.iter().find(|(n, _, _)| n == f) else {
                    d.hint(
                        &eo.child(f),
                        fv.pos,
                        format!("\"{f}\" is not a factor of this grid"),
                        did_you_mean(f, names.iter().copied()),
                    );
                    continue;
                };
                let Some(lo) = obj(d, fv, &eo.child(f)) else {
                    continue;
                };
                let mut per = Vec::new();
                for (lk, lv) in lo.fields {
                    let Some(level) = levels.iter().find(|l| level_text(l) == *lk) else {
                        d.hint(
                            &lo.child(lk),
                            lv.pos,
                            format!("\"{lk}\" is not a level of factor \"{f}\""),
                            format!(
                                "levels: {}",
                                levels.iter().map(level_text).collect::<Vec<_>>().join(", ")
                            ),
                        );
                        continue;
                    };
                    if let Some(dur) = duration(d, lv, &lo.child(lk)) {
                        per.push((level.clone(), dur));
                    }
                }
                estimate_by.push((f.clone(), per));
            }
        }
    }

    let (Some(backend), Some(id_tpl)) = (backend, id_tpl) else {
        return Vec::new();
    };
    if factors.is_empty() || !d.is_empty() && d.list.iter().any(|x| x.path.starts_with(path)) {
        return Vec::new();
    }
    let product = factors
        .iter()
        .try_fold(reps as usize, |acc, (_, l, _)| acc.checked_mul(l.len()));
    match product {
        Some(n) if n <= max_cells => {}
        _ => {
            d.hint(
                path,
                v.pos,
                format!("the grid has more than {max_cells} cells"),
                "split it over several layers or phases, or exclude part of it",
            );
            return Vec::new();
        }
    }

    let cell_estimate = |cell: &Map<String, Value>| -> Option<Duration> {
        for (f, per) in &estimate_by {
            if let Some(val) = cell.get(f) {
                if let Some((_, dur)) = per.iter().find(|(l, _)| values_equal(l, val)) {
                    return Some(*dur);
                }
            }
        }
        estimate
    };

    let mut cells: Vec<(Map<String, Value>, Pos)> = Vec::new();
    let mut idx = vec![0usize; factors.len()];
    'outer: loop {
        let mut cell = Map::new();
        for (k, (n, levels, _)) in factors.iter().enumerate() {
            cell.insert(n.clone(), levels[idx[k]].clone());
        }
        let excluded = excludes.iter().any(|(ex, _)| {
            !ex.is_empty()
                && ex
                    .iter()
                    .all(|(k, v)| cell.get(k).is_some_and(|c| values_equal(c, v)))
        });
        if !excluded {
            cells.push((cell, v.pos));
        }
        let mut k = factors.len();
        loop {
            if k == 0 {
                break 'outer;
            }
            k -= 1;
            idx[k] += 1;
            if idx[k] < factors[k].1.len() {
                break;
            }
            idx[k] = 0;
        }
    }
    for (inc, pos) in includes {
        if !cells.iter().any(|(c, _)| {
            c.iter()
                .all(|(k, v)| inc.get(k).is_some_and(|i| values_equal(i, v)))
        }) {
            cells.push((inc, pos));
        }
    }

    let mut out = Vec::with_capacity(cells.len() * reps as usize);
    for (cell, pos) in cells {
        for rep in 0..reps {
            let mut vars = cell.clone();
            if reps > 1 {
                vars.insert("rep".into(), Value::from(rep));
            }
            let id = match fill_id(&id_tpl, &vars) {
                Ok(id) => id,
                Err(e) => {
                    d.hint(
                        &child(path, "id"),
                        id_pos,
                        format!("cannot build an id: {e}"),
                        "use {factor} placeholders",
                    );
                    return Vec::new();
                }
            };
            if let Some(r) = unsafe_id_reason(&id) {
                d.hint(
                    &child(path, "id"),
                    id_pos,
                    format!("the id template yields \"{id}\", which is not file-safe: {r}"),
                    "use letters, digits, '-', '_' and '.' around the placeholders",
                );
                return Vec::new();
            }
            let mut overrides = settings.clone();
            for (k, v) in &vars {
                overrides.insert(k.clone(), v.clone());
            }
            out.push(RawPattern {
                id,
                backend: backend.clone(),
                overrides,
                factors: vars,
                estimate: cell_estimate(&cell),
                node_group: None,
                pos,
                path: path.to_string(),
                id_path_is_template: true,
            });
        }
    }
    out
}
