//! The sequencer over a scripted fake transport: what it asks of the
//! transport, in which order, and the outcome it decides.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::json;

use super::*;
use crate::runner::exec::Seat;
use crate::tasks::TaskDef;

/// A transport that plays a script: how each (step, try) starts, ends
/// or passes its health check (by default: it starts, exits 0, is
/// healthy), and logs what the sequencer asked of it.
#[derive(Default)]
struct Fake {
    refuse: HashMap<(usize, u32), StartError>,
    ends: HashMap<(usize, u32), StepEnd>,
    health: HashMap<(usize, u32), HealthEnd>,
    gone: Option<String>,
    produced: Vec<String>,
    collect_fails: bool,
    usage: Usage,
    env: Vec<(String, String)>,
    log: Arc<Mutex<Vec<String>>>,
}

struct FakeStep {
    name: String,
    try_no: u32,
    key: (usize, u32),
}

impl Fake {
    fn note(&self, s: String) {
        self.log.lock().unwrap().push(s);
    }
}

impl StepTransport for Fake {
    type Step = FakeStep;

    fn env(&self, _rank: usize) -> &[(String, String)] {
        &self.env
    }

    async fn start(
        &mut self,
        index: usize,
        step: &Step,
        try_no: u32,
        env: &[(String, String)],
    ) -> Result<FakeStep, StartError> {
        assert!(env.contains(&("INFRA_STEP".into(), step.name.clone())));
        self.note(format!("start {} {try_no}", step.name));
        if let Some(e) = self.refuse.get(&(index, try_no)) {
            return Err(e.clone());
        }
        Ok(FakeStep {
            name: step.name.clone(),
            try_no,
            key: (index, try_no),
        })
    }

    async fn wait(
        &mut self,
        s: &mut FakeStep,
        _step: &Step,
        _stop: &mut watch::Receiver<bool>,
    ) -> StepEnd {
        self.note(format!("wait {}", s.name));
        self.ends.get(&s.key).cloned().unwrap_or(StepEnd::Exited(0))
    }

    async fn wait_healthy(
        &mut self,
        s: &mut FakeStep,
        _step: &Step,
        check: &Check<'_>,
        _env: &[(String, String)],
        _stop: &mut watch::Receiver<bool>,
    ) -> HealthEnd {
        self.note(format!("health {} {}", s.name, check.what()));
        self.health
            .get(&s.key)
            .cloned()
            .unwrap_or(HealthEnd::Healthy)
    }

    async fn stop(&mut self, steps: Vec<Started<FakeStep>>, cancelled: bool) {
        let names: Vec<String> = steps
            .iter()
            .map(|s| {
                let mark = if s.healthy { "" } else { "!" };
                format!("{}{}#{}", mark, s.step.name, s.step.try_no)
            })
            .collect();
        let how = if cancelled { " (cancelled)" } else { "" };
        self.note(format!("stop {}{how}", names.join(" ")));
    }

    fn node_gone(&self) -> Option<String> {
        self.gone.clone()
    }

    async fn collect(&mut self) -> Result<Usage, String> {
        self.note("collect".into());
        if self.collect_fails {
            return Err("cannot collect".into());
        }
        Ok(self.usage)
    }

    fn output(&mut self, path: &str) -> Result<(), Option<String>> {
        if self.produced.iter().any(|p| p == path) {
            Ok(())
        } else {
            Err(Some("not found".into()))
        }
    }

    fn release(&mut self) {
        self.note("release".into());
    }
}

fn step(name: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut s = serde_json::json!({
        "name": name, "node": 0, "command": "true", "background": false,
        "health": null, "timeout_seconds": null, "retries": 0, "env": {}
    });
    for (k, v) in extra.as_object().unwrap() {
        s[k] = v.clone();
    }
    s
}

