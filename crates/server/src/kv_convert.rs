//! Conversions between the etcd v3 messages (`etcdserverpb`, `mvccpb`) and the requests and
//! responses of the MVCC store (`chorus_storage::mvcc`).
//!
//! Requests come from clients and, inside Raft entries, from the WAL and from peers: every
//! conversion from the wire is fallible and never panics. Responses carry the header revision
//! only; the gRPC edge fills in the rest of the header (cluster, member, term).

use chorus_proto::etcdserverpb as pb;
use chorus_proto::mvccpb;
use chorus_storage::mvcc;

use crate::error::ServerError;

fn invalid(what: &str) -> ServerError {
    ServerError::Unexpected {
        message: format!("etcdserver: invalid request: {what}"),
    }
}

/// The header of a response at `revision`; the edge completes it.
pub fn header(revision: mvcc::Revision) -> Option<pb::ResponseHeader> {
    Some(pb::ResponseHeader {
        revision: revision.get(),
        ..pb::ResponseHeader::default()
    })
}

pub fn range_from_proto(req: &pb::RangeRequest) -> Result<mvcc::RangeRequest, ServerError> {
    use pb::range_request::{SortOrder as O, SortTarget as T};
    let sort_order = match O::try_from(req.sort_order).map_err(|_| invalid("sort order"))? {
        O::None => mvcc::SortOrder::None,
        O::Ascend => mvcc::SortOrder::Ascend,
        O::Descend => mvcc::SortOrder::Descend,
    };
    let sort_target = match T::try_from(req.sort_target).map_err(|_| invalid("sort target"))? {
        T::Key => mvcc::SortTarget::Key,
        T::Version => mvcc::SortTarget::Version,
        T::Create => mvcc::SortTarget::Create,
        T::Mod => mvcc::SortTarget::Mod,
        T::Value => mvcc::SortTarget::Value,
    };
    Ok(mvcc::RangeRequest {
        key: req.key.clone(),
        range_end: req.range_end.clone(),
        limit: req.limit,
        revision: mvcc::Revision(req.revision),
        sort_order,
        sort_target,
        keys_only: req.keys_only,
        count_only: req.count_only,
        min_mod_revision: mvcc::Revision(req.min_mod_revision),
        max_mod_revision: mvcc::Revision(req.max_mod_revision),
        min_create_revision: mvcc::Revision(req.min_create_revision),
        max_create_revision: mvcc::Revision(req.max_create_revision),
    })
}

pub fn put_from_proto(req: &pb::PutRequest) -> mvcc::PutRequest {
    mvcc::PutRequest {
        key: req.key.clone(),
        value: req.value.clone(),
        lease: mvcc::LeaseId(req.lease),
        prev_kv: req.prev_kv,
        ignore_value: req.ignore_value,
        ignore_lease: req.ignore_lease,
    }
}

pub fn delete_from_proto(req: &pb::DeleteRangeRequest) -> mvcc::DeleteRangeRequest {
    mvcc::DeleteRangeRequest {
        key: req.key.clone(),
        range_end: req.range_end.clone(),
        prev_kv: req.prev_kv,
    }
}

fn compare_from_proto(c: &pb::Compare) -> Result<mvcc::Compare, ServerError> {
    use pb::compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
    let result = match R::try_from(c.result).map_err(|_| invalid("compare result"))? {
        R::Equal => mvcc::CompareResult::Equal,
        R::Greater => mvcc::CompareResult::Greater,
        R::Less => mvcc::CompareResult::Less,
        R::NotEqual => mvcc::CompareResult::NotEqual,
    };
    let target = T::try_from(c.target).map_err(|_| invalid("compare target"))?;
    // etcd reads the operand of the declared target; a missing operand compares with zero.
    let union = c.target_union.clone();
    let target = match target {
        T::Version => mvcc::CompareTarget::Version(match union {
            Some(U::Version(v)) => v,
            _ => 0,
        }),
        T::Create => mvcc::CompareTarget::Create(mvcc::Revision(match union {
            Some(U::CreateRevision(v)) => v,
            _ => 0,
        })),
        T::Mod => mvcc::CompareTarget::Mod(mvcc::Revision(match union {
            Some(U::ModRevision(v)) => v,
            _ => 0,
        })),
        T::Value => mvcc::CompareTarget::Value(match union {
            Some(U::Value(v)) => v,
            _ => bytes::Bytes::new(),
        }),
        T::Lease => mvcc::CompareTarget::Lease(mvcc::LeaseId(match union {
            Some(U::Lease(v)) => v,
            _ => 0,
        })),
    };
    Ok(mvcc::Compare {
        key: c.key.clone(),
        range_end: c.range_end.clone(),
        result,
        target,
    })
}

