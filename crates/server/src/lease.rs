//! etcd's `Lease` service and the lessor, which decides when leases expire.
//!
//! **What is replicated.** A grant and a revocation are log entries: every member records the
//! granted leases and their TTLs in its MVCC store (a table carried by snapshots), and a
//! revocation deletes the lease's keys at one revision on every member, which watchers see as
//! DELETE events. Puts naming a lease the store does not hold are refused on every member.
//!
//! **What is not.** Deadlines are the leader's alone, as in etcd: the [`Lessor`] is *primary*
//! while this member leads. On becoming leader it gives every lease a full TTL plus an election
//! timeout (a lease never expires because leadership moved; it may live up to that much longer);
//! on losing leadership it forgets the deadlines. Keep-alives and time-to-live questions are
//! therefore answered by the leader: a follower forwards them (internal `Forward` service).
//! Every half second the leader proposes a revocation for each expired lease (at most
//! [`REVOKES_PER_TICK`] at a time, retried after [`REVOKE_RETRY`] if it did not apply).
//!
//! An expired lease cannot be renewed: its keep-alive answers TTL 0 ("not found"), as etcd's
//! does once the revocation is under way.
//!
//! etcd's limits: a TTL above [`MAX_LEASE_TTL`] is refused with "too large lease TTL"; a TTL
//! below the minimum (1.5 election timeouts, rounded up to whole seconds) is raised to it. A
//! grant without an id gets a random positive one.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use chorus_proto::etcdserverpb as pb;
use chorus_proto::internal as ipb;
use chorus_storage::mvcc::LeaseId;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::error::ServerError;
use crate::service::Edge;

/// etcd's `MaxLeaseTTL`: nine billion seconds.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;
/// How often the leader looks for expired leases (etcd's lessor loop).
pub const EXPIRY_CHECK: Duration = Duration::from_millis(500);
/// Revocations proposed per check at most (etcd's rate of 1000 per second).
pub const REVOKES_PER_TICK: usize = 500;
/// A revocation that did not apply within this time is proposed again.
pub const REVOKE_RETRY: Duration = Duration::from_secs(3);

/// The smallest TTL a lease gets, in seconds: 1.5 election timeouts, rounded up (etcd's
/// `minTTL`), and at least one second.
pub fn min_ttl(election_timeout: Duration) -> i64 {
    let millis = election_timeout.as_millis() * 3 / 2;
    i64::try_from(millis.div_ceil(1000))
        .unwrap_or(i64::MAX)
        .max(1)
}

#[derive(Debug, Default)]
struct LessorState {
    /// Whether this member leads and so keeps the deadlines.
    primary: bool,
    /// The deadline and granted TTL (seconds) of each lease, while primary.
    leases: HashMap<LeaseId, (Instant, i64)>,
    /// Leases whose revocation was proposed, and when.
    revoking: HashMap<LeaseId, Instant>,
}

/// The lease deadlines of this member, kept while it leads. Shared by the Raft driver (which
/// reports grants, revocations, snapshots and role changes as it applies them), the `Lease`
/// service and the expiry task.
#[derive(Debug)]
pub struct Lessor {
    state: Mutex<LessorState>,
    /// Added to every deadline on promotion: one election timeout, as etcd's lessor.
    extend: Duration,
}

/// Why a lease could not be renewed here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenewError {
    /// This member does not lead: ask the leader.
    NotPrimary,
    /// The lease is unknown or has expired.
    NotFound,
}

