//! Property test: the MVCC store against a naive reference model.
//!
//! Goal: on random sequences of puts, deletes, transactions (nested one level), ranges (at
//! historical, compacted and future revisions) and compactions, the store gives exactly the
//! responses and errors of a model that keeps every version of every key in a
//! `BTreeMap<key, Vec<version>>` and answers each request by brute force. After the sequence,
//! every revision still readable, the event history, and the same after a restart, must match
//! the model too.
//!
//! Method: proptest generates operations over a small key space (so that keys collide, ranges
//! overlap and transactions hit duplicate keys); each is applied to both, and the results are
//! compared with `assert_eq!`. Any failure shrinks to a minimal sequence.

use std::collections::BTreeMap;

use bytes::Bytes;
use chorus_raft::LogIndex;
use chorus_storage::mvcc::*;
use proptest::prelude::*;

const KEYS: [&str; 6] = ["a", "ab", "b", "c", "d", "e"];

fn key(i: u8) -> Bytes {
    Bytes::from_static(KEYS[i as usize % KEYS.len()].as_bytes())
}

/// A range end: none (single key), "\0" (all keys from), or one of the keys.
fn range_end(i: u8) -> Bytes {
    match i % 8 {
        0 | 1 => Bytes::new(),
        2 => Bytes::from_static(b"\0"),
        n => key(n),
    }
}

#[derive(Clone, Debug)]
enum Op {
    Put {
        key: u8,
        value: u8,
        lease: u8,
        prev_kv: bool,
        ignore_value: bool,
        ignore_lease: bool,
    },
    Delete {
        key: u8,
        end: u8,
        prev_kv: bool,
    },
    Range {
        key: u8,
        end: u8,
        back: u8,
        limit: u8,
        count_only: bool,
        keys_only: bool,
        /// Sort order and target, and which revision filter (if any), as small numbers.
        shape: (u8, u8, u8, u8),
    },
    Txn {
        compare: (u8, u8, u8, u8),
        success: Vec<TxnOp>,
        failure: Vec<TxnOp>,
    },
    Compact {
        back: u8,
    },
}

#[derive(Clone, Debug)]
enum TxnOp {
    Put {
        key: u8,
        value: u8,
    },
    Delete {
        key: u8,
        end: u8,
    },
    Range {
        key: u8,
        end: u8,
        back: u8,
    },
    /// A nested transaction (of leaf operations only).
    Nested {
        compare: (u8, u8, u8, u8),
        success: Vec<TxnOp>,
        failure: Vec<TxnOp>,
    },
}

fn leaf_txn_op() -> impl Strategy<Value = TxnOp> {
    prop_oneof![
        (any::<u8>(), any::<u8>()).prop_map(|(key, value)| TxnOp::Put { key, value }),
        (any::<u8>(), any::<u8>()).prop_map(|(key, end)| TxnOp::Delete { key, end }),
        (any::<u8>(), any::<u8>(), 0u8..4).prop_map(|(key, end, back)| TxnOp::Range {
            key,
            end,
            back
        }),
    ]
}

fn txn_op() -> impl Strategy<Value = TxnOp> {
    prop_oneof![
        4 => leaf_txn_op(),
        1 => (
            (any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>()),
            prop::collection::vec(leaf_txn_op(), 0..3),
            prop::collection::vec(leaf_txn_op(), 0..3),
        )
            .prop_map(|(compare, success, failure)| TxnOp::Nested { compare, success, failure }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<u8>(), any::<u8>(), 0u8..3, any::<bool>(), prop::bool::weighted(0.1), prop::bool::weighted(0.1))
            .prop_map(|(key, value, lease, prev_kv, ignore_value, ignore_lease)| Op::Put {
                key, value, lease, prev_kv, ignore_value, ignore_lease
            }),
        1 => (any::<u8>(), any::<u8>(), any::<bool>())
            .prop_map(|(key, end, prev_kv)| Op::Delete { key, end, prev_kv }),
        2 => (
            (any::<u8>(), any::<u8>(), 0u8..12, 0u8..4, prop::bool::weighted(0.1), prop::bool::weighted(0.2)),
            (0u8..3, 0u8..5, 0u8..8, 0u8..12),
        )
            .prop_map(|((key, end, back, limit, count_only, keys_only), shape)| Op::Range {
                key, end, back, limit, count_only, keys_only, shape
            }),
        2 => (
            (any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>()),
            prop::collection::vec(txn_op(), 0..4),
            prop::collection::vec(txn_op(), 0..3),
        )
            .prop_map(|(compare, success, failure)| Op::Txn { compare, success, failure }),
        1 => (0u8..8).prop_map(|back| Op::Compact { back }),
    ]
}

