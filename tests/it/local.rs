//! The local provider end to end: real processes, real files.

use std::time::{Duration, Instant};

use crate::common::*;

fn plan_with(p: &Project, name: &str, body: &str) {
    p.write(&format!("plans/{name}.json"), body);
}

#[test]
fn quickstart_runs_end_to_end_with_a_health_checked_server_on_another_node() {
    let p = Project::with_examples();
    let r = p.infra(&["up", "quickstart"]);
    r.ok();
    for id in [
        "quickstart-L0-sum-1e5",
        "quickstart-L0-sum-1e6",
        "quickstart-L0-sum-2e6",
        "quickstart-L1-echo-c1",
        "quickstart-L1-echo-c4",
    ] {
        let rt: serde_json::Value =
            serde_json::from_str(&p.read(&format!("results/quickstart/{id}/runtime.json")))
                .unwrap();
        assert_eq!(rt["status"], "succeeded", "{id}");
        assert_eq!(rt["exit_code"], 0);
        assert!(rt["wall_seconds"].as_f64().unwrap() > 0.0);
        assert!(
            rt["peak_rss_kb"].as_u64().unwrap() > 1000,
            "peak RSS of a python process is measured"
        );
        assert!(p.exists(&format!("results/quickstart/{id}/result.json")));
        assert!(p.exists(&format!("results/quickstart/{id}/stdout.log")));
    }
    // the client ran on the other node and reached the server over loopback
    let res: serde_json::Value =
        serde_json::from_str(&p.read("results/quickstart/quickstart-L1-echo-c4/result.json"))
            .unwrap();
    assert_eq!(res["requests"], 50);
    assert_eq!(res["concurrency"], 4);
    let rt: serde_json::Value =
        serde_json::from_str(&p.read("results/quickstart/quickstart-L1-echo-c4/runtime.json"))
            .unwrap();
    assert_eq!(rt["nodes"].as_array().unwrap().len(), 2);
    assert_ne!(rt["nodes"][0], rt["nodes"][1]);
    assert!(res["url"].as_str().unwrap().contains("127.0."), "{res}");
    // `up` destroys the nodes and keeps the results
    assert!(!p.exists(".infra/quickstart/nodes"));
    // the server is gone
    let log = p.read("results/quickstart/quickstart-L1-echo-c1/stdout.log");
    assert!(log.contains("stopped background step server"), "{log}");
}

fn retry_plan(p: &Project) {
    p.write(
        "plans/templates/job.json.hbs",
        &one_step_template(
            "echo run {{pattern_id}} >> \\\"$INFRA_ROOT/attempts.log\\\"; exit {{code}}",
            "\"attempts\": 3,",
        ),
    );
    plan_with(
        p,
        "retry",
        r#"{
      "phase": "r", "name": "retry",
      "retry": {"attempts": 3, "backoff_seconds": 0.2, "backoff_max_seconds": 0.4},
      "node_groups": {"cpu": {"instance_type": "c6i.xlarge", "count": 1, "slots": 2}},
      "layers": [{"id": "L0", "patterns": [
        {"id": "r-ok-1", "backend": "job", "code": 0},
        {"id": "r-bad", "backend": "job", "code": 3},
        {"id": "r-ok-2", "backend": "job", "code": 0}
      ]}]}"#,
    );
}

