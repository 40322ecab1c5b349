//! etcd's `v3lockpb.Lock` and `v3electionpb.Election` services, built on the KV store exactly
//! as etcd builds them on its client (so `etcdctl lock` and `etcdctl elect` work unchanged).
//!
//! **Lock.** `Lock(name, lease)` writes the key `name/<lease in hex>` with the lease, unless it
//! exists, in one transaction; the key's create revision is the caller's place in line. The
//! caller holds the lock once no key under `name/` has a smaller create revision: it waits for
//! the key just ahead of it to be deleted (unlocked, or its lease expired), then for the next.
//! Before answering, it checks that its own key still exists: a waiter whose lease expired while
//! it waited gets "mutex: session is expired" and never the lock (etcd#11456 was a server that
//! granted it anyway). Waiters are served in the order of their keys' create revisions.
//!
//! **Fencing token.** The create revision of the key `Lock` returns is a number that grows with
//! every grant of the lock: a holder passes it to the resource it guards, which refuses any
//! token lower than the highest it has seen (or compares it in a transaction:
//! `create_revision(key) == token`). A holder that lost its lease without noticing cannot act
//! with a stale token. Read it with `etcdctl get <key> -w json` or a Range of the returned key.
//!
//! **Election.** Campaign is a lock whose key holds the proclaimed value; the leader is the key
//! with the smallest create revision under `name/`. Proclaim rewrites the value if the leader
//! key is still the caller's (same create revision), Resign deletes it, Observe streams each
//! change of leader or value.
//!
//! A Lock or Campaign abandoned by its caller (the call is cancelled) removes its key, so it
//! does not block those behind it.

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use chorus_proto::etcdserverpb as pb;
use chorus_proto::internal as ipb;
use chorus_proto::mvccpb;
use chorus_proto::v3electionpb as epb;
use chorus_proto::v3lockpb as lpb;
use pb::compare::{CompareResult, CompareTarget, TargetUnion};
use pb::request_op::Request as Op;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::error::ServerError;
use crate::service::Edge;

/// The error etcd's lock reports when the waiter's lease ended while it waited.
pub const SESSION_EXPIRED: &str = "mutex: session is expired";
/// etcd's election errors.
pub const ELECTION_NO_LEADER: &str = "election: no leader";
pub const ELECTION_NOT_LEADER: &str = "election: not leader";

/// How long a waiter sleeps at most between two checks when nothing is applied meanwhile.
const RECHECK: Duration = Duration::from_secs(1);

fn plain_error(message: &str) -> Status {
    ServerError::Unexpected {
        message: message.to_string(),
    }
    .into()
}

fn prefix_end(prefix: &[u8]) -> Bytes {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Bytes::from(end);
        }
    }
    Bytes::from_static(&[0])
}

/// `name/<lease in hex>`, etcd's key for a session's place in a lock or election.
fn session_key(name: &[u8], lease: i64) -> Bytes {
    let mut key = name.to_vec();
    key.push(b'/');
    key.extend_from_slice(format!("{lease:x}").as_bytes());
    Bytes::from(key)
}

fn prefix_of(name: &[u8]) -> Bytes {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    Bytes::from(prefix)
}

impl Edge {
    async fn txn(&self, request: pb::TxnRequest) -> Result<pb::TxnResponse, Status> {
        match self
            .write(ipb::forward_request::Request::Txn(request))
            .await?
        {
            ipb::forward_response::Response::Txn(mut response) => {
                self.fill(&mut response.header);
                Ok(response)
            }
            _ => Err(plain_error("etcdserver: unexpected response kind")),
        }
    }

    async fn delete_key(&self, key: Bytes) -> Result<pb::DeleteRangeResponse, Status> {
        let request = pb::DeleteRangeRequest {
            key,
            ..Default::default()
        };
        match self
            .write(ipb::forward_request::Request::DeleteRange(request))
            .await?
        {
            ipb::forward_response::Response::DeleteRange(mut response) => {
                self.fill(&mut response.header);
                Ok(response)
            }
            _ => Err(plain_error("etcdserver: unexpected response kind")),
        }
    }

    /// A linearizable read.
    async fn read(&self, request: pb::RangeRequest) -> Result<pb::RangeResponse, Status> {
        let mut response = self.range(request).await?;
        self.fill(&mut response.header);
        Ok(response)
    }

