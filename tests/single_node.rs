//! A single `chorus serve` process, driven through the generated etcd v3 client.

mod common;

use chorus_proto::etcdserverpb as pb;
use common::{Cluster, get, kv, put, wait_ready};
use pb::compare::{CompareResult, CompareTarget, TargetUnion};
use pb::request_op::Request as Op;
use tonic::Code;

fn value_of(response: &pb::RangeResponse) -> Vec<&[u8]> {
    response.kvs.iter().map(|kv| kv.value.as_ref()).collect()
}

/// Goal: put, get, range, delete, txn and compact work end to end on one member, with etcd's
/// revisions and headers. Method: a scripted sequence against a fresh member, checking every
/// response field the client relies on.
#[tokio::test(flavor = "multi_thread")]
async fn single_member_kv_round_trip() {
    let cluster = Cluster::start(1, &[]);
    let endpoint = cluster.members[0].endpoint();
    wait_ready(&endpoint).await;
    let mut client = kv(&endpoint).await;

    // An empty store is at revision 1; each put adds one.
    let first = client.put(put("a", "1")).await.unwrap().into_inner();
    let header = first.header.unwrap();
    assert_eq!(header.revision, 2, "{}", cluster.logs());
    assert_ne!(header.cluster_id, 0);
    assert_ne!(header.member_id, 0);
    assert!(header.raft_term >= 1);
    let mut with_prev = put("a", "2");
    with_prev.prev_kv = true;
    let second = client.put(with_prev).await.unwrap().into_inner();
    assert_eq!(second.header.unwrap().revision, 3);
    assert_eq!(second.prev_kv.unwrap().value.as_ref(), b"1");
    client.put(put("b", "3")).await.unwrap();
    client.put(put("c", "4")).await.unwrap();

    let got = client.range(get("a")).await.unwrap().into_inner();
    assert_eq!(value_of(&got), vec![b"2".as_slice()]);
    assert_eq!(got.kvs[0].version, 2);
    assert_eq!(got.kvs[0].create_revision, 2);
    assert_eq!(got.kvs[0].mod_revision, 3);
    assert_eq!(got.header.unwrap().revision, 5);

    // A range [a, c) and a serializable read of an old revision.
    let mut range = get("a");
    range.range_end = "c".into();
    let got = client.range(range).await.unwrap().into_inner();
    assert_eq!(value_of(&got), vec![b"2".as_slice(), b"3".as_slice()]);
    let mut old = get("a");
    old.revision = 2;
    old.serializable = true;
    let got = client.range(old).await.unwrap().into_inner();
    assert_eq!(value_of(&got), vec![b"1".as_slice()]);

    // Delete one key.
    let deleted = client
        .delete_range(pb::DeleteRangeRequest {
            key: "b".into(),
            prev_kv: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.deleted, 1);
    assert_eq!(deleted.prev_kvs[0].value.as_ref(), b"3");
    assert!(
        client
            .range(get("b"))
            .await
            .unwrap()
            .into_inner()
            .kvs
            .is_empty()
    );

    // A txn whose compare fails runs the failure branch; one that holds runs success.
    let txn = |expected: &str| pb::TxnRequest {
        compare: vec![pb::Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Value as i32,
            key: "a".into(),
            target_union: Some(TargetUnion::Value(expected.to_string().into())),
            ..Default::default()
        }],
        success: vec![pb::RequestOp {
            request: Some(Op::RequestPut(put("t", "success"))),
        }],
        failure: vec![pb::RequestOp {
            request: Some(Op::RequestRange(get("a"))),
        }],
    };
    let failed = client.txn(txn("nope")).await.unwrap().into_inner();
    assert!(!failed.succeeded);
    match &failed.responses[0].response {
        Some(pb::response_op::Response::ResponseRange(r)) => {
            assert_eq!(r.kvs[0].value.as_ref(), b"2")
        }
        other => panic!("unexpected txn response {other:?}"),
    }
    let done = client.txn(txn("2")).await.unwrap().into_inner();
    assert!(done.succeeded);
    let got = client.range(get("t")).await.unwrap().into_inner();
    assert_eq!(value_of(&got), vec![b"success".as_slice()]);

    // Compact, then the compacted revision is refused with etcd's error.
    client
        .compact(pb::CompactionRequest {
            revision: 4,
            physical: true,
        })
        .await
        .unwrap();
    let mut compacted = get("a");
    compacted.revision = 2;
    let status = client.range(compacted).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange);
    assert_eq!(
        status.message(),
        "etcdserver: mvcc: required revision has been compacted"
    );
}

