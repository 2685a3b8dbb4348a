//! Progress of a run on stderr: an indicatif bar on a terminal, plain lines
//! otherwise. The runner only emits events; this draws them.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::runner::run::RunEvent;

/// What the ETA and the money are computed from (the command layer knows
/// the plan and the nodes).
#[derive(Debug, Clone, Default)]
pub struct Outlook {
    /// Each task's estimated run time (seconds), by id; tasks without one
    /// count as the mean of those that ended.
    pub estimates: HashMap<String, f64>,
    /// What the nodes cost per hour, and what was spent before this run.
    pub hourly_usd: f64,
    pub spent_before_usd: f64,
    /// Without a terminal, a progress line at least this often.
    pub heartbeat: Duration,
}

/// The counts the lines and the heartbeat show.
#[derive(Debug, Default)]
struct Counts {
    total: usize,
    done: usize,
    failed: usize,
    slots: usize,
    /// Running tasks and when they were dispatched.
    running: HashMap<String, Instant>,
    /// Tasks not ended yet (queued or running).
    open: Vec<String>,
    /// Sum and count of the wall times of tasks that ended.
    ended_wall: (f64, usize),
    /// Of the tasks that ended and had an estimate: their wall times and
    /// their estimates, summed (how far off the estimates are).
    calibration: (f64, f64),
    last_line: Option<Instant>,
}

pub struct Reporter {
    bar: Option<ProgressBar>,
    start: Instant,
    outlook: Outlook,
    counts: Arc<Mutex<Counts>>,
    stop: Arc<AtomicBool>,
}

impl Reporter {
    /// `bar`: draw a bar (stderr is a terminal and not CI: the command
    /// layer decides), else print plain lines.
    pub fn new(bar: bool) -> Reporter {
        Reporter::with_outlook(bar, Outlook::default())
    }

