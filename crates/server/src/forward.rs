//! Writes that reach a member which does not lead travel to the leader on one long-lived
//! write stream per leader, a peer stream of its own (see [`crate::transport::stream`]): each
//! write is a frame tagged with an id, and the leader answers each id once the write is applied
//! there, in the order writes finish. A forwarded write therefore costs a frame on a connection
//! that is already open, not an HTTP/2 request of its own (headers, a new stream, a task on each
//! side). On the leader no task waits for it either: the Raft loop puts its outcome straight
//! into the stream's answers.
//!
//! When the stream breaks (the leader stopped, the connection dropped), every write still
//! waiting on it fails with etcd's "request timed out, possibly due to connection lost": the
//! leader may or may not have applied it. A write that never left this member is sent again on
//! a new stream.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::BytesMut;
use chorus_proto::internal as ipb;
use chorus_proto::peer as ppb;
use chorus_raft::NodeId;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::StreamExt as _;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::error::ServerError;
use crate::transport::server::AcceptedStream;
use crate::transport::stream;
use crate::transport::{LocalIdentity, TransportConfig};

/// Writes queued for one stream before senders wait.
const STREAM_QUEUE: usize = 1024;

type WriteResult = Result<ipb::forward_response::Response, Status>;

/// How this member opens write streams: who it is, and the transport's limits.
#[derive(Clone, Copy, Debug)]
struct Link {
    local: LocalIdentity,
    dial: stream::Dial,
    /// A write that makes no progress for this long means the leader is gone.
    write_timeout: Duration,
}

/// Sends writes to the leader on write streams, and other requests to the `Forward` service of
/// a member. Channels connect lazily and are kept.
#[derive(Clone, Debug)]
pub struct Forwarder {
    link: Link,
    peer_urls: Arc<Mutex<HashMap<NodeId, String>>>,
    clients: Arc<Mutex<HashMap<NodeId, Channel>>>,
    streams: Arc<Mutex<HashMap<NodeId, Arc<WriteStream>>>>,
}

/// One open write stream to a member. Dropping the last handle ends the stream once the
/// leader has answered the writes on it.
#[derive(Debug)]
struct WriteStream {
    requests: mpsc::Sender<ipb::ForwardStreamRequest>,
    next_id: AtomicU64,
    waiting: Arc<Waiting>,
}

/// The writes sent on a stream and not yet answered; `None` once the stream has ended. Shared
/// with the task that reads the answers, which must not keep the stream itself open.
#[derive(Debug)]
struct Waiting(Mutex<Option<HashMap<u64, oneshot::Sender<WriteResult>>>>);

type WaitingGuard<'a> = MutexGuard<'a, Option<HashMap<u64, oneshot::Sender<WriteResult>>>>;

impl WriteStream {
    /// Opens a write stream to `leader` at `url` and starts the task that carries it.
    fn open(link: Link, leader: NodeId, url: String) -> Arc<WriteStream> {
        let (requests, queued) = mpsc::channel(STREAM_QUEUE);
        let waiting = Arc::new(Waiting(Mutex::new(Some(HashMap::new()))));
        let answers = Arc::clone(&waiting);
        tokio::spawn(async move {
            let handshake = ppb::HandshakeRequest {
                from: Some(link.local.to_proto()),
                to_member_id: leader.get(),
                stream: ppb::StreamKind::Writes as i32,
            };
            match stream::open(&url, &handshake, link.dial).await {
                Ok(opened) => carry(opened, queued, &answers, link.write_timeout).await,
                Err(error) => tracing::debug!(%error, "could not open a write stream"),
            }
            answers.close();
        });
        Arc::new(WriteStream {
            requests,
            next_id: AtomicU64::new(1),
            waiting,
        })
    }

    /// Sends one write and waits for its answer; `Err(request)` when the stream had already
    /// ended and the write was not sent.
    async fn write(
        &self,
        request: ipb::forward_request::Request,
    ) -> Result<WriteResult, ipb::forward_request::Request> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        match self.waiting.lock().as_mut() {
            Some(waiting) => waiting.insert(id, tx),
            None => return Err(request),
        };
        // Forget the write if this future is dropped (the request timed out) before its answer.
        let _forget = Forget {
            waiting: &self.waiting,
            id,
        };
        let message = ipb::ForwardStreamRequest {
            id,
            request: Some(ipb::ForwardRequest {
                request: Some(request),
            }),
        };
        if let Err(mpsc::error::SendError(message)) = self.requests.send(message).await {
            let request = message.request.and_then(|r| r.request);
            return Err(request.expect("the message was built with its request"));
        }
        Ok(rx
            .await
            .unwrap_or_else(|_| Err(ServerError::TimeoutDueToConnectionLost.into())))
    }
}

