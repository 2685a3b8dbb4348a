//! The JSON Schema of the plan format (`infra schema`), for editors: every
//! property has a description, and a duration is what `infra` reads
//! ([`DURATION_PATTERN`], `plan::fields::parse_duration`).

use serde_json::{json, Value};

/// A duration as a string: seconds (`"90"`, `"1.5"`), or numbers with the
/// units `s`, `m`, `h`, `d` one after another (`"1h30m"`, `"2d"`).
/// Spaces around it are allowed.
pub const DURATION_PATTERN: &str = r"^\s*([0-9]+(\.[0-9]+)?|([0-9]+(\.[0-9]+)?[smhd])+)\s*$";

/// `v` with a description.
fn d(mut v: Value, text: &str) -> Value {
    v["description"] = json!(text);
    v
}

fn duration(text: &str) -> Value {
    d(
        json!({"oneOf": [{"type": "number", "minimum": 0}, {"type": "string", "pattern": DURATION_PATTERN}]}),
        &format!("{text} Seconds as a number, or a string: \"90\", \"90s\", \"30m\", \"2h\", \"1h30m\", \"2d\" (units s, m, h, d)."),
    )
}

fn node_pool(required: Vec<&str>, count_name: &str, count_text: &str) -> Value {
    let mut props = json!({
        "instance_type": d(json!({"type": "string"}), "EC2 instance type, e.g. c6i.4xlarge or g5.12xlarge (its vCPUs, memory, GPUs and price come from the catalog; `infra catalog show`)."),
        "market": d(json!({"enum": ["spot", "on-demand"], "default": "on-demand"}), "Spot (cheaper, can be reclaimed with two minutes' notice; tasks are re-queued) or on-demand (the default)."),
        "efa": d(json!({"type": "boolean"}), "Elastic Fabric Adapter on every network card of the nodes, with a cluster placement group and one zone (EFA-capable types only). Default: on where a template the group runs declares \"requires\": [\"efa\"] and the type has EFA; false opts out (a pattern that requires EFA is then refused)."),
        "placement": d(json!({"enum": ["cluster", "spread", "partition"]}), "EC2 placement group strategy for the nodes."),
        "ami": d(json!({"type": "string"}), "An AMI id or an SSM parameter path; default: the latest Amazon Linux 2023 (GPU types: the Deep Learning AMI)."),
        "volume_gb": d(json!({"type": "integer", "minimum": 1, "maximum": 16384, "default": 100}), "Root volume size in GiB (encrypted gp3)."),
        "slots": d(json!({"type": "integer", "minimum": 1, "maximum": 1024, "default": 1}), "Tasks that run at once on one node."),
        "max_lifetime_hours": d(json!({"type": "number", "exclusiveMinimum": 0}), "A node terminates itself after this many hours whatever happens (default: from the budget that remains)."),
        "idle_shutdown_minutes": d(json!({"type": "integer", "minimum": 1, "maximum": 1440, "default": 20}), "Minutes a node that runs no step and sees no live controller waits before it terminates itself (and stops its fleet's replacements)."),
        "workers_per_slot": d(json!({"type": "integer", "minimum": 1}), "Workers a task in one slot should use (`INFRA_N_WORKERS`); default: the node's vCPUs divided by its slots.")
    });
    props[count_name] = d(json!({"type": "integer", "minimum": 1}), count_text);
    json!({"type": "object", "required": required, "properties": props})
}

