//! Where a member's identity and first membership come from, and how a member learns that
//! the cluster removed it.
//!
//! - A data directory with `member/membership`: a restart; the file gives this member's id, the
//!   cluster id and the membership (a removed member refuses to start, as etcd does).
//! - `--initial-cluster-state new` (or a data directory from before the membership file):
//!   static bootstrap; every member of `--initial-cluster` is a voter.
//! - `--initial-cluster-state existing` on an empty data directory: the member joins a running
//!   cluster. As in etcd, `--initial-cluster` lists the existing members plus this one, and the
//!   member must have been added with MemberAdd first. It asks the other members listed for the
//!   membership, finds itself by its `--initial-advertise-peer-urls`, takes the cluster id from
//!   them, and starts with the others as its Raft configuration (not itself: it takes part once
//!   it applies the entry that added it, from the log or from a snapshot).

use std::path::Path;
use std::time::Duration;

use chorus_raft::{ConfState, LogIndex, NodeId};

use crate::config::{ClusterState, ServerConfig};
use crate::member::MemberError;
use crate::membership::{self, Members};
use crate::node::NodeHandle;
use chorus_proto::internal as ipb;

/// How long a joining member keeps asking the cluster for the membership.
const JOIN_WAIT: Duration = Duration::from_secs(30);

/// A member's identity and its membership at start.
pub struct Resolved {
    pub member_id: NodeId,
    pub members: Members,
    /// The Raft configuration to record if the WAL has none yet.
    pub bootstrap: ConfState,
}

fn error(context: &str, detail: impl ToString) -> MemberError {
    MemberError {
        context: context.to_string(),
        detail: detail.to_string(),
    }
}

/// The peer URLs of the members of `--initial-cluster` other than this one, to dial.
fn other_peer_urls(config: &ServerConfig) -> Vec<String> {
    config
        .initial_cluster
        .iter()
        .filter(|(name, _)| **name != config.name)
        .flat_map(|(_, urls)| urls.iter().map(|u| format!("http://{}", u.authority())))
        .collect()
}

/// The membership of a new cluster from `--initial-cluster`.
fn from_initial_cluster(config: &ServerConfig) -> Members {
    let members = config
        .initial_member_ids()
        .into_iter()
        .map(|(name, id)| {
            let urls = config.initial_cluster.get(&name).into_iter().flatten();
            let record = ipb::MemberRecord {
                id: id.get(),
                name,
                peer_urls: urls.map(ToString::to_string).collect(),
                is_learner: false,
            };
            (id, record)
        })
        .collect();
    Members {
        index: LogIndex(0),
        members,
        removed: Default::default(),
        cluster_id: config.cluster_id(),
        alarms: Default::default(),
    }
}

fn wal_has_data(member_dir: &Path) -> bool {
    std::fs::read_dir(member_dir.join("wal")).is_ok_and(|mut d| d.next().is_some())
}

/// Decides this member's identity and membership (see the module documentation).
pub async fn resolve(config: &ServerConfig, member_dir: &Path) -> Result<Resolved, MemberError> {
    std::fs::create_dir_all(member_dir)
        .map_err(|e| error(&format!("create {}", member_dir.display()), e))?;
    if let Some((members, member_id)) =
        Members::load(member_dir).map_err(|e| error("read the membership", e))?
    {
        if members.removed.contains(&member_id) {
            return Err(error(
                "start",
                "the member has been permanently removed from the cluster",
            ));
        }
        let bootstrap = members.conf_state(None);
        return Ok(Resolved {
            member_id,
            members,
            bootstrap,
        });
    }
    if config.initial_cluster_state == ClusterState::New || wal_has_data(member_dir) {
        let members = from_initial_cluster(config);
        let member_id = config.member_id();
        members
            .save(member_dir, member_id)
            .map_err(|e| error("record the membership", e))?;
        let bootstrap = members.conf_state(None);
        return Ok(Resolved {
            member_id,
            members,
            bootstrap,
        });
    }
    let own_urls: Vec<String> = config
        .initial_advertise_peer_urls
        .iter()
        .map(ToString::to_string)
        .collect();
    let peers = other_peer_urls(config);
    if peers.is_empty() {
        return Err(error(
            "join the cluster",
            "--initial-cluster-state existing needs the existing members in --initial-cluster",
        ));
    }
    let deadline = tokio::time::Instant::now() + JOIN_WAIT;
    loop {
        if let Some(table) = membership::fetch_table(&peers).await {
            let mut members = Members::from_proto(&table);
            let found = members.find_by_peer_urls(&own_urls).map(|m| NodeId(m.id));
            if let Some(member_id) = found {
                if let Some(me) = members.members.get_mut(&member_id) {
                    me.name = config.name.clone();
                }
                // Every entry is replayed from the start or a snapshot replaces the table.
                members.index = LogIndex(0);
                members
                    .save(member_dir, member_id)
                    .map_err(|e| error("record the membership", e))?;
                let bootstrap = members.conf_state(Some(member_id));
                tracing::info!(
                    member_id = %member_id,
                    cluster_id = format_args!("{:x}", members.cluster_id),
                    "joining a running cluster"
                );
                return Ok(Resolved {
                    member_id,
                    members,
                    bootstrap,
                });
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(error(
                    "join the cluster",
                    format!(
                        "no member has the peer URLs {own_urls:?}; add this member with \
                         MemberAdd first"
                    ),
                ));
            }
        } else if tokio::time::Instant::now() >= deadline {
            return Err(error(
                "join the cluster",
                format!("no existing member answered at {peers:?}"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// How often a member without a leader asks the others whether it was removed.
const REMOVAL_CHECK: Duration = Duration::from_secs(2);

/// Completes once this member learns that the cluster removed it: either it applied its own
/// removal (the table no longer lists it) or, having no leader, another member's table says
/// so (the leader stops replicating to a removed member, which may never apply its removal).
/// The durable table then records the removal, so the member refuses to start again.
pub async fn watch_removal(node: NodeHandle, member_dir: std::path::PathBuf) {
    let mut leaderless = 0u32;
    loop {
        tokio::time::sleep(REMOVAL_CHECK).await;
        if node.status().leader.is_some() {
            leaderless = 0;
            continue;
        }
        leaderless += 1;
        if leaderless < 2 {
            continue;
        }
        let peers: Vec<String> = {
            let members = node.members.read().unwrap_or_else(|e| e.into_inner());
            members
                .members
                .values()
                .filter(|m| m.id != node.member_id.get())
                .filter_map(|m| m.peer_urls.first())
                .filter_map(|u| crate::config::MemberUrl::parse(u).ok())
                .map(|u| format!("http://{}", u.authority()))
                .collect()
        };
        let Some(table) = membership::fetch_table(&peers).await else {
            continue;
        };
        if table.removed.contains(&node.member_id.get()) {
            let mut members = node.members.write().unwrap_or_else(|e| e.into_inner());
            members.members.remove(&node.member_id);
            members.removed.insert(node.member_id);
            if let Err(error) = members.save(&member_dir, node.member_id) {
                tracing::error!(%error, "could not record the removal");
            }
            return;
        }
    }
}
