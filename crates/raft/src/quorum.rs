//! Quorum arithmetic for majority and joint configurations (§4.3 of the Raft thesis).
//!
//! Pure functions over sets of voters: which index a quorum has acknowledged, and how an election
//! stands. The same "largest value a quorum has reached" computation serves commit indexes,
//! read-confirmation rounds and lease start ticks, so it works on plain `u64`.
//!
//! Nothing here knows about progress, terms or messages.

use std::collections::BTreeSet;

use crate::types::NodeId;

/// The outcome of an election so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteResult {
    /// Neither a quorum of grants nor a quorum of rejections yet.
    Pending,
    /// A quorum rejected.
    Lost,
    /// A quorum granted.
    Won,
}

/// A simple majority configuration: a set of voters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MajorityConfig {
    pub voters: BTreeSet<NodeId>,
}

impl MajorityConfig {
    pub fn new(voters: BTreeSet<NodeId>) -> Self {
        MajorityConfig { voters }
    }

    /// The number of voters that form a quorum.
    pub fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    /// The largest value that a quorum of voters has reached, where `acked` reports each voter's
    /// value (`None` counts as zero). An empty configuration returns `u64::MAX`, so that it never
    /// limits a joint configuration.
    pub fn committed_index(&self, acked: impl Fn(NodeId) -> Option<u64>) -> u64 {
        if self.voters.is_empty() {
            return u64::MAX;
        }
        let mut values: Vec<u64> = self
            .voters
            .iter()
            .map(|id| acked(*id).unwrap_or(0))
            .collect();
        // Sorted descending, the quorum-th value is reached by at least a quorum.
        values.sort_unstable_by(|a, b| b.cmp(a));
        let pos = self.quorum() - 1;
        assert!(pos < values.len());
        values[pos]
    }

    /// How an election stands given each voter's answer (`None`: no answer yet). An empty
    /// configuration wins, by convention, so that it never blocks a joint configuration.
    pub fn vote_result(&self, votes: impl Fn(NodeId) -> Option<bool>) -> VoteResult {
        if self.voters.is_empty() {
            return VoteResult::Won;
        }
        let (mut granted, mut missing) = (0usize, 0usize);
        for id in &self.voters {
            match votes(*id) {
                Some(true) => granted += 1,
                Some(false) => {}
                None => missing += 1,
            }
        }
        let q = self.quorum();
        if granted >= q {
            VoteResult::Won
        } else if granted + missing >= q {
            VoteResult::Pending
        } else {
            VoteResult::Lost
        }
    }
}

/// A joint configuration: decisions need a quorum of the incoming and of the outgoing voters.
/// Outside of joint consensus the outgoing set is empty and the incoming set alone decides.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JointConfig {
    pub incoming: MajorityConfig,
    pub outgoing: MajorityConfig,
}

impl JointConfig {
    pub fn new(incoming: BTreeSet<NodeId>, outgoing: BTreeSet<NodeId>) -> Self {
        JointConfig {
            incoming: MajorityConfig::new(incoming),
            outgoing: MajorityConfig::new(outgoing),
        }
    }

    /// Whether this is a joint configuration.
    pub fn is_joint(&self) -> bool {
        !self.outgoing.voters.is_empty()
    }

    /// Every voter of either half.
    pub fn ids(&self) -> BTreeSet<NodeId> {
        self.incoming
            .voters
            .union(&self.outgoing.voters)
            .copied()
            .collect()
    }

    /// Whether `id` votes in either half.
    pub fn contains(&self, id: NodeId) -> bool {
        self.incoming.voters.contains(&id) || self.outgoing.voters.contains(&id)
    }

    /// The largest value both halves have reached with a quorum (§4.3: agreement needs separate
    /// majorities of both configurations).
    pub fn committed_index(&self, acked: impl Fn(NodeId) -> Option<u64>) -> u64 {
        let a = self.incoming.committed_index(&acked);
        let b = self.outgoing.committed_index(&acked);
        a.min(b)
    }

