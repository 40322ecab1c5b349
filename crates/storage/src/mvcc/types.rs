//! The vocabulary of the MVCC store: revisions, leases, key-values, events, and the requests and
//! responses of the etcd v3 KV API in plain Rust (the gRPC layer maps them to and from protobuf).

use std::fmt;

use bytes::Bytes;

/// A main revision of the store, as etcd numbers them: an empty store is at revision 1 and every
/// write (a put, a delete that deleted something, a transaction that wrote something) makes the
/// next one. Signed because the etcd API carries revisions as `int64` and uses 0 and negative
/// numbers to mean "the current revision" in requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision(pub i64);

impl Revision {
    /// The revision of an empty store.
    pub const FIRST: Revision = Revision(1);

    /// The raw number.
    pub const fn get(self) -> i64 {
        self.0
    }

    /// The revision after this one.
    pub const fn next(self) -> Revision {
        Revision(self.0 + 1)
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A lease id as etcd gives them (`int64`); zero means "no lease".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeaseId(pub i64);

impl LeaseId {
    /// No lease attached.
    pub const NONE: LeaseId = LeaseId(0);

    /// The raw number.
    pub const fn get(self) -> i64 {
        self.0
    }

    /// Whether this is a real lease (not [`LeaseId::NONE`]).
    pub const fn is_some(self) -> bool {
        self.0 != 0
    }
}

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A key and the state of one of its versions, as etcd's `mvccpb.KeyValue`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Bytes,
    /// The revision of the put that created the key in its current generation (a delete and a
    /// later put start a new generation).
    pub create_revision: Revision,
    /// The revision of the last modification.
    pub mod_revision: Revision,
    /// The number of puts since the key was created; 1 after the creating put.
    pub version: i64,
    pub value: Bytes,
    pub lease: LeaseId,
}

/// What an event did to its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change in the history, as watch delivers it.
///
/// For a delete, `kv` holds only the key and the `mod_revision` of the delete, as in etcd.
/// `prev_kv` is the key's state just before the change, when that state is still retained (it is
/// `None` for a creation, and when the previous version was compacted away).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
    pub prev_kv: Option<KeyValue>,
}

/// Events of consecutive revisions, never splitting one revision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventBatch {
    pub events: Vec<Event>,
    /// The first revision not included: the revision to ask for next.
    pub next: Revision,
}

/// The order of a range's results.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortOrder {
    /// Key order, unless the target is not the key (then ascending by the target).
    #[default]
    None,
    Ascend,
    Descend,
}

/// The field a range sorts by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortTarget {
    #[default]
    Key,
    Version,
    Create,
    Mod,
    Value,
}

/// etcd's `RangeRequest`.
///
/// `range_end` follows etcd: empty means the single key `key`; a single zero byte means every key
/// `>= key`; otherwise the half-open interval `[key, range_end)`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeRequest {
    pub key: Bytes,
    pub range_end: Bytes,
    /// At most this many keys; zero or negative means no limit.
    pub limit: i64,
    /// Read at this revision; zero or negative means the current one.
    pub revision: Revision,
    pub sort_order: SortOrder,
    pub sort_target: SortTarget,
    pub keys_only: bool,
    pub count_only: bool,
    pub min_mod_revision: Revision,
    pub max_mod_revision: Revision,
    pub min_create_revision: Revision,
    pub max_create_revision: Revision,
}

impl RangeRequest {
    /// A read of one key at the current revision.
    pub fn key(key: impl Into<Bytes>) -> RangeRequest {
        RangeRequest {
            key: key.into(),
            ..RangeRequest::default()
        }
    }

    /// A read of every key in `[key, range_end)` (with etcd's `range_end` conventions).
    pub fn range(key: impl Into<Bytes>, range_end: impl Into<Bytes>) -> RangeRequest {
        RangeRequest {
            key: key.into(),
            range_end: range_end.into(),
            ..RangeRequest::default()
        }
    }
}

/// etcd's `RangeResponse`; `revision` is the header revision (the store's current revision).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeResponse {
    pub revision: Revision,
    pub kvs: Vec<KeyValue>,
    /// Whether the limit left out keys.
    pub more: bool,
    /// The number of keys in the range at the read revision, regardless of the limit and of the
    /// revision filters (as etcd counts).
    pub count: i64,
}

/// etcd's `PutRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutRequest {
    pub key: Bytes,
    pub value: Bytes,
    pub lease: LeaseId,
    pub prev_kv: bool,
    /// Keep the current value (the key must exist, and `value` must be empty).
    pub ignore_value: bool,
    /// Keep the current lease (the key must exist, and `lease` must be none).
    pub ignore_lease: bool,
}

impl PutRequest {
    /// A plain put of `value` at `key`.
    pub fn new(key: impl Into<Bytes>, value: impl Into<Bytes>) -> PutRequest {
        PutRequest {
            key: key.into(),
            value: value.into(),
            ..PutRequest::default()
        }
    }
}

