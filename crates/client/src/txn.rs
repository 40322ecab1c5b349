//! A typed transaction builder: `when` compares, `and_then` ops, `or_else` ops, nested txns.
//!
//! ```
//! use chorus_client::txn::{Cmp, Compare, Op, Txn};
//! use chorus_client::PutOptions;
//!
//! // Create "config" only if it does not exist; otherwise read it.
//! let txn = Txn::new()
//!     .when([Compare::create_revision("config", Cmp::Equal, 0)])
//!     .and_then([Op::put("config", "v1", PutOptions::default())])
//!     .or_else([Op::get("config", Default::default())]);
//! assert!(!txn.is_read_only());
//! ```

use bytes::Bytes;
use chorus_proto::etcdserverpb as pb;
use pb::compare::{CompareResult, CompareTarget, TargetUnion};

use crate::client::Kind;
use crate::kv::{
    DeleteOptions, GetOptions, PutOptions, delete_request, put_request, range_request,
};

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    /// `==`
    Equal,
    /// `!=`
    NotEqual,
    /// `>`
    Greater,
    /// `<`
    Less,
}

impl Cmp {
    fn result(self) -> CompareResult {
        match self {
            Cmp::Equal => CompareResult::Equal,
            Cmp::NotEqual => CompareResult::NotEqual,
            Cmp::Greater => CompareResult::Greater,
            Cmp::Less => CompareResult::Less,
        }
    }
}

/// One condition of a txn.
#[derive(Debug, Clone, PartialEq)]
pub struct Compare(pb::Compare);

impl Compare {
    fn new(key: &[u8], cmp: Cmp, target: CompareTarget, value: TargetUnion) -> Compare {
        Compare(pb::Compare {
            result: cmp.result() as i32,
            target: target as i32,
            key: Bytes::copy_from_slice(key),
            range_end: Bytes::new(),
            target_union: Some(value),
        })
    }

    /// Compares the key's value (bytes, lexicographically).
    pub fn value(key: impl AsRef<[u8]>, cmp: Cmp, value: impl AsRef<[u8]>) -> Compare {
        let value = Bytes::copy_from_slice(value.as_ref());
        Compare::new(
            key.as_ref(),
            cmp,
            CompareTarget::Value,
            TargetUnion::Value(value),
        )
    }

    /// Compares the key's version (0: the key does not exist).
    pub fn version(key: impl AsRef<[u8]>, cmp: Cmp, version: i64) -> Compare {
        Compare::new(
            key.as_ref(),
            cmp,
            CompareTarget::Version,
            TargetUnion::Version(version),
        )
    }

    /// Compares the key's creation revision (0: the key does not exist).
    pub fn create_revision(key: impl AsRef<[u8]>, cmp: Cmp, revision: i64) -> Compare {
        let target = TargetUnion::CreateRevision(revision);
        Compare::new(key.as_ref(), cmp, CompareTarget::Create, target)
    }

    /// Compares the key's last modification revision.
    pub fn mod_revision(key: impl AsRef<[u8]>, cmp: Cmp, revision: i64) -> Compare {
        let target = TargetUnion::ModRevision(revision);
        Compare::new(key.as_ref(), cmp, CompareTarget::Mod, target)
    }

    /// Compares the key's lease ID.
    pub fn lease(key: impl AsRef<[u8]>, cmp: Cmp, lease: i64) -> Compare {
        Compare::new(
            key.as_ref(),
            cmp,
            CompareTarget::Lease,
            TargetUnion::Lease(lease),
        )
    }

    /// Applies the comparison to every key in `[key, range_end)` instead of one key.
    pub fn with_range_end(mut self, range_end: impl AsRef<[u8]>) -> Compare {
        self.0.range_end = Bytes::copy_from_slice(range_end.as_ref());
        self
    }

    /// The wire message.
    pub fn into_proto(self) -> pb::Compare {
        self.0
    }
}

/// One operation of a txn branch.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// A range read.
    Get(pb::RangeRequest),
    /// A put.
    Put(pb::PutRequest),
    /// A delete.
    Delete(pb::DeleteRangeRequest),
    /// A nested transaction.
    Txn(Box<Txn>),
}

impl Op {
    /// A read.
    pub fn get(key: impl AsRef<[u8]>, options: GetOptions) -> Op {
        Op::Get(range_request(key.as_ref(), &options))
    }

    /// A put.
    pub fn put(key: impl AsRef<[u8]>, value: impl AsRef<[u8]>, options: PutOptions) -> Op {
        Op::Put(put_request(key.as_ref(), value.as_ref(), &options))
    }

