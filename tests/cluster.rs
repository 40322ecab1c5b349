//! Clusters of real `chorus serve` processes on loopback: replication, linearizable reads from
//! every member, kill -9 of the leader, and a restarted member catching up.

mod common;

use std::collections::BTreeMap;

use chorus_proto::etcdserverpb as pb;
use common::{
    Cluster, eventually, get, kv, leader_index, maintenance, prefix_end, put, put_retrying,
    range_retrying, wait_ready,
};

async fn read_all(endpoint: &str, prefix: &str, serializable: bool) -> BTreeMap<String, String> {
    let mut request = get(prefix);
    request.range_end = prefix_end(prefix).into();
    request.serializable = serializable;
    let response = range_retrying(endpoint, request).await;
    response
        .kvs
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(&kv.key).into_owned(),
                String::from_utf8_lossy(&kv.value).into_owned(),
            )
        })
        .collect()
}

/// Goal: a write through any member is visible to a linearizable read from every member at
/// once (no stale reads right after the acknowledgement), also when many reads arrive together
/// and share one read index. Method: three members; for each round, write through member i
/// (followers forward to the leader), then read the key back linearizably from all three,
/// without any pause in between; then 64 clients at once, each writing its own key through one
/// member and reading it back through another, round after round. Then `Cluster.MemberList`
/// must describe the three members.
#[tokio::test(flavor = "multi_thread")]
async fn writes_through_any_member_read_back_from_every_member() {
    let cluster = Cluster::start(3, &[]);
    for member in &cluster.members {
        wait_ready(&member.endpoint()).await;
    }
    write_then_read_everywhere(&cluster, 0..30).await;
    let clients: Vec<_> = (0..64usize)
        .map(|client| {
            let writer = cluster.members[client % 3].endpoint();
            let reader = cluster.members[(client + 1) % 3].endpoint();
            tokio::spawn(async move {
                let key = format!("many/{client:02}");
                for round in 0..10 {
                    let value = format!("v{round}");
                    put_retrying(&writer, &key, &value).await;
                    let got = range_retrying(&reader, get(&key)).await;
                    assert_eq!(
                        got.kvs.first().map(|kv| kv.value.as_ref()),
                        Some(value.as_bytes()),
                        "client {client} round {round}: {reader} does not see the write made \
                         through {writer}"
                    );
                }
            })
        })
        .collect();
    for client in clients {
        client.await.unwrap();
    }
    let leaders: Vec<u64> = {
        let mut leaders = Vec::new();
        for member in &cluster.members {
            let mut client = maintenance(&member.endpoint()).await;
            leaders.push(
                client
                    .status(pb::StatusRequest {})
                    .await
                    .unwrap()
                    .into_inner()
                    .leader,
            );
        }
        leaders
    };
    assert!(
        leaders.iter().all(|l| *l == leaders[0] && *l != 0),
        "{leaders:?}"
    );

    // Cluster.MemberList from any member names every member with its peer and client URLs.
    let channel = tonic::transport::Channel::from_shared(cluster.members[1].endpoint())
        .unwrap()
        .connect_lazy();
    let mut client = pb::cluster_client::ClusterClient::new(channel);
    let list = client
        .member_list(pb::MemberListRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut listed: Vec<(String, Vec<String>, Vec<String>)> = list
        .members
        .iter()
        .map(|m| (m.name.clone(), m.peer_ur_ls.clone(), m.client_ur_ls.clone()))
        .collect();
    listed.sort();
    let expected: Vec<(String, Vec<String>, Vec<String>)> = cluster
        .members
        .iter()
        .map(|m| {
            (
                m.name.clone(),
                vec![format!("http://127.0.0.1:{}", m.peer_port)],
                vec![m.endpoint()],
            )
        })
        .collect();
    assert_eq!(listed, expected);
}

/// For each round: write through one running member after another, then read the key back
/// linearizably from every running member at once; each must see the write.
async fn write_then_read_everywhere(cluster: &Cluster, rounds: std::ops::Range<usize>) {
    let running: Vec<&common::Member> = cluster.members.iter().filter(|m| m.is_running()).collect();
    for round in rounds {
        let writer = running[round % running.len()];
        let key = format!("lin/{round:03}");
        let value = format!("v{round}");
        put_retrying(&writer.endpoint(), &key, &value).await;
        for reader in &running {
            let got = range_retrying(&reader.endpoint(), get(&key)).await;
            assert_eq!(
                got.kvs.first().map(|kv| kv.value.as_ref()),
                Some(value.as_bytes()),
                "round {round}: {} does not see the write made through {}\n{}",
                reader.name,
                writer.name,
                cluster.logs()
            );
            // A transaction that only reads is served as a read, linearizable all the same.
            let got = read_txn_retrying(&reader.endpoint(), &key, &value).await;
            assert!(
                got.succeeded,
                "round {round}: {}'s transaction does not see the write made through {}\n{}",
                reader.name,
                writer.name,
                cluster.logs()
            );
        }
    }
}

/// A transaction through `endpoint` that compares `key`'s value with `value` and reads `key`
/// on either branch.
async fn read_txn_retrying(endpoint: &str, key: &str, value: &str) -> pb::TxnResponse {
    use pb::compare::{CompareResult, CompareTarget, TargetUnion};
    let read = pb::RequestOp {
        request: Some(pb::request_op::Request::RequestRange(get(key))),
    };
    let request = pb::TxnRequest {
        compare: vec![pb::Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Value as i32,
            key: key.to_owned().into(),
            target_union: Some(TargetUnion::Value(value.to_owned().into())),
            ..Default::default()
        }],
        success: vec![read.clone()],
        failure: vec![read],
    };
    let client = kv(endpoint).await;
    eventually(&format!("txn through {endpoint}"), || {
        let mut client = client.clone();
        let request = request.clone();
        async move { client.txn(request).await.map(tonic::Response::into_inner) }
    })
    .await
}