/// The keys a branch puts and the (key, range_end) spans it deletes.
type BranchWrites = (Vec<Bytes>, Vec<(Bytes, Bytes)>);

/// The reference model: every version of every key, and the log of changes in order.
#[derive(Default)]
struct Model {
    current: i64,
    compacted: i64,
    /// The revision of the last compaction applied, if any: etcd's compacted revision, which
    /// starts at -1, so that revision 0 may be compacted once.
    last_compaction: Option<i64>,
    versions: BTreeMap<Bytes, Vec<(i64, Option<KeyValue>)>>,
    log: Vec<(i64, Bytes, Option<KeyValue>)>,
}

fn in_span(k: &Bytes, key: &Bytes, end: &Bytes) -> bool {
    if end.is_empty() {
        k == key
    } else if end.as_ref() == b"\0" {
        k >= key
    } else {
        k >= key && k < end
    }
}

impl Model {
    fn new() -> Model {
        Model {
            current: 1,
            ..Model::default()
        }
    }

    fn get(&self, k: &Bytes, at: i64) -> Option<KeyValue> {
        let versions = self.versions.get(k)?;
        versions
            .iter()
            .rev()
            .find(|(rev, _)| *rev <= at)
            .and_then(|(_, kv)| kv.clone())
    }

    fn live(&self, key: &Bytes, end: &Bytes, at: i64) -> Vec<KeyValue> {
        self.versions
            .keys()
            .filter(|k| in_span(k, key, end))
            .filter_map(|k| self.get(k, at))
            .collect()
    }

    fn check_revision(&self, rev: i64, current: i64) -> Result<i64, String> {
        if rev > current {
            return Err("mvcc: required revision is a future revision".into());
        }
        let at = if rev <= 0 { current } else { rev };
        if at < self.compacted {
            return Err("mvcc: required revision has been compacted".into());
        }
        Ok(at)
    }

    fn range(&self, req: &RangeRequest, current: i64) -> Result<RangeResponse, String> {
        let at = self.check_revision(req.revision.get(), current)?;
        let mut kvs = self.live(&req.key, &req.range_end, at);
        let count = kvs.len() as i64;
        let (min_mod, max_mod) = (req.min_mod_revision.get(), req.max_mod_revision.get());
        let (min_create, max_create) =
            (req.min_create_revision.get(), req.max_create_revision.get());
        kvs.retain(|kv| {
            (min_mod == 0 || kv.mod_revision.get() >= min_mod)
                && (max_mod == 0 || kv.mod_revision.get() <= max_mod)
                && (min_create == 0 || kv.create_revision.get() >= min_create)
                && (max_create == 0 || kv.create_revision.get() <= max_create)
        });
        // etcd reads every key only when it must sort or filter; otherwise it reads one more key
        // than the limit, in key order, and then sorts those (with no order but a target other
        // than the key, it still sorts ascending: the first keys, not the smallest values).
        if req.sort_order == SortOrder::None
            && min_mod + max_mod + min_create + max_create == 0
            && req.limit > 0
        {
            kvs.truncate(req.limit as usize + 1);
        }
        // The live keys come in key order; a stable sort keeps it among ties.
        let field = |kv: &KeyValue| -> (i64, Bytes) {
            match req.sort_target {
                SortTarget::Key => (0, kv.key.clone()),
                SortTarget::Version => (kv.version, Bytes::new()),
                SortTarget::Create => (kv.create_revision.get(), Bytes::new()),
                SortTarget::Mod => (kv.mod_revision.get(), Bytes::new()),
                SortTarget::Value => (0, kv.value.clone()),
            }
        };
        match (req.sort_order, req.sort_target) {
            (SortOrder::Descend, _) => kvs.sort_by_key(|kv| std::cmp::Reverse(field(kv))),
            (_, SortTarget::Key) => {}
            _ => kvs.sort_by_key(field),
        }
        let mut more = false;
        if req.limit > 0 && kvs.len() > req.limit as usize {
            kvs.truncate(req.limit as usize);
            more = true;
        }
        if req.count_only {
            kvs.clear();
            more = false;
        }
        if req.keys_only {
            for kv in &mut kvs {
                kv.value = Bytes::new();
            }
        }
        Ok(RangeResponse {
            revision: Revision(current),
            kvs,
            more,
            count,
        })
    }

