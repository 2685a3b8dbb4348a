//! The shell lint of rendered commands: where did each value land?
//!
//! Values are shell-quoted (`shell::quote`), which protects them only where
//! the shell reads a bare word. Inside the template's own quotes
//! (`"echo \"{{v}}\""`, `'{{v}}'`), after a backslash or a `$`, in a comment,
//! a here-document or `$((...))`, the quoting is undone or ignored and
//! `$(touch x)` in a value runs. This scanner follows a POSIX shell's
//! quoting over a command with markers (see `super::marks`) and reports each
//! marker that is not on a bare word.

use super::marks::{pieces, Piece};

/// Where a value landed, when it is not a bare word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    DoubleQuotes,
    SingleQuotes,
    AnsiQuotes,
    AfterBackslash,
    AfterDollar,
    Comment,
    HereDoc,
    Arithmetic,
}

impl Place {
    pub fn describe(self) -> &'static str {
        match self {
            Place::DoubleQuotes => "inside double quotes the template put there",
            Place::SingleQuotes => "inside single quotes the template put there",
            Place::AnsiQuotes => "inside $'...' quotes",
            Place::AfterBackslash => "right after a backslash",
            Place::AfterDollar => "right after a '$'",
            Place::Comment => "in a shell comment",
            Place::HereDoc => "in a here-document",
            Place::Arithmetic => "inside $((...))",
        }
    }

    /// Places where a value of safe characters only (`p15-L0-a`) is
    /// harmless: the quotes change nothing for it.
    pub fn harmless_for_safe_words(self) -> bool {
        !matches!(self, Place::AfterBackslash | Place::AfterDollar)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Bare,
    Single,
    Double,
    Ansi,
    Comment,
}

/// Each marker (by slot index) that is not on a bare word, with its place.
pub fn scan(command: &str) -> Vec<(usize, Place)> {
    let mut found = Vec::new();
    let mut st = State::Bare;
    let mut escaped = false; // the previous character was an unquoted backslash
    let mut prev: Option<char> = None; // the previous character, for `$` and word starts
    let mut arith = 0usize; // open `$((`
    let mut heredocs: Vec<(String, bool)> = Vec::new(); // pending delimiters (strip tabs)
    let mut in_heredoc: Option<(String, bool)> = None;
    let mut line = String::new(); // the current line, for here-document ends
    for piece in pieces(command) {
        let text = match piece {
            Piece::Slot(i) => {
                let place = if in_heredoc.is_some() {
                    Some(Place::HereDoc)
                } else if escaped {
                    Some(Place::AfterBackslash)
                } else {
                    match st {
                        State::Single => Some(Place::SingleQuotes),
                        State::Double => Some(Place::DoubleQuotes),
                        State::Ansi => Some(Place::AnsiQuotes),
                        State::Comment => Some(Place::Comment),
                        State::Bare if prev == Some('$') => Some(Place::AfterDollar),
                        State::Bare if arith > 0 => Some(Place::Arithmetic),
                        State::Bare => None,
                    }
                };
                if let Some(p) = place {
                    found.push((i, p));
                }
                escaped = false;
                prev = Some('x');
                line.push('x');
                continue;
            }
            Piece::Text(t) => t,
        };
        let chars: Vec<char> = text.chars().collect();
        let mut k = 0;
        while k < chars.len() {
            let c = chars[k];
            let next = chars.get(k + 1).copied();
            if c == '\n' {
                if let Some((delim, strip)) = &in_heredoc {
                    let l = if *strip {
                        line.trim_start_matches('\t')
                    } else {
                        &line
                    };
                    if l == delim {
                        in_heredoc = None;
                    }
                } else if st == State::Comment {
                    st = State::Bare;
                }
                if in_heredoc.is_none() && st == State::Bare && !escaped && !heredocs.is_empty() {
                    in_heredoc = Some(heredocs.remove(0));
                }
                line.clear();
                escaped = false;
                prev = Some(c);
                k += 1;
                continue;
            }
            line.push(c);
            if in_heredoc.is_some() {
                prev = Some(c);
                k += 1;
                continue;
            }
            match st {
                State::Comment => {}
                State::Single => {
                    if c == '\'' {
                        st = State::Bare;
                    }
                }
                State::Ansi => {
                    if escaped {
                        escaped = false;
                    } else if c == '\\' {
                        escaped = true;
                        prev = Some(c);
                        k += 1;
                        continue;
                    } else if c == '\'' {
                        st = State::Bare;
                    }
                }
                State::Double => {
                    if escaped {
                        escaped = false;
                    } else if c == '\\' {
                        escaped = true;
                        prev = Some(c);
                        k += 1;
                        continue;
                    } else if c == '"' {
                        st = State::Bare;
                    }
                }
                State::Bare => {
                    if escaped {
                        escaped = false;
                    } else if c == '\\' {
                        escaped = true;
                        prev = Some(c);
                        k += 1;
                        continue;
                    } else if c == '\'' {
                        st = if prev == Some('$') {
                            State::Ansi
                        } else {
                            State::Single
                        };
                    } else if c == '"' {
                        st = State::Double;
                    } else if c == '#'
                        && prev.is_none_or(|p| p.is_whitespace() || ";&|()".contains(p))
                    {
                        st = State::Comment;
                    } else if c == '$' && next == Some('(') && chars.get(k + 2) == Some(&'(') {
                        arith += 1;
                        line.push_str("((");
                        prev = Some('(');
                        k += 3;
                        continue;
                    } else if c == ')' && next == Some(')') && arith > 0 {
                        arith -= 1;
                        line.push(')');
                        prev = Some(')');
                        k += 2;
                        continue;
                    } else if c == '<' && next == Some('<') && chars.get(k + 2) != Some(&'<') {
                        let (delim, strip, used) = heredoc_word(&chars[k + 2..]);
                        if !delim.is_empty() {
                            heredocs.push((delim, strip));
                        }
                        for ch in &chars[k + 1..k + 2 + used] {
                            line.push(*ch);
                        }
                        prev = chars.get(k + 1 + used).copied();
                        k += 2 + used;
                        continue;
                    }
                }
            }
            prev = Some(c);
            k += 1;
        }
    }
    found
}

