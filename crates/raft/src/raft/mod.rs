//! The Raft state machine of one node: roles and transitions, and the dispatch of every input.
//!
//! The behaviour is split by concern into submodules, all `impl` blocks on [`Raft`]:
//! - `election`: ticks, pre-vote, vote, check-quorum (§5.2, §9.6 and §6.2 of the thesis);
//! - `replication`: proposals, appends, commit, snapshots (§5.3, §5.4, §7);
//! - `reads`: ReadIndex and lease reads (§6.4);
//! - `membership`: configuration changes and leadership transfer (§4, §3.10).
//!
//! Outgoing messages collect in `msgs` (sendable at once) and `msgs_after_persist` (sendable
//! only once the state they depend on is on stable storage); `RawNode` turns them into a Ready.

mod election;
mod membership;
mod reads;
mod replication;

use std::collections::VecDeque;

use bytes::Bytes;
use tracing::{debug, info};

use crate::confchange;
use crate::config::Config;
use crate::error::Error;
use crate::prng::SplitMix64;
use crate::raft_log::RaftLog;
use crate::read_only::ReadOnly;
use crate::storage::LogStorage;
use crate::tracker::{Progress, ProgressTracker, TrackerConfig};
use crate::types::{GroupId, HardState, LogIndex, Message, MessageBody, NodeId, Term};

/// The role of a node. Learners are followers that cannot vote.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

/// A linearizable read answer: the read may be served once the state machine has applied
/// `index`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadState {
    pub index: LogIndex,
    pub context: Bytes,
}

/// The consensus state of one node of one group.
pub struct Raft<S: LogStorage> {
    pub id: NodeId,
    pub group_id: GroupId,
    pub config: Config,
    pub term: Term,
    pub vote: Option<NodeId>,
    pub leader: Option<NodeId>,
    pub role: Role,
    pub log: RaftLog<S>,
    pub tracker: ProgressTracker,
    pub msgs: Vec<Message>,
    pub msgs_after_persist: Vec<Message>,
    pub read_states: Vec<ReadState>,
    pub lead_transferee: Option<NodeId>,
    /// The index of the latest configuration change a leader proposed. While it is above the
    /// applied index, no other change may be proposed (§4.1: one change at a time).
    pub pending_conf_index: LogIndex,
    election_elapsed: u32,
    heartbeat_elapsed: u32,
    randomized_election_ticks: u32,
    rng: SplitMix64,
    /// Entries proposed in this term and not yet committed, with their sizes.
    uncommitted: VecDeque<(LogIndex, u64)>,
    uncommitted_bytes: u64,
    read_only: ReadOnly,
    /// Reads received before the leader committed an entry of its term (§6.4 step 1).
    reads_awaiting_commit: VecDeque<(NodeId, Bytes)>,
    /// Ticks since the node started, from 1; 0 means "never" in lease arithmetic.
    ticks_total: u64,
    /// Set once this leader sent TimeoutNow: the transferee may win without waiting for leases
    /// to expire, so this leader may no longer serve lease reads in its term.
    lease_disabled: bool,
    /// A restarted node does not know whether it recently heard from a leader, so with
    /// check-quorum it refuses votes for one election timeout, as if it had (keeps leases safe).
    restart_guard: bool,
}

