//! Fields of a plan that no template reads: a misspelt one is an error
//! (`concurency` next to `concurrency` would pass silently, `node_grop`
//! would run the task on the default group), any other a warning.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::plan::diag::distance;
use crate::plan::{Pattern, Plan};

/// The identifiers inside a template's `{{...}}` (variables, helpers,
/// keywords): what the template may use. Partials are not followed, so
/// this errs on the side of "used".
pub(crate) fn mustache_words(text: &str) -> HashSet<String> {
    let mut out = HashSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("{{") {
        let after = &rest[i + 2..];
        let end = after.find("}}").unwrap_or(after.len());
        let inner = &after[..end];
        for w in inner.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if w.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
                out.insert(w.to_string());
            }
        }
        rest = &after[end..];
    }
    out
}

/// Fields of the pattern itself (the `estimate`, `node_group` it may
/// hold, and the template's variables) a misspelling is measured against.
pub(crate) const PATTERN_FIELDS: &[&str] = &["id", "backend", "estimate", "node_group"];

/// A field of `p` (its own, or its grid cell's) that its template never
/// uses and that is one or two letters away from a name it does use or
/// from a pattern field: a typo that would otherwise pass silently (the
/// misspelt value becomes an unused variable; `node_grop` would run the
/// task on the default group). The problem and its hint.
pub(crate) fn misspelt(p: &Pattern, used: &HashSet<String>) -> Option<(String, String)> {
    for k in p.factors.keys() {
        if used.contains(k) || PATTERN_FIELDS.contains(&k.as_str()) {
            continue;
        }
        let candidates = used
            .iter()
            .map(String::as_str)
            .chain(PATTERN_FIELDS.iter().copied());
        if let Some(c) = near(k, candidates) {
            let also = if p.factors.contains_key(c) {
                format!(" (the pattern sets \"{c}\" too)")
            } else {
                String::new()
            };
            return Some((
                format!(
                    "field \"{k}\" is used by no template variable, and looks like \"{c}\"{also}"
                ),
                format!("rename \"{k}\" to \"{c}\", or remove it"),
            ));
        }
    }
    None
}

/// The candidate `k` is one edit from (two for names of six letters or
/// more): what `k` was probably meant to be.
fn near<'a>(k: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .filter(|c| c.len() >= 4 && k.len() >= 4 && *c != k)
        .map(|c| {
            (
                distance(&k.to_ascii_lowercase(), &c.to_ascii_lowercase()),
                c,
            )
        })
        .filter(|(d, c)| *d <= if c.len().min(k.len()) >= 6 { 2 } else { 1 })
        .min()
        .map(|(_, c)| c)
}

/// Fields of `common_settings` and of a layer's `settings` that no template
/// of the patterns that see them reads: an error (a typo that would pass
/// silently) when one is near a name such a template does read, else a
/// warning; and hand-written patterns' own fields no template reads, as
/// warnings (misspelt ones are `misspelt`'s errors). Grid factors are left
/// alone: they tell tasks apart even when no template reads them.
/// A field's error: (pattern, backend, message, hint).
pub(crate) type Unread = (String, String, String, String);

/// (errors, warnings)
pub(crate) fn unread(
    plan: &Plan,
    patterns: &[&Pattern],
    words: &HashMap<String, HashSet<String>>,
) -> (Vec<Unread>, Vec<String>) {
    let (mut errors, mut warnings) = (Vec::new(), Vec::new());
    let empty = HashSet::new();
    let words_of = |b: &str| words.get(b).unwrap_or(&empty);
    let mut check = |place: String, keys: Vec<&String>, seen_by: Vec<&Pattern>| {
        let Some(first) = seen_by.first() else { return };
        for k in keys {
            if seen_by.iter().any(|p| words_of(&p.backend).contains(k)) {
                continue;
            }
            let mut read: Vec<&str> = seen_by
                .iter()
                .flat_map(|p| words_of(&p.backend).iter().map(String::as_str))
                .collect();
            read.sort_unstable();
            read.dedup();
            match near(k, read.into_iter()) {
                Some(c) => errors.push((
                    first.id.clone(),
                    first.backend.clone(),
                    format!("{place} field \"{k}\" is read by no template, and looks like \"{c}\""),
                    format!("rename \"{k}\" to \"{c}\" in {place}, or remove it"),
                )),
                None => warnings.push(format!(
                    "{place} field \"{k}\" is read by no template of its patterns (a label? it still becomes a result column)"
                )),
            }
        }
    };
    check(
        "common_settings".into(),
        plan.common_settings.keys().collect(),
        patterns.to_vec(),
    );
    for l in &plan.layers {
        let mine: Vec<&Pattern> = patterns
            .iter()
            .copied()
            .filter(|p| p.layer == l.id)
            .collect();
        check(
            format!("layer {} settings", l.id),
            l.settings.keys().collect(),
            mine,
        );
    }
    // hand-written patterns: one warning per field, naming a pattern or two
    let mut own: BTreeMap<&String, Vec<&str>> = BTreeMap::new();
    for l in plan.layers.iter().filter(|l| l.grid_cells == 0) {
        for p in patterns.iter().filter(|p| p.layer == l.id) {
            for k in p.factors.keys() {
                let w = words_of(&p.backend);
                if !w.contains(k)
                    && !PATTERN_FIELDS.contains(&k.as_str())
                    && near(k, w.iter().map(String::as_str)).is_none()
                {
                    own.entry(k).or_default().push(&p.id);
                }
            }
        }
    }
    for (k, ids) in own {
        let shown = if ids.len() > 2 {
            format!("{}, {} and {} more", ids[0], ids[1], ids.len() - 2)
        } else {
            ids.join(", ")
        };
        warnings.push(format!(
            "pattern field \"{k}\" ({shown}) is read by no template (a label? it still becomes a result column)"
        ));
    }
    (errors, warnings)
}
