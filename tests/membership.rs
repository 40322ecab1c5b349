//! etcd's `Cluster` service against real `chorus serve` processes: members added (as learners,
//! then promoted), updated and removed while the cluster serves writes, a member joining with
//! `--initial-cluster-state existing` and catching up through a snapshot, and etcd's refusals.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chorus_proto::etcdserverpb as pb;
use common::{
    Cluster, GUARD, cluster_client, eventually, get, kv, leader_index, prefix_end, put,
    put_retrying, wait_ready,
};
use tonic::Code;

fn add(peer_url: &str, is_learner: bool) -> pb::MemberAddRequest {
    pb::MemberAddRequest {
        peer_ur_ls: vec![peer_url.to_string()],
        is_learner,
    }
}

/// The keys under `prefix` that `endpoint` holds, read locally (serializable).
async fn local_keys(endpoint: &str, prefix: &str) -> Result<BTreeSet<String>, String> {
    let request = pb::RangeRequest {
        key: prefix.as_bytes().to_vec().into(),
        range_end: prefix_end(prefix).into(),
        serializable: true,
        keys_only: true,
        ..pb::RangeRequest::default()
    };
    let response = kv(endpoint)
        .await
        .range(request)
        .await
        .map_err(|e| e.to_string())?;
    Ok(response
        .into_inner()
        .kvs
        .into_iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect())
}

/// Writes `w/<n>` to whichever of `endpoints` answers until told to stop, and records every
/// key whose write was acknowledged.
fn spawn_writer(
    endpoints: Vec<String>,
    acked: Arc<Mutex<BTreeSet<String>>>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut n = 0u64;
        let mut at = 0usize;
        while !*stop.borrow() {
            let key = format!("w/{n:06}");
            let endpoint = &endpoints[at % endpoints.len()];
            let written = tokio::time::timeout(
                Duration::from_secs(5),
                kv(endpoint).await.put(put(&key, "v")),
            )
            .await;
            if matches!(written, Ok(Ok(_))) {
                acked.lock().unwrap().insert(key);
                n += 1;
            } else {
                // This member may be gone or leaderless for a moment: try the next.
                at += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    })
}