/// The `slurm` section (`plan::slurm`).
fn slurm_schema() -> Value {
    let word = json!({"type": "string", "pattern": "^[^\\s]+$"});
    let options = json!({"type": "array", "items": {"type": "string", "pattern": "^-"}});
    let container = d(json!({"type": "object", "required": ["image"], "additionalProperties": false, "properties": {
        "runtime": d(json!({"enum": ["apptainer", "singularity"], "default": "apptainer"}), "The container runtime on the cluster's nodes."),
        "image": d(json!({"type": "string"}), "The image: a .sif file on the shared file system, or docker://..."),
        "binds": d(json!({"type": "array", "items": {"type": "string"}}), "--bind values (\"/data:/data\")."),
        "overlay": d(json!({"type": "string"}), "--overlay: a writable overlay image."),
        "nv": d(json!({"type": "boolean", "default": true}), "--nv: the node's GPUs in the container.")}}),
        "Every step runs in `<runtime> exec [--nv] [--bind ...] [--overlay ...] <image> bash -c <command>`.");
    let time = duration("Time limit of each allocation (sbatch --time, rounded up to minutes).");
    d(json!({"type": "object", "additionalProperties": false, "properties": {
        "partition": d(word.clone(), "sbatch --partition."),
        "account": d(word.clone(), "sbatch --account."),
        "qos": d(word, "sbatch --qos."),
        "constraint": d(json!({"type": "string"}), "sbatch --constraint (node features)."),
        "time_limit": time.clone(),
        "sbatch_options": d(options.clone(), "More sbatch options, one per string (\"--exclusive\", \"--mail-type=END\")."),
        "srun_options": d(options, "More srun options for every step, one per string."),
        "dispatch_margin": duration("No task starts on an allocation with less time left than its estimate plus this margin (default 0)."),
        "container": container.clone(),
        "mps": d(json!({"type": "boolean", "default": false}), "Start CUDA MPS in each allocation, so that the workers sharing a GPU (slots above gpus) run side by side."),
        "node_groups": d(json!({"type": "object", "additionalProperties": d(json!({"type": "object", "additionalProperties": false, "properties": {
            "gres": d(json!({"type": "string"}), "sbatch --gres (default gpu:<gpus> when the group has GPUs), e.g. gpu:rtx8000:8."),
            "cpus_per_task": d(json!({"type": "integer", "minimum": 1}), "sbatch --cpus-per-task."),
            "mem": d(json!({"type": "string", "pattern": "^[0-9]+[KMGT]?$"}), "sbatch --mem, e.g. 160G."),
            "time_limit": time,
            "partition": d(json!({"type": "string"}), "This group's partition."),
            "constraint": d(json!({"type": "string"}), "This group's constraint."),
            "container": container,
            "mps": d(json!({"type": "boolean"}), "This group's MPS setting.")}}), "What each allocation of the node group asks for.")}), "Per node group (by name).")}}),
        "The Slurm provider's allocations: one holder job per node (sbatch), steps run in it with srun --overlap.")
}

