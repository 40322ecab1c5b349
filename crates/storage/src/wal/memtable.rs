//! The in-memory image of one group's log, rebuilt from the WAL at start and kept up to date by
//! every append. Both the write path and recovery apply records through [`GroupLog::apply`], so
//! the state after a restart is, by construction, the state before it.

use std::collections::BTreeMap;

use chorus_raft::{ConfState, Entry, HardState, LogIndex, SnapshotMeta, StorageError, Term};

use super::codec::Record;

/// Whether a record is being written now or replayed at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Live,
    Replay,
}

/// The state of one group: kept entries, hard state, configuration, latest snapshot.
///
/// Invariants (outside replay):
/// - the keys of `entries` are exactly `first_index..=last_index`, and each entry's own index is
///   its key;
/// - the segments of the entries never decrease with the index (later entries are written later);
/// - `compact_term` is the term of `first_index - 1`;
/// - `first_index` never decreases, except when the group is removed.
///
/// During replay the map may have holes: a record in the oldest retained segment may hold entries
/// that a later record, also retained, replaces. [`GroupLog::finish_replay`] checks that the holes
/// are gone once every record is applied.
#[derive(Clone, Debug)]
pub struct GroupLog {
    /// Each kept entry, with the segment that holds it.
    entries: BTreeMap<u64, (Entry, u64)>,
    first_index: LogIndex,
    compact_term: Term,
    hard_state: HardState,
    conf_state: ConfState,
    snapshot: SnapshotMeta,
    /// The oldest segment holding a record that still defines this group's non-entry state.
    state_segment: Option<u64>,
}

impl Default for GroupLog {
    fn default() -> Self {
        GroupLog {
            entries: BTreeMap::new(),
            first_index: LogIndex(1),
            compact_term: Term(0),
            hard_state: HardState::default(),
            conf_state: ConfState::default(),
            snapshot: SnapshotMeta::default(),
            state_segment: None,
        }
    }
}

impl GroupLog {
    /// The index of the first kept entry (one past the last compacted one).
    pub fn first_index(&self) -> LogIndex {
        self.first_index
    }

    /// The index of the last entry, or `first_index - 1` when none is kept.
    pub fn last_index(&self) -> LogIndex {
        self.entries
            .keys()
            .next_back()
            .map_or(self.first_index.prev(), |&i| LogIndex(i))
    }

    /// The hard state.
    pub fn hard_state(&self) -> HardState {
        self.hard_state
    }

    /// The configuration.
    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// The metadata of the latest snapshot (all zero if none).
    pub fn snapshot_meta(&self) -> &SnapshotMeta {
        &self.snapshot
    }