    /// A read of this member's store as it is (after a linearizable read confirmed it is
    /// current enough for the caller).
    fn read_local(&self, request: pb::RangeRequest) -> Result<pb::RangeResponse, Status> {
        let req = crate::kv_convert::range_from_proto(&request)?;
        let response = self
            .node
            .read_store(|store| store.range(&req))
            .map_err(ServerError::from)?;
        Ok(crate::kv_convert::range_to_proto(&response))
    }
}

/// Writes `key = value` with `lease` unless the key exists; answers the key's create revision
/// and value.
async fn join_line(
    edge: &Edge,
    key: &Bytes,
    value: Bytes,
    lease: i64,
) -> Result<(i64, Bytes, pb::ResponseHeader), Status> {
    let response = edge
        .txn(pb::TxnRequest {
            compare: vec![pb::Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Create as i32,
                key: key.clone(),
                target_union: Some(TargetUnion::CreateRevision(0)),
                ..Default::default()
            }],
            success: vec![pb::RequestOp {
                request: Some(Op::RequestPut(pb::PutRequest {
                    key: key.clone(),
                    value: value.clone(),
                    lease,
                    ..Default::default()
                })),
            }],
            failure: vec![pb::RequestOp {
                request: Some(Op::RequestRange(pb::RangeRequest {
                    key: key.clone(),
                    ..Default::default()
                })),
            }],
        })
        .await?;
    let header = response.header.unwrap_or_default();
    if response.succeeded {
        return Ok((header.revision, value, header));
    }
    let existing = response
        .responses
        .first()
        .and_then(|r| match &r.response {
            Some(pb::response_op::Response::ResponseRange(range)) => range.kvs.first().cloned(),
            _ => None,
        })
        .ok_or_else(|| plain_error(SESSION_EXPIRED))?;
    Ok((existing.create_revision, existing.value, header))
}

/// Waits until no key under `prefix` has a create revision below `own`: for the key just ahead,
/// then for the next (etcd's `waitDeletes`). Gives up with "session is expired" as soon as the
/// waiter's own key `mine` is gone (its lease ended): it could never hold the lock.
async fn wait_for_turn(edge: &Edge, prefix: &Bytes, mine: &Bytes, own: i64) -> Result<(), Status> {
    let exists = |key: &Bytes, create_revision: i64| -> Result<bool, Status> {
        let found = edge.read_local(pb::RangeRequest {
            key: key.clone(),
            keys_only: true,
            ..Default::default()
        })?;
        Ok(found
            .kvs
            .first()
            .is_some_and(|kv| kv.create_revision == create_revision))
    };
    let mut applied = edge.node.status_watch();
    loop {
        let ahead = edge
            .read(pb::RangeRequest {
                key: prefix.clone(),
                range_end: prefix_end(prefix),
                max_create_revision: own - 1,
                sort_order: pb::range_request::SortOrder::Descend as i32,
                sort_target: pb::range_request::SortTarget::Create as i32,
                limit: 1,
                keys_only: true,
                ..Default::default()
            })
            .await?;
        let Some(ahead) = ahead.kvs.first() else {
            return Ok(());
        };
        // Watch this member's store until the key ahead is gone, then confirm with a
        // linearizable read at the top of the loop.
        loop {
            let _ = tokio::time::timeout(RECHECK, applied.changed()).await;
            if !exists(mine, own)? {
                return Err(plain_error(SESSION_EXPIRED));
            }
            if !exists(&ahead.key, ahead.create_revision)? {
                break;
            }
        }
    }
}

/// Deletes a key when dropped, unless disarmed: a waiter whose call was cancelled leaves the
/// line.
struct LeaveOnDrop {
    edge: Edge,
    key: Option<Bytes>,
}

impl LeaveOnDrop {
    fn disarm(mut self) {
        self.key = None;
    }
}

impl Drop for LeaveOnDrop {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let edge = self.edge.clone();
            tokio::spawn(async move {
                if let Err(error) = edge.delete_key(key).await {
                    tracing::warn!(%error, "could not remove an abandoned lock or campaign key");
                }
            });
        }
    }
}

