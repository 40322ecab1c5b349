//! etcd's Lock and Election services on real `chorus serve` processes: mutual exclusion checked
//! with fencing tokens, a holder or waiter whose lease ends, an election that survives the
//! death of the leader's client and of a Chorus member.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chorus_proto::etcdserverpb as pb;
use chorus_proto::v3electionpb as epb;
use chorus_proto::v3lockpb as lpb;
use common::{Cluster, eventually, kv, wait_ready};
use pb::compare::{CompareResult, CompareTarget, TargetUnion};
use pb::lease_client::LeaseClient;
use pb::request_op::Request as Op;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

fn channel(endpoint: &str) -> Channel {
    Channel::from_shared(endpoint.to_string())
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy()
}

/// Grants a lease; with `keep_alive` a task renews it until the returned sender is dropped.
async fn lease(endpoint: &str, ttl: i64, keep_alive: bool) -> (i64, Option<mpsc::Sender<()>>) {
    let mut client = LeaseClient::new(channel(endpoint));
    let id = eventually("grant a lease", || {
        let mut client = client.clone();
        async move {
            client
                .lease_grant(pb::LeaseGrantRequest { ttl, id: 0 })
                .await
                .map(|r| r.into_inner().id)
        }
    })
    .await;
    if !keep_alive {
        return (id, None);
    }
    let (stop_tx, mut stop_rx) = mpsc::channel::<()>(1);
    let (tx, rx) = mpsc::channel(4);
    let mut responses = client
        .lease_keep_alive(ReceiverStream::new(rx))
        .await
        .expect("keep-alive stream")
        .into_inner();
    tokio::spawn(async move {
        loop {
            if tx.send(pb::LeaseKeepAliveRequest { id }).await.is_err() {
                return;
            }
            let _ = responses.message().await;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(ttl as u64 * 1000 / 3)) => {}
                _ = stop_rx.recv() => return,
            }
        }
    });
    (id, Some(stop_tx))
}

