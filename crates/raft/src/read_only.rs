//! Linearizable reads without a log write (§6.4 of the Raft thesis).
//!
//! A leader confirms that it is still the leader with *rounds* of heartbeats. Each broadcast
//! starts a new round, numbered by a counter that only grows; the heartbeat's context carries
//! the round number and followers echo it. A read waiting on round `r` is answered once a quorum
//! has acknowledged some round `>= r` (ReadIndex, §6.4).
//!
//! The same rounds give the lease (§6.4.1): when a quorum acknowledged a round sent at tick `t`,
//! none of those followers will grant a vote before `t + election_ticks` (they all heard from the
//! leader after `t`), so the leader may serve reads alone until `t + election_ticks -
//! lease_drift_ticks`. Measuring from the send tick rather than the receive tick keeps the lease
//! safe under any message delay.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::types::{LogIndex, NodeId};

/// How many round start ticks are remembered. Acknowledgements of older rounds still confirm
/// reads but no longer extend the lease, which only makes the lease shorter (safe).
pub const ROUND_TICKS_MAX: usize = 1024;

/// A read waiting for its confirmation round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingRead {
    pub round: u64,
    pub index: LogIndex,
    pub context: Bytes,
    /// Who asked: the leader itself, or a follower that forwarded it.
    pub from: NodeId,
}

/// The read state of a leader.
#[derive(Clone, Debug, Default)]
pub struct ReadOnly {
    /// The last round started. Never decreases, across terms too.
    pub round: u64,
    round_ticks: VecDeque<(u64, u64)>,
    pub pending: VecDeque<PendingRead>,
}

impl ReadOnly {
    /// Starts a new round at tick `now` and returns its number.
    pub fn next_round(&mut self, now: u64) -> u64 {
        self.round += 1;
        if self.round_ticks.len() >= ROUND_TICKS_MAX {
            self.round_ticks.pop_front();
        }
        self.round_ticks.push_back((self.round, now));
        self.round
    }

    /// The tick at which `round` started, if still remembered.
    pub fn round_tick(&self, round: u64) -> Option<u64> {
        let (first, _) = *self.round_ticks.front()?;
        let pos = round.checked_sub(first)? as usize;
        let (r, tick) = *self.round_ticks.get(pos)?;
        debug_assert_eq!(r, round);
        Some(tick)
    }

    /// Removes and returns the reads confirmed by a quorum acknowledgement of `round`.
    pub fn confirmed(&mut self, round: u64) -> Vec<PendingRead> {
        let mut out = Vec::new();
        while self.pending.front().is_some_and(|r| r.round <= round) {
            out.extend(self.pending.pop_front());
        }
        out
    }

    /// Drops every pending read (the node lost leadership; callers retry).
    pub fn reset(&mut self) {
        self.pending.clear();
        self.round_ticks.clear();
    }
}

/// Encodes a round number as a heartbeat context.
pub fn encode_round(round: u64) -> Bytes {
    Bytes::copy_from_slice(&round.to_be_bytes())
}

/// Decodes a heartbeat context; anything but eight bytes is not a round.
pub fn decode_round(context: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = context.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: rounds map to their start ticks, reads are confirmed in order by round, and
    /// malformed contexts are not rounds.
    #[test]
    fn rounds_and_confirmation() {
        let mut ro = ReadOnly::default();
        assert_eq!(ro.next_round(5), 1);
        assert_eq!(ro.next_round(7), 2);
        assert_eq!(ro.round_tick(1), Some(5));
        assert_eq!(ro.round_tick(2), Some(7));
        assert_eq!(ro.round_tick(3), None);
        for round in [1, 2, 2] {
            ro.pending.push_back(PendingRead {
                round,
                index: LogIndex(round),
                context: Bytes::new(),
                from: NodeId(1),
            });
        }
        assert!(ro.confirmed(0).is_empty());
        assert_eq!(ro.confirmed(1).len(), 1);
        assert_eq!(ro.confirmed(5).len(), 2);
        assert_eq!(decode_round(&encode_round(42)), Some(42));
        assert_eq!(decode_round(b"short"), None);
    }

    /// Goal: the tick memory is bounded and forgets the oldest rounds.
    #[test]
    fn round_ticks_are_bounded() {
        let mut ro = ReadOnly::default();
        for tick in 0..(ROUND_TICKS_MAX as u64 + 10) {
            ro.next_round(tick);
        }
        assert_eq!(ro.round_tick(1), None);
        assert_eq!(ro.round_tick(ro.round), Some(ROUND_TICKS_MAX as u64 + 9));
    }
}
