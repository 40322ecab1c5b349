//! The public face of the core: a [`RawNode`] takes inputs and hands out numbered [`Ready`]s.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use tracing::warn;

use crate::config::Config;
use crate::error::{Error, ProposeError};
use crate::raft::{Raft, ReadState, Role};
use crate::storage::LogStorage;
use crate::tracker::ProgressState;
use crate::types::{
    ConfChange, ConfState, Entry, EntryPayload, HardState, LogIndex, Message, NodeId, Snapshot,
    Term,
};

/// The volatile state worth reporting when it changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftState {
    pub leader: Option<NodeId>,
    pub role: Role,
}

/// Everything the application must do after a batch of inputs.
///
/// Contract:
/// 1. `messages` may be sent at once, before anything is persisted.
/// 2. Persist `snapshot`, `entries` (appending, truncating any conflicting suffix) and
///    `hard_state`, in that order, into the storage the node reads; then call
///    [`RawNode::on_persisted`] with `number`. Readies must be persisted in order.
/// 3. Only then send `persisted_messages`.
/// 4. Apply `committed_entries` in order (and restore the state machine from `snapshot` first),
///    then call [`RawNode::on_applied`].
/// 5. Serve each of `read_states` once the applied index reaches its `index`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ready {
    pub number: u64,
    pub soft_state: Option<SoftState>,
    pub hard_state: Option<HardState>,
    pub snapshot: Option<Snapshot>,
    pub entries: Vec<Entry>,
    pub messages: Vec<Message>,
    pub persisted_messages: Vec<Message>,
    pub committed_entries: Vec<Entry>,
    pub read_states: Vec<ReadState>,
}

/// The leader's view of one member, for [`Status`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgressStatus {
    pub matched: LogIndex,
    pub next: LogIndex,
    pub state: ProgressState,
    pub recent_active: bool,
    pub is_learner: bool,
    pub inflight: usize,
}

/// A snapshot of a node's state, for tests, tools and checkers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub id: NodeId,
    pub term: Term,
    pub vote: Option<NodeId>,
    pub role: Role,
    pub leader: Option<NodeId>,
    pub commit: LogIndex,
    pub applied: LogIndex,
    pub persisted: LogIndex,
    pub last_index: LogIndex,
    pub conf_state: ConfState,
    /// Leader only.
    pub progress: BTreeMap<NodeId, ProgressStatus>,
    pub lead_transferee: Option<NodeId>,
}

/// The part of a node's state that a driver reads after every Ready: unlike [`Status`], it
/// builds no configuration and no progress map, so reading it costs no allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BasicStatus {
    pub term: Term,
    pub role: Role,
    pub leader: Option<NodeId>,
    pub commit: LogIndex,
    pub applied: LogIndex,
}

impl Status {
    /// The part of this status that [`RawNode::basic_status`] reads.
    pub fn basic(&self) -> BasicStatus {
        BasicStatus {
            term: self.term,
            role: self.role,
            leader: self.leader,
            commit: self.commit,
            applied: self.applied,
        }
    }
}

/// What a Ready asked to persist, to act on when it is acknowledged.
#[derive(Clone, Debug)]
struct ReadyRecord {
    number: u64,
    last_entry: Option<(LogIndex, Term)>,
    snapshot: Option<LogIndex>,
}

/// One node of one Raft group. See the crate docs for the driving loop.
pub struct RawNode<S: LogStorage> {
    raft: Raft<S>,
    /// Carries `node_id` and `group_id` for every event logged inside the node.
    span: tracing::Span,
    prev_soft: SoftState,
    prev_hard: HardState,
    ready_number: u64,
    records: VecDeque<ReadyRecord>,
}

impl<S: LogStorage> RawNode<S> {
    /// Starts a node from what `storage` holds (a restart) or from its initial configuration.
    pub fn new(config: &Config, storage: S) -> Result<Self, Error> {
        let span = tracing::info_span!("raft", node_id = %config.id, group_id = %config.group_id);
        let raft = span.in_scope(|| Raft::new(config, storage))?;
        let prev_soft = SoftState {
            leader: raft.leader,
            role: raft.role,
        };
        let prev_hard = raft.hard_state();
        Ok(RawNode {
            raft,
            span,
            prev_soft,
            prev_hard,
            ready_number: 0,
            records: VecDeque::new(),
        })
    }

    pub fn tick(&mut self) {
        let _span = self.span.enter();
        self.raft.tick();
        self.raft.debug_assert_invariants();
    }

    /// Handles a message from a peer. Bad input is refused with an error, never a panic.
    pub fn step(&mut self, msg: Message) -> Result<(), Error> {
        let _span = self.span.enter();
        let result = self.raft.step(msg);
        self.raft.debug_assert_invariants();
        result
    }

    /// Starts an election now (with a pre-vote first when configured).
    pub fn campaign(&mut self) -> Result<(), Error> {
        let _span = self.span.enter();
        self.raft.hup(false);
        Ok(())
    }

    pub fn propose(&mut self, data: Bytes) -> Result<(Term, LogIndex), ProposeError> {
        let _span = self.span.enter();
        self.raft.propose(EntryPayload::Normal(data))
    }

    pub fn propose_conf_change(
        &mut self,
        cc: ConfChange,
    ) -> Result<(Term, LogIndex), ProposeError> {
        let _span = self.span.enter();
        self.raft.propose_conf_change(cc)
    }

    pub fn read_index(&mut self, context: Bytes) -> Result<(), ProposeError> {
        let _span = self.span.enter();
        self.raft.read_index(context)
    }

    pub fn transfer_leader(&mut self, to: NodeId) {
        let _span = self.span.enter();
        self.raft.transfer_leader(to);
    }

