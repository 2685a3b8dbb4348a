//! How a grid's levels compare and print, and how an id template is filled
//! from a cell.

use serde_json::{Map, Value};

/// Levels are equal when their values are (numbers by value: 1 == 1.0).
pub(crate) fn values_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

/// How a level prints inside an id or a CSV cell.
pub fn level_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".into(),
        other => other.to_string(),
    }
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Fill `{name}` placeholders from `vars`; `None` names the missing one.
pub fn fill_id(template: &str, vars: &Map<String, Value>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let Some(end) = after.find('}') else {
            return Err("an unclosed '{'".into());
        };
        let name = &after[..end];
        match vars.get(name) {
            Some(v) => out.push_str(&sanitize(&level_text(v))),
            None => return Err(format!("{{{name}}} is not a factor")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The names in `{name}` placeholders, in order.
pub(super) fn placeholders(template: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let after = &rest[start + 1..];
        let Some(end) = after.find('}') else { break };
        names.push(after[..end].to_string());
        rest = &after[end + 1..];
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_filled_from_sanitized_levels() {
        let mut vars = Map::new();
        vars.insert("m".into(), Value::from("Qwen/7B x"));
        vars.insert("lr".into(), Value::from(0.001));
        assert_eq!(fill_id("r-{m}-{lr}", &vars).unwrap(), "r-Qwen_7B_x-0.001");
        assert_eq!(fill_id("r-{n}", &vars).unwrap_err(), "{n} is not a factor");
        assert_eq!(placeholders("a{x}b{y}{z"), ["x", "y"]);
        assert!(values_equal(&Value::from(1), &Value::from(1.0)));
        assert_eq!(level_text(&Value::from("s")), "s");
    }
}
