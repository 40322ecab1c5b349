//! The core client against a real server: KV, txn, lease and keep-alive, watch resume and
//! compaction, failover, and the outcome-unknown rule for writes.

mod common;

use std::time::Duration;

use chorus_client::txn::{Cmp, Compare, Op, Txn};
use chorus_client::{
    Client, ClientOptions, DeleteOptions, Error, GetOptions, LeaseState, PutOptions, WatchOptions,
};
use common::{Cluster, eventually, fast_options, free_port, guard};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_and_txn_round_trip() {
    // Goal: get/put/delete with options and the txn builder behave as etcd specifies. Method:
    // one member; write, read by key and prefix, CAS that fails then succeeds, nested txn,
    // delete with prev_kv.
    let cluster = Cluster::start(1).await;
    let client = cluster.client().await;
    let put = client
        .put("app/a", "1", PutOptions::default())
        .await
        .unwrap();
    client
        .put("app/b", "2", PutOptions::default())
        .await
        .unwrap();
    client
        .put("other", "3", PutOptions::default())
        .await
        .unwrap();
    let prev = client
        .put(
            "app/a",
            "10",
            PutOptions {
                prev_kv: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(prev.prev_kv.unwrap().value, "1");
    let all = client.get_prefix("app/").await.unwrap();
    assert_eq!(all.count, 2);
    assert_eq!(all.kvs[0].value, "10");
    let limited = client.get(
        "app/",
        GetOptions {
            prefix: true,
            limit: 1,
            ..Default::default()
        },
    );
    let limited = limited.await.unwrap();
    assert_eq!((limited.kvs.len(), limited.more), (1, true));
    let old = client
        .get(
            "app/a",
            GetOptions {
                revision: put.header.unwrap().revision,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(old.kvs[0].value, "1");

    let cas = |expected: &'static str| {
        Txn::new()
            .when([Compare::value("app/a", Cmp::Equal, expected)])
            .and_then([
                Op::put("app/a", "20", PutOptions::default()),
                Op::txn(Txn::new().and_then([Op::get("app/b", GetOptions::default())])),
            ])
            .or_else([Op::get("app/a", GetOptions::default())])
    };
    let failed = client.txn(cas("1")).await.unwrap();
    assert!(!failed.succeeded);
    let succeeded = client.txn(cas("10")).await.unwrap();
    assert!(succeeded.succeeded);
    assert_eq!(succeeded.responses.len(), 2);
    assert_eq!(client.get_value("app/a").await.unwrap().unwrap(), "20");
    let versioned = Txn::new().when([
        Compare::version("app/a", Cmp::Equal, 3),
        Compare::create_revision("missing", Cmp::Equal, 0),
        Compare::mod_revision("app/b", Cmp::Less, 1_000),
    ]);
    assert!(client.txn(versioned).await.unwrap().succeeded);

    let deleted = client
        .delete(
            "app/",
            DeleteOptions {
                prefix: true,
                prev_kv: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!((deleted.deleted, deleted.prev_kvs.len()), (2, 2));
    assert_eq!(client.get_value("other").await.unwrap().unwrap(), "3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_keep_etcd_code_and_message() {
    // Goal: a server error reaches the caller with etcd's code and message. Method: put with a
    // lease that does not exist.
    let cluster = Cluster::start(1).await;
    let client = cluster.client().await;
    let error = client
        .put(
            "k",
            "v",
            PutOptions {
                lease: 12345,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    match error {
        Error::Server { code, message } => {
            assert_eq!(code, tonic::Code::NotFound);
            assert_eq!(message, "etcdserver: requested lease not found");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_keep_alive_renews_and_reports_loss() {
    // Goal: a kept lease outlives its TTL; a revoked lease is reported lost and its keys go.
    // Method: 2 s lease kept for 5 s, then revoked behind the keeper's back.
    let cluster = Cluster::start(1).await;
    let client = cluster.client().await;
    let keeper = client.lease_grant_kept(2).await.unwrap();
    client
        .put(
            "leased",
            "v",
            PutOptions {
                lease: keeper.id(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(keeper.is_alive(), "{:?}", keeper.state());
    let ttl = client.lease_time_to_live(keeper.id(), true).await.unwrap();
    assert!(ttl.ttl > 0, "lease still alive on the server");
    assert_eq!(ttl.keys, vec![bytes::Bytes::from("leased")]);
    client.lease_revoke(keeper.id()).await.unwrap();
    let lost = guard("loss reported", keeper.lost()).await;
    assert!(matches!(lost, Error::LeaseLost { .. }), "{lost:?}");
    assert!(matches!(keeper.state(), LeaseState::Lost { .. }));
    assert_eq!(client.get_value("leased").await.unwrap(), None);
    assert_eq!(
        client
            .lease_time_to_live(keeper.id(), false)
            .await
            .unwrap()
            .ttl,
        -1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_keeper_lets_the_lease_expire() {
    // Goal: once renewals stop, the server expires the lease and its keys. Method: 1 s lease,
    // stop the keeper, wait for the key to disappear.
    let cluster = Cluster::start(1).await;
    let client = cluster.client().await;
    let keeper = client.lease_grant_kept(1).await.unwrap();
    client
        .put(
            "ephemeral",
            "v",
            PutOptions {
                lease: keeper.id(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    keeper.stop();
    eventually("key expired", || async {
        match client.get_value("ephemeral").await {
            Ok(None) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_after_member_dies_without_gaps() {
    // Goal: a watch whose member dies resumes on another from the last seen revision + 1: every
    // put is delivered exactly once, in order. Method: 3 members; a fresh round-robin client's
    // first pick is the first endpoint, so its watch runs on member 0. Write 20 keys through
    // another client, kill member 0, write 20 more, and check the 40 events.
    let cluster = Cluster::start(3).await;
    let watch_client = cluster.client().await;
    let client = cluster.client().await;
    let mut watcher = watch_client.watch("w/", WatchOptions::prefix());
    // Let the watch be created before writing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..20 {
        client
            .put(format!("w/{i:02}"), "x", PutOptions::default())
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    while seen.len() < 20 {
        let batch = guard("first events", watcher.next())
            .await
            .unwrap()
            .unwrap();
        seen.extend(batch.events.into_iter().map(|e| e.kv.unwrap()));
    }
    let mut cluster = cluster;
    cluster.members[0].kill();
    for i in 20..40 {
        eventually("put after kill", || {
            client.put(format!("w/{i:02}"), "x", PutOptions::default())
        })
        .await;
    }
    while seen.len() < 40 {
        let batch = guard("events after kill", watcher.next())
            .await
            .unwrap()
            .unwrap();
        seen.extend(batch.events.into_iter().map(|e| e.kv.unwrap()));
    }
    let keys: Vec<String> = seen
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect();
    let expected: Vec<String> = (0..40).map(|i| format!("w/{i:02}")).collect();
    assert_eq!(keys, expected);
    assert!(
        seen.windows(2)
            .all(|w| w[0].mod_revision < w[1].mod_revision)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_a_compacted_revision_reports_compaction() {
    // Goal: asking for compacted history yields Compacted with the compact revision, not a
    // silent skip. Method: write 5 revisions, compact at the last, watch from revision 2.
    let cluster = Cluster::start(1).await;
    let client = cluster.client().await;
    let mut last = 0;
    for i in 0..5 {
        last = client
            .put("c", format!("{i}"), PutOptions::default())
            .await
            .unwrap()
            .header
            .unwrap()
            .revision;
    }
    client.compact(last, true).await.unwrap();
    let mut watcher = client.watch("c", WatchOptions::default().from_revision(2));
    match guard("compaction reported", watcher.next()).await {
        Some(Err(Error::Compacted { compact_revision })) => assert_eq!(compact_revision, last),
        other => panic!("expected Compacted, got {other:?}"),
    }
    assert!(
        watcher.next().await.is_none(),
        "the watch ends after compaction"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_fail_over_only_when_not_sent() {
    // Goal: a write that could not connect is sent to another endpoint (it provably was not
    // applied). Method: a dead port first in the list, health checks off so the client does not
    // know it is dead; ten puts all succeed, and the dead endpoint is marked unhealthy.
    let cluster = Cluster::start(1).await;
    let dead = format!("http://127.0.0.1:{}", free_port());
    let options = ClientOptions {
        health_interval: None,
        ..fast_options()
    };
    let client =
        Client::connect_lazy([dead.clone(), cluster.endpoints()[0].clone()], options).unwrap();
    for i in 0..10 {
        client
            .put(format!("k{i}"), "v", PutOptions::default())
            .await
            .unwrap();
    }
    let info = client.endpoints();
    assert!(!info[0].healthy, "{info:?}");
    assert_eq!(client.get_prefix("k").await.unwrap().count, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_to_a_silent_endpoint_is_outcome_unknown_and_reads_retry() {
    // Goal: a write whose attempt times out is reported OutcomeUnknown and not re-sent, while a
    // read in the same situation is retried on another endpoint. Method: a "black hole" that
    // accepts TCP connections and never answers, listed first; round robin makes the first
    // attempt of each request go to it in turn.
    let cluster = Cluster::start(1).await;
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hole_url = format!("http://{}", hole.local_addr().unwrap());
    let holder = std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in hole.incoming().take(8) {
            held.push(stream);
        }
        std::thread::sleep(Duration::from_secs(30));
    });
    let options = ClientOptions {
        health_interval: None,
        request_timeout: Duration::from_millis(700),
        connect_timeout: Duration::from_secs(5),
        leader_aware_writes: false,
        ..fast_options()
    };
    let client = Client::connect_lazy([hole_url, cluster.endpoints()[0].clone()], options).unwrap();
    // Round robin: request 1 goes to the hole first.
    let error = client
        .put("unknown", "v", PutOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(error, Error::OutcomeUnknown { .. }), "{error:?}");
    // Request 2 starts on the real member; request 3 on the hole again: a read, so retried.
    client.get("x", GetOptions::default()).await.unwrap();
    client.get("x", GetOptions::default()).await.unwrap();
    // A put declared idempotent is retried: of two in a row, one starts on the hole, and
    // both succeed.
    for _ in 0..2 {
        let options = PutOptions {
            idempotent: true,
            ..Default::default()
        };
        client.put("k", "v", options).await.unwrap();
    }
    drop(holder);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_keep_working_when_a_member_is_killed() {
    // Goal: the client keeps serving reads and writes when one of three members dies. Method:
    // kill each member in turn after a write (restarting none), with reads in between; only
    // one member is ever down, and every read returns the last written value.
    let mut cluster = Cluster::start(3).await;
    let client = cluster.client().await;
    client
        .put("stable", "0", PutOptions::default())
        .await
        .unwrap();
    cluster.members[1].kill();
    for i in 1..=30 {
        let value = format!("{i}");
        eventually("put", || {
            client.put("stable", value.clone(), PutOptions::default())
        })
        .await;
        let read = client.get_value("stable").await.unwrap();
        assert_eq!(read.unwrap(), value.as_str());
    }
    let info = client.endpoints();
    assert!(!info[1].healthy, "{info:?}");
}
