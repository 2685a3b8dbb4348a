//! `infra logs`: a task's stdout and stderr, finished or running, streamed
//! byte for byte (binary output included, any size); `-n N` the last N
//! lines; `--follow` new lines as the task writes them (the provider's
//! `live_log`: locally the attempt's files, on AWS the chunks the node
//! agent uploads every few seconds), across its attempts, until it ends.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use super::context::{journal_path, render_tasks, sync_campaign, Ctx};
use super::error::{exit, AppError};
use crate::plan::{self, Plan};
use crate::provider::live_log::{LiveCursor, LogChunk, Stream};
use crate::runner::journal::{self, Status};

/// How `infra logs` shows a task's logs.
#[derive(Debug, Clone, Default)]
pub struct LogsOpts {
    pub only_stderr: bool,
    pub follow: bool,
    /// Only the last N lines of each stream.
    pub lines: Option<usize>,
}

/// How often `--follow` looks for new lines (on this machine; elsewhere,
/// one listing of the bucket each time), and reads the shared journal.
const POLL_LOCAL: Duration = Duration::from_millis(500);
const POLL_REMOTE: Duration = Duration::from_millis(1000);
const SYNC_EVERY: Duration = Duration::from_secs(4);

/// The newest running attempt's folder of `pattern` in `staging`: exactly
/// `<pattern>.<attempt>`, never a longer id that starts the same, and one
/// its logs are written to (an AWS attempt's folder stays empty until it
/// ends: its logs are on its node).
fn running_attempt(staging: &Path, pattern: &str) -> Option<std::path::PathBuf> {
    std::fs::read_dir(staging).ok().and_then(|rd| {
        rd.flatten()
            .filter(|e| {
                ["stdout.log", "stderr.log"]
                    .iter()
                    .any(|f| e.path().join(f).exists())
            })
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.strip_prefix(pattern)
                    .and_then(|rest| rest.strip_prefix('.'))
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            })
            .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
            .map(|e| e.path())
    })
}

/// Where the last `n` lines of `bytes` start (a last newline ends the last
/// line; it does not start one more).
pub fn tail_start(bytes: &[u8], n: usize) -> usize {
    if n == 0 {
        return bytes.len();
    }
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                return i + 1;
            }
        }
    }
    0
}

/// The byte offset where the last `n` lines of the file start (reads only
/// as much of its end as it needs).
fn tail_offset(f: &mut std::fs::File, n: usize) -> std::io::Result<u64> {
    let len = f.metadata()?.len();
    let mut window: u64 = 64 * 1024;
    loop {
        let from = len.saturating_sub(window);
        f.seek(SeekFrom::Start(from))?;
        let mut buf = Vec::new();
        f.by_ref().take(len - from).read_to_end(&mut buf)?;
        let at = tail_start(&buf, n);
        // found inside the window (not at its cut start), or the whole file
        if at > 0 || from == 0 {
            return Ok(from + at as u64);
        }
        window *= 4;
    }
}

/// Copy a file to the command's output in chunks (its last `lines` lines
/// only, when given); a missing file is empty. Whether anything was written.
fn stream(ctx: &Ctx, path: &Path, lines: Option<usize>) -> Result<bool, AppError> {
    let Ok(mut f) = std::fs::File::open(path) else {
        return Ok(false);
    };
    let io = |source| AppError::Io {
        path: path.into(),
        source,
    };
    if let Some(n) = lines {
        let at = tail_offset(&mut f, n).map_err(io)?;
        f.seek(SeekFrom::Start(at)).map_err(io)?;
    }
    let mut buf = vec![0u8; 64 * 1024];
    let mut any = false;
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => return Ok(any),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(source) => return Err(io(source)),
        };
        ctx.write_bytes(&buf[..n]);
        any = true;
    }
}

