//! S3 from the node: the step's uploads, the setup log, the bundle's
//! objects. One client per agent, built only when something is sent or
//! fetched (a step whose bundle is current and whose upload is its three
//! small files pays for one client and three PUTs).
//!
//! The configuration is the SDK's default chain (instance profile
//! credentials, `AWS_REGION`/`AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL`), as
//! on the user's side (`provider::aws::config`) but without its up-front
//! credentials check (a second round trip to IMDS per step): S3 goes
//! path-style when an endpoint is set (the emulator).

use std::path::{Path, PathBuf};

use aws_config::BehaviorVersion;
use aws_sdk_s3::primitives::ByteStream;
use tokio::sync::OnceCell;

/// The S3 client, built on first use.
#[derive(Default)]
pub struct S3 {
    client: OnceCell<aws_sdk_s3::Client>,
}

impl S3 {
    pub async fn client(&self) -> &aws_sdk_s3::Client {
        self.client
            .get_or_init(|| async {
                let conf = aws_config::defaults(BehaviorVersion::latest()).load().await;
                let path_style = ["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"]
                    .iter()
                    .any(|k| std::env::var_os(k).is_some_and(|v| !v.is_empty()));
                let s3 = aws_sdk_s3::config::Builder::from(&conf)
                    .force_path_style(path_style)
                    .build();
                aws_sdk_s3::Client::from_conf(s3)
            })
            .await
    }

    /// The object, its body not read yet.
    async fn get_object(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<aws_sdk_s3::operation::get_object::GetObjectOutput, String> {
        self.client()
            .await
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| format!("s3://{bucket}/{key}: {}", err_text(&e)))
    }

    /// The object's bytes.
    pub async fn get(&self, bucket: &str, key: &str) -> Result<Vec<u8>, String> {
        let out = self.get_object(bucket, key).await?;
        let body = out
            .body
            .collect()
            .await
            .map_err(|e| format!("s3://{bucket}/{key}: {e}"))?;
        Ok(body.into_bytes().to_vec())
    }

    /// Download an object into `path` (streamed; a temporary file renamed
    /// into place).
    pub async fn get_to_file(&self, bucket: &str, key: &str, path: &Path) -> Result<(), String> {
        let out = self.get_object(bucket, key).await?;
        let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
        tmp_name.push(".part");
        let tmp = path.with_file_name(tmp_name);
        let mut f = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
        let mut body = out.body.into_async_read();
        let copied = tokio::io::copy(&mut body, &mut f).await;
        let synced = match copied {
            Ok(_) => tokio::io::AsyncWriteExt::flush(&mut f).await,
            Err(e) => Err(e),
        };
        drop(f);
        if let Err(e) = synced {
            let _ = std::fs::remove_file(&tmp);
            return Err(format!("s3://{bucket}/{key} -> {}: {e}", path.display()));
        }
        std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Every key under `prefix` (paginated).
    pub async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<String>, String> {
        let c = self.client().await;
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let out = c
                .list_objects_v2()
                .bucket(bucket)
                .prefix(prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| format!("s3://{bucket}/{prefix}: {}", err_text(&e)))?;
            keys.extend(
                out.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_string)),
            );
            match out.next_continuation_token() {
                Some(t) if out.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => return Ok(keys),
            }
        }
    }

    /// Delete one object.
    pub async fn delete(&self, bucket: &str, key: &str) -> Result<(), String> {
        let c = self.client().await;
        c.delete_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| format!("s3://{bucket}/{key}: {}", err_text(&e)))?;
        Ok(())
    }

    /// Upload one file.
    pub async fn put_file(&self, bucket: &str, key: &str, path: &Path) -> Result<(), String> {
        let c = self.client().await;
        let body = ByteStream::from_path(path)
            .await
            .map_err(|e| format!("{}: {e}", path.display()))?;
        c.put_object()
            .bucket(bucket)
            .key(key)
            .body(body)
            .send()
            .await
            .map_err(|e| format!("s3://{bucket}/{key}: {}", err_text(&e)))?;
        Ok(())
    }

    /// Upload files (key under `prefix`, local path), 8 at a time.
    pub async fn put_all(
        &self,
        bucket: &str,
        prefix: &str,
        files: &[(String, PathBuf)],
    ) -> Result<(), String> {
        use std::future::Future;
        use std::pin::Pin;
        type Put<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + 'a>>;
        let mut keys: Vec<String> = Vec::with_capacity(files.len());
        for (rel, _) in files {
            keys.push(join_key(prefix, rel));
        }
        let mut pending = files.iter().zip(keys.iter());
        let mut running: Vec<Put> = Vec::new();
        loop {
            while running.len() < 8 {
                let Some(((_, path), key)) = pending.next() else {
                    break;
                };
                running.push(Box::pin(self.put_file(bucket, key, path)));
            }
            if running.is_empty() {
                return Ok(());
            }
            // the first of the running uploads to finish
            let (r, _, rest) = select_all(running).await;
            r?;
            running = rest;
        }
    }
}

/// `futures::select_all` without the crate: the first future to finish,
/// its index, and the others.
async fn select_all<T, F: std::future::Future<Output = T> + Unpin>(
    mut futs: Vec<F>,
) -> (T, usize, Vec<F>) {
    use std::task::Poll;
    std::future::poll_fn(move |cx| {
        for i in 0..futs.len() {
            if let Poll::Ready(v) = std::pin::Pin::new(&mut futs[i]).poll(cx) {
                drop(futs.swap_remove(i));
                return Poll::Ready((v, i, std::mem::take(&mut futs)));
            }
        }
        Poll::Pending
    })
    .await
}

/// The service's error code and message, else the error's chain (short).
fn err_text<E>(e: &E) -> String
where
    E: std::error::Error + aws_sdk_s3::error::ProvideErrorMetadata,
{
    if let Some(code) = e.code() {
        return format!("{code}: {}", e.message().unwrap_or(""));
    }
    let text = aws_smithy_types::error::display::DisplayErrorContext(e).to_string();
    match text.char_indices().nth(400) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text,
    }
}

pub fn join_key(prefix: &str, rel: &str) -> String {
    if prefix.is_empty() {
        rel.to_string()
    } else {
        format!("{}/{rel}", prefix.trim_end_matches('/'))
    }
}

/// `s3://bucket/prefix` -> (bucket, prefix without a trailing `/`).
pub fn parse_dest(dest: &str) -> Option<(String, String)> {
    let rest = dest.strip_prefix("s3://")?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return None;
    }
    Some((bucket.to_string(), prefix.trim_end_matches('/').to_string()))
}

/// Every file under `dir` (following symbolic links to files, not to
/// folders), as (path relative to `dir` with `/`, path), prefixed by `base`.
pub fn walk(dir: &Path, base: &str, out: &mut Vec<(String, PathBuf)>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = rd.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let rel = if base.is_empty() {
            name
        } else {
            format!("{base}/{name}")
        };
        let p = e.path();
        let Ok(lm) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if lm.is_dir() {
            walk(&p, &rel, out);
        } else if std::fs::metadata(&p).is_ok_and(|m| m.is_file()) {
            out.push((rel, p));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_and_keys() {
        assert_eq!(parse_dest("s3://b/p/q/"), Some(("b".into(), "p/q".into())));
        assert_eq!(parse_dest("s3://b"), Some(("b".into(), "".into())));
        assert_eq!(parse_dest("b/p"), None);
        assert_eq!(parse_dest("s3:///p"), None);
        assert_eq!(
            join_key("p/q", "steps/0/stdout.log"),
            "p/q/steps/0/stdout.log"
        );
        assert_eq!(join_key("", "x"), "x");
    }
}
