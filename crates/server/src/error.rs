//! The one place where Chorus errors become etcd's gRPC status codes and messages.
//!
//! etcd clients (the Go `clientv3`, etcdctl, and the client libraries of other languages)
//! recognise server errors by the pair (gRPC code, message): `clientv3` turns a known message
//! back into a typed error (`rpctypes.ErrCompacted`, `ErrNoLeader`, ...) and decides from the
//! code whether to retry. So every variant of [`ServerError`] maps to exactly the code and the
//! message etcd's `rpctypes` table gives it, and nothing else in the server builds a
//! `tonic::Status` for a domain error (STYLE.md, "Thin edges").
//!
//! The table follows etcd 3.4 and 3.5, which Chorus is wire-compatible with (DESIGN.md). Where
//! etcd 3.6 changed a code (`not capable`, `rpc not supported for learner` and `cluster version
//! not found during downgrade` became FAILED_PRECONDITION), the 3.5 code is kept and the variant
//! says so. Variants that exist only from 3.6 on (`InvalidSortOption`, `ClusterIdMismatch`,
//! `PermissionNotGiven`, `TimeoutWaitAppliedIndex`, `Canceled`, `DeadlineExceeded`) use 3.6's
//! text: older clients see them as unknown errors with the same code, which is how etcd 3.6
//! itself looks to them.
//!
//! Fields carried by some variants (the compacted revision, the leader hint, the sizes of an
//! oversized request) are for the caller and the logs; they never change the wire message,
//! because clients match the message exactly.

use tonic::{Code, Status};

