//! The WAL on the real file system, and `RaftLogStore` as the Raft core's `LogStorage`.
//!
//! Goal: the read contract of `LogStorage` (ranges, byte limits, compaction, snapshots) and the
//! write side (conflicting suffixes, hard state, snapshot install, compaction, segment purge)
//! hold, and survive a reopen on a real directory.

mod wal_support;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use chorus_raft::{GroupId, LogIndex, LogStorage, Snapshot, SnapshotMeta, StorageError, Term};
use chorus_storage::disk::{Disk, RealDisk};
use chorus_storage::wal::codec::Record;
use chorus_storage::wal::{RaftLogStore, SharedWal, Wal, WalConfig, WalError};
use wal_support::{entries, entry, hard_state, voters};

const G1: GroupId = GroupId(1);
const G2: GroupId = GroupId(2);

fn open(dir: &std::path::Path, segment_bytes_max: u64) -> SharedWal {
    let config = WalConfig {
        segment_bytes_max,
        record_bytes_max: 4096,
        ..WalConfig::new(dir.join("wal"))
    };
    let wal = Wal::open(Arc::new(RealDisk::new()), config).expect("open");
    Arc::new(Mutex::new(wal))
}

#[test]
fn entries_and_state_survive_a_reopen_on_a_real_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let wal = open(dir.path(), 1 << 20);
        let g1 = RaftLogStore::new(wal.clone(), G1);
        let g2 = RaftLogStore::new(wal.clone(), G2);
        g1.set_conf_state(voters(&[1, 2, 3])).expect("conf");
        g1.append(&entries(1, 5, 1, "one")).expect("append");
        g2.append(&entries(1, 2, 4, "two")).expect("append");
        g1.set_hard_state(hard_state(1, 2, 3)).expect("hard state");
        // One fsync for both groups.
        let synced = g1.sync().expect("sync");
        assert_eq!(synced, wal.lock().unwrap().synced_position());
        // Not synced: may or may not survive, so it is not checked below.
        g2.append(&entries(3, 1, 4, "two")).expect("append");
    }
    let wal = open(dir.path(), 1 << 20);
    let g1 = RaftLogStore::new(wal.clone(), G1);
    let state = g1.initial_state().expect("state");
    assert_eq!(state.hard_state, hard_state(1, 2, 3));
    assert_eq!(state.conf_state, voters(&[1, 2, 3]));
    assert_eq!(g1.first_index(), Ok(LogIndex(1)));
    assert_eq!(g1.last_index(), Ok(LogIndex(5)));
    assert_eq!(
        g1.entries(LogIndex(1), LogIndex(6), u64::MAX),
        Ok(entries(1, 5, 1, "one"))
    );
    let g2 = RaftLogStore::new(wal, G2);
    assert_eq!(
        g2.entries(LogIndex(1), LogIndex(3), u64::MAX),
        Ok(entries(1, 2, 4, "two"))
    );
}

#[test]
fn log_storage_read_contract() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = RaftLogStore::new(open(dir.path(), 1 << 20), G1);
    // An empty log: first = last + 1, term(0) = 0.
    assert_eq!(log.first_index(), Ok(LogIndex(1)));
    assert_eq!(log.last_index(), Ok(LogIndex(0)));
    assert_eq!(log.term(LogIndex(0)), Ok(Term(0)));
    log.append(&entries(1, 6, 2, "x")).expect("append");
    assert_eq!(log.term(LogIndex(6)), Ok(Term(2)));
    assert_eq!(log.term(LogIndex(7)), Err(StorageError::Unavailable));
    assert_eq!(
        log.entries(LogIndex(2), LogIndex(8), u64::MAX),
        Err(StorageError::Unavailable)
    );
    // A byte limit stops early, but at least one entry is returned.
    let one = log.entries(LogIndex(2), LogIndex(6), 1).expect("entries");
    assert_eq!(one, vec![entry(2, 2, "x-2")]);
    let size = entry(2, 2, "x-2").size_bytes();
    let two = log
        .entries(LogIndex(2), LogIndex(6), 2 * size)
        .expect("entries");
    assert_eq!(two.len(), 2);
    log.compact(LogIndex(3)).expect("compact");
    assert_eq!(log.first_index(), Ok(LogIndex(4)));
    assert_eq!(
        log.term(LogIndex(3)),
        Ok(Term(2)),
        "term of the compacted index is kept"
    );
    assert_eq!(log.term(LogIndex(2)), Err(StorageError::Compacted));
    assert_eq!(
        log.entries(LogIndex(3), LogIndex(5), u64::MAX),
        Err(StorageError::Compacted)
    );
}