impl Lessor {
    pub fn new(extend: Duration) -> Self {
        Lessor {
            state: Mutex::new(LessorState::default()),
            extend,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LessorState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// This member became leader: every lease it holds gets a full TTL plus the extension.
    pub fn promote(&self, leases: impl IntoIterator<Item = (LeaseId, i64)>) {
        let now = Instant::now();
        let mut state = self.lock();
        state.primary = true;
        state.revoking.clear();
        state.leases = leases
            .into_iter()
            .map(|(id, ttl)| (id, (now + ttl_duration(ttl) + self.extend, ttl)))
            .collect();
    }

    /// This member no longer leads: the deadlines are the new leader's.
    pub fn demote(&self) {
        let mut state = self.lock();
        state.primary = false;
        state.leases.clear();
        state.revoking.clear();
    }

    pub fn is_primary(&self) -> bool {
        self.lock().primary
    }

    /// A grant was applied.
    pub fn granted(&self, id: LeaseId, ttl: i64) {
        let mut state = self.lock();
        if state.primary {
            state
                .leases
                .insert(id, (Instant::now() + ttl_duration(ttl), ttl));
        }
    }

    /// A revocation was applied (or named a lease the store does not hold).
    pub fn revoked(&self, id: LeaseId) {
        let mut state = self.lock();
        state.leases.remove(&id);
        state.revoking.remove(&id);
    }

    /// The store was replaced by a snapshot: keep the deadlines of the leases it still holds,
    /// give new ones a full TTL, forget the others.
    pub fn restored(&self, leases: impl IntoIterator<Item = (LeaseId, i64)>) {
        let now = Instant::now();
        let mut state = self.lock();
        if !state.primary {
            return;
        }
        let old = std::mem::take(&mut state.leases);
        state.leases = leases
            .into_iter()
            .map(|(id, ttl)| {
                let deadline = old
                    .get(&id)
                    .map_or(now + ttl_duration(ttl), |(deadline, _)| *deadline);
                (id, (deadline, ttl))
            })
            .collect();
        let LessorState {
            leases, revoking, ..
        } = &mut *state;
        revoking.retain(|id, _| leases.contains_key(id));
    }

    /// Renews a lease for its full TTL and returns that TTL.
    pub fn renew(&self, id: LeaseId) -> Result<i64, RenewError> {
        let now = Instant::now();
        let mut state = self.lock();
        if !state.primary {
            return Err(RenewError::NotPrimary);
        }
        match state.leases.get_mut(&id) {
            Some((deadline, _)) if *deadline <= now => Err(RenewError::NotFound),
            Some((deadline, ttl)) => {
                *deadline = now + ttl_duration(*ttl);
                Ok(*ttl)
            }
            None => Err(RenewError::NotFound),
        }
    }

    /// The remaining whole seconds and the granted TTL of a lease.
    pub fn remaining(&self, id: LeaseId) -> Result<(i64, i64), RenewError> {
        let now = Instant::now();
        let state = self.lock();
        if !state.primary {
            return Err(RenewError::NotPrimary);
        }
        let (deadline, ttl) = state.leases.get(&id).ok_or(RenewError::NotFound)?;
        let left = deadline.saturating_duration_since(now).as_secs();
        Ok((i64::try_from(left).unwrap_or(i64::MAX), *ttl))
    }

    /// Expired leases whose revocation is not under way, at most `max`; they are marked as
    /// being revoked.
    pub fn take_expired(&self, max: usize) -> Vec<LeaseId> {
        let now = Instant::now();
        let mut state = self.lock();
        if !state.primary {
            return Vec::new();
        }
        let LessorState {
            leases, revoking, ..
        } = &mut *state;
        let mut expired: Vec<(Instant, LeaseId)> = leases
            .iter()
            .filter(|(id, (deadline, _))| {
                *deadline <= now
                    && revoking
                        .get(id)
                        .is_none_or(|since| now.duration_since(*since) >= REVOKE_RETRY)
            })
            .map(|(id, (deadline, _))| (*deadline, *id))
            .collect();
        expired.sort_unstable();
        expired.truncate(max);
        for (_, id) in &expired {
            revoking.insert(*id, now);
        }
        expired.into_iter().map(|(_, id)| id).collect()
    }
}

fn ttl_duration(ttl: i64) -> Duration {
    Duration::from_secs(u64::try_from(ttl).unwrap_or(0))
}

/// Proposes a revocation for every expired lease while this member leads, until `stop`.
pub async fn expire_leases(edge: Edge, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(EXPIRY_CHECK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        for id in edge.node.lessor.take_expired(REVOKES_PER_TICK) {
            let edge = edge.clone();
            tokio::spawn(async move {
                let request = ipb::forward_request::Request::LeaseRevoke(pb::LeaseRevokeRequest {
                    id: id.get(),
                });
                match edge.write(request).await {
                    Ok(_) => tracing::debug!(lease = id.get(), "revoked an expired lease"),
                    Err(status) => {
                        tracing::debug!(lease = id.get(), %status, "could not revoke an expired lease yet");
                    }
                }
            });
        }
    }
}

/// The keep-alive answer of this member as leader: the TTL, 0 for an unknown or expired lease.
fn keep_alive_here(edge: &Edge, id: i64) -> Result<pb::LeaseKeepAliveResponse, RenewError> {
    let ttl = match edge.node.lessor.renew(LeaseId(id)) {
        Ok(ttl) => ttl,
        Err(RenewError::NotFound) => 0,
        Err(RenewError::NotPrimary) => return Err(RenewError::NotPrimary),
    };
    let mut response = pb::LeaseKeepAliveResponse {
        header: None,
        id,
        ttl,
    };
    edge.fill_current(&mut response.header);
    Ok(response)
}

fn time_to_live_here(
    edge: &Edge,
    request: &pb::LeaseTimeToLiveRequest,
) -> Result<pb::LeaseTimeToLiveResponse, RenewError> {
    let id = LeaseId(request.id);
    let mut response = match edge.node.lessor.remaining(id) {
        Ok((ttl, granted_ttl)) => pb::LeaseTimeToLiveResponse {
            header: None,
            id: request.id,
            ttl,
            granted_ttl,
            keys: if request.keys {
                edge.node.read_store(|store| store.keys_with_lease(id))
            } else {
                Vec::new()
            },
        },
        Err(RenewError::NotFound) => pb::LeaseTimeToLiveResponse {
            header: None,
            id: request.id,
            ttl: -1,
            granted_ttl: 0,
            keys: Vec::new(),
        },
        Err(RenewError::NotPrimary) => return Err(RenewError::NotPrimary),
    };
    edge.fill_current(&mut response.header);
    Ok(response)
}

impl Edge {
    /// A keep-alive, answered here when this member leads, else by the leader.
    pub(crate) async fn lease_keep_alive(
        &self,
        id: i64,
    ) -> Result<pb::LeaseKeepAliveResponse, Status> {
        let work = async {
            loop {
                if let Ok(response) = keep_alive_here(self, id) {
                    return Ok(response);
                }
                let leader = self.leader().await?;
                if leader == self.node.member_id {
                    // Elected but not yet primary: the driver promotes on its next status.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                let mut client =
                    ipb::forward_client::ForwardClient::new(self.forwarder.channel(leader)?);
                let mut response = client
                    .lease_keep_alive(pb::LeaseKeepAliveRequest { id })
                    .await?
                    .into_inner();
                self.fill(&mut response.header);
                return Ok(response);
            }
        };
        self.within_timeout(work).await
    }

    /// A time-to-live question, answered here when this member leads, else by the leader.
    pub(crate) async fn lease_time_to_live(
        &self,
        request: pb::LeaseTimeToLiveRequest,
    ) -> Result<pb::LeaseTimeToLiveResponse, Status> {
        let work = async {
            loop {
                if let Ok(response) = time_to_live_here(self, &request) {
                    return Ok(response);
                }
                let leader = self.leader().await?;
                if leader == self.node.member_id {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                let mut client =
                    ipb::forward_client::ForwardClient::new(self.forwarder.channel(leader)?);
                let mut response = client.lease_time_to_live(request).await?.into_inner();
                self.fill(&mut response.header);
                return Ok(response);
            }
        };
        self.within_timeout(work).await
    }

    /// Answers a keep-alive forwarded by a member; this member must lead.
    pub(crate) fn lease_keep_alive_as_leader(
        &self,
        id: i64,
    ) -> Result<pb::LeaseKeepAliveResponse, Status> {
        keep_alive_here(self, id).map_err(not_primary)
    }

    /// Answers a time-to-live question forwarded by a member; this member must lead.
    pub(crate) fn lease_time_to_live_as_leader(
        &self,
        request: &pb::LeaseTimeToLiveRequest,
    ) -> Result<pb::LeaseTimeToLiveResponse, Status> {
        time_to_live_here(self, request).map_err(not_primary)
    }
}

fn not_primary(_: RenewError) -> Status {
    ServerError::NotLeader { leader_hint: None }.into()
}

/// etcd's `Lease` service.
#[derive(Clone)]
pub struct LeaseService {
    pub edge: Edge,
    /// The smallest TTL granted, in seconds (see [`min_ttl`]).
    pub min_ttl: i64,
}

/// A lease id for a grant that names none: random, positive, never zero.
fn new_lease_id() -> i64 {
    loop {
        let id = rand::random::<i64>() & i64::MAX;
        if id != 0 {
            return id;
        }
    }
}

/// etcd's checks and adjustments of a grant, before it is proposed.
pub fn settle_grant(
    mut request: pb::LeaseGrantRequest,
    min_ttl: i64,
) -> Result<pb::LeaseGrantRequest, ServerError> {
    if request.ttl > MAX_LEASE_TTL {
        return Err(ServerError::LeaseTtlTooLarge {
            ttl_seconds: request.ttl,
            ttl_seconds_max: MAX_LEASE_TTL,
        });
    }
    request.ttl = request.ttl.max(min_ttl);
    if request.id == 0 {
        request.id = new_lease_id();
    }
    Ok(request)
}

type KeepAliveStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::LeaseKeepAliveResponse, Status>> + Send>>;

fn unexpected_kind() -> Status {
    ServerError::Unexpected {
        message: "etcdserver: unexpected response kind".to_string(),
    }
    .into()
}

#[tonic::async_trait]
impl pb::lease_server::Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        let request = settle_grant(request.into_inner(), self.min_ttl)?;
        let request = ipb::forward_request::Request::LeaseGrant(request);
        match self.edge.write(request).await? {
            ipb::forward_response::Response::LeaseGrant(mut response) => {
                self.edge.fill(&mut response.header);
                Ok(Response::new(response))
            }
            _ => Err(unexpected_kind()),
        }
    }

    async fn lease_revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let request = ipb::forward_request::Request::LeaseRevoke(request.into_inner());
        match self.edge.write(request).await? {
            ipb::forward_response::Response::LeaseRevoke(mut response) => {
                self.edge.fill(&mut response.header);
                Ok(Response::new(response))
            }
            _ => Err(unexpected_kind()),
        }
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        self.edge.refuse_learner()?;
        let mut requests = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let edge = self.edge.clone();
        tokio::spawn(async move {
            loop {
                let request = tokio::select! {
                    request = requests.message() => request,
                    () = tx.closed() => return,
                };
                let request = match request {
                    Ok(Some(request)) => request,
                    Ok(None) | Err(_) => return,
                };
                let response = edge.lease_keep_alive(request.id).await;
                let failed = response.is_err();
                if tx.send(response).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        self.edge.refuse_learner()?;
        let response = self.edge.lease_time_to_live(request.into_inner()).await?;
        Ok(Response::new(response))
    }

    async fn lease_leases(
        &self,
        _request: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        self.edge.refuse_learner()?;
        let leases = self.edge.node.read_store(|store| store.leases());
        let mut response = pb::LeaseLeasesResponse {
            header: None,
            leases: leases
                .into_iter()
                .map(|(id, _)| pb::LeaseStatus { id: id.get() })
                .collect(),
        };
        self.edge.fill_current(&mut response.header);
        Ok(Response::new(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: the minimum TTL is etcd's (1.5 election timeouts, rounded up to a second), and a
    /// grant is checked and adjusted as etcd does. Method: etcd's default and edge values.
    #[test]
    fn grants_are_settled_as_etcd() {
        assert_eq!(min_ttl(Duration::from_millis(1000)), 2);
        assert_eq!(min_ttl(Duration::from_millis(2000)), 3);
        assert_eq!(min_ttl(Duration::from_millis(100)), 1);
        let grant = |ttl, id| pb::LeaseGrantRequest { ttl, id };
        assert_eq!(settle_grant(grant(1, 5), 2).unwrap(), grant(2, 5));
        assert_eq!(settle_grant(grant(-3, 5), 2).unwrap(), grant(2, 5));
        assert_eq!(settle_grant(grant(60, 5), 2).unwrap(), grant(60, 5));
        let chosen = settle_grant(grant(60, 0), 2).unwrap();
        assert!(chosen.id > 0);
        let error = settle_grant(grant(MAX_LEASE_TTL + 1, 5), 2).unwrap_err();
        assert_eq!(error.message(), "etcdserver: too large lease TTL");
        assert!(settle_grant(grant(MAX_LEASE_TTL, 5), 2).is_ok());
    }

    /// Goal: the lessor keeps deadlines only while primary, renews for a full TTL, refuses to
    /// renew an expired lease, hands each expired lease out once until the retry time, and
    /// keeps deadlines across a restore. Method: a paused tokio clock.
    #[tokio::test(start_paused = true)]
    async fn lessor_deadlines() {
        let extend = Duration::from_secs(1);
        let lessor = Lessor::new(extend);
        let (a, b, c) = (LeaseId(1), LeaseId(2), LeaseId(3));
        lessor.granted(a, 5);
        assert_eq!(lessor.renew(a), Err(RenewError::NotPrimary));
        assert!(lessor.take_expired(10).is_empty());

        lessor.promote([(a, 5), (b, 10)]);
        assert_eq!(
            lessor.remaining(a),
            Ok((6, 5)),
            "full TTL plus the extension"
        );
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(lessor.renew(a), Ok(5));
        assert_eq!(lessor.remaining(a), Ok((5, 5)));
        assert_eq!(lessor.remaining(c), Err(RenewError::NotFound));
        lessor.granted(c, 2);

        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(lessor.take_expired(10), vec![c]);
        assert!(lessor.take_expired(10).is_empty(), "under way");
        assert_eq!(lessor.renew(c), Err(RenewError::NotFound), "expired");
        tokio::time::advance(REVOKE_RETRY).await;
        // At 10 s, a (renewed at 4 s for 5 s) has expired too and c is retried, in deadline
        // order; b (10 s plus the extension) has not.
        assert_eq!(lessor.take_expired(10), vec![c, a]);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(lessor.take_expired(10), vec![b]);
        assert_eq!(lessor.take_expired(1), Vec::<LeaseId>::new());

        lessor.revoked(c);
        assert_eq!(lessor.remaining(c), Err(RenewError::NotFound));
        lessor.restored([(a, 5), (LeaseId(4), 7)]);
        assert_eq!(
            lessor.remaining(b),
            Err(RenewError::NotFound),
            "not in the snapshot"
        );
        assert_eq!(
            lessor.remaining(a),
            Ok((0, 5)),
            "a keeps its (past) deadline"
        );
        assert_eq!(lessor.remaining(LeaseId(4)), Ok((7, 7)));

        lessor.demote();
        assert_eq!(lessor.remaining(a), Err(RenewError::NotPrimary));
        assert!(!lessor.is_primary());
    }
}