    fn write(&mut self, rev: i64, k: &Bytes, kv: Option<KeyValue>) {
        self.versions
            .entry(k.clone())
            .or_default()
            .push((rev, kv.clone()));
        self.log.push((rev, k.clone(), kv));
    }

    fn put(&mut self, req: &PutRequest, rev: i64) -> Result<PutResponse, String> {
        let prev = self.get(&req.key, rev);
        if (req.ignore_value || req.ignore_lease) && prev.is_none() {
            return Err("etcdserver: key not found".into());
        }
        let kv = KeyValue {
            key: req.key.clone(),
            create_revision: prev.as_ref().map_or(Revision(rev), |p| p.create_revision),
            mod_revision: Revision(rev),
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            value: if req.ignore_value {
                prev.as_ref().unwrap().value.clone()
            } else {
                req.value.clone()
            },
            lease: if req.ignore_lease {
                prev.as_ref().unwrap().lease
            } else {
                req.lease
            },
        };
        self.write(rev, &req.key, Some(kv));
        Ok(PutResponse {
            revision: Revision(rev),
            prev_kv: prev.filter(|_| req.prev_kv),
        })
    }

    fn delete(&mut self, req: &DeleteRangeRequest, rev: i64) -> Vec<KeyValue> {
        let live = self.live(&req.key, &req.range_end, rev);
        for kv in &live {
            self.write(rev, &kv.key, None);
        }
        live
    }

    fn compare(&self, c: &Compare) -> bool {
        let kvs = self.live(&c.key, &c.range_end, self.current);
        let one = |kv: &KeyValue| {
            let ord = match &c.target {
                CompareTarget::Value(v) => kv.value.cmp(v),
                CompareTarget::Version(v) => kv.version.cmp(v),
                CompareTarget::Create(r) => kv.create_revision.cmp(r),
                CompareTarget::Mod(r) => kv.mod_revision.cmp(r),
                CompareTarget::Lease(l) => kv.lease.cmp(l),
            };
            match c.result {
                CompareResult::Equal => ord.is_eq(),
                CompareResult::NotEqual => ord.is_ne(),
                CompareResult::Greater => ord.is_gt(),
                CompareResult::Less => ord.is_lt(),
            }
        };
        if kvs.is_empty() {
            return !matches!(c.target, CompareTarget::Value(_)) && one(&KeyValue::default());
        }
        kvs.iter().all(one)
    }

