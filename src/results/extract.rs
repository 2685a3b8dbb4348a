//! The plan's `extractors` over one doe-suite job folder
//! (`<exp>/run_<i>/rep_<j>/`): every file of every host folder goes to the
//! one extractor whose `file_regex` matches its name, as doe-suite's ETL
//! does, and becomes rows: the job's coordinates, its config (flattened
//! with `.`), and what the file held.

use std::path::Path;

use serde_json::{Map, Value};

use crate::plan::layout::{Extractor, ExtractorKind};

/// The coordinates of one job, the first columns of its rows.
pub struct Job<'a> {
    pub suite: &'a str,
    pub suite_id: &'a str,
    pub exp: &'a str,
    pub run: u64,
    pub rep: u64,
}

/// The file doe-suite's tree gains from infra (wall time, max RSS); it
/// needs no extractor of its own.
pub const RUNTIME_INFO: &str = "runtime_info.yaml";

/// Rows of a job, and the problems found (a file no extractor or two
/// extractors match, a file that does not parse, a non-empty error file).
#[derive(Debug, Default, PartialEq)]
pub struct Extracted {
    pub rows: Vec<Map<String, Value>>,
    pub errors: Vec<String>,
}

/// Flatten nested mappings into `a.b` keys (doe-suite's `_flatten_d`).
pub fn flatten(m: &Map<String, Value>) -> Map<String, Value> {
    fn walk(m: &Map<String, Value>, prefix: &str, out: &mut Map<String, Value>) {
        for (k, v) in m {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                Value::Object(inner) => walk(inner, &key, out),
                _ => {
                    out.insert(key, v.clone());
                }
            }
        }
    }
    let mut out = Map::new();
    walk(m, "", &mut out);
    out
}

fn applies(x: &Extractor, exp: &str) -> bool {
    x.experiments
        .as_ref()
        .is_none_or(|e| e.iter().any(|n| n == exp || n == "*"))
}

/// Python's `re.match`: the regex matches at the start of the name.
fn matches(regex: &str, name: &str) -> bool {
    regex_lite::Regex::new(&format!("^(?:{regex})")).is_ok_and(|r| r.is_match(name))
}

fn sorted_entries(dir: &Path, dirs: bool) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir() == dirs))
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| !n.starts_with('.'))
        .collect();
    v.sort();
    v
}

