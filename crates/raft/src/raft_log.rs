//! The Raft log as the core sees it: a stable prefix read through [`LogStorage`] and an unstable
//! suffix (entries and perhaps a snapshot) held in memory until the application reports them
//! persisted.
//!
//! Indexes kept here, with their invariants:
//! `applied <= applying <= committed` and `persisted <= last_index()`. Committed entries are
//! handed out for applying only up to `persisted`, so a node never applies an entry it could
//! lose in a crash.

use crate::storage::{LogStorage, StorageError, limit_size};
use crate::types::{Entry, LogIndex, Snapshot, Term};

/// Entries and a snapshot not yet known to be on stable storage.
///
/// Invariant: `entries[i].index == offset + i`; with a snapshot, `offset == snapshot index + 1`.
#[derive(Clone, Debug, Default)]
pub struct Unstable {
    pub snapshot: Option<Snapshot>,
    /// Whether the snapshot was already handed out in a Ready.
    pub snapshot_in_progress: bool,
    pub entries: Vec<Entry>,
    pub offset: LogIndex,
    /// Entries up to this index were already handed out in a Ready.
    pub in_progress: LogIndex,
}

impl Unstable {
    fn maybe_first_index(&self) -> Option<LogIndex> {
        self.snapshot.as_ref().map(|s| s.meta.index.next())
    }

    fn maybe_last_index(&self) -> Option<LogIndex> {
        match self.entries.last() {
            Some(e) => Some(e.index),
            None => self.snapshot.as_ref().map(|s| s.meta.index),
        }
    }

    fn maybe_term(&self, index: LogIndex) -> Option<Term> {
        if index < self.offset {
            let snap = self.snapshot.as_ref()?;
            return (snap.meta.index == index).then_some(snap.meta.term);
        }
        let pos = (index.get() - self.offset.get()) as usize;
        self.entries.get(pos).map(|e| e.term)
    }

    /// Drops entries up to `index` once they are persisted, if the entry there still has `term`.
    fn stable_entries_to(&mut self, index: LogIndex, term: Term) -> bool {
        if index < self.offset || self.maybe_term(index) != Some(term) {
            return false;
        }
        let drop = (index.get() - self.offset.get() + 1) as usize;
        self.entries.drain(..drop);
        self.offset = index.next();
        self.in_progress = self.in_progress.max(index);
        true
    }

    fn stable_snapshot_to(&mut self, index: LogIndex) -> bool {
        if self
            .snapshot
            .as_ref()
            .is_some_and(|s| s.meta.index == index)
        {
            self.snapshot = None;
            self.snapshot_in_progress = false;
            return true;
        }
        false
    }

    fn restore(&mut self, snapshot: Snapshot) {
        self.offset = snapshot.meta.index.next();
        self.in_progress = snapshot.meta.index;
        self.entries.clear();
        self.snapshot = Some(snapshot);
        self.snapshot_in_progress = false;
    }

    fn truncate_and_append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else { return };
        let after = first.index;
        let end = self.offset.plus(self.entries.len() as u64);
        if after == end {
            self.entries.extend_from_slice(entries);
        } else if after <= self.offset {
            // The new entries replace everything unstable (and a stable suffix, which the
            // application truncates when it persists them).
            self.offset = after;
            self.entries = entries.to_vec();
        } else {
            let keep = (after.get() - self.offset.get()) as usize;
            self.entries.truncate(keep);
            self.entries.extend_from_slice(entries);
        }
        self.in_progress = self.in_progress.min(after.prev());
    }
}

/// The log of one node.
pub struct RaftLog<S: LogStorage> {
    pub storage: S,
    pub unstable: Unstable,
    /// The highest index known committed (§5.3).
    pub committed: LogIndex,
    /// The highest index known persisted locally and still part of the log.
    pub persisted: LogIndex,
    /// The highest index handed out for applying.
    pub applying: LogIndex,
    /// The highest index the application reported applied.
    pub applied: LogIndex,
    committed_bytes_max: u64,
}