fn task(steps: Vec<serde_json::Value>, outputs: &[&str]) -> Arc<TaskDef> {
    Arc::new(
        serde_json::from_value(serde_json::json!({
            "version": 1, "id": "t", "key": "k", "phase": "p", "layer": "L0",
            "backend": "b", "node_group": "g", "nodes": 1, "attempts": 1,
            "estimate_seconds": null, "partition": null, "env": {},
            "outputs": outputs, "table": [], "steps": steps,
            "factors": {}, "vars": {}
        }))
        .unwrap(),
    )
}

/// Run `task` over `fake`; the outcome and the transport's log.
async fn run_with(task: Arc<TaskDef>, fake: Fake, stop: bool) -> (Outcome, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = watch::channel(stop);
    let log = fake.log.clone();
    let req = AttemptRequest {
        task,
        attempt: 1,
        seats: vec![Seat { node: 0, slot: 0 }],
        staging: dir.path().join("staging"),
        stop: rx,
        notes: crate::runner::exec::StepNotes::none(),
        resume: None,
    };
    let out = run(req, |_| Ok(fake)).await;
    drop(tx);
    let log = log.lock().unwrap().clone();
    (out, log)
}

fn failed(o: &Outcome) -> (&str, &Measured) {
    match o {
        Outcome::Failed { error, measured } => (error, measured),
        other => panic!("not failed: {other:?}"),
    }
}

#[tokio::test]
async fn steps_run_in_order_and_the_measurements_come_from_the_transport() {
    let t = task(
        vec![
            step("a", json!({})),
            step("b", json!({})),
            step("c", json!({})),
        ],
        &["out.json"],
    );
    let fake = Fake {
        produced: vec!["out.json".into()],
        usage: Usage {
            peak_rss_kb: 42,
            checkpoint_bytes: None,
            last_exit_code: None,
        },
        ..Fake::default()
    };
    let (out, log) = run_with(t, fake, false).await;
    assert_eq!(
        log,
        [
            "start a 1",
            "wait a",
            "start b 1",
            "wait b",
            "start c 1",
            "wait c",
            "collect",
            "release"
        ]
    );
    let Outcome::Succeeded(m) = out else {
        panic!("{out:?}")
    };
    assert_eq!(m.exit_code, Some(0), "no code measured: a success is 0");
    assert_eq!(m.peak_rss_kb, 42);
}

#[tokio::test]
async fn a_background_step_runs_until_the_last_step_ended_then_it_is_stopped() {
    let t = task(
        vec![
            step(
                "server",
                json!({"background": true,
                       "health": {"http": "http://${ADDR}/health", "timeout_seconds": 7, "interval_seconds": 1.0}}),
            ),
            step("client", json!({})),
        ],
        &[],
    );
    let fake = Fake {
        env: vec![("ADDR".into(), "127.0.0.2:80".into())],
        ..Fake::default()
    };
    let (out, log) = run_with(t, fake, false).await;
    assert_eq!(
        log,
        [
            "start server 1",
            "health server http://127.0.0.2:80/health",
            "start client 1",
            "wait client",
            "stop server#1",
            "collect",
            "release"
        ]
    );
    assert!(matches!(out, Outcome::Succeeded(_)), "{out:?}");
}

#[tokio::test]
async fn a_failing_health_check_is_retried_then_fails_the_attempt() {
    let t = task(
        vec![
            step(
                "server",
                json!({"background": true, "retries": 1,
                       "health": {"http": "http://${ADDR}/health", "timeout_seconds": 7, "interval_seconds": 1.0}}),
            ),
            step("client", json!({})),
        ],
        &[],
    );
    let fake = Fake {
        env: vec![("ADDR".into(), "127.0.0.2:80".into())],
        health: HashMap::from([
            ((0, 1), HealthEnd::NotHealthy),
            ((0, 2), HealthEnd::ExitedEarly),
        ]),
        usage: Usage {
            peak_rss_kb: 7,
            checkpoint_bytes: None,
            last_exit_code: None,
        },
        ..Fake::default()
    };
    let (out, log) = run_with(t, fake, false).await;
    assert_eq!(
        log,
        [
            "start server 1",
            "health server http://127.0.0.2:80/health",
            "stop !server#1",
            "start server 2",
            "health server http://127.0.0.2:80/health",
            "stop !server#2",
            "collect",
            "release"
        ],
        "the client never starts; each failed try is stopped"
    );
    let (error, m) = failed(&out);
    assert_eq!(
        error,
        "background step \"server\" exited before it became healthy"
    );
    assert_eq!((m.exit_code, m.peak_rss_kb), (None, 7));
}

