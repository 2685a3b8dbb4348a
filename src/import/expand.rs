//! A doe-suite experiment's runs: its factors expanded (the level lists of
//! `factor_levels`, then the cross product of `$FACTOR$: [..]`, in
//! doe-suite's order), `except_filters` applied, and `[% ... %]` rendered
//! the way doe-suite's Jinja renders it (Python's `str` of the value:
//! `True`, `None`, `['a', 1]`).

use serde_json::{Map, Value};

use super::design::{Cmds, Experiment};

/// One run of an experiment (repeated `n_repetitions` times).
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub index: usize,
    /// The run's config, rendered, without `$CMD$`.
    pub config: Map<String, Value>,
    /// Per host type, per instance: the rendered commands.
    pub cmds: Vec<(String, Vec<Cmds>)>,
}

impl Run {
    /// The run's `config.json`, byte for byte as doe-suite writes it
    /// (`json.dump(cfg, indent=4, sort_keys=True)`, with `$CMD$`).
    pub fn config_json(&self) -> String {
        let mut all = self.config.clone();
        let mut cmd = Map::new();
        for (ht, per) in &self.cmds {
            let list = per
                .iter()
                .map(|c| {
                    Value::Object(
                        c.iter()
                            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                            .collect(),
                    )
                })
                .collect();
            cmd.insert(ht.clone(), Value::Array(list));
        }
        all.insert("$CMD$".into(), Value::Object(cmd));
        let mut out = String::new();
        py_json(&Value::Object(all), 0, &mut out);
        out
    }
}

/// Why an experiment's runs cannot be rendered.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderProblem {
    pub experiment: String,
    pub run: usize,
    /// The string that holds the expression.
    pub text: String,
    /// The expression as written (`[% my_run.x %]`), to find it in the file.
    pub expr: String,
    pub message: String,
    pub hint: String,
}