impl<S: LogStorage> Raft<S> {
    pub fn new(config: &Config, storage: S) -> Result<Self, Error> {
        config.validate()?;
        let state = storage.initial_state()?;
        let log = RaftLog::new(storage, config.committed_bytes_max)?;
        let mut raft = Raft {
            id: config.id,
            group_id: config.group_id,
            config: config.clone(),
            term: Term(0),
            vote: None,
            leader: None,
            role: Role::Follower,
            log,
            tracker: ProgressTracker::new(config.inflight_msgs_max),
            msgs: Vec::new(),
            msgs_after_persist: Vec::new(),
            read_states: Vec::new(),
            lead_transferee: None,
            pending_conf_index: LogIndex(0),
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_election_ticks: config.election_ticks,
            rng: SplitMix64::new(config.seed ^ config.id.get().wrapping_mul(0x2545_F491_4F6C_DD1D)),
            uncommitted: VecDeque::new(),
            uncommitted_bytes: 0,
            read_only: ReadOnly::default(),
            reads_awaiting_commit: VecDeque::new(),
            ticks_total: 1,
            lease_disabled: false,
            restart_guard: false,
        };
        let next = raft.log.last_index().next();
        let (tc, prs) = confchange::restore(
            &raft.tracker,
            TrackerConfig::from_conf_state(&state.conf_state),
            next,
        )?;
        raft.tracker.apply(tc, prs);
        raft.load_hard_state(state.hard_state)?;
        raft.load_applied(config.applied)?;
        raft.restart_guard = raft.config.check_quorum && raft.term > Term(0);
        raft.become_follower(raft.term, None);
        info!(node = %raft.id, group = %raft.group_id, term = %raft.term, commit = %raft.log.committed,
            last = %raft.log.last_index(), "raft node started");
        Ok(raft)
    }

    fn load_hard_state(&mut self, hs: HardState) -> Result<(), Error> {
        #[allow(unused_mut)]
        let mut hs = hs;
        #[cfg(feature = "inject-bugs")]
        if self
            .config
            .bug(crate::config::InjectedBug::ForgetVoteOnRestart)
        {
            hs.vote = None;
        }
        if hs.commit > self.log.last_index() {
            return Err(Error::BadHardState(format!(
                "commit {} past last index {}",
                hs.commit,
                self.log.last_index()
            )));
        }
        self.log.commit_to(hs.commit);
        self.term = hs.term;
        self.vote = hs.vote;
        Ok(())
    }

