//! A linearizability checker for single-register histories, run once per key.
//!
//! The search is the one of Wing and Gong, with Lowe's improvements as used by Porcupine: walk a
//! list of call and return events in time order; at a call, try to linearize that operation now
//! (if the register's model accepts it with the result the client saw), remember the pair
//! (set of linearized operations, register state) so that no configuration is explored twice, and
//! backtrack when a return event is reached whose operation has not been linearized.
//!
//! Indeterminate operations have no return event (they "return at infinity"): they may be
//! linearized at any point after their call or never. Because a register's future is not observed
//! after the last determinate return, the search succeeds as soon as every determinate operation
//! is linearized.
//!
//! Linearizability is compositional (Herlihy and Wing), so checking each key separately is the same
//! as checking the whole store.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use crate::history::{Instant, OpKind, OpResult, Operation};
use crate::kv::{Key, Value};

/// The answer of the checker for one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No linearization exists. The string describes the operations involved.
    NotLinearizable(String),
    /// The search gave up after its step budget; neither verdict is proven.
    Unknown,
}

/// The register model: given the state and an operation with the result the client saw, whether
/// the operation is legal now and the state after it.
fn step(state: Option<Value>, kind: OpKind, result: OpResult) -> Option<Option<Value>> {
    match (kind, result) {
        (OpKind::Put { value }, OpResult::PutOk | OpResult::Indeterminate) => Some(Some(value)),
        (OpKind::Get, OpResult::GetOk(seen)) => (seen == state).then_some(state),
        (OpKind::Get, OpResult::Indeterminate) => Some(state),
        (OpKind::Cas { expected, value }, OpResult::CasOk(done)) => {
            let would = state == expected;
            (would == done).then_some(if done { Some(value) } else { state })
        }
        (OpKind::Cas { expected, value }, OpResult::Indeterminate) => Some(if state == expected {
            Some(value)
        } else {
            state
        }),
        _ => None,
    }
}

#[derive(Clone, Copy, Debug)]
struct Event {
    op: usize,
    is_call: bool,
    prev: usize,
    next: usize,
}

/// A doubly linked list of events over a vector, with a sentinel at index 0.
struct EventList {
    nodes: Vec<Event>,
    /// For each operation, the index of its call event and of its return event (if any).
    call_of: Vec<usize>,
    return_of: Vec<Option<usize>>,
    returns_left: usize,
}

impl EventList {
    fn new(ops: &[&Operation]) -> EventList {
        let mut timeline: Vec<(Instant, bool, usize)> = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            timeline.push((op.invoked, true, i));
            if op.is_determinate() {
                timeline.push((op.completed, false, i));
            }
        }
        timeline.sort_by_key(|&(at, is_call, op)| (at, !is_call, op));
        let sentinel = Event {
            op: usize::MAX,
            is_call: false,
            prev: 0,
            next: 0,
        };
        let mut list = EventList {
            nodes: vec![sentinel],
            call_of: vec![0; ops.len()],
            return_of: vec![None; ops.len()],
            returns_left: 0,
        };
        for (_, is_call, op) in timeline {
            let index = list.nodes.len();
            let prev = index - 1;
            list.nodes.push(Event {
                op,
                is_call,
                prev,
                next: 0,
            });
            list.nodes[prev].next = index;
            if is_call {
                list.call_of[op] = index;
            } else {
                list.return_of[op] = Some(index);
                list.returns_left += 1;
            }
        }
        let last = list.nodes.len() - 1;
        list.nodes[last].next = 0;
        list.nodes[0].prev = last;
        list
    }

    fn unlink(&mut self, index: usize) {
        let Event { prev, next, .. } = self.nodes[index];
        self.nodes[prev].next = next;
        self.nodes[next].prev = prev;
    }

    fn relink(&mut self, index: usize) {
        let Event { prev, next, .. } = self.nodes[index];
        self.nodes[prev].next = index;
        self.nodes[next].prev = index;
    }

    /// Removes an operation's call and return events (linearizing it).
    fn lift(&mut self, op: usize) {
        self.unlink(self.call_of[op]);
        if let Some(r) = self.return_of[op] {
            self.unlink(r);
            self.returns_left -= 1;
        }
    }

    /// Puts them back, in the reverse order of `lift` so that the links are restored exactly.
    fn unlift(&mut self, op: usize) {
        if let Some(r) = self.return_of[op] {
            self.relink(r);
            self.returns_left += 1;
        }
        self.relink(self.call_of[op]);
    }
}