#[test]
fn a_failing_task_is_retried_with_backoff_then_recorded_while_others_succeed() {
    let p = Project::new();
    retry_plan(&p);
    let r = p.infra(&["run", "retry", "all"]);
    assert_eq!(r.code, 1, "task failures exit 1\n{}", r.stderr);
    let attempts = p.read("attempts.log");
    assert_eq!(attempts.matches("run r-bad").count(), 3, "{attempts}");
    assert_eq!(attempts.matches("run r-ok-1").count(), 1);
    let rt: serde_json::Value =
        serde_json::from_str(&p.read("results/retry/r-bad/runtime.json")).unwrap();
    assert_eq!(rt["status"], "failed");
    assert_eq!(rt["exit_code"], 3);
    assert_eq!(rt["attempts"], 3);
    let csv = p.read("results/retry/failed-tasks.csv");
    assert!(csv.starts_with("task,layer,"), "{csv}");
    assert!(
        csv.lines()
            .next()
            .unwrap()
            .ends_with(",attempts,error,stderr_tail,ended"),
        "{csv}"
    );
    assert!(
        csv.contains(",3,\"step \"\"main\"\" exited with code 3"),
        "{csv}"
    );
    assert!(csv.lines().nth(1).unwrap().starts_with("r-bad,"), "{csv}");
    let j = journal(&p, "retry");
    assert_eq!(
        j.iter().filter(|e| e["event"] == "attempt_failed").count(),
        2
    );
    assert_eq!(j.iter().filter(|e| e["event"] == "succeeded").count(), 2);
    // a second run skips the failure; --retry-failed runs only it
    let r = p.infra(&["run", "retry", "all"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(p.read("attempts.log").lines().count(), 5);
    let r = p.infra(&["run", "retry", "all", "--retry-failed"]);
    assert_eq!(r.code, 1);
    let attempts = p.read("attempts.log");
    assert_eq!(attempts.matches("run r-bad").count(), 6);
    assert_eq!(
        attempts.matches("run r-ok-1").count(),
        1,
        "succeeded tasks never run again"
    );
}

#[test]
fn a_step_timeout_kills_the_step_and_fails_the_task() {
    let p = Project::new();
    p.write(
        "plans/templates/slow.json.hbs",
        r#"{"steps": [{"name": "sleepy", "command": "sleep 30", "timeout_seconds": 1}]}"#,
    );
    plan_with(
        &p,
        "slow",
        r#"{"phase": "s", "name": "timeout",
      "layers": [{"id": "L0", "patterns": [{"id": "s-1", "backend": "slow"}]}]}"#,
    );
    let t = Instant::now();
    let r = p.infra(&["run", "slow", "all"]);
    assert_eq!(r.code, 1);
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t.elapsed()
    );
    let rt: serde_json::Value =
        serde_json::from_str(&p.read("results/slow/s-1/runtime.json")).unwrap();
    assert!(
        rt["error"]
            .as_str()
            .unwrap()
            .contains("timed out after 1 s"),
        "{rt}"
    );
    // no sleep left behind
    let out = std::process::Command::new("pgrep")
        .args(["-f", "^sleep 30$"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).trim().is_empty(),
        "a sleep 30 survived the timeout"
    );
}

#[test]
fn selection_by_layer_and_by_pattern_id() {
    let p = Project::new();
    p.write(
        "plans/templates/echo.json.hbs",
        &one_step_template("echo {{pattern_id}} >> \\\"$INFRA_ROOT/ran.log\\\"", ""),
    );
    plan_with(
        &p,
        "sel",
        r#"{"phase": 7, "name": "selection",
      "layers": [
        {"id": "L0", "patterns": [{"id": "p7-a", "backend": "echo"}, {"id": "p7-b", "backend": "echo"}]},
        {"id": "L1", "patterns": [{"id": "p7-c", "backend": "echo"}, {"id": "p7-d", "backend": "echo"}]}
      ]}"#,
    );
    p.infra(&["run", "sel", "L1"]).ok();
    let ran = p.read("ran.log");
    assert_eq!(ran.lines().collect::<Vec<_>>().len(), 2);
    assert!(ran.contains("p7-c") && ran.contains("p7-d"));
    p.infra(&["run", "sel", "p7-a"]).ok();
    assert!(p.read("ran.log").contains("p7-a"));
    assert!(!p.read("ran.log").contains("p7-b"));
    let r = p.infra(&["run", "sel", "p7-zz"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("p7-zz") && r.stderr.contains("hint"),
        "{}",
        r.stderr
    );
    // status lists what is missing
    let r = p.infra(&["--json", "status", "sel"]);
    r.ok();
    let st: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(st["missing"], serde_json::json!(["p7-b"]));
    // list --json shows layers and patterns
    let r = p.infra(&["list", "sel", "--json"]);
    let l: serde_json::Value = serde_json::from_str(&r.ok().stdout).unwrap();
    assert_eq!(l["layers"][1]["patterns"][0]["id"], "p7-c");
}

