//! The JSON Schema of the plan format (`infra schema`), for editors.

use serde_json::{json, Value};

pub fn schema() -> Value {
    let duration = json!({"oneOf": [{"type": "number", "minimum": 0}, {"type": "string", "pattern": "^([0-9.]+[smhd])+$"}],
        "description": "seconds, or \"90s\", \"30m\", \"2h\", \"1h30m\""});
    let safe_id = json!({"type": "string", "pattern": "^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$"});
    let count = json!({"type": "integer", "minimum": 1});
    let pool = |required: Vec<&str>, count_name: &str| {
        let mut props = json!({
            "instance_type": {"type": "string", "description": "EC2 instance type, e.g. g5.12xlarge"},
            "market": {"enum": ["spot", "on-demand"], "default": "on-demand"},
            "efa": {"type": "boolean", "default": false},
            "placement": {"enum": ["cluster", "spread", "partition"]},
            "ami": {"type": "string", "description": "an AMI id or an SSM parameter path"},
            "volume_gb": {"type": "integer", "minimum": 1, "maximum": 16384, "default": 100},
            "slots": {"type": "integer", "minimum": 1, "maximum": 1024, "default": 1, "description": "concurrent tasks per node"},
            "max_lifetime_hours": {"type": "number", "exclusiveMinimum": 0},
            "idle_shutdown_minutes": {"type": "integer", "minimum": 1, "maximum": 1440, "default": 20, "description": "minutes a node that runs no step and sees no live controller waits before it terminates itself (and stops its fleet's replacements)"},
            "workers_per_slot": {"type": "integer", "minimum": 1}
        });
        props[count_name] = json!({"type": "integer", "minimum": 1});
        json!({"type": "object", "required": required, "properties": props})
    };
    let mut infra = pool(vec!["instance_type", "node_count"], "node_count");
    for (k, v) in [
        (
            "gpu_count_per_node",
            json!({"type": "integer", "minimum": 0}),
        ),
        ("tp_size", json!({"type": "integer", "minimum": 1})),
        ("model", json!({"type": "string"})),
        ("vllm_version", json!({"type": "string"})),
        ("venv_path", json!({"type": "string"})),
    ] {
        infra["properties"][k] = v;
    }
    infra["additionalProperties"] = json!(false);
    let mut group = pool(vec!["instance_type", "count"], "count");
    group["properties"]["gpus"] = json!({"type": "integer", "minimum": 0});
    group["properties"]["availability_zone"] = json!({"type": "string"});
    group["additionalProperties"] = json!(false);

    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://infra.invalid/plan.schema.json",
        "title": "infra experiment plan",
        "type": "object",
        "required": ["phase", "name", "layers"],
        "additionalProperties": false,
        "properties": {
            "phase": {"oneOf": [{"type": "integer", "minimum": 0}, safe_id.clone()], "description": "pattern ids start with p<phase>- (or <phase>- for a named phase)"},
            "name": {"type": "string"},
            "description": {"type": "string"},
            "project": {"type": "string", "pattern": "^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$"},
            "provider": {"enum": ["local", "aws"], "default": "local"},
            "region": {"type": "string", "default": "us-east-1"},
            "availability_zone": {"type": "string"},
            "infrastructure": infra,
            "node_groups": {"type": "object", "additionalProperties": group, "minProperties": 1},
            "common_settings": {"type": "object", "description": "template variables every pattern inherits"},
            "budget": {"type": "object", "required": ["usd"], "additionalProperties": false, "properties": {
                "usd": {"type": "number", "exclusiveMinimum": 0},
                "max_hourly_usd": {"type": "number", "exclusiveMinimum": 0},
                "hard_stop": {"type": "boolean", "default": true},
                "accept_unpriced": {"type": "boolean", "default": false, "description": "Run node groups the catalog has no price for, counting them as $0 (otherwise the budget refuses them)."}}},
            "setup": {"type": "array", "items": {"type": "string"}},
            "templates": {"type": "object", "additionalProperties": {"type": "string"}},
            "estimate": {"type": "object", "additionalProperties": false, "properties": {
                "default": duration.clone(), "provisioning": duration.clone(), "setup": duration.clone(), "duration": duration.clone(),
                "patterns": {"type": "object", "additionalProperties": duration.clone()},
                "layers": {"type": "object", "additionalProperties": duration.clone()}}},
            "retry": {"type": "object", "additionalProperties": false, "properties": {
                "attempts": {"type": "integer", "minimum": 1, "maximum": 20},
                "backoff_seconds": duration.clone(), "backoff_max_seconds": duration.clone()}},
            "checkpoint_interval": duration.clone(),
            "stop_grace_seconds": duration.clone(),
            "layers": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["id"], "additionalProperties": false,
                "properties": {
                    "id": safe_id.clone(), "name": {"type": "string"}, "priority": {"type": "string"},
                    "description": {"type": "string"}, "node_group": {"type": "string"}, "partitions": count.clone(),
                    "settings": {"type": "object"}, "estimate": duration.clone(),
                    "patterns": {"type": "array", "items": {
                        "type": "object", "required": ["id", "backend"],
                        "properties": {"id": safe_id.clone(), "backend": safe_id.clone(), "estimate": duration.clone(),
                            "node_group": {"type": "string"}, "prompt_tokens": count.clone(), "concurrency": count.clone()},
                        "additionalProperties": {"description": "any other field overrides common_settings"}}},
                    "grid": {"type": "object", "required": ["backend", "id", "factors"], "additionalProperties": false,
                        "properties": {
                            "backend": safe_id.clone(),
                            "id": {"type": "string", "description": "id template with {factor} placeholders"},
                            "factors": {"type": "object", "additionalProperties": {"type": "array", "minItems": 1, "items": {"type": ["string", "number", "boolean"]}}},
                            "exclude": {"type": "array", "items": {"type": "object"}},
                            "include": {"type": "array", "items": {"type": "object"}},
                            "repetitions": count.clone(),
                            "settings": {"type": "object"},
                            "estimate": duration.clone(),
                            "estimate_by": {"type": "object", "additionalProperties": {"type": "object", "additionalProperties": duration}}}}
                }}}
        }
    })
}