/// ansible's `merge_hash(a, b, recursive=True)`: `b` wins, mappings merge.
fn merge(a: &Map<String, Value>, b: &Map<String, Value>) -> Map<String, Value> {
    let mut out = a.clone();
    for (k, v) in b {
        match (out.get_mut(k), v) {
            (Some(Value::Object(x)), Value::Object(y)) => {
                let m = merge(x, y);
                *x = m;
            }
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    out
}

fn is_subset(sub: &Map<String, Value>, main: &Map<String, Value>) -> bool {
    sub.iter().all(|(k, v)| match (main.get(k), v) {
        (None, _) => false,
        (Some(Value::Object(m)), Value::Object(s)) => is_subset(s, m),
        (Some(Value::Object(_)), _) => false,
        (Some(m), _) => py_eq(m, v),
    })
}

/// Python's `==` on loaded YAML values (`1 == 1.0`, `True == 1`).
fn py_eq(a: &Value, b: &Value) -> bool {
    let num = |v: &Value| match v {
        Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        Value::Number(n) => n.as_f64(),
        _ => None,
    };
    match (num(a), num(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn insert_at(m: &mut Map<String, Value>, parent: &[String], key: &str, v: Value) {
    let mut d = m;
    for k in parent {
        let e = d
            .entry(k.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if !e.is_object() {
            *e = Value::Object(Map::new());
        }
        d = e.as_object_mut().expect("made an object above");
    }
    d.insert(key.to_string(), v);
}

/// doe-suite's `extract_cross_product`: the base with `$FACTOR$` where a
/// cross factor was, and the cross product of the cross factors' levels
/// (first factor slowest).
fn extract_cross_product(
    base_in: &Map<String, Value>,
) -> (Map<String, Value>, Vec<Map<String, Value>>) {
    let mut base = Map::new();
    let mut factors: Vec<(String, Vec<String>, Vec<Value>)> = Vec::new();
    fn walk(
        m: &Map<String, Value>,
        path: &mut Vec<String>,
        base: &mut Map<String, Value>,
        factors: &mut Vec<(String, Vec<String>, Vec<Value>)>,
    ) {
        for (k, v) in m {
            match v {
                Value::Object(inner) => {
                    path.push(k.clone());
                    walk(inner, path, base, factors);
                    path.pop();
                }
                _ if k == "$FACTOR$" => {
                    let (name, parent) = match path.split_last() {
                        Some((n, p)) => (n.clone(), p.to_vec()),
                        None => continue,
                    };
                    insert_at(base, &parent, &name, Value::String("$FACTOR$".into()));
                    let levels = v.as_array().cloned().unwrap_or_default();
                    factors.push((name, parent, levels));
                }
                _ => insert_at(base, path, k, v.clone()),
            }
        }
    }
    walk(base_in, &mut Vec::new(), &mut base, &mut factors);
    let mut cells: Vec<Map<String, Value>> = vec![Map::new()];
    for (name, parent, levels) in &factors {
        let mut next = Vec::new();
        for cell in &cells {
            for level in levels {
                let mut c = cell.clone();
                insert_at(&mut c, parent, name, level.clone());
                next.push(c);
            }
        }
        cells = next;
    }
    (base, cells)
}

/// The runs of `e`, in doe-suite's order and numbering.
pub fn runs(e: &Experiment) -> Result<Vec<Run>, Box<RenderProblem>> {
    let (base, cross) = extract_cross_product(&e.base);
    let levels = if e.factor_levels.is_empty() {
        vec![Map::new()]
    } else {
        e.factor_levels.clone()
    };
    let mut out = Vec::new();
    for level in &levels {
        for cell in &cross {
            let level = merge(level, cell);
            if e.except_filters.iter().any(|f| is_subset(f, &level)) {
                continue;
            }
            let config = merge(&base, &level);
            let cmds = e
                .host_types
                .iter()
                .map(|h| (h.name.clone(), h.cmds.clone()))
                .collect();
            let mut run = Run {
                index: out.len(),
                config,
                cmds,
            };
            render_run(&e.name, &mut run)?;
            out.push(run);
        }
    }
    Ok(out)
}

const MAX_PASSES: usize = 20;

fn render_run(exp: &str, run: &mut Run) -> Result<(), Box<RenderProblem>> {
    for _ in 0..MAX_PASSES {
        let mut pending = false;
        visit_strings(&run.config, &mut |s| pending |= has_expr(s));
        for (_, per) in &run.cmds {
            for c in per {
                for (_, s) in c {
                    pending |= has_expr(s);
                }
            }
        }
        if !pending {
            return Ok(());
        }
        let snapshot = run.config.clone();
        let mut err = None;
        let mut f = |s: &mut String| {
            if err.is_some() {
                return;
            }
            match render(s, &snapshot, run.index) {
                Ok(r) => *s = r,
                Err((message, hint, expr)) => {
                    err = Some(RenderProblem {
                        experiment: exp.to_string(),
                        run: run.index,
                        text: s.clone(),
                        expr,
                        message,
                        hint,
                    })
                }
            }
        };
        map_strings(&mut run.config, &mut f);
        for (_, per) in &mut run.cmds {
            for c in per {
                for (_, s) in c {
                    f(s);
                }
            }
        }
        if let Some(e) = err {
            return Err(Box::new(e));
        }
    }
    Err(Box::new(RenderProblem {
        experiment: exp.to_string(),
        run: run.index,
        text: String::new(),
        expr: String::new(),
        message: format!("`[% ... %]` still present after {MAX_PASSES} rounds of rendering"),
        hint: "two config values refer to each other; make one of them a plain value".into(),
    }))
}

fn has_expr(s: &str) -> bool {
    s.contains("[%") && s.contains("%]")
}

fn visit_strings(m: &Map<String, Value>, f: &mut impl FnMut(&str)) {
    fn v(x: &Value, f: &mut impl FnMut(&str)) {
        match x {
            Value::String(s) => f(s),
            Value::Array(a) => a.iter().for_each(|i| v(i, f)),
            Value::Object(o) => o.values().for_each(|i| v(i, f)),
            _ => {}
        }
    }
    m.values().for_each(|x| v(x, f));
}

fn map_strings(m: &mut Map<String, Value>, f: &mut impl FnMut(&mut String)) {
    fn v(x: &mut Value, f: &mut impl FnMut(&mut String)) {
        match x {
            Value::String(s) => f(s),
            Value::Array(a) => a.iter_mut().for_each(|i| v(i, f)),
            Value::Object(o) => o.values_mut().for_each(|i| v(i, f)),
            _ => {}
        }
    }
    m.values_mut().for_each(|x| v(x, f));
}

/// Render every `[% expr %]` in `s`.
fn render(
    s: &str,
    my_run: &Map<String, Value>,
    run: usize,
) -> Result<String, (String, String, String)> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("[%") {
        let Some(j) = rest[i + 2..].find("%]") else {
            break;
        };
        out.push_str(&rest[..i]);
        let expr = rest[i + 2..i + 2 + j].trim();
        let raw = &rest[i..i + 2 + j + 2];
        out.push_str(&eval(expr, my_run, run).map_err(|(m, h)| (m, h, raw.to_string()))?);
        rest = &rest[i + 2 + j + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `my_run.a.b`, `my_run['a']`, `my_run.list.0`, or `run`.
fn eval(expr: &str, my_run: &Map<String, Value>, run: usize) -> Result<String, (String, String)> {
    let unsupported = || {
        (
            format!("`[% {expr} %]` is not supported by the import"),
            "the import renders `[% my_run.<path> %]` and `[% run %]`; for another host's address use $INFRA_NODE_<rank>_ADDR in the command, for anything else write the value".to_string(),
        )
    };
    if expr == "run" {
        return Ok(run.to_string());
    }
    let Some(mut rest) = expr.strip_prefix("my_run") else {
        return Err(unsupported());
    };
    let mut cur = Value::Object(my_run.clone());
    let mut shown = String::from("my_run");
    while !rest.is_empty() {
        let key;
        if let Some(r) = rest.strip_prefix('.') {
            let end = r
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(r.len());
            if end == 0 {
                return Err(unsupported());
            }
            key = r[..end].to_string();
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let Some(end) = r.find(']') else {
                return Err(unsupported());
            };
            let inner = r[..end].trim();
            key = inner
                .strip_prefix('\'')
                .and_then(|x| x.strip_suffix('\''))
                .or_else(|| inner.strip_prefix('"').and_then(|x| x.strip_suffix('"')))
                .unwrap_or(inner)
                .to_string();
            rest = &r[end + 1..];
        } else {
            return Err(unsupported());
        }
        let next = match &cur {
            Value::Object(o) => o.get(&key).cloned(),
            Value::Array(a) => key.parse::<usize>().ok().and_then(|i| a.get(i).cloned()),
            _ => None,
        };
        shown = format!("{shown}.{key}");
        cur = next.ok_or_else(|| {
            (
                format!("`{shown}` is undefined (in `[% {expr} %]`)"),
                "define it in base_experiment (or $SUITE_VARS$), or fix the name".to_string(),
            )
        })?;
    }
    Ok(py_str(&cur))
}

/// Python's `str()` of a loaded YAML value.
pub fn py_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        _ => py_repr(v),
    }
}

/// Python's `repr()` of a loaded YAML value.
pub fn py_repr(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => i.to_string(),
            (_, Some(u)) => u.to_string(),
            _ => py_float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => py_str_repr(s),
        Value::Array(a) => format!("[{}]", a.iter().map(py_repr).collect::<Vec<_>>().join(", ")),
        Value::Object(o) => format!(
            "{{{}}}",
            o.iter()
                .map(|(k, v)| format!("{}: {}", py_str_repr(k), py_repr(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn py_str_repr(s: &str) -> String {
    let q = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::new();
    out.push(q);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == q => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push(q);
    out
}

/// Python's `repr(float)`: the shortest digits that read back, fixed
/// notation for exponents -4..16, else `1e-05` style.
pub fn py_float(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf".into() } else { "-inf".into() };
    }
    let sci = format!("{f:e}"); // e.g. "-1.2345e-5", "1e0"
    let (mant, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let neg = mant.starts_with('-');
    let digits: String = mant.chars().filter(|c| c.is_ascii_digit()).collect();
    let sign = if neg { "-" } else { "" };
    if (-4..16).contains(&exp) {
        let n = digits.len() as i32;
        let body = if exp < 0 {
            format!("0.{}{}", "0".repeat((-exp - 1) as usize), digits)
        } else if exp + 1 >= n {
            format!("{}{}.0", digits, "0".repeat((exp + 1 - n) as usize))
        } else {
            let (a, b) = digits.split_at((exp + 1) as usize);
            format!("{a}.{b}")
        };
        format!("{sign}{body}")
    } else {
        let m = if digits.len() > 1 {
            format!("{}.{}", &digits[..1], &digits[1..])
        } else {
            digits.clone()
        };
        let es = if exp < 0 { '-' } else { '+' };
        format!("{sign}{m}e{es}{:02}", exp.abs())
    }
}

/// Python's `json.dump(v, indent=4, sort_keys=True)` (ASCII only).
fn py_json(v: &Value, depth: usize, out: &mut String) {
    let pad = |d: usize| "    ".repeat(d);
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => out.push_str(&i.to_string()),
            (_, Some(u)) => out.push_str(&u.to_string()),
            _ => out.push_str(&py_float(n.as_f64().unwrap_or(f64::NAN))),
        },
        Value::String(s) => py_json_str(s, out),
        Value::Array(a) if a.is_empty() => out.push_str("[]"),
        Value::Object(o) if o.is_empty() => out.push_str("{}"),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                out.push_str(if i == 0 { "\n" } else { ",\n" });
                out.push_str(&pad(depth + 1));
                py_json(x, depth + 1, out);
            }
            out.push('\n');
            out.push_str(&pad(depth));
            out.push(']');
        }
        Value::Object(o) => {
            let mut keys: Vec<&String> = o.keys().collect();
            // Python sorts str keys by code point; UTF-8 byte order agrees
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                out.push_str(if i == 0 { "\n" } else { ",\n" });
                out.push_str(&pad(depth + 1));
                py_json_str(k, out);
                out.push_str(": ");
                py_json(&o[k.as_str()], depth + 1, out);
            }
            out.push('\n');
            out.push_str(&pad(depth));
            out.push('}');
        }
    }
}

fn py_json_str(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for u in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{:04x}", u));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn floats_print_as_python_repr() {
        for (f, s) in [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (1e16, "1e+16"),
            (123.456, "123.456"),
            (-2.5e-7, "-2.5e-07"),
            (1234567890123456.0, "1234567890123456.0"),
            (0.0, "0.0"),
        ] {
            assert_eq!(py_float(f), s, "{f}");
        }
    }

    #[test]
    fn values_print_as_python_str() {
        assert_eq!(py_str(&json!(true)), "True");
        assert_eq!(py_str(&json!(false)), "False");
        assert_eq!(py_str(&json!(null)), "None");
        assert_eq!(py_str(&json!("x")), "x");
        assert_eq!(py_str(&json!([1, "a", true, 0.5])), "[1, 'a', True, 0.5]");
        assert_eq!(py_str(&json!({"k": "it's"})), "{'k': \"it's\"}");
    }

    #[test]
    fn config_json_is_sorted_with_four_spaces() {
        let run = Run {
            index: 0,
            config: json!({"b": 1, "a": {"y": 1e-5, "x": "é"}})
                .as_object()
                .unwrap()
                .clone(),
            cmds: vec![("small".into(), vec![vec![("main".into(), "echo".into())]])],
        };
        assert_eq!(
            run.config_json(),
            "{\n    \"$CMD$\": {\n        \"small\": [\n            {\n                \"main\": \"echo\"\n            }\n        ]\n    },\n    \"a\": {\n        \"x\": \"\\u00e9\",\n        \"y\": 1e-05\n    },\n    \"b\": 1\n}"
        );
    }
}
