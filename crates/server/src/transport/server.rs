//! The receiving side of the peer transport: the Raft message streams, and the
//! `chorus.peer.v1.Peer` gRPC service (handshake and snapshots).
//!
//! Every frame is untrusted. The service checks the caller's identity (cluster, version), that
//! each message is addressed to this member and comes from the member that opened the stream,
//! and decodes every field. A frame that fails a check ends its stream with an error that says
//! why; other streams and later connections are served as before. Accepted messages go to the
//! node through a bounded channel: when the node falls behind, a stream stops reading, and TCP
//! flow control slows its sender down until the sender's own queue drops messages.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use chorus_proto::peer as pb;
use chorus_proto::peer::peer_server::{Peer, PeerServer};
use chorus_raft::{Message, MessageBody};
use prost::Message as _;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status, Streaming};

use super::convert::{DecodeError, message_from_proto};
use super::snapshot::{SnapshotAssembler, SnapshotStreamError};
use super::stream;
use super::{LocalIdentity, TransportConfig, TransportConfigError};

/// Why the service refused a request. [`From<InboundError> for Status`] is the one place that
/// picks the gRPC code of each case.
#[derive(Debug, thiserror::Error)]
pub enum InboundError {
    #[error("the first frame lacks the sender's identity")]
    MissingIdentity,
    #[error("peer protocol version {version} is not supported (this member speaks {supported})")]
    UnsupportedVersion { version: u32, supported: u32 },
    #[error(
        "member {member_id:#x} belongs to cluster {cluster_id:#x}, but this member \
         ({local_member_id:#x}) belongs to cluster {local_cluster_id:#x}; refusing it"
    )]
    ClusterMismatch {
        member_id: u64,
        cluster_id: u64,
        local_member_id: u64,
        local_cluster_id: u64,
    },
    #[error("the caller wanted member {wanted:#x}, but this is member {local:#x}")]
    WrongMember { wanted: u64, local: u64 },
    #[error("the sender's member id is 0")]
    ZeroMember,
    #[error("malformed message: {0}")]
    Decode(#[from] DecodeError),
    #[error("message to member {to} arrived at member {local}")]
    WrongRecipient { to: u64, local: u64 },
    #[error("message from member {from} on the stream of member {sender}")]
    WrongSender { from: u64, sender: u64 },
    #[error("invalid snapshot stream: {0}")]
    Snapshot(#[from] SnapshotStreamError),
    #[error("this member is shutting down")]
    ShuttingDown,
    #[error("the connection did not open with the Raft stream preface")]
    BadPreface,
    #[error("undecodable frame: {0}")]
    Undecodable(#[from] prost::DecodeError),
    #[error("malformed frame: {0}")]
    Framing(std::io::Error),
    #[error("the connection failed: {0}")]
    Io(std::io::Error),
    #[error("nothing arrived for {0:?}")]
    Silent(Duration),
    #[error("unknown kind of peer stream {0}")]
    UnknownStreamKind(i32),
    #[error("this member takes no forwarded writes")]
    NoWrites,
}

impl From<std::io::Error> for InboundError {
    /// The frame reader reports a frame above the limit as `InvalidData`: the caller's fault,
    /// not the connection's.
    fn from(error: std::io::Error) -> Self {
        if error.kind() == std::io::ErrorKind::InvalidData {
            InboundError::Framing(error)
        } else {
            InboundError::Io(error)
        }
    }
}

impl From<InboundError> for Status {
    fn from(error: InboundError) -> Self {
        use InboundError as E;
        let code = match &error {
            E::UnsupportedVersion { .. } | E::ClusterMismatch { .. } | E::WrongMember { .. } => {
                tonic::Code::FailedPrecondition
            }
            E::Snapshot(SnapshotStreamError::ChecksumMismatch { .. }) => tonic::Code::DataLoss,
            E::Snapshot(SnapshotStreamError::TooLarge { .. }) => tonic::Code::ResourceExhausted,
            E::ShuttingDown | E::Io(_) | E::Silent(_) => tonic::Code::Unavailable,
            E::NoWrites => tonic::Code::Unimplemented,
            E::MissingIdentity
            | E::ZeroMember
            | E::Decode(_)
            | E::BadPreface
            | E::UnknownStreamKind(_)
            | E::Undecodable(_)
            | E::Framing(_)
            | E::WrongRecipient { .. }
            | E::WrongSender { .. }
            | E::Snapshot(_) => tonic::Code::InvalidArgument,
        };
        Status::new(code, error.to_string())
    }
}

/// The peer service of one member. Create it with [`PeerService::new`], mount it with
/// [`PeerService::into_server`] or run it with [`serve`].
#[derive(Clone, Debug)]
pub struct PeerService {
    local: LocalIdentity,
    config: TransportConfig,
    inbound: mpsc::Sender<Message>,
    /// Set once to end every open stream and stop accepting connections: a Raft message stream
    /// lives as long as its connection, so without this a graceful shutdown would wait for the
    /// peers to hang up.
    stopping: Arc<watch::Sender<bool>>,
    /// Where accepted write streams go; without it they are refused.
    writes: Option<WriteStreams>,
}

/// A write stream a member opened, handed to [`PeerService::accept_writes`]'s handler once its
/// handshake is accepted.
#[derive(Debug)]
pub struct AcceptedStream {
    /// Who opened it (checked: our cluster, a known protocol version).
    pub from: pb::PeerIdentity,
    pub frames: stream::Frames,
    pub write: OwnedWriteHalf,
    /// Becomes true when the member stops; the stream should then end.
    pub stopping: watch::Receiver<bool>,
}

/// The handler of accepted write streams.
#[derive(Clone)]
struct WriteStreams(Arc<dyn Fn(AcceptedStream) + Send + Sync>);

impl std::fmt::Debug for WriteStreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WriteStreams")
    }
}

