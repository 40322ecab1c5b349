//! The interface through which the core reads the stable part of the log.
//!
//! The core never writes here. The application persists what a [`crate::Ready`] hands it (entries,
//! hard state, snapshot) and then acknowledges it; from then on the core reads those entries back
//! through this trait. Entries not yet handed over live in the core's own unstable buffer.

use crate::types::{ConfState, Entry, HardState, LogIndex, Snapshot, Term};

/// What a node finds on stable storage when it starts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RaftState {
    pub hard_state: HardState,
    pub conf_state: ConfState,
}

/// Errors a [`LogStorage`] reports.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StorageError {
    /// The requested index is older than the first index kept: it was compacted into a snapshot.
    #[error("log index is compacted")]
    Compacted,
    /// The requested entries are past the last index stored.
    #[error("log entries are unavailable")]
    Unavailable,
    /// A snapshot is being built; the caller should try again later.
    #[error("snapshot is temporarily unavailable")]
    SnapshotTemporarilyUnavailable,
    /// The storage itself failed. This is fatal for the node.
    #[error("storage failure: {0}")]
    Io(String),
}

/// Read access to the persisted log of one group.
///
/// Invariants an implementation keeps:
/// - entries are contiguous from `first_index()` to `last_index()` inclusive;
/// - `term(first_index() - 1)` answers (it is the term of the latest snapshot, or zero);
/// - `first_index() - 1 <= last_index()`; an empty log has `first_index() == last_index() + 1`.
pub trait LogStorage {
    /// The hard state and configuration to start from.
    fn initial_state(&self) -> Result<RaftState, StorageError>;

    /// Entries in `[low, high)`, stopping before the total would pass `bytes_max`, but always at
    /// least one entry when the range is not empty.
    fn entries(&self, low: LogIndex, high: LogIndex, bytes_max: u64)
    -> Result<Vec<Entry>, StorageError>;

    /// The term of the entry at `index`, for any index in `[first_index() - 1, last_index()]`.
    fn term(&self, index: LogIndex) -> Result<Term, StorageError>;

    /// The index of the first entry still kept (one past the latest snapshot).
    fn first_index(&self) -> Result<LogIndex, StorageError>;

    /// The index of the last entry stored.
    fn last_index(&self) -> Result<LogIndex, StorageError>;

    /// The latest snapshot, which must cover at least `request_index`; otherwise
    /// `SnapshotTemporarilyUnavailable` until the application has built a newer one.
    fn snapshot(&self, request_index: LogIndex) -> Result<Snapshot, StorageError>;
}
