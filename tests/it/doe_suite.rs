//! doe-suite suites end to end: the example design imported, run on the
//! local provider, its result tree and its table.

use crate::common::*;

fn lines(text: &str) -> Vec<Vec<String>> {
    let mut r = csv::Reader::from_reader(text.as_bytes());
    let mut out = vec![r.headers().unwrap().iter().map(str::to_string).collect()];
    for rec in r.records() {
        out.push(rec.unwrap().iter().map(str::to_string).collect());
    }
    out
}

fn col(table: &[Vec<String>], name: &str) -> usize {
    table[0]
        .iter()
        .position(|c| c == name)
        .unwrap_or_else(|| panic!("no column {name}: {:?}", table[0]))
}

#[test]
fn the_example_design_imports_to_the_checked_in_plan() {
    let p = Project::new();
    p.write(
        "examples/doe-suite/systems-suite.yml",
        &std::fs::read_to_string(repo().join("examples/doe-suite/systems-suite.yml")).unwrap(),
    );
    let r = p.infra(&[
        "import",
        "doe-suite",
        "examples/doe-suite/systems-suite.yml",
    ]);
    r.ok();
    assert!(r.stdout.contains("setup-common"), "{}", r.stdout);
    for f in [
        "plans/systems-suite.json",
        "plans/templates/systems-suite-exp_cross.json.hbs",
        "plans/templates/systems-suite-exp_mixed.json.hbs",
        "plans/templates/systems-suite-exp_client_server.json.hbs",
    ] {
        let checked_in = std::fs::read_to_string(repo().join(f)).unwrap();
        assert_eq!(
            p.read(f),
            checked_in,
            "{f} is what the import writes (re-import the example)"
        );
    }
    // a second import that would change a file refuses without --force
    p.write("plans/systems-suite.json", "{}");
    let r = p.infra(&[
        "import",
        "doe-suite",
        "examples/doe-suite/systems-suite.yml",
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--force"), "{}", r.stderr);
    p.infra(&[
        "import",
        "doe-suite",
        "examples/doe-suite/systems-suite.yml",
        "--force",
    ])
    .ok();
}

#[test]
fn a_bad_design_exits_2_with_its_line_and_column_and_writes_nothing() {
    let p = Project::new();
    p.write(
        "designs/bad.yml",
        "exp:\n  n_repetitions: 2\n  host_types:\n    small:\n      n: 2\n      $CMD$: [\"a\"]\n  base_experiment: {}\n",
    );
    let r = p.infra(&["import", "doe-suite", "designs/bad.yml"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("designs/bad.yml:6:14 exp.host_types.small.$CMD$: cmd list length (1) does not match the number of instances n = 2"),
        "{}",
        r.stderr
    );
    assert!(!p.exists("plans/bad.json"));
}

#[test]
fn an_imported_suite_runs_into_the_doe_suite_tree_with_its_table_and_new_ids() {
    let p = Project::with_examples();
    p.infra(&["up", "systems-suite", "--yes"]).ok();
    let id = p
        .read(".infra/systems-suite/doe-suite-id")
        .trim()
        .to_string();
    assert!(
        id.parse::<u64>().unwrap() > 1_700_000_000,
        "{id}: Unix seconds"
    );
    let root = format!("results/systems-suite_{id}");
    // doe-suite's numbering: size slowest, (20, False) excluded
    for (exp, runs, reps) in [
        ("exp_cross", 3, 2),
        ("exp_mixed", 4, 1),
        ("exp_client_server", 2, 1),
    ] {
        for i in 0..runs {
            for j in 0..reps {
                assert!(
                    p.exists(&format!("{root}/{exp}/run_{i}/rep_{j}/config.json")),
                    "{exp} run {i} rep {j}"
                );
            }
        }
        assert!(!p.exists(&format!("{root}/{exp}/run_{runs}")));
    }
    let config: serde_json::Value =
        serde_json::from_str(&p.read(&format!("{root}/exp_cross/run_1/rep_1/config.json")))
            .unwrap();
    assert_eq!(
        (config["size"].clone(), config["opt"].clone()),
        (10.into(), false.into())
    );
    assert_eq!(config["base_latency_ms"], 1, "$SUITE_VARS$ merged");
    let host = format!("{root}/exp_cross/run_1/rep_1/small/host_0");
    assert!(p
        .read(&format!("{host}/stdout.log"))
        .contains("latency: 11.0 ms"));
    assert_eq!(p.read(&format!("{host}/stderr.log")), "");
    assert!(
        p.exists(&format!("{host}/out.json")),
        "what the command wrote under results/"
    );
    let info = p.read(&format!("{host}/runtime_info.yaml"));
    assert!(
        info.contains("status: \"succeeded\"") && info.contains("wall_time_seconds: "),
        "{info}"
    );
    let rss: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("max_rss_kb: "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(rss > 1000, "{info}");
    // the background command ran beside main, into the same log
    assert!(p
        .read(&format!(
            "{root}/exp_mixed/run_2/rep_0/small/host_0/stdout.log"
        ))
        .contains("monitor of run 2 started"));
    // two host types, three instances: each its own folder
    let cs = format!("{root}/exp_client_server/run_1/rep_0");
    for h in [
        "server/host_0/stdout.log",
        "client/host_0/client.json",
        "client/host_1/client.json",
    ] {
        assert!(p.exists(&format!("{cs}/{h}")), "{h}");
    }
    let c1: serde_json::Value =
        serde_json::from_str(&p.read(&format!("{cs}/client/host_1/client.json"))).unwrap();
    assert_eq!(
        (c1["requests"].clone(), c1["payload_bytes"].clone()),
        (10.into(), 1024.into())
    );

    // the table the extractors built
    let t = lines(&p.read(&format!("{root}/results.csv")));
    assert_eq!(
        t[0][..8],
        [
            "suite_name",
            "suite_id",
            "exp_name",
            "run",
            "rep",
            "host_type",
            "host_idx",
            "source_file"
        ]
    );
    // 6 json rows (exp_cross), 8 csv rows (exp_mixed: 2 lines x 4 runs), 4 client rows
    assert_eq!(t.len() - 1, 18);
    let (exp, run, size, lat, src) = (
        col(&t, "exp_name"),
        col(&t, "run"),
        col(&t, "size"),
        col(&t, "latency_ms"),
        col(&t, "source_file"),
    );
    let row = t
        .iter()
        .find(|r| r[exp] == "exp_cross" && r[run] == "2")
        .unwrap();
    assert_eq!(
        (row[size].as_str(), row[lat].as_str(), row[src].as_str()),
        ("20", "11.0", "out.json")
    );
    let mode = col(&t, "tuning.mode");
    assert_eq!(
        t.iter()
            .filter(|r| r[exp] == "exp_mixed" && r[mode] == "slow")
            .count(),
        4
    );
    assert!(!p.exists(&format!("{root}/extract-errors.txt")));

    // plain `run` goes on with the same id; --new starts another and runs everything again
    p.infra(&["run", "systems-suite"]).ok();
    assert_eq!(p.read(".infra/systems-suite/doe-suite-id").trim(), id);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let r = p.infra(&["run", "systems-suite", "--new"]);
    r.ok();
    let id2 = p
        .read(".infra/systems-suite/doe-suite-id")
        .trim()
        .to_string();
    assert!(
        id2.parse::<u64>().unwrap() > id.parse::<u64>().unwrap(),
        "{id} then {id2}"
    );
    assert!(r.stdout.contains("12 succeeded"), "{}", r.stdout);
    assert!(p.exists(&format!(
        "results/systems-suite_{id2}/exp_cross/run_2/rep_1/small/host_0/out.json"
    )));
    assert!(
        p.exists(&format!("{root}/results.csv")),
        "the earlier id's tree stays"
    );
    p.infra(&["destroy", "systems-suite"]).ok();
}

#[test]
fn run_new_on_a_plan_without_the_doe_suite_layout_is_refused() {
    let p = Project::with_examples();
    let r = p.infra(&["run", "quickstart", "--new"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("\"results_layout\": \"doe-suite\""),
        "{}",
        r.stderr
    );
}

#[test]
fn extractors_report_unmatched_files_and_stderr_and_read_stdout_with_a_regex() {
    let p = Project::with_examples();
    p.write(
        "designs/x.yml",
        r#"
exp:
  host_types:
    h:
      $CMD$: "echo 'took 12.5 ms'; echo 'took 7 ms'; echo oops >&2; echo x > results/stray.txt"
  base_experiment: {k: 1}
"#,
    );
    p.infra(&["import", "doe-suite", "designs/x.yml"]).ok();
    // the extractors a user adds by hand: a regex over stdout, stderr checked
    let plan = p.read("plans/x.json").replacen(
        "\"layers\"",
        r#""extractors": [{"kind": "regex", "pattern": "took (?P<ms>[0-9.]+) ms"}, {"kind": "error"}], "layers""#,
        1,
    );
    p.write("plans/x.json", &plan);
    p.infra(&["up", "x", "--yes"]).ok();
    let id = p.read(".infra/x/doe-suite-id").trim().to_string();
    let t = lines(&p.read(&format!("results/x_{id}/results.csv")));
    let ms = col(&t, "ms");
    assert_eq!(
        t[1..].iter().map(|r| r[ms].as_str()).collect::<Vec<_>>(),
        ["12.5", "7"]
    );
    assert_eq!(t[1][col(&t, "k")], "1");
    let errors = p.read(&format!("results/x_{id}/extract-errors.txt"));
    assert!(
        errors.contains("exp/run_0/rep_0/h/host_0/stderr.log: error file is not empty: oops"),
        "{errors}"
    );
    assert!(
        errors.contains("stray.txt: matches no extractor"),
        "{errors}"
    );
}
