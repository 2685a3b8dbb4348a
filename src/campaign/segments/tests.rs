use std::collections::BTreeMap;
use std::sync::Mutex;

use super::*;

/// Segments in memory, as the bucket keeps them (create-only).
#[derive(Default)]
struct Memory {
    segs: Mutex<BTreeMap<u64, Vec<u8>>>,
}

impl SegmentStore for Memory {
    fn list(&self) -> StoreFut<'_, Result<Vec<u64>, String>> {
        let v = self.segs.lock().unwrap().keys().copied().collect();
        Box::pin(async move { Ok(v) })
    }
    fn get(&self, seq: u64) -> StoreFut<'_, Result<Option<Vec<u8>>, String>> {
        let v = self.segs.lock().unwrap().get(&seq).cloned();
        Box::pin(async move { Ok(v) })
    }
    fn put_new(&self, seq: u64, body: Vec<u8>) -> StoreFut<'_, Result<bool, String>> {
        let mut m = self.segs.lock().unwrap();
        let created = !m.contains_key(&seq);
        if created {
            m.insert(seq, body);
        }
        Box::pin(async move { Ok(created) })
    }
}

impl Memory {
    fn all(&self) -> Vec<u8> {
        self.segs
            .lock()
            .unwrap()
            .values()
            .flatten()
            .copied()
            .collect()
    }
    fn count(&self) -> usize {
        self.segs.lock().unwrap().len()
    }
}

fn block<T>(f: impl Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn append(dir: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(journal_path(dir))
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

fn line(n: u32) -> String {
    format!("{{\"v\":1,\"ts\":\"t{n}\",\"event\":\"run_started\",\"run\":{n},\"pid\":1,\"provider\":\"aws\",\"selected\":1}}\n")
}

#[test]
fn segments_are_whole_lines_in_order_and_their_concatenation_is_the_journal() {
    let d = tempfile::tempdir().unwrap();
    let store = Memory::default();
    append(
        d.path(),
        &(line(1) + &line(2) + "{\"v\":1,\"ts\":\"t9\",\"event\":\"run_started\""),
    );
    assert_eq!(block(push(&store, d.path())).unwrap(), 1);
    assert_eq!(store.all(), (line(1) + &line(2)).as_bytes());
    // nothing new: nothing goes up
    assert_eq!(block(push(&store, d.path())).unwrap(), 0);
    // the half line is finished, more follow
    append(
        d.path(),
        ",\"run\":9,\"pid\":1,\"provider\":\"aws\",\"selected\":1}\n",
    );
    append(d.path(), &line(3));
    assert_eq!(block(push(&store, d.path())).unwrap(), 1);
    let segs = store.segs.lock().unwrap().clone();
    assert_eq!(segs.len(), 2);
    for s in segs.values() {
        assert!(s.ends_with(b"\n"), "a segment holds whole lines");
    }
    assert_eq!(store.all(), std::fs::read(journal_path(d.path())).unwrap());
    assert_eq!(
        String::from_utf8(segs[&1].clone()).unwrap(),
        format!(
            "{{\"v\":1,\"ts\":\"t9\",\"event\":\"run_started\",\"run\":9,\"pid\":1,\"provider\":\"aws\",\"selected\":1}}\n{}",
            line(3)
        )
    );
    let s = load(d.path());
    assert_eq!((s.segments, s.offset), (2, store.all().len() as u64));
}

#[test]
fn a_fresh_checkout_rebuilds_the_journal_from_the_segments() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let store = Memory::default();
    append(a.path(), &line(1));
    block(push(&store, a.path())).unwrap();
    append(a.path(), &line(2));
    block(push(&store, a.path())).unwrap();
    let fresh = b.path().join(".infra/p");
    let pulled = block(pull(&store, &fresh)).unwrap();
    assert_eq!(
        pulled,
        Pulled::Rebuilt {
            segments: 2,
            set_aside: None
        }
    );
    assert_eq!(
        std::fs::read(journal_path(&fresh)).unwrap(),
        std::fs::read(journal_path(a.path())).unwrap()
    );
    // and again: nothing to do
    assert_eq!(block(pull(&store, &fresh)).unwrap(), Pulled::UpToDate);
    // the second machine's lines follow the first's
    append(&fresh, &line(3));
    assert_eq!(block(push(&store, &fresh)).unwrap(), 1);
    assert_eq!(
        block(pull(&store, a.path())).unwrap(),
        Pulled::Rebuilt {
            segments: 1,
            set_aside: None
        }
    );
    assert_eq!(
        std::fs::read(journal_path(a.path())).unwrap(),
        (line(1) + &line(2) + &line(3)).as_bytes()
    );
}

#[test]
fn an_unsynced_tail_is_uploaded_when_the_store_has_nothing_newer() {
    let d = tempfile::tempdir().unwrap();
    let store = Memory::default();
    append(d.path(), &line(1));
    block(push(&store, d.path())).unwrap();
    // a run killed before its last upload
    append(d.path(), &(line(2) + &line(3)));
    assert_eq!(block(pull(&store, d.path())).unwrap(), Pulled::Uploaded(1));
    assert_eq!(store.count(), 2);
    assert_eq!(store.all(), (line(1) + &line(2) + &line(3)).as_bytes());
    // a journal from before the bucket kept one goes up whole
    let old = tempfile::tempdir().unwrap();
    let empty = Memory::default();
    append(old.path(), &(line(7) + &line(8)));
    assert_eq!(
        block(pull(&empty, old.path())).unwrap(),
        Pulled::Uploaded(1)
    );
    assert_eq!(empty.all(), (line(7) + &line(8)).as_bytes());
}

#[test]
fn an_unsynced_tail_is_kept_aside_when_the_store_moved_on() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let store = Memory::default();
    append(a.path(), &line(1));
    block(push(&store, a.path())).unwrap();
    // machine A writes a line it never uploads; machine B continues
    append(a.path(), &line(2));
    block(pull(&store, b.path())).unwrap();
    append(b.path(), &line(3));
    block(push(&store, b.path())).unwrap();
    let Pulled::Rebuilt {
        segments: 1,
        set_aside: Some(aside),
    } = block(pull(&store, a.path())).unwrap()
    else {
        panic!("A's journal is rebuilt and its own line kept aside");
    };
    assert_eq!(
        std::fs::read(journal_path(a.path())).unwrap(),
        (line(1) + &line(3)).as_bytes(),
        "the store is the truth"
    );
    assert!(aside
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("journal.jsonl.unsynced-"));
    assert_eq!(
        std::fs::read(&aside).unwrap(),
        (line(1) + &line(2)).as_bytes()
    );
    // A's own push now follows the store
    append(a.path(), &line(4));
    assert_eq!(block(push(&store, a.path())).unwrap(), 1);
    assert_eq!(store.all(), (line(1) + &line(3) + &line(4)).as_bytes());
}

