//! The gRPC edges: etcd's `KV` service for clients and the internal `Forward` service between
//! members. Each handler checks the request's limits, hands it to the node (or, on a member that
//! does not lead, to the leader through `Forward`), and maps the result; errors become etcd's
//! statuses through [`crate::error`] only.

use std::sync::Arc;
use std::time::Duration;

use chorus_proto::etcdserverpb as pb;
use chorus_proto::internal as ipb;
use chorus_raft::NodeId;
use chorus_storage::mvcc::{RangeRequest, WriteResponse};
use prost::Message as _;
use tonic::{Request, Response, Status};

use crate::alarm;
use crate::error::ServerError;
use crate::kv_convert;
use crate::maintenance;
use crate::node::{NodeHandle, WriteReply, WriteResult};
use crate::transport::server::AcceptedStream;

/// The limits the edge enforces, from the validated `ServerConfig`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EdgeLimits {
    /// etcd's `--max-request-bytes`: the largest encoded write request.
    pub request_bytes_max: u64,
    /// etcd's `--max-txn-ops`.
    pub txn_ops_max: usize,
    /// How long a request may wait for a leader, a proposal or a read index before it fails
    /// with etcd's "request timed out".
    pub request_timeout: Duration,
    /// etcd's `--quota-backend-bytes`: past it, writes that grow the store are refused and
    /// the NOSPACE alarm is raised.
    pub quota_backend_bytes: u64,
}

pub use crate::forward::Forwarder;

/// The state both services share.
#[derive(Clone)]
pub struct Edge {
    pub node: NodeHandle,
    pub forwarder: Forwarder,
    pub limits: EdgeLimits,
}

fn write_to_proto(response: WriteResponse) -> ipb::forward_response::Response {
    use ipb::forward_response::Response as R;
    match response {
        WriteResponse::Put(r) => R::Put(kv_convert::put_to_proto(&r)),
        WriteResponse::DeleteRange(r) => R::DeleteRange(kv_convert::delete_to_proto(&r)),
        WriteResponse::Txn(r) => R::Txn(kv_convert::txn_to_proto(&r)),
        WriteResponse::Compact(r) => R::Compaction(pb::CompactionResponse {
            header: kv_convert::header(r.revision),
        }),
        WriteResponse::LeaseGrant(r) => R::LeaseGrant(pb::LeaseGrantResponse {
            header: kv_convert::header(r.revision),
            id: r.id.get(),
            ttl: r.ttl,
            error: String::new(),
        }),
        WriteResponse::LeaseRevoke(r) => R::LeaseRevoke(pb::LeaseRevokeResponse {
            header: kv_convert::header(r.revision),
        }),
    }
}

impl Edge {
    /// Completes a response header as etcd does: this cluster, this member, the current term.
    pub(crate) fn fill(&self, header: &mut Option<pb::ResponseHeader>) {
        let header = header.get_or_insert_with(pb::ResponseHeader::default);
        header.cluster_id = self.node.cluster_id;
        header.member_id = self.node.member_id.get();
        header.raft_term = self.node.status().term.get();
    }

    /// [`Edge::fill`], with the store's current revision as the header's revision.
    pub(crate) fn fill_current(&self, header: &mut Option<pb::ResponseHeader>) {
        let revision = self.node.read_store(|store| store.current_revision());
        header
            .get_or_insert_with(pb::ResponseHeader::default)
            .revision = revision.get();
        self.fill(header);
    }

    /// Runs `work` for at most the request timeout; past it, etcd's "request timed out".
    pub(crate) async fn within_timeout<T>(
        &self,
        work: impl Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        match tokio::time::timeout(self.limits.request_timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(ServerError::Timeout.into()),
        }
    }

    /// Waits until a leader is known, for at most the request timeout.
    pub(crate) async fn leader(&self) -> Result<NodeId, ServerError> {
        let mut status = self.node.status_watch();
        let wait = status.wait_for(|s| s.leader.is_some());
        match tokio::time::timeout(self.limits.request_timeout, wait).await {
            Ok(Ok(status)) => status.leader.ok_or(ServerError::NoLeader),
            Ok(Err(_)) => Err(ServerError::Stopped),
            Err(_) => Err(ServerError::NoLeader),
        }
    }

