//! The append-only journal (`.infra/<phase>/journal.jsonl`): one JSON object
//! per line, fsync'd (group commit), versioned. The state of a campaign is rebuilt from it;
//! nothing else is trusted after a crash.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::tasks::fingerprint::Fingerprint;

mod repair;

pub use repair::{repair, Repaired};

pub const JOURNAL_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Entry {
    RunStarted {
        run: u32,
        pid: u32,
        provider: String,
        selected: usize,
    },
    Dispatched {
        task: String,
        key: String,
        attempt: u32,
        nodes: Vec<String>,
        /// The slot on each node (journals before adoption lack them).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        slots: Vec<u32>,
    },
    /// A step of an attempt was started: what a later controller needs to
    /// find it again (`handle`, provider-specific: an SSM command id and
    /// instance; a local pid and its start time).
    StepStarted {
        task: String,
        key: String,
        attempt: u32,
        /// The step's index in the task and its try (1-based).
        step: usize,
        #[serde(rename = "try")]
        try_no: u32,
        handle: serde_json::Value,
    },
    /// A controller that started while the attempt ran (after a crash, a
    /// `kill -9`, on another machine) took it over instead of stopping it:
    /// it goes on as the same attempt.
    Adopted {
        task: String,
        key: String,
        attempt: u32,
    },
    AttemptFailed {
        task: String,
        key: String,
        attempt: u32,
        error: String,
        retry_in_seconds: f64,
    },
    Succeeded {
        task: String,
        key: String,
        attempt: u32,
        wall_seconds: f64,
        cost_usd: f64,
        /// The definition that ran (journals before `--changed` lack it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        definition: Option<Fingerprint>,
    },
    Failed {
        task: String,
        key: String,
        attempt: u32,
        error: String,
    },
    /// The attempt did not finish for a reason that is not the task's fault
    /// (Ctrl-C, a crash of `infra run`, a node that disappeared); it runs again.
    Requeued {
        task: String,
        key: String,
        attempt: u32,
        reason: String,
    },
    /// A completed task runs again deliberately (`--rerun`, `--changed`,
    /// its result folder gone): its success no longer counts, it gets a
    /// fresh attempt budget, and its attempts go on numbering.
    Rerun {
        task: String,
        key: String,
        reason: String,
    },
    RunFinished {
        run: u32,
        succeeded: usize,
        failed: usize,
        pending: usize,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub v: u32,
    pub ts: String,
    #[serde(flatten)]
    pub entry: Entry,
}

#[derive(Debug, Error)]
pub enum JournalError {
    #[error("cannot use journal {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("journal {path} line {line} is damaged{}: {message}\n  (hint: `infra journal repair {phase}` keeps every valid line, lists the dropped ones and keeps a copy of the file)", if *more > 0 { format!(" (and {more} more line(s))") } else { String::new() })]
    Corrupt {
        path: PathBuf,
        line: usize,
        message: String,
        /// Damaged lines after this one.
        more: usize,
        phase: String,
    },
    #[error("journal {path} line {line} has version {found}, this infra understands {JOURNAL_VERSION}\n  (hint: use the infra version that wrote it)")]
    Version {
        path: PathBuf,
        line: usize,
        found: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Running,
    Succeeded,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskState {
    pub id: String,
    pub status: Status,
    /// Attempts started, all runs together.
    pub attempts: u32,
    /// Attempts that failed through the task's own fault.
    pub failures: u32,
    pub last_error: Option<String>,
    pub wall_seconds: Option<f64>,
    /// What its successes cost, all runs together.
    pub cost_usd: Option<f64>,
    /// When it last succeeded (the journal line's time).
    #[serde(skip)]
    pub succeeded_at: Option<String>,
    /// The definition of its last success, when the journal has it.
    #[serde(skip)]
    pub ran: Option<Fingerprint>,
    /// The attempt that runs (or ran when its controller was lost), with
    /// what a controller needs to adopt it.
    #[serde(skip)]
    pub in_flight: Option<InFlight>,
}

/// An attempt whose end the journal does not know yet.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct InFlight {
    pub attempt: u32,
    pub nodes: Vec<String>,
    pub slots: Vec<u32>,
    /// When it was dispatched (the journal line's time).
    pub dispatched: String,
    /// Its started steps, in order.
    pub steps: Vec<StepHandle>,
}

impl InFlight {
    /// Whether a controller can take the attempt over where it runs: a
    /// step of it started, and its seats are known.
    pub fn adoptable(&self) -> bool {
        !self.steps.is_empty() && self.slots.len() == self.nodes.len()
    }
}

/// The attempts of these tasks (by content key) that a new controller
/// adopts: (task id, attempt). Whatever else an earlier run left is
/// stopped.
pub fn adoptable(state: &State, keys: &std::collections::HashSet<String>) -> Vec<(String, u32)> {
    let mut out: Vec<(String, u32)> = state
        .tasks
        .iter()
        .filter(|(k, _)| keys.contains(*k))
        .filter_map(|(_, t)| {
            let f = t.in_flight.as_ref().filter(|f| f.adoptable())?;
            Some((t.id.clone(), f.attempt))
        })
        .collect();
    out.sort();
    out
}

/// A started step, as `StepStarted` recorded it.
#[derive(Debug, Clone, PartialEq)]
pub struct StepHandle {
    pub step: usize,
    pub try_no: u32,
    pub handle: serde_json::Value,
}

/// What the journal says, by content key.
#[derive(Debug, Default, Clone)]
pub struct State {
    pub tasks: HashMap<String, TaskState>,
    pub runs: u32,
    pub records: usize,
    pub last_stop: Option<String>,
}

impl State {
    pub fn apply(&mut self, e: &Entry) {
        self.apply_at(e, "")
    }

    /// Apply `e`, journaled at `ts`.
    pub fn apply_at(&mut self, e: &Entry, ts: &str) {
        self.records += 1;
        let blank = |id: &str| TaskState {
            id: id.to_string(),
            status: Status::Pending,
            attempts: 0,
            failures: 0,
            last_error: None,
            wall_seconds: None,
            cost_usd: None,
            succeeded_at: None,
            ran: None,
            in_flight: None,
        };
        match e {
            Entry::RunStarted { run, .. } => {
                self.runs = self.runs.max(*run);
                // whatever was running when the last run died runs again
                for t in self.tasks.values_mut() {
                    if t.status == Status::Running {
                        t.status = Status::Pending;
                    }
                }
            }
            Entry::Dispatched {
                task,
                key,
                attempt,
                nodes,
                slots,
            } => {
                let t = self.tasks.entry(key.clone()).or_insert_with(|| blank(task));
                t.status = Status::Running;
                t.attempts = t.attempts.max(*attempt);
                t.in_flight = Some(InFlight {
                    attempt: *attempt,
                    nodes: nodes.clone(),
                    slots: slots.clone(),
                    dispatched: ts.to_string(),
                    steps: Vec::new(),
                });
            }
            Entry::StepStarted {
                task,
                key,
                attempt,
                step,
                try_no,
                handle,
            } => {
                let t = self.tasks.entry(key.clone()).or_insert_with(|| blank(task));
                if let Some(f) = t.in_flight.as_mut().filter(|f| f.attempt == *attempt) {
                    f.steps.push(StepHandle {
                        step: *step,
                        try_no: *try_no,
                        handle: handle.clone(),
                    });
                }
            }
            Entry::Adopted { task, key, attempt } => {
                let t = self.tasks.entry(key.clone()).or_insert_with(|| blank(task));
                if t.in_flight.as_ref().is_some_and(|f| f.attempt == *attempt) {
                    t.status = Status::Running;
                }
            }
            Entry::AttemptFailed {
                task, key, error, ..
            } => {
                let t = self.tasks.entry(key.clone()).or_insert_with(|| blank(task));
                t.in_flight = None;
                t.failures += 1;
                t.last_error = Some(error.clone());
                t.status = Status::Running;
            }
            Entry::Succeeded {
                task,
                key,
                wall_seconds,
                cost_usd,
                definition,
                ..
            } => {
                let t = self.tasks.entry(key.clone()).or_insert_with(|| blank(task));
                t.in_flight = None;
                t.status = Status::Succeeded;
                t.wall_seconds = Some(*wall_seconds);
                t.cost_usd = Some(t.cost_usd.unwrap_or(0.0) + *cost_usd);
                t.last_error = None;
                t.succeeded_at = Some(ts.to_string());
                t.ran = definition.clone();
            }
            Entry::Failed {
                task, key, error, ..
            } => {
                let t = self.tasks.entry(key.clone()).or_insert_with(|| blank(task));
                t.in_flight = None;
                t.status = Status::Failed;
                t.failures += 1;
                t.last_error = Some(error.clone());
            }
            Entry::Requeued { task, key, .. } => {
                let t = self.tasks.entry(key.clone()).or_insert_with(|| blank(task));
                t.in_flight = None;
                t.status = Status::Pending;
            }
            Entry::Rerun { task, key, .. } => {
                let t = self.tasks.entry(key.clone()).or_insert_with(|| blank(task));
                t.in_flight = None;
                t.status = Status::Pending;
                t.failures = 0;
                t.last_error = None;
            }
            Entry::RunFinished { reason, .. } => {
                self.last_stop = Some(reason.clone());
                for t in self.tasks.values_mut() {
                    // a run that ended knows how its attempts ended
                    t.in_flight = None;
                    if t.status == Status::Running {
                        t.status = Status::Pending;
                    }
                }
            }
        }
    }

    pub fn status_of(&self, key: &str) -> Status {
        self.tasks
            .get(key)
            .map(|t| t.status)
            .unwrap_or(Status::Pending)
    }
}

/// A line of the journal that holds no record this infra can read
/// (garbled, an unknown event, not UTF-8).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Damage {
    /// 1-based line number in the file.
    pub line: usize,
    pub message: String,
}

/// Everything a read of the journal found.
#[derive(Debug, Default)]
pub struct Scan {
    pub state: State,
    pub records: Vec<Record>,
    /// Damaged lines before the last one (the valid lines around them are read).
    pub damaged: Vec<Damage>,
    /// The last line, cut short by a crash mid-write (no newline, not a record).
    pub torn: Option<Damage>,
    /// Byte ranges of the valid lines, newline excluded.
    kept: Vec<std::ops::Range<usize>>,
}

/// Read every line that holds a record; damaged lines are listed, not
/// fatal. Only a line written by another journal version stops the read.
pub fn scan(bytes: &[u8], path: &Path) -> Result<Scan, JournalError> {
    let mut out = Scan::default();
    let ends_clean = bytes.is_empty() || bytes.ends_with(b"\n");
    let mut start = 0;
    let mut line_no = 0;
    while start < bytes.len() {
        line_no += 1;
        let end = bytes[start..]
            .iter()
            .position(|b| *b == b'\n')
            .map_or(bytes.len(), |i| start + i);
        let raw = &bytes[start..end];
        let last = end == bytes.len();
        let range = start..end;
        start = end + 1;
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let parsed = std::str::from_utf8(raw)
            .map_err(|e| format!("not UTF-8 text (byte {})", e.valid_up_to() + 1))
            .and_then(|line| serde_json::from_str::<Record>(line).map_err(|e| e.to_string()));
        match parsed {
            Ok(r) => {
                if r.v != JOURNAL_VERSION {
                    return Err(JournalError::Version {
                        path: path.into(),
                        line: line_no,
                        found: r.v,
                    });
                }
                out.state.apply_at(&r.entry, &r.ts);
                out.records.push(r);
                out.kept.push(range);
            }
            // torn by a crash mid-write
            Err(message) if last && !ends_clean => {
                out.torn = Some(Damage {
                    line: line_no,
                    message,
                })
            }
            Err(message) => out.damaged.push(Damage {
                line: line_no,
                message,
            }),
        }
    }
    Ok(out)
}

/// Parse journal text; a torn last line (no newline) is ignored, any other
/// damaged line is an error naming it (`infra journal repair` drops it).
pub fn parse(text: &str, path: &Path) -> Result<(State, Vec<Record>), JournalError> {
    strict(scan(text.as_bytes(), path)?, path)
}

fn strict(s: Scan, path: &Path) -> Result<(State, Vec<Record>), JournalError> {
    match s.damaged.first() {
        Some(d) => Err(JournalError::Corrupt {
            path: path.into(),
            line: d.line,
            message: d.message.clone(),
            more: s.damaged.len() - 1,
            phase: phase_of(path),
        }),
        None => Ok((s.state, s.records)),
    }
}

/// The phase a journal belongs to: `.infra/<phase>/journal.jsonl`.
fn phase_of(path: &Path) -> String {
    path.parent()
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "<phase>".into())
}

