//! Engine commits on the store's commit thread (`MvccConfig::commit_in_background`).
//!
//! Goal: while a commit is in flight, every read (range, history, hash, record count,
//! snapshot) sees exactly what it sees once the commit has finished, batches go on applying,
//! and a sync or a reopen loses nothing.
//!
//! Method: the store runs on an in-memory engine backend whose fsync waits at a gate the test
//! holds closed, so a commit stays in flight for as long as the test needs. The same reads are
//! taken with the commit held, after it is released, and after a reopen, and compared.

use std::io;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chorus_raft::LogIndex;
use chorus_storage::mvcc::*;
use redb::StorageBackend;
use redb::backends::InMemoryBackend;

/// An in-memory disk (the engine's own) whose fsync waits while the gate is closed.
#[derive(Debug, Default)]
struct GatedDisk {
    memory: InMemoryBackend,
    /// Closed while true; counts the fsyncs that reached it.
    gate: Mutex<(bool, u64)>,
    opened: Condvar,
}

impl GatedDisk {
    fn set_closed(&self, closed: bool) {
        self.gate.lock().unwrap().0 = closed;
        self.opened.notify_all();
    }

    /// Closes the gate until the guard drops (also when a test fails, so that dropping the store,
    /// which waits for its commit thread, does not hang).
    fn close(self: &Arc<Self>) -> Closed {
        self.set_closed(true);
        Closed(self.clone())
    }

    /// Waits until `n` fsyncs have reached the gate.
    fn wait_for_syncs(&self, n: u64) {
        let mut gate = self.gate.lock().unwrap();
        while gate.1 < n {
            let (next, timeout) = self
                .opened
                .wait_timeout(gate, Duration::from_secs(10))
                .unwrap();
            assert!(!timeout.timed_out(), "no fsync reached the gate");
            gate = next;
        }
    }
}

struct Closed(Arc<GatedDisk>);

impl Drop for Closed {
    fn drop(&mut self) {
        self.0.set_closed(false);
    }
}

#[derive(Debug, Clone)]
struct Backend(Arc<GatedDisk>);