/// Goal: a cluster grows and shrinks at runtime without losing a write: a new member is added
/// as a learner, joins with `--initial-cluster-state existing`, catches up through a snapshot
/// (the log it needs was compacted), refuses what etcd's learners refuse, is promoted, and then
/// the leader itself is removed; the removed member exits and refuses to start again. Writes
/// go on throughout, and every acknowledged one is on every remaining member.
/// Method: 3 processes with `--snapshot-count=100`, 300 writes before the add while a follower
/// is down (it then catches up through a snapshot file, which lists the three members only:
/// the learner must get a newer one), a writer task during every change; membership checked
/// through MemberList on several members.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_join_get_promoted_and_leave_while_serving() {
    let mut cluster = Cluster::start(3, &["--snapshot-count=100"]);
    for member in &cluster.members {
        wait_ready(&member.endpoint()).await;
    }
    let leader = leader_index(&cluster).await;
    let lagging = (leader + 1) % 3;
    cluster.members[lagging].kill();
    let first = cluster.members[leader].endpoint();
    for i in 0..300 {
        put_retrying(&first, &format!("before/{i:04}"), "v").await;
    }
    cluster.members[lagging].start();
    cluster.members[lagging]
        .wait_for_log("restored the store from a snapshot")
        .await;

    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let old_endpoints: Vec<String> = cluster.members.iter().map(|m| m.endpoint()).collect();
    let writer = spawn_writer(old_endpoints.clone(), acked.clone(), stop);

    // Add a learner, then start it: it joins the running cluster.
    let new = cluster.joining_member("m3", &["--snapshot-count=100"]);
    let added = cluster_client(&first)
        .await
        .member_add(add(&cluster.members[new].peer_url(), true))
        .await
        .unwrap_or_else(|e| panic!("MemberAdd: {e}\n{}", cluster.logs()))
        .into_inner();
    let new_member = added.member.expect("the added member");
    assert!(new_member.is_learner);
    assert_eq!(new_member.peer_ur_ls, vec![cluster.members[new].peer_url()]);
    assert!(
        new_member.name.is_empty(),
        "not started yet: {new_member:?}"
    );
    assert_eq!(added.members.len(), 4);
    let new_id = new_member.id;
    cluster.members[new].start();
    let new_endpoint = cluster.members[new].endpoint();

    // It catches up: every key written before the add is there, read locally.
    eventually("the learner catches up", || async {
        let keys = local_keys(&new_endpoint, "before/").await?;
        if keys.len() == 300 {
            Ok(())
        } else {
            Err(format!("{} of 300 keys", keys.len()))
        }
    })
    .await;
    // The learner caught up through a snapshot, and was never sent one that does not list it
    // (as the file written for the lagging follower before the add does not).
    cluster.members[new]
        .wait_for_log("restored the store from a snapshot")
        .await;
    let learner_log = cluster.members[new].log();
    assert!(
        !learner_log.contains("ignoring a snapshot"),
        "{learner_log}"
    );
    // A learner serves serializable reads only, as etcd's.
    let refused = kv(&new_endpoint).await.range(get("before/0000")).await;
    let status = refused.expect_err("a linearizable read on a learner");
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(
        status.message(),
        "etcdserver: rpc not supported for learner"
    );
    let refused = kv(&new_endpoint).await.put(put("x", "y")).await;
    assert_eq!(
        refused.expect_err("a write on a learner").message(),
        "etcdserver: rpc not supported for learner"
    );
    // Nor a transaction, even one that only reads, and serializably.
    let read = pb::TxnRequest {
        success: vec![pb::RequestOp {
            request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest {
                serializable: true,
                ..get("before/0000")
            })),
        }],
        ..Default::default()
    };
    let refused = kv(&new_endpoint).await.txn(read).await;
    assert_eq!(
        refused.expect_err("a transaction on a learner").message(),
        "etcdserver: rpc not supported for learner"
    );

    // Promote it once it is in sync; it then serves everything.
    eventually("promote the learner", || async {
        cluster_client(&first)
            .await
            .member_promote(pb::MemberPromoteRequest { id: new_id })
            .await
    })
    .await;
    wait_ready(&new_endpoint).await;
    let listed = eventually("the new member is listed with its name", || async {
        let members = cluster_client(&new_endpoint)
            .await
            .member_list(pb::MemberListRequest::default())
            .await
            .map_err(|e| e.to_string())?
            .into_inner()
            .members;
        match members.iter().find(|m| m.id == new_id) {
            Some(m) if m.name == "m3" && !m.client_ur_ls.is_empty() => Ok(members),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(listed.len(), 4);
    assert!(listed.iter().all(|m| !m.is_learner), "{listed:?}");

    // Remove the leader itself, asking another member.
    let leader = leader_index(&cluster).await;
    let other = (0..cluster.members.len())
        .find(|i| *i != leader)
        .expect("another member");
    let leader_id = eventually("the leader's id", || async {
        let status = common::maintenance(&cluster.members[leader].endpoint())
            .await
            .status(pb::StatusRequest {})
            .await?;
        Ok::<u64, tonic::Status>(status.into_inner().header.unwrap_or_default().member_id)
    })
    .await;
    let removed = cluster_client(&cluster.members[other].endpoint())
        .await
        .member_remove(pb::MemberRemoveRequest { id: leader_id })
        .await
        .unwrap_or_else(|e| panic!("MemberRemove: {e}\n{}", cluster.logs()))
        .into_inner();
    assert_eq!(removed.members.len(), 3);
    assert!(removed.members.iter().all(|m| m.id != leader_id));
    let exited = cluster.members[leader].wait_exit();
    assert_eq!(
        exited,
        Some(true),
        "the removed member stops, cleanly\n{}",
        cluster.logs()
    );
    let log = cluster.members[leader].log();
    assert!(!log.contains("panicked"), "{log}");

    // The others elect a leader and keep serving; the writer reaches them.
    for member in cluster.members.iter().filter(|m| m.is_running()) {
        wait_ready(&member.endpoint()).await;
    }
    let before = acked.lock().unwrap().len();
    eventually("writes go on after the removal", || async {
        let now = acked.lock().unwrap().len();
        if now > before + 20 {
            Ok(())
        } else {
            Err(format!("{now} acknowledged writes"))
        }
    })
    .await;
    stop_tx.send(true).expect("stop the writer");
    tokio::time::timeout(GUARD, writer)
        .await
        .expect("the writer stops")
        .expect("the writer does not panic");

    // Every acknowledged write is on every remaining member.
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 20, "{} writes acknowledged", acked.len());
    for member in cluster.members.iter().filter(|m| m.is_running()) {
        let endpoint = member.endpoint();
        put_retrying(&endpoint, "barrier", &member.name).await;
        eventually("every acknowledged write is here", || async {
            let keys = local_keys(&endpoint, "w/").await?;
            let missing: Vec<&String> = acked.difference(&keys).take(5).collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!("{} on {endpoint} misses {missing:?}", member.name))
            }
        })
        .await;
    }
    let members = cluster_client(&new_endpoint)
        .await
        .member_list(pb::MemberListRequest::default())
        .await
        .expect("MemberList")
        .into_inner()
        .members;
    assert_eq!(members.len(), 3, "{members:?}");

    // The removed member refuses to start again.
    cluster.members[leader].start();
    assert_eq!(cluster.members[leader].wait_exit(), Some(false));
    let log = cluster.members[leader].log();
    assert!(
        log.contains("permanently removed"),
        "the removed member says why it stops:\n{log}"
    );
}