/// A set of operation numbers as a bit vector (hashable, for the memo table).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct BitSet(Vec<u64>);

impl BitSet {
    fn new(len: usize) -> BitSet {
        BitSet(vec![0; len.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// The value an indeterminate write nobody observed stands for: no operation can tell two such
/// writes apart (values are unique, so no read returns one and no compare-and-set expects one),
/// so they all write this one value, which no real write uses.
const JUNK: Value = Value::MAX;

/// Every value some determinate operation saw: read results and the expected values of
/// successful compare-and-sets.
fn observed_values(ops: &[&Operation]) -> HashSet<Value> {
    let mut observed = HashSet::new();
    for o in ops {
        if let OpResult::GetOk(Some(v)) = o.result {
            observed.insert(v);
        }
        if let (
            OpKind::Cas {
                expected: Some(v), ..
            },
            OpResult::CasOk(true),
        ) = (o.kind, o.result)
        {
            observed.insert(v);
        }
    }
    observed
}

/// An operation as the search sees it: unobserved indeterminate writes write [`JUNK`].
fn search_kind(op: &Operation, observed: &HashSet<Value>) -> (OpKind, bool) {
    if op.is_determinate() {
        return (op.kind, false);
    }
    match op.kind {
        OpKind::Put { value } if !observed.contains(&value) => (OpKind::Put { value: JUNK }, true),
        OpKind::Cas { expected, value } if !observed.contains(&value) => (
            OpKind::Cas {
                expected,
                value: JUNK,
            },
            false,
        ),
        kind => (kind, false),
    }
}

/// Checks the operations on one key. `steps_max` bounds the search.
///
/// Besides the memo table, one symmetry is used: unobserved indeterminate puts ("junk puts")
/// that have all been invoked are interchangeable (same effect, none has a return event), so at
/// any point only the first of them in the list is tried. This turns the 2^k subsets of k
/// pending junk puts into k + 1 prefixes.
pub fn check_register(ops: &[&Operation], steps_max: u64) -> Verdict {
    let observed = observed_values(ops);
    let kinds: Vec<(OpKind, bool)> = ops.iter().map(|o| search_kind(o, &observed)).collect();
    let mut list = EventList::new(ops);
    // Call events of the junk puts not linearized yet, by list position.
    let mut junk_puts: BTreeSet<usize> = (0..ops.len())
        .filter(|&i| kinds[i].1)
        .map(|i| list.call_of[i])
        .collect();
    let mut linearized = BitSet::new(ops.len());
    let mut state: Option<Value> = None;
    let mut memo: HashSet<(BitSet, Option<Value>)> = HashSet::new();
    // The stack of linearized operations with the state before each.
    let mut stack: Vec<(usize, Option<Value>)> = Vec::new();
    let mut cursor = list.nodes[0].next;
    let mut steps = 0u64;
    // The deepest prefix reached, to explain a failure.
    let mut deepest: Vec<usize> = Vec::new();
    let mut deepest_stuck = usize::MAX;
    while list.returns_left > 0 {
        steps += 1;
        if steps > steps_max {
            return Verdict::Unknown;
        }
        // Invariant: while a determinate return is left, the cursor has not run off the list.
        assert!(cursor != 0, "cursor ran past every return event");
        let event = list.nodes[cursor];
        if event.is_call {
            let (kind, is_junk_put) = kinds[event.op];
            if is_junk_put && junk_puts.first().is_some_and(|&first| first < cursor) {
                // An earlier junk put is available here and does exactly the same.
                cursor = event.next;
                continue;
            }
            if let Some(next_state) = step(state, kind, ops[event.op].result) {
                linearized.set(event.op);
                if memo.insert((linearized.clone(), next_state)) {
                    stack.push((event.op, state));
                    state = next_state;
                    list.lift(event.op);
                    if is_junk_put {
                        junk_puts.remove(&cursor);
                    }
                    cursor = list.nodes[0].next;
                    continue;
                }
                linearized.clear(event.op);
            }
            cursor = event.next;
        } else {
            // A return whose operation is not linearized yet: this branch is dead.
            if deepest_stuck == usize::MAX || stack.len() > deepest.len() {
                deepest = stack.iter().map(|&(op, _)| op).collect();
                deepest_stuck = event.op;
            }
            let Some((op, previous)) = stack.pop() else {
                return Verdict::NotLinearizable(explain(ops, &deepest, deepest_stuck));
            };
            state = previous;
            linearized.clear(op);
            list.unlift(op);
            if kinds[op].1 {
                junk_puts.insert(list.call_of[op]);
            }
            cursor = list.nodes[list.call_of[op]].next;
        }
    }
    Verdict::Linearizable
}

fn explain(ops: &[&Operation], deepest: &[usize], stuck: usize) -> String {
    let show = |o: &Operation| {
        format!(
            "op {} client {} {:?} -> {:?} [{:?}..{:?}] rev {}",
            o.id, o.client, o.kind, o.result, o.invoked, o.completed, o.revision
        )
    };
    let mut text = format!("key {} has no linearization; ", ops[stuck].key);
    text.push_str(&format!(
        "longest linearizable prefix ({} ops):",
        deepest.len()
    ));
    let tail = deepest.len().saturating_sub(4);
    for &i in &deepest[tail..] {
        text.push_str(&format!(" | {}", show(ops[i])));
    }
    text.push_str(&format!(" || cannot place: {}", show(ops[stuck])));
    text
}

/// Indeterminate reads observe nothing and indeterminate writes whose value nobody observed can be
/// taken as never having happened; both are dropped before the search to keep it small. The second
/// is only sound when no compare-and-set on the key failed: a failed compare-and-set may owe its
/// failure to an unobserved write, so then every write is kept.
fn prune(ops: Vec<&Operation>) -> Vec<&Operation> {
    let any_failed_cas = ops.iter().any(|o| o.result == OpResult::CasOk(false));
    let mut observed: HashSet<Value> = HashSet::new();
    for o in &ops {
        if let OpResult::GetOk(Some(v)) = o.result {
            observed.insert(v);
        }
        if let (
            OpKind::Cas {
                expected: Some(v), ..
            },
            OpResult::CasOk(true),
        ) = (o.kind, o.result)
        {
            observed.insert(v);
        }
    }
    ops.into_iter()
        .filter(|o| {
            if o.is_determinate() {
                return true;
            }
            match o.kind {
                OpKind::Get => false,
                OpKind::Put { value } | OpKind::Cas { value, .. } => {
                    any_failed_cas || observed.contains(&value)
                }
            }
        })
        .collect()
}

/// Checks a whole history, key by key. Returns the verdict for each key that is not linearizable
/// or unknown (an empty map means linearizable).
pub fn check_history(ops: &[Operation], steps_max: u64) -> BTreeMap<Key, Verdict> {
    let mut by_key: BTreeMap<Key, Vec<&Operation>> = BTreeMap::new();
    for op in ops {
        by_key.entry(op.key).or_default().push(op);
    }
    let mut bad = BTreeMap::new();
    for (key, key_ops) in by_key {
        let key_ops = prune(key_ops);
        match check_register(&key_ops, steps_max) {
            Verdict::Linearizable => {}
            other => {
                bad.insert(key, other);
            }
        }
    }
    bad
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEPS: u64 = 1_000_000;

    /// A compact way to write an operation: id, client, kind, result, invoked, completed.
    fn op(id: u64, kind: OpKind, result: OpResult, invoked: u64, completed: u64) -> Operation {
        Operation {
            id,
            client: id as u32,
            key: 0,
            kind,
            invoked: (invoked, id),
            completed: (completed, id),
            result,
            revision: 0,
        }
    }
    fn put(id: u64, v: Value, a: u64, b: u64) -> Operation {
        op(id, OpKind::Put { value: v }, OpResult::PutOk, a, b)
    }
    fn get(id: u64, seen: Option<Value>, a: u64, b: u64) -> Operation {
        op(id, OpKind::Get, OpResult::GetOk(seen), a, b)
    }
    fn cas(id: u64, e: Option<Value>, v: Value, ok: bool, a: u64, b: u64) -> Operation {
        op(
            id,
            OpKind::Cas {
                expected: e,
                value: v,
            },
            OpResult::CasOk(ok),
            a,
            b,
        )
    }
    fn lost(id: u64, kind: OpKind, a: u64) -> Operation {
        op(id, kind, OpResult::Indeterminate, a, a + 1000)
    }
    fn verdict(ops: &[Operation]) -> Verdict {
        let refs: Vec<&Operation> = ops.iter().collect();
        check_register(&prune(refs), STEPS)
    }

    #[test]
    fn sequential_and_concurrent_histories_that_are_linearizable() {
        // Goal: accept histories that have a linearization. Method: hand-made cases, each with a
        // linearization we can name (written beside it).
        let cases: Vec<Vec<Operation>> = vec![
            // empty register read, then a write, then a read of it
            vec![get(1, None, 0, 1), put(2, 10, 2, 3), get(3, Some(10), 4, 5)],
            // a read concurrent with a write may see either value: order r, w or w, r
            vec![
                put(1, 10, 0, 10),
                get(2, None, 1, 2),
                get(3, Some(10), 3, 4),
            ],
            // two concurrent writes, reads agree on the order w2, w1
            vec![
                put(1, 10, 0, 10),
                put(2, 20, 0, 10),
                get(3, Some(20), 1, 12),
                get(4, Some(10), 11, 13),
            ],
            // compare-and-set chain
            vec![
                cas(1, None, 10, true, 0, 1),
                cas(2, None, 20, false, 2, 3),
                cas(3, Some(10), 30, true, 4, 5),
                get(4, Some(30), 6, 7),
            ],
        ];
        for (i, case) in cases.iter().enumerate() {
            assert_eq!(verdict(case), Verdict::Linearizable, "case {i}");
        }
    }

    #[test]
    fn stale_read_after_a_completed_write_is_rejected() {
        // Goal: the checker can fail. Method: a read that starts after a write of 10 completed
        // and returns the older value must be rejected (the classic stale read).
        let h = vec![put(1, 5, 0, 1), put(2, 10, 2, 3), get(3, Some(5), 4, 5)];
        match verdict(&h) {
            Verdict::NotLinearizable(why) => assert!(why.contains("op 3"), "{why}"),
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn non_linearizable_histories_are_rejected() {
        // Goal: reject histories without a linearization. Method: hand-made cases.
        let cases: Vec<Vec<Operation>> = vec![
            // a read of a value never written
            vec![put(1, 10, 0, 1), get(2, Some(99), 2, 3)],
            // reads that disagree on the order of two sequential writes
            vec![
                put(1, 10, 0, 1),
                put(2, 20, 2, 3),
                get(3, Some(20), 4, 5),
                get(4, Some(10), 6, 7),
            ],
            // two compare-and-sets from the same expected value both succeed
            vec![
                put(1, 10, 0, 1),
                cas(2, Some(10), 20, true, 2, 5),
                cas(3, Some(10), 30, true, 2, 5),
            ],
            // a failed compare-and-set although the value was the expected one
            vec![
                put(1, 10, 0, 1),
                cas(2, Some(10), 20, false, 2, 3),
                get(3, Some(10), 4, 5),
            ],
            // a read going back to the empty register
            vec![put(1, 10, 0, 1), get(2, Some(10), 2, 3), get(3, None, 4, 5)],
        ];
        for (i, case) in cases.iter().enumerate() {
            assert!(
                matches!(verdict(case), Verdict::NotLinearizable(_)),
                "case {i} should be rejected"
            );
        }
    }

    #[test]
    fn indeterminate_operations_may_or_may_not_take_effect() {
        // Goal: an indeterminate write may be seen later, or never; an indeterminate
        // compare-and-set too. Method: both outcomes accepted; a value from nowhere still rejected.
        let seen = vec![
            lost(1, OpKind::Put { value: 10 }, 0),
            get(2, Some(10), 5000, 5001),
        ];
        assert_eq!(verdict(&seen), Verdict::Linearizable);
        let unseen = vec![
            lost(1, OpKind::Put { value: 10 }, 0),
            get(2, None, 5000, 5001),
        ];
        assert_eq!(verdict(&unseen), Verdict::Linearizable);
        let cas_seen = vec![
            put(1, 5, 0, 1),
            lost(
                2,
                OpKind::Cas {
                    expected: Some(5),
                    value: 6,
                },
                2,
            ),
            get(3, Some(6), 10, 11),
            cas(4, Some(5), 7, false, 12, 13),
        ];
        assert_eq!(verdict(&cas_seen), Verdict::Linearizable);
        // Seen before it was invoked: impossible.
        let early = vec![
            get(1, Some(10), 0, 1),
            lost(2, OpKind::Put { value: 10 }, 2),
        ];
        assert!(matches!(verdict(&early), Verdict::NotLinearizable(_)));
        // An indeterminate write cannot take effect twice: once overwritten it stays gone.
        let twice = vec![
            lost(1, OpKind::Put { value: 10 }, 0),
            get(2, Some(10), 2, 3),
            put(3, 20, 4, 5),
            get(4, Some(10), 6, 7),
        ];
        assert!(matches!(verdict(&twice), Verdict::NotLinearizable(_)));
    }

    #[test]
    fn failed_cas_keeps_unobserved_indeterminate_writes() {
        // Goal: pruning stays sound. Method: a failed compare-and-set is only explained by an
        // indeterminate write nobody read; dropping that write would reject a good history.
        let h = vec![
            put(1, 5, 0, 1),
            lost(2, OpKind::Put { value: 6 }, 2),
            cas(3, Some(5), 7, false, 10, 11),
        ];
        assert_eq!(verdict(&h), Verdict::Linearizable);
    }

    #[test]
    fn many_concurrent_operations_finish_within_budget() {
        // Goal: memoisation keeps wide concurrency tractable. Method: 12 overlapping writes and a
        // read after them; refuting the second read needs every order of the writes, 12! of them
        // without the memo table, 2^12 * 13 configurations with it.
        let mut h = Vec::new();
        for i in 0..12u64 {
            h.push(put(i + 1, 100 + i, 0, 1000));
        }
        h.push(get(100, Some(111), 1001, 1002));
        assert_eq!(verdict(&h), Verdict::Linearizable);
        h.push(get(101, Some(100), 1003, 1004));
        assert!(matches!(verdict(&h), Verdict::NotLinearizable(_)));
    }

    #[test]
    fn many_unobserved_indeterminate_puts_stay_tractable() {
        // Goal: the junk-put symmetry keeps histories with many lost writes and failed
        // compare-and-sets (which forbid pruning the lost writes) within a small budget, and
        // still rejects a bad read among them. Method: 30 indeterminate puts, each followed by a
        // failed compare-and-set, a completed put of 5 and reads of it; 2^30 subsets without the
        // symmetry.
        let mut h = vec![put(1, 5, 0, 1)];
        for i in 0..30u64 {
            let at = 10 + 10 * i;
            h.push(lost(100 + i, OpKind::Put { value: 1000 + i }, at));
            h.push(cas(200 + i, Some(77), 2000 + i, false, at + 1, at + 2));
        }
        h.push(put(300, 6, 400, 401));
        h.push(get(301, Some(6), 402, 403));
        let refs: Vec<&Operation> = h.iter().collect();
        assert_eq!(
            check_register(&prune(refs.clone()), 20_000),
            Verdict::Linearizable
        );
        h.push(get(302, Some(5), 404, 405));
        let refs: Vec<&Operation> = h.iter().collect();
        assert!(matches!(
            check_register(&prune(refs), 20_000),
            Verdict::NotLinearizable(_)
        ));
    }

    #[test]
    fn history_is_checked_key_by_key() {
        // Goal: check_history splits by key. Method: a stale read on key 1 only.
        let mut h = vec![put(1, 5, 0, 1), put(2, 10, 2, 3), get(3, Some(5), 4, 5)];
        h[2].key = 1;
        h[1].key = 1;
        let bad = check_history(&h, STEPS);
        assert_eq!(bad.len(), 1);
        assert!(bad.contains_key(&1));
        h[2].result = OpResult::GetOk(Some(10));
        assert!(check_history(&h, STEPS).is_empty());
    }
}
