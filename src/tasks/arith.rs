//! Arithmetic for task templates, so that a template computes what the
//! team's Jinja2 templates computed (`max_model_len = prompt_tokens +
//! max_tokens + 64`): `{{add a b ...}}`, `{{sub a b}}`, `{{mul a b ...}}`,
//! `{{div a b}}`, `{{min a b ...}}`, `{{max a b ...}}`, `{{round x}}`,
//! `{{ceil x}}`, `{{floor x}}`, and `{{default x y}}` (x unless it is
//! missing or null). Usable as values (`--max-model-len {{add p m 64}}`,
//! shell-quoted like any value) and in subexpressions (`{{#if (gt (add p
//! m) 8192)}}`). A whole result is an integer (`12` not `12.0`); a
//! non-number, or a division by zero, is an error naming the helper.

use handlebars::{
    Context, Handlebars, Helper, HelperDef, RenderContext, RenderError, RenderErrorReason,
    ScopedJson,
};
use serde_json::Value;

#[derive(Clone, Copy)]
enum Op {
    Add,
    Sub,
    Mul,
    Div,
    Min,
    Max,
    Round,
    Ceil,
    Floor,
}

pub const NAMES: &[&str] = &[
    "add", "sub", "mul", "div", "min", "max", "round", "ceil", "floor", "default",
];

struct Arith(&'static str, Op);
struct Default;

fn number(name: &str, i: usize, v: &Value) -> Result<f64, RenderError> {
    v.as_f64().filter(|f| f.is_finite()).ok_or_else(|| {
        RenderErrorReason::Other(format!(
            "{{{{{name} ...}}}}: parameter {} is {v}, not a number",
            i + 1
        ))
        .into()
    })
}

/// A whole number as an integer, else the float.
fn value(f: f64) -> Value {
    if f.fract() == 0.0 && f.abs() < 9.0e15 {
        Value::from(f as i64)
    } else {
        Value::from(f)
    }
}

impl HelperDef for Arith {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let Arith(name, op) = *self;
        let xs: Vec<f64> = h
            .params()
            .iter()
            .enumerate()
            .map(|(i, p)| number(name, i, p.value()))
            .collect::<Result<_, _>>()?;
        let unary = matches!(op, Op::Round | Op::Ceil | Op::Floor);
        let want = if unary { 1..=1 } else { 2..=64 };
        if !want.contains(&xs.len()) {
            return Err(RenderErrorReason::Other(format!(
                "{{{{{name} ...}}}} takes {} number(s), got {}",
                if unary { "1" } else { "2 or more" },
                xs.len()
            ))
            .into());
        }
        let r = match op {
            Op::Add => xs.iter().sum(),
            Op::Mul => xs.iter().product(),
            Op::Sub => xs[1..].iter().fold(xs[0], |a, b| a - b),
            Op::Div => {
                if xs[1..].contains(&0.0) {
                    return Err(RenderErrorReason::Other(format!(
                        "{{{{{name} ...}}}}: division by zero"
                    ))
                    .into());
                }
                xs[1..].iter().fold(xs[0], |a, b| a / b)
            }
            Op::Min => xs.iter().copied().fold(f64::INFINITY, f64::min),
            Op::Max => xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            Op::Round => xs[0].round(),
            Op::Ceil => xs[0].ceil(),
            Op::Floor => xs[0].floor(),
        };
        Ok(ScopedJson::Derived(value(r)))
    }
}

impl HelperDef for Default {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let first = h
            .param(0)
            .filter(|p| !p.is_value_missing() && !p.value().is_null());
        match first.or_else(|| h.param(1)) {
            Some(p) => Ok(ScopedJson::Derived(p.value().clone())),
            None => {
                Err(RenderErrorReason::Other("{{default x y}} takes 2 parameters".into()).into())
            }
        }
    }
}

pub fn register(hb: &mut Handlebars<'static>) {
    for (name, op) in [
        ("add", Op::Add),
        ("sub", Op::Sub),
        ("mul", Op::Mul),
        ("div", Op::Div),
        ("min", Op::Min),
        ("max", Op::Max),
        ("round", Op::Round),
        ("ceil", Op::Ceil),
        ("floor", Op::Floor),
    ] {
        hb.register_helper(name, Box::new(Arith(name, op)));
    }
    hb.register_helper("default", Box::new(Default));
}
