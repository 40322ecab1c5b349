//! etcd's `Watch` service against real `chorus serve` processes, through the generated tonic
//! client: the wire behaviour etcd 3.4 clients rely on.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use chorus_proto::etcdserverpb as pb;
use chorus_proto::mvccpb;
use common::{Cluster, GUARD, eventually, kv, maintenance, prefix_end, put, put_retrying};
use pb::watch_client::WatchClient;
use pb::watch_create_request::FilterType;
use pb::watch_request::RequestUnion;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// One client watch stream: requests go in through `tx`, responses come out of `rx`.
struct Stream {
    tx: mpsc::Sender<pb::WatchRequest>,
    rx: tonic::Streaming<pb::WatchResponse>,
}

async fn open(endpoint: &str) -> Stream {
    let channel = Channel::from_shared(endpoint.to_string())
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy();
    let mut client = WatchClient::new(channel);
    let (tx, requests) = mpsc::channel(16);
    let rx = client
        .watch(ReceiverStream::new(requests))
        .await
        .expect("open a watch stream")
        .into_inner();
    Stream { tx, rx }
}

fn create(key: &str, range_end: &[u8]) -> pb::WatchCreateRequest {
    pb::WatchCreateRequest {
        key: key.to_string().into(),
        range_end: range_end.to_vec().into(),
        ..Default::default()
    }
}

impl Stream {
    async fn send(&self, request: RequestUnion) {
        let request = pb::WatchRequest {
            request_union: Some(request),
        };
        self.tx.send(request).await.expect("the stream is open");
    }

    async fn create(&self, create: pb::WatchCreateRequest) {
        self.send(RequestUnion::CreateRequest(create)).await;
    }

    async fn next(&mut self) -> pb::WatchResponse {
        tokio::time::timeout(GUARD, self.rx.message())
            .await
            .expect("a watch response in time")
            .expect("the stream is healthy")
            .expect("the stream is open")
    }

    /// Creates a watch and returns its id from the created response.
    async fn watch(&mut self, create: pb::WatchCreateRequest) -> (i64, pb::WatchResponse) {
        self.create(create).await;
        let created = self.next().await;
        assert!(created.created, "{created:?}");
        assert!(!created.canceled, "{created:?}");
        (created.watch_id, created)
    }

    /// Asks for progress and returns every response received before the progress response,
    /// and that response's header revision: everything queued before the request is in.
    async fn until_progress(&mut self) -> (Vec<pb::WatchResponse>, i64) {
        self.send(RequestUnion::ProgressRequest(pb::WatchProgressRequest {}))
            .await;
        let mut before = Vec::new();
        loop {
            let response = self.next().await;
            if response.watch_id == -1 && !response.created && response.events.is_empty() {
                return (before, response.header.expect("a header").revision);
            }
            before.push(response);
        }
    }
}

/// (type, key, value, mod_revision, prev value) of an event, for comparisons.
type Seen = (i32, String, String, i64, Option<String>);

fn seen(event: &mvccpb::Event) -> Seen {
    let kv = event.kv.clone().unwrap_or_default();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (
        event.r#type,
        text(&kv.key),
        text(&kv.value),
        kv.mod_revision,
        event.prev_kv.as_ref().map(|p| text(&p.value)),
    )
}

/// The events of `responses`, per watch id.
fn by_watch(responses: &[pb::WatchResponse]) -> BTreeMap<i64, Vec<Seen>> {
    let mut out: BTreeMap<i64, Vec<Seen>> = BTreeMap::new();
    for response in responses {
        for event in &response.events {
            out.entry(response.watch_id).or_default().push(seen(event));
        }
    }
    out
}

const PUT: i32 = 0;
const DELETE: i32 = 1;

async fn put_rev(client: &mut pb::kv_client::KvClient<Channel>, key: &str, value: &str) -> i64 {
    let response = client.put(put(key, value)).await.expect("put").into_inner();
    response.header.expect("a header").revision
}

