//! Starting and stopping one member: opens the WAL and the MVCC store in the data directory,
//! bootstraps the Raft group from `--initial-cluster` on first start (or recovers it), starts the
//! peer transport, the Raft driver and the gRPC servers, and stops them all on shutdown.
//!
//! Data directory layout: `member/wal/` holds the WAL segments, `member/snap/` the snapshot
//! data, and `member/mvcc*/` the MVCC store (see [`crate::snap`]).

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chorus_proto::etcdserverpb::cluster_server::ClusterServer;
use chorus_proto::etcdserverpb::kv_server::KvServer;
use chorus_proto::etcdserverpb::lease_server::LeaseServer;
use chorus_proto::etcdserverpb::maintenance_server::MaintenanceServer;
use chorus_proto::internal::forward_server::ForwardServer;
use chorus_proto::v3electionpb::election_server::ElectionServer;
use chorus_proto::v3lockpb::lock_server::LockServer;
use chorus_raft::{ConfState, GroupId, LogIndex, LogStorage, NodeId, RawNode};
use chorus_storage::disk::RealDisk;
use chorus_storage::mvcc::{MvccConfig, MvccStore};
use chorus_storage::wal::{RaftLogStore, Wal, WalConfig};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::Instrument as _;

use crate::client_api::ClientApi;
use crate::cluster::ClusterService;
use crate::config::{MemberUrl, ReadMode, ServerConfig};
use crate::coordination::{ElectionService, LockService};
use crate::join;
use crate::lease::{self, LeaseService, Lessor};
use crate::membership::{Members, PeerSync, SharedMembers};
use crate::node::{Driver, DriverInputs, DriverParts, NodeConfig, SnapshotPolicy};
use crate::service::{
    Edge, EdgeLimits, ForwardService, Forwarder, KvService, MaintenanceService, Membership,
};
use crate::snap::{self, SnapFiles};
use crate::transport::{LocalIdentity, PeerService, PeerTransport, TransportConfig};

/// The one Raft group of this first version.
pub const GROUP_ID: GroupId = GroupId(1);

/// Room for the gRPC framing around a request of `--max-request-bytes` (etcd's
/// `grpcOverheadBytes`), so that an oversized request reaches the size check and gets etcd's
/// "request is too large" rather than a transport error.
pub const GRPC_OVERHEAD_BYTES: u64 = 512 * 1024;

/// The longest time between two durable commits of the MVCC store (etcd's backend commits
/// every 100 ms too). Applies in between are not fsynced; see `MvccConfig::commit_sync_interval`.
pub const MVCC_SYNC_INTERVAL: Duration = Duration::from_millis(100);

/// Why a member could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[error("{context}: {detail}")]
pub struct MemberError {
    pub context: String,
    pub detail: String,
}

fn fail<E: std::fmt::Display>(context: impl Into<String>) -> impl FnOnce(E) -> MemberError {
    let context = context.into();
    move |e| MemberError {
        context,
        detail: e.to_string(),
    }
}

/// The addresses a started member listens on, for callers that asked for port 0.
#[derive(Clone, Debug)]
pub struct Bound {
    pub client: Vec<std::net::SocketAddr>,
    pub peer: std::net::SocketAddr,
    /// Where `/metrics` and `/health` are served (`--listen-metrics-urls`).
    pub metrics: Vec<std::net::SocketAddr>,
}

async fn bind(url: &MemberUrl) -> Result<TcpListener, MemberError> {
    TcpListener::bind(url.authority())
        .await
        .map_err(fail(format!("listen on {url}")))
}

/// What [`open_storage`] opens: the log, the store, the Raft node, the snapshot policy and the
/// membership table a snapshot restored at start carried, if any.
type OpenedStorage = (
    RaftLogStore,
    MvccStore,
    RawNode<RaftLogStore>,
    SnapshotPolicy,
    Option<chorus_proto::internal::MemberTable>,
);

