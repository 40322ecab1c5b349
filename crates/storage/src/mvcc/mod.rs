//! The multi-version key-value store with etcd v3 semantics: the state machine of a Raft group.
//!
//! What lives here: revisions, versions and tombstones exactly as etcd numbers them; Range, Put,
//! DeleteRange, Txn (with nested transactions) and Compact; the event history that watch reads;
//! the keys attached to each lease; consistent snapshots streamed in chunks and restored.
//! What does not: lease lifetimes, watchers, authentication and the mapping to gRPC, which are
//! the server's.
//!
//! Layout: an in-memory key index ([`index`], etcd's `treeIndex`) maps each key to the ids of
//! its versions; the versions themselves live in the embedded engine (redb, see
//! docs/adr/0001-state-machine-engine.md) keyed by `(main, sub)` revision, next to a meta table
//! with the current and compacted revisions and the applied Raft index. A [`WriteBatch`] commits
//! records and meta in one engine transaction, so the applied index and the data it covers are
//! always on disk together. Opening the store rebuilds the index from the engine.
//!
//! The server applies committed Raft entries with [`MvccStore::apply_entries`] (or by hand:
//! [`MvccStore::begin`], [`WriteBatch::apply`] per entry, [`WriteBatch::set_applied_index`],
//! [`WriteBatch::commit`]); reads ([`MvccStore::range`], [`MvccStore::events`]) see committed
//! batches. A range over many keys can leave the store's lock early: [`MvccStore::start_range`]
//! walks the index and the second step, [`DetachedRange::finish`], reads the engine; a
//! transaction that only reads does the same ([`MvccStore::start_read_txn`],
//! [`DetachedTxn::finish`]). A request error (etcd's errors: compacted, future revision,
//! duplicate key, key not found, ...) leaves the store unchanged; any other error means the
//! node must stop.
//!
//! Errors map to etcd's messages through [`MvccError`]'s `Display`; the variants carry what the
//! gRPC layer needs (the compacted or current revision, the offending key).
//!
//! ```
//! use chorus_storage::mvcc::{MvccConfig, MvccStore, PutRequest, RangeRequest, Revision};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let mut store = MvccStore::open(dir.path(), MvccConfig::default()).unwrap();
//! assert_eq!(store.current_revision(), Revision(1));
//! let put = store.put(&PutRequest::new("greeting", "hello")).unwrap();
//! assert_eq!(put.revision, Revision(2));
//! let got = store.range(&RangeRequest::key("greeting")).unwrap();
//! assert_eq!(got.kvs[0].value.as_ref(), b"hello");
//! assert_eq!(got.kvs[0].version, 1);
//! ```

mod codec;
mod commit;
mod detached;
mod error;
mod index;
mod snapshot;
mod store;
mod txn;
mod types;
mod upgrade;
mod view;
mod write;

pub use detached::{DetachedRange, DetachedTxn};
pub use error::{MvccError, MvccResult};
pub use snapshot::{SNAPSHOT_MAGIC, Snapshot, SnapshotMeta, SnapshotRestore};
pub use store::{ENGINE_FILE, MvccConfig, MvccStore};
pub use types::*;
pub use write::WriteBatch;
