//! The building blocks of decoding, shared by `decode` (the plan's
//! sections) and `grid` (factor grids): typed readers for JSON values that
//! report every problem with its path, position and a fix, and the raw
//! pattern both produce before the plan-level settings are merged in.

use std::time::Duration;

use serde_json::{Map, Value};

use super::diag::{did_you_mean, Diags};
use super::json::{Node, Pos, Spanned};

/// An object of the plan with its path, for field-by-field decoding.
pub(crate) struct Obj<'a> {
    pub path: String,
    pub pos: Pos,
    pub fields: &'a [(String, Spanned)],
}

impl<'a> Obj<'a> {
    /// The value of field `key`, if present.
    pub fn get(&self, key: &str) -> Option<&'a Spanned> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The path of field `key`.
    pub fn child(&self, key: &str) -> String {
        child(&self.path, key)
    }

    /// A problem for every field not in `known`, with the closest known name.
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

    /// The value of field `key`, else a problem at the object suggesting
    /// `"key": example`.
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

/// The path of field `key` of the object at `path` (`""` is the plan).
pub(crate) fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// The object `v`, else a problem at `path`.
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

/// The string `v`, else a problem at `path`.
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

/// The boolean `v`, else a problem at `path`.
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

/// The finite number `v`, else a problem at `path` (a non-finite number
/// yields `None` without one: the parser refuses those already).
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

/// A number greater than 0 and at most `max`.
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
        Node::Str(s) => parse_duration(s).or_else(|| {
            // "-5m": say it is negative, not that it is unreadable
            let neg = s.trim().strip_prefix('-').and_then(parse_duration)?;
            Some(-neg).filter(|n| *n < 0.0)
        }),
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

/// Seconds in `s`: a plain number (`"90"`, `"1.5"`), or numbers with units
/// `s`, `m`, `h`, `d` one after another (`"1h30m"`); spaces around it are
/// allowed. `None` if it is neither. Exactly what the schema's
/// `DURATION_PATTERN` accepts (no sign, exponent, `inf` or bare `.`).
pub fn parse_duration(s: &str) -> Option<f64> {
    fn number(t: &str) -> Option<f64> {
        let digits = |x: &str| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit());
        let ok = match t.split_once('.') {
            Some((int, frac)) => digits(int) && digits(frac),
            None => digits(t),
        };
        if ok {
            t.parse().ok()
        } else {
            None
        }
    }
    let s = s.trim();
    if let Some(n) = number(s) {
        return Some(n);
    }
    if s.is_empty() {
        return None;
    }
    let mut total = 0.0;
    let mut rest = s;
    while !rest.is_empty() {
        let i = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let n = number(&rest[..i])?;
        let unit = match rest[i..].chars().next()? {
            's' => 1.0,
            'm' => 60.0,
            'h' => 3600.0,
            'd' => 86400.0,
            _ => return None,
        };
        total += n * unit;
        rest = &rest[i + 1..];
    }
    Some(total)
}