fn read_bytes(path: &Path) -> Result<Vec<u8>, JournalError> {
    match std::fs::read(path) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(JournalError::Io {
            path: path.into(),
            source,
        }),
    }
}

/// The journal's state; a damaged line is an error (see [`parse`]).
pub fn read(path: &Path) -> Result<(State, Vec<Record>), JournalError> {
    strict(scan(&read_bytes(path)?, path)?, path)
}

/// The journal's state from every valid line, and the damaged lines
/// (for `infra status`, which shows them instead of stopping).
pub fn read_lenient(path: &Path) -> Result<Scan, JournalError> {
    scan(&read_bytes(path)?, path)
}

pub struct Journal {
    file: File,
    path: PathBuf,
    syncer: Option<Syncer>,
}

/// The longest an outcome line waits to be made durable.
const SYNC_INTERVAL: Duration = Duration::from_millis(100);

/// Group commit: outcome lines are written at once (a killed process loses
/// nothing written) and made durable by a thread of their own, one
/// `fdatasync` covering every line written in the last `SYNC_INTERVAL`, so
/// the run loop never waits for the disk and a power loss costs at most the
/// outcomes of that interval (their tasks run again).
struct Syncer {
    tx: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl Syncer {
    fn start(file: File) -> Syncer {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("journal-sync".into())
            .spawn(move || {
                let mut result = Ok(());
                let mut last_sync: Option<Instant> = None;
                while rx.recv().is_ok() {
                    // At most one sync per interval: on a journaling file
                    // system every sync commits the file system's journal,
                    // and the run's file creation waits behind each commit.
                    // The first request after a quiet spell, and the last
                    // ones when the journal closes, are synced at once.
                    if let Some(deadline) = last_sync.map(|t| t + SYNC_INTERVAL) {
                        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                            if rx.recv_timeout(left).is_err() {
                                break; // the interval is over, or the journal closed
                            }
                        }
                    }
                    while rx.try_recv().is_ok() {}
                    if let Err(e) = file.sync_data() {
                        result = Err(e);
                    }
                    last_sync = Some(Instant::now());
                }
                result
            })
            .ok();
        Syncer {
            tx: Some(tx),
            thread,
        }
    }

