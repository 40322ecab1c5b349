//! Linearizable reads: ReadIndex and lease reads (§6.4 and §6.4.1 of the Raft thesis). The round
//! and lease arithmetic is described in `read_only`.

use bytes::Bytes;
use tracing::debug;

use super::{Raft, ReadState, Role};
use crate::config::ReadOnlyOption;
use crate::error::ProposeError;
use crate::read_only::PendingRead;
use crate::storage::LogStorage;
use crate::types::{LogIndex, MessageBody, NodeId};

impl<S: LogStorage> Raft<S> {
    /// Requests a read index for `context`. The answer arrives as a [`ReadState`]; it is lost
    /// if leadership changes first, and the caller retries.
    pub fn read_index(&mut self, context: Bytes) -> Result<(), ProposeError> {
        if self.role == Role::Leader {
            return self.leader_read(self.id, context);
        }
        match (self.role, self.leader) {
            (Role::Follower, Some(leader)) => {
                self.send(leader, MessageBody::ReadIndex { context });
                Ok(())
            }
            _ => Err(ProposeError::NotLeader {
                leader_hint: self.leader,
            }),
        }
    }

    /// §6.4 step 1: a leader that has not committed an entry of its term does not know the
    /// commit index yet, so reads wait for that commit.
    fn leader_read(&mut self, from: NodeId, context: Bytes) -> Result<(), ProposeError> {
        if !self.committed_in_term() {
            if self.reads_awaiting_commit.len() >= self.config.read_index_pending_max {
                return Err(ProposeError::ProposalDropped);
            }
            self.reads_awaiting_commit.push_back((from, context));
            return Ok(());
        }
        self.serve_read(from, context)
    }

    fn serve_read(&mut self, from: NodeId, context: Bytes) -> Result<(), ProposeError> {
        let index = self.log.committed;
        if self.tracker.is_singleton(self.id) {
            self.respond_read(from, index, context);
            return Ok(());
        }
        if self.config.read_only == ReadOnlyOption::LeaseBased && self.lease_valid() {
            self.respond_read(from, index, context);
            return Ok(());
        }
        if self.read_only.pending.len() >= self.config.read_index_pending_max {
            return Err(ProposeError::ProposalDropped);
        }
        // §6.4 steps 2 and 3: record the commit index, then confirm leadership with a round.
        let round = self.read_only.round + 1;
        self.read_only.pending.push_back(PendingRead {
            round,
            index,
            context,
            from,
        });
        let sent = self.bcast_heartbeat();
        assert_eq!(sent, round, "the read waits on the round just broadcast");
        Ok(())
    }

    /// Whether the leader may answer a read alone: a quorum acknowledged a round sent less than
    /// `election_ticks - lease_drift_ticks` ago, and no transfer may have handed leadership away.
    pub(crate) fn lease_valid(&self) -> bool {
        #[cfg(feature = "inject-bugs")]
        if self.config.bug(crate::config::InjectedBug::StaleLeaseRead) {
            return true;
        }
        if self.lease_disabled || self.role != Role::Leader {
            return false;
        }
        let start = self.tracker.quorum_acked_tick(self.id, self.ticks_total);
        let lease = u64::from(self.config.election_ticks - self.config.lease_drift_ticks);
        start > 0 && self.ticks_total < start.saturating_add(lease)
    }

    fn respond_read(&mut self, from: NodeId, index: LogIndex, context: Bytes) {
        debug!(node = %self.id, from = %from, index = %index, "read index ready");
        if from == self.id {
            self.read_states.push(ReadState { index, context });
        } else {
            self.send(
                from,
                MessageBody::ReadIndexResponse {
                    index,
                    context,
                    reject: false,
                },
            );
        }
    }

    pub(crate) fn handle_read_index_request(&mut self, from: NodeId, context: Bytes) {
        if let Err(e) = self.leader_read(from, context.clone()) {
            debug!(node = %self.id, from = %from, error = %e, "refusing a forwarded read");
            self.send(
                from,
                MessageBody::ReadIndexResponse {
                    index: LogIndex(0),
                    context,
                    reject: true,
                },
            );
        }
    }

    pub(crate) fn handle_read_index_response(
        &mut self,
        from: NodeId,
        index: LogIndex,
        context: Bytes,
        reject: bool,
    ) {
        if reject {
            debug!(node = %self.id, from = %from, "read index refused by the leader");
            return;
        }
        self.read_states.push(ReadState { index, context });
    }

    /// Answers the reads confirmed by the rounds a quorum has acknowledged.
    pub(crate) fn release_confirmed_reads(&mut self) {
        if self.read_only.pending.is_empty() {
            return;
        }
        let round = self
            .tracker
            .quorum_acked_round(self.id, self.read_only.round);
        for read in self.read_only.confirmed(round) {
            self.respond_read(read.from, read.index, read.context);
        }
    }

    pub(crate) fn release_reads_awaiting_commit(&mut self) {
        while let Some((from, context)) = self.reads_awaiting_commit.pop_front() {
            if let Err(e) = self.serve_read(from, context.clone()) {
                debug!(node = %self.id, from = %from, error = %e, "dropping a read");
                if from != self.id {
                    self.send(
                        from,
                        MessageBody::ReadIndexResponse {
                            index: LogIndex(0),
                            context,
                            reject: true,
                        },
                    );
                }
            }
        }
    }
}
