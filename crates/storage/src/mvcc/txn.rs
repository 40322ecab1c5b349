//! The parts of a transaction that happen before it writes: request validation, etcd's duplicate
//! key check, the compares, and the checks of the chosen branch.
//!
//! Order, as etcd does it: the static checks of every operation of both branches (empty keys,
//! `ignore_value` with a value, too many operations), then the duplicate key check of each
//! branch, then every compare of the outer and the nested transactions against the store as it
//! was before the transaction (the "path"), then the checks of the operations on that path
//! against the same state (future or compacted range revisions, `ignore_value`/`ignore_lease` on
//! a missing key). Only then does the transaction write, and then it cannot fail on a request
//! error.

use std::collections::HashSet;

use bytes::Bytes;

use super::error::{MvccError, MvccResult};
use super::index::KeySpan;
use super::types::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, KeyValue, PutRequest, RangeRequest,
    RequestOp, TxnRequest,
};
use super::view::{RecordTable, View};

/// The static checks of a put: what etcd's gRPC layer rejects before proposing.
pub(crate) fn check_put_request(req: &PutRequest) -> MvccResult<()> {
    if req.key.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    if req.ignore_value && !req.value.is_empty() {
        return Err(MvccError::ValueProvided);
    }
    if req.ignore_lease && req.lease.is_some() {
        return Err(MvccError::LeaseProvided);
    }
    Ok(())
}

pub(crate) fn check_range_request(req: &RangeRequest) -> MvccResult<()> {
    if req.key.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    Ok(())
}

pub(crate) fn check_delete_request(req: &DeleteRangeRequest) -> MvccResult<()> {
    if req.key.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    Ok(())
}

/// The static checks of a transaction and, recursively, of its nested transactions. `ops_max`
/// bounds the compares and the operations of each branch; a nested transaction gets what its
/// parent left, as in etcd.
pub(crate) fn check_txn_request(txn: &TxnRequest, ops_max: usize) -> MvccResult<()> {
    let ops = txn
        .compare
        .len()
        .max(txn.success.len())
        .max(txn.failure.len());
    if ops > ops_max {
        return Err(MvccError::TooManyOps { ops_max });
    }
    if txn.compare.iter().any(|c| c.key.is_empty()) {
        return Err(MvccError::EmptyKey);
    }
    for op in txn.success.iter().chain(&txn.failure) {
        match op {
            RequestOp::Range(req) => check_range_request(req)?,
            RequestOp::Put(req) => check_put_request(req)?,
            RequestOp::DeleteRange(req) => check_delete_request(req)?,
            RequestOp::Txn(nested) => check_txn_request(nested, ops_max - ops)?,
        }
    }
    check_duplicates(&txn.success)?;
    check_duplicates(&txn.failure)?;
    Ok(())
}

/// The keys a branch puts and the ranges it deletes.
#[derive(Default)]
struct Writes {
    puts: HashSet<Bytes>,
    deletes: Vec<KeySpan>,
}

impl Writes {
    fn deletes_key(&self, key: &[u8]) -> bool {
        self.deletes.iter().any(|span| span.contains(key))
    }
}

/// etcd's interval check: within one branch (including the branches of nested transactions), no
/// key is put twice, and no key is both put and deleted. Two deletes may overlap. A key may be put
/// in both branches of a nested transaction, since only one of them runs.
///
/// The check follows etcd's to the letter, quirks included, so that the same requests are
/// accepted and refused: a nested transaction's puts are checked against the deletes of this
/// level and of the nested transactions before it (not after it); and a delete whose `range_end`
/// is "\0" counts as deleting nothing (etcd builds it as the empty interval `[key, "\0")`). Both
/// let a revision write one key twice (a tombstone and a put); the index and the history handle
/// that as etcd does: two events of the key at that revision.
fn check_duplicates(ops: &[RequestOp]) -> MvccResult<()> {
    branch_writes(ops).map(|_| ())
}

/// The span a delete covers for the duplicate check.
fn checked_span(req: &DeleteRangeRequest) -> Option<KeySpan> {
    match KeySpan::new(&req.key, &req.range_end) {
        KeySpan::From(_) => None,
        span => Some(span),
    }
}

fn branch_writes(ops: &[RequestOp]) -> MvccResult<Writes> {
    let mut writes = Writes::default();
    for op in ops {
        if let RequestOp::DeleteRange(req) = op {
            writes.deletes.extend(checked_span(req));
        }
    }
    let duplicate = |key: &Bytes| MvccError::DuplicateKey { key: key.clone() };
    for op in ops {
        let RequestOp::Txn(nested) = op else { continue };
        let then = branch_writes(&nested.success)?;
        let otherwise = branch_writes(&nested.failure)?;
        for key in &then.puts {
            if writes.puts.contains(key) || writes.deletes_key(key) {
                return Err(duplicate(key));
            }
            writes.puts.insert(key.clone());
        }
        for key in &otherwise.puts {
            let in_then = then.puts.contains(key);
            if writes.puts.contains(key) && !in_then || writes.deletes_key(key) {
                return Err(duplicate(key));
            }
            writes.puts.insert(key.clone());
        }
        writes.deletes.extend(then.deletes);
        writes.deletes.extend(otherwise.deletes);
    }
    for op in ops {
        let RequestOp::Put(req) = op else { continue };
        if writes.puts.contains(&req.key) || writes.deletes_key(&req.key) {
            return Err(duplicate(&req.key));
        }
        writes.puts.insert(req.key.clone());
    }
    Ok(writes)
}