    /// etcd's duplicate key rule for a branch: returns the keys it puts and the spans it deletes
    /// (a delete to "\0" counts as none), or `None` for a duplicate. Nested puts meet the deletes
    /// of this level and of earlier nested transactions; this level's puts meet all of them.
    fn writes(ops: &[RequestOp]) -> Option<BranchWrites> {
        let mut dels: Vec<(Bytes, Bytes)> = ops
            .iter()
            .filter_map(|op| match op {
                RequestOp::DeleteRange(d) if d.range_end.as_ref() != b"\0" => {
                    Some((d.key.clone(), d.range_end.clone()))
                }
                _ => None,
            })
            .collect();
        let deleted =
            |dels: &[(Bytes, Bytes)], k: &Bytes| dels.iter().any(|(key, end)| in_span(k, key, end));
        let mut puts: Vec<Bytes> = Vec::new();
        for op in ops {
            let RequestOp::Txn(nested) = op else { continue };
            let (then_puts, then_dels) = Model::writes(&nested.success)?;
            let (else_puts, else_dels) = Model::writes(&nested.failure)?;
            for k in &then_puts {
                if puts.contains(k) || deleted(&dels, k) {
                    return None;
                }
                puts.push(k.clone());
            }
            for k in &else_puts {
                if puts.contains(k) && !then_puts.contains(k) || deleted(&dels, k) {
                    return None;
                }
                puts.push(k.clone());
            }
            dels.extend(then_dels);
            dels.extend(else_dels);
        }
        for op in ops {
            let RequestOp::Put(p) = op else { continue };
            if puts.contains(&p.key) || deleted(&dels, &p.key) {
                return None;
            }
            puts.push(p.key.clone());
        }
        Some((puts, dels))
    }

    /// The branch each transaction takes, judged on the state before the outer one writes.
    fn path(&self, req: &TxnRequest) -> Vec<bool> {
        let succeeded = req.compare.iter().all(|c| self.compare(c));
        let branch = if succeeded {
            &req.success
        } else {
            &req.failure
        };
        let mut path = vec![succeeded];
        for op in branch {
            if let RequestOp::Txn(nested) = op {
                path.extend(self.path(nested));
            }
        }
        path
    }

    /// The range revision checks of the operations on the path; consumes the path.
    fn check_path(
        &self,
        req: &TxnRequest,
        path: &mut std::slice::Iter<'_, bool>,
    ) -> Result<(), String> {
        let branch = if *path.next().unwrap() {
            &req.success
        } else {
            &req.failure
        };
        for op in branch {
            match op {
                RequestOp::Range(r) => {
                    self.check_revision(r.revision.get(), self.current)?;
                }
                RequestOp::Txn(nested) => self.check_path(nested, path)?,
                _ => {}
            }
        }
        Ok(())
    }

    fn txn(&mut self, req: &TxnRequest) -> Result<TxnResponse, String> {
        if Model::writes(&req.success).is_none() || Model::writes(&req.failure).is_none() {
            return Err("etcdserver: duplicate key given in txn request".into());
        }
        let path = self.path(req);
        self.check_path(req, &mut path.iter())?;
        let rev = self.current + 1;
        let mut wrote = false;
        let mut response = self.execute(req, &mut path.iter(), rev, &mut wrote);
        if wrote {
            self.current = rev;
        }
        response.revision = Revision(self.current);
        Ok(response)
    }

    fn execute(
        &mut self,
        req: &TxnRequest,
        path: &mut std::slice::Iter<'_, bool>,
        rev: i64,
        wrote: &mut bool,
    ) -> TxnResponse {
        let succeeded = *path.next().unwrap();
        let branch = if succeeded {
            &req.success
        } else {
            &req.failure
        };
        let mut responses = Vec::new();
        for op in branch {
            let seen = if *wrote { rev } else { self.current };
            responses.push(match op {
                RequestOp::Range(r) => ResponseOp::Range(self.range(r, seen).unwrap()),
                RequestOp::Put(p) => {
                    *wrote = true;
                    ResponseOp::Put(self.put(p, rev).unwrap())
                }
                RequestOp::DeleteRange(d) => {
                    let deleted = self.delete(d, rev);
                    *wrote |= !deleted.is_empty();
                    ResponseOp::DeleteRange(DeleteRangeResponse {
                        revision: Revision(if *wrote { rev } else { self.current }),
                        deleted: deleted.len() as i64,
                        prev_kvs: Vec::new(),
                    })
                }
                RequestOp::Txn(nested) => ResponseOp::Txn(self.execute(nested, path, rev, wrote)),
            });
        }
        // A nested transaction's header revision stays zero; the caller sets the outer one's.
        TxnResponse {
            revision: Revision(0),
            succeeded,
            responses,
        }
    }