/// Goal: a key watch and a prefix watch multiplexed on one stream see PUTs and DELETEs with
/// prev_kv when asked, filters drop their event kind, etcd's refusals and ids, cancel, and
/// every event header carries its revision and the member. Method: one member; watches with
/// different options on one stream; writes; a progress request marks the end of what must have
/// arrived, so that missing and extra events both fail.
#[tokio::test(flavor = "multi_thread")]
async fn watch_keys_prefixes_filters_and_cancel() {
    let cluster = Cluster::start(1, &[]);
    let endpoint = cluster.members[0].endpoint();
    common::wait_ready(&endpoint).await;
    let mut client = kv(&endpoint).await;
    let start = put_rev(&mut client, "unrelated", "x").await;

    let mut stream = open(&endpoint).await;
    let (key_id, created) = stream
        .watch(pb::WatchCreateRequest {
            prev_kv: true,
            ..create("foo", b"")
        })
        .await;
    assert_eq!(key_id, 0, "etcd assigns 0 to the first watch of a stream");
    let header = created.header.expect("a header");
    assert_eq!(header.revision, start);
    assert_ne!(header.cluster_id, 0);
    assert_ne!(header.member_id, 0);
    assert!(header.raft_term >= 1);
    let (prefix_id, _) = stream.watch(create("dir/", &prefix_end("dir/"))).await;
    assert_eq!(prefix_id, 1);
    let (no_delete_id, _) = stream
        .watch(pb::WatchCreateRequest {
            watch_id: 10,
            filters: vec![FilterType::Nodelete as i32],
            ..create("foo", b"")
        })
        .await;
    assert_eq!(no_delete_id, 10, "a watch id chosen by the client");
    let (no_put_id, _) = stream
        .watch(pb::WatchCreateRequest {
            filters: vec![FilterType::Noput as i32],
            ..create("", b"\0")
        })
        .await;
    assert_eq!(no_put_id, 2);

    // etcd's refusals: a created response that is canceled, with the reason.
    stream
        .create(pb::WatchCreateRequest {
            watch_id: 10,
            ..create("bar", b"")
        })
        .await;
    let duplicate = stream.next().await;
    assert!(duplicate.created && duplicate.canceled, "{duplicate:?}");
    assert_eq!(duplicate.watch_id, -1);
    assert_eq!(
        duplicate.cancel_reason,
        "mvcc: duplicate watch ID provided on the WatchStream"
    );
    stream.create(create("b", b"a")).await;
    let empty = stream.next().await;
    assert!(empty.created && empty.canceled, "{empty:?}");
    assert_eq!(empty.cancel_reason, "mvcc: watcher range is empty");

    let r1 = put_rev(&mut client, "foo", "1").await;
    let r2 = put_rev(&mut client, "dir/a", "x").await;
    let r3 = put_rev(&mut client, "foo", "2").await;
    let r4 = client
        .delete_range(pb::DeleteRangeRequest {
            key: "foo".into(),
            ..Default::default()
        })
        .await
        .expect("delete")
        .into_inner()
        .header
        .expect("a header")
        .revision;
    let _ = put_rev(&mut client, "other", "y").await;

    let (responses, progress) = stream.until_progress().await;
    assert!(progress >= r4);
    for response in &responses {
        let revision = response.header.as_ref().expect("a header").revision;
        assert!(
            response
                .events
                .iter()
                .all(|e| e.kv.as_ref().unwrap().mod_revision == revision),
            "events grouped per revision with that revision in the header: {response:?}"
        );
    }
    let s = |v: &str| v.to_string();
    let expected = BTreeMap::from([
        (
            key_id,
            vec![
                (PUT, s("foo"), s("1"), r1, None),
                (PUT, s("foo"), s("2"), r3, Some(s("1"))),
                (DELETE, s("foo"), s(""), r4, Some(s("2"))),
            ],
        ),
        (prefix_id, vec![(PUT, s("dir/a"), s("x"), r2, None)]),
        (no_put_id, vec![(DELETE, s("foo"), s(""), r4, None)]),
        (
            no_delete_id,
            vec![
                (PUT, s("foo"), s("1"), r1, None),
                (PUT, s("foo"), s("2"), r3, None),
            ],
        ),
    ]);
    assert_eq!(by_watch(&responses), expected);

    // Cancel: a canceled response, then nothing more for that watch.
    stream
        .send(RequestUnion::CancelRequest(pb::WatchCancelRequest {
            watch_id: key_id,
        }))
        .await;
    let canceled = stream.next().await;
    assert!(
        canceled.canceled && canceled.watch_id == key_id,
        "{canceled:?}"
    );
    let r5 = put_rev(&mut client, "foo", "3").await;
    let (responses, _) = stream.until_progress().await;
    let expected = BTreeMap::from([(no_delete_id, vec![(PUT, s("foo"), s("3"), r5, None)])]);
    assert_eq!(by_watch(&responses), expected);

    // An open watch stream does not hold up a graceful stop; the client sees its stream end.
    let mut cluster = cluster;
    assert!(cluster.members[0].terminate(), "{}", cluster.logs());
    assert!(
        !cluster.members[0].log().contains("did not stop"),
        "{}",
        cluster.logs()
    );
    let end = tokio::time::timeout(GUARD, stream.rx.message()).await;
    assert!(matches!(end, Ok(Ok(None)) | Ok(Err(_))), "{end:?}");
}