/// Goal: a transaction that only reads is served as a read, as etcd serves it: the answer it
/// would get through the log, without an entry in the log; one that writes still goes through
/// it. Method: one member; Maintenance.Status's raft index before and after read-only
/// transactions of each kind (a compare that holds and one that fails, nested, serializable,
/// no operation at all, a future revision, a compacted one), then after one that writes.
#[tokio::test(flavor = "multi_thread")]
async fn transactions_that_only_read_stay_out_of_the_log() {
    let cluster = Cluster::start(1, &[]);
    let endpoint = cluster.members[0].endpoint();
    wait_ready(&endpoint).await;
    let mut client = kv(&endpoint).await;
    let status = common::maintenance(&endpoint).await;
    for (key, value) in [("a", "1"), ("b", "2"), ("a", "3")] {
        client.put(put(key, value)).await.unwrap();
    }
    client
        .compact(pb::CompactionRequest {
            revision: 2,
            physical: true,
        })
        .await
        .unwrap();
    let raft_index = || {
        let mut status = status.clone();
        async move {
            let response = status.status(pb::StatusRequest {}).await.unwrap();
            response.into_inner().raft_index
        }
    };
    let before = raft_index().await;

    let range = |key: &str, end: &str, revision: i64, serializable: bool| pb::RequestOp {
        request: Some(Op::RequestRange(pb::RangeRequest {
            range_end: end.to_owned().into(),
            revision,
            serializable,
            ..get(key)
        })),
    };
    let txn =
        |expected: &str, success: Vec<pb::RequestOp>, failure: Vec<pb::RequestOp>| pb::TxnRequest {
            compare: vec![pb::Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Value as i32,
                key: "a".into(),
                target_union: Some(TargetUnion::Value(expected.to_owned().into())),
                ..Default::default()
            }],
            success,
            failure,
        };
    let values = |response: &pb::TxnResponse| -> Vec<Vec<Vec<u8>>> {
        response
            .responses
            .iter()
            .map(|op| match &op.response {
                Some(pb::response_op::Response::ResponseRange(r)) => {
                    r.kvs.iter().map(|kv| kv.value.to_vec()).collect()
                }
                Some(pb::response_op::Response::ResponseTxn(t)) => {
                    vec![format!("nested {}", t.succeeded).into_bytes()]
                }
                other => panic!("unexpected txn response {other:?}"),
            })
            .collect()
    };
    let held = txn(
        "3",
        vec![range("a", "c", 0, false)],
        vec![range("b", "", 0, false)],
    );
    let held = client.txn(held).await.unwrap().into_inner();
    assert!(held.succeeded);
    assert_eq!(held.header.as_ref().unwrap().revision, 4);
    assert_eq!(values(&held), vec![vec![b"3".to_vec(), b"2".to_vec()]]);
    let failed = txn(
        "1",
        vec![range("a", "", 0, false)],
        vec![range("a", "", 3, false)],
    );
    let failed = client.txn(failed).await.unwrap().into_inner();
    assert!(!failed.succeeded);
    assert_eq!(values(&failed), vec![vec![b"1".to_vec()]]);
    let nested = txn(
        "3",
        vec![pb::RequestOp {
            request: Some(Op::RequestTxn(txn(
                "1",
                vec![],
                vec![range("b", "", 0, true)],
            ))),
        }],
        vec![],
    );
    let nested = client.txn(nested).await.unwrap().into_inner();
    assert_eq!(values(&nested), vec![vec![b"nested false".to_vec()]]);
    let serializable = txn("3", vec![range("a", "", 0, true)], vec![]);
    let serializable = client.txn(serializable).await.unwrap().into_inner();
    assert_eq!(values(&serializable), vec![vec![b"3".to_vec()]]);
    let empty = client
        .txn(pb::TxnRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(empty.succeeded && empty.responses.is_empty());
    for (revision, message) in [
        (
            9,
            "etcdserver: mvcc: required revision is a future revision",
        ),
        (1, "etcdserver: mvcc: required revision has been compacted"),
    ] {
        let refused = txn("3", vec![range("a", "", revision, false)], vec![]);
        let status = client.txn(refused).await.unwrap_err();
        assert_eq!(status.code(), Code::OutOfRange);
        assert_eq!(status.message(), message);
    }
    assert_eq!(raft_index().await, before, "{}", cluster.logs());

    let writes = txn(
        "3",
        vec![pb::RequestOp {
            request: Some(Op::RequestPut(put("c", "4"))),
        }],
        vec![],
    );
    let writes = client.txn(writes).await.unwrap().into_inner();
    assert_eq!(writes.header.unwrap().revision, 5);
    assert!(raft_index().await > before);
    let got = client.range(get("c")).await.unwrap().into_inner();
    assert_eq!(value_of(&got), vec![b"4".as_slice()]);
}

