//! Rendering task templates (Handlebars, strict) into task definitions.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use handlebars::{Handlebars, RenderErrorReason};
use serde_json::{Map, Value};
use thiserror::Error;

use super::marks::{self, Marking, Slot};
use super::model::{Step, TaskDef, TemplateOutput};
use super::unused::{misspelt, mustache_words, unread};
use crate::plan::decode::rel;
use crate::plan::diag::unsafe_id_reason;
use crate::plan::{Pattern, Plan};

pub const TASK_FORMAT_VERSION: u32 = 1;
const MAX_STEP_TIMEOUT: u64 = 172_800;

#[derive(Debug, Error)]
pub enum RenderError {
    #[error("cannot read template {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("template {path} does not compile: {message}\n  (hint: check the {{{{...}}}} expressions near that position)")]
    Compile { path: String, message: String },
    #[error("{count} task definition problem{s}:{list}", s = if *count == 1 { "" } else { "s" })]
    Tasks { count: usize, list: String },
}

/// One template problem for one pattern.
#[derive(Debug, Clone)]
pub struct TaskProblem {
    pub pattern: String,
    pub template: String,
    pub message: String,
    pub hint: String,
}

/// Values become markers (`marks`), resolved for where they land once the
/// rendered task is parsed: shell-quoted in commands, raw in `env`.
fn registry() -> (Handlebars<'static>, Marking) {
    let mut hb = Handlebars::new();
    hb.set_strict_mode(true);
    let marking = Marking::install(&mut hb);
    hb.register_helper("json", Box::new(task_json_helper));
    super::arith::register(&mut hb);
    (hb, marking)
}

/// `{{json v}}` in task templates: as `json_helper`, refusing the marker characters.
fn task_json_helper(
    h: &handlebars::Helper,
    _: &Handlebars,
    _: &handlebars::Context,
    _: &mut handlebars::RenderContext,
    out: &mut dyn handlebars::Output,
) -> handlebars::HelperResult {
    let text = json_param(h)?;
    if text.contains([marks::OPEN, marks::CLOSE]) {
        return Err(RenderErrorReason::Other(
            "a value contains the private-use characters U+E000/U+E001, which task templates reserve".into(),
        )
        .into());
    }
    out.write(&text)?;
    Ok(())
}

/// `{{{json value}}}`: the value as JSON text (also used by the stack templates).
pub(crate) fn json_helper(
    h: &handlebars::Helper,
    _: &Handlebars,
    _: &handlebars::Context,
    _: &mut handlebars::RenderContext,
    out: &mut dyn handlebars::Output,
) -> handlebars::HelperResult {
    out.write(&json_param(h)?)?;
    Ok(())
}

/// The first parameter of `{{json v}}` as JSON text.
fn json_param(h: &handlebars::Helper) -> Result<String, RenderErrorReason> {
    let v = h
        .param(0)
        .ok_or(RenderErrorReason::ParamNotFoundForIndex("json", 0))?;
    Ok(serde_json::to_string(v.value()).unwrap_or_default())
}

/// The variables a template sees for one pattern.
pub fn context(plan: &Plan, p: &Pattern) -> Value {
    let mut ctx: Map<String, Value> = p.vars.clone();
    ctx.insert("phase".into(), Value::String(plan.phase.clone()));
    ctx.insert(
        "phase_name".into(),
        Value::String(plan.phase_name().to_string()),
    );
    ctx.insert("pattern_id".into(), Value::String(p.id.clone()));
    ctx.insert("layer_id".into(), Value::String(p.layer.clone()));
    ctx.insert("backend".into(), Value::String(p.backend.clone()));
    ctx.insert("node_group".into(), Value::String(p.node_group.clone()));
    if let Some(g) = plan.node_group(&p.node_group) {
        ctx.insert(
            "instance_type".into(),
            Value::String(g.instance_type.clone()),
        );
        ctx.insert("slots".into(), Value::from(g.slots));
        ctx.insert("node_count".into(), Value::from(g.count));
    }
    if let Some((i, k)) = p.partition {
        ctx.insert("partition".into(), Value::from(i));
        ctx.insert("n_partitions".into(), Value::from(k));
    }
    Value::Object(ctx)
}

