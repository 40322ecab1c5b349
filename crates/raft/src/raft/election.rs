//! Time and elections: ticks, pre-vote, vote, check-quorum (§5.2 of the Raft paper; §9.6 and
//! §6.2 of the thesis).

use tracing::{debug, info};

use super::{Raft, Role};
use crate::quorum::VoteResult;
use crate::storage::LogStorage;
use crate::types::{EntryPayload, Message, MessageBody, NodeId};

impl<S: LogStorage> Raft<S> {
    /// Advances logical time by one tick.
    pub fn tick(&mut self) {
        self.ticks_total += 1;
        match self.role {
            Role::Leader => self.tick_heartbeat(),
            _ => self.tick_election(),
        }
    }

    fn tick_election(&mut self) {
        self.election_elapsed += 1;
        if self.election_elapsed >= self.config.election_ticks {
            self.restart_guard = false;
        }
        if self.promotable() && self.election_elapsed >= self.randomized_election_ticks {
            self.election_elapsed = 0;
            self.reset_randomized_election_ticks();
            info!(node = %self.id, term = %self.term, "election timeout");
            self.hup(false);
        }
    }

    fn tick_heartbeat(&mut self) {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if self.election_elapsed >= self.config.election_ticks {
            self.election_elapsed = 0;
            if self.config.check_quorum
                && !self.tracker.quorum_active(self.id)
                && !self.trusts_stale_lease()
            {
                // §6.2 of the thesis: a leader that cannot reach a quorum steps down, so that
                // clients retry elsewhere instead of waiting on it forever.
                info!(node = %self.id, term = %self.term, "check-quorum failed, stepping down");
                self.become_follower(self.term, None);
                return;
            }
            if let Some(to) = self.lead_transferee {
                info!(node = %self.id, term = %self.term, to = %to, "leadership transfer timed out, aborting");
                self.abort_leader_transfer();
            }
        }
        if self.heartbeat_elapsed >= self.config.heartbeat_ticks {
            self.heartbeat_elapsed = 0;
            self.bcast_heartbeat();
        }
    }

    /// With the injected StaleLeaseRead bug, the leader never checks quorum contact: neither for
    /// its lease nor for stepping down.
    fn trusts_stale_lease(&self) -> bool {
        #[cfg(feature = "inject-bugs")]
        if self.config.bug(crate::config::InjectedBug::StaleLeaseRead) {
            return true;
        }
        false
    }

    /// Whether this node believes a leader is alive and so refuses to help depose it: with
    /// check-quorum, a follower that heard from a leader within the election timeout (§4.2.3 of
    /// the thesis, "disruptive servers").
    pub(crate) fn in_lease(&self) -> bool {
        if !self.config.check_quorum {
            return false;
        }
        let heard = self.leader.is_some() || self.restart_guard;
        heard && self.election_elapsed < self.config.election_ticks
    }

    /// Starts an election, unless this node is leader, cannot vote, or has configuration
    /// changes committed but not applied (its view of the voters may be outdated).
    pub fn hup(&mut self, transfer: bool) {
        if self.role == Role::Leader {
            debug!(node = %self.id, "already leader, ignoring campaign");
            return;
        }
        if !self.promotable() {
            info!(node = %self.id, "not a voter, cannot campaign");
            return;
        }
        if self.has_unapplied_conf_changes() {
            info!(node = %self.id, "committed configuration changes are not applied yet, not campaigning");
            return;
        }
        if self.config.pre_vote && !transfer {
            self.pre_campaign();
        } else {
            self.campaign(transfer);
        }
    }

    fn has_unapplied_conf_changes(&self) -> bool {
        let low = self.log.applied.next().max(self.log.first_index());
        let high = self.log.committed.next();
        if low >= high {
            return false;
        }
        match self.log.slice(low, high, u64::MAX) {
            Ok(entries) => entries
                .iter()
                .any(|e| matches!(e.payload, EntryPayload::ConfChange(_))),
            // Entries already compacted were applied.
            Err(_) => false,
        }
    }

