//! `infra logs --follow` on AWS: the chunks the node agents upload of a
//! running attempt's logs (`node::live`, under `layout::live_prefix`),
//! read in the order they came, each once.

use super::config::Clients;
use super::error::AwsError;
use super::layout;
use super::s3;
use crate::provider::live_log::{LiveCursor, LogChunk, Stream};

/// How far before the newest chunk read a listing starts again: chunks of
/// other steps (another node, a clock a little behind) may land with an
/// earlier time after it.
const OVERLAP_MS: u64 = 120_000;

/// A chunk's name: (time in ms, step key, stream, byte offset).
pub fn parse_chunk(name: &str) -> Option<(u64, &str, Stream, u64)> {
    let mut parts = name.splitn(2, '.');
    let ms = parts.next()?.parse().ok()?;
    let rest = parts.next()?;
    let (rest, offset) = rest.rsplit_once('.')?;
    let (key, stream) = rest.rsplit_once('.')?;
    Some((ms, key, Stream::parse(stream)?, offset.parse().ok()?))
}

/// [`read`] in the plan's bucket (none yet: nothing).
pub async fn read_plan(
    c: &Clients,
    plan: &crate::plan::Plan,
    task: &str,
    attempt: u32,
    cursor: &mut LiveCursor,
) -> Result<Vec<LogChunk>, AwsError> {
    match super::campaign_sync::find_bucket(c, plan).await? {
        Some(b) => read(c, &b, &plan.name_key, task, attempt, cursor).await,
        None => Ok(Vec::new()),
    }
}

/// What is new in the attempt's live logs since `cursor` (which moves on).
pub async fn read(
    c: &Clients,
    bucket: &str,
    phase: &str,
    task: &str,
    attempt: u32,
    cursor: &mut LiveCursor,
) -> Result<Vec<LogChunk>, AwsError> {
    let prefix = format!("{}/", layout::live_prefix(phase, task, attempt));
    let after = (cursor.newest_ms > OVERLAP_MS)
        .then(|| format!("{prefix}{:013}", cursor.newest_ms - OVERLAP_MS));
    let keys = s3::list_after(c, bucket, &prefix, after.as_deref()).await?;
    let mut out = Vec::new();
    for (key, _) in keys {
        if cursor.seen.contains(&key) {
            continue;
        }
        let Some((ms, step, stream, offset)) = parse_chunk(&key[prefix.len()..]) else {
            continue;
        };
        let at = (step.to_string(), stream);
        let next = cursor.next.get(&at).copied().unwrap_or(0);
        if offset < next {
            // already read (a chunk sent again after a failed upload)
            cursor.seen.insert(key);
            continue;
        }
        let Some(bytes) = s3::get(c, bucket, &key).await? else {
            continue;
        };
        cursor.next.insert(at, offset + bytes.len() as u64);
        cursor.newest_ms = cursor.newest_ms.max(ms);
        cursor.seen.insert(key);
        out.push(LogChunk { stream, bytes });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::live::chunk_name;

    #[test]
    fn chunk_names_read_back() {
        let n = chunk_name(1_700_000_000_123, "0-2", "stderr", 77);
        assert_eq!(
            parse_chunk(&n),
            Some((1_700_000_000_123, "0-2", Stream::Stderr, 77))
        );
        assert_eq!(parse_chunk("x.0.stdout.1"), None);
        assert_eq!(parse_chunk("1.0.other.1"), None);
    }
}