pub struct Rendered {
    pub tasks: Vec<TaskDef>,
    /// Fields no template reads (`infra plan` shows them).
    pub warnings: Vec<String>,
}

/// Render every pattern of the plan; all problems are collected, and the
/// settings no template reads are found.
pub fn render_all(plan: &Plan, patterns: &[&Pattern]) -> Result<Rendered, RenderError> {
    render_patterns(plan, patterns, true)
}

/// Render some patterns only (no whole-plan checks).
pub fn render_some(plan: &Plan, patterns: &[&Pattern]) -> Result<Rendered, RenderError> {
    render_patterns(plan, patterns, false)
}

fn render_patterns(
    plan: &Plan,
    patterns: &[&Pattern],
    whole: bool,
) -> Result<Rendered, RenderError> {
    let (mut hb, marking) = registry();
    let mut loaded: HashMap<String, PathBuf> = HashMap::new();
    let mut words: HashMap<String, std::collections::HashSet<String>> = HashMap::new();
    for p in patterns {
        if loaded.contains_key(&p.backend) {
            continue;
        }
        let path = plan.template_path(&p.backend);
        let shown = rel(&path, &plan.root);
        let text = std::fs::read_to_string(&path).map_err(|source| RenderError::Read {
            path: shown.clone(),
            source,
        })?;
        let template = marks::compile(&text).map_err(|message| RenderError::Compile {
            path: shown.clone(),
            message,
        })?;
        hb.register_template(&p.backend, template);
        words.insert(p.backend.clone(), mustache_words(&text));
        loaded.insert(p.backend.clone(), path);
    }
    let mut tasks = Vec::with_capacity(patterns.len());
    let mut problems: Vec<TaskProblem> = Vec::new();
    let mut warnings = Vec::new();
    if whole {
        let (errors, w) = unread(plan, patterns, &words);
        warnings = w;
        for (pattern, backend, message, hint) in errors {
            problems.push(TaskProblem {
                pattern,
                template: rel(&loaded[&backend], &plan.root),
                message,
                hint,
            });
        }
    }
    for p in patterns {
        let shown = rel(&loaded[&p.backend], &plan.root);
        if let Some((message, hint)) = misspelt(p, &words[&p.backend]) {
            problems.push(TaskProblem {
                pattern: p.id.clone(),
                template: shown,
                message,
                hint,
            });
            continue;
        }
        let ctx = context(plan, p);
        marking.reset();
        let rendered = hb.render(&p.backend, &ctx);
        let slots = marking.slots.take();
        let text = match rendered {
            Ok(t) => t,
            Err(e) => {
                let (message, hint) = match e.reason() {
                    RenderErrorReason::MissingVariable(Some(var)) => (
                        format!("template uses \"{var}\", which the pattern does not define{}", e.line_no.map(|l| format!(" (template line {l})")).unwrap_or_default()),
                        format!("add \"{var}\" to common_settings or to the pattern, or remove it from the template"),
                    ),
                    RenderErrorReason::Other(m) if m.starts_with("partials nest") => (
                        m.clone(),
                        "a partial must not include itself, directly or through other partials".to_string(),
                    ),
                    _ => (e.to_string(), "check the template expression".to_string()),
                };
                problems.push(TaskProblem {
                    pattern: p.id.clone(),
                    template: shown,
                    message,
                    hint,
                });
                if problems.len() >= 20 {
                    break;
                }
                continue;
            }
        };
        match build(plan, p, &text, &slots) {
            Ok(t) => tasks.push(t),
            Err((message, hint)) => {
                // A lint problem is the template's: report it once, not per pattern.
                if problems.iter().any(|q| {
                    q.template == shown && q.message == message && message.starts_with("step \"")
                }) {
                    continue;
                }
                problems.push(TaskProblem {
                    pattern: p.id.clone(),
                    template: shown,
                    message,
                    hint,
                });
                if problems.len() >= 20 {
                    break;
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(Rendered { tasks, warnings })
    } else {
        let mut list = String::new();
        for pr in &problems {
            list.push_str(&format!(
                "\n  {} (pattern {}): {}\n    (hint: {})",
                pr.template, pr.pattern, pr.message, pr.hint
            ));
        }
        Err(RenderError::Tasks {
            count: problems.len(),
            list,
        })
    }
}

fn build(
    plan: &Plan,
    p: &Pattern,
    text: &str,
    slots: &[Slot],
) -> Result<TaskDef, (String, String)> {
    let out: TemplateOutput = serde_json::from_str(&marks::outside_strings(text, slots, false))
        .map_err(|_| {
            let e = serde_json::from_str::<TemplateOutput>(&marks::outside_strings(text, slots, true))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_else(|| "a value changes its structure".into());
            (format!("the rendered task is not a valid task definition: {e}"), "look at the template around that line; values are inserted already shell-quoted, do not add quotes around {{...}}".to_string())
        })?;
    let out = super::resolve::resolve(out, slots)?;
    if out.steps.is_empty() {
        return Err((
            "the task has no steps".into(),
            "add at least one step with a \"command\"".into(),
        ));
    }
    if out.nodes == 0 || out.nodes > 64 {
        return Err((
            format!("\"nodes\" is {}", out.nodes),
            "a task runs on 1 to 64 nodes".into(),
        ));
    }
    if let Some(g) = plan.node_group(&p.node_group) {
        if out.nodes > g.count {
            return Err((
                format!(
                    "the task needs {} nodes but node group \"{}\" has {}",
                    out.nodes, g.name, g.count
                ),
                format!(
                    "raise the group's count to {} or run the pattern on fewer nodes",
                    out.nodes
                ),
            ));
        }
    }
    for (i, r) in out.roles.iter().enumerate() {
        if out.roles[..i].contains(r) {
            return Err((
                format!("role \"{r}\" is listed twice"),
                "give each node rank one role".into(),
            ));
        }
    }
    if out.roles.len() > out.nodes as usize {
        return Err((
            format!("{} roles for {} nodes", out.roles.len(), out.nodes),
            "set \"nodes\" to the number of roles".into(),
        ));
    }
    let mut steps = Vec::with_capacity(out.steps.len());
    let mut names: Vec<&str> = Vec::new();
    for s in &out.steps {
        if names.contains(&s.name.as_str()) {
            return Err((
                format!("step name \"{}\" is used twice", s.name),
                "name each step differently".into(),
            ));
        }
        names.push(&s.name);
        let node = match &s.node {
            None => 0,
            Some(Value::Number(n)) => match n.as_u64() {
                Some(k) if k < out.nodes as u64 => k as u32,
                _ => {
                    return Err((
                        format!(
                            "step \"{}\" runs on node {n}, but the task has {} node(s)",
                            s.name, out.nodes
                        ),
                        format!("use a rank from 0 to {}", out.nodes - 1),
                    ))
                }
            },
            Some(Value::String(role)) => match out.roles.iter().position(|r| r == role) {
                Some(k) => k as u32,
                None => {
                    return Err((
                        format!(
                            "step \"{}\" runs on role \"{role}\", which is not in \"roles\"",
                            s.name
                        ),
                        format!("roles: {}", out.roles.join(", ")),
                    ))
                }
            },
            Some(other) => {
                return Err((
                    format!("step \"{}\" has node {other}", s.name),
                    "use a node rank or a role name".into(),
                ))
            }
        };
        if s.command.trim().is_empty() {
            return Err((
                format!("step \"{}\" has an empty command", s.name),
                "give the step a command".into(),
            ));
        }
        let timeout = s.timeout_seconds.or(out.timeout_seconds);
        if let Some(t) = timeout {
            if t == 0 || t > MAX_STEP_TIMEOUT {
                return Err((
                    format!("step \"{}\" has timeout {t} s", s.name),
                    format!("use 1 to {MAX_STEP_TIMEOUT} seconds"),
                ));
            }
        }
        if let Some(h) = &s.health {
            if h.http.is_some() == h.command.is_some() {
                return Err((
                    format!(
                        "step \"{}\": a health check needs exactly one of \"http\" and \"command\"",
                        s.name
                    ),
                    "e.g. \"health\": {\"http\": \"http://${INFRA_NODE_ADDR}:8000/health\"}".into(),
                ));
            }
            if !s.background {
                return Err((
                    format!(
                        "step \"{}\" has a health check but is not a background step",
                        s.name
                    ),
                    "set \"background\": true for servers".into(),
                ));
            }
        }
        for k in s.env.keys().chain(out.env.keys()) {
            if k.is_empty()
                || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                || k.starts_with(|c: char| c.is_ascii_digit())
            {
                return Err((
                    format!("environment variable name {k:?} is not valid"),
                    "use letters, digits and '_'".into(),
                ));
            }
        }
        steps.push(Step {
            name: s.name.clone(),
            node,
            command: s.command.clone(),
            background: s.background,
            health: s.health.clone(),
            timeout_seconds: timeout,
            retries: s.retries.min(10),
            env: s.env.clone(),
        });
    }
    if steps.iter().all(|s| s.background) {
        return Err((
            "every step is a background step".into(),
            "a task needs at least one foreground step (the benchmark, the job)".into(),
        ));
    }
    let mut outputs = out.outputs.clone();
    for t in &out.table {
        if !outputs.contains(t) {
            outputs.push(t.clone());
        }
    }
    for o in &outputs {
        let path = Path::new(o);
        let bad = o.is_empty()
            || path.is_absolute()
            || path
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)));
        if bad {
            return Err((
                format!("output {o:?} is not a relative path inside the task folder"),
                "name outputs like \"result.json\" or \"out/metrics.csv\"".into(),
            ));
        }
        if o.split('/').any(|part| unsafe_id_reason(part).is_some()) {
            return Err((
                format!("output {o:?} has characters unsafe in S3 keys"),
                "use letters, digits, '-', '_' and '.'".into(),
            ));
        }
    }
    super::requires::check(plan, p, &out.requires)?;
    let attempts = out.attempts.unwrap_or(plan.retry.attempts).clamp(1, 20);
    let checkpoint_interval_seconds = match out.checkpoint_interval_seconds {
        Some(s) if !(10..=86_400).contains(&s) => {
            return Err((
                format!("\"checkpoint_interval_seconds\" is {s}"),
                "use between 10 and 86400 seconds".into(),
            ))
        }
        Some(s) => s,
        None => plan.checkpoint_interval.as_secs(),
    };
    let stop_grace_seconds = match out.stop_grace_seconds {
        Some(s) if s > crate::plan::model::MAX_STOP_GRACE_SECONDS => {
            return Err((
                format!("\"stop_grace_seconds\" is {s}"),
                format!(
                    "use at most {} seconds",
                    crate::plan::model::MAX_STOP_GRACE_SECONDS
                ),
            ))
        }
        Some(s) => s,
        None => plan.stop_grace.as_secs(),
    };
    Ok(TaskDef {
        version: TASK_FORMAT_VERSION,
        id: p.id.clone(),
        key: p.key.clone(),
        phase: plan.phase.clone(),
        layer: p.layer.clone(),
        backend: p.backend.clone(),
        node_group: p.node_group.clone(),
        nodes: out.nodes,
        attempts,
        checkpoint_interval_seconds,
        stop_grace_seconds,
        estimate_seconds: p.estimate.map(|d| d.as_secs_f64()),
        partition: p.partition,
        env: out.env,
        outputs,
        table: out.table,
        requires: out.requires,
        steps,
        factors: p.factors.clone(),
        vars: p.vars.clone(),
    })
}

/// Write the definitions to `.infra/<phase>/tasks/`, removing stale ones.
pub fn write_all(dir: &Path, tasks: &[TaskDef]) -> std::io::Result<usize> {
    std::fs::create_dir_all(dir)?;
    let mut keep: BTreeMap<String, ()> = BTreeMap::new();
    let mut written = 0;
    for t in tasks {
        let name = format!("{}.json", t.id);
        let path = dir.join(&name);
        let mut bytes = serde_json::to_vec_pretty(t).unwrap_or_default();
        bytes.push(b'\n');
        if std::fs::read(&path).ok().as_deref() != Some(&bytes[..]) {
            std::fs::write(&path, &bytes)?;
            written += 1;
        }
        keep.insert(name, ());
    }
    for e in std::fs::read_dir(dir)?.flatten() {
        let n = e.file_name().to_string_lossy().to_string();
        if n.ends_with(".json") && !keep.contains_key(&n) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    Ok(written)
}
