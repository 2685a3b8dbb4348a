//! A corpus of malformed and hostile plans: each exits 2 with a message
//! naming the problem and its place, creates nothing, and never panics.

use crate::common::*;

const GOOD: &str = r#"{"phase": 15, "name": "ok",
  "infrastructure": {"instance_type": "g5.12xlarge", "node_count": 2, "gpu_count_per_node": 4},
  "common_settings": {"max_tokens": 10},
  "layers": [{"id": "L0", "name": "base", "patterns": [
    {"id": "p15-L0-a", "backend": "echo", "prompt_tokens": 10, "concurrency": 1}]}]}"#;

/// (name, plan text, what the message must contain)
fn corpus() -> Vec<(&'static str, String, &'static str)> {
    let g = |from: &str, to: &str| GOOD.replacen(from, to, 1);
    let mut v: Vec<(&'static str, String, &'static str)> = vec![
        ("empty file", "".into(), "unexpected end of file"),
        ("not json", "phase: 15".into(), "expected a JSON value"),
        ("trailing comma", g("\"max_tokens\": 10}", "\"max_tokens\": 10,}"), "trailing comma"),
        ("missing comma", g("\"phase\": 15,", "\"phase\": 15"), "missing comma"),
        ("single quotes", g("\"name\": \"ok\"", "'name': 'ok'"), "double quotes"),
        ("unclosed object", GOOD[..GOOD.len() - 2].to_string(), "end of file"),
        ("top-level array", "[1, 2]".into(), "expected an object"),
        ("duplicate key", g("\"name\": \"ok\",", "\"name\": \"ok\", \"name\": \"again\","), "appears twice"),
        ("control char in string", g("\"name\": \"ok\"", "\"name\": \"o\u{1}k\""), "control character"),
        ("huge number", g("\"node_count\": 2", "\"node_count\": 1e999"), "out of range"),
        ("deep nesting", format!("{}{}", "[".repeat(200), "]".repeat(200)), "nesting deeper"),
        ("unknown top field", g("\"phase\": 15,", "\"phase\": 15, \"phaze\": 1,"), "unknown field \"phaze\""),
        ("unknown infra field", g("\"node_count\": 2,", "\"node_count\": 2, \"nodes\": 2,"), "unknown field \"nodes\""),
        ("missing phase", g("\"phase\": 15,", ""), "missing required field \"phase\""),
        ("missing name", g("\"name\": \"ok\",", ""), "missing required field \"name\""),
        ("missing layers", r#"{"phase": 1, "name": "x"}"#.into(), "missing required field \"layers\""),
        ("layers not array", r#"{"phase": 1, "name": "x", "layers": {}}"#.into(), "expected an array of layers"),
        ("empty layers", r#"{"phase": 1, "name": "x", "layers": []}"#.into(), "no layers"),
        ("phase wrong type", g("\"phase\": 15", "\"phase\": [15]"), "phase"),
        ("phase negative", g("\"phase\": 15", "\"phase\": -3"), "phase"),
        ("name wrong type", g("\"name\": \"ok\"", "\"name\": 5"), "expected a string"),
        ("zero node count", g("\"node_count\": 2", "\"node_count\": 0"), "must be at least 1"),
        ("zero idle shutdown", g("\"node_count\": 2", "\"node_count\": 2, \"idle_shutdown_minutes\": 0"), "infrastructure.idle_shutdown_minutes: must be at least 1"),
        ("negative idle shutdown", g("\"node_count\": 2", "\"node_count\": 2, \"idle_shutdown_minutes\": -5"), "idle_shutdown_minutes: must be positive"),
        ("absurd idle shutdown", g("\"node_count\": 2", "\"node_count\": 2, \"idle_shutdown_minutes\": 525600"), "idle_shutdown_minutes: 525600 is too large (at most 1440)"),
        ("negative node count", g("\"node_count\": 2", "\"node_count\": -2"), "must be positive"),
        ("fractional node count", g("\"node_count\": 2", "\"node_count\": 1.5"), "whole number"),
        ("node count as string", g("\"node_count\": 2", "\"node_count\": \"2\""), "expected a whole number"),
        ("too many nodes", g("\"node_count\": 2", "\"node_count\": 99999999"), "too large"),
        ("missing instance type", g("\"instance_type\": \"g5.12xlarge\",", ""), "missing required field \"instance_type\""),
        ("zero concurrency", g("\"concurrency\": 1", "\"concurrency\": 0"), "must be at least 1"),
        ("missing concurrency", g(", \"concurrency\": 1", ""), "missing required field \"concurrency\""),
        ("missing prompt tokens", g("\"prompt_tokens\": 10, ", ""), "missing required field \"prompt_tokens\""),
        ("gpu util out of range", g("\"concurrency\": 1", "\"concurrency\": 1, \"gpu_memory_utilization\": 1.5"), "not a fraction"),
        ("id without phase prefix", g("\"p15-L0-a\"", "\"L0-a\""), "phase prefix \"p15-\""),
        ("id with slash", g("\"p15-L0-a\"", "\"p15-L0/a\""), "contains '/'"),
        ("id path traversal", g("\"p15-L0-a\"", "\"p15-../../etc\""), "\"..\""),
        ("id with space", g("\"p15-L0-a\"", "\"p15-L0 a\""), "' '"),
        ("id with newline", g("\"p15-L0-a\"", "\"p15-L0\\na\""), "'\\n'"),
        ("id with shell metachar", g("\"p15-L0-a\"", "\"p15-$(reboot)\""), "'$'"),
        ("id with backtick", g("\"p15-L0-a\"", "\"p15-`id`\""), "'`'"),
        ("id too long", g("\"p15-L0-a\"", &format!("\"p15-{}\"", "a".repeat(200))), "characters long"),
        ("duplicate pattern ids", g("\"concurrency\": 1}", "\"concurrency\": 1}, {\"id\": \"p15-L0-a\", \"backend\": \"echo\", \"prompt_tokens\": 1, \"concurrency\": 1}"), "duplicate pattern id"),
        ("duplicate layer ids", g("]}]}", "]}, {\"id\": \"L0\", \"patterns\": [{\"id\": \"p15-x\", \"backend\": \"echo\", \"prompt_tokens\": 1, \"concurrency\": 1}]}]}"), "duplicate layer id"),
        ("layer id traversal", g("\"id\": \"L0\"", "\"id\": \"../L0\""), "layer id"),
        ("unknown backend", g("\"backend\": \"echo\"", "\"backend\": \"ehco\""), "unknown backend \"ehco\""),
        ("backend with slash", g("\"backend\": \"echo\"", "\"backend\": \"../echo\""), "backend"),
        ("negative budget", g("\"phase\": 15,", "\"phase\": 15, \"budget\": {\"usd\": -5},"), "must be greater than 0"),
        ("zero budget", g("\"phase\": 15,", "\"phase\": 15, \"budget\": {\"usd\": 0},"), "must be greater than 0"),
        ("huge budget", g("\"phase\": 15,", "\"phase\": 15, \"budget\": {\"usd\": 1e300},"), "too large"),
        ("budget as string", g("\"phase\": 15,", "\"phase\": 15, \"budget\": {\"usd\": \"1000\"},"), "expected a number"),
        ("unknown budget field", g("\"phase\": 15,", "\"phase\": 15, \"budget\": {\"usd\": 10, \"dollars\": 5},"), "unknown field \"dollars\""),
        ("unknown provider", g("\"phase\": 15,", "\"phase\": 15, \"provider\": \"gcp\","), "unknown provider \"gcp\""),
        ("bad market", g("\"node_count\": 2,", "\"node_count\": 2, \"market\": \"cheap\","), "unknown market"),
        ("efa not boolean", g("\"node_count\": 2,", "\"node_count\": 2, \"efa\": \"yes\","), "true or false"),
        ("bad duration", g("\"phase\": 15,", "\"phase\": 15, \"estimate\": {\"default\": \"soon\"},"), "invalid duration"),
        ("negative duration", g("\"phase\": 15,", "\"phase\": 15, \"estimate\": {\"default\": -5},"), "negative"),
        ("estimate unknown pattern", g("\"phase\": 15,", "\"phase\": 15, \"estimate\": {\"patterns\": {\"p15-L0-b\": 60}},"), "estimate for unknown pattern"),
        ("both pools", g("\"phase\": 15,", "\"phase\": 15, \"node_groups\": {\"a\": {\"instance_type\": \"c6i.xlarge\", \"count\": 1}},"), "both \"infrastructure\" and \"node_groups\""),
        ("unknown node group", g("\"concurrency\": 1}", "\"concurrency\": 1, \"node_group\": \"gpu\"}"), "unknown node group"),
        ("bad project", g("\"phase\": 15,", "\"phase\": 15, \"project\": \"My Project!\","), "project name"),
        ("retry zero", g("\"phase\": 15,", "\"phase\": 15, \"retry\": {\"attempts\": 0},"), "must be at least 1"),
        ("bad ami", g("\"node_count\": 2,", "\"node_count\": 2, \"ami\": \"ubuntu\","), "neither an AMI id"),
        ("grid without factors", g("\"patterns\": [", "\"grid\": {\"backend\": \"echo\", \"id\": \"p15-{x}\"}, \"patterns\": ["), "missing required field \"factors\""),
        ("grid id missing factor", g("\"patterns\": [", "\"grid\": {\"backend\": \"echo\", \"id\": \"p15-g\", \"factors\": {\"x\": [1, 2]}}, \"patterns\": ["), "does not mention factor {x}"),
        ("grid exclude unknown level", g("\"patterns\": [", "\"grid\": {\"backend\": \"echo\", \"id\": \"p15-{x}\", \"factors\": {\"x\": [1, 2]}, \"exclude\": [{\"x\": 3}]}, \"patterns\": ["), "not a level"),
        ("grid too big", g("\"patterns\": [", "\"grid\": {\"backend\": \"echo\", \"id\": \"p15-{a}-{b}-{c}-{rep}\", \"factors\": {\"a\": [1,2,3,4,5,6,7,8,9,10], \"b\": [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47,48,49,50,51,52,53,54,55,56,57,58,59,60,61,62,63,64,65,66,67,68,69,70,71,72,73,74,75,76,77,78,79,80,81,82,83,84,85,86,87,88,89,90,91,92,93,94,95,96,97,98,99,100], \"c\": [1,2,3,4,5,6,7,8,9,10]}, \"repetitions\": 200}, \"patterns\": ["), "more than"),
        // issue 20: names and values that changed or failed only at run
        ("ids differing only by case", g("\"concurrency\": 1}", "\"concurrency\": 1}, {\"id\": \"p15-L0-A\", \"backend\": \"echo\", \"prompt_tokens\": 1, \"concurrency\": 1}"), "only by case"),
        ("partitioned id too long", g("{\"id\": \"L0\", \"name\": \"base\",", "{\"id\": \"L0\", \"name\": \"base\", \"partitions\": 12,").replacen("\"p15-L0-a\"", &format!("\"p15-{}\"", "a".repeat(120)), 1), "partitioned id"),
        ("NUL byte in a value", g("\"max_tokens\": 10", "\"max_tokens\": 10, \"model\": \"a\\u0000b\""), "NUL byte"),
        ("100,000-character value", g("\"max_tokens\": 10", &format!("\"max_tokens\": 10, \"model\": \"{}\"", "m".repeat(100_000))), "bytes long"),
        ("negative zero", g("\"max_tokens\": 10", "\"max_tokens\": -0"), "negative zero"),
        ("number underflowing to 0", g("\"max_tokens\": 10", "\"max_tokens\": 10, \"eps\": 1e-400"), "too small"),
        ("integer beyond u64", g("\"max_tokens\": 10", "\"max_tokens\": 18446744073709551616"), "does not fit in 64 bits"),
        ("integer beyond i64", g("\"max_tokens\": 10", "\"max_tokens\": -9223372036854775809"), "does not fit in 64 bits"),
        ("template path traversal", g("\"phase\": 15,", "\"phase\": 15, \"templates\": {\"echo\": \"../../etc/passwd\"},"), "templates.echo: template path \"../../etc/passwd\" leaves the project folder"),
        ("absolute template path", g("\"phase\": 15,", "\"phase\": 15, \"templates\": {\"echo\": \"/etc/passwd\"},"), "leaves the project folder"),
    ];
    v.push((
        "bom and garbage",
        "\u{feff}{\"phase\": 15,}".to_string(),
        "trailing comma",
    ));
    v
}

#[test]
fn every_malformed_plan_exits_2_with_a_located_message_and_creates_nothing() {
    let p = Project::new();
    p.write(
        "plans/templates/echo.json.hbs",
        &one_step_template("echo {{pattern_id}}", ""),
    );
    let cases = corpus();
    assert!(cases.len() >= 50, "{} cases", cases.len());
    for (name, text, expect) in &cases {
        p.write("plans/bad.json", text);
        let r = p.infra(&["plan", "bad"]);
        assert_eq!(r.code, 2, "case {name:?}: exit {}\n{}", r.code, r.stderr);
        assert!(
            r.stderr.contains(expect),
            "case {name:?}: message lacks {expect:?}:\n{}",
            r.stderr
        );
        assert!(!r.stderr.contains("panicked"), "case {name:?} panicked");
        // a position: plans/bad.json:<line>:<col>
        let located = r.stderr.lines().any(|l| {
            l.split_whitespace().next().is_some_and(|w| {
                let mut it = w.rsplitn(3, ':');
                let (c, l) = (it.next(), it.next());
                c.is_some_and(|c| c.parse::<u32>().is_ok())
                    && l.is_some_and(|l| l.parse::<u32>().is_ok())
            })
        });
        assert!(located, "case {name:?}: no line:column in\n{}", r.stderr);
        assert!(
            r.stderr.contains("hint:"),
            "case {name:?}: no hint in\n{}",
            r.stderr
        );
        assert!(!p.exists(".infra"), "case {name:?} created .infra");
        assert!(!p.exists("results"), "case {name:?} created results");
    }
}

#[test]
fn all_problems_are_reported_at_once_with_their_json_paths() {
    let p = Project::new();
    p.write(
        "plans/templates/echo.json.hbs",
        &one_step_template("echo", ""),
    );
    p.write(
        "plans/multi.json",
        r#"{
  "phase": 15,
  "name": "x",
  "colour": "red",
  "infrastructure": {"instance_type": "g5.12xlarge", "node_count": 0},
  "layers": [{"id": "L0", "patterns": [
    {"id": "p15-a", "backend": "echo", "prompt_tokens": 1, "concurrency": 1},
    {"id": "p15-a", "backend": "nope", "prompt_tokens": 1, "concurrency": 1}
  ]}]
}"#,
    );
    let r = p.infra(&["plan", "multi"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr
            .contains("plans/multi.json:4:13 colour: unknown field \"colour\""),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("infrastructure.node_count: must be at least 1"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains(
            ":8:12 layers[0].patterns[1].id: duplicate pattern id \"p15-a\" (first at 7:12)"
        ),
        "{}",
        r.stderr
    );
}

#[test]
fn problems_found_after_decoding_point_at_their_values() {
    let p = Project::new();
    p.write(
        "plans/templates/echo.json.hbs",
        &one_step_template("echo", ""),
    );
    p.write(
        "plans/zone.json",
        r#"{
  "phase": "z",
  "name": "x",
  "provider": "aws",
  "region": "us-east-1",
  "availability_zone": "eu-west-1a",
  "budget": {"usd": 100,
     "max_hourly_usd": 0.001},
  "node_groups": {"cpu": {"instance_type": "c6i.xlarge", "count": 1}},
  "layers": [{"id": "L", "grid": {"backend": "echo", "id": "z-{a}", "factors": {"a": [1]}}}]
}"#,
    );
    let r = p.infra(&["plan", "zone"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    for want in [
        "plans/zone.json:6:24 availability_zone: availability zone \"eu-west-1a\" is not in region \"us-east-1\"",
        "plans/zone.json:8:24 budget.max_hourly_usd: a budget of $0.001/h cannot pay for one node",
    ] {
        assert!(r.stderr.contains(want), "{want}\n{}", r.stderr);
    }
    assert!(!p.path().join(".infra/zone").exists(), "nothing is created");
}

#[test]
fn a_10_mb_plan_is_refused() {
    let p = Project::new();
    let big = format!(
        "{{\"phase\": 1, \"name\": \"{}\", \"layers\": []}}",
        "x".repeat(10 * 1024 * 1024)
    );
    p.write("plans/big.json", &big);
    let r = p.infra(&["plan", "big"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("larger than"), "{}", r.stderr);
}

#[test]
fn template_problems_exit_2_naming_template_and_pattern() {
    let p = Project::new();
    let base = r#"{"phase": 1, "name": "t", "layers": [{"id": "L0", "patterns": [{"id": "p1-a", "backend": "b"}]}]}"#;
    p.write("plans/t.json", base);
    for (tpl, expect) in [
        (
            r#"{"steps": [{"name": "s", "command": "run {{missing_var}}"}]}"#,
            "\"missing_var\"",
        ),
        (
            r#"{"steps": [{"name": "s", "command": "x", "bogus": 1}]}"#,
            "unknown field `bogus`",
        ),
        (r#"{"steps": []}"#, "no steps"),
        (
            r#"{"steps": [{"name": "s", "command": "x", "node": 3}]}"#,
            "runs on node 3",
        ),
        (
            r#"{"steps": [{"name": "s", "command": "x"}], "outputs": ["../../etc/passwd"]}"#,
            "not a relative path",
        ),
        (
            r#"{"steps": [{"name": "s", "command": "x", "background": true}]}"#,
            "at least one foreground step",
        ),
        (
            r#"{"steps": [{"name": "s", "command": "x"}"#,
            "not a valid task definition",
        ),
        (
            r#"{"steps": [{"name": "s", "command": "{{#if}}"}]}"#,
            "does not compile",
        ),
        (
            r#"{"nodes": 2, "steps": [{"name": "s", "command": "x"}]}"#,
            "needs 2 nodes",
        ),
        // issue 20: quoting a template can undo
        (
            r#"{"steps": [{"name": "s", "command": "echo {{{pattern_id}}}"}]}"#,
            "step \"s\": {{{pattern_id}}} puts \"pattern_id\" into the command without shell quoting",
        ),
        (
            r#"{"steps": [{"name": "s", "command": "echo ${{pattern_id}}"}]}"#,
            "the value of \"pattern_id\" lands right after a '$'",
        ),
        (
            r#"{"steps": [{"name": "s", "command": "x", "health": {"command": "cat <<EOF\n{{layer_id}}\nEOF"}, "background": true}, {"name": "t", "command": "echo \"{{{layer_id}}}\""}]}"#,
            "puts \"layer_id\" into the command without shell quoting",
        ),
    ] {
        p.write("plans/templates/b.json.hbs", tpl);
        let r = p.infra(&["plan", "t"]);
        assert_eq!(r.code, 2, "{tpl}: {}", r.stderr);
        assert!(
            r.stderr.contains(expect),
            "{tpl}: message lacks {expect:?}\n{}",
            r.stderr
        );
        assert!(r.stderr.contains("b.json.hbs"), "{}", r.stderr);
    }
}

#[test]
fn unknown_plan_names_suggest_close_ones() {
    let p = Project::new();
    p.write(
        "plans/templates/echo.json.hbs",
        &one_step_template("echo", ""),
    );
    p.write("plans/phase15.json", GOOD);
    let r = p.infra(&["plan", "phase16"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("did you mean \"phase15\""),
        "{}",
        r.stderr
    );
    // and a path works
    p.infra(&["plan", "plans/phase15.json"]).ok();
}

/// A node group whose architecture has no Linux build of infra to run as
/// the node agent is refused at `infra plan`, naming the group, why the
/// build found cannot serve, and the command that builds one.
#[test]
fn an_aws_plan_without_a_node_agent_for_its_architecture_exits_2_with_the_build_command() {
    let p = Project::new();
    p.write(
        "plans/templates/echo.json.hbs",
        &one_step_template("echo", ""),
    );
    p.write(
        "plans/arch.json",
        r#"{"phase": "a", "name": "x", "provider": "aws", "region": "us-east-1",
  "node_groups": {"cpu": {"instance_type": "c6i.xlarge", "count": 1}},
  "layers": [{"id": "L", "grid": {"backend": "echo", "id": "a-{a}", "factors": {"a": [1]}}}]}"#,
    );
    p.write(
        "not-an-agent.sh",
        "#!/bin/sh\necho this is a shell script, not infra\n",
    );
    let script = p.path().join("not-an-agent.sh");
    let out = p
        .cmd(&["plan", "arch"])
        .env("INFRA_NODE_BINARY_X86_64", &script)
        .output()
        .unwrap();
    let r = Run::from(out);
    assert_eq!(r.code, 2, "{}", r.stderr);
    for want in [
        "plans/arch.json:2:",
        "node group \"cpu\" (c6i.xlarge) has x86_64 nodes",
        "INFRA_NODE_BINARY_X86_64=",
        "it is not an ELF executable",
        "scripts/build-node-binaries.sh x86_64",
    ] {
        assert!(r.stderr.contains(want), "{want}\n{}", r.stderr);
    }
    assert!(!p.path().join(".infra/arch").exists(), "nothing is created");
    // the running (Linux x86_64) infra serves x86_64 nodes by itself
    let ok = p.infra(&["plan", "arch"]);
    assert_eq!(ok.code, 0, "{}", ok.stderr);
}