/// An error that a client request can end with, as etcd names it.
///
/// The `Display` text of every variant is etcd's message, byte for byte.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ServerError {
    // ----- Key-value requests -------------------------------------------------------------
    /// A request without a key.
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    /// A key that must exist does not (for example `ignore_value` on a missing key).
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// `ignore_value` was set together with a value.
    #[error("etcdserver: value is provided")]
    ValueProvided,
    /// `ignore_lease` was set together with a lease.
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    /// A transaction with more operations in one branch than `--max-txn-ops`.
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps { ops: usize, ops_max: usize },
    /// A transaction that writes the same key twice in one branch.
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    /// An unknown sort order or target in a range request (etcd 3.6).
    #[error("etcdserver: invalid sort option")]
    InvalidSortOption,
    /// The requested revision is at or below the compaction point.
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted { compact_revision: i64 },
    /// The requested revision is above the current one.
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision { current_revision: i64 },
    /// The backend has reached `--quota-backend-bytes`; only reads and deletes are served.
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,

    // ----- Leases -------------------------------------------------------------------------
    /// The lease does not exist (never granted, revoked or expired).
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound { lease_id: i64 },
    /// A lease grant with an id that is already in use.
    #[error("etcdserver: lease already exists")]
    LeaseExist { lease_id: i64 },
    /// A lease grant with a TTL above the maximum.
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge {
        ttl_seconds: i64,
        ttl_seconds_max: i64,
    },

    // ----- Watch --------------------------------------------------------------------------
    /// The watch was canceled by the server.
    #[error("etcdserver: watch canceled")]
    WatchCanceled,

    // ----- Membership ---------------------------------------------------------------------
    #[error("etcdserver: member ID already exist")]
    MemberExist,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExist,
    /// Removing or adding the member would leave too few started members for a quorum.
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    MemberNotEnoughStarted,
    #[error("etcdserver: given member URLs are invalid")]
    MemberBadUrls,
    #[error("etcdserver: member not found")]
    MemberNotFound,
    #[error("etcdserver: can only promote a learner member")]
    MemberNotLearner,
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("etcdserver: too many learner members in cluster")]
    TooManyLearners,
    /// A request that names another cluster (etcd 3.6).
    #[error("etcdserver: cluster ID mismatch")]
    ClusterIdMismatch,

    // ----- Request limits -----------------------------------------------------------------
    /// A request above `--max-request-bytes`.
    #[error("etcdserver: request is too large")]
    RequestTooLarge {
        request_bytes: u64,
        request_bytes_max: u64,
    },
    /// Too many proposals are waiting to be applied.
    #[error("etcdserver: too many requests")]
    TooManyRequests,

    // ----- Authentication and permissions -------------------------------------------------
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    #[error("etcdserver: user name not found")]
    UserNotFound,
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    /// A role permission request without a permission (etcd 3.6).
    #[error("etcdserver: permission not given")]
    PermissionNotGiven,
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    /// The token was issued before the auth store last changed; clients fetch a new one.
    #[error("etcdserver: revision of auth store is old")]
    AuthOldRevision,

    // ----- Cluster state ------------------------------------------------------------------
    /// No leader is known; clients retry, possibly on another member.
    #[error("etcdserver: no leader")]
    NoLeader,
    /// The request must be served by the leader and this member is not it.
    #[error("etcdserver: not leader")]
    NotLeader { leader_hint: Option<u64> },
    /// The leader changed while the request was in flight; its outcome is unknown.
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    /// The cluster version does not support the request (UNAVAILABLE as in etcd 3.5).
    #[error("etcdserver: not capable")]
    NotCapable,
    /// The member is shutting down.
    #[error("etcdserver: server stopped")]
    Stopped,
    #[error("etcdserver: request timed out")]
    Timeout,
    #[error("etcdserver: request timed out, possibly due to previous leader failure")]
    TimeoutDueToLeaderFail,
    #[error("etcdserver: request timed out, possibly due to connection lost")]
    TimeoutDueToConnectionLost,
    /// A linearizable read waited too long for the applied index to reach the read index
    /// (etcd 3.6).
    #[error("etcdserver: request timed out, waiting for the applied index took too long")]
    TimeoutWaitAppliedIndex,
    #[error("etcdserver: unhealthy cluster")]
    Unhealthy,
    /// Members disagree on the content of the same revision.
    #[error("etcdserver: corrupt cluster")]
    Corrupt,
    /// A learner was asked for something only voters serve (UNAVAILABLE as in etcd 3.5).
    #[error("etcdserver: rpc not supported for learner")]
    NotSupportedForLearner,
    /// A leadership transfer to a member that cannot take it.
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    #[error("etcdserver: request timed out, leader transfer took too long")]
    TimeoutLeaderTransfer,

    // ----- Downgrade ----------------------------------------------------------------------
    /// UNAVAILABLE as in etcd 3.5.
    #[error("etcdserver: cluster version not found during downgrade")]
    ClusterVersionUnavailable,
    #[error("etcdserver: wrong downgrade target version format")]
    WrongDowngradeVersionFormat,
    #[error("etcdserver: invalid downgrade target version")]
    InvalidDowngradeTargetVersion,
    #[error("etcdserver: cluster has a downgrade job in progress")]
    DowngradeInProcess,
    #[error("etcdserver: no inflight downgrade job")]
    NoInflightDowngrade,

    // ----- Request context ----------------------------------------------------------------
    /// The client canceled the request (etcd 3.6).
    #[error("etcdserver: request canceled")]
    Canceled,
    /// The request's deadline passed (etcd 3.6).
    #[error("etcdserver: context deadline exceeded")]
    DeadlineExceeded,

    // ----- Anything else ------------------------------------------------------------------
    /// An error etcd's table has no entry for. etcd sends such errors as UNKNOWN with their own
    /// text; so does Chorus.
    #[error("{message}")]
    Unexpected { message: String },
}

