//! Hostile values against task templates: quoting a template can undo,
//! recursive partials, env values, object values.

use crate::common::*;

fn plan(p: &Project, settings: &str, backends: &[&str]) {
    let patterns: Vec<String> = backends
        .iter()
        .map(|b| format!(r#"{{"id": "p1-{b}", "backend": "{b}"}}"#))
        .collect();
    p.write(
        "plans/t.json",
        &format!(
            r#"{{"phase": 1, "name": "t", "common_settings": {settings},
  "layers": [{{"id": "L0", "patterns": [{}]}}]}}"#,
            patterns.join(", ")
        ),
    );
}

#[test]
fn a_value_inside_the_templates_own_quotes_is_refused_and_never_runs() {
    let p = Project::new();
    let pwned = p.path().join("pwned");
    let v = format!("$(touch {})", pwned.display());
    plan(&p, &serde_json::json!({ "v": v }).to_string(), &["b"]);
    for (command, what) in [
        (r#"echo \"{{v}}\""#, "inside double quotes"),
        (r#"echo \"x $(echo {{v}})\""#, "inside double quotes"),
        ("echo '{{v}}'", "inside single quotes"),
        ("echo ${{v}}", "right after a '$'"),
        (r#"run # {{v}}"#, "in a shell comment"),
        ("echo {{{v}}}", "without shell quoting"),
    ] {
        p.write(
            "plans/templates/b.json.hbs",
            &one_step_template(command, ""),
        );
        for cmd in ["plan", "up"] {
            let r = p.infra(&[cmd, "t"]);
            assert_eq!(r.code, 2, "{command} ({cmd}): {}", r.stderr);
            for want in ["b.json.hbs", "step \"main\"", "\"v\"", what, "hint:"] {
                assert!(
                    r.stderr.contains(want),
                    "{command}: lacks {want:?}\n{}",
                    r.stderr
                );
            }
            assert!(!pwned.exists(), "{command}: the value ran");
        }
    }
    // the fix the hint gives runs, and the value arrives literally
    p.write(
        "plans/templates/b.json.hbs",
        &one_step_template(r#"printf %s {{v}} > out.txt"#, r#""outputs": ["out.txt"],"#),
    );
    p.infra(&["up", "t"]).ok();
    assert!(!pwned.exists());
    assert_eq!(p.read("results/t/p1-b/out.txt"), v);
}

#[test]
fn provided_ids_may_stay_inside_the_templates_quotes() {
    let p = Project::new();
    plan(&p, "{}", &["b"]);
    p.write(
        "plans/templates/b.json.hbs",
        &one_step_template(
            r#"echo \"{{pattern_id}}\" > out.txt"#,
            r#""outputs": ["out.txt"],"#,
        ),
    );
    p.infra(&["up", "t"]).ok();
    assert_eq!(p.read("results/t/p1-b/out.txt"), "p1-b\n");
}

#[test]
fn recursive_partials_exit_2_instead_of_overflowing_the_stack() {
    let p = Project::new();
    plan(&p, "{}", &["a", "b"]);
    p.write(
        "plans/templates/a.json.hbs",
        &one_step_template("echo a{{> b}}", ""),
    );
    p.write(
        "plans/templates/b.json.hbs",
        &one_step_template("echo b{{> a}}", ""),
    );
    let r = p.infra(&["plan", "t"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("partials nest more than 16"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("hint:"), "{}", r.stderr);
}

#[test]
fn env_values_are_the_raw_values_not_shell_quoted() {
    let p = Project::new();
    let v = "a b 'c' $(d) \"e\"";
    plan(&p, &serde_json::json!({ "v": v }).to_string(), &["b"]);
    p.write(
        "plans/templates/b.json.hbs",
        r#"{"env": {"X": "{{v}}"}, "outputs": ["out.txt"],
  "steps": [{"name": "main", "env": {"Y": "<{{v}}>"}, "command": "printf '%s|%s' \"$X\" \"$Y\" > out.txt"}]}"#,
    );
    p.infra(&["up", "t"]).ok();
    assert_eq!(p.read("results/t/p1-b/out.txt"), format!("{v}|<{v}>"));
}

#[test]
fn object_and_array_values_render_as_json_text() {
    let p = Project::new();
    plan(&p, r#"{"o": {"a": [1, "x y"]}, "l": [1, 2]}"#, &["b"]);
    p.write(
        "plans/templates/b.json.hbs",
        &one_step_template(
            r#"printf '%s\\n' {{o}} {{l}} > out.txt"#,
            r#""outputs": ["out.txt"],"#,
        ),
    );
    p.infra(&["up", "t"]).ok();
    assert_eq!(
        p.read("results/t/p1-b/out.txt"),
        "{\"a\":[1,\"x y\"]}\n[1,2]\n"
    );
}

#[test]
fn a_plan_copied_out_of_the_project_uses_the_projects_templates_scripts_and_state() {
    let p = Project::with_examples();
    let elsewhere = tempfile::tempdir().unwrap();
    let copy = elsewhere.path().join("qs-copy.json");
    std::fs::copy(p.path().join("plans/quickstart.json"), &copy).unwrap();
    let copy = copy.display().to_string();
    let plan = p.infra(&["plan", &copy]);
    assert_eq!(plan.code, 0, "{}\n{}", plan.stdout, plan.stderr);
    let run = p.infra(&["run", &copy]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(p.exists("results/qs-copy/quickstart-L0-sum-1e5/result.json"));
    assert!(p.exists(".infra/qs-copy/journal.jsonl"));
    assert!(
        !elsewhere.path().join(".infra").exists(),
        "nothing written beside the copy"
    );
    // a template beside the copy still wins
    std::fs::create_dir_all(elsewhere.path().join("templates")).unwrap();
    std::fs::write(
        elsewhere.path().join("templates/compute.json.hbs"),
        r#"{"steps": [{"name": "mine", "command": "echo beside the copy"}]}"#,
    )
    .unwrap();
    let plan = p.infra(&["--json", "list", &copy]);
    assert_eq!(plan.code, 0, "{}", plan.stderr);
    p.infra(&["plan", &copy]).ok();
    let task = p.read(".infra/qs-copy/tasks/quickstart-L0-sum-1e5.json");
    assert!(task.contains("beside the copy"), "{task}");
}

#[test]
fn a_misspelt_pattern_field_is_an_error_naming_the_field_it_looks_like() {
    let p = Project::new();
    p.write(
        "plans/templates/c.json.hbs",
        &one_step_template("echo {{concurrency}}", ""),
    );
    for (field, like) in [
        (r#""concurrency": 1, "concurency": 3"#, "concurrency"),
        (r#""concurrency": 1, "estimat": "5s""#, "estimate"),
        (r#""concurrency": 1, "node_grop": "gpu""#, "node_group"),
    ] {
        p.write(
            "plans/ty.json",
            &format!(
                r#"{{"phase": "ty", "name": "typos", "node_groups": {{"cpu": {{"instance_type": "local", "count": 1}}, "gpu": {{"instance_type": "local", "count": 1}}}},
  "layers": [{{"id": "L0", "node_group": "cpu", "patterns": [{{"id": "ty-a", "backend": "c", {field}}}]}}]}}"#
            ),
        );
        let r = p.infra(&["plan", "ty"]);
        assert_eq!(r.code, 2, "{field}: {}\n{}", r.stdout, r.stderr);
        assert!(
            r.stderr.contains(&format!("looks like \"{like}\"")),
            "{field}: {}",
            r.stderr
        );
        assert!(!p.exists(".infra/ty/tasks/ty-a.json"), "nothing rendered");
    }
    // a field for the results only (not like any name) stays fine
    p.write(
        "plans/ty.json",
        r#"{"phase": "ty", "name": "typos", "node_groups": {"cpu": {"instance_type": "local", "count": 1}},
  "layers": [{"id": "L0", "patterns": [{"id": "ty-a", "backend": "c", "concurrency": 1, "label": "baseline"}]}]}"#,
    );
    let r = p.infra(&["plan", "ty"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("warning: pattern field \"label\" (ty-a) is read by no template"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_misspelt_common_or_layer_setting_is_an_error_and_an_unread_one_a_warning() {
    let p = Project::new();
    p.write(
        "plans/templates/c.json.hbs",
        &one_step_template("echo {{concurrency}} {{max_tokens}}", ""),
    );
    let plan = |common: &str, settings: &str| {
        format!(
            r#"{{"phase": "st", "name": "settings", "common_settings": {{"max_tokens": 5{common}}},
  "layers": [{{"id": "L0", "settings": {{"concurrency": 2{settings}}}, "grid": {{"backend": "c", "id": "st-{{seed}}", "factors": {{"seed": [1, 2]}}}}}}]}}"#
        )
    };
    // one letter off a name the template reads: an error, nothing rendered
    for (common, settings, place, like) in [
        (
            r#", "max_tokns": 9"#,
            "",
            "common_settings field \"max_tokns\"",
            "max_tokens",
        ),
        (
            "",
            r#", "concurency": 3"#,
            "layer L0 settings field \"concurency\"",
            "concurrency",
        ),
    ] {
        p.write("plans/st.json", &plan(common, settings));
        let r = p.infra(&["plan", "st"]);
        assert_eq!(r.code, 2, "{place}: {}\n{}", r.stdout, r.stderr);
        assert!(
            r.stderr.contains(place) && r.stderr.contains(&format!("looks like \"{like}\"")),
            "{place}: {}",
            r.stderr
        );
        assert!(!p.exists(".infra/st/tasks/st-1.json"), "nothing rendered");
    }
    // unlike any name: a warning, and the plan is fine; grid factors that
    // no template reads (the seed in the id) are not warned about
    p.write(
        "plans/st.json",
        &plan(r#", "paper": "table 2""#, r#", "note": "baseline""#),
    );
    let r = p.infra(&["plan", "st"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("warning: common_settings field \"paper\" is read by no template")
            && r.stderr
                .contains("warning: layer L0 settings field \"note\" is read by no template"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("\"seed\""), "{}", r.stderr);
    let j = p.infra(&["plan", "st", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&j.stdout).unwrap();
    assert_eq!(v["warnings"].as_array().map(Vec::len), Some(2), "{v}");
}

#[test]
fn templates_compute_values_such_as_max_model_len() {
    let p = Project::new();
    p.write(
        "plans/templates/srv.json.hbs",
        &one_step_template(
            "serve --max-model-len {{add prompt_tokens max_tokens 64}} --util {{default gpu_memory_utilization 0.9}} --per-gpu {{div concurrency 2}}{{#if (gt (add prompt_tokens max_tokens) 8192)}} --long{{/if}}",
            "",
        ),
    );
    p.write(
        "plans/mm.json",
        r#"{"phase": "mm", "name": "model len",
  "common_settings": {"max_tokens": 256, "concurrency": 3, "gpu_memory_utilization": null},
  "layers": [{"id": "L0", "patterns": [
    {"id": "mm-4k", "backend": "srv", "prompt_tokens": 4000},
    {"id": "mm-16k", "backend": "srv", "prompt_tokens": 16000, "gpu_memory_utilization": 0.85}]}]}"#,
    );
    let r = p.infra(&["plan", "mm"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let cmd = |id: &str| -> String {
        let t: serde_json::Value =
            serde_json::from_str(&p.read(&format!(".infra/mm/tasks/{id}.json"))).unwrap();
        t["steps"][0]["command"].as_str().unwrap().to_string()
    };
    assert_eq!(
        cmd("mm-4k"),
        "serve --max-model-len 4320 --util 0.9 --per-gpu 1.5"
    );
    assert_eq!(
        cmd("mm-16k"),
        "serve --max-model-len 16320 --util 0.85 --per-gpu 1.5 --long"
    );
    // a helper given text is an error naming it
    p.write(
        "plans/mm.json",
        r#"{"phase": "mm", "name": "model len", "common_settings": {"max_tokens": "many", "concurrency": 3},
  "layers": [{"id": "L0", "patterns": [{"id": "mm-4k", "backend": "srv", "prompt_tokens": 4000}]}]}"#,
    );
    let r = p.infra(&["plan", "mm"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("{{add ...}}: parameter 2 is \"many\", not a number"),
        "{}",
        r.stderr
    );
}