#[test]
fn an_upload_whose_record_was_lost_is_not_uploaded_twice() {
    let d = tempfile::tempdir().unwrap();
    let store = Memory::default();
    append(d.path(), &line(1));
    block(push(&store, d.path())).unwrap();
    // killed between the upload of segment 1 and saving the record
    append(d.path(), &line(2));
    store.segs.lock().unwrap().insert(1, line(2).into_bytes());
    append(d.path(), &line(3));
    assert_eq!(block(push(&store, d.path())).unwrap(), 2);
    assert_eq!(store.count(), 3);
    assert_eq!(store.all(), (line(1) + &line(2) + &line(3)).as_bytes());
}

#[test]
fn another_writers_segment_is_never_overwritten() {
    let d = tempfile::tempdir().unwrap();
    let store = Memory::default();
    store.segs.lock().unwrap().insert(0, line(9).into_bytes());
    append(d.path(), &line(1));
    let e = block(push(&store, d.path())).unwrap_err();
    assert!(e.contains("other lines"), "{e}");
    assert_eq!(store.all(), line(9).as_bytes());
    assert_eq!(load(d.path()).segments, 0);
}

#[test]
fn a_repaired_journal_is_replaced_by_the_stores_without_a_copy_when_nothing_is_lost() {
    let d = tempfile::tempdir().unwrap();
    let store = Memory::default();
    append(d.path(), &(line(1) + &line(2)));
    block(push(&store, d.path())).unwrap();
    // `infra journal repair` rewrote the file (here: a line went)
    std::fs::write(journal_path(d.path()), line(2)).unwrap();
    assert_eq!(
        block(pull(&store, d.path())).unwrap(),
        Pulled::Rebuilt {
            segments: 1,
            set_aside: None
        }
    );
    assert_eq!(
        std::fs::read(journal_path(d.path())).unwrap(),
        (line(1) + &line(2)).as_bytes()
    );
}

