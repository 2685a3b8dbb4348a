//! Live logs of a running step: every few seconds, what is new in the
//! step's stdout.log and stderr.log goes to the bucket as one more object
//! (S3 has no append: numbered chunks, so a long log is never sent twice),
//! for `infra logs --follow` on the user's side.
//!
//! A chunk's key is `<live>/<ms:013>.<key>.<stream>.<offset:012>`: the
//! upload time (milliseconds since the epoch) first, so that a listing
//! `start-after` a time returns what came since, in order, for every step
//! of the attempt; then the step's key, the stream (`stdout`, `stderr`) and
//! the chunk's byte offset in that stream (the reader's de-duplication).
//! A last flush when the step ends, before its result is uploaded, makes
//! the chunks the whole log.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::oneshot;

use super::upload::{parse_dest, S3};

/// The most one chunk holds (a log that grows faster goes up in several).
const MAX_CHUNK: u64 = 4 << 20;

/// The name of a chunk (under the live prefix).
pub fn chunk_name(ms: u64, key: &str, stream: &str, offset: u64) -> String {
    format!("{ms:013}.{key}.{stream}.{offset:012}")
}

/// What is new in one stream since the last upload.
struct Tail {
    stream: &'static str,
    path: PathBuf,
    offset: u64,
}

impl Tail {
    /// The bytes after the offset (at most [`MAX_CHUNK`]).
    fn read_new(&self) -> Option<Vec<u8>> {
        let mut f = std::fs::File::open(&self.path).ok()?;
        let len = f.metadata().ok()?.len();
        if len <= self.offset {
            return None;
        }
        f.seek(SeekFrom::Start(self.offset)).ok()?;
        let mut buf = Vec::new();
        f.take((len - self.offset).min(MAX_CHUNK))
            .read_to_end(&mut buf)
            .ok()?;
        (!buf.is_empty()).then_some(buf)
    }
}

/// The uploader of one step's live logs.
struct Uploader {
    s3: S3,
    bucket: String,
    prefix: String,
    key: String,
    tails: [Tail; 2],
}

impl Uploader {
    /// Send what is new; an upload that fails is tried again at the next
    /// flush (the offset stays).
    async fn flush(&mut self) {
        for i in 0..self.tails.len() {
            while let Some(bytes) = self.tails[i].read_new() {
                let t = &self.tails[i];
                let ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
                let name = chunk_name(ms, &self.key, t.stream, t.offset);
                let key = super::upload::join_key(&self.prefix, &name);
                let n = bytes.len() as u64;
                let c = self.s3.client().await;
                let sent = c
                    .put_object()
                    .bucket(&self.bucket)
                    .key(&key)
                    .body(bytes.into())
                    .send()
                    .await;
                if let Err(e) = sent {
                    eprintln!(
                        "infra-node: live log s3://{}/{key} not sent: {}",
                        self.bucket,
                        aws_smithy_types::error::display::DisplayErrorContext(&e)
                    );
                    break;
                }
                self.tails[i].offset += n;
            }
        }
    }
}

/// A running uploader: [`Live::finish`] sends the rest and ends it.
pub struct Live {
    done: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// Start uploading the step's logs (in `step_dir`) to `dest`
/// (`s3://bucket/prefix`) every `every`. None for a bad destination.
pub fn start(dest: &str, key: &str, step_dir: &Path, every: Duration) -> Option<Live> {
    let (bucket, prefix) = parse_dest(dest)?;
    let tail = |stream: &'static str| Tail {
        stream,
        path: step_dir.join(format!("{stream}.log")),
        offset: 0,
    };
    let mut up = Uploader {
        s3: S3::default(),
        bucket,
        prefix,
        key: key.to_string(),
        tails: [tail("stdout"), tail("stderr")],
    };
    let (done, mut rx) = oneshot::channel();
    let every = every.max(Duration::from_millis(200));
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = &mut rx => break,
                _ = tokio::time::sleep(every) => up.flush().await,
            }
        }
        up.flush().await;
    });
    Some(Live { done, task })
}

impl Live {
    /// The last flush (bounded: a slow bucket does not hold the step's end).
    pub async fn finish(self) {
        let _ = self.done.send(());
        let mut task = self.task;
        if tokio::time::timeout(Duration::from_secs(10), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_names_sort_by_time_and_carry_the_offset() {
        assert_eq!(
            chunk_name(1_700_000_000_123, "0-2", "stdout", 4096),
            "1700000000123.0-2.stdout.000000004096"
        );
        assert!(chunk_name(999, "1", "stderr", 0) < chunk_name(1000, "0", "stdout", 0));
    }

    #[test]
    fn a_tail_reads_only_what_is_new() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("stdout.log");
        let mut t = Tail {
            stream: "stdout",
            path: path.clone(),
            offset: 0,
        };
        assert_eq!(t.read_new(), None, "no file yet");
        std::fs::write(&path, "one\n").unwrap();
        assert_eq!(t.read_new().as_deref(), Some(&b"one\n"[..]));
        t.offset = 4;
        assert_eq!(t.read_new(), None);
        std::fs::write(&path, "one\ntwo\n").unwrap();
        assert_eq!(t.read_new().as_deref(), Some(&b"two\n"[..]));
    }
}
