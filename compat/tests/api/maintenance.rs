//! Maintenance: Status, HashKV, alarms, Defragment, Snapshot and MoveLeader.

use chorus_compat::{Cluster, Flavor};
use etcd_client::AlarmOptions;

use super::{rev, single};

#[tokio::test]
async fn status_reports_version_leader_and_revision() {
    // Goal: Status answers what `etcdctl endpoint status` shows.
    // Method: write, then check the version string, leader, db size and revision.
    let cluster = single().await;
    let mut c = cluster.client().await;
    let put = c.put("s", "v", None).await.expect("put");
    let status = c.status().await.expect("status");
    assert!(
        status.version().starts_with("3."),
        "version {}",
        status.version()
    );
    let header = status.header().expect("header");
    assert_eq!(
        status.leader(),
        header.member_id(),
        "a single member leads itself"
    );
    assert!(status.db_size() > 0);
    assert!(status.raft_index() > 0);
    assert!(status.raft_term() > 0);
    assert_eq!(header.revision(), rev(put.header()));
}

#[tokio::test]
async fn status_in_a_three_member_cluster_agrees_on_the_leader() {
    // Goal: every member of a 3-member cluster names the same leader and knows its own id.
    // Method: ask each member's Status and compare with MemberList.
    let cluster = Cluster::start(Flavor::from_env(), 3, &[]).await;
    let mut leaders = Vec::new();
    for endpoint in cluster.endpoints() {
        let mut c = chorus_compat::connect(&[endpoint]).await;
        let status = c.status().await.expect("status");
        leaders.push(status.leader());
    }
    assert!(
        leaders.iter().all(|l| *l == leaders[0] && *l != 0),
        "{leaders:?}"
    );
    let mut c = cluster.client().await;
    let members = c.member_list().await.expect("member list");
    assert!(members.members().iter().any(|m| m.id() == leaders[0]));
}

#[tokio::test]
async fn hash_kv_alarms_defragment_and_snapshot() {
    // Goal: HashKV is stable for the same data, the alarm list is empty, Defragment succeeds and
    // Snapshot streams a non-empty database.
    // Method: write, hash twice at the same revision, list alarms, defragment, read a snapshot.
    let cluster = single().await;
    let mut c = cluster.client().await;
    let r = rev(c.put("h", "v", None).await.expect("put").header());
    let first = c.hash_kv(r).await.expect("hash_kv");
    c.put("h2", "v", None).await.expect("put");
    let again = c.hash_kv(r).await.expect("hash_kv");
    assert_eq!(
        first.hash(),
        again.hash(),
        "the hash at one revision does not change"
    );
    assert_ne!(first.hash(), 0);
    let alarms = c
        .alarm(
            etcd_client::AlarmAction::Get,
            etcd_client::AlarmType::None,
            Some(AlarmOptions::new()),
        )
        .await
        .expect("alarm list");
    assert!(alarms.alarms().is_empty());
    c.defragment().await.expect("defragment");
    let mut stream = c.snapshot().await.expect("snapshot");
    let mut bytes = 0usize;
    while let Some(part) = stream.message().await.expect("snapshot part") {
        bytes += part.blob().len();
    }
    assert!(bytes > 0, "the snapshot has data");
}

#[tokio::test]
async fn move_leader_hands_leadership_over() {
    // Goal: MoveLeader moves leadership to the named member; a non-leader refuses.
    // Method: 3 members; find the leader, move it to another member, check Status.
    let cluster = Cluster::start(Flavor::from_env(), 3, &[]).await;
    let mut c = cluster.client().await;
    let leader = c.status().await.expect("status").leader();
    let target = c
        .member_list()
        .await
        .expect("member list")
        .members()
        .iter()
        .map(|m| m.id())
        .find(|id| *id != leader)
        .expect("another member");
    let leader_endpoint = cluster.leader_endpoint(leader).await;
    let mut lc = chorus_compat::connect(&[leader_endpoint]).await;
    lc.move_leader(target).await.expect("move leader");
    let now = lc.status().await.expect("status").leader();
    assert_eq!(now, target);
}
