//! `common_settings` (variables every pattern gets) and `setup` (commands
//! run once per node before the first task).

use serde_json::{Map, Value};

use crate::plan::diag::Diags;
use crate::plan::fields::{obj, string, Obj};
use crate::plan::json::Node;

pub(super) fn common_settings(d: &mut Diags, top: &Obj) -> Map<String, Value> {
    match top.get("common_settings") {
        Some(v) => match obj(d, v, "common_settings") {
            Some(_) => match v.to_value() {
                Value::Object(m) => m,
                _ => Map::new(),
            },
            None => Map::new(),
        },
        None => Map::new(),
    }
}

/// A list of commands, or one command as a string.
pub(super) fn setup(d: &mut Diags, top: &Obj) -> Vec<String> {
    match top.get("setup") {
        None => Vec::new(),
        Some(v) => match &v.node {
            Node::Arr(items) => items
                .iter()
                .enumerate()
                .filter_map(|(i, it)| string(d, it, &format!("setup[{i}]")))
                .collect(),
            Node::Str(s) => vec![s.clone()],
            _ => {
                d.hint(
                    "setup",
                    v.pos,
                    format!("expected a list of commands, found {}", v.kind()),
                    "write \"setup\": [\"pip install -r requirements.txt\"]",
                );
                Vec::new()
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::decode::testing::{lines, node, top};

    #[test]
    fn common_settings_are_an_object_kept_in_order() {
        let n = node(r#"{"common_settings": {"b": 1, "a": [2]}}"#);
        let mut d = Diags::default();
        let s = common_settings(&mut d, &top(&n));
        assert!(d.is_empty());
        assert_eq!(s.keys().collect::<Vec<_>>(), ["b", "a"]);
        let n = node(r#"{"common_settings": [1]}"#);
        assert!(common_settings(&mut d, &top(&n)).is_empty());
        assert_eq!(
            lines(&d),
            ["1:21 common_settings: expected an object, found an array"]
        );
    }

    #[test]
    fn setup_is_a_list_of_commands_or_one_command() {
        let mut d = Diags::default();
        let n = node(r#"{"setup": "make"}"#);
        assert_eq!(setup(&mut d, &top(&n)), ["make"]);
        let n = node(r#"{"setup": ["a", 2, "c"]}"#);
        assert_eq!(setup(&mut d, &top(&n)), ["a", "c"]);
        let n = node(r#"{"setup": {"a": 1}}"#);
        assert!(setup(&mut d, &top(&n)).is_empty());
        let n = node(r#"{}"#);
        assert!(setup(&mut d, &top(&n)).is_empty());
        assert_eq!(
            lines(&d),
            [
                "1:17 setup[1]: expected a string, found a number",
                "1:11 setup: expected a list of commands, found an object",
            ]
        );
    }
}