/// etcd's `PutResponse`; `revision` is the header revision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutResponse {
    pub revision: Revision,
    pub prev_kv: Option<KeyValue>,
}

/// etcd's `DeleteRangeRequest` (same `range_end` conventions as [`RangeRequest`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeleteRangeRequest {
    pub key: Bytes,
    pub range_end: Bytes,
    pub prev_kv: bool,
}

impl DeleteRangeRequest {
    /// A delete of one key.
    pub fn key(key: impl Into<Bytes>) -> DeleteRangeRequest {
        DeleteRangeRequest {
            key: key.into(),
            ..DeleteRangeRequest::default()
        }
    }

    /// A delete of every key in the range.
    pub fn range(key: impl Into<Bytes>, range_end: impl Into<Bytes>) -> DeleteRangeRequest {
        DeleteRangeRequest {
            key: key.into(),
            range_end: range_end.into(),
            prev_kv: false,
        }
    }
}

/// etcd's `DeleteRangeResponse`; `revision` is the header revision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeleteRangeResponse {
    pub revision: Revision,
    pub deleted: i64,
    pub prev_kvs: Vec<KeyValue>,
}

/// How a compare relates the stored field to the given one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareResult {
    Equal,
    Greater,
    Less,
    NotEqual,
}

/// The field a compare reads, with the operand it is compared to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompareTarget {
    Version(i64),
    Create(Revision),
    Mod(Revision),
    Value(Bytes),
    Lease(LeaseId),
}

/// etcd's `Compare`: every key in the range must satisfy it (same `range_end` conventions as
/// [`RangeRequest`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compare {
    pub key: Bytes,
    pub range_end: Bytes,
    pub result: CompareResult,
    pub target: CompareTarget,
}

impl Compare {
    /// A compare of one key.
    pub fn key(key: impl Into<Bytes>, result: CompareResult, target: CompareTarget) -> Compare {
        Compare {
            key: key.into(),
            range_end: Bytes::new(),
            result,
            target,
        }
    }
}

/// One operation of a transaction branch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestOp {
    Range(RangeRequest),
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
}

/// etcd's `TxnRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnRequest {
    pub compare: Vec<Compare>,
    pub success: Vec<RequestOp>,
    pub failure: Vec<RequestOp>,
}

impl TxnRequest {
    /// Whether the transaction only reads: every operation of both branches, and of the
    /// branches of its nested transactions, is a range. Such a transaction can be served as a
    /// read ([`MvccStore::read_txn`](super::MvccStore::read_txn)).
    pub fn is_read_only(&self) -> bool {
        self.success.iter().chain(&self.failure).all(|op| match op {
            RequestOp::Range(_) => true,
            RequestOp::Txn(nested) => nested.is_read_only(),
            RequestOp::Put(_) | RequestOp::DeleteRange(_) => false,
        })
    }
}

/// The response to one [`RequestOp`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponseOp {
    Range(RangeResponse),
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
}

/// etcd's `TxnResponse`. `revision` is the header revision: for the outer transaction the store's
/// revision after it; for a nested transaction zero, as etcd leaves a nested header unset. The
/// responses of the operations carry the revisions etcd gives them inside a transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnResponse {
    pub revision: Revision,
    pub succeeded: bool,
    pub responses: Vec<ResponseOp>,
}

/// etcd's `CompactionResponse`; `revision` is the header revision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactResponse {
    pub revision: Revision,
}

/// A write the server applies from a committed Raft entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOp {
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
    /// Compact up to this revision. The store always removes the compacted versions in the same
    /// engine transaction, so etcd's `physical` flag is always satisfied.
    Compact(Revision),
    /// Records a lease (its id already chosen, its TTL already checked by the server).
    LeaseGrant(LeaseGrantRequest),
    /// Forgets a lease and deletes its keys at one revision.
    LeaseRevoke(LeaseId),
}

/// The response to a [`WriteOp`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteResponse {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compact(CompactResponse),
    LeaseGrant(LeaseGrantResponse),
    LeaseRevoke(LeaseRevokeResponse),
}

/// A lease to record: etcd's `LeaseGrantRequest` once the server picked the id (never
/// [`LeaseId::NONE`]) and settled the TTL (in seconds, positive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseGrantRequest {
    pub id: LeaseId,
    pub ttl: i64,
}

/// The answer to a lease grant; `revision` is the header revision (a grant makes none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseGrantResponse {
    pub revision: Revision,
    pub id: LeaseId,
    pub ttl: i64,
}

/// The answer to a lease revocation; `revision` is the header revision: the revision of the
/// deletes when the lease had keys, else the unchanged current revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseRevokeResponse {
    pub revision: Revision,
    /// How many keys the revocation deleted.
    pub deleted: i64,
}

/// The answer to [`MvccStore::hash_kv`](super::MvccStore::hash_kv), as etcd's `HashKVResponse`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashKv {
    pub hash: u32,
    /// The revision the hash covers (up to and including).
    pub revision: Revision,
    pub compact_revision: Revision,
    /// The header revision: the store's current revision.
    pub current_revision: Revision,
}
