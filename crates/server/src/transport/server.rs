//! The receiving side of the peer transport: the `chorus.peer.v1.Peer` gRPC service.
//!
//! Every frame is untrusted. The service checks the caller's identity (cluster, version), that
//! each message is addressed to this member and comes from the member that opened the stream,
//! and decodes every field. A frame that fails a check ends its stream with an error that says
//! why; other streams and later connections are served as before. Accepted messages go to the
//! node through a bounded channel: when the node falls behind, the streams wait, and HTTP/2
//! flow control slows the senders down until their own queues drop messages.

use std::future::Future;
use std::sync::Arc;

use chorus_proto::peer as pb;
use chorus_proto::peer::peer_server::{Peer, PeerServer};
use chorus_raft::{Message, MessageBody};
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};

use super::convert::{DecodeError, message_from_proto};
use super::snapshot::{SnapshotAssembler, SnapshotStreamError};
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
            E::ShuttingDown => tonic::Code::Unavailable,
            E::MissingIdentity
            | E::ZeroMember
            | E::Decode(_)
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
    /// Set once to end every open stream: a `Send` stream lives as long as the connection, so
    /// without this a graceful shutdown would wait for the peers to hang up.
    stopping: Arc<watch::Sender<bool>>,
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
            },
            inbound_rx,
        ))
    }

    /// Ends every open and future stream of this service with UNAVAILABLE; peers reconnect to
    /// whoever serves next. Called by [`serve`] when shutdown begins.
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

    async fn deliver(&self, message: Message) -> Result<(), InboundError> {
        self.inbound
            .send(message)
            .await
            .map_err(|_| InboundError::ShuttingDown)
    }

    async fn receive_batches(
        &self,
        mut stream: Streaming<pb::MessageBatch>,
    ) -> Result<u64, Status> {
        let mut sender: Option<pb::PeerIdentity> = None;
        let mut batches = 0u64;
        while let Some(batch) = self.next_frame(&mut stream).await? {
            let from = match sender {
                Some(from) => from,
                None => *sender.insert(self.check_identity(batch.from)?),
            };
            // Decode the whole batch before delivering any of it: a malformed frame is refused
            // as a unit.
            let messages: Vec<Message> = batch
                .messages
                .into_iter()
                .map(|frame| self.accept(&from, frame))
                .collect::<Result<_, _>>()
                .inspect_err(|error| {
                    tracing::warn!(from = from.member_id, %error, "refusing a message batch");
                })?;
            for message in messages {
                self.deliver(message).await?;
            }
            batches += 1;
        }
        Ok(batches)
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
        let request = request.into_inner();
        let from = self.check_identity(request.from).inspect_err(|error| {
            tracing::warn!(%error, "refusing a handshake");
        })?;
        if request.to_member_id != self.local.member_id.get() {
            return Err(InboundError::WrongMember {
                wanted: request.to_member_id,
                local: self.local.member_id.get(),
            }
            .into());
        }
        tracing::debug!(from = from.member_id, "handshake accepted");
        Ok(Response::new(pb::HandshakeResponse {
            member: Some(self.local.to_proto()),
        }))
    }

    async fn send(
        &self,
        request: Request<Streaming<pb::MessageBatch>>,
    ) -> Result<Response<pb::SendAck>, Status> {
        let batches_received = self.receive_batches(request.into_inner()).await?;
        Ok(Response::new(pb::SendAck { batches_received }))
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

/// Serves the peer service on `listener` until `shutdown` completes. Then open streams are
/// ended (see [`PeerService::stop_streams`]) and the server is given `shutdown_grace` to finish
/// in-flight requests before it stops regardless.
pub async fn serve(
    listener: tokio::net::TcpListener,
    service: PeerService,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let config = service.config.clone();
    let handle = service.clone();
    let (drain, drained) = tokio::sync::oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(config.keepalive_interval))
        .http2_keepalive_timeout(Some(config.keepalive_timeout))
        .add_service(service.into_server())
        .serve_with_incoming_shutdown(crate::member::nodelay(listener), async {
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
