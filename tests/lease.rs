//! etcd's `Lease` service against real `chorus serve` processes: grant, revoke, keep-alive,
//! time-to-live, leases, expiry decided by the leader, and leases that outlive a leader.

mod common;

use std::time::Duration;

use chorus_proto::etcdserverpb as pb;
use chorus_proto::mvccpb;
use common::{Cluster, GUARD, eventually, get, kv, leader_index, put, wait_ready};
use pb::lease_client::LeaseClient;
use pb::watch_client::WatchClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::Channel;

fn channel(endpoint: &str) -> Channel {
    Channel::from_shared(endpoint.to_string())
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(20))
        .connect_lazy()
}

fn lease(endpoint: &str) -> LeaseClient<Channel> {
    LeaseClient::new(channel(endpoint))
}

fn leased_put(key: &str, lease: i64) -> pb::PutRequest {
    pb::PutRequest {
        lease,
        ..put(key, "v")
    }
}

fn grant(ttl: i64, id: i64) -> pb::LeaseGrantRequest {
    pb::LeaseGrantRequest { ttl, id }
}

fn time_to_live(id: i64) -> pb::LeaseTimeToLiveRequest {
    pb::LeaseTimeToLiveRequest { id, keys: true }
}

/// A keep-alive stream: one request in, one answer out.
struct KeepAlive {
    tx: mpsc::Sender<pb::LeaseKeepAliveRequest>,
    rx: tonic::Streaming<pb::LeaseKeepAliveResponse>,
}

impl KeepAlive {
    async fn open(endpoint: &str) -> Result<KeepAlive, tonic::Status> {
        let (tx, requests) = mpsc::channel(4);
        let rx = lease(endpoint)
            .lease_keep_alive(ReceiverStream::new(requests))
            .await?
            .into_inner();
        Ok(KeepAlive { tx, rx })
    }

    async fn renew(&mut self, id: i64) -> Result<pb::LeaseKeepAliveResponse, tonic::Status> {
        self.tx
            .send(pb::LeaseKeepAliveRequest { id })
            .await
            .map_err(|_| tonic::Status::unavailable("the stream is closed"))?;
        match tokio::time::timeout(GUARD, self.rx.message()).await {
            Ok(Ok(Some(response))) => Ok(response),
            Ok(Ok(None)) => Err(tonic::Status::unavailable("the stream ended")),
            Ok(Err(status)) => Err(status),
            Err(_) => panic!("no keep-alive answer within {GUARD:?}"),
        }
    }
}

/// The events of the first response with events of a watch on `key`..`range_end` from
/// `start_revision`.
async fn events_from(
    endpoint: &str,
    key: &str,
    range_end: &str,
    start_revision: i64,
) -> Vec<mvccpb::Event> {
    let (tx, requests) = mpsc::channel(1);
    let create = pb::WatchCreateRequest {
        key: key.as_bytes().to_vec().into(),
        range_end: range_end.as_bytes().to_vec().into(),
        start_revision,
        ..Default::default()
    };
    tx.send(pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(create)),
    })
    .await
    .unwrap();
    let mut stream = WatchClient::new(channel(endpoint))
        .watch(ReceiverStream::new(requests))
        .await
        .expect("open a watch")
        .into_inner();
    loop {
        let response = tokio::time::timeout(GUARD, stream.message())
            .await
            .expect("a watch response in time")
            .expect("a healthy stream")
            .expect("an open stream");
        if !response.events.is_empty() {
            return response.events;
        }
    }
}

fn key_names(events: &[mvccpb::Event]) -> Vec<(i32, String, i64)> {
    events
        .iter()
        .map(|e| {
            let kv = e.kv.clone().unwrap_or_default();
            (
                e.r#type,
                String::from_utf8_lossy(&kv.key).into_owned(),
                kv.mod_revision,
            )
        })
        .collect()
}

