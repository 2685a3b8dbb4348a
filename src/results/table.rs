//! `infra results <phase>`: every task's declared table outputs gathered
//! into `results/<phase>/table.csv` with typed columns and a metadata file,
//! failures into `failed.csv`. Safe to run while the campaign goes on.
//!
//! Rows are dense vectors indexed like the columns (a column's index is
//! found in a hash map): a 3,000-column output costs a lookup per cell,
//! not a scan of the columns.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use serde_json::{Map, Value};

use crate::tasks::TaskDef;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ColType {
    Integer,
    Float,
    Boolean,
    String,
}

impl ColType {
    pub fn name(self) -> &'static str {
        match self {
            ColType::Integer => "integer",
            ColType::Float => "float",
            ColType::Boolean => "boolean",
            ColType::String => "string",
        }
    }

    fn of(v: &Value) -> Option<ColType> {
        match v {
            Value::Null => None,
            Value::Bool(_) => Some(ColType::Boolean),
            Value::Number(n) if n.is_i64() || n.is_u64() => Some(ColType::Integer),
            Value::Number(_) => Some(ColType::Float),
            _ => Some(ColType::String),
        }
    }

    /// The narrowest type that holds both.
    fn join(a: Option<ColType>, b: Option<ColType>) -> Option<ColType> {
        match (a, b) {
            (None, x) | (x, None) => x,
            (Some(x), Some(y)) if x == y => Some(x),
            (Some(ColType::Integer), Some(ColType::Float))
            | (Some(ColType::Float), Some(ColType::Integer)) => Some(ColType::Float),
            _ => Some(ColType::String),
        }
    }
}

pub use super::csv::{cell_text, format_float};

fn csv_value(s: &str) -> Value {
    if s.is_empty() {
        return Value::Null;
    }
    if let Ok(i) = s.parse::<i64>() {
        return Value::from(i);
    }
    if let Ok(f) = s.parse::<f64>() {
        if f.is_finite() {
            return Value::from(f);
        }
    }
    match s {
        "true" | "True" => Value::Bool(true),
        "false" | "False" => Value::Bool(false),
        _ => Value::String(s.to_string()),
    }
}

/// One output file read: its column names (in order of first
/// appearance), its rows as (name index, value), and the keys that two
/// sources flattened to (column, first source, second source, the column
/// the second went to).
#[derive(Default)]
struct OutTable {
    names: Vec<String>,
    index: HashMap<String, usize>,
    rows: Vec<Vec<(usize, Value)>>,
    collisions: Vec<(String, String, String, String)>,
}

impl OutTable {
    fn intern(&mut self, name: String) -> usize {
        if let Some(i) = self.index.get(&name) {
            return *i;
        }
        self.index.insert(name.clone(), self.names.len());
        self.names.push(name);
        self.names.len() - 1
    }

    /// A flattened row; its columns join the file's.
    fn push(&mut self, flat: Flat) {
        for c in flat.collisions {
            if !self.collisions.iter().any(|x| x.0 == c.0 && x.3 == c.3) {
                self.collisions.push(c);
            }
        }
        let row = flat
            .cells
            .into_iter()
            .map(|(name, v)| (self.intern(name), v))
            .collect();
        self.rows.push(row);
    }
}

/// The rows one output file contributes.
fn rows_of(path: &Path) -> Result<OutTable, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let text = super::csv::strip_bom(&text);
    let mut out = OutTable::default();
    if path.extension().is_some_and(|e| e == "csv") {
        let (header, rows) = super::csv::parse(text)
            .map_err(|e| format!("{} is not valid CSV: {e}", path.display()))?;
        // a header named twice: the second column is kept as `<name>#2`
        let mut flat = Flat::default();
        for (i, name) in header.iter().enumerate() {
            flat.put(name.clone(), format!("column {}", i + 1), Value::Null);
        }
        out.collisions = flat.collisions;
        out.names = flat.cells.into_iter().map(|(n, _)| n).collect();
        out.rows = rows
            .into_iter()
            .map(|r| {
                r.iter()
                    .take(header.len())
                    .enumerate()
                    .map(|(i, cell)| (i, csv_value(cell)))
                    .collect()
            })
            .collect();
        return Ok(out);
    }
    let mut one = |m: &Map<String, Value>| {
        let mut flat = Flat::default();
        flatten(m, "", &mut flat);
        out.push(flat);
    };
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => one(&m),
        Ok(Value::Array(items)) => items.iter().filter_map(Value::as_object).for_each(one),
        Ok(_) => {
            return Err(format!(
                "{} is neither a JSON object nor an array of objects",
                path.display()
            ))
        }
        Err(e) => return Err(format!("{} is not valid JSON: {e}", path.display())),
    }
    Ok(out)
}

