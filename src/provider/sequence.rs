//! One attempt of one task, whatever runs it: the steps in order, each tried
//! `retries + 1` times; a background step started, its health check awaited,
//! and the step kept running until the attempt ends; at the end the
//! background steps stopped (with less patience when the run is being
//! stopped), the logs and measurements collected, the declared outputs
//! checked, and the outcome decided the same way for every provider.
//!
//! A provider only moves steps: its `StepTransport` starts one, waits for it
//! (its timeout and the stop signal included, since each provider stops a
//! step its own way), waits for a health check, stops steps, and collects
//! what the attempt left. The messages a user reads about a step ("exited
//! with code 3", "timed out after 5 s") are worded here, once.

use std::future::Future;
use std::time::Instant;

use tokio::sync::watch;

use crate::runner::exec::{AttemptRequest, Measured, Outcome};
use crate::tasks::{Health, Step};

/// How a started foreground step ended.
#[derive(Debug, Clone, PartialEq)]
pub enum StepEnd {
    /// It exited with this code (0: it succeeded).
    Exited(i32),
    /// It ran past its `timeout_seconds` and was stopped.
    TimedOut,
    /// Another failure, worded by the transport; it counts as a try.
    Failed(String),
    /// Its node went away: the attempt ends `Outcome::Lost`.
    Lost(String),
    /// The run is being stopped; the step may still run (the sequencer
    /// stops it with the background steps).
    Stopped,
}

/// How the wait for a background step's health check ended. Whatever it
/// is, the step itself is left running: the sequencer stops it.
#[derive(Debug, Clone, PartialEq)]
pub enum HealthEnd {
    Healthy,
    /// The step exited before its check passed.
    ExitedEarly,
    /// The check did not pass within its timeout.
    NotHealthy,
    /// Another failure, worded by the transport; it counts as a try.
    Failed(String),
    Lost(String),
    Stopped,
}

/// Why a step could not be started. The attempt ends there, without
/// another try.
#[derive(Debug, Clone, PartialEq)]
pub enum StartError {
    Failed(String),
    Lost(String),
}

/// A background step's health check, its URL expanded from the step's
/// environment.
#[derive(Debug, Clone, PartialEq)]
pub struct Check<'a> {
    pub url: Option<String>,
    pub command: Option<&'a str>,
    pub timeout_seconds: u64,
    pub interval_seconds: f64,
}

impl<'a> Check<'a> {
    pub fn new(h: &'a Health, env: &[(String, String)]) -> Check<'a> {
        Check {
            url: h.http.as_ref().map(|u| expand_vars(u, env)),
            command: h.command.as_deref(),
            timeout_seconds: h.timeout_seconds,
            interval_seconds: h.interval_seconds,
        }
    }

    /// What is checked, for messages.
    pub fn what(&self) -> &str {
        self.url.as_deref().or(self.command).unwrap_or_default()
    }
}

/// A started step the sequencer still has to stop.
pub struct Started<S> {
    pub step: S,
    /// Its health check passed: a background step that served the attempt
    /// (not a failed try, nor a step caught by the stop signal).
    pub healthy: bool,
}

/// What the transport measured over the attempt's steps.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub peak_rss_kb: u64,
    /// The exit code of the last foreground step that ended (124 when it
    /// timed out).
    pub last_exit_code: Option<i32>,
}

/// How a provider runs the steps of one attempt. One value per attempt:
/// it knows the attempt's nodes (one per rank), its staging folder and
/// whatever it has to remember between steps.
pub trait StepTransport: Send {
    /// A started step.
    type Step: Send;

    /// The environment of the task on rank `rank`, before a step's own.
    fn env(&self, rank: usize) -> &[(String, String)];

    /// Start try `try_no` (1-based) of step `index` on its rank, with its
    /// whole environment.
    fn start(
        &mut self,
        index: usize,
        step: &Step,
        try_no: u32,
        env: &[(String, String)],
    ) -> impl Future<Output = Result<Self::Step, StartError>> + Send;

    /// Wait for a foreground step to end: its exit, its timeout, or the
    /// stop signal.
    fn wait(
        &mut self,
        started: &mut Self::Step,
        step: &Step,
        stop: &mut watch::Receiver<bool>,
    ) -> impl Future<Output = StepEnd> + Send;

