//! One group's view of the shared WAL: the read side is [`chorus_raft::LogStorage`], the write
//! side persists what a `Ready` hands over.

use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use chorus_raft::{
    ConfState, Entry, GroupId, HardState, LogIndex, LogStorage, RaftState, Ready, Snapshot,
    SnapshotMeta, StorageError, Term,
};

use super::codec::Record;
use super::{GroupLog, PurgePlan, SharedWal, Wal, WalError, WalPosition, sync_shared};

/// The persisted Raft log of one group, stored in the node's shared [`Wal`].
///
/// Writes are durable only after [`RaftLogStore::sync`] (or a `sync` of the shared WAL by
/// anyone): a node persists the Readies of all its groups and then syncs once.
///
/// The WAL keeps snapshot metadata only: a recorded snapshot marks where the log may be
/// compacted, and the application owns the data. With a [`SnapshotSource`] (see
/// [`set_snapshot_source`](Self::set_snapshot_source)) a follower that needs a snapshot gets
/// whatever recent snapshot the source holds, read back each time and never kept in memory, and
/// the recorded marks need no data at all; without one, the data handed to
/// [`apply_snapshot`](Self::apply_snapshot) or [`set_snapshot`](Self::set_snapshot) is held here
/// (and after a restart the application hands it back with `set_snapshot`). Until the data is
/// available [`LogStorage::snapshot`] answers `SnapshotTemporarilyUnavailable`.
///
/// Clones share everything: give one to the `RawNode`, keep one to persist its Readies.
#[derive(Clone, Debug)]
pub struct RaftLogStore {
    group: GroupId,
    wal: SharedWal,
    snapshot_data: Arc<Mutex<Option<(LogIndex, Bytes)>>>,
    source: Arc<Mutex<Option<Arc<dyn SnapshotSource>>>>,
}

/// Where snapshots for followers come from (the application's snapshot files).
///
/// A follower that needs a snapshot can be sent any snapshot from which the log still holds
/// every later entry, so the source need not keep one for each mark the WAL records: it may
/// build one when asked.
pub trait SnapshotSource: Send + Sync + std::fmt::Debug {
    /// A snapshot at an index of at least `min_index`, read back from where the source keeps
    /// it, or `None` when it holds none that recent. On `None` the source should make one: the
    /// log store answers `SnapshotTemporarilyUnavailable` meanwhile, and Raft asks again.
    fn snapshot(&self, min_index: LogIndex) -> std::io::Result<Option<Snapshot>>;
}

fn storage_error(err: WalError) -> StorageError {
    StorageError::Io(err.to_string())
}

impl RaftLogStore {
    /// The log of `group` in `wal`.
    pub fn new(wal: SharedWal, group: GroupId) -> Self {
        RaftLogStore {
            group,
            wal,
            snapshot_data: Arc::new(Mutex::new(None)),
            source: Arc::new(Mutex::new(None)),
        }
    }

