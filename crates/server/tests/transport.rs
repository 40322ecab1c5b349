//! Loopback tests of the peer transport: real gRPC over TCP on 127.0.0.1 with ports chosen by
//! the system. Timeouts here only guard against a hang; no test asserts on elapsed time.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use chorus_proto::peer as pb;
use chorus_proto::peer::peer_client::PeerClient;
use chorus_raft::{
    ConfState, GroupId, LogIndex, Message, MessageBody, NodeId, Snapshot, SnapshotMeta, Term,
};
use chorus_server::transport::convert::message_to_proto;
use chorus_server::transport::snapshot::snapshot_chunks;
use chorus_server::transport::{
    LocalIdentity, PeerService, PeerTransport, TransportConfig, TransportReport, serve,
};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::{Channel, Endpoint};

const GUARD: Duration = Duration::from_secs(30);

/// Fails the test if `future` does not complete within the guard.
async fn guarded<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

fn config() -> TransportConfig {
    TransportConfig {
        peer_queue_msgs_max: 1024,
        batch_msgs_max: 16,
        reconnect_backoff_min: Duration::from_millis(5),
        reconnect_backoff_max: Duration::from_millis(100),
        connect_timeout: Duration::from_secs(2),
        // Longer than the guard: a shutdown that only ends by the grace period fails a test.
        shutdown_grace: Duration::from_secs(120),
        ..TransportConfig::default()
    }
}

fn identity(cluster_id: u64, member: u64) -> LocalIdentity {
    LocalIdentity {
        cluster_id,
        member_id: NodeId(member),
    }
}

/// A running peer server; dropping it stops the server.
struct RunningServer {
    url: String,
    inbound: mpsc::Receiver<Message>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningServer {
    /// Asks the server to stop and waits until it has.
    async fn shutdown(self) {
        let _ = self.stop.send(());
        self.task.await.expect("server task");
    }
}

async fn start_server_on(listener: TcpListener, local: LocalIdentity) -> RunningServer {
    let url = format!("http://{}", listener.local_addr().expect("local addr"));
    let (service, inbound) = PeerService::new(config(), local).expect("valid config");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        serve(listener, service, async {
            let _ = stopped.await;
        })
        .await
        .expect("server runs");
    });
    RunningServer {
        url,
        inbound,
        stop,
        task,
    }
}

async fn start_server(local: LocalIdentity) -> RunningServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    start_server_on(listener, local).await
}

/// A loopback address where nothing listens (yet).
async fn unused_address() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("local addr")
}

fn numbered(from: u64, to: u64, n: u64) -> Message {
    Message {
        group_id: GroupId(1),
        from: NodeId(from),
        to: NodeId(to),
        term: Term(n),
        body: MessageBody::Heartbeat {
            commit: LogIndex(n),
            context: Bytes::from(vec![1u8; 32]),
        },
    }
}

async fn receive(inbound: &mut mpsc::Receiver<Message>, count: usize) -> Vec<Message> {
    let mut received = Vec::with_capacity(count);
    while received.len() < count {
        received.push(inbound.recv().await.expect("inbound open"));
    }
    received
}

async fn wait_for_report(reports: &mut mpsc::Receiver<TransportReport>, wanted: TransportReport) {
    while reports.recv().await.expect("reports open") != wanted {}
}

async fn raw_client(url: &str) -> PeerClient<Channel> {
    let channel = Endpoint::from_shared(url.to_string())
        .expect("valid url")
        .connect()
        .await
        .expect("connect");
    PeerClient::new(channel)
}

