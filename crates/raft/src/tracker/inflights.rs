//! The window of `Append` messages in flight to one follower.
//!
//! A leader in the Replicate state sends appends optimistically (pipelining). Each append is
//! remembered by the last index it carries; an acknowledgement frees every append up to the
//! acknowledged index. When the window is full the leader stops sending to that follower, which
//! bounds the memory and the network queue a slow follower can cost (flow control).

use std::collections::VecDeque;

use crate::types::LogIndex;

/// A bounded FIFO of the last indexes of in-flight appends.
///
/// Invariant: the indexes are strictly increasing, and there are at most `capacity` of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inflights {
    queue: VecDeque<LogIndex>,
    capacity: usize,
}

impl Inflights {
    /// An empty window of `capacity` messages. `capacity` must be at least one.
    pub fn new(capacity: usize) -> Self {
        assert!(capacity > 0, "inflight window capacity must be positive");
        Inflights {
            queue: VecDeque::new(),
            capacity,
        }
    }

    /// Records an append whose last entry is `last`. The window must not be full.
    pub fn add(&mut self, last: LogIndex) {
        assert!(!self.full(), "inflight window is full");
        if let Some(back) = self.queue.back() {
            assert!(
                *back < last,
                "inflight indexes must increase: {back} then {last}"
            );
        }
        self.queue.push_back(last);
    }

    /// Frees every append whose last index is at or below `index`.
    pub fn free_to(&mut self, index: LogIndex) {
        while self.queue.front().is_some_and(|front| *front <= index) {
            self.queue.pop_front();
        }
    }

    /// Frees the oldest append (used when a heartbeat response shows the follower is alive while
    /// the window is full, so that one probe can get through).
    pub fn free_first_one(&mut self) {
        self.queue.pop_front();
    }

    pub fn full(&self) -> bool {
        self.queue.len() >= self.capacity
    }

    pub fn count(&self) -> usize {
        self.queue.len()
    }

    pub fn reset(&mut self) {
        self.queue.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: the window fills at its capacity and frees by acknowledged index. Method: a table
    /// of operations with the expected count and fullness after each.
    #[test]
    fn add_and_free() {
        enum Op {
            Add(u64),
            FreeTo(u64),
            FreeFirst,
            Reset,
        }
        use Op::*;
        let steps: &[(Op, usize, bool)] = &[
            (Add(1), 1, false),
            (Add(3), 2, false),
            (Add(5), 3, true),
            (FreeTo(0), 3, true),
            (FreeTo(3), 1, false),
            (Add(9), 2, false),
            (FreeTo(4), 2, false),
            (FreeFirst, 1, false),
            (Add(10), 2, false),
            (FreeTo(100), 0, false),
            (Add(11), 1, false),
            (Reset, 0, false),
        ];
        let mut inflights = Inflights::new(3);
        for (i, (op, count, full)) in steps.iter().enumerate() {
            match op {
                Add(n) => inflights.add(LogIndex(*n)),
                FreeTo(n) => inflights.free_to(LogIndex(*n)),
                FreeFirst => inflights.free_first_one(),
                Reset => inflights.reset(),
            }
            assert_eq!(inflights.count(), *count, "step {i}");
            assert_eq!(inflights.full(), *full, "step {i}");
        }
    }

    /// Goal: adding to a full window is a bug the window refuses.
    #[test]
    #[should_panic(expected = "full")]
    fn add_to_full_panics() {
        let mut inflights = Inflights::new(1);
        inflights.add(LogIndex(1));
        inflights.add(LogIndex(2));
    }

    /// Goal: indexes must increase.
    #[test]
    #[should_panic(expected = "increase")]
    fn add_out_of_order_panics() {
        let mut inflights = Inflights::new(4);
        inflights.add(LogIndex(5));
        inflights.add(LogIndex(5));
    }
}
