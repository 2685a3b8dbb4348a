//! Deliberate re-runs on the local provider: `--rerun` (the previous
//! result kept under `.history/<time>/`), `--changed` (after a template
//! edit), and a result folder deleted by hand.

use serde_json::Value;

use crate::common::*;

/// Tasks that count their runs in `count/<id>` and write their run number
/// to `out.txt`; `a` tasks use template `a`, `b` tasks template `b`.
/// A task fails while `fails/<id>` holds a number above 0 (counting it down).
fn counting_plan(p: &Project) {
    for b in ["a", "b"] {
        p.write(
            &format!("plans/templates/{b}.json.hbs"),
            &template(b, "run"),
        );
    }
    p.write(
        "plans/again.json",
        r#"{"phase": "g", "name": "again",
      "retry": {"attempts": 2, "backoff_seconds": 0.1, "backoff_max_seconds": 0.1},
      "node_groups": {"cpu": {"instance_type": "c6i.xlarge", "count": 1, "slots": 3}},
      "layers": [{"id": "L0", "patterns": [
        {"id": "g-1", "backend": "a"}, {"id": "g-2", "backend": "a"}, {"id": "g-3", "backend": "b"}
      ]}]}"#,
    );
    std::fs::create_dir_all(p.path().join("count")).unwrap();
    std::fs::create_dir_all(p.path().join("fails")).unwrap();
}

/// The counting template; `word` is what it says in `out.txt`.
fn template(backend: &str, word: &str) -> String {
    let f = "\\\"$INFRA_ROOT/fails/{{pattern_id}}\\\"";
    let c = "\\\"$INFRA_ROOT/count/{{pattern_id}}\\\"";
    format!(
        "{{\"outputs\": [\"out.txt\"], \"steps\": [{{\"name\": \"main\", \"command\": \
         \"n=$(cat {f} 2>/dev/null || echo 0); if [ $n -gt 0 ]; then echo $((n-1)) > {f}; exit 3; fi; \
         echo x >> {c}; echo {word}-{backend} $(wc -l < {c}) > out.txt\"}}]}}"
    )
}

