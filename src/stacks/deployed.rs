//! What `infra apply` deployed, kept in `.infra/<phase>/deployed.json`:
//! the stacks' templates, what the nodes cost per hour, and a digest of the
//! stacks' bytes. `infra plan` diffs
//! against it; a plan saved with `infra plan -o` carries its digest, and
//! `infra apply FILE` refuses when what is deployed changed since.
//! `infra destroy` forgets the compute stack (with `--all`, everything).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::Stacks;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeployedStack {
    pub name: String,
    pub template: Value,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Deployed {
    pub applied_at: String,
    /// By role: `base`, `compute`.
    pub stacks: BTreeMap<String, DeployedStack>,
    /// What the deployed nodes cost per hour at the catalog's prices.
    pub hourly_usd: f64,
    /// Of the deployed stacks' bytes ([`digest`]).
    pub digest: String,
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("deployed.json")
}

/// The digest of a set of stacks: SHA-256 over each role and body.
pub fn digest<'a>(stacks: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut h = Sha256::new();
    for (role, body) in stacks {
        h.update(role.as_bytes());
        h.update([0]);
        h.update(body.as_bytes());
        h.update([0]);
    }
    format!("{:x}", h.finalize())
}

/// The digest of rendered stacks, as [`record`] computes it.
pub fn digest_of(s: &Stacks) -> String {
    digest([
        ("base", s.base.body.as_str()),
        ("compute", s.compute.body.as_str()),
    ])
}

impl Deployed {
    /// The digest of what is deployed now (after a `destroy` that kept the
    /// base stack, of that alone).
    fn recompute(&mut self) {
        let bodies: Vec<(String, String)> = self
            .stacks
            .iter()
            .map(|(role, s)| {
                (
                    role.clone(),
                    super::RenderedStack::new(s.name.clone(), s.template.clone()).body,
                )
            })
            .collect();
        self.digest = digest(bodies.iter().map(|(r, b)| (r.as_str(), b.as_str())));
    }
}

pub fn read(state_dir: &Path) -> Option<Deployed> {
    let text = std::fs::read_to_string(path(state_dir)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Record the stacks just deployed (written atomically).
pub fn record(state_dir: &Path, s: &Stacks, hourly_usd: f64) -> std::io::Result<()> {
    let d = Deployed {
        applied_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        stacks: [("base", &s.base), ("compute", &s.compute)]
            .into_iter()
            .map(|(role, r)| {
                (
                    role.to_string(),
                    DeployedStack {
                        name: r.name.clone(),
                        template: r.template.clone(),
                    },
                )
            })
            .collect(),
        hourly_usd,
        digest: digest_of(s),
    };
    write(state_dir, &d)
}

fn write(state_dir: &Path, d: &Deployed) -> std::io::Result<()> {
    std::fs::create_dir_all(state_dir)?;
    let p = path(state_dir);
    let tmp = p.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(d).unwrap_or_default())?;
    std::fs::rename(tmp, p)
}

/// After `destroy`: the compute stack is gone (`all`: the base too); its
/// nodes cost nothing any more.
pub fn forget(state_dir: &Path, all: bool) -> std::io::Result<()> {
    let Some(mut d) = read(state_dir) else {
        return Ok(());
    };
    d.stacks.remove("compute");
    if all || d.stacks.is_empty() {
        return match std::fs::remove_file(path(state_dir)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    d.hourly_usd = 0.0;
    d.recompute();
    write(state_dir, &d)
}