/// Tasks sleep a little and count their runs in a file of their own.
fn crash_plan(p: &Project, n: usize, sleep: &str) {
    p.write("plans/templates/tick.json.hbs", &format!(
        "{{\"outputs\": [\"out.txt\"], \"steps\": [{{\"name\": \"tick\", \"command\": \"sleep {sleep}; echo {{{{pattern_id}}}} > out.txt; echo x >> \\\"$INFRA_ROOT/count/{{{{pattern_id}}}}\\\"\"}}]}}"));
    let pats: Vec<String> = (0..n)
        .map(|i| format!("{{\"id\": \"c-{i:03}\", \"backend\": \"tick\"}}"))
        .collect();
    plan_with(
        p,
        "crash",
        &format!(
            r#"{{"phase": "c", "name": "crash",
      "node_groups": {{"cpu": {{"instance_type": "c6i.xlarge", "count": 2, "slots": 2}}}},
      "layers": [{{"id": "L0", "patterns": [{}]}}]}}"#,
            pats.join(",")
        ),
    );
    std::fs::create_dir_all(p.path().join("count")).unwrap();
}

fn succeeded_in_journal(p: &Project) -> std::collections::HashSet<String> {
    journal(p, "crash")
        .iter()
        .filter(|e| e["event"] == "succeeded")
        .map(|e| e["task"].as_str().unwrap().to_string())
        .collect()
}

