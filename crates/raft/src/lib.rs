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
pub use raw_node::{ProgressStatus, RawNode, Ready, SoftState, Status};
pub use storage::{LogStorage, MemStorage, RaftState, StorageError};
pub use tracker::ProgressState;
pub use types::*;
