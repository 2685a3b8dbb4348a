//! The task bundle on the node (`$ROOT/bundle/`): fetched and verified
//! against the hashes the command itself carries, before anything of it
//! runs. The command gives the SHA-256 of the manifest object; the manifest
//! (JSON: relative path -> SHA-256) gives every file's. A node role that can
//! write the bucket can therefore not make a node run anything else: a
//! tampered manifest or file is refused (exit 172) and nothing runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::fsio::{self, sha256_hex};
use super::spec::{safe_rel, BundleSpec};
use super::upload::{join_key, S3};
use super::{Fail, EXIT_BUNDLE};

/// The part of the bundle nodes do not fetch (each step's command comes
/// with its Run Command): the task definitions.
pub const NODE_SKIPS: &str = "tasks/";

fn refuse(msg: String) -> Fail {
    Fail::new(EXIT_BUNDLE, format!("{msg}; nothing was run"))
}

/// Make `$ROOT/bundle/` the bundle of `spec` unless it already is (by
/// `$ROOT/bundle.hash`); None: nothing to do.
pub async fn ensure(root: &Path, spec: Option<&BundleSpec>, s3: &S3) -> Result<(), Fail> {
    let Some(b) = spec else {
        return Ok(());
    };
    let want = b.manifest_sha256.trim().to_ascii_lowercase();
    let hash_file = root.join("bundle.hash");
    let current = || std::fs::read_to_string(&hash_file).map(|s| s.trim().to_string());
    if current().is_ok_and(|h| h == want) {
        return Ok(());
    }
    fsio::mkdirs(root)?;
    // one fetch at a time on a node (steps of several slots start together)
    let _lock = fsio::lock(&root.join("bundle.lock"))?;
    if current().is_ok_and(|h| h == want) {
        return Ok(());
    }
    let manifest_bytes = s3.get(&b.bucket, &b.manifest_key).await.map_err(|e| {
        Fail::new(
            EXIT_BUNDLE,
            format!("cannot fetch the task bundle's manifest {e}"),
        )
    })?;
    let got = sha256_hex(&manifest_bytes);
    if got != want {
        return Err(refuse(format!(
            "the bundle manifest s3://{}/{} has SHA-256 {got}, the command expects {want}: it was changed after infra wrote it",
            b.bucket, b.manifest_key
        )));
    }
    let manifest: BTreeMap<String, String> =
        serde_json::from_slice(&manifest_bytes).map_err(|e| {
            refuse(format!(
                "the bundle manifest is not a JSON map of hashes: {e}"
            ))
        })?;
    let dir = root.join("bundle");
    fsio::mkdirs(&dir)?;
    let wanted: BTreeMap<&String, String> = manifest
        .iter()
        .filter(|(k, _)| !k.starts_with(NODE_SKIPS))
        .map(|(k, v)| (k, v.trim().to_ascii_lowercase()))
        .collect();
    for k in wanted.keys() {
        if !safe_rel(k) {
            return Err(refuse(format!(
                "the bundle manifest names {k:?}, a path outside the bundle folder"
            )));
        }
    }
    // fetch and check every changed file first, then swap them all in
    let mut staged: Vec<(PathBuf, PathBuf)> = Vec::new();
    let result = fetch_changed(b, &dir, &wanted, s3, &mut staged).await;
    if let Err(f) = result {
        for (tmp, _) in &staged {
            let _ = std::fs::remove_file(tmp);
        }
        return Err(f);
    }
    for (tmp, to) in &staged {
        std::fs::rename(tmp, to).map_err(|e| fsio::write_fail(to, &e))?;
    }
    // files gone from the bundle go (as `aws s3 sync --delete` did)
    let mut local = Vec::new();
    super::upload::walk(&dir, "", &mut local);
    for (rel, p) in local {
        if !wanted.contains_key(&rel) {
            let _ = std::fs::remove_file(p);
        }
    }
    fsio::write_atomic(&hash_file, format!("{want}\n").as_bytes())
}

async fn fetch_changed(
    b: &BundleSpec,
    dir: &Path,
    wanted: &BTreeMap<&String, String>,
    s3: &S3,
    staged: &mut Vec<(PathBuf, PathBuf)>,
) -> Result<(), Fail> {
    for (rel, hash) in wanted {
        let to = dir.join(rel.as_str());
        if std::fs::read(&to).is_ok_and(|bytes| &sha256_hex(&bytes) == hash) {
            continue;
        }
        let key = join_key(&b.prefix, rel);
        let bytes = s3
            .get(&b.bucket, &key)
            .await
            .map_err(|e| Fail::new(EXIT_BUNDLE, format!("cannot fetch the task bundle: {e}")))?;
        let got = sha256_hex(&bytes);
        if &got != hash {
            return Err(refuse(format!(
                "the bundle file s3://{}/{key} has SHA-256 {got}, its manifest says {hash}: it was changed after infra wrote it",
                b.bucket
            )));
        }
        if let Some(parent) = to.parent() {
            fsio::mkdirs(parent)?;
        }
        let mut name = to.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".fetch{}", std::process::id()));
        let tmp = to.with_file_name(name);
        fsio::write(&tmp, &bytes)?;
        staged.push((tmp, to));
    }
    Ok(())
}
