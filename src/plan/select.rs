//! Selections: `all`, layer ids and pattern ids, as every command takes them.

use thiserror::Error;

use super::diag::closest;
use super::model::{Pattern, Plan};

#[derive(Debug, Error)]
#[error("nothing in the plan is called \"{word}\"\n  (hint: {hint})")]
pub struct SelectError {
    pub word: String,
    pub hint: String,
}

/// The patterns a selection names, in plan order, each once.
pub fn select<'a>(plan: &'a Plan, words: &[String]) -> Result<Vec<&'a Pattern>, SelectError> {
    if words.is_empty() || words.iter().any(|w| w == "all") {
        return Ok(plan.patterns().collect());
    }
    let mut keep = std::collections::HashSet::new();
    for w in words {
        let mut hit = false;
        if let Some(l) = plan.layers.iter().find(|l| &l.id == w) {
            keep.extend(l.patterns.iter().map(|p| p.id.as_str()));
            hit = true;
        }
        for p in plan.patterns() {
            // a partitioned pattern is selected by its base id too
            if &p.id == w || (p.partition.is_some() && p.id.starts_with(&format!("{w}-part"))) {
                keep.insert(p.id.as_str());
                hit = true;
            }
        }
        if !hit {
            let names: Vec<&str> = plan
                .layers
                .iter()
                .map(|l| l.id.as_str())
                .chain(plan.patterns().map(|p| p.id.as_str()))
                .collect();
            let near = closest(w, names.iter().copied(), 3);
            let layers: Vec<&str> = plan.layers.iter().map(|l| l.id.as_str()).collect();
            let hint = match near.first() {
                Some(n) => format!("did you mean \"{n}\"? select \"all\", a layer ({}) or pattern ids (infra list {})", layers.join(", "), plan.name_key),
                None => format!("select \"all\", a layer ({}) or pattern ids (infra list {})", layers.join(", "), plan.name_key),
            };
            return Err(SelectError {
                word: w.clone(),
                hint,
            });
        }
    }
    Ok(plan
        .patterns()
        .filter(|p| keep.contains(p.id.as_str()))
        .collect())
}
