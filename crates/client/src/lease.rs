//! Leases: grant, revoke, time-to-live, and a [`LeaseKeeper`] that renews a lease in the
//! background at a third of its TTL and reports when it is lost.

use std::time::Duration;

use chorus_proto::etcdserverpb as pb;
use pb::lease_client::LeaseClient;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use crate::client::{Client, Kind};
use crate::error::{Error, Result};

/// The state a [`LeaseKeeper`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseState {
    /// Renewed; `ttl` is the TTL (seconds) the server granted on the last renewal.
    Alive {
        /// Seconds.
        ttl: i64,
    },
    /// Expired, revoked, or not renewed before its deadline. Final.
    Lost {
        /// Why.
        reason: String,
    },
}

/// Renews a lease in a background task until dropped or stopped. Dropping the keeper stops the
/// renewals (the lease then expires after its TTL); it does not revoke.
#[derive(Debug)]
pub struct LeaseKeeper {
    id: i64,
    state: watch::Receiver<LeaseState>,
    task: tokio::task::JoinHandle<()>,
}

impl LeaseKeeper {
    /// The lease ID.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// The current state.
    pub fn state(&self) -> LeaseState {
        self.state.borrow().clone()
    }

    /// Whether the lease is still renewed.
    pub fn is_alive(&self) -> bool {
        matches!(*self.state.borrow(), LeaseState::Alive { .. })
    }

    /// Waits until the lease is lost and returns why.
    pub async fn lost(&self) -> Error {
        let mut state = self.state.clone();
        loop {
            if let LeaseState::Lost { reason } = &*state.borrow_and_update() {
                return Error::LeaseLost {
                    id: self.id,
                    reason: reason.clone(),
                };
            }
            if state.changed().await.is_err() {
                return Error::LeaseLost {
                    id: self.id,
                    reason: "keep-alive task stopped".to_string(),
                };
            }
        }
    }

    /// A receiver of state changes, for callers that select on several things.
    pub fn subscribe(&self) -> watch::Receiver<LeaseState> {
        self.state.clone()
    }