    fn vote_request(&self, pre: bool, transfer: bool) -> MessageBody {
        let (last_index, last_term) = (self.log.last_index(), self.log.last_term());
        if pre {
            MessageBody::PreVote {
                last_index,
                last_term,
            }
        } else {
            MessageBody::Vote {
                last_index,
                last_term,
                leader_transfer: transfer,
            }
        }
    }

    fn voters_except_self(&self) -> Vec<NodeId> {
        self.tracker
            .config
            .voters
            .ids()
            .into_iter()
            .filter(|id| *id != self.id)
            .collect()
    }

    /// §9.6: ask whether the others would vote, without disturbing anyone's term.
    fn pre_campaign(&mut self) {
        self.become_pre_candidate();
        self.tracker.record_vote(self.id, true);
        if self.tracker.vote_result() == VoteResult::Won {
            self.campaign(false);
            return;
        }
        let term = self.term.next();
        let body = self.vote_request(true, false);
        for to in self.voters_except_self() {
            self.send_with_term(to, term, body.clone());
        }
    }

    /// §5.2: increment the term, vote for itself, request votes.
    fn campaign(&mut self, transfer: bool) {
        self.become_candidate();
        self.tracker.record_vote(self.id, true);
        if self.tracker.vote_result() == VoteResult::Won {
            self.become_leader();
            return;
        }
        let body = self.vote_request(false, transfer);
        for to in self.voters_except_self() {
            self.send(to, body.clone());
        }
    }

    /// Answers a PreVote or Vote whose term is at least ours (lower terms were answered
    /// earlier).
    pub(crate) fn handle_vote_request(&mut self, m: &Message) {
        let (pre, last_index, last_term) = match m.body {
            MessageBody::PreVote {
                last_index,
                last_term,
            } => (true, last_index, last_term),
            MessageBody::Vote {
                last_index,
                last_term,
                ..
            } => (false, last_index, last_term),
            _ => unreachable!("only vote requests are passed here"),
        };
        // §5.2: at most one vote per term, first come first served. A pre-vote for a future
        // term is not a vote, so any number may be granted.
        let can_vote = self.vote == Some(m.from)
            || (self.vote.is_none() && self.leader.is_none())
            || (pre && m.term > self.term);
        #[cfg(feature = "inject-bugs")]
        let can_vote =
            can_vote || (!pre && self.config.bug(crate::config::InjectedBug::DoubleVote));
        // §5.4.1: only for a candidate whose log is at least as up-to-date.
        let up_to_date = self.log.is_up_to_date(last_index, last_term);
        let grant = can_vote && up_to_date;
        info!(node = %self.id, from = %m.from, pre, term = %self.term, msg_term = %m.term, grant,
            can_vote, up_to_date, "vote request");
        if pre {
            let term = if grant { m.term } else { self.term };
            self.send_with_term(
                m.from,
                term,
                MessageBody::PreVoteResponse { reject: !grant },
            );
            return;
        }
        if grant {
            self.election_elapsed = 0;
            // Always true under the rules; the injected DoubleVote bug grants a second vote
            // without forgetting the first (a candidate keeps its vote for itself).
            if self.vote.is_none() {
                self.vote = Some(m.from);
            }
        }
        self.send(m.from, MessageBody::VoteResponse { reject: !grant });
    }

    pub(crate) fn handle_vote_response(&mut self, from: NodeId, reject: bool) {
        self.tracker.record_vote(from, !reject);
        let (granted, rejected) = self.tracker.vote_counts();
        info!(node = %self.id, from = %from, reject, granted, rejected, role = ?self.role, term = %self.term,
            "vote response");
        match self.tracker.vote_result() {
            VoteResult::Won if self.role == Role::PreCandidate => self.campaign(false),
            VoteResult::Won => {
                self.become_leader();
                self.bcast_append();
            }
            VoteResult::Lost => self.become_follower(self.term, None),
            VoteResult::Pending => {}
        }
    }
}