#[test]
fn a_damaged_line_never_goes_to_the_store() {
    let d = tempfile::tempdir().unwrap();
    let store = Memory::default();
    append(d.path(), &(line(1) + "garbage\n" + &line(2)));
    // the valid lines before it go up; then the damage is said
    let e = block(push(&store, d.path())).unwrap_err();
    assert!(e.contains("damaged line"), "{e}");
    assert_eq!(store.all(), line(1).as_bytes());
    let e = block(push(&store, d.path())).unwrap_err();
    assert!(e.contains("journal repair"), "{e}");
    assert_eq!(store.count(), 1);
    // `infra journal repair` drops it: the rest goes up
    crate::runner::journal::repair(&journal_path(d.path())).unwrap();
    assert_eq!(block(push(&store, d.path())).unwrap(), 1);
    assert_eq!(store.all(), (line(1) + &line(2)).as_bytes());
    assert_eq!(
        block(pull(&store, d.path())).unwrap(),
        Pulled::UpToDate,
        "the repaired journal is the store's"
    );
}

/// A store whose first `fail` uploads fail.
struct Flaky {
    inner: Memory,
    fail: Mutex<u32>,
}

impl SegmentStore for Flaky {
    fn list(&self) -> StoreFut<'_, Result<Vec<u64>, String>> {
        self.inner.list()
    }
    fn get(&self, seq: u64) -> StoreFut<'_, Result<Option<Vec<u8>>, String>> {
        self.inner.get(seq)
    }
    fn put_new(&self, seq: u64, body: Vec<u8>) -> StoreFut<'_, Result<bool, String>> {
        let mut f = self.fail.lock().unwrap();
        if *f > 0 {
            *f -= 1;
            return Box::pin(async { Err("503 Slow Down (injected)".to_string()) });
        }
        drop(f);
        self.inner.put_new(seq, body)
    }
}

#[test]
fn the_pusher_retries_failed_uploads_says_so_once_and_uploads_the_last_lines_at_the_end() {
    let d = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(Flaky {
        inner: Memory::default(),
        fail: Mutex::new(4),
    });
    let said = std::sync::Arc::new(Mutex::new(Vec::<String>::new()));
    let log: Log = {
        let said = said.clone();
        std::sync::Arc::new(move |l: &str| said.lock().unwrap().push(l.to_string()))
    };
    block(async {
        append(d.path(), &line(1));
        let p = Pusher::start(
            store.clone(),
            "mem://j".into(),
            d.path().to_path_buf(),
            std::time::Duration::from_millis(20),
            log,
        );
        // four failed ticks, then it goes up
        for _ in 0..200 {
            if store.inner.count() == 1 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(store.inner.all(), line(1).as_bytes());
        // the last lines go up at the end, whatever the interval
        append(d.path(), &line(2));
        p.finish().await;
    });
    assert_eq!(store.inner.all(), (line(1) + &line(2)).as_bytes());
    let said = said.lock().unwrap().clone();
    assert_eq!(said.len(), 2, "{said:?}");
    assert!(
        said[0].starts_with("warning: the journal could not be uploaded to mem://j (503 Slow Down"),
        "{said:?}"
    );
    assert!(said[0].ends_with("retrying"), "{said:?}");
    assert!(said[1].contains("work again"), "{said:?}");
}

#[test]
fn after_the_store_was_emptied_on_purpose_only_new_lines_go_up() {
    let d = tempfile::tempdir().unwrap();
    let store = Memory::default();
    append(d.path(), &(line(1) + &line(2)));
    block(push(&store, d.path())).unwrap();
    // `infra destroy --delete-results`
    store.segs.lock().unwrap().clear();
    forget_store(d.path()).unwrap();
    assert_eq!(block(pull(&store, d.path())).unwrap(), Pulled::UpToDate);
    assert_eq!(store.count(), 0, "nothing was uploaded again");
    append(d.path(), &line(3));
    assert_eq!(block(push(&store, d.path())).unwrap(), 1);
    assert_eq!(store.all(), line(3).as_bytes());
    assert_eq!(
        std::fs::read(journal_path(d.path())).unwrap(),
        (line(1) + &line(2) + &line(3)).as_bytes(),
        "this machine keeps its whole journal"
    );
}

#[test]
fn a_store_emptied_by_another_machine_is_not_filled_again() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let store = Memory::default();
    append(a.path(), &line(1));
    block(push(&store, a.path())).unwrap();
    block(pull(&store, b.path())).unwrap();
    // machine B deletes the phase's objects
    store.segs.lock().unwrap().clear();
    forget_store(b.path()).unwrap();
    assert_eq!(block(pull(&store, a.path())).unwrap(), Pulled::StoreEmptied);
    assert_eq!(store.count(), 0);
    assert_eq!(block(pull(&store, a.path())).unwrap(), Pulled::UpToDate);
    assert_eq!(
        std::fs::read(journal_path(a.path())).unwrap(),
        line(1).as_bytes()
    );
}
