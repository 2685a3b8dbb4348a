//! The campaign's state in the project's bucket, so that any checkout sees
//! it: the journal as segments (`campaign::segments`, stored here under
//! `<phase>/_state/journal/`), and each ended task's result as the
//! controller finalized it (`<phase>/results/<task>/attempt-<n>/_final/`,
//! beside the attempt's outputs in `files/`).
//!
//! A run uploads both in the background (`segments::Pusher`: every few seconds
//! while the journal grows, and once more at its end); a command that reads
//! the campaign first pulls the journal ([`pull`]), and `results`/`logs`
//! fetch the results this machine lacks ([`fetch_results`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::cfn;
use super::config::Clients;
use super::error::AwsError;
use super::layout;
use super::s3;
use super::state;
use crate::campaign::segments::{self, Pulled, SegmentStore, StoreFut};
use crate::plan::Plan;
use crate::runner::journal::{self, Entry, Record};
use crate::stacks::names;

/// The result files the controller writes that the bucket does not have
/// from the nodes (the outputs are the attempt's `files/`).
const FINAL_FILES: [&str; 3] = ["runtime.json", "stdout.log", "stderr.log"];

/// The project's bucket: this machine's record of it, else the base
/// stack's output, else the bucket a deleted base stack left. `None`: the
/// project has none.
pub async fn find_bucket(c: &Clients, plan: &Plan) -> Result<Option<String>, AwsError> {
    if let Some(b) = state::load(plan)
        .map(|s| s.bucket)
        .filter(|b| !b.is_empty())
    {
        return Ok(Some(b));
    }
    let base = cfn::describe(c, &names::base_stack_name(&plan.project)).await?;
    if let Some(b) = base
        .filter(|s| !s.dead())
        .and_then(|s| s.outputs.get("BucketName").cloned())
    {
        return Ok(Some(b));
    }
    s3::find_bucket(c, &names::bucket_prefix(&plan.project), &c.settings.region).await
}

/// A phase's journal segments in the bucket; before a segment goes up, the
/// results of the tasks it says ended.
#[derive(Clone)]
pub struct BucketJournal {
    pub c: Clients,
    pub bucket: String,
    pub phase: String,
    pub results_dir: PathBuf,
}

