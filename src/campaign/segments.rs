//! The journal kept as numbered segments in a store (on AWS the project's
//! bucket, `<phase>/_state/journal/<seq:010>.jsonl`): each segment holds the
//! whole lines appended since the one before, in order, so the concatenation
//! of all segments is the journal. `.infra/<phase>/journal.jsonl` is this
//! machine's cache of it, and `.infra/<phase>/journal.sync.json` ([`Synced`])
//! says how much of it the store has.
//!
//! [`push`] uploads what the local journal has beyond what was synced (a
//! controller's [`Pusher`] every few seconds and at the end of a run); [`pull`]
//! brings the local journal up to date before a command reads it: the
//! store is the truth, and a local tail that was never uploaded is uploaded
//! when the store has nothing newer, else kept aside
//! (`journal.jsonl.unsynced-<time>`). Segments are written with "create
//! only" (`If-None-Match: *`), so two writers never overwrite each other.

use std::collections::HashSet;
use std::future::Future;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::pin::Pin;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::runner::journal::{Record, JOURNAL_VERSION};

/// A future a store returns; `Send`, for a controller's background task.
pub type StoreFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where the segments live. Errors are text for a warning.
pub trait SegmentStore: Send + Sync {
    /// The numbers of the segments there, in any order.
    fn list(&self) -> StoreFut<'_, Result<Vec<u64>, String>>;
    /// One segment's bytes; `None` when it is not there.
    fn get(&self, seq: u64) -> StoreFut<'_, Result<Option<Vec<u8>>, String>>;
    /// Create segment `seq` unless one exists: `Ok(true)` when created,
    /// `Ok(false)` when a segment of that number was there already.
    fn put_new(&self, seq: u64, body: Vec<u8>) -> StoreFut<'_, Result<bool, String>>;
    /// Called with a segment's lines before it goes up (AWS: the results of
    /// the tasks it says ended are uploaded first, so whoever reads the
    /// segment finds them). An error keeps the segment for the next push.
    fn before_segment<'a>(&'a self, _body: &'a [u8]) -> StoreFut<'a, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
}

/// `.infra/<phase>/journal.sync.json`: how much of the local journal the
/// store holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Synced {
    pub v: u32,
    /// Segments `0..segments` are in the store, and are the journal's first
    /// `offset` bytes.
    pub segments: u64,
    pub offset: u64,
    /// SHA-256 of the (up to) 4 KiB before `offset`: a journal rewritten
    /// since (`infra journal repair`) no longer matches.
    pub tail_sha256: String,
}

const SYNCED_VERSION: u32 = 1;
const TAIL_WINDOW: usize = 4096;

pub fn journal_path(state_dir: &Path) -> PathBuf {
    state_dir.join("journal.jsonl")
}

pub fn synced_path(state_dir: &Path) -> PathBuf {
    state_dir.join("journal.sync.json")
}

fn tail_sha(journal: &[u8], offset: usize) -> String {
    let from = offset.saturating_sub(TAIL_WINDOW);
    Sha256::digest(&journal[from..offset])
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Synced {
    fn at(segments: u64, journal: &[u8], offset: usize) -> Synced {
        Synced {
            v: SYNCED_VERSION,
            segments,
            offset: offset as u64,
            tail_sha256: tail_sha(journal, offset),
        }
    }

    /// Whether `journal` still begins with what was synced.
    fn matches(&self, journal: &[u8]) -> bool {
        let off = self.offset as usize;
        off <= journal.len()
            && (off == 0 || journal[off - 1] == b'\n')
            && tail_sha(journal, off) == self.tail_sha256
    }
}

/// What was synced; a missing or unreadable file is nothing.
pub fn load(state_dir: &Path) -> Synced {
    std::fs::read_to_string(synced_path(state_dir))
        .ok()
        .and_then(|t| serde_json::from_str::<Synced>(&t).ok())
        .filter(|s| s.v == SYNCED_VERSION)
        .unwrap_or_default()
}

fn save(state_dir: &Path, s: &Synced) -> Result<(), String> {
    let p = synced_path(state_dir);
    write_atomic(&p, &serde_json::to_vec_pretty(s).unwrap_or_default())
}

fn write_atomic(p: &Path, bytes: &[u8]) -> Result<(), String> {
    let err = |e: std::io::Error| format!("cannot write {}: {e}", p.display());
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let mut tmp = p.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).map_err(err)?;
    std::fs::rename(&tmp, p).map_err(err)
}