pub async fn logs(ctx: &Ctx, name: &str, pattern: &str, opts: &LogsOpts) -> Result<i32, AppError> {
    let plan = ctx.load(name)?;
    let selected = plan::select::select(&plan, &[pattern.to_string()])?;
    if !selected.iter().any(|p| p.id == pattern) {
        // a layer, or "all": the logs are a task's
        let ids: Vec<&str> = selected.iter().take(5).map(|p| p.id.as_str()).collect();
        return Err(AppError::Usage(format!(
            "\"{pattern}\" selects {} task(s); infra logs shows one task's logs\n  (hint: name one of them, e.g. `infra logs {name} {}`{}; `infra status {name}` shows which ran)",
            selected.len(),
            ids.first().copied().unwrap_or("<pattern id>"),
            if selected.len() > 1 {
                format!(" (its tasks: {}{})", ids.join(", "), if selected.len() > 5 { ", ..." } else { "" })
            } else {
                String::new()
            }
        )));
    }
    if opts.follow {
        return follow(ctx, &plan, pattern, opts).await;
    }
    // an ended task's logs from the bucket when this machine lacks them
    sync_campaign(ctx, &plan).await;
    if show_finished(ctx, &plan, pattern, opts).await? {
        return Ok(exit::OK);
    }
    if show_running_elsewhere(ctx, &plan, pattern, opts).await? {
        return Ok(exit::OK);
    }
    Err(AppError::Usage(format!("no logs for \"{pattern}\" yet\n  (hint: it has not run; `infra status {name}` shows what has; `infra logs {name} {pattern} --follow` waits for it)")))
}

/// The task's finished result's logs, else its newest running attempt's
/// (what is there now). False: there are none.
async fn show_finished(
    ctx: &Ctx,
    plan: &Plan,
    pattern: &str,
    opts: &LogsOpts,
) -> Result<bool, AppError> {
    if let Err(e) = ctx.provider(plan).fetch_results(plan, Some(pattern)).await {
        eprintln!(
            "warning: {}: the logs were not fetched ({e})",
            plan.name_key
        );
    }
    let done = plan.results_dir().join(pattern);
    // a finished result, else the newest running attempt
    let dir = if done.join("runtime.json").exists() {
        Some(done)
    } else {
        running_attempt(&plan.state_dir().join("staging"), pattern)
    };
    let Some(dir) = dir else {
        return Ok(false);
    };
    if ctx.json {
        // JSON holds text: bytes that are not UTF-8 become U+FFFD here;
        // the human form streams them unchanged
        let read = |f: &str| {
            let b = std::fs::read(dir.join(f)).unwrap_or_default();
            let at = opts.lines.map_or(0, |n| tail_start(&b, n));
            String::from_utf8_lossy(&b[at..]).into_owned()
        };
        ctx.out("logs", "", json!({"task": pattern, "dir": dir, "stdout": read("stdout.log"), "stderr": read("stderr.log")}));
    } else {
        if !opts.only_stderr {
            stream(ctx, &dir.join("stdout.log"), opts.lines)?;
        }
        let err = dir.join("stderr.log");
        if std::fs::metadata(&err).is_ok_and(|m| m.len() > 0) {
            if !opts.only_stderr {
                ctx.write("== stderr ==\n");
            }
            stream(ctx, &err, opts.lines)?;
        }
    }
    Ok(true)
}

/// A running attempt whose logs are not on this machine (AWS: on its
/// node): what it uploaded so far. False: the journal knows none.
async fn show_running_elsewhere(
    ctx: &Ctx,
    plan: &Plan,
    pattern: &str,
    opts: &LogsOpts,
) -> Result<bool, AppError> {
    let (tasks, _) = render_tasks(plan)?;
    let key = tasks
        .iter()
        .find(|t| t.id == pattern)
        .map(|t| t.key.as_str());
    let state = journal::read_lenient(&journal_path(plan))?.state;
    let Some(attempt) = task_now(&state, pattern, key).running else {
        return Ok(false);
    };
    let mut cursor = LiveCursor::default();
    let chunks = ctx
        .provider(plan)
        .live_log(plan, pattern, attempt, &mut cursor)
        .await?;
    if ctx.json {
        let text = |s: Stream| {
            let b: Vec<u8> = chunks
                .iter()
                .filter(|c| c.stream == s)
                .flat_map(|c| c.bytes.iter().copied())
                .collect();
            let at = opts.lines.map_or(0, |n| tail_start(&b, n));
            String::from_utf8_lossy(&b[at..]).into_owned()
        };
        ctx.out("logs", "", json!({"task": pattern, "attempt": attempt, "stdout": text(Stream::Stdout), "stderr": text(Stream::Stderr)}));
    } else {
        let mut out = Printer::new(ctx, pattern, opts.only_stderr);
        out.print_all(attempt, chunks, Some(opts.lines.unwrap_or(usize::MAX)));
    }
    Ok(true)
}

