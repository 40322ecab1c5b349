//! Checkers of the Raft safety properties (Figure 3 of the Raft paper), fed by the simulator as
//! events happen.
//!
//! - Election safety: at most one leader per term.
//! - Log matching: two logs holding an entry with the same index and term hold the same entry and
//!   agree on the term of the entry before it (which, by induction, makes the prefixes identical).
//! - Leader completeness: an entry committed by the leader of term T is held by every leader of
//!   a term after T. Checked two ways: a new leader's log must hold every entry committed in an
//!   earlier term, and no node may store, at a committed index, an entry created in a term after
//!   the commit (only a leader of that term could have created it, and that leader would have held
//!   the committed entry there instead). A lagging follower holding a stale entry of an *older*
//!   term at a committed index is normal (Figure 7 of the Raft paper) and not reported.
//! - State machine safety: every node applies the same entry at each index, and snapshots taken at
//!   the same index hold the same state.
//!
//! The checkers remember fingerprints (FNV-1a of the payload), not entries.

use std::collections::BTreeMap;

use chorus_raft::{Entry, EntryPayload, LogIndex, NodeId, Term};

use crate::trace::fnv1a;

/// The fingerprint of an entry's payload.
pub fn payload_hash(entry: &Entry) -> u64 {
    match &entry.payload {
        EntryPayload::Normal(data) => fnv1a(data) ^ 1,
        EntryPayload::ConfChange(cc) => fnv1a(format!("{cc:?}").as_bytes()) ^ 2,
    }
}

/// Running state of the Raft invariant checkers for one run.
#[derive(Debug, Default)]
pub struct RaftChecker {
    leaders: BTreeMap<Term, NodeId>,
    /// (index, term) -> (payload hash, term of the previous entry).
    entries: BTreeMap<(LogIndex, Term), (u64, Term)>,
    /// The applied sequence, shared by all nodes: position i holds index i + 1.
    applied: Vec<(Term, u64)>,
    /// For each committed index (position i holds index i + 1), the term of the leader that
    /// first committed it (non-decreasing) and the term of the entry it committed there, when
    /// that leader's log could still tell.
    commit_terms: Vec<(Term, Option<Term>)>,
    snapshots: BTreeMap<LogIndex, u64>,
    violations: Vec<String>,
}

impl RaftChecker {
    /// The violations found so far.
    pub fn violations(&self) -> &[String] {
        &self.violations
    }

    fn violation(&mut self, text: String) {
        // Keep the first few: later ones are usually consequences of the first.
        if self.violations.len() < 8 {
            self.violations.push(text);
        }
    }

    /// How many entries are known to be committed (applied somewhere).
    pub fn applied_len(&self) -> u64 {
        self.applied.len() as u64
    }

    /// The term of the committed entry at `index`, if known.
    pub fn committed_term(&self, index: LogIndex) -> Option<Term> {
        let i = index.get().checked_sub(1)? as usize;
        let from_commit = self.commit_terms.get(i).and_then(|&(_, t)| t);
        from_commit.or_else(|| self.applied.get(i).map(|&(t, _)| t))
    }

    /// A leader of `term` advanced its commit index to `commit`; `entry_term` tells the term of
    /// the entry at an index of its log (`None` if compacted). Every leader that advances its
    /// commit over an index must agree on the entry there.
    pub fn on_leader_commit(
        &mut self,
        node: NodeId,
        term: Term,
        commit: LogIndex,
        entry_term: impl Fn(LogIndex) -> Option<Term>,
    ) {
        let first_new = self.commit_terms.len() as u64 + 1;
        // Indices already committed must hold the same entry. Checking the last few is enough
        // to catch a disagreement where it starts, and keeps this cheap.
        let recheck_from = first_new.saturating_sub(4).max(1);
        for i in recheck_from..first_new.min(commit.get() + 1) {
            let (ct, known) = self.commit_terms[i as usize - 1];
            if let (Some(known), Some(mine)) = (known, entry_term(LogIndex(i)))
                && known != mine
            {
                self.violation(format!(
                    "state machine safety: leader {node} of term {term} commits index {i} \
                         holding an entry of term {mine}, but the entry of term {known} was \
                         committed there in term {ct}"
                ));
            }
        }
        // §5.4.2: a leader commits by counting replicas only an entry of its own term; older
        // entries are committed indirectly, by the entry of its term after them. So whenever a
        // leader moves the commit index past every earlier commit, the entry it lands on is of
        // the leader's term.
        if commit.get() >= first_new
            && let Some(landed) = entry_term(commit)
            && landed != term
        {
            self.violation(format!(
                "commit rule: leader {node} of term {term} committed up to index {commit}, \
                         an entry of the older term {landed} (§5.4.2)"
            ));
        }
        while (self.commit_terms.len() as u64) < commit.get() {
            let index = LogIndex(self.commit_terms.len() as u64 + 1);
            self.commit_terms.push((term, entry_term(index)));
        }
    }

    /// How many leading indices were committed in a term before `term`.
    pub fn committed_before(&self, term: Term) -> u64 {
        self.commit_terms.partition_point(|&(t, _)| t < term) as u64
    }

