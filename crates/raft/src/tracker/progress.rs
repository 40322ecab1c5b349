//! What a leader knows about one follower's log (§5.3: nextIndex and matchIndex), and how it
//! paces replication to it.

use crate::tracker::inflights::Inflights;
use crate::types::LogIndex;

/// How the leader replicates to a follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// The leader does not know where the follower's log matches; it sends one append at a time
    /// and waits for the answer before sending the next.
    Probe,
    /// The follower's log matches up to `matched`; the leader streams appends optimistically,
    /// bounded by the inflight window.
    Replicate,
    /// The follower needs a snapshot; the leader sends nothing else until it is reported.
    Snapshot,
}

/// The leader's view of one member.
///
/// Invariant: `matched < next`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    /// The highest index known to be replicated on the member (matchIndex).
    pub matched: LogIndex,
    /// The next index to send (nextIndex).
    pub next: LogIndex,
    pub state: ProgressState,
    /// In Snapshot state: the index of the snapshot being sent.
    pub pending_snapshot: LogIndex,
    /// Whether the member was heard from since the last check-quorum round.
    pub recent_active: bool,
    /// In Probe state: an append was sent and not answered yet.
    pub probe_sent: bool,
    pub inflights: Inflights,
    pub is_learner: bool,
    /// The highest heartbeat round of this term the member has acknowledged (read confirmation).
    pub acked_round: u64,
    /// The tick at which the leader sent the most recent acknowledged round (lease start).
    pub acked_round_tick: u64,
}

impl Progress {
    pub fn new(next: LogIndex, inflight_msgs_max: usize, is_learner: bool) -> Self {
        assert!(next.get() >= 1, "next index starts at 1");
        Progress {
            matched: LogIndex(0),
            next,
            state: ProgressState::Probe,
            pending_snapshot: LogIndex(0),
            recent_active: false,
            probe_sent: false,
            inflights: Inflights::new(inflight_msgs_max),
            is_learner,
            acked_round: 0,
            acked_round_tick: 0,
        }
    }

    fn reset_state(&mut self, state: ProgressState) {
        self.probe_sent = false;
        self.pending_snapshot = LogIndex(0);
        self.state = state;
        self.inflights.reset();
    }

    /// Goes back to probing. After a snapshot, probing starts past the snapshot.
    pub fn become_probe(&mut self) {
        let after_snapshot = if self.state == ProgressState::Snapshot {
            self.pending_snapshot.next()
        } else {
            LogIndex(0)
        };
        self.reset_state(ProgressState::Probe);
        self.next = self.matched.next().max(after_snapshot);
        self.assert_invariants();
    }

    /// Starts streaming from just past the match.
    pub fn become_replicate(&mut self) {
        self.reset_state(ProgressState::Replicate);
        self.next = self.matched.next();
        self.assert_invariants();
    }

    /// Waits for a snapshot at `index` to be delivered.
    pub fn become_snapshot(&mut self, index: LogIndex) {
        self.reset_state(ProgressState::Snapshot);
        self.pending_snapshot = index;
    }

    /// Records that the member holds the log up to `index`. Returns whether the match grew.
    pub fn maybe_update(&mut self, index: LogIndex) -> bool {
        let updated = self.matched < index;
        if updated {
            self.matched = index;
            self.probe_sent = false;
        }
        self.next = self.next.max(index.next());
        self.assert_invariants();
        updated
    }

    /// Records that an append carrying entries up to `last` was sent (`entries` of them).
    pub fn sent_entries(&mut self, last: LogIndex, entries: usize) {
        match self.state {
            ProgressState::Replicate => {
                if entries > 0 {
                    self.next = last.next();
                    self.inflights.add(last);
                }
            }
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Snapshot => {
                unreachable!("appends are never sent to a member waiting for a snapshot")
            }
        }
        self.assert_invariants();
    }

    /// Handles a rejected append of `rejected` (its prev_index). `probe_hint` is where the
    /// leader's log may match, from the follower's hint. Returns false when the rejection is
    /// stale (an answer to an older append) and must be ignored.
    pub fn maybe_decr_to(&mut self, rejected: LogIndex, probe_hint: LogIndex) -> bool {
        if self.state == ProgressState::Replicate {
            // Appends at or below the match cannot be rejected for a reason still current.
            if rejected <= self.matched {
                return false;
            }
            self.next = self.matched.next();
            return true;
        }
        // In Probe state only the answer to the outstanding probe (prev_index = next - 1) counts.
        if self.next.prev() != rejected {
            return false;
        }
        self.next = probe_hint
            .next()
            .min(rejected)
            .max(self.matched.next())
            .max(LogIndex(1));
        self.probe_sent = false;
        self.assert_invariants();
        true
    }