/// The delimiter after `<<`: (word without quotes, `<<-`, characters used).
fn heredoc_word(rest: &[char]) -> (String, bool, usize) {
    let mut i = 0;
    let strip = rest.first() == Some(&'-');
    if strip {
        i += 1;
    }
    while rest.get(i).is_some_and(|c| *c == ' ' || *c == '\t') {
        i += 1;
    }
    let mut word = String::new();
    while let Some(&c) = rest.get(i) {
        if c.is_whitespace() || ";&|<>()".contains(c) {
            break;
        }
        if c != '\'' && c != '"' && c != '\\' {
            word.push(c);
        }
        i += 1;
    }
    (word, strip, i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn places(cmd: &str) -> Vec<Place> {
        let m = cmd.replace("{v}", "\u{E000}0\u{E001}");
        scan(&m).into_iter().map(|(_, p)| p).collect()
    }

    #[test]
    fn bare_words_pass() {
        for cmd in [
            "echo {v}",
            "run --x={v} {v}/bin/python",
            "echo \"$HOME\" {v} 'lit' {v}",
            "echo \"a\\\"b\" {v}",
            "x=$((1+2)) {v}",
            "cat <<EOF\nbody\nEOF\necho {v}",
            "echo a#b {v}",
            "echo '\\' {v}",
        ] {
            assert_eq!(places(cmd), [], "{cmd}");
        }
    }

    #[test]
    fn values_in_the_templates_own_quoting_are_found() {
        for (cmd, want) in [
            ("echo \"{v}\"", Place::DoubleQuotes),
            ("echo \"x $(echo {v})\"", Place::DoubleQuotes),
            ("echo '{v}'", Place::SingleQuotes),
            ("echo $'{v}'", Place::AnsiQuotes),
            ("echo \\{v}", Place::AfterBackslash),
            ("echo ${v}", Place::AfterDollar),
            ("run # note {v}", Place::Comment),
            ("cat <<EOF\n{v}\nEOF", Place::HereDoc),
            ("cat <<-'E'\n\tx {v}\n\tE", Place::HereDoc),
            ("echo $(( {v} + 1 ))", Place::Arithmetic),
        ] {
            assert_eq!(places(cmd), [want], "{cmd}");
        }
    }
}
