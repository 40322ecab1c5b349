//! The etcd v3 API as a user sees it through etcd's Rust client (`etcd-client`), against the
//! server named by `COMPAT_TARGET` (see the crate docs and docs/compat.md). The same tests
//! pass against etcd 3.4 (`COMPAT_TARGET=etcd`), which proves that they test etcd's behaviour.

mod cluster;
mod errors;
mod kv;
mod lease;
mod maintenance;
mod watch;

use chorus_compat::{Cluster, Flavor};

/// A single-member cluster of the flavor under test.
async fn single() -> Cluster {
    Cluster::start(Flavor::from_env(), 1, &[]).await
}

/// The revision in a response header.
fn rev(header: Option<&etcd_client::ResponseHeader>) -> i64 {
    header.expect("a response header").revision()
}
