//! A small JSON parser that remembers where every value starts, so that
//! validation can name a line and column and not only a JSON path.
//!
//! serde_json gives positions for syntax errors only; plans need them for
//! semantic errors too ("duplicate pattern id at 41:9").

use std::fmt;

/// 1-based line and column of a value's first character.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Null,
    Bool(bool),
    Num(serde_json::Number),
    Str(String),
    Arr(Vec<Spanned>),
    Obj(Vec<(String, Spanned)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Spanned {
    pub pos: Pos,
    pub node: Node,
}

impl Spanned {
    pub fn kind(&self) -> &'static str {
        match self.node {
            Node::Null => "null",
            Node::Bool(_) => "a boolean",
            Node::Num(_) => "a number",
            Node::Str(_) => "a string",
            Node::Arr(_) => "an array",
            Node::Obj(_) => "an object",
        }
    }

    /// The value without positions.
    pub fn to_value(&self) -> serde_json::Value {
        use serde_json::Value;
        match &self.node {
            Node::Null => Value::Null,
            Node::Bool(b) => Value::Bool(*b),
            Node::Num(n) => Value::Number(n.clone()),
            Node::Str(s) => Value::String(s.clone()),
            Node::Arr(items) => Value::Array(items.iter().map(Spanned::to_value).collect()),
            Node::Obj(fields) => Value::Object(
                fields
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_value()))
                    .collect(),
            ),
        }
    }

    pub fn get(&self, key: &str) -> Option<&Spanned> {
        match &self.node {
            Node::Obj(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
    /// The fix, when more specific than "fix the syntax".
    pub hint: Option<String>,
}

const MAX_DEPTH: usize = 64;

pub fn parse(text: &str) -> Result<Spanned, SyntaxError> {
    let mut p = Parser {
        src: text.as_bytes(),
        i: 0,
        line: 1,
        col: 1,
    };
    if text.starts_with('\u{feff}') {
        p.bump_n(3);
    }
    p.ws();
    let v = p.value(0)?;
    p.ws();
    if p.i < p.src.len() {
        return Err(p.err("unexpected text after the end of the plan"));
    }
    Ok(v)
}

/// Why `raw` would silently become another number, if it would: `-0`
/// (becomes 0), a non-zero value that underflows to 0 (`1e-400`), an
/// integer beyond 64 bits (becomes an approximate float).
fn unrepresentable(raw: &str, n: &serde_json::Number) -> Option<(String, String)> {
    let (mantissa, _) = raw.split_once(['e', 'E']).unwrap_or((raw, ""));
    let nonzero = mantissa.bytes().any(|b| (b'1'..=b'9').contains(&b));
    let zero = n.as_f64() == Some(0.0) || n.as_u64() == Some(0) || n.as_i64() == Some(0);
    if zero && nonzero {
        return Some((
            format!("number {raw} is too small to represent: it would become 0"),
            "write 0, or use a larger unit".into(),
        ));
    }
    if zero && raw.starts_with('-') {
        return Some((
            format!("number {raw} is a negative zero, which would become 0"),
            "write 0".into(),
        ));
    }
    let integer = !raw.contains(['.', 'e', 'E']);
    if integer && n.as_u64().is_none() && n.as_i64().is_none() {
        return Some((
            format!(
                "integer {raw} does not fit in 64 bits: it would become {}",
                n.as_f64().unwrap_or(f64::NAN)
            ),
            format!(
                "use an integer from {} to {}, or write it as a string",
                i64::MIN,
                u64::MAX
            ),
        ));
    }
    None
}

struct Parser<'a> {
    src: &'a [u8],
    i: usize,
    line: u32,
    col: u32,
}

impl Parser<'_> {
    fn pos(&self) -> Pos {
        Pos {
            line: self.line,
            col: self.col,
        }
    }

    fn err(&self, message: impl Into<String>) -> SyntaxError {
        SyntaxError {
            pos: self.pos(),
            message: message.into(),
            hint: None,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.src.get(self.i).copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        if c == b'\n' {
            self.line += 1;
            self.col = 1;
        } else if c & 0xC0 != 0x80 {
            // count characters, not UTF-8 continuation bytes
            self.col += 1;
        }
        Some(c)
    }

    fn bump_n(&mut self, n: usize) {
        for _ in 0..n {
            self.bump();
        }
    }

    fn ws(&mut self) {
        while let Some(c) = self.peek() {
            if matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
                self.bump();
            } else {
                break;
            }
        }
    }

    fn expect_word(&mut self, word: &str, node: Node, pos: Pos) -> Result<Spanned, SyntaxError> {
        if self.src[self.i..].starts_with(word.as_bytes()) {
            self.bump_n(word.len());
            Ok(Spanned { pos, node })
        } else {
            Err(self
                .err("expected a JSON value (string, number, object, array, true, false or null)"))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Spanned, SyntaxError> {
        if depth > MAX_DEPTH {
            return Err(self.err(format!("nesting deeper than {MAX_DEPTH} levels")));
        }
        let pos = self.pos();
        match self.peek() {
            None => Err(self.err("unexpected end of file")),
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => Ok(Spanned {
                pos,
                node: Node::Str(self.string()?),
            }),
            Some(b't') => self.expect_word("true", Node::Bool(true), pos),
            Some(b'f') => self.expect_word("false", Node::Bool(false), pos),
            Some(b'n') => self.expect_word("null", Node::Null, pos),
            Some(c) if c == b'-' || c.is_ascii_digit() => self.number(),
            Some(b'\'') => Err(self.err("strings use double quotes in JSON, not single quotes")),
            Some(_) => Err(self
                .err("expected a JSON value (string, number, object, array, true, false or null)")),
        }
    }

    fn object(&mut self, depth: usize) -> Result<Spanned, SyntaxError> {
        let pos = self.pos();
        self.bump();
        let mut fields: Vec<(String, Spanned)> = Vec::new();
        self.ws();
        if self.peek() == Some(b'}') {
            self.bump();
            return Ok(Spanned {
                pos,
                node: Node::Obj(fields),
            });
        }
        loop {
            self.ws();
            if self.peek() != Some(b'"') {
                return Err(self.err(if self.peek() == Some(b'}') {
                    "trailing comma before '}' is not allowed in JSON"
                } else {
                    "expected a field name in double quotes"
                }));
            }
            let key_pos = self.pos();
            let key = self.string()?;
            if fields.iter().any(|(k, _)| *k == key) {
                return Err(SyntaxError {
                    pos: key_pos,
                    message: format!("field \"{key}\" appears twice in the same object"),
                    hint: None,
                });
            }
            self.ws();
            if self.bump() != Some(b':') {
                return Err(self.err(format!("expected ':' after field name \"{key}\"")));
            }
            self.ws();
            let v = self.value(depth + 1)?;
            fields.push((key, v));
            self.ws();
            match self.bump() {
                Some(b',') => continue,
                Some(b'}') => {
                    return Ok(Spanned {
                        pos,
                        node: Node::Obj(fields),
                    })
                }
                None => {
                    return Err(self.err("unexpected end of file inside an object (missing '}')"))
                }
                _ => return Err(self.err("expected ',' or '}' after a field (missing comma?)")),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Spanned, SyntaxError> {
        let pos = self.pos();
        self.bump();
        let mut items = Vec::new();
        self.ws();
        if self.peek() == Some(b']') {
            self.bump();
            return Ok(Spanned {
                pos,
                node: Node::Arr(items),
            });
        }
        loop {
            self.ws();
            if self.peek() == Some(b']') {
                return Err(self.err("trailing comma before ']' is not allowed in JSON"));
            }
            items.push(self.value(depth + 1)?);
            self.ws();
            match self.bump() {
                Some(b',') => continue,
                Some(b']') => {
                    return Ok(Spanned {
                        pos,
                        node: Node::Arr(items),
                    })
                }
                None => {
                    return Err(self.err("unexpected end of file inside an array (missing ']')"))
                }
                _ => {
                    return Err(self.err("expected ',' or ']' after an array item (missing comma?)"))
                }
            }
        }
    }

    fn number(&mut self) -> Result<Spanned, SyntaxError> {
        let pos = self.pos();
        let start = self.i;
        while let Some(c) = self.peek() {
            if c.is_ascii_digit() || matches!(c, b'-' | b'+' | b'.' | b'e' | b'E') {
                self.bump();
            } else {
                break;
            }
        }
        let raw = std::str::from_utf8(&self.src[start..self.i]).unwrap_or("");
        match serde_json::from_str::<serde_json::Number>(raw) {
            Ok(n) => match unrepresentable(raw, &n) {
                Some((message, hint)) => Err(SyntaxError {
                    pos,
                    message,
                    hint: Some(hint),
                }),
                None => Ok(Spanned {
                    pos,
                    node: Node::Num(n),
                }),
            },
            Err(e) if e.to_string().contains("out of range") => Err(SyntaxError {
                pos,
                message: format!("number {raw} is out of range"),
                hint: None,
            }),
            Err(_) => Err(SyntaxError {
                pos,
                message: format!("invalid number {raw:?}"),
                hint: None,
            }),
        }
    }

    fn string(&mut self) -> Result<String, SyntaxError> {
        self.bump(); // opening quote
        let mut out: Vec<u8> = Vec::new();
        loop {
            let Some(c) = self.peek() else {
                return Err(self.err("unexpected end of file inside a string (missing '\"')"));
            };
            match c {
                b'"' => {
                    self.bump();
                    break;
                }
                b'\\' => {
                    self.bump();
                    let esc = self
                        .bump()
                        .ok_or_else(|| self.err("unexpected end of file in an escape"))?;
                    match esc {
                        b'"' => out.push(b'"'),
                        b'\\' => out.push(b'\\'),
                        b'/' => out.push(b'/'),
                        b'b' => out.push(8),
                        b'f' => out.push(12),
                        b'n' => out.push(b'\n'),
                        b'r' => out.push(b'\r'),
                        b't' => out.push(b'\t'),
                        b'u' => {
                            let mut cp = self.hex4()?;
                            if (0xD800..0xDC00).contains(&cp) {
                                if self.peek() == Some(b'\\') {
                                    self.bump();
                                    if self.bump() != Some(b'u') {
                                        return Err(self.err("expected a low surrogate \\u escape"));
                                    }
                                    let lo = self.hex4()?;
                                    if !(0xDC00..0xE000).contains(&lo) {
                                        return Err(self.err("invalid low surrogate in \\u escape"));
                                    }
                                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                                } else {
                                    return Err(self.err("unpaired surrogate in \\u escape"));
                                }
                            }
                            let ch =
                                char::from_u32(cp).ok_or_else(|| self.err("invalid \\u escape"))?;
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                        }
                        _ => return Err(self.err("invalid escape sequence in string")),
                    }
                }
                c if c < 0x20 => {
                    return Err(
                        self.err("control character inside a string (use \\n, \\t or \\u escapes)")
                    );
                }
                _ => {
                    out.push(c);
                    self.bump();
                }
            }
        }
        String::from_utf8(out).map_err(|_| self.err("string is not valid UTF-8"))
    }

    fn hex4(&mut self) -> Result<u32, SyntaxError> {
        let mut v = 0u32;
        for _ in 0..4 {
            let c = self
                .bump()
                .ok_or_else(|| self.err("unexpected end of file in \\u escape"))?;
            let d = (c as char)
                .to_digit(16)
                .ok_or_else(|| self.err("invalid hex digit in \\u escape"))?;
            v = v * 16 + d;
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_point_at_values() {
        let v = parse("{\n  \"a\": [1, {\"b\": \"x\"}]\n}").unwrap();
        let a = v.get("a").unwrap();
        assert_eq!(a.pos, Pos { line: 2, col: 8 });
        let Node::Arr(items) = &a.node else {
            panic!("not an array")
        };
        assert_eq!(items[1].get("b").unwrap().pos, Pos { line: 2, col: 18 });
    }

    #[test]
    fn numbers_that_would_change_value_are_reported_at_their_position() {
        for (text, want) in [
            ("[-0]", "negative zero"),
            ("[1, -0.0]", "negative zero"),
            ("[1e-400]", "too small"),
            ("[-2.5e-999]", "too small"),
            ("[18446744073709551616]", "does not fit in 64 bits"),
            ("[-9223372036854775809]", "does not fit in 64 bits"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.message.contains(want), "{text}: {}", e.message);
            assert_eq!(e.pos.line, 1);
            assert!(e.hint.is_some());
        }
        assert_eq!(parse("[1, -0]").unwrap_err().pos, Pos { line: 1, col: 5 });
        for ok in [
            "[0]",
            "[0.0]",
            "[0e5]",
            "[18446744073709551615]",
            "[-9223372036854775808]",
            "[1e300]",
            "[1.5e-300]",
        ] {
            assert!(parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn syntax_errors_have_positions() {
        let e = parse("{\n \"a\": 1,\n}").unwrap_err();
        assert_eq!(e.pos.line, 3);
        assert!(e.message.contains("trailing comma"), "{}", e.message);
        let e = parse("{\"a\": 1 \"b\": 2}").unwrap_err();
        assert!(e.message.contains("missing comma"), "{}", e.message);
        assert!(parse("[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]").is_err());
        assert!(parse("1e999").unwrap_err().message.contains("out of range"));
        assert!(parse("{\"a\":1,\"a\":2}")
            .unwrap_err()
            .message
            .contains("twice"));
    }

    #[test]
    fn strings_decode_escapes() {
        let v = parse(r#""a\"b\u00e9\ud83d\ude00\n""#).unwrap();
        assert_eq!(v.node, Node::Str("a\"bé😀\n".into()));
    }
}
