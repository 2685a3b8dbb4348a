//! A YAML document as a tree that remembers where each value is, so a
//! problem in a suite design names its line and column.
//!
//! Scalars are resolved as YAML 1.2's core schema does (what ruamel.yaml,
//! which doe-suite uses, does): `true`/`True`/`TRUE` are booleans, `null`/`~`
//! is null, numbers are numbers, everything quoted is a string.

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A position in the source: 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

impl std::fmt::Display for Pos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Marked>),
    /// Keys in document order, each with its own position.
    Map(Vec<(String, Pos, Marked)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Marked {
    pub node: Node,
    pub pos: Pos,
}

impl Marked {
    pub fn get(&self, key: &str) -> Option<&Marked> {
        match &self.node {
            Node::Map(m) => m.iter().find(|(k, _, _)| k == key).map(|(_, _, v)| v),
            _ => None,
        }
    }

    /// The value as JSON (maps keep their order).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        match &self.node {
            Node::Null => Value::Null,
            Node::Bool(b) => Value::Bool(*b),
            Node::Int(i) => Value::from(*i),
            Node::Float(f) => serde_json::Number::from_f64(*f)
                .map(Value::Number)
                .unwrap_or_else(|| Value::String(f.to_string())),
            Node::Str(s) => Value::String(s.clone()),
            Node::Seq(v) => Value::Array(v.iter().map(Marked::to_json).collect()),
            Node::Map(m) => {
                Value::Object(m.iter().map(|(k, _, v)| (k.clone(), v.to_json())).collect())
            }
        }
    }

    /// What kind of value this is, for messages.
    pub fn kind(&self) -> &'static str {
        match &self.node {
            Node::Null => "null",
            Node::Bool(_) => "a boolean",
            Node::Int(_) | Node::Float(_) => "a number",
            Node::Str(_) => "a string",
            Node::Seq(_) => "a list",
            Node::Map(_) => "a mapping",
        }
    }
}

/// A YAML syntax error, or a construct this reader does not take.
#[derive(Debug, Clone, PartialEq)]
pub struct YamlError {
    pub pos: Pos,
    pub message: String,
}

fn pos(m: &Marker) -> Pos {
    Pos {
        line: m.line().max(1),
        col: m.col() + 1,
    }
}

enum Frame {
    Seq(Pos, Vec<Marked>),
    Map(Pos, Vec<(String, Pos, Marked)>, Option<(String, Pos)>),
}

struct Builder {
    stack: Vec<Frame>,
    anchors: std::collections::HashMap<usize, Marked>,
    /// Anchor ids of the open collections, to record them when they close.
    open_anchors: Vec<usize>,
    docs: Vec<Marked>,
    error: Option<YamlError>,
}

impl Builder {
    fn push(&mut self, v: Marked) {
        match self.stack.last_mut() {
            None => self.docs.push(v),
            Some(Frame::Seq(_, items)) => items.push(v),
            Some(Frame::Map(_, entries, key)) => match key.take() {
                None => match &v.node {
                    Node::Str(s) => *key = Some((s.clone(), v.pos)),
                    Node::Int(i) => *key = Some((i.to_string(), v.pos)),
                    Node::Bool(b) => *key = Some((py_bool(*b).into(), v.pos)),
                    Node::Float(f) => *key = Some((f.to_string(), v.pos)),
                    Node::Null => *key = Some(("None".into(), v.pos)),
                    _ => {
                        if self.error.is_none() {
                            self.error = Some(YamlError {
                                pos: v.pos,
                                message:
                                    "a mapping key must be a plain value, not a list or mapping"
                                        .into(),
                            });
                        }
                        *key = Some((String::new(), v.pos));
                    }
                },
                Some((k, kp)) => {
                    if entries.iter().any(|(e, _, _)| *e == k) && self.error.is_none() {
                        self.error = Some(YamlError {
                            pos: kp,
                            message: format!("duplicate key \"{k}\""),
                        });
                    }
                    entries.push((k, kp, v));
                }
            },
        }
    }
}

