//! Grids, partitions, scheduling and result tables.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use infra::plan::load::parse_plan;
use infra::plan::Plan;
use infra::runner::scheduler::{simulate, Policy, Pool, SimTask};
use proptest::prelude::*;

use crate::common::*;

fn plan(text: &str) -> Plan {
    parse_plan(text, Path::new("/x/plans/t.json"), &|_| true).unwrap_or_else(|e| panic!("{e}"))
}

fn grid_plan(factors: &str, extra: &str) -> String {
    format!(
        r#"{{"phase": "g", "name": "g", "layers": [{{"id": "L", "grid": {{"backend": "b", "id": "g-{{a}}-{{b}}-{{c}}", "factors": {factors} {extra}}}}}]}}"#
    )
}

#[test]
fn the_216_job_sweep_expands_in_a_few_lines() {
    let text = std::fs::read_to_string(repo().join("plans/sweep.json")).unwrap();
    let p = parse_plan(&text, &repo().join("plans/sweep.json"), &|_| true).unwrap();
    assert_eq!(p.pattern_count(), 216);
    let ids: HashSet<&str> = p.patterns().map(|p| p.id.as_str()).collect();
    assert_eq!(ids.len(), 216);
    assert!(ids.contains("sweep-deep-lr0.0003-wd0.01-s5"));
    // estimate_by: deep cells 45 min, small 20, the rest 30
    let deep = p
        .patterns()
        .find(|x| x.id == "sweep-deep-lr0.0003-wd0.01-s5")
        .unwrap();
    assert_eq!(deep.estimate.unwrap().as_secs(), 45 * 60);
}

#[test]
fn exclusions_and_inclusions_and_repetitions() {
    let p = plan(&grid_plan(
        r#"{"a": [1, 2, 3], "b": ["x", "y"], "c": [true, false]}"#,
        r#", "exclude": [{"a": 1, "b": "x"}, {"c": false, "a": 3}], "include": [{"a": 9, "b": "z", "c": true}]"#,
    ));
    // 12 cells - 2 (a=1,b=x) - 2 (a=3,c=false) + 1 included
    assert_eq!(p.pattern_count(), 9);
    assert!(p.patterns().any(|x| x.id == "g-9-z-true"));
    assert!(!p.patterns().any(|x| x.id == "g-1-x-true"));
    let reps = plan(
        r#"{"phase": "g", "name": "g", "layers": [{"id": "L", "grid": {"backend": "b", "id": "g-{a}-r{rep}", "factors": {"a": [1, 2]}, "repetitions": 3}}]}"#,
    );
    assert_eq!(reps.pattern_count(), 6);
    assert!(reps
        .patterns()
        .any(|x| x.id == "g-2-r2" && x.vars["rep"] == 2));
}

fn cells(factors: &[(String, Vec<i64>)], excl: &[Vec<(usize, i64)>]) -> Plan {
    let f: Vec<String> = factors
        .iter()
        .map(|(n, l)| format!("\"{n}\": {:?}", l))
        .collect();
    let id: Vec<String> = factors.iter().map(|(n, _)| format!("{{{n}}}")).collect();
    let ex: Vec<String> = excl
        .iter()
        .map(|e| {
            let kv: Vec<String> = e
                .iter()
                .map(|(k, v)| format!("\"{}\": {v}", factors[*k].0))
                .collect();
            format!("{{{}}}", kv.join(", "))
        })
        .collect();
    plan(&format!(
        r#"{{"phase": "g", "name": "g", "layers": [{{"id": "L", "grid": {{"backend": "b", "id": "g-{}", "factors": {{{}}}, "exclude": [{}]}}}}]}}"#,
        id.join("-"),
        f.join(", "),
        ex.join(", ")
    ))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// An exclusion drops exactly the cells it matches, never another.
    #[test]
    fn exclusions_never_drop_a_non_matching_cell(
        sizes in proptest::collection::vec(1usize..4, 1..4),
        picks in proptest::collection::vec(proptest::collection::vec((0usize..4, 0i64..4), 1..3), 0..4),
    ) {
        let factors: Vec<(String, Vec<i64>)> = sizes.iter().enumerate().map(|(i, n)| (format!("f{i}"), (0..*n as i64).collect())).collect();
        // keep exclusions that name existing factors and levels, once each
        let excl: Vec<Vec<(usize, i64)>> = picks.into_iter().map(|e| {
            let mut seen = HashSet::new();
            e.into_iter().filter(|(k, v)| *k < factors.len() && *v < factors[*k].1.len() as i64 && seen.insert(*k)).collect::<Vec<_>>()
        }).filter(|e: &Vec<(usize, i64)>| !e.is_empty()).collect();
        let p = cells(&factors, &excl);
        // every combination: present iff no exclusion matches it
        let mut all: Vec<Vec<i64>> = vec![vec![]];
        for (_, levels) in &factors {
            all = all.into_iter().flat_map(|c| levels.iter().map(move |l| { let mut c = c.clone(); c.push(*l); c })).collect();
        }
        let got: HashSet<String> = p.patterns().map(|x| x.id.clone()).collect();
        for c in &all {
            let id = format!("g-{}", c.iter().map(|v| v.to_string()).collect::<Vec<_>>().join("-"));
            let excluded = excl.iter().any(|e| e.iter().all(|(k, v)| c[*k] == *v));
            prop_assert_eq!(got.contains(&id), !excluded, "cell {}", id);
        }
    }
}