// Goal: two transports exchange many messages, in batches, each side receiving them in the
// order they were sent. Method: members 1 and 2 send 500 numbered messages to each other with a
// batch limit of 16, and compare what arrives with what was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_transports_exchange_batches_in_order() {
    let mut server1 = start_server(identity(7, 1)).await;
    let mut server2 = start_server(identity(7, 2)).await;
    let (transport1, _reports1) = PeerTransport::new(config(), identity(7, 1)).expect("config");
    let (transport2, _reports2) = PeerTransport::new(config(), identity(7, 2)).expect("config");
    transport1.add_peer(NodeId(2), server2.url.clone());
    transport2.add_peer(NodeId(1), server1.url.clone());

    let count = 500;
    let to_2: Vec<Message> = (0..count).map(|n| numbered(1, 2, n)).collect();
    let to_1: Vec<Message> = (0..count).map(|n| numbered(2, 1, n)).collect();
    for (a, b) in to_2.iter().zip(&to_1) {
        transport1.send(a.clone());
        transport2.send(b.clone());
    }
    let at_2 = guarded(
        "messages at 2",
        receive(&mut server2.inbound, count as usize),
    )
    .await;
    let at_1 = guarded(
        "messages at 1",
        receive(&mut server1.inbound, count as usize),
    )
    .await;
    assert_eq!(at_2, to_2);
    assert_eq!(at_1, to_1);

    let stats = transport1.stats();
    assert_eq!(stats.msgs_dropped_queue_full, 0);
    assert_eq!(stats.msgs_sent, count);
    assert!(
        stats.batches_sent >= count / 16,
        "batches of at most 16: {stats:?}"
    );
}

fn snapshot_message(from: u64, to: u64, data_bytes: usize) -> Message {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let data: Vec<u8> = (0..data_bytes)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    Message {
        group_id: GroupId(1),
        from: NodeId(from),
        to: NodeId(to),
        term: Term(9),
        body: MessageBody::Snapshot {
            snapshot: Snapshot {
                meta: SnapshotMeta {
                    index: LogIndex(1000),
                    term: Term(8),
                    conf_state: ConfState::with_voters([NodeId(1), NodeId(2), NodeId(3)]),
                },
                data: Bytes::from(data),
            },
        },
    }
}

// Goal: a snapshot of several MiB crosses in chunks and arrives whole and checked, and the
// sender reports success. Method: send a 3 MiB snapshot with 256 KiB chunks and compare.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_of_several_mib_is_streamed_and_verified() {
    let mut server2 = start_server(identity(7, 2)).await;
    let config = TransportConfig {
        snapshot_chunk_bytes_max: 256 * 1024,
        ..config()
    };
    let (transport1, mut reports) = PeerTransport::new(config, identity(7, 1)).expect("config");
    transport1.add_peer(NodeId(2), server2.url.clone());

    let snapshot = snapshot_message(1, 2, 3 * 1024 * 1024 + 17);
    transport1.send(snapshot.clone());
    let received = guarded("snapshot", server2.inbound.recv())
        .await
        .expect("inbound open");
    assert_eq!(received, snapshot);
    guarded(
        "report",
        wait_for_report(
            &mut reports,
            TransportReport::Snapshot {
                to: NodeId(2),
                ok: true,
            },
        ),
    )
    .await;
    assert_eq!(transport1.stats().snapshots_sent, 1);
}

// Goal: a snapshot whose checksum does not match is refused with DATA_LOSS, and the same
// server then accepts a correct one. Method: stream chunks by hand with a flipped CRC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_snapshot_is_refused() {
    let mut server2 = start_server(identity(7, 2)).await;
    let mut client = raw_client(&server2.url).await;
    let snapshot = snapshot_message(1, 2, 100_000);
    let mut chunks = snapshot_chunks(identity(7, 1).to_proto(), &snapshot, 16 * 1024);
    chunks.last_mut().expect("chunks").data_crc32c ^= 0xFFFF;
    let status = client
        .install_snapshot(tokio_stream::iter(chunks))
        .await
        .expect_err("a corrupt snapshot is refused");
    assert_eq!(status.code(), tonic::Code::DataLoss, "{status}");
    assert!(status.message().contains("checksum mismatch"), "{status}");

    let chunks = snapshot_chunks(identity(7, 1).to_proto(), &snapshot, 16 * 1024);
    let ack = client
        .install_snapshot(tokio_stream::iter(chunks))
        .await
        .expect("accepted");
    assert_eq!(ack.into_inner().bytes_received, 100_000);
    let received = guarded("snapshot", server2.inbound.recv())
        .await
        .expect("inbound open");
    assert_eq!(received, snapshot);
}