impl SegmentStore for BucketJournal {
    fn list(&self) -> StoreFut<'_, Result<Vec<u64>, String>> {
        Box::pin(async move {
            let keys = s3::list(&self.c, &self.bucket, &layout::journal_prefix(&self.phase))
                .await
                .map_err(|e| e.to_string())?;
            Ok(keys
                .iter()
                .filter_map(|(k, _)| layout::journal_segment_seq(&self.phase, k))
                .collect())
        })
    }

    fn get(&self, seq: u64) -> StoreFut<'_, Result<Option<Vec<u8>>, String>> {
        Box::pin(async move {
            let key = layout::journal_segment_key(&self.phase, seq);
            s3::get(&self.c, &self.bucket, &key)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn put_new(&self, seq: u64, body: Vec<u8>) -> StoreFut<'_, Result<bool, String>> {
        Box::pin(async move {
            let key = layout::journal_segment_key(&self.phase, seq);
            s3::put_if_absent(&self.c, &self.bucket, &key, body)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn before_segment<'a>(&'a self, body: &'a [u8]) -> StoreFut<'a, Result<(), String>> {
        Box::pin(async move {
            for (task, attempt) in ended(body) {
                self.upload_final(&task, attempt).await?;
            }
            Ok(())
        })
    }
}

impl BucketJournal {
    pub fn new(c: &Clients, bucket: &str, plan: &Plan) -> BucketJournal {
        BucketJournal {
            c: c.clone(),
            bucket: bucket.to_string(),
            phase: plan.name_key.clone(),
            results_dir: plan.results_dir(),
        }
    }

    /// Upload `results/<phase>/<task>/`'s runtime and logs when they are
    /// this attempt's (a later attempt's result replaces them).
    async fn upload_final(&self, task: &str, attempt: u32) -> Result<(), String> {
        let dir = self.results_dir.join(task);
        let attempts = std::fs::read(dir.join("runtime.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["attempts"].as_u64());
        if attempts != Some(attempt as u64) {
            return Ok(());
        }
        let prefix = layout::final_prefix(&self.phase, task, attempt);
        for f in FINAL_FILES {
            let Ok(bytes) = std::fs::read(dir.join(f)) else {
                continue;
            };
            s3::put(&self.c, &self.bucket, &format!("{prefix}/{f}"), bytes)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// The tasks whose attempt ended for good on a line of `body` (succeeded,
/// or failed with no retry left), with that attempt.
fn ended(body: &[u8]) -> Vec<(String, u32)> {
    body.split(|b| *b == b'\n')
        .filter_map(|l| serde_json::from_slice::<Record>(l).ok())
        .filter_map(|r| match r.entry {
            Entry::Succeeded { task, attempt, .. } | Entry::Failed { task, attempt, .. } => {
                Some((task, attempt))
            }
            _ => None,
        })
        .collect()
}

/// Bring `.infra/<phase>/journal.jsonl` up to date with the bucket, and
/// say what happened on `log`. Nothing when a run on this machine holds
/// the phase (it keeps the bucket up to date itself).
pub async fn pull(c: &Clients, plan: &Plan, log: &dyn Fn(&str)) -> Result<(), AwsError> {
    let dir = plan.state_dir();
    if crate::runner::lock::is_held(&dir.join("run.lock")) {
        return Ok(());
    }
    let Some(bucket) = find_bucket(c, plan).await? else {
        return Ok(());
    };
    let store = BucketJournal::new(c, &bucket, plan);
    let at = format!("s3://{bucket}/{}", layout::journal_prefix(&plan.name_key));
    let pulled = match segments::pull(&store, &dir).await {
        // `destroy --all --delete-results` deleted it: nothing is shared
        Err(e) if e.contains("NoSuchBucket") => return Ok(()),
        r => r.map_err(AwsError::Failed)?,
    };
    match pulled {
        Pulled::UpToDate => {}
        Pulled::StoreEmptied => log(&format!(
            "{}: the journal in the bucket was deleted (`infra destroy --delete-results`): this machine's journal stays here, only new lines go to {at}",
            plan.name_key
        )),
        Pulled::Uploaded(n) => log(&format!(
            "{}: journal lines this machine had not uploaded went to {at} ({n} segment(s))",
            plan.name_key
        )),
        Pulled::Rebuilt {
            segments,
            set_aside,
        } => {
            log(&format!(
                "{}: journal brought up to date from {at} ({segments} new segment(s))",
                plan.name_key
            ));
            if let Some(p) = set_aside {
                log(&format!(
                    "warning: {}: this machine's journal had lines it never uploaded, and the bucket's journal has moved on since: the bucket's is used, this machine's is kept as {}",
                    plan.name_key,
                    p.display()
                ));
            }
        }
    }
    Ok(())
}

/// The last outcome of each task that ended for good, by task id: the
/// attempt whose result is on the first machine.
fn outcomes(records: &[Record]) -> BTreeMap<String, u32> {
    let mut m = BTreeMap::new();
    for r in records {
        match &r.entry {
            Entry::Succeeded { task, attempt, .. } | Entry::Failed { task, attempt, .. } => {
                m.insert(task.clone(), *attempt);
            }
            // run again deliberately: its earlier result is history
            Entry::Rerun { task, .. } => {
                m.remove(task);
            }
            _ => {}
        }
    }
    m
}

/// What [`fetch_results`] did.
#[derive(Debug, Default)]
pub struct Fetched {
    pub fetched: usize,
    /// Ended tasks whose result the bucket does not hold (a run that
    /// ended before the bucket kept results, or whose upload failed).
    pub missing: Vec<String>,
}

/// Fetch from the bucket the results of ended tasks that this machine does
/// not have (all, or the task `only`) into `results/<phase>/<task>/`: the
/// same files as on the machine that ran them.
pub async fn fetch_results(
    c: &Clients,
    plan: &Plan,
    only: Option<&str>,
) -> Result<Fetched, AwsError> {
    let mut out = Fetched::default();
    let (_, records) = match journal::read(&plan.state_dir().join("journal.jsonl")) {
        Ok(r) => r,
        Err(_) => return Ok(out),
    };
    let want: Vec<(String, u32)> = outcomes(&records)
        .into_iter()
        .filter(|(t, _)| only.is_none_or(|o| o == t))
        .filter(|(t, a)| !have(&plan.results_dir().join(t), *a))
        .collect();
    if want.is_empty() {
        return Ok(out);
    }
    let Some(bucket) = find_bucket(c, plan).await? else {
        out.missing = want.into_iter().map(|w| w.0).collect();
        return Ok(out);
    };
    let results = plan.results_dir();
    std::fs::create_dir_all(&results).map_err(AwsError::io(&results))?;
    for (task, attempt) in want {
        if fetch_one(c, &bucket, plan, &results, &task, attempt).await? {
            out.fetched += 1;
        } else {
            out.missing.push(task);
        }
    }
    Ok(out)
}

/// Whether `dir` holds the result of `attempt`.
fn have(dir: &Path, attempt: u32) -> bool {
    std::fs::read(dir.join("runtime.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["attempts"].as_u64())
        == Some(attempt as u64)
}

async fn fetch_one(
    c: &Clients,
    bucket: &str,
    plan: &Plan,
    results: &Path,
    task: &str,
    attempt: u32,
) -> Result<bool, AwsError> {
    let tmp = results.join(format!(".{task}.fetch"));
    let _ = std::fs::remove_dir_all(&tmp);
    let fin = format!("{}/", layout::final_prefix(&plan.name_key, task, attempt));
    let got = s3::download_prefix(c, bucket, &fin, &tmp).await?;
    if !got.iter().any(|f| f == "runtime.json") {
        let _ = std::fs::remove_dir_all(&tmp);
        return Ok(false);
    }
    let files = format!(
        "{}/files/",
        layout::attempt_prefix(&plan.name_key, task, attempt)
    );
    s3::download_prefix(c, bucket, &files, &tmp).await?;
    let dest = results.join(task);
    let _ = std::fs::remove_dir_all(&dest);
    std::fs::rename(&tmp, &dest).map_err(AwsError::io(&dest))?;
    Ok(true)
}

/// Succeeded tasks of the journal whose results are not on this machine.
pub(super) fn missing_results(plan: &Plan) -> Result<Vec<String>, crate::provider::ProviderError> {
    let (js, _) = journal::read(&plan.state_dir().join("journal.jsonl"))?;
    let mut missing: Vec<String> = js
        .tasks
        .values()
        .filter(|t| t.status == journal::Status::Succeeded)
        .filter(|t| {
            let d = plan.results_dir().join(&t.id);
            !(d.join("runtime.json").is_file() && d.join("stdout.log").is_file())
        })
        .map(|t| t.id.clone())
        .collect();
    missing.sort();
    Ok(missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(entry: Entry) -> Record {
        Record {
            v: journal::JOURNAL_VERSION,
            ts: "t".into(),
            entry,
        }
    }

    #[test]
    fn a_task_run_again_has_no_result_to_fetch_until_its_new_attempt_ends() {
        let ok = |attempt| {
            rec(Entry::Succeeded {
                task: "a".into(),
                key: "k".into(),
                attempt,
                wall_seconds: 1.0,
                cost_usd: 0.0,
                definition: None,
            })
        };
        let rerun = rec(Entry::Rerun {
            task: "a".into(),
            key: "k".into(),
            reason: "asked for with --rerun".into(),
        });
        assert_eq!(outcomes(&[ok(1)]).get("a"), Some(&1));
        // its earlier result is history: not fetched back into results/
        assert_eq!(outcomes(&[ok(1), rerun.clone()]).get("a"), None);
        assert_eq!(outcomes(&[ok(1), rerun, ok(2)]).get("a"), Some(&2));
    }
}