impl PeerService {
    /// The service for `local`, with the receiving end of the messages it accepts.
    pub fn new(
        config: TransportConfig,
        local: LocalIdentity,
    ) -> Result<(Self, mpsc::Receiver<Message>), TransportConfigError> {
        config.validate()?;
        let (inbound, inbound_rx) = mpsc::channel(config.inbound_queue_msgs_max);
        let stopping = Arc::new(watch::Sender::new(false));
        Ok((
            PeerService {
                local,
                config,
                inbound,
                stopping,
                writes: None,
            },
            inbound_rx,
        ))
    }

    /// Takes write streams (see [`crate::forward`]): each accepted one goes to `handler`, which
    /// must not block.
    pub fn accept_writes(self, handler: impl Fn(AcceptedStream) + Send + Sync + 'static) -> Self {
        PeerService {
            writes: Some(WriteStreams(Arc::new(handler))),
            ..self
        }
    }

    /// Ends every open and future stream of this service with UNAVAILABLE, and stops accepting
    /// connections; peers reconnect to whoever serves next. Called by [`serve`] when shutdown
    /// begins.
    pub fn stop_streams(&self) {
        self.stopping.send_replace(true);
    }

    /// The next frame of a stream, or UNAVAILABLE once the service is stopping.
    async fn next_frame<T>(&self, stream: &mut Streaming<T>) -> Result<Option<T>, Status> {
        let mut stopping = self.stopping.subscribe();
        tokio::select! {
            biased;
            _ = stopping.wait_for(|stop| *stop) => Err(InboundError::ShuttingDown.into()),
            frame = stream.message() => frame,
        }
    }

    /// The tonic server of this service, with the frame limits of the config.
    pub fn into_server(self) -> PeerServer<PeerService> {
        let frame_bytes_max = self.config.frame_bytes_max;
        PeerServer::new(self)
            .max_decoding_message_size(frame_bytes_max)
            .max_encoding_message_size(frame_bytes_max)
    }

    /// Checks who is calling: a known protocol version, our cluster, a real member id.
    fn check_identity(
        &self,
        from: Option<pb::PeerIdentity>,
    ) -> Result<pb::PeerIdentity, InboundError> {
        let from = from.ok_or(InboundError::MissingIdentity)?;
        if from.protocol_version != chorus_proto::PEER_PROTOCOL_VERSION {
            return Err(InboundError::UnsupportedVersion {
                version: from.protocol_version,
                supported: chorus_proto::PEER_PROTOCOL_VERSION,
            });
        }
        if from.cluster_id != self.local.cluster_id {
            return Err(InboundError::ClusterMismatch {
                member_id: from.member_id,
                cluster_id: from.cluster_id,
                local_member_id: self.local.member_id.get(),
                local_cluster_id: self.local.cluster_id,
            });
        }
        if from.member_id == 0 {
            return Err(InboundError::ZeroMember);
        }
        Ok(from)
    }

