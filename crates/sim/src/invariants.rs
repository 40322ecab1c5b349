//! Checkers of the Raft safety properties (Figure 3 of the Raft paper), fed by the simulator as
//! events happen.
//!
//! - Election safety: at most one leader per term.
//! - Log matching: two logs holding an entry with the same index and term hold the same entry and
//!   agree on the term of the entry before it (which, by induction, makes the prefixes identical).
//! - Leader completeness: an entry applied anywhere (hence committed) is never replaced by a
//!   different one in any node's log, and a new leader's stable log holds every such entry it has
//!   room for.
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

    /// The committed term at `index`, if known.
    pub fn committed_term(&self, index: LogIndex) -> Option<Term> {
        let i = index.get().checked_sub(1)?;
        self.applied.get(i as usize).map(|&(t, _)| t)
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
            if let Some(&(t, h)) = self.applied.get(e.index.get() as usize - 1) {
                if t != e.term || h != hash {
                    self.violation(format!(
                        "leader completeness: node {node} stored entry index {} term {} over the \
                         committed entry of term {t}",
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

    /// A new leader's stable log, given as `(index, term)` pairs, must agree with every committed
    /// entry it covers.
    pub fn on_leader_log(&mut self, node: NodeId, term: Term, log: &[(LogIndex, Term)]) {
        for &(index, t) in log {
            if let Some(committed) = self.committed_term(index) {
                if committed != t {
                    self.violation(format!(
                        "leader completeness: leader {node} of term {term} has term {t} at \
                         committed index {index} (committed term {committed})"
                    ));
                    return;
                }
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
        // Goal: state machine safety and the overwrite check can fail. Method: two nodes apply
        // different entries at index 2; then a node stores a new term over a committed index.
        let mut c = RaftChecker::default();
        c.on_apply(NodeId(1), &entry(1, 1, b"a"));
        c.on_apply(NodeId(2), &entry(1, 1, b"a"));
        c.on_apply(NodeId(1), &entry(2, 1, b"b"));
        assert!(c.violations().is_empty());
        assert_eq!(c.applied_len(), 2);
        c.on_apply(NodeId(2), &entry(2, 2, b"c"));
        assert_eq!(c.violations().len(), 1);
        c.on_persist_entries(NodeId(3), Term(1), &[entry(2, 3, b"d")]);
        assert_eq!(c.violations().len(), 2);
        c.on_apply(NodeId(3), &entry(5, 3, b"e"));
        assert_eq!(c.violations().len(), 3);
    }

    #[test]
    fn snapshots_and_new_leaders_are_checked_against_committed_state() {
        // Goal: the snapshot and leader-log checks can fail. Method: differing snapshot hashes at
        // one index; a leader missing a committed entry.
        let mut c = RaftChecker::default();
        c.on_apply(NodeId(1), &entry(1, 1, b"a"));
        c.on_snapshot(NodeId(1), LogIndex(1), 7);
        c.on_snapshot(NodeId(2), LogIndex(1), 7);
        c.on_leader_log(NodeId(2), Term(2), &[(LogIndex(1), Term(1))]);
        assert!(c.violations().is_empty());
        c.on_snapshot(NodeId(3), LogIndex(1), 8);
        assert_eq!(c.violations().len(), 1);
        c.on_leader_log(NodeId(3), Term(3), &[(LogIndex(1), Term(2))]);
        assert_eq!(c.violations().len(), 2);
    }
}