    /// A delete.
    pub fn delete(key: impl AsRef<[u8]>, options: DeleteOptions) -> Op {
        Op::Delete(delete_request(key.as_ref(), &options))
    }

    /// A nested txn.
    pub fn txn(txn: Txn) -> Op {
        Op::Txn(Box::new(txn))
    }

    fn is_read_only(&self) -> bool {
        match self {
            Op::Get(_) => true,
            Op::Put(_) | Op::Delete(_) => false,
            Op::Txn(txn) => txn.is_read_only(),
        }
    }

    fn into_proto(self) -> pb::RequestOp {
        use pb::request_op::Request;
        let request = match self {
            Op::Get(r) => Request::RequestRange(r),
            Op::Put(r) => Request::RequestPut(r),
            Op::Delete(r) => Request::RequestDeleteRange(r),
            Op::Txn(txn) => Request::RequestTxn(txn.into_request()),
        };
        pb::RequestOp {
            request: Some(request),
        }
    }
}

/// A transaction: if every compare holds, the `and_then` ops run, otherwise the `or_else` ops,
/// atomically at one revision.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Txn {
    compares: Vec<Compare>,
    success: Vec<Op>,
    failure: Vec<Op>,
    idempotent: bool,
}

impl Txn {
    /// An empty txn (always succeeds, does nothing).
    pub fn new() -> Txn {
        Txn::default()
    }

    /// Adds conditions (all must hold).
    pub fn when(mut self, compares: impl IntoIterator<Item = Compare>) -> Txn {
        self.compares.extend(compares);
        self
    }

    /// Adds ops run when the conditions hold.
    pub fn and_then(mut self, ops: impl IntoIterator<Item = Op>) -> Txn {
        self.success.extend(ops);
        self
    }

    /// Adds ops run when a condition fails.
    pub fn or_else(mut self, ops: impl IntoIterator<Item = Op>) -> Txn {
        self.failure.extend(ops);
        self
    }

    /// Declares that running this txn twice is harmless (typically because its compares make
    /// the second run a no-op), so it may be retried when an attempt's outcome is unknown.
    pub fn idempotent(mut self) -> Txn {
        self.idempotent = true;
        self
    }

    /// Whether no branch writes.
    pub fn is_read_only(&self) -> bool {
        self.success
            .iter()
            .chain(&self.failure)
            .all(Op::is_read_only)
    }

    pub(crate) fn kind(&self) -> Kind {
        if self.is_read_only() {
            Kind::Read
        } else if self.idempotent {
            Kind::Idempotent
        } else {
            Kind::Write
        }
    }

    /// The wire message.
    pub fn into_request(self) -> pb::TxnRequest {
        pb::TxnRequest {
            compare: self.compares.into_iter().map(Compare::into_proto).collect(),
            success: self.success.into_iter().map(Op::into_proto).collect(),
            failure: self.failure.into_iter().map(Op::into_proto).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_produces_etcd_messages_and_kinds() {
        // Goal: the builder maps each compare and op to etcd's fields, nests txns, and derives
        // the retry kind from the ops. Method: build and inspect.
        let inner = Txn::new().and_then([Op::get("a", GetOptions::default())]);
        assert_eq!(inner.kind(), Kind::Read);
        let txn = Txn::new()
            .when([
                Compare::value("a", Cmp::Equal, "1"),
                Compare::version("b", Cmp::Greater, 2),
                Compare::mod_revision("c", Cmp::Less, 9),
                Compare::create_revision("d", Cmp::NotEqual, 0).with_range_end("e"),
            ])
            .and_then([Op::txn(inner)])
            .or_else([Op::delete("a", DeleteOptions::default())]);
        assert_eq!(txn.kind(), Kind::Write);
        assert_eq!(txn.clone().idempotent().kind(), Kind::Idempotent);
        let request = txn.into_request();
        assert_eq!(request.compare.len(), 4);
        assert_eq!(request.compare[1].target, CompareTarget::Version as i32);
        assert_eq!(request.compare[1].result, CompareResult::Greater as i32);
        assert_eq!(request.compare[3].range_end, Bytes::from_static(b"e"));
        assert!(matches!(
            request.success[0].request,
            Some(pb::request_op::Request::RequestTxn(_))
        ));
        assert!(matches!(
            request.failure[0].request,
            Some(pb::request_op::Request::RequestDeleteRange(_))
        ));
    }
}