#[test]
fn ids_and_content_keys_are_stable_when_the_grid_is_reordered_or_extended() {
    let a = plan(&grid_plan(
        r#"{"a": [1, 2], "b": ["x", "y"], "c": [0]}"#,
        "",
    ));
    let b = plan(&grid_plan(
        r#"{"c": [0], "b": ["y", "x", "w"], "a": [2, 1]}"#,
        "",
    ));
    let key_a: HashMap<&str, &str> = a
        .patterns()
        .map(|p| (p.id.as_str(), p.key.as_str()))
        .collect();
    let key_b: HashMap<&str, &str> = b
        .patterns()
        .map(|p| (p.id.as_str(), p.key.as_str()))
        .collect();
    assert_eq!(key_b.len(), 6);
    for (id, k) in &key_a {
        assert_eq!(key_b.get(id), Some(k), "{id} changed identity");
    }
}

#[test]
fn partitions_cover_every_cell_exactly_once() {
    let p = plan(
        r#"{"phase": "g", "name": "g",
      "node_groups": {"cpu": {"instance_type": "c6i.4xlarge", "count": 3}},
      "layers": [{"id": "L", "node_group": "cpu", "partitions": 3, "grid": {"backend": "b", "id": "g-{d}", "factors": {"d": [1, 2, 3, 4]}}}]}"#,
    );
    assert_eq!(p.pattern_count(), 12);
    let mut seen: HashMap<String, Vec<u32>> = HashMap::new();
    for t in p.patterns() {
        let (i, k) = t.partition.unwrap();
        assert_eq!(k, 3);
        seen.entry(t.factors["d"].to_string()).or_default().push(i);
    }
    assert_eq!(seen.len(), 4);
    for (_, mut parts) in seen {
        parts.sort();
        assert_eq!(parts, vec![0, 1, 2]);
    }
}

#[test]
fn scheduling_a_heterogeneous_500_task_sweep_is_within_5_percent_of_the_lower_bound() {
    // deterministic pseudo-random durations from 1 to 120 minutes
    let mut x: u64 = 42;
    let tasks: Vec<SimTask> = (0..500)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            SimTask {
                seconds: 60.0 * (1 + (x >> 33) % 120) as f64,
                ranks: 1,
                group: "gpu".into(),
            }
        })
        .collect();
    let pool = Pool::new((0..4).map(|i| (format!("n{i}"), "gpu".to_string(), 8)));
    let lf = simulate(&tasks, &pool, Policy::LongestFirst);
    let ff = simulate(&tasks, &pool, Policy::Fifo);
    println!("500 tasks on 32 slots: lower bound {:.0}s, longest-first {:.0}s ({:+.2}%), fifo {:.0}s ({:+.2}%)",
        lf.lower_bound, lf.makespan, 100.0 * (lf.makespan / lf.lower_bound - 1.0), ff.makespan, 100.0 * (ff.makespan / ff.lower_bound - 1.0));
    assert!(lf.makespan >= lf.lower_bound);
    assert!(lf.makespan <= lf.lower_bound * 1.05);
    assert!(lf.makespan <= ff.makespan);
}

