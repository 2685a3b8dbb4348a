//! Hand-written patterns (a layer's `patterns`), and the content key that
//! identifies what a task is wherever it sits in the plan.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::plan::diag::{did_you_mean, unsafe_id_reason, Diags};
use crate::plan::fields::{count, duration, number, obj, string, RawPattern};
use crate::plan::json::Spanned;

/// Pattern fields with a meaning of their own; every other field is a
/// setting that overrides `common_settings`.
const PATTERN_RESERVED: &[&str] = &["id", "backend", "estimate", "node_group"];

/// Numeric settings a pattern may give, checked as counts.
const COUNT_SETTINGS: [&str; 5] = [
    "prompt_tokens",
    "concurrency",
    "max_tokens",
    "max_num_batched_tokens",
    "max_model_len",
];

/// One element of a layer's `patterns`. `legacy` plans (with
/// `infrastructure`) require `prompt_tokens` and `concurrency`; `groups`
/// are the node group names a pattern may pick.
pub(super) fn decode_pattern(
    d: &mut Diags,
    p: &Spanned,
    path: &str,
    legacy: bool,
    groups: &[String],
) -> Option<RawPattern> {
    let o = obj(d, p, path)?;
    let id = o
        .required(d, "id", "\"p15-L0-efa-4k-c1\"")
        .and_then(|v| string(d, v, &o.child("id")));
    let backend = o
        .required(d, "backend", "\"efa\"")
        .and_then(|v| string(d, v, &o.child("backend")));
    if let (Some(b), Some(v)) = (&backend, o.get("backend")) {
        if let Some(r) = unsafe_id_reason(b) {
            d.hint(
                &o.child("backend"),
                v.pos,
                format!("backend \"{b}\" cannot name a template file: {r}"),
                "use letters, digits, '-' and '_'",
            );
        }
    }
    if legacy {
        for f in ["prompt_tokens", "concurrency"] {
            o.required(d, f, "1");
        }
    }
    for f in COUNT_SETTINGS {
        if let Some(v) = o.get(f) {
            count(d, v, &o.child(f), 100_000_000);
        }
    }
    if let Some(v) = o.get("gpu_memory_utilization") {
        if let Some(f) = number(d, v, &o.child("gpu_memory_utilization")) {
            if !(f > 0.0 && f <= 1.0) {
                d.hint(
                    &o.child("gpu_memory_utilization"),
                    v.pos,
                    format!("{f} is not a fraction"),
                    "use a value in (0, 1], e.g. 0.9",
                );
            }
        }
    }
    let estimate = o
        .get("estimate")
        .and_then(|v| duration(d, v, &o.child("estimate")));
    let node_group = o.get("node_group").and_then(|v| {
        let g = string(d, v, &o.child("node_group"))?;
        if !groups.contains(&g) {
            d.hint(
                &o.child("node_group"),
                v.pos,
                format!("unknown node group \"{g}\""),
                did_you_mean(&g, groups.iter().map(String::as_str)),
            );
        }
        Some(g)
    });
    let mut overrides = Map::new();
    for (k, v) in o.fields {
        if !PATTERN_RESERVED.contains(&k.as_str()) {
            overrides.insert(k.clone(), v.to_value());
        }
    }
    Some(RawPattern {
        id: id?,
        backend: backend?,
        factors: overrides.clone(),
        overrides,
        estimate,
        node_group,
        pos: o.get("id").map(|v| v.pos).unwrap_or(p.pos),
        path: path.to_string(),
        id_path_is_template: false,
    })
}