    /// Whether the leader must hold back appends to this member for now.
    pub fn is_paused(&self) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflights.full(),
            ProgressState::Snapshot => true,
        }
    }

    fn assert_invariants(&self) {
        assert!(
            self.matched < self.next,
            "match {} >= next {}",
            self.matched,
            self.next
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(matched: u64, next: u64, state: ProgressState) -> Progress {
        let mut pr = Progress::new(LogIndex(next), 4, false);
        pr.matched = LogIndex(matched);
        pr.state = state;
        pr
    }

    /// Goal: rejections move `next` back correctly, and stale rejections are ignored.
    /// Method: table of (state, match, next, rejected, hint) -> (accepted, new next).
    #[test]
    fn maybe_decr_to() {
        use ProgressState::*;
        let cases: &[(ProgressState, u64, u64, u64, u64, bool, u64)] = &[
            // Replicate: a rejection at or below match is stale.
            (Replicate, 5, 10, 5, 5, false, 10),
            (Replicate, 5, 10, 4, 4, false, 10),
            // Replicate: a fresh rejection falls back to match + 1.
            (Replicate, 5, 10, 9, 9, true, 6),
            // Probe: only the answer to the outstanding probe counts.
            (Probe, 0, 10, 5, 5, false, 10),
            (Probe, 0, 10, 9, 9, true, 9),
            // Probe: the hint lets the leader skip back further.
            (Probe, 0, 10, 9, 3, true, 4),
            // Probe: never below match + 1.
            (Probe, 5, 10, 9, 1, true, 6),
            // Probe: a hint beyond the rejection does not move next forward.
            (Probe, 0, 10, 9, 20, true, 9),
            // Probe: next never reaches zero.
            (Probe, 0, 1, 0, 0, true, 1),
        ];
        for (i, (state, matched, next, rejected, hint, ok, want_next)) in cases.iter().enumerate() {
            let mut pr = progress(*matched, *next, *state);
            let got = pr.maybe_decr_to(LogIndex(*rejected), LogIndex(*hint));
            assert_eq!(got, *ok, "case {i}");
            assert_eq!(pr.next, LogIndex(*want_next), "case {i}");
        }
    }

    /// Goal: updates only grow the match, and always keep next past it.
    #[test]
    fn maybe_update() {
        let cases: &[(u64, u64, u64, bool, u64, u64)] = &[
            (5, 10, 4, false, 5, 10),
            (5, 10, 5, false, 5, 10),
            (5, 10, 6, true, 6, 10),
            (5, 10, 12, true, 12, 13),
        ];
        for (i, (matched, next, update, ok, want_match, want_next)) in cases.iter().enumerate() {
            let mut pr = progress(*matched, *next, ProgressState::Probe);
            assert_eq!(pr.maybe_update(LogIndex(*update)), *ok, "case {i}");
            assert_eq!(pr.matched, LogIndex(*want_match), "case {i}");
            assert_eq!(pr.next, LogIndex(*want_next), "case {i}");
        }
    }

    /// Goal: each state pauses for its own reason.
    #[test]
    fn is_paused() {
        let mut pr = progress(0, 1, ProgressState::Probe);
        assert!(!pr.is_paused());
        pr.sent_entries(LogIndex(1), 1);
        assert!(pr.is_paused(), "a probe waits for its answer");
        pr.maybe_update(LogIndex(1));
        assert!(!pr.is_paused(), "an answer unpauses the probe");
        pr.become_replicate();
        for last in 2..6 {
            assert!(!pr.is_paused());
            pr.sent_entries(LogIndex(last), 1);
        }
        assert!(pr.is_paused(), "a full window pauses");
        assert_eq!(pr.next, LogIndex(6));
        pr.become_snapshot(LogIndex(20));
        assert!(pr.is_paused(), "a member waiting for a snapshot is paused");
        pr.become_probe();
        assert_eq!(pr.next, LogIndex(21), "probing resumes after the snapshot");
    }
}