/// Writes followed chunks: a `== stderr ==` / `== stdout ==` line where
/// the stream changes (human form), a JSON object per chunk (`--json`).
struct Printer<'a> {
    ctx: &'a Ctx,
    task: &'a str,
    only_stderr: bool,
    current: Stream,
    /// The last byte written ended a line.
    at_line_start: bool,
    printed: bool,
}

impl<'a> Printer<'a> {
    fn new(ctx: &'a Ctx, task: &'a str, only_stderr: bool) -> Printer<'a> {
        Printer {
            ctx,
            task,
            only_stderr,
            current: Stream::Stdout,
            at_line_start: true,
            printed: false,
        }
    }

    fn print(&mut self, attempt: u32, c: &LogChunk) {
        if c.bytes.is_empty() || (self.only_stderr && c.stream != Stream::Stderr) {
            return;
        }
        self.printed = true;
        if self.ctx.json {
            let line = json!({"task": self.task, "attempt": attempt, "stream": c.stream.name(), "text": String::from_utf8_lossy(&c.bytes)});
            self.ctx.write(&format!("{line}\n"));
            return;
        }
        if c.stream != self.current && !self.only_stderr {
            if !self.at_line_start {
                self.ctx.write("\n");
            }
            self.ctx.write(&format!("== {} ==\n", c.stream.name()));
        }
        self.current = c.stream;
        self.ctx.write_bytes(&c.bytes);
        self.at_line_start = c.bytes.ends_with(b"\n");
    }

    /// The chunks, or only the last `lines` lines of each stream's.
    fn print_all(&mut self, attempt: u32, chunks: Vec<LogChunk>, lines: Option<usize>) {
        let Some(n) = lines else {
            for c in &chunks {
                self.print(attempt, c);
            }
            return;
        };
        for stream in [Stream::Stdout, Stream::Stderr] {
            let bytes: Vec<u8> = chunks
                .iter()
                .filter(|c| c.stream == stream)
                .flat_map(|c| c.bytes.iter().copied())
                .collect();
            let at = tail_start(&bytes, n);
            let bytes = bytes[at..].to_vec();
            self.print(attempt, &LogChunk { stream, bytes });
        }
    }
}

/// What the journal says of the task now.
struct TaskNow {
    status: Status,
    /// The attempt that runs.
    running: Option<u32>,
    /// The attempts started so far.
    attempts: u32,
}

/// The task by the journal: the current definition's entry, or an older
/// definition's attempt that still runs.
fn task_now(state: &journal::State, pattern: &str, key: Option<&str>) -> TaskNow {
    let t = state
        .tasks
        .values()
        .find(|t| t.id == pattern && t.in_flight.is_some())
        .or_else(|| key.and_then(|k| state.tasks.get(k)));
    TaskNow {
        status: t.map_or(Status::Pending, |t| t.status),
        running: t.and_then(|t| t.in_flight.as_ref()).map(|f| f.attempt),
        attempts: t.map_or(0, |t| t.attempts),
    }
}