    /// Wait until a background step passes its health check.
    fn wait_healthy(
        &mut self,
        started: &mut Self::Step,
        step: &Step,
        check: &Check<'_>,
        env: &[(String, String)],
        stop: &mut watch::Receiver<bool>,
    ) -> impl Future<Output = HealthEnd> + Send;

    /// Stop these steps (the ones that still run) and wait for them;
    /// `cancelled`: the run is being stopped, so with less patience.
    fn stop(
        &mut self,
        steps: Vec<Started<Self::Step>>,
        cancelled: bool,
    ) -> impl Future<Output = ()> + Send;

    /// A node of the attempt that went away meanwhile, with the reason: a
    /// step that failed then was the node's fault.
    fn node_gone(&self) -> Option<String>;

    /// Bring the attempt's logs into the staging folder, and say what the
    /// steps used. Err: the message of the attempt's failure.
    fn collect(&mut self) -> impl Future<Output = Result<Usage, String>> + Send;

    /// Make the declared output `path` present in the staging folder.
    /// Err: it is missing, with the detail when the transport knows one.
    fn output(&mut self, path: &str) -> Result<(), Option<String>>;

    /// Give back what the attempt held on its nodes (after its outputs
    /// were taken).
    fn release(&mut self);
}

/// Why the steps stopped before the last one succeeded.
enum Verdict {
    Failed(String),
    Lost(String),
    Stopped,
}

/// Run one attempt: `open` makes the transport for it (Err: a node of the
/// attempt is unusable, so the attempt is lost).
pub async fn run<T, F>(mut req: AttemptRequest, open: F) -> Outcome
where
    T: StepTransport,
    F: FnOnce(&AttemptRequest) -> Result<T, String>,
{
    let started = Instant::now();
    let measured = |u: Usage| Measured {
        exit_code: u.last_exit_code,
        wall_seconds: started.elapsed().as_secs_f64(),
        peak_rss_kb: u.peak_rss_kb,
    };
    let mut t = match open(&req) {
        Ok(t) => t,
        Err(reason) => return Outcome::Lost { reason },
    };
    if let Err(e) = std::fs::create_dir_all(&req.staging) {
        return Outcome::Failed {
            error: format!("cannot create {}: {e}", req.staging.display()),
            measured: measured(Usage::default()),
        };
    }
    let task = req.task.clone();
    let mut running = Vec::new();
    let mut verdict = None;
    for (index, step) in task.steps.iter().enumerate() {
        verdict = run_step(&mut t, index, step, &mut req.stop, &mut running).await;
        if verdict.is_some() {
            break;
        }
    }
    if !running.is_empty() {
        let cancelled = matches!(verdict, Some(Verdict::Stopped));
        t.stop(running, cancelled).await;
    }
    // a failure on one node while another went away: the node's fault
    if let Some(Verdict::Failed(_)) = verdict {
        if let Some(reason) = t.node_gone() {
            verdict = Some(Verdict::Lost(reason));
        }
    }
    let mut error = match verdict {
        Some(Verdict::Stopped) => return Outcome::Cancelled,
        Some(Verdict::Lost(reason)) => return Outcome::Lost { reason },
        Some(Verdict::Failed(e)) => Some(e),
        None => None,
    };
    let usage = match t.collect().await {
        Ok(u) => u,
        Err(error) => {
            return Outcome::Failed {
                error,
                measured: measured(Usage::default()),
            }
        }
    };
    if error.is_none() {
        for o in &task.outputs {
            if let Err(detail) = t.output(o) {
                let detail = detail.map(|d| format!(" ({d})")).unwrap_or_default();
                error = Some(format!("declared output \"{o}\" was not produced{detail}"));
                break;
            }
        }
    }
    t.release();
    match error {
        None => Outcome::Succeeded(measured(Usage {
            last_exit_code: usage.last_exit_code.or(Some(0)),
            ..usage
        })),
        Some(error) => Outcome::Failed {
            error,
            measured: measured(usage),
        },
    }
}