/// Joins the line for `name` and waits for the turn; answers the key, its create revision and
/// the header of the final check.
async fn acquire(
    edge: &Edge,
    name: &[u8],
    lease: i64,
    value: Bytes,
) -> Result<(Bytes, i64, Bytes, pb::ResponseHeader), Status> {
    if name.is_empty() {
        return Err(ServerError::EmptyKey.into());
    }
    if lease == 0 {
        return Err(ServerError::LeaseNotFound { lease_id: 0 }.into());
    }
    let key = session_key(name, lease);
    let (own, value, _) = join_line(edge, &key, value, lease).await?;
    let guard = LeaveOnDrop {
        edge: edge.clone(),
        key: Some(key.clone()),
    };
    let result = async {
        wait_for_turn(edge, &prefix_of(name), &key, own).await?;
        // The lease may have ended while waiting: then the key is gone and the caller must
        // not be told it holds anything.
        let check = edge
            .read(pb::RangeRequest {
                key: key.clone(),
                ..Default::default()
            })
            .await?;
        match check.kvs.first() {
            Some(kv) if kv.create_revision == own => {
                Ok((key.clone(), own, value, check.header.unwrap_or_default()))
            }
            _ => Err(plain_error(SESSION_EXPIRED)),
        }
    }
    .await;
    if result.is_ok() {
        guard.disarm();
    }
    result
}

/// etcd's `v3lockpb.Lock` service.
#[derive(Clone)]
pub struct LockService(pub Edge);

#[tonic::async_trait]
impl lpb::lock_server::Lock for LockService {
    async fn lock(
        &self,
        request: Request<lpb::LockRequest>,
    ) -> Result<Response<lpb::LockResponse>, Status> {
        let request = request.into_inner();
        let (key, _, _, header) =
            acquire(&self.0, &request.name, request.lease, Bytes::new()).await?;
        Ok(Response::new(lpb::LockResponse {
            header: Some(header),
            key,
        }))
    }

    async fn unlock(
        &self,
        request: Request<lpb::UnlockRequest>,
    ) -> Result<Response<lpb::UnlockResponse>, Status> {
        let response = self.0.delete_key(request.into_inner().key).await?;
        Ok(Response::new(lpb::UnlockResponse {
            header: response.header,
        }))
    }
}

/// etcd's `v3electionpb.Election` service.
#[derive(Clone)]
pub struct ElectionService(pub Edge);

type ObserveStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<epb::LeaderResponse, Status>> + Send>>;

/// The current leader of election `name`: the key with the smallest create revision.
async fn leader_of(
    edge: &Edge,
    name: &[u8],
    linearizable: bool,
) -> Result<(Option<mvccpb::KeyValue>, Option<pb::ResponseHeader>), Status> {
    let prefix = prefix_of(name);
    let request = pb::RangeRequest {
        key: prefix.clone(),
        range_end: prefix_end(&prefix),
        sort_order: pb::range_request::SortOrder::Ascend as i32,
        sort_target: pb::range_request::SortTarget::Create as i32,
        limit: 1,
        ..Default::default()
    };
    let mut response = if linearizable {
        edge.read(request).await?
    } else {
        let mut response = edge.read_local(request)?;
        edge.fill(&mut response.header);
        response
    };
    Ok((response.kvs.drain(..).next(), response.header))
}

fn leader_key(request: Option<epb::LeaderKey>) -> Result<epb::LeaderKey, Status> {
    request
        .filter(|leader| !leader.key.is_empty())
        .ok_or_else(|| plain_error(ELECTION_NOT_LEADER))
}

#[tonic::async_trait]
impl epb::election_server::Election for ElectionService {
    async fn campaign(
        &self,
        request: Request<epb::CampaignRequest>,
    ) -> Result<Response<epb::CampaignResponse>, Status> {
        let request = request.into_inner();
        let value = request.value;
        let (key, rev, held, header) =
            acquire(&self.0, &request.name, request.lease, value.clone()).await?;
        let mut header = Some(header);
        if held != value {
            // Campaigning again with the same lease proclaims the new value (as etcd).
            let response = proclaim(&self.0, &key, rev, request.lease, value).await?;
            header = response.header;
        }
        Ok(Response::new(epb::CampaignResponse {
            header,
            leader: Some(epb::LeaderKey {
                name: request.name,
                key,
                rev,
                lease: request.lease,
            }),
        }))
    }