/// The create revision of `key`: the fencing token of the lock it stands for.
async fn token(endpoint: &str, key: &[u8]) -> i64 {
    let mut client = kv(endpoint).await;
    let response = client
        .range(pb::RangeRequest {
            key: key.to_vec().into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    response.kvs[0].create_revision
}

/// Writes `resource` only if the token is above the one stored with it (the guarded resource's
/// side of fencing); answers whether the write was accepted.
async fn fenced_write(endpoint: &str, token: i64, value: &str) -> bool {
    let mut client = kv(endpoint).await;
    let padded = format!("{token:020}");
    let response = client
        .txn(pb::TxnRequest {
            compare: vec![pb::Compare {
                result: CompareResult::Less as i32,
                target: CompareTarget::Value as i32,
                key: "fence".into(),
                target_union: Some(TargetUnion::Value(padded.clone().into())),
                ..Default::default()
            }],
            success: vec![
                pb::RequestOp {
                    request: Some(Op::RequestPut(pb::PutRequest {
                        key: "fence".into(),
                        value: padded.into(),
                        ..Default::default()
                    })),
                },
                pb::RequestOp {
                    request: Some(Op::RequestPut(pb::PutRequest {
                        key: "resource".into(),
                        value: value.to_string().into(),
                        ..Default::default()
                    })),
                },
            ],
            failure: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    response.succeeded
}

/// Goal: many contenders for one lock never hold it at once, each grant's fencing token is
/// accepted by the guarded resource (tokens only grow), and waiters are served. Method: 5
/// contenders on 3 members take the lock 4 times each; an in-test counter proves exclusion and
/// every fenced write must succeed.
#[tokio::test(flavor = "multi_thread")]
async fn lock_is_exclusive_and_fencing_tokens_grow() {
    let cluster = Cluster::start(3, &[]);
    let endpoints: Vec<String> = cluster.members.iter().map(|m| m.endpoint()).collect();
    for endpoint in &endpoints {
        wait_ready(endpoint).await;
    }
    common::put_retrying(&endpoints[0], "fence", &format!("{:020}", 0)).await;
    let inside = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for contender in 0..5 {
        let endpoint = endpoints[contender % 3].clone();
        let inside = inside.clone();
        tasks.spawn(async move {
            let (lease, _keep) = lease(&endpoint, 10, true).await;
            let mut locks = lpb::lock_client::LockClient::new(channel(&endpoint));
            for round in 0..4 {
                let held = locks
                    .lock(lpb::LockRequest {
                        name: "shared".into(),
                        lease,
                    })
                    .await
                    .expect("lock")
                    .into_inner();
                assert_eq!(
                    inside.fetch_add(1, Ordering::SeqCst),
                    0,
                    "two holders at once"
                );
                let token = token(&endpoint, &held.key).await;
                assert!(
                    fenced_write(&endpoint, token, &format!("{contender}/{round}")).await,
                    "the holder's token {token} was refused"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                locks
                    .unlock(lpb::UnlockRequest { key: held.key })
                    .await
                    .expect("unlock");
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    }
}

/// Goal: a holder whose lease expires loses the lock to the next waiter, and its stale token is
/// refused by the guarded resource; a waiter whose lease expires gets etcd's "session is
/// expired" and never the lock. Method: A holds with a 2 s lease it does not renew; B waits
/// with a renewed lease; C waits behind B with a lease it does not renew.
#[tokio::test(flavor = "multi_thread")]
async fn an_expired_lease_loses_the_lock() {
    let cluster = Cluster::start(1, &[]);
    let endpoint = cluster.members[0].endpoint();
    wait_ready(&endpoint).await;
    common::put_retrying(&endpoint, "fence", &format!("{:020}", 0)).await;
    let mut locks = lpb::lock_client::LockClient::new(channel(&endpoint));
    let (a, _) = lease(&endpoint, 2, false).await;
    let held = locks
        .lock(lpb::LockRequest {
            name: "l".into(),
            lease: a,
        })
        .await
        .unwrap()
        .into_inner();
    let a_token = token(&endpoint, &held.key).await;
    let (b, _keep_b) = lease(&endpoint, 10, true).await;
    let start = Instant::now();
    let mut b_locks = locks.clone();
    let b_wait = tokio::spawn(async move {
        b_locks
            .lock(lpb::LockRequest {
                name: "l".into(),
                lease: b,
            })
            .await
    });
    // C joins after B, with a lease that ends while it waits (B holds for 4 s).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (c, _) = lease(&endpoint, 2, false).await;
    let mut c_locks = locks.clone();
    let c_wait = tokio::spawn(async move {
        c_locks
            .lock(lpb::LockRequest {
                name: "l".into(),
                lease: c,
            })
            .await
    });
    let b_held = b_wait.await.unwrap().expect("B gets the lock").into_inner();
    assert!(
        start.elapsed() >= Duration::from_millis(1500),
        "not before A's lease ended"
    );
    let b_token = token(&endpoint, &b_held.key).await;
    assert!(b_token > a_token);
    assert!(fenced_write(&endpoint, b_token, "B").await);
    assert!(
        !fenced_write(&endpoint, a_token, "A, late").await,
        "A's stale token is refused"
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    locks
        .unlock(lpb::UnlockRequest { key: b_held.key })
        .await
        .unwrap();
    let c_result = c_wait.await.unwrap();
    let error = c_result.expect_err("C's lease ended while it waited");
    assert_eq!(error.message(), "mutex: session is expired");
}

/// Goal: an election has one leader, observers see changes, and leadership passes to the next
/// campaigner within the lease TTL when the leader's client dies, even if the Chorus member
/// that led Raft is killed meanwhile. Method: A campaigns through member 0 and stops renewing;
/// B campaigns through member 1 and is elected; an observer on member 2 sees A then B.
#[tokio::test(flavor = "multi_thread")]
async fn election_survives_the_leader_dying() {
    let mut cluster = Cluster::start(3, &[]);
    let endpoints: Vec<String> = cluster.members.iter().map(|m| m.endpoint()).collect();
    for endpoint in &endpoints {
        wait_ready(endpoint).await;
    }
    let mut elect_a = epb::election_client::ElectionClient::new(channel(&endpoints[0]));
    let (a, keep_a) = lease(&endpoints[0], 3, true).await;
    let leader_a = elect_a
        .campaign(epb::CampaignRequest {
            name: "svc".into(),
            lease: a,
            value: "A".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .leader
        .unwrap();
    let mut observer = epb::election_client::ElectionClient::new(channel(&endpoints[2]));
    let mut observed = observer
        .observe(epb::LeaderRequest { name: "svc".into() })
        .await
        .unwrap()
        .into_inner();
    let first = observed.message().await.unwrap().unwrap();
    assert_eq!(first.kv.unwrap().value.as_ref(), b"A");
    elect_a
        .proclaim(epb::ProclaimRequest {
            leader: Some(leader_a.clone()),
            value: "A2".into(),
        })
        .await
        .unwrap();
    let second = observed.message().await.unwrap().unwrap();
    assert_eq!(second.kv.unwrap().value.as_ref(), b"A2");

    let (b, _keep_b) = lease(&endpoints[1], 10, true).await;
    let mut elect_b = epb::election_client::ElectionClient::new(channel(&endpoints[1]));
    let b_campaign = tokio::spawn(async move {
        elect_b
            .campaign(epb::CampaignRequest {
                name: "svc".into(),
                lease: b,
                value: "B".into(),
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!b_campaign.is_finished(), "B waits while A leads");
    // A's client dies: no more keep-alives. Kill member 0 too (it may lead Raft).
    drop(keep_a);
    cluster.members[0].kill();
    let b_leader = b_campaign.await.unwrap().expect("B elected").into_inner();
    assert!(b_leader.leader.unwrap().rev > leader_a.rev);
    // The observer on member 2 sees B take over (after, perhaps, nothing else).
    let seen = tokio::time::timeout(common::GUARD, async {
        loop {
            let response = observed.message().await.expect("observe").expect("more");
            if response
                .kv
                .as_ref()
                .is_some_and(|kv| kv.value.as_ref() == b"B")
            {
                return response;
            }
        }
    })
    .await
    .expect("the observer sees B");
    assert_eq!(seen.kv.unwrap().value.as_ref(), b"B");
    let mut leader = epb::election_client::ElectionClient::new(channel(&endpoints[2]));
    let now = leader
        .leader(epb::LeaderRequest { name: "svc".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(now.kv.unwrap().value.as_ref(), b"B");
}
