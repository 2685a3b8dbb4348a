//! A task's `$INFRA_CHECKPOINT_DIR` on a node, mirrored to
//! `s3://<bucket>/<phase>/checkpoints/<name>/` (`name`: the task id, or
//! `<id>+rank<r>` for rank r > 0).
//!
//! - **Restore**: on the attempt's first step on this node the local folder
//!   becomes what the bucket holds (whichever node wrote it last).
//! - **Sync**: every `interval_seconds` while a foreground step runs, after
//!   a stop, a timeout or a spot notice (once the step's grace is over), and
//!   when the step ends: files whose size or modification time changed go
//!   up, files deleted locally are deleted in the bucket.
//!
//! What this node last put in (or took from) the bucket is remembered in
//! `$ROOT/checkpoint-state/<name>.json` (path → size and modification
//! time), so a step does not upload again what an earlier step of the task
//! already did, and only keys this node knows it wrote are ever deleted.
//! A task should write its checkpoint files whole (write a temporary file,
//! then rename it): a sync may happen at any moment.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::fsio;
use super::upload::{join_key, parse_dest, walk, S3};
use super::Fail;

/// Exit code of a step whose checkpoint could not be restored (nothing
/// was run: running from an empty folder would overwrite the checkpoint).
pub const EXIT_CHECKPOINT: i32 = 177;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointSpec {
    /// `s3://bucket/<phase>/checkpoints/<name>`
    pub dest: String,
    /// The folder name (`<task>` or `<task>+rank<r>`).
    pub name: String,
    /// Seconds between syncs while the step runs (0: only at the end).
    #[serde(default)]
    pub interval_seconds: u64,
}

/// (size, modification time in ns) of a file as it went up or came down.
type Seen = BTreeMap<String, (u64, i128)>;

pub struct Checkpoint {
    pub dir: PathBuf,
    state_file: PathBuf,
    bucket: String,
    prefix: String,
    pub interval: Option<Duration>,
    seen: Seen,
}

fn stamp(path: &Path) -> Option<(u64, i128)> {
    let m = std::fs::metadata(path).ok()?;
    let t = m.modified().ok()?;
    let ns = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    };
    Some((m.len(), ns))
}

impl Checkpoint {
    pub fn open(root: &Path, spec: &CheckpointSpec) -> Result<Checkpoint, Fail> {
        super::spec::check_component("checkpoint name", &spec.name)?;
        let (bucket, prefix) = parse_dest(&spec.dest).ok_or_else(|| {
            Fail::new(
                super::EXIT_USAGE,
                format!(
                    "bad --spec: checkpoint dest {:?} is not s3://bucket/prefix",
                    spec.dest
                ),
            )
        })?;
        let dir = root.join("checkpoint").join(&spec.name);
        let state_file = root
            .join("checkpoint-state")
            .join(format!("{}.json", spec.name));
        let seen = std::fs::read(&state_file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Ok(Checkpoint {
            dir,
            state_file,
            bucket,
            prefix,
            interval: (spec.interval_seconds > 0)
                .then(|| Duration::from_secs(spec.interval_seconds)),
            seen,
        })
    }

    fn save(&self) -> Result<(), Fail> {
        if let Some(d) = self.state_file.parent() {
            fsio::mkdirs(d)?;
        }
        let bytes = serde_json::to_vec(&self.seen).unwrap_or_default();
        fsio::write_atomic(&self.state_file, &bytes)
    }

    /// Make the local folder what the bucket holds.
    pub async fn restore(&mut self, s3: &S3) -> Result<usize, Fail> {
        let fail = |e: String| {
            Fail::new(
                EXIT_CHECKPOINT,
                format!(
                    "cannot restore the checkpoint from s3://{}/{}/: {e}",
                    self.bucket, self.prefix
                ),
            )
        };
        let keys = s3
            .list(&self.bucket, &format!("{}/", self.prefix))
            .await
            .map_err(fail)?;
        fsio::remove_all(&self.dir)?;
        fsio::mkdirs(&self.dir)?;
        self.seen.clear();
        let base = format!("{}/", self.prefix);
        let mut n = 0;
        for key in keys {
            let Some(rel) = key.strip_prefix(&base) else {
                continue;
            };
            if !super::spec::safe_rel(rel) {
                continue;
            }
            let path = self.dir.join(rel);
            if let Some(d) = path.parent() {
                fsio::mkdirs(d)?;
            }
            s3.get_to_file(&self.bucket, &key, &path)
                .await
                .map_err(fail)?;
            if let Some(st) = stamp(&path) {
                self.seen.insert(rel.to_string(), st);
            }
            n += 1;
        }
        self.save()?;
        Ok(n)
    }

    /// Send what changed since the last sync; delete what is gone. The
    /// folder's size in bytes.
    pub async fn sync(&mut self, s3: &S3) -> Result<u64, String> {
        let mut files = Vec::new();
        walk(&self.dir, "", &mut files);
        let mut bytes = 0;
        let mut present = std::collections::BTreeSet::new();
        for (rel, path) in &files {
            let Some(st) = stamp(path) else { continue };
            bytes += st.0;
            present.insert(rel.clone());
            if self.seen.get(rel) == Some(&st) {
                continue;
            }
            s3.put_file(&self.bucket, &join_key(&self.prefix, rel), path)
                .await?;
            self.seen.insert(rel.clone(), st);
        }
        let gone: Vec<String> = self
            .seen
            .keys()
            .filter(|k| !present.contains(*k))
            .cloned()
            .collect();
        for rel in gone {
            s3.delete(&self.bucket, &join_key(&self.prefix, &rel))
                .await?;
            self.seen.remove(&rel);
        }
        self.save().map_err(|f| f.msg)?;
        Ok(bytes)
    }
}