/// Goal: the request limits answer with etcd's codes and messages and the member keeps
/// serving. Method: a member with small --max-request-bytes and --max-txn-ops; one request over
/// each limit, then a normal write.
#[tokio::test(flavor = "multi_thread")]
async fn limits_answer_with_etcd_errors() {
    let cluster = Cluster::start(1, &["--max-request-bytes=1024", "--max-txn-ops=2"]);
    let endpoint = cluster.members[0].endpoint();
    wait_ready(&endpoint).await;
    let mut client = kv(&endpoint).await;

    let big = "x".repeat(2048);
    let status = client.put(put("big", &big)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "etcdserver: request is too large");

    let op = || pb::RequestOp {
        request: Some(Op::RequestPut(put("k", "v"))),
    };
    let txn = pb::TxnRequest {
        success: vec![op(), op(), op()],
        ..Default::default()
    };
    let status = client.txn(txn).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "etcdserver: too many operations in txn request"
    );

    let status = client.put(put("", "v")).await.unwrap_err();
    assert_eq!(status.message(), "etcdserver: key is not provided");

    // Still serving, nothing lost.
    client.put(put("small", "ok")).await.unwrap();
    let got = client.range(get("small")).await.unwrap().into_inner();
    assert_eq!(got.kvs.len(), 1);
}

/// Goal: a write acknowledged before a kill -9 is there after the restart, and revisions go on
/// from where they were. Method: 200 writes in quick succession (the store fsyncs at most every
/// 100 ms, so most of them are on disk only in the WAL and are applied again at the restart),
/// kill the process, restart it from its data directory.
#[tokio::test(flavor = "multi_thread")]
async fn single_member_restart_keeps_acknowledged_writes() {
    let mut cluster = Cluster::start(1, &[]);
    let endpoint = cluster.members[0].endpoint();
    wait_ready(&endpoint).await;
    let mut client = kv(&endpoint).await;
    let mut last_revision = 0;
    for i in 0..200 {
        let response = client
            .put(put(&format!("key{i:03}"), &format!("value{i}")))
            .await
            .unwrap()
            .into_inner();
        last_revision = response.header.unwrap().revision;
    }
    cluster.members[0].kill();
    cluster.members[0].start();
    wait_ready(&endpoint).await;
    let mut client = kv(&endpoint).await;
    let mut all = get("key");
    all.range_end = common::prefix_end("key").into();
    let got = client.range(all).await.unwrap().into_inner();
    assert_eq!(got.kvs.len(), 200, "{}", cluster.logs());
    assert_eq!(got.kvs[199].value.as_ref(), b"value199");
    assert_eq!(got.header.unwrap().revision, last_revision);
    let next = client
        .put(put("after", "restart"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next.header.unwrap().revision, last_revision + 1);
}

/// Goal: SIGTERM stops a member gracefully (exit status 0) and what it acknowledged is there
/// when it starts again. Method: write, SIGTERM, check the exit status, restart, read back.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_gracefully() {
    let mut cluster = Cluster::start(1, &[]);
    let endpoint = cluster.members[0].endpoint();
    wait_ready(&endpoint).await;
    let mut client = kv(&endpoint).await;
    client.put(put("before", "sigterm")).await.unwrap();
    assert!(
        cluster.members[0].terminate(),
        "non-zero exit after SIGTERM\n{}",
        cluster.logs()
    );
    assert!(cluster.members[0].log().contains("shutting down"));
    cluster.members[0].start();
    wait_ready(&endpoint).await;
    let mut client = kv(&endpoint).await;
    let got = client.range(get("before")).await.unwrap().into_inner();
    assert_eq!(value_of(&got), vec![b"sigterm".as_slice()]);
}

