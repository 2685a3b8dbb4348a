//! The journal's parsing, state and appending.

use super::*;

fn line(e: Entry) -> String {
    let mut s = serde_json::to_string(&Record {
        v: 1,
        ts: "t".into(),
        entry: e,
    })
    .unwrap();
    s.push('\n');
    s
}

#[test]
fn torn_last_line_is_ignored_and_running_becomes_pending() {
    let mut text = line(Entry::RunStarted {
        run: 1,
        pid: 1,
        provider: "local".into(),
        selected: 2,
    });
    text += &line(Entry::Dispatched {
        task: "a".into(),
        key: "ka".into(),
        attempt: 1,
        nodes: vec![],
        slots: vec![],
    });
    text += &line(Entry::Succeeded {
        task: "a".into(),
        key: "ka".into(),
        attempt: 1,
        wall_seconds: 1.0,
        cost_usd: 0.0,
        definition: None,
    });
    text += &line(Entry::Dispatched {
        task: "b".into(),
        key: "kb".into(),
        attempt: 1,
        nodes: vec![],
        slots: vec![],
    });
    text += "{\"v\":1,\"ts\":\"t\",\"event\":\"succ";
    let (mut st, recs) = parse(&text, Path::new("j")).unwrap();
    assert_eq!(recs.len(), 4);
    assert_eq!(st.status_of("ka"), Status::Succeeded);
    assert_eq!(st.status_of("kb"), Status::Running);
    st.apply(&Entry::RunStarted {
        run: 2,
        pid: 2,
        provider: "local".into(),
        selected: 2,
    });
    assert_eq!(st.status_of("kb"), Status::Pending);
}

#[test]
fn damage_before_the_last_line_is_an_error() {
    let text = format!(
        "garbage\n{}",
        line(Entry::RunStarted {
            run: 1,
            pid: 1,
            provider: "local".into(),
            selected: 0
        })
    );
    assert!(matches!(
        parse(&text, Path::new("j")),
        Err(JournalError::Corrupt { line: 1, .. })
    ));
}

#[test]
fn open_cuts_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("j.jsonl");
    std::fs::write(
        &p,
        line(Entry::RunStarted {
            run: 1,
            pid: 1,
            provider: "local".into(),
            selected: 0,
        }) + "{\"v\":1,",
    )
    .unwrap();
    let mut j = Journal::open(&p).unwrap();
    j.append(Entry::RunFinished {
        run: 1,
        succeeded: 0,
        failed: 0,
        pending: 0,
        reason: "done".into(),
    })
    .unwrap();
    let (_, recs) = read(&p).unwrap();
    assert_eq!(recs.len(), 2);
}

#[test]
fn a_rerun_makes_a_completed_task_pending_with_a_fresh_budget_and_its_attempts_go_on() {
    let mut st = State::default();
    let at = |st: &mut State, e: Entry, ts: &str| st.apply_at(&e, ts);
    let dispatched = |attempt| Entry::Dispatched {
        task: "a".into(),
        key: "ka".into(),
        attempt,
        nodes: vec![],
        slots: vec![],
    };
    at(&mut st, dispatched(1), "t1");
    at(
        &mut st,
        Entry::AttemptFailed {
            task: "a".into(),
            key: "ka".into(),
            attempt: 1,
            error: "exit 3".into(),
            retry_in_seconds: 0.0,
        },
        "t2",
    );
    at(&mut st, dispatched(2), "t3");
    let ok = |attempt, definition| Entry::Succeeded {
        task: "a".into(),
        key: "ka".into(),
        attempt,
        wall_seconds: 1.0,
        cost_usd: 0.5,
        definition,
    };
    let print = crate::tasks::fingerprint::Fingerprint {
        definition: "d".into(),
        template: "t".into(),
        command: "c".into(),
    };
    at(
        &mut st,
        ok(2, Some(print.clone())),
        "2026-11-28T01:00:00.000Z",
    );
    let t = &st.tasks["ka"];
    assert_eq!(
        (t.status, t.attempts, t.failures),
        (Status::Succeeded, 2, 1)
    );
    assert_eq!(t.ran.as_ref(), Some(&print));
    assert_eq!(t.succeeded_at.as_deref(), Some("2026-11-28T01:00:00.000Z"));
    at(
        &mut st,
        Entry::Rerun {
            task: "a".into(),
            key: "ka".into(),
            reason: "asked for with --rerun".into(),
        },
        "t5",
    );
    let t = &st.tasks["ka"];
    assert_eq!((t.status, t.attempts, t.failures), (Status::Pending, 2, 0));
    at(&mut st, dispatched(3), "t6");
    at(&mut st, ok(3, None), "t7");
    let t = &st.tasks["ka"];
    assert_eq!((t.status, t.attempts), (Status::Succeeded, 3));
    // what the task cost, both runs together
    assert_eq!(t.cost_usd, Some(1.0));
    // the event reads back as written
    let text = line(Entry::Rerun {
        task: "a".into(),
        key: "ka".into(),
        reason: "r".into(),
    });
    assert!(text.contains("\"event\":\"rerun\""), "{text}");
    assert_eq!(parse(&text, Path::new("j")).unwrap().1.len(), 1);
}