/// Try `step` until it succeeds (None) or the attempt ends (why). A
/// background step that passed its health check joins `running`; so does a
/// step still running when the attempt ends.
async fn run_step<T: StepTransport>(
    t: &mut T,
    index: usize,
    step: &Step,
    stop: &mut watch::Receiver<bool>,
    running: &mut Vec<Started<T::Step>>,
) -> Option<Verdict> {
    let mut env = t.env(step.node as usize).to_vec();
    env.extend(step.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.push(("INFRA_STEP".into(), step.name.clone()));
    let mut try_no = 1;
    loop {
        let mut s = match t.start(index, step, try_no, &env).await {
            Ok(s) => s,
            Err(StartError::Failed(e)) => return Some(Verdict::Failed(e)),
            Err(StartError::Lost(r)) => return Some(Verdict::Lost(r)),
        };
        let v = if step.background {
            let check = step.health.as_ref().map(|h| Check::new(h, &env));
            let end = match &check {
                None => HealthEnd::Healthy,
                Some(c) => t.wait_healthy(&mut s, step, c, &env, stop).await,
            };
            let Some(v) = health_verdict(step, check.as_ref(), end) else {
                running.push(Started {
                    step: s,
                    healthy: true,
                });
                return None;
            };
            v
        } else {
            // no verdict: it succeeded
            step_verdict(step, t.wait(&mut s, step, stop).await)?
        };
        let retry = matches!(v, Verdict::Failed(_)) && try_no <= step.retries;
        if step.background || matches!(v, Verdict::Stopped) {
            // it may still run: stopped now before the next try, or at the
            // end of the attempt with the others
            let s = Started {
                step: s,
                healthy: false,
            };
            if retry {
                t.stop(vec![s], false).await;
            } else {
                running.push(s);
            }
        }
        if !retry {
            return Some(v);
        }
        try_no += 1;
    }
}

/// What the end of a foreground step means: None when it succeeded.
fn step_verdict(step: &Step, end: StepEnd) -> Option<Verdict> {
    let name = &step.name;
    Some(match end {
        StepEnd::Exited(0) => return None,
        StepEnd::Exited(code) => {
            Verdict::Failed(format!("step \"{name}\" exited with code {code}"))
        }
        StepEnd::TimedOut => Verdict::Failed(format!(
            "step \"{name}\" timed out after {} s",
            step.timeout_seconds.unwrap_or(0)
        )),
        StepEnd::Failed(e) => Verdict::Failed(e),
        StepEnd::Lost(r) => Verdict::Lost(r),
        StepEnd::Stopped => Verdict::Stopped,
    })
}

/// What the end of a health check means: None when the step is healthy.
fn health_verdict(step: &Step, check: Option<&Check>, end: HealthEnd) -> Option<Verdict> {
    let name = &step.name;
    Some(match end {
        HealthEnd::Healthy => return None,
        HealthEnd::ExitedEarly => Verdict::Failed(format!(
            "background step \"{name}\" exited before it became healthy"
        )),
        HealthEnd::NotHealthy => Verdict::Failed(format!(
            "background step \"{name}\" was not healthy after {} s ({})",
            check.map_or(0, |c| c.timeout_seconds),
            check.map(Check::what).unwrap_or_default()
        )),
        HealthEnd::Failed(e) => Verdict::Failed(e),
        HealthEnd::Lost(r) => Verdict::Lost(r),
        HealthEnd::Stopped => Verdict::Stopped,
    })
}

/// Resolves once the run is being stopped (never, when the sender is gone
/// without saying so).
pub async fn wait_stop(stop: &mut watch::Receiver<bool>) {
    loop {
        if *stop.borrow() {
            return;
        }
        if stop.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// `${VAR}` from `env`; unknown names stay as written.
pub fn expand_vars(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        match after.find('}') {
            Some(j) => {
                let name = &after[..j];
                match env.iter().rev().find(|(k, _)| k == name) {
                    Some((_, v)) => out.push_str(v),
                    None => out.push_str(&rest[i..i + 3 + j]),
                }
                rest = &after[j + 1..];
            }
            None => {
                out.push_str(&rest[i..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
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
                last_exit_code: Some(0),
            },
            ..Fake::default()
        };
        let (out, _) = run_with(t, fake, false).await;
        let (error, m) = failed(&out);
        assert_eq!(error, "cannot collect");
        assert_eq!((m.exit_code, m.peak_rss_kb), (None, 0));
    }
}
