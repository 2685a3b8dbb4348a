//! Where a plan's results land (`results_layout`) and the extractors that
//! turn result files into table rows (`extractors`): the doe-suite layout
//! of docs/DOE-SUITE.md.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ResultsLayout {
    /// `results/<phase>/<task>/` only.
    #[default]
    Flat,
    /// Also `results/<suite>_<id>/<exp>/run_<i>/rep_<j>/<host_type>/host_<k>/`.
    DoeSuite,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExtractorKind {
    /// A JSON object or a list of objects: one row each.
    Json,
    /// A YAML mapping or a list of mappings: one row each.
    Yaml,
    /// One row per CSV line.
    Csv,
    /// `pattern`'s named groups over each line of the file (stdout.log by default).
    Regex,
    /// A non-empty file is an error of its job.
    Error,
    /// The file is known and gives no rows.
    Ignore,
}

impl ExtractorKind {
    pub const NAMES: &'static [&'static str] = &["json", "yaml", "csv", "regex", "error", "ignore"];

    pub fn parse(s: &str) -> Option<ExtractorKind> {
        Some(match s {
            "json" => ExtractorKind::Json,
            "yaml" => ExtractorKind::Yaml,
            "csv" => ExtractorKind::Csv,
            "regex" => ExtractorKind::Regex,
            "error" => ExtractorKind::Error,
            "ignore" => ExtractorKind::Ignore,
            _ => return None,
        })
    }

    /// doe-suite's default `file_regex` of each kind.
    pub fn default_files(self) -> &'static [&'static str] {
        match self {
            ExtractorKind::Json => &[r".*\.json$"],
            ExtractorKind::Yaml => &[r".*\.yaml$", r".*\.yml$"],
            ExtractorKind::Csv => &[r".*\.csv$"],
            ExtractorKind::Regex => &["^stdout.log$"],
            ExtractorKind::Error => &["^stderr.log$"],
            ExtractorKind::Ignore => &["^stdout.log$"],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Extractor {
    pub kind: ExtractorKind,
    /// Regexes matched at the start of a result file's name (Python's `re.match`).
    pub file_regex: Vec<String>,
    /// The layers (experiments) it applies to; all when `None`.
    pub experiments: Option<Vec<String>>,
    /// `csv`: the column separator.
    pub delimiter: char,
    /// `csv`: whether the first line names the columns.
    pub has_header: bool,
    /// `csv`: the column names when there is no header line.
    pub fieldnames: Option<Vec<String>>,
    /// `regex`: a pattern with named groups (`latency: (?P<latency_ms>[0-9.]+)`).
    pub pattern: Option<String>,
}