#[test]
fn a_conflicting_suffix_is_replaced_and_gaps_are_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = open(dir.path(), 1 << 20);
    let log = RaftLogStore::new(wal.clone(), G1);
    log.append(&entries(1, 5, 1, "old")).expect("append");
    log.append(&entries(3, 1, 2, "new")).expect("append");
    assert_eq!(
        log.last_index(),
        Ok(LogIndex(3)),
        "entries 4 and 5 are gone"
    );
    assert_eq!(log.term(LogIndex(3)), Ok(Term(2)));
    match log.append(&entries(6, 1, 2, "gap")) {
        Err(WalError::Rejected { group, reason }) => {
            assert_eq!(group, G1);
            assert!(reason.contains("start at 6"), "{reason}");
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    log.sync().expect("sync");
    drop(log);
    drop(wal);
    let log = RaftLogStore::new(open(dir.path(), 1 << 20), G1);
    let expected = vec![
        entry(1, 1, "old-1"),
        entry(2, 1, "old-2"),
        entry(3, 2, "new-3"),
    ];
    assert_eq!(
        log.entries(LogIndex(1), LogIndex(4), u64::MAX),
        Ok(expected)
    );
}

#[test]
fn snapshots_reset_the_log_and_are_served_with_their_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = open(dir.path(), 1 << 20);
    let log = RaftLogStore::new(wal.clone(), G1);
    log.append(&entries(1, 3, 1, "x")).expect("append");
    let meta = SnapshotMeta {
        index: LogIndex(10),
        term: Term(3),
        conf_state: voters(&[1, 2]),
    };
    let snapshot = Snapshot {
        meta: meta.clone(),
        data: Bytes::from_static(b"image"),
    };
    log.apply_snapshot(snapshot.clone()).expect("apply");
    assert_eq!(log.first_index(), Ok(LogIndex(11)));
    assert_eq!(log.last_index(), Ok(LogIndex(10)));
    assert_eq!(log.term(LogIndex(10)), Ok(Term(3)));
    assert_eq!(
        log.initial_state().expect("state").conf_state,
        voters(&[1, 2])
    );
    assert_eq!(log.snapshot(LogIndex(10)), Ok(snapshot.clone()));
    assert_eq!(
        log.snapshot(LogIndex(11)),
        Err(StorageError::SnapshotTemporarilyUnavailable)
    );
    log.sync().expect("sync");
    drop(log);
    drop(wal);
    // After a restart the WAL knows the metadata; the application hands the data back.
    let wal = open(dir.path(), 1 << 20);
    let log = RaftLogStore::new(wal.clone(), G1);
    assert_eq!(
        log.snapshot(LogIndex(5)),
        Err(StorageError::SnapshotTemporarilyUnavailable)
    );
    let position = wal.lock().unwrap().appended_position();
    log.set_snapshot(snapshot.clone()).expect("set");
    assert_eq!(
        wal.lock().unwrap().appended_position(),
        position,
        "nothing new is written"
    );
    assert_eq!(log.snapshot(LogIndex(5)), Ok(snapshot));
}

