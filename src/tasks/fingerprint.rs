//! What a task definition was when it ran: hashes the journal records with
//! each success, so that `infra plan` can count the completed tasks whose
//! definition changed since and `infra run --changed` can say what changed.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::TaskDef;
use crate::plan::decode::canonical;
use crate::plan::Plan;

/// Hashes of a task definition (16 hex digits each).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// What the task does: its steps, environment, outputs, table, node
    /// count, variables and partition; not where it sits (layer), where
    /// it runs (node group), its estimate or its attempt budget.
    pub definition: String,
    /// The template's text.
    pub template: String,
    /// The rendered steps (commands and their settings).
    pub command: String,
}

fn hash(v: &Value) -> String {
    let digest = Sha256::digest(canonical(v).as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The fingerprint of `t`, whose template's text is `template`.
pub fn of(t: &TaskDef, template: &[u8]) -> Fingerprint {
    let steps = serde_json::to_value(&t.steps).unwrap_or_default();
    let definition = json!({
        "backend": t.backend,
        "nodes": t.nodes,
        "env": t.env,
        "outputs": t.outputs,
        "table": t.table,
        "steps": steps,
        "vars": t.vars,
        "partition": t.partition.map(|(i, k)| vec![i, k]),
    });
    let digest = Sha256::digest(template);
    Fingerprint {
        definition: hash(&definition),
        template: digest.iter().take(8).map(|b| format!("{b:02x}")).collect(),
        command: hash(&steps),
    }
}

/// The fingerprints of `tasks` by content key (each template read once; an
/// unreadable one hashes as empty: rendering read it a moment ago).
pub fn all(plan: &Plan, tasks: &[TaskDef]) -> HashMap<String, Fingerprint> {
    let mut texts: HashMap<&str, Vec<u8>> = HashMap::new();
    tasks
        .iter()
        .map(|t| {
            let text = texts.entry(t.backend.as_str()).or_insert_with(|| {
                std::fs::read(plan.template_path(&t.backend)).unwrap_or_default()
            });
            (t.key.clone(), of(t, text))
        })
        .collect()
}

/// What changed between the definition that ran and the current one, as
/// the reason a re-run gives; None when the definition is the same.
/// `template` names the task's template.
pub fn what_changed(ran: &Fingerprint, now: &Fingerprint, template: &str) -> Option<String> {
    if ran.definition == now.definition {
        return None;
    }
    let what = if ran.template != now.template {
        format!("template {template}")
    } else if ran.command != now.command {
        "the rendered command".to_string()
    } else {
        "its environment, outputs or node count".to_string()
    };
    Some(format!("its definition changed since it ran ({what})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(command: &str) -> TaskDef {
        let text = format!(
            r#"{{"version": 1, "id": "t-1", "key": "k", "phase": "p", "layer": "L0",
            "backend": "run", "node_group": "cpu", "nodes": 1, "attempts": 3,
            "estimate_seconds": null, "partition": null, "env": {{}}, "outputs": [],
            "table": [], "factors": {{}}, "vars": {{"n": 1}},
            "steps": [{{"name": "main", "node": 0, "command": "{command}", "background": false,
              "health": null, "timeout_seconds": null, "retries": 0, "env": {{}}}}]}}"#
        );
        serde_json::from_str(&text).unwrap()
    }

    #[test]
    fn a_template_edit_that_changes_the_command_names_the_template() {
        let ran = of(&task("echo 1"), b"echo {{n}}");
        let now = of(&task("echo 1 2"), b"echo {{n}} 2");
        assert_eq!(
            what_changed(&ran, &now, "run.json.hbs").as_deref(),
            Some("its definition changed since it ran (template run.json.hbs)")
        );
        // a command changed by something else than the template's text
        let now = of(&task("echo 1 2"), b"echo {{n}}");
        assert!(what_changed(&ran, &now, "run.json.hbs")
            .unwrap()
            .contains("the rendered command"));
    }

    #[test]
    fn the_same_definition_is_no_change_even_when_the_template_text_moved() {
        let ran = of(&task("echo 1"), b"echo {{n}}");
        let now = of(&task("echo 1"), b"echo {{n}}  ");
        assert_eq!(what_changed(&ran, &now, "run.json.hbs"), None);
        // nor is a new estimate or attempt budget
        let mut t = task("echo 1");
        t.estimate_seconds = Some(60.0);
        t.attempts = 5;
        t.layer = "L9".into();
        assert_eq!(of(&t, b"echo {{n}}"), ran);
    }
}