/// Goal: every Lease RPC answers as etcd's does on one member: grants (given and chosen ids,
/// the minimum TTL, "lease already exists", "too large lease TTL"), puts with and without a
/// granted lease, TimeToLive with keys, Leases, KeepAlive (TTL 0 for an unknown lease), and a
/// revocation that deletes the lease's keys at one revision, seen by a watch as DELETE events.
/// Method: one member, each answer checked field by field.
#[tokio::test(flavor = "multi_thread")]
async fn lease_rpcs_on_one_member() {
    let cluster = Cluster::start(1, &[]);
    let endpoint = cluster.members[0].endpoint();
    wait_ready(&endpoint).await;
    let mut leases = lease(&endpoint);
    let mut kv = kv(&endpoint).await;

    let granted = leases
        .lease_grant(grant(60, 77))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (granted.id, granted.ttl, granted.error.as_str()),
        (77, 60, "")
    );
    assert!(granted.header.unwrap().revision >= 1);
    let chosen = leases.lease_grant(grant(0, 0)).await.unwrap().into_inner();
    assert!(chosen.id > 0, "{chosen:?}");
    // --election-timeout=500: the minimum TTL is 0.75 s rounded up.
    assert_eq!(chosen.ttl, 1);

    let exists = leases.lease_grant(grant(30, 77)).await.unwrap_err();
    assert_eq!(exists.code(), Code::FailedPrecondition);
    assert_eq!(exists.message(), "etcdserver: lease already exists");
    let too_large = leases
        .lease_grant(grant(9_000_000_001, 5))
        .await
        .unwrap_err();
    assert_eq!(too_large.code(), Code::OutOfRange);
    assert_eq!(too_large.message(), "etcdserver: too large lease TTL");

    kv.put(leased_put("l/a", 77)).await.unwrap();
    kv.put(leased_put("l/b", 77)).await.unwrap();
    kv.put(put("l/c", "no lease")).await.unwrap();
    let missing = kv.put(leased_put("l/d", 999)).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    assert_eq!(missing.message(), "etcdserver: requested lease not found");
    let read = kv.range(get("l/a")).await.unwrap().into_inner();
    assert_eq!(read.kvs[0].lease, 77);

    let ttl = leases
        .lease_time_to_live(time_to_live(77))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((ttl.id, ttl.granted_ttl), (77, 60));
    assert!((1..=60).contains(&ttl.ttl), "{ttl:?}");
    assert_eq!(ttl.keys, vec![b"l/a".to_vec(), b"l/b".to_vec()]);
    let unknown = leases
        .lease_time_to_live(time_to_live(999))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((unknown.id, unknown.ttl, unknown.granted_ttl), (999, -1, 0));

    let listed = leases
        .lease_leases(pb::LeaseLeasesRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut ids: Vec<i64> = listed.leases.iter().map(|l| l.id).collect();
    ids.sort_unstable();
    let mut expected = vec![77, chosen.id];
    expected.sort_unstable();
    assert_eq!(ids, expected);

    let mut keep = KeepAlive::open(&endpoint).await.unwrap();
    let renewed = keep.renew(77).await.unwrap();
    assert_eq!((renewed.id, renewed.ttl), (77, 60));
    let renewed = keep.renew(999).await.unwrap();
    assert_eq!((renewed.id, renewed.ttl), (999, 0));

    let revoked = leases
        .lease_revoke(pb::LeaseRevokeRequest { id: 77 })
        .await
        .unwrap()
        .into_inner();
    let at = revoked.header.unwrap().revision;
    let events = events_from(&endpoint, "l/", "l0", at).await;
    assert_eq!(
        key_names(&events),
        [(1, "l/a".to_string(), at), (1, "l/b".to_string(), at)]
    );
    let left = kv
        .range(pb::RangeRequest {
            key: "l/".into(),
            range_end: "l0".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(left.count, 1, "only the key without a lease is left");
    let gone = leases
        .lease_revoke(pb::LeaseRevokeRequest { id: 77 })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    assert_eq!(gone.message(), "etcdserver: requested lease not found");
    let renewed = keep.renew(77).await.unwrap();
    assert_eq!(renewed.ttl, 0, "a revoked lease cannot be renewed");
}

/// Goal: the leader expires a lease nobody keeps alive and deletes its keys on every member; a
/// lease kept alive through a follower lives on; it outlives the leader's death (kill -9) and
/// the new leader keeps honouring keep-alives; once they stop, it expires too. Method: three
/// members; keep-alives every 300 ms for a 3 s lease; the outcome of expiry is awaited (bounded
/// by the test guard), never timed.
#[tokio::test(flavor = "multi_thread")]
async fn leases_expire_on_the_leader_and_outlive_it() {
    let mut cluster = Cluster::start(3, &[]);
    for member in &cluster.members {
        wait_ready(&member.endpoint()).await;
    }
    let leader = leader_index(&cluster).await;
    let follower = (leader + 1) % 3;
    let follower_endpoint = cluster.members[follower].endpoint();
    let mut leases = lease(&follower_endpoint);

    // A short lease nobody renews: its key disappears from every member.
    let short = leases.lease_grant(grant(1, 0)).await.unwrap().into_inner();
    kv(&follower_endpoint)
        .await
        .put(leased_put("short", short.id))
        .await
        .unwrap();
    for member in &cluster.members {
        let endpoint = member.endpoint();
        eventually("the short lease's key expires", || {
            let endpoint = endpoint.clone();
            async move {
                let mut request = get("short");
                request.serializable = true;
                let found = kv(&endpoint).await.range(request).await?.into_inner();
                if found.count == 0 {
                    Ok(())
                } else {
                    Err(tonic::Status::unknown("still there"))
                }
            }
        })
        .await;
    }

    // A lease kept alive through a follower, across the leader's death.
    let kept = leases.lease_grant(grant(3, 0)).await.unwrap().into_inner();
    kv(&follower_endpoint)
        .await
        .put(leased_put("kept", kept.id))
        .await
        .unwrap();
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let renewer_endpoint = follower_endpoint.clone();
    let renewer = tokio::spawn(async move {
        let mut renewals = 0u32;
        let mut stream = None;
        loop {
            if *stop_rx.borrow() {
                return renewals;
            }
            if stream.is_none() {
                stream = KeepAlive::open(&renewer_endpoint).await.ok();
            }
            if let Some(open) = stream.as_mut() {
                match open.renew(kept.id).await {
                    Ok(response) => {
                        assert_eq!(response.ttl, 3, "the kept lease was lost: {response:?}");
                        renewals += 1;
                    }
                    // No leader for a moment: open a new stream and go on.
                    Err(_) => stream = None,
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                _ = stop_rx.changed() => {}
            }
        }
    });
    // Several TTLs of renewals, with the leader killed in the middle.
    tokio::time::sleep(Duration::from_secs(4)).await;
    cluster.members[leader].kill();
    let new_leader = leader_index(&cluster).await;
    assert_ne!(new_leader, leader);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let ttl = eventually("time to live of the kept lease", || {
        let mut leases = leases.clone();
        async move {
            leases
                .lease_time_to_live(time_to_live(kept.id))
                .await
                .map(|r| r.into_inner())
        }
    })
    .await;
    assert_eq!(ttl.granted_ttl, 3, "{ttl:?}");
    assert!(ttl.ttl >= 1, "kept alive across the leader change: {ttl:?}");
    assert_eq!(ttl.keys, vec![b"kept".to_vec()]);
    stop_tx.send(true).unwrap();
    let renewals = renewer.await.unwrap();
    assert!(renewals >= 10, "renewed only {renewals} times");

    // Without keep-alives the new leader expires it.
    eventually("the kept lease expires once not renewed", || {
        let mut leases = leases.clone();
        async move {
            let ttl = leases
                .lease_time_to_live(time_to_live(kept.id))
                .await?
                .into_inner();
            if ttl.ttl == -1 {
                Ok(())
            } else {
                Err(tonic::Status::unknown(format!("still alive: {ttl:?}")))
            }
        }
    })
    .await;
    let mut request = get("kept");
    request.serializable = false;
    let found = kv(&follower_endpoint)
        .await
        .range(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.count, 0, "{}", cluster.logs());
}