#[test]
fn purge_deletes_compacted_segments_and_keeps_state() {
    // Goal: recycling frees old segments once entries are compacted, restating hard state and
    // configuration written in them, and the reopened log is unchanged.
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = open(dir.path(), 8192);
    let g1 = RaftLogStore::new(wal.clone(), G1);
    let g2 = RaftLogStore::new(wal.clone(), G2);
    g2.set_hard_state(hard_state(7, 1, 0)).expect("hard state");
    g2.set_conf_state(voters(&[4, 5, 6])).expect("conf");
    for i in 0..100 {
        g1.append(&entries(1 + 10 * i, 10, 1, &"p".repeat(40)))
            .expect("append");
        g1.sync().expect("sync");
    }
    let segments_before = wal.lock().unwrap().segment_paths().len();
    assert!(segments_before > 5, "only {segments_before} segments");
    assert_eq!(
        wal.lock().unwrap().purge().expect("purge"),
        0,
        "every entry is still needed"
    );
    g1.compact(LogIndex(990)).expect("compact");
    let purged = wal.lock().unwrap().purge().expect("purge");
    assert!(
        purged >= segments_before - 2,
        "purged {purged} of {segments_before}"
    );
    let remaining = RealDisk::new()
        .list(&dir.path().join("wal"))
        .expect("list")
        .len();
    assert_eq!(remaining, segments_before - purged);
    drop((g1, g2, wal));
    let wal = open(dir.path(), 8192);
    let g1 = RaftLogStore::new(wal.clone(), G1);
    let g2 = RaftLogStore::new(wal, G2);
    assert_eq!(g1.first_index(), Ok(LogIndex(991)));
    assert_eq!(g1.last_index(), Ok(LogIndex(1000)));
    assert_eq!(
        g2.initial_state().expect("state").hard_state,
        hard_state(7, 1, 0)
    );
    assert_eq!(
        g2.initial_state().expect("state").conf_state,
        voters(&[4, 5, 6])
    );
}

#[test]
fn large_batches_are_split_and_oversized_entries_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = open(dir.path(), 1 << 20);
    let log = RaftLogStore::new(wal.clone(), G1);
    // 64 entries of 200 bytes do not fit one 4096-byte record.
    log.append(&entries(1, 64, 1, &"b".repeat(200)))
        .expect("split append");
    assert_eq!(log.last_index(), Ok(LogIndex(64)));
    let huge = vec![entry(65, 1, &"h".repeat(5000))];
    assert!(matches!(
        log.append(&huge),
        Err(WalError::RecordTooLarge { max: 4096, .. })
    ));
    assert!(
        !wal.lock().unwrap().is_poisoned(),
        "a refused record does not stop the WAL"
    );
    log.sync().expect("sync");
    drop((log, wal));
    let log = RaftLogStore::new(open(dir.path(), 1 << 20), G1);
    assert_eq!(
        log.entries(LogIndex(1), LogIndex(65), u64::MAX)
            .map(|e| e.len()),
        Ok(64)
    );
}

#[test]
fn config_validation_names_the_values() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = WalConfig {
        segment_bytes_max: 100,
        ..WalConfig::new(dir.path())
    };
    let err = Wal::open(Arc::new(RealDisk::new()), bad).expect_err("invalid");
    let message = err.to_string();
    assert!(message.contains("segment_bytes_max = 100"), "{message}");
    let bad = WalConfig {
        pending_bytes_max: 0,
        ..WalConfig::new(dir.path())
    };
    assert!(matches!(bad.validate(), Err(WalError::Config(_))));
    assert!(WalConfig::new(dir.path()).validate().is_ok());
}

#[test]
fn segment_records_cannot_be_appended_by_callers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = open(dir.path(), 1 << 20);
    let result = wal.lock().unwrap().append(&Record::SegmentSeal { seq: 1 });
    assert!(matches!(result, Err(WalError::Rejected { .. })));
}

#[test]
fn a_removed_group_is_gone_after_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let wal = open(dir.path(), 1 << 20);
        let mut wal = wal.lock().unwrap();
        wal.append(&Record::Entries {
            group: G1,
            entries: entries(1, 2, 1, "x"),
        })
        .expect("a");
        wal.append(&Record::Entries {
            group: G2,
            entries: entries(1, 2, 1, "y"),
        })
        .expect("a");
        wal.append(&Record::RemoveGroup { group: G1 })
            .expect("remove");
        wal.sync().expect("sync");
    }
    let wal = open(dir.path(), 1 << 20);
    assert_eq!(wal.lock().unwrap().group_ids(), vec![G2]);
}