    /// A node became leader of `term`.
    pub fn on_leader(&mut self, node: NodeId, term: Term) {
        match self.leaders.get(&term) {
            Some(&other) if other != node => self.violation(format!(
                "election safety: nodes {other} and {node} are both leader of term {term}"
            )),
            Some(_) => {}
            None => {
                self.leaders.insert(term, node);
            }
        }
    }

    /// A node made `entries` stable; `prev_term` is the term of the entry before the first.
    pub fn on_persist_entries(&mut self, node: NodeId, prev_term: Term, entries: &[Entry]) {
        let mut prev = prev_term;
        for e in entries {
            let hash = payload_hash(e);
            match self.entries.get(&(e.index, e.term)) {
                Some(&(h, p)) if h != hash || p != prev => self.violation(format!(
                    "log matching: node {node} holds a different entry at index {} term {} \
                     (payload {hash:x} after term {prev}, elsewhere {h:x} after term {p})",
                    e.index, e.term
                )),
                Some(_) => {}
                None => {
                    self.entries.insert((e.index, e.term), (hash, prev));
                }
            }
            let position = e.index.get() as usize - 1;
            if let Some(&(ct, _)) = self.commit_terms.get(position) {
                let committed = self.committed_term(e.index);
                let applied = self.applied.get(position).copied();
                let differs = match (applied, committed) {
                    (Some((t, h)), _) => t != e.term || h != hash,
                    (None, Some(t)) => t != e.term,
                    (None, None) => false,
                };
                if e.term > ct && differs {
                    self.violation(format!(
                        "leader completeness: node {node} stored entry index {} term {} but \
                         another entry was committed there in term {ct}",
                        e.index, e.term
                    ));
                }
            }
            prev = e.term;
        }
    }

    /// A node applied `entry`.
    pub fn on_apply(&mut self, node: NodeId, entry: &Entry) {
        let position = entry.index.get() as usize - 1;
        let fingerprint = (entry.term, payload_hash(entry));
        if position < self.applied.len() {
            if self.applied[position] != fingerprint {
                let (t, _) = self.applied[position];
                self.violation(format!(
                    "state machine safety: node {node} applied index {} term {} where another \
                     node applied term {t}",
                    entry.index, entry.term
                ));
            }
        } else if position == self.applied.len() {
            self.applied.push(fingerprint);
        } else {
            self.violation(format!(
                "state machine safety: node {node} applied index {} before anyone applied {}",
                entry.index,
                self.applied.len() + 1
            ));
        }
    }

    /// A node took or installed a snapshot of its state machine at `index`.
    pub fn on_snapshot(&mut self, node: NodeId, index: LogIndex, data_hash: u64) {
        match self.snapshots.get(&index) {
            Some(&h) if h != data_hash => self.violation(format!(
                "state machine safety: node {node} has a different state at index {index}"
            )),
            Some(_) => {}
            None => {
                self.snapshots.insert(index, data_hash);
            }
        }
    }

    /// A new leader's log, given as its last index and `(index, term)` pairs, must hold every
    /// entry committed in an earlier term.
    pub fn on_leader_log(
        &mut self,
        node: NodeId,
        term: Term,
        last_index: LogIndex,
        log: &[(LogIndex, Term)],
    ) {
        let need = self.committed_before(term);
        if last_index.get() < need {
            self.violation(format!(
                "leader completeness: leader {node} of term {term} has log up to {last_index} but \
                 {need} entries were committed before its term"
            ));
            return;
        }
        for &(index, t) in log {
            if index.get() > need {
                break;
            }
            if let Some(committed) = self.committed_term(index)
                && committed != t
            {
                self.violation(format!(
                    "leader completeness: leader {node} of term {term} has term {t} at \
                         committed index {index} (committed term {committed})"
                ));
                return;
            }
        }
    }