/// Opens the WAL and the store and builds the Raft node, bootstrapping a new group with the
/// configuration `bootstrap`. Also returns the membership table a snapshot restored here
/// carried, if any.
fn open_storage(
    config: &ServerConfig,
    member_id: NodeId,
    bootstrap: ConfState,
    members_index: LogIndex,
) -> Result<OpenedStorage, MemberError> {
    let member_dir: PathBuf = config.data_dir.join("member");
    let wal_dir = member_dir.join("wal");
    std::fs::create_dir_all(&wal_dir).map_err(fail(format!("create {}", wal_dir.display())))?;
    let mut wal = Wal::open(Arc::new(RealDisk::new()), WalConfig::new(&wal_dir))
        .map_err(fail(format!("open the WAL in {}", wal_dir.display())))?;
    wal.prepare_segments_in_background()
        .map_err(fail("start the thread preparing WAL segments"))?;
    wal.purge_in_background()
        .map_err(fail("start the thread purging WAL segments"))?;
    let snapshot_meta = wal
        .group(GROUP_ID)
        .map_err(fail("read the WAL"))?
        .map(|log| log.snapshot_meta().clone())
        .unwrap_or_default();
    let log = RaftLogStore::new(Arc::new(Mutex::new(wal)), GROUP_ID);
    let state = log.initial_state().map_err(fail("read the WAL state"))?;
    if state.conf_state.voters.is_empty() {
        // First start: the configuration from the membership (--initial-cluster for a new
        // cluster, the others as the cluster told them for a joining member).
        tracing::info!(voters = ?bootstrap.voters, learners = ?bootstrap.learners, "bootstrapping the Raft group");
        log.set_conf_state(bootstrap)
            .map_err(fail("record the initial configuration"))?;
        log.sync().map_err(fail("sync the WAL"))?;
    }
    let mvcc_config = MvccConfig {
        txn_ops_max: config.txn_ops_max as usize,
        // The WAL holds what was committed; the store need not reach the disk on every apply.
        commit_sync_interval: MVCC_SYNC_INTERVAL,
        // The Raft driver goes on applying (and sending, and answering) during those commits.
        commit_in_background: true,
        ..MvccConfig::default()
    };
    let files =
        SnapFiles::open(member_dir.join("snap")).map_err(fail("open the snapshot directory"))?;
    // Followers far behind get the snapshot read back from its file, never kept in memory.
    log.set_snapshot_source(Arc::new(files.clone()));
    let mut store = snap::open_store(&member_dir, mvcc_config.clone()).map_err(fail(format!(
        "open the MVCC store in {}",
        member_dir.display()
    )))?;
    let mut snapshot_table = None;
    // A snapshot mark taken locally has no file: the store, synced before the mark was
    // recorded, holds everything up to it. A snapshot received from the leader has one.
    let has_file = snapshot_meta.index.get() > 0 && files.exists(&snapshot_meta);
    if !has_file && store.applied_index() < snapshot_meta.index {
        return Err(MemberError {
            context: "check the data directory".into(),
            detail: format!(
                "the WAL records snapshot {} but the store has applied only up to {} and the \
                 snapshot's data file is missing",
                snapshot_meta.index,
                store.applied_index()
            ),
        });
    }
    if has_file {
        // A crash came between recording a received snapshot and switching the store or
        // recording the membership it carries: finish both from the snapshot's data.
        if store.applied_index() < snapshot_meta.index || members_index < snapshot_meta.index {
            let data = files
                .load(&snapshot_meta)
                .map_err(fail("load the data of the snapshot the WAL records"))?;
            let (table, mvcc_data) =
                snap::open_envelope(data).map_err(fail("open the snapshot's data"))?;
            if let Some(table) = table {
                use prost::Message as _;
                let mut table = chorus_proto::internal::MemberTable::decode(table.as_ref())
                    .map_err(fail("decode the snapshot's membership"))?;
                table.index = snapshot_meta.index.get();
                snapshot_table = Some(table);
            }
            if store.applied_index() < snapshot_meta.index {
                tracing::info!(index = %snapshot_meta.index, "restoring the store from the snapshot");
                let old_dir = store.dir().to_path_buf();
                drop(store);
                store = snap::restore_store(
                    &member_dir,
                    mvcc_config.clone(),
                    &snapshot_meta,
                    mvcc_data,
                )
                .map_err(fail("restore the store from the snapshot"))?;
                snap::remove_store_dir(&old_dir);
            }
        }
    }
    // Files written for followers before the stop are not offered again (the membership may
    // have changed since): one is written anew when a follower needs it.
    files
        .purge_except(has_file.then_some(&snapshot_meta))
        .map_err(fail("remove old snapshot files"))?;
    reconcile_commit(&log, store.applied_index())?;
    let mut raft_config = chorus_raft::Config::new(member_id, GROUP_ID);
    raft_config.election_ticks = u32::try_from(config.election_ticks()).unwrap_or(u32::MAX);
    raft_config.heartbeat_ticks = 1;
    raft_config.read_only = match config.read_mode {
        ReadMode::ReadIndex => chorus_raft::ReadOnlyOption::Safe,
        ReadMode::Lease => chorus_raft::ReadOnlyOption::LeaseBased,
    };
    raft_config.applied = store.applied_index();
    raft_config.seed = member_id.get() ^ seed_from_clock();
    raft_config
        .validate()
        .map_err(fail("check the Raft configuration"))?;
    let raw = RawNode::new(&raft_config, log.clone()).map_err(fail("start the Raft node"))?;
    let policy = SnapshotPolicy {
        snapshot_count: config.snapshot_count,
        catchup_entries: catchup_entries(config.snapshot_count),
        files,
        member_dir,
        mvcc_config,
        last_index: snapshot_meta.index,
    };
    Ok((log, store, raw, policy, snapshot_table))
}

