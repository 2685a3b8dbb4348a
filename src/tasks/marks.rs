//! Where each value lands in a rendered task template.
//!
//! A task template is rendered with every value replaced by a marker
//! (`U+E000 <index> U+E001`) that points into a side table holding the
//! variable's name and its raw value. Once the rendered JSON is parsed, each
//! marker is resolved for the place it landed in: shell-quoted in commands
//! (after the shell lint of `super::lint` has checked that the template does
//! not put it inside its own quotes), the raw value in `env`, and the
//! quoted form everywhere else (as before markers existed). So a value never
//! changes the JSON structure, an object renders as its JSON text, and
//! `{{{v}}}` (no quoting at all) can be found in commands.
//!
//! The same pass limits how deep partials nest: `{{> a}}` in `b` and
//! `{{> b}}` in `a` would otherwise recurse until the stack overflows.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use handlebars::template::{Parameter, Subexpression, TemplateElement};
use handlebars::{
    Context, Handlebars, Helper, HelperDef, HelperResult, Output, Path as HbPath, RenderContext,
    RenderError, RenderErrorReason, Template,
};
use serde_json::Value;

use super::shell;

pub(crate) const OPEN: char = '\u{E000}';
pub(crate) const CLOSE: char = '\u{E001}';
/// Partials may include partials this deep; a cycle stops here.
pub const MAX_PARTIAL_DEPTH: usize = 16;

const VALUE: &str = "__infra_value";
const TRIPLE: &str = "__infra_triple";
const ENTER: &str = "__infra_partial_enter";
const LEAVE: &str = "__infra_partial_leave";

/// The helpers a name-only expression (`{{name}}`) may call.
const HELPERS: &[&str] = &[
    "if", "unless", "each", "with", "lookup", "raw", "log", "eq", "ne", "gt", "gte", "lt", "lte",
    "and", "or", "not", "len", "json", "add", "sub", "mul", "div", "min", "max", "round", "ceil",
    "floor", "default", VALUE, TRIPLE, ENTER, LEAVE,
];

/// One value a template inserted.
#[derive(Debug, Clone, PartialEq)]
pub struct Slot {
    /// The variable (`model`, `this`, `a.b`) or `a helper's value`.
    pub name: String,
    pub raw: String,
    /// Inserted with `{{{...}}}`: no quoting.
    pub triple: bool,
}

/// The side table of one render.
#[derive(Clone, Default)]
pub struct Slots(Arc<Mutex<Vec<Slot>>>);

impl Slots {
    fn push(&self, slot: Slot) -> String {
        let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        v.push(slot);
        format!("{OPEN}{}{CLOSE}", v.len() - 1)
    }

    /// Take the slots of the render that just finished (and start afresh).
    pub fn take(&self) -> Vec<Slot> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The text a value renders as: strings as they are, objects and arrays as
/// JSON text, null as nothing.
pub fn raw_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Object(_) | Value::Array(_) => serde_json::to_string(v).unwrap_or_default(),
        other => other.to_string(),
    }
}

struct ValueHelper {
    slots: Slots,
    triple: bool,
}

impl HelperDef for ValueHelper {
    fn call<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
        out: &mut dyn Output,
    ) -> HelperResult {
        let p = h
            .param(0)
            .ok_or(RenderErrorReason::ParamNotFoundForIndex("value", 0))?;
        if p.is_value_missing() {
            return Err(RenderError::strict_error(p.relative_path()));
        }
        let name = p
            .relative_path()
            .cloned()
            .unwrap_or_else(|| "a helper's value".to_string());
        let raw = raw_text(p.value());
        out.write(&self.slots.push(Slot {
            name,
            raw,
            triple: self.triple,
        }))?;
        Ok(())
    }
}

/// The depth of partials in the render under way.
struct Depth(Arc<AtomicUsize>, bool);

impl HelperDef for Depth {
    fn call<'reg: 'rc, 'rc>(
        &self,
        _: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        rc: &mut RenderContext<'reg, 'rc>,
        _: &mut dyn Output,
    ) -> HelperResult {
        if self.1 {
            let d = self.0.fetch_add(1, Ordering::SeqCst) + 1;
            if d > MAX_PARTIAL_DEPTH {
                let from = rc.get_current_template_name().cloned().unwrap_or_default();
                return Err(RenderErrorReason::Other(format!(
                    "partials nest more than {MAX_PARTIAL_DEPTH} deep (in \"{from}\"): a partial includes itself, directly or through others"
                ))
                .into());
            }
        } else {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
        Ok(())
    }
}

/// The registry for task templates: values become markers.
pub struct Marking {
    pub slots: Slots,
    depth: Arc<AtomicUsize>,
}