impl ServerError {
    /// The gRPC status code etcd sends for this error.
    pub fn code(&self) -> Code {
        use ServerError as E;
        match self {
            E::EmptyKey
            | E::KeyNotFound
            | E::ValueProvided
            | E::LeaseProvided
            | E::TooManyOps { .. }
            | E::DuplicateKey
            | E::InvalidSortOption
            | E::MemberBadUrls
            | E::RequestTooLarge { .. }
            | E::UserEmpty
            | E::RoleEmpty
            | E::AuthFailed
            | E::PermissionNotGiven
            | E::InvalidAuthMgmt
            | E::AuthOldRevision
            | E::WrongDowngradeVersionFormat
            | E::InvalidDowngradeTargetVersion => Code::InvalidArgument,

            E::Compacted { .. } | E::FutureRevision { .. } | E::LeaseTtlTooLarge { .. } => {
                Code::OutOfRange
            }

            E::NoSpace | E::TooManyRequests => Code::ResourceExhausted,

            E::LeaseNotFound { .. } | E::MemberNotFound => Code::NotFound,

            E::LeaseExist { .. }
            | E::MemberExist
            | E::PeerUrlExist
            | E::MemberNotEnoughStarted
            | E::MemberNotLearner
            | E::LearnerNotReady
            | E::TooManyLearners
            | E::ClusterIdMismatch
            | E::RootUserNotExist
            | E::RootRoleNotExist
            | E::UserAlreadyExist
            | E::UserNotFound
            | E::RoleAlreadyExist
            | E::RoleNotFound
            | E::RoleNotGranted
            | E::PermissionNotGranted
            | E::AuthNotEnabled
            | E::NotLeader { .. }
            | E::BadLeaderTransferee
            | E::DowngradeInProcess
            | E::NoInflightDowngrade => Code::FailedPrecondition,

            E::PermissionDenied => Code::PermissionDenied,
            E::InvalidAuthToken => Code::Unauthenticated,

            E::NoLeader
            | E::LeaderChanged
            | E::NotCapable
            | E::Stopped
            | E::Timeout
            | E::TimeoutDueToLeaderFail
            | E::TimeoutDueToConnectionLost
            | E::TimeoutWaitAppliedIndex
            | E::TimeoutLeaderTransfer
            | E::Unhealthy
            | E::NotSupportedForLearner
            | E::ClusterVersionUnavailable => Code::Unavailable,

            E::Corrupt => Code::DataLoss,
            E::WatchCanceled | E::Canceled => Code::Cancelled,
            E::DeadlineExceeded => Code::DeadlineExceeded,
            E::Unexpected { .. } => Code::Unknown,
        }
    }

    /// The message etcd sends for this error: exactly the `Display` text.
    pub fn message(&self) -> String {
        self.to_string()
    }
}

impl From<chorus_storage::mvcc::MvccError> for ServerError {
    /// The MVCC store's request errors become etcd's; a storage failure reaches the client as
    /// an unexpected error with the store's message (the node stops on it separately).
    fn from(error: chorus_storage::mvcc::MvccError) -> Self {
        use chorus_storage::mvcc::MvccError as M;
        match error {
            M::Compacted { compact_revision } => ServerError::Compacted {
                compact_revision: compact_revision.get(),
            },
            M::FutureRevision { current_revision } => ServerError::FutureRevision {
                current_revision: current_revision.get(),
            },
            M::DuplicateKey { .. } => ServerError::DuplicateKey,
            M::KeyNotFound { .. } => ServerError::KeyNotFound,
            M::ValueProvided => ServerError::ValueProvided,
            M::LeaseProvided => ServerError::LeaseProvided,
            // The store does not report how many operations it found; the edge checks the
            // count first (`kv_convert::check_txn_ops`), so this is a second line of defence.
            M::TooManyOps { ops_max } => ServerError::TooManyOps {
                ops: ops_max.saturating_add(1),
                ops_max,
            },
            M::EmptyKey => ServerError::EmptyKey,
            M::LeaseNotFound { lease } => ServerError::LeaseNotFound {
                lease_id: lease.get(),
            },
            M::LeaseExists { lease } => ServerError::LeaseExist {
                lease_id: lease.get(),
            },
            other => ServerError::Unexpected {
                message: other.to_string(),
            },
        }
    }
}

impl From<ServerError> for Status {
    fn from(error: ServerError) -> Self {
        Status::new(error.code(), error.message())
    }
}

#[cfg(test)]
mod tests {

    /// Goal: the MVCC store's request errors reach clients with etcd's codes and messages.
    /// Method: each request error converted and compared with the table's row.
    #[test]
    fn mvcc_request_errors_map_to_etcd() {
        use chorus_storage::mvcc::{MvccError as M, Revision};
        let cases = [
            (
                M::Compacted {
                    compact_revision: Revision(5),
                },
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
            ),
            (
                M::FutureRevision {
                    current_revision: Revision(5),
                },
                Code::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision",
            ),
            (
                M::DuplicateKey { key: "k".into() },
                Code::InvalidArgument,
                "etcdserver: duplicate key given in txn request",
            ),
            (
                M::KeyNotFound { key: "k".into() },
                Code::InvalidArgument,
                "etcdserver: key not found",
            ),
            (
                M::TooManyOps { ops_max: 2 },
                Code::InvalidArgument,
                "etcdserver: too many operations in txn request",
            ),
            (
                M::EmptyKey,
                Code::InvalidArgument,
                "etcdserver: key is not provided",
            ),
        ];
        for (error, code, message) in cases {
            let status = Status::from(ServerError::from(error));
            assert_eq!(status.code(), code, "{message}");
            assert_eq!(status.message(), message);
        }
    }
    use super::*;