impl Waiting {
    fn lock(&self) -> WaitingGuard<'_> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_open(&self) -> bool {
        self.lock().is_some()
    }

    fn answer(&self, answer: ipb::ForwardStreamResponse) {
        use ipb::forward_stream_response::Result as R;
        let Some(waiter) = self
            .lock()
            .as_mut()
            .and_then(|waiting| waiting.remove(&answer.id))
        else {
            return; // the writer gave up (its request timed out)
        };
        let result = match answer.result {
            Some(R::Response(ipb::ForwardResponse {
                response: Some(response),
            })) => Ok(response),
            Some(R::Error(error)) => Err(Status::new(Code::from(error.code), error.message)),
            _ => Err(Status::from(ServerError::Unexpected {
                message: "etcdserver: the leader sent an empty answer".to_string(),
            })),
        };
        let _ = waiter.send(result);
    }

    /// Ends the stream: every write still waiting fails, and no new one is taken.
    fn close(&self) {
        let waiting = self.lock().take().unwrap_or_default();
        for (_, waiter) in waiting {
            let _ = waiter.send(Err(ServerError::TimeoutDueToConnectionLost.into()));
        }
    }
}

/// Carries one write stream: the queued writes out, as many in one socket write as are
/// waiting, and the answers in. Once no more writes can come (the last handle was dropped), the
/// stream is half-closed and the answers still due are awaited; the leader then closes.
async fn carry(
    opened: stream::Opened,
    mut queued: mpsc::Receiver<ipb::ForwardStreamRequest>,
    answers: &Waiting,
    write_timeout: Duration,
) {
    let stream::Opened {
        mut frames,
        mut write,
    } = opened;
    let sending = async {
        let mut buf = BytesMut::new();
        // Writes arrive one by one from many callers: those queued together leave together.
        while let Some(first) = queued.recv().await {
            let next = || queued.try_recv().ok();
            let written = stream::write_gathered(&mut write, &mut buf, first, next, write_timeout);
            if let Err(error) = written.await {
                tracing::debug!(%error, "write stream to the leader failed");
                return false;
            }
        }
        let _ = write.shutdown().await;
        true
    };
    let receiving = async {
        while let Some(frame) = frames.next().await {
            match stream::decode::<ipb::ForwardStreamResponse>(frame) {
                Ok(answer) => answers.answer(answer),
                Err(error) => {
                    tracing::debug!(%error, "write stream from the leader failed");
                    return;
                }
            }
        }
    };
    tokio::pin!(sending, receiving);
    tokio::select! {
        () = &mut receiving => {}
        finished = &mut sending => {
            if finished {
                receiving.await;
            }
        }
    }
}

/// Removes a write's waiter when its caller stops waiting (answered, failed or timed out).
struct Forget<'a> {
    waiting: &'a Waiting,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        if let Some(waiting) = self.waiting.lock().as_mut() {
            waiting.remove(&self.id);
        }
    }
}

impl Forwarder {
    /// A forwarder of member `local` to the members at these peer URLs (`http://host:port`),
    /// with the transport's timeouts and frame limit.
    pub fn new(
        local: LocalIdentity,
        config: &TransportConfig,
        peer_urls: HashMap<NodeId, String>,
    ) -> Self {
        let link = Link {
            local,
            dial: config.dial(),
            write_timeout: config.keepalive_timeout,
        };
        Forwarder {
            link,
            peer_urls: Arc::new(Mutex::new(peer_urls)),
            clients: Arc::new(Mutex::new(HashMap::new())),
            streams: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Points the forwarder at a member's (new) peer URL.
    pub fn set_peer(&self, member: NodeId, url: String) {
        let mut urls = self.peer_urls.lock().unwrap_or_else(|e| e.into_inner());
        if urls
            .insert(member, url.clone())
            .is_some_and(|old| old != url)
        {
            self.forget(member);
        }
    }

    /// Forgets a removed member.
    pub fn remove_peer(&self, member: NodeId) {
        self.peer_urls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&member);
        self.forget(member);
    }

    /// Drops the channel and stream to `member`: writes in flight on the stream still get
    /// their answers; the next ones connect anew.
    fn forget(&self, member: NodeId) {
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&member);
        self.streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&member);
    }

    fn peer_url(&self, member: NodeId) -> Result<String, Status> {
        self.peer_urls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&member)
            .cloned()
            .ok_or_else(|| {
                Status::from(ServerError::Unexpected {
                    message: format!("etcdserver: unknown leader {member}"),
                })
            })
    }

    pub(crate) fn channel(&self, member: NodeId) -> Result<Channel, Status> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(channel) = clients.get(&member) {
            return Ok(channel.clone());
        }
        let url = self.peer_url(member)?;
        let channel = Endpoint::from_shared(url.clone())
            .map_err(|e| {
                Status::from(ServerError::Unexpected {
                    message: format!("invalid peer URL {url}: {e}"),
                })
            })?
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true)
            .connect_lazy();
        clients.insert(member, channel.clone());
        Ok(channel)
    }

    /// The open stream to `leader`, opened if there is none or the last one ended. Streams to
    /// other members are let go: only the leader takes writes.
    fn stream(&self, leader: NodeId) -> Result<Arc<WriteStream>, Status> {
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        streams.retain(|member, stream| *member == leader && stream.waiting.is_open());
        if let Some(stream) = streams.get(&leader) {
            return Ok(Arc::clone(stream));
        }
        let stream = WriteStream::open(self.link, leader, self.peer_url(leader)?);
        streams.insert(leader, Arc::clone(&stream));
        Ok(stream)
    }

    /// Has the leader propose `request` and returns its answer once applied there.
    pub(crate) async fn forward(
        &self,
        leader: NodeId,
        mut request: ipb::forward_request::Request,
    ) -> WriteResult {
        // A stream found ended before the write left is replaced once; a second failure means
        // the leader cannot be reached now.
        for _ in 0..2 {
            match self.stream(leader)?.write(request).await {
                Ok(result) => return result,
                Err(unsent) => request = unsent,
            }
        }
        Err(ServerError::TimeoutDueToConnectionLost.into())
    }
}