    fn load_applied(&mut self, applied: LogIndex) -> Result<(), Error> {
        if applied > self.log.committed {
            return Err(Error::AppliedPastCommit {
                applied: applied.get(),
                committed: self.log.committed.get(),
            });
        }
        self.log.accept_applying(applied.max(self.log.applying));
        self.log.applied_to(applied);
        Ok(())
    }

    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.committed,
        }
    }

    /// Whether this node may become leader: it is a voter of the current configuration.
    pub fn promotable(&self) -> bool {
        self.tracker.is_voter(self.id)
    }

    /// Checks the invariants that hold between any two inputs. Cheap enough to run after every
    /// input in debug builds (and so in the simulator and tests).
    pub fn debug_assert_invariants(&self) {
        let log = &self.log;
        debug_assert!(
            log.applied <= log.applying,
            "applied {} > applying {}",
            log.applied,
            log.applying
        );
        debug_assert!(
            log.applying <= log.committed,
            "applying {} > commit {}",
            log.applying,
            log.committed
        );
        debug_assert!(
            log.committed <= log.last_index(),
            "commit {} > last {}",
            log.committed,
            log.last_index()
        );
        debug_assert!(
            log.persisted <= log.last_index(),
            "persisted {} > last {}",
            log.persisted,
            log.last_index()
        );
        if self.role == Role::Leader {
            debug_assert_eq!(self.leader, Some(self.id), "a leader knows it leads");
            debug_assert_eq!(self.vote, Some(self.id), "a leader voted for itself");
            debug_assert!(self.promotable(), "a leader is a voter");
        }
        if self.role == Role::Candidate {
            debug_assert_eq!(self.vote, Some(self.id), "a candidate voted for itself");
        }
        if let Some(own) = self
            .tracker
            .progress
            .get(&self.id)
            .filter(|_| self.role == Role::Leader)
        {
            debug_assert!(
                own.matched <= log.persisted,
                "the leader counts only persisted entries"
            );
        }
        debug_assert_eq!(self.tracker.config.check(), Ok(()));
        debug_assert!(
            self.tracker
                .progress
                .keys()
                .copied()
                .eq(self.tracker.config.members()),
            "progress is tracked for exactly the members"
        );
    }

    // ----- messages -----

    /// Queues a message with the node's current term.
    pub(crate) fn send(&mut self, to: NodeId, body: MessageBody) {
        self.send_with_term(to, self.term, body);
    }

    /// Queues a message. Votes, vote answers and append answers wait for persistence: they
    /// promise that the sender's term, vote or log is durable (Figure 2: "respond after
    /// persisting").
    pub(crate) fn send_with_term(&mut self, to: NodeId, term: Term, body: MessageBody) {
        assert_ne!(to, self.id, "a node never sends to itself");
        let after_persist = matches!(
            body,
            MessageBody::Vote { .. }
                | MessageBody::VoteResponse { .. }
                | MessageBody::PreVoteResponse { .. }
                | MessageBody::AppendResponse { .. }
        );
        let msg = Message {
            group_id: self.group_id,
            from: self.id,
            to,
            term,
            body,
        };
        debug!(node = %self.id, to = %to, kind = msg.body.kind(), term = %term, "send");
        if after_persist {
            self.msgs_after_persist.push(msg);
        } else {
            self.msgs.push(msg);
        }
    }

    /// Checks the envelope of a message from the network.
    fn check_envelope(&self, m: &Message) -> Result<(), Error> {
        if m.group_id != self.group_id {
            return Err(Error::WrongGroup {
                expected: self.group_id,
                got: m.group_id,
            });
        }
        if m.to != self.id {
            return Err(Error::WrongRecipient {
                id: self.id,
                to: m.to,
            });
        }
        if m.from.get() == 0 || m.from == self.id {
            return Err(Error::InvalidSender);
        }
        Ok(())
    }

    /// Handles one message from a peer.
    pub fn step(&mut self, m: Message) -> Result<(), Error> {
        self.check_envelope(&m)?;
        debug!(node = %self.id, from = %m.from, kind = m.body.kind(), term = %m.term, "step");
        if m.term > self.term {
            if !self.step_higher_term(&m) {
                return Ok(());
            }
        } else if m.term < self.term {
            self.step_lower_term(&m);
            return Ok(());
        }
        match m.body {
            MessageBody::PreVote { .. } | MessageBody::Vote { .. } => {
                self.handle_vote_request(&m);
                Ok(())
            }
            _ => match self.role {
                Role::Leader => self.step_leader(m),
                Role::PreCandidate | Role::Candidate => self.step_candidate(m),
                Role::Follower => self.step_follower(m),
            },
        }
    }

    /// A message from a higher term. Returns whether to go on processing it.
    fn step_higher_term(&mut self, m: &Message) -> bool {
        let is_vote_request = matches!(
            m.body,
            MessageBody::PreVote { .. } | MessageBody::Vote { .. }
        );
        if is_vote_request {
            let forced = matches!(
                m.body,
                MessageBody::Vote {
                    leader_transfer: true,
                    ..
                }
            );
            if !forced && self.in_lease() {
                info!(node = %self.id, from = %m.from, term = %self.term, msg_term = %m.term,
                    elapsed = self.election_elapsed, "ignoring a vote request: a leader was heard from recently");
                return false;
            }
        }
        match &m.body {
            // A pre-vote does not change the term of the receiver (§9.6).
            MessageBody::PreVote { .. } => {}
            // A granted pre-vote carries the future term of the pre-candidate itself.
            MessageBody::PreVoteResponse { reject: false } => {}
            MessageBody::Append { .. }
            | MessageBody::Heartbeat { .. }
            | MessageBody::Snapshot { .. } => {
                self.become_follower(m.term, Some(m.from));
            }
            _ => self.become_follower(m.term, None),
        }
        true
    }

    /// A message from a lower term is stale. Answer just enough to let a stale leader or
    /// pre-candidate learn the newer term.
    ///
    /// A stale `Append` or `Heartbeat` is always answered in the current term (Figure 2: "reply
    /// false if term < currentTerm", the reply carrying currentTerm), so the sender steps down
    /// and the group re-elects at a higher term. Staying silent is not enough, even without
    /// pre-vote or check-quorum:
    /// 1. a learner adopts the higher term of a vote request from a removed member;
    /// 2. the voters elect a leader in a lower term without ever seeing that term;
    /// 3. the learner drops every append of that leader, and never campaigns to resolve it,
    ///    so it stays behind forever (simulator seed 3038). With pre-vote or check-quorum the
    ///    same silence would also keep a partitioned node from ever rejoining (§9.6).
    fn step_lower_term(&mut self, m: &Message) {
        let reply_append = matches!(
            m.body,
            MessageBody::Append { .. } | MessageBody::Heartbeat { .. }
        );
        if reply_append {
            let body = MessageBody::AppendResponse {
                index: LogIndex(0),
                reject: false,
                reject_hint: LogIndex(0),
                hint_term: Term(0),
            };
            self.send(m.from, body);
        } else if matches!(m.body, MessageBody::PreVote { .. }) {
            self.send(m.from, MessageBody::PreVoteResponse { reject: true });
        } else {
            debug!(node = %self.id, from = %m.from, kind = m.body.kind(), msg_term = %m.term, term = %self.term,
                "ignoring a message from a lower term");
        }
    }

    fn step_follower(&mut self, m: Message) -> Result<(), Error> {
        match m.body {
            MessageBody::Append { .. }
            | MessageBody::Heartbeat { .. }
            | MessageBody::Snapshot { .. } => {
                self.election_elapsed = 0;
                self.leader = Some(m.from);
                self.restart_guard = false;
                self.handle_leader_message(m)
            }
            MessageBody::TimeoutNow if self.leader == Some(m.from) => {
                info!(node = %self.id, from = %m.from, term = %self.term, "received TimeoutNow, campaigning");
                self.hup(true);
                Ok(())
            }
            MessageBody::ReadIndexResponse {
                index,
                context,
                reject,
            } => {
                self.handle_read_index_response(m.from, index, context, reject);
                Ok(())
            }
            _ => {
                debug!(node = %self.id, from = %m.from, kind = m.body.kind(), "follower ignores message");
                Ok(())
            }
        }
    }

    fn step_candidate(&mut self, m: Message) -> Result<(), Error> {
        match m.body {
            MessageBody::Append { .. }
            | MessageBody::Heartbeat { .. }
            | MessageBody::Snapshot { .. } => {
                // A leader of this term exists (§5.2: a candidate that hears from the leader of
                // its term returns to follower).
                self.become_follower(m.term, Some(m.from));
                self.handle_leader_message(m)
            }
            MessageBody::PreVoteResponse { reject } if self.role == Role::PreCandidate => {
                self.handle_vote_response(m.from, reject);
                Ok(())
            }
            MessageBody::VoteResponse { reject } if self.role == Role::Candidate => {
                self.handle_vote_response(m.from, reject);
                Ok(())
            }
            _ => {
                debug!(node = %self.id, from = %m.from, kind = m.body.kind(), "candidate ignores message");
                Ok(())
            }
        }
    }

    fn step_leader(&mut self, m: Message) -> Result<(), Error> {
        let from = m.from;
        let Some(pr) = self.tracker.progress.get_mut(&from) else {
            debug!(node = %self.id, from = %from, kind = m.body.kind(), "leader ignores a message from a non-member");
            return Ok(());
        };
        pr.recent_active = true;
        match m.body {
            MessageBody::AppendResponse {
                index,
                reject,
                reject_hint,
                hint_term,
            } => {
                self.handle_append_response(from, index, reject, reject_hint, hint_term);
            }
            MessageBody::HeartbeatResponse { context } => {
                self.handle_heartbeat_response(from, &context)
            }
            MessageBody::ReadIndex { context } => self.handle_read_index_request(from, context),
            _ => {
                debug!(node = %self.id, from = %from, kind = m.body.kind(), "leader ignores message");
            }
        }
        Ok(())
    }

    fn handle_leader_message(&mut self, m: Message) -> Result<(), Error> {
        let from = m.from;
        match m.body {
            MessageBody::Append {
                prev_index,
                prev_term,
                entries,
                commit,
            } => self.handle_append(from, prev_index, prev_term, entries, commit),
            MessageBody::Heartbeat { commit, context } => {
                self.handle_heartbeat(from, commit, context);
                Ok(())
            }
            MessageBody::Snapshot { snapshot } => {
                self.handle_snapshot(from, snapshot);
                Ok(())
            }
            _ => unreachable!("only leader messages are passed here"),
        }
    }

    // ----- transitions -----

    /// Clears the per-term state. Keeps the vote when the term does not change.
    fn reset(&mut self, term: Term) {
        if self.term != term {
            assert!(term > self.term, "terms only grow: {} -> {term}", self.term);
            self.term = term;
            self.vote = None;
        }
        self.leader = None;
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.reset_randomized_election_ticks();
        self.lead_transferee = None;
        self.tracker.reset_votes();
        let next = self.log.last_index().next();
        let inflight_msgs_max = self.tracker.inflight_msgs_max();
        for pr in self.tracker.progress.values_mut() {
            *pr = Progress::new(next, inflight_msgs_max, pr.is_learner);
        }
        self.pending_conf_index = LogIndex(0);
        self.uncommitted.clear();
        self.uncommitted_bytes = 0;
        self.read_only.reset();
        self.reads_awaiting_commit.clear();
        self.lease_disabled = false;
    }

    fn reset_randomized_election_ticks(&mut self) {
        let base = self.config.election_ticks;
        self.randomized_election_ticks = base + self.rng.below(u64::from(base)) as u32;
        assert!(self.randomized_election_ticks >= base);
        assert!(self.randomized_election_ticks < 2 * base);
    }

    pub fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        let was = self.role;
        self.reset(term);
        self.role = Role::Follower;
        self.leader = leader;
        if was != Role::Follower {
            info!(node = %self.id, group = %self.group_id, term = %self.term, leader = ?leader, "became follower");
        }
    }

    fn become_pre_candidate(&mut self) {
        assert_ne!(self.role, Role::Leader, "a leader does not pre-campaign");
        // A pre-candidate keeps its term and vote (§9.6): only the votes are reset.
        self.tracker.reset_votes();
        self.role = Role::PreCandidate;
        self.leader = None;
        info!(node = %self.id, group = %self.group_id, term = %self.term, "became pre-candidate");
    }

    fn become_candidate(&mut self) {
        assert_ne!(self.role, Role::Leader, "a leader does not campaign");
        self.reset(self.term.next());
        self.vote = Some(self.id);
        self.role = Role::Candidate;
        info!(node = %self.id, group = %self.group_id, term = %self.term, "became candidate");
    }

    fn become_leader(&mut self) {
        assert_eq!(
            self.role,
            Role::Candidate,
            "only a candidate becomes leader"
        );
        assert_eq!(self.vote, Some(self.id), "a leader voted for itself");
        self.reset(self.term);
        self.role = Role::Leader;
        self.leader = Some(self.id);
        let persisted = self.log.persisted;
        let last = self.log.last_index();
        if let Some(pr) = self.tracker.progress.get_mut(&self.id) {
            pr.become_replicate();
            pr.maybe_update(persisted);
            pr.next = last.next();
        }
        // Configuration entries not yet applied may be in the log: no new change until they are.
        self.pending_conf_index = last;
        // §5.4.2 / §8: a new leader commits an entry of its own term to learn the commit index.
        self.append_leader_entry(crate::types::EntryPayload::Normal(Bytes::new()), false);
        info!(node = %self.id, group = %self.group_id, term = %self.term, last = %self.log.last_index(), "became leader");
    }
}