/// Goal: a watch from a past revision replays the history in order, a start revision below
/// the compacted one gets etcd's created-then-canceled answer with the compacted revision,
/// and progress_notify watchers get empty responses at the configured interval. Method: one
/// member with a 300ms progress interval; writes, a compaction, watches from the past.
#[tokio::test(flavor = "multi_thread")]
async fn watch_history_compaction_and_progress_notify() {
    let cluster = Cluster::start(1, &["--experimental-watch-progress-notify-interval=300ms"]);
    let endpoint = cluster.members[0].endpoint();
    common::wait_ready(&endpoint).await;
    let mut client = kv(&endpoint).await;
    let mut revisions = Vec::new();
    for i in 0..6 {
        revisions.push(put_rev(&mut client, "hist", &i.to_string()).await);
    }

    let mut stream = open(&endpoint).await;
    let (id, _) = stream
        .watch(pb::WatchCreateRequest {
            start_revision: revisions[1],
            prev_kv: true,
            ..create("hist", b"")
        })
        .await;
    let (responses, _) = stream.until_progress().await;
    let replayed: Vec<(i64, String, Option<String>)> = by_watch(&responses)
        .remove(&id)
        .unwrap_or_default()
        .into_iter()
        .map(|(_, _, value, revision, prev)| (revision, value, prev))
        .collect();
    let expected: Vec<(i64, String, Option<String>)> = (1..6)
        .map(|i| (revisions[i], i.to_string(), Some((i - 1).to_string())))
        .collect();
    assert_eq!(replayed, expected);

    let compact_at = revisions[3];
    client
        .compact(pb::CompactionRequest {
            revision: compact_at,
            physical: true,
        })
        .await
        .expect("compact");
    let mut old = open(&endpoint).await;
    let (old_id, _) = old
        .watch(pb::WatchCreateRequest {
            start_revision: revisions[1],
            ..create("hist", b"")
        })
        .await;
    let compacted = old.next().await;
    assert_eq!(compacted.watch_id, old_id);
    assert_eq!(compacted.compact_revision, compact_at);
    assert!(compacted.canceled, "{compacted:?}");
    assert!(compacted.events.is_empty());

    // progress_notify: with no writes, an empty response for the watch, at the current revision.
    let (notify_id, _) = stream
        .watch(pb::WatchCreateRequest {
            progress_notify: true,
            ..create("quiet", b"")
        })
        .await;
    let notification = stream.next().await;
    assert_eq!(notification.watch_id, notify_id, "{notification:?}");
    assert!(notification.events.is_empty() && !notification.canceled);
    assert_eq!(
        notification.header.expect("a header").revision,
        revisions[5]
    );
}

/// Goal: a watch served by a follower sees the writes made through another member, in order.
/// Method: three members; a prefix watch on a follower; writes through the leader.
#[tokio::test(flavor = "multi_thread")]
async fn watch_on_a_follower_sees_writes_through_the_leader() {
    let cluster = Cluster::start(3, &[]);
    for member in &cluster.members {
        common::wait_ready(&member.endpoint()).await;
    }
    let leader_id = eventually("find the leader", || async {
        let mut client = maintenance(&cluster.members[0].endpoint()).await;
        let status = client.status(pb::StatusRequest {}).await?.into_inner();
        if status.leader == 0 {
            return Err(tonic::Status::unavailable("no leader yet"));
        }
        Ok(status.leader)
    })
    .await;
    let mut ids = Vec::new();
    for member in &cluster.members {
        let mut client = maintenance(&member.endpoint()).await;
        let status = client.status(pb::StatusRequest {}).await.expect("status");
        ids.push(status.into_inner().header.expect("a header").member_id);
    }
    let leader = ids
        .iter()
        .position(|id| *id == leader_id)
        .expect("the leader");
    let follower = (leader + 1) % 3;

    let mut stream = open(&cluster.members[follower].endpoint()).await;
    let (id, created) = stream.watch(create("f/", &prefix_end("f/"))).await;
    assert_eq!(created.header.expect("a header").member_id, ids[follower]);
    let mut written = Vec::new();
    for i in 0..10 {
        let key = format!("f/{i}");
        let response = put_retrying(&cluster.members[leader].endpoint(), &key, "v").await;
        written.push((key, response.header.expect("a header").revision));
    }
    let mut got = Vec::new();
    while got.len() < written.len() {
        let response = stream.next().await;
        assert_eq!(response.watch_id, id);
        got.extend(response.events.iter().map(|e| {
            let kv = e.kv.clone().unwrap_or_default();
            (
                String::from_utf8_lossy(&kv.key).into_owned(),
                kv.mod_revision,
            )
        }));
    }
    assert_eq!(got, written, "{}", cluster.logs());
}