    fn compact(&mut self, rev: i64) -> Result<CompactResponse, String> {
        if rev <= self.last_compaction.unwrap_or(-1) {
            return Err("mvcc: required revision has been compacted".into());
        }
        if rev > self.current {
            return Err("mvcc: required revision is a future revision".into());
        }
        self.compacted = rev;
        self.last_compaction = Some(rev);
        Ok(CompactResponse {
            revision: Revision(self.current),
        })
    }

    fn events(&self, from: i64) -> Vec<Event> {
        self.log
            .iter()
            .filter(|(rev, _, _)| *rev >= from)
            .map(|(rev, k, kv)| {
                let before = rev - 1;
                let prev_kv = (before >= self.compacted.max(1))
                    .then(|| self.get(k, before))
                    .flatten();
                match kv {
                    Some(kv) => Event {
                        kind: EventKind::Put,
                        kv: kv.clone(),
                        prev_kv,
                    },
                    None => Event {
                        kind: EventKind::Delete,
                        kv: KeyValue {
                            key: k.clone(),
                            mod_revision: Revision(*rev),
                            ..KeyValue::default()
                        },
                        prev_kv,
                    },
                }
            })
            .collect()
    }
}

fn to_request(op: &TxnOp, current: i64) -> RequestOp {
    if let TxnOp::Nested {
        compare,
        success,
        failure,
    } = op
    {
        return RequestOp::Txn(TxnRequest {
            compare: vec![compare_of(*compare)],
            success: success.iter().map(|op| to_request(op, current)).collect(),
            failure: failure.iter().map(|op| to_request(op, current)).collect(),
        });
    }
    match *op {
        TxnOp::Put { key: k, value } => {
            RequestOp::Put(PutRequest::new(key(k), Bytes::from(vec![value % 4])))
        }
        TxnOp::Delete { key: k, end } => {
            RequestOp::DeleteRange(DeleteRangeRequest::range(key(k), range_end(end)))
        }
        TxnOp::Range { key: k, end, back } => RequestOp::Range(RangeRequest {
            revision: Revision(if back == 0 {
                0
            } else {
                current + 2 - back as i64
            }),
            ..RangeRequest::range(key(k), range_end(end))
        }),
        TxnOp::Nested { .. } => unreachable!("handled above"),
    }
}

fn compare_of((k, result, target, operand): (u8, u8, u8, u8)) -> Compare {
    let result = [
        CompareResult::Equal,
        CompareResult::NotEqual,
        CompareResult::Greater,
        CompareResult::Less,
    ][result as usize % 4];
    let n = (operand % 6) as i64;
    let target = match target % 5 {
        0 => CompareTarget::Value(Bytes::from(vec![operand % 4])),
        1 => CompareTarget::Version(n),
        2 => CompareTarget::Create(Revision(n)),
        3 => CompareTarget::Mod(Revision(n)),
        _ => CompareTarget::Lease(LeaseId(n % 3)),
    };
    Compare {
        key: key(k),
        range_end: if target_is_range(operand) {
            range_end(operand)
        } else {
            Bytes::new()
        },
        result,
        target,
    }
}

fn target_is_range(operand: u8) -> bool {
    operand >= 200
}

fn result_of<T>(result: MvccResult<T>) -> Result<T, String> {
    result.map_err(|e| {
        assert!(e.is_request_error(), "storage error: {e}");
        e.to_string()
    })
}