#[test]
fn a_raw_node_runs_on_the_wal_and_restarts_from_it() {
    // Goal: the Raft core's `LogStorage` works on the WAL end to end. Method: a single-voter
    // group elects itself and commits proposals, persisting every Ready through `persist_ready`
    // and one sync; after a crash of the faulty disk (unsynced data lost) a new RawNode starts
    // from the recovered WAL with the same term, vote, commit and entries.
    use chorus_raft::{Config, NodeId, RawNode};
    use chorus_storage::disk::{CrashOptions, FaultyDisk};

    let disk = FaultyDisk::new();
    let config = WalConfig::new("/node/wal");
    let open_faulty = || -> SharedWal {
        let wal = Wal::open(Arc::new(disk.clone()), config.clone()).expect("open");
        Arc::new(Mutex::new(wal))
    };
    let raft_config = Config::new(NodeId(1), G1);
    let store = RaftLogStore::new(open_faulty(), G1);
    store
        .set_conf_state(voters(&[1]))
        .expect("bootstrap configuration");
    store.sync().expect("sync");
    let mut node = RawNode::new(&raft_config, store.clone()).expect("node");
    node.campaign().expect("campaign");
    let mut proposed = Vec::new();
    for round in 0..20 {
        if round > 0 && round < 10 {
            let data = Bytes::from(format!("value-{round}"));
            node.propose(data.clone()).expect("propose");
            proposed.push(data);
        }
        while node.has_ready() {
            let ready = node.ready();
            store.persist_ready(&ready).expect("persist");
            store.sync().expect("sync");
            node.on_persisted(ready.number);
            if let Some(last) = ready.committed_entries.last() {
                node.on_applied(last.index);
            }
        }
    }
    let before = node.status();
    assert!(before.commit.0 >= 10, "the proposals committed: {before:?}");
    let last_before = store.last_index().expect("last");
    drop((node, store));
    disk.crash(CrashOptions::LOSE_UNSYNCED);

    let store = RaftLogStore::new(open_faulty(), G1);
    let state = store.initial_state().expect("state");
    assert_eq!(state.hard_state.term, before.term);
    assert_eq!(state.hard_state.vote, before.vote);
    assert_eq!(state.hard_state.commit, before.commit);
    assert_eq!(store.last_index(), Ok(last_before));
    let stored: Vec<Bytes> = store
        .entries(LogIndex(1), last_before.next(), u64::MAX)
        .expect("entries")
        .into_iter()
        .filter_map(|e| match e.payload {
            chorus_raft::EntryPayload::Normal(data) if !data.is_empty() => Some(data),
            _ => None,
        })
        .collect();
    assert_eq!(stored, proposed);
    let restarted = RawNode::new(&raft_config, store).expect("restart");
    assert_eq!(restarted.status().term, before.term);
}

/// Snapshots read back from the files of a test, counting the reads and remembering the
/// lowest index asked for.
#[derive(Debug, Default)]
struct Files {
    snapshots: Mutex<Vec<Snapshot>>,
    reads: Mutex<u32>,
    asked: Mutex<Vec<LogIndex>>,
    broken: Mutex<bool>,
}

impl chorus_storage::wal::SnapshotSource for Files {
    fn snapshot(&self, min_index: LogIndex) -> std::io::Result<Option<Snapshot>> {
        self.asked.lock().unwrap().push(min_index);
        if *self.broken.lock().unwrap() {
            return Err(std::io::Error::other("the disk failed"));
        }
        let found = self
            .snapshots
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.meta.index >= min_index)
            .max_by_key(|s| s.meta.index)
            .cloned();
        if found.is_some() {
            *self.reads.lock().unwrap() += 1;
        }
        Ok(found)
    }
}

