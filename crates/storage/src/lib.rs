//! `chorus-storage`: the durable engine of a Chorus node.
//!
//! - [`disk`]: the `Disk` abstraction, with the real file system and a faulty test disk.
//! - [`wal`]: the segmented write-ahead log holding the Raft entries and hard state of every
//!   group on the node, and the [`chorus_raft::LogStorage`] built on it.
//! - [`mvcc`]: the multi-version key-value store with etcd v3 semantics on redb (the state machine
//!   of a Raft group, with its applied index), its event history and its snapshots.

pub mod disk;
pub mod metrics;
pub mod mvcc;
pub mod wal;
mod worker;