pub fn schema() -> Value {
    let safe_id = json!({"type": "string", "pattern": "^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$"});
    let count = json!({"type": "integer", "minimum": 1});
    let mut infra = node_pool(
        vec!["instance_type", "node_count"],
        "node_count",
        "How many nodes.",
    );
    for (k, v) in [
        (
            "gpu_count_per_node",
            d(
                json!({"type": "integer", "minimum": 0}),
                "GPUs per node, as the plan states it (checked against the catalog).",
            ),
        ),
        (
            "tp_size",
            d(
                json!({"type": "integer", "minimum": 1}),
                "Tensor-parallel size: a template variable.",
            ),
        ),
        (
            "model",
            d(json!({"type": "string"}), "The model: a template variable."),
        ),
        (
            "vllm_version",
            d(
                json!({"type": "string"}),
                "vLLM version: a template variable.",
            ),
        ),
        (
            "venv_path",
            d(
                json!({"type": "string"}),
                "Virtual environment path: a template variable.",
            ),
        ),
    ] {
        infra["properties"][k] = v;
    }
    infra["additionalProperties"] = json!(false);
    let infra = d(infra, "The phase format's single node group (named after its instance type's family); also template variables. Use either this or node_groups.");
    // instance_type: required but on Slurm (checked when the plan is decoded)
    let mut group = node_pool(
        vec!["count"],
        "count",
        "How many nodes (Slurm: allocations).",
    );
    group["properties"]["gpus"] = d(
        json!({"type": "integer", "minimum": 0}),
        "GPUs per node, as the plan states it (checked against the catalog).",
    );
    group["properties"]["availability_zone"] = d(
        json!({"type": "string"}),
        "The zone of this group's nodes (default: the plan's, else any).",
    );
    group["additionalProperties"] = json!(false);
    let group = d(group, "A pool of identical nodes.");
    let pattern_id = d(
        safe_id.clone(),
        "The task's id: unique, starting with the phase prefix (p<phase>- or <phase>-); letters, digits, '.', '_', '-'.",
    );
    let backend = d(
        safe_id.clone(),
        "The template that renders the task: plans/templates/<backend>.json.hbs unless `templates` says otherwise.",
    );
    let pattern_group = d(
        json!({"type": "string"}),
        "The node group the task runs on (default: the layer's, else the first group).",
    );
    let settings = d(
        json!({"type": "object"}),
        "Template variables for the layer's patterns (over common_settings).",
    );

    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://infra.invalid/plan.schema.json",
        "title": "infra experiment plan",
        "description": "A campaign: the machines, the budget and the work (layers of patterns, each rendered into a task by its backend's template).",
        "type": "object",
        "required": ["phase", "name", "layers"],
        "additionalProperties": false,
        "properties": {
            "$schema": d(json!({"type": "string"}), "The schema this plan follows, for editors (e.g. the file `infra schema` writes); ignored by infra."),
            "phase": d(json!({"oneOf": [{"type": "integer", "minimum": 0}, safe_id.clone()]}), "The phase: a number (pattern ids start with p<phase>-) or a name (ids start with <phase>-)."),
            "name": d(json!({"type": "string"}), "A human name for the phase."),
            "description": d(json!({"type": "string"}), "What the phase is for."),
            "project": d(json!({"type": "string", "pattern": "^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$"}), "The project: names the bucket and stacks shared by its phases (default: from the folder's name)."),
            "provider": d(json!({"enum": ["local", "aws", "slurm"], "default": "local"}), "Where the nodes are: this machine (free), AWS, or a Slurm cluster (allocations submitted with sbatch from where infra runs); `--provider` overrides it."),
            "slurm": slurm_schema(),
            "region": d(json!({"type": "string", "default": "us-east-1"}), "AWS region; `--region` overrides it."),
            "availability_zone": d(json!({"type": "string"}), "One zone for every node group (default: any)."),
            "infrastructure": infra,
            "node_groups": d(json!({"type": "object", "additionalProperties": group, "minProperties": 1}), "Named pools of nodes; a layer or pattern picks one with node_group."),
            "common_settings": d(json!({"type": "object"}), "Template variables every pattern inherits (a layer's settings, a grid cell and a pattern's own fields override them)."),
            "budget": d(json!({"type": "object", "anyOf": [{"required": ["usd"]}, {"required": ["gpu_hours"]}, {"required": ["node_hours"]}], "additionalProperties": false, "properties": {
                "gpu_hours": d(json!({"type": "number", "exclusiveMinimum": 0}), "Slurm: the most GPU-hours the phase's allocations may hold (count x gpus x hours), over all its runs: what they held is recorded in the ledger; estimated and gated like usd, watched during the run, shown by infra budget."),
                "node_hours": d(json!({"type": "number", "exclusiveMinimum": 0}), "Slurm: the most node-hours (allocation-hours) the phase's allocations may hold, over all its runs (recorded like gpu_hours)."),
                "usd": d(json!({"type": "number", "exclusiveMinimum": 0}), "The most the campaign may cost, in US dollars: plan/apply/run refuse an estimate above it, and a run stops before it is spent."),
                "max_hourly_usd": d(json!({"type": "number", "exclusiveMinimum": 0}), "The most the nodes may cost per hour together."),
                "hard_stop": d(json!({"type": "boolean", "default": true}), "Stop the run (running tasks re-queued) when the spend would pass the budget; false: warn only."),
                "accept_unpriced": d(json!({"type": "boolean", "default": false}), "Run node groups the catalog has no price for, counting them as $0 (otherwise the budget refuses them).")}}),
                "The money the campaign may spend."),
            "setup": d(json!({"type": "array", "items": {"type": "string"}}), "Commands run once per node before its first task (again when they change)."),
            "templates": d(json!({"type": "object", "additionalProperties": {"type": "string"}}), "Backend name → template path (relative to the project folder), where the default plans/templates/<backend>.json.hbs does not fit."),
            "estimate": d(json!({"type": "object", "additionalProperties": false, "properties": {
                "default": duration("A task's run time when nothing else says."),
                "provisioning": duration("Time until the nodes are up (billed, no task runs)."),
                "setup": duration("Time the setup commands take on each node."),
                "duration": duration("The campaign's duration, replacing the scheduled makespan in the estimate."),
                "patterns": d(json!({"type": "object", "additionalProperties": duration("The pattern's run time.")}), "Run times by pattern id."),
                "layers": d(json!({"type": "object", "additionalProperties": duration("The layer's task run time.")}), "Run times by layer id.")}}),
                "Run-time estimates: they size the schedule and the cost."),
            "retry": d(json!({"type": "object", "additionalProperties": false, "properties": {
                "attempts": d(json!({"type": "integer", "minimum": 1, "maximum": 20, "default": 1}), "Attempts per task, the first included."),
                "backoff_seconds": duration("The wait before the second attempt; it doubles with each attempt."),
                "backoff_max_seconds": duration("The longest wait between attempts.")}}),
                "How failed tasks are tried again."),
            "checkpoint_interval": duration("How often a running task's $INFRA_CHECKPOINT_DIR is synced to the bucket (AWS), 10 s to a day; default 5 min."),
            "stop_grace_seconds": duration("Between SIGTERM and SIGKILL when a task is stopped (at most 90 s after a spot notice); default 30."),
            "results_layout": d(json!({"enum": ["flat", "doe-suite"], "default": "flat"}), "doe-suite: results also in results/<suite>_<id>/<exp>/run_<i>/rep_<j>/<host_type>/host_<k>/ (docs/DOE-SUITE.md)."),
            "extractors": d(json!({"type": "array", "items": d(json!({"type": "object", "required": ["kind"], "additionalProperties": false, "properties": {
                "kind": d(json!({"enum": ["json", "yaml", "csv", "regex", "error", "ignore"]}), "How a result file becomes rows."),
                "file_regex": d(json!({"type": "array", "items": {"type": "string"}}), "The files it reads: regexes matched at the start of the file name."),
                "experiments": d(json!({"type": "array", "items": {"type": "string"}}), "The layers it applies to (all when left out)."),
                "delimiter": d(json!({"type": "string", "minLength": 1, "maxLength": 1}), "csv: the column separator."),
                "has_header": d(json!({"type": "boolean"}), "csv: whether the first line names the columns."),
                "fieldnames": d(json!({"type": "array", "items": {"type": "string"}}), "csv: the columns when there is no header."),
                "pattern": d(json!({"type": "string"}), "regex: named groups over each line, e.g. latency: (?P<latency_ms>[0-9.]+).")}}),
                "One extractor.")}), "The doe-suite layout's extractors: they build results/<suite>_<id>/results.csv."),
            "layers": d(json!({"type": "array", "minItems": 1, "items": d(json!({
                "type": "object", "required": ["id"], "additionalProperties": false,
                "properties": {
                    "id": d(safe_id.clone(), "The layer's id: `infra run <phase> <layer id>` runs its tasks."),
                    "name": d(json!({"type": "string"}), "A human name."),
                    "priority": d(json!({"type": "string"}), "A note on the layer's priority (shown by `infra list`)."),
                    "description": d(json!({"type": "string"}), "What the layer measures."),
                    "node_group": d(json!({"type": "string"}), "The node group of the layer's tasks."),
                    "partitions": d(count.clone(), "Split each pattern into this many tasks (`partition`/`n_partitions` in the template, `INFRA_PARTITION` at run time)."),
                    "settings": settings.clone(),
                    "estimate": duration("The run time of the layer's tasks."),
                    "patterns": d(json!({"type": "array", "items": d(json!({
                        "type": "object", "required": ["id", "backend"],
                        "properties": {"id": pattern_id, "backend": backend.clone(), "estimate": duration("The task's run time."),
                            "node_group": pattern_group,
                            "prompt_tokens": d(count.clone(), "Prompt tokens: a template variable."),
                            "concurrency": d(count.clone(), "Concurrent requests: a template variable.")},
                        "additionalProperties": {"description": "any other field is a template variable, over common_settings"}}),
                        "One task, written by hand.")}), "Tasks written one by one."),
                    "grid": d(json!({"type": "object", "required": ["backend", "id", "factors"], "additionalProperties": false,
                        "properties": {
                            "backend": backend,
                            "id": d(json!({"type": "string"}), "The tasks' id template with {factor} placeholders, e.g. sweep-{variant}-s{seed}."),
                            "factors": d(json!({"type": "object", "additionalProperties": {"type": "array", "minItems": 1, "items": {"type": ["string", "number", "boolean"]}}}), "Factor name → its values: one task per combination."),
                            "exclude": d(json!({"type": "array", "items": {"type": "object"}}), "Combinations left out: each object matches the cells whose factors have those values."),
                            "include": d(json!({"type": "array", "items": {"type": "object"}}), "Extra cells, each a full combination."),
                            "repetitions": d(count.clone(), "Each cell this many times (a `rep` factor)."),
                            "settings": settings,
                            "estimate": duration("The run time of each cell."),
                            "estimate_by": d(json!({"type": "object", "additionalProperties": {"type": "object", "additionalProperties": duration("The run time of the cells with that factor value.")}}), "Run times by factor value: factor → value → duration.")}}),
                        "Tasks as the cross product of factors.")
                }}), "A group of patterns (hand-written, or a grid).")}), "The work, in layers.")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every property (and every item of `oneOf`-free values) has a
    /// description, at any depth.
    fn undocumented(v: &Value, path: &str, out: &mut Vec<String>) {
        if let Some(props) = v.get("properties").and_then(Value::as_object) {
            for (k, p) in props {
                let here = format!("{path}.{k}");
                if p.get("description").and_then(Value::as_str).is_none() {
                    out.push(here.clone());
                }
                undocumented(p, &here, out);
            }
        }
        for k in ["items", "additionalProperties"] {
            if let Some(inner) = v.get(k).filter(|i| i.is_object()) {
                undocumented(inner, &format!("{path}[{k}]"), out);
            }
        }
    }

    #[test]
    fn every_property_has_a_description() {
        let mut out = Vec::new();
        undocumented(&schema(), "", &mut out);
        assert!(out.is_empty(), "no description: {out:?}");
    }

    #[test]
    fn durations_agree_between_the_schema_and_infra() {
        let re = regex_lite::Regex::new(DURATION_PATTERN).unwrap();
        for s in [
            "90", "1.5", "90s", "30m", "2h", "1h30m", "2d", "0.5h", "1d12h", "1.2.3s", "1.2.3", "",
            "s", "1x", "h1", "1e3", "inf", "NaN", " 90", "90 ", "-5", "1h 30m", ".5s", "5.s",
        ] {
            let by_infra = crate::plan::fields::parse_duration(s).is_some();
            assert_eq!(
                re.is_match(s),
                by_infra,
                "{s:?}: the schema says {}, infra says {by_infra}",
                re.is_match(s)
            );
        }
    }
}
