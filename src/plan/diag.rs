//! Plan problems: each names a JSON path, a line:column and a fix.

use std::fmt;
use std::path::PathBuf;

use super::json::Pos;

#[derive(Debug, Clone, PartialEq)]
pub struct Diag {
    pub path: String,
    pub pos: Pos,
    pub message: String,
    pub hint: Option<String>,
}

/// Every problem found in one plan file.
#[derive(Debug, Clone)]
pub struct PlanErrors {
    pub file: PathBuf,
    pub diags: Vec<Diag>,
}

impl fmt::Display for PlanErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.diags.len();
        write!(
            f,
            "invalid plan {}: {} problem{}",
            self.file.display(),
            n,
            if n == 1 { "" } else { "s" }
        )?;
        for d in &self.diags {
            let path = if d.path.is_empty() {
                "(plan)"
            } else {
                d.path.as_str()
            };
            write!(
                f,
                "\n  {}:{} {}: {}",
                self.file.display(),
                d.pos,
                path,
                d.message
            )?;
            if let Some(h) = &d.hint {
                write!(f, "\n    (hint: {h})")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for PlanErrors {}

/// Collects problems while a plan is decoded and checked.
#[derive(Debug, Default)]
pub struct Diags {
    pub list: Vec<Diag>,
}

impl Diags {
    pub fn push(&mut self, path: &str, pos: Pos, message: impl Into<String>, hint: Option<String>) {
        if self.list.len() < 500 {
            self.list.push(Diag {
                path: path.to_string(),
                pos,
                message: message.into(),
                hint,
            });
        }
    }

    pub fn err(&mut self, path: &str, pos: Pos, message: impl Into<String>) {
        self.push(path, pos, message, None);
    }

    pub fn hint(
        &mut self,
        path: &str,
        pos: Pos,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.push(path, pos, message, Some(hint.into()));
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

/// Edit distance, for "did you mean" hints.
pub fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The known names closest to `name`, best first.
pub fn closest<'a>(
    name: &str,
    known: impl IntoIterator<Item = &'a str>,
    max: usize,
) -> Vec<&'a str> {
    let lname = name.to_ascii_lowercase();
    let mut scored: Vec<(usize, &str)> = known
        .into_iter()
        .map(|k| {
            let lk = k.to_ascii_lowercase();
            let mut d = distance(&lname, &lk);
            if lk.starts_with(&lname) || lname.starts_with(&lk) {
                d = d.min(2);
            }
            (d, k)
        })
        .filter(|(d, k)| *d <= (k.len().max(name.len()) / 2).max(2))
        .collect();
    scored.sort();
    scored.into_iter().take(max).map(|(_, k)| k).collect()
}

pub fn did_you_mean<'a>(name: &str, known: impl IntoIterator<Item = &'a str> + Clone) -> String {
    let near = closest(name, known.clone(), 3);
    let all: Vec<&str> = known.into_iter().collect();
    if let Some(best) = near.first() {
        format!("did you mean \"{best}\"? known: {}", all.join(", "))
    } else {
        format!("known: {}", all.join(", "))
    }
}

/// The longest id (pattern, task): a file name and an S3 key.
pub const MAX_ID_LEN: usize = 128;

/// Why `id` cannot be a file name and an S3 key, if it cannot.
pub fn unsafe_id_reason(id: &str) -> Option<String> {
    if id.is_empty() {
        return Some("it is empty".into());
    }
    if id.len() > MAX_ID_LEN {
        return Some(format!(
            "it is {} characters long (at most {MAX_ID_LEN})",
            id.len()
        ));
    }
    if id.contains("..") {
        return Some("it contains \"..\"".into());
    }
    if id.starts_with('.') || id.starts_with('-') {
        return Some("it starts with '.' or '-'".into());
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        let shown = if c.is_control() || c.is_whitespace() {
            format!("{:?}", c)
        } else {
            format!("'{c}'")
        };
        return Some(format!("it contains {shown}"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_rank_by_distance() {
        assert_eq!(
            closest("g5.12xlarg", ["g5.12xlarge", "g5.xlarge", "p5.48xlarge"], 2)[0],
            "g5.12xlarge"
        );
        assert!(closest("zzz", ["g5.12xlarge"], 2).is_empty());
    }

    #[test]
    fn ids_must_be_file_and_key_safe() {
        assert!(unsafe_id_reason("p15-L0-efa-4k-c1").is_none());
        for bad in ["a/b", "..", "a b", "a\nb", "", "$(x)", ".hidden", "a;b"] {
            assert!(unsafe_id_reason(bad).is_some(), "{bad:?} accepted");
        }
    }
}
