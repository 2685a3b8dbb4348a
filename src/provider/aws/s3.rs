//! The results bucket: the task bundle going up (only what changed, by a
//! manifest of content hashes), results coming down, and clean-up.

use std::collections::BTreeMap;
use std::path::{Component, Path};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use sha2::{Digest, Sha256};

use super::config::Clients;
use super::error::{api, code, AwsError};
use super::layout;
use super::script::BundleRef;

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The bucket a base stack of `prefix` made in `region` earlier, if it is
/// still there (it is retained when the base stack goes).
pub async fn find_bucket(
    c: &Clients,
    prefix: &str,
    region: &str,
) -> Result<Option<String>, AwsError> {
    let out =
        c.s3.list_buckets()
            .send()
            .await
            .map_err(api("list the S3 buckets"))?;
    let suffix = format!("-{region}");
    Ok(out.buckets().iter().filter_map(|b| b.name()).find_map(|n| {
        let middle = n
            .strip_prefix(prefix)?
            .strip_prefix('-')?
            .strip_suffix(&suffix)?;
        (middle.len() == 12 && middle.chars().all(|c| c.is_ascii_digit())).then(|| n.to_string())
    }))
}

pub async fn put(c: &Clients, bucket: &str, key: &str, bytes: Vec<u8>) -> Result<(), AwsError> {
    c.s3.put_object()
        .bucket(bucket)
        .key(key)
        .body(ByteStream::from(bytes))
        .send()
        .await
        .map_err(api(format!("upload s3://{bucket}/{key}")))?;
    Ok(())
}

/// Delete the current version of `key` (the bucket keeps the older ones).
pub async fn delete(c: &Clients, bucket: &str, key: &str) -> Result<(), AwsError> {
    c.s3.delete_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(api(format!("delete s3://{bucket}/{key}")))?;
    Ok(())
}

/// Upload only when no object of `key` exists (`If-None-Match: *`):
/// `Ok(true)` when this call created it, `Ok(false)` when one was there.
pub async fn put_if_absent(
    c: &Clients,
    bucket: &str,
    key: &str,
    bytes: Vec<u8>,
) -> Result<bool, AwsError> {
    match c
        .s3
        .put_object()
        .bucket(bucket)
        .key(key)
        .if_none_match("*")
        .body(ByteStream::from(bytes))
        .send()
        .await
    {
        Ok(_) => Ok(true),
        Err(e)
            if code(&e) == Some("PreconditionFailed")
                || e.raw_response().map(|r| r.status().as_u16()) == Some(412) =>
        {
            Ok(false)
        }
        Err(e) => Err(api(format!("upload s3://{bucket}/{key}"))(e)),
    }
}

pub async fn get(c: &Clients, bucket: &str, key: &str) -> Result<Option<Vec<u8>>, AwsError> {
    match c.s3.get_object().bucket(bucket).key(key).send().await {
        Ok(o) => {
            let data = o.body.collect().await.map_err(|e| AwsError::Api {
                action: format!("download s3://{bucket}/{key}"),
                message: e.to_string(),
            })?;
            Ok(Some(data.into_bytes().to_vec()))
        }
        Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
        Err(e) => Err(api(format!("download s3://{bucket}/{key}"))(e)),
    }
}

/// Keys (and sizes) under `prefix`.
pub async fn list(c: &Clients, bucket: &str, prefix: &str) -> Result<Vec<(String, i64)>, AwsError> {
    list_after(c, bucket, prefix, None).await
}

/// Keys (and sizes) under `prefix` that sort after `start_after`.
pub async fn list_after(
    c: &Clients,
    bucket: &str,
    prefix: &str,
    start_after: Option<&str>,
) -> Result<Vec<(String, i64)>, AwsError> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page =
            c.s3.list_objects_v2()
                .bucket(bucket)
                .prefix(prefix)
                .set_start_after(start_after.map(str::to_string))
                .set_continuation_token(token.clone())
                .send()
                .await
                .map_err(api(format!("list s3://{bucket}/{prefix}")))?;
        for o in page.contents() {
            if let Some(k) = o.key() {
                out.push((k.to_string(), o.size().unwrap_or(0)));
            }
        }
        token = page.next_continuation_token().map(str::to_string);
        if token.is_none() || page.is_truncated() != Some(true) {
            break;
        }
    }
    Ok(out)
}

/// A relative path from an object key, refusing anything that would leave
/// the destination folder.
fn safe_rel(rel: &str) -> Option<&Path> {
    let p = Path::new(rel);
    (!rel.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)))).then_some(p)
}

