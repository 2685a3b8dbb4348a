//! A running attempt's logs as they grow (`infra logs --follow`): what is
//! new since a cursor. Locally the attempt writes its logs in place, in the
//! run's staging folder (`.infra/<phase>/staging/<task>.<attempt>/`), which
//! moves when the attempt ends (to `<task>.<attempt>.failed` before a retry,
//! to `results/<phase>/<task>/` at the task's end); on AWS the node agent
//! uploads chunks (`node::live`, read by `provider/aws/live_log.rs`).

use std::collections::HashSet;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::plan::Plan;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    pub fn parse(s: &str) -> Option<Stream> {
        match s {
            "stdout" => Some(Stream::Stdout),
            "stderr" => Some(Stream::Stderr),
            _ => None,
        }
    }
}

/// New bytes of one stream.
#[derive(Debug, Clone, PartialEq)]
pub struct LogChunk {
    pub stream: Stream,
    pub bytes: Vec<u8>,
}

/// How far a reader got in one attempt's logs.
#[derive(Debug, Default, Clone)]
pub struct LiveCursor {
    /// Local: bytes read of stdout, stderr.
    pub offsets: [u64; 2],
    /// AWS: the chunks read, and the newest chunk's time (ms).
    pub seen: HashSet<String>,
    pub newest_ms: u64,
    /// AWS: per (step key, stream), the bytes read.
    pub next: std::collections::HashMap<(String, Stream), u64>,
}

/// Where a local attempt's logs are now: its staging folder while it runs,
/// then where the runner moved it. None when none of them is there.
pub fn local_attempt_dir(plan: &Plan, task: &str, attempt: u32) -> Option<PathBuf> {
    let staging = plan.state_dir().join("staging");
    let running = staging.join(format!("{task}.{attempt}"));
    if running.is_dir() {
        return Some(running);
    }
    let failed = staging.join(format!("{task}.{attempt}.failed"));
    if failed.is_dir() {
        return Some(failed);
    }
    let result = plan.results_dir().join(task);
    let of_attempt = std::fs::read(result.join("runtime.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|v| v["attempts"].as_u64() == Some(attempt as u64));
    of_attempt.then_some(result)
}

/// The bytes of `path` after `from` (empty when there are none).
pub fn read_from(path: &Path, from: u64) -> Vec<u8> {
    let Ok(mut f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(from)).is_ok() {
        let _ = f.read_to_end(&mut buf);
    }
    buf
}

/// What is new in a local attempt's logs since `cursor` (which moves on).
pub fn read_local(plan: &Plan, task: &str, attempt: u32, cursor: &mut LiveCursor) -> Vec<LogChunk> {
    let Some(dir) = local_attempt_dir(plan, task, attempt) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, stream) in [Stream::Stdout, Stream::Stderr].into_iter().enumerate() {
        let bytes = read_from(
            &dir.join(format!("{}.log", stream.name())),
            cursor.offsets[i],
        );
        if !bytes.is_empty() {
            cursor.offsets[i] += bytes.len() as u64;
            out.push(LogChunk { stream, bytes });
        }
    }
    out
}

/// The last non-empty line of a log (its last 64 KiB), trimmed and cut to
/// `max` characters; None when it has none.
pub fn last_line(path: &Path, max: usize) -> Option<String> {
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let from = len.saturating_sub(64 * 1024);
    f.seek(SeekFrom::Start(from)).ok()?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let line = text
        .split(['\n', '\r'])
        .map(|l| l.trim())
        .rfind(|l| !l.is_empty())?;
    // no terminal control characters in a one-line summary
    let clean: String = line
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    Some(match clean.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &clean[..i]),
        None => clean,
    })
}

/// The most of a stderr line a failure's message carries.
pub const STDERR_LINE_MAX: usize = 200;

/// `error` + `: <the last non-empty line of the attempt's stderr.log>`
/// (in `staging`), when there is one: `step "run" exited with code 3:
/// ValueError: bad seed`.
pub fn append_last_stderr(error: &mut String, staging: &Path) {
    if let Some(line) = last_line(&staging.join("stderr.log"), STDERR_LINE_MAX) {
        error.push_str(": ");
        error.push_str(&line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_non_empty_line_trimmed_and_capped() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("stderr.log");
        assert_eq!(last_line(&p, 10), None, "no file");
        std::fs::write(&p, "").unwrap();
        assert_eq!(last_line(&p, 10), None);
        std::fs::write(&p, "Traceback\n  ValueError: bad seed  \n\n \n").unwrap();
        assert_eq!(last_line(&p, 100).as_deref(), Some("ValueError: bad seed"));
        assert_eq!(last_line(&p, 5).as_deref(), Some("Value..."));
        std::fs::write(&p, "a\x1b[31mred\r\n").unwrap();
        assert_eq!(last_line(&p, 100).as_deref(), Some("a [31mred"));
    }
}
