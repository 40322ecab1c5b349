//! etcd's `Cluster` service over the replicated membership of [`crate::membership`].
//!
//! Changes (MemberAdd, MemberRemove, MemberUpdate, MemberPromote) are checked and proposed on
//! the leader: a member that does not lead hands them over with the internal
//! `Forward.MemberChange` call. Each answers once the change is applied on the leader, with the
//! member concerned and the whole member list, as etcd does.
//!
//! A member's name and client URLs are what the member itself reports (`Forward.MemberInfo`);
//! a member that does not answer within a second is listed as etcd lists a member that has not
//! started: the name the table has (empty for a member added at runtime) and no client URLs.

use std::sync::Arc;

use chorus_proto::etcdserverpb as pb;
use chorus_proto::internal as ipb;
use chorus_raft::NodeId;
use tonic::{Request, Response, Status};

use crate::error::ServerError;
use crate::kv_convert;
use crate::service::{Edge, MEMBER_INFO_TIMEOUT, Membership};

/// etcd's `Cluster` service.
#[derive(Clone)]
pub struct ClusterService {
    pub edge: Edge,
    pub membership: Arc<Membership>,
}

/// What a member says of itself: name and client URLs, if it answered.
async fn member_info(
    edge: &Edge,
    membership: &Membership,
    member: NodeId,
) -> Option<(String, Vec<String>)> {
    if member == edge.node.member_id {
        return Some((membership.name.clone(), membership.client_urls.clone()));
    }
    let channel = edge.forwarder.channel(member).ok()?;
    let mut client = ipb::forward_client::ForwardClient::new(channel);
    let call = client.member_info(ipb::MemberInfoRequest {});
    match tokio::time::timeout(MEMBER_INFO_TIMEOUT, call).await {
        Ok(Ok(info)) if info.get_ref().member_id == member.get() => {
            let info = info.into_inner();
            Some((info.name, info.client_urls))
        }
        _ => None,
    }
}

impl ClusterService {
    /// The etcd view of one member.
    async fn to_member(&self, record: &ipb::MemberRecord) -> pb::Member {
        let info = member_info(&self.edge, &self.membership, NodeId(record.id)).await;
        let (name, client_urls) = info.unwrap_or_else(|| (record.name.clone(), Vec::new()));
        pb::Member {
            id: record.id,
            name,
            peer_ur_ls: record.peer_urls.clone(),
            client_ur_ls: client_urls,
            is_learner: record.is_learner,
        }
    }

    async fn to_members(&self, records: &[ipb::MemberRecord]) -> Vec<pb::Member> {
        // One member after another: at most a second per member that does not answer.
        let mut members = Vec::with_capacity(records.len());
        for record in records {
            members.push(self.to_member(record).await);
        }
        members
    }

    fn header(&self) -> Option<pb::ResponseHeader> {
        let revision = self.edge.node.read_store(|store| store.current_revision());
        let mut header = kv_convert::header(revision);
        self.edge.fill(&mut header);
        header
    }

    /// Runs a change on the leader and waits for it to be applied there.
    async fn change(
        &self,
        change: ipb::member_change_request::Change,
    ) -> Result<(pb::Member, Vec<pb::Member>), Status> {
        let response = change_on_leader(&self.edge, change).await?;
        let table = response.table.unwrap_or_default();
        let member = match response.member {
            Some(record) => self.to_member(&record).await,
            None => pb::Member::default(),
        };
        Ok((member, self.to_members(&table.members).await))
    }
}

/// Proposes `change` here when this member leads, else on the leader through `Forward`.
pub async fn change_on_leader(
    edge: &Edge,
    change: ipb::member_change_request::Change,
) -> Result<ipb::MemberChangeResponse, Status> {
    let work = async {
        let leader = edge.leader().await?;
        if leader == edge.node.member_id {
            Ok(edge.node.propose_member(change).await?)
        } else {
            let channel = edge.forwarder.channel(leader)?;
            let mut client = ipb::forward_client::ForwardClient::new(channel);
            let request = ipb::MemberChangeRequest {
                change: Some(change),
            };
            Ok(client.member_change(request).await?.into_inner())
        }
    };
    match tokio::time::timeout(edge.limits.request_timeout, work).await {
        Ok(result) => result,
        Err(_) => Err(ServerError::Timeout.into()),
    }
}

/// `Forward.MemberChange` on the leader: proposes a change another member handed over.
pub async fn change_as_leader(
    edge: &Edge,
    request: ipb::MemberChangeRequest,
) -> Result<ipb::MemberChangeResponse, Status> {
    let change = request.change.ok_or_else(|| {
        Status::from(ServerError::Unexpected {
            message: "etcdserver: empty membership change".to_string(),
        })
    })?;
    let work = edge.node.propose_member(change);
    match tokio::time::timeout(edge.limits.request_timeout, work).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(ServerError::Timeout.into()),
    }
}

/// `Forward.MemberTableGet`: the membership as applied here, with the cluster id.
pub fn table(edge: &Edge) -> ipb::MemberTable {
    let members = edge.node.members.read().unwrap_or_else(|e| e.into_inner());
    members.to_proto(NodeId(0))
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        let change = ipb::member_change_request::Change::Add(request.into_inner());
        let (member, members) = self.change(change).await?;
        Ok(Response::new(pb::MemberAddResponse {
            header: self.header(),
            member: Some(member),
            members,
        }))
    }

    async fn member_remove(
        &self,
        request: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        let change = ipb::member_change_request::Change::Remove(request.into_inner());
        let (_, members) = self.change(change).await?;
        Ok(Response::new(pb::MemberRemoveResponse {
            header: self.header(),
            members,
        }))
    }

    async fn member_update(
        &self,
        request: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        let change = ipb::member_change_request::Change::Update(request.into_inner());
        let (_, members) = self.change(change).await?;
        Ok(Response::new(pb::MemberUpdateResponse {
            header: self.header(),
            members,
        }))
    }

    async fn member_list(
        &self,
        _: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        let records = table(&self.edge).members;
        let members = self.to_members(&records).await;
        Ok(Response::new(pb::MemberListResponse {
            header: self.header(),
            members,
        }))
    }

    async fn member_promote(
        &self,
        request: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        let change = ipb::member_change_request::Change::Promote(request.into_inner());
        let (_, members) = self.change(change).await?;
        Ok(Response::new(pb::MemberPromoteResponse {
            header: self.header(),
            members,
        }))
    }
}
