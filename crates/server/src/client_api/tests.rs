//! The client API over a real loopback connection, on a store with no Raft node behind it: the
//! requests here are the ones such a member answers alone (serializable reads, the member
//! list). Timeouts only guard against a hang.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use chorus_proto::etcdserverpb as pb;
use chorus_proto::etcdserverpb::cluster_client::ClusterClient;
use chorus_proto::etcdserverpb::kv_client::KvClient;
use chorus_storage::mvcc::{MvccConfig, MvccStore, PutRequest};
use tonic::Code;
use tonic::transport::Channel;

use super::*;
use crate::forward::Forwarder;
use crate::node::NodeHandle;
use crate::service::{Edge, EdgeLimits, Membership};
use crate::watch::WatchConfig;

const GUARD: Duration = Duration::from_secs(20);

struct Running {
    _dir: tempfile::TempDir,
    url: String,
    stop: watch::Sender<bool>,
    served: tokio::task::JoinHandle<()>,
}

/// Serves the client API on a free port, over a store holding `key = value`.
async fn start() -> Running {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut store = MvccStore::open(dir.path(), MvccConfig::default()).expect("open a store");
    store
        .put(&PutRequest {
            key: Bytes::from_static(b"key"),
            value: Bytes::from_static(b"value"),
            ..PutRequest::default()
        })
        .expect("put");
    let (node, _status) = NodeHandle::detached(Arc::new(RwLock::new(store)));
    let edge = Edge {
        node: node.clone(),
        forwarder: Forwarder::new(
            crate::transport::LocalIdentity {
                cluster_id: 1,
                member_id: chorus_raft::NodeId(1),
            },
            &crate::transport::TransportConfig::default(),
            Default::default(),
        ),
        limits: EdgeLimits {
            request_bytes_max: 1024 * 1024,
            txn_ops_max: 128,
            request_timeout: Duration::from_secs(5),
            quota_backend_bytes: 1 << 30,
        },
    };
    let api = ClientApi {
        kv: KvServer::new(KvService(edge.clone())),
        lease: LeaseServer::new(LeaseService {
            edge: edge.clone(),
            min_ttl: 1,
        }),
        watch: WatchServer::new(
            WatchService::start(node, WatchConfig::default()).expect("a valid watch config"),
        ),
        maintenance: MaintenanceServer::new(MaintenanceService(edge.clone())),
        cluster: ClusterServer::new(ClusterService {
            edge: edge.clone(),
            membership: Arc::new(Membership {
                name: "test".into(),
                client_urls: Vec::new(),
            }),
        }),
        lock: LockServer::new(LockService(edge.clone())),
        election: ElectionServer::new(ElectionService(edge)),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("local address"));
    let (stop, stop_rx) = watch::channel(false);
    let served = tokio::spawn(serve(listener, api, stop_rx));
    Running {
        _dir: dir,
        url,
        stop,
        served,
    }
}

async fn channel(url: &str) -> Channel {
    tokio::time::timeout(
        GUARD,
        Channel::from_shared(url.to_string()).unwrap().connect(),
    )
    .await
    .expect("connected in time")
    .expect("connect")
}

/// A unary call to `path` with an empty message, as a client of a service Chorus lacks would
/// send it.
async fn call_path(channel: Channel, path: &'static str) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let codec = tonic_prost::ProstCodec::<pb::RangeRequest, pb::RangeResponse>::default();
    grpc.unary(
        tonic::Request::new(pb::RangeRequest::default()),
        http::uri::PathAndQuery::from_static(path),
        codec,
    )
    .await
    .expect_err("no such method")
}

#[tokio::test]
async fn requests_reach_the_service_their_path_names() {
    let running = start().await;
    let channel = channel(&running.url).await;

    let mut kv = KvClient::new(channel.clone());
    let response = kv
        .range(pb::RangeRequest {
            key: b"key".to_vec().into(),
            serializable: true,
            ..Default::default()
        })
        .await
        .expect("a serializable read")
        .into_inner();
    assert_eq!(response.kvs.len(), 1);
    assert_eq!(&response.kvs[0].value[..], b"value");

    let members = ClusterClient::new(channel.clone())
        .member_list(pb::MemberListRequest::default())
        .await
        .expect("the member list");
    assert!(members.into_inner().header.is_some());

    let unknown_service = call_path(channel.clone(), "/etcdserverpb.Nope/Range").await;
    assert_eq!(unknown_service.code(), Code::Unimplemented);
    assert!(
        unknown_service.message().contains("etcdserverpb.Nope"),
        "{unknown_service:?}"
    );
    let unknown_method = call_path(channel.clone(), "/etcdserverpb.KV/Nope").await;
    assert_eq!(unknown_method.code(), Code::Unimplemented);
    let no_method = call_path(channel.clone(), "/etcdserverpb.KV").await;
    assert_eq!(no_method.code(), Code::Unimplemented);

    // The connection still serves after the refusals.
    kv.range(pb::RangeRequest {
        key: b"key".to_vec().into(),
        serializable: true,
        ..Default::default()
    })
    .await
    .expect("a read after the refusals");
}

#[tokio::test]
async fn a_stop_ends_open_connections_and_the_server() {
    let running = start().await;
    let channel = channel(&running.url).await;
    let mut kv = KvClient::new(channel);
    let read = pb::RangeRequest {
        key: b"key".to_vec().into(),
        serializable: true,
        ..Default::default()
    };
    kv.range(read.clone()).await.expect("a read");

    running.stop.send_replace(true);
    tokio::time::timeout(GUARD, running.served)
        .await
        .expect("the server ended in time")
        .expect("the server task");
    let after = tokio::time::timeout(GUARD, kv.range(read))
        .await
        .expect("an answer in time");
    assert!(after.is_err(), "served after the stop: {after:?}");
}