    /// Won when both halves won, lost when either lost.
    pub fn vote_result(&self, votes: impl Fn(NodeId) -> Option<bool>) -> VoteResult {
        let a = self.incoming.vote_result(&votes);
        let b = self.outgoing.vote_result(&votes);
        match (a, b) {
            (VoteResult::Won, VoteResult::Won) => VoteResult::Won,
            (VoteResult::Lost, _) | (_, VoteResult::Lost) => VoteResult::Lost,
            _ => VoteResult::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn set(ids: &[u64]) -> BTreeSet<NodeId> {
        ids.iter().map(|i| NodeId(*i)).collect()
    }

    fn map(pairs: &[(u64, u64)]) -> BTreeMap<NodeId, u64> {
        pairs.iter().map(|(k, v)| (NodeId(*k), *v)).collect()
    }

    /// Goal: the committed index is the largest index a majority holds. Method: a table of
    /// voter sets and acknowledged indexes with the expected result, including missing voters
    /// and the empty configuration.
    #[test]
    fn majority_committed_index() {
        type Case = (&'static [u64], &'static [(u64, u64)], u64);
        let cases: &[Case] = &[
            (&[], &[], u64::MAX),
            (&[1], &[(1, 5)], 5),
            (&[1], &[], 0),
            (&[1, 2], &[(1, 5), (2, 3)], 3),
            (&[1, 2, 3], &[(1, 5), (2, 3)], 3),
            (&[1, 2, 3], &[(1, 5)], 0),
            (&[1, 2, 3], &[(1, 5), (2, 5), (3, 1)], 5),
            (&[1, 2, 3, 4], &[(1, 9), (2, 8), (3, 7), (4, 1)], 7),
            (
                &[1, 2, 3, 4, 5],
                &[(1, 9), (2, 8), (3, 7), (4, 1), (5, 2)],
                7,
            ),
            // Acknowledgements from non-voters do not count.
            (&[1, 2, 3], &[(1, 9), (7, 9), (8, 9)], 0),
        ];
        for (i, (voters, acked, want)) in cases.iter().enumerate() {
            let config = MajorityConfig::new(set(voters));
            let acked = map(acked);
            let got = config.committed_index(|id| acked.get(&id).copied());
            assert_eq!(got, *want, "case {i}");
        }
    }

    /// Goal: joint commit needs both halves. Method: table of (incoming, outgoing, acks).
    #[test]
    fn joint_committed_index() {
        type Case = (&'static [u64], &'static [u64], &'static [(u64, u64)], u64);
        let cases: &[Case] = &[
            (&[1, 2, 3], &[], &[(1, 5), (2, 5)], 5),
            (&[1, 2, 3], &[1, 2, 3], &[(1, 5), (2, 5)], 5),
            (&[1, 2, 3], &[4, 5, 6], &[(1, 5), (2, 5), (3, 5)], 0),
            (&[1, 2, 3], &[3, 4, 5], &[(1, 7), (2, 7), (4, 3), (3, 4)], 3),
            (&[1, 2, 3], &[3, 4, 5], &[(1, 7), (2, 7), (4, 9), (5, 9)], 7),
        ];
        for (i, (inc, out, acked, want)) in cases.iter().enumerate() {
            let config = JointConfig::new(set(inc), set(out));
            let acked = map(acked);
            assert_eq!(
                config.committed_index(|id| acked.get(&id).copied()),
                *want,
                "case {i}"
            );
        }
    }

    /// Goal: vote results for majorities, including early loss. Method: table.
    #[test]
    fn majority_vote_result() {
        use VoteResult::*;
        type Case = (&'static [u64], &'static [(u64, bool)], VoteResult);
        let cases: &[Case] = &[
            (&[], &[], Won),
            (&[1], &[], Pending),
            (&[1], &[(1, true)], Won),
            (&[1], &[(1, false)], Lost),
            (&[1, 2, 3], &[(1, true)], Pending),
            (&[1, 2, 3], &[(1, true), (2, true)], Won),
            (&[1, 2, 3], &[(1, true), (2, false)], Pending),
            (&[1, 2, 3], &[(1, true), (2, false), (3, false)], Lost),
            (&[1, 2, 3, 4], &[(1, true), (2, true), (3, false)], Pending),
            (&[1, 2, 3, 4], &[(1, true), (2, false), (3, false)], Lost),
            (&[1, 2, 3, 4], &[(1, true), (2, true), (3, true)], Won),
            (&[1, 2, 3], &[(4, true), (5, true)], Pending),
        ];
        for (i, (voters, votes, want)) in cases.iter().enumerate() {
            let config = MajorityConfig::new(set(voters));
            let votes: BTreeMap<NodeId, bool> =
                votes.iter().map(|(k, v)| (NodeId(*k), *v)).collect();
            assert_eq!(
                config.vote_result(|id| votes.get(&id).copied()),
                *want,
                "case {i}"
            );
        }
    }

    /// Goal: a joint election is won only with both halves and lost if either half loses.
    /// Method: table.
    #[test]
    fn joint_vote_result() {
        use VoteResult::*;
        type Case = (
            &'static [u64],
            &'static [u64],
            &'static [(u64, bool)],
            VoteResult,
        );
        let cases: &[Case] = &[
            (&[1, 2, 3], &[], &[(1, true), (2, true)], Won),
            (&[1, 2, 3], &[4, 5, 6], &[(1, true), (2, true)], Pending),
            (
                &[1, 2, 3],
                &[4, 5, 6],
                &[(1, true), (2, true), (4, true), (5, true)],
                Won,
            ),
            (
                &[1, 2, 3],
                &[4, 5, 6],
                &[(1, true), (2, true), (4, false), (5, false)],
                Lost,
            ),
            (
                &[1, 2, 3],
                &[3, 4, 5],
                &[(3, true), (1, true), (2, false), (4, false), (5, false)],
                Lost,
            ),
        ];
        for (i, (inc, out, votes, want)) in cases.iter().enumerate() {
            let config = JointConfig::new(set(inc), set(out));
            let votes: BTreeMap<NodeId, bool> =
                votes.iter().map(|(k, v)| (NodeId(*k), *v)).collect();
            assert_eq!(
                config.vote_result(|id| votes.get(&id).copied()),
                *want,
                "case {i}"
            );
        }
    }

    proptest::proptest! {
        /// Goal: the sorting implementation of `committed_index` agrees with the definition: the
        /// largest value that at least a quorum of voters has reached. Method: property test
        /// against a naive reference model over random voter sets and acknowledgements.
        #[test]
        fn committed_index_matches_definition(acks in proptest::collection::btree_map(1u64..8, 0u64..20, 1..8)) {
            let voters: BTreeSet<NodeId> = acks.keys().map(|k| NodeId(*k)).collect();
            let config = MajorityConfig::new(voters.clone());
            let got = config.committed_index(|id| acks.get(&id.get()).copied());
            let quorum = voters.len() / 2 + 1;
            let naive = (0..20u64)
                .filter(|v| acks.values().filter(|a| *a >= v).count() >= quorum)
                .max()
                .unwrap_or(0);
            proptest::prop_assert_eq!(got, naive);
        }

        /// Goal: a vote is won exactly when a quorum granted, lost exactly when a quorum can no
        /// longer be reached. Method: property test against the counting definition.
        #[test]
        fn vote_result_matches_definition(votes in proptest::collection::btree_map(1u64..8, proptest::option::of(proptest::bool::ANY), 1..8)) {
            let voters: BTreeSet<NodeId> = votes.keys().map(|k| NodeId(*k)).collect();
            let config = MajorityConfig::new(voters.clone());
            let got = config.vote_result(|id| votes.get(&id.get()).copied().flatten());
            let quorum = voters.len() / 2 + 1;
            let granted = votes.values().filter(|v| **v == Some(true)).count();
            let possible = votes.values().filter(|v| **v != Some(false)).count();
            let want = if granted >= quorum {
                VoteResult::Won
            } else if possible >= quorum {
                VoteResult::Pending
            } else {
                VoteResult::Lost
            };
            proptest::prop_assert_eq!(got, want);
        }
    }
}
