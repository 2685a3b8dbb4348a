//! A checked suite design as an infra plan: each experiment a layer (and a
//! node group holding its host instances), each run × repetition a pattern,
//! each experiment's host instances and commands a task template.

use serde_json::{json, Map, Value};

use super::design::{EtlPipeline, Experiment, Suite};
use super::expand::{runs, RenderProblem, Run};

/// What the import writes.
#[derive(Debug, Clone, PartialEq)]
pub struct Imported {
    pub suite: String,
    pub plan: Value,
    /// (backend, template text), written to `<plan dir>/templates/<backend>.json.hbs`.
    pub templates: Vec<(String, String)>,
    /// Setup to write by hand: (where, role).
    pub roles: Vec<(String, String)>,
    /// What was not converted, one line each.
    pub not_converted: Vec<String>,
    /// Experiment → runs, tasks.
    pub counts: Vec<(String, usize, usize)>,
}

pub struct Options {
    pub instance_type: String,
    /// The design file as the user named it, for the plan's description.
    pub source: String,
}

/// The template variable holding one command of one host instance.
pub fn cmd_var(host_type: &str, instance: usize, name: &str) -> String {
    format!(
        "cmd_{}_{instance}_{}",
        host_type.replace('-', "_"),
        name.replace('-', "_")
    )
}

/// The working folder of one host instance, relative to its rank's folder;
/// also the output collected from it (`<host_type>/host_<k>` of the result tree).
pub fn host_dir(host_type: &str, instance: usize) -> String {
    format!("doe/{host_type}/host_{instance}")
}

pub fn backend(suite: &str, exp: &str) -> String {
    format!("{suite}-{exp}")
}

