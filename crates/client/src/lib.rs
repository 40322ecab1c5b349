//! `chorus-client`: a Rust client for Chorus and any etcd v3 endpoint.
//!
//! - [`Client`]: KV ([`Client::get`], [`Client::put`], [`Client::delete`]), a typed
//!   [`txn::Txn`] builder, leases with a background [`LeaseKeeper`], and resuming watches
//!   ([`Watcher`]).
//! - An endpoint set with load-balancing [`balance`] policies (round robin, weighted round
//!   robin, least outstanding requests, random, power of two choices, consistent hashing), health
//!   checks, a circuit breaker per endpoint and a retry budget ([`breaker`]), failover, and
//!   writes routed to the leader.
//! - Retries only where they are safe: reads and operations declared idempotent are retried on
//!   another endpoint; a write that may have been applied fails with
//!   [`Error::OutcomeUnknown`] and is never re-sent behind the caller's back.
//! - [`recipes`]: lock with a fencing token, leader election, service registry and discovery, a
//!   barrier, and a saga coordinator whose log lives in the store.
//!
//! What is not here: authentication and TLS (the channels are plaintext HTTP/2).
//!
//! ```
//! use chorus_client::{Client, ClientOptions, GetOptions, PutOptions};
//! use chorus_client::txn::{Cmp, Compare, Op, Txn};
//!
//! # #[tokio::main(flavor = "multi_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let server = chorus_server::local::LocalMember::start().await?;
//! # let endpoint = server.endpoint();
//! // Any members' client URLs, such as "http://127.0.0.1:2379"; the client balances over them.
//! let client = Client::connect([endpoint], ClientOptions::default()).await?;
//! client.put("greeting", "hello", PutOptions::default()).await?;
//! let value = client.get_value("greeting").await?;
//! assert_eq!(value.as_deref(), Some(&b"hello"[..]));
//!
//! // Compare-and-swap.
//! let swapped = client
//!     .txn(
//!         Txn::new()
//!             .when([Compare::value("greeting", Cmp::Equal, "hello")])
//!             .and_then([Op::put("greeting", "bonjour", PutOptions::default())]),
//!     )
//!     .await?
//!     .succeeded;
//! assert!(swapped);
//!
//! // Every key under a prefix.
//! client.put("app/a", "1", PutOptions::default()).await?;
//! client.put("app/b", "2", PutOptions::default()).await?;
//! let all = client.get("app/", GetOptions::prefix()).await?;
//! assert_eq!(all.count, 2);
//! # Ok(())
//! # }
//! ```

pub mod balance;
pub mod breaker;
mod client;
mod error;
mod kv;
mod lease;
pub mod recipes;
pub mod txn;
mod watch;

pub use chorus_proto::etcdserverpb as proto;
pub use chorus_proto::mvccpb;
pub use client::{Client, ClientOptions, EndpointInfo, Kind};
pub use error::{Error, Result};
pub use kv::{DeleteOptions, GetOptions, PutOptions, prefix_end};
pub use lease::{LeaseKeeper, LeaseState};
pub use watch::{WatchBatch, WatchOptions, Watcher};