/// Goal: a watcher that does not read its stream neither blocks writes nor other watchers, and
/// later receives every event exactly once and in order (caught up from the history). Method:
/// two streams watch one prefix; one is not read while concurrent writers put several
/// megabytes (far more than the stream buffers and HTTP/2 windows hold); all writes must
/// complete; then both streams are read to the end.
#[tokio::test(flavor = "multi_thread")]
async fn slow_watcher_does_not_block_and_catches_up() {
    let cluster = Cluster::start(1, &[]);
    let endpoint = cluster.members[0].endpoint();
    common::wait_ready(&endpoint).await;
    let mut slow = open(&endpoint).await;
    let (slow_id, _) = slow.watch(create("s/", &prefix_end("s/"))).await;
    let mut fast = open(&endpoint).await;
    let (fast_id, _) = fast.watch(create("s/", &prefix_end("s/"))).await;

    let writers = 4;
    let per_writer = 300;
    let value = "x".repeat(8 * 1024);
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..writers {
        let mut client = kv(&endpoint).await;
        let value = value.clone();
        tasks.spawn(async move {
            let mut revisions = Vec::new();
            for i in 0..per_writer {
                let key = format!("s/{w}/{i:04}");
                let response = client.put(put(&key, &value)).await.expect("a write");
                revisions.push(response.into_inner().header.unwrap().revision);
            }
            revisions
        });
    }
    // The fast stream is read while the writes happen.
    let total = writers * per_writer;
    let mut fast_seen = Vec::new();
    while fast_seen.len() < total {
        let response = fast.next().await;
        assert_eq!(response.watch_id, fast_id);
        fast_seen.extend(
            response
                .events
                .iter()
                .map(|e| e.kv.as_ref().unwrap().mod_revision),
        );
    }
    let mut written = Vec::new();
    while let Some(joined) = tokio::time::timeout(GUARD, tasks.join_next())
        .await
        .expect("the writes finish although one watcher reads nothing")
    {
        written.extend(joined.expect("a writer"));
    }
    written.sort_unstable();
    assert_eq!(written.len(), total);
    assert_eq!(fast_seen, written);

    let mut slow_seen = Vec::new();
    while slow_seen.len() < total {
        let response = slow.next().await;
        assert_eq!(response.watch_id, slow_id, "{response:?}");
        assert!(!response.canceled, "{response:?}");
        slow_seen.extend(
            response
                .events
                .iter()
                .map(|e| e.kv.as_ref().unwrap().mod_revision),
        );
    }
    assert_eq!(slow_seen, written, "every event once, in order");
    let (extra, _) = slow.until_progress().await;
    assert!(extra.iter().all(|r| r.events.is_empty()), "{extra:?}");
}

/// Goal: a watcher asking for fragments gets a response over --max-request-bytes split, all
/// parts but the last marked, no event lost; a watcher that did not ask gets it whole. Method:
/// --max-request-bytes=4096; eight keys of 2 KiB deleted in one request, watched with prev_kv,
/// so that one revision carries about 16 KiB.
#[tokio::test(flavor = "multi_thread")]
async fn fragmented_responses() {
    let cluster = Cluster::start(1, &["--max-request-bytes=4096"]);
    let endpoint = cluster.members[0].endpoint();
    common::wait_ready(&endpoint).await;
    let mut client = kv(&endpoint).await;
    let value = "y".repeat(2048);
    for i in 0..8 {
        put_rev(&mut client, &format!("frag/{i}"), &value).await;
    }
    let mut stream = open(&endpoint).await;
    let watch = |fragment: bool| pb::WatchCreateRequest {
        prev_kv: true,
        fragment,
        ..create("frag/", &prefix_end("frag/"))
    };
    let (split_id, _) = stream.watch(watch(true)).await;
    let (whole_id, _) = stream.watch(watch(false)).await;
    let deleted = client
        .delete_range(pb::DeleteRangeRequest {
            key: "frag/".into(),
            range_end: prefix_end("frag/").into(),
            ..Default::default()
        })
        .await
        .expect("delete the prefix")
        .into_inner();
    assert_eq!(deleted.deleted, 8);
    let revision = deleted.header.expect("a header").revision;

    let (responses, _) = stream.until_progress().await;
    let parts: Vec<&pb::WatchResponse> = responses
        .iter()
        .filter(|r| r.watch_id == split_id)
        .collect();
    assert!(
        parts.len() > 1,
        "the revision was split: {} parts",
        parts.len()
    );
    for (i, part) in parts.iter().enumerate() {
        assert_eq!(part.fragment, i + 1 < parts.len(), "part {i}");
        assert_eq!(part.header.as_ref().expect("a header").revision, revision);
    }
    let whole: Vec<&pb::WatchResponse> = responses
        .iter()
        .filter(|r| r.watch_id == whole_id)
        .collect();
    assert_eq!(whole.len(), 1);
    assert!(!whole[0].fragment);
    let events = by_watch(&responses);
    assert_eq!(events[&split_id], events[&whole_id]);
    assert_eq!(events[&split_id].len(), 8);
    assert!(
        events[&split_id]
            .iter()
            .all(|e| e.0 == DELETE && e.4.as_deref() == Some(&value[..]))
    );
}