    /// One row per variant: the code and the message etcd's `rpctypes` table gives it.
    fn table() -> Vec<(ServerError, Code, &'static str)> {
        use Code as C;
        use ServerError as E;
        vec![
            (
                E::EmptyKey,
                C::InvalidArgument,
                "etcdserver: key is not provided",
            ),
            (
                E::KeyNotFound,
                C::InvalidArgument,
                "etcdserver: key not found",
            ),
            (
                E::ValueProvided,
                C::InvalidArgument,
                "etcdserver: value is provided",
            ),
            (
                E::LeaseProvided,
                C::InvalidArgument,
                "etcdserver: lease is provided",
            ),
            (
                E::TooManyOps {
                    ops: 129,
                    ops_max: 128,
                },
                C::InvalidArgument,
                "etcdserver: too many operations in txn request",
            ),
            (
                E::DuplicateKey,
                C::InvalidArgument,
                "etcdserver: duplicate key given in txn request",
            ),
            (
                E::InvalidSortOption,
                C::InvalidArgument,
                "etcdserver: invalid sort option",
            ),
            (
                E::Compacted {
                    compact_revision: 7,
                },
                C::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
            ),
            (
                E::FutureRevision {
                    current_revision: 3,
                },
                C::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision",
            ),
            (
                E::NoSpace,
                C::ResourceExhausted,
                "etcdserver: mvcc: database space exceeded",
            ),
            (
                E::LeaseNotFound { lease_id: 42 },
                C::NotFound,
                "etcdserver: requested lease not found",
            ),
            (
                E::LeaseExist { lease_id: 42 },
                C::FailedPrecondition,
                "etcdserver: lease already exists",
            ),
            (
                E::LeaseTtlTooLarge {
                    ttl_seconds: 1 << 40,
                    ttl_seconds_max: 1 << 30,
                },
                C::OutOfRange,
                "etcdserver: too large lease TTL",
            ),
            (E::WatchCanceled, C::Cancelled, "etcdserver: watch canceled"),
            (
                E::MemberExist,
                C::FailedPrecondition,
                "etcdserver: member ID already exist",
            ),
            (
                E::PeerUrlExist,
                C::FailedPrecondition,
                "etcdserver: Peer URLs already exists",
            ),
            (
                E::MemberNotEnoughStarted,
                C::FailedPrecondition,
                "etcdserver: re-configuration failed due to not enough started members",
            ),
            (
                E::MemberBadUrls,
                C::InvalidArgument,
                "etcdserver: given member URLs are invalid",
            ),
            (
                E::MemberNotFound,
                C::NotFound,
                "etcdserver: member not found",
            ),
            (
                E::MemberNotLearner,
                C::FailedPrecondition,
                "etcdserver: can only promote a learner member",
            ),
            (
                E::LearnerNotReady,
                C::FailedPrecondition,
                "etcdserver: can only promote a learner member which is in sync with leader",
            ),
            (
                E::TooManyLearners,
                C::FailedPrecondition,
                "etcdserver: too many learner members in cluster",
            ),
            (
                E::ClusterIdMismatch,
                C::FailedPrecondition,
                "etcdserver: cluster ID mismatch",
            ),
            (
                E::RequestTooLarge {
                    request_bytes: 2 << 20,
                    request_bytes_max: 1_572_864,
                },
                C::InvalidArgument,
                "etcdserver: request is too large",
            ),
            (
                E::TooManyRequests,
                C::ResourceExhausted,
                "etcdserver: too many requests",
            ),
            (
                E::RootUserNotExist,
                C::FailedPrecondition,
                "etcdserver: root user does not exist",
            ),
            (
                E::RootRoleNotExist,
                C::FailedPrecondition,
                "etcdserver: root user does not have root role",
            ),
            (
                E::UserAlreadyExist,
                C::FailedPrecondition,
                "etcdserver: user name already exists",
            ),
            (
                E::UserEmpty,
                C::InvalidArgument,
                "etcdserver: user name is empty",
            ),
            (
                E::UserNotFound,
                C::FailedPrecondition,
                "etcdserver: user name not found",
            ),
            (
                E::RoleAlreadyExist,
                C::FailedPrecondition,
                "etcdserver: role name already exists",
            ),
            (
                E::RoleNotFound,
                C::FailedPrecondition,
                "etcdserver: role name not found",
            ),
            (
                E::RoleEmpty,
                C::InvalidArgument,
                "etcdserver: role name is empty",
            ),
            (
                E::AuthFailed,
                C::InvalidArgument,
                "etcdserver: authentication failed, invalid user ID or password",
            ),
            (
                E::PermissionNotGiven,
                C::InvalidArgument,
                "etcdserver: permission not given",
            ),
            (
                E::PermissionDenied,
                C::PermissionDenied,
                "etcdserver: permission denied",
            ),
            (
                E::RoleNotGranted,
                C::FailedPrecondition,
                "etcdserver: role is not granted to the user",
            ),
            (
                E::PermissionNotGranted,
                C::FailedPrecondition,
                "etcdserver: permission is not granted to the role",
            ),
            (
                E::AuthNotEnabled,
                C::FailedPrecondition,
                "etcdserver: authentication is not enabled",
            ),
            (
                E::InvalidAuthToken,
                C::Unauthenticated,
                "etcdserver: invalid auth token",
            ),
            (
                E::InvalidAuthMgmt,
                C::InvalidArgument,
                "etcdserver: invalid auth management",
            ),
            (
                E::AuthOldRevision,
                C::InvalidArgument,
                "etcdserver: revision of auth store is old",
            ),
            (E::NoLeader, C::Unavailable, "etcdserver: no leader"),
            (
                E::NotLeader {
                    leader_hint: Some(2),
                },
                C::FailedPrecondition,
                "etcdserver: not leader",
            ),
            (
                E::NotLeader { leader_hint: None },
                C::FailedPrecondition,
                "etcdserver: not leader",
            ),
            (
                E::LeaderChanged,
                C::Unavailable,
                "etcdserver: leader changed",
            ),
            (E::NotCapable, C::Unavailable, "etcdserver: not capable"),
            (E::Stopped, C::Unavailable, "etcdserver: server stopped"),
            (E::Timeout, C::Unavailable, "etcdserver: request timed out"),
            (
                E::TimeoutDueToLeaderFail,
                C::Unavailable,
                "etcdserver: request timed out, possibly due to previous leader failure",
            ),
            (
                E::TimeoutDueToConnectionLost,
                C::Unavailable,
                "etcdserver: request timed out, possibly due to connection lost",
            ),
            (
                E::TimeoutWaitAppliedIndex,
                C::Unavailable,
                "etcdserver: request timed out, waiting for the applied index took too long",
            ),
            (
                E::Unhealthy,
                C::Unavailable,
                "etcdserver: unhealthy cluster",
            ),
            (E::Corrupt, C::DataLoss, "etcdserver: corrupt cluster"),
            (
                E::NotSupportedForLearner,
                C::Unavailable,
                "etcdserver: rpc not supported for learner",
            ),
            (
                E::BadLeaderTransferee,
                C::FailedPrecondition,
                "etcdserver: bad leader transferee",
            ),
            (
                E::TimeoutLeaderTransfer,
                C::Unavailable,
                "etcdserver: request timed out, leader transfer took too long",
            ),
            (
                E::ClusterVersionUnavailable,
                C::Unavailable,
                "etcdserver: cluster version not found during downgrade",
            ),
            (
                E::WrongDowngradeVersionFormat,
                C::InvalidArgument,
                "etcdserver: wrong downgrade target version format",
            ),
            (
                E::InvalidDowngradeTargetVersion,
                C::InvalidArgument,
                "etcdserver: invalid downgrade target version",
            ),
            (
                E::DowngradeInProcess,
                C::FailedPrecondition,
                "etcdserver: cluster has a downgrade job in progress",
            ),
            (
                E::NoInflightDowngrade,
                C::FailedPrecondition,
                "etcdserver: no inflight downgrade job",
            ),
            (E::Canceled, C::Cancelled, "etcdserver: request canceled"),
            (
                E::DeadlineExceeded,
                C::DeadlineExceeded,
                "etcdserver: context deadline exceeded",
            ),
            (
                E::Unexpected {
                    message: "disk on fire".into(),
                },
                C::Unknown,
                "disk on fire",
            ),
        ]
    }