/// Which branch each transaction takes: the outer one, and the nested ones of the chosen branch
/// in order (recursively).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TxnPath {
    pub succeeded: bool,
    pub nested: Vec<TxnPath>,
}

impl TxnPath {
    /// Evaluates every compare on the path against `view`, before anything is written.
    pub fn evaluate<T: RecordTable>(view: &View<'_, T>, txn: &TxnRequest) -> MvccResult<TxnPath> {
        let mut succeeded = true;
        for compare in &txn.compare {
            if !compare_holds(view, compare)? {
                succeeded = false;
                break;
            }
        }
        let branch = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        let nested = branch
            .iter()
            .filter_map(|op| match op {
                RequestOp::Txn(nested) => Some(TxnPath::evaluate(view, nested)),
                _ => None,
            })
            .collect::<MvccResult<Vec<_>>>()?;
        Ok(TxnPath { succeeded, nested })
    }

    /// The checks of the operations on the path against the state before the transaction.
    pub fn check<T: RecordTable>(&self, view: &View<'_, T>, txn: &TxnRequest) -> MvccResult<()> {
        let branch = if self.succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        let mut nested = self.nested.iter();
        for op in branch {
            match op {
                RequestOp::Range(req) => {
                    view.read_revision(req.revision)?;
                }
                RequestOp::Put(req) if req.ignore_value || req.ignore_lease => {
                    if view.index.latest(&req.key).is_none() {
                        return Err(MvccError::KeyNotFound {
                            key: req.key.clone(),
                        });
                    }
                }
                RequestOp::Put(_) | RequestOp::DeleteRange(_) => {}
                RequestOp::Txn(txn) => {
                    let path = nested.next().expect("a path for every nested txn");
                    path.check(view, txn)?;
                }
            }
        }
        Ok(())
    }
}

/// etcd's compare: every live key of the range must satisfy it. With no key, a value compare
/// fails and the others compare against zeros (version 0, create 0, mod 0, lease 0).
fn compare_holds<T: RecordTable>(view: &View<'_, T>, compare: &Compare) -> MvccResult<bool> {
    let span = KeySpan::new(&compare.key, &compare.range_end);
    if let CompareTarget::Version(_) | CompareTarget::Create(_) | CompareTarget::Mod(_) =
        compare.target
    {
        // The key index knows these (a compare-and-swap on the mod revision is the common
        // case): no record is read.
        let mut any = false;
        let holds = view.index.live_versions(&span).all(|live| {
            any = true;
            let kv = KeyValue {
                create_revision: live.created,
                mod_revision: live.modified,
                version: live.version,
                ..KeyValue::default()
            };
            compare_kv(compare, &kv)
        });
        return Ok(if any {
            holds
        } else {
            compare_kv(compare, &KeyValue::default())
        });
    }
    let kvs = view.live(&span)?;
    if kvs.is_empty() {
        if matches!(compare.target, CompareTarget::Value(_)) {
            return Ok(false);
        }
        return Ok(compare_kv(compare, &KeyValue::default()));
    }
    Ok(kvs.iter().all(|kv| compare_kv(compare, kv)))
}