    /// Reads snapshot data from `source` when a follower needs it, instead of keeping it in
    /// memory (a snapshot is as large as the whole store).
    pub fn set_snapshot_source(&self, source: Arc<dyn SnapshotSource>) {
        *self.source.lock().unwrap_or_else(|e| e.into_inner()) = Some(source);
        *self.snapshot_data.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn keep_data(&self, index: LogIndex, data: Bytes) {
        let has_source = self
            .source
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some();
        *self.snapshot_data.lock().unwrap_or_else(|e| e.into_inner()) =
            (!has_source).then_some((index, data));
    }

    /// The group this log belongs to.
    pub fn group(&self) -> GroupId {
        self.group
    }

    fn lock(&self) -> MutexGuard<'_, Wal> {
        // A panic while holding the lock leaves the WAL as consistent as any crash would; the
        // poisoned flag inside the WAL, not the mutex's, decides whether it may be used.
        self.wal.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&GroupLog) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let wal = self.lock();
        match wal.group(self.group).map_err(storage_error)? {
            Some(log) => f(log),
            None => f(&GroupLog::default()),
        }
    }

    /// Appends entries, replacing any conflicting suffix from the first of them on.
    pub fn append(&self, entries: &[Entry]) -> Result<WalPosition, WalError> {
        if entries.is_empty() {
            return Ok(self.lock().appended_position());
        }
        self.lock().append(&Record::Entries {
            group: self.group,
            entries: entries.to_vec(),
        })
    }

    /// Records the hard state.
    pub fn set_hard_state(&self, hard_state: HardState) -> Result<WalPosition, WalError> {
        self.lock().append(&Record::HardState {
            group: self.group,
            hard_state,
        })
    }

    /// Records the configuration (after a membership change is applied).
    pub fn set_conf_state(&self, conf_state: ConfState) -> Result<WalPosition, WalError> {
        self.lock().append(&Record::ConfState {
            group: self.group,
            conf_state,
        })
    }

    /// Installs a snapshot received from the leader: the log restarts after it.
    pub fn apply_snapshot(&self, snapshot: Snapshot) -> Result<WalPosition, WalError> {
        let index = snapshot.meta.index;
        let position = self.lock().append(&Record::Snapshot {
            group: self.group,
            meta: snapshot.meta,
        })?;
        self.keep_data(index, snapshot.data);
        Ok(position)
    }

    /// Records a snapshot the application built locally and keeps its data for followers that
    /// need it. Entries are untouched; follow with [`compact`](Self::compact).
    pub fn set_snapshot(&self, snapshot: Snapshot) -> Result<WalPosition, WalError> {
        let index = snapshot.meta.index;
        let meta = snapshot.meta;
        let already = self
            .lock()
            .group(self.group)?
            .is_some_and(|l| *l.snapshot_meta() == meta);
        let position = if already {
            // A restart hands back the data of the snapshot already recorded: nothing to write.
            self.lock().appended_position()
        } else {
            self.lock().append(&Record::SnapshotMark {
                group: self.group,
                meta,
            })?
        };
        self.keep_data(index, snapshot.data);
        Ok(position)
    }

    /// The metadata of the latest snapshot the WAL records (index 0 when there is none).
    pub fn snapshot_meta(&self) -> Result<SnapshotMeta, StorageError> {
        self.read(|log| Ok(log.snapshot_meta().clone()))
    }

    /// Discards the entries up to and including `index`.
    pub fn compact(&self, index: LogIndex) -> Result<WalPosition, WalError> {
        let mut wal = self.lock();
        let term = match wal.group(self.group)? {
            Some(log) => log.term(index),
            None => Err(StorageError::Unavailable),
        };
        let term = term.map_err(|e| WalError::Rejected {
            group: self.group,
            reason: format!("cannot compact to {index}: {e}"),
        })?;
        wal.append(&Record::Compact {
            group: self.group,
            index,
            term,
        })
    }

    /// Appends what `ready` asks to persist, in the order its contract gives: snapshot, entries,
    /// hard state. Does not sync: persist the Readies of every group, [`sync`](Self::sync) once,
    /// then call `on_persisted` on each node.
    pub fn persist_ready(&self, ready: &Ready) -> Result<WalPosition, WalError> {
        if let Some(snapshot) = &ready.snapshot {
            self.apply_snapshot(snapshot.clone())?;
        }
        self.append(&ready.entries)?;
        if let Some(hard_state) = ready.hard_state {
            self.set_hard_state(hard_state)?;
        }
        Ok(self.lock().appended_position())
    }

    /// Deletes the shared WAL's oldest segments that no group needs any more (after a
    /// [`compact`](Self::compact)), and returns how many. See [`Wal::purge`].
    pub fn purge(&self) -> Result<usize, WalError> {
        self.lock().purge()
    }

    /// The first half of a purge that never waits for the disk; see [`Wal::prepare_purge`].
    pub fn prepare_purge(&self) -> Result<Option<PurgePlan>, WalError> {
        self.lock().prepare_purge()
    }

    /// The second half; see [`Wal::finish_purge`].
    pub fn finish_purge(&self, plan: PurgePlan) -> Result<usize, WalError> {
        self.lock().finish_purge(plan)
    }

    /// The end of what was appended to the shared WAL.
    pub fn appended_position(&self) -> WalPosition {
        self.lock().appended_position()
    }

    /// How far the shared WAL is durable.
    pub fn synced_position(&self) -> WalPosition {
        self.lock().synced_position()
    }

    /// Makes everything appended to the shared WAL durable. The WAL is not locked during the
    /// fsync itself (see [`sync_shared`]), so another thread may append meanwhile.
    pub fn sync(&self) -> Result<WalPosition, WalError> {
        sync_shared(&self.wal)
    }
}

impl LogStorage for RaftLogStore {
    fn initial_state(&self) -> Result<RaftState, StorageError> {
        self.read(|log| {
            Ok(RaftState {
                hard_state: log.hard_state(),
                conf_state: log.conf_state().clone(),
            })
        })
    }

    fn entries(
        &self,
        low: LogIndex,
        high: LogIndex,
        bytes_max: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        self.read(|log| log.entries(low, high, bytes_max))
    }

    fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
        self.read(|log| log.term(index))
    }

    fn first_index(&self) -> Result<LogIndex, StorageError> {
        self.read(|log| Ok(log.first_index()))
    }

    fn last_index(&self) -> Result<LogIndex, StorageError> {
        self.read(|log| Ok(log.last_index()))
    }

    fn snapshot(&self, request_index: LogIndex) -> Result<Snapshot, StorageError> {
        let (meta, first) =
            self.read(|log| Ok((log.snapshot_meta().clone(), log.first_index())))?;
        let source = self
            .source
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(source) = source {
            // The follower continues from the entry after the snapshot: the log must hold it.
            let min_index = request_index.max(first.prev());
            return match source.snapshot(min_index) {
                Ok(Some(snapshot)) => Ok(snapshot),
                Ok(None) => Err(StorageError::SnapshotTemporarilyUnavailable),
                Err(error) => Err(StorageError::Io(format!(
                    "read a snapshot at or after {min_index}: {error}"
                ))),
            };
        }
        if meta.index < request_index {
            return Err(StorageError::SnapshotTemporarilyUnavailable);
        }
        let data = self.snapshot_data.lock().unwrap_or_else(|e| e.into_inner());
        match &*data {
            Some((index, data)) if *index == meta.index => Ok(Snapshot {
                meta,
                data: data.clone(),
            }),
            _ if meta.index == LogIndex(0) => Ok(Snapshot {
                meta,
                data: Bytes::new(),
            }),
            _ => Err(StorageError::SnapshotTemporarilyUnavailable),
        }
    }
}