    // Goal: every variant reaches the client with etcd's exact code and message.
    // Method: convert each row of the table into a tonic::Status and compare both parts.
    #[test]
    fn every_variant_maps_to_etcd_code_and_message() {
        for (error, code, message) in table() {
            let status = Status::from(error.clone());
            assert_eq!(status.code(), code, "code of {error:?}");
            assert_eq!(status.message(), message, "message of {error:?}");
        }
    }

    // Goal: no two variants share a message, so a client can tell them apart (the one shared
    // message is NotLeader's, listed twice with different hints).
    // Method: collect the messages of the table into a set.
    #[test]
    fn messages_are_distinct() {
        let rows = table();
        let mut messages: Vec<&str> = rows.iter().map(|(_, _, m)| *m).collect();
        messages.sort_unstable();
        let before = messages.len();
        messages.dedup();
        assert_eq!(
            before - messages.len(),
            1,
            "only the NotLeader row is repeated"
        );
    }

    // Goal: the table covers every variant, so a variant added later without a row is caught.
    // Method: count the distinct variants (by discriminant) in the table against the number of
    // variants the enum declares, which `variant_count` states by listing them in a match.
    #[test]
    fn table_covers_every_variant() {
        let rows = table();
        let seen: std::collections::HashSet<std::mem::Discriminant<ServerError>> = rows
            .iter()
            .map(|(e, _, _)| std::mem::discriminant(e))
            .collect();
        assert_eq!(seen.len(), VARIANT_COUNT);
    }