/// Kill `infra run` with SIGKILL `kills` times at varied moments, restart,
/// and check every result exists exactly once and no completed task re-ran.
pub fn crash_resume(n: usize, kills: usize) {
    let p = Project::new();
    crash_plan(&p, n, "0.05");
    let mut delays = [700u64, 1100, 400, 1500, 900, 1300, 600, 1000]
        .iter()
        .cycle();
    // runs counted when a task was first seen completed in the journal
    let mut completed: std::collections::HashMap<String, usize> = Default::default();
    let runs_of = |id: &str| {
        std::fs::read_to_string(p.path().join("count").join(id))
            .unwrap_or_default()
            .lines()
            .count()
    };
    for round in 0..kills {
        let mut child = p
            .cmd(&["run", "crash", "all"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(*delays.next().unwrap()));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // a task recorded as completed never runs again
        for (id, runs) in &completed {
            assert_eq!(
                runs_of(id),
                *runs,
                "round {round}: {id} completed earlier and ran again"
            );
        }
        for id in succeeded_in_journal_or_empty(&p) {
            let n = runs_of(&id);
            completed.entry(id).or_insert(n);
        }
    }
    let r = p.infra(&["run", "crash", "all"]);
    r.ok();
    for (id, runs) in &completed {
        assert_eq!(runs_of(id), *runs, "{id} completed earlier and ran again");
    }
    let done = succeeded_in_journal(&p);
    assert_eq!(done.len(), n, "every task completed");
    for i in 0..n {
        let id = format!("c-{i:03}");
        assert_eq!(p.read(&format!("results/crash/{id}/out.txt")).trim(), id);
        let rt: serde_json::Value =
            serde_json::from_str(&p.read(&format!("results/crash/{id}/runtime.json"))).unwrap();
        assert_eq!(rt["status"], "succeeded");
    }
    let entries: Vec<String> = std::fs::read_dir(p.path().join("results/crash"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert_eq!(
        entries.len(),
        n,
        "one result folder per task, nothing else: {entries:?}"
    );
    // the journal parses (journal() panics otherwise) and records each success once
    let j = journal(&p, "crash");
    assert_eq!(j.iter().filter(|e| e["event"] == "succeeded").count(), n);
    // a final run does nothing
    let r = p.infra(&["--json", "run", "crash", "all"]);
    let s = json_event(&r.ok().stdout, "summary");
    assert_eq!(s["summary"]["already_done"], n);
    assert_eq!(s["summary"]["succeeded"], 0);
}

fn succeeded_in_journal_or_empty(p: &Project) -> std::collections::HashSet<String> {
    if p.exists(".infra/crash/journal.jsonl") {
        succeeded_in_journal(p)
    } else {
        Default::default()
    }
}

#[test]
fn kill_9_mid_campaign_then_resume_runs_each_task_exactly_once() {
    crash_resume(40, 2);
}

#[test]
fn crash_resume_loop_200_tasks_5_sigkills() {
    crash_resume(200, 5);
}

#[test]
fn a_second_run_of_the_same_phase_is_refused_and_leaves_the_first_alone() {
    let p = Project::new();
    crash_plan(&p, 8, "1");
    let first = p
        .cmd(&["run", "crash", "all"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // wait until the first run has tasks on the nodes
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let journal_path = p.path().join(".infra/crash/journal.jsonl");
    while !std::fs::read_to_string(&journal_path).is_ok_and(|t| t.contains("\"dispatched\"")) {
        assert!(
            std::time::Instant::now() < deadline,
            "first run never dispatched"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let second = p.infra(&["run", "crash", "all"]);
    assert_eq!(second.code, 4, "{}", second.stderr);
    // the lease names the first run
    assert!(
        second.stderr.contains("crash is controlled by")
            && second
                .stderr
                .contains(&format!("(pid {}, this machine)", first.id())),
        "{}",
        second.stderr
    );
    assert!(!second.stderr.contains("stopped"), "{}", second.stderr);
    let out = first.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // nothing of the first run was killed: every task succeeded on its first attempt
    let j = journal(&p, "crash");
    assert_eq!(succeeded_in_journal(&p).len(), 8);
    assert!(
        j.iter()
            .all(|e| e["event"] != "requeued" && e["event"] != "attempt_failed"),
        "{j:?}"
    );
}

#[test]
fn sigint_stops_cleanly_and_the_next_run_finishes() {
    let p = Project::new();
    crash_plan(&p, 20, "1");
    let child = p
        .cmd(&["run", "crash", "all"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j = journal(&p, "crash");
    let last = j.last().unwrap();
    assert_eq!(last["event"], "run_finished");
    assert!(last["reason"].as_str().unwrap().contains("SIGINT"));
    assert!(
        j.iter().any(|e| e["event"] == "requeued"),
        "running tasks were requeued"
    );
    p.infra(&["run", "crash", "all"]).ok();
    assert_eq!(succeeded_in_journal(&p).len(), 20);
}

#[test]
fn hostile_values_reach_the_task_as_literal_strings() {
    let p = Project::new();
    p.write("plans/templates/echo.json.hbs", r#"{"outputs": ["v.txt"], "steps": [{"name": "echo", "command": "printf '%s' {{value}} > v.txt"}]}"#);
    let values = [
        "it's",
        "a\"b",
        "$(touch pwned)",
        "`touch pwned`",
        "a; touch pwned",
        "two\nlines",
        "$HOME",
        "*",
        "\\n",
        "a b  c",
    ];
    let pats: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            format!(
                "{{\"id\": \"h-{i}\", \"backend\": \"echo\", \"value\": {}}}",
                serde_json::to_string(v).unwrap()
            )
        })
        .collect();
    plan_with(
        &p,
        "hostile",
        &format!(
            r#"{{"phase": "h", "name": "hostile", "layers": [{{"id": "L0", "patterns": [{}]}}]}}"#,
            pats.join(",")
        ),
    );
    p.infra(&["run", "hostile", "all"]).ok();
    for (i, v) in values.iter().enumerate() {
        assert_eq!(
            &p.read(&format!("results/hostile/h-{i}/v.txt")),
            v,
            "value {v:?}"
        );
    }
    assert!(!p.exists("pwned"));
    let mut found = false;
    for e in walk(p.path()) {
        found |= e.ends_with("pwned");
    }
    assert!(!found, "a command substitution ran");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let path = e.path();
            if path.is_dir() {
                out.extend(walk(&path));
            }
            out.push(path);
        }
    }
    out
}

#[test]
fn slots_get_distinct_gpus_and_partitions_reach_the_task() {
    let p = Project::new();
    p.write("plans/templates/env.json.hbs", r#"{"outputs": ["env.txt"], "steps": [{"name": "env", "command": "echo \"$CUDA_VISIBLE_DEVICES $INFRA_N_WORKERS $INFRA_PARTITION/$INFRA_N_PARTITIONS {{partition}}/{{n_partitions}}\" > env.txt; sleep 0.5"}]}"#);
    plan_with(
        &p,
        "gpu",
        r#"{"phase": "g", "name": "slots",
      "node_groups": {"gpu": {"instance_type": "g5.12xlarge", "count": 1, "slots": 4, "gpus": 4, "workers_per_slot": 3}},
      "layers": [{"id": "L0", "partitions": 4, "patterns": [{"id": "g-job", "backend": "env"}]}]}"#,
    );
    p.infra(&["run", "gpu", "all"]).ok();
    let mut gpus = Vec::new();
    for i in 1..=4 {
        let line = p.read(&format!("results/gpu/g-job-part{i}of4/env.txt"));
        let parts: Vec<&str> = line.split_whitespace().collect();
        gpus.push(parts[0].to_string());
        assert_eq!(parts[1], "3");
        assert_eq!(parts[2], format!("{}/4", i - 1));
        assert_eq!(parts[3], format!("{}/4", i - 1));
    }
    gpus.sort();
    assert_eq!(
        gpus,
        ["0", "1", "2", "3"],
        "each concurrent slot has its own GPU"
    );
}

/// The energy team's suite as shipped (plans/energy.json), with its flaky
/// configuration made to fail every attempt: the 12 configurations each
/// give 3 rows (2 warm-ups and the measured run); the failing one is tried
/// 4 times, after 2, 4 and 8 s, then lands in failed-tasks.csv with the
/// last lines of its stderr, and the suite goes on.
#[test]
fn the_energy_suite_retries_with_backoff_and_records_the_oom_after_the_last_attempt() {
    let p = Project::with_examples();
    let plan = p.read("plans/energy.json");
    assert!(plan.contains(r#""fail_first": 2"#));
    p.write(
        "plans/energy.json",
        &plan.replace(r#""fail_first": 2"#, r#""fail_first": 9"#),
    );
    let r = p.infra(&["up", "energy", "--yes"]);
    assert_eq!(r.code, 1, "one task fails: {}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("energy: 12 succeeded, 1 failed"),
        "{}",
        r.stdout
    );
    let j = journal(&p, "energy");
    let delays: Vec<f64> = j
        .iter()
        .filter(|e| e["event"] == "attempt_failed")
        .map(|e| e["retry_in_seconds"].as_f64().unwrap())
        .collect();
    assert_eq!(delays, [2.0, 4.0, 8.0]);
    let failed = p.read("results/energy/failed-tasks.csv");
    let mut rd = csv::Reader::from_reader(failed.as_bytes());
    let head: Vec<String> = rd.headers().unwrap().iter().map(String::from).collect();
    let row = rd.records().next().unwrap().unwrap();
    let cell = |c: &str| row[head.iter().position(|h| h == c).unwrap()].to_string();
    assert_eq!(cell("task"), "energy-large-b128-flaky");
    assert_eq!(cell("attempts"), "4");
    assert_eq!(cell("batch"), "128");
    assert!(
        cell("stderr_tail").contains("loading large with batch 128\ntorch.OutOfMemoryError"),
        "{failed}"
    );
    assert!(cell("error").contains("OutOfMemoryError"), "{failed}");
    // every run of every configuration is a row
    p.infra(&["results", "energy"]).ok();
    let mut t = csv::Reader::from_path(p.path().join("results/energy/table.csv")).unwrap();
    let th: Vec<String> = t.headers().unwrap().iter().map(String::from).collect();
    let kind = th.iter().position(|h| h == "kind").unwrap();
    let rows: Vec<csv::StringRecord> = t.records().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), 36, "12 configurations x 3 runs");
    assert_eq!(rows.iter().filter(|r| &r[kind] == "measured").count(), 12);
    for c in [
        "energy_j",
        "tokens_per_joule",
        "model",
        "batch",
        "warmup_runs",
    ] {
        assert!(th.contains(&c.to_string()), "{c} in {th:?}");
    }
}
