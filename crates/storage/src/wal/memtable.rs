//! The in-memory image of one group's log, rebuilt from the WAL at start and kept up to date by
//! every append. Both the write path and recovery apply records through [`GroupLog::apply`], so
//! the state after a restart is, by construction, the state before it.

use std::collections::VecDeque;

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
/// - `entries` holds exactly `first_index..=last_index`, the entry at position `i` having index
///   `base + i` (so `base == first_index` whenever an entry is kept);
/// - the segments of the entries never decrease with the index (later entries are written later);
/// - `compact_term` is the term of `first_index - 1`;
/// - `first_index` never decreases, except when the group is removed.
///
/// During replay the log may skip ahead: the segments between a record in the oldest retained
/// segment and a later one may have been purged, the skipped entries being compacted. The entries
/// before such a gap are dropped (a consistent log compacts past the gap, hence past them too),
/// and [`GroupLog::finish_replay`] checks that `base` is again `first_index` once every record is
/// applied.
#[derive(Clone, Debug)]
pub struct GroupLog {
    /// Each kept entry, with the segment that holds it, in index order: a deque rather than a
    /// map, since the indexes are contiguous (a lookup is an offset, and an entry costs its own
    /// size and no tree node).
    entries: VecDeque<(Entry, u64)>,
    /// The index of the front of `entries`.
    base: u64,
    /// In replay, the first index of the latest gap skipped (for the error if it stays).
    replay_gap: Option<u64>,
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
            entries: VecDeque::new(),
            base: 1,
            replay_gap: None,
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
        match self.entries.len() {
            0 => self.first_index.prev(),
            len => LogIndex(self.base + len as u64 - 1),
        }
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
        let entry = self.position(index).and_then(|i| self.entries.get(i));
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
        if low == high {
            return Ok(out);
        }
        let (Some(start), Some(end)) = (self.position(low), self.position(high.prev())) else {
            return Err(StorageError::Unavailable);
        };
        let mut bytes = 0u64;
        for (entry, _) in self.entries.range(start..=end) {
            bytes += entry.size_bytes();
            if !out.is_empty() && bytes > bytes_max {
                break;
            }
            out.push(entry.clone());
        }
        Ok(out)
    }

    /// The position in `entries` of the entry at `index`, if it is kept.
    fn position(&self, index: LogIndex) -> Option<usize> {
        let offset = index.0.checked_sub(self.base)?;
        usize::try_from(offset)
            .ok()
            .filter(|&i| i < self.entries.len())
    }

    /// The segment of the oldest kept entry.
    pub(crate) fn first_entry_segment(&self) -> Option<u64> {
        self.entries.front().map(|&(_, segment)| segment)
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
                self.base = meta.index.next().0;
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
        // Entries replace everything from their first index on (§5.3). One that starts past the
        // end (in replay only, see the type's documentation) leaves nothing before it.
        let kept = first.index.0.saturating_sub(self.base);
        if kept > self.entries.len() as u64 {
            self.replay_gap = Some(self.base + self.entries.len() as u64);
            self.entries.clear();
        } else {
            self.entries.truncate(kept as usize);
        }
        for entry in entries.iter().filter(|e| e.index >= self.first_index) {
            if self.entries.is_empty() {
                self.base = entry.index.0;
            }
            self.entries.push_back((entry.clone(), segment));
        }
    }

    /// Discards entries up to `index`. The compaction point only moves forward, so in replay the
    /// largest one seen is the true one even when older records were deleted.
    fn compact(&mut self, index: LogIndex, term: Term) {
        if index.0 + 1 < self.first_index.0 {
            return;
        }
        let compacted = index.next().0.saturating_sub(self.base);
        if compacted >= self.entries.len() as u64 {
            self.entries.clear();
            self.base = index.next().0;
        } else {
            self.entries.drain(..compacted as usize);
            self.base += compacted;
        }
        self.first_index = index.next();
        self.compact_term = term;
    }

    /// Checks, after replay, that the entries are again contiguous from `first_index`.
    pub(crate) fn finish_replay(&self) -> Result<(), String> {
        if !self.entries.is_empty() && self.base != self.first_index.0 {
            let missing = self
                .replay_gap
                .filter(|&gap| gap >= self.first_index.0)
                .unwrap_or(self.first_index.0);
            return Err(format!(
                "entry {missing} is missing (the next kept is {})",
                self.base
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use chorus_raft::{EntryPayload, GroupId};

    use super::*;

    fn entries(first: u64, last: u64, term: u64) -> Record {
        Record::Entries {
            group: GroupId(1),
            entries: (first..=last)
                .map(|i| Entry {
                    term: Term(term),
                    index: LogIndex(i),
                    payload: EntryPayload::Normal(Bytes::from(vec![i as u8; 10])),
                })
                .collect(),
        }
    }

    fn compact(index: u64, term: u64) -> Record {
        Record::Compact {
            group: GroupId(1),
            index: LogIndex(index),
            term: Term(term),
        }
    }

    fn apply(log: &mut GroupLog, record: &Record, segment: u64, mode: Mode) {
        log.check(record, mode).unwrap();
        log.apply(record, segment);
    }

    fn indexes(log: &GroupLog, low: u64, high: u64) -> Vec<u64> {
        let got = log
            .entries(LogIndex(low), LogIndex(high), u64::MAX)
            .unwrap();
        got.iter().map(|e| e.index.0).collect()
    }

    // Goal: the live log keeps exactly first_index..=last_index through appends, a conflicting
    // suffix, compaction into and past the kept entries, and answers terms, slices and byte
    // limits at every boundary. Method: one log driven through each step, checked after each.
    #[test]
    fn appends_truncations_and_compactions_keep_the_log_contiguous() {
        let mut log = GroupLog::default();
        assert_eq!(log.last_index(), LogIndex(0));
        assert_eq!(log.entries(LogIndex(1), LogIndex(1), 0).unwrap(), vec![]);
        apply(&mut log, &entries(1, 10, 1), 1, Mode::Live);
        assert_eq!(log.last_index(), LogIndex(10));
        // A conflicting suffix from 6 on replaces 6..=10.
        apply(&mut log, &entries(6, 7, 2), 2, Mode::Live);
        assert_eq!(log.last_index(), LogIndex(7));
        assert_eq!(log.term(LogIndex(5)), Ok(Term(1)));
        assert_eq!(log.term(LogIndex(6)), Ok(Term(2)));
        assert_eq!(log.term(LogIndex(8)), Err(StorageError::Unavailable));
        assert_eq!(indexes(&log, 3, 8), vec![3, 4, 5, 6, 7]);
        assert_eq!(
            log.entries(LogIndex(3), LogIndex(9), u64::MAX),
            Err(StorageError::Unavailable)
        );
        // A byte limit still returns at least one entry.
        assert_eq!(log.entries(LogIndex(2), LogIndex(8), 0).unwrap().len(), 1);
        let two = log.entries(LogIndex(2), LogIndex(4), u64::MAX).unwrap();
        let limit = two.iter().map(Entry::size_bytes).sum();
        assert_eq!(
            log.entries(LogIndex(2), LogIndex(8), limit).unwrap().len(),
            2
        );

        apply(&mut log, &compact(4, 1), 2, Mode::Live);
        assert_eq!(log.first_index(), LogIndex(5));
        assert_eq!(log.term(LogIndex(4)), Ok(Term(1)));
        assert_eq!(log.term(LogIndex(3)), Err(StorageError::Compacted));
        assert_eq!(
            log.entries(LogIndex(4), LogIndex(6), u64::MAX),
            Err(StorageError::Compacted)
        );
        assert_eq!(indexes(&log, 5, 8), vec![5, 6, 7]);
        assert_eq!(log.first_entry_segment(), Some(1));

        // Compacting everything leaves an empty log that appends continue.
        apply(&mut log, &compact(7, 2), 2, Mode::Live);
        assert_eq!(
            (log.first_index(), log.last_index()),
            (LogIndex(8), LogIndex(7))
        );
        assert_eq!(log.first_entry_segment(), None);
        assert!(log.check(&entries(9, 9, 2), Mode::Live).is_err(), "a gap");
        apply(&mut log, &entries(8, 9, 2), 3, Mode::Live);
        assert_eq!(indexes(&log, 8, 10), vec![8, 9]);
        assert_eq!(log.first_entry_segment(), Some(3));
        // Entries partly below the compaction point keep only the part above it.
        apply(&mut log, &entries(6, 12, 3), 3, Mode::Live);
        assert_eq!(indexes(&log, 8, 13), vec![8, 9, 10, 11, 12]);
        assert_eq!(log.term(LogIndex(8)), Ok(Term(3)));
        log.finish_replay().unwrap();
    }

    // Goal: replay accepts a log whose middle segments were purged (the entries before the gap
    // are compacted later in the log), and refuses one where the gap is never compacted.
    // Method: entries 1..=5, then 10..=12 with nothing between, with and without a later compact.
    #[test]
    fn replay_skips_a_purged_gap_only_when_compaction_covers_it() {
        let mut log = GroupLog::default();
        apply(&mut log, &entries(1, 5, 1), 1, Mode::Replay);
        apply(&mut log, &entries(10, 12, 1), 3, Mode::Replay);
        apply(&mut log, &compact(9, 1), 3, Mode::Replay);
        log.finish_replay().unwrap();
        assert_eq!(indexes(&log, 10, 13), vec![10, 11, 12]);
        assert_eq!(log.term(LogIndex(9)), Ok(Term(1)));
        assert_eq!(log.first_entry_segment(), Some(3));

        let mut log = GroupLog::default();
        apply(&mut log, &entries(1, 5, 1), 1, Mode::Replay);
        apply(&mut log, &entries(10, 12, 1), 3, Mode::Replay);
        apply(&mut log, &compact(3, 1), 3, Mode::Replay);
        let err = log.finish_replay().unwrap_err();
        assert!(err.contains("entry 6 is missing"), "{err}");
    }
}
