//! `results_layout` and `extractors` (plan/layout.rs).

use serde_json::Value;

use crate::plan::diag::{did_you_mean, Diags};
use crate::plan::fields::{obj, string, Obj};
use crate::plan::json::Node;
use crate::plan::layout::{Extractor, ExtractorKind, ResultsLayout};

const EXTRACTOR_FIELDS: &[&str] = &[
    "kind",
    "file_regex",
    "experiments",
    "delimiter",
    "has_header",
    "fieldnames",
    "pattern",
];

pub(super) fn results_layout(d: &mut Diags, top: &Obj) -> ResultsLayout {
    let Some(v) = top.get("results_layout") else {
        return ResultsLayout::Flat;
    };
    match string(d, v, "results_layout").as_deref() {
        None => ResultsLayout::Flat,
        Some("flat") => ResultsLayout::Flat,
        Some("doe-suite") => ResultsLayout::DoeSuite,
        Some(other) => {
            d.hint(
                "results_layout",
                v.pos,
                format!("unknown results layout \"{other}\""),
                did_you_mean(other, ["flat", "doe-suite"]),
            );
            ResultsLayout::Flat
        }
    }
}

fn strings(d: &mut Diags, v: &crate::plan::json::Spanned, path: &str) -> Option<Vec<String>> {
    match &v.node {
        Node::Str(s) => Some(vec![s.clone()]),
        Node::Arr(items) => Some(
            items
                .iter()
                .enumerate()
                .filter_map(|(i, it)| string(d, it, &format!("{path}[{i}]")))
                .collect(),
        ),
        _ => {
            d.hint(
                path,
                v.pos,
                format!("expected a list of strings, found {}", v.kind()),
                "e.g. [\"out.csv\"]",
            );
            None
        }
    }
}

pub(super) fn extractors(d: &mut Diags, top: &Obj) -> Vec<Extractor> {
    let Some(v) = top.get("extractors") else {
        return Vec::new();
    };
    let Node::Arr(items) = &v.node else {
        d.hint(
            "extractors",
            v.pos,
            format!("expected a list of extractors, found {}", v.kind()),
            "write \"extractors\": [{\"kind\": \"json\"}]",
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, it) in items.iter().enumerate() {
        let path = format!("extractors[{i}]");
        let Some(o) = obj(d, it, &path) else { continue };
        o.known(d, EXTRACTOR_FIELDS);
        let Some(kind_v) = o.required(d, "kind", "\"json\"") else {
            continue;
        };
        let Some(kind_s) = string(d, kind_v, &o.child("kind")) else {
            continue;
        };
        let Some(kind) = ExtractorKind::parse(&kind_s) else {
            d.hint(
                &o.child("kind"),
                kind_v.pos,
                format!("unknown extractor kind \"{kind_s}\""),
                did_you_mean(&kind_s, ExtractorKind::NAMES.iter().copied()),
            );
            continue;
        };
        let file_regex = match o.get("file_regex") {
            Some(f) => strings(d, f, &o.child("file_regex")).unwrap_or_default(),
            None => kind.default_files().iter().map(|s| s.to_string()).collect(),
        };
        for (j, r) in file_regex.iter().enumerate() {
            if let Err(e) = regex_lite::Regex::new(r) {
                let pos = o.get("file_regex").map_or(it.pos, |f| f.pos);
                d.hint(
                    &format!("{}[{j}]", o.child("file_regex")),
                    pos,
                    format!("\"{r}\" is not a regular expression: {e}"),
                    "e.g. \".*\\\\.csv$\"",
                );
            }
        }
        let experiments = o
            .get("experiments")
            .and_then(|e| strings(d, e, &o.child("experiments")));
        let delimiter = match o.get("delimiter") {
            None => ',',
            Some(dv) => match string(d, dv, &o.child("delimiter")) {
                Some(s) if s.chars().count() == 1 => s.chars().next().unwrap_or(','),
                Some(s) => {
                    d.hint(
                        &o.child("delimiter"),
                        dv.pos,
                        format!("a delimiter is one character, not \"{s}\""),
                        "e.g. \";\"",
                    );
                    ','
                }
                None => ',',
            },
        };
        let has_header = match o.get("has_header").map(|h| (h, h.to_value())) {
            None => true,
            Some((_, Value::Bool(b))) => b,
            Some((h, _)) => {
                d.hint(
                    &o.child("has_header"),
                    h.pos,
                    format!("expected true or false, found {}", h.kind()),
                    "\"has_header\": false",
                );
                true
            }
        };
        let fieldnames = o
            .get("fieldnames")
            .and_then(|f| strings(d, f, &o.child("fieldnames")));
        let pattern = o
            .get("pattern")
            .and_then(|p| string(d, p, &o.child("pattern")));
        match (&pattern, kind) {
            (None, ExtractorKind::Regex) => {
                d.hint(
                    &o.child("pattern"),
                    it.pos,
                    "a regex extractor needs a pattern",
                    "add \"pattern\": \"latency: (?P<latency_ms>[0-9.]+)\"",
                );
            }
            (Some(p), ExtractorKind::Regex) => match regex_lite::Regex::new(p) {
                Ok(r) if r.capture_names().flatten().next().is_none() => {
                    let pos = o.get("pattern").map_or(it.pos, |p| p.pos);
                    d.hint(
                        &o.child("pattern"),
                        pos,
                        "the pattern has no named group, so it gives no column",
                        "name each value: (?P<latency_ms>[0-9.]+)",
                    );
                }
                Ok(_) => {}
                Err(e) => {
                    let pos = o.get("pattern").map_or(it.pos, |p| p.pos);
                    d.hint(
                        &o.child("pattern"),
                        pos,
                        format!("not a regular expression: {e}"),
                        "e.g. \"latency: (?P<latency_ms>[0-9.]+)\"",
                    );
                }
            },
            (Some(_), _) => {
                let pos = o.get("pattern").map_or(it.pos, |p| p.pos);
                d.hint(
                    &o.child("pattern"),
                    pos,
                    format!("only a regex extractor takes a pattern, this one is {kind_s}"),
                    "remove \"pattern\", or make the kind \"regex\"",
                );
            }
            (None, _) => {}
        }
        out.push(Extractor {
            kind,
            file_regex,
            experiments,
            delimiter,
            has_header,
            fieldnames,
            pattern,
        });
    }
    out
}