/// Goal: with a snapshot source, the log store serves snapshots from the source each time it
/// is asked and keeps none in memory, asks for none older than the log's first entry needs,
/// answers "temporarily unavailable" while the source has none recent enough, and reports a
/// failing source as an I/O error. Method: record a mark with no data and compact behind it;
/// the source holds a snapshot at another index; ask below, at and above it.
#[test]
fn snapshot_data_comes_from_the_source_not_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = open(dir.path(), 1 << 20);
    let log = RaftLogStore::new(wal, G1);
    let files = Arc::new(Files::default());
    log.set_snapshot_source(files.clone());
    log.append(&entries(1, 10, 1, "e")).expect("append");
    // The WAL records a mark at 9 without data and keeps the entries after 6.
    log.set_snapshot(Snapshot {
        meta: SnapshotMeta {
            index: LogIndex(9),
            term: Term(1),
            conf_state: voters(&[1]),
        },
        // What a caller might still pass: ignored, the source is the truth.
        data: Bytes::from_static(b"not kept"),
    })
    .expect("record");
    log.compact(LogIndex(6)).expect("compact");
    let at_8 = Snapshot {
        meta: SnapshotMeta {
            index: LogIndex(8),
            term: Term(1),
            conf_state: voters(&[1]),
        },
        data: Bytes::from_static(b"the store at 8"),
    };
    files.snapshots.lock().unwrap().push(at_8.clone());
    for _ in 0..2 {
        assert_eq!(log.snapshot(LogIndex(3)), Ok(at_8.clone()));
    }
    assert_eq!(
        *files.reads.lock().unwrap(),
        2,
        "read each time, never cached"
    );
    assert_eq!(
        *files.asked.lock().unwrap(),
        vec![LogIndex(6); 2],
        "no snapshot below the compaction point: the follower would need compacted entries"
    );
    assert_eq!(
        log.snapshot(LogIndex(9)),
        Err(StorageError::SnapshotTemporarilyUnavailable)
    );
    *files.broken.lock().unwrap() = true;
    assert!(matches!(
        log.snapshot(LogIndex(3)),
        Err(StorageError::Io(_))
    ));
}

#[test]
fn segments_purged_in_the_background_replay_harmlessly_until_deleted() {
    // Goal: a purge as a server runs it (forget the segments under the lock, delete them on
    // another thread) keeps the log whole at every point: a restart between the two halves
    // replays the forgotten segments and reads the same log, a later purge deletes them, and
    // the thread leaves a gap-free directory holding the same log.
    let dir = tempfile::tempdir().expect("tempdir");
    let wal_dir = dir.path().join("wal");
    let files = || RealDisk::new().list(&wal_dir).expect("list").len();
    let check = |g1: &RaftLogStore| {
        assert_eq!(g1.first_index(), Ok(LogIndex(591)));
        assert_eq!(g1.last_index(), Ok(LogIndex(600)));
        assert_eq!(
            g1.initial_state().expect("state").hard_state,
            hard_state(3, 1, 0)
        );
    };
    let wal = open(dir.path(), 8192);
    let g1 = RaftLogStore::new(wal.clone(), G1);
    g1.set_hard_state(hard_state(3, 1, 0)).expect("hard state");
    for i in 0..60 {
        g1.append(&entries(1 + 10 * i, 10, 1, &"d".repeat(40)))
            .expect("append");
        g1.sync().expect("sync");
    }
    g1.compact(LogIndex(590)).expect("compact");
    let before = files();
    let detached = wal.lock().unwrap().detach_purgeable().expect("detach");
    assert!(
        detached.len() >= before - 2,
        "{} of {before}",
        detached.len()
    );
    assert_eq!(files(), before, "detaching deletes nothing");
    assert_eq!(
        wal.lock().unwrap().segment_paths().len(),
        before - detached.len(),
        "the log forgot them"
    );
    drop((g1, wal));

    // A crash before the deletion: the detached segments are replayed again, and purged again.
    let wal = open(dir.path(), 8192);
    let g1 = RaftLogStore::new(wal.clone(), G1);
    check(&g1);
    assert_eq!(wal.lock().unwrap().segment_paths().len(), before);
    wal.lock().unwrap().purge_in_background().expect("spawn");
    assert_eq!(g1.purge().expect("purge"), detached.len());
    drop((g1, wal)); // the last handle drops the log, which waits for the thread
    assert_eq!(files(), before - detached.len());
    assert!(detached.iter().all(|p| !p.exists()));
    let wal = open(dir.path(), 8192);
    check(&RaftLogStore::new(wal, G1));
}

