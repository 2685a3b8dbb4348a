//! Property-based fuzzing of plan parsing, validation and task rendering:
//! arbitrary text and mutations of valid plans never panic, and whatever
//! is accepted renders. `FUZZ_CASES` raises the number of cases. Generated
//! templates (quotes, partials, helpers around hostile values) either fail
//! cleanly or run without any value escaping its quoting;
//! `FUZZ_TEMPLATE_CASES` raises their number.

use std::path::Path;
use std::time::Instant;

use infra::plan::load::parse_plan;
use infra::tasks::render::render_all;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

const SEED_PLAN: &str = r#"{"phase": 15, "name": "fuzz",
  "infrastructure": {"instance_type": "g5.12xlarge", "node_count": 2, "gpu_count_per_node": 4},
  "common_settings": {"max_tokens": 10, "model": "Qwen/Qwen2.5-7B"},
  "budget": {"usd": 100, "max_hourly_usd": 20},
  "estimate": {"default": "5m"},
  "layers": [
    {"id": "L0", "name": "a", "patterns": [
      {"id": "p15-L0-a", "backend": "t", "prompt_tokens": 10, "concurrency": 1, "x": "it's $(x)"}]},
    {"id": "L1", "grid": {"backend": "t", "id": "p15-{a}-{b}", "factors": {"a": [1, 2], "b": ["x", "y"]},
      "exclude": [{"a": 1}], "settings": {"prompt_tokens": 5, "concurrency": 2}}}
  ]}"#;

const TEMPLATE: &str = r#"{"outputs": ["o.json"], "steps": [{"name": "s", "command": "run {{pattern_id}} {{max_tokens}} {{model}}"}]}"#;

fn cases() -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1500)
}

fn check(dir: &Path, text: &str) {
    let file = dir.join("plans/f.json");
    if let Ok(plan) = parse_plan(text, &file, &|p: &Path| p.is_file()) {
        let pats: Vec<_> = plan.patterns().collect();
        let _ = render_all(&plan, &pats);
    }
}

#[derive(Debug, Clone)]
enum Edit {
    Insert(usize, String),
    Delete(usize, usize),
    Replace(usize, String),
}

