//! The spend ledger (`.infra/ledger.jsonl`, one per project): every node's
//! metered lifetime × its price, appended as the runner observes it. A
//! Slurm allocation's entries carry the hours it held (node-hours, and
//! GPU-hours in `gpu_hours`) at $0: Slurm's budget is in hours
//! (`cost::hours`).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spend {
    pub v: u32,
    pub phase: String,
    pub provider: String,
    pub node: String,
    pub group: String,
    pub instance_type: String,
    pub market: String,
    pub start: String,
    pub end: String,
    pub hours: f64,
    pub usd_per_hour: f64,
    pub usd: f64,
    /// "simulated" on the local provider (what the plan's types would cost),
    /// "metered" for real instances.
    pub kind: String,
    /// The EC2 instance id of a metered entry: the next metering of that
    /// instance starts where its last entry ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Where the price came from ("spot price history", "catalog ...").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_source: Option<String>,
    /// Slurm: the GPU-hours the allocation held in this entry's span
    /// (its `hours` are its node-hours).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_hours: Option<f64>,
}

/// What makes two entries the same (a local one and its copy from the bucket).
pub fn entry_key(e: &Spend) -> String {
    format!("{}|{}|{}|{}|{}", e.phase, e.node, e.start, e.end, e.kind)
}

/// One run of a phase: every node it used is billed for the same span.
pub struct RunSpan<'a> {
    pub phase: &'a str,
    pub provider: &'a str,
    pub start: chrono::DateTime<chrono::Utc>,
    pub end: chrono::DateTime<chrono::Utc>,
    pub hours: f64,
    pub kind: &'a str,
}

impl RunSpan<'_> {
    /// The ledger entry of one node for this span.
    pub fn spend(
        &self,
        node: String,
        group: &str,
        instance_type: &str,
        market: &str,
        usd_per_hour: f64,
    ) -> Spend {
        Spend {
            v: 1,
            phase: self.phase.to_string(),
            provider: self.provider.to_string(),
            node,
            group: group.to_string(),
            instance_type: instance_type.to_string(),
            market: market.to_string(),
            start: self
                .start
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            end: self
                .end
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            hours: self.hours,
            usd_per_hour,
            usd: usd_per_hour * self.hours,
            kind: self.kind.to_string(),
            instance: None,
            price_source: Some("catalog".into()),
            gpu_hours: None,
        }
    }
}

pub fn path(root: &Path) -> PathBuf {
    root.join(".infra").join("ledger.jsonl")
}

/// Run `f` holding the ledger's lock (`.infra/ledger.lock`, waited for):
/// those who append what they computed from the ledger's entries (the
/// Slurm meter: what a job held past what is recorded) do it one at a
/// time, so that no span is recorded twice.
pub fn locked<T>(root: &Path, f: impl FnOnce() -> T) -> std::io::Result<T> {
    use std::os::fd::AsRawFd;
    let p = root.join(".infra").join("ledger.lock");
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d)?;
    }
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)?;
    // SAFETY: flock on a descriptor we own; released when `file` closes
    // (below, or when the process dies).
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let out = f();
    drop(file);
    Ok(out)
}

pub fn append(root: &Path, entries: &[Spend]) -> std::io::Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let p = path(root);
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d)?;
    }
    let mut f = OpenOptions::new().create(true).append(true).open(&p)?;
    let mut buf = String::new();
    for e in entries {
        buf.push_str(&serde_json::to_string(e).unwrap_or_default());
        buf.push('\n');
    }
    f.write_all(buf.as_bytes())?;
    f.sync_data()
}

/// An entry whose amount is negative or not a number: a forged or broken
/// ledger would lower the recorded spend and let an over-budget plan
/// through, so it is refused, never skipped.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("refusing the spend ledger: {source_name} line {line} has {field} {value} (phase {phase:?}, node {node:?}); a ledger amount must be a finite number >= 0\n  (hint: this entry was not written by infra; remove the line (or the object) after checking who wrote it)")]
pub struct BadEntry {
    /// The ledger file or bucket object (`s3://bucket/_ledger/...`).
    pub source_name: String,
    /// 1-based line number.
    pub line: usize,
    pub field: &'static str,
    pub value: f64,
    pub phase: String,
    pub node: String,
}

