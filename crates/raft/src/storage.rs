//! The interface through which the core reads the stable part of the log.
//!
//! The core never writes here. The application persists what a [`crate::Ready`] hands it (entries,
//! hard state, snapshot) and then acknowledges it; from then on the core reads those entries back
//! through this trait. Entries not yet handed over live in the core's own unstable buffer.

#[cfg(test)]
use crate::types::NodeId;
use crate::types::{ConfState, Entry, HardState, LogIndex, Snapshot, SnapshotMeta, Term};

/// What a node finds on stable storage when it starts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RaftState {
    pub hard_state: HardState,
    pub conf_state: ConfState,
}

/// Errors a [`LogStorage`] reports.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StorageError {
    /// The requested index is older than the first index kept: it was compacted into a snapshot.
    #[error("log index is compacted")]
    Compacted,
    /// The requested entries are past the last index stored.
    #[error("log entries are unavailable")]
    Unavailable,
    /// A snapshot is being built; the caller should try again later.
    #[error("snapshot is temporarily unavailable")]
    SnapshotTemporarilyUnavailable,
    /// A snapshot older than the one already stored was offered.
    #[error("snapshot is out of date")]
    SnapshotOutOfDate,
    /// Entries would leave a gap after the last stored index.
    #[error("entries starting at {first} would leave a gap after the last index {last}")]
    Gap { first: u64, last: u64 },
    /// The storage itself failed. This is fatal for the node.
    #[error("storage failure: {0}")]
    Io(String),
}

/// Read access to the persisted log of one group.
///
/// Invariants an implementation keeps:
/// - entries are contiguous from `first_index()` to `last_index()` inclusive;
/// - `term(first_index() - 1)` answers (it is the term of the latest snapshot, or zero);
/// - `first_index() - 1 <= last_index()`; an empty log has `first_index() == last_index() + 1`.
pub trait LogStorage {
    /// The hard state and configuration to start from.
    fn initial_state(&self) -> Result<RaftState, StorageError>;

    /// Entries in `[low, high)`, stopping before the total would pass `bytes_max`, but always at
    /// least one entry when the range is not empty.
    fn entries(
        &self,
        low: LogIndex,
        high: LogIndex,
        bytes_max: u64,
    ) -> Result<Vec<Entry>, StorageError>;

    /// The term of the entry at `index`, for any index in `[first_index() - 1, last_index()]`.
    fn term(&self, index: LogIndex) -> Result<Term, StorageError>;

    /// The index of the first entry still kept (one past the latest snapshot).
    fn first_index(&self) -> Result<LogIndex, StorageError>;

    /// The index of the last entry stored.
    fn last_index(&self) -> Result<LogIndex, StorageError>;

    /// The latest snapshot, which must cover at least `request_index`; otherwise
    /// `SnapshotTemporarilyUnavailable` until the application has built a newer one.
    fn snapshot(&self, request_index: LogIndex) -> Result<Snapshot, StorageError>;
}

/// An in-memory [`LogStorage`], used by tests and the simulator.
///
/// It keeps the latest snapshot, the entries after the compaction point, the hard state and the
/// configuration. `Clone` it to model a crash: keep the copy that holds only what was persisted.
///
/// Invariants: `entries` are contiguous and start at `compacted.0 + 1`; `compacted.0` is at or
/// below the snapshot index (both are zero in a fresh storage), so every compacted entry is
/// covered by the snapshot a leader would send instead.
#[derive(Clone, Debug, Default)]
pub struct MemStorage {
    hard_state: HardState,
    conf_state: ConfState,
    snapshot: Snapshot,
    /// The index and term of the last compacted entry.
    compacted: (LogIndex, Term),
    entries: Vec<Entry>,
}

impl MemStorage {
    /// An empty storage with an empty configuration.
    pub fn new() -> Self {
        MemStorage::default()
    }

