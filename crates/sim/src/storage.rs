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
use chorus_storage::wal::{RaftLogStore, SharedWal, Wal, WalConfig, WalError};

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

    /// Deletes the segments no group needs any more.
    pub fn purge(&self) -> Result<usize, WalError> {
        match &self.wal {
            Some(wal) => wal.lock().unwrap_or_else(|e| e.into_inner()).purge(),
            None => Ok(0),
        }
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
        let len = self.disk.file_len(&path).ok()?;
        if len < 512 {
            return None;
        }
        let offset = pick(FLIP_WINDOW_BYTES);
        let bit = (offset % 8) as u8;
        self.disk.flip_bit(&path, offset, bit).ok()?;
        Some((path, offset))
    }
}