    /// etcd's learners serve serializable reads and Status only: everything else is refused
    /// with "rpc not supported for learner" (clients then try another member).
    pub(crate) fn refuse_learner(&self) -> Result<(), ServerError> {
        if self.node.is_learner() {
            return Err(ServerError::NotSupportedForLearner);
        }
        Ok(())
    }

    /// Proposes a write here when this member leads, else forwards it to the leader.
    pub(crate) async fn write(
        &self,
        request: ipb::forward_request::Request,
    ) -> Result<ipb::forward_response::Response, Status> {
        self.refuse_learner()?;
        let request_bytes = request_len(&request) as u64;
        if request_bytes > self.limits.request_bytes_max {
            return Err(ServerError::RequestTooLarge {
                request_bytes,
                request_bytes_max: self.limits.request_bytes_max,
            }
            .into());
        }
        if alarm::grows_store(&request) {
            self.check_quota(request_bytes)?;
        }
        let timeout = self.limits.request_timeout;
        let work = async {
            let leader = self.leader().await?;
            if leader == self.node.member_id {
                let response = self.node.propose(request).await?;
                Ok(write_to_proto(response))
            } else {
                self.forwarder.forward(leader, request).await
            }
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(ServerError::Timeout.into()),
        }
    }

    /// etcd's quota: while NOSPACE is active anywhere, or when this write would take this
    /// member's store past `--quota-backend-bytes`, a write that grows the store is refused
    /// with "database space exceeded"; in the second case this member raises NOSPACE for
    /// itself (in the background: the refusal does not wait for the alarm to commit).
    fn check_quota(&self, request_bytes: u64) -> Result<(), ServerError> {
        if self.node.alarms().no_space() {
            return Err(ServerError::NoSpace);
        }
        let db_bytes = self.node.read_store(|store| store.file_size());
        if !alarm::exceeds_quota(db_bytes, request_bytes, self.limits.quota_backend_bytes) {
            return Ok(());
        }
        tracing::warn!(
            db_bytes,
            quota = self.limits.quota_backend_bytes,
            "the store reached the backend quota; raising NOSPACE"
        );
        let edge = self.clone();
        tokio::spawn(async move {
            let raise = pb::AlarmRequest {
                action: pb::alarm_request::AlarmAction::Activate as i32,
                member_id: edge.node.member_id.get(),
                alarm: pb::AlarmType::Nospace as i32,
            };
            let change = ipb::member_change_request::Change::Alarm(raise);
            if let Err(error) = crate::cluster::change_on_leader(&edge, change).await {
                tracing::warn!(%error, "could not raise NOSPACE");
            }
        });
        Err(ServerError::NoSpace)
    }

    pub(crate) async fn range(
        &self,
        request: pb::RangeRequest,
    ) -> Result<pb::RangeResponse, Status> {
        let req = kv_convert::range_from_proto(&request)?;
        if !request.serializable {
            self.refuse_learner()?;
            self.read_barrier().await?;
        }
        if request.range_end.is_empty() {
            return node_range(&self.node, &req);
        }
        // A range over many keys can take long. It runs on a task of its own rather than on its
        // connection's, and reads the engine without the store's lock, which applying needs
        // (see `chorus_storage::mvcc::DetachedRange`).
        let node = self.node.clone();
        on_own_task(move || detached_range(&node, &req)).await
    }

