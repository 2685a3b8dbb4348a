//! A design's `$ETL$` pipelines: their extractors (converted to the
//! plan's `extractors`); transformers and loaders are noted, not converted.

use serde_json::Value;

use super::design::{entries, Problems};
use super::yaml::{Marked, Node};
use crate::plan::diag::did_you_mean;

/// One extractor of a `$ETL$` pipeline (doe-suite's names).
#[derive(Debug, Clone, PartialEq)]
pub struct EtlExtractor {
    pub kind: String,
    pub file_regex: Vec<String>,
    /// `CsvExtractor`'s options.
    pub delimiter: Option<String>,
    pub has_header: Option<bool>,
    pub fieldnames: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EtlPipeline {
    pub name: String,
    /// `None` for `"*"`.
    pub experiments: Option<Vec<String>>,
    pub extractors: Vec<EtlExtractor>,
    /// Transformers and loaders are Python and are not converted.
    pub has_python_steps: bool,
}

pub const EXTRACTORS: &[&str] = &[
    "JsonExtractor",
    "YamlExtractor",
    "CsvExtractor",
    "ErrorExtractor",
    "IgnoreExtractor",
];

pub(crate) fn decode_etl(p: &mut Problems, v: &Marked) -> Vec<EtlPipeline> {
    let mut out = Vec::new();
    for (name, _, pl) in entries(v) {
        let path = format!("$ETL$.{name}");
        let experiments = match pl.get("experiments").map(|e| (&e.node, e)) {
            Some((Node::Str(s), _)) if s == "*" => None,
            Some((Node::Str(s), _)) => Some(vec![s.clone()]),
            Some((Node::Seq(items), _)) => Some(
                items
                    .iter()
                    .filter_map(|i| match &i.node {
                        Node::Str(s) => Some(s.clone()),
                        _ => None,
                    })
                    .collect(),
            ),
            Some((_, e)) => {
                p.add(
                    e.pos,
                    &format!("{path}.experiments"),
                    format!(
                        "must be \"*\" or a list of experiment names, not {}",
                        e.kind()
                    ),
                    "e.g. `experiments: [exp_a]`",
                );
                None
            }
            None => None,
        };
        let mut extractors = Vec::new();
        if let Some(ex) = pl.get("extractors") {
            for (kind, kpos, opts) in entries(ex) {
                if !EXTRACTORS.contains(&kind.as_str()) {
                    p.add(
                        *kpos,
                        &format!("{path}.extractors.{kind}"),
                        format!("extractor \"{kind}\" is not one the import converts"),
                        format!(
                            "{} (a project's own Python extractor needs a rewrite as one of these)",
                            did_you_mean(kind, EXTRACTORS.iter().copied())
                        ),
                    );
                    continue;
                }
                let o = opts.to_json();
                let file_regex = match o.get("file_regex") {
                    Some(Value::String(s)) => vec![s.clone()],
                    Some(Value::Array(a)) => a
                        .iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect(),
                    _ => Vec::new(),
                };
                extractors.push(EtlExtractor {
                    kind: kind.clone(),
                    file_regex,
                    delimiter: o
                        .get("delimiter")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                    has_header: o.get("has_header").and_then(Value::as_bool),
                    fieldnames: o.get("fieldnames").and_then(Value::as_array).map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str().map(str::to_string))
                            .collect()
                    }),
                });
            }
        }
        let has_python_steps = ["transformers", "loaders"].iter().any(|k| {
            pl.get(k).is_some_and(|t| {
                !matches!(&t.node, Node::Seq(l) if l.is_empty())
                    && !matches!(&t.node, Node::Map(m) if m.is_empty())
            })
        });
        out.push(EtlPipeline {
            name: name.clone(),
            experiments,
            extractors,
            has_python_steps,
        });
    }
    out
}
