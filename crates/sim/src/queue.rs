//! Simulated time and the discrete-event queue.
//!
//! Time is a count of microseconds since the start of a run. Events fire in order of
//! `(time, sequence number)`: the sequence number is given at scheduling, so two events at the same
//! instant fire in the order they were scheduled, whatever they contain.

use std::collections::BTreeMap;

/// Simulated time in microseconds.
pub type Time = u64;

/// A queue of events of type `E`, ordered by `(time, sequence number)`.
#[derive(Debug)]
pub struct EventQueue<E> {
    events: BTreeMap<(Time, u64), E>,
    sequence_next: u64,
    now: Time,
}

impl<E> Default for EventQueue<E> {
    fn default() -> Self {
        EventQueue {
            events: BTreeMap::new(),
            sequence_next: 0,
            now: 0,
        }
    }
}

impl<E> EventQueue<E> {
    /// The time of the event last popped.
    pub fn now(&self) -> Time {
        self.now
    }

    /// Schedules `event` at absolute time `at`, which may not lie in the past.
    pub fn schedule_at(&mut self, at: Time, event: E) {
        assert!(
            at >= self.now,
            "event scheduled in the past: {at} < {}",
            self.now
        );
        let seq = self.sequence_next;
        self.sequence_next += 1;
        self.events.insert((at, seq), event);
    }

    /// Schedules `event` `delay` microseconds from now.
    pub fn schedule_in(&mut self, delay: Time, event: E) {
        self.schedule_at(self.now + delay, event);
    }

    /// Removes and returns the earliest event if it fires no later than `until`, advancing time.
    pub fn pop_until(&mut self, until: Time) -> Option<(Time, E)> {
        let (&(at, _), _) = self.events.first_key_value()?;
        if at > until {
            return None;
        }
        let ((at, _), event) = self.events.pop_first()?;
        // Invariant: time never goes backwards.
        assert!(at >= self.now);
        self.now = at;
        Some((at, event))
    }

    /// Advances time to `at` with no event (used at phase boundaries).
    pub fn advance_to(&mut self, at: Time) {
        assert!(at >= self.now);
        self.now = at;
    }

    /// How many events are waiting.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether no event is waiting.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_fire_by_time_then_by_scheduling_order() {
        // Goal: the order is (time, sequence). Method: schedule out of order, with ties.
        let mut q = EventQueue::default();
        q.schedule_at(20, "c");
        q.schedule_at(10, "a");
        q.schedule_at(20, "d");
        q.schedule_at(10, "b");
        let mut out = Vec::new();
        while let Some((t, e)) = q.pop_until(u64::MAX) {
            out.push((t, e));
        }
        assert_eq!(out, vec![(10, "a"), (10, "b"), (20, "c"), (20, "d")]);
        assert_eq!(q.now(), 20);
    }

    #[test]
    fn pop_until_leaves_later_events() {
        // Goal: a phase boundary does not consume later events. Method: pop up to a bound.
        let mut q = EventQueue::default();
        q.schedule_at(5, 1);
        q.schedule_at(15, 2);
        assert_eq!(q.pop_until(10), Some((5, 1)));
        assert_eq!(q.pop_until(10), None);
        assert_eq!(q.len(), 1);
        q.advance_to(10);
        q.schedule_in(1, 3);
        assert_eq!(q.pop_until(100), Some((11, 3)));
    }

    #[test]
    #[should_panic(expected = "in the past")]
    fn scheduling_in_the_past_is_refused() {
        // Goal: causality is asserted. Method: schedule behind the current time.
        let mut q = EventQueue::default();
        q.schedule_at(10, ());
        q.pop_until(100);
        q.schedule_at(5, ());
    }
}