#[tokio::test]
async fn a_health_check_that_never_passes_names_what_it_checked() {
    let t = task(
        vec![step(
            "server",
            json!({"background": true,
                   "health": {"command": "curl -sf localhost", "timeout_seconds": 3, "interval_seconds": 1.0}}),
        )],
        &[],
    );
    let fake = Fake {
        health: HashMap::from([((0, 1), HealthEnd::NotHealthy)]),
        ..Fake::default()
    };
    let (out, _) = run_with(t, fake, false).await;
    assert_eq!(
        failed(&out).0,
        "background step \"server\" was not healthy after 3 s (curl -sf localhost)"
    );
}

#[tokio::test]
async fn a_timed_out_step_is_tried_again_and_fails_when_no_try_is_left() {
    let t = task(
        vec![step("main", json!({"timeout_seconds": 5, "retries": 1}))],
        &[],
    );
    let fake = Fake {
        ends: HashMap::from([((0, 1), StepEnd::TimedOut), ((0, 2), StepEnd::TimedOut)]),
        usage: Usage {
            peak_rss_kb: 0,
            checkpoint_bytes: None,
            last_exit_code: Some(124),
        },
        ..Fake::default()
    };
    let (out, log) = run_with(t, fake, false).await;
    assert_eq!(
        log,
        [
            "start main 1",
            "wait main",
            "start main 2",
            "wait main",
            "collect",
            "release"
        ]
    );
    let (error, m) = failed(&out);
    assert_eq!(error, "step \"main\" timed out after 5 s");
    assert_eq!(m.exit_code, Some(124));

    let t = task(
        vec![step("main", json!({"timeout_seconds": 5, "retries": 1}))],
        &[],
    );
    let fake = Fake {
        ends: HashMap::from([((0, 1), StepEnd::TimedOut)]),
        ..Fake::default()
    };
    let (out, _) = run_with(t, fake, false).await;
    assert!(matches!(out, Outcome::Succeeded(_)), "{out:?}");
}

#[tokio::test]
async fn a_failed_step_ends_the_attempt_and_its_code_is_in_the_message() {
    let t = task(vec![step("a", json!({})), step("b", json!({}))], &["x"]);
    let fake = Fake {
        ends: HashMap::from([((0, 1), StepEnd::Exited(3))]),
        usage: Usage {
            peak_rss_kb: 0,
            checkpoint_bytes: None,
            last_exit_code: Some(3),
        },
        ..Fake::default()
    };
    let (out, log) = run_with(t, fake, false).await;
    assert_eq!(log, ["start a 1", "wait a", "collect", "release"]);
    let (error, m) = failed(&out);
    assert_eq!(error, "step \"a\" exited with code 3");
    assert_eq!(m.exit_code, Some(3));
}

#[tokio::test]
async fn a_step_that_cannot_start_is_not_tried_again() {
    let t = task(vec![step("a", json!({"retries": 2}))], &[]);
    let fake = Fake {
        refuse: HashMap::from([((0, 1), StartError::Failed("no shell".into()))]),
        ..Fake::default()
    };
    let (out, log) = run_with(t, fake, false).await;
    assert_eq!(log, ["start a 1", "collect", "release"]);
    assert_eq!(failed(&out).0, "no shell");
}

#[tokio::test]
async fn the_stop_signal_cancels_the_attempt_and_stops_every_step_with_less_patience() {
    let t = task(
        vec![
            step("server", json!({"background": true})),
            step("main", json!({})),
            step("never", json!({})),
        ],
        &[],
    );
    let fake = Fake {
        ends: HashMap::from([((1, 1), StepEnd::Stopped)]),
        ..Fake::default()
    };
    let (out, log) = run_with(t, fake, true).await;
    assert_eq!(
        log,
        [
            "start server 1",
            "start main 1",
            "wait main",
            "stop server#1 !main#1 (cancelled)"
        ],
        "nothing is collected from a cancelled attempt"
    );
    assert_eq!(out, Outcome::Cancelled);
}

