//! Membership changes (§4 of the Raft thesis) and leadership transfer (§3.10).

use tracing::info;

use super::{Raft, Role};
use crate::confchange;
use crate::error::{Error, ProposeError};
use crate::storage::LogStorage;
use crate::types::{ConfChange, ConfState, EntryPayload, LogIndex, MessageBody, NodeId, Term};

impl<S: LogStorage> Raft<S> {
    /// Proposes a configuration change. One at a time: refused while an earlier change is not
    /// applied yet (§4.1).
    pub fn propose_conf_change(
        &mut self,
        cc: ConfChange,
    ) -> Result<(Term, LogIndex), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader_hint: self.leader,
            });
        }
        if self.lead_transferee.is_some() {
            return Err(ProposeError::TransferInProgress);
        }
        if self.pending_conf_index > self.log.applied {
            return Err(ProposeError::ConfChangeInProgress);
        }
        // Refuse now what could not be applied later against the current configuration.
        let next = self.log.last_index().next();
        confchange::apply(&self.tracker, &cc, next).map_err(ProposeError::InvalidConfChange)?;
        let at = self.propose(EntryPayload::ConfChange(cc))?;
        self.pending_conf_index = at.1;
        info!(node = %self.id, index = %at.1, "proposed configuration change");
        Ok(at)
    }

    /// Applies a committed configuration change and returns the new configuration.
    pub fn apply_conf_change(&mut self, cc: &ConfChange) -> Result<ConfState, Error> {
        let next = self.log.last_index().next();
        let (config, progress) = confchange::apply(&self.tracker, cc, next)?;
        self.tracker.apply(config, progress);
        let cs = self.tracker.config.to_conf_state();
        info!(node = %self.id, term = %self.term, conf = ?cs, "applied configuration change");
        self.after_conf_change();
        Ok(cs)
    }

    fn after_conf_change(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        if !self.tracker.is_voter(self.id) {
            // A removed or demoted leader steps down; the others elect a new one (§4.2.2).
            info!(node = %self.id, term = %self.term, "leader is no longer a voter, stepping down");
            self.become_follower(self.term, None);
            return;
        }
        if let Some(to) = self.lead_transferee
            && !self.tracker.is_voter(to)
        {
            self.abort_leader_transfer();
        }
        // The quorum changed: the commit index or confirmed reads may advance.
        if self.maybe_commit() {
            self.bcast_append();
        } else {
            for to in self.peers() {
                self.maybe_send_append(to, false);
            }
        }
        self.release_confirmed_reads();
    }

    /// The application applied up to `index`. A leader in a joint configuration with
    /// `auto_leave` proposes leaving it once the change that entered it is applied.
    pub fn on_applied(&mut self, index: LogIndex) {
        self.log.applied_to(index);
        self.maybe_auto_leave();
    }

    fn maybe_auto_leave(&mut self) {
        let config = &self.tracker.config;
        let wants = self.role == Role::Leader && config.auto_leave && config.voters.is_joint();
        if !wants || self.pending_conf_index > self.log.applied {
            return;
        }
        // Not limited by the uncommitted budget and allowed during a transfer: leaving the
        // joint configuration must not be starved.
        if let Some((_, index)) =
            self.append_leader_entry(EntryPayload::ConfChange(ConfChange::default()), false)
        {
            self.pending_conf_index = index;
            info!(node = %self.id, index = %index, "proposed leaving the joint configuration");
            self.bcast_append();
        }
    }

    /// Starts handing leadership to `to` (§3.10): catch it up, then tell it to campaign.
    pub fn transfer_leader(&mut self, to: NodeId) {
        if self.role != Role::Leader {
            info!(node = %self.id, to = %to, "not leader, ignoring leadership transfer");
            return;
        }
        if to == self.id || self.lead_transferee == Some(to) {
            return;
        }
        if !self.tracker.is_voter(to) {
            info!(node = %self.id, to = %to, "transfer target is not a voter, ignoring");
            return;
        }
        self.abort_leader_transfer();
        info!(node = %self.id, to = %to, term = %self.term, "starting leadership transfer");
        self.lead_transferee = Some(to);
        // The transfer is aborted if it does not finish within an election timeout.
        self.election_elapsed = 0;
        if !self.maybe_finish_transfer(to) {
            self.maybe_send_append(to, true);
        }
    }

    /// Sends TimeoutNow if `from` is the transfer target and is fully caught up.
    pub(crate) fn maybe_finish_transfer(&mut self, from: NodeId) -> bool {
        if self.lead_transferee != Some(from) {
            return false;
        }
        let last = self.log.last_index();
        if self
            .tracker
            .progress
            .get(&from)
            .is_none_or(|pr| pr.matched < last)
        {
            return false;
        }
        info!(node = %self.id, to = %from, "transfer target caught up, sending TimeoutNow");
        // The target may now win without waiting for leases to run out.
        self.lease_disabled = true;
        self.send(from, MessageBody::TimeoutNow);
        true
    }

    pub(crate) fn abort_leader_transfer(&mut self) {
        self.lead_transferee = None;
    }
}