/// Goal: static bootstrap of 5 and 7 members, and such a cluster keeps serving with as many
/// members down as its quorum allows. Method: for each size, start every member with the same
/// `--initial-cluster`; rounds of write-through-each-member, read-from-every-member; kill -9
/// the leader and then more members until only a quorum runs; more rounds on the survivors,
/// which must also still hold every earlier write.
#[tokio::test(flavor = "multi_thread")]
async fn five_and_seven_member_clusters_bootstrap_and_survive_a_minority_down() {
    for size in [5, 7] {
        let mut cluster = Cluster::start(size, &[]);
        for member in &cluster.members {
            wait_ready(&member.endpoint()).await;
        }
        write_then_read_everywhere(&cluster, 0..size).await;
        let leader = leader_index(&cluster).await;
        cluster.members[leader].kill();
        let mut down = 1;
        for member in cluster.members.iter_mut() {
            if down == (size - 1) / 2 {
                break;
            }
            if member.is_running() {
                member.kill();
                down += 1;
            }
        }
        write_then_read_everywhere(&cluster, size..3 * size).await;
        let survivor = cluster.members.iter().find(|m| m.is_running()).unwrap();
        let all = read_all(&survivor.endpoint(), "lin/", false).await;
        assert_eq!(all.len(), 3 * size, "size {size}: {all:?}");
    }
}

/// Goal: with `--read-mode=lease` linearizable reads still see every acknowledged write, from
/// every member, before and after the leader is killed. Method: three members in lease mode;
/// rounds of write-then-read-everywhere; kill -9 of the leader; more rounds on the survivors.
#[tokio::test(flavor = "multi_thread")]
async fn lease_reads_see_every_acknowledged_write() {
    let mut cluster = Cluster::start(3, &["--read-mode=lease"]);
    for member in &cluster.members {
        wait_ready(&member.endpoint()).await;
    }
    write_then_read_everywhere(&cluster, 0..20).await;
    let leader = leader_index(&cluster).await;
    cluster.members[leader].kill();
    write_then_read_everywhere(&cluster, 20..40).await;
}