    /// Stops renewing (the lease expires after its TTL unless revoked).
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Client {
    /// Grants a lease of `ttl` seconds; `id` 0 lets the server choose the ID.
    pub async fn lease_grant(&self, ttl: i64, id: i64) -> Result<pb::LeaseGrantResponse> {
        // With an explicit ID a repeated grant fails with "lease already exists" instead of
        // creating a second lease, so it is safe to retry.
        let kind = if id != 0 {
            Kind::Idempotent
        } else {
            Kind::Write
        };
        self.call(kind, None, |channel| async move {
            LeaseClient::new(channel)
                .lease_grant(pb::LeaseGrantRequest { ttl, id })
                .await
        })
        .await
    }

    /// Revokes a lease, deleting its keys. Revoking twice is harmless apart from the second
    /// answer being "lease not found", so it is retried.
    pub async fn lease_revoke(&self, id: i64) -> Result<pb::LeaseRevokeResponse> {
        self.call(Kind::Idempotent, None, |channel| async move {
            LeaseClient::new(channel)
                .lease_revoke(pb::LeaseRevokeRequest { id })
                .await
        })
        .await
    }

    /// The remaining TTL of a lease (`ttl` -1 when it does not exist), optionally with its keys.
    pub async fn lease_time_to_live(
        &self,
        id: i64,
        keys: bool,
    ) -> Result<pb::LeaseTimeToLiveResponse> {
        self.call(Kind::Read, None, |channel| async move {
            LeaseClient::new(channel)
                .lease_time_to_live(pb::LeaseTimeToLiveRequest { id, keys })
                .await
        })
        .await
    }

    /// Every lease ID.
    pub async fn lease_leases(&self) -> Result<pb::LeaseLeasesResponse> {
        self.call(Kind::Read, None, |channel| async move {
            LeaseClient::new(channel)
                .lease_leases(pb::LeaseLeasesRequest {})
                .await
        })
        .await
    }

    /// Starts renewing lease `id` (of `ttl` seconds as granted) in the background.
    pub fn lease_keep_alive(&self, id: i64, ttl: i64) -> LeaseKeeper {
        let (state_tx, state) = watch::channel(LeaseState::Alive { ttl });
        let task = tokio::spawn(keep_alive_loop(self.clone(), id, ttl, state_tx));
        LeaseKeeper { id, state, task }
    }

    /// Grants a lease and starts renewing it.
    pub async fn lease_grant_kept(&self, ttl: i64) -> Result<LeaseKeeper> {
        let grant = self.lease_grant(ttl, 0).await?;
        if !grant.error.is_empty() {
            return Err(Error::Recipe(grant.error));
        }
        Ok(self.lease_keep_alive(grant.id, grant.ttl))
    }
}

/// The renewal period for a TTL: a third of it, at least 100 ms.
fn renew_period(ttl_secs: i64) -> Duration {
    let ttl_ms = u64::try_from(ttl_secs.max(1)).unwrap_or(1) * 1000;
    Duration::from_millis((ttl_ms / 3).max(100))
}

fn ttl_duration(ttl_secs: i64) -> Duration {
    Duration::from_secs(u64::try_from(ttl_secs.max(1)).unwrap_or(1))
}

/// Renews until the lease is lost or the keeper is dropped. The lease is presumed lost once its
/// last granted TTL has run out without a renewal, whatever the reason (no endpoint reachable,
/// server answers TTL 0).
async fn keep_alive_loop(client: Client, id: i64, ttl: i64, state: watch::Sender<LeaseState>) {
    let mut ttl = ttl;
    let mut deadline = Instant::now() + ttl_duration(ttl);
    let mut avoid = None;
    loop {
        if let Some((index, channel)) = client.stream_endpoint(avoid) {
            match renew_on(channel, id, &mut ttl, &mut deadline, &state).await {
                Ok(()) => return,
                Err(status) => {
                    tracing::debug!(lease = id, %status, "keep-alive stream broke");
                    client.report(index, false);
                    avoid = Some(index);
                }
            }
        }
        if Instant::now() >= deadline {
            let _ = state.send(LeaseState::Lost {
                reason: "not renewed before its TTL ran out".to_string(),
            });
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One keep-alive stream. `Ok` means the lease is lost for good (state already sent) or nobody
/// listens any more; `Err` means the stream broke and another endpoint should be tried.
async fn renew_on(
    channel: tonic::transport::Channel,
    id: i64,
    ttl: &mut i64,
    deadline: &mut Instant,
    state: &watch::Sender<LeaseState>,
) -> std::result::Result<(), tonic::Status> {
    let (requests, receiver) = mpsc::channel(4);
    // The first request goes before the stream is opened: a server may hold back the response
    // headers until it has something to answer.
    if requests
        .send(pb::LeaseKeepAliveRequest { id })
        .await
        .is_err()
    {
        return Err(tonic::Status::cancelled("request stream closed"));
    }
    let timeout = || tonic::Status::deadline_exceeded("keep-alive answer overdue");
    let mut lease = LeaseClient::new(channel);
    let open = lease.lease_keep_alive(ReceiverStream::new(receiver));
    let mut responses = tokio::time::timeout_at(*deadline, open)
        .await
        .map_err(|_| timeout())??
        .into_inner();
    loop {
        let answer = tokio::time::timeout_at(*deadline, responses.message()).await;
        let response = match answer {
            Err(_) => return Err(timeout()),
            Ok(Err(status)) => {
                if status.code() == tonic::Code::NotFound {
                    let _ = state.send(LeaseState::Lost {
                        reason: status.message().to_string(),
                    });
                    return Ok(());
                }
                return Err(status);
            }
            Ok(Ok(None)) => return Err(tonic::Status::unavailable("keep-alive stream ended")),
            Ok(Ok(Some(response))) => response,
        };
        if response.ttl <= 0 {
            let _ = state.send(LeaseState::Lost {
                reason: "lease expired or revoked".to_string(),
            });
            return Ok(());
        }
        *ttl = response.ttl;
        *deadline = Instant::now() + ttl_duration(*ttl);
        if state.send(LeaseState::Alive { ttl: *ttl }).is_err() {
            return Ok(());
        }
        tokio::time::sleep(renew_period(*ttl)).await;
        if requests
            .send(pb::LeaseKeepAliveRequest { id })
            .await
            .is_err()
        {
            return Err(tonic::Status::cancelled("request stream closed"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_a_third_of_the_ttl() {
        // Goal: renewals happen at ttl/3, never faster than 100 ms. Method: table.
        assert_eq!(renew_period(9), Duration::from_secs(3));
        assert_eq!(renew_period(1), Duration::from_millis(333));
        assert_eq!(renew_period(0), Duration::from_millis(333));
    }
}
