//! What a person sees: the human output of `plan`, `status`, the run
//! summary and `budget`, pinned by snapshots, and the same view in `--json`.

use serde_json::Value;

use crate::common::*;

/// The run's wall time is the one thing that differs between two runs.
pub fn without_duration(s: &str) -> String {
    s.lines()
        .map(|l| match l.rfind(" in ") {
            Some(i)
                if l.ends_with('s') && l[i + 4..].chars().all(|c| c.is_ascii_alphanumeric()) =>
            {
                format!("{} in <duration>", &l[..i])
            }
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The project's name is its folder's, random in tests.
fn without_project(p: &Project, s: &str) -> String {
    let name = p
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_lowercase();
    s.replace(&name, "<project>")
}

/// Three tasks on two local nodes; `mixed-t3` fails with code 3 and says why.
pub fn mixed_plan(p: &Project, provider_extra: &str) {
    p.write(
        "plans/mixed.json",
        &format!(
            r#"{{ "phase": "mixed", "name": "two pass, one fails", {provider_extra}
  "node_groups": {{ "cpu": {{ "instance_type": "c6i.xlarge", "count": 2, "market": "spot", "slots": 1 }} }},
  "retry": {{ "attempts": 1 }},
  "estimate": {{ "default": "10s" }},
  "layers": [ {{ "id": "L0", "name": "mixed", "patterns": [
    {{ "id": "mixed-t1", "backend": "mixed", "code": 0 }},
    {{ "id": "mixed-t2", "backend": "mixed", "code": 0 }},
    {{ "id": "mixed-t3", "backend": "mixed", "code": 3 }} ] }} ] }}"#
        ),
    );
    p.write(
        "plans/templates/mixed.json.hbs",
        r#"{ "steps": [ {"name": "main", "timeout_seconds": 120, "command": "echo working; test {{code}} -eq 0 || { echo broken input >&2; exit {{code}}; }"} ] }"#,
    );
}

#[test]
fn plan_output_of_the_quickstart() {
    let p = Project::with_examples();
    let r = p.infra(&["plan", "quickstart"]);
    r.ok();
    insta::assert_snapshot!(without_project(&p, &r.stdout));
    let j: Value = serde_json::from_str(&p.infra(&["--json", "plan", "quickstart"]).ok().stdout)
        .expect("one JSON document");
    assert_eq!(j["plan"], "quickstart");
    assert_eq!(j["tasks"], 5);
    assert_eq!(j["written"], 0, "the second plan changes nothing");
    assert_eq!(j["layers"][1]["sample"][0], "quickstart-L1-echo-c1");
}

#[test]
fn plan_output_of_an_aws_phase_with_its_stacks() {
    let p = Project::with_examples();
    let r = p.infra(&["plan", "phase15"]);
    r.ok();
    insta::assert_snapshot!(without_project(&p, &r.stdout));
}

#[test]
fn run_summary_status_and_budget_after_a_run_with_a_failing_task() {
    let p = Project::new();
    mixed_plan(&p, r#""budget": { "usd": 5 },"#);
    // before the run: nothing spent yet, so every figure is the estimate's
    let r = p.infra(&["budget", "mixed"]);
    r.ok();
    insta::assert_snapshot!("budget_mixed", r.stdout);

    let r = p.infra(&["run", "mixed"]);
    assert_eq!(
        r.code, 1,
        "a failed task exits 1:\n{}\n{}",
        r.stdout, r.stderr
    );
    insta::assert_snapshot!("run_summary_mixed", without_duration(&r.stdout));

    let r = p.infra(&["status", "mixed"]);
    r.ok();
    insta::assert_snapshot!("status_mixed", r.stdout);
    let j: Value =
        serde_json::from_str(&p.infra(&["--json", "status", "mixed"]).ok().stdout).unwrap();
    assert_eq!(j["counts"]["succeeded"], 2);
    assert_eq!(j["failed"][0]["task"], "mixed-t3");
    assert_eq!(j["nodes"].as_array().unwrap().len(), 2);
    assert_eq!(j["provider"], "local");
    assert_eq!(j["run_in_progress"], false);

    // after it: what was spent depends on how long it took
    let r = p.infra(&["--json", "budget", "mixed"]);
    let b: Value = serde_json::from_str(&r.ok().stdout).unwrap();
    assert_eq!(b[0]["tasks_done"], 2, "{b}");
}

/// A writer the test can read back.
#[derive(Clone, Default)]
struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn the_command_layer_writes_its_output_to_the_writer_it_is_given() {
    let p = Project::with_examples();
    p.infra(&["plan", "quickstart"]).ok();
    let buf = Buf::default();
    let mut env = infra::cmd::Env::from_process();
    env.cwd = Some(p.path().to_path_buf());
    env.vars.remove("CI");
    let cli = <infra::cli::Cli as clap::Parser>::parse_from(["infra", "plan", "quickstart"]);
    let code = infra::cmd::execute(cli, &env, Box::new(buf.clone()));
    assert_eq!(code, 0);
    let captured = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    let binary = p.infra(&["plan", "quickstart"]);
    assert_eq!(
        captured,
        binary.ok().stdout,
        "the same text in-process and from the binary"
    );
    assert!(
        captured.contains("5 rendered into .infra/quickstart/tasks (0 written)"),
        "{captured}"
    );
}

/// Every number of a JSON document that is a negative zero, by path.
fn negative_zeros(v: &Value, path: &str, out: &mut Vec<String>) {
    match v {
        Value::Number(n) if n.as_f64().is_some_and(|f| f == 0.0 && f.is_sign_negative()) => {
            out.push(path.to_string());
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                negative_zeros(x, &format!("{path}[{i}]"), out);
            }
        }
        Value::Object(m) => {
            for (k, x) in m {
                negative_zeros(x, &format!("{path}.{k}"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn negative_zero_shows_nowhere_in_plan_status_and_budget() {
    let p = Project::with_examples();
    mixed_plan(&p, r#""budget": { "usd": 5 },"#);
    for args in [
        &["--json", "plan", "phase15"][..],
        &["--json", "status", "mixed"],
        &["--json", "budget", "mixed"],
    ] {
        let r = p.infra(args);
        let v: Value = serde_json::from_str(&r.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}\n{}\n{}", r.stdout, r.stderr));
        let mut found = Vec::new();
        negative_zeros(&v, "", &mut found);
        assert!(found.is_empty(), "{args:?}: -0 at {found:?}");
    }
    for args in [
        &["plan", "phase15"][..],
        &["status", "mixed"],
        &["budget", "mixed"],
    ] {
        let r = p.infra(args);
        assert!(!r.stdout.contains("$-0"), "{args:?}: {}", r.stdout);
    }
}

/// The schema the example plans name (`"$schema": "../docs/plan.schema.json"`,
/// for editors) is the one `infra schema` prints, and a plan naming its
/// schema loads.
#[test]
fn the_checked_in_schema_is_what_infra_schema_prints() {
    let p = Project::with_examples();
    let r = p.infra(&["schema"]);
    r.ok();
    let checked_in = std::fs::read_to_string(repo().join("docs/plan.schema.json")).unwrap();
    assert_eq!(
        r.stdout.trim_end(),
        checked_in.trim_end(),
        "docs/plan.schema.json is stale: `infra schema > docs/plan.schema.json`"
    );
    let plan = p.read("plans/quickstart.json");
    assert!(plan.contains("\"$schema\": \"../docs/plan.schema.json\""));
    p.infra(&["plan", "quickstart"]).ok();
}

/// Without a terminal a quiet run still says how far it is, what it has
/// spent and when it will end (from the plan's estimates, not "ETA 0s"),
/// at least every `INFRA_PROGRESS_SECONDS` (30 by default).
#[test]
fn a_quiet_run_prints_progress_with_money_and_an_eta_from_the_estimates() {
    let p = Project::new();
    p.write(
        "plans/templates/nap.json.hbs",
        &one_step_template("sleep 3", ""),
    );
    p.write(
        "plans/nap.json",
        r#"{"phase": "nap", "name": "nap", "estimate": {"default": "40s"},
      "node_groups": {"cpu": {"instance_type": "c6i.xlarge", "count": 1, "slots": 1}},
      "layers": [{"id": "L0", "patterns": [{"id": "nap-0", "backend": "nap"}, {"id": "nap-1", "backend": "nap"}]}]}"#,
    );
    let out = p
        .cmd(&["run", "nap", "all"])
        .env("INFRA_PROGRESS_SECONDS", "1")
        .output()
        .unwrap();
    let r = Run::from(out);
    r.ok();
    let lines: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.contains("] progress "))
        .collect();
    assert!(lines.len() >= 2, "{}", r.stderr);
    // the first: nothing ended yet, the estimates say 2 × 40 s on one slot
    let first = lines[0];
    assert!(first.contains("ok 0 failed 0 running 1"), "{first}");
    assert!(first.contains(" spent · ETA 1m"), "{first}");
    assert!(
        !first.contains("ETA 0s") && !first.contains("ETA ?"),
        "{first}"
    );
}

/// Every argument and option of every command says what it is, and `up`
/// takes `--order` like `run`.
#[test]
fn every_argument_of_every_command_has_a_help_text() {
    let p = Project::new();
    let top = p.infra(&["--help"]);
    top.ok();
    let commands: Vec<String> = top
        .stdout
        .split("Commands:")
        .nth(1)
        .unwrap()
        .lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .chain(["catalog show", "catalog refresh", "journal repair"].map(String::from))
        .collect();
    assert!(commands.len() >= 15, "{commands:?}");
    let mut bare = Vec::new();
    for c in &commands {
        let mut args: Vec<&str> = c.split(' ').collect();
        args.push("--help");
        let r = p.infra(&args);
        r.ok();
        let mut in_list = false;
        for l in r.stdout.lines() {
            if l.starts_with("Arguments:") || l.starts_with("Options:") {
                in_list = true;
                continue;
            }
            if l.trim().is_empty() || !l.starts_with("  ") {
                in_list = l.starts_with("  ") && in_list;
                continue;
            }
            // "  -C, --dir <DIR>  Work in ..." or "  <PHASE>  The plan ..."
            let body = l.trim_start();
            if in_list && (body.starts_with('-') || body.starts_with('<') || body.starts_with('['))
            {
                let described = body.split("  ").filter(|s| !s.trim().is_empty()).count() > 1;
                if !described {
                    bare.push(format!("{c}: {body}"));
                }
            }
        }
    }
    assert!(bare.is_empty(), "without a help text: {bare:#?}");
    let up = p.infra(&["up", "--help"]);
    assert!(up.stdout.contains("--order <ORDER>"), "{}", up.stdout);
}

/// `up` checks the budget in plan, apply and run: a warning is said once,
/// and a local plan lists no CloudFormation resources.
#[test]
fn up_says_each_warning_once_and_a_local_plan_lists_no_stacks() {
    let p = Project::new();
    p.write(
        "plans/templates/one.json.hbs",
        &one_step_template("true", ""),
    );
    p.write(
        "plans/once.json",
        r#"{"phase": "once", "name": "once", "estimate": {"default": "10s"},
      "node_groups": {"cpu": {"instance_type": "c6i.xlarge", "count": 1}},
      "layers": [{"id": "L0", "patterns": [{"id": "once-0", "backend": "one"}]}]}"#,
    );
    let r = p.infra(&["up", "once"]);
    r.ok();
    let both = format!("{}{}", r.stdout, r.stderr);
    assert_eq!(both.matches("the plan has no budget").count(), 1, "{both}");
    assert!(
        r.stdout.contains("stacks: none on the local provider"),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains("AWS::EC2::VPC"), "{}", r.stdout);
}

/// `infra list` (and a plan by name) works from inside `plans/` as from the
/// project folder, and its columns line up whatever the phase names' widths.
#[test]
fn list_from_inside_plans_finds_the_plans_and_its_columns_align() {
    let p = Project::with_examples();
    let here = p.infra(&["list"]);
    here.ok();
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_infra"));
    c.current_dir(p.path().join("plans"))
        .arg("list")
        .env_remove("CI");
    let inside = Run::from(c.output().unwrap());
    inside.ok();
    assert_eq!(inside.stdout, here.stdout);
    let cols: Vec<usize> = here
        .stdout
        .lines()
        .map(|l| l.find(" layer(s)").unwrap_or_else(|| panic!("{l}")))
        .collect();
    assert!(
        cols.len() >= 4 && cols.iter().all(|c| *c == cols[0]),
        "{}",
        here.stdout
    );
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_infra"));
    c.current_dir(p.path().join("plans"))
        .args(["plan", "quickstart"])
        .env_remove("CI");
    Run::from(c.output().unwrap()).ok();
}

/// `infra logs <phase> <layer>` says a layer is several tasks and names
/// them, instead of "it has not run".
#[test]
fn logs_of_a_layer_names_its_tasks() {
    let p = Project::with_examples();
    let r = p.infra(&["logs", "quickstart", "L0"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("\"L0\" selects 3 task(s)")
            && r.stderr.contains("quickstart-L0-sum-1e5")
            && !r.stderr.contains("has not run"),
        "{}",
        r.stderr
    );
}

#[test]
fn up_json_is_json_lines_with_an_event_each_and_errors_are_structured() {
    let p = Project::with_examples();
    let r = p.infra(&["up", "quickstart", "--json", "--yes"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let lines: Vec<Value> = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let events: Vec<&str> = lines.iter().map(|v| v["event"].as_str().unwrap()).collect();
    assert_eq!(events.first(), Some(&"plan"), "{events:?}");
    assert_eq!(events.last(), Some(&"destroy"), "{events:?}");
    for e in ["apply", "dispatched", "succeeded", "summary"] {
        assert!(events.contains(&e), "{e} in {events:?}");
    }
    let summary = crate::common::json_event(&r.stdout, "summary");
    assert_eq!(summary["summary"]["succeeded"], 5, "{summary}");
    // a single-document command stays one (pretty) document
    let s = p.infra(&["--json", "status", "quickstart"]);
    let v: Value = serde_json::from_str(&s.stdout).unwrap();
    assert!(v.get("event").is_none(), "{v}");

    // an invalid plan: the error as one document naming each problem
    p.write(
        "plans/bad.json",
        "{\"phase\": \"bad\", \"name\": \"b\",\n  \"budget\": {\"usd\": \"ten\"},\n  \"colour\": 1,\n  \"layers\": []}",
    );
    let e = p.infra(&["--json", "plan", "bad"]);
    assert_eq!(e.code, 2);
    let v: Value = serde_json::from_str(&e.stdout).unwrap();
    assert_eq!(v["exit_code"], 2);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("invalid plan plans/bad.json"),
        "{v}"
    );
    let problems = v["error"]["problems"].as_array().unwrap();
    assert!(problems.len() >= 2, "{v}");
    let colour = problems
        .iter()
        .find(|p| p["path"] == "colour")
        .expect("colour");
    assert_eq!(colour["line"], 3);
    assert_eq!(colour["column"], 13, "the value's column");
    assert!(colour["hint"].is_string() || colour["hint"].is_null());
    // in a stream, the error is a line of its own
    let e = p.infra(&["--json", "up", "bad", "--yes"]);
    assert_eq!(e.code, 2);
    let line = crate::common::json_event(&e.stdout, "error");
    assert_eq!(line["exit_code"], 2, "{line}");
}

#[test]
fn results_show_common_settings_and_layer_settings_as_columns() {
    let p = Project::new();
    p.write(
        "plans/templates/m.json.hbs",
        &one_step_template(
            "printf '{\\\"value\\\": %s}' {{x}} > m.json; [ {{x}} != 3 ]",
            r#""outputs": ["m.json"], "table": ["m.json"],"#,
        ),
    );
    p.write(
        "plans/st.json",
        r#"{"phase": "st", "name": "settings",
      "common_settings": {"dgp": "normal", "S": 100},
      "layers": [
        {"id": "L0", "settings": {"table": "t1"}, "patterns": [
          {"id": "st-a", "backend": "m", "x": 1},
          {"id": "st-b", "backend": "m", "x": 2, "S": 500}]},
        {"id": "L1", "settings": {"table": "t2", "dgp": "t"}, "patterns": [
          {"id": "st-c", "backend": "m", "x": 3}]}]}"#,
    );
    let run = p.infra(&["run", "st"]);
    assert_eq!(run.code, 1, "st-c fails: {}\n{}", run.stdout, run.stderr);
    let by_run = p.read("results/st/failed-tasks.csv");
    let r = p.infra(&["results", "st"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let mut rd = csv::Reader::from_path(p.path().join("results/st/table.csv")).unwrap();
    let header: Vec<String> = rd.headers().unwrap().iter().map(String::from).collect();
    for c in ["dgp", "S", "table", "x", "value"] {
        assert!(header.contains(&c.to_string()), "{c} in {header:?}");
    }
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let rows: Vec<csv::StringRecord> = rd.records().map(|r| r.unwrap()).collect();
    let row = |task: &str| rows.iter().find(|r| &r[0] == task).unwrap().clone();
    assert_eq!(&row("st-a")[col("dgp")], "normal");
    assert_eq!(&row("st-a")[col("S")], "100");
    assert_eq!(&row("st-a")[col("table")], "t1");
    assert_eq!(
        &row("st-b")[col("S")],
        "500",
        "the pattern's own value wins"
    );
    // the failed task's settings are in failed-tasks.csv too: one file,
    // the same whether the run or `infra results` wrote it
    assert!(!p.exists("results/st/failed.csv"));
    let failed = p.read("results/st/failed-tasks.csv");
    assert_eq!(
        by_run.lines().next(),
        failed.lines().next(),
        "the same columns"
    );
    let head = failed.lines().next().unwrap();
    assert!(head.contains("dgp") && head.contains("table"), "{failed}");
    assert!(
        failed.lines().nth(1).unwrap().contains(",t,") || failed.contains("t2"),
        "{failed}"
    );
    let meta: Value = serde_json::from_str(&p.read("results/st/table.metadata.json")).unwrap();
    let dgp = meta["columns"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "dgp")
        .unwrap();
    assert!(
        dgp["description"].as_str().unwrap().contains("setting"),
        "{dgp}"
    );
}
