//! `estimate` (how long tasks, provisioning and setup take, for the cost
//! estimate and the schedule) and `retry` (attempts and backoff).

use std::collections::HashMap;
use std::time::Duration;

use crate::plan::diag::{did_you_mean, Diags};
use crate::plan::fields::{count, duration, obj, Obj};
use crate::plan::json::Pos;
use crate::plan::model::{Estimates, Layer, RetryPolicy};

/// Estimates by pattern or layer id: the duration, where it is written and
/// its path (for the check that the id exists).
pub(super) type ById = HashMap<String, (Duration, Pos, String)>;

#[derive(Default)]
pub(super) struct EstimateSection {
    pub plan: Estimates,
    pub patterns: ById,
    pub layers: ById,
}

const ESTIMATE_FIELDS: &[&str] = &[
    "default",
    "provisioning",
    "setup",
    "duration",
    "patterns",
    "layers",
];

pub(super) fn estimates(d: &mut Diags, top: &Obj) -> EstimateSection {
    let mut out = EstimateSection::default();
    let Some(v) = top.get("estimate") else {
        return out;
    };
    let Some(o) = obj(d, v, "estimate") else {
        return out;
    };
    o.known(d, ESTIMATE_FIELDS);
    let mut field = |name: &str| {
        o.get(name)
            .and_then(|v| duration(d, v, &format!("estimate.{name}")))
    };
    out.plan = Estimates {
        default: field("default"),
        provisioning: field("provisioning"),
        setup: field("setup"),
        duration: field("duration"),
    };
    out.patterns = by_id(d, &o, "patterns");
    out.layers = by_id(d, &o, "layers");
    out
}

/// `estimate.patterns` or `estimate.layers`: id → duration.
fn by_id(d: &mut Diags, o: &Obj, key: &str) -> ById {
    let mut map = ById::new();
    if let Some(pv) = o.get(key) {
        if let Some(po) = obj(d, pv, &o.child(key)) {
            for (id, dv) in po.fields {
                let path = po.child(id);
                if let Some(dur) = duration(d, dv, &path) {
                    map.insert(id.clone(), (dur, dv.pos, path));
                }
            }
        }
    }
    map
}

/// Every per-pattern and per-layer estimate names a pattern (or a pattern
/// split into parts) and a layer of the plan.
/// The entries of `m` in file order.
fn in_order(m: &ById) -> Vec<(&String, Pos, &String)> {
    let mut v: Vec<(&String, Pos, &String)> = m
        .iter()
        .map(|(id, (_, pos, path))| (id, *pos, path))
        .collect();
    v.sort_by_key(|(id, pos, _)| (pos.line, pos.col, (*id).clone()));
    v
}

pub(super) fn check_targets(
    d: &mut Diags,
    est: &EstimateSection,
    layers: &[Layer],
    seen_ids: &HashMap<String, Pos>,
    seen_layers: &HashMap<String, Pos>,
) {
    // in file order, whatever the maps' order
    let mut known_ids: Vec<&str> = seen_ids.keys().map(String::as_str).collect();
    known_ids.sort_unstable();
    let mut known_layers: Vec<&str> = seen_layers.keys().map(String::as_str).collect();
    known_layers.sort_unstable();
    for (id, pos, path) in in_order(&est.patterns) {
        let base_known = layers
            .iter()
            .flat_map(|l| &l.patterns)
            .any(|p| &p.id == id || p.id.starts_with(&format!("{id}-part")));
        if !base_known {
            d.hint(
                path,
                pos,
                format!("estimate for unknown pattern \"{id}\""),
                some_of(id, &known_ids),
            );
        }
    }
    for (id, pos, path) in in_order(&est.layers) {
        if !seen_layers.contains_key(id) {
            d.hint(
                path,
                pos,
                format!("estimate for unknown layer \"{id}\""),
                did_you_mean(id, known_layers.iter().copied()),
            );
        }
    }
}

/// "did you mean" over every known id, listing the first 50 of them.
fn some_of(id: &str, known: &[&str]) -> String {
    let near = crate::plan::diag::closest(id, known.iter().copied(), 3);
    let shown = known
        .iter()
        .take(50)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    let more = if known.len() > 50 { ", ..." } else { "" };
    match near.first() {
        Some(best) => format!("did you mean \"{best}\"? known: {shown}{more}"),
        None => format!("known: {shown}{more}"),
    }
}

/// `checkpoint_interval` (10 s to a day) and `stop_grace_seconds` (0 to an
/// hour), with their defaults.
pub(super) fn interruptions(d: &mut Diags, top: &Obj) -> (Duration, Duration) {
    use crate::plan::model::{
        DEFAULT_CHECKPOINT_INTERVAL_SECONDS, DEFAULT_STOP_GRACE_SECONDS, MAX_STOP_GRACE_SECONDS,
    };
    let mut interval = Duration::from_secs(DEFAULT_CHECKPOINT_INTERVAL_SECONDS);
    let mut grace = Duration::from_secs(DEFAULT_STOP_GRACE_SECONDS);
    if let Some(v) = top.get("checkpoint_interval") {
        if let Some(t) = duration(d, v, "checkpoint_interval") {
            if t < Duration::from_secs(10) || t > Duration::from_secs(86_400) {
                d.hint(
                    "checkpoint_interval",
                    v.pos,
                    format!("{} s is out of range", t.as_secs_f64()),
                    "use between 10 s and a day, e.g. \"5m\"",
                );
            } else {
                interval = Duration::from_secs(t.as_secs());
            }
        }
    }
    if let Some(v) = top.get("stop_grace_seconds") {
        if let Some(t) = duration(d, v, "stop_grace_seconds") {
            if t > Duration::from_secs(MAX_STOP_GRACE_SECONDS) {
                d.hint(
                    "stop_grace_seconds",
                    v.pos,
                    format!("{} s is too long", t.as_secs_f64()),
                    format!("use at most {MAX_STOP_GRACE_SECONDS} s (on a spot notice at most 90 s are given anyway)"),
                );
            } else {
                grace = Duration::from_secs(t.as_secs());
            }
        }
    }
    (interval, grace)
}

