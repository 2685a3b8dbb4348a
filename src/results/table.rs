//! `infra results <phase>`: every task's declared table outputs gathered
//! into `results/<phase>/table.csv` with typed columns and a metadata file,
//! failures into `failed.csv`. Safe to run while the campaign goes on.

use std::io::Write;
use std::path::Path;

use serde_json::{Map, Value};

use crate::runner::run::csv_field;
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

/// A cell as CSV text; floats never in scientific notation.
pub fn cell_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (_, Some(u), _) => u.to_string(),
            (_, _, Some(f)) => format_float(f),
            _ => n.to_string(),
        },
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        other => other.to_string(),
    }
}

pub fn format_float(f: f64) -> String {
    if !f.is_finite() {
        return String::new();
    }
    // Rust's Display for f64 is the shortest exact form and never uses an exponent.
    let s = format!("{f}");
    if s.contains('.') {
        s
    } else {
        format!("{s}.0")
    }
}

/// Parse a CSV text (RFC 4180 quoting) into header + rows.
pub fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if quoted {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    field.push('"');
                    chars.next();
                } else {
                    quoted = false;
                }
            } else {
                field.push(c);
            }
        } else {
            match c {
                '"' => quoted = true,
                ',' => row.push(std::mem::take(&mut field)),
                '\r' => {}
                '\n' => {
                    row.push(std::mem::take(&mut field));
                    rows.push(std::mem::take(&mut row));
                }
                _ => field.push(c),
            }
        }
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push(row);
    }
    rows
}

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

/// The rows one output file contributes.
fn rows_of(path: &Path) -> Result<Vec<Map<String, Value>>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if path.extension().is_some_and(|e| e == "csv") {
        let mut rows = parse_csv(&text);
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let header = rows.remove(0);
        return Ok(rows
            .into_iter()
            .filter(|r| !(r.len() == 1 && r[0].is_empty()))
            .map(|r| {
                header
                    .iter()
                    .cloned()
                    .zip(r.iter().map(|c| csv_value(c)))
                    .collect()
            })
            .collect());
    }
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(m)) => Ok(vec![flatten(&m)]),
        Ok(Value::Array(items)) => Ok(items
            .iter()
            .filter_map(|i| i.as_object().map(flatten))
            .collect()),
        Ok(_) => Err(format!(
            "{} is neither a JSON object nor an array of objects",
            path.display()
        )),
        Err(e) => Err(format!("{} is not valid JSON: {e}", path.display())),
    }
}

/// Nested objects become dotted column names.
fn flatten(m: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, v) in m {
        match v {
            Value::Object(inner) => {
                for (ik, iv) in flatten(inner) {
                    out.insert(format!("{k}.{ik}"), iv);
                }
            }
            Value::Array(_) => {
                out.insert(k.clone(), Value::String(v.to_string()));
            }
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    out
}

pub struct Table {
    pub columns: Vec<(String, ColType, String)>,
    pub rows: Vec<Map<String, Value>>,
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
        "node time x price, split among the node's slots, USD",
    ),
];

pub fn build(results_dir: &Path, tasks: &[TaskDef]) -> Table {
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    let mut problems = Vec::new();
    let mut factor_cols: Vec<String> = Vec::new();
    let mut metric_cols: Vec<(String, String)> = Vec::new();
    let mut done = 0;
    for t in tasks {
        for k in t.factors.keys() {
            if !factor_cols.contains(k) {
                factor_cols.push(k.clone());
            }
        }
        let dir = results_dir.join(&t.id);
        let Ok(text) = std::fs::read_to_string(dir.join("runtime.json")) else {
            continue;
        };
        let Ok(rt) = serde_json::from_str::<Value>(&text) else {
            problems.push(format!("{}: runtime.json is damaged", t.id));
            continue;
        };
        let mut base = Map::new();
        base.insert("task".into(), Value::String(t.id.clone()));
        base.insert("layer".into(), Value::String(t.layer.clone()));
        for (k, v) in &t.factors {
            base.insert(k.clone(), v.clone());
        }
        if rt["status"] == "failed" {
            base.insert("attempts".into(), rt["attempts"].clone());
            base.insert("error".into(), rt["error"].clone());
            base.insert("ended".into(), rt["ended"].clone());
            failed.push(base);
            done += 1;
            continue;
        }
        done += 1;
        for k in ["attempts", "wall_seconds", "peak_rss_kb", "cost_usd"] {
            base.insert(k.into(), rt[k].clone());
        }
        let mut produced = false;
        for out in &t.table {
            match rows_of(&dir.join(out)) {
                Ok(rs) => {
                    for r in rs {
                        let mut row = base.clone();
                        for (k, v) in r {
                            let col = if base.contains_key(&k) {
                                format!("{out}.{k}")
                            } else {
                                k
                            };
                            if !metric_cols.iter().any(|(c, _)| *c == col) {
                                metric_cols.push((col.clone(), out.clone()));
                            }
                            row.insert(col, v);
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
    let mut columns: Vec<(String, ColType, String)> = Vec::new();
    let infer = |name: &str, rows: &[Map<String, Value>]| {
        rows.iter()
            .fold(None, |acc, r| {
                ColType::join(acc, r.get(name).and_then(ColType::of))
            })
            .unwrap_or(ColType::String)
    };
    for (c, d) in FIXED {
        columns.push((c.to_string(), ColType::String, d.to_string()));
    }
    for c in &factor_cols {
        columns.push((
            c.clone(),
            infer(c, &rows),
            format!("parameter \"{c}\" of the task"),
        ));
    }
    for (c, d) in RUNTIME {
        columns.push((c.to_string(), infer(c, &rows), d.to_string()));
    }
    for (c, from) in &metric_cols {
        columns.push((
            c.clone(),
            infer(c, &rows),
            format!("from the task's {from}"),
        ));
    }
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

pub fn write_csv(path: &Path, cols: &[String], rows: &[Map<String, Value>]) -> std::io::Result<()> {
    let tmp = path.with_extension("csv.tmp");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        writeln!(
            f,
            "{}",
            cols.iter()
                .map(|c| csv_field(c))
                .collect::<Vec<_>>()
                .join(",")
        )?;
        for r in rows {
            let line: Vec<String> = cols
                .iter()
                .map(|c| csv_field(&r.get(c).map(cell_text).unwrap_or_default()))
                .collect();
            writeln!(f, "{}", line.join(","))?;
        }
        f.flush()?;
    }
    std::fs::rename(tmp, path)
}