fn op_from_proto(op: &pb::RequestOp) -> Result<mvcc::RequestOp, ServerError> {
    use pb::request_op::Request as R;
    Ok(match &op.request {
        Some(R::RequestRange(r)) => mvcc::RequestOp::Range(range_from_proto(r)?),
        Some(R::RequestPut(r)) => mvcc::RequestOp::Put(put_from_proto(r)),
        Some(R::RequestDeleteRange(r)) => mvcc::RequestOp::DeleteRange(delete_from_proto(r)),
        Some(R::RequestTxn(r)) => mvcc::RequestOp::Txn(txn_from_proto(r)?),
        None => return Err(invalid("a transaction operation without a request")),
    })
}

pub fn txn_from_proto(req: &pb::TxnRequest) -> Result<mvcc::TxnRequest, ServerError> {
    let ops = |list: &[pb::RequestOp]| -> Result<Vec<_>, ServerError> {
        list.iter().map(op_from_proto).collect()
    };
    Ok(mvcc::TxnRequest {
        compare: req
            .compare
            .iter()
            .map(compare_from_proto)
            .collect::<Result<_, _>>()?,
        success: ops(&req.success)?,
        failure: ops(&req.failure)?,
    })
}

/// Every range of a transaction that only reads, its nested transactions' included; `None`
/// when an operation does anything else (as [`mvcc::TxnRequest::is_read_only`] says of the
/// converted request). The edge serves such a transaction as a read, with no read barrier when
/// every range is serializable, and off its connection's task when a range reads many keys.
pub fn txn_ranges(req: &pb::TxnRequest) -> Option<Vec<&pb::RangeRequest>> {
    fn collect<'a>(req: &'a pb::TxnRequest, ranges: &mut Vec<&'a pb::RangeRequest>) -> bool {
        use pb::request_op::Request as R;
        req.success
            .iter()
            .chain(&req.failure)
            .all(|op| match &op.request {
                Some(R::RequestRange(range)) => {
                    ranges.push(range);
                    true
                }
                Some(R::RequestTxn(nested)) => collect(nested, ranges),
                Some(R::RequestPut(_) | R::RequestDeleteRange(_)) | None => false,
            })
    }
    let mut ranges = Vec::new();
    collect(req, &mut ranges).then_some(ranges)
}

/// etcd's `checkTxnRequest`: no branch, nor the compares, of this transaction or a nested one
/// may have more than `ops_max` items.
pub fn check_txn_ops(req: &pb::TxnRequest, ops_max: usize) -> Result<(), ServerError> {
    for ops in [req.compare.len(), req.success.len(), req.failure.len()] {
        if ops > ops_max {
            return Err(ServerError::TooManyOps { ops, ops_max });
        }
    }
    for op in req.success.iter().chain(&req.failure) {
        if let Some(pb::request_op::Request::RequestTxn(nested)) = &op.request {
            check_txn_ops(nested, ops_max)?;
        }
    }
    Ok(())
}

pub fn kv_to_proto(kv: &mvcc::KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key.clone(),
        create_revision: kv.create_revision.get(),
        mod_revision: kv.mod_revision.get(),
        version: kv.version,
        value: kv.value.clone(),
        lease: kv.lease.get(),
    }
}

pub fn range_to_proto(resp: &mvcc::RangeResponse) -> pb::RangeResponse {
    pb::RangeResponse {
        header: header(resp.revision),
        kvs: resp.kvs.iter().map(kv_to_proto).collect(),
        more: resp.more,
        count: resp.count,
    }
}

pub fn put_to_proto(resp: &mvcc::PutResponse) -> pb::PutResponse {
    pb::PutResponse {
        header: header(resp.revision),
        prev_kv: resp.prev_kv.as_ref().map(kv_to_proto),
    }
}

pub fn delete_to_proto(resp: &mvcc::DeleteRangeResponse) -> pb::DeleteRangeResponse {
    pb::DeleteRangeResponse {
        header: header(resp.revision),
        deleted: resp.deleted,
        prev_kvs: resp.prev_kvs.iter().map(kv_to_proto).collect(),
    }
}

