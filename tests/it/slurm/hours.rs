//! The hours a Slurm campaign's allocations hold are recorded in the
//! ledger as they are held: a later run's gate counts them, `infra budget`
//! shows them, and a controller that dies loses none of them.

use std::process::Stdio;
use std::time::{Duration, Instant};

use super::{cluster, jobs_of, slurm, slurm_cmd};
use crate::common::{one_step_template, Project};

/// The ledger's Slurm entries of `phase`: (node-hours, GPU-hours).
fn ledger_hours(p: &Project, phase: &str) -> (f64, f64) {
    let text = std::fs::read_to_string(p.path().join(".infra/ledger.jsonl")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["phase"] == phase && e["provider"] == "slurm")
        .fold((0.0, 0.0), |(n, g), e| {
            (
                n + e["hours"].as_f64().unwrap(),
                g + e["gpu_hours"].as_f64().unwrap_or(0.0),
            )
        })
}

fn plan(p: &Project, cap: &str) {
    p.write(
        "plans/templates/nap.json.hbs",
        &one_step_template("sleep 4", ""),
    );
    // one allocation of "2 GPUs" (the budget counts the plan's gpus; the
    // test cluster has none, so no gres is asked for)
    p.write(
        "plans/hrs.json",
        &format!(
            r#"{{"phase": "hrs", "name": "hours across runs", "provider": "slurm",
          "node_groups": {{"cpu": {{"count": 1, "slots": 2, "gpus": 2}}}},
          "slurm": {{"node_groups": {{"cpu": {{"gres": "none"}}}}}},
          "budget": {{"gpu_hours": {cap}}},
          "estimate": {{"default": "4s"}},
          "layers": [{{"id": "L0", "grid": {{"backend": "nap", "id": "hrs-{{i}}", "factors": {{"i": [0, 1]}}}}}}]}}"#
        ),
    );
}

/// A first run holds its allocation for some seconds; they are in the
/// ledger (node-hours, GPU-hours = 2 × node-hours) and `infra budget`
/// shows them, in text and JSON. A second run (`--rerun`) that would need
/// more GPU-hours than remain is refused with exit 3 naming what remains,
/// before anything is submitted.
#[test]
fn slurm_hours_of_a_run_are_recorded_and_a_second_run_above_what_remains_is_refused() {
    if !cluster() {
        return;
    }
    let p = Project::new();
    // 2 tasks of 4 s on 2 slots: ~4 s of 2 GPUs = 0.0022 GPU-h estimated
    plan(&p, "0.008");
    let r = slurm(&p, &["up", "hrs", "--yes"]);
    r.ok();
    assert!(
        r.stderr
            .contains("GPU-hours in this run (budget: 0.008 GPU-hours; the phase used"),
        "{}",
        r.stderr
    );
    let (node_h, gpu_h) = ledger_hours(&p, "hrs");
    assert!(
        node_h > 3.0 / 3600.0,
        "the allocation held its run: {node_h}"
    );
    assert!((gpu_h - 2.0 * node_h).abs() < 1e-9, "{node_h} {gpu_h}");
    assert!(jobs_of(&p, "hrs").is_empty());

    let b = p.infra(&["budget", "hrs"]);
    b.ok();
    assert!(
        b.stdout
            .contains(&format!("GPU-hours {:.4} used of 0.0080", gpu_h)),
        "{}",
        b.stdout
    );
    assert!(b.stdout.contains("node-hours "), "{}", b.stdout);
    assert!(!b.stdout.contains("$inf"), "{}", b.stdout);
    let j = p.infra(&["--json", "budget", "hrs"]);
    j.ok();
    let v: serde_json::Value = serde_json::from_str(&j.stdout).unwrap();
    let h = &v[0]["hours"]["gpu_hours"];
    assert!((h["used"].as_f64().unwrap() - gpu_h).abs() < 1e-5, "{h}");
    assert_eq!(h["budget"], 0.008);
    assert!(
        (h["remaining"].as_f64().unwrap() - (0.008 - gpu_h)).abs() < 1e-5,
        "{h}"
    );

    // a budget the first run used most of: the same work again does not fit
    plan(&p, &format!("{:.4}", gpu_h + 0.001));
    let r = slurm(&p, &["up", "hrs", "--yes", "--rerun"]);
    assert_eq!(r.code, 3, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr
            .contains("GPU-hours that remain of \"budget.gpu_hours\""),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("used by the phase's allocations so far"),
        "{}",
        r.stderr
    );
    assert!(
        !r.stderr.contains("submitted cpu-"),
        "refused before apply: {}",
        r.stderr
    );
    assert!(jobs_of(&p, "hrs").is_empty(), "nothing was submitted");
    // `infra plan` shows the hours used and what remains
    let r = p.infra(&["plan", "hrs"]);
    r.ok();
    assert!(r.stdout.contains(" GPU-h, "), "{}", r.stdout);
    assert!(r.stdout.contains("used (remaining 0.00"), "{}", r.stdout);
}

