//! The client history: every operation with its invocation and completion instants and what the
//! client saw.
//!
//! Instants are `(time, sequence)` pairs taken from the event queue, so they are totally ordered
//! and no two events share one. An operation whose outcome the client never learned (a time-out)
//! is *indeterminate*: it may or may not have taken effect.

use crate::kv::{Key, Value};
use crate::queue::Time;

/// A totally ordered point in simulated time: the time and the number of the event.
pub type Instant = (Time, u64);

/// What a client asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    Put {
        value: Value,
    },
    Get,
    Cas {
        expected: Option<Value>,
        value: Value,
    },
}

/// What the client learned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpResult {
    /// A put that was applied.
    PutOk,
    /// A read and the value it returned.
    GetOk(Option<Value>),
    /// A compare-and-set and whether it took effect.
    CasOk(bool),
    /// The client never learned the outcome: the operation may or may not have happened.
    Indeterminate,
}

/// One operation of one client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    pub id: u64,
    pub client: u32,
    pub key: Key,
    pub kind: OpKind,
    pub invoked: Instant,
    /// For an indeterminate operation, the instant the client gave up.
    pub completed: Instant,
    pub result: OpResult,
    /// The revision (applied log index) the answer came with; zero when indeterminate.
    pub revision: u64,
}

impl Operation {
    /// Whether the client learned the outcome.
    pub fn is_determinate(&self) -> bool {
        self.result != OpResult::Indeterminate
    }
}

/// The history of one run.
#[derive(Clone, Debug, Default)]
pub struct History {
    pub ops: Vec<Operation>,
}

impl History {
    /// Records a finished (or abandoned) operation.
    pub fn record(&mut self, op: Operation) {
        // Invariant: an operation completes after it starts.
        assert!(
            op.completed > op.invoked,
            "operation {} completes before it starts",
            op.id
        );
        self.ops.push(op);
    }

    /// Checks that revisions never go backwards in real time: an operation invoked after another
    /// one completed must answer with a revision at least as high. Returns a description of the
    /// first violation.
    pub fn check_revisions_monotonic(&self) -> Result<(), String> {
        // Revision zero means "unknown" (an indeterminate operation, or a write answered from a
        // snapshot's outcome table); those take no part.
        let mut done: Vec<&Operation> = self
            .ops
            .iter()
            .filter(|o| o.is_determinate() && o.revision > 0)
            .collect();
        done.sort_by_key(|o| o.completed);
        let mut by_invocation: Vec<&Operation> = done.clone();
        by_invocation.sort_by_key(|o| o.invoked);
        // Sweep: for each operation in invocation order, the highest revision among operations
        // completed strictly before its invocation.
        let mut max_before: Option<&Operation> = None;
        let mut next_done = 0usize;
        for op in by_invocation {
            while next_done < done.len() && done[next_done].completed < op.invoked {
                let candidate = done[next_done];
                if max_before.is_none_or(|m| candidate.revision > m.revision) {
                    max_before = Some(candidate);
                }
                next_done += 1;
            }
            if let Some(prior) = max_before {
                // Failed compare-and-sets also carry the revision they were applied at.
                if op.revision < prior.revision {
                    return Err(format!(
                        "revision went backwards: op {} (client {}, {:?}) completed at {:?} with \
                         revision {}, then op {} (client {}, {:?}) invoked at {:?} answered with \
                         revision {}",
                        prior.id,
                        prior.client,
                        prior.kind,
                        prior.completed,
                        prior.revision,
                        op.id,
                        op.client,
                        op.kind,
                        op.invoked,
                        op.revision
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(id: u64, invoked: u64, completed: u64, revision: u64) -> Operation {
        Operation {
            id,
            client: id as u32,
            key: 0,
            kind: OpKind::Get,
            invoked: (invoked, 0),
            completed: (completed, 0),
            result: OpResult::GetOk(None),
            revision,
        }
    }

    #[test]
    fn revisions_may_not_go_backwards_in_real_time() {
        // Goal: the monotonic-revision check accepts overlap and rejects a real-time regression.
        // Method: concurrent ops may answer in any order; a later op may not answer lower.
        let mut h = History::default();
        h.record(op(1, 0, 10, 5));
        h.record(op(2, 5, 15, 4)); // overlaps op 1: fine
        h.record(op(3, 20, 30, 5));
        assert!(h.check_revisions_monotonic().is_ok());
        h.record(op(4, 31, 40, 4)); // starts after op 3 completed with revision 5
        let err = h.check_revisions_monotonic().unwrap_err();
        assert!(err.contains("op 4"), "{err}");
    }
}
