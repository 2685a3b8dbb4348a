//! `infra import doe-suite`: a suite design's text to a plan, or every
//! problem with its line and column. Pure: the command layer reads and
//! writes the files.

use super::design::{self, Problem};
use super::to_plan::{self, Imported, Options};
use super::yaml::{self, Pos};

/// Why a design cannot be imported: each problem names its place.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportError {
    pub file: String,
    pub problems: Vec<Problem>,
}

impl std::fmt::Display for ImportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "cannot import {}: {n} problem{}",
            self.file,
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  {}:{p}", self.file)?;
        }
        Ok(())
    }
}

/// Jinja2 `{{ ... }}` outside comments: doe-suite renders the whole file
/// with Ansible's variables first, which the import cannot.
fn jinja_problems(text: &str) -> Vec<Problem> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let code = match line.find(" #") {
            Some(c) => &line[..c],
            None if line.trim_start().starts_with('#') => "",
            None => line,
        };
        if let Some(c) = code.find("{{") {
            out.push(Problem {
                pos: Pos {
                    line: i + 1,
                    col: line[..c].chars().count() + 1,
                },
                path: "(Jinja2)".into(),
                message: format!(
                    "`{}` is a Jinja2 expression doe-suite renders with Ansible's variables, which the import cannot",
                    code[c..].trim()
                ),
                hint: "write its value (e.g. `[10, 15, 20]` for `{{ range(10, 25, 5) | list }}`)".into(),
            });
        }
    }
    out
}

/// Import the design `text` (from `file`, whose stem names the suite).
pub fn import(
    file: &str,
    suite: &str,
    text: &str,
    opts: &Options,
) -> Result<Imported, ImportError> {
    let fail = |problems| ImportError {
        file: file.to_string(),
        problems,
    };
    let jinja = jinja_problems(text);
    if !jinja.is_empty() {
        return Err(fail(jinja));
    }
    let doc = yaml::parse(text).map_err(|e| {
        fail(vec![Problem {
            pos: e.pos,
            path: "(YAML)".into(),
            message: e.message,
            hint: "fix the YAML syntax at that place (indentation, an unclosed bracket or quote)"
                .into(),
        }])
    })?;
    let suite_design = design::decode(suite, &doc).map_err(fail)?;
    to_plan::convert(&suite_design, opts).map_err(|r| {
        let exp = doc.get(&r.experiment);
        let pos = exp
            .and_then(|e| find_text(e, &r.expr))
            .or(exp.map(|e| e.pos))
            .unwrap_or(doc.pos);
        fail(vec![Problem {
            pos,
            path: format!("{} (run {})", r.experiment, r.run),
            message: if r.text.is_empty() {
                r.message
            } else {
                format!("{} in \"{}\"", r.message, r.text)
            },
            hint: r.hint,
        }])
    })
}

/// The first string under `m` that holds `needle` (in document order).
fn find_text(m: &yaml::Marked, needle: &str) -> Option<Pos> {
    if needle.is_empty() {
        return None;
    }
    match &m.node {
        yaml::Node::Str(s) if s.contains(needle) => Some(m.pos),
        yaml::Node::Seq(items) => items.iter().find_map(|i| find_text(i, needle)),
        yaml::Node::Map(entries) => entries.iter().find_map(|(_, _, v)| find_text(v, needle)),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