/// `--follow`: wait for the task to run, print what its attempts write as
/// they write it, and end (0) once it succeeded or failed for good.
async fn follow(ctx: &Ctx, plan: &Plan, pattern: &str, opts: &LogsOpts) -> Result<i32, AppError> {
    let (tasks, _) = render_tasks(plan)?;
    let key = tasks
        .iter()
        .find(|t| t.id == pattern)
        .map(|t| t.key.clone());
    let provider = ctx.provider(plan);
    let poll = if provider.name() == "local" {
        POLL_LOCAL
    } else {
        POLL_REMOTE
    };
    let mut out = Printer::new(ctx, pattern, opts.only_stderr);
    // the attempt followed, and the last one followed
    let mut following: Option<(u32, LiveCursor)> = None;
    let mut last: Option<u32> = None;
    let mut tail = opts.lines;
    let mut said_waiting = false;
    let mut warned = false;
    let mut synced: Option<Instant> = None;
    loop {
        if synced.is_none_or(|t| t.elapsed() >= SYNC_EVERY) {
            synced = Some(Instant::now());
            if let Err(e) = provider.sync_campaign(plan).await {
                if !std::mem::replace(&mut warned, true) {
                    eprintln!(
                        "warning: {}: the campaign's shared state was not read ({e}); going on with this machine's copy",
                        plan.name_key
                    );
                }
            }
        }
        let state = journal::read_lenient(&journal_path(plan))?.state;
        let now = task_now(&state, pattern, key.as_deref());
        // the attempt followed: what is new (all that is left once it ended)
        if let Some((attempt, cursor)) = following.as_mut() {
            let attempt = *attempt;
            match provider.live_log(plan, pattern, attempt, cursor).await {
                Ok(chunks) => out.print_all(attempt, chunks, tail.take()),
                Err(e) => eprintln!("warning: {pattern}: the logs were not read ({e})"),
            }
            if now.running != Some(attempt) {
                following = None;
            }
        }
        // attempts that began and ended between two looks: whole
        let ended = matches!(now.status, Status::Succeeded | Status::Failed);
        let upto = match now.running {
            Some(a) => a.saturating_sub(1),
            None if ended => now.attempts,
            None => 0,
        };
        if let Some(l) = last.filter(|l| *l < upto) {
            for a in l + 1..=upto {
                note_attempt(ctx, opts, pattern, a);
                let mut cursor = LiveCursor::default();
                if let Ok(chunks) = provider.live_log(plan, pattern, a, &mut cursor).await {
                    out.print_all(a, chunks, None);
                }
                last = Some(a);
            }
        }
        if following.is_none() {
            match now.running {
                Some(a) => {
                    note_attempt(ctx, opts, pattern, a);
                    following = Some((a, LiveCursor::default()));
                    last = Some(a);
                    // its first lines at once
                    continue;
                }
                None if ended => {
                    // ended before anything was followed (or its node agent
                    // sends no live logs): its result's logs
                    if !out.printed {
                        show_finished(ctx, plan, pattern, opts).await?;
                    }
                    return Ok(exit::OK);
                }
                None => {
                    if !std::mem::replace(&mut said_waiting, true) {
                        eprintln!("waiting for {pattern} to run (Ctrl-C to leave)");
                    }
                }
            }
        }
        tokio::time::sleep(poll).await;
    }
}

/// Which attempt the lines that follow are of (stderr; not with --json or
/// --stderr, whose output is the log alone).
fn note_attempt(ctx: &Ctx, opts: &LogsOpts, pattern: &str, attempt: u32) {
    if !opts.only_stderr && !ctx.json {
        eprintln!("== infra: {pattern}, attempt {attempt} ==");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_lines_start_where_they_should() {
        let b = b"a\nb\nc\n";
        assert_eq!(&b[tail_start(b, 2)..], b"b\nc\n");
        assert_eq!(&b[tail_start(b, 3)..], b"a\nb\nc\n");
        assert_eq!(&b[tail_start(b, 9)..], b"a\nb\nc\n");
        assert_eq!(&b[tail_start(b, 0)..], b"");
        let open = b"a\nb\nc";
        assert_eq!(&open[tail_start(open, 1)..], b"c");
        assert_eq!(&open[tail_start(open, 2)..], b"b\nc");
        assert_eq!(tail_start(b"", 3), 0);
    }

    #[test]
    fn the_tail_of_a_big_file_reads_back_from_its_end() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("big.log");
        let text: String = (0..50_000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&p, &text).unwrap();
        let mut f = std::fs::File::open(&p).unwrap();
        let at = tail_offset(&mut f, 3).unwrap() as usize;
        assert_eq!(&text[at..], "line 49997\nline 49998\nline 49999\n");
        // longer than the first window
        let at = tail_offset(&mut f, 20_000).unwrap() as usize;
        assert!(text[at..].starts_with("line 30000\n"));
    }
}