    /// Decodes a message and checks it goes from `sender` to this member.
    fn accept(
        &self,
        sender: &pb::PeerIdentity,
        frame: pb::Message,
    ) -> Result<Message, InboundError> {
        let message = message_from_proto(frame)?;
        self.check_addressing(sender, &message)?;
        Ok(message)
    }

    /// Checks a message goes from `sender` to this member.
    fn check_addressing(
        &self,
        sender: &pb::PeerIdentity,
        message: &Message,
    ) -> Result<(), InboundError> {
        if message.to != self.local.member_id {
            return Err(InboundError::WrongRecipient {
                to: message.to.get(),
                local: self.local.member_id.get(),
            });
        }
        if message.from.get() != sender.member_id {
            return Err(InboundError::WrongSender {
                from: message.from.get(),
                sender: sender.member_id,
            });
        }
        Ok(())
    }

    /// Checks a handshake: the caller's identity, and that it meant this member.
    fn check_handshake(
        &self,
        request: pb::HandshakeRequest,
    ) -> Result<pb::PeerIdentity, InboundError> {
        let from = self.check_identity(request.from)?;
        if request.to_member_id != self.local.member_id.get() {
            return Err(InboundError::WrongMember {
                wanted: request.to_member_id,
                local: self.local.member_id.get(),
            });
        }
        Ok(from)
    }

    /// The connections of `listener`: Raft message streams are served by the service, each on
    /// a task of its own; every other connection (HTTP/2) comes out of the returned stream, for
    /// the gRPC server. The listener closes when the stream is dropped.
    pub fn incoming(&self, listener: TcpListener) -> Incoming {
        let (routed, http2) = mpsc::channel(64);
        Incoming {
            listener,
            service: self.clone(),
            routed,
            http2,
            pause: None,
        }
    }