/// A row being flattened: a second key that lands on a column already
/// taken keeps its value under `<column>#2` (`#3`, ...), and is reported.
#[derive(Default)]
struct Flat {
    cells: Vec<(String, Value)>,
    /// column -> (index in cells, source)
    seen: HashMap<String, (usize, String)>,
    collisions: Vec<(String, String, String, String)>,
}

impl Flat {
    fn put(&mut self, col: String, source: String, v: Value) {
        if let Some((_, first)) = self.seen.get(&col) {
            let first = first.clone();
            let mut n = 2;
            let mut alt = format!("{col}#{n}");
            while self.seen.contains_key(&alt) {
                n += 1;
                alt = format!("{col}#{n}");
            }
            self.collisions
                .push((col, first, source.clone(), alt.clone()));
            self.seen.insert(alt.clone(), (self.cells.len(), source));
            self.cells.push((alt, v));
            return;
        }
        self.seen.insert(col.clone(), (self.cells.len(), source));
        self.cells.push((col, v));
    }
}

/// Nested objects become dotted column names; the source of each is its
/// JSON pointer (`/a/b` for `{"a":{"b":..}}`, `/a.b` for `{"a.b":..}`).
fn flatten(m: &Map<String, Value>, pointer: &str, out: &mut Flat) {
    flatten_into(m, "", pointer, out)
}

fn flatten_into(m: &Map<String, Value>, prefix: &str, pointer: &str, out: &mut Flat) {
    for (k, v) in m {
        let col = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        let ptr = format!("{pointer}/{}", k.replace('~', "~0").replace('/', "~1"));
        match v {
            Value::Object(inner) => flatten_into(inner, &col, &ptr, out),
            Value::Array(_) => out.put(col, ptr, Value::String(v.to_string())),
            _ => out.put(col, ptr, v.clone()),
        }
    }
}

pub struct Table {
    pub columns: Vec<(String, ColType, String)>,
    /// Cells in the order of `columns`; a row may be shorter (the rest is empty).
    pub rows: Vec<Vec<Value>>,
    pub failed: Vec<Map<String, Value>>,
    pub partial: bool,
    pub tasks: usize,
    pub done: usize,
    pub problems: Vec<String>,
}

const FIXED: &[(&str, &str)] = &[
    ("task", "pattern id of the task"),
    ("layer", "layer the task belongs to"),
];
pub const RUNTIME: &[(&str, &str)] = &[
    ("attempts", "attempts the task took"),
    (
        "wall_seconds",
        "wall time of the successful attempt, seconds",
    ),
    (
        "peak_rss_kb",
        "peak resident memory of the task's processes, KiB",
    ),
    (
        "cost_usd",
        "node time x price, split among the node's slots, USD; on the task's first row only, so that the column sums to the cost",
    ),
];

/// The columns of the table, by name, in order.
#[derive(Default)]
struct Cols {
    names: Vec<(String, String)>,
    index: HashMap<String, usize>,
}

impl Cols {
    fn add(&mut self, name: &str, description: String) -> usize {
        if let Some(i) = self.index.get(name) {
            return *i;
        }
        self.index.insert(name.to_string(), self.names.len());
        self.names.push((name.to_string(), description));
        self.names.len() - 1
    }
}

fn from(out: &str) -> String {
    format!("from the task's {out}")
}

fn set(row: &mut Vec<Value>, i: usize, v: Value) {
    if row.len() <= i {
        row.resize(i + 1, Value::Null);
    }
    row[i] = v;
}

/// The plan's settings a task's row shows beside its factors, by layer:
/// `common_settings` and the layer's `settings` (their names; the values
/// are the task's, after its own overrides).
pub type Settings = HashMap<String, Vec<String>>;

/// The columns `settings` gives a task: those its factors do not already.
pub(super) fn settings_of<'a>(
    t: &'a TaskDef,
    settings: &'a Settings,
) -> impl Iterator<Item = &'a String> {
    settings
        .get(&t.layer)
        .into_iter()
        .flatten()
        .filter(|k| !t.factors.contains_key(k.as_str()) && t.vars.contains_key(k.as_str()))
}

/// The same value: equal, or the same number however written (`4000`,
/// `4000.0`).
fn same(a: &Value, b: &Value) -> bool {
    a == b || matches!((a.as_f64(), b.as_f64()), (Some(x), Some(y)) if x == y)
}