/// Goal: killing the leader with kill -9 in the middle of writes loses no acknowledged write; a
/// new leader is elected; the killed member, restarted from its data directory, catches up.
/// Method: one writer goes round the members and records every acknowledged put; the leader is
/// killed after a third of the writes; writes continue through the survivors, each retried
/// until acknowledged; then every acknowledged key is read
/// linearizably from the survivors, the member is restarted, and its own serializable reads
/// must eventually return every acknowledged key, as must a linearizable read through it.
#[tokio::test(flavor = "multi_thread")]
async fn leader_kill_loses_no_acknowledged_write_and_restart_catches_up() {
    let mut cluster = Cluster::start(3, &[]);
    for member in &cluster.members {
        wait_ready(&member.endpoint()).await;
    }
    let mut acknowledged = BTreeMap::new();
    let mut killed = None;
    let total = 90;
    for i in 0..total {
        if i == total / 3 {
            let leader = leader_index(&cluster).await;
            cluster.members[leader].kill();
            killed = Some(leader);
        }
        let running: Vec<usize> = (0..3)
            .filter(|m| cluster.members[*m].is_running())
            .collect();
        let key = format!("ack/{i:03}");
        let value = format!("value-{i}");
        // Until a new leader is elected, writes fail; the client retries the same put (the
        // same key and value, so a put that was applied although its answer was lost changes
        // nothing the check looks at), going round the survivors.
        let mut attempt = 0;
        eventually(&format!("put {key}"), || {
            attempt += 1;
            let endpoint = cluster.members[running[(i + attempt) % running.len()]].endpoint();
            let request = put(&key, &value);
            async move {
                let mut client = kv(&endpoint).await;
                client.put(request).await
            }
        })
        .await;
        acknowledged.insert(key, value);
    }
    let killed = killed.expect("the leader was killed");
    let new_leader = leader_index(&cluster).await;
    assert_ne!(new_leader, killed);
    assert_eq!(acknowledged.len(), total);

    for member in cluster.members.iter().filter(|m| m.is_running()) {
        let got = read_all(&member.endpoint(), "ack/", false).await;
        for (key, value) in &acknowledged {
            assert_eq!(
                got.get(key),
                Some(value),
                "{} lost acknowledged {key}\n{}",
                member.name,
                cluster.logs()
            );
        }
    }

    cluster.members[killed].start();
    let endpoint = cluster.members[killed].endpoint();
    let expected = acknowledged.clone();
    eventually("the restarted member catches up", || {
        let endpoint = endpoint.clone();
        let expected = expected.clone();
        async move {
            let mut client = kv(&endpoint).await;
            let mut request = get("ack/");
            request.range_end = prefix_end("ack/").into();
            request.serializable = true;
            let got = client.range(request).await.map_err(|e| e.to_string())?;
            let got: BTreeMap<String, String> = got
                .into_inner()
                .kvs
                .iter()
                .map(|kv| {
                    (
                        String::from_utf8_lossy(&kv.key).into_owned(),
                        String::from_utf8_lossy(&kv.value).into_owned(),
                    )
                })
                .collect();
            let missing = expected.keys().filter(|k| !got.contains_key(*k)).count();
            if missing == 0 {
                Ok(())
            } else {
                Err(format!("{missing} keys missing"))
            }
        }
    })
    .await;
    let got = read_all(&endpoint, "ack/", false).await;
    for (key, value) in &acknowledged {
        assert_eq!(got.get(key), Some(value), "restarted member: {key}");
    }
    // And the restarted member takes writes again.
    put_retrying(&endpoint, "after/restart", "yes").await;
}

/// Goal: with a small --snapshot-count the leader snapshots and compacts its log, a follower
/// that missed the compacted entries catches up through InstallSnapshot (restoring its store
/// from the snapshot), and every member, restarted from its data directory with snapshots in
/// it, still holds every write. Method: three members with --snapshot-count=20; a follower is
/// killed, 100 keys are written, the follower is restarted and must catch up and say in its log
/// that it restored a snapshot; 50 more keys are written and the whole cluster is killed at once
/// (snapshot marks were just taken, while the store's last applies may not have reached the
/// disk yet), restarted and read back.
#[tokio::test(flavor = "multi_thread")]
async fn lagging_follower_catches_up_by_snapshot_and_restarts_keep_data() {
    let mut cluster = Cluster::start(3, &["--snapshot-count=20"]);
    for member in &cluster.members {
        wait_ready(&member.endpoint()).await;
    }
    let leader = leader_index(&cluster).await;
    let follower = (leader + 1) % 3;
    cluster.members[follower].kill();
    for i in 0..100 {
        let endpoint = cluster.members[leader].endpoint();
        put_retrying(&endpoint, &format!("snap/{i:03}"), &format!("v{i}")).await;
    }
    cluster.members[follower].start();
    let endpoint = cluster.members[follower].endpoint();
    eventually("the lagging follower catches up", || {
        let endpoint = endpoint.clone();
        async move {
            let got = read_all_checked(&endpoint, "snap/", true).await?;
            if got.len() == 100 {
                Ok(())
            } else {
                Err(format!("{} of 100 keys", got.len()))
            }
        }
    })
    .await;
    // It caught up through a snapshot.
    cluster.members[follower]
        .wait_for_log("restored the store from a snapshot")
        .await;
    for i in 100..150 {
        let endpoint = cluster.members[leader].endpoint();
        put_retrying(&endpoint, &format!("snap/{i:03}"), &format!("v{i}")).await;
    }

    for member in &mut cluster.members {
        member.kill();
    }
    for member in &mut cluster.members {
        member.start();
    }
    for member in &cluster.members {
        wait_ready(&member.endpoint()).await;
        let got = read_all(&member.endpoint(), "snap/", false).await;
        assert_eq!(
            got.len(),
            150,
            "{} after restart\n{}",
            member.name,
            cluster.logs()
        );
        assert_eq!(got.get("snap/149").map(String::as_str), Some("v149"));
    }
}

