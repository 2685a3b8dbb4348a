//! `infra journal repair`: a journal with damaged lines rewritten with its
//! valid lines only, the original kept beside it.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{read_bytes, scan, Damage, JournalError};

/// What a repair did.
#[derive(Debug, Clone, Serialize)]
pub struct Repaired {
    /// Valid lines kept, in their order.
    pub kept: usize,
    /// The lines dropped, the torn last line included.
    pub dropped: Vec<Damage>,
    /// The original file, set aside (none when there was nothing to repair).
    pub backup: Option<PathBuf>,
}

/// Keep every valid line of the journal at `path`, drop the damaged ones
/// and a torn last line, and keep the original as
/// `journal.jsonl.damaged-<UTC time>`. A line of another journal version
/// is not damage: the repair refuses (it belongs to another infra).
/// The caller makes sure no run writes the journal meanwhile.
pub fn repair(path: &Path) -> Result<Repaired, JournalError> {
    let bytes = read_bytes(path)?;
    let s = scan(&bytes, path)?;
    let mut dropped = s.damaged.clone();
    dropped.extend(s.torn.clone());
    if dropped.is_empty() {
        return Ok(Repaired {
            kept: s.records.len(),
            dropped,
            backup: None,
        });
    }
    let io = |source| JournalError::Io {
        path: path.into(),
        source,
    };
    let backup = free_name(path);
    std::fs::copy(path, &backup).map_err(io)?;
    let mut clean = Vec::with_capacity(bytes.len());
    for r in &s.kept {
        clean.extend_from_slice(&bytes[r.clone()]);
        clean.push(b'\n');
    }
    let tmp = path.with_extension("jsonl.repair-tmp");
    {
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&clean).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(Repaired {
        kept: s.kept.len(),
        dropped,
        backup: Some(backup),
    })
}

/// `journal.jsonl.damaged-<time>`, with a counter if that exists already.
fn free_name(path: &Path) -> PathBuf {
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let base = format!("{}.damaged-{stamp}", path.display());
    let mut candidate = PathBuf::from(&base);
    let mut n = 1;
    while candidate.exists() {
        n += 1;
        candidate = PathBuf::from(format!("{base}.{n}"));
    }
    candidate
}

#[cfg(test)]
mod tests {
    use super::super::{read, Entry, Record};
    use super::*;

    fn line(run: u32) -> String {
        let mut s = serde_json::to_string(&Record {
            v: 1,
            ts: "t".into(),
            entry: Entry::RunStarted {
                run,
                pid: 1,
                provider: "local".into(),
                selected: 0,
            },
        })
        .unwrap();
        s.push('\n');
        s
    }

    #[test]
    fn a_journal_damaged_in_the_middle_is_repaired_keeping_every_valid_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("journal.jsonl");
        let mut bytes = line(1).into_bytes();
        bytes.extend_from_slice(b"{\"v\":1,\"ts\":\"t\",\"event\":\"exploded\"}\n");
        bytes.extend_from_slice(&line(2).into_bytes());
        bytes.extend_from_slice(b"\xff\xfe garbage\n");
        bytes.extend_from_slice(&line(3).into_bytes());
        bytes.extend_from_slice(b"{\"v\":1,");
        std::fs::write(&p, &bytes).unwrap();
        assert!(matches!(
            read(&p),
            Err(JournalError::Corrupt {
                line: 2,
                more: 1,
                ..
            })
        ));
        let r = repair(&p).unwrap();
        assert_eq!(r.kept, 3);
        let lines: Vec<usize> = r.dropped.iter().map(|d| d.line).collect();
        assert_eq!(lines, [2, 4, 6]);
        assert_eq!(std::fs::read(r.backup.unwrap()).unwrap(), bytes);
        let (state, recs) = read(&p).unwrap();
        assert_eq!(recs.len(), 3);
        assert_eq!(state.runs, 3);
        // a second repair has nothing to do
        let again = repair(&p).unwrap();
        assert!(again.dropped.is_empty() && again.backup.is_none());
    }
}
