use super::*;

use chorus_proto::etcdserverpb as pb;
use prost::Message as _;
use tokio::net::TcpListener;

use crate::transport::PeerService;

/// A leader stand-in: answers a put of key `n` (decimal) after `n % 7` ms with revision `n`,
/// a put of key `fail` with etcd's "key not found" error, and never a put of key `hang`.
async fn echo(request: ipb::forward_request::Request) -> WriteResult {
    let ipb::forward_request::Request::Put(put) = request else {
        return Err(Status::invalid_argument("only puts"));
    };
    if put.key.as_ref() == b"hang" {
        std::future::pending::<()>().await;
    }
    if put.key.as_ref() == b"fail" {
        return Err(Status::invalid_argument("etcdserver: key not found"));
    }
    let n: i64 = std::str::from_utf8(&put.key).unwrap().parse().unwrap();
    tokio::time::sleep(Duration::from_millis((n % 7) as u64)).await;
    Ok(ipb::forward_response::Response::Put(pb::PutResponse {
        header: Some(pb::ResponseHeader {
            revision: n,
            ..Default::default()
        }),
        prev_kv: None,
    }))
}

/// Serves the `echo` stand-in as member `member` on `listener` until `stop` fires.
fn serve(
    listener: TcpListener,
    member: NodeId,
    stop: oneshot::Receiver<()>,
) -> tokio::task::JoinHandle<()> {
    let (service, _raft_messages) =
        PeerService::new(TransportConfig::default(), identity(member)).expect("valid config");
    let service = service.accept_writes(|stream| {
        // Each write is answered by a task of its own, so that answers come out of order.
        let propose = |request, answer: StreamAnswer<WriteResult>| {
            tokio::spawn(async move { answer.send(echo(request).await) });
        };
        serve_stream(stream, Duration::from_secs(5), propose, |outcome| outcome);
    });
    tokio::spawn(async move {
        crate::transport::serve(listener, service, async {
            let _ = stop.await;
        })
        .await
        .unwrap();
    })
}

fn identity(member: NodeId) -> LocalIdentity {
    LocalIdentity {
        cluster_id: 0xc1,
        member_id: member,
    }
}

/// A forwarder of member 100 to the members at `urls`.
fn forwarder(urls: HashMap<NodeId, String>) -> Forwarder {
    Forwarder::new(identity(NodeId(100)), &TransportConfig::default(), urls)
}

fn put(key: &str) -> ipb::forward_request::Request {
    ipb::forward_request::Request::Put(pb::PutRequest {
        key: bytes::Bytes::copy_from_slice(key.as_bytes()),
        ..Default::default()
    })
}

fn revision(result: WriteResult) -> i64 {
    match result.unwrap() {
        ipb::forward_response::Response::Put(put) => put.header.unwrap().revision,
        other => panic!("not a put answer: {other:?}"),
    }
}

// Property: writes forwarded concurrently over the one stream each get their own answer, also
// when the leader finishes them out of order, and a request error keeps etcd's code and
// message.
// Method: 500 concurrent puts whose answers the stand-in delays by key; each answer's revision
// must be its own key; then one failing put.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_get_their_own_answers() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let leader = NodeId(7);
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (_stop, stopped) = oneshot::channel();
    serve(listener, leader, stopped);
    let forwarder = forwarder(HashMap::from([(leader, url)]));
    let writes = (0..500).map(|n| {
        let forwarder = forwarder.clone();
        tokio::spawn(async move { (n, forwarder.forward(leader, put(&n.to_string())).await) })
    });
    for write in writes {
        let (n, result) = write.await.unwrap();
        assert_eq!(revision(result), n);
    }
    assert_eq!(forwarder.streams.lock().unwrap().len(), 1, "one stream");
    let error = forwarder.forward(leader, put("fail")).await.unwrap_err();
    assert_eq!(
        (error.code(), error.message()),
        (Code::InvalidArgument, "etcdserver: key not found")
    );
}

/// Forwards every connection accepted on `listener` to `to`, until the task is aborted, which
/// drops every connection it carries (as a leader's crash would).
fn proxy(listener: TcpListener, to: std::net::SocketAddr) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        while let Ok((mut inbound, _)) = listener.accept().await {
            connections.spawn(async move {
                let mut outbound = tokio::net::TcpStream::connect(to).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    })
}