    /// Records a violation found by the harness (an unexpected error, a regression).
    pub fn report(&mut self, text: String) {
        self.violation(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn entry(index: u64, term: u64, data: &'static [u8]) -> Entry {
        Entry {
            index: LogIndex(index),
            term: Term(term),
            payload: EntryPayload::Normal(Bytes::from_static(data)),
        }
    }

    #[test]
    fn two_leaders_in_one_term_are_caught() {
        // Goal: election safety can fail. Method: two nodes claim one term; one node twice is fine.
        let mut c = RaftChecker::default();
        c.on_leader(NodeId(1), Term(2));
        c.on_leader(NodeId(1), Term(2));
        c.on_leader(NodeId(2), Term(3));
        assert!(c.violations().is_empty());
        c.on_leader(NodeId(3), Term(3));
        assert_eq!(c.violations().len(), 1);
    }

    #[test]
    fn log_matching_compares_payload_and_predecessor() {
        // Goal: same (index, term) with different content or history is caught. Method: three
        // nodes; node 2 agrees, node 3 differs in payload, node 4 in predecessor term.
        let mut c = RaftChecker::default();
        c.on_persist_entries(NodeId(1), Term(0), &[entry(1, 1, b"a"), entry(2, 1, b"b")]);
        c.on_persist_entries(NodeId(2), Term(1), &[entry(2, 1, b"b")]);
        assert!(c.violations().is_empty());
        c.on_persist_entries(NodeId(3), Term(1), &[entry(2, 1, b"x")]);
        assert_eq!(c.violations().len(), 1);
        c.on_persist_entries(NodeId(4), Term(2), &[entry(2, 1, b"b")]);
        assert_eq!(c.violations().len(), 2);
    }

    #[test]
    fn applied_sequences_must_agree_and_committed_entries_stay() {
        // Goal: state machine safety and the overwrite check can fail, and a lagging follower's
        // stale entry is not mistaken for a violation. Method: two nodes apply different entries
        // at index 2; a node stores an older-term entry at a committed index (fine), then one of
        // a term after the commit (a violation); then a gap in the applied sequence.
        let mut c = RaftChecker::default();
        c.on_leader_commit(NodeId(1), Term(2), LogIndex(2), |_| None);
        c.on_apply(NodeId(1), &entry(1, 1, b"a"));
        c.on_apply(NodeId(2), &entry(1, 1, b"a"));
        c.on_apply(NodeId(1), &entry(2, 2, b"b"));
        assert!(c.violations().is_empty());
        assert_eq!(c.applied_len(), 2);
        c.on_apply(NodeId(2), &entry(2, 1, b"c"));
        assert_eq!(c.violations().len(), 1);
        c.on_persist_entries(NodeId(3), Term(1), &[entry(2, 1, b"old")]);
        assert_eq!(c.violations().len(), 1, "a stale follower entry is legal");
        c.on_persist_entries(NodeId(3), Term(1), &[entry(2, 3, b"d")]);
        assert_eq!(c.violations().len(), 2);
        c.on_apply(NodeId(3), &entry(5, 3, b"e"));
        assert_eq!(c.violations().len(), 3);
    }

    #[test]
    fn snapshots_and_new_leaders_are_checked_against_committed_state() {
        // Goal: the snapshot and leader-log checks can fail. Method: differing snapshot hashes at
        // one index; a later leader with a different entry, then one with a short log. A leader
        // of the commit's own term is not held to it (it may be the one that commits it later).
        let mut c = RaftChecker::default();
        c.on_leader_commit(NodeId(1), Term(1), LogIndex(1), |_| Some(Term(1)));
        c.on_apply(NodeId(1), &entry(1, 1, b"a"));
        c.on_snapshot(NodeId(1), LogIndex(1), 7);
        c.on_snapshot(NodeId(2), LogIndex(1), 7);
        c.on_leader_log(NodeId(2), Term(2), LogIndex(1), &[(LogIndex(1), Term(1))]);
        c.on_leader_log(NodeId(3), Term(1), LogIndex(0), &[]);
        assert!(c.violations().is_empty());
        c.on_snapshot(NodeId(3), LogIndex(1), 8);
        assert_eq!(c.violations().len(), 1);
        c.on_leader_log(NodeId(3), Term(3), LogIndex(1), &[(LogIndex(1), Term(2))]);
        assert_eq!(c.violations().len(), 2);
        c.on_leader_log(NodeId(4), Term(4), LogIndex(0), &[]);
        assert_eq!(c.violations().len(), 3);
    }

    #[test]
    fn two_leaders_committing_different_entries_at_one_index_are_caught() {
        // Goal: a commit of a lost entry is caught before anyone applies it. Method: leader 1
        // commits index 1 holding term 1; leader 2 later commits index 1 holding term 2.
        let mut c = RaftChecker::default();
        c.on_leader_commit(NodeId(1), Term(1), LogIndex(1), |_| Some(Term(1)));
        c.on_leader_commit(NodeId(1), Term(1), LogIndex(1), |_| Some(Term(1)));
        assert!(c.violations().is_empty());
        assert_eq!(c.committed_term(LogIndex(1)), Some(Term(1)));
        c.on_leader_commit(NodeId(2), Term(2), LogIndex(2), |_| Some(Term(2)));
        assert_eq!(c.violations().len(), 1);
        // And a leader of a later term whose log lacks it is caught at its election.
        c.on_leader_log(NodeId(3), Term(5), LogIndex(2), &[(LogIndex(1), Term(2))]);
        assert_eq!(c.violations().len(), 2);
    }

    #[test]
    fn a_leader_committing_an_older_term_entry_by_counting_is_caught() {
        // Goal: the §5.4.2 rule is checked directly. Method: a leader of term 3 lands its commit
        // index on an entry of term 2 (a violation); landing on its own term is fine, and so is
        // a commit that covers older entries on the way to its own.
        let mut c = RaftChecker::default();
        c.on_leader_commit(NodeId(1), Term(3), LogIndex(2), |i| Some(Term(i.get() + 1)));
        assert!(c.violations().is_empty());
        let older = |i: LogIndex| {
            Some(if i.get() == 3 {
                Term(2)
            } else {
                Term(i.get() + 1)
            })
        };
        c.on_leader_commit(NodeId(1), Term(4), LogIndex(3), older);
        assert_eq!(c.violations().len(), 1);
        assert!(c.violations()[0].starts_with("commit rule"));
    }
}