/// Where the outcome of one forwarded write goes: the answers of its stream, under its id.
/// Sending costs a message on a channel; no task waits for the write.
#[derive(Debug)]
pub struct StreamAnswer<R> {
    id: u64,
    answers: mpsc::UnboundedSender<(u64, Result<R, Status>)>,
}

impl<R> StreamAnswer<R> {
    #[cfg(test)]
    pub(crate) fn new(id: u64, answers: mpsc::UnboundedSender<(u64, Result<R, Status>)>) -> Self {
        StreamAnswer { id, answers }
    }

    pub fn send(self, outcome: R) {
        // The sender may have gone; its writes' outcomes are then unknown to it anyway.
        let _ = self.answers.send((self.id, Ok(outcome)));
    }
}

/// The leader's side of a write stream: hands each write to `propose` as it arrives, with
/// where its outcome goes, and answers each outcome (turned into the wire's form by `answer`)
/// in the order they come. The answers that are ready together leave in one socket write.
///
/// The answers wait in an unbounded queue: what bounds them is the writes the leader takes
/// at once (the Raft loop's command queue and its waiters, which refuse more).
pub(crate) fn serve_stream<R, P, A>(
    stream: AcceptedStream,
    write_timeout: Duration,
    propose: P,
    answer: A,
) where
    R: Send + 'static,
    P: Fn(ipb::forward_request::Request, StreamAnswer<R>) + Send + 'static,
    A: Fn(R) -> WriteResult + Send + Sync + 'static,
{
    let AcceptedStream {
        from,
        mut frames,
        mut write,
        mut stopping,
    } = stream;
    let (answers, mut outgoing) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let stopped = stopping.wait_for(|stop| *stop);
        tokio::pin!(stopped);
        loop {
            let frame = tokio::select! {
                biased;
                _ = &mut stopped => break,
                frame = frames.next() => frame,
            };
            let message = match frame.map(stream::decode::<ipb::ForwardStreamRequest>) {
                None => break,
                Some(Ok(message)) => message,
                Some(Err(error)) => {
                    tracing::warn!(from = from.member_id, %error, "ending a write stream");
                    break;
                }
            };
            let id = message.id;
            match message.request.and_then(|r| r.request) {
                Some(request) => propose(
                    request,
                    StreamAnswer {
                        id,
                        answers: answers.clone(),
                    },
                ),
                None => {
                    let malformed = Status::from(ServerError::Unexpected {
                        message: "etcdserver: a forwarded write without a request".to_string(),
                    });
                    let _ = answers.send((id, Err(malformed)));
                }
            }
        }
        // Dropping `answers` here: the answering task ends once every write taken is answered.
    });
    tokio::spawn(async move {
        let mut buf = BytesMut::new();
        // The Raft loop answers a whole batch of writes at once: they leave together.
        while let Some(first) = outgoing.recv().await {
            let first = to_wire(first, &answer);
            let next = || outgoing.try_recv().ok().map(|next| to_wire(next, &answer));
            let written = stream::write_gathered(&mut write, &mut buf, first, next, write_timeout);
            if let Err(error) = written.await {
                tracing::debug!(%error, "write stream to a follower failed");
                return;
            }
        }
        // Dropping `write` closes the stream: the follower has every answer.
    });
}

/// One outcome in the wire's form.
fn to_wire<R>(
    (id, outcome): (u64, Result<R, Status>),
    answer: impl Fn(R) -> WriteResult,
) -> ipb::ForwardStreamResponse {
    use ipb::forward_stream_response::Result as Answer;
    let result = match outcome.and_then(answer) {
        Ok(response) => Answer::Response(ipb::ForwardResponse {
            response: Some(response),
        }),
        Err(status) => Answer::Error(ipb::ForwardError {
            code: status.code() as i32,
            message: status.message().to_string(),
        }),
    };
    ipb::ForwardStreamResponse {
        id,
        result: Some(result),
    }
}

#[cfg(test)]
mod tests;
