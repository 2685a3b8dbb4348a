//! Every example plan in plans/ runs end to end on the local provider in
//! the test suite. Most have their test beside their feature (quickstart
//! and energy in local.rs, sweep in sweep.rs, systems-suite in
//! doe_suite.rs, phase14 and phase15 in inference.rs); the others are here,
//! and a check that no plan is left without one.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::common::*;

fn table(p: &Project, campaign: &str) -> Vec<HashMap<String, String>> {
    let mut t = csv::Reader::from_path(p.path().join(format!("results/{campaign}/table.csv")))
        .unwrap_or_else(|e| panic!("results/{campaign}/table.csv: {e}"));
    let head: Vec<String> = t.headers().unwrap().iter().map(String::from).collect();
    t.records()
        .map(|r| {
            head.iter()
                .cloned()
                .zip(r.unwrap().iter().map(String::from))
                .collect()
        })
        .collect()
}

/// A new example plan comes with a test that runs it locally: some test
/// file runs `infra up <plan>` or `infra run <plan> ...` (its arguments
/// as a list starting `["up", "<plan>"` or `["run", "<plan>"`).
#[test]
fn every_example_plan_has_a_test_that_runs_it_on_the_local_provider() {
    let mut sources = String::new();
    for e in std::fs::read_dir(repo().join("tests/it"))
        .unwrap()
        .flatten()
    {
        if e.path().extension().is_some_and(|x| x == "rs") {
            // without whitespace: the arguments as rustfmt laid them out
            let text = std::fs::read_to_string(e.path()).unwrap();
            sources.extend(text.chars().filter(|c| !c.is_whitespace()));
        }
    }
    let mut missing = Vec::new();
    let mut plans = 0;
    for e in std::fs::read_dir(repo().join("plans")).unwrap().flatten() {
        let path = e.path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        plans += 1;
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let up = format!("[\"up\",\"{name}\"");
        let run = format!("[\"run\",\"{name}\"");
        // inference.rs runs its shipped plans through `up_locally`
        let helper = format!("up_locally(\"{name}\"");
        if ![up, run, helper]
            .iter()
            .any(|s| sources.contains(s.as_str()))
        {
            missing.push(name);
        }
    }
    assert!(plans >= 8, "{plans} plans");
    assert!(
        missing.is_empty(),
        "example plans no test runs locally: {missing:?}"
    );
}

/// The statistics team's tables: over budget in us-east-1 as written (the
/// refusal is cost.rs's test), run in eu-north-1 as the README says. The
/// whole plan is 240 tasks (about 70 s here): one cell of each table runs,
/// every partition of the partitioned ones, on their node groups.
#[test]
fn the_statistics_tables_run_locally_in_eu_north_1_one_cell_of_each_table() {
    let p = Project::with_examples();
    let region = ["--region", "eu-north-1"];
    let with = |args: &[&str]| {
        let mut a = args.to_vec();
        a.extend(region);
        p.infra(&a)
    };
    with(&["apply", "tables", "--yes"]).ok();
    let r = with(&[
        "run",
        "tables",
        "tables-t1-dgp2-d5000-S20",
        "tables-t3-d250-p10-lam0.01",
        "tables-t2-dgp1-adam-lr0.01-d1000",
    ]);
    r.ok();
    assert!(r.stdout.contains("7 succeeded, 0 failed"), "{}", r.stdout);
    with(&["results", "tables"]).ok();
    with(&["destroy", "tables"]).ok();
    let rows = table(&p, "tables");
    // B = 20 seeds per cell, split over 3 partitions for tables I and III
    let mut seeds: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
    for r in &rows {
        let cell = r["task"].split("-part").next().unwrap().to_string();
        assert!(
            seeds
                .entry(cell)
                .or_default()
                .insert(r["seed"].parse().unwrap()),
            "a seed twice: {r:?}"
        );
        assert!(r["estimate"].parse::<f64>().unwrap().is_finite());
    }
    let all: BTreeSet<u32> = (0..20).collect();
    assert_eq!(seeds.len(), 3, "{seeds:?}");
    assert!(seeds.values().all(|s| *s == all), "{seeds:?}");
    // each table on its pool
    for (task, group) in [
        ("tables-t1-dgp2-d5000-S20-part2of3", "cpu"),
        ("tables-t2-dgp1-adam-lr0.01-d1000", "gpu"),
    ] {
        let rt: serde_json::Value =
            serde_json::from_str(&p.read(&format!("results/tables/{task}/runtime.json"))).unwrap();
        assert_eq!(rt["node_group"], group, "{rt}");
    }
    assert_eq!(
        rows.iter()
            .filter(|r| r["task"].starts_with("tables-t1-"))
            .map(|r| r["partition"].as_str())
            .collect::<BTreeSet<_>>(),
        BTreeSet::from(["0", "1", "2"])
    );
}