fn edit() -> impl Strategy<Value = Edit> {
    let piece = prop_oneof![
        Just("\"".to_string()),
        Just("{".to_string()),
        Just("}".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just(",".to_string()),
        Just(":".to_string()),
        Just("-1".to_string()),
        Just("1e308".to_string()),
        Just("null".to_string()),
        Just("\\u0000".to_string()),
        Just("../".to_string()),
        Just("{{".to_string()),
        Just("\"id\": \"p15-x\"".to_string()),
        "[ -~]{0,6}".prop_map(|s| s),
        any::<char>().prop_map(|c| c.to_string()),
    ];
    prop_oneof![
        (0usize..2000, piece.clone()).prop_map(|(i, s)| Edit::Insert(i, s)),
        (0usize..2000, 1usize..20).prop_map(|(i, n)| Edit::Delete(i, n)),
        (0usize..2000, piece).prop_map(|(i, s)| Edit::Replace(i, s)),
    ]
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for e in edits {
        let n = chars.len().max(1);
        match e {
            Edit::Insert(i, s) => {
                let at = i % n;
                chars.splice(at..at, s.chars());
            }
            Edit::Delete(i, k) => {
                let at = i % n;
                let end = (at + k).min(chars.len());
                chars.drain(at..end);
            }
            Edit::Replace(i, s) => {
                let at = i % n;
                let end = (at + s.chars().count()).min(chars.len());
                chars.splice(at..end, s.chars());
            }
        }
    }
    chars.into_iter().collect()
}

#[test]
fn fuzz_plans_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("plans/templates")).unwrap();
    std::fs::write(dir.path().join("plans/templates/t.json.hbs"), TEMPLATE).unwrap();
    // the seed itself is valid and renders
    let plan = parse_plan(SEED_PLAN, &dir.path().join("plans/f.json"), &|p: &Path| {
        p.is_file()
    })
    .unwrap();
    assert_eq!(plan.pattern_count(), 3);
    let start = Instant::now();
    let n = cases();
    let mut runner = TestRunner::new(Config {
        cases: n,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&proptest::collection::vec(edit(), 1..6), |edits| {
            check(dir.path(), &apply(SEED_PLAN, &edits));
            Ok(())
        })
        .unwrap();
    let mutated = start.elapsed();
    let start = Instant::now();
    let mut runner = TestRunner::new(Config {
        cases: n,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&".{0,300}", |s| {
            check(dir.path(), &s);
            Ok(())
        })
        .unwrap();
    println!(
        "fuzz: {n} mutated plans in {:.2}s, {n} arbitrary strings in {:.2}s, no panic",
        mutated.as_secs_f64(),
        start.elapsed().as_secs_f64()
    );
}

// ---- templates -------------------------------------------------------------

/// Values that run something if any of them reaches a shell unquoted: each
/// creates its own file in the working folder.
const HOSTILE: &[&str] = &[
    "$(touch p1)",
    "`touch p2`",
    "a;touch p3",
    "x' ; touch p4 ; '",
    "\"; touch p5; \"",
    "\ntouch p6\n",
];

/// Pieces of a command as they appear in the template's JSON text.
const PIECES: &[&str] = &[
    "echo ",
    " ",
    "x",
    "\\\"",
    "'",
    "$",
    "\\\\",
    "#",
    "\\n",
    " <<EOF\\n",
    "\\nEOF\\n",
    "$((",
    "))",
    ";",
    "`",
    "{{v1}}",
    "{{{v1}}}",
    "{{v2}}",
    "{{v3}}",
    "{{o}}",
    "{{l}}",
    "{{json n}}",
    "{{#if v1}}x {{v2}}{{else}}{{v3}}{{/if}}",
    "{{#each l}}{{this}} {{/each}}",
    "{{lookup o \"k\"}}",
    "{{> p}}",
    "{{> q}}",
    "{{pattern_id}}",
    "{{{pattern_id}}}",
    "{{n}}",
];

fn fragment() -> impl Strategy<Value = String> {
    proptest::collection::vec(0..PIECES.len(), 0..12)
        .prop_map(|ix| ix.into_iter().map(|i| PIECES[i]).collect::<String>())
}

/// How many generated templates rendered (the rest were clean errors).
static RENDERED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn template_cases() -> u32 {
    std::env::var("FUZZ_TEMPLATE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150)
}

/// A plan whose values are all hostile, and a template made of random
/// pieces (quotes, partials, helpers) around them.
fn check_template(dir: &Path, p: &str, q: &str, cmd: &str, health: &str) -> Result<(), String> {
    let values = serde_json::json!({
        "v1": HOSTILE[0], "v2": HOSTILE[1], "v3": HOSTILE[3],
        "o": {"k": HOSTILE[2], "j": HOSTILE[4]}, "l": [HOSTILE[5], HOSTILE[3], 7], "n": 3
    });
    let plan = format!(
        r#"{{"phase": 15, "name": "tf", "common_settings": {values},
  "layers": [{{"id": "L0", "patterns": [{{"id": "p15-a", "backend": "t"}}]}}]}}"#
    );
    let template = format!(
        r#"{{{{#*inline "p"}}}}{p}{{{{/inline}}}}{{{{#*inline "q"}}}}{q}{{{{/inline}}}}{{"env": {{"E": "{{{{v1}}}}"}}, "steps": [{{"name": "s", "command": "{cmd}"{health}}}]}}"#
    );
    std::fs::write(dir.join("plans/templates/t.json.hbs"), &template).unwrap();
    let plan = parse_plan(&plan, &dir.join("plans/tf.json"), &|p: &Path| p.is_file())
        .map_err(|e| format!("the plan does not parse: {e:?}"))?;
    let pats: Vec<_> = plan.patterns().collect();
    let Ok(rendered) = render_all(&plan, &pats) else {
        return Ok(()); // a clean error: `infra plan` exits 2
    };
    RENDERED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let work = dir.join("work");
    for t in &rendered.tasks {
        if t.env.get("E").map(String::as_str) != Some(HOSTILE[0]) {
            return Err(format!("env E is {:?}, not the raw value", t.env.get("E")));
        }
        for s in &t.steps {
            let mut commands = vec![s.command.clone()];
            commands.extend(s.health.iter().filter_map(|h| h.command.clone()));
            for c in commands {
                let _ = std::fs::remove_dir_all(&work);
                std::fs::create_dir_all(&work).unwrap();
                let _ = std::process::Command::new("sh")
                    .arg("-c")
                    .arg(&c)
                    .current_dir(&work)
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status();
                for i in 1..=6 {
                    if work.join(format!("p{i}")).exists() {
                        return Err(format!("value p{i} ran: {c:?}\ntemplate: {template}"));
                    }
                }
            }
        }
    }
    Ok(())
}

#[test]
fn fuzz_templates_keep_every_value_quoted_or_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("plans/templates")).unwrap();
    // a fixed case: the lint's own regression, and a well-quoted template that runs
    check_template(dir.path(), "", "", "echo \\\"{{v1}}\\\"", "").unwrap();
    check_template(dir.path(), "{{v2}}", "", "echo {{v1}} {{> p}} {{o}}", "").unwrap();
    let n = template_cases();
    let start = Instant::now();
    let mut runner = TestRunner::new(Config {
        cases: n,
        failure_persistence: None,
        ..Config::default()
    });
    let health = prop_oneof![
        Just(String::new()),
        fragment().prop_map(|h| format!(
            r#", "background": true, "health": {{"command": "{h}"}}}}, {{"name": "f", "command": "true""#
        )),
    ];
    runner
        .run(
            &(fragment(), fragment(), fragment(), health),
            |(p, q, cmd, health)| {
                check_template(dir.path(), &p, &q, &cmd, &health)
                    .map_err(proptest::test_runner::TestCaseError::fail)
            },
        )
        .unwrap();
    println!(
        "fuzz: {n} generated templates in {:.2}s ({} rendered and ran, the rest clean errors), every value quoted",
        start.elapsed().as_secs_f64(),
        RENDERED.load(std::sync::atomic::Ordering::Relaxed)
    );
}