fn read_all(p: &Path) -> Result<Vec<u8>, String> {
    match std::fs::read(p) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(format!("cannot read {}: {e}", p.display())),
    }
}

/// The bytes of the file from `offset` on; `None` when the file is shorter
/// (it was rewritten).
fn read_from(p: &Path, offset: u64) -> Result<Option<Vec<u8>>, String> {
    let err = |e: std::io::Error| format!("cannot read {}: {e}", p.display());
    let mut f = match std::fs::File::open(p) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok((offset == 0).then(Vec::new))
        }
        Err(e) => return Err(err(e)),
    };
    if f.metadata().map_err(err)?.len() < offset {
        return Ok(None);
    }
    f.seek(SeekFrom::Start(offset)).map_err(err)?;
    let mut out = Vec::new();
    f.read_to_end(&mut out).map_err(err)?;
    Ok(Some(out))
}

/// The length of the whole lines at the start of `bytes` (a line being
/// written, with no newline yet, is left for later).
fn whole_lines(bytes: &[u8]) -> usize {
    bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1)
}

/// How far `bytes` (whole lines) holds journal records this infra reads
/// (blank lines included), and the 1-based number of the first line that
/// is not one: a damaged line never goes to the store (`infra journal
/// repair` drops it first).
fn valid_prefix(bytes: &[u8]) -> (usize, Option<usize>) {
    let mut end = 0;
    for (i, l) in bytes.split_inclusive(|b| *b == b'\n').enumerate() {
        let ok = l.iter().all(u8::is_ascii_whitespace)
            || serde_json::from_slice::<Record>(l).is_ok_and(|r| r.v == JOURNAL_VERSION);
        if !ok {
            return (end, Some(i + 1));
        }
        end += l.len();
    }
    (end, None)
}

fn lines(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
}

/// Upload what the local journal has beyond what was synced, as one segment
/// of whole lines (more than one only when an earlier push was cut short
/// after its upload). Returns how many segments went up. `Err` when the
/// store refused or the segment's number is taken by other lines (another
/// controller wrote the journal meanwhile): nothing local changes then.
pub async fn push(store: &dyn SegmentStore, state_dir: &Path) -> Result<u64, String> {
    let path = journal_path(state_dir);
    let mut s = load(state_dir);
    let mut pushed = 0;
    loop {
        let Some(new) = read_from(&path, s.offset)? else {
            return Err(format!(
                "{} is shorter than what was uploaded (it was rewritten); `infra status` takes the bucket's journal",
                path.display()
            ));
        };
        let (end, damaged) = valid_prefix(&new[..whole_lines(&new)]);
        if end == 0 {
            return match damaged {
                Some(_) => Err(format!(
                    "{} has a damaged line after what was uploaded (`infra journal repair` drops it); it is not uploaded",
                    path.display()
                )),
                None => Ok(pushed),
            };
        }
        let body = new[..end].to_vec();
        store.before_segment(&body).await?;
        let took = if store.put_new(s.segments, body.clone()).await? {
            end
        } else {
            // that number is taken: by these very lines (an upload whose
            // record was not saved), or by someone else's
            let there = store.get(s.segments).await?.unwrap_or_default();
            if there.is_empty() || !body.starts_with(&there) || !there.ends_with(b"\n") {
                return Err(format!(
                    "journal segment {} in the store holds other lines than this machine's journal (another controller?)",
                    s.segments
                ));
            }
            there.len()
        };
        let off = s.offset as usize + took;
        let journal = read_all(&path)?;
        if journal.len() < off {
            return Err(format!("{} changed during the upload", path.display()));
        }
        s = Synced::at(s.segments + 1, &journal, off);
        save(state_dir, &s)?;
        pushed += 1;
        if took == end && damaged.is_none() {
            return Ok(pushed);
        }
    }
}

/// The store's segments were deleted on purpose (`infra destroy
/// --delete-results`): what the local journal holds now stays on this
/// machine, and only what is appended later goes to the store.
pub fn forget_store(state_dir: &Path) -> Result<(), String> {
    let journal = read_all(&journal_path(state_dir))?;
    save(state_dir, &Synced::at(0, &journal, whole_lines(&journal)))
}

/// What [`pull`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Pulled {
    /// The local journal is the store's.
    UpToDate,
    /// The store had nothing newer: this machine's lines that were never
    /// uploaded went up, as this many segments.
    Uploaded(u64),
    /// The store lost the segments this machine had uploaded (deleted on
    /// purpose): this machine's journal so far stays here only.
    StoreEmptied,
    /// The store had segments this machine lacked: the local journal was
    /// rebuilt from them.
    Rebuilt {
        /// Segments downloaded.
        segments: u64,
        /// The local journal as it was, when it held lines the store does
        /// not (they were never uploaded, and the store has moved on).
        set_aside: Option<PathBuf>,
    },
}