#[test]
fn scheduling_never_exceeds_slots_including_multi_node_tasks() {
    let mut pool = Pool::new([
        ("a".into(), "g".into(), 2),
        ("b".into(), "g".into(), 2),
        ("c".into(), "g".into(), 1),
    ]);
    let mut placed = Vec::new();
    while let Some(p) = pool.place("g", 2) {
        placed.push(p);
    }
    // 5 slots on 3 nodes hold two 2-node tasks
    assert_eq!(placed.len(), 2);
    for n in &pool.nodes {
        assert!(n.busy.iter().filter(|b| **b).count() <= n.busy.len());
    }
    assert!(pool.place("g", 1).is_some());
    assert!(pool.place("g", 1).is_none());
}

#[test]
fn the_sweep_runs_locally_and_exports_a_typed_216_row_table_and_resumes_without_duplicates() {
    let p = Project::with_examples();
    // interrupt the sweep once
    let mut child = p
        .cmd(&["run", "sweep", "all"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(4));
    child.kill().unwrap();
    child.wait().unwrap();
    // a partial export while it is unfinished
    let r = p.infra(&["--json", "results", "sweep"]);
    let meta: serde_json::Value = serde_json::from_str(&r.ok().stdout).unwrap();
    assert_eq!(meta["partial"], true);
    p.infra(&["run", "sweep", "all"]).ok();
    p.infra(&["results", "sweep"]).ok();
    let table = p.read("results/sweep/table.csv");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 217, "header + 216 rows");
    let ids: HashSet<&str> = lines[1..]
        .iter()
        .map(|l| l.split(',').next().unwrap())
        .collect();
    assert_eq!(ids.len(), 216, "no duplicate rows");
    let meta: serde_json::Value =
        serde_json::from_str(&p.read("results/sweep/table.metadata.json")).unwrap();
    assert_eq!(meta["row_count"], 216);
    assert_eq!(meta["partial"], false);
    let cols: Vec<(String, String)> = meta["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["type"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let header: Vec<&str> = lines[0].split(',').collect();
    assert_eq!(
        header,
        cols.iter().map(|c| c.0.as_str()).collect::<Vec<_>>()
    );
    for want in [
        ("variant", "string"),
        ("lr", "float"),
        ("wd", "float"),
        ("seed", "integer"),
        ("final_loss", "float"),
        ("wall_seconds", "float"),
        ("cost_usd", "float"),
    ] {
        assert!(
            cols.iter().any(|(n, t)| n == want.0 && t == want.1),
            "column {want:?} in {cols:?}"
        );
    }
    for c in meta["columns"].as_array().unwrap() {
        assert!(!c["description"].as_str().unwrap().is_empty());
    }
    // every cell parses as its column's type; no scientific notation
    for line in &lines[1..] {
        for (cell, (name, ty)) in line.split(',').zip(&cols) {
            assert!(
                !cell.contains('e') || ty == "string",
                "{name}={cell} in scientific notation"
            );
            match ty.as_str() {
                "integer" => assert!(cell.parse::<i64>().is_ok(), "{name}={cell}"),
                "float" => assert!(cell.parse::<f64>().is_ok(), "{name}={cell}"),
                _ => {}
            }
        }
    }
    assert!(table.contains(",0.0001,"), "lr 0.0001 written plainly");
    // the time series stays beside the table
    assert!(p
        .read("results/sweep/sweep-base-lr0.001-wd0.1-s3/loss.csv")
        .starts_with("step,loss,lr\n"));

    // the team's export: floats as %.6f, the column types in the metadata
    p.infra(&["results", "sweep", "--float-format", "%.6f"])
        .ok();
    let fixed = p.read("results/sweep/table.csv");
    let flines: Vec<&str> = fixed.lines().collect();
    for line in &flines[1..] {
        for (cell, (name, ty)) in line.split(',').zip(&cols) {
            if ty == "float" && !cell.is_empty() {
                let decimals = cell.split('.').nth(1).map(str::len);
                assert_eq!(decimals, Some(6), "{name}={cell}");
            }
        }
    }
    assert!(fixed.contains(",0.000100,"), "lr 0.0001 as %.6f");
    let meta: serde_json::Value =
        serde_json::from_str(&p.read("results/sweep/table.metadata.json")).unwrap();
    assert_eq!(meta["total_runs"], 216);
    assert!(meta["export_date"].is_string());
    assert_eq!(meta["column_types"]["lr"], "float");
    assert_eq!(meta["column_types"]["seed"], "integer");
    assert_eq!(meta["float_format"], "%.6f");
    let bad = p.infra(&["results", "sweep", "--float-format", "%d"]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(bad.stderr.contains("%.6f"), "{}", bad.stderr);
}