/// Download everything under `prefix` into `dir` (keys relative to the
/// prefix); returns the relative paths written.
pub async fn download_prefix(
    c: &Clients,
    bucket: &str,
    prefix: &str,
    dir: &Path,
) -> Result<Vec<String>, AwsError> {
    let mut written = Vec::new();
    for (key, _) in list(c, bucket, prefix).await? {
        let rel = key[prefix.len()..].trim_start_matches('/').to_string();
        let Some(relp) = safe_rel(&rel) else { continue };
        let Some(bytes) = get(c, bucket, &key).await? else {
            continue;
        };
        let to = dir.join(relp);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(AwsError::io(parent))?;
        }
        std::fs::write(&to, bytes).map_err(AwsError::io(&to))?;
        written.push(rel);
    }
    Ok(written)
}

/// Delete every version and delete marker under `prefix` (the bucket is
/// versioned: deleting the current objects only hides them, and a bucket
/// with versions left cannot be deleted); returns how many object keys had
/// a current version.
pub async fn delete_prefix_versions(
    c: &Clients,
    bucket: &str,
    prefix: &str,
) -> Result<usize, AwsError> {
    let mut versions: Vec<(String, Option<String>)> = Vec::new();
    let mut current = 0;
    let (mut key_marker, mut version_marker): (Option<String>, Option<String>) = (None, None);
    loop {
        let page =
            c.s3.list_object_versions()
                .bucket(bucket)
                .prefix(prefix)
                .set_key_marker(key_marker.clone())
                .set_version_id_marker(version_marker.clone())
                .send()
                .await
                .map_err(api(format!(
                    "list the versions under s3://{bucket}/{prefix}"
                )))?;
        for v in page.versions() {
            if let Some(k) = v.key() {
                current += usize::from(v.is_latest() == Some(true));
                versions.push((k.to_string(), v.version_id().map(str::to_string)));
            }
        }
        for m in page.delete_markers() {
            if let Some(k) = m.key() {
                versions.push((k.to_string(), m.version_id().map(str::to_string)));
            }
        }
        if page.is_truncated() != Some(true) {
            break;
        }
        key_marker = page.next_key_marker().map(str::to_string);
        version_marker = page.next_version_id_marker().map(str::to_string);
        if key_marker.is_none() && version_marker.is_none() {
            break;
        }
    }
    delete_versions(c, bucket, &versions, prefix).await?;
    Ok(current)
}

/// Delete `keys`, a thousand per request (`what` names them in an error).
async fn delete_keys(
    c: &Clients,
    bucket: &str,
    keys: &[String],
    what: &str,
) -> Result<(), AwsError> {
    let keys: Vec<(String, Option<String>)> = keys.iter().map(|k| (k.clone(), None)).collect();
    delete_versions(c, bucket, &keys, what).await
}

/// Delete `(key, version)`s (the current version where none is given), a
/// thousand per request (`what` names them in an error).
async fn delete_versions(
    c: &Clients,
    bucket: &str,
    keys: &[(String, Option<String>)],
    what: &str,
) -> Result<(), AwsError> {
    for chunk in keys.chunks(1000) {
        let ids: Vec<ObjectIdentifier> = chunk
            .iter()
            .filter_map(|(k, v)| {
                ObjectIdentifier::builder()
                    .key(k)
                    .set_version_id(v.clone())
                    .build()
                    .ok()
            })
            .collect();
        let del = Delete::builder()
            .set_objects(Some(ids))
            .quiet(true)
            .build()
            .map_err(|e| AwsError::Failed(e.to_string()))?;
        let out =
            c.s3.delete_objects()
                .bucket(bucket)
                .delete(del)
                .send()
                .await
                .map_err(api(format!("delete objects under s3://{bucket}/{what}")))?;
        if let Some(e) = out.errors().first() {
            return Err(AwsError::Failed(format!(
                "cannot delete s3://{bucket}/{}: {} {}",
                e.key().unwrap_or_default(),
                e.code().unwrap_or_default(),
                e.message().unwrap_or_default()
            )));
        }
    }
    Ok(())
}

pub async fn delete_bucket(c: &Clients, bucket: &str) -> Result<bool, AwsError> {
    match c.s3.delete_bucket().bucket(bucket).send().await {
        Ok(_) => Ok(true),
        Err(e) if code(&e) == Some("NoSuchBucket") => Ok(false),
        Err(e) => Err(api(format!("delete bucket {bucket}"))(e)),
    }
}