    /// Waits, for at most the request timeout, until this member's store has applied every
    /// write committed before the call: a linearizable read may then read it.
    async fn read_barrier(&self) -> Result<(), Status> {
        let barrier = self.node.read_barrier();
        match tokio::time::timeout(self.limits.request_timeout, barrier).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(ServerError::Timeout.into()),
        }
    }

    /// A transaction that only reads, served as etcd serves it: as a read, after a read barrier
    /// unless every range in it is serializable, rather than through the log. `None` when the
    /// transaction writes.
    pub(crate) async fn read_txn(
        &self,
        request: &pb::TxnRequest,
    ) -> Result<Option<pb::TxnResponse>, Status> {
        let Some(ranges) = kv_convert::txn_ranges(request) else {
            return Ok(None);
        };
        // etcd's learners serve no transaction, serializable or not.
        self.refuse_learner()?;
        let req = kv_convert::txn_from_proto(request)?;
        if !ranges.iter().all(|range| range.serializable) {
            self.read_barrier().await?;
        }
        let many_keys = ranges.iter().any(|range| !range.range_end.is_empty());
        // As a range: one over many keys runs on a task of its own, and every range reads the
        // engine after the store's lock is released.
        let node = self.node.clone();
        let read = move || {
            let txn = node.read_store(|store| store.start_read_txn(&req));
            let response = match txn {
                Ok(txn) => off_workers_if(txn.len(), || txn.finish()),
                Err(error) => Err(error),
            };
            response
                .map(|response| kv_convert::txn_to_proto(&response))
                .map_err(|error| ServerError::from(error).into())
        };
        let response = if many_keys {
            on_own_task(read).await?
        } else {
            read()?
        };
        Ok(Some(response))
    }
}

/// Runs `work` on a task of its own rather than on the task of the request's connection, where
/// the requests behind it would wait for it (see `client_api::streams`): for reads that can
/// take long.
async fn on_own_task<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    match tokio::spawn(async move { work() }).await {
        Ok(response) => response,
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        // Only a runtime that is shutting down cancels a task.
        Err(_) => Err(ServerError::Stopped.into()),
    }
}

/// A range read under the store's lock.
fn node_range(node: &NodeHandle, req: &RangeRequest) -> Result<pb::RangeResponse, Status> {
    node.read_store(|store| store.range(req))
        .map(|response| kv_convert::range_to_proto(&response))
        .map_err(|error| ServerError::from(error).into())
}

/// A range whose engine reads run after the store's lock is released. One that reads many
/// records does so off the runtime's workers: the task holds its thread for as long as it
/// reads, and the worker's other tasks move to another thread meanwhile.
fn detached_range(node: &NodeHandle, req: &RangeRequest) -> Result<pb::RangeResponse, Status> {
    let range = node.read_store(|store| store.start_range(req));
    let response = match range {
        Ok(range) => off_workers_if(range.len(), || {
            range
                .finish()
                .map(|response| kv_convert::range_to_proto(&response))
        }),
        Err(error) => Err(error),
    };
    response.map_err(|error| ServerError::from(error).into())
}

/// Runs `finish`, the second step of a detached read of `records` records, under
/// `block_in_place` when there are enough of them to hold a runtime worker for long.
fn off_workers_if<T>(records: usize, finish: impl FnOnce() -> T) -> T {
    if records >= BLOCKING_RANGE_RECORDS && multi_threaded() {
        tokio::task::block_in_place(finish)
    } else {
        finish()
    }
}

/// How many records a range reads before it leaves the runtime's workers. Reading 1,000 takes
/// milliseconds (a full range over 100,000 values of 1 KiB takes about 200 ms before it is
/// encoded); handing the worker over costs a thread's wake-up.
const BLOCKING_RANGE_RECORDS: usize = 1000;

/// Whether this runs on a multi-threaded runtime, the one where a task can leave its worker.
fn multi_threaded() -> bool {
    tokio::runtime::Handle::current().runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
}

fn request_len(request: &ipb::forward_request::Request) -> usize {
    use ipb::forward_request::Request as R;
    match request {
        R::Put(r) => r.encoded_len(),
        R::DeleteRange(r) => r.encoded_len(),
        R::Txn(r) => r.encoded_len(),
        R::Compaction(r) => r.encoded_len(),
        R::LeaseGrant(r) => r.encoded_len(),
        R::LeaseRevoke(r) => r.encoded_len(),
    }
}

