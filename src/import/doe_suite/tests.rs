//! Designs written in doe-suite's format, imported.

use serde_json::{json, Value};

use super::*;

fn opts() -> Options {
    Options {
        instance_type: "c6i.xlarge".into(),
        source: "designs/demo.yml".into(),
    }
}

fn import_ok(text: &str) -> Imported {
    match import("designs/demo.yml", "demo", text, &opts()) {
        Ok(i) => i,
        Err(e) => panic!("{e}"),
    }
}

fn import_err(text: &str) -> String {
    match import("designs/demo.yml", "demo", text, &opts()) {
        Ok(i) => panic!("imported: {:#}", i.plan),
        Err(e) => e.to_string(),
    }
}

fn patterns(i: &Imported, layer: usize) -> Vec<Value> {
    i.plan["layers"][layer]["patterns"]
        .as_array()
        .unwrap()
        .clone()
}

fn config(p: &Value) -> Value {
    serde_json::from_str(p["config_json"].as_str().unwrap()).unwrap()
}

const CROSS: &str = r#"
exp_cross:
  n_repetitions: 2
  host_types:
    small:
      n: 1
      $CMD$: "./bench --size [% my_run.size %] --opt [% my_run.opt %] --run [% run %]"
  base_experiment:
    seed: 1234
    size:
      $FACTOR$: [10, 20, 30]
    opt:
      $FACTOR$: [True, False]
  except_filters:
    - size: 30
      opt: False
"#;