fn apply(store: &mut MvccStore, model: &mut Model, op: &Op, applied: &mut u64) {
    let current = model.current;
    *applied += 1;
    let index = LogIndex(*applied);
    match op {
        Op::Put {
            key: k,
            value,
            lease,
            prev_kv,
            ignore_value,
            ignore_lease,
        } => {
            let req = PutRequest {
                key: key(*k),
                value: if *ignore_value {
                    Bytes::new()
                } else {
                    Bytes::from(vec![value % 4])
                },
                lease: if *ignore_lease {
                    LeaseId::NONE
                } else {
                    LeaseId(*lease as i64)
                },
                prev_kv: *prev_kv,
                ignore_value: *ignore_value,
                ignore_lease: *ignore_lease,
            };
            let got = result_of(store.apply(index, &WriteOp::Put(req.clone())));
            let want = model.put(&req, current + 1).map(WriteResponse::Put);
            if want.is_ok() {
                model.current = current + 1;
            }
            assert_eq!(got, want, "{op:?}");
        }
        Op::Delete {
            key: k,
            end,
            prev_kv,
        } => {
            let req = DeleteRangeRequest {
                key: key(*k),
                range_end: range_end(*end),
                prev_kv: *prev_kv,
            };
            let got = result_of(store.apply(index, &WriteOp::DeleteRange(req.clone())));
            let deleted = model.delete(&req, current + 1);
            if !deleted.is_empty() {
                model.current = current + 1;
            }
            let want = WriteResponse::DeleteRange(DeleteRangeResponse {
                revision: Revision(model.current),
                deleted: deleted.len() as i64,
                prev_kvs: if *prev_kv { deleted } else { Vec::new() },
            });
            assert_eq!(got, Ok(want), "{op:?}");
        }
        Op::Range {
            key: k,
            end,
            back,
            limit,
            count_only,
            keys_only,
            shape: (order, target, filter, filter_revision),
        } => {
            let mut req = RangeRequest {
                revision: Revision(if *back == 0 {
                    0
                } else {
                    current + 2 - *back as i64
                }),
                limit: *limit as i64,
                count_only: *count_only,
                keys_only: *keys_only,
                sort_order: [SortOrder::None, SortOrder::Ascend, SortOrder::Descend]
                    [*order as usize],
                sort_target: [
                    SortTarget::Key,
                    SortTarget::Version,
                    SortTarget::Create,
                    SortTarget::Mod,
                    SortTarget::Value,
                ][*target as usize],
                ..RangeRequest::range(key(*k), range_end(*end))
            };
            let bound = Revision(*filter_revision as i64);
            match filter {
                0 => req.min_mod_revision = bound,
                1 => req.max_mod_revision = bound,
                2 => req.min_create_revision = bound,
                3 => req.max_create_revision = bound,
                _ => {}
            }
            *applied -= 1;
            let want = model.range(&req, current);
            assert_eq!(result_of(store.range(&req)), want, "{op:?}");
            let detached = store.start_range(&req).and_then(DetachedRange::finish);
            assert_eq!(result_of(detached), want, "detached: {op:?}");
        }
        Op::Txn {
            compare,
            success,
            failure,
        } => {
            let req = TxnRequest {
                compare: vec![compare_of(*compare)],
                success: success.iter().map(|op| to_request(op, current)).collect(),
                failure: failure.iter().map(|op| to_request(op, current)).collect(),
            };
            // A transaction that only reads, served as a read, answers as it does applied.
            let read = req
                .is_read_only()
                .then(|| result_of(store.read_txn(&req).map(WriteResponse::Txn)));
            let got = result_of(store.apply(index, &WriteOp::Txn(req.clone())));
            assert_eq!(got, model.txn(&req).map(WriteResponse::Txn), "{req:?}");
            if let Some(read) = read {
                assert_eq!(read, got, "read as a read: {req:?}");
            }
        }
        Op::Compact { back } => {
            let rev = current + 1 - *back as i64;
            let got = result_of(store.apply(index, &WriteOp::Compact(Revision(rev))));
            assert_eq!(
                got,
                model.compact(rev).map(WriteResponse::Compact),
                "{op:?}"
            );
        }
    }
}

