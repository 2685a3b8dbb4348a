//! Expanding one grid: its fields read and checked, the cells computed,
//! one raw pattern per cell and repetition.

use std::time::Duration;

use serde_json::{Map, Value};

use super::levels::{fill_id, level_text, placeholders, values_equal};
use crate::plan::diag::{did_you_mean, unsafe_id_reason, Diags};
use crate::plan::fields::{child, count, duration, obj, string, Obj, RawPattern};
use crate::plan::json::{Node, Pos, Spanned};

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

/// A factor: its name and its distinct levels in the order written.
struct Factor {
    name: String,
    levels: Vec<Value>,
}

/// One cell of the grid: a level for every factor.
type Cell = Map<String, Value>;

/// factor → level → duration.
type EstimateBy = Vec<(String, Vec<(Value, Duration)>)>;

/// The grid's fields other than its factors and cells.
struct Spec {
    backend: Option<String>,
    id_tpl: Option<String>,
    id_pos: Pos,
    reps: u32,
    settings: Map<String, Value>,
    estimate: Option<Duration>,
    /// Durations by factor level, overriding `estimate`.
    estimate_by: EstimateBy,
}

impl Spec {
    /// The first `estimate_by` entry that matches the cell, else `estimate`.
    fn cell_estimate(&self, cell: &Cell) -> Option<Duration> {
        for (f, per) in &self.estimate_by {
            if let Some(val) = cell.get(f) {
                if let Some((_, dur)) = per.iter().find(|(l, _)| values_equal(l, val)) {
                    return Some(*dur);
                }
            }
        }
        self.estimate
    }
}

/// The patterns of the grid at `path`, at most `max_cells` of them (more is
/// a problem); none when the grid has any problem.
pub(crate) fn expand(d: &mut Diags, v: &Spanned, path: &str, max_cells: usize) -> Vec<RawPattern> {
    let Some(o) = obj(d, v, path) else {
        return Vec::new();
    };
    o.known(d, GRID_FIELDS);
    let mut spec = spec(d, &o);
    let factors = o
        .required(d, "factors", "{\"lr\": [0.1, 0.01], \"seed\": [0, 1, 2]}")
        .map(|fv| factors(d, &o, fv))
        .unwrap_or_default();
    if let Some(t) = &spec.id_tpl {
        check_id_template(d, &o, t, &spec, &factors);
    }
    let excludes = listed_cells(d, &o, "exclude", false, &factors);
    let includes = listed_cells(d, &o, "include", true, &factors);
    spec.estimate_by = estimate_by(d, &o, &factors);

    let (Some(backend), Some(id_tpl)) = (&spec.backend, &spec.id_tpl) else {
        return Vec::new();
    };
    if factors.is_empty() || !d.is_empty() && d.list.iter().any(|x| x.path.starts_with(path)) {
        return Vec::new();
    }
    let product = factors
        .iter()
        .try_fold(spec.reps as usize, |acc, f| acc.checked_mul(f.levels.len()));
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
    let cells = cells(&factors, &excludes, includes, v.pos);
    patterns(d, &spec, backend, id_tpl, cells, path)
}

fn spec(d: &mut Diags, o: &Obj) -> Spec {
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
    Spec {
        backend,
        id_tpl,
        id_pos,
        reps,
        settings,
        estimate,
        estimate_by: Vec::new(),
    }
}

/// `factors`, in the order written; a factor without usable levels is left
/// out (and reported).
fn factors(d: &mut Diags, o: &Obj, fv: &Spanned) -> Vec<Factor> {
    let mut factors = Vec::new();
    let Some(fo) = obj(d, fv, &o.child("factors")) else {
        return factors;
    };
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
            Node::Arr(items) if !items.is_empty() => factors.push(Factor {
                name: name.clone(),
                levels: levels(d, items, &fpath),
            }),
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
    factors
}

/// A factor's distinct scalar levels.
fn levels(d: &mut Diags, items: &[Spanned], fpath: &str) -> Vec<Value> {
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
    levels
}