/// Goal: Maintenance.Snapshot streams a consistent copy of the store that restores to the same
/// data, Hash describes it, and Defragment returns space without changing anything. Method:
/// writes, deletes and a compaction on one member; the streamed bytes are counted against
/// `remaining_bytes` and restored into a fresh store, whose checksum and contents are compared
/// with the server's; Hash and every key are compared before and after Defragment.
#[tokio::test(flavor = "multi_thread")]
async fn snapshot_stream_restores_and_defragment_keeps_data() {
    use chorus_storage::mvcc::{MvccConfig, MvccStore, RangeRequest};

    let cluster = Cluster::start(1, &[]);
    let endpoint = cluster.members[0].endpoint();
    wait_ready(&endpoint).await;
    let mut client = kv(&endpoint).await;
    let mut maintenance = common::maintenance(&endpoint).await;
    let value = "v".repeat(1024);
    for i in 0..200 {
        client.put(put(&format!("k{i:03}"), &value)).await.unwrap();
    }
    for i in (0..200).step_by(2) {
        client
            .delete_range(pb::DeleteRangeRequest {
                key: format!("k{i:03}").into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let last = client.put(put("last", "x")).await.unwrap().into_inner();
    let revision = last.header.unwrap().revision;
    client
        .compact(pb::CompactionRequest {
            revision,
            physical: true,
        })
        .await
        .unwrap();

    let hash = maintenance
        .hash(pb::HashRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hash.header.unwrap().revision, revision);

    let mut stream = maintenance
        .snapshot(pb::SnapshotRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut bytes = Vec::new();
    let mut announced = None;
    let mut last_remaining = u64::MAX;
    while let Some(message) = stream.message().await.unwrap() {
        announced.get_or_insert(message.remaining_bytes + message.blob.len() as u64);
        assert!(
            message.remaining_bytes < last_remaining,
            "remaining bytes only go down"
        );
        last_remaining = message.remaining_bytes;
        bytes.extend_from_slice(&message.blob);
    }
    assert_eq!(last_remaining, 0, "the last message has nothing remaining");
    assert_eq!(announced, Some(bytes.len() as u64));

    let dir = tempfile::tempdir().unwrap();
    assert_eq!(bytes.len() % 512, 32, "framed as etcd clients require");
    let stream = chorus_server::maintenance::unframe_snapshot(&bytes).expect("a valid frame");
    let restored = MvccStore::restore(
        &dir.path().join("restored"),
        MvccConfig::default(),
        [Ok(bytes::Bytes::copy_from_slice(stream))],
    )
    .expect("the streamed snapshot restores");
    assert_eq!(restored.current_revision().get(), revision);
    assert_eq!(
        restored.hash().unwrap(),
        hash.hash,
        "same data, same checksum"
    );
    let all = restored.range(&RangeRequest::range("k", "l")).unwrap();
    assert_eq!(all.kvs.len(), 100);
    assert!(
        all.kvs
            .iter()
            .all(|kv| kv.value.as_ref() == value.as_bytes())
    );

    maintenance
        .defragment(pb::DefragmentRequest {})
        .await
        .unwrap();
    let after = maintenance
        .hash(pb::HashRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.hash, hash.hash, "defragmenting changes no data");
    let mut range = get("k");
    range.range_end = "l".into();
    let got = client.range(range).await.unwrap().into_inner();
    assert_eq!(got.count, 100);
    // Writes go on after a defragmentation.
    client.put(put("after", "defrag")).await.unwrap();
    let got = client.range(get("after")).await.unwrap().into_inner();
    assert_eq!(value_of(&got), vec![b"defrag".as_slice()]);
}

/// Goal: a range over more records than the server reads on its runtime's workers (it reads
/// those off the workers and without the store's lock) answers as any range does, at the
/// revision it was asked for, while writes go on; so does a transaction that reads such ranges.
/// Method: 1,500 keys written by transactions; ranges over all of them (plain, limited, sorted,
/// keys only, count only, at the revision before the last batch, and twice in one transaction)
/// while another task keeps writing keys outside the range.
#[tokio::test(flavor = "multi_thread")]
async fn large_ranges_answer_while_writes_go_on() {
    let cluster = Cluster::start(1, &[]);
    let endpoint = cluster.members[0].endpoint();
    wait_ready(&endpoint).await;
    let mut client = kv(&endpoint).await;
    let mut revision = 0;
    for batch in 0..12 {
        let success = (0..125)
            .map(|i| pb::RequestOp {
                request: Some(Op::RequestPut(put(
                    &format!("big/{:05}", batch * 125 + i),
                    &format!("v{batch}"),
                ))),
            })
            .collect();
        let txn = pb::TxnRequest {
            success,
            ..Default::default()
        };
        let response = client.txn(txn).await.unwrap().into_inner();
        revision = response.header.unwrap().revision;
    }
    let writer = tokio::spawn({
        let mut client = client.clone();
        async move {
            for i in 0..200 {
                client.put(put(&format!("other/{i}"), "x")).await.unwrap();
            }
        }
    });
    let all = || pb::RangeRequest {
        key: "big/".into(),
        range_end: common::prefix_end("big/").into(),
        ..Default::default()
    };
    for _ in 0..3 {
        let got = client.range(all()).await.unwrap().into_inner();
        assert_eq!((got.count, got.kvs.len(), got.more), (1500, 1500, false));
        for (i, kv) in got.kvs.iter().enumerate() {
            assert_eq!(kv.key, format!("big/{i:05}").as_bytes());
            assert_eq!(kv.value, format!("v{}", i / 125).as_bytes());
            assert_eq!(kv.version, 1);
        }

        let limited = pb::RangeRequest {
            limit: 1200,
            ..all()
        };
        let got = client.range(limited).await.unwrap().into_inner();
        assert_eq!((got.count, got.kvs.len(), got.more), (1500, 1200, true));
        assert_eq!(got.kvs[1199].key.as_ref(), b"big/01199");

        let sorted = pb::RangeRequest {
            sort_order: pb::range_request::SortOrder::Descend as i32,
            sort_target: pb::range_request::SortTarget::Mod as i32,
            keys_only: true,
            ..all()
        };
        let got = client.range(sorted).await.unwrap().into_inner();
        assert_eq!(got.kvs.len(), 1500);
        assert_eq!(got.kvs[0].mod_revision, revision);
        assert!(got.kvs[0].key.starts_with(b"big/0137"));
        assert!(got.kvs.iter().all(|kv| kv.value.is_empty()));
        assert!(
            got.kvs
                .windows(2)
                .all(|w| w[0].mod_revision >= w[1].mod_revision)
        );

        let counted = pb::RangeRequest {
            count_only: true,
            ..all()
        };
        let got = client.range(counted).await.unwrap().into_inner();
        assert_eq!((got.count, got.kvs.len()), (1500, 0));

        let before_last = pb::RangeRequest {
            revision: revision - 1,
            ..all()
        };
        let got = client.range(before_last).await.unwrap().into_inner();
        assert_eq!((got.count, got.kvs.len()), (1375, 1375));

        // A transaction that reads the same, twice, at one revision.
        let read = || pb::RequestOp {
            request: Some(Op::RequestRange(all())),
        };
        let txn = pb::TxnRequest {
            success: vec![read(), read()],
            ..Default::default()
        };
        let got = client.txn(txn).await.unwrap().into_inner();
        let ranges: Vec<&pb::RangeResponse> = got
            .responses
            .iter()
            .map(|op| match &op.response {
                Some(pb::response_op::Response::ResponseRange(range)) => range,
                other => panic!("unexpected txn response {other:?}"),
            })
            .collect();
        assert_eq!(ranges.len(), 2);
        assert_eq!(ranges[0], ranges[1]);
        assert_eq!(ranges[0].kvs.len(), 1500);
        assert_eq!(ranges[0].kvs[1499].value.as_ref(), b"v11");
    }
    writer.await.unwrap();
    let got = client.range(all()).await.unwrap().into_inner();
    assert_eq!(got.count, 1500);
}

/// Goal: `--auto-compaction-mode periodic` compacts history older than the retention and keeps
/// the rest, as etcd. Method: a 2 s retention while a key is rewritten every 50 ms for 5 s;
/// then the oldest revisions answer etcd's compacted error and the last second still reads.
#[tokio::test(flavor = "multi_thread")]
async fn periodic_auto_compaction_keeps_the_retention() {
    let cluster = Cluster::start(
        1,
        &[
            "--auto-compaction-mode=periodic",
            "--auto-compaction-retention=2s",
        ],
    );
    let endpoint = cluster.members[0].endpoint();
    wait_ready(&endpoint).await;
    let mut client = kv(&endpoint).await;
    let start = std::time::Instant::now();
    let mut revision = 0;
    while start.elapsed() < std::time::Duration::from_secs(5) {
        let response = client.put(put("ticker", "x")).await.unwrap().into_inner();
        revision = response.header.unwrap().revision;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut old = get("ticker");
    old.revision = 2;
    let error = client.range(old).await.unwrap_err();
    assert_eq!(
        error.message(),
        "etcdserver: mvcc: required revision has been compacted",
        "{}",
        cluster.logs()
    );
    // About 20 revisions per second: the last half second is well within the retention.
    let mut recent = get("ticker");
    recent.revision = revision - 10;
    client.range(recent).await.unwrap();
}

fn alarm_request(action: pb::alarm_request::AlarmAction, member_id: u64) -> pb::AlarmRequest {
    pb::AlarmRequest {
        action: action as i32,
        member_id,
        alarm: if member_id == 0 {
            pb::AlarmType::None as i32
        } else {
            pb::AlarmType::Nospace as i32
        },
    }
}

/// Goal: the backend quota works as etcd's: a write that would take the store past
/// `--quota-backend-bytes` is refused with "database space exceeded" and raises NOSPACE; while
/// the alarm is active every write that grows the store is refused, even after a restart, but
/// reads, deletes, compaction and defragmentation are served; once room is made and the alarm
/// disarmed, writes succeed again. Method: one member with a 4 MiB quota, 80 KB values until
/// the refusal, then etcd's recovery procedure step by step.
#[tokio::test(flavor = "multi_thread")]
async fn quota_raises_nospace_until_room_is_made_and_the_alarm_disarmed() {
    use pb::alarm_request::AlarmAction;
    const QUOTA: i64 = 4 * 1024 * 1024;
    let mut cluster = Cluster::start(1, &[&format!("--quota-backend-bytes={QUOTA}")]);
    let endpoint = cluster.members[0].endpoint();
    wait_ready(&endpoint).await;
    let mut client = kv(&endpoint).await;
    let big = "x".repeat(80 * 1024);
    let mut refused = None;
    for i in 0..200 {
        match client.put(put(&format!("big/{i:03}"), &big)).await {
            Ok(_) => {}
            Err(status) => {
                refused = Some(status);
                break;
            }
        }
    }
    let refused = refused.expect("the quota refuses a write before 16 MB are written");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert_eq!(
        refused.message(),
        "etcdserver: mvcc: database space exceeded"
    );

    let mut maintenance = common::maintenance(&endpoint).await;
    let member_id = maintenance
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .header
        .unwrap()
        .member_id;
    let listed = common::eventually("NOSPACE is raised", || {
        let mut maintenance = maintenance.clone();
        async move {
            let alarms = maintenance
                .alarm(alarm_request(AlarmAction::Get, 0))
                .await
                .map_err(|e| e.to_string())?
                .into_inner()
                .alarms;
            if alarms.is_empty() {
                Err("no alarm yet".to_string())
            } else {
                Ok(alarms)
            }
        }
    })
    .await;
    assert_eq!(
        listed,
        vec![pb::AlarmMember {
            member_id,
            alarm: pb::AlarmType::Nospace as i32
        }]
    );
    let status = maintenance.status(pb::StatusRequest {}).await.unwrap();
    assert_eq!(
        status.into_inner().errors,
        vec![format!("memberID:{member_id} alarm:NOSPACE")]
    );

    // While the alarm is on: small writes are refused, reads and deletes are served, and the
    // alarm survives a restart.
    let small = client.put(put("small", "v")).await.expect_err("refused");
    assert_eq!(small.message(), "etcdserver: mvcc: database space exceeded");
    cluster.members[0].terminate();
    cluster.members[0].start();
    wait_ready(&endpoint).await;
    let mut client = kv(&endpoint).await;
    let mut maintenance = common::maintenance(&endpoint).await;
    let small = client.put(put("small", "v")).await.expect_err("refused");
    assert_eq!(small.message(), "etcdserver: mvcc: database space exceeded");
    let mut all = get("big/");
    all.range_end = common::prefix_end("big/").into();
    all.keys_only = true;
    assert!(
        !client
            .range(all.clone())
            .await
            .unwrap()
            .into_inner()
            .kvs
            .is_empty()
    );
    let deleted = client
        .delete_range(pb::DeleteRangeRequest {
            key: all.key.clone(),
            range_end: all.range_end.clone(),
            ..pb::DeleteRangeRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(deleted.deleted > 0);

    // etcd's recovery: compact, defragment, disarm.
    let revision = deleted.header.unwrap().revision;
    client
        .compact(pb::CompactionRequest {
            revision,
            physical: true,
        })
        .await
        .unwrap();
    maintenance
        .defragment(pb::DefragmentRequest {})
        .await
        .unwrap();
    let db_size = maintenance
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .db_size;
    assert!(db_size < QUOTA, "defragmented to {db_size} bytes");
    let disarmed = maintenance
        .alarm(pb::AlarmRequest {
            action: AlarmAction::Deactivate as i32,
            member_id,
            alarm: pb::AlarmType::Nospace as i32,
        })
        .await
        .unwrap()
        .into_inner()
        .alarms;
    assert_eq!(disarmed.len(), 1);
    let listed = maintenance
        .alarm(alarm_request(AlarmAction::Get, 0))
        .await
        .unwrap()
        .into_inner()
        .alarms;
    assert!(listed.is_empty(), "{listed:?}");
    client
        .put(put("small", "v"))
        .await
        .expect("writes work again");
    let status = maintenance.status(pb::StatusRequest {}).await.unwrap();
    assert!(status.into_inner().errors.is_empty());
}

/// Goal: snapshot marks (every `--snapshot-count` entries: a WAL mark once the store's commits
/// cover it, log compaction, and a WAL purge once an fsync covers that) and a snapshot file written in the background for a lagging
/// follower, while writes go on, neither lose writes nor make a concurrent Defragment fail (the
/// engine cannot be compacted under the file's read transaction; defragmentation waits for it).
/// Method: three members marking every 20 entries, one of them down; one task writes 600 keys of
/// 4 KiB through the leader while another defragments the leader without pause, and the lagging
/// member is started half way, so that the leader writes it a snapshot file meanwhile; every
/// defragmentation must succeed, and after a restart of the leader every key must be there, on
/// the leader and on the member that caught up.
#[tokio::test(flavor = "multi_thread")]
async fn background_snapshots_with_concurrent_defragment_keep_every_write() {
    let mut cluster = Cluster::start(3, &["--snapshot-count=20"]);
    for member in &cluster.members {
        wait_ready(&member.endpoint()).await;
    }
    let leader = common::leader_index(&cluster).await;
    let lagging = (leader + 1) % 3;
    cluster.members[lagging].kill();
    let endpoint = cluster.members[leader].endpoint();
    let value = "s".repeat(4096);
    let (half_tx, half) = tokio::sync::oneshot::channel();
    let writer = {
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            let mut half_tx = Some(half_tx);
            for i in 0..600 {
                common::put_retrying(&endpoint, &format!("bg/{i:04}"), &value).await;
                if i == 300 {
                    let _ = half_tx.take().map(|tx| tx.send(()));
                }
            }
        })
    };
    let mut maintenance = common::maintenance(&endpoint).await;
    let mut defragmented = 0;
    let mut half = Some(half);
    while !writer.is_finished() {
        if half.as_mut().is_some_and(|rx| rx.try_recv().is_ok()) {
            half = None;
            cluster.members[lagging].start();
        }
        maintenance
            .defragment(pb::DefragmentRequest {})
            .await
            .unwrap_or_else(|e| panic!("defragment {defragmented}: {e}"));
        defragmented += 1;
    }
    writer.await.unwrap();
    assert!(defragmented > 0);
    if half.is_some() {
        cluster.members[lagging].start();
    }
    cluster.members[leader]
        .wait_for_log("writing a snapshot file for a follower")
        .await;
    cluster.members[lagging]
        .wait_for_log("restored the store from a snapshot")
        .await;

    cluster.members[leader].terminate();
    cluster.members[leader].start();
    for member in [leader, lagging] {
        let endpoint = cluster.members[member].endpoint();
        wait_ready(&endpoint).await;
        let mut all = get("bg/");
        all.range_end = common::prefix_end("bg/").into();
        all.count_only = true;
        all.serializable = true;
        common::eventually("every key is on the member", || {
            let all = all.clone();
            let endpoint = endpoint.clone();
            async move {
                let count = kv(&endpoint)
                    .await
                    .range(all)
                    .await
                    .map_err(|e| e.to_string())?
                    .into_inner()
                    .count;
                if count == 600 {
                    Ok(())
                } else {
                    Err(format!("{count} of 600 keys"))
                }
            }
        })
        .await;
    }
    assert!(
        cluster.members[leader]
            .log()
            .contains("took a snapshot index="),
        "no snapshot mark was taken"
    );
}

/// A GET over plain HTTP/1.1, as a Prometheus scraper or a health check sends it: the status
/// line and the body.
async fn http_get(port: u16, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the metrics port");
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.expect("read");
    let (head, body) = answer.split_once("\r\n\r\n").expect("a header and a body");
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

/// The value of an unlabelled sample (or of the labelled one `name{labels}`) in a scrape.
fn sample(scrape: &str, name: &str) -> f64 {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {name} in:\n{scrape}"))
        .parse()
        .expect("a number")
}

/// Goal: `--listen-metrics-urls` serves etcd's metric names with values that follow the
/// member (its fsyncs, applies and leadership), and `/health` as etcd answers it. Method: one
/// member, 50 puts, then scrape; unknown paths get 404.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_and_health_are_served_under_etcds_names() {
    let port = common::free_port();
    let metrics_flag = format!("--listen-metrics-urls=http://127.0.0.1:{port}");
    let cluster = Cluster::start(1, &[&metrics_flag]);
    let endpoint = cluster.members[0].endpoint();
    wait_ready(&endpoint).await;
    let mut client = kv(&endpoint).await;
    for i in 0..50 {
        client.put(put(&format!("m{i}"), "v")).await.unwrap();
    }
    let (status, scrape) = http_get(port, "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK", "{scrape}");
    // Each acknowledged put was fsynced in the WAL before its answer.
    assert!(sample(&scrape, "etcd_disk_wal_fsync_duration_seconds_count") >= 50.0);
    assert!(
        sample(
            &scrape,
            "etcd_disk_wal_fsync_duration_seconds_bucket{le=\"+Inf\"}"
        ) >= 50.0
    );
    assert!(sample(&scrape, "etcd_disk_backend_commit_duration_seconds_count") >= 1.0);
    assert_eq!(sample(&scrape, "etcd_server_has_leader"), 1.0);
    assert_eq!(sample(&scrape, "etcd_server_is_leader"), 1.0);
    assert!(sample(&scrape, "etcd_server_proposals_applied_total") >= 50.0);
    let (status, body) = http_get(port, "/health").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(body, r#"{"health":"true","reason":""}"#);
    let (status, _) = http_get(port, "/nothing-here").await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");
}