// Goal: messages to a member that is down wait in its queue while the transport retries with
// backoff, and flow in order once the member starts. Method: send to an address where nothing
// listens, wait until several connection attempts have failed, then start the server there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_peer_is_retried_until_it_starts() {
    let address = unused_address().await;
    let (transport1, mut reports) = PeerTransport::new(config(), identity(7, 1)).expect("config");
    transport1.add_peer(NodeId(2), format!("http://{address}"));
    let sent: Vec<Message> = (0..10).map(|n| numbered(1, 2, n)).collect();
    for message in &sent {
        transport1.send(message.clone());
    }
    guarded(
        "unreachable report",
        wait_for_report(&mut reports, TransportReport::Unreachable(NodeId(2))),
    )
    .await;
    guarded("three failed attempts", async {
        while transport1.stats().connect_failures < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(
        transport1.stats().msgs_sent,
        0,
        "nothing can have been sent yet"
    );

    let listener = TcpListener::bind(address)
        .await
        .expect("rebind the address");
    let mut server2 = start_server_on(listener, identity(7, 2)).await;
    let received = guarded(
        "messages after start",
        receive(&mut server2.inbound, sent.len()),
    )
    .await;
    assert_eq!(received, sent);
}

// Goal: a full queue drops messages instead of blocking the caller, counts them and reports
// the member unreachable. Method: a queue of 8 to a member that is down, and 1000 sends; the
// sends must all return, and all but the few queued or held for retry must be dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_drops_instead_of_blocking() {
    let address = unused_address().await;
    let config = TransportConfig {
        peer_queue_msgs_max: 8,
        batch_msgs_max: 4,
        ..config()
    };
    let (transport1, mut reports) = PeerTransport::new(config, identity(7, 1)).expect("config");
    transport1.add_peer(NodeId(2), format!("http://{address}"));
    for n in 0..1000 {
        transport1.send(numbered(1, 2, n));
    }
    let stats = transport1.stats();
    // At most 8 queued, plus one batch of 4 and one carried message held by the sender task.
    assert!(stats.msgs_dropped_queue_full >= 1000 - 13, "{stats:?}");
    assert_eq!(stats.msgs_sent, 0);
    guarded(
        "unreachable report",
        wait_for_report(&mut reports, TransportReport::Unreachable(NodeId(2))),
    )
    .await;

    // Sending to a member the transport does not know drops and reports too.
    transport1.send(numbered(1, 3, 0));
    assert_eq!(transport1.stats().msgs_dropped_no_peer, 1);
}