pub fn txn_to_proto(resp: &mvcc::TxnResponse) -> pb::TxnResponse {
    use pb::response_op::Response as R;
    let responses = resp
        .responses
        .iter()
        .map(|op| pb::ResponseOp {
            response: Some(match op {
                mvcc::ResponseOp::Range(r) => R::ResponseRange(range_to_proto(r)),
                mvcc::ResponseOp::Put(r) => R::ResponsePut(put_to_proto(r)),
                mvcc::ResponseOp::DeleteRange(r) => R::ResponseDeleteRange(delete_to_proto(r)),
                mvcc::ResponseOp::Txn(r) => R::ResponseTxn(txn_to_proto(r)),
            }),
        })
        .collect();
    pb::TxnResponse {
        // A nested transaction has a header with nothing set (revision zero), as in etcd.
        header: header(resp.revision),
        succeeded: resp.succeeded,
        responses,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: etcd's txn op limit applies to compares, each branch and nested transactions.
    /// Method: requests just under and just over a limit of 2.
    #[test]
    fn txn_ops_limit_applies_at_every_level() {
        let put = || pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(
                pb::PutRequest::default(),
            )),
        };
        let ok = pb::TxnRequest {
            success: vec![put(), put()],
            ..Default::default()
        };
        assert_eq!(check_txn_ops(&ok, 2), Ok(()));
        let nested = pb::TxnRequest {
            failure: vec![pb::RequestOp {
                request: Some(pb::request_op::Request::RequestTxn(pb::TxnRequest {
                    compare: vec![pb::Compare::default(); 3],
                    ..Default::default()
                })),
            }],
            ..Default::default()
        };
        assert_eq!(
            check_txn_ops(&nested, 2),
            Err(ServerError::TooManyOps { ops: 3, ops_max: 2 })
        );
    }

    /// Goal: which transactions the edge serves as reads, without the log or its read barrier,
    /// and which it moves off the connection's task. Method: a table of transactions, each
    /// with the three answers expected.
    #[test]
    fn read_only_serializable_and_many_key_transactions() {
        use pb::request_op::Request as R;
        let range = |end: &str, serializable: bool| pb::RequestOp {
            request: Some(R::RequestRange(pb::RangeRequest {
                key: "a".into(),
                range_end: end.to_owned().into(),
                serializable,
                ..Default::default()
            })),
        };
        let put = || pb::RequestOp {
            request: Some(R::RequestPut(pb::PutRequest::default())),
        };
        let nested = |success: Vec<pb::RequestOp>| pb::RequestOp {
            request: Some(R::RequestTxn(pb::TxnRequest {
                success,
                ..Default::default()
            })),
        };
        let none = || pb::RequestOp { request: None };
        // (case, success, failure, read-only, serializable, many keys)
        let table = vec![
            ("empty", vec![], vec![], true, true, false),
            (
                "one get",
                vec![range("", false)],
                vec![],
                true,
                false,
                false,
            ),
            (
                "serializable gets",
                vec![range("", true)],
                vec![range("", true)],
                true,
                true,
                false,
            ),
            (
                "a mix",
                vec![range("", true)],
                vec![range("", false)],
                true,
                false,
                false,
            ),
            ("a prefix", vec![], vec![range("b", true)], true, true, true),
            (
                "a nested prefix",
                vec![nested(vec![range("b", false)])],
                vec![],
                true,
                false,
                true,
            ),
            (
                "a put",
                vec![range("", true), put()],
                vec![],
                false,
                false,
                false,
            ),
            (
                "a nested put",
                vec![nested(vec![put()])],
                vec![],
                false,
                false,
                false,
            ),
            ("no request", vec![none()], vec![], false, false, false),
        ];
        for (case, success, failure, read_only, serializable, many) in table {
            let req = pb::TxnRequest {
                success,
                failure,
                ..Default::default()
            };
            let ranges = txn_ranges(&req);
            assert_eq!(ranges.is_some(), read_only, "{case}");
            let all = |f: fn(&&pb::RangeRequest) -> bool| {
                ranges.as_ref().is_some_and(|r| r.iter().all(f))
            };
            let any = |f: fn(&&pb::RangeRequest) -> bool| {
                ranges.as_ref().is_some_and(|r| r.iter().any(f))
            };
            assert_eq!(all(|r| r.serializable), serializable, "{case}");
            assert_eq!(any(|r| !r.range_end.is_empty()), many, "{case}");
            if let Ok(converted) = txn_from_proto(&req) {
                assert_eq!(converted.is_read_only(), read_only, "{case}");
            }
        }
    }

    /// Goal: unknown enum values from the wire are refused, not panicked on.
    #[test]
    fn unknown_sort_order_is_an_error() {
        let req = pb::RangeRequest {
            sort_order: 42,
            ..Default::default()
        };
        assert!(range_from_proto(&req).is_err());
    }
}
