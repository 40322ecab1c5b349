//! Progress tracking: the configuration in force (voters, learners, joint state), the leader's
//! view of every member's log, and the votes of a running election.

pub mod inflights;
pub mod progress;

use std::collections::{BTreeMap, BTreeSet};

pub use inflights::Inflights;
pub use progress::{Progress, ProgressState};

use crate::quorum::{JointConfig, VoteResult};
use crate::types::{ConfState, LogIndex, NodeId};

/// A cluster configuration as the tracker holds it.
///
/// Invariants: voters and learners are disjoint; `learners_next` is a subset of the outgoing
/// voters; outside joint consensus `learners_next` is empty and `auto_leave` is false.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrackerConfig {
    pub voters: JointConfig,
    pub learners: BTreeSet<NodeId>,
    pub learners_next: BTreeSet<NodeId>,
    pub auto_leave: bool,
}

impl TrackerConfig {
    pub fn from_conf_state(cs: &ConfState) -> Self {
        TrackerConfig {
            voters: JointConfig::new(cs.voters.clone(), cs.voters_outgoing.clone()),
            learners: cs.learners.clone(),
            learners_next: cs.learners_next.clone(),
            auto_leave: cs.auto_leave,
        }
    }

    pub fn to_conf_state(&self) -> ConfState {
        ConfState {
            voters: self.voters.incoming.voters.clone(),
            learners: self.learners.clone(),
            voters_outgoing: self.voters.outgoing.voters.clone(),
            learners_next: self.learners_next.clone(),
            auto_leave: self.auto_leave,
        }
    }

    /// Every member: voters of both halves, learners and next learners.
    pub fn members(&self) -> BTreeSet<NodeId> {
        let mut ids = self.voters.ids();
        ids.extend(self.learners.iter().copied());
        ids.extend(self.learners_next.iter().copied());
        ids
    }

    /// Checks the invariants; returns a description of the first one broken.
    pub fn check(&self) -> Result<(), String> {
        let voters = self.voters.ids();
        if let Some(id) = self.learners.iter().find(|id| voters.contains(id)) {
            return Err(format!("{id} is both a voter and a learner"));
        }
        if let Some(id) = self
            .learners_next
            .iter()
            .find(|id| !self.voters.outgoing.voters.contains(id))
        {
            return Err(format!(
                "{id} is in learners_next but not an outgoing voter"
            ));
        }
        if !self.voters.is_joint() && !self.learners_next.is_empty() {
            return Err("learners_next is not empty outside a joint configuration".into());
        }
        if !self.voters.is_joint() && self.auto_leave {
            return Err("auto_leave is set outside a joint configuration".into());
        }
        Ok(())
    }
}

/// The configuration, the members' progress and the votes of the current election.
///
/// Invariant: there is a progress entry for exactly the members of the configuration.
#[derive(Clone, Debug)]
pub struct ProgressTracker {
    pub config: TrackerConfig,
    pub progress: BTreeMap<NodeId, Progress>,
    votes: BTreeMap<NodeId, bool>,
    inflight_msgs_max: usize,
}

impl ProgressTracker {
    pub fn new(inflight_msgs_max: usize) -> Self {
        ProgressTracker {
            config: TrackerConfig::default(),
            progress: BTreeMap::new(),
            votes: BTreeMap::new(),
            inflight_msgs_max,
        }
    }

    pub fn inflight_msgs_max(&self) -> usize {
        self.inflight_msgs_max
    }

    /// Installs a configuration and progress map computed by `confchange`.
    pub fn apply(&mut self, config: TrackerConfig, progress: BTreeMap<NodeId, Progress>) {
        debug_assert_eq!(config.check(), Ok(()));
        debug_assert_eq!(
            config.members(),
            progress.keys().copied().collect::<BTreeSet<_>>()
        );
        self.config = config;
        self.progress = progress;
    }

    /// The largest index a quorum of voters has replicated.
    pub fn committed(&self) -> LogIndex {
        let index = self
            .config
            .voters
            .committed_index(|id| self.progress.get(&id).map(|p| p.matched.get()));
        LogIndex(index)
    }

    /// The highest heartbeat round a quorum has acknowledged. `own_round` counts for the leader.
    pub fn quorum_acked_round(&self, leader: NodeId, own_round: u64) -> u64 {
        self.config.voters.committed_index(|id| {
            if id == leader {
                Some(own_round)
            } else {
                self.progress.get(&id).map(|p| p.acked_round)
            }
        })
    }

    /// The latest tick such that a quorum acknowledged a round sent at or after it.
    pub fn quorum_acked_tick(&self, leader: NodeId, now: u64) -> u64 {
        self.config.voters.committed_index(|id| {
            if id == leader {
                Some(now)
            } else {
                self.progress.get(&id).map(|p| p.acked_round_tick)
            }
        })
    }

    pub fn is_singleton(&self, id: NodeId) -> bool {
        !self.config.voters.is_joint()
            && self.config.voters.incoming.voters.len() == 1
            && self.config.voters.incoming.voters.contains(&id)
    }

    pub fn reset_votes(&mut self) {
        self.votes.clear();
    }

    /// Records a vote; the first answer of each voter counts.
    pub fn record_vote(&mut self, id: NodeId, granted: bool) {
        self.votes.entry(id).or_insert(granted);
    }

    pub fn vote_result(&self) -> VoteResult {
        self.config
            .voters
            .vote_result(|id| self.votes.get(&id).copied())
    }