// Property: when the connection to the leader is lost, the writes waiting on its stream fail
// with etcd's "connection lost" timeout instead of hanging, and once the leader can be reached
// again a write opens a new stream and succeeds.
// Method: the forwarder reaches the stand-in through a proxy; 20 writes the stand-in never
// answers wait on the stream when the proxy (and every connection through it) is dropped; then
// a new proxy on the same address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_stream_fails_its_writes_and_is_replaced() {
    let server_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server_address = server_listener.local_addr().unwrap();
    let (_stop, stopped) = oneshot::channel();
    let leader = NodeId(7);
    serve(server_listener, leader, stopped);
    let proxy_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = proxy_listener.local_addr().unwrap();
    let first_proxy = proxy(proxy_listener, server_address);

    let forwarder = forwarder(HashMap::from([(leader, format!("http://{address}"))]));
    assert_eq!(revision(forwarder.forward(leader, put("1")).await), 1);
    let writes: Vec<_> = (0..20)
        .map(|_| {
            let forwarder = forwarder.clone();
            tokio::spawn(async move { forwarder.forward(leader, put("hang")).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    first_proxy.abort();
    let lost = Status::from(ServerError::TimeoutDueToConnectionLost);
    for write in writes {
        let error = tokio::time::timeout(Duration::from_secs(5), write)
            .await
            .expect("a waiting write fails once the stream is lost")
            .unwrap()
            .unwrap_err();
        assert_eq!(
            (error.code(), error.message()),
            (lost.code(), lost.message())
        );
    }

    proxy(TcpListener::bind(address).await.unwrap(), server_address);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match forwarder.forward(leader, put("2")).await {
            Ok(answer) => {
                assert_eq!(revision(Ok(answer)), 2);
                break;
            }
            // The channel reconnects in the background.
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("the forwarder did not recover: {error}"),
        }
    }
}

// Property: when the leader changes, the stream to the former leader ends once its writes are
// answered, instead of staying open for as long as the member runs.
// Method: one write to each of two stand-ins in turn; the first stand-in's stream must report
// its end within 5 s of the switch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_to_a_former_leader_ends() {
    let (a, b) = (NodeId(1), NodeId(2));
    let (mut urls, mut stops) = (HashMap::new(), Vec::new());
    for member in [a, b] {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        urls.insert(member, format!("http://{}", listener.local_addr().unwrap()));
        let (stop, stopped) = oneshot::channel::<()>();
        stops.push(stop);
        serve(listener, member, stopped);
    }
    let forwarder = forwarder(urls);
    assert_eq!(revision(forwarder.forward(a, put("3")).await), 3);
    let to_a = Arc::clone(&forwarder.streams.lock().unwrap()[&a].waiting);
    assert_eq!(revision(forwarder.forward(b, put("4")).await), 4);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while to_a.is_open() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stream to the former leader is still open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// Property: a message on the stream without a write is answered with an error under its id,
// and the stream goes on serving the writes after it.
// Method: a raw stream to the stand-in carrying an empty message, then a put.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_without_a_write_is_answered_with_an_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (_stop, stopped) = oneshot::channel();
    serve(listener, NodeId(7), stopped);
    let handshake = ppb::HandshakeRequest {
        from: Some(identity(NodeId(100)).to_proto()),
        to_member_id: 7,
        stream: ppb::StreamKind::Writes as i32,
    };
    let dial = TransportConfig::default().dial();
    let stream::Opened {
        frames: mut answers,
        mut write,
    } = stream::open(&url, &handshake, dial).await.unwrap();
    let empty = ipb::ForwardStreamRequest {
        id: 1,
        request: None,
    };
    let put_5 = ipb::ForwardStreamRequest {
        id: 2,
        request: Some(ipb::ForwardRequest {
            request: Some(put("5")),
        }),
    };
    let mut buf = BytesMut::new();
    stream::put_frame(&mut buf, &empty);
    stream::put_frame(&mut buf, &put_5);
    write.write_all(&buf).await.unwrap();
    let mut answer = async || {
        let frame = answers.next().await.expect("an answer").unwrap();
        ipb::ForwardStreamResponse::decode(frame.freeze()).unwrap()
    };
    let first = answer().await;
    assert_eq!(first.id, 1);
    let Some(ipb::forward_stream_response::Result::Error(error)) = first.result else {
        panic!("not an error: {first:?}");
    };
    assert_eq!(error.code, Code::Unknown as i32);
    assert!(error.message.contains("without a request"), "{error:?}");
    let second = answer().await;
    assert_eq!(second.id, 2);
    let Some(ipb::forward_stream_response::Result::Response(response)) = second.result else {
        panic!("not a response: {second:?}");
    };
    assert_eq!(revision(Ok(response.response.unwrap())), 5);
}

// Property: a member of another cluster, or one that dialled the wrong member, gets no write
// through: its stream is refused at the handshake, and the write fails at once with etcd's
// "connection lost" timeout instead of waiting for an answer.
// Method: forwarders of another cluster, and of this cluster aimed at the wrong member id, each
// forward a put the stand-in would answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_another_cluster_or_to_another_member_is_refused() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (_stop, stopped) = oneshot::channel();
    serve(listener, NodeId(7), stopped);
    let foreign = LocalIdentity {
        cluster_id: 0xf0,
        member_id: NodeId(100),
    };
    let foreign = Forwarder::new(
        foreign,
        &TransportConfig::default(),
        HashMap::from([(NodeId(7), url.clone())]),
    );
    let misdialled = forwarder(HashMap::from([(NodeId(8), url)]));
    let lost = Status::from(ServerError::TimeoutDueToConnectionLost);
    for (forwarder, leader) in [(foreign, NodeId(7)), (misdialled, NodeId(8))] {
        let error =
            tokio::time::timeout(Duration::from_secs(10), forwarder.forward(leader, put("6")))
                .await
                .expect("refused at once")
                .unwrap_err();
        assert_eq!(
            (error.code(), error.message()),
            (lost.code(), lost.message())
        );
    }
}
