//! Hostile and faulty task outputs: spreadsheet formulas, colliding keys, a
//! BOM, very wide tables; logs that are binary, large or of an id that
//! prefixes another.

use crate::common::*;

/// A one-task phase `name` whose task declares `file` as its table output,
/// with a finished result holding `content` in it (no run needed).
fn finished(p: &Project, name: &str, file: &str, content: &[u8]) {
    p.write(
        "plans/templates/out.json.hbs",
        &format!(
            "{{ \"table\": [\"{file}\"], \"steps\": [ {{ \"name\": \"main\", \"command\": \"true\" }} ] }}"
        ),
    );
    p.write(
        &format!("plans/{name}.json"),
        &format!(
            r#"{{"phase": "{name}", "name": "outputs",
      "layers": [{{"id": "L0", "patterns": [{{"id": "{name}-a", "backend": "out"}}]}}]}}"#
        ),
    );
    let dir = format!("results/{name}/{name}-a");
    p.write(
        &format!("{dir}/runtime.json"),
        r#"{"status":"succeeded","attempts":1,"wall_seconds":1.0,"peak_rss_kb":10,"cost_usd":0.0}"#,
    );
    std::fs::write(p.path().join(dir).join(file), content).unwrap();
}

#[test]
fn formula_looking_outputs_are_neutralised_in_table_csv_unless_raw() {
    let p = Project::new();
    finished(
        &p,
        "fx",
        "out.json",
        br#"{"link": "=HYPERLINK(\"http://evil\",\"x\")", "calc": "=cmd|' /C calc'!A0",
             "plus": "+1+A1", "at": "@SUM(A1)", "tab": "\tx", "neg": -3, "negtext": "-2+3",
             "=1+1": "header"}"#,
    );
    p.infra(&["results", "fx"]).ok();
    let csv = p.read("results/fx/table.csv");
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].ends_with(",'=1+1"), "{csv}");
    for cell in [
        "\"'=HYPERLINK(\"\"http://evil\"\",\"\"x\"\")\"",
        "'=cmd|' /C calc'!A0",
        "'+1+A1",
        "'@SUM(A1)",
        "'\tx",
        ",-3,",
        "'-2+3",
    ] {
        assert!(lines[1].contains(cell), "{cell} in {csv}");
    }
    p.infra(&["results", "fx", "--raw-csv"]).ok();
    let raw = p.read("results/fx/table.csv");
    assert!(
        raw.contains(",=cmd|' /C calc'!A0,") && raw.lines().next().unwrap().ends_with(",=1+1"),
        "{raw}"
    );
}

