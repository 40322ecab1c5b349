//! Coordination recipes built on KV, leases and watches alone, so they work against Chorus and
//! against any etcd v3 endpoint, and interoperate with etcd's own `concurrency` package (same
//! key layout: `<prefix>/<lease id in hex>`, ordered by create revision).
//!
//! - [`lock`]: a distributed mutex whose grant carries a fencing token.
//! - [`election`]: leader election with campaign, proclaim, resign and observe.
//! - [`registry`]: service registration under a kept lease, and discovery with a watch and a
//!   load-balancing pick.
//! - [`barrier`]: a barrier that holds waiters until it is released.
//! - [`saga`]: a saga coordinator whose log lives in the store, so that a coordinator that
//!   crashes can be resumed by another and finishes or compensates.
//!
//! Every recipe is bound to a [`LeaseKeeper`](crate::LeaseKeeper) where ownership matters: when
//! the lease is lost the ownership ends with it (the keys go away with the lease), and the
//! recipe reports [`Error::LeaseLost`](crate::Error::LeaseLost) rather than carry on.

pub mod barrier;
pub mod election;
pub mod lock;
pub mod registry;
pub mod saga;

use bytes::Bytes;
use chorus_proto::etcdserverpb as pb;
use chorus_proto::mvccpb;

use crate::error::{Error, Result};
use crate::lease::LeaseKeeper;
use crate::txn::{Cmp, Compare, Op, Txn};
use crate::{Client, GetOptions, PutOptions, WatchOptions};

/// Creates `key` with `value` under `lease` unless it exists, and returns its create revision
/// and the revision the answer was read at. Safe to retry: a second attempt finds the key.
pub(crate) async fn create_or_get(
    client: &Client,
    key: &[u8],
    value: &[u8],
    lease: i64,
) -> Result<(i64, i64)> {
    let put = PutOptions {
        lease,
        ..PutOptions::default()
    };
    let txn = Txn::new()
        .when([Compare::create_revision(key, Cmp::Equal, 0)])
        .and_then([Op::put(key, value, put)])
        .or_else([Op::get(key, GetOptions::default())])
        .idempotent();
    let response = client.txn(txn).await?;
    let revision = response.header.as_ref().map_or(0, |h| h.revision);
    if response.succeeded {
        return Ok((revision, revision));
    }
    let created = response
        .responses
        .first()
        .and_then(|op| match &op.response {
            Some(pb::response_op::Response::ResponseRange(range)) => range.kvs.first(),
            _ => None,
        })
        .map(|kv| kv.create_revision)
        .ok_or_else(|| Error::Recipe(format!("{} vanished while created", show(key))))?;
    Ok((created, revision))
}

/// Waits until no key under `prefix` was created before `created` (the keys ahead in line are
/// gone), or until `lease` is lost. Watches only the immediate predecessor at each step.
pub(crate) async fn wait_for_turn(
    client: &Client,
    prefix: &[u8],
    created: i64,
    lease: &LeaseKeeper,
) -> Result<()> {
    loop {
        let ahead = client
            .get(
                prefix,
                GetOptions {
                    prefix: true,
                    max_create_revision: created - 1,
                    sort: Some((
                        pb::range_request::SortTarget::Create,
                        pb::range_request::SortOrder::Descend,
                    )),
                    limit: 1,
                    ..GetOptions::default()
                },
            )
            .await?;
        let Some(predecessor) = ahead.kvs.first() else {
            return Ok(());
        };
        let revision = ahead.header.as_ref().map_or(0, |h| h.revision);
        let mut watcher = client.watch(
            &predecessor.key,
            WatchOptions::default().from_revision(revision + 1),
        );
        loop {
            let batch = tokio::select! {
                batch = watcher.next() => batch,
                lost = lease.lost() => return Err(lost),
            };
            match batch {
                Some(Ok(batch)) => {
                    let deleted = batch
                        .events
                        .iter()
                        .any(|e| e.r#type == mvccpb::event::EventType::Delete as i32);
                    if deleted {
                        break;
                    }
                }
                Some(Err(error)) => return Err(error),
                None => return Err(Error::Recipe("the watch ended".to_string())),
            }
        }
    }
}

/// The key still exists with this create revision (its lease did not end meanwhile).
pub(crate) async fn still_ours(client: &Client, key: &[u8], created: i64) -> Result<bool> {
    let now = client.get(key, GetOptions::default()).await?;
    Ok(now
        .kvs
        .first()
        .is_some_and(|kv| kv.create_revision == created))
}

/// `prefix` with a trailing `/`.
pub(crate) fn dir(prefix: &str) -> String {
    if prefix.ends_with('/') {
        prefix.to_string()
    } else {
        format!("{prefix}/")
    }
}

/// A key for messages.
pub(crate) fn show(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

/// Deletes `key` only if it still has create revision `created`. Safe to retry.
pub(crate) async fn delete_if_ours(client: &Client, key: &Bytes, created: i64) -> Result<bool> {
    let txn = Txn::new()
        .when([Compare::create_revision(key, Cmp::Equal, created)])
        .and_then([Op::delete(key, crate::DeleteOptions::default())])
        .idempotent();
    Ok(client.txn(txn).await?.succeeded)
}