// Goal: a member of another cluster is refused at the handshake and on a stream, with an error
// naming both clusters, and nothing it sends reaches the node. Method: call the service by hand
// with a foreign cluster id, then point a whole transport of that cluster at it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_cluster_is_refused() {
    let mut server2 = start_server(identity(7, 2)).await;
    let mut client = raw_client(&server2.url).await;

    let request = pb::HandshakeRequest {
        from: Some(identity(8, 1).to_proto()),
        to_member_id: 2,
    };
    let status = client
        .handshake(request)
        .await
        .expect_err("foreign cluster refused");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert!(status.message().contains("cluster 0x8"), "{status}");
    assert!(status.message().contains("cluster 0x7"), "{status}");

    let request = pb::HandshakeRequest {
        from: Some(identity(7, 1).to_proto()),
        to_member_id: 3,
    };
    let status = client
        .handshake(request)
        .await
        .expect_err("wrong member refused");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert!(status.message().contains("this is member 0x2"), "{status}");

    let batch = pb::MessageBatch {
        from: Some(identity(8, 1).to_proto()),
        messages: vec![message_to_proto(&numbered(1, 2, 0))],
    };
    let status = client
        .send(tokio_stream::iter([batch]))
        .await
        .expect_err("stream refused");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);

    let (foreign, mut reports) = PeerTransport::new(config(), identity(8, 1)).expect("config");
    foreign.add_peer(NodeId(2), server2.url.clone());
    foreign.send(numbered(1, 2, 0));
    guarded("refusal", async {
        while foreign.stats().handshake_refusals == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    guarded(
        "unreachable report",
        wait_for_report(&mut reports, TransportReport::Unreachable(NodeId(2))),
    )
    .await;
    assert_eq!(foreign.stats().msgs_sent, 0);
    assert!(
        server2.inbound.try_recv().is_err(),
        "nothing from the foreign cluster arrived"
    );
}

// Goal: a malformed frame ends its stream with INVALID_ARGUMENT naming the problem, delivers
// nothing of its batch, and the server keeps serving. Method: a batch whose second message has
// no body, a message addressed to another member, then a good stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frame_is_refused_and_server_keeps_serving() {
    let mut server2 = start_server(identity(7, 2)).await;
    let mut client = raw_client(&server2.url).await;

    let mut broken = message_to_proto(&numbered(1, 2, 1));
    broken.body = None;
    let batch = pb::MessageBatch {
        from: Some(identity(7, 1).to_proto()),
        messages: vec![message_to_proto(&numbered(1, 2, 0)), broken],
    };
    let status = client
        .send(tokio_stream::iter([batch]))
        .await
        .expect_err("malformed");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("Message.body is missing"),
        "{status}"
    );

    let batch = pb::MessageBatch {
        from: Some(identity(7, 1).to_proto()),
        messages: vec![message_to_proto(&numbered(1, 3, 0))],
    };
    let status = client
        .send(tokio_stream::iter([batch]))
        .await
        .expect_err("misaddressed");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status
            .message()
            .contains("message to member 3 arrived at member 2"),
        "{status}"
    );

    let batch = pb::MessageBatch {
        from: None,
        messages: vec![],
    };
    let status = client
        .send(tokio_stream::iter([batch]))
        .await
        .expect_err("anonymous");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        server2.inbound.try_recv().is_err(),
        "nothing of a refused batch was delivered"
    );

    let good = numbered(1, 2, 5);
    let batches = [
        pb::MessageBatch {
            from: Some(identity(7, 1).to_proto()),
            messages: vec![message_to_proto(&good)],
        },
        pb::MessageBatch {
            from: None,
            messages: vec![message_to_proto(&good)],
        },
    ];
    let ack = client
        .send(tokio_stream::iter(batches))
        .await
        .expect("good stream accepted");
    assert_eq!(ack.into_inner().batches_received, 2);
    let received = guarded("good messages", receive(&mut server2.inbound, 2)).await;
    assert_eq!(received, vec![good.clone(), good]);
}

// Goal: a server with open peer streams shuts down (it ends them instead of waiting for the
// peers), and the sender reconnects to the member's next incarnation at the same address.
// Method: deliver messages, stop the server, start a new one on the same address, and send
// until messages arrive there; those that arrive keep their order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_reconnects_after_peer_restart() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("local addr");
    let mut first = start_server_on(listener, identity(7, 2)).await;
    let (transport1, _reports) = PeerTransport::new(config(), identity(7, 1)).expect("config");
    transport1.add_peer(NodeId(2), first.url.clone());
    let before: Vec<Message> = (0..5).map(|n| numbered(1, 2, n)).collect();
    for message in &before {
        transport1.send(message.clone());
    }
    assert_eq!(
        guarded("first delivery", receive(&mut first.inbound, 5)).await,
        before
    );
    guarded("shutdown with an open stream", first.shutdown()).await;

    let listener = TcpListener::bind(address)
        .await
        .expect("rebind the address");
    let mut second = start_server_on(listener, identity(7, 2)).await;
    // Messages handed to the dead stream may be lost, as Raft allows; keep sending until the
    // new incarnation receives one. The pause only paces the loop.
    let mut n = 100;
    let first_received = guarded("delivery after restart", async {
        loop {
            transport1.send(numbered(1, 2, n));
            n += 1;
            tokio::select! {
                received = second.inbound.recv() => break received.expect("inbound open"),
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
    })
    .await;
    assert!(first_received.term.get() >= 100, "{first_received:?}");
    let last = numbered(1, 2, 1_000);
    transport1.send(last.clone());
    let mut previous = first_received.term;
    loop {
        let received = guarded("the last message", second.inbound.recv())
            .await
            .expect("open");
        assert!(
            received.term > previous,
            "order kept: {:?} after {previous:?}",
            received.term
        );
        previous = received.term;
        if received == last {
            break;
        }
    }
}