impl Marking {
    pub fn install(hb: &mut Handlebars<'static>) -> Marking {
        let slots = Slots::default();
        let depth = Arc::new(AtomicUsize::new(0));
        let s = slots.clone();
        // Values a helper returns (`{{lookup m "k"}}`) arrive here as text.
        // A value never enters the rendered text itself (only its marker),
        // so whatever characters it holds cannot pass for a marker.
        hb.register_escape_fn(move |v| {
            s.push(Slot {
                name: "a helper's value".into(),
                raw: v.to_string(),
                triple: false,
            })
        });
        let helper = |triple| {
            Box::new(ValueHelper {
                slots: slots.clone(),
                triple,
            })
        };
        hb.register_helper(VALUE, helper(false));
        hb.register_helper(TRIPLE, helper(true));
        hb.register_helper(ENTER, Box::new(Depth(depth.clone(), true)));
        hb.register_helper(LEAVE, Box::new(Depth(depth.clone(), false)));
        Marking { slots, depth }
    }

    /// Before each render.
    pub fn reset(&self) {
        self.slots.take();
        self.depth.store(0, Ordering::SeqCst);
    }
}

/// Compile `text` with every value expression routed through the marking
/// helpers and every partial counted.
pub fn compile(text: &str) -> Result<Template, String> {
    if text.contains([OPEN, CLOSE]) {
        return Err("the template contains the private-use characters U+E000/U+E001".into());
    }
    let mut t = Template::compile(text).map_err(|e| e.to_string())?;
    transform(&mut t);
    Ok(t)
}

fn helper_call(name: &str) -> TemplateElement {
    let mut t = Template::compile(&format!("{{{{{name}}}}}")).expect("a helper call compiles");
    t.elements.remove(0)
}

fn is_helper(p: &Parameter) -> bool {
    matches!(p, Parameter::Name(n) if HELPERS.contains(&n.as_str()))
        || matches!(p, Parameter::Path(_) if HELPERS.contains(&p.as_name().unwrap_or("")))
}

fn as_path(p: &Parameter) -> Parameter {
    match p {
        Parameter::Name(n) => HbPath::parse(n)
            .map(Parameter::Path)
            .unwrap_or_else(|_| p.clone()),
        other => other.clone(),
    }
}

fn transform(t: &mut Template) {
    let old = std::mem::take(&mut t.elements);
    let old_map = std::mem::take(&mut t.mapping);
    for (i, e) in old.into_iter().enumerate() {
        let map = old_map.get(i).cloned();
        let mut push = |e: TemplateElement| {
            t.elements.push(e);
            if let Some(m) = &map {
                t.mapping.push(m.clone());
            }
        };
        match e {
            TemplateElement::Expression(mut ht) if is_value(&ht) => {
                ht.params = vec![as_path(&ht.name)];
                ht.name = Parameter::Name(VALUE.into());
                push(TemplateElement::Expression(ht));
            }
            TemplateElement::HtmlExpression(mut ht) if !ht.block => {
                let inner = if is_value(&ht) {
                    as_path(&ht.name)
                } else {
                    Parameter::Subexpression(Subexpression::new(
                        ht.name.clone(),
                        ht.params.clone(),
                        ht.hash.clone(),
                    ))
                };
                ht.params = vec![inner];
                ht.hash.clear();
                ht.name = Parameter::Name(TRIPLE.into());
                push(TemplateElement::Expression(ht));
            }
            TemplateElement::HelperBlock(mut ht) => {
                if let Some(inner) = ht.template.as_mut() {
                    transform(inner);
                }
                if let Some(inner) = ht.inverse.as_mut() {
                    transform(inner);
                }
                push(TemplateElement::HelperBlock(ht));
            }
            TemplateElement::PartialExpression(_) | TemplateElement::PartialBlock(_) => {
                let e = match e {
                    TemplateElement::PartialBlock(mut dt) => {
                        if let Some(inner) = dt.template.as_mut() {
                            transform(inner);
                        }
                        TemplateElement::PartialBlock(dt)
                    }
                    other => other,
                };
                push(helper_call(ENTER));
                push(e);
                push(helper_call(LEAVE));
            }
            TemplateElement::DecoratorBlock(mut dt) => {
                if let Some(inner) = dt.template.as_mut() {
                    transform(inner);
                }
                push(TemplateElement::DecoratorBlock(dt));
            }
            other => push(other),
        }
    }
}

/// `{{name}}` that renders a value (not a helper call).
fn is_value(ht: &handlebars::template::HelperTemplate) -> bool {
    !ht.block
        && ht.params.is_empty()
        && ht.hash.is_empty()
        && !is_helper(&ht.name)
        && !matches!(ht.name, Parameter::Subexpression(_) | Parameter::Literal(_))
}

/// How a marker resolves where it landed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum As {
    /// Shell-quoted (commands, names, paths: as values always were).
    Quoted,
    /// The value itself (`env`).
    Raw,
}

/// Replace the markers in a parsed string.
pub fn resolve(s: &str, slots: &[Slot], how: As) -> String {
    let mut out = String::with_capacity(s.len());
    for piece in pieces(s) {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Slot(i) => match slots.get(i) {
                Some(slot) if slot.triple || how == As::Raw => out.push_str(&slot.raw),
                Some(slot) => out.push_str(&shell::quote(&slot.raw)),
                None => {}
            },
        }
    }
    out
}

#[derive(Debug, PartialEq)]
pub enum Piece<'a> {
    Text(&'a str),
    Slot(usize),
}