/// Extract every host folder of the job folder `rep_dir`.
pub fn extract_job(extractors: &[Extractor], rep_dir: &Path, job: &Job) -> Extracted {
    let mut out = Extracted::default();
    let config: Map<String, Value> = std::fs::read_to_string(rep_dir.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let mut config = config;
    config.remove("$CMD$");
    let config_flat = flatten(&config);
    for host_type in sorted_entries(rep_dir, true) {
        let ht_dir = rep_dir.join(&host_type);
        for (host_idx, host) in sorted_entries(&ht_dir, true).iter().enumerate() {
            let host_dir = ht_dir.join(host);
            for file in sorted_entries(&host_dir, false) {
                let path = host_dir.join(&file);
                let shown = format!(
                    "{}/run_{}/rep_{}/{host_type}/{host}/{file}",
                    job.exp, job.run, job.rep
                );
                let found: Vec<&Extractor> = extractors
                    .iter()
                    .filter(|x| {
                        applies(x, job.exp) && x.file_regex.iter().any(|r| matches(r, &file))
                    })
                    .collect();
                let x = match found.as_slice() {
                    [] if file == RUNTIME_INFO => continue,
                    [] => {
                        out.errors.push(format!("{shown}: matches no extractor (add one, or an `ignore` extractor for it)"));
                        continue;
                    }
                    [x] => *x,
                    _ => {
                        out.errors.push(format!(
                            "{shown}: matches several extractors ({})",
                            found
                                .iter()
                                .map(|x| format!("{:?}", x.kind).to_lowercase())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ));
                        continue;
                    }
                };
                match extract_file(x, &path) {
                    Ok(rows) => {
                        for d in rows {
                            let mut row = Map::new();
                            row.insert("suite_name".into(), Value::from(job.suite));
                            row.insert("suite_id".into(), Value::from(job.suite_id));
                            row.insert("exp_name".into(), Value::from(job.exp));
                            row.insert("run".into(), Value::from(job.run));
                            row.insert("rep".into(), Value::from(job.rep));
                            row.insert("host_type".into(), Value::from(host_type.clone()));
                            row.insert("host_idx".into(), Value::from(host_idx));
                            row.insert("source_file".into(), Value::from(file.clone()));
                            row.extend(config_flat.clone());
                            row.extend(flatten(&d));
                            out.rows.push(row);
                        }
                    }
                    Err(e) => out.errors.push(format!("{shown}: {e}")),
                }
            }
        }
    }
    out
}

fn objects(v: Value) -> Vec<Map<String, Value>> {
    match v {
        Value::Object(m) => vec![m],
        Value::Array(a) => a
            .into_iter()
            .map(|x| match x {
                Value::Object(m) => m,
                other => {
                    let mut m = Map::new();
                    m.insert("value".into(), other);
                    m
                }
            })
            .collect(),
        Value::Null => Vec::new(),
        other => {
            let mut m = Map::new();
            m.insert("value".into(), other);
            vec![m]
        }
    }
}

/// The rows of one file by its extractor.
pub fn extract_file(x: &Extractor, path: &Path) -> Result<Vec<Map<String, Value>>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
    match x.kind {
        ExtractorKind::Ignore => Ok(Vec::new()),
        ExtractorKind::Error => {
            if text.trim().is_empty() {
                Ok(Vec::new())
            } else {
                let first: String = text.lines().take(3).collect::<Vec<_>>().join(" | ");
                Err(format!("error file is not empty: {first}"))
            }
        }
        ExtractorKind::Json => serde_json::from_str::<Value>(&text)
            .map(objects)
            .map_err(|e| format!("not JSON: {e}")),
        ExtractorKind::Yaml => crate::import::yaml::parse(&text)
            .map(|d| objects(d.to_json()))
            .map_err(|e| format!("not YAML: {} at {}", e.message, e.pos)),
        ExtractorKind::Csv => {
            let mut b = csv::ReaderBuilder::new();
            b.delimiter(x.delimiter as u8)
                .has_headers(x.has_header && x.fieldnames.is_none())
                .flexible(true);
            let mut r = b.from_reader(text.as_bytes());
            let names: Vec<String> = match &x.fieldnames {
                Some(f) => f.clone(),
                None if x.has_header => r
                    .headers()
                    .map_err(|e| format!("not CSV: {e}"))?
                    .iter()
                    .map(str::to_string)
                    .collect(),
                None => Vec::new(),
            };
            let mut rows = Vec::new();
            for rec in r.records() {
                let rec = rec.map_err(|e| format!("not CSV: {e}"))?;
                let mut m = Map::new();
                for (i, cell) in rec.iter().enumerate() {
                    let name = names.get(i).cloned().unwrap_or_else(|| i.to_string());
                    m.insert(name, Value::from(cell));
                }
                rows.push(m);
            }
            Ok(rows)
        }
        ExtractorKind::Regex => {
            let p = x.pattern.as_deref().unwrap_or_default();
            let re = regex_lite::Regex::new(p).map_err(|e| format!("bad pattern: {e}"))?;
            let names: Vec<&str> = re.capture_names().flatten().collect();
            let mut rows = Vec::new();
            for line in text.lines() {
                if let Some(c) = re.captures(line) {
                    let mut m = Map::new();
                    for n in &names {
                        if let Some(v) = c.name(n) {
                            m.insert(n.to_string(), number_or_string(v.as_str()));
                        }
                    }
                    rows.push(m);
                }
            }
            Ok(rows)
        }
    }
}

fn number_or_string(s: &str) -> Value {
    if let Ok(i) = s.parse::<i64>() {
        return Value::from(i);
    }
    match s.parse::<f64>() {
        Ok(f) if f.is_finite() => Value::from(f),
        _ => Value::from(s),
    }
}

/// Rows as CSV: the columns in the order they first appear.
pub fn to_csv(rows: &[Map<String, Value>]) -> String {
    let mut cols: Vec<String> = Vec::new();
    for r in rows {
        for k in r.keys() {
            if !cols.contains(k) {
                cols.push(k.clone());
            }
        }
    }
    let mut w = csv::Writer::from_writer(Vec::new());
    let _ = w.write_record(&cols);
    for r in rows {
        let rec: Vec<String> = cols
            .iter()
            .map(|c| match r.get(c) {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(v) => v.to_string(),
            })
            .collect();
        let _ = w.write_record(&rec);
    }
    String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
}