    /// False when the thread is gone: the caller syncs itself.
    fn request(&self) -> bool {
        self.thread.is_some() && self.tx.as_ref().is_some_and(|tx| tx.send(()).is_ok())
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        // the last requests are synced before the journal closes
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Journal {
    /// Open for appending; a torn last line is cut off first.
    pub fn open(path: &Path) -> Result<Journal, JournalError> {
        let io = |source| JournalError::Io {
            path: path.into(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        let mut text = Vec::new();
        file.read_to_end(&mut text).map_err(io)?;
        if !text.is_empty() && !text.ends_with(b"\n") {
            let keep = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            file.set_len(keep as u64).map_err(io)?;
            file.seek(SeekFrom::End(0)).map_err(io)?;
        }
        let syncer = file.try_clone().ok().map(Syncer::start);
        Ok(Journal {
            file,
            path: path.into(),
            syncer,
        })
    }

    pub fn append(&mut self, entry: Entry) -> Result<(), JournalError> {
        let rec = Record {
            v: JOURNAL_VERSION,
            ts: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            entry,
        };
        let mut line = serde_json::to_string(&rec).unwrap_or_default();
        line.push('\n');
        let io = |source| JournalError::Io {
            path: self.path.clone(),
            source,
        };
        self.file.write_all(line.as_bytes()).map_err(io)?;
        // Outcomes must survive a crash; a lost "dispatched" or "requeued"
        // line only means the task counts as not started, which is what a
        // restart assumes of it anyway.
        if !matches!(
            rec.entry,
            Entry::Dispatched { .. }
                | Entry::Requeued { .. }
                | Entry::AttemptFailed { .. }
                | Entry::StepStarted { .. }
                | Entry::Adopted { .. }
        ) && !self.syncer.as_ref().is_some_and(Syncer::request)
        {
            self.file.sync_data().map_err(io)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