/// etcd's `KV` service.
#[derive(Clone)]
pub struct KvService(pub Edge);

fn unexpected_kind() -> Status {
    ServerError::Unexpected {
        message: "etcdserver: unexpected response kind".to_string(),
    }
    .into()
}

#[tonic::async_trait]
impl pb::kv_server::Kv for KvService {
    async fn range(
        &self,
        request: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let mut response = self.0.range(request.into_inner()).await?;
        self.0.fill(&mut response.header);
        Ok(Response::new(response))
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        let request = ipb::forward_request::Request::Put(request.into_inner());
        match self.0.write(request).await? {
            ipb::forward_response::Response::Put(mut response) => {
                self.0.fill(&mut response.header);
                Ok(Response::new(response))
            }
            _ => Err(unexpected_kind()),
        }
    }

    async fn delete_range(
        &self,
        request: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let request = ipb::forward_request::Request::DeleteRange(request.into_inner());
        match self.0.write(request).await? {
            ipb::forward_response::Response::DeleteRange(mut response) => {
                self.0.fill(&mut response.header);
                Ok(Response::new(response))
            }
            _ => Err(unexpected_kind()),
        }
    }

    async fn txn(
        &self,
        request: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::TxnResponse>, Status> {
        let request = request.into_inner();
        kv_convert::check_txn_ops(&request, self.0.limits.txn_ops_max)?;
        if let Some(mut response) = self.0.read_txn(&request).await? {
            self.0.fill(&mut response.header);
            return Ok(Response::new(response));
        }
        let request = ipb::forward_request::Request::Txn(request);
        match self.0.write(request).await? {
            ipb::forward_response::Response::Txn(mut response) => {
                self.0.fill(&mut response.header);
                Ok(Response::new(response))
            }
            _ => Err(unexpected_kind()),
        }
    }

    async fn compact(
        &self,
        request: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        let request = ipb::forward_request::Request::Compaction(request.into_inner());
        match self.0.write(request).await? {
            ipb::forward_response::Response::Compaction(mut response) => {
                self.0.fill(&mut response.header);
                Ok(Response::new(response))
            }
            _ => Err(unexpected_kind()),
        }
    }
}

/// The internal `Forward` service: writes that other members hand to this one as leader, and
/// this member's description.
#[derive(Clone)]
pub struct ForwardService {
    pub edge: Edge,
    pub membership: Arc<Membership>,
}

impl ForwardService {
    /// Serves a write stream another member opened: its writes are proposed here as leader
    /// (see [`crate::forward::serve_stream`]). A write the stream's answers cannot wait
    /// `write_timeout` for means the member is gone.
    pub fn serve_writes(&self, stream: AcceptedStream, write_timeout: Duration) {
        let node = self.edge.node.clone();
        crate::forward::serve_stream(
            stream,
            write_timeout,
            move |request, answer| node.propose_to(request, WriteReply::Stream(answer)),
            |outcome: WriteResult| outcome.map(write_to_proto).map_err(Status::from),
        );
    }
}

#[tonic::async_trait]
impl ipb::forward_server::Forward for ForwardService {
    async fn lease_keep_alive(
        &self,
        request: Request<pb::LeaseKeepAliveRequest>,
    ) -> Result<Response<pb::LeaseKeepAliveResponse>, Status> {
        let response = self
            .edge
            .lease_keep_alive_as_leader(request.into_inner().id)?;
        Ok(Response::new(response))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let response = self
            .edge
            .lease_time_to_live_as_leader(&request.into_inner())?;
        Ok(Response::new(response))
    }

    async fn member_info(
        &self,
        _: Request<ipb::MemberInfoRequest>,
    ) -> Result<Response<ipb::MemberInfoResponse>, Status> {
        Ok(Response::new(ipb::MemberInfoResponse {
            member_id: self.edge.node.member_id.get(),
            name: self.membership.name.clone(),
            client_urls: self.membership.client_urls.clone(),
        }))
    }