    /// Serves `socket` as a Raft message stream or hands it to the gRPC server, by its first
    /// byte. A connection that sends nothing within the handshake timeout is closed.
    async fn route(self, socket: TcpStream, http2: mpsc::Sender<TcpStream>) {
        // Raft messages and gRPC answers are small and must not wait for more to fill a segment.
        if let Err(error) = socket.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY on a peer connection");
        }
        let mut first = [0u8; 1];
        let peeked =
            tokio::time::timeout(self.config.handshake_timeout, socket.peek(&mut first)).await;
        match peeked {
            Ok(Ok(1..)) if first[0] == stream::PREFACE[0] => self.serve_stream(socket).await,
            Ok(Ok(1..)) => {
                let _ = http2.send(socket).await;
            }
            // Closed, failed or silent before its first byte: nothing to serve.
            _ => {}
        }
    }

    /// Serves one peer stream: the handshake, then the Raft messages of a Raft stream until the
    /// caller closes it, or the hand-over of a write stream to its handler. When the service
    /// ends a stream itself (a refused frame, a silent caller, shutdown), the caller is told why.
    async fn serve_stream(self, socket: TcpStream) {
        let caller = socket.peer_addr().ok();
        let (read, mut write) = socket.into_split();
        let outcome = match self.open_stream(read, &mut write).await {
            Ok((mut frames, sender, pb::StreamKind::Raft)) => {
                tracing::debug!(from = sender.member_id, "Raft message stream accepted");
                self.receive_batches(&mut frames, &sender).await
            }
            Ok((frames, from, pb::StreamKind::Writes)) => {
                tracing::debug!(from = from.member_id, "write stream accepted");
                let writes = self.writes.as_ref().expect("checked by open_stream");
                (writes.0)(AcceptedStream {
                    from,
                    frames,
                    write,
                    stopping: self.stopping.subscribe(),
                });
                return;
            }
            Err(error) => Err(error),
        };
        let error = match outcome {
            Ok(batches) => {
                tracing::debug!(?caller, batches, "Raft message stream closed by its sender");
                return;
            }
            Err(error) => error,
        };
        match &error {
            InboundError::ShuttingDown => {
                tracing::debug!(?caller, "ending a peer stream: shutting down");
            }
            error => tracing::warn!(?caller, %error, "ending a peer stream"),
        }
        let mut reply = BytesMut::new();
        stream::put_frame(&mut reply, &stream::refused(&Status::from(error)));
        // The caller may be gone, or not reading: do not wait for it long.
        let _ = tokio::time::timeout(self.config.handshake_timeout, write.write_all(&reply)).await;
    }

    /// Reads the preface and the handshake, and accepts the caller: its frames, who it is and
    /// what the stream carries.
    async fn open_stream(
        &self,
        mut read: OwnedReadHalf,
        write: &mut OwnedWriteHalf,
    ) -> Result<(stream::Frames, pb::PeerIdentity, pb::StreamKind), InboundError> {
        let wait = self.config.handshake_timeout;
        let silent = |_| InboundError::Silent(wait);
        if !tokio::time::timeout(wait, stream::read_preface(&mut read))
            .await
            .map_err(silent)??
        {
            return Err(InboundError::BadPreface);
        }
        let mut frames = stream::frames(read, self.config.frame_bytes_max);
        let first = tokio::time::timeout(wait, frames.next())
            .await
            .map_err(silent)?
            .ok_or(InboundError::MissingIdentity)??;
        let request = pb::HandshakeRequest::decode(first.freeze())?;
        let kind = pb::StreamKind::try_from(request.stream)
            .map_err(|_| InboundError::UnknownStreamKind(request.stream))?;
        let sender = self.check_handshake(request)?;
        if kind == pb::StreamKind::Writes && self.writes.is_none() {
            return Err(InboundError::NoWrites);
        }
        let mut reply = BytesMut::new();
        stream::put_frame(&mut reply, &stream::accepted(self.local.to_proto()));
        write.write_all(&reply).await?;
        Ok((frames, sender, kind))
    }

    /// The batches of a Raft stream, each decoded and checked as a whole before any of its
    /// messages is delivered. Returns the number of batches once the caller closes.
    async fn receive_batches(
        &self,
        frames: &mut stream::Frames,
        sender: &pb::PeerIdentity,
    ) -> Result<u64, InboundError> {
        // The sender writes at least every keepalive interval; one that missed a whole
        // keepalive timeout besides is gone. Checked by a ticker, not a timer per frame.
        let idle = self.config.keepalive_interval + self.config.keepalive_timeout;
        let mut idle_check = tokio::time::interval_at(tokio::time::Instant::now() + idle, idle);
        let mut heard = false;
        let mut stopping = self.stopping.subscribe();
        let stopped = stopping.wait_for(|stop| *stop);
        tokio::pin!(stopped);
        let mut batches = 0u64;
        loop {
            let frame = tokio::select! {
                biased;
                _ = &mut stopped => return Err(InboundError::ShuttingDown),
                frame = frames.next() => frame,
                _ = idle_check.tick() => {
                    if !std::mem::take(&mut heard) {
                        return Err(InboundError::Silent(idle));
                    }
                    continue;
                }
            };
            let Some(frame) = frame else {
                return Ok(batches);
            };
            heard = true;
            let batch = pb::MessageBatch::decode(frame?.freeze())?;
            let messages: Vec<Message> = batch
                .messages
                .into_iter()
                .map(|frame| self.accept(sender, frame))
                .collect::<Result<_, _>>()?;
            for message in messages {
                self.deliver(message).await?;
            }
            batches += 1;
        }
    }

    async fn deliver(&self, message: Message) -> Result<(), InboundError> {
        self.inbound
            .send(message)
            .await
            .map_err(|_| InboundError::ShuttingDown)
    }

    async fn receive_snapshot(
        &self,
        mut stream: Streaming<pb::SnapshotChunk>,
    ) -> Result<(Message, u64), Status> {
        let mut assembler = SnapshotAssembler::new(self.config.snapshot_bytes_max);
        let mut sender: Option<pb::PeerIdentity> = None;
        let mut complete = None;
        while let Some(chunk) = self.next_frame(&mut stream).await? {
            if sender.is_none() {
                sender = Some(self.check_identity(chunk.from)?);
            }
            if let Some(message) = assembler.push(chunk).map_err(InboundError::from)? {
                complete = Some(message);
            }
        }
        assembler.finish().map_err(InboundError::from)?;
        // `finish` succeeded, so the last chunk was accepted: both are set.
        let (Some(sender), Some(message)) = (sender, complete) else {
            return Err(InboundError::MissingIdentity.into());
        };
        self.check_addressing(&sender, &message)?;
        let bytes = match &message.body {
            MessageBody::Snapshot { snapshot } => snapshot.data.len() as u64,
            _ => 0,
        };
        Ok((message, bytes))
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn handshake(
        &self,
        request: Request<pb::HandshakeRequest>,
    ) -> Result<Response<pb::HandshakeResponse>, Status> {
        let from = self
            .check_handshake(request.into_inner())
            .inspect_err(|error| {
                tracing::warn!(%error, "refusing a handshake");
            })?;
        tracing::debug!(from = from.member_id, "handshake accepted");
        Ok(Response::new(pb::HandshakeResponse {
            member: Some(self.local.to_proto()),
        }))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::SnapshotAck>, Status> {
        let (message, bytes_received) = self
            .receive_snapshot(request.into_inner())
            .await
            .inspect_err(|status| {
                tracing::warn!(%status, "refusing a snapshot");
            })?;
        tracing::info!(from = %message.from, bytes = bytes_received, "snapshot received");
        self.deliver(message).await?;
        Ok(Response::new(pb::SnapshotAck { bytes_received }))
    }
}

/// The connections of the peer port for the gRPC server; see [`PeerService::incoming`].
#[derive(Debug)]
pub struct Incoming {
    listener: TcpListener,
    service: PeerService,
    /// Where a connection goes once its first byte says it is HTTP/2.
    routed: mpsc::Sender<TcpStream>,
    http2: mpsc::Receiver<TcpStream>,
    /// After an error accepting (such as too many open files), a pause rather than a spin.
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Stream for Incoming {
    type Item = std::io::Result<TcpStream>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(pause) = this.pause.as_mut()
            && pause.as_mut().poll(cx).is_ready()
        {
            this.pause = None;
        }
        while this.pause.is_none() {
            match this.listener.poll_accept(cx) {
                Poll::Ready(Ok((socket, _))) => {
                    tokio::spawn(this.service.clone().route(socket, this.routed.clone()));
                }
                Poll::Ready(Err(error)) => {
                    tracing::warn!(%error, "cannot accept a peer connection");
                    let mut pause = Box::pin(tokio::time::sleep(Duration::from_millis(100)));
                    // Registers the wakeup that ends the pause.
                    let _ = pause.as_mut().poll(cx);
                    this.pause = Some(pause);
                }
                Poll::Pending => break,
            }
        }
        // Never ends: `routed` is held here.
        this.http2.poll_recv(cx).map(|socket| socket.map(Ok))
    }
}

/// Serves the Raft message streams and the peer service on `listener` until `shutdown`
/// completes. Then open streams are
/// ended (see [`PeerService::stop_streams`]) and the server is given `shutdown_grace` to finish
/// in-flight requests before it stops regardless.
pub async fn serve(
    listener: tokio::net::TcpListener,
    service: PeerService,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let config = service.config.clone();
    let handle = service.clone();
    let incoming = service.incoming(listener);
    let (drain, drained) = tokio::sync::oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(config.keepalive_interval))
        .http2_keepalive_timeout(Some(config.keepalive_timeout))
        .add_service(service.into_server())
        .serve_with_incoming_shutdown(incoming, async {
            let _ = drained.await;
        });
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => return result,
        () = shutdown => {}
    }
    handle.stop_streams();
    let _ = drain.send(());
    match tokio::time::timeout(config.shutdown_grace, server).await {
        Ok(result) => result,
        Err(_) => {
            tracing::warn!(
                grace = ?config.shutdown_grace,
                "peer server did not drain in time; stopping it"
            );
            Ok(())
        }
    }
}
