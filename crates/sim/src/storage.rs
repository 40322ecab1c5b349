//! Where a simulated node keeps its Raft log: a `MemStorage` (the disk is a clone of it, see
//! [`crate::cluster`]) or the real write-ahead log of `chorus-storage` on the node's own
//! [`FaultyDisk`].
//!
//! What lives here: [`SimLog`], the `LogStorage` a node's `RawNode` reads from in either mode, and
//! [`WalDisk`], one node's faulty disk with its WAL, which survives crashes and recovers the log
//! from what was synced. What does not: the decisions of when to write, sync, crash or corrupt,
//! which the cluster and its nemesis make.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use chorus_raft::{
    ConfState, Entry, LogIndex, LogStorage, MemStorage, RaftState, Snapshot, StorageError, Term,
};
use chorus_storage::disk::{CrashOptions, Disk, FaultyDisk};
use chorus_storage::wal::{PurgePlan, RaftLogStore, SharedWal, Wal, WalConfig, WalError};

use crate::cluster::GROUP;

/// The directory of a node's WAL on its disk.
const WAL_DIR: &str = "/chorus/wal";

/// Bit flips land in this many first bytes of the oldest segment.
const FLIP_WINDOW_BYTES: u64 = 32;

/// The log a node's `RawNode` reads from.
///
/// The variants differ in size, but there is one per node and the mem variant is the common case
/// today: boxing it would only add an indirection to every read of the core.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum SimLog {
    /// Written only when a simulated fsync completes.
    Mem(MemStorage),
    /// The WAL: appended when a Ready is taken, made durable by `sync` when the simulated fsync
    /// completes.
    Wal(RaftLogStore),
}

impl LogStorage for SimLog {
    fn initial_state(&self) -> Result<RaftState, StorageError> {
        match self {
            SimLog::Mem(s) => s.initial_state(),
            SimLog::Wal(s) => s.initial_state(),
        }
    }

    fn entries(
        &self,
        low: LogIndex,
        high: LogIndex,
        bytes_max: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        match self {
            SimLog::Mem(s) => s.entries(low, high, bytes_max),
            SimLog::Wal(s) => s.entries(low, high, bytes_max),
        }
    }

    fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
        match self {
            SimLog::Mem(s) => s.term(index),
            SimLog::Wal(s) => s.term(index),
        }
    }

    fn first_index(&self) -> Result<LogIndex, StorageError> {
        match self {
            SimLog::Mem(s) => s.first_index(),
            SimLog::Wal(s) => s.first_index(),
        }
    }

    fn last_index(&self) -> Result<LogIndex, StorageError> {
        match self {
            SimLog::Mem(s) => s.last_index(),
            SimLog::Wal(s) => s.last_index(),
        }
    }

    fn snapshot(&self, request_index: LogIndex) -> Result<Snapshot, StorageError> {
        match self {
            SimLog::Mem(s) => s.snapshot(request_index),
            SimLog::Wal(s) => s.snapshot(request_index),
        }
    }
}

/// Why a node cannot start from its WAL.
#[derive(Debug)]
pub enum OpenError {
    /// Recovery failed (`WalError::Corrupt` for damage other than a torn tail).
    Wal(WalError),
    /// The WAL names a snapshot whose data the node never kept.
    MissingSnapshot(LogIndex),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Wal(e) => write!(f, "{e}"),
            OpenError::MissingSnapshot(i) => {
                write!(
                    f,
                    "the WAL names a snapshot at {i} whose data was never kept"
                )
            }
        }
    }
}

/// What a node starts from after its WAL is recovered.
#[derive(Debug)]
pub struct Recovered {
    pub store: RaftLogStore,
    /// The snapshot the state machine resumes from (index zero and no data if none).
    pub snapshot: Snapshot,
    pub conf_state: ConfState,
}

/// One node's disk in WAL mode: survives crashes; the WAL on it is open while the node runs.
///
/// The snapshot data the application owns (the state machine images) is kept here too, by index,
/// as a server keeps snapshot files next to its WAL: written durably before the WAL records a
/// snapshot, handed back with `set_snapshot` after a restart, as the WAL's documentation requires.
#[derive(Debug, Default)]
pub struct WalDisk {
    pub disk: FaultyDisk,
    wal: Option<SharedWal>,
    snapshots: BTreeMap<LogIndex, Bytes>,
    buffer_bytes: usize,
    /// A purge prepared at a snapshot, finished once an fsync covers it (as a server does,
    /// which never waits for the disk to purge).
    purge: Option<PurgePlan>,
}

impl WalDisk {
    fn config(&self) -> WalConfig {
        // Small segments and records, so that runs rotate and purge segments and split entry
        // batches; the write buffer comes from the seed.
        WalConfig {
            segment_bytes_max: 16 << 10,
            record_bytes_max: 4 << 10,
            pending_bytes_max: self.buffer_bytes,
            ..WalConfig::new(WAL_DIR)
        }
    }

    /// An empty disk whose WAL buffers `buffer_bytes` before handing records to the disk.
    pub fn new(buffer_bytes: usize) -> WalDisk {
        WalDisk {
            buffer_bytes: buffer_bytes.max(1),
            ..WalDisk::default()
        }
    }