/// What the bundle holds: key (relative to the bundle prefix) → bytes.
pub type Files = BTreeMap<String, Vec<u8>>;

/// Every file under `dir`, keyed `<under>/<relative path>`.
pub fn collect_dir(dir: &Path, under: &str, out: &mut Files) -> std::io::Result<()> {
    fn walk(base: &Path, dir: &Path, under: &str, out: &mut Files) -> std::io::Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)?.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let ft = e.file_type()?;
            if ft.is_dir() {
                if e.file_name().to_string_lossy().starts_with('.')
                    || e.file_name() == "__pycache__"
                {
                    continue;
                }
                walk(base, &p, under, out)?;
            } else if ft.is_file() {
                let rel = p
                    .strip_prefix(base)
                    .unwrap_or(&p)
                    .to_string_lossy()
                    .replace('\\', "/");
                out.insert(format!("{under}/{rel}"), std::fs::read(&p)?);
            }
        }
        Ok(())
    }
    if dir.is_dir() {
        walk(dir, dir, under, out)?;
    }
    Ok(())
}

/// What an upload did.
#[derive(Debug, Clone, PartialEq)]
pub struct Uploaded {
    pub bundle: BundleRef,
    pub files: usize,
    pub uploaded: usize,
    pub deleted: usize,
}

/// Upload the bundle under `<phase>/_bundle/`, only the files whose content
/// changed since the last upload (by the manifest `<phase>/_bundle.manifest`,
/// content hashes); files gone from the bundle are deleted.
pub async fn upload_bundle(
    c: &Clients,
    bucket: &str,
    phase: &str,
    files: &Files,
) -> Result<Uploaded, AwsError> {
    let prefix = layout::bundle_prefix(phase);
    let manifest_key = layout::manifest_key(phase);
    let new: BTreeMap<String, String> = files
        .iter()
        .map(|(k, v)| (k.clone(), sha256_hex(v)))
        .collect();
    let old_bytes = get(c, bucket, &manifest_key).await?;
    let old: BTreeMap<String, String> = match &old_bytes {
        Some(b) => serde_json::from_slice(b).unwrap_or_default(),
        None => BTreeMap::new(),
    };
    // changed files, 16 uploads at a time (one by one, a campaign of a few
    // hundred task definitions took tens of seconds before its first task)
    let changed: Vec<&String> = new
        .iter()
        .filter(|(k, h)| old.get(*k) != Some(*h))
        .map(|(k, _)| k)
        .collect();
    let mut uploaded = 0;
    for chunk in changed.chunks(16) {
        let mut set = tokio::task::JoinSet::new();
        for k in chunk {
            let (c, bucket) = (c.clone(), bucket.to_string());
            let (key, bytes) = (format!("{prefix}/{k}"), files[*k].clone());
            set.spawn(async move { put(&c, &bucket, &key, bytes).await });
        }
        while let Some(r) = set.join_next().await {
            r.map_err(|e| AwsError::Failed(format!("an upload of the bundle failed: {e}")))??;
            uploaded += 1;
        }
    }
    let gone: Vec<String> = old
        .keys()
        .filter(|k| !new.contains_key(*k))
        .map(|k| format!("{prefix}/{k}"))
        .collect();
    delete_keys(c, bucket, &gone, &prefix).await?;
    let deleted = gone.len();
    // The nodes check the manifest's bytes against the SHA-256 their
    // command carries, so the object must be exactly these bytes. (The
    // nodes fetch what they run — scripts/, setup.sh — not the task
    // definitions, whose commands come with each Run Command: a changed
    // task definition changes the manifest, but no node fetches a file.)
    let text = serde_json::to_vec_pretty(&new).unwrap_or_default();
    if old_bytes.as_deref() != Some(text.as_slice()) {
        put(c, bucket, &manifest_key, text.clone()).await?;
    }
    Ok(Uploaded {
        bundle: BundleRef {
            bucket: bucket.to_string(),
            prefix: prefix.clone(),
            manifest_key: manifest_key.clone(),
            manifest_sha256: sha256_hex(&text),
            region: c.settings.region.clone(),
        },
        files: new.len(),
        uploaded,
        deleted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cannot_escape_the_destination() {
        assert!(safe_rel("a/b.txt").is_some());
        assert!(safe_rel("../x").is_none());
        assert!(safe_rel("a/../../x").is_none());
        assert!(safe_rel("/etc/passwd").is_none());
        assert!(safe_rel("").is_none());
    }
}