/// Bring the local journal up to date with the store (see the module's
/// documentation). The caller makes sure no run on this machine writes the
/// journal meanwhile.
pub async fn pull(store: &dyn SegmentStore, state_dir: &Path) -> Result<Pulled, String> {
    let path = journal_path(state_dir);
    let local = read_all(&path)?;
    let mut seqs = store.list().await?;
    seqs.sort_unstable();
    seqs.dedup();
    let m = seqs.len() as u64;
    if let Some((i, q)) = seqs.iter().enumerate().find(|(i, q)| **q != *i as u64) {
        return Err(format!(
            "the stored journal lacks segment {i} (it has {q}); it was damaged in the store"
        ));
    }
    let mut s = load(state_dir);
    let mut emptied = false;
    if !s.matches(&local) {
        // the local journal was rewritten: what was synced is no longer
        // known; start over from the store
        s = Synced::default();
        if m == 0 {
            save(state_dir, &s)?;
        }
    } else if s.segments > m {
        // segments were deleted (`destroy --delete-results` on another
        // machine): not uploaded again, see `forget_store`
        forget_store(state_dir)?;
        s = load(state_dir);
        emptied = true;
    }
    if s.segments == m {
        let n = push(store, state_dir).await?;
        return Ok(if emptied {
            Pulled::StoreEmptied
        } else if n == 0 {
            Pulled::UpToDate
        } else {
            Pulled::Uploaded(n)
        });
    }
    let mut fresh = Vec::new();
    for q in s.segments..m {
        let seg = store
            .get(q)
            .await?
            .ok_or_else(|| format!("journal segment {q} went away during the download"))?;
        fresh.extend_from_slice(&seg);
        if !fresh.ends_with(b"\n") && !fresh.is_empty() {
            fresh.push(b'\n');
        }
    }
    let off = s.offset as usize;
    let tail = &local[off..off + whole_lines(&local[off..])];
    let known: HashSet<&[u8]> = lines(&fresh).collect();
    let set_aside = if lines(tail).any(|l| !known.contains(l)) {
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
        let mut p = path.as_os_str().to_owned();
        p.push(format!(".unsynced-{stamp}"));
        let p = PathBuf::from(p);
        write_atomic(&p, &local)?;
        Some(p)
    } else {
        None
    };
    let mut journal = local[..off].to_vec();
    journal.extend_from_slice(&fresh);
    write_atomic(&path, &journal)?;
    save(state_dir, &Synced::at(m, &journal, journal.len()))?;
    Ok(Pulled::Rebuilt {
        segments: m - s.segments,
        set_aside,
    })
}

/// Uploads the journal while a run goes on: every `every` while it has
/// new lines, and once more at [`Pusher::finish`]. A failed upload is
/// retried at the next tick and never fails the run; `log` says so when it
/// keeps failing (and when it works again).
pub struct Pusher {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Failed uploads in a row before a warning.
const WARN_AFTER: u32 = 3;

/// Where the progress lines go (the provider's log).
pub type Log = std::sync::Arc<dyn Fn(&str) + Send + Sync>;

impl Pusher {
    /// `store` named `at` (for the warnings) gets the journal of `state_dir`.
    pub fn start(
        store: std::sync::Arc<dyn SegmentStore>,
        at: String,
        state_dir: PathBuf,
        every: std::time::Duration,
        log: Log,
    ) -> Pusher {
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut failures = 0u32;
            loop {
                let last = tokio::select! {
                    _ = tokio::time::sleep(every) => false,
                    _ = &mut rx => true,
                };
                match push(store.as_ref(), &state_dir).await {
                    Ok(_) => {
                        if failures >= WARN_AFTER {
                            log(&format!("journal: uploads to {at} work again"));
                        }
                        failures = 0;
                    }
                    Err(e) => {
                        failures += 1;
                        if failures == WARN_AFTER || last {
                            log(&format!(
                                "warning: the journal could not be uploaded to {at} ({e}); {}",
                                if last {
                                    "the next `infra` command of this phase on this machine uploads it"
                                } else {
                                    "retrying"
                                }
                            ));
                        }
                    }
                }
                if last {
                    break;
                }
            }
        });
        Pusher {
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// The last upload, and the end of the background task.
    pub async fn finish(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

#[cfg(test)]
mod tests;