    /// Opens (and on the first start creates) the WAL, recovering what was synced, and prepares
    /// the group's log: the snapshot data handed back, the configuration matching the snapshot.
    pub fn open(&mut self, genesis: &ConfState) -> Result<Recovered, OpenError> {
        self.wal = None;
        self.purge = None;
        let disk: Arc<dyn Disk> = Arc::new(self.disk.clone());
        let wal = Wal::open(disk, self.config()).map_err(OpenError::Wal)?;
        let fresh = wal.group(GROUP).map_err(OpenError::Wal)?.is_none();
        let meta = match wal.group(GROUP).map_err(OpenError::Wal)? {
            Some(log) => log.snapshot_meta().clone(),
            None => Default::default(),
        };
        let recovered_conf = wal
            .group(GROUP)
            .map_err(OpenError::Wal)?
            .map(|log| log.conf_state().clone());
        let shared: SharedWal = Arc::new(Mutex::new(wal));
        let store = RaftLogStore::new(shared.clone(), GROUP);
        let wal_err = OpenError::Wal;
        if fresh {
            // Every node boots with the genesis configuration, durable before anything else.
            store.set_conf_state(genesis.clone()).map_err(wal_err)?;
            store.sync().map_err(OpenError::Wal)?;
        }
        let mut snapshot = Snapshot::default();
        if meta.index > LogIndex(0) {
            let data = self
                .snapshots
                .get(&meta.index)
                .cloned()
                .ok_or(OpenError::MissingSnapshot(meta.index))?;
            snapshot = Snapshot {
                meta: meta.clone(),
                data,
            };
            store
                .set_snapshot(snapshot.clone())
                .map_err(OpenError::Wal)?;
            // The node resumes at the snapshot, so its configuration must be the snapshot's. A
            // crash may have kept a snapshot mark but torn the configuration written after it.
            if recovered_conf.as_ref() != Some(&meta.conf_state) {
                store
                    .set_conf_state(meta.conf_state.clone())
                    .map_err(OpenError::Wal)?;
            }
            self.snapshots.retain(|&i, _| i >= meta.index);
        }
        let conf_state = store
            .initial_state()
            .map(|s| s.conf_state)
            .unwrap_or_default();
        self.wal = Some(shared);
        Ok(Recovered {
            store,
            snapshot,
            conf_state,
        })
    }

    /// Keeps a snapshot's data (durably, before the WAL records the snapshot).
    pub fn keep_snapshot(&mut self, index: LogIndex, data: Bytes) {
        self.snapshots.insert(index, data);
    }

    /// The index of the latest snapshot the open WAL records (written, maybe not synced).
    pub fn snapshot_index(&self) -> LogIndex {
        let Some(wal) = &self.wal else {
            return LogIndex(0);
        };
        let wal = wal.lock().unwrap_or_else(|e| e.into_inner());
        match wal.group(GROUP) {
            Ok(Some(log)) => log.snapshot_meta().index,
            _ => LogIndex(0),
        }
    }

    /// Prepares the deletion of the segments no group needs any more (after a compaction);
    /// [`WalDisk::finish_purge`] deletes them once an fsync covers what freed them. A newer
    /// plan replaces an unfinished one: it frees at least the same segments.
    pub fn prepare_purge(&mut self) -> Result<(), WalError> {
        let Some(wal) = &self.wal else {
            return Ok(());
        };
        let plan = wal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .prepare_purge()?;
        if plan.is_some() {
            self.purge = plan;
        }
        Ok(())
    }

    /// Deletes the segments of the prepared purge, if any, and returns how many. Called right
    /// after a sync, which covers the plan.
    pub fn finish_purge(&mut self) -> Result<usize, WalError> {
        let (Some(wal), Some(plan)) = (&self.wal, self.purge.take()) else {
            return Ok(0);
        };
        wal.lock()
            .unwrap_or_else(|e| e.into_inner())
            .finish_purge(plan)
    }

    /// Whether the open WAL holds appended records that are not durable yet (a sync will reach
    /// the disk).
    pub fn has_unsynced(&self) -> bool {
        self.wal.as_ref().is_some_and(|wal| {
            let wal = wal.lock().unwrap_or_else(|e| e.into_inner());
            wal.appended_position() != wal.synced_position()
        })
    }

    /// Unsynced bytes of the file written last: the most a torn write can keep now.
    pub fn unsynced_bytes(&self) -> u64 {
        self.disk.last_write_unsynced_bytes()
    }

    /// A power loss: the WAL (with its write buffer) is gone, the disk keeps what `options` say.
    pub fn crash(&mut self, options: CrashOptions) {
        self.wal = None;
        self.purge = None;
        self.disk.crash(options);
    }