async fn read_all_checked(
    endpoint: &str,
    prefix: &str,
    serializable: bool,
) -> Result<BTreeMap<String, String>, String> {
    let mut client = kv(endpoint).await;
    let mut request = get(prefix);
    request.range_end = prefix_end(prefix).into();
    request.serializable = serializable;
    let response = client.range(request).await.map_err(|e| e.to_string())?;
    Ok(response
        .into_inner()
        .kvs
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(&kv.key).into_owned(),
                String::from_utf8_lossy(&kv.value).into_owned(),
            )
        })
        .collect())
}

/// Goal: HashKV lets an operator check that members hold the same data, and MoveLeader hands
/// leadership to the chosen voter with etcd's errors for the wrong member or target. Method:
/// writes and a compaction on 3 members; HashKV at one revision on each member must agree;
/// MoveLeader sent to a follower, with an unknown target, then to the leader for a follower.
#[tokio::test(flavor = "multi_thread")]
async fn hash_kv_agrees_across_members_and_move_leader_moves_it() {
    let cluster = Cluster::start(3, &[]);
    let endpoints: Vec<String> = cluster.members.iter().map(|m| m.endpoint()).collect();
    for endpoint in &endpoints {
        wait_ready(endpoint).await;
    }
    let mut revision = 0;
    for i in 0..30 {
        let response = put_retrying(&endpoints[i % 3], &format!("h{i}"), &format!("{i}")).await;
        revision = response.header.unwrap().revision;
    }
    let client = kv(&endpoints[0]).await;
    eventually("compact", || {
        let mut client = client.clone();
        async move {
            client
                .compact(pb::CompactionRequest {
                    revision: revision - 10,
                    physical: false,
                })
                .await
        }
    })
    .await;
    put_retrying(&endpoints[1], "after", "x").await;
    let mut hashes = Vec::new();
    for endpoint in &endpoints {
        // A linearizable read first: the member has applied everything acknowledged.
        range_retrying(endpoint, get("after")).await;
        let mut maintenance = maintenance(endpoint).await;
        let hash = maintenance
            .hash_kv(pb::HashKvRequest { revision })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(hash.hash_revision, revision);
        assert_eq!(hash.compact_revision, revision - 10);
        hashes.push(hash.hash);
    }
    assert!(
        hashes.iter().all(|h| *h == hashes[0]),
        "members disagree: {hashes:?}"
    );
    // A revision above the current one is etcd's future-revision error.
    let future = maintenance(&endpoints[0])
        .await
        .hash_kv(pb::HashKvRequest {
            revision: revision + 1000,
        })
        .await
        .unwrap_err();
    assert_eq!(future.code(), tonic::Code::OutOfRange);

    let leader = leader_index(&cluster).await;
    let follower = (leader + 1) % 3;
    let member_id = |i: usize| {
        let endpoint = endpoints[i].clone();
        async move {
            maintenance(&endpoint)
                .await
                .status(pb::StatusRequest {})
                .await
                .unwrap()
                .into_inner()
                .header
                .unwrap()
                .member_id
        }
    };
    let target = member_id(follower).await;
    let refused = maintenance(&endpoints[follower])
        .await
        .move_leader(pb::MoveLeaderRequest {
            target_id: member_id(leader).await,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.message(), "etcdserver: not leader");
    let bad = maintenance(&endpoints[leader])
        .await
        .move_leader(pb::MoveLeaderRequest { target_id: 12345 })
        .await
        .unwrap_err();
    assert_eq!(bad.message(), "etcdserver: bad leader transferee");
    maintenance(&endpoints[leader])
        .await
        .move_leader(pb::MoveLeaderRequest { target_id: target })
        .await
        .unwrap_or_else(|e| panic!("move leader: {e}\n{}", cluster.logs()));
    assert_eq!(leader_index(&cluster).await, follower);
    // The cluster serves writes under its new leader.
    put_retrying(&endpoints[leader], "moved", "yes").await;
}