/// Ok when every amount of `e` is a finite number >= 0; else the field
/// and its value.
pub fn check(e: &Spend) -> Result<(), (&'static str, f64)> {
    for (field, v) in [
        ("usd", e.usd),
        ("hours", e.hours),
        ("usd_per_hour", e.usd_per_hour),
        ("gpu_hours", e.gpu_hours.unwrap_or(0.0)),
    ] {
        if !v.is_finite() || v < 0.0 {
            return Err((field, v));
        }
    }
    Ok(())
}

/// The entries of ledger text (`source_name` labels errors); torn or
/// foreign lines are skipped, an entry with a negative or non-finite amount
/// is an error.
pub fn parse(text: &str, source_name: &str) -> Result<Vec<Spend>, BadEntry> {
    let mut out = Vec::new();
    for (i, l) in text.lines().enumerate() {
        let Ok(e) = serde_json::from_str::<Spend>(l) else {
            continue;
        };
        if let Err((field, value)) = check(&e) {
            return Err(BadEntry {
                source_name: source_name.to_string(),
                line: i + 1,
                field,
                value,
                phase: e.phase,
                node: e.node,
            });
        }
        out.push(e);
    }
    Ok(out)
}

/// Every entry; torn or foreign lines are skipped, an entry with a negative
/// or non-finite amount is an error (see [`BadEntry`]).
pub fn read(root: &Path) -> Result<Vec<Spend>, BadEntry> {
    let p = path(root);
    parse(
        &std::fs::read_to_string(&p).unwrap_or_default(),
        &p.display().to_string(),
    )
}

pub fn spent(entries: &[Spend], phase: Option<&str>) -> f64 {
    entries
        .iter()
        .filter(|e| phase.is_none_or(|p| e.phase == p))
        .map(|e| e.usd)
        .sum::<f64>()
        + 0.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(usd: f64) -> String {
        let span = RunSpan {
            phase: "p",
            provider: "aws",
            start: chrono::Utc::now(),
            end: chrono::Utc::now(),
            hours: 1.0,
            kind: "metered",
        };
        let mut e = span.spend("n1".into(), "g", "t", "spot", usd.max(0.0));
        e.usd = usd;
        serde_json::to_string(&e).unwrap()
    }

    #[test]
    fn a_negative_amount_in_the_ledger_is_refused_naming_the_line_and_the_amount() {
        let text = format!("{}\n{{torn\n{}\n", entry(2.0), entry(-1000.0));
        let e = parse(&text, "ledger.jsonl").unwrap_err();
        assert_eq!((e.line, e.field, e.value), (3, "usd", -1000.0));
        let msg = e.to_string();
        assert!(
            msg.contains("ledger.jsonl line 3") && msg.contains("-1000"),
            "{msg}"
        );
        // a good ledger reads as before (the torn line skipped)
        let good = format!("{}\n{{torn\n{}\n", entry(2.0), entry(0.5));
        assert_eq!(spent(&parse(&good, "x").unwrap(), Some("p")), 2.5);
    }

    #[test]
    fn a_non_finite_amount_in_the_ledger_is_refused() {
        let span = RunSpan {
            phase: "p",
            provider: "aws",
            start: chrono::Utc::now(),
            end: chrono::Utc::now(),
            hours: 1.0,
            kind: "metered",
        };
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.01] {
            let mut e = span.spend("n".into(), "g", "t", "spot", 1.0);
            e.hours = bad;
            assert_eq!(check(&e).map_err(|(f, _)| f), Err("hours"), "{bad}");
        }
        // JSON cannot carry NaN, but an overflowing number must not become
        // infinity silently either
        let line = entry(1.0).replace("\"usd\":1.0", "\"usd\":1e999");
        assert!(parse(&line, "x").map(|v| v.is_empty()).unwrap_or(true));
    }
}