impl StorageBackend for Backend {
    fn len(&self) -> Result<u64, io::Error> {
        self.0.memory.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.0.memory.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.0.memory.set_len(len)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        let mut gate = self.0.gate.lock().unwrap();
        gate.1 += 1;
        self.0.opened.notify_all();
        while gate.0 {
            gate = self.0.opened.wait(gate).unwrap();
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.0.memory.write(offset, data)
    }
}

fn config() -> MvccConfig {
    MvccConfig {
        commit_sync_interval: Duration::ZERO,
        commit_in_background: true,
        ..MvccConfig::default()
    }
}

fn open(disk: &Arc<GatedDisk>) -> MvccStore {
    MvccStore::open_with_backend("gated".as_ref(), Backend(disk.clone()), config()).unwrap()
}

fn put(store: &mut MvccStore, applied: u64, key: &str, value: &str) {
    let op = WriteOp::Put(PutRequest::new(key.to_string(), value.to_string()));
    store.apply(LogIndex(applied), &op).unwrap();
}

/// Everything a read can see, to compare the store's states.
#[derive(Debug, PartialEq)]
struct Seen {
    latest: Vec<(Bytes, Bytes, i64)>,
    at_3: Vec<(Bytes, Bytes)>,
    events: Vec<(Bytes, i64)>,
    hash: u32,
    hash_kv: u32,
    records: u64,
    current: Revision,
    applied: LogIndex,
}

fn seen(store: &MvccStore) -> Seen {
    let all = RangeRequest::range("\0", "\0");
    let latest = store.range(&all).unwrap().kvs;
    let compacted = store.compact_revision();
    let at_3 = if compacted <= Revision(3) {
        let req = RangeRequest {
            revision: Revision(3),
            ..all.clone()
        };
        store.range(&req).unwrap().kvs
    } else {
        Vec::new()
    };
    let from = compacted.max(Revision(1));
    let events = store.events(from, usize::MAX, false).unwrap().events;
    Seen {
        latest: latest
            .into_iter()
            .map(|kv| (kv.key, kv.value, kv.mod_revision.get()))
            .collect(),
        at_3: at_3.into_iter().map(|kv| (kv.key, kv.value)).collect(),
        events: events
            .into_iter()
            .map(|e| (e.kv.key, e.kv.mod_revision.get()))
            .collect(),
        hash: store.hash().unwrap(),
        hash_kv: store.hash_kv(Revision(0)).unwrap().hash,
        records: store.record_count().unwrap(),
        current: store.current_revision(),
        applied: store.applied_index(),
    }
}

#[test]
fn reads_see_a_commit_in_flight_as_finished() {
    let disk = Arc::new(GatedDisk::default());
    let mut store = open(&disk);
    put(&mut store, 1, "a", "1");
    put(&mut store, 2, "b", "1");
    store.sync().unwrap();
    let syncs = disk.gate.lock().unwrap().1;

    // This put's commit starts on the thread and waits at the gate.
    let closed = disk.close();
    put(&mut store, 3, "a", "2");
    disk.wait_for_syncs(syncs + 1);
    // These apply while it is in flight: their commit waits for the next batch after it.
    put(&mut store, 4, "c", "1");
    let op = WriteOp::DeleteRange(DeleteRangeRequest::key("b"));
    store.apply(LogIndex(5), &op).unwrap();
    let held = seen(&store);
    assert_eq!(
        held.latest,
        vec![
            (Bytes::from("a"), Bytes::from("2"), 4),
            (Bytes::from("c"), Bytes::from("1"), 5)
        ]
    );
    assert_eq!(
        held.at_3,
        vec![
            (Bytes::from("a"), Bytes::from("1")),
            (Bytes::from("b"), Bytes::from("1"))
        ]
    );
    assert_eq!(held.events.len(), 5);
    assert_eq!(held.records, 5);
    assert_eq!(held.applied, LogIndex(5));
    // A snapshot taken now restores the same store.
    let restored_dir = tempfile::tempdir().unwrap();
    let snapshot = store.snapshot().unwrap();
    let restored = MvccStore::restore(restored_dir.path(), config(), snapshot).unwrap();
    assert_eq!(seen(&restored), held);
    drop(restored);

    // Released: the same reads, before and after the store takes note of the commit.
    drop(closed);
    assert_eq!(seen(&store), held);
    // Once the store sees the commit finished, the batches after it commit next.
    let mut tries = 0;
    while !store.commit_if_due().unwrap() {
        tries += 1;
        assert!(tries < 10_000, "the commit in flight never finished");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(seen(&store), held);
    store.sync().unwrap();
    assert_eq!(seen(&store), held);
    drop(store);
    let store = open(&disk);
    assert_eq!(seen(&store), held);
}

#[test]
fn the_durable_index_follows_the_syncing_commits_seen_to_finish() {
    // Goal: `durable_index` (what a Raft driver waits for before its log forgets entries)
    // never runs ahead of a synced engine commit, and moves once the store sees one finish.
    let disk = Arc::new(GatedDisk::default());
    let mut store = open(&disk);
    assert_eq!(store.durable_index(), LogIndex(0));
    put(&mut store, 1, "a", "1");
    put(&mut store, 2, "b", "1");
    store.sync().unwrap();
    assert_eq!(store.durable_index(), LogIndex(2));
    let syncs = disk.gate.lock().unwrap().1;
    let closed = disk.close();
    put(&mut store, 3, "a", "2");
    disk.wait_for_syncs(syncs + 1);
    put(&mut store, 4, "c", "1");
    assert_eq!(store.applied_index(), LogIndex(4));
    assert_eq!(
        store.durable_index(),
        LogIndex(2),
        "the commit of 3 is in flight"
    );
    assert!(!store.commit_if_due().unwrap(), "it is still in flight");
    assert_eq!(store.durable_index(), LogIndex(2));
    drop(closed);
    let mut tries = 0;
    while !store.commit_if_due().unwrap() {
        tries += 1;
        assert!(tries < 10_000, "the commit in flight never finished");
        std::thread::sleep(Duration::from_millis(1));
    }
    // The commit of 3 was seen to finish; that of 4 began.
    assert_eq!(store.durable_index(), LogIndex(3));
    store.sync().unwrap();
    assert_eq!(store.durable_index(), LogIndex(4));
    drop(store);
    assert_eq!(open(&disk).durable_index(), LogIndex(4), "after a reopen");

    // Commits that do not sync make nothing durable until one that does.
    let dir = tempfile::tempdir().unwrap();
    let unsynced = MvccConfig {
        commit_sync: false,
        ..MvccConfig::default()
    };
    let mut store = MvccStore::open(dir.path(), unsynced).unwrap();
    put(&mut store, 1, "a", "1");
    assert_eq!(store.durable_index(), LogIndex(0));
    store.sync().unwrap();
    assert_eq!(store.durable_index(), LogIndex(1));
}

#[test]
fn a_compaction_waits_for_the_commit_in_flight() {
    let disk = Arc::new(GatedDisk::default());
    let mut store = open(&disk);
    for (i, value) in ["1", "2", "3"].into_iter().enumerate() {
        put(&mut store, i as u64 + 1, "k", value);
    }
    store.sync().unwrap();
    let syncs = disk.gate.lock().unwrap().1;
    let closed = disk.close();
    put(&mut store, 4, "k", "4");
    disk.wait_for_syncs(syncs + 1);
    std::thread::scope(|scope| {
        let compacting = scope.spawn(|| {
            let op = WriteOp::Compact(Revision(5));
            store.apply(LogIndex(5), &op).unwrap();
            seen(&store)
        });
        // The compaction's batch cannot end until the commit it waits for is let through.
        std::thread::sleep(Duration::from_millis(50));
        let waited = !compacting.is_finished();
        drop(closed);
        assert!(waited, "the compaction waited");
        let after = compacting.join().unwrap();
        assert_eq!(after.latest, vec![(Bytes::from("k"), Bytes::from("4"), 5)]);
        assert_eq!(after.records, 1, "the engine's compacted records are gone");
    });
    let before = seen(&store);
    drop(store);
    assert_eq!(seen(&open(&disk)), before);
}

#[test]
fn a_failed_commit_in_flight_closes_the_store() {
    #[derive(Debug, Clone)]
    struct Failing(Backend, Arc<Mutex<bool>>);
    impl StorageBackend for Failing {
        fn len(&self) -> Result<u64, io::Error> {
            self.0.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
            self.0.read(offset, out)
        }
        fn set_len(&self, len: u64) -> Result<(), io::Error> {
            self.0.set_len(len)
        }
        fn sync_data(&self) -> Result<(), io::Error> {
            if *self.1.lock().unwrap() {
                return Err(io::Error::other("the disk is gone"));
            }
            self.0.sync_data()
        }
        fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
            self.0.write(offset, data)
        }
    }
    let fail = Arc::new(Mutex::new(false));
    let backend = Failing(Backend(Arc::default()), fail.clone());
    let mut store = MvccStore::open_with_backend("failing".as_ref(), backend, config()).unwrap();
    put(&mut store, 1, "a", "1");
    store.sync().unwrap();
    *fail.lock().unwrap() = true;
    put(&mut store, 2, "a", "2");
    // The failure surfaces when the store next takes note of the commit.
    let error = store.sync().unwrap_err();
    assert!(!error.is_request_error(), "{error}");
    let op = WriteOp::Put(PutRequest::new("b", "1"));
    assert!(matches!(
        store.apply(LogIndex(3), &op),
        Err(MvccError::Failed)
    ));
    assert!(matches!(
        store.range(&RangeRequest::key("a")),
        Err(MvccError::Failed)
    ));
}
