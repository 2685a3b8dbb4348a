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
    /// The size of the task's `$INFRA_CHECKPOINT_DIR` after its last step
    /// (None: not known).
    pub checkpoint_bytes: Option<u64>,
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

    /// What a later controller needs to find `started` again (journaled
    /// with the step).
    fn handle(&self, _started: &Self::Step) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// Follow a step an earlier controller started (its `handle` from the
    /// journal) as if this transport had started it; whether it still
    /// runs or ended meanwhile, `wait` tells. Err: it cannot be followed.
    fn adopt(
        &mut self,
        _index: usize,
        step: &Step,
        _try_no: u32,
        _handle: &serde_json::Value,
    ) -> impl Future<Output = Result<Self::Step, StartError>> + Send {
        let why = format!("step \"{}\" cannot be adopted here", step.name);
        async move { Err(StartError::Lost(why)) }
    }

    /// A step of an adopted attempt that had ended before (a failed try, a
    /// foreground step that succeeded before the next one started): what
    /// it left is collected with the rest.
    fn adopted_ended(
        &mut self,
        _index: usize,
        _step: &Step,
        _try_no: u32,
        _handle: &serde_json::Value,
    ) {
    }
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
    let before = req.resume.as_ref().map(|r| r.elapsed).unwrap_or_default();
    let measured = |u: Usage| Measured {
        exit_code: u.last_exit_code,
        wall_seconds: (started.elapsed() + before).as_secs_f64(),
        peak_rss_kb: u.peak_rss_kb,
        checkpoint_bytes: u.checkpoint_bytes,
    };
    let mut t = match open(&req) {
        Ok(t) => t,
        Err(reason) => return Outcome::Lost { reason },
    };
    // (after `open`, which sees whether the attempt is adopted)
    let resume = req.resume.take();
    if let Err(e) = std::fs::create_dir_all(&req.staging) {
        return Outcome::Failed {
            error: format!("cannot create {}: {e}", req.staging.display()),
            measured: measured(Usage::default()),
        };
    }
    let task = req.task.clone();
    let mut running = Vec::new();
    let mut verdict = None;
    let (first, mut adopt) = match resume {
        Some(r) => resume_steps(&mut t, &task.steps, &r.steps, &mut running, &mut verdict).await,
        None => (0, None),
    };
    if verdict.is_none() {
        for (index, step) in task.steps.iter().enumerate().skip(first) {
            let a = if index == first { adopt.take() } else { None };
            verdict = run_step(&mut t, index, step, &mut req, &mut running, a).await;
            if verdict.is_some() {
                break;
            }
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
    // a step's failure ends with the last thing the task said on stderr
    if let Some(e) = error.as_mut() {
        super::live_log::append_last_stderr(e, &req.staging);
    }
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

/// An adopted attempt: the steps before the last one its journal knows
/// had ended (the foreground ones succeeded, or the next would not have
/// started) or, for background steps, still run and are adopted as
/// healthy. Returns where the sequence goes on: the last known step's
/// index and its try and handle, to adopt rather than start.
async fn resume_steps<T: StepTransport>(
    t: &mut T,
    steps: &[Step],
    known: &[(usize, u32, serde_json::Value)],
    running: &mut Vec<Started<T::Step>>,
    verdict: &mut Option<Verdict>,
) -> (usize, Option<(u32, serde_json::Value)>) {
    let Some(last) = known.iter().map(|k| k.0).max() else {
        return (0, None);
    };
    let mut at_last = None;
    for (index, step) in steps.iter().enumerate().take(last + 1) {
        let tries: Vec<&(usize, u32, serde_json::Value)> =
            known.iter().filter(|k| k.0 == index).collect();
        let Some(latest) = tries.iter().max_by_key(|k| k.1) else {
            continue;
        };
        for k in tries.iter().filter(|k| k.1 != latest.1) {
            t.adopted_ended(index, step, k.1, &k.2);
        }
        if index == last {
            at_last = Some((latest.1, latest.2.clone()));
        } else if step.background {
            match t.adopt(index, step, latest.1, &latest.2).await {
                Ok(s) => running.push(Started {
                    step: s,
                    healthy: true,
                }),
                Err(StartError::Failed(e)) => {
                    *verdict = Some(Verdict::Failed(e));
                    break;
                }
                Err(StartError::Lost(r)) => {
                    *verdict = Some(Verdict::Lost(r));
                    break;
                }
            }
        } else {
            t.adopted_ended(index, step, latest.1, &latest.2);
        }
    }
    (last, at_last)
}

/// Try `step` until it succeeds (None) or the attempt ends (why). A
/// background step that passed its health check joins `running`; so does a
/// step still running when the attempt ends. `adopt`: the try an earlier
/// controller started, followed instead of started.
async fn run_step<T: StepTransport>(
    t: &mut T,
    index: usize,
    step: &Step,
    req: &mut AttemptRequest,
    running: &mut Vec<Started<T::Step>>,
    mut adopt: Option<(u32, serde_json::Value)>,
) -> Option<Verdict> {
    let stop = &mut req.stop;
    let mut env = t.env(step.node as usize).to_vec();
    env.extend(step.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.push(("INFRA_STEP".into(), step.name.clone()));
    let mut try_no = adopt.as_ref().map_or(1, |a| a.0);
    loop {
        let started = match adopt.take() {
            Some((n, handle)) => t.adopt(index, step, n, &handle).await,
            None => {
                let r = t.start(index, step, try_no, &env).await;
                if let Ok(s) = &r {
                    req.notes.send(index, try_no, t.handle(s));
                }
                r
            }
        };
        let mut s = match started {
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
mod tests;