    /// The number of variants of `ServerError`. The exhaustive match below fails to compile
    /// when a variant is added, which sends the author here to update the count and the table.
    const VARIANT_COUNT: usize = 64;

    #[allow(dead_code, reason = "exists only to be checked for exhaustiveness")]
    fn exhaustive(error: &ServerError) {
        use ServerError as E;
        match error {
            E::EmptyKey
            | E::KeyNotFound
            | E::ValueProvided
            | E::LeaseProvided
            | E::TooManyOps { .. }
            | E::DuplicateKey
            | E::InvalidSortOption
            | E::Compacted { .. }
            | E::FutureRevision { .. }
            | E::NoSpace
            | E::LeaseNotFound { .. }
            | E::LeaseExist { .. }
            | E::LeaseTtlTooLarge { .. }
            | E::WatchCanceled
            | E::MemberExist
            | E::PeerUrlExist
            | E::MemberNotEnoughStarted
            | E::MemberBadUrls
            | E::MemberNotFound
            | E::MemberNotLearner
            | E::LearnerNotReady
            | E::TooManyLearners
            | E::ClusterIdMismatch
            | E::RequestTooLarge { .. }
            | E::TooManyRequests
            | E::RootUserNotExist
            | E::RootRoleNotExist
            | E::UserAlreadyExist
            | E::UserEmpty
            | E::UserNotFound
            | E::RoleAlreadyExist
            | E::RoleNotFound
            | E::RoleEmpty
            | E::AuthFailed
            | E::PermissionNotGiven
            | E::PermissionDenied
            | E::RoleNotGranted
            | E::PermissionNotGranted
            | E::AuthNotEnabled
            | E::InvalidAuthToken
            | E::InvalidAuthMgmt
            | E::AuthOldRevision
            | E::NoLeader
            | E::NotLeader { .. }
            | E::LeaderChanged
            | E::NotCapable
            | E::Stopped
            | E::Timeout
            | E::TimeoutDueToLeaderFail
            | E::TimeoutDueToConnectionLost
            | E::TimeoutWaitAppliedIndex
            | E::Unhealthy
            | E::Corrupt
            | E::NotSupportedForLearner
            | E::BadLeaderTransferee
            | E::TimeoutLeaderTransfer
            | E::ClusterVersionUnavailable
            | E::WrongDowngradeVersionFormat
            | E::InvalidDowngradeTargetVersion
            | E::DowngradeInProcess
            | E::NoInflightDowngrade
            | E::Canceled
            | E::DeadlineExceeded
            | E::Unexpected { .. } => {}
        }
    }
}