/// A string split into text and markers.
pub fn pieces(s: &str) -> Vec<Piece<'_>> {
    let mut v = Vec::new();
    let mut rest = s;
    while let Some(a) = rest.find(OPEN) {
        let Some(len) = rest[a..].find(CLOSE) else {
            break;
        };
        let b = a + len;
        if a > 0 {
            v.push(Piece::Text(&rest[..a]));
        }
        let idx = rest[a + OPEN.len_utf8()..b].parse().unwrap_or(usize::MAX);
        v.push(Piece::Slot(idx));
        rest = &rest[b + CLOSE.len_utf8()..];
    }
    if !rest.is_empty() {
        v.push(Piece::Text(rest));
    }
    v
}

/// The rendered text with markers outside JSON strings (`"nodes": {{n}}`)
/// replaced as values always were: `{{v}}` quoted and JSON-escaped, `{{{v}}}`
/// verbatim. With `all`, markers inside strings are replaced too (the text
/// a parse error is reported against).
pub fn outside_strings(text: &str, slots: &[Slot], all: bool) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut in_str, mut esc) = (false, false);
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if c == OPEN && (all || !in_str) {
            if let Some(len) = rest.find(CLOSE) {
                let idx: usize = rest[OPEN.len_utf8()..len].parse().unwrap_or(usize::MAX);
                if let Some(slot) = slots.get(idx) {
                    if slot.triple {
                        out.push_str(&slot.raw);
                    } else {
                        out.push_str(&shell::json_escape(&shell::quote(&slot.raw)));
                    }
                }
                rest = &rest[len + CLOSE.len_utf8()..];
                continue;
            }
        }
        if in_str {
            if esc {
                esc = false;
            } else if c == '\\' {
                esc = true;
            } else if c == '"' {
                in_str = false;
            }
        } else if c == '"' {
            in_str = true;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(tpl: &str, ctx: Value) -> (String, Vec<Slot>) {
        let mut hb = Handlebars::new();
        hb.set_strict_mode(true);
        let m = Marking::install(&mut hb);
        hb.register_template("t", compile(tpl).unwrap());
        m.reset();
        let text = hb.render("t", &ctx).unwrap();
        (text, m.slots.take())
    }

    #[test]
    fn values_become_markers_with_their_names() {
        let (text, slots) = render(
            "a {{v}} b {{{w}}} {{o}} {{#each l}}{{this}}{{/each}}",
            serde_json::json!({"v": "x y", "w": "$(z)", "o": {"k": [1]}, "l": [1, "two"]}),
        );
        assert_eq!(
            text,
            "a \u{E000}0\u{E001} b \u{E000}1\u{E001} \u{E000}2\u{E001} \u{E000}3\u{E001}\u{E000}4\u{E001}"
        );
        assert_eq!(slots[0].name, "v");
        assert!(!slots[0].triple && slots[1].triple);
        assert_eq!(slots[2].raw, r#"{"k":[1]}"#);
        assert_eq!(slots[4].raw, "two");
        assert_eq!(
            resolve(&text, &slots, As::Quoted),
            "a 'x y' b $(z) '{\"k\":[1]}' 1two"
        );
        assert_eq!(
            resolve(&text, &slots, As::Raw),
            "a x y b $(z) {\"k\":[1]} 1two"
        );
    }

    #[test]
    fn markers_outside_strings_resolve_as_before() {
        let (text, slots) = render(
            r#"{"n": {{n}}, "s": "{{v}}"}"#,
            serde_json::json!({"n": 2, "v": "a b"}),
        );
        assert_eq!(
            outside_strings(&text, &slots, false),
            "{\"n\": 2, \"s\": \"\u{E000}1\u{E001}\"}"
        );
        assert_eq!(
            outside_strings(&text, &slots, true),
            r#"{"n": 2, "s": "'a b'"}"#
        );
    }

    #[test]
    fn missing_variables_stay_strict_errors() {
        let mut hb = Handlebars::new();
        hb.set_strict_mode(true);
        let _m = Marking::install(&mut hb);
        hb.register_template("t", compile("{{nope}}").unwrap());
        let e = hb.render("t", &serde_json::json!({})).unwrap_err();
        assert!(
            matches!(e.reason(), RenderErrorReason::MissingVariable(Some(v)) if v == "nope"),
            "{e:?}"
        );
    }

    #[test]
    fn recursive_partials_stop_at_the_depth_limit() {
        let mut hb = Handlebars::new();
        hb.set_strict_mode(true);
        let m = Marking::install(&mut hb);
        hb.register_template("a", compile("a{{> b}}").unwrap());
        hb.register_template("b", compile("b{{> a}}").unwrap());
        m.reset();
        let e = hb.render("a", &serde_json::json!({})).unwrap_err();
        assert!(e.to_string().contains("partials nest more than 16"), "{e}");
        hb.register_template("c", compile("{{> d}}{{> d}}").unwrap());
        hb.register_template("d", compile("d").unwrap());
        m.reset();
        assert_eq!(hb.render("c", &serde_json::json!({})).unwrap(), "dd");
    }
}