#[tokio::test]
async fn a_health_check_cut_short_by_the_stop_signal_cancels_the_attempt() {
    let t = task(
        vec![step(
            "server",
            json!({"background": true, "retries": 3, "health": {"http": "http://x/"}}),
        )],
        &[],
    );
    let fake = Fake {
        health: HashMap::from([((0, 1), HealthEnd::Stopped)]),
        ..Fake::default()
    };
    let (out, log) = run_with(t, fake, true).await;
    assert_eq!(
        log,
        [
            "start server 1",
            "health server http://x/",
            "stop !server#1 (cancelled)"
        ]
    );
    assert_eq!(out, Outcome::Cancelled);
}

#[tokio::test]
async fn a_lost_node_loses_the_attempt_without_another_try() {
    let t = task(
        vec![
            step("server", json!({"background": true})),
            step("main", json!({"retries": 2})),
        ],
        &[],
    );
    let fake = Fake {
        ends: HashMap::from([((1, 1), StepEnd::Lost("spot interruption".into()))]),
        ..Fake::default()
    };
    let (out, log) = run_with(t, fake, false).await;
    assert_eq!(
        log,
        [
            "start server 1",
            "start main 1",
            "wait main",
            "stop server#1"
        ]
    );
    assert_eq!(
        out,
        Outcome::Lost {
            reason: "spot interruption".into()
        }
    );
}

#[tokio::test]
async fn a_failure_while_a_node_of_the_attempt_went_away_is_the_nodes_fault() {
    let t = task(vec![step("main", json!({}))], &[]);
    let fake = Fake {
        ends: HashMap::from([((0, 1), StepEnd::Exited(255))]),
        gone: Some("node cpu-1 went away: terminated".into()),
        ..Fake::default()
    };
    let (out, _) = run_with(t, fake, false).await;
    assert_eq!(
        out,
        Outcome::Lost {
            reason: "node cpu-1 went away: terminated".into()
        }
    );
}

#[tokio::test]
async fn an_attempt_whose_node_cannot_be_used_is_lost_before_any_step() {
    let t = task(vec![step("main", json!({}))], &[]);
    let dir = tempfile::tempdir().unwrap();
    let (_tx, rx) = watch::channel(false);
    let req = AttemptRequest {
        task: t,
        attempt: 1,
        seats: vec![Seat { node: 0, slot: 0 }],
        staging: dir.path().join("staging"),
        stop: rx,
        notes: crate::runner::exec::StepNotes::none(),
        resume: None,
    };
    let out = run(req, |_| Err::<Fake, _>("node cpu-0 is gone".to_string())).await;
    assert_eq!(
        out,
        Outcome::Lost {
            reason: "node cpu-0 is gone".into()
        }
    );
}

#[tokio::test]
async fn a_missing_output_or_a_failed_collection_fails_the_attempt() {
    let t = task(vec![step("main", json!({}))], &["a.json", "b.json"]);
    let fake = Fake {
        produced: vec!["a.json".into()],
        ..Fake::default()
    };
    let (out, log) = run_with(t.clone(), fake, false).await;
    assert_eq!(
        failed(&out).0,
        "declared output \"b.json\" was not produced (not found)"
    );
    assert_eq!(log.last().map(String::as_str), Some("release"));

    let fake = Fake {
        collect_fails: true,
        usage: Usage {
            peak_rss_kb: 9,
            checkpoint_bytes: None,
            last_exit_code: Some(0),
        },
        ..Fake::default()
    };
    let (out, _) = run_with(t, fake, false).await;
    let (error, m) = failed(&out);
    assert_eq!(error, "cannot collect");
    assert_eq!((m.exit_code, m.peak_rss_kb), (None, 0));
}
