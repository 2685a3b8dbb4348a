//! EFA verified after apply (issue 17, item 1): a group whose template
//! requires EFA gets it by default; after `apply` every node shows its EFA
//! devices (`fi_info -p efa`) and EFA traffic flows between the group's
//! nodes (`fi_pingpong`); a node without its devices, or one whose EFA
//! traffic does not flow, fails the apply, named.

use super::*;

fn efa_plan(a: &Aws, phase: &str, project: &str) {
    a.p.write(
        &format!("plans/{phase}.json"),
        &format!(
            r#"{{ "phase": "{phase}", "name": "efa", "project": "{project}", "provider": "aws", "region": "us-east-1",
  "budget": {{ "usd": 500 }},
  "estimate": {{ "default": "1m" }},
  "node_groups": {{ "gpu": {{ "instance_type": "p4d.24xlarge", "count": 2, "market": "spot", "gpus": 8 }} }},
  "layers": [ {{ "id": "L0", "patterns": [ {{ "id": "{phase}-kv", "backend": "kv" }} ] }} ] }}"#
        ),
    );
    a.p.write(
        "plans/templates/kv.json.hbs",
        r#"{ "requires": ["efa"], "nodes": 2, "steps": [ {"name": "main", "command": "echo over EFA"} ] }"#,
    );
}

#[test]
fn apply_verifies_efa_on_every_node_and_fails_naming_the_node_without_it() {
    let a = Aws::new("efa_verify");
    efa_plan(&a, "efa1", "efaverify");
    // EFA on by default: 4 interfaces per p4d.24xlarge
    let r = a.infra(&["apply", "efa1", "--yes", "--json"]);
    ok(&r, "apply");
    let applied: Value = serde_json::from_str(&r.stdout).unwrap();
    let efa = &applied["details"]["efa"];
    assert_eq!(efa["devices"]["gpu-0"], 4, "{efa}");
    assert_eq!(efa["devices"]["gpu-1"], 4, "{efa}");
    let pp = &efa["pingpong"]["gpu-0 ↔ gpu-1"];
    assert!(pp["usec_per_transfer"].as_f64().unwrap() > 0.0, "{efa}");
    assert!(pp["mb_per_sec"].as_f64().unwrap() > 0.0, "{efa}");
    assert!(
        r.stderr.contains("checking EFA on 2 node(s) of group gpu"),
        "{}",
        r.stderr
    );
    let nodes = node_ids(&a, "efa1");
    let (name1, id1) = nodes.iter().find(|(n, _)| n == "gpu-1").unwrap().clone();

    // the EFA driver did not load on one node: apply fails naming it
    a.control(
        "POST",
        "efa-fault",
        json!({"instance_id": id1, "fault": "no-device"}),
    );
    let r = a.infra(&["apply", "efa1", "--yes"]);
    assert_ne!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!("node {name1} ({id1})"))
            && r.stderr.contains("found no EFA device")
            && r.stderr.contains("No data available"),
        "{}",
        r.stderr
    );
    assert!(
        !r.stderr.contains("node gpu-0 ("),
        "only the broken node: {}",
        r.stderr
    );

    // devices there, but EFA traffic does not flow: the pair is named
    a.control(
        "POST",
        "efa-fault",
        json!({"instance_id": id1, "fault": "unreachable"}),
    );
    let r = a.infra(&["apply", "efa1", "--yes"]);
    assert_ne!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("EFA traffic between node gpu-0")
            && r.stderr.contains(&format!("node {name1} ({id1}"))
            && r.stderr.contains("Unreachable remote"),
        "{}",
        r.stderr
    );

    // fixed: apply passes again; destroy leaves nothing
    a.control(
        "POST",
        "efa-fault",
        json!({"instance_id": id1, "fault": "none"}),
    );
    ok(&a.infra(&["apply", "efa1", "--yes"]), "apply after the fix");
    ok(&a.infra(&["destroy", "efa1", "--yes"]), "destroy");
}

/// `infra up` whose apply fails after the nodes came up (here: a setup
/// command that fails; the EFA check fails the same way) destroys what the
/// apply created, so nothing bills with no one watching; `--keep` leaves it.
#[test]
fn up_destroys_what_a_failed_apply_created_unless_keep() {
    let a = Aws::new("up_failed_apply");
    a.p.write(
        "plans/upf.json",
        r#"{ "phase": "upf", "name": "failing setup", "project": "upfail", "provider": "aws", "region": "us-east-1",
  "setup": ["echo preparing", "exit 7"],
  "node_groups": { "cpu": { "instance_type": "c6i.xlarge", "count": 1, "market": "spot" } },
  "layers": [ { "id": "L0", "patterns": [ { "id": "upf-1", "backend": "one" } ] } ] }"#,
    );
    a.p.write(
        "plans/templates/one.json.hbs",
        r#"{ "steps": [ {"name": "main", "command": "echo one"} ] }"#,
    );
    let r = a.infra(&["up", "upf", "--yes", "--keep"]);
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("--keep: the apply failed and the nodes are left up"),
        "{}",
        r.stderr
    );
    assert_eq!(node_ids(&a, "upf").len(), 1, "kept");

    let r = a.infra(&["up", "upf", "--yes"]);
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(
        r.stderr.contains("setup failed on node cpu-0")
            && r.stderr.contains("destroying what it created"),
        "{}",
        r.stderr
    );
    // the phase's stack and nodes are gone (the base stack, shared by the
    // project's phases and billing nothing, stays as after any `destroy`)
    let sdk = a.sdk();
    assert!(sdk.instances().is_empty(), "{:?}", sdk.instances());
    assert!(sdk.fleets().is_empty(), "{:?}", sdk.fleets());
    let stacks = sdk.stacks();
    assert!(
        stacks.iter().all(|(name, _)| name != "upfail-upf"),
        "{stacks:?}"
    );
}
