//! `chorus-server`: the Chorus node.
//!
//! What lives here now are the parts of the node that depend only on fixed contracts:
//!
//! - [`config`]: the member configuration, under etcd's flag names and defaults, from flags,
//!   `CHORUS_*` environment variables and a TOML file.
//! - [`error`]: the one module that maps Chorus errors to etcd's gRPC codes and messages.
//! - [`transport`]: the peer transport that carries Raft messages and snapshots between members
//!   over the `chorus.peer.v1` gRPC service.
//!
//! The Raft driver, the apply loop and the etcd gRPC services come later and build on these.

pub mod config;
pub mod error;
pub mod transport;

pub use config::{ConfigError, ServerArgs, ServerConfig};
pub use error::ServerError;
