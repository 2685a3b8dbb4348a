//! Progress of a run on stderr: an indicatif bar on a terminal, plain lines
//! otherwise. The runner only emits events; this draws them.

use std::io::Write;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::runner::run::RunEvent;

pub struct Reporter {
    bar: Option<ProgressBar>,
    start: Instant,
    total: usize,
    done: usize,
    failed: usize,
    running: usize,
}

impl Reporter {
    /// `bar`: draw a bar (stderr is a terminal and not CI: the command
    /// layer decides), else print plain lines.
    pub fn new(bar: bool) -> Reporter {
        let tty = bar;
        let bar = tty.then(|| {
            let b = ProgressBar::new(0);
            b.set_style(
                ProgressStyle::with_template(
                    "{elapsed_precise} [{bar:30.cyan/blue}] {pos}/{len} {msg} ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b.enable_steady_tick(Duration::from_millis(200));
            b
        });
        Reporter {
            bar,
            start: Instant::now(),
            total: 0,
            done: 0,
            failed: 0,
            running: 0,
        }
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
            }
        }
    }

    fn refresh(&self) {
        if let Some(b) = &self.bar {
            b.set_length(self.total as u64);
            b.set_position((self.done + self.failed) as u64);
            b.set_message(format!(
                "ok {} failed {} running {}",
                self.done, self.failed, self.running
            ));
        }
    }

    pub fn event(&mut self, e: &RunEvent) {
        match e {
            RunEvent::Start {
                selected,
                already_done,
                to_run,
                slots,
            } => {
                self.total = *to_run;
                self.line(&format_start(*selected, *already_done, *to_run, *slots));
            }
            RunEvent::Dispatched {
                task,
                attempt,
                nodes,
            } => {
                self.running += 1;
                if self.bar.is_none() && self.total <= 200 {
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
                self.running += 1;
                self.line(&format!(
                    "adopt  {task} on {} (attempt {attempt}, still running from an earlier controller)",
                    nodes.join("+")
                ));
            }
            RunEvent::Succeeded {
                task, wall_seconds, ..
            } => {
                self.running = self.running.saturating_sub(1);
                self.done += 1;
                if self.bar.is_some() || self.total <= 200 || self.done.is_multiple_of(100) {
                    self.line(&format!(
                        "ok     {task} ({wall_seconds:.1}s) [{}/{}]",
                        self.done + self.failed,
                        self.total
                    ));
                }
            }
            RunEvent::Retrying {
                task,
                attempt,
                error,
                delay_seconds,
            } => {
                self.running = self.running.saturating_sub(1);
                self.line(&format!(
                    "retry  {task}: attempt {attempt} failed: {error}; next in {delay_seconds:.0}s"
                ));
            }
            RunEvent::Failed {
                task,
                attempt,
                error,
            } => {
                self.running = self.running.saturating_sub(1);
                self.failed += 1;
                self.line(&format!(
                    "FAILED {task} after {attempt} attempt(s): {error}"
                ));
            }
            RunEvent::Requeued { task, reason } => {
                self.running = self.running.saturating_sub(1);
                self.line(&format!("requeued {task}: {reason}"));
            }
            RunEvent::Stopping { reason } => self.line(&format!(
                "stopping: {reason}; running tasks are being stopped"
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

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
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
