//! The spend ledger (`.infra/ledger.jsonl`, one per project): every node's
//! metered lifetime × its price, appended as the runner observes it.

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
        }
    }
}

pub fn path(root: &Path) -> PathBuf {
    root.join(".infra").join("ledger.jsonl")
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

/// Every entry; torn or foreign lines are skipped.
pub fn read(root: &Path) -> Vec<Spend> {
    std::fs::read_to_string(path(root))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

pub fn spent(entries: &[Spend], phase: Option<&str>) -> f64 {
    entries
        .iter()
        .filter(|e| phase.is_none_or(|p| e.phase == p))
        .map(|e| e.usd)
        .sum::<f64>()
        + 0.0
}