    /// (granted, rejected) counts, for logs.
    pub fn vote_counts(&self) -> (usize, usize) {
        let granted = self.votes.values().filter(|v| **v).count();
        (granted, self.votes.len() - granted)
    }

    /// Whether a quorum was active since the last call, counting `leader` as active; then
    /// clears every other member's activity flag.
    pub fn quorum_active(&mut self, leader: NodeId) -> bool {
        let result = self.config.voters.vote_result(|id| {
            if id == leader {
                Some(true)
            } else {
                self.progress.get(&id).map(|p| p.recent_active)
            }
        });
        for (id, pr) in self.progress.iter_mut() {
            if *id != leader {
                pr.recent_active = false;
            }
        }
        result == VoteResult::Won
    }

    pub fn is_voter(&self, id: NodeId) -> bool {
        self.config.voters.contains(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::confchange;

    fn tracker(voters: &[u64], outgoing: &[u64], learners: &[u64]) -> ProgressTracker {
        let ids = |l: &[u64]| l.iter().map(|i| NodeId(*i)).collect::<BTreeSet<_>>();
        let cs = ConfState {
            voters: ids(voters),
            voters_outgoing: ids(outgoing),
            learners: ids(learners),
            ..ConfState::default()
        };
        let mut t = ProgressTracker::new(4);
        let (config, progress) =
            confchange::restore(&t, TrackerConfig::from_conf_state(&cs), LogIndex(1)).unwrap();
        t.apply(config, progress);
        t
    }

    fn set_match(t: &mut ProgressTracker, pairs: &[(u64, u64)]) {
        for (id, m) in pairs {
            t.progress
                .get_mut(&NodeId(*id))
                .unwrap()
                .maybe_update(LogIndex(*m));
        }
    }

    /// Goal: the tracker's commit index follows the voters' matches, ignores learners, and in a
    /// joint configuration needs both halves. Method: table.
    #[test]
    fn committed_table() {
        type Case = (
            &'static [u64],
            &'static [u64],
            &'static [u64],
            &'static [(u64, u64)],
            u64,
        );
        let cases: &[Case] = &[
            (&[1, 2, 3], &[], &[], &[(1, 5), (2, 4), (3, 1)], 4),
            (&[1, 2, 3], &[], &[4, 5], &[(1, 5), (4, 9), (5, 9)], 0),
            (&[1, 2, 3], &[1, 4, 5], &[], &[(1, 9), (2, 9), (3, 9)], 0),
            (&[1, 2, 3], &[1, 4, 5], &[], &[(1, 9), (2, 9), (4, 7)], 7),
        ];
        for (i, (voters, outgoing, learners, matches, want)) in cases.iter().enumerate() {
            let mut t = tracker(voters, outgoing, learners);
            set_match(&mut t, matches);
            assert_eq!(t.committed(), LogIndex(*want), "case {i}");
        }
    }

    /// Goal: check-quorum counts the leader plus recently active voters, and clears the flags.
    #[test]
    fn quorum_active_clears_flags() {
        let mut t = tracker(&[1, 2, 3, 4, 5], &[], &[6]);
        for pr in t.progress.values_mut() {
            pr.recent_active = false;
        }
        t.progress.get_mut(&NodeId(6)).unwrap().recent_active = true;
        t.progress.get_mut(&NodeId(2)).unwrap().recent_active = true;
        assert!(
            !t.quorum_active(NodeId(1)),
            "leader + 2 of 5, the learner does not count"
        );
        for id in [2, 3] {
            t.progress.get_mut(&NodeId(id)).unwrap().recent_active = true;
        }
        assert!(t.quorum_active(NodeId(1)), "leader + 2 + 3");
        assert!(
            t.progress
                .iter()
                .filter(|(id, _)| **id != NodeId(1))
                .all(|(_, p)| !p.recent_active)
        );
    }

    /// Goal: the lease start is the newest round start a quorum acknowledged, counting the
    /// leader at `now`; members that never acknowledged count as zero ("never").
    #[test]
    fn quorum_acked_tick() {
        let mut t = tracker(&[1, 2, 3], &[], &[]);
        assert_eq!(t.quorum_acked_tick(NodeId(1), 50), 0);
        t.progress.get_mut(&NodeId(2)).unwrap().acked_round_tick = 40;
        assert_eq!(t.quorum_acked_tick(NodeId(1), 50), 40);
        t.progress.get_mut(&NodeId(3)).unwrap().acked_round_tick = 45;
        assert_eq!(t.quorum_acked_tick(NodeId(1), 50), 45);
        t.progress.get_mut(&NodeId(2)).unwrap().acked_round = 7;
        assert_eq!(t.quorum_acked_round(NodeId(1), 9), 7);
    }

    /// Goal: votes count once per voter and the first answer wins.
    #[test]
    fn votes() {
        let mut t = tracker(&[1, 2, 3], &[], &[4]);
        t.record_vote(NodeId(1), true);
        t.record_vote(NodeId(4), true);
        assert_eq!(
            t.vote_result(),
            VoteResult::Pending,
            "a learner's vote does not count"
        );
        t.record_vote(NodeId(2), false);
        t.record_vote(NodeId(2), true);
        assert_eq!(t.vote_counts(), (2, 1));
        assert_eq!(t.vote_result(), VoteResult::Pending);
        t.record_vote(NodeId(3), true);
        assert_eq!(t.vote_result(), VoteResult::Won);
    }
}