/// Checks that `result` is etcd's refusal with `code` and `message`.
fn expect_refused<T: std::fmt::Debug>(
    result: Result<tonic::Response<T>, tonic::Status>,
    code: Code,
    message: &str,
) {
    let status = result.expect_err(message);
    assert_eq!((status.code(), status.message()), (code, message));
}

/// Goal: bad Cluster requests get etcd's codes and messages and change nothing; MemberUpdate
/// changes a member's peer URLs in every member's list. Method: one bad request per etcd
/// refusal against a 3-member cluster, then the member list compared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_refusals_match_etcd() {
    let cluster = Cluster::start(3, &[]);
    for member in &cluster.members {
        wait_ready(&member.endpoint()).await;
    }
    let endpoint = cluster.members[1].endpoint();
    let mut client = cluster_client(&endpoint).await;
    let before = client
        .member_list(pb::MemberListRequest::default())
        .await
        .expect("MemberList")
        .into_inner()
        .members;
    assert_eq!(before.len(), 3);
    let voter = before[0].clone();

    expect_refused(
        client.member_add(add(&voter.peer_ur_ls[0], false)).await,
        Code::FailedPrecondition,
        "etcdserver: Peer URLs already exists",
    );
    expect_refused(
        client.member_add(add("not a url", false)).await,
        Code::InvalidArgument,
        "etcdserver: given member URLs are invalid",
    );
    expect_refused(
        client
            .member_remove(pb::MemberRemoveRequest { id: 42 })
            .await,
        Code::NotFound,
        "etcdserver: member not found",
    );
    expect_refused(
        client
            .member_promote(pb::MemberPromoteRequest { id: voter.id })
            .await,
        Code::FailedPrecondition,
        "etcdserver: can only promote a learner member",
    );

    // A learner that never starts cannot be promoted, and a second learner is one too many.
    let learner = client
        .member_add(add("http://127.0.0.1:1", true))
        .await
        .expect("MemberAdd of a learner")
        .into_inner()
        .member
        .expect("the learner");
    expect_refused(
        client.member_add(add("http://127.0.0.1:2", true)).await,
        Code::FailedPrecondition,
        "etcdserver: too many learner members in cluster",
    );
    expect_refused(
        client
            .member_promote(pb::MemberPromoteRequest { id: learner.id })
            .await,
        Code::FailedPrecondition,
        "etcdserver: can only promote a learner member which is in sync with leader",
    );
    client
        .member_remove(pb::MemberRemoveRequest { id: learner.id })
        .await
        .expect("MemberRemove of the learner");

    // MemberUpdate of a follower's peer URLs, asked of the leader: the members that can still
    // reach each other see the change (the follower itself is cut off until it is undone,
    // as it would be in etcd until restarted on its new URL); then the old URLs come back.
    let leader = leader_index(&cluster).await;
    let mut client = cluster_client(&cluster.members[leader].endpoint()).await;
    let listed = |endpoint: String, id: u64, urls: Vec<String>| async move {
        eventually("the update is applied", || async {
            let members = cluster_client(&endpoint)
                .await
                .member_list(pb::MemberListRequest::default())
                .await
                .map_err(|e| e.to_string())?
                .into_inner()
                .members;
            match members.iter().find(|m| m.id == id) {
                Some(m) if m.peer_ur_ls == urls && members.len() == 3 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await
    };
    let target = (0..3).find(|i| *i != leader).expect("a follower");
    let target_url = cluster.members[target].peer_url();
    let target = before
        .iter()
        .find(|m| m.peer_ur_ls == [target_url.clone()])
        .expect("the follower is listed")
        .clone();
    let moved = vec!["http://127.0.0.1:3".to_string()];
    client
        .member_update(pb::MemberUpdateRequest {
            id: target.id,
            peer_ur_ls: moved.clone(),
        })
        .await
        .expect("MemberUpdate");
    for member in cluster
        .members
        .iter()
        .filter(|m| m.peer_url() != target_url)
    {
        listed(member.endpoint(), target.id, moved.clone()).await;
    }
    client
        .member_update(pb::MemberUpdateRequest {
            id: target.id,
            peer_ur_ls: target.peer_ur_ls.clone(),
        })
        .await
        .expect("MemberUpdate back");
    for member in &cluster.members {
        listed(member.endpoint(), target.id, target.peer_ur_ls.clone()).await;
    }
    // The cluster still serves writes through every member.
    for member in &cluster.members {
        put_retrying(&member.endpoint(), "after", &member.name).await;
    }
    let after = client
        .member_list(pb::MemberListRequest::default())
        .await
        .expect("MemberList")
        .into_inner()
        .members;
    let ids = |members: &[pb::Member]| members.iter().map(|m| m.id).collect::<BTreeSet<_>>();
    assert_eq!(ids(&after), ids(&before));
}