/// Every readable revision, and the history, agree with the model.
fn check_everything(store: &MvccStore, model: &Model) {
    assert_eq!(store.current_revision(), Revision(model.current));
    assert_eq!(store.compact_revision(), Revision(model.compacted));
    for rev in model.compacted.max(1)..=model.current {
        let req = RangeRequest {
            revision: Revision(rev),
            ..RangeRequest::range("\0", "\0")
        };
        assert_eq!(
            result_of(store.range(&req)),
            model.range(&req, model.current),
            "at {rev}"
        );
    }
    let from = model.compacted.max(1);
    let got = store
        .events(Revision(from), usize::MAX, true)
        .unwrap()
        .events;
    assert_eq!(got, model.events(from));
    // In pages of two events (a revision is never split): the same events, in order.
    let mut paged = Vec::new();
    let mut next = Revision(from);
    while next <= Revision(model.current) {
        let batch = store.events(next, 2, true).unwrap();
        assert!(batch.next > next, "events from {next} make progress");
        paged.extend(batch.events);
        next = batch.next;
    }
    assert_eq!(paged, got);
}

/// Finishes the detached ranges started earlier: each reads the store as it was when it
/// started, whatever was applied, committed or compacted since.
fn finish_detached(detached: &mut Vec<(DetachedRange, Result<RangeResponse, String>)>) {
    for (range, want) in detached.drain(..) {
        assert_eq!(result_of(range.finish()), want, "a detached range");
    }
}

/// The store restored from its snapshot holds the same data.
fn check_snapshot(store: &MvccStore, model: &Model) {
    let dir = tempfile::tempdir().unwrap();
    let snapshot = store.snapshot().unwrap();
    assert_eq!(snapshot.meta().applied_index, store.applied_index());
    let restored = MvccStore::restore(dir.path(), store.config().clone(), snapshot).unwrap();
    assert_eq!(restored.hash().unwrap(), store.hash().unwrap());
    assert_eq!(restored.leases(), store.leases());
    check_everything(&restored, model);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// In mode 0 every batch commits to the engine in line. In mode 1 the store commits only
    /// when a compaction asks it (and on the sync at the end): reads, events, hashes and
    /// snapshots must see the batches kept in memory exactly as the committed ones. In mode 2
    /// every batch commits on the store's commit thread, so reads meet commits in flight (the
    /// store is checked every ten operations as well as at the end). In every mode a full range
    /// started as detached every seven operations is finished only after the next six.
    #[test]
    fn store_matches_model(ops in prop::collection::vec(op(), 1..60), mode in 0..3u8) {
        let dir = tempfile::tempdir().unwrap();
        let commit_sync_interval = if mode == 1 {
            std::time::Duration::from_secs(3600)
        } else {
            std::time::Duration::ZERO
        };
        let config = MvccConfig {
            commit_sync: false,
            commit_sync_interval,
            commit_in_background: mode == 2,
            ..MvccConfig::default()
        };
        let mut store = MvccStore::open(dir.path(), config.clone()).unwrap();
        // The puts attach leases 1 and 2 (or none): a put with a lease that is not granted is
        // refused, so both exist before the run.
        for id in [1, 2] {
            store.lease_grant(&LeaseGrantRequest { id: LeaseId(id), ttl: 60 }).unwrap();
        }
        let mut model = Model::new();
        let mut applied = 0;
        let mut detached = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            if i % 7 == 0 {
                let req = RangeRequest::range("\0", "\0");
                let want = model.range(&req, model.current);
                detached.push((store.start_range(&req).unwrap(), want));
            }
            apply(&mut store, &mut model, op, &mut applied);
            if i % 7 == 6 {
                finish_detached(&mut detached);
            }
            if i % 10 == 9 {
                check_everything(&store, &model);
            }
        }
        finish_detached(&mut detached);
        check_everything(&store, &model);
        check_snapshot(&store, &model);
        let hash = store.hash().unwrap();
        let records = store.record_count().unwrap();
        store.sync().unwrap();
        prop_assert_eq!(store.hash().unwrap(), hash);
        prop_assert_eq!(store.record_count().unwrap(), records);
        drop(store);
        let store = MvccStore::open(dir.path(), config).unwrap();
        check_everything(&store, &model);
        prop_assert_eq!(store.hash().unwrap(), hash);
        prop_assert_eq!(store.record_count().unwrap(), records);
        prop_assert_eq!(store.applied_index(), LogIndex(applied));
    }
}