    async fn proclaim(
        &self,
        request: Request<epb::ProclaimRequest>,
    ) -> Result<Response<epb::ProclaimResponse>, Status> {
        let request = request.into_inner();
        let leader = leader_key(request.leader)?;
        let response = proclaim(
            &self.0,
            &leader.key,
            leader.rev,
            leader.lease,
            request.value,
        )
        .await?;
        Ok(Response::new(epb::ProclaimResponse {
            header: response.header,
        }))
    }

    async fn leader(
        &self,
        request: Request<epb::LeaderRequest>,
    ) -> Result<Response<epb::LeaderResponse>, Status> {
        let (kv, header) = leader_of(&self.0, &request.into_inner().name, true).await?;
        match kv {
            Some(kv) => Ok(Response::new(epb::LeaderResponse {
                header,
                kv: Some(kv),
            })),
            None => Err(plain_error(ELECTION_NO_LEADER)),
        }
    }

    type ObserveStream = ObserveStream;

    async fn observe(
        &self,
        request: Request<epb::LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let name = request.into_inner().name;
        let edge = self.0.clone();
        let (tx, rx) = mpsc::channel(16);
        // The first answer is linearizable; later ones follow this member's store.
        let first = leader_of(&edge, &name, true).await?;
        tokio::spawn(async move {
            let mut applied = edge.node.status_watch();
            let mut last: Option<(Vec<u8>, i64)> = None;
            let mut current = Ok(first);
            loop {
                match current {
                    Ok((Some(kv), header)) => {
                        let seen = (kv.key.to_vec(), kv.mod_revision);
                        if last.as_ref() != Some(&seen) {
                            last = Some(seen);
                            let answer = epb::LeaderResponse {
                                header,
                                kv: Some(kv),
                            };
                            if tx.send(Ok(answer)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Ok((None, _)) => {}
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                }
                tokio::select! {
                    _ = tokio::time::timeout(RECHECK, applied.changed()) => {}
                    () = tx.closed() => return,
                }
                current = leader_of(&edge, &name, false).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn resign(
        &self,
        request: Request<epb::ResignRequest>,
    ) -> Result<Response<epb::ResignResponse>, Status> {
        let leader = leader_key(request.into_inner().leader)?;
        let key = leader.key;
        let response = self
            .0
            .txn(pb::TxnRequest {
                compare: vec![owned(&key, leader.rev)],
                success: vec![pb::RequestOp {
                    request: Some(Op::RequestDeleteRange(pb::DeleteRangeRequest {
                        key,
                        ..Default::default()
                    })),
                }],
                failure: vec![],
            })
            .await?;
        Ok(Response::new(epb::ResignResponse {
            header: response.header,
        }))
    }
}

/// The compare that holds while `key` is still the one created at `rev`.
fn owned(key: &Bytes, rev: i64) -> pb::Compare {
    pb::Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Create as i32,
        key: key.clone(),
        target_union: Some(TargetUnion::CreateRevision(rev)),
        ..Default::default()
    }
}

async fn proclaim(
    edge: &Edge,
    key: &Bytes,
    rev: i64,
    lease: i64,
    value: Bytes,
) -> Result<pb::TxnResponse, Status> {
    let response = edge
        .txn(pb::TxnRequest {
            compare: vec![owned(key, rev)],
            success: vec![pb::RequestOp {
                request: Some(Op::RequestPut(pb::PutRequest {
                    key: key.clone(),
                    value,
                    lease,
                    ..Default::default()
                })),
            }],
            failure: vec![],
        })
        .await?;
    if !response.succeeded {
        return Err(plain_error(ELECTION_NOT_LEADER));
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_etcds() {
        assert_eq!(
            session_key(b"mylock", 0x694d_7a5b_1c2d).as_ref(),
            b"mylock/694d7a5b1c2d"
        );
        assert_eq!(prefix_of(b"e").as_ref(), b"e/");
        assert_eq!(prefix_end(b"e/").as_ref(), b"e0");
        assert_eq!(prefix_end(&[0xff]).as_ref(), &[0]);
    }
}