#[test]
fn cross_factors_expand_first_factor_slowest_without_excluded_runs_repeated() {
    let i = import_ok(CROSS);
    let ps = patterns(&i, 0);
    // 3 x 2 - 1 excluded = 5 runs, 2 repetitions each
    assert_eq!(ps.len(), 10);
    assert_eq!(i.counts, vec![("exp_cross".to_string(), 5, 10)]);
    let ids: Vec<&str> = ps.iter().map(|p| p["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids[..3],
        [
            "demo-exp_cross-run0-rep0",
            "demo-exp_cross-run0-rep1",
            "demo-exp_cross-run1-rep0"
        ]
    );
    let runs: Vec<(Value, Value)> = ps
        .iter()
        .step_by(2)
        .map(|p| (config(p)["size"].clone(), config(p)["opt"].clone()))
        .collect();
    assert_eq!(
        runs,
        vec![
            (json!(10), json!(true)),
            (json!(10), json!(false)),
            (json!(20), json!(true)),
            (json!(20), json!(false)),
            (json!(30), json!(true)),
        ]
    );
    // YAML booleans render as Python's True/False; `run` is the run index
    assert_eq!(
        ps[2]["cmd_small_0_main"],
        "./bench --size 10 --opt False --run 1"
    );
    assert_eq!(ps[3]["cmd_small_0_main"], ps[2]["cmd_small_0_main"]);
    assert_eq!(
        (ps[3]["doe_run"].clone(), ps[3]["doe_rep"].clone()),
        (json!(1), json!(1))
    );
}

#[test]
fn an_imported_suite_is_pinned() {
    let i = import_ok(CROSS);
    insta::assert_json_snapshot!("cross_plan", i.plan);
    insta::assert_snapshot!("cross_template", i.templates[0].1);
}

#[test]
fn level_list_and_cross_factors_mix_level_list_outer() {
    let i = import_ok(
        r#"
exp_mixed:
  host_types:
    small: {$CMD$: "echo [% my_run.tuning.mode %] [% my_run.payload %]"}
  base_experiment:
    tuning:
      mode: $FACTOR$
      opt: $FACTOR$
    payload:
      $FACTOR$: [64, 128]
  factor_levels:
    - tuning: {mode: fast, opt: True}
    - tuning: {mode: slow, opt: False}
"#,
    );
    let cmds: Vec<&str> = patterns(&i, 0)
        .iter()
        .map(|p| p["cmd_small_0_main"].as_str().unwrap().to_string())
        .collect::<Vec<_>>()
        .leak()
        .iter()
        .map(String::as_str)
        .collect();
    assert_eq!(
        cmds,
        [
            "echo fast 64",
            "echo fast 128",
            "echo slow 64",
            "echo slow 128"
        ]
    );
    let c = config(&patterns(&i, 0)[3]);
    assert_eq!(c["tuning"], json!({"mode": "slow", "opt": false}));
}

#[test]
fn suite_vars_are_merged_and_the_experiment_wins() {
    let i = import_ok(
        r#"
$SUITE_VARS$:
  a: 1
  nested: {x: 1, y: 2}
exp:
  host_types: {h: {$CMD$: "echo [% my_run.a %] [% my_run.nested.x %] [% my_run.nested.y %]"}}
  base_experiment:
    a: 5
    nested: {x: 9}
"#,
    );
    assert_eq!(patterns(&i, 0)[0]["cmd_h_0_main"], "echo 5 9 2");
}

#[test]
fn values_render_as_python_str_and_references_resolve_in_rounds() {
    let i = import_ok(
        r#"
exp:
  host_types: {h: {$CMD$: "run [% my_run.label %] [% my_run.list %] [% my_run.map %] [% my_run.none %] [% my_run.f %] [% my_run['list'][1] %] [% my_run.list.0 %]"}}
  base_experiment:
    label: "[% my_run.mode %]-[% my_run.size %]"
    mode: fast
    size: 10
    list: [a, 1, True, 0.5]
    map: {k: "it's"}
    none: null
    f: 1.0e-5
"#,
    );
    let p = &patterns(&i, 0)[0];
    assert_eq!(
        p["cmd_h_0_main"],
        "run fast-10 ['a', 1, True, 0.5] {'k': \"it's\"} None 1e-05 1 a"
    );
    // the config holds rendered values too
    assert_eq!(config(p)["label"], "fast-10");
}

#[test]
fn cmd_forms_one_for_all_one_per_instance_and_background_commands() {
    let i = import_ok(
        r#"
exp:
  host_types:
    server:
      n: 1
      check_status: False
      $CMD$: {main: "serve", monitor: "mon [% my_run.x %]"}
    client:
      n: 2
      $CMD$: ["c1 [% my_run.x %]", {main: "c2", aux: "a2"}]
    worker:
      n: 2
      $CMD$: "work"
  base_experiment: {x: 7}
"#,
    );
    let p = &patterns(&i, 0)[0];
    for (k, v) in [
        ("cmd_server_0_main", "serve"),
        ("cmd_server_0_monitor", "mon 7"),
        ("cmd_client_0_main", "c1 7"),
        ("cmd_client_1_main", "c2"),
        ("cmd_client_1_aux", "a2"),
        ("cmd_worker_0_main", "work"),
        ("cmd_worker_1_main", "work"),
    ] {
        assert_eq!(p[k], v, "{k}");
    }
    assert_eq!(i.plan["node_groups"]["exp"]["count"], 5);
    let t: Value = serde_json::from_str(&i.templates[0].1).unwrap();
    assert_eq!(t["nodes"], 5);
    let steps: Vec<(String, bool)> = t["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["background"] == true,
            )
        })
        .collect();
    let names: Vec<&str> = steps.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "prepare-server-0",
            "prepare-client-0",
            "prepare-client-1",
            "prepare-worker-0",
            "prepare-worker-1",
            "server-0-main",
            "server-0-monitor",
            "client-1-aux",
            "client-0-main",
            "client-1-main",
            "worker-0-main",
            "worker-1-main",
        ]
    );
    assert!(steps[5].1 && steps[6].1 && steps[7].1 && !steps[8].1);
    // config.json's $CMD$ is doe-suite's normalised form: a list per host type
    let c = config(p);
    assert_eq!(
        c["$CMD$"]["worker"],
        json!([{"main": "work"}, {"main": "work"}])
    );
    assert_eq!(c["$CMD$"]["client"][1], json!({"aux": "a2", "main": "c2"}));
}

#[test]
fn config_json_is_written_as_doe_suite_writes_it() {
    let i = import_ok(
        r#"
exp:
  host_types: {small: {$CMD$: "echo"}}
  base_experiment: {b: 0.1, a: {z: True, y: "é"}}
"#,
    );
    assert_eq!(
        patterns(&i, 0)[0]["config_json"],
        "{\n    \"$CMD$\": {\n        \"small\": [\n            {\n                \"main\": \"echo\"\n            }\n        ]\n    },\n    \"a\": {\n        \"y\": \"\\u00e9\",\n        \"z\": true\n    },\n    \"b\": 0.1\n}"
    );
}

