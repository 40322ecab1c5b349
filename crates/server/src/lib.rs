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
//! - [`node`]: the Raft driver: one task that ticks, steps, proposes, persists each `Ready` with
//!   one fsync, applies committed entries to the MVCC store and answers waiting requests.
//! - [`service`] and [`kv_convert`]: the etcd `KV` gRPC service and the internal `Forward`
//!   service that hands writes to the leader.
//! - [`forward`]: the stream on which members that do not lead hand writes to the leader.
//! - [`watch`]: etcd's `Watch` service, fed by one hub per member that fans out new events.
//! - [`membership`] and [`cluster`]: the replicated membership and etcd's `Cluster` service.
//! - [`authority`]: lets clients that send a URL as the HTTP/2 authority (etcdctl 3.4's
//!   per-endpoint commands) reach the gRPC services.
//! - [`member`]: starts a whole member (storage, Raft, transport, servers) and stops it.
//! - [`local`]: a single member inside the calling process, for examples and tests.
//!
//! ```
//! use std::collections::HashMap;
//!
//! use chorus_server::{ServerArgs, ServerConfig, ServerError};
//!
//! // No flags, no environment, no file: etcd's single-member defaults.
//! let config = ServerConfig::resolve(&ServerArgs::default(), &HashMap::new(), None).unwrap();
//! assert_eq!(config.name, "default");
//! assert_eq!(config.data_dir, std::path::Path::new("default.chorus"));
//! assert_eq!(config.listen_client_urls[0].to_string(), "http://127.0.0.1:2379");
//!
//! // Domain errors reach clients with etcd's code and message.
//! let status = tonic::Status::from(ServerError::Compacted { compact_revision: 5 });
//! assert_eq!(status.code(), tonic::Code::OutOfRange);
//! assert_eq!(status.message(), "etcdserver: mvcc: required revision has been compacted");
//! ```

pub mod alarm;
pub mod authority;
pub mod client_api;
pub mod cluster;
pub mod coalesce;
pub mod compactor;
pub mod config;
pub mod coordination;
pub mod error;
pub mod forward;
pub mod join;
pub mod kv_convert;
pub mod lease;
pub mod local;
pub mod maintenance;
pub mod member;
pub mod membership;
pub mod metrics;
pub mod node;
pub mod service;
pub mod snap;
pub mod transport;
pub mod watch;

pub use config::{ConfigError, ServerArgs, ServerConfig};
pub use error::ServerError;
