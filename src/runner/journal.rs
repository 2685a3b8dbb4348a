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
    #[error("journal {path} line {line} is damaged: {message}\n  (hint: only the last line may be torn by a crash; move the file aside to start the phase afresh)")]
    Corrupt {
        path: PathBuf,
        line: usize,
        message: String,
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
    pub cost_usd: Option<f64>,
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
        self.records += 1;
        let blank = |id: &str| TaskState {
            id: id.to_string(),
            status: Status::Pending,
            attempts: 0,
            failures: 0,
            last_error: None,
            wall_seconds: None,
            cost_usd: None,
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
                task, key, attempt, ..
            } => {
                let t = self.tasks.entry(key.clone()).or_insert_with(|| blank(task));
                t.status = Status::Running;
                t.attempts = t.attempts.max(*attempt);
            }
            Entry::AttemptFailed {
                task, key, error, ..
            } => {
                let t = self.tasks.entry(key.clone()).or_insert_with(|| blank(task));
                t.failures += 1;
                t.last_error = Some(error.clone());
                t.status = Status::Running;
            }
            Entry::Succeeded {
                task,
                key,
                wall_seconds,
                cost_usd,
                ..
            } => {
                let t = self.tasks.entry(key.clone()).or_insert_with(|| blank(task));
                t.status = Status::Succeeded;
                t.wall_seconds = Some(*wall_seconds);
                t.cost_usd = Some(*cost_usd);
                t.last_error = None;
            }
            Entry::Failed {
                task, key, error, ..
            } => {
                let t = self.tasks.entry(key.clone()).or_insert_with(|| blank(task));
                t.status = Status::Failed;
                t.failures += 1;
                t.last_error = Some(error.clone());
            }
            Entry::Requeued { task, key, .. } => {
                let t = self.tasks.entry(key.clone()).or_insert_with(|| blank(task));
                t.status = Status::Pending;
            }
            Entry::RunFinished { reason, .. } => {
                self.last_stop = Some(reason.clone());
                for t in self.tasks.values_mut() {
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

/// Parse journal text; a torn last line (no newline) is ignored.
pub fn parse(text: &str, path: &Path) -> Result<(State, Vec<Record>), JournalError> {
    let mut state = State::default();
    let mut records = Vec::new();
    let ends_clean = text.ends_with('\n') || text.is_empty();
    let lines: Vec<&str> = text.split('\n').collect();
    let n = lines.len();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let last = i + 1 == n || (i + 2 == n && lines[n - 1].is_empty());
        match serde_json::from_str::<Record>(line) {
            Ok(r) => {
                if r.v != JOURNAL_VERSION {
                    return Err(JournalError::Version {
                        path: path.into(),
                        line: i + 1,
                        found: r.v,
                    });
                }
                state.apply(&r.entry);
                records.push(r);
            }
            Err(_) if last && !ends_clean => break, // torn by a crash mid-write
            Err(e) => {
                return Err(JournalError::Corrupt {
                    path: path.into(),
                    line: i + 1,
                    message: e.to_string(),
                })
            }
        }
    }
    Ok((state, records))
}

pub fn read(path: &Path) -> Result<(State, Vec<Record>), JournalError> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((State::default(), Vec::new())),
        Err(source) => Err(JournalError::Io {
            path: path.into(),
            source,
        }),
    }
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
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(io)?;
        if !text.is_empty() && !text.ends_with('\n') {
            let keep = text.rfind('\n').map(|i| i + 1).unwrap_or(0);
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
            Entry::Dispatched { .. } | Entry::Requeued { .. } | Entry::AttemptFailed { .. }
        ) && !self.syncer.as_ref().is_some_and(Syncer::request)
        {
            self.file.sync_data().map_err(io)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
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
        });
        text += &line(Entry::Succeeded {
            task: "a".into(),
            key: "ka".into(),
            attempt: 1,
            wall_seconds: 1.0,
            cost_usd: 0.0,
        });
        text += &line(Entry::Dispatched {
            task: "b".into(),
            key: "kb".into(),
            attempt: 1,
            nodes: vec![],
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
}