#[test]
fn segments_prepared_in_the_background_are_full_size_and_replay() {
    // Goal: with the preparing thread, every segment is created at its full size, records are
    // written over the zeros, and the log replays them all; a prepared segment never started is
    // removed at the next open. Method: rotate through several 16 KiB segments on a real
    // directory, check the files, reopen.
    let dir = tempfile::tempdir().expect("tempdir");
    let segment_bytes_max = 16 << 10;
    let wal_dir = dir.path().join("wal");
    let written = entries(1, 300, 1, &"p".repeat(200));
    {
        let shared = open(dir.path(), segment_bytes_max);
        shared
            .lock()
            .unwrap()
            .prepare_segments_in_background()
            .expect("spawn");
        let log = RaftLogStore::new(shared.clone(), G1);
        for chunk in written.chunks(10) {
            log.append(chunk).expect("append");
            log.sync().expect("sync");
        }
        let wal = shared.lock().unwrap();
        let paths = wal.segment_paths();
        assert!(paths.len() >= 4, "rotated through {} segments", paths.len());
        let disk = RealDisk::new();
        for path in &paths {
            assert_eq!(
                disk.file_len(path).expect("len"),
                segment_bytes_max,
                "{} is preallocated",
                path.display()
            );
        }
    }
    let names = RealDisk::new().list(&wal_dir).expect("list");
    assert!(
        names.iter().any(|n| n.ends_with(".wal.tmp")),
        "the next segment was prepared ahead: {names:?}"
    );
    let shared = open(dir.path(), segment_bytes_max);
    let log = RaftLogStore::new(shared.clone(), G1);
    assert_eq!(log.last_index(), Ok(LogIndex(300)));
    assert_eq!(
        log.entries(LogIndex(1), LogIndex(301), u64::MAX),
        Ok(written.clone())
    );
    let names = RealDisk::new().list(&wal_dir).expect("list");
    assert!(
        !names.iter().any(|n| n.ends_with(".tmp")),
        "the leftover prepared segment is removed at open: {names:?}"
    );
    // The reopened log goes on writing over the zeros of its last segment.
    log.append(&entries(301, 1, 1, "after")).expect("append");
    log.sync().expect("sync");
    drop(log);
    drop(shared);
    let log = RaftLogStore::new(open(dir.path(), segment_bytes_max), G1);
    assert_eq!(log.last_index(), Ok(LogIndex(301)));
    assert_eq!(
        log.entries(LogIndex(1), LogIndex(301), u64::MAX),
        Ok(written)
    );
}

/// A real disk whose fsyncs wait while its gate is closed.
#[derive(Debug)]
struct GatedDisk {
    real: RealDisk,
    gate: Mutex<Gate>,
    changed: std::sync::Condvar,
}

#[derive(Debug, Default)]
struct Gate {
    closed: bool,
    waiting: usize,
}

impl GatedDisk {
    fn new() -> GatedDisk {
        GatedDisk {
            real: RealDisk::new(),
            gate: Mutex::new(Gate::default()),
            changed: std::sync::Condvar::new(),
        }
    }

    fn set_closed(&self, closed: bool) {
        self.gate.lock().unwrap().closed = closed;
        self.changed.notify_all();
    }

    /// Waits until an fsync waits at the gate.
    fn wait_for_a_waiting_sync(&self) {
        let mut gate = self.gate.lock().unwrap();
        while gate.waiting == 0 {
            gate = self.changed.wait(gate).unwrap();
        }
    }
}