    /// An empty storage that starts with the given configuration (how a new cluster boots).
    ///
    /// The bootstrap configuration is not in the log, so a node that joins an existing group
    /// must start with the configuration in force before the change that adds it (it then
    /// applies that change from the log like everyone else), unless the leader's log is
    /// compacted past index 1, in which case it receives a snapshot carrying the configuration.
    pub fn new_with_conf_state(conf_state: ConfState) -> Self {
        let mut storage = MemStorage::default();
        storage.snapshot.meta.conf_state = conf_state.clone();
        storage.conf_state = conf_state;
        storage
    }

    pub fn hard_state(&self) -> HardState {
        self.hard_state
    }

    pub fn set_hard_state(&mut self, hard_state: HardState) {
        self.hard_state = hard_state;
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// Records the configuration in force, returned by `initial_state` after a restart. The
    /// application calls this after [`crate::RawNode::apply_conf_change`].
    pub fn set_conf_state(&mut self, conf_state: ConfState) {
        self.conf_state = conf_state;
    }

    fn first(&self) -> LogIndex {
        self.compacted.0.next()
    }

    fn last(&self) -> LogIndex {
        self.compacted.0.plus(self.entries.len() as u64)
    }

    /// Appends entries, truncating any stored suffix they replace. Entries at or below the
    /// compaction point are skipped.
    pub fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        let Some(first_new) = entries.first() else {
            return Ok(());
        };
        if first_new.index > self.last().next() {
            return Err(StorageError::Gap {
                first: first_new.index.get(),
                last: self.last().get(),
            });
        }
        let skip = self.first().get().saturating_sub(first_new.index.get()) as usize;
        let entries = entries.get(skip..).unwrap_or(&[]);
        let Some(first_kept) = entries.first() else {
            return Ok(());
        };
        let keep = (first_kept.index.get() - self.first().get()) as usize;
        self.entries.truncate(keep);
        self.entries.extend_from_slice(entries);
        debug_assert!(
            self.entries
                .windows(2)
                .all(|w| w[1].index == w[0].index.next())
        );
        Ok(())
    }

    /// Replaces the whole log by a snapshot received from a leader.
    pub fn apply_snapshot(&mut self, snapshot: Snapshot) -> Result<(), StorageError> {
        if snapshot.meta.index <= self.snapshot.meta.index && self.snapshot.meta.index.get() > 0 {
            return Err(StorageError::SnapshotOutOfDate);
        }
        self.compacted = (snapshot.meta.index, snapshot.meta.term);
        self.entries.clear();
        self.conf_state = snapshot.meta.conf_state.clone();
        self.hard_state.commit = self.hard_state.commit.max(snapshot.meta.index);
        if self.hard_state.term < snapshot.meta.term {
            self.hard_state.term = snapshot.meta.term;
        }
        self.snapshot = snapshot;
        Ok(())
    }

    /// Records a snapshot of the state machine at `index` (which must be stored and not older
    /// than the current snapshot). The log is not compacted; call [`MemStorage::compact`].
    pub fn create_snapshot(
        &mut self,
        index: LogIndex,
        conf_state: ConfState,
        data: bytes::Bytes,
    ) -> Result<Snapshot, StorageError> {
        if index < self.snapshot.meta.index {
            return Err(StorageError::SnapshotOutOfDate);
        }
        if index > self.last() {
            return Err(StorageError::Unavailable);
        }
        let term = self.term(index)?;
        self.snapshot = Snapshot {
            meta: SnapshotMeta {
                index,
                term,
                conf_state,
            },
            data,
        };
        Ok(self.snapshot.clone())
    }

    /// Discards the entries up to `index`, which must be covered by the stored snapshot.
    pub fn compact(&mut self, index: LogIndex) -> Result<(), StorageError> {
        if index <= self.compacted.0 {
            return Err(StorageError::Compacted);
        }
        if index > self.snapshot.meta.index || index > self.last() {
            return Err(StorageError::Unavailable);
        }
        let term = self.term(index)?;
        let drop = (index.get() - self.compacted.0.get()) as usize;
        self.entries.drain(..drop);
        self.compacted = (index, term);
        Ok(())
    }
}