    /// Flips one bit at a position chosen by `pick(n)` (below `n`) among the first bytes of the
    /// oldest segment (its header record, or the record after it), where valid records always
    /// follow, so recovery must refuse the log rather than take the damage for a torn tail.
    /// Returns the file and offset, or `None` if the segment is too short to be sure of that.
    pub fn flip_bit(&self, pick: impl FnOnce(u64) -> u64) -> Option<(PathBuf, u64)> {
        assert!(
            self.wal.is_none(),
            "bits are flipped while the node is down"
        );
        let path = self
            .disk
            .paths()
            .into_iter()
            .find(|p| p.extension().is_some_and(|e| e == "wal") && p.starts_with(WAL_DIR))?;
        // Segments are preallocated: what counts is the length up to the zeros after the last
        // record, not the file's.
        let bytes = self.disk.read(&path).ok()?;
        let used = bytes.iter().rposition(|&b| b != 0).map_or(0, |at| at + 1);
        if used < 512 {
            return None;
        }
        let offset = pick(FLIP_WINDOW_BYTES);
        let bit = (offset % 8) as u8;
        self.disk.flip_bit(&path, offset, bit).ok()?;
        Some((path, offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_raft::{EntryPayload, HardState, NodeId, SnapshotMeta};

    fn entries(first: u64, count: u64, term: u64) -> Vec<Entry> {
        (first..first + count)
            .map(|i| Entry {
                term: Term(term),
                index: LogIndex(i),
                payload: EntryPayload::Normal(Bytes::from(format!("e{i}"))),
            })
            .collect()
    }

    fn voters(ids: &[u64]) -> ConfState {
        ConfState::with_voters(ids.iter().copied().map(NodeId))
    }

    #[test]
    fn a_restart_keeps_what_was_synced_and_resumes_at_a_consistent_snapshot() {
        // Goal: the node's disk in WAL mode boots with the genesis configuration, keeps synced
        // entries and hard state across a crash, loses unsynced ones, hands the snapshot data
        // back, and resumes with the configuration of the snapshot it resumes from. Method: write,
        // sync, crash at chosen points and reopen; compare with what was synced.
        let genesis = voters(&[1, 2, 3]);
        let mut disk = WalDisk::new(1);
        let r = disk.open(&genesis).expect("fresh WAL opens");
        assert_eq!(r.conf_state, genesis);
        assert_eq!(r.snapshot.meta.index, LogIndex(0));
        let hs = HardState {
            term: Term(2),
            vote: Some(NodeId(1)),
            commit: LogIndex(3),
        };
        r.store.append(&entries(1, 4, 2)).expect("append");
        r.store.set_hard_state(hs).expect("hard state");
        r.store.sync().expect("sync");
        r.store.append(&entries(5, 2, 2)).expect("append");
        disk.crash(CrashOptions::LOSE_UNSYNCED);
        let r = disk.open(&genesis).expect("recovers");
        assert_eq!(r.store.last_index().expect("last"), LogIndex(4));
        assert_eq!(r.store.initial_state().expect("state").hard_state, hs);
        // A snapshot mark that is synced, followed by its configuration that is not: the restart
        // must resume at the snapshot with the snapshot's configuration.
        let meta = SnapshotMeta {
            index: LogIndex(3),
            term: Term(2),
            conf_state: voters(&[1, 2, 3, 4]),
        };
        disk.keep_snapshot(LogIndex(3), Bytes::from_static(b"image"));
        let snapshot = Snapshot {
            meta: meta.clone(),
            data: Bytes::from_static(b"image"),
        };
        r.store.set_snapshot(snapshot).expect("mark");
        r.store.sync().expect("sync");
        r.store
            .set_conf_state(meta.conf_state.clone())
            .expect("conf");
        disk.crash(CrashOptions::LOSE_UNSYNCED);
        let r = disk.open(&genesis).expect("recovers");
        assert_eq!(r.snapshot.meta, meta);
        assert_eq!(r.snapshot.data, Bytes::from_static(b"image"));
        assert_eq!(r.conf_state, meta.conf_state);
        assert_eq!(
            r.store.snapshot(LogIndex(3)).expect("snapshot").data,
            Bytes::from_static(b"image")
        );
    }

    #[test]
    fn a_flipped_bit_makes_the_wal_refuse_to_open() {
        // Goal: the bit flips the nemesis makes are ones recovery must refuse (never mistaken
        // for a torn tail). Method: fill a log past the flip window, crash, flip every position
        // the nemesis may pick, and require Corrupt each time.
        for offset in 0..FLIP_WINDOW_BYTES {
            let mut disk = WalDisk::new(64);
            let r = disk.open(&voters(&[1, 2, 3])).expect("fresh WAL opens");
            for i in 0..20 {
                r.store.append(&entries(i * 4 + 1, 4, 1)).expect("append");
                r.store.sync().expect("sync");
            }
            drop(r);
            disk.crash(CrashOptions::LOSE_UNSYNCED);
            let flipped = disk.flip_bit(|n| {
                assert_eq!(n, FLIP_WINDOW_BYTES);
                offset
            });
            assert!(flipped.is_some(), "a long segment is flipped");
            match disk.open(&voters(&[1, 2, 3])) {
                Err(OpenError::Wal(WalError::Corrupt { .. })) => {}
                other => panic!("offset {offset}: expected Corrupt, got {other:?}"),
            }
        }
    }
}
