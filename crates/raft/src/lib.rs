//! `chorus-raft`: the Raft consensus core of Chorus, as a pure state machine.
//!
//! The core does no I/O, reads no clock and draws no global randomness. Time is [`RawNode::tick`];
//! randomness comes from the seed in [`Config`]. Everything it wants done it says through a
//! numbered [`Ready`]. This is what lets `chorus-sim` replay any run from its seed.
//!
//! # Driving a node
//!
//! ```text
//! loop {
//!     on a timer:            node.tick()
//!     on a peer message:     node.step(message)?
//!     on a client request:   node.propose(data)? / node.read_index(context)?
//!     if node.has_ready() {
//!         let ready = node.ready();
//!         send(ready.messages)                      // may go before anything is persisted
//!         persist(ready.snapshot, ready.entries, ready.hard_state)
//!         node.on_persisted(ready.number)           // once the fsync has completed
//!         send(ready.persisted_messages)            // only after the fsync
//!         apply(ready.committed_entries)            // in order
//!         node.on_applied(last applied index)
//!     }
//! }
//! ```
//!
//! The contract of a [`Ready`]: persist its snapshot, entries and hard state before sending its
//! `persisted_messages`, and apply its committed entries in order. Its `messages` may be sent at
//! once: a leader counts its own log toward a commit only after it has been told the entries are
//! persisted, so sending before its own fsync completes is safe.
//!
//! # Example: a single-node group
//!
//! ```
//! use bytes::Bytes;
//! use chorus_raft::{Config, ConfState, EntryPayload, GroupId, MemStorage, NodeId, RawNode};
//!
//! let config = Config::new(NodeId(1), GroupId(7));
//! let storage = MemStorage::new_with_conf_state(ConfState::with_voters([NodeId(1)]));
//! let mut node = RawNode::new(&config, storage).unwrap();
//! node.campaign().unwrap();
//! let (_, index) = node.propose(Bytes::from_static(b"hello")).unwrap();
//!
//! let mut applied = Vec::new();
//! while node.has_ready() {
//!     let ready = node.ready();
//!     // One node: nothing to send. Persist, acknowledge, apply.
//!     node.storage_mut().append(&ready.entries).unwrap();
//!     if let Some(hs) = ready.hard_state {
//!         node.storage_mut().set_hard_state(hs);
//!     }
//!     node.on_persisted(ready.number);
//!     for entry in &ready.committed_entries {
//!         if let EntryPayload::Normal(data) = &entry.payload {
//!             if !data.is_empty() {
//!                 applied.push(data.clone());
//!             }
//!         }
//!         node.on_applied(entry.index);
//!     }
//! }
//! assert_eq!(applied, vec![Bytes::from_static(b"hello")]);
//! assert_eq!(node.status().commit, index);
//! ```
//!
//! # Modules
//!
//! - [`raw_node`]: the public face, [`RawNode`] and [`Ready`];
//! - `raft`: the state machine, split into election, replication, reads and membership;
//! - [`raft_log`]: the log (stable storage plus the unstable suffix);
//! - [`tracker`] and [`quorum`]: progress of each member and the quorum arithmetic;
//! - [`confchange`]: membership change arithmetic; [`read_only`]: read rounds and leases;
//! - [`storage`]: the [`LogStorage`] trait and [`MemStorage`];
//! - [`interaction`]: the in-memory test network behind the golden scenarios.

pub mod confchange;
pub mod config;
pub mod error;
pub mod interaction;
pub mod prng;
pub mod quorum;
pub mod raft;
pub mod raft_log;
pub mod raw_node;
pub mod read_only;
pub mod storage;
pub mod tracker;
pub mod types;

pub use confchange::ConfChangeError;
#[cfg(feature = "inject-bugs")]
pub use config::InjectedBug;
pub use config::{Config, ConfigError, ReadOnlyOption};
pub use error::{Error, ProposeError};
pub use raft::{ReadState, Role};
pub use raw_node::{BasicStatus, ProgressStatus, RawNode, Ready, SoftState, Status};
pub use storage::{LogStorage, MemStorage, RaftState, StorageError};
pub use tracker::ProgressState;
pub use types::*;