fn compare_kv(compare: &Compare, kv: &KeyValue) -> bool {
    let ordering = match &compare.target {
        CompareTarget::Version(v) => kv.version.cmp(v),
        CompareTarget::Create(r) => kv.create_revision.cmp(r),
        CompareTarget::Mod(r) => kv.mod_revision.cmp(r),
        CompareTarget::Value(v) => kv.value.as_ref().cmp(v.as_ref()),
        CompareTarget::Lease(l) => kv.lease.cmp(l),
    };
    match compare.result {
        CompareResult::Equal => ordering.is_eq(),
        CompareResult::NotEqual => ordering.is_ne(),
        CompareResult::Greater => ordering.is_gt(),
        CompareResult::Less => ordering.is_lt(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::types::{DeleteRangeRequest, PutRequest};

    fn put(k: &str) -> RequestOp {
        RequestOp::Put(PutRequest::new(k.as_bytes().to_vec(), b"v".to_vec()))
    }

    fn del(k: &str, end: &str) -> RequestOp {
        RequestOp::DeleteRange(DeleteRangeRequest::range(
            k.as_bytes().to_vec(),
            end.as_bytes().to_vec(),
        ))
    }

    fn txn(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
        RequestOp::Txn(TxnRequest {
            compare: vec![],
            success,
            failure,
        })
    }

    // Goal: a transaction counts as read-only only when no operation on any branch, nested ones
    // included, writes. Method: a table of transactions.
    #[test]
    fn read_only_transactions() {
        let range = || RequestOp::Range(RangeRequest::range(b"a".to_vec(), b"c".to_vec()));
        let table: Vec<(&str, Vec<RequestOp>, Vec<RequestOp>, bool)> = vec![
            ("no operation", vec![], vec![], true),
            (
                "ranges on both branches",
                vec![range()],
                vec![range(), range()],
                true,
            ),
            (
                "a put on success",
                vec![range(), put("a")],
                vec![range()],
                false,
            ),
            (
                "a delete on failure",
                vec![range()],
                vec![del("a", "")],
                false,
            ),
            (
                "a nested read",
                vec![txn(vec![range()], vec![])],
                vec![],
                true,
            ),
            (
                "a nested put",
                vec![range()],
                vec![txn(vec![], vec![put("b")])],
                false,
            ),
        ];
        for (case, success, failure, read_only) in table {
            let req = TxnRequest {
                compare: vec![],
                success,
                failure,
            };
            assert_eq!(req.is_read_only(), read_only, "{case}");
        }
    }

    // Goal: etcd's duplicate key rule, case by case. Method: a table of branches and whether
    // each must be rejected.
    #[test]
    fn duplicate_key_rules() {
        let table: Vec<(&str, Vec<RequestOp>, bool)> = vec![
            ("two puts of one key", vec![put("a"), put("a")], true),
            ("puts of two keys", vec![put("a"), put("b")], false),
            ("put inside a delete", vec![del("a", "c"), put("b")], true),
            ("put outside a delete", vec![del("a", "c"), put("c")], false),
            (
                "put of a single-key delete",
                vec![del("a", ""), put("a")],
                true,
            ),
            // etcd's quirk: a delete to "\0" is not seen by the check.
            (
                "put under a delete of all keys >= key",
                vec![del("a", "\0"), put("z")],
                false,
            ),
            (
                "put of the key of a delete to \\0",
                vec![del("a", "\0"), put("a")],
                false,
            ),
            // etcd's quirk: nested puts meet the deletes of earlier nested txns only.
            (
                "nested delete, then nested put",
                vec![txn(vec![del("a", "")], vec![]), txn(vec![put("a")], vec![])],
                true,
            ),
            (
                "nested put, then nested delete",
                vec![txn(vec![put("a")], vec![]), txn(vec![del("a", "")], vec![])],
                false,
            ),
            (
                "overlapping deletes",
                vec![del("a", "c"), del("b", "d")],
                false,
            ),
            (
                "nested put and outer put",
                vec![put("a"), txn(vec![put("a")], vec![])],
                true,
            ),
            (
                "nested put in both branches",
                vec![txn(vec![put("a")], vec![put("a")])],
                false,
            ),
            (
                "nested put under outer delete",
                vec![del("a", "b"), txn(vec![], vec![put("a")])],
                true,
            ),
            (
                "nested delete and outer put",
                vec![txn(vec![del("a", "")], vec![]), put("a")],
                true,
            ),
            (
                "two nested txns put one key",
                vec![txn(vec![put("a")], vec![]), txn(vec![put("a")], vec![])],
                true,
            ),
        ];
        for (name, ops, duplicate) in table {
            let got = check_duplicates(&ops);
            assert_eq!(got.is_err(), duplicate, "{name}: {got:?}");
            if let Err(error) = got {
                assert_eq!(
                    error.to_string(),
                    "etcdserver: duplicate key given in txn request"
                );
            }
        }
    }

    // Goal: a key may be written in the success branch and again in the failure branch.
    // Method: one txn with the same put in both branches passes the check.
    #[test]
    fn branches_are_checked_separately() {
        let request = TxnRequest {
            compare: vec![],
            success: vec![put("a")],
            failure: vec![put("a")],
        };
        assert!(check_txn_request(&request, 128).is_ok());
    }

    // Goal: the static checks reject what etcd's gRPC layer rejects. Method: a table.
    #[test]
    fn static_checks() {
        let mut ignore_value = PutRequest::new(b"k".to_vec(), b"v".to_vec());
        ignore_value.ignore_value = true;
        let mut ignore_lease = PutRequest::new(b"k".to_vec(), Vec::new());
        ignore_lease.ignore_lease = true;
        ignore_lease.lease = crate::mvcc::types::LeaseId(5);
        let table = [
            (
                RequestOp::Put(ignore_value),
                "etcdserver: value is provided",
            ),
            (
                RequestOp::Put(ignore_lease),
                "etcdserver: lease is provided",
            ),
            (put(""), "etcdserver: key is not provided"),
            (del("", ""), "etcdserver: key is not provided"),
        ];
        for (op, message) in table {
            let request = TxnRequest {
                compare: vec![],
                success: vec![],
                failure: vec![op],
            };
            let error = check_txn_request(&request, 128).unwrap_err();
            assert_eq!(error.to_string(), message);
        }
        let many = TxnRequest {
            compare: vec![],
            success: (0..3).map(|i| put(&i.to_string())).collect(),
            failure: vec![],
        };
        assert!(matches!(
            check_txn_request(&many, 2),
            Err(MvccError::TooManyOps { ops_max: 2 })
        ));
    }
}