/// The deep-learning team's Slurm sweep tried on this machine: the
/// allocations (groups without an instance type) become local nodes, the
/// container and MPS settings stay the cluster's. The same 216-cell grid
/// runs whole in sweep.rs (plans/sweep.json); here one job of each model
/// variant, on the 16 slots of the one 8-GPU node.
#[test]
fn the_slurm_sweep_runs_on_the_local_provider_without_its_cluster() {
    let p = Project::with_examples();
    p.infra(&["apply", "sweep-slurm", "--provider", "local", "--yes"])
        .ok();
    let jobs = [
        "sweep-slurm-small-lr0.001-wd0.0-s0",
        "sweep-slurm-base-lr0.0003-wd0.01-s1",
        "sweep-slurm-wide-lr0.0001-wd0.1-s2",
        "sweep-slurm-deep-lr0.0003-wd0.1-s5",
    ];
    let mut args = vec!["run", "sweep-slurm"];
    args.extend(jobs);
    args.extend(["--provider", "local"]);
    let r = p.infra(&args);
    r.ok();
    assert!(r.stdout.contains("4 succeeded, 0 failed"), "{}", r.stdout);
    p.infra(&["results", "sweep-slurm", "--provider", "local"])
        .ok();
    p.infra(&["destroy", "sweep-slurm", "--provider", "local"])
        .ok();
    let rows = table(&p, "sweep-slurm@local");
    assert_eq!(rows.len(), 4);
    let mut gpus = BTreeSet::new();
    for r in &rows {
        assert!(jobs.contains(&r["task"].as_str()));
        assert!(r["final_loss"].parse::<f64>().unwrap() > 0.0, "{r:?}");
        assert_eq!(r["steps"], "40");
        gpus.insert(r["gpu"].clone());
    }
    // two workers per GPU: each slot its own CUDA_VISIBLE_DEVICES of the 8
    assert!(
        gpus.iter().all(|g| g.parse::<u32>().unwrap() < 8),
        "{gpus:?}"
    );
}

/// The README's table of examples names every plan of plans/ and the five
/// teams the plans are for.
#[test]
fn the_readme_examples_table_names_every_plan_and_the_five_teams() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let start = readme.find("## Examples").expect("an Examples section");
    let section = &readme[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    let rows: Vec<&str> = section
        .lines()
        .filter(|l| l.starts_with("| `plans/"))
        .collect();
    for e in std::fs::read_dir(repo().join("plans")).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".json") {
            assert!(
                rows.iter()
                    .any(|r| r.starts_with(&format!("| `plans/{name}`"))),
                "plans/{name} is not in the README's examples table"
            );
        }
    }
    for team in [
        "inference-systems team",
        "statistics team",
        "deep-learning team",
        "systems team",
        "energy-measurement team",
    ] {
        assert!(
            rows.iter()
                .any(|r| r.split('|').nth(2).unwrap_or("").contains(team)),
            "no example for the {team} in {rows:#?}"
        );
    }
}