/// The driver does not sync a Ready that only moves the commit index, so after a crash the
/// WAL's commit index may be below what the store applied (the store only ever applies entries
/// that were synced and committed). Raise it to the applied index, as Raft would learn it again
/// from the leader.
fn reconcile_commit(log: &RaftLogStore, applied: chorus_raft::LogIndex) -> Result<(), MemberError> {
    let state = log.initial_state().map_err(fail("read the WAL state"))?;
    if applied <= state.hard_state.commit {
        return Ok(());
    }
    let last = log
        .last_index()
        .map_err(fail("read the WAL's last index"))?;
    if last < applied {
        return Err(MemberError {
            context: "check the data directory".into(),
            detail: format!(
                "the store applied index {applied} but the WAL ends at {last}: the WAL is \
                 missing entries the store applied"
            ),
        });
    }
    tracing::info!(commit = %state.hard_state.commit, %applied, "raising the WAL's commit index to the applied index");
    log.set_hard_state(chorus_raft::HardState {
        commit: applied,
        ..state.hard_state
    })
    .map_err(fail("record the commit index"))?;
    log.sync().map_err(fail("sync the WAL"))?;
    Ok(())
}

/// etcd keeps 5000 entries below a snapshot for slow followers. With a `--snapshot-count`
/// below 10000 Chorus keeps half of it instead, so that small counts (as tests use) still
/// compact the log and exercise InstallSnapshot.
pub fn catchup_entries(snapshot_count: u64) -> u64 {
    const SNAPSHOT_CATCHUP_ENTRIES: u64 = 5000;
    SNAPSHOT_CATCHUP_ENTRIES.min(snapshot_count / 2)
}

/// Election timeouts should differ between runs and members; the clock is as good as any.
fn seed_from_clock() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Runs a member until `shutdown` completes (then stops gracefully) or a fatal error.
pub async fn run(
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), MemberError> {
    run_with(config, shutdown, |_| {}).await
}

/// [`run`], telling `on_bound` the addresses once every listener is open.
pub async fn run_with(
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
    on_bound: impl FnOnce(Bound),
) -> Result<(), MemberError> {
    let span = tracing::info_span!(parent: None, "member", name = %config.name, member_id = %config.member_id());
    run_member(config, shutdown, on_bound)
        .instrument(span)
        .await
}

