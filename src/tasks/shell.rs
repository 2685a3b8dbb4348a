//! Shell quoting: every value a template puts into a command goes through
//! here, so nothing from a plan reaches a shell unquoted.

/// Quote `s` for a POSIX shell; words made only of safe characters are
/// returned unchanged, so numbers and ids read naturally.
pub fn quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(c, '_' | '@' | '%' | '+' | '=' | ':' | ',' | '.' | '/' | '-')
        });
    if safe {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\"'\"'"))
    }
}

/// The body of a JSON string literal for `s` (no surrounding quotes).
pub fn json_escape(s: &str) -> String {
    let quoted = serde_json::to_string(s).unwrap_or_default();
    quoted[1..quoted.len() - 1].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn safe_words_stay_bare() {
        assert_eq!(quote("p15-L0-efa"), "p15-L0-efa");
        assert_eq!(quote("0.9"), "0.9");
        assert_eq!(quote("Qwen/Qwen2.5-7B"), "Qwen/Qwen2.5-7B");
    }

    #[test]
    fn hostile_values_reach_the_shell_literally() {
        for v in [
            "it's",
            "a\"b",
            "$(touch /tmp/x)",
            "`id`",
            "a; rm -rf /",
            "two\nlines",
            "",
            "*",
            "~",
            "a b",
            "\\",
        ] {
            let out = Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {}", quote(v)))
                .output()
                .unwrap();
            assert_eq!(String::from_utf8_lossy(&out.stdout), v, "value {v:?}");
        }
    }
}