pub fn convert(suite: &Suite, opts: &Options) -> Result<Imported, Box<RenderProblem>> {
    let mut layers = Vec::new();
    let mut groups = Map::new();
    let mut templates = Vec::new();
    let mut roles = Vec::new();
    let mut counts = Vec::new();
    for e in &suite.experiments {
        let runs = runs(e)?;
        let instances: u32 = e.host_types.iter().map(|h| h.n).sum();
        groups.insert(
            e.name.clone(),
            json!({
                "instance_type": opts.instance_type,
                "count": instances,
                "slots": 1,
                "market": "on-demand",
            }),
        );
        for r in &e.common_roles {
            roles.push((
                format!("{} (common_roles: every host type)", e.name),
                r.clone(),
            ));
        }
        for h in &e.host_types {
            for r in &h.init_roles {
                roles.push((format!("{}.{} (init_roles)", e.name, h.name), r.clone()));
            }
        }
        let b = backend(&suite.name, &e.name);
        templates.push((b.clone(), template(&suite.name, e)));
        let mut patterns = Vec::new();
        for run in &runs {
            for rep in 0..e.n_repetitions as usize {
                patterns.push(pattern(&suite.name, e, &b, run, rep));
            }
        }
        counts.push((e.name.clone(), runs.len(), patterns.len()));
        layers.push(json!({
            "id": e.name,
            "name": format!("experiment {}", e.name),
            "description": format!(
                "{} runs x {} repetitions on {} host instance(s): {}",
                runs.len(),
                e.n_repetitions,
                instances,
                e.host_types.iter().map(|h| format!("{} x{}", h.name, h.n)).collect::<Vec<_>>().join(", ")
            ),
            "node_group": e.name,
            "patterns": patterns,
        }));
    }
    let mut not_converted = Vec::new();
    if !roles.is_empty() {
        not_converted.push(format!(
            "Ansible roles ({}): write their commands into the plan's `setup` by hand",
            roles
                .iter()
                .map(|(_, r)| r.as_str())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    not_converted.push(format!(
        "instance types: every node group is {} (doe-suite keeps them in group_vars/<host_type>/main.yml); edit node_groups",
        opts.instance_type
    ));
    for pl in &suite.etl {
        if pl.has_python_steps {
            not_converted.push(format!(
                "$ETL$.{}: transformers and loaders (Python) are not converted; the extractors are",
                pl.name
            ));
        }
    }
    let mut description = format!(
        "Imported from {} by `infra import doe-suite`; regenerate it rather than editing it.",
        opts.source
    );
    if !roles.is_empty() {
        description.push_str(" Setup to write by hand (the plan's `setup`): ");
        description.push_str(
            &roles
                .iter()
                .map(|(w, r)| format!("{r} for {w}"))
                .collect::<Vec<_>>()
                .join("; "),
        );
        description.push('.');
    }
    let mut plan = Map::new();
    plan.insert("phase".into(), json!(suite.name));
    plan.insert(
        "name".into(),
        json!(format!("doe-suite suite {}", suite.name)),
    );
    plan.insert("description".into(), json!(description));
    plan.insert("provider".into(), json!("local"));
    plan.insert("results_layout".into(), json!("doe-suite"));
    plan.insert("node_groups".into(), Value::Object(groups));
    let extractors = extractors(&suite.etl);
    if !extractors.is_empty() {
        plan.insert("extractors".into(), Value::Array(extractors));
    }
    plan.insert("layers".into(), Value::Array(layers));
    Ok(Imported {
        suite: suite.name.clone(),
        plan: Value::Object(plan),
        templates,
        roles,
        not_converted,
        counts,
    })
}

fn pattern(suite: &str, e: &Experiment, backend: &str, run: &Run, rep: usize) -> Value {
    let mut p = Map::new();
    p.insert(
        "id".into(),
        json!(format!("{suite}-{}-run{}-rep{rep}", e.name, run.index)),
    );
    p.insert("backend".into(), json!(backend));
    p.insert("doe_run".into(), json!(run.index));
    p.insert("doe_rep".into(), json!(rep));
    p.insert("config_json".into(), json!(run.config_json()));
    for (ht, per) in &run.cmds {
        for (k, cmds) in per.iter().enumerate() {
            for (name, c) in cmds {
                p.insert(cmd_var(ht, k, name), json!(c));
            }
        }
    }
    Value::Object(p)
}

/// The task template of an experiment: per host instance (a rank of its
/// own) a step that prepares the working folder (`results/`, `scratch/`,
/// `config.json`), then the background commands (and the `main` of host
/// types with `check_status: False`), then the `main` commands the run
/// waits for, in host order. Output goes to `results/stdout.log` and
/// `results/stderr.log` of the working folder, as doe-suite does.
pub fn template(suite: &str, e: &Experiment) -> String {
    let mut prepare = Vec::new();
    let mut background = Vec::new();
    let mut foreground = Vec::new();
    let mut outputs = Vec::new();
    let mut rank = 0usize;
    for h in &e.host_types {
        for (k, cmds) in h.cmds.iter().enumerate() {
            let dir = host_dir(&h.name, k);
            outputs.push(dir.clone());
            prepare.push(json!({
                "name": format!("prepare-{}-{k}", h.name),
                "node": rank,
                "command": format!("mkdir -p {dir}/results {dir}/scratch && printf %s {{{{config_json}}}} > {dir}/config.json"),
            }));
            for (name, _) in cmds {
                let run = format!(
                    "cd {dir} && exec bash -c {{{{{}}}}} >> results/stdout.log 2>> results/stderr.log",
                    cmd_var(&h.name, k, name)
                );
                let step_name = format!("{}-{k}-{name}", h.name);
                if name == "main" && h.check_status {
                    foreground.push(json!({"name": step_name, "node": rank, "command": run}));
                } else {
                    background.push(json!({"name": step_name, "node": rank, "background": true, "command": run}));
                }
            }
            rank += 1;
        }
    }
    let mut steps = prepare;
    steps.extend(background);
    steps.extend(foreground);
    let t = json!({
        "nodes": rank,
        "env": {
            "DOE_SUITE": suite,
            "DOE_EXP": e.name,
            "DOE_RUN": "{{doe_run}}",
            "DOE_REP": "{{doe_rep}}",
        },
        "outputs": outputs,
        "steps": steps,
    });
    let mut s = serde_json::to_string_pretty(&t).unwrap_or_default();
    s.push('\n');
    s
}

/// The `$ETL$` extractors as the plan's `extractors` (doe-suite's default
/// `file_regex` where the design gives none).
fn extractors(etl: &[EtlPipeline]) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    for pl in etl {
        for x in &pl.extractors {
            let (kind, default): (&str, &[&str]) = match x.kind.as_str() {
                "JsonExtractor" => ("json", &[r".*\.json$"]),
                "YamlExtractor" => ("yaml", &[r".*\.yaml$", r".*\.yml$"]),
                "CsvExtractor" => ("csv", &[r".*\.csv$"]),
                "ErrorExtractor" => ("error", &["^stderr.log$"]),
                _ => ("ignore", &["^stdout.log$"]),
            };
            let regex: Vec<String> = if x.file_regex.is_empty() {
                default.iter().map(|s| s.to_string()).collect()
            } else {
                x.file_regex.clone()
            };
            let mut o = Map::new();
            o.insert("kind".into(), json!(kind));
            o.insert("file_regex".into(), json!(regex));
            if let Some(exps) = &pl.experiments {
                o.insert("experiments".into(), json!(exps));
            }
            if let Some(d) = &x.delimiter {
                o.insert("delimiter".into(), json!(d));
            }
            if let Some(h) = x.has_header {
                o.insert("has_header".into(), json!(h));
            }
            if let Some(f) = &x.fieldnames {
                o.insert("fieldnames".into(), json!(f));
            }
            let v = Value::Object(o);
            if !out.contains(&v) {
                out.push(v);
            }
        }
    }
    out
}