pub(super) fn retry(d: &mut Diags, top: &Obj) -> RetryPolicy {
    let mut retry = RetryPolicy::default();
    let Some(o) = top.get("retry").and_then(|v| obj(d, v, "retry")) else {
        return retry;
    };
    o.known(d, &["attempts", "backoff_seconds", "backoff_max_seconds"]);
    if let Some(a) = o
        .get("attempts")
        .and_then(|v| count(d, v, "retry.attempts", 20))
    {
        retry.attempts = a;
    }
    if let Some(b) = o
        .get("backoff_seconds")
        .and_then(|v| duration(d, v, "retry.backoff_seconds"))
    {
        retry.backoff = b;
    }
    if let Some(b) = o
        .get("backoff_max_seconds")
        .and_then(|v| duration(d, v, "retry.backoff_max_seconds"))
    {
        retry.backoff_max = b;
    }
    retry
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::decode::testing::{decode_err, decode_text, lines, node, top};

    #[test]
    fn estimates_by_kind_and_by_id() {
        let n = node(
            r#"{"estimate": {"default": "5m", "provisioning": 600, "setup": "1h30m", "duration": "2d",
               "patterns": {"p1-a": "90s"}, "layers": {"L0": 60}}}"#,
        );
        let mut d = Diags::default();
        let e = estimates(&mut d, &top(&n));
        assert!(d.is_empty(), "{:?}", lines(&d));
        let s = Duration::from_secs;
        assert_eq!(
            e.plan,
            Estimates {
                default: Some(s(300)),
                provisioning: Some(s(600)),
                setup: Some(s(5400)),
                duration: Some(s(172_800)),
            }
        );
        let (dur, pos, path) = &e.patterns["p1-a"];
        assert_eq!(
            (*dur, *pos, path.as_str()),
            (s(90), Pos { line: 2, col: 37 }, "estimate.patterns.p1-a")
        );
        assert_eq!(e.layers["L0"].0, s(60));
    }

    #[test]
    fn estimate_problems_name_the_field() {
        let n = node(
            r#"{"estimate": {"default": "soon", "setup": -1, "typo": 1, "layers": {"L0": "x"}}}"#,
        );
        let mut d = Diags::default();
        let e = estimates(&mut d, &top(&n));
        assert_eq!(
            lines(&d),
            [
                "1:55 estimate.typo: unknown field \"typo\"",
                "1:26 estimate.default: invalid duration \"soon\"",
                "1:43 estimate.setup: a duration cannot be negative",
                "1:75 estimate.layers.L0: invalid duration \"x\"",
            ]
        );
        assert_eq!(e.plan.default, None);
        assert!(e.layers.is_empty());
    }

    #[test]
    fn retry_overrides_the_defaults_field_by_field() {
        let mut d = Diags::default();
        let n = node(r#"{"retry": {"attempts": 3, "backoff_max_seconds": "1m"}}"#);
        let r = retry(&mut d, &top(&n));
        assert!(d.is_empty());
        assert_eq!(
            r,
            RetryPolicy {
                attempts: 3,
                backoff: Duration::from_secs(1),
                backoff_max: Duration::from_secs(60),
            }
        );
        let n = node(r#"{"retry": {"attempts": 21, "tries": 2}}"#);
        assert_eq!(retry(&mut d, &top(&n)), RetryPolicy::default());
        assert_eq!(
            lines(&d),
            [
                "1:37 retry.tries: unknown field \"tries\"",
                "1:24 retry.attempts: 21 is too large (at most 20)",
            ]
        );
    }

    #[test]
    fn estimates_must_name_known_patterns_and_layers() {
        let plan = decode_text(
            r#"{"phase": 1, "name": "n", "estimate": {"patterns": {"p1-a": 5}, "layers": {"L0": 7}},
                "layers": [{"id": "L0", "partitions": 2, "patterns": [{"id": "p1-a", "backend": "t"}]}]}"#,
        )
        .unwrap_or_else(|d| panic!("{:?}", lines(&d)));
        // a pattern split into parts keeps its estimate
        let ids: Vec<_> = plan
            .patterns()
            .map(|p| (p.id.as_str(), p.estimate))
            .collect();
        let five = Some(Duration::from_secs(5));
        assert_eq!(ids, [("p1-a-part1of2", five), ("p1-a-part2of2", five)]);

        let d = decode_err(
            r#"{"phase": 1, "name": "n", "estimate": {"patterns": {"p1-b": 5}, "layers": {"L1": 7}},
                "layers": [{"id": "L0", "patterns": [{"id": "p1-a", "backend": "t"}]}]}"#,
        );
        assert_eq!(
            lines(&d),
            [
                "1:61 estimate.patterns.p1-b: estimate for unknown pattern \"p1-b\"",
                "1:82 estimate.layers.L1: estimate for unknown layer \"L1\"",
            ]
        );
    }
}