/// The id template must name only factors (or `{rep}`) and tell cells
/// apart: every factor with several levels, and `{rep}` with repetitions.
fn check_id_template(d: &mut Diags, o: &Obj, t: &str, spec: &Spec, factors: &[Factor]) {
    let names: Vec<&str> = factors.iter().map(|f| f.name.as_str()).collect();
    let used = placeholders(t);
    for ph in &used {
        if !names.contains(&ph.as_str()) && (ph != "rep") {
            d.hint(
                &o.child("id"),
                spec.id_pos,
                format!("id template mentions {{{ph}}}, which is not a factor"),
                did_you_mean(ph, names.iter().copied()),
            );
        }
    }
    for f in factors {
        let n = &f.name;
        if f.levels.len() > 1 && !used.contains(n) {
            d.hint(
                &o.child("id"),
                spec.id_pos,
                format!("id template does not mention factor {{{n}}}, so cells would share ids"),
                format!("add {{{n}}} to the id, e.g. \"{t}-{{{n}}}\""),
            );
        }
    }
    if spec.reps > 1 && !used.iter().any(|u| u == "rep") {
        d.hint(
            &o.child("id"),
            spec.id_pos,
            "id template does not mention {rep} but the grid has repetitions",
            format!("add {{rep}}, e.g. \"{t}-r{{rep}}\""),
        );
    }
}