/// The controller killed while its allocation is held: what the
/// allocation held before and after the crash is recorded (by the next
/// run, from squeue's time used), none of it lost or counted twice.
#[test]
fn slurm_hours_held_before_a_controller_crash_are_recorded_by_the_next_run() {
    if !cluster() {
        return;
    }
    let p = Project::new();
    p.write(
        "plans/templates/nap.json.hbs",
        &one_step_template("sleep 6", ""),
    );
    p.write(
        "plans/hcr.json",
        r#"{"phase": "hcr", "name": "hours across a crash", "provider": "slurm",
          "node_groups": {"cpu": {"count": 1, "slots": 1}},
          "budget": {"node_hours": 1},
          "estimate": {"default": "6s"},
          "layers": [{"id": "L0", "patterns": [{"id": "hcr-0", "backend": "nap"}]}]}"#,
    );
    let t0 = Instant::now();
    let mut child = slurm_cmd(&p, &["up", "hcr", "--yes"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !std::fs::read_to_string(p.path().join(".infra/hcr/journal.jsonl"))
        .unwrap_or_default()
        .contains("\"event\":\"step_started\"")
    {
        assert!(Instant::now() < deadline, "no step started");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    child.kill().unwrap();
    child.wait().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    // the allocation still held: `infra budget` records it up to now
    let b = p.infra(&["budget", "hcr"]);
    b.ok();
    let (held, _) = ledger_hours(&p, "hcr");
    assert!(held >= 4.0 / 3600.0, "{held}: {}", b.stdout);
    let r = slurm(&p, &["up", "hcr", "--yes"]);
    r.ok();
    let (held, _) = ledger_hours(&p, "hcr");
    let wall = t0.elapsed().as_secs_f64() / 3600.0;
    // the allocation held at least what its one step ran (6 s), which
    // began before the crash and ended after it
    assert!(
        held >= 6.0 / 3600.0,
        "the whole allocation: {held}\n{}\n{}",
        p.read(".infra/ledger.jsonl"),
        r.stderr
    );
    assert!(
        held <= wall + 2.0 / 3600.0,
        "nothing counted twice: {held} > {wall}"
    );
    assert!(jobs_of(&p, "hcr").is_empty());
}

/// The run's meter starts from what the phase held before: a second run
/// whose estimate fits in what remains is let through, then stopped when
/// the phase's hours in all (the first run's and its own) reach the
/// budget, not when its own do.
#[test]
fn slurm_the_meter_of_a_later_run_counts_the_hours_of_earlier_runs() {
    if !cluster() {
        return;
    }
    let p = Project::new();
    p.write(
        "plans/templates/nap.json.hbs",
        &one_step_template("sleep 4", ""),
    );
    let plan = |n: usize| {
        let ids: Vec<String> = (0..n).map(|i| i.to_string()).collect();
        format!(
            r#"{{"phase": "hmt", "name": "meter across runs", "provider": "slurm",
          "node_groups": {{"cpu": {{"count": 1, "slots": 1}}}},
          "budget": {{"node_hours": 0.005}},
          "estimate": {{"default": "1s"}},
          "layers": [{{"id": "L0", "grid": {{"backend": "nap", "id": "hmt-{{i}}", "factors": {{"i": [{}]}}}}}}]}}"#,
            ids.join(", ")
        )
    };
    // the first run: two tasks, ~8 s held (of the budget's 18 s)
    p.write("plans/hmt.json", &plan(2));
    slurm(&p, &["up", "hmt", "--yes"]).ok();
    let (first, _) = ledger_hours(&p, "hmt");
    assert!(first >= 8.0 / 3600.0, "{first}");
    // the second: six more tasks of 4 s (24 s, estimated 6 s: let through);
    // alone it would hold 18 s after some 4 tasks, with the first run's
    // hours the budget is reached earlier
    p.write("plans/hmt.json", &plan(8));
    let r = slurm(&p, &["up", "hmt", "--yes"]);
    assert_ne!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("budget reached: the allocations held"),
        "{}",
        r.stderr
    );
    let (all, _) = ledger_hours(&p, "hmt");
    let second = all - first;
    assert!(
        second < 0.005 - 2.0 / 3600.0,
        "the second run stopped before holding the whole budget itself: {second}\n{}",
        r.stderr
    );
    let done = (2..8)
        .filter(|i| p.exists(&format!("results/hmt/hmt-{i}/runtime.json")))
        .count();
    assert!(done < 6, "{done}");
    assert!(jobs_of(&p, "hmt").is_empty(), "{:?}", jobs_of(&p, "hmt"));
}