pub fn build(results_dir: &Path, tasks: &[TaskDef], settings: &Settings) -> Table {
    let mut cols = Cols::default();
    for (c, d) in FIXED {
        cols.add(c, d.to_string());
    }
    for t in tasks {
        for k in t.factors.keys() {
            cols.add(k, format!("parameter \"{k}\" of the task"));
        }
    }
    for t in tasks {
        for k in settings_of(t, settings) {
            cols.add(
                k,
                format!("setting \"{k}\" of the plan (common_settings or the layer's settings)"),
            );
        }
    }
    for (c, d) in RUNTIME {
        cols.add(c, d.to_string());
    }
    let n_base = cols.names.len();
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    let mut problems = Vec::new();
    // one warning per output file and column, not per row
    let mut reported: BTreeSet<(String, String)> = BTreeSet::new();
    let mut done = 0;
    for t in tasks {
        let dir = results_dir.join(&t.id);
        let Ok(text) = std::fs::read_to_string(dir.join("runtime.json")) else {
            continue;
        };
        let Ok(rt) = serde_json::from_str::<Value>(&text) else {
            problems.push(format!("{}: runtime.json is damaged", t.id));
            continue;
        };
        done += 1;
        if rt["status"] == "failed" {
            failed.push(super::failed::row(t, &rt, settings, &dir));
            continue;
        }
        let mut base = vec![Value::Null; n_base];
        base[0] = Value::String(t.id.clone());
        base[1] = Value::String(t.layer.clone());
        for (k, v) in &t.factors {
            base[cols.index[k.as_str()]] = v.clone();
        }
        for k in settings_of(t, settings) {
            base[cols.index[k.as_str()]] = t.vars[k.as_str()].clone();
        }
        for (k, _) in RUNTIME {
            base[cols.index[*k]] = rt[*k].clone();
        }
        let mut produced = false;
        for out in &t.table {
            match rows_of(&dir.join(out)) {
                Ok(file) => {
                    for (col, first, second, alt) in &file.collisions {
                        if reported.insert((out.clone(), col.clone())) {
                            problems.push(format!(
                                "{}: {out}: {first} and {second} both flatten to column \"{col}\"; the second is kept as \"{alt}\"",
                                t.id
                            ));
                        }
                    }
                    if file.rows.is_empty() {
                        continue;
                    }
                    // the file's columns as the table's, resolved once per file;
                    // a column named like a parameter or setting that only
                    // repeats its value is that column, else `<file>.<key>`
                    let repeats = |j: usize, i: usize| {
                        file.rows
                            .iter()
                            .flatten()
                            .filter(|(n, _)| *n == j)
                            .all(|(_, v)| same(v, &base[i]))
                    };
                    let at: Vec<usize> = file
                        .names
                        .iter()
                        .enumerate()
                        .map(|(j, k)| {
                            if let Some(&i) = cols.index.get(k.as_str()).filter(|i| **i < n_base) {
                                if repeats(j, i) {
                                    i
                                } else {
                                    cols.add(&format!("{out}.{k}"), from(out))
                                }
                            } else if let Some(i) = cols.index.get(k.as_str()) {
                                *i
                            } else {
                                cols.add(k, from(out))
                            }
                        })
                        .collect();
                    for r in file.rows {
                        let mut row = base.clone();
                        // a task's cost once, not once per row of its output
                        if produced {
                            row[cols.index["cost_usd"]] = Value::Null;
                        }
                        for (i, v) in r {
                            set(&mut row, at[i], v);
                        }
                        rows.push(row);
                        produced = true;
                    }
                }
                Err(e) => problems.push(format!("{}: {e}", t.id)),
            }
        }
        if !produced {
            rows.push(base);
        }
    }
    let infer = |i: usize| {
        rows.iter()
            .fold(None, |acc, r: &Vec<Value>| {
                ColType::join(acc, r.get(i).and_then(ColType::of))
            })
            .unwrap_or(ColType::String)
    };
    let columns = cols
        .names
        .into_iter()
        .enumerate()
        .map(|(i, (name, d))| {
            let t = if i < FIXED.len() {
                ColType::String
            } else {
                infer(i)
            };
            (name, t, d)
        })
        .collect();
    Table {
        columns,
        rows,
        failed,
        partial: done < tasks.len(),
        tasks: tasks.len(),
        done,
        problems,
    }
}

/// A value in its column's type (an integer column read as 3.0 stays 3).
pub fn typed(v: Option<&Value>, t: ColType) -> Value {
    match (v, t) {
        (None, _) | (Some(Value::Null), _) => Value::Null,
        (Some(v), ColType::String) if !v.is_string() => Value::String(cell_text(v)),
        (Some(v), _) => v.clone(),
    }
}