fn py_bool(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let p = pos(&mark);
        match ev {
            Event::Scalar(s, style, anchor, tag) => {
                let node = if style == TScalarStyle::Plain && tag.is_none() {
                    resolve(&s)
                } else {
                    Node::Str(s)
                };
                let m = Marked { node, pos: p };
                if anchor > 0 {
                    self.anchors.insert(anchor, m.clone());
                }
                self.push(m);
            }
            Event::SequenceStart(anchor, _) => {
                self.open_anchors.push(anchor);
                self.stack.push(Frame::Seq(p, Vec::new()));
            }
            Event::MappingStart(anchor, _) => {
                self.open_anchors.push(anchor);
                self.stack.push(Frame::Map(p, Vec::new(), None));
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let anchor = self.open_anchors.pop().unwrap_or(0);
                let m = match self.stack.pop() {
                    Some(Frame::Seq(p, items)) => Marked {
                        node: Node::Seq(items),
                        pos: p,
                    },
                    // a block mapping's start event comes after its first
                    // key: the first key is where it starts for a reader
                    Some(Frame::Map(p, entries, _)) => Marked {
                        pos: entries.first().map_or(p, |(_, kp, _)| (*kp).min(p)),
                        node: Node::Map(entries),
                    },
                    None => return,
                };
                if anchor > 0 {
                    self.anchors.insert(anchor, m.clone());
                }
                self.push(m);
            }
            Event::Alias(id) => {
                let m = match self.anchors.get(&id) {
                    Some(m) => Marked {
                        node: m.node.clone(),
                        pos: p,
                    },
                    None => Marked {
                        node: Node::Null,
                        pos: p,
                    },
                };
                self.push(m);
            }
            _ => {}
        }
    }
}

/// A plain scalar by YAML 1.2's core schema.
fn resolve(s: &str) -> Node {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Node::Null,
        "true" | "True" | "TRUE" => return Node::Bool(true),
        "false" | "False" | "FALSE" => return Node::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Node::Float(f64::INFINITY)
        }
        "-.inf" | "-.Inf" | "-.INF" => return Node::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Node::Float(f64::NAN),
        _ => {}
    }
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    let unsigned = s.strip_prefix(['-', '+']).unwrap_or(s);
    if digits(unsigned) {
        if let Ok(i) = s.parse::<i64>() {
            return Node::Int(i);
        }
    }
    if let Some(h) = s.strip_prefix("0x") {
        if let Ok(i) = i64::from_str_radix(h, 16) {
            return Node::Int(i);
        }
    }
    if let Some(o) = s.strip_prefix("0o") {
        if let Ok(i) = i64::from_str_radix(o, 8) {
            return Node::Int(i);
        }
    }
    // [-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?
    let (mant, exp) = match unsigned.find(['e', 'E']) {
        Some(i) => (&unsigned[..i], Some(&unsigned[i + 1..])),
        None => (unsigned, None),
    };
    let mant_ok = match mant.split_once('.') {
        Some((a, b)) => {
            (digits(a) || a.is_empty())
                && (digits(b) || b.is_empty())
                && !(a.is_empty() && b.is_empty())
        }
        None => false,
    } || (digits(mant) && exp.is_some());
    let exp_ok = exp.is_none_or(|e| digits(e.strip_prefix(['-', '+']).unwrap_or(e)));
    if mant_ok && exp_ok {
        if let Ok(f) = s.parse::<f64>() {
            return Node::Float(f);
        }
    }
    Node::Str(s.to_string())
}

/// Parse one YAML document.
pub fn parse(text: &str) -> Result<Marked, YamlError> {
    let mut b = Builder {
        stack: Vec::new(),
        anchors: Default::default(),
        open_anchors: Vec::new(),
        docs: Vec::new(),
        error: None,
    };
    let mut parser = Parser::new_from_str(text);
    if let Err(e) = parser.load(&mut b, false) {
        return Err(YamlError {
            pos: pos(e.marker()),
            message: e.info().to_string(),
        });
    }
    if let Some(e) = b.error {
        return Err(e);
    }
    Ok(b.docs.into_iter().next().unwrap_or(Marked {
        node: Node::Null,
        pos: Pos { line: 1, col: 1 },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_resolve_like_yaml_1_2() {
        let d = parse("a: True\nb: yes\nc: 1.5\nd: '3'\ne: ~\nf: 1e-5\ng: 10\nh: 1_0\n").unwrap();
        let j = d.to_json();
        assert_eq!(j["a"], true);
        assert_eq!(j["b"], "yes");
        assert_eq!(j["c"], 1.5);
        assert_eq!(j["d"], "3");
        assert_eq!(j["e"], serde_json::Value::Null);
        assert_eq!(j["f"], 1e-5);
        assert_eq!(j["g"], 10);
        assert_eq!(j["h"], "1_0");
    }

    #[test]
    fn positions_are_one_based_lines_and_columns() {
        let d = parse("top:\n  inner: [1, 2]\n").unwrap();
        let inner = d.get("top").unwrap().get("inner").unwrap();
        assert_eq!(inner.pos, Pos { line: 2, col: 10 });
        match &d.get("top").unwrap().node {
            Node::Map(m) => assert_eq!(m[0].1, Pos { line: 2, col: 3 }),
            _ => panic!(),
        }
    }

    #[test]
    fn a_syntax_error_has_a_position() {
        let e = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(e.pos.line >= 1, "{e:?}");
        let e = parse("a: 1\na: 2\n").unwrap_err();
        assert_eq!(e.pos, Pos { line: 2, col: 1 });
        assert!(e.message.contains("duplicate"));
    }
}
