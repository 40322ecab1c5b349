//! The errors of the MVCC store. The `Display` of the request errors is etcd's exact message, so
//! the gRPC layer can map a variant to etcd's code and message in one place.

use bytes::Bytes;

use super::types::{LeaseId, Revision};

/// What went wrong in an MVCC operation.
///
/// The first group are request errors: the store is unchanged and keeps serving. The last group
/// are storage errors: the node must stop (DESIGN.md), and the store refuses further writes.
#[derive(Debug, thiserror::Error)]
pub enum MvccError {
    /// The requested revision is below the compacted revision (for a compaction: not above it).
    #[error("mvcc: required revision has been compacted")]
    Compacted { compact_revision: Revision },
    /// The requested revision is above the current revision.
    #[error("mvcc: required revision is a future revision")]
    FutureRevision { current_revision: Revision },
    /// A transaction branch writes the same key twice (etcd's interval check).
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey { key: Bytes },
    /// `ignore_value` or `ignore_lease` on a key that does not exist.
    #[error("etcdserver: key not found")]
    KeyNotFound { key: Bytes },
    /// `ignore_value` together with a non-empty value.
    #[error("etcdserver: value is provided")]
    ValueProvided,
    /// `ignore_lease` together with a lease.
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    /// A transaction (or a nested one) has more compares or operations in a branch than allowed.
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps { ops_max: usize },
    /// An empty key in a range, put, delete or compare.
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    /// A put attaches, or a revocation names, a lease the store does not hold.
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound { lease: LeaseId },
    /// A grant names a lease the store already holds.
    #[error("etcdserver: lease already exists")]
    LeaseExists { lease: LeaseId },

    /// The embedded engine failed.
    #[error("mvcc engine: {0}")]
    Engine(#[source] Box<redb::Error>),
    /// A file system operation failed.
    #[error("mvcc: {context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    /// Bytes read from the engine or a snapshot do not decode.
    #[error("mvcc: corrupt {what}: {detail}")]
    Corrupt { what: &'static str, detail: String },
    /// A snapshot stream is malformed or does not match its checksum.
    #[error("mvcc snapshot: {detail}")]
    Snapshot { detail: String },
    /// A configuration value is out of range.
    #[error("mvcc config: {detail}")]
    Config { detail: String },
    /// A store file in an older file format of the engine could not be rewritten in the
    /// current one (the file is left for the older format's engine to open).
    #[error("mvcc: rewriting the store file from the engine's file format v{from}: {detail}")]
    Upgrade { from: u8, detail: String },
    /// The store in this file cannot be opened (the cause says why: engine, corruption, I/O).
    #[error("mvcc: cannot open {}: {source}", path.display())]
    Open {
        path: std::path::PathBuf,
        source: Box<MvccError>,
    },
    /// An earlier commit failed; the in-memory index may be ahead of the engine.
    #[error("mvcc: the store failed earlier and accepts no more writes")]
    Failed,
}

impl MvccError {
    /// Whether this is a request error that left the store unchanged (as opposed to a storage
    /// failure after which the node must stop).
    pub fn is_request_error(&self) -> bool {
        matches!(
            self,
            MvccError::Compacted { .. }
                | MvccError::FutureRevision { .. }
                | MvccError::DuplicateKey { .. }
                | MvccError::KeyNotFound { .. }
                | MvccError::ValueProvided
                | MvccError::LeaseProvided
                | MvccError::TooManyOps { .. }
                | MvccError::EmptyKey
                | MvccError::LeaseNotFound { .. }
                | MvccError::LeaseExists { .. }
        )
    }
}

/// Converts any of redb's specific errors into an [`MvccError`].
pub(crate) fn engine<E: Into<redb::Error>>(error: E) -> MvccError {
    MvccError::Engine(Box::new(error.into()))
}

/// A shorthand for results of this module.
pub type MvccResult<T> = Result<T, MvccError>;