impl LogStorage for MemStorage {
    fn initial_state(&self) -> Result<RaftState, StorageError> {
        Ok(RaftState {
            hard_state: self.hard_state,
            conf_state: self.conf_state.clone(),
        })
    }

    fn entries(
        &self,
        low: LogIndex,
        high: LogIndex,
        bytes_max: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        if low < self.first() {
            return Err(StorageError::Compacted);
        }
        if high > self.last().next() || low > high {
            return Err(StorageError::Unavailable);
        }
        let start = (low.get() - self.first().get()) as usize;
        let end = (high.get() - self.first().get()) as usize;
        Ok(limit_size(&self.entries[start..end], bytes_max))
    }

    fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
        if index < self.compacted.0 {
            return Err(StorageError::Compacted);
        }
        if index == self.compacted.0 {
            return Ok(self.compacted.1);
        }
        if index > self.last() {
            return Err(StorageError::Unavailable);
        }
        Ok(self.entries[(index.get() - self.first().get()) as usize].term)
    }

    fn first_index(&self) -> Result<LogIndex, StorageError> {
        Ok(self.first())
    }

    fn last_index(&self) -> Result<LogIndex, StorageError> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: LogIndex) -> Result<Snapshot, StorageError> {
        if self.snapshot.meta.index < request_index {
            return Err(StorageError::SnapshotTemporarilyUnavailable);
        }
        Ok(self.snapshot.clone())
    }
}