#[test]
fn roles_are_listed_as_setup_to_write_and_etl_extractors_become_plan_extractors() {
    let i = import_ok(
        r#"
exp:
  common_roles: setup-common
  host_types:
    small: {init_roles: [setup-small, extra], $CMD$: "echo"}
  base_experiment: {}
$ETL$:
  p:
    experiments: "*"
    extractors:
      CsvExtractor: {file_regex: 'out\.csv', delimiter: ';'}
      ErrorExtractor: {}
      IgnoreExtractor: {file_regex: [stdout.log, other.txt]}
    transformers: [{name: RepAggTransformer, data_columns: [x]}]
"#,
    );
    let roles: Vec<&str> = i.roles.iter().map(|(_, r)| r.as_str()).collect();
    assert_eq!(roles, ["setup-common", "setup-small", "extra"]);
    let d = i.plan["description"].as_str().unwrap();
    assert!(d.contains("setup-common for exp (common_roles"), "{d}");
    assert!(
        i.not_converted.iter().any(|n| n.contains("transformers")),
        "{:?}",
        i.not_converted
    );
    assert_eq!(
        i.plan["extractors"],
        json!([
            {"kind": "csv", "file_regex": ["out\\.csv"], "delimiter": ";"},
            {"kind": "error", "file_regex": ["^stderr.log$"]},
            {"kind": "ignore", "file_regex": ["stdout.log", "other.txt"]},
        ])
    );
}

#[test]
fn bad_designs_name_every_problem_with_line_column_and_fix() {
    let e = import_err(
        r#"exp_a:
  n_repetition: 2
  host_types:
    small:
      n: 2
      $CMD$: ["one only"]
  base_experiment:
    x: $FACTOR$
    y:
      $FACTOR$: 3
  factor_levels:
    - {z: 1}
  except_filters:
    - {w: 1}
exp_b:
  host_types:
    h: {n: 0, check_status: maybe, $CMD$: {bg: x}}
  base_experiment: {}
"#,
    );
    insta::assert_snapshot!("bad_design", e);
}

#[test]
fn bad_designs_other_kinds() {
    let e = import_err("exp:\n  host_types: {h: {$CMD$: \"echo [% exp_host_lst | to_private_dns_name('server') %]\"}}\n  base_experiment: {}\n");
    assert!(
        e.contains("is not supported by the import") && e.contains("$INFRA_NODE_<rank>_ADDR"),
        "{e}"
    );
    let e = import_err(
        "exp:\n  host_types: {h: {$CMD$: \"echo [% my_run.nope %]\"}}\n  base_experiment: {a: 1}\n",
    );
    assert!(
        e.contains("2:27 exp (run 0): `my_run.nope` is undefined"),
        "{e}"
    );
    let e = import_err("exp:\n  host_types: {h: {$CMD$: x}}\n  base_experiment:\n    size:\n      $FACTOR$: {{ range(3) | list }}\n");
    assert!(e.contains("designs/demo.yml:5:17 (Jinja2)"), "{e}");
    let e = import_err("exp:\n  host_types: {h: {$CMD$: x}\n  base_experiment: {}\n");
    assert!(e.contains("(YAML)"), "{e}");
    let e = import_err("- a\n- b\n");
    assert!(
        e.contains("1:1 (top level): a suite design is a mapping"),
        "{e}"
    );
    let e = import_err("exp:\n  host_types: {h: {$CMD$: x}}\n");
    assert!(e.contains("missing field base_experiment"), "{e}");
    let e = import_err("exp:\n  host_types: {h: {$CMD$: x}}\n  base_experiment:\n    $INCLUDE_VARS$: general.yml\n");
    assert!(e.contains("4:5 exp.base_experiment.$INCLUDE_VARS$"), "{e}");
    let e = import_err("exp:\n  host_types: {h: {$CMD$: x}}\n  base_experiment: {}\n$ETL$:\n  p:\n    experiments: [exp, nope]\n    extractors: {MyExtractor: {}}\n");
    assert!(
        e.contains("experiment \"nope\" is not in the suite")
            && e.contains("extractor \"MyExtractor\""),
        "{e}"
    );
    let e = import_err("n_repetitions: 2\n");
    assert!(e.contains("is a doe-suite keyword"), "{e}");
}