/// `exclude` (partial cells; `full` false) or `include` (complete cells;
/// `full` true), with where each is written.
fn listed_cells(
    d: &mut Diags,
    o: &Obj,
    key: &str,
    full: bool,
    factors: &[Factor],
) -> Vec<(Cell, Pos)> {
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
        let cell = listed_cell(d, &io, full, factors);
        if full {
            for f in factors {
                if !cell.contains_key(&f.name) {
                    d.hint(
                        &ipath,
                        it.pos,
                        format!("included cell does not set factor \"{}\"", f.name),
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
}

/// One listed cell; its keys must be factors, and an exclusion's values
/// levels of them.
fn listed_cell(d: &mut Diags, io: &Obj, full: bool, factors: &[Factor]) -> Cell {
    let names = || factors.iter().map(|f| f.name.as_str());
    let mut cell = Map::new();
    for (k, kv) in io.fields {
        let val = kv.to_value();
        match factors.iter().find(|f| &f.name == k) {
            None => d.hint(
                &io.child(k),
                kv.pos,
                format!("\"{k}\" is not a factor of this grid"),
                did_you_mean(k, names()),
            ),
            Some(f) if !full && !f.levels.iter().any(|l| values_equal(l, &val)) => d.hint(
                &io.child(k),
                kv.pos,
                format!(
                    "{val} is not a level of factor \"{k}\", so this exclusion matches nothing"
                ),
                format!(
                    "levels: {}",
                    f.levels
                        .iter()
                        .map(|l| l.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
            Some(_) => {}
        }
        cell.insert(k.clone(), val);
    }
    cell
}

/// `estimate_by`: factor → level (as it prints) → duration.
fn estimate_by(d: &mut Diags, o: &Obj, factors: &[Factor]) -> EstimateBy {
    let mut out = Vec::new();
    let Some(ev) = o.get("estimate_by") else {
        return out;
    };
    let Some(eo) = obj(d, ev, &o.child("estimate_by")) else {
        return out;
    };
    for (f, fv) in eo.fields {
        let Some(factor) = factors.iter().find(|x| &x.name == f) else {
            d.hint(
                &eo.child(f),
                fv.pos,
                format!("\"{f}\" is not a factor of this grid"),
                did_you_mean(f, factors.iter().map(|x| x.name.as_str())),
            );
            continue;
        };
        let Some(lo) = obj(d, fv, &eo.child(f)) else {
            continue;
        };
        let mut per = Vec::new();
        for (lk, lv) in lo.fields {
            let Some(level) = factor.levels.iter().find(|l| level_text(l) == *lk) else {
                d.hint(
                    &lo.child(lk),
                    lv.pos,
                    format!("\"{lk}\" is not a level of factor \"{f}\""),
                    format!(
                        "levels: {}",
                        factor
                            .levels
                            .iter()
                            .map(level_text)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
                continue;
            };
            if let Some(dur) = duration(d, lv, &lo.child(lk)) {
                per.push((level.clone(), dur));
            }
        }
        out.push((f.clone(), per));
    }
    out
}

/// The cross product of the factors (the last factor varying fastest), less
/// the cells an exclusion matches, plus the included cells not already in
/// it. Generated cells are placed at the grid (`pos`), included ones where
/// they are written.
fn cells(
    factors: &[Factor],
    excludes: &[(Cell, Pos)],
    includes: Vec<(Cell, Pos)>,
    pos: Pos,
) -> Vec<(Cell, Pos)> {
    let mut cells: Vec<(Cell, Pos)> = Vec::new();
    let mut idx = vec![0usize; factors.len()];
    'outer: loop {
        let mut cell = Map::new();
        for (k, f) in factors.iter().enumerate() {
            cell.insert(f.name.clone(), f.levels[idx[k]].clone());
        }
        let excluded = excludes.iter().any(|(ex, _)| {
            !ex.is_empty()
                && ex
                    .iter()
                    .all(|(k, v)| cell.get(k).is_some_and(|c| values_equal(c, v)))
        });
        if !excluded {
            cells.push((cell, pos));
        }
        let mut k = factors.len();
        loop {
            if k == 0 {
                break 'outer;
            }
            k -= 1;
            idx[k] += 1;
            if idx[k] < factors[k].levels.len() {
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
    cells
}

/// One pattern per cell and repetition; none if an id cannot be built or
/// is not file-safe.
fn patterns(
    d: &mut Diags,
    spec: &Spec,
    backend: &str,
    id_tpl: &str,
    cells: Vec<(Cell, Pos)>,
    path: &str,
) -> Vec<RawPattern> {
    let reps = spec.reps;
    let mut out = Vec::with_capacity(cells.len() * reps as usize);
    for (cell, pos) in cells {
        for rep in 0..reps {
            let mut vars = cell.clone();
            if reps > 1 {
                vars.insert("rep".into(), Value::from(rep));
            }
            let id = match fill_id(id_tpl, &vars) {
                Ok(id) => id,
                Err(e) => {
                    d.hint(
                        &child(path, "id"),
                        spec.id_pos,
                        format!("cannot build an id: {e}"),
                        "use {factor} placeholders",
                    );
                    return Vec::new();
                }
            };
            if let Some(r) = unsafe_id_reason(&id) {
                d.hint(
                    &child(path, "id"),
                    spec.id_pos,
                    format!("the id template yields \"{id}\", which is not file-safe: {r}"),
                    "use letters, digits, '-', '_' and '.' around the placeholders",
                );
                return Vec::new();
            }
            let mut overrides = spec.settings.clone();
            for (k, v) in &vars {
                overrides.insert(k.clone(), v.clone());
            }
            out.push(RawPattern {
                id,
                backend: backend.to_string(),
                overrides,
                factors: vars,
                estimate: spec.cell_estimate(&cell),
                node_group: None,
                pos,
                path: path.to_string(),
                id_path_is_template: true,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::json::parse;

    fn expand_text(text: &str, max_cells: usize) -> (Vec<RawPattern>, Vec<String>) {
        let n = parse(text).unwrap();
        let mut d = Diags::default();
        let out = expand(&mut d, &n, "layers[0].grid", max_cells);
        let lines = d
            .list
            .iter()
            .map(|x| format!("{} {}: {}", x.pos, x.path, x.message))
            .collect();
        (out, lines)
    }

    fn ids(ps: &[RawPattern]) -> Vec<&str> {
        ps.iter().map(|p| p.id.as_str()).collect()
    }

    #[test]
    fn cells_follow_the_factor_order_last_factor_fastest() {
        let (ps, lines) = expand_text(
            r#"{"backend": "t", "id": "g-{a}-{b}", "factors": {"a": [1, 2], "b": ["x", "y", "z"]},
                "settings": {"s": 1, "a": 0}}"#,
            100,
        );
        assert!(lines.is_empty(), "{lines:?}");
        assert_eq!(
            ids(&ps),
            ["g-1-x", "g-1-y", "g-1-z", "g-2-x", "g-2-y", "g-2-z"]
        );
        let p = &ps[4];
        assert_eq!(p.backend, "t");
        assert_eq!(
            Value::Object(p.factors.clone()),
            serde_json::json!({"a": 2, "b": "y"})
        );
        // the cell's levels override the grid's settings
        assert_eq!(
            Value::Object(p.overrides.clone()),
            serde_json::json!({"s": 1, "a": 2, "b": "y"})
        );
        assert!(p.id_path_is_template);
        assert_eq!(
            (p.path.as_str(), p.pos),
            ("layers[0].grid", Pos { line: 1, col: 1 })
        );
    }

    #[test]
    fn exclusions_drop_cells_and_inclusions_add_new_ones() {
        let (ps, lines) = expand_text(
            r#"{"backend": "t", "id": "g-{a}-{b}", "factors": {"a": [1, 2], "b": ["x", "y"]},
                "exclude": [{"a": 1, "b": "y"}, {"b": "x"}],
                "include": [{"a": 3, "b": "x"}, {"a": 2, "b": "y"}]}"#,
            100,
        );
        assert!(lines.is_empty(), "{lines:?}");
        assert_eq!(ids(&ps), ["g-2-y", "g-3-x"]);
        // an included cell sits where it is written
        assert_eq!(ps[1].pos, Pos { line: 3, col: 29 });
    }

    #[test]
    fn repetitions_add_a_rep_variable() {
        let (ps, lines) = expand_text(
            r#"{"backend": "t", "id": "g-{a}-r{rep}", "factors": {"a": ["x"]}, "repetitions": 3}"#,
            100,
        );
        assert!(lines.is_empty(), "{lines:?}");
        assert_eq!(ids(&ps), ["g-x-r0", "g-x-r1", "g-x-r2"]);
        assert_eq!(ps[2].factors["rep"], 2);
    }

    #[test]
    fn estimates_by_level_override_the_grid_estimate() {
        let (ps, lines) = expand_text(
            r#"{"backend": "t", "id": "g-{a}", "factors": {"a": ["s", "l"]}, "estimate": 10,
                "estimate_by": {"a": {"l": 20}}}"#,
            100,
        );
        assert!(lines.is_empty(), "{lines:?}");
        let est: Vec<_> = ps.iter().map(|p| p.estimate.unwrap().as_secs()).collect();
        assert_eq!(est, [10, 20]);
    }

    #[test]
    fn the_id_template_must_tell_cells_apart() {
        let (ps, lines) = expand_text(
            r#"{"backend": "t", "id": "g-{c}", "factors": {"a": [1, 2]}, "repetitions": 2}"#,
            100,
        );
        assert!(ps.is_empty());
        assert_eq!(
            lines,
            [
                "1:24 layers[0].grid.id: id template mentions {c}, which is not a factor",
                "1:24 layers[0].grid.id: id template does not mention factor {a}, so cells would share ids",
                "1:24 layers[0].grid.id: id template does not mention {rep} but the grid has repetitions",
            ]
        );
        let (_, lines) = expand_text(
            r#"{"backend": "t", "id": "g {a}", "factors": {"a": [1]}}"#,
            100,
        );
        assert_eq!(
            lines,
            ["1:24 layers[0].grid.id: the id template yields \"g 1\", which is not file-safe: it contains ' '"]
        );
        let (_, lines) = expand_text(
            r#"{"backend": "t", "id": "g-{a", "factors": {"a": [1]}}"#,
            100,
        );
        assert_eq!(
            lines,
            ["1:24 layers[0].grid.id: cannot build an id: an unclosed '{'"]
        );
    }

    #[test]
    fn factor_and_cell_problems_name_the_place() {
        let (ps, lines) = expand_text(
            r#"{"backend": "t", "id": "g-{a}-{b}", "factors": {"a": [1, 1.0, null], "b": [], "rep": 5},
 "exclude": [{"a": 7}, {}, {"z": 1}], "include": [{"b": 2}], "estimate_by": {"a": {"9": 1}, "q": {}}}"#,
            100,
        );
        assert!(ps.is_empty());
        assert_eq!(
            lines,
            [
                "1:58 layers[0].grid.factors.a[1]: level 1.0 appears twice",
                "1:63 layers[0].grid.factors.a[2]: level null is not a string, number or boolean",
                "1:75 layers[0].grid.factors.b: factor \"b\" has no levels",
                "1:86 layers[0].grid.factors.rep: factor name \"rep\" is not usable as a variable",
                "1:86 layers[0].grid.factors.rep: factor \"rep\" must be a list of levels, found a number",
                "1:24 layers[0].grid.id: id template mentions {b}, which is not a factor",
                "2:20 layers[0].grid.exclude[0].a: 7 is not a level of factor \"a\", so this exclusion matches nothing",
                "2:24 layers[0].grid.exclude[1]: an empty exclusion would drop every cell",
                "2:34 layers[0].grid.exclude[2].z: \"z\" is not a factor of this grid",
                "2:57 layers[0].grid.include[0].b: \"b\" is not a factor of this grid",
                "2:51 layers[0].grid.include[0]: included cell does not set factor \"a\"",
                "2:89 layers[0].grid.estimate_by.a.9: \"9\" is not a level of factor \"a\"",
                "2:98 layers[0].grid.estimate_by.q: \"q\" is not a factor of this grid",
            ]
        );
    }

    #[test]
    fn a_grid_larger_than_allowed_is_refused_whole() {
        let (ps, lines) = expand_text(
            r#"{"backend": "t", "id": "g-{a}-{b}", "factors": {"a": [1, 2, 3], "b": [1, 2]}}"#,
            5,
        );
        assert!(ps.is_empty());
        assert_eq!(
            lines,
            ["1:1 layers[0].grid: the grid has more than 5 cells"]
        );
    }
}