/// Canonical JSON (sorted keys) for content hashes.
pub fn canonical(v: &Value) -> String {
    fn sort(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let sorted: BTreeMap<&String, Value> =
                    m.iter().map(|(k, v)| (k, sort(v))).collect();
                let mut out = Map::new();
                for (k, v) in sorted {
                    out.insert(k.clone(), v);
                }
                Value::Object(out)
            }
            Value::Array(a) => Value::Array(a.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    sort(v).to_string()
}

/// A task's content identity: a hash of its id, backend, variables and
/// partition, not of where it sits in the plan.
pub fn content_key(
    id: &str,
    backend: &str,
    vars: &Map<String, Value>,
    partition: Option<(u32, u32)>,
) -> String {
    let v = serde_json::json!({
        "id": id, "backend": backend, "vars": Value::Object(vars.clone()),
        "partition": partition.map(|(i, k)| vec![i, k]),
    });
    let digest = Sha256::digest(canonical(&v).as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::decode::testing::{hints, lines, node};

    fn decode(text: &str, legacy: bool) -> (Option<RawPattern>, Diags) {
        let n = node(text);
        let mut d = Diags::default();
        let groups = ["cpu".to_string(), "gpu".to_string()];
        let r = decode_pattern(&mut d, &n, "layers[0].patterns[0]", legacy, &groups);
        (r, d)
    }

    #[test]
    fn every_other_field_is_a_setting() {
        let (r, d) = decode(
            r#"{"id": "p1-a", "backend": "t", "estimate": "1m", "node_group": "gpu", "x": [1], "concurrency": 2, "prompt_tokens": 1}"#,
            true,
        );
        assert!(d.is_empty(), "{:?}", lines(&d));
        let r = r.unwrap();
        assert_eq!((r.id.as_str(), r.backend.as_str()), ("p1-a", "t"));
        assert_eq!(r.estimate, Some(std::time::Duration::from_secs(60)));
        assert_eq!(r.node_group.as_deref(), Some("gpu"));
        assert_eq!(
            r.overrides.keys().collect::<Vec<_>>(),
            ["x", "concurrency", "prompt_tokens"]
        );
        assert_eq!(r.factors, r.overrides);
        assert_eq!(r.pos, crate::plan::json::Pos { line: 1, col: 8 });
        assert!(!r.id_path_is_template);
    }

    #[test]
    fn pattern_problems_name_the_field() {
        let (r, d) = decode(
            r#"{"id": 5, "backend": "a/b", "max_tokens": 0, "gpu_memory_utilization": 1.5, "node_group": "gpo"}"#,
            true,
        );
        assert!(r.is_none());
        assert_eq!(
            lines(&d),
            [
                "1:8 layers[0].patterns[0].id: expected a string, found a number",
                "1:22 layers[0].patterns[0].backend: backend \"a/b\" cannot name a template file: it contains '/'",
                "1:1 layers[0].patterns[0].prompt_tokens: missing required field \"prompt_tokens\" in layers[0].patterns[0]",
                "1:1 layers[0].patterns[0].concurrency: missing required field \"concurrency\" in layers[0].patterns[0]",
                "1:43 layers[0].patterns[0].max_tokens: must be at least 1, found 0",
                "1:72 layers[0].patterns[0].gpu_memory_utilization: 1.5 is not a fraction",
                "1:91 layers[0].patterns[0].node_group: unknown node group \"gpo\"",
            ]
        );
        assert!(
            hints(&d)[6].starts_with("did you mean \"gpu\"?"),
            "{}",
            hints(&d)[6]
        );
        // outside the phase system, the serving settings are optional
        let (r, d) = decode(r#"{"id": "p1-a", "backend": "t"}"#, false);
        assert!(r.is_some() && d.is_empty());
    }

    #[test]
    fn content_keys_ignore_key_order_but_not_values() {
        let a: Map<String, Value> =
            serde_json::from_str(r#"{"x": 1, "y": {"b": 2, "a": 1}}"#).unwrap();
        let b: Map<String, Value> =
            serde_json::from_str(r#"{"y": {"a": 1, "b": 2}, "x": 1}"#).unwrap();
        let c: Map<String, Value> =
            serde_json::from_str(r#"{"x": 2, "y": {"a": 1, "b": 2}}"#).unwrap();
        assert_eq!(
            content_key("p", "t", &a, None),
            content_key("p", "t", &b, None)
        );
        assert_ne!(
            content_key("p", "t", &a, None),
            content_key("p", "t", &c, None)
        );
        assert_ne!(
            content_key("p", "t", &a, None),
            content_key("p", "t", &a, Some((0, 2)))
        );
        assert_eq!(content_key("p", "t", &a, None).len(), 16);
        assert_eq!(canonical(&Value::Object(a)), r#"{"x":1,"y":{"a":1,"b":2}}"#);
    }
}