fn runs(p: &Project, id: &str) -> usize {
    std::fs::read_to_string(p.path().join("count").join(id))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

fn runtime(p: &Project, rel: &str) -> Value {
    serde_json::from_str(&p.read(&format!("{rel}/runtime.json"))).unwrap()
}

/// The folders of `results/again/.history/`, sorted.
fn history(p: &Project) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(p.path().join("results/again/.history"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn rerun_keeps_the_previous_result_in_the_history_and_gets_a_fresh_attempt_budget() {
    let p = Project::new();
    counting_plan(&p);
    // g-1 fails once, then succeeds: one of its two attempts used
    p.write("fails/g-1", "1");
    p.infra(&["run", "again"]).ok();
    assert_eq!(
        (runs(&p, "g-1"), runs(&p, "g-2"), runs(&p, "g-3")),
        (1, 1, 1)
    );
    assert_eq!(runtime(&p, "results/again/g-1")["attempts"], 2);

    // it fails once more on the re-run: a fresh budget lets it succeed
    p.write("fails/g-1", "1");
    let r = p.infra(&["run", "again", "g-1", "g-2", "--rerun"]);
    r.ok();
    assert!(
        r.stderr.contains("rerun  g-1: asked for with --rerun")
            && r.stderr.contains("rerun  g-2: asked for with --rerun"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("rerun  g-3"), "{}", r.stderr);
    assert_eq!(
        (runs(&p, "g-1"), runs(&p, "g-2"), runs(&p, "g-3")),
        (2, 2, 1)
    );
    // attempts go on numbering: 3 failed, 4 succeeded
    let now = runtime(&p, "results/again/g-1");
    assert_eq!(
        (now["status"].as_str(), now["attempts"].as_u64()),
        (Some("succeeded"), Some(4))
    );
    assert_eq!(p.read("results/again/g-1/out.txt").trim(), "run-a 2");
    // the previous result, whole, under .history/<time>/
    let h = history(&p);
    assert_eq!(h.len(), 1, "{h:?}");
    let stamp = &h[0];
    assert!(
        stamp.len() == 20 && stamp.ends_with('Z') && stamp.as_bytes()[8] == b'T',
        "a sortable UTC time: {stamp}"
    );
    let old = format!("results/again/.history/{stamp}");
    assert_eq!(runtime(&p, &format!("{old}/g-1"))["attempts"], 2);
    assert_eq!(p.read(&format!("{old}/g-1/out.txt")).trim(), "run-a 1");
    assert!(p.exists(&format!("{old}/g-2/runtime.json")));
    assert!(!p.exists(&format!("{old}/g-3")));
    // the journal says why they ran again
    let j = journal(&p, "again");
    let reruns: Vec<&str> = j
        .iter()
        .filter(|e| e["event"] == "rerun")
        .map(|e| e["task"].as_str().unwrap())
        .collect();
    assert_eq!(reruns, ["g-1", "g-2"]);

    // the new attempt is the current one: done, nothing left to run
    let st: Value =
        serde_json::from_str(&p.infra(&["--json", "status", "again"]).ok().stdout).unwrap();
    assert_eq!(st["counts"]["succeeded"], 3, "{st}");
    assert_eq!(st["missing"], serde_json::json!([]));
    let r = p.infra(&["run", "again"]);
    r.ok();
    assert!(r.stdout.contains("3 already done"), "{}", r.stdout);
    assert_eq!(
        (runs(&p, "g-1"), runs(&p, "g-2"), runs(&p, "g-3")),
        (2, 2, 1)
    );

    // a second re-run: a history folder of its own, sorting after the first
    p.infra(&["run", "again", "g-1", "--rerun"]).ok();
    let h2 = history(&p);
    assert_eq!(h2.len(), 2, "{h2:?}");
    assert_eq!(&h2[0], stamp);
    assert_eq!(
        p.read(&format!("results/again/.history/{}/g-1/out.txt", h2[1]))
            .trim(),
        "run-a 2"
    );
    assert_eq!(runs(&p, "g-1"), 3);
}

#[test]
fn a_re_run_asked_for_earlier_skips_tasks_completed_since() {
    // a detached controller started again by its supervisor runs its
    // command line again: what completed after the ask does not run twice
    let p = Project::new();
    counting_plan(&p);
    p.infra(&["run", "again"]).ok();
    let before = "2000-01-01T00:00:00.000Z";
    let r = p.infra(&["run", "again", "--rerun", "--rerun-asked-at", before]);
    r.ok();
    assert!(!r.stderr.contains("rerun  "), "{}", r.stderr);
    assert_eq!(
        (runs(&p, "g-1"), runs(&p, "g-2"), runs(&p, "g-3")),
        (1, 1, 1)
    );
    assert!(history(&p).is_empty());
}

#[test]
fn changed_re_runs_only_the_completed_tasks_whose_template_changed_and_says_why() {
    let p = Project::new();
    counting_plan(&p);
    p.infra(&["run", "again"]).ok();
    let r = p.infra(&["plan", "again"]);
    assert!(
        !r.ok().stdout.contains("changed since they ran"),
        "{}",
        r.stdout
    );

    // template a is edited; b's text moves but renders the same definition
    p.write("plans/templates/a.json.hbs", &template("a", "edited"));
    p.write(
        "plans/templates/b.json.hbs",
        &format!("{}\n\n", template("b", "run")),
    );
    let r = p.infra(&["plan", "again"]);
    let out = &r.ok().stdout;
    assert!(
        out.contains("3 rendered into .infra/again/tasks (2 written), 0 still to run"),
        "{out}"
    );
    assert!(
        out.contains(
            "2 completed task(s) changed since they ran: `infra run again --changed` re-runs them"
        ),
        "{out}"
    );
    let v: Value =
        serde_json::from_str(&p.infra(&["--json", "plan", "again"]).ok().stdout).unwrap();
    assert_eq!(v["changed"], 2);

    // a plain run runs nothing again
    let r = p.infra(&["run", "again"]);
    assert!(r.ok().stdout.contains("3 already done"), "{}", r.stdout);
    assert_eq!(
        (runs(&p, "g-1"), runs(&p, "g-2"), runs(&p, "g-3")),
        (1, 1, 1)
    );

    // --changed runs exactly those, saying why
    let r = p.infra(&["run", "again", "--changed"]);
    r.ok();
    for id in ["g-1", "g-2"] {
        assert!(
            r.stderr.contains(&format!(
                "rerun  {id}: its definition changed since it ran (template a.json.hbs)"
            )),
            "{}",
            r.stderr
        );
    }
    assert!(!r.stderr.contains("rerun  g-3"), "{}", r.stderr);
    assert_eq!(
        (runs(&p, "g-1"), runs(&p, "g-2"), runs(&p, "g-3")),
        (2, 2, 1)
    );
    assert_eq!(p.read("results/again/g-1/out.txt").trim(), "edited-a 2");
    let h = history(&p);
    assert_eq!(h.len(), 1);
    assert_eq!(
        p.read(&format!("results/again/.history/{}/g-1/out.txt", h[0]))
            .trim(),
        "run-a 1"
    );

    // they ran as they are now: nothing changed any more
    let r = p.infra(&["plan", "again"]);
    assert!(
        !r.ok().stdout.contains("changed since they ran"),
        "{}",
        r.stdout
    );
    let r = p.infra(&["run", "again", "--changed"]);
    r.ok();
    assert!(!r.stderr.contains("rerun  "), "{}", r.stderr);
    assert_eq!(
        (runs(&p, "g-1"), runs(&p, "g-2"), runs(&p, "g-3")),
        (2, 2, 1)
    );
}

#[test]
fn a_result_folder_deleted_by_hand_is_missing_and_runs_again() {
    let p = Project::new();
    counting_plan(&p);
    p.infra(&["run", "again"]).ok();
    std::fs::remove_dir_all(p.path().join("results/again/g-2")).unwrap();
    // a folder without its runtime.json is no result either
    std::fs::remove_file(p.path().join("results/again/g-3/runtime.json")).unwrap();

    // status, plan and results agree: two are missing
    let st: Value =
        serde_json::from_str(&p.infra(&["--json", "status", "again"]).ok().stdout).unwrap();
    assert_eq!(st["missing"], serde_json::json!(["g-2", "g-3"]), "{st}");
    assert_eq!(st["counts"]["succeeded"], 1, "{st}");
    let text = p.infra(&["status", "again"]).ok().stdout.clone();
    assert!(text.contains("1 done"), "{text}");
    assert!(text.contains("missing: g-2, g-3"), "{text}");
    assert!(text.contains("result folder gone: g-2, g-3"), "{text}");
    let plan = p.infra(&["plan", "again"]).ok().stdout.clone();
    assert!(plan.contains("2 still to run"), "{plan}");
    let res = p.infra(&["results", "again"]).ok().stdout.clone();
    assert!(
        res.contains("from 1 of 3 task(s)") && res.contains("partial"),
        "{res}"
    );

    // a plain run runs them again, and only them
    let r = p.infra(&["run", "again"]);
    r.ok();
    assert!(
        r.stderr
            .contains("rerun  g-2: its result is missing (no results/again/g-2/runtime.json)"),
        "{}",
        r.stderr
    );
    assert!(
        r.stdout.contains("2 succeeded, 0 failed, 1 already done"),
        "{}",
        r.stdout
    );
    assert_eq!(
        (runs(&p, "g-1"), runs(&p, "g-2"), runs(&p, "g-3")),
        (1, 2, 2)
    );
    // what was left of g-3's folder is kept
    let h = history(&p);
    assert_eq!(h.len(), 1);
    assert!(p.exists(&format!("results/again/.history/{}/g-3/out.txt", h[0])));
    assert!(!p.exists(&format!("results/again/.history/{}/g-2", h[0])));
    let st: Value =
        serde_json::from_str(&p.infra(&["--json", "status", "again"]).ok().stdout).unwrap();
    assert_eq!(st["missing"], serde_json::json!([]), "{st}");
    assert_eq!(st["counts"]["succeeded"], 3, "{st}");
}