#[test]
fn nested_keys_that_flatten_to_the_same_column_are_both_kept_and_reported() {
    let p = Project::new();
    finished(&p, "nk", "out.json", br#"{"a": {"b": 1}, "a.b": 2}"#);
    let r = p.infra(&["results", "nk"]);
    r.ok();
    let csv = p.read("results/nk/table.csv");
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let row: Vec<&str> = csv.lines().nth(1).unwrap().split(',').collect();
    let at = |c: &str| {
        row[header
            .iter()
            .position(|h| *h == c)
            .unwrap_or_else(|| panic!("{c} in {csv}"))]
    };
    assert_eq!((at("a.b"), at("a.b#2")), ("1", "2"), "{csv}");
    assert!(
        r.stdout
            .contains("/a/b and /a.b both flatten to column \"a.b\""),
        "{}",
        r.stdout
    );
    let meta = p.read("results/nk/table.metadata.json");
    assert!(meta.contains("both flatten"), "{meta}");
}

#[test]
fn a_csv_output_with_a_bom_has_no_bom_in_its_column_name() {
    let p = Project::new();
    finished(&p, "bom", "out.csv", "\u{feff}a,b\n1,2\n".as_bytes());
    p.infra(&["results", "bom"]).ok();
    let csv = p.read("results/bom/table.csv");
    assert!(!csv.contains('\u{feff}'), "{csv:?}");
    assert!(csv.lines().next().unwrap().ends_with(",a,b"), "{csv}");
}

#[test]
fn a_3000_column_output_is_aggregated_quickly() {
    let p = Project::new();
    let cols: Vec<String> = (0..3000).map(|i| format!("m{i}")).collect();
    let mut text = cols.join(",") + "\n";
    for r in 0..50 {
        let row: Vec<String> = (0..3000).map(|i| format!("{}.5", r * i)).collect();
        text += &(row.join(",") + "\n");
    }
    finished(&p, "wide", "out.csv", text.as_bytes());
    let t = std::time::Instant::now();
    p.infra(&["results", "wide"]).ok();
    // the quadratic column lookup took ~7 s here in a debug build
    assert!(t.elapsed().as_secs_f64() < 4.0, "{:?}", t.elapsed());
    let csv = p.read("results/wide/table.csv");
    assert_eq!(csv.lines().count(), 51);
    assert!(csv.lines().next().unwrap().ends_with(",m2998,m2999"));
}

/// A phase whose task `<name>-a` ran (its result and logs are there).
fn logs_phase(p: &Project, name: &str, ids: &[&str]) {
    p.write(
        "plans/templates/echo.json.hbs",
        &one_step_template("true", ""),
    );
    let patterns: Vec<String> = ids
        .iter()
        .map(|i| format!(r#"{{"id": "{i}", "backend": "echo"}}"#))
        .collect();
    p.write(
        &format!("plans/{name}.json"),
        &format!(
            r#"{{"phase": "{name}", "name": "logs", "layers": [{{"id": "L0", "patterns": [{}]}}]}}"#,
            patterns.join(",")
        ),
    );
}

#[test]
fn binary_stdout_is_shown_byte_for_byte_by_logs() {
    let p = Project::new();
    logs_phase(&p, "bin", &["bin-a"]);
    let bytes: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    let dir = p.path().join("results/bin/bin-a");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("runtime.json"), "{}").unwrap();
    std::fs::write(dir.join("stdout.log"), &bytes).unwrap();
    let out = p.cmd(&["logs", "bin", "bin-a"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(out.stdout, bytes);
}

#[test]
fn logs_of_an_id_do_not_show_the_running_attempt_of_a_longer_id() {
    let p = Project::new();
    logs_phase(&p, "lg", &["lg-a", "lg-a.1"]);
    // attempt 1 of "lg-a.1" is running; "lg-a" has not run
    let other = p.path().join(".infra/lg/staging/lg-a.1.1");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("stdout.log"), "from lg-a.1\n").unwrap();
    let r = p.infra(&["logs", "lg", "lg-a"]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    assert!(!r.stdout.contains("from lg-a.1"), "{}", r.stdout);
    let r = p.infra(&["logs", "lg", "lg-a.1"]);
    r.ok();
    assert_eq!(r.stdout, "from lg-a.1\n");
    let own = p.path().join(".infra/lg/staging/lg-a.2");
    std::fs::create_dir_all(&own).unwrap();
    std::fs::write(own.join("stdout.log"), "from lg-a\n").unwrap();
    let r = p.infra(&["logs", "lg", "lg-a"]);
    r.ok();
    assert_eq!(r.stdout, "from lg-a\n");
}

#[test]
fn a_large_log_is_streamed_not_read_whole() {
    let p = Project::new();
    logs_phase(&p, "big", &["big-a"]);
    let dir = p.path().join("results/big/big-a");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("runtime.json"), "{}").unwrap();
    let chunk = vec![b'x'; 1 << 20];
    {
        use std::io::Write;
        let mut f = std::fs::File::create(dir.join("stdout.log")).unwrap();
        for _ in 0..64 {
            f.write_all(&chunk).unwrap();
        }
    }
    let out = p
        .cmd(&["logs", "big", "big-a"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = out.id();
    let mut child = out;
    // read slowly enough that a streaming infra blocks on the pipe while a
    // whole-file read has the file in memory: its peak RSS tells them apart
    let mut stdout = child.stdout.take().unwrap();
    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let mut peak_kb = 0u64;
    loop {
        use std::io::Read;
        let n = stdout.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n;
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            if let Some(l) = s.lines().find(|l| l.starts_with("VmHWM:")) {
                let kb: u64 = l.split_whitespace().nth(1).unwrap().parse().unwrap();
                peak_kb = peak_kb.max(kb);
            }
        }
    }
    assert!(child.wait().unwrap().success());
    assert_eq!(total, 64 << 20);
    assert!(
        peak_kb < 48 * 1024,
        "peak RSS {peak_kb} KiB for a 64 MiB log"
    );
}

/// A task whose output has several rows carries its cost on the first row
/// only: summing `cost_usd` gives the campaign's cost, not rows x cost.
#[test]
fn a_multi_row_output_counts_the_tasks_cost_once() {
    let p = Project::new();
    finished(
        &p,
        "rows",
        "out.json",
        br#"[{"seed": 1, "x": 0.5}, {"seed": 2, "x": 0.7}, {"seed": 3, "x": 0.9}]"#,
    );
    let rt = "results/rows/rows-a/runtime.json";
    p.write(
        rt,
        r#"{"status":"succeeded","attempts":1,"wall_seconds":1.0,"peak_rss_kb":10,"cost_usd":0.25}"#,
    );
    p.infra(&["results", "rows", "--format", "json"]).ok();
    let text = p.read("results/rows/table.json");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let rows = v["rows"].as_array().or(v.as_array()).expect("rows");
    assert_eq!(rows.len(), 3, "{text}");
    let sum: f64 = rows.iter().filter_map(|r| r["cost_usd"].as_f64()).sum();
    assert_eq!(sum, 0.25, "{text}");
    assert_eq!(rows[0]["cost_usd"], 0.25, "{text}");
    assert!(rows[1]["cost_usd"].is_null(), "{text}");
    // the other task-level values stay on every row
    assert!(rows.iter().all(|r| r["attempts"] == 1), "{text}");
}

#[test]
fn an_output_key_that_repeats_a_parameter_is_that_column_and_one_that_differs_is_kept_apart() {
    let p = Project::new();
    p.write(
        "plans/templates/out.json.hbs",
        r#"{ "table": ["out.json"], "steps": [ { "name": "main", "command": "true" } ] }"#,
    );
    p.write(
        "plans/dup.json",
        r#"{"phase": "dup", "name": "outputs",
      "layers": [{"id": "L0", "patterns": [{"id": "dup-a", "backend": "out", "prompt_tokens": 4000, "concurrency": 8}]}]}"#,
    );
    let dir = "results/dup/dup-a";
    p.write(
        &format!("{dir}/runtime.json"),
        r#"{"status":"succeeded","attempts":1,"wall_seconds":1.0,"peak_rss_kb":10,"cost_usd":0.0}"#,
    );
    // the client writes back what it was asked (4000.0: the same number),
    // and what it really ran at (7 of 8: not the parameter)
    p.write(
        &format!("{dir}/out.json"),
        r#"{"prompt_tokens": 4000.0, "concurrency": 7, "ttft_ms": 12.5}"#,
    );
    p.infra(&["results", "dup"]).ok();
    let csv = p.read("results/dup/table.csv");
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    assert!(!header.contains(&"out.json.prompt_tokens"), "{csv}");
    assert!(header.contains(&"out.json.concurrency"), "{csv}");
    assert_eq!(
        header.iter().filter(|h| **h == "prompt_tokens").count(),
        1,
        "{csv}"
    );
    assert!(header.contains(&"ttft_ms"), "{csv}");
}