async fn run_member(
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
    on_bound: impl FnOnce(Bound),
) -> Result<(), MemberError> {
    let member_dir = config.data_dir.join("member");
    let joined = join::resolve(&config, &member_dir).await?;
    let member_id = joined.member_id;
    let cluster_id = joined.members.cluster_id;
    let members_index = joined.members.index;
    let mut members = joined.members;
    let (log, store, mut raw, snapshots, snapshot_table) =
        open_storage(&config, member_id, joined.bootstrap, members_index)?;
    if let Some(table) = snapshot_table
        && table.index > members.index.get()
    {
        // The store was restored from a snapshot newer than the durable table.
        members = Members {
            cluster_id,
            ..Members::from_proto(&table)
        };
        members
            .save(&member_dir, member_id)
            .map_err(fail("record the membership"))?;
    }
    let single = members.conf_state(None).voters.len() == 1;
    if single && members.members.contains_key(&member_id) && raw.status().term.get() == 0 {
        // A new single-member cluster needs no election timeout to find its leader.
        raw.campaign().map_err(fail("campaign"))?;
    }
    let local = LocalIdentity {
        cluster_id,
        member_id,
    };
    let transport_config = TransportConfig::default();
    let (transport, reports) = PeerTransport::new(transport_config.clone(), local)
        .map_err(fail("configure the peer transport"))?;
    let forwarder = Forwarder::new(local, &transport_config, HashMap::new());
    let mut peers = PeerSync::new(transport.clone(), forwarder.clone(), member_id);
    peers.sync(&members);
    let members: SharedMembers = Arc::new(std::sync::RwLock::new(members));
    let (peer_service, inbound) = PeerService::new(transport_config.clone(), local)
        .map_err(fail("configure the peer service"))?;

    let node_config = NodeConfig {
        tick_interval: Duration::from_millis(config.heartbeat_interval_ms),
        ..NodeConfig::default()
    };
    node_config
        .validate()
        .map_err(fail("check the node configuration"))?;
    let (driver, handle, commands) = Driver::new(DriverParts {
        config: node_config,
        raw,
        log,
        store,
        transport: transport.clone(),
        member_id,
        cluster_id,
        snapshots,
        lessor: Arc::new(Lessor::new(Duration::from_millis(
            config.election_timeout_ms,
        ))),
        members: members.clone(),
        peers,
    })
    .map_err(fail("start the thread syncing the WAL"))?;
    let edge = Edge {
        node: handle,
        forwarder,
        limits: EdgeLimits {
            request_bytes_max: config.request_bytes_max,
            txn_ops_max: config.txn_ops_max as usize,
            // etcd's request timeout: 5s plus two election timeouts.
            request_timeout: Duration::from_secs(5)
                + 2 * Duration::from_millis(config.election_timeout_ms),
            quota_backend_bytes: config.quota_backend_bytes,
        },
    };

    let membership = Arc::new(Membership {
        name: config.name.clone(),
        client_urls: config
            .advertise_client_urls
            .iter()
            .map(ToString::to_string)
            .collect(),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let peer_listener = bind(&config.listen_peer_urls[0]).await?;
    let mut client_listeners = Vec::new();
    for url in &config.listen_client_urls {
        client_listeners.push(bind(url).await?);
    }
    let mut metrics_listeners = Vec::new();
    for url in &config.listen_metrics_urls {
        metrics_listeners.push(bind(url).await?);
    }
    let local_addrs = |listeners: &[TcpListener]| {
        listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    };
    let bound = Bound {
        client: local_addrs(&client_listeners),
        peer: peer_listener
            .local_addr()
            .map_err(fail("read the peer address"))?,
        metrics: local_addrs(&metrics_listeners),
    };

    let watch = crate::watch::server(edge.node.clone(), &config).map_err(fail("start watch"))?;
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(serve_peers(
        peer_listener,
        peer_service,
        ForwardService {
            edge: edge.clone(),
            membership: membership.clone(),
        },
        transport_config,
        stop_rx.clone(),
    ));
    for listener in client_listeners {
        let api = ClientApi {
            kv: KvServer::new(KvService(edge.clone()))
                .max_decoding_message_size(
                    (config.request_bytes_max + GRPC_OVERHEAD_BYTES) as usize,
                )
                .max_encoding_message_size(usize::MAX),
            lease: LeaseServer::new(LeaseService {
                edge: edge.clone(),
                min_ttl: lease::min_ttl(Duration::from_millis(config.election_timeout_ms)),
            }),
            watch: watch.clone(),
            maintenance: MaintenanceServer::new(MaintenanceService(edge.clone())),
            cluster: ClusterServer::new(ClusterService {
                edge: edge.clone(),
                membership: membership.clone(),
            }),
            lock: LockServer::new(LockService(edge.clone())),
            election: ElectionServer::new(ElectionService(edge.clone())),
        };
        let served = crate::client_api::serve(listener, api, stop_rx.clone());
        tasks.spawn(async move {
            served.await;
            Ok(())
        });
    }
    for listener in metrics_listeners {
        let served = crate::metrics::serve(listener, edge.node.clone(), stop_rx.clone());
        tasks.spawn(async move {
            served.await;
            Ok(())
        });
    }
    let compactor = crate::compactor::run(edge.clone(), config.auto_compaction, stop_rx.clone());
    tasks.spawn(async move {
        compactor.await;
        Ok(())
    });
    let expiry = lease::expire_leases(edge.clone(), stop_rx.clone());
    tasks.spawn(async move {
        expiry.await;
        Ok(())
    });
    let inputs = DriverInputs {
        inbound,
        reports,
        shutdown: stop_rx.clone(),
    };
    let mut driver_task = tokio::spawn(driver.run(inputs, commands));
    let removal = join::watch_removal(edge.node.clone(), member_dir.clone());
    tracing::info!(
        client = ?bound.client,
        peer = %bound.peer,
        metrics = ?bound.metrics,
        cluster_id = format_args!("{cluster_id:x}"),
        "ready to serve client requests"
    );
    on_bound(bound);

    // Whether the select below took the driver's result (a JoinHandle must not be polled again).
    let mut driver_ended = false;
    let result = tokio::select! {
        () = shutdown => {
            tracing::info!("shutting down");
            Ok(())
        }
        () = removal => {
            tracing::warn!("the member has been permanently removed from the cluster; exiting");
            Ok(())
        }
        joined = &mut driver_task => {
            driver_ended = true;
            match joined {
                Ok(Ok(())) => {
                    if !members.read().unwrap_or_else(|e| e.into_inner()).members.contains_key(&member_id) {
                        tracing::warn!("the member has been permanently removed from the cluster; exiting");
                    }
                    Ok(())
                }
                Ok(Err(fatal)) => {
                    tracing::error!(error = %fatal, "the node stops");
                    Err(MemberError { context: "run the Raft node".into(), detail: fatal.to_string() })
                }
                Err(e) => Err(MemberError { context: "run the Raft node".into(), detail: e.to_string() }),
            }
        }
        Some(Ok(Err(error))) = tasks.join_next() => Err(error),
    };
    stop_tx.send_replace(true);
    let drain = async {
        while tasks.join_next().await.is_some() {}
        if !driver_ended {
            let _ = driver_task.await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .is_err()
    {
        tracing::warn!("servers did not stop within 5s");
    }
    result
}

async fn serve_peers(
    listener: TcpListener,
    peer_service: PeerService,
    forward: ForwardService,
    config: TransportConfig,
    mut stop: watch::Receiver<bool>,
) -> Result<(), MemberError> {
    let handle = peer_service.clone();
    let mut stop_streams = stop.clone();
    tokio::spawn(async move {
        let _ = stop_streams.wait_for(|s| *s).await;
        // Raft message streams live as long as their connections; end them so shutdown does
        // not wait.
        handle.stop_streams();
    });
    let writes = forward.clone();
    let write_timeout = config.keepalive_timeout;
    let peer_service =
        peer_service.accept_writes(move |stream| writes.serve_writes(stream, write_timeout));
    let incoming = peer_service.incoming(listener);
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(config.keepalive_interval))
        .http2_keepalive_timeout(Some(config.keepalive_timeout))
        .add_service(peer_service.into_server())
        .add_service(ForwardServer::new(forward))
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
        .map_err(fail("serve peers"))
}