/// Turns a storage error that cannot happen on a well-formed storage into a fatal stop.
pub fn fatal(err: StorageError) -> ! {
    panic!("storage failed inside the raft path, stopping the node: {err}")
}

impl<S: LogStorage> RaftLog<S> {
    pub fn new(storage: S, committed_bytes_max: u64) -> Result<Self, StorageError> {
        let first = storage.first_index()?;
        let last = storage.last_index()?;
        let base = first.prev();
        Ok(RaftLog {
            storage,
            unstable: Unstable {
                offset: last.next(),
                in_progress: last,
                ..Unstable::default()
            },
            committed: base,
            persisted: last,
            applying: base,
            applied: base,
            committed_bytes_max,
        })
    }

    pub fn first_index(&self) -> LogIndex {
        match self.unstable.maybe_first_index() {
            Some(i) => i,
            None => self.storage.first_index().unwrap_or_else(|e| fatal(e)),
        }
    }

    pub fn last_index(&self) -> LogIndex {
        match self.unstable.maybe_last_index() {
            Some(i) => i,
            None => self.storage.last_index().unwrap_or_else(|e| fatal(e)),
        }
    }

    /// The term of the entry at `index`, for `index` in `[first_index() - 1, last_index()]`.
    pub fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
        let dummy = self.first_index().prev();
        if index < dummy {
            return Err(StorageError::Compacted);
        }
        if index > self.last_index() {
            return Err(StorageError::Unavailable);
        }
        if let Some(term) = self.unstable.maybe_term(index) {
            return Ok(term);
        }
        match self.storage.term(index) {
            Ok(t) => Ok(t),
            Err(e @ (StorageError::Compacted | StorageError::Unavailable)) => Err(e),
            Err(e) => fatal(e),
        }
    }

    pub fn last_term(&self) -> Term {
        self.term(self.last_index()).unwrap_or_else(|e| fatal(e))
    }

    pub fn match_term(&self, index: LogIndex, term: Term) -> bool {
        self.term(index).is_ok_and(|t| t == term)
    }

    /// Whether a log ending at (`last_index`, `last_term`) is at least as up-to-date as this one
    /// (§5.4.1: compare the last terms, then the lengths).
    pub fn is_up_to_date(&self, last_index: LogIndex, last_term: Term) -> bool {
        let own = self.last_term();
        last_term > own || (last_term == own && last_index >= self.last_index())
    }

    /// The first entry of `entries` that is new or conflicts with the log, or `None` when every
    /// entry is already present.
    pub fn find_conflict(&self, entries: &[Entry]) -> Option<LogIndex> {
        entries
            .iter()
            .find(|e| !self.match_term(e.index, e.term))
            .map(|e| e.index)
    }

    /// The largest index at or below `index` whose term is at or below `term`, with its term.
    /// Used to skip a whole conflicting term during backtracking (§5.3, "fast backtracking").
    pub fn find_conflict_by_term(&self, index: LogIndex, term: Term) -> (LogIndex, Term) {
        let mut index = index.min(self.last_index());
        loop {
            match self.term(index) {
                Ok(t) if t > term && index.get() > 0 => index = index.prev(),
                Ok(t) => return (index, t),
                Err(_) => return (index, Term(0)),
            }
        }
    }

    /// Appends `entries` after (`prev_index`, `prev_term`) if the log matches there (§5.3).
    /// Returns the last index of the new entries, or `None` on a mismatch. Entries that would
    /// overwrite committed ones are refused: a correct leader never sends them.
    pub fn maybe_append(
        &mut self,
        prev_index: LogIndex,
        prev_term: Term,
        commit: LogIndex,
        entries: &[Entry],
    ) -> Result<Option<LogIndex>, String> {
        if !self.match_term(prev_index, prev_term) {
            return Ok(None);
        }
        let last_new = prev_index.plus(entries.len() as u64);
        if let Some(conflict) = self.find_conflict(entries) {
            if conflict <= self.committed {
                return Err(format!(
                    "entry {conflict} conflicts with the committed prefix (commit {})",
                    self.committed
                ));
            }
            let start = (conflict.get() - prev_index.get() - 1) as usize;
            self.append(&entries[start..]);
        }
        self.commit_to(commit.min(last_new));
        Ok(Some(last_new))
    }

    /// Appends entries to the unstable log, replacing any conflicting suffix. Returns the new
    /// last index.
    pub fn append(&mut self, entries: &[Entry]) -> LogIndex {
        let Some(first) = entries.first() else {
            return self.last_index();
        };
        assert!(
            first.index > self.committed,
            "appending at {} over commit {}",
            first.index,
            self.committed
        );
        assert!(
            first.index <= self.last_index().next(),
            "appending at {} leaves a gap",
            first.index
        );
        self.unstable.truncate_and_append(entries);
        self.persisted = self.persisted.min(first.index.prev());
        self.last_index()
    }

    /// Raises the commit index. Never lowers it, and never past the last index.
    pub fn commit_to(&mut self, index: LogIndex) {
        let index = index.min(self.last_index());
        if index > self.committed {
            self.committed = index;
        }
    }

    /// Commits `index` if it is past the commit index and from `term` (§5.4.2: a leader only
    /// counts replicas of entries of its own term).
    pub fn maybe_commit(&mut self, index: LogIndex, term: Term) -> bool {
        if index > self.committed && self.match_term(index, term) {
            self.commit_to(index);
            return true;
        }
        false
    }

    /// Entries in `[low, high)` up to `bytes_max` (at least one).
    pub fn slice(
        &self,
        low: LogIndex,
        high: LogIndex,
        bytes_max: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        if low < self.first_index() {
            return Err(StorageError::Compacted);
        }
        if high > self.last_index().next() || low > high {
            return Err(StorageError::Unavailable);
        }
        if low == high {
            return Ok(Vec::new());
        }
        let offset = self.unstable.offset;
        let mut out = Vec::new();
        if low < offset {
            out = match self.storage.entries(low, high.min(offset), bytes_max) {
                Ok(v) => v,
                Err(e @ (StorageError::Compacted | StorageError::Unavailable)) => return Err(e),
                Err(e) => fatal(e),
            };
            let complete = out
                .last()
                .is_some_and(|e| e.index.next() == high.min(offset));
            if !complete || high <= offset {
                return Ok(out);
            }
        }
        let from = low.max(offset);
        let start = (from.get() - offset.get()) as usize;
        let end = (high.get() - offset.get()) as usize;
        out.extend_from_slice(&self.unstable.entries[start..end]);
        Ok(limit_size(&out, bytes_max))
    }

    /// Entries from `low` to the end, up to `bytes_max`.
    pub fn entries(&self, low: LogIndex, bytes_max: u64) -> Result<Vec<Entry>, StorageError> {
        self.slice(low, self.last_index().next(), bytes_max)
    }

    /// The highest index that may be handed out for applying now.
    fn apply_limit(&self) -> LogIndex {
        self.committed.min(self.persisted)
    }

    pub fn has_next_committed_entries(&self) -> bool {
        self.unstable.snapshot.is_none() && self.applying < self.apply_limit()
    }

    /// The next committed, persisted entries to apply, bounded by `committed_bytes_max`.
    pub fn next_committed_entries(&self) -> Vec<Entry> {
        if !self.has_next_committed_entries() {
            return Vec::new();
        }
        let low = self.applying.next().max(self.first_index());
        self.slice(low, self.apply_limit().next(), self.committed_bytes_max)
            .unwrap_or_else(|e| fatal(e))
    }

    pub fn accept_applying(&mut self, index: LogIndex) {
        assert!(
            index <= self.committed,
            "applying {index} past commit {}",
            self.committed
        );
        self.applying = self.applying.max(index);
    }

    /// Records that the application applied up to `index`.
    pub fn applied_to(&mut self, index: LogIndex) {
        let index = index.min(self.applying);
        if index > self.applied {
            self.applied = index;
        }
    }

    /// Entries not yet handed out for persisting.
    pub fn next_unstable_entries(&self) -> &[Entry] {
        let start = (self
            .unstable
            .in_progress
            .next()
            .get()
            .saturating_sub(self.unstable.offset.get())) as usize;
        self.unstable.entries.get(start..).unwrap_or(&[])
    }

    pub fn has_next_unstable_snapshot(&self) -> bool {
        self.unstable.snapshot.is_some() && !self.unstable.snapshot_in_progress
    }

    /// Marks everything unstable as handed out.
    pub fn accept_unstable(&mut self) {
        if let Some(last) = self.unstable.entries.last() {
            self.unstable.in_progress = last.index;
        }
        if self.unstable.snapshot.is_some() {
            self.unstable.snapshot_in_progress = true;
        }
    }

    /// The application persisted entries up to (`index`, `term`).
    pub fn on_persisted_entries(&mut self, index: LogIndex, term: Term) {
        if self.unstable.stable_entries_to(index, term) || self.match_term(index, term) {
            self.persisted = self.persisted.max(index.min(self.last_index()));
        }
    }

    /// The application persisted the snapshot at `index` and restored its state machine from it.
    pub fn on_persisted_snapshot(&mut self, index: LogIndex) {
        if self.unstable.stable_snapshot_to(index) {
            self.persisted = self.persisted.max(index);
            self.applying = self.applying.max(index);
            self.applied = self.applied.max(index);
        }
    }

    /// Replaces the log by a snapshot (§7).
    pub fn restore(&mut self, snapshot: Snapshot) {
        let index = snapshot.meta.index;
        assert!(
            index > self.committed,
            "restoring snapshot {index} at or below commit {}",
            self.committed
        );
        self.unstable.restore(snapshot);
        self.committed = index;
        self.persisted = self.persisted.min(index.prev());
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::storage::MemStorage;
    use crate::types::{EntryPayload, SnapshotMeta};

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            term: Term(term),
            index: LogIndex(index),
            payload: EntryPayload::Normal(Bytes::new()),
        }
    }

    fn entries(from: u64, terms: &[u64]) -> Vec<Entry> {
        terms
            .iter()
            .enumerate()
            .map(|(i, t)| entry(from + i as u64, *t))
            .collect()
    }

    /// A log with `stable` terms in storage (from index 1) and `unstable` after them.
    fn log(stable: &[u64], unstable: &[u64]) -> RaftLog<MemStorage> {
        let mut storage = MemStorage::new();
        storage.append(&entries(1, stable)).unwrap();
        let mut log = RaftLog::new(storage, u64::MAX).unwrap();
        log.append(&entries(stable.len() as u64 + 1, unstable));
        log
    }

    fn terms(log: &RaftLog<MemStorage>) -> Vec<u64> {
        log.entries(log.first_index(), u64::MAX)
            .unwrap()
            .iter()
            .map(|e| e.term.get())
            .collect()
    }

    /// Goal: maybe_append implements the AppendEntries receiver rules (§5.3). Method: table of
    /// (log, prev, commit, entries) -> (result, resulting terms, commit).
    #[test]
    fn maybe_append_table() {
        type Case = (
            &'static [u64],
            (u64, u64),
            u64,
            Vec<Entry>,
            Option<u64>,
            Vec<u64>,
            u64,
        );
        let cases: Vec<Case> = vec![
            // prev does not match.
            (
                &[1, 2, 3],
                (3, 2),
                3,
                entries(4, &[4]),
                None,
                vec![1, 2, 3],
                0,
            ),
            (
                &[1, 2, 3],
                (4, 3),
                3,
                entries(5, &[4]),
                None,
                vec![1, 2, 3],
                0,
            ),
            // matches, nothing new; commit limited to the last new index.
            (&[1, 2, 3], (3, 3), 3, vec![], Some(3), vec![1, 2, 3], 3),
            (&[1, 2, 3], (2, 2), 3, vec![], Some(2), vec![1, 2, 3], 2),
            // appends new entries.
            (
                &[1, 2, 3],
                (3, 3),
                5,
                entries(4, &[4, 4]),
                Some(5),
                vec![1, 2, 3, 4, 4],
                5,
            ),
            // a conflict truncates the suffix.
            (
                &[1, 2, 3],
                (1, 1),
                1,
                entries(2, &[4]),
                Some(2),
                vec![1, 4],
                1,
            ),
            // entries already present do not truncate (an old, reordered append).
            (
                &[1, 2, 3],
                (1, 1),
                0,
                entries(2, &[2]),
                Some(2),
                vec![1, 2, 3],
                0,
            ),
        ];
        for (i, (start, (pi, pt), commit, ents, want, want_terms, want_commit)) in
            cases.into_iter().enumerate()
        {
            let mut log = log(start, &[]);
            let got = log
                .maybe_append(LogIndex(pi), Term(pt), LogIndex(commit), &ents)
                .unwrap();
            assert_eq!(got, want.map(LogIndex), "case {i}");
            assert_eq!(terms(&log), want_terms, "case {i}");
            assert_eq!(log.committed, LogIndex(want_commit), "case {i}");
        }
    }

    /// Goal: a conflict with a committed entry is refused rather than overwriting it.
    #[test]
    fn maybe_append_refuses_to_overwrite_commit() {
        let mut log = log(&[1, 2, 3], &[]);
        log.commit_to(LogIndex(3));
        let got = log.maybe_append(LogIndex(1), Term(1), LogIndex(3), &entries(2, &[5]));
        assert!(got.is_err());
        assert_eq!(terms(&log), vec![1, 2, 3]);
    }

    /// Goal: fast backtracking finds the last index with a term at or below the given term.
    #[test]
    fn find_conflict_by_term_table() {
        let log = log(&[1, 1, 3, 3, 5], &[5, 6]);
        let cases = [
            ((7, 6), (7, 6)),
            ((7, 5), (6, 5)),
            ((7, 4), (4, 3)),
            ((7, 2), (2, 1)),
            ((7, 0), (0, 0)),
            ((20, 5), (6, 5)),
            ((3, 3), (3, 3)),
        ];
        for (i, ((index, term), (wi, wt))) in cases.iter().enumerate() {
            let got = log.find_conflict_by_term(LogIndex(*index), Term(*term));
            assert_eq!(got, (LogIndex(*wi), Term(*wt)), "case {i}");
        }
    }

    /// Goal: §5.4.1's up-to-date comparison. Method: table around a log ending (3, term 2).
    #[test]
    fn is_up_to_date_table() {
        let log = log(&[1, 2, 2], &[]);
        let cases = [
            ((3, 2), true),
            ((4, 2), true),
            ((2, 2), false),
            ((1, 3), true),
            ((9, 1), false),
        ];
        for (i, ((index, term), want)) in cases.iter().enumerate() {
            assert_eq!(
                log.is_up_to_date(LogIndex(*index), Term(*term)),
                *want,
                "case {i}"
            );
        }
    }

    /// Goal: committed entries are handed out only up to the persisted index, and unstable
    /// entries become stable on acknowledgement with a matching term.
    #[test]
    fn persisted_limits_committed_entries() {
        let mut log = log(&[1], &[1, 1]);
        assert_eq!(log.persisted, LogIndex(1));
        log.commit_to(LogIndex(3));
        assert_eq!(
            log.next_committed_entries().len(),
            1,
            "only index 1 is persisted"
        );
        assert_eq!(log.next_unstable_entries().len(), 2);
        log.accept_unstable();
        assert!(log.next_unstable_entries().is_empty());
        // A stale acknowledgement with the wrong term changes nothing.
        log.on_persisted_entries(LogIndex(3), Term(9));
        assert_eq!(log.persisted, LogIndex(1));
        // The application writes the entries to storage before acknowledging them.
        let unstable = log.unstable.entries.clone();
        log.storage.append(&unstable).unwrap();
        log.on_persisted_entries(LogIndex(3), Term(1));
        assert_eq!(log.persisted, LogIndex(3));
        assert!(log.unstable.entries.is_empty());
        assert_eq!(log.next_committed_entries().len(), 3);
        log.accept_applying(LogIndex(3));
        assert!(!log.has_next_committed_entries());
    }

    /// Goal: a conflicting append lowers the persisted index and re-offers the entries.
    #[test]
    fn truncation_lowers_persisted() {
        let mut log = log(&[1, 1, 1], &[]);
        assert_eq!(log.persisted, LogIndex(3));
        log.append(&entries(2, &[2]));
        assert_eq!(log.persisted, LogIndex(1));
        assert_eq!(log.next_unstable_entries(), &entries(2, &[2])[..]);
        assert_eq!(terms(&log), vec![1, 2]);
    }

    /// Goal: restoring a snapshot resets the log and blocks applying until it is persisted.
    #[test]
    fn restore_snapshot() {
        let mut log = log(&[1, 1], &[]);
        let snap = Snapshot {
            meta: SnapshotMeta {
                index: LogIndex(10),
                term: Term(3),
                ..Default::default()
            },
            data: Bytes::new(),
        };
        log.restore(snap);
        assert_eq!(log.last_index(), LogIndex(10));
        assert_eq!(log.first_index(), LogIndex(11));
        assert_eq!(log.term(LogIndex(10)), Ok(Term(3)));
        assert_eq!(log.committed, LogIndex(10));
        assert!(!log.has_next_committed_entries());
        assert!(log.has_next_unstable_snapshot());
        log.accept_unstable();
        log.on_persisted_snapshot(LogIndex(10));
        assert_eq!(
            (log.persisted, log.applied, log.applying),
            (LogIndex(10), LogIndex(10), LogIndex(10))
        );
    }

    /// Goal: slices spanning stable and unstable parts are contiguous and size-limited.
    #[test]
    fn slice_across_stable_and_unstable() {
        let log = log(&[1, 1], &[2, 2]);
        let got: Vec<u64> = log
            .slice(LogIndex(2), LogIndex(5), u64::MAX)
            .unwrap()
            .iter()
            .map(|e| e.index.get())
            .collect();
        assert_eq!(got, vec![2, 3, 4]);
        assert_eq!(log.slice(LogIndex(1), LogIndex(5), 0).unwrap().len(), 1);
        assert_eq!(
            log.slice(LogIndex(0), LogIndex(2), u64::MAX),
            Err(StorageError::Compacted)
        );
        assert_eq!(
            log.slice(LogIndex(2), LogIndex(6), u64::MAX),
            Err(StorageError::Unavailable)
        );
    }

    /// Goal: the unstable buffer appends, truncates and replaces, and pulls `in_progress` back
    /// so that replaced entries are handed out again. Method: table of (offset, entries,
    /// in_progress, append) -> (offset, indexes, in_progress).
    #[test]
    fn unstable_truncate_and_append() {
        type Case = (
            u64,
            &'static [u64],
            u64,
            &'static [u64],
            u64,
            &'static [u64],
            u64,
        );
        let cases: &[Case] = &[
            // Append right after.
            (5, &[5, 6], 6, &[7, 8], 5, &[5, 6, 7, 8], 6),
            // Replace a suffix that was handed out: in_progress falls back.
            (5, &[5, 6, 7], 7, &[6], 5, &[5, 6], 5),
            // Replace everything, from before the offset.
            (5, &[5, 6], 6, &[4, 5], 4, &[4, 5], 3),
            // Replace everything from the offset.
            (5, &[5, 6], 4, &[5], 5, &[5], 4),
        ];
        for (i, (offset, have, in_progress, add, want_offset, want, want_in_progress)) in
            cases.iter().enumerate()
        {
            let mut u = Unstable {
                entries: have.iter().map(|i| entry(*i, 1)).collect(),
                offset: LogIndex(*offset),
                in_progress: LogIndex(*in_progress),
                ..Unstable::default()
            };
            let add: Vec<Entry> = add.iter().map(|i| entry(*i, 2)).collect();
            u.truncate_and_append(&add);
            let got: Vec<u64> = u.entries.iter().map(|e| e.index.get()).collect();
            assert_eq!(u.offset, LogIndex(*want_offset), "case {i}");
            assert_eq!(got, want.to_vec(), "case {i}");
            assert_eq!(u.in_progress, LogIndex(*want_in_progress), "case {i}");
        }
    }
}
