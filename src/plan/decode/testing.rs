//! Helpers for the section tests: literal JSON in, decoded values and
//! diagnostics (`line:col path: message`) out.

use crate::plan::diag::Diags;
use crate::plan::fields::{obj, Obj};
use crate::plan::json::{parse, Spanned};

/// The parsed literal (the test's own JSON must be valid).
pub(super) fn node(text: &str) -> Spanned {
    parse(text).unwrap_or_else(|e| panic!("bad test JSON: {} at {}", e.message, e.pos))
}

/// The literal's top-level object.
pub(super) fn top(n: &Spanned) -> Obj<'_> {
    let mut d = Diags::default();
    obj(&mut d, n, "").expect("the test JSON is an object")
}

/// Every diagnostic as `line:col path: message`.
pub(super) fn lines(d: &Diags) -> Vec<String> {
    d.list
        .iter()
        .map(|x| format!("{} {}: {}", x.pos, x.path, x.message))
        .collect()
}

/// The hints, in order (`-` for a diagnostic without one).
pub(super) fn hints(d: &Diags) -> Vec<String> {
    d.list
        .iter()
        .map(|x| x.hint.clone().unwrap_or_else(|| "-".into()))
        .collect()
}

/// The whole plan in `text`, as if read from `/p/plans/t.json` with every
/// template present except those whose path contains `missing`.
pub(super) fn decode_text(text: &str) -> Result<crate::plan::model::Plan, Diags> {
    use std::path::Path;
    let n = node(text);
    let exists = |p: &Path| !p.to_string_lossy().contains("missing");
    let src = super::Source {
        file: Path::new("/p/plans/t.json"),
        name_key: "t",
        root: Path::new("/p"),
        plan_dir: Path::new("/p/plans"),
        file_exists: &exists,
    };
    super::decode(&n, &src)
}

/// The diagnostics of a plan that must not decode.
pub(super) fn decode_err(text: &str) -> Diags {
    match decode_text(text) {
        Ok(_) => panic!("the plan decoded"),
        Err(d) => d,
    }
}