/// The longest prefix of `entries` within `bytes_max`, but at least one entry.
pub fn limit_size(entries: &[Entry], bytes_max: u64) -> Vec<Entry> {
    let mut total = 0u64;
    let mut count = 0usize;
    for entry in entries {
        total = total.saturating_add(entry.size_bytes());
        if count > 0 && total > bytes_max {
            break;
        }
        count += 1;
    }
    entries[..count].to_vec()
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::types::EntryPayload;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            term: Term(term),
            index: LogIndex(index),
            payload: EntryPayload::Normal(Bytes::new()),
        }
    }

    fn storage(terms: &[u64]) -> MemStorage {
        let mut s = MemStorage::new();
        let entries: Vec<Entry> = terms
            .iter()
            .enumerate()
            .map(|(i, t)| entry(i as u64 + 1, *t))
            .collect();
        s.append(&entries).unwrap();
        s
    }

    fn terms(s: &MemStorage) -> Vec<u64> {
        let (first, last) = (s.first_index().unwrap(), s.last_index().unwrap());
        s.entries(first, last.next(), u64::MAX)
            .unwrap()
            .iter()
            .map(|e| e.term.get())
            .collect()
    }

    /// Goal: append truncates a conflicting suffix, extends, skips compacted entries and refuses
    /// gaps. Method: table of (log terms, entries to append as (index, term), expected terms).
    #[test]
    fn append_table() {
        type Case = (
            &'static [u64],
            &'static [(u64, u64)],
            Result<&'static [u64], StorageError>,
        );
        let cases: &[Case] = &[
            (&[1, 2, 3], &[], Ok(&[1, 2, 3])),
            (&[1, 2, 3], &[(4, 3)], Ok(&[1, 2, 3, 3])),
            (&[1, 2, 3], &[(2, 4), (3, 4)], Ok(&[1, 4, 4])),
            (&[1, 2, 3], &[(3, 5), (4, 5), (5, 5)], Ok(&[1, 2, 5, 5, 5])),
            (&[1, 2, 3], &[(1, 9)], Ok(&[9])),
            (
                &[1, 2, 3],
                &[(5, 3)],
                Err(StorageError::Gap { first: 5, last: 3 }),
            ),
        ];
        for (i, (start, append, want)) in cases.iter().enumerate() {
            let mut s = storage(start);
            let ents: Vec<Entry> = append.iter().map(|(i, t)| entry(*i, *t)).collect();
            let got = s.append(&ents).map(|()| terms(&s));
            assert_eq!(got, want.clone().map(|w| w.to_vec()), "case {i}");
        }
    }

    /// Goal: snapshot, compaction and the term of the compaction point follow the trait's
    /// invariants. Method: build, snapshot, compact, then probe every accessor.
    #[test]
    fn snapshot_and_compact() {
        let mut s = storage(&[1, 1, 2, 2, 3]);
        assert_eq!(
            s.compact(LogIndex(2)),
            Err(StorageError::Unavailable),
            "no snapshot covers 2 yet"
        );
        let cs = ConfState::with_voters([NodeId(1)]);
        let snap = s
            .create_snapshot(LogIndex(3), cs.clone(), Bytes::from_static(b"sm"))
            .unwrap();
        assert_eq!(snap.meta.term, Term(2));
        s.compact(LogIndex(3)).unwrap();
        assert_eq!(s.first_index(), Ok(LogIndex(4)));
        assert_eq!(s.last_index(), Ok(LogIndex(5)));
        assert_eq!(s.term(LogIndex(3)), Ok(Term(2)));
        assert_eq!(s.term(LogIndex(2)), Err(StorageError::Compacted));
        assert_eq!(s.term(LogIndex(6)), Err(StorageError::Unavailable));
        assert_eq!(
            s.entries(LogIndex(3), LogIndex(5), u64::MAX),
            Err(StorageError::Compacted)
        );
        assert_eq!(s.compact(LogIndex(3)), Err(StorageError::Compacted));
        assert_eq!(
            s.snapshot(LogIndex(3)).map(|x| x.meta.index),
            Ok(LogIndex(3))
        );
        assert_eq!(
            s.snapshot(LogIndex(4)),
            Err(StorageError::SnapshotTemporarilyUnavailable)
        );
        assert_eq!(
            s.create_snapshot(LogIndex(2), cs, Bytes::new()),
            Err(StorageError::SnapshotOutOfDate)
        );
        // Appending over compacted entries skips them.
        s.append(&[entry(3, 2), entry(4, 7)]).unwrap();
        assert_eq!(terms(&s), vec![7]);
    }

    /// Goal: applying a snapshot replaces the log and refuses older snapshots.
    #[test]
    fn apply_snapshot() {
        let mut s = storage(&[1, 1, 1]);
        let meta = SnapshotMeta {
            index: LogIndex(10),
            term: Term(4),
            conf_state: ConfState::with_voters([NodeId(2)]),
        };
        s.apply_snapshot(Snapshot {
            meta: meta.clone(),
            data: Bytes::new(),
        })
        .unwrap();
        assert_eq!(s.first_index(), Ok(LogIndex(11)));
        assert_eq!(s.last_index(), Ok(LogIndex(10)));
        assert_eq!(s.term(LogIndex(10)), Ok(Term(4)));
        assert_eq!(s.conf_state(), &meta.conf_state);
        let older = SnapshotMeta {
            index: LogIndex(9),
            ..meta
        };
        assert_eq!(
            s.apply_snapshot(Snapshot {
                meta: older,
                data: Bytes::new()
            }),
            Err(StorageError::SnapshotOutOfDate)
        );
    }

    /// Goal: size limiting keeps at least one entry and stops before passing the limit.
    #[test]
    fn limit_size_table() {
        let ents: Vec<Entry> = (1..=4).map(|i| entry(i, 1)).collect();
        let one = ents[0].size_bytes();
        let cases = [
            (0, 1),
            (one, 1),
            (one * 2, 2),
            (one * 2 + 1, 2),
            (u64::MAX, 4),
        ];
        for (i, (bytes_max, want)) in cases.iter().enumerate() {
            assert_eq!(limit_size(&ents, *bytes_max).len(), *want, "case {i}");
        }
    }
}