/// A non-negative whole number up to `max` (GPU counts may be 0).
pub(crate) fn whole(d: &mut Diags, v: &Spanned, path: &str, max: u64) -> Option<u32> {
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

/// A pattern as written in a layer's `patterns` or generated by its `grid`,
/// before the layer's and the plan's settings are merged in.
pub(crate) struct RawPattern {
    pub id: String,
    pub backend: String,
    pub overrides: Map<String, Value>,
    pub factors: Map<String, Value>,
    pub estimate: Option<Duration>,
    pub node_group: Option<String>,
    pub pos: Pos,
    pub path: String,
    /// The id came from a grid's id template (already checked there).
    pub id_path_is_template: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::json::parse;

    /// What `read` makes of the literal, and its diagnostics.
    fn read<T>(
        text: &str,
        read: impl Fn(&mut Diags, &Spanned) -> Option<T>,
    ) -> (Option<T>, Vec<String>) {
        let n = parse(text).unwrap();
        let mut d = Diags::default();
        let v = read(&mut d, &n);
        let lines = d
            .list
            .iter()
            .map(|x| format!("{} {}: {}", x.pos, x.path, x.message))
            .collect();
        (v, lines)
    }

    #[test]
    fn counts_are_positive_whole_numbers_up_to_a_maximum() {
        let c = |t: &str| read(t, |d, v| count(d, v, "n", 10));
        assert_eq!(c("3"), (Some(3), vec![]));
        assert_eq!(
            c("0"),
            (None, vec!["1:1 n: must be at least 1, found 0".into()])
        );
        assert_eq!(
            c("11"),
            (None, vec!["1:1 n: 11 is too large (at most 10)".into()])
        );
        assert_eq!(
            c("-2"),
            (None, vec!["1:1 n: must be positive, found -2".into()])
        );
        assert_eq!(
            c("-2.5"),
            (None, vec!["1:1 n: must be positive, found -2.5".into()])
        );
        assert_eq!(
            c("1.5"),
            (
                None,
                vec!["1:1 n: expected a whole number, found 1.5".into()]
            )
        );
        assert_eq!(
            c("\"2\""),
            (
                None,
                vec!["1:1 n: expected a whole number, found a string".into()]
            )
        );
    }

    #[test]
    fn whole_numbers_may_be_zero() {
        let w = |t: &str| read(t, |d, v| whole(d, v, "g", 8));
        assert_eq!(w("0"), (Some(0), vec![]));
        assert_eq!(
            w("9"),
            (
                None,
                vec!["1:1 g: expected a whole number from 0 to 8, found 9".into()]
            )
        );
    }

    #[test]
    fn amounts_are_positive_and_bounded() {
        let p = |t: &str| read(t, |d, v| positive(d, v, "usd", 100.0));
        assert_eq!(p("0.5"), (Some(0.5), vec![]));
        assert_eq!(
            p("0"),
            (
                None,
                vec!["1:1 usd: must be greater than 0, found 0".into()]
            )
        );
        assert_eq!(
            p("101"),
            (None, vec!["1:1 usd: 101 is too large (at most 100)".into()])
        );
        assert_eq!(
            p("true"),
            (
                None,
                vec!["1:1 usd: expected a number, found a boolean".into()]
            )
        );
    }

    #[test]
    fn scalars_say_what_they_found() {
        assert_eq!(
            read("\"x\"", |d, v| string(d, v, "s")),
            (Some("x".into()), vec![])
        );
        assert_eq!(
            read("[]", |d, v| string(d, v, "s")).1,
            ["1:1 s: expected a string, found an array"]
        );
        assert_eq!(
            read("false", |d, v| boolean(d, v, "b")),
            (Some(false), vec![])
        );
        assert_eq!(
            read("null", |d, v| boolean(d, v, "b")).1,
            ["1:1 b: expected true or false, found null"]
        );
    }

    #[test]
    fn durations_are_seconds_or_unit_strings() {
        assert_eq!(parse_duration("90"), Some(90.0));
        assert_eq!(parse_duration(" 1h30m "), Some(5400.0));
        assert_eq!(parse_duration("2d"), Some(172_800.0));
        assert_eq!(parse_duration("1.5m"), Some(90.0));
        for bad in ["", "m", "5x", "1h30", "h1"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
        let r = |t: &str| read(t, |d, v| duration(d, v, "e"));
        assert_eq!(r("\"2h\"").0, Some(Duration::from_secs(7200)));
        assert_eq!(r("-1").1, ["1:1 e: a duration cannot be negative"]);
        assert_eq!(r("\"-1\"").1, ["1:1 e: a duration cannot be negative"]);
        assert_eq!(r("\"soon\"").1, ["1:1 e: invalid duration \"soon\""]);
        assert_eq!(r("3.2e7").1, ["1:1 e: invalid duration 32000000.0"]);
    }

    #[test]
    fn objects_report_unknown_and_missing_fields() {
        let n = parse("{\"a\": {\n  \"x\": 1, \"yy\": 2}}").unwrap();
        let mut d = Diags::default();
        let top = obj(&mut d, &n, "").unwrap();
        let a = obj(&mut d, top.get("a").unwrap(), &top.child("a")).unwrap();
        assert_eq!(a.child("x"), "a.x");
        a.known(&mut d, &["x", "y"]);
        assert!(a.required(&mut d, "z", "1").is_none());
        assert!(top.required(&mut d, "b", "[]").is_none());
        assert!(obj(&mut d, a.get("x").unwrap(), "a.x").is_none());
        let got: Vec<_> = d
            .list
            .iter()
            .map(|x| {
                (
                    x.pos.to_string(),
                    x.path.as_str(),
                    x.message.as_str(),
                    x.hint.as_deref().unwrap_or(""),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (
                    "2:17".into(),
                    "a.yy",
                    "unknown field \"yy\"",
                    "did you mean \"y\"? known: x, y"
                ),
                (
                    "1:7".into(),
                    "a.z",
                    "missing required field \"z\" in a",
                    "add \"z\": 1"
                ),
                (
                    "1:1".into(),
                    "b",
                    "missing required field \"b\" in the plan",
                    "add \"b\": []"
                ),
                (
                    "2:8".into(),
                    "a.x",
                    "expected an object, found a number",
                    "write an object: { \"field\": value, ... }"
                ),
            ]
        );
    }
}