impl Disk for GatedDisk {
    fn create_dir_all(&self, dir: &std::path::Path) -> std::io::Result<()> {
        self.real.create_dir_all(dir)
    }
    fn create(&self, path: &std::path::Path) -> std::io::Result<()> {
        self.real.create(path)
    }
    fn append(&self, path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
        self.real.append(path, data)
    }
    fn write_at(&self, path: &std::path::Path, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.real.write_at(path, offset, data)
    }
    fn read(&self, path: &std::path::Path) -> std::io::Result<Vec<u8>> {
        self.real.read(path)
    }
    fn file_len(&self, path: &std::path::Path) -> std::io::Result<u64> {
        self.real.file_len(path)
    }
    fn truncate(&self, path: &std::path::Path, len: u64) -> std::io::Result<()> {
        self.real.truncate(path, len)
    }
    fn sync(&self, path: &std::path::Path) -> std::io::Result<()> {
        let mut gate = self.gate.lock().unwrap();
        if gate.closed {
            gate.waiting += 1;
            self.changed.notify_all();
            while gate.closed {
                gate = self.changed.wait(gate).unwrap();
            }
            gate.waiting -= 1;
        }
        drop(gate);
        self.real.sync(path)
    }
    fn sync_dir(&self, dir: &std::path::Path) -> std::io::Result<()> {
        self.real.sync_dir(dir)
    }
    fn list(&self, dir: &std::path::Path) -> std::io::Result<Vec<String>> {
        self.real.list(dir)
    }
    fn rename(&self, from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
        self.real.rename(from, to)
    }
    fn remove(&self, path: &std::path::Path) -> std::io::Result<()> {
        self.real.remove(path)
    }
}

#[test]
fn a_sync_leaves_the_log_unlocked_during_its_fsync() {
    // Goal: `RaftLogStore::sync` does not hold the WAL while its fsync runs, so that the Raft
    // driver appends the next Readies meanwhile; the fsync makes durable what was appended
    // before it began, and the next sync the rest. Method: a disk whose fsync waits at a gate;
    // while one sync waits there, another thread appends (which would block on the WAL's lock
    // if the sync held it), then the gate opens and the positions are checked.
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = Arc::new(GatedDisk::new());
    let config = WalConfig {
        segment_bytes_max: 1 << 20,
        record_bytes_max: 4096,
        ..WalConfig::new(dir.path().join("wal"))
    };
    let wal = Arc::new(Mutex::new(Wal::open(disk.clone(), config).expect("open")));
    let g1 = RaftLogStore::new(wal.clone(), G1);
    g1.set_hard_state(hard_state(2, 1, 0)).expect("hard state");
    g1.append(&entries(1, 10, 2, "first")).expect("append");
    let before = wal.lock().unwrap().appended_position();
    let synced_at_open = wal.lock().unwrap().synced_position();
    assert!(synced_at_open < before);

    disk.set_closed(true);
    let syncing = {
        let g1 = g1.clone();
        std::thread::spawn(move || g1.sync())
    };
    disk.wait_for_a_waiting_sync();
    assert!(
        wal.try_lock().is_ok(),
        "the log is not held during the fsync"
    );
    g1.append(&entries(11, 10, 2, "second"))
        .expect("append during the fsync");
    let after = wal.lock().unwrap().appended_position();
    assert!(after > before);
    assert_eq!(
        wal.lock().unwrap().synced_position(),
        synced_at_open,
        "nothing more is durable while the fsync waits"
    );
    disk.set_closed(false);

    let synced = syncing.join().expect("thread").expect("sync");
    assert_eq!(
        synced, before,
        "the fsync covers what was appended before it"
    );
    assert_eq!(wal.lock().unwrap().synced_position(), before);
    assert_eq!(g1.sync().expect("sync"), after);
    drop((g1, wal));
    let wal = open(dir.path(), 1 << 20);
    assert_eq!(RaftLogStore::new(wal, G1).last_index(), Ok(LogIndex(20)));
}