    /// With the plan's estimates and the nodes' price: the ETA and the
    /// money in the bar and the lines; without a terminal a progress line
    /// at least every `outlook.heartbeat`.
    pub fn with_outlook(bar: bool, outlook: Outlook) -> Reporter {
        let bar = bar.then(|| {
            let b = ProgressBar::new(0);
            b.set_style(
                ProgressStyle::with_template(
                    "{elapsed_precise} [{bar:30.cyan/blue}] {pos}/{len} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b.enable_steady_tick(Duration::from_millis(200));
            b
        });
        let r = Reporter {
            bar,
            start: Instant::now(),
            outlook,
            counts: Arc::new(Mutex::new(Counts::default())),
            stop: Arc::new(AtomicBool::new(false)),
        };
        if r.bar.is_none() && !r.outlook.heartbeat.is_zero() {
            r.spawn_heartbeat();
        }
        r
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A line when nothing was said for `heartbeat` (a long quiet run in a
    /// log file still shows it is alive, how far, the money and the ETA).
    fn spawn_heartbeat(&self) {
        let counts = self.counts.clone();
        let stop = self.stop.clone();
        let outlook = self.outlook.clone();
        let start = self.start;
        let every = self.outlook.heartbeat;
        let _ = std::thread::Builder::new()
            .name("progress".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(200).min(every));
                    let mut c = counts.lock().unwrap_or_else(|e| e.into_inner());
                    let quiet = c.last_line.map_or(start.elapsed(), |t| t.elapsed());
                    if c.total == 0 || quiet < every || stop.load(Ordering::Relaxed) {
                        continue;
                    }
                    let text = status_text(&c, &outlook, start);
                    let _ = writeln!(
                        std::io::stderr(),
                        "[{:>7.1}s] progress {text}",
                        start.elapsed().as_secs_f64()
                    );
                    c.last_line = Some(Instant::now());
                }
            });
    }

    fn line(&self, s: &str) {
        match &self.bar {
            Some(b) => b.println(s),
            None => {
                let _ = writeln!(
                    std::io::stderr(),
                    "[{:>7.1}s] {s}",
                    self.start.elapsed().as_secs_f64()
                );
                self.counts().last_line = Some(Instant::now());
            }
        }
    }

    fn refresh(&self) {
        if let Some(b) = &self.bar {
            let c = self.counts();
            b.set_length(c.total as u64);
            b.set_position((c.done + c.failed) as u64);
            b.set_message(status_text(&c, &self.outlook, self.start));
        }
    }

    /// The bar's message and the heartbeat's line, as they are now.
    pub fn status_line(&self) -> String {
        status_text(&self.counts(), &self.outlook, self.start)
    }

    pub fn event(&mut self, e: &RunEvent) {
        let quiet = self.bar.is_none() && self.counts().total > 200;
        match e {
            RunEvent::Start {
                selected,
                already_done,
                to_run,
                slots,
            } => {
                {
                    let mut c = self.counts();
                    c.total = *to_run;
                    c.slots = *slots;
                }
                self.line(&format_start(*selected, *already_done, *to_run, *slots));
            }
            RunEvent::Dispatched {
                task,
                attempt,
                nodes,
            } => {
                self.started(task);
                if !quiet {
                    self.line(&format!(
                        "start  {task} on {}{}",
                        nodes.join("+"),
                        if *attempt > 1 {
                            format!(" (attempt {attempt})")
                        } else {
                            String::new()
                        }
                    ));
                }
            }
            RunEvent::Adopted {
                task,
                attempt,
                nodes,
            } => {
                self.started(task);
                self.line(&format!(
                    "adopt  {task} on {} (attempt {attempt}, still running from an earlier controller)",
                    nodes.join("+")
                ));
            }
            RunEvent::Succeeded {
                task, wall_seconds, ..
            } => {
                let (n, total) = {
                    let mut c = self.counts();
                    c.running.remove(task);
                    c.open.retain(|t| t != task);
                    c.done += 1;
                    c.ended_wall.0 += wall_seconds;
                    c.ended_wall.1 += 1;
                    if let Some(est) = self.outlook.estimates.get(task).filter(|e| **e > 0.0) {
                        c.calibration.0 += wall_seconds;
                        c.calibration.1 += est;
                    }
                    (c.done + c.failed, c.total)
                };
                // a long run without a terminal: every 100th, and the
                // heartbeat in between
                if !quiet || n.is_multiple_of(100) {
                    self.line(&format!(
                        "ok     {task} ({wall_seconds:.1}s) [{n}/{total}]"
                    ));
                }
            }
            RunEvent::Retrying {
                task,
                attempt,
                error,
                delay_seconds,
            } => {
                self.counts().running.remove(task);
                self.line(&format!(
                    "retry  {task}: attempt {attempt} failed: {error}; next in {delay_seconds:.0}s"
                ));
            }
            RunEvent::Failed {
                task,
                attempt,
                error,
            } => {
                {
                    let mut c = self.counts();
                    c.running.remove(task);
                    c.open.retain(|t| t != task);
                    c.failed += 1;
                }
                self.line(&format!(
                    "FAILED {task} after {attempt} attempt(s): {error}"
                ));
            }
            RunEvent::Requeued { task, reason } => {
                self.counts().running.remove(task);
                self.line(&format!("requeued {task}: {reason}"));
            }
            RunEvent::Stopping {
                reason,
                cancel_running,
            } => self.line(&format!(
                "stopping: {reason}; {}",
                if *cancel_running {
                    "running tasks are being stopped"
                } else {
                    "nothing more starts, running tasks finish"
                }
            )),
            RunEvent::NodeLost { node, reason } => {
                self.line(&format!("node {node} lost: {reason}"))
            }
            RunEvent::Rerun { task, reason } => self.line(&format!("rerun  {task}: {reason}")),
            RunEvent::NodeAdded { node, group } => {
                self.line(&format!("node {node} joined group {group}"))
            }
            RunEvent::ResultsUnsaved { path, error } => self.line(&format!(
                "cannot save results in {path}: {error}; tasks whose results cannot be saved fail (said once)"
            )),
        }
        self.refresh();
    }

    fn started(&self, task: &str) {
        let mut c = self.counts();
        c.running.insert(task.to_string(), Instant::now());
        if !c.open.iter().any(|t| t == task) {
            c.open.push(task.to_string());
        }
    }

    /// Tasks the run will dispatch (the queue), for the ETA: those not
    /// seen yet count from here.
    pub fn queued(&mut self, tasks: impl IntoIterator<Item = String>) {
        let mut c = self.counts();
        for t in tasks {
            if !c.open.contains(&t) {
                c.open.push(t);
            }
        }
    }

    pub fn finish(&self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// `ok 12 failed 1 running 4 · $3.21 spent · ETA 1h02m`.
fn status_text(c: &Counts, o: &Outlook, start: Instant) -> String {
    let mut s = format!(
        "ok {} failed {} running {}",
        c.done,
        c.failed,
        c.running.len()
    );
    if o.hourly_usd > 0.0 || o.spent_before_usd > 0.0 {
        let spent = o.spent_before_usd + o.hourly_usd * start.elapsed().as_secs_f64() / 3600.0;
        s.push_str(&format!(" · ${:.2} spent", spent + 0.0));
    }
    s.push_str(&format!(
        " · ETA {}",
        eta(c, o).map_or("?".to_string(), human_duration)
    ));
    s
}

/// Seconds until the last task ends, from the plan's estimates (scaled by
/// how the tasks that ended compared with theirs; else the mean run time of
/// the tasks that ended): what is left of each running task and the whole
/// of each queued one, spread over the slots, and never less than what is
/// left of the longest one (a task does not spread over idle slots). None
/// while nothing is known.
fn eta(c: &Counts, o: &Outlook) -> Option<f64> {
    if c.open.is_empty() {
        return (c.total > 0).then_some(0.0);
    }
    let mean = (c.ended_wall.1 > 0).then(|| c.ended_wall.0 / c.ended_wall.1 as f64);
    let scale = if c.calibration.1 > 0.0 {
        c.calibration.0 / c.calibration.1
    } else {
        1.0
    };
    let mut work = 0.0;
    let mut longest: f64 = 0.0;
    for t in &c.open {
        let est = o.estimates.get(t).map(|e| e * scale).or(mean)?;
        let done = c
            .running
            .get(t)
            .map_or(0.0, |at| at.elapsed().as_secs_f64());
        // a task past its estimate has at least a little left
        let left = (est - done).max(est.min(1.0));
        work += left;
        longest = longest.max(left);
    }
    Some((work / c.slots.max(1) as f64).max(longest))
}

impl Default for Reporter {
    fn default() -> Self {
        Reporter::new(false)
    }
}

pub fn format_start(selected: usize, done: usize, to_run: usize, slots: usize) -> String {
    if done > 0 {
        format!(
            "{selected} task(s) selected, {done} already done, {to_run} to run on {slots} slot(s)"
        )
    } else {
        format!("{to_run} task(s) to run on {slots} slot(s)")
    }
}

pub fn human_duration(secs: f64) -> String {
    let s = secs.round() as u64;
    if s < 60 {
        format!("{}s", s)
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_eta_comes_from_the_estimates_and_the_slots_then_from_what_ended() {
        let mut c = Counts {
            total: 4,
            slots: 2,
            open: vec!["a".into(), "b".into(), "c".into(), "d".into()],
            ..Default::default()
        };
        let mut o = Outlook::default();
        // nothing known: no ETA, not "0s"
        assert_eq!(eta(&c, &o), None);
        o.estimates = [("a", 60.0), ("b", 60.0), ("c", 120.0), ("d", 120.0)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(eta(&c, &o), Some(180.0));
        // without estimates: the mean of what ended
        o.estimates.clear();
        c.ended_wall = (100.0, 2);
        assert_eq!(eta(&c, &o), Some(100.0));
        // estimates twice too long so far: halved
        o.estimates = [("a", 60.0), ("b", 60.0), ("c", 120.0), ("d", 120.0)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        c.calibration = (50.0, 100.0);
        assert_eq!(eta(&c, &o), Some(90.0));
        c.open.clear();
        assert_eq!(eta(&c, &o), Some(0.0));
    }

    #[test]
    fn the_eta_is_never_less_than_the_longest_task_left() {
        // one 10-minute task left on 16 slots: 10 minutes, not 37 s
        let c = Counts {
            total: 20,
            slots: 16,
            open: vec!["long".into()],
            ..Default::default()
        };
        let o = Outlook {
            estimates: [("long".to_string(), 600.0)].into_iter().collect(),
            ..Default::default()
        };
        assert_eq!(eta(&c, &o), Some(600.0));
    }

    #[test]
    fn the_status_shows_the_money_only_when_there_is_a_price() {
        let c = Counts {
            total: 1,
            slots: 1,
            open: vec!["a".into()],
            ..Default::default()
        };
        let mut o = Outlook {
            estimates: [("a".to_string(), 90.0)].into_iter().collect(),
            ..Default::default()
        };
        let t = status_text(&c, &o, Instant::now());
        assert_eq!(t, "ok 0 failed 0 running 0 · ETA 1m30s");
        o.spent_before_usd = 1.5;
        let t = status_text(&c, &o, Instant::now());
        assert_eq!(t, "ok 0 failed 0 running 0 · $1.50 spent · ETA 1m30s");
    }
}