    pub fn apply_conf_change(&mut self, cc: &ConfChange) -> Result<ConfState, Error> {
        let _span = self.span.enter();
        self.raft.apply_conf_change(cc)
    }

    pub fn report_unreachable(&mut self, to: NodeId) {
        let _span = self.span.enter();
        self.raft.report_unreachable(to);
    }

    pub fn report_snapshot(&mut self, to: NodeId, success: bool) {
        let _span = self.span.enter();
        self.raft.report_snapshot(to, success);
    }

    fn soft_state(&self) -> SoftState {
        SoftState {
            leader: self.raft.leader,
            role: self.raft.role,
        }
    }

    pub fn has_ready(&self) -> bool {
        let r = &self.raft;
        self.soft_state() != self.prev_soft
            || r.hard_state() != self.prev_hard
            || r.log.has_next_unstable_snapshot()
            || !r.log.next_unstable_entries().is_empty()
            || !r.msgs.is_empty()
            || !r.msgs_after_persist.is_empty()
            || !r.read_states.is_empty()
            || r.log.has_next_committed_entries()
    }

    /// Collects everything pending into the next numbered Ready.
    pub fn ready(&mut self) -> Ready {
        let _span = self.span.enter();
        self.ready_number += 1;
        let number = self.ready_number;
        let soft = self.soft_state();
        let hard = self.raft.hard_state();
        let snapshot = self
            .raft
            .log
            .has_next_unstable_snapshot()
            .then(|| self.raft.log.unstable.snapshot.clone())
            .flatten();
        let entries = self.raft.log.next_unstable_entries().to_vec();
        self.raft.log.accept_unstable();
        let committed_entries = self.raft.log.next_committed_entries();
        if let Some(last) = committed_entries.last() {
            self.raft.log.accept_applying(last.index);
        }
        let ready = Ready {
            number,
            soft_state: (soft != self.prev_soft).then_some(soft),
            hard_state: (hard != self.prev_hard).then_some(hard),
            snapshot,
            entries,
            messages: take_keeping_capacity(&mut self.raft.msgs),
            persisted_messages: take_keeping_capacity(&mut self.raft.msgs_after_persist),
            committed_entries,
            read_states: std::mem::take(&mut self.raft.read_states),
        };
        self.prev_soft = soft;
        self.prev_hard = hard;
        self.records.push_back(ReadyRecord {
            number,
            last_entry: ready.entries.last().map(|e| (e.index, e.term)),
            snapshot: ready.snapshot.as_ref().map(|s| s.meta.index),
        });
        ready
    }

    /// Everything in Ready `number` and earlier is on stable storage.
    pub fn on_persisted(&mut self, number: u64) {
        let _span = self.span.enter();
        if number > self.ready_number {
            warn!(node = %self.raft.id, number, issued = self.ready_number, "persisted a Ready never issued, ignored");
            return;
        }
        while self.records.front().is_some_and(|r| r.number <= number) {
            let Some(record) = self.records.pop_front() else {
                break;
            };
            if let Some(index) = record.snapshot {
                self.raft.on_persisted_snapshot(index);
            }
            if let Some((index, term)) = record.last_entry {
                self.raft.on_persisted_entries(index, term);
            }
        }
        self.raft.debug_assert_invariants();
    }

    /// The application applied every committed entry up to `index`.
    pub fn on_applied(&mut self, index: LogIndex) {
        let _span = self.span.enter();
        self.raft.on_applied(index);
    }

    pub fn status(&self) -> Status {
        let r = &self.raft;
        let progress = if r.role == Role::Leader {
            r.tracker
                .progress
                .iter()
                .map(|(id, pr)| {
                    let status = ProgressStatus {
                        matched: pr.matched,
                        next: pr.next,
                        state: pr.state,
                        recent_active: pr.recent_active,
                        is_learner: pr.is_learner,
                        inflight: pr.inflights.count(),
                    };
                    (*id, status)
                })
                .collect()
        } else {
            BTreeMap::new()
        };
        Status {
            id: r.id,
            term: r.term,
            vote: r.vote,
            role: r.role,
            leader: r.leader,
            commit: r.log.committed,
            applied: r.log.applied,
            persisted: r.log.persisted,
            last_index: r.log.last_index(),
            conf_state: r.tracker.config.to_conf_state(),
            progress,
            lead_transferee: r.lead_transferee,
        }
    }

    /// The term, role, leader, commit and applied index (see [`BasicStatus`]).
    pub fn basic_status(&self) -> BasicStatus {
        let r = &self.raft;
        BasicStatus {
            term: r.term,
            role: r.role,
            leader: r.leader,
            commit: r.log.committed,
            applied: r.log.applied,
        }
    }

    pub fn storage(&self) -> &S {
        &self.raft.log.storage
    }

    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.raft.log.storage
    }

    /// Entries of the log in `[low, high)`, from storage or the unstable buffer (for checkers).
    pub fn entries(
        &self,
        low: LogIndex,
        high: LogIndex,
    ) -> Result<Vec<Entry>, crate::StorageError> {
        self.raft.log.slice(low, high, u64::MAX)
    }

    /// The term of the entry at `index` (for checkers).
    pub fn term(&self, index: LogIndex) -> Result<Term, crate::StorageError> {
        self.raft.log.term(index)
    }
}

/// Takes the messages out for a Ready and leaves an empty vector with room for as many: a busy
/// node sends about as many messages in each Ready as in the last, and growing the vector one
/// push at a time again would copy it several times over.
fn take_keeping_capacity(messages: &mut Vec<Message>) -> Vec<Message> {
    let len = messages.len();
    std::mem::replace(messages, Vec::with_capacity(len))
}