    async fn member_change(
        &self,
        request: Request<ipb::MemberChangeRequest>,
    ) -> Result<Response<ipb::MemberChangeResponse>, Status> {
        crate::cluster::change_as_leader(&self.edge, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn member_table_get(
        &self,
        _: Request<ipb::MemberTableRequest>,
    ) -> Result<Response<ipb::MemberTable>, Status> {
        Ok(Response::new(crate::cluster::table(&self.edge)))
    }
}

/// The version reported by `Maintenance.Status`: the etcd API version Chorus is compatible with.
/// etcd clients compare it to decide which features the server has.
pub const ETCD_API_VERSION: &str = "3.5.0";

/// etcd's `Maintenance` service: `Status` here, the other calls in [`crate::maintenance`].
/// Downgrade answers UNIMPLEMENTED.
#[derive(Clone)]
pub struct MaintenanceService(pub Edge);

fn unimplemented(rpc: &str) -> Status {
    Status::unimplemented(format!("chorus: Maintenance.{rpc} is not implemented yet"))
}

type SnapshotStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<pb::SnapshotResponse, Status>> + Send>,
>;

#[tonic::async_trait]
impl pb::maintenance_server::Maintenance for MaintenanceService {
    async fn alarm(
        &self,
        request: Request<pb::AlarmRequest>,
    ) -> Result<Response<pb::AlarmResponse>, Status> {
        maintenance::alarm(&self.0, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let edge = &self.0;
        let status = edge.node.status();
        let (revision, db_size) = edge
            .node
            .read_store(|store| (store.current_revision(), store.file_size()));
        let mut header = kv_convert::header(revision);
        edge.fill(&mut header);
        let db_size = i64::try_from(db_size).unwrap_or(i64::MAX);
        Ok(Response::new(pb::StatusResponse {
            header,
            version: ETCD_API_VERSION.to_string(),
            db_size,
            leader: status.leader.map_or(0, NodeId::get),
            raft_index: status.commit.get(),
            raft_term: status.term.get(),
            raft_applied_index: status.applied.get(),
            db_size_in_use: db_size,
            // As etcd: every active alarm, named as "memberID:<id> alarm:<kind>".
            errors: edge
                .node
                .alarms()
                .list(pb::AlarmType::None)
                .iter()
                .map(|a| {
                    let kind = pb::AlarmType::try_from(a.alarm).unwrap_or(pb::AlarmType::None);
                    format!("memberID:{} alarm:{}", a.member_id, kind.as_str_name())
                })
                .collect(),
            is_learner: edge.node.is_learner(),
            ..pb::StatusResponse::default()
        }))
    }

    async fn defragment(
        &self,
        _: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        maintenance::defragment(&self.0).await.map(Response::new)
    }

    async fn hash(
        &self,
        _: Request<pb::HashRequest>,
    ) -> Result<Response<pb::HashResponse>, Status> {
        maintenance::hash(&self.0).await.map(Response::new)
    }

    async fn hash_kv(
        &self,
        request: Request<pb::HashKvRequest>,
    ) -> Result<Response<pb::HashKvResponse>, Status> {
        maintenance::hash_kv(&self.0, request.into_inner())
            .await
            .map(Response::new)
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(
        &self,
        _: Request<pb::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        Ok(Response::new(Box::pin(maintenance::snapshot(&self.0))))
    }

    async fn move_leader(
        &self,
        request: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        maintenance::move_leader(&self.0, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn downgrade(
        &self,
        _: Request<pb::DowngradeRequest>,
    ) -> Result<Response<pb::DowngradeResponse>, Status> {
        Err(unimplemented("Downgrade"))
    }
}

/// This member's name and `--advertise-client-urls`, which it reports to the others (the
/// replicated membership itself is [`crate::membership`]).
#[derive(Clone, Debug, Default)]
pub struct Membership {
    pub name: String,
    pub client_urls: Vec<String>,
}

/// How long `MemberList` waits for a member to tell its client URLs.
pub const MEMBER_INFO_TIMEOUT: Duration = Duration::from_secs(1);
