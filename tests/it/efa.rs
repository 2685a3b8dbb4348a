//! EFA by default where a template requires it (issue 17, item 1): the
//! seed's phase format with `efa` backends gets EFA on every network card,
//! a cluster placement group and one zone without saying so; `"efa": false`
//! opts out; a pattern that requires EFA on a group that cannot have it is
//! refused (exit 2), never run over TCP.

use std::path::PathBuf;

use serde_json::Value;

use crate::common::Project;

/// The compute stack `infra plan` wrote for the plan.
fn compute_stack(p: &Project) -> Value {
    let dirs: Vec<PathBuf> = std::fs::read_dir(p.path().join(".infra"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("stacks/compute.json"))
        .filter(|f| f.is_file())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    serde_json::from_str(&std::fs::read_to_string(&dirs[0]).unwrap()).unwrap()
}

fn nics(stack: &Value) -> Vec<Value> {
    stack["Resources"]["LaunchTemplateDefault"]["Properties"]["LaunchTemplateData"]
        ["NetworkInterfaces"]
        .as_array()
        .unwrap()
        .clone()
}

/// The shipped phase15 plan on another instance type (with its GPUs, and
/// a budget that pays for it).
fn phase15_on(p: &Project, instance_type: &str, gpus: u32) {
    let mut v: Value = serde_json::from_str(&p.read("plans/phase15.json")).unwrap();
    v["infrastructure"]["instance_type"] = instance_type.into();
    v["infrastructure"]["gpu_count_per_node"] = gpus.into();
    v["budget"] = serde_json::json!({"usd": 100000});
    p.write("plans/phase15.json", &v.to_string());
}

#[test]
fn the_seed_phase_format_with_efa_backends_gets_efa_on_every_card_by_default() {
    for (it, gpus, cards) in [
        ("p4d.24xlarge", 8, 4),
        ("p5.48xlarge", 8, 32),
        ("g5.12xlarge", 4, 1),
    ] {
        let p = Project::with_examples();
        phase15_on(&p, it, gpus);
        let r = p.infra(&["plan", "phase15"]);
        r.ok();
        assert!(
            r.stdout.contains("EFA: its templates require it"),
            "{it}: {}",
            r.stdout
        );
        let stack = compute_stack(&p);
        let n = nics(&stack);
        assert_eq!(n.len(), cards, "{it}");
        assert!(n.iter().all(|x| x["InterfaceType"] == "efa"), "{it}: {n:?}");
        assert_eq!(
            stack["Resources"]["PlacementGroupDefault"]["Properties"]["Strategy"], "cluster",
            "{it}"
        );
    }
}

#[test]
fn efa_false_opts_out_and_a_pattern_that_requires_efa_is_then_refused() {
    let p = Project::with_examples();
    let text = p
        .read("plans/phase15.json")
        .replace("\"tp_size\": 1", "\"tp_size\": 1, \"efa\": false");
    p.write("plans/phase15.json", &text);
    let r = p.infra(&["plan", "phase15"]);
    assert_eq!(r.code, 2, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("p15-L0-efa-4k-c1")
            && r.stderr.contains("the template requires EFA")
            && r.stderr.contains("\"efa\": false")
            && r.stderr.contains("would run over TCP"),
        "{}",
        r.stderr
    );
    assert!(!p.exists(".infra/phase15/stacks/compute.json"));

    // without the efa patterns, "efa": false is simply taken
    let only_tcp: Value = {
        let mut v: Value = serde_json::from_str(&text).unwrap();
        for l in v["layers"].as_array_mut().unwrap() {
            l["patterns"]
                .as_array_mut()
                .unwrap()
                .retain(|pat| pat["backend"] != "efa");
        }
        v
    };
    p.write("plans/phase15.json", &only_tcp.to_string());
    p.infra(&["plan", "phase15"]).ok();
    let n = nics(&compute_stack(&p));
    assert!(n.iter().all(|x| x["InterfaceType"] != "efa"), "{n:?}");
}

#[test]
fn an_efa_pattern_on_a_type_without_efa_is_refused_and_tcp_only_plans_get_none() {
    let p = Project::with_examples();
    phase15_on(&p, "g5.xlarge", 1);
    let r = p.infra(&["plan", "phase15", "--json"]);
    assert_eq!(r.code, 2, "{}\n{}", r.stdout, r.stderr);
    let doc: Value = serde_json::from_str(&r.stdout).unwrap_or(Value::Null);
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(
        all.contains("g5.xlarge, which has no EFA") && all.contains("EFA-capable type"),
        "{all}"
    );
    assert_eq!(doc["exit_code"], 2, "{doc}");

    // the unified and tcp backends require nothing: no EFA by default
    let p = Project::with_examples();
    let mut v: Value = serde_json::from_str(&p.read("plans/phase15.json")).unwrap();
    for l in v["layers"].as_array_mut().unwrap() {
        l["patterns"]
            .as_array_mut()
            .unwrap()
            .retain(|pat| pat["backend"] != "efa");
    }
    p.write("plans/phase15.json", &v.to_string());
    let r = p.infra(&["plan", "phase15"]);
    r.ok();
    assert!(
        !r.stdout.contains(", EFA") && !r.stdout.contains("EFA interface"),
        "{}",
        r.stdout
    );
    assert!(nics(&compute_stack(&p))
        .iter()
        .all(|x| x["InterfaceType"] != "efa"));
}

#[test]
fn a_template_requiring_something_unknown_is_refused() {
    let p = Project::new();
    p.write(
        "plans/x.json",
        r#"{ "phase": "x", "name": "x", "layers": [ { "id": "L0", "patterns": [ { "id": "x-1", "backend": "b" } ] } ] }"#,
    );
    p.write(
        "plans/templates/b.json.hbs",
        r#"{ "requires": ["infiniband"], "steps": [ {"name": "main", "command": "true"} ] }"#,
    );
    let r = p.infra(&["plan", "x"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("\"infiniband\"") && r.stderr.contains("use one of: efa"),
        "{}",
        r.stderr
    );
}