    /// The term of the entry at `index`, for `index` in `[first_index - 1, last_index]`.
    pub fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
        if index.0 + 1 == self.first_index.0 {
            return Ok(self.compact_term);
        }
        if index < self.first_index {
            return Err(StorageError::Compacted);
        }
        let entry = self.entries.get(&index.0);
        entry.map(|(e, _)| e.term).ok_or(StorageError::Unavailable)
    }

    /// Entries in `[low, high)`, at most `bytes_max` in total but at least one.
    pub fn entries(
        &self,
        low: LogIndex,
        high: LogIndex,
        bytes_max: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        if low < self.first_index {
            return Err(StorageError::Compacted);
        }
        if high.0 > self.last_index().0 + 1 || low > high {
            return Err(StorageError::Unavailable);
        }
        let mut out = Vec::with_capacity((high.0 - low.0).min(1024) as usize);
        let mut bytes = 0u64;
        for (entry, _) in self.entries.range(low.0..high.0).map(|(_, v)| v) {
            bytes += entry.size_bytes();
            if !out.is_empty() && bytes > bytes_max {
                break;
            }
            out.push(entry.clone());
        }
        Ok(out)
    }

    /// The segment of the oldest kept entry.
    pub(crate) fn first_entry_segment(&self) -> Option<u64> {
        self.entries.values().next().map(|&(_, segment)| segment)
    }

    /// The oldest segment holding a record this group's non-entry state still depends on.
    pub(crate) fn state_segment(&self) -> Option<u64> {
        self.state_segment
    }

    /// The record that restates this group's non-entry state.
    pub(crate) fn state_record(&self, group: chorus_raft::GroupId) -> Record {
        Record::GroupState {
            group,
            hard_state: self.hard_state,
            conf_state: self.conf_state.clone(),
            snapshot: self.snapshot.clone(),
            compact_index: self.first_index.prev(),
            compact_term: self.compact_term,
        }
    }

    /// Checks that `record` can be applied. In `Live` mode this rejects caller mistakes; in
    /// `Replay` mode a failure means the log contradicts itself (the caller reports corruption).
    pub(crate) fn check(&self, record: &Record, mode: Mode) -> Result<(), String> {
        match record {
            Record::Entries { entries, .. } => self.check_entries(entries, mode),
            Record::Compact { index, .. } if mode == Mode::Live && *index > self.last_index() => {
                Err(format!(
                    "compact index {index} is past the last index {}",
                    self.last_index()
                ))
            }
            Record::Snapshot { meta, .. }
                if mode == Mode::Live && meta.index.0 + 1 < self.first_index.0 =>
            {
                Err(format!(
                    "snapshot at {} is older than the compacted prefix ending at {}",
                    meta.index,
                    self.first_index.prev()
                ))
            }
            Record::SnapshotMark { meta, .. } if mode == Mode::Live => {
                if meta.index < self.snapshot.index {
                    return Err(format!(
                        "snapshot at {} is older than the snapshot at {}",
                        meta.index, self.snapshot.index
                    ));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn check_entries(&self, entries: &[Entry], mode: Mode) -> Result<(), String> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        for (i, entry) in entries.iter().enumerate() {
            if entry.index.0 != first.index.0.wrapping_add(i as u64) {
                return Err(format!(
                    "entry indexes are not contiguous at {}",
                    entry.index
                ));
            }
        }
        let next = self.last_index().next();
        if first.index > next && mode == Mode::Live {
            return Err(format!(
                "entries start at {} but the log ends at {}",
                first.index,
                next.prev()
            ));
        }
        Ok(())
    }

    /// Applies a checked record written in segment `segment`.
    pub(crate) fn apply(&mut self, record: &Record, segment: u64) {
        match record {
            Record::Entries { entries, .. } => self.apply_entries(entries, segment),
            Record::HardState { hard_state, .. } => {
                self.hard_state = *hard_state;
                self.note_state(segment);
            }
            Record::ConfState { conf_state, .. } => {
                self.conf_state = conf_state.clone();
                self.note_state(segment);
            }
            Record::Snapshot { meta, .. } => {
                self.entries.clear();
                self.first_index = meta.index.next();
                self.compact_term = meta.term;
                self.conf_state = meta.conf_state.clone();
                self.snapshot = meta.clone();
                self.note_state(segment);
            }
            Record::SnapshotMark { meta, .. } => {
                self.snapshot = meta.clone();
                self.note_state(segment);
            }
            Record::Compact { index, term, .. } => {
                self.compact(*index, *term);
                self.note_state(segment);
            }
            Record::GroupState {
                hard_state,
                conf_state,
                snapshot,
                compact_index,
                compact_term,
                ..
            } => {
                self.hard_state = *hard_state;
                self.conf_state = conf_state.clone();
                self.snapshot = snapshot.clone();
                self.compact(*compact_index, *compact_term);
                // This record restates everything, so no older record is needed any more.
                self.state_segment = Some(segment);
            }
            Record::SegmentHeader { .. }
            | Record::SegmentSeal { .. }
            | Record::RemoveGroup { .. } => {
                unreachable!("not a group record")
            }
        }
    }

    fn note_state(&mut self, segment: u64) {
        self.state_segment = Some(self.state_segment.map_or(segment, |s| s.min(segment)));
    }

    fn apply_entries(&mut self, entries: &[Entry], segment: u64) {
        let Some(first) = entries.first() else { return };
        // Entries replace everything from their first index on (§5.3).
        self.entries.split_off(&first.index.0);
        for entry in entries.iter().filter(|e| e.index >= self.first_index) {
            self.entries.insert(entry.index.0, (entry.clone(), segment));
        }
    }

    /// Discards entries up to `index`. The compaction point only moves forward, so in replay the
    /// largest one seen is the true one even when older records were deleted.
    fn compact(&mut self, index: LogIndex, term: Term) {
        if index.0 + 1 < self.first_index.0 {
            return;
        }
        self.entries = self.entries.split_off(&index.next().0);
        self.first_index = index.next();
        self.compact_term = term;
    }

    /// Checks, after replay, that the entries are again contiguous from `first_index`.
    pub(crate) fn finish_replay(&self) -> Result<(), String> {
        for (expected, &index) in (self.first_index.0..).zip(self.entries.keys()) {
            if index != expected {
                return Err(format!(
                    "entry {expected} is missing (the next kept is {index})"
                ));
            }
        }
        Ok(())
    }
}
