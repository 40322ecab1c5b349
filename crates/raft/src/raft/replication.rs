//! Log replication: proposals, appends and their answers, the commit rule, heartbeats and
//! snapshots (§5.3, §5.4 and §7 of the Raft paper).

use bytes::Bytes;
use tracing::{debug, error, info, warn};

use super::{Raft, Role};
use crate::confchange;
use crate::error::{Error, ProposeError};
use crate::raft_log::fatal;
use crate::read_only::{decode_round, encode_round};
use crate::storage::{LogStorage, StorageError};
use crate::tracker::{ProgressState, TrackerConfig};
use crate::types::{Entry, EntryPayload, LogIndex, MessageBody, NodeId, Snapshot, Term};

impl<S: LogStorage> Raft<S> {
    /// Appends a client proposal to the leader's log (§5.3) and replicates it.
    pub fn propose(&mut self, payload: EntryPayload) -> Result<(Term, LogIndex), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader_hint: self.leader,
            });
        }
        if self.lead_transferee.is_some() {
            // §3.10 of the thesis: the old leader stops accepting requests during a transfer.
            return Err(ProposeError::TransferInProgress);
        }
        let at = self
            .append_leader_entry(payload, true)
            .ok_or(ProposeError::ProposalDropped)?;
        self.bcast_append();
        Ok(at)
    }

    /// Appends one entry of the leader's term. With `limited`, refuses it (returns `None`) when
    /// it would push the uncommitted bytes past `uncommitted_bytes_max`; a single entry is
    /// always accepted when nothing is uncommitted, so that no entry is too big forever.
    pub(crate) fn append_leader_entry(
        &mut self,
        payload: EntryPayload,
        limited: bool,
    ) -> Option<(Term, LogIndex)> {
        assert_eq!(self.role, Role::Leader);
        let index = self.log.last_index().next();
        let entry = Entry {
            term: self.term,
            index,
            payload,
        };
        let size = entry.size_bytes();
        if limited {
            let over =
                self.uncommitted_bytes.saturating_add(size) > self.config.uncommitted_bytes_max;
            if over && !self.uncommitted.is_empty() {
                debug!(node = %self.id, uncommitted = self.uncommitted_bytes, size, "proposal dropped");
                return None;
            }
            self.uncommitted.push_back((index, size));
            self.uncommitted_bytes += size;
        }
        let last = self.log.append(&[entry]);
        assert_eq!(last, index);
        Some((self.term, index))
    }

    /// Sends appends (or empty ones, to carry the commit index) to every other member.
    pub(crate) fn bcast_append(&mut self) {
        for to in self.peers() {
            self.maybe_send_append(to, true);
        }
    }

    /// Every tracked member (voters and learners) except this node, in id order.
    pub(crate) fn peers(&self) -> Vec<NodeId> {
        self.tracker
            .progress
            .keys()
            .copied()
            .filter(|id| *id != self.id)
            .collect()
    }

    /// Sends the next append to `to` if its progress allows. Returns whether a message was sent.
    pub(crate) fn maybe_send_append(&mut self, to: NodeId, send_if_empty: bool) -> bool {
        let Some(pr) = self.tracker.progress.get(&to) else {
            return false;
        };
        if pr.is_paused() {
            return false;
        }
        let next = pr.next;
        let prev_index = next.prev();
        let prev_term = self.log.term(prev_index);
        let entries = self.log.entries(next, self.config.append_bytes_max);
        let (prev_term, entries) = match (prev_term, entries) {
            (Ok(t), Ok(e)) => (t, e),
            (Err(e), _) | (_, Err(e)) => return self.maybe_send_snapshot(to, e),
        };
        if entries.is_empty() && !send_if_empty {
            return false;
        }
        let count = entries.len();
        let last = entries.last().map_or(prev_index, |e| e.index);
        let commit = self.log.committed;
        if let Some(pr) = self.tracker.progress.get_mut(&to) {
            pr.sent_entries(last, count);
        }
        self.send(
            to,
            MessageBody::Append {
                prev_index,
                prev_term,
                entries,
                commit,
            },
        );
        true
    }

    /// The follower needs entries that were compacted: send a snapshot instead (§7).
    fn maybe_send_snapshot(&mut self, to: NodeId, cause: StorageError) -> bool {
        match cause {
            StorageError::Compacted => {}
            StorageError::Unavailable => {
                warn!(node = %self.id, to = %to, "next index of a member is past the log");
                return false;
            }
            other => fatal(other),
        }
        let Some(pr) = self.tracker.progress.get(&to) else {
            return false;
        };
        if !pr.recent_active {
            debug!(node = %self.id, to = %to, "not sending a snapshot to an inactive member");
            return false;
        }
        let snapshot = match self.log.storage.snapshot(pr.next.prev()) {
            Ok(s) => s,
            Err(StorageError::SnapshotTemporarilyUnavailable) => {
                debug!(node = %self.id, to = %to, "snapshot temporarily unavailable");
                return false;
            }
            Err(e) => fatal(e),
        };
        let index = snapshot.meta.index;
        assert!(
            index.get() > 0,
            "a snapshot to send covers at least one entry"
        );
        info!(node = %self.id, to = %to, index = %index, term = %snapshot.meta.term, "sending snapshot");
        if let Some(pr) = self.tracker.progress.get_mut(&to) {
            pr.become_snapshot(index);
        }
        self.send(to, MessageBody::Snapshot { snapshot });
        true
    }

    /// Starts a new heartbeat round (which also confirms pending reads) and returns its number.
    pub(crate) fn bcast_heartbeat(&mut self) -> u64 {
        let round = self.read_only.next_round(self.ticks_total);
        let context = encode_round(round);
        let committed = self.log.committed;
        let peers: Vec<(NodeId, LogIndex)> = self
            .tracker
            .progress
            .iter()
            .filter(|(id, _)| **id != self.id)
            .map(|(id, pr)| (*id, pr.matched.min(committed)))
            .collect();
        for (to, commit) in peers {
            // A follower may not have the leader's log past its match; committing beyond it
            // could commit a wrong entry of its log.
            self.send(
                to,
                MessageBody::Heartbeat {
                    commit,
                    context: context.clone(),
                },
            );
        }
        round
    }

    /// Commits what a quorum has replicated, counting only entries of the current term
    /// (§5.4.2). Returns whether the commit index advanced.
    pub(crate) fn maybe_commit(&mut self) -> bool {
        let quorum_index = self.tracker.committed();
        let old = self.log.committed;
        #[cfg(feature = "inject-bugs")]
        if self.config.bug(crate::config::InjectedBug::CommitOldTerm) && quorum_index > old {
            self.log.commit_to(quorum_index);
            self.on_commit_advanced(old);
            return true;
        }
        if self.log.maybe_commit(quorum_index, self.term) {
            self.on_commit_advanced(old);
            return true;
        }
        false
    }

    fn on_commit_advanced(&mut self, old: LogIndex) {
        let committed = self.log.committed;
        assert!(committed > old);
        debug!(node = %self.id, commit = %committed, "commit advanced");
        while let Some((index, size)) = self.uncommitted.front().copied() {
            if index > committed {
                break;
            }
            self.uncommitted.pop_front();
            self.uncommitted_bytes -= size;
        }
        if self.committed_in_term() {
            self.release_reads_awaiting_commit();
        }
    }

    /// Whether the leader committed an entry of its own term, so its commit index is current.
    pub(crate) fn committed_in_term(&self) -> bool {
        self.log
            .term(self.log.committed)
            .is_ok_and(|t| t == self.term)
    }

    pub(crate) fn handle_append_response(
        &mut self,
        from: NodeId,
        index: LogIndex,
        reject: bool,
        reject_hint: LogIndex,
        hint_term: Term,
    ) {
        if index > self.log.last_index() {
            warn!(node = %self.id, from = %from, index = %index, "append answer past the last index, ignored");
            return;
        }
        if reject {
            self.handle_append_rejection(from, index, reject_hint, hint_term);
            return;
        }
        let Some(pr) = self.tracker.progress.get_mut(&from) else {
            return;
        };
        let was_paused = pr.is_paused();
        if !pr.maybe_update(index) {
            return;
        }
        match pr.state {
            ProgressState::Probe => pr.become_replicate(),
            ProgressState::Snapshot if pr.matched >= pr.pending_snapshot => {
                pr.become_probe();
                pr.become_replicate();
            }
            ProgressState::Snapshot => {}
            ProgressState::Replicate => pr.inflights.free_to(index),
        }
        if self.maybe_commit() {
            self.bcast_append();
        } else if was_paused {
            // The member was skipped by earlier broadcasts while paused: send at least an empty
            // append so that it learns the current commit index.
            self.maybe_send_append(from, true);
        }
        // Send as much as flow control now allows, without empty appends.
        while self.maybe_send_append(from, false) {}
        self.maybe_finish_transfer(from);
    }

    fn handle_append_rejection(
        &mut self,
        from: NodeId,
        index: LogIndex,
        reject_hint: LogIndex,
        hint_term: Term,
    ) {
        // Fast backtracking: skip the whole term the follower has at the hint (§5.3 end).
        let probe = if hint_term.get() > 0 {
            self.log.find_conflict_by_term(reject_hint, hint_term).0
        } else {
            reject_hint
        };
        let Some(pr) = self.tracker.progress.get_mut(&from) else {
            return;
        };
        if !pr.maybe_decr_to(index, probe) {
            debug!(node = %self.id, from = %from, index = %index, "stale append rejection");
            return;
        }
        debug!(node = %self.id, from = %from, index = %index, next = %pr.next, "append rejected, backing off");
        if pr.state == ProgressState::Replicate {
            pr.become_probe();
        }
        self.maybe_send_append(from, false);
    }

    pub(crate) fn handle_heartbeat_response(&mut self, from: NodeId, context: &Bytes) {
        let last = self.log.last_index();
        let current_round = self.read_only.round;
        let round_tick = decode_round(context)
            .filter(|r| *r <= current_round)
            .map(|r| (r, self.read_only.round_tick(r)));
        let Some(pr) = self.tracker.progress.get_mut(&from) else {
            return;
        };
        pr.probe_sent = false;
        if pr.state == ProgressState::Replicate && pr.inflights.full() {
            pr.inflights.free_first_one();
        }
        let behind = pr.matched < last;
        if let Some((round, tick)) = round_tick {
            pr.acked_round = pr.acked_round.max(round);
            if let Some(tick) = tick {
                pr.acked_round_tick = pr.acked_round_tick.max(tick);
            }
        }
        // An empty append when nothing new can be sent: if earlier appends were lost, its
        // rejection sends the member back to probing, so a lossy link cannot stall it.
        if behind {
            self.maybe_send_append(from, true);
        }
        self.release_confirmed_reads();
    }

    /// Checks that an append's entries follow `prev_index` contiguously with sane terms.
    fn check_append(
        from: NodeId,
        term: Term,
        prev_index: LogIndex,
        prev_term: Term,
        entries: &[Entry],
    ) -> Result<(), Error> {
        let mut expected = prev_index.next();
        let mut last_term = prev_term;
        for e in entries {
            let reason = if e.index != expected {
                Some(format!(
                    "entry index {} where {} was expected",
                    e.index, expected
                ))
            } else if e.term < last_term || e.term > term {
                Some(format!(
                    "entry {} has term {} out of order",
                    e.index, e.term
                ))
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(Error::MalformedMessage { from, reason });
            }
            expected = expected.next();
            last_term = e.term;
        }
        Ok(())
    }

    /// The AppendEntries receiver (§5.3, Figure 2).
    pub(crate) fn handle_append(
        &mut self,
        from: NodeId,
        prev_index: LogIndex,
        prev_term: Term,
        entries: Vec<Entry>,
        commit: LogIndex,
    ) -> Result<(), Error> {
        Self::check_append(from, self.term, prev_index, prev_term, &entries)?;
        if prev_index < self.log.committed {
            let body = append_ack(self.log.committed);
            self.send(from, body);
            return Ok(());
        }
        match self
            .log
            .maybe_append(prev_index, prev_term, commit, &entries)
        {
            Ok(Some(last_new)) => {
                self.send(from, append_ack(last_new));
                Ok(())
            }
            Ok(None) => {
                let probe = prev_index.min(self.log.last_index());
                let (reject_hint, hint_term) = self.log.find_conflict_by_term(probe, prev_term);
                debug!(node = %self.id, from = %from, prev_index = %prev_index, hint = %reject_hint, "rejecting append");
                self.send(
                    from,
                    MessageBody::AppendResponse {
                        index: prev_index,
                        reject: true,
                        reject_hint,
                        hint_term,
                    },
                );
                Ok(())
            }
            Err(reason) => {
                error!(node = %self.id, from = %from, reason = %reason, "refusing an append that rewrites committed entries");
                Err(Error::MalformedMessage { from, reason })
            }
        }
    }

    pub(crate) fn handle_heartbeat(&mut self, from: NodeId, commit: LogIndex, context: Bytes) {
        self.log.commit_to(commit);
        self.send(from, MessageBody::HeartbeatResponse { context });
    }

    /// The InstallSnapshot receiver (§7).
    pub(crate) fn handle_snapshot(&mut self, from: NodeId, snapshot: Snapshot) {
        let (index, term) = (snapshot.meta.index, snapshot.meta.term);
        if index <= self.log.committed {
            debug!(node = %self.id, from = %from, index = %index, "snapshot is not newer than the commit index");
            let body = append_ack(self.log.committed);
            self.send(from, body);
            return;
        }
        if self.log.match_term(index, term) {
            // The log already holds the snapshot's last entry: keep the log, just commit.
            info!(node = %self.id, index = %index, "fast-forwarding commit to a snapshot already in the log");
            self.log.commit_to(index);
            let body = append_ack(self.log.committed);
            self.send(from, body);
            return;
        }
        let config = TrackerConfig::from_conf_state(&snapshot.meta.conf_state);
        if !config.members().contains(&self.id) {
            warn!(node = %self.id, index = %index, "ignoring a snapshot whose configuration does not include this node");
            return;
        }
        let restored = confchange::restore(&self.tracker, config, index.next());
        let (config, progress) = match restored {
            Ok(x) => x,
            Err(e) => {
                warn!(node = %self.id, error = %e, "ignoring a snapshot with an invalid configuration");
                return;
            }
        };
        info!(node = %self.id, term = %self.term, index = %index, snapshot_term = %term, "restoring snapshot");
        self.log.restore(snapshot);
        self.tracker.apply(config, progress);
        let body = append_ack(self.log.last_index());
        self.send(from, body);
    }

    /// The application reports the outcome of sending a snapshot to `to`.
    pub fn report_snapshot(&mut self, to: NodeId, success: bool) {
        if self.role != Role::Leader {
            return;
        }
        let Some(pr) = self.tracker.progress.get_mut(&to) else {
            return;
        };
        if pr.state != ProgressState::Snapshot {
            return;
        }
        info!(node = %self.id, to = %to, success, "snapshot reported");
        if !success {
            pr.pending_snapshot = LogIndex(0);
        }
        // Either way, probe from after the snapshot, once the member answers a heartbeat.
        pr.become_probe();
        pr.probe_sent = true;
    }

    /// The application could not deliver to `to`: stop streaming, go back to probing.
    pub fn report_unreachable(&mut self, to: NodeId) {
        if self.role != Role::Leader {
            return;
        }
        if let Some(pr) = self.tracker.progress.get_mut(&to)
            && pr.state == ProgressState::Replicate
        {
            pr.become_probe();
        }
    }

    /// The application persisted entries up to (`index`, `term`). A leader counts its own log
    /// toward the commit only from here.
    pub fn on_persisted_entries(&mut self, index: LogIndex, term: Term) {
        self.log.on_persisted_entries(index, term);
        if self.role != Role::Leader {
            return;
        }
        let persisted = self.log.persisted;
        let id = self.id;
        let updated = self
            .tracker
            .progress
            .get_mut(&id)
            .is_some_and(|pr| pr.maybe_update(persisted));
        if updated && self.maybe_commit() {
            self.bcast_append();
        }
    }

    pub fn on_persisted_snapshot(&mut self, index: LogIndex) {
        self.log.on_persisted_snapshot(index);
    }
}

fn append_ack(index: LogIndex) -> MessageBody {
    MessageBody::AppendResponse {
        index,
        reject: false,
        reject_hint: LogIndex(0),
        hint_term: Term(0),
    }
}
