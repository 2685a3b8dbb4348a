//! Checks on names and values that the sections do not make themselves:
//! ids that collide on case-insensitive file systems, and strings that
//! would pass `plan` and fail at run (NUL bytes, huge values).

use std::collections::HashMap;

use crate::plan::diag::Diags;
use crate::plan::fields::child;
use crate::plan::json::{Node, Pos, Spanned};

/// Longest string a plan may hold (a value goes into command lines and
/// environments, whose limits are far lower than a plan file's).
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// One problem per string (value or key) with a NUL byte or over
/// `MAX_VALUE_BYTES`, at its position.
pub(super) fn check_strings(d: &mut Diags, n: &Spanned, path: &str) {
    match &n.node {
        Node::Str(s) => check_one(d, s, path, n.pos, "value"),
        Node::Arr(items) => {
            for (i, v) in items.iter().enumerate() {
                check_strings(d, v, &format!("{path}[{i}]"));
            }
        }
        Node::Obj(fields) => {
            for (k, v) in fields {
                let p = child(path, k);
                check_one(d, k, &p, v.pos, "key");
                check_strings(d, v, &p);
            }
        }
        Node::Null | Node::Bool(_) | Node::Num(_) => {}
    }
}

fn check_one(d: &mut Diags, s: &str, path: &str, pos: Pos, what: &str) {
    let path = path.escape_debug().to_string();
    if let Some(i) = s.find('\0') {
        d.hint(
            &path,
            pos,
            format!(
                "the {what} contains a NUL byte (at character {})",
                s[..i].chars().count() + 1
            ),
            "remove the \\u0000: commands, environments and file names cannot hold it",
        );
    }
    if s.len() > MAX_VALUE_BYTES {
        d.hint(
            &path,
            pos,
            format!(
                "the {what} is {} bytes long (at most {MAX_VALUE_BYTES})",
                s.len()
            ),
            "put large data in a file the task reads and pass its path",
        );
    }
}

/// One problem per id that differs from an earlier one only by case
/// (`case-A`, `case-a`): their result folders collide on macOS and Windows.
pub(super) fn check_case_collisions(d: &mut Diags, ids: &HashMap<String, Pos>, what: &str) {
    let mut sorted: Vec<(&String, &Pos)> = ids.iter().collect();
    sorted.sort_by_key(|(id, p)| (p.line, p.col, id.as_str()));
    let mut first: HashMap<String, (&str, Pos)> = HashMap::new();
    for (id, pos) in sorted {
        let folded = id.to_lowercase();
        match first.get(&folded) {
            Some((other, at)) if other != id => d.hint(
                what,
                *pos,
                format!(
                    "{what} \"{id}\" differs from \"{other}\" (at {at}) only by case; their folders collide on case-insensitive file systems"
                ),
                format!("rename one of them, e.g. \"{id}-2\""),
            ),
            Some(_) => {}
            None => {
                first.insert(folded, (id, *pos));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::decode::testing::{decode_err, lines, node};

    #[test]
    fn nul_bytes_and_huge_values_are_reported_at_their_position() {
        let big = "x".repeat(MAX_VALUE_BYTES + 1);
        let n = node(&format!(
            r#"{{"a": {{"b": ["ok", "x\u0000y"]}}, "c": "{big}", "k\u0000": 1}}"#
        ));
        let mut d = Diags::default();
        check_strings(&mut d, &n, "");
        assert_eq!(
            lines(&d),
            [
                "1:20 a.b[1]: the value contains a NUL byte (at character 2)".to_string(),
                format!(
                    "1:39 c: the value is {} bytes long (at most 65536)",
                    MAX_VALUE_BYTES + 1
                ),
                format!(
                    "1:{} k\\0: the key contains a NUL byte (at character 2)",
                    39 + big.len() + 15
                ),
            ]
        );
    }

    #[test]
    fn ids_that_differ_only_by_case_collide() {
        let d = decode_err(
            r#"{"phase": 1, "name": "n", "layers": [{"id": "L0", "patterns": [
                {"id": "p1-case-A", "backend": "t"}, {"id": "p1-case-a", "backend": "t"}]}]}"#,
        );
        assert_eq!(
            lines(&d),
            ["2:61 pattern id: pattern id \"p1-case-a\" differs from \"p1-case-A\" (at 2:24) only by case; their folders collide on case-insensitive file systems"]
        );
    }
}
