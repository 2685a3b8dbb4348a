//! Property-based fuzzing of plan parsing, validation and task rendering:
//! arbitrary text and mutations of valid plans never panic, and whatever
//! is accepted renders. `FUZZ_CASES` raises the number of cases.

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
