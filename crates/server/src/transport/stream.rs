//! The wire format of peer streams: a TCP connection of its own from one member to another's
//! peer port, for what goes between two members all the time. There are two kinds: Raft
//! messages, and the writes a follower forwards to the leader with their answers.
//!
//! The peer port serves both these streams and HTTP/2 (the handshake and snapshots of the
//! `chorus.peer.v1.Peer` service, and the internal services); [`PeerService::incoming`] tells
//! them apart by the first byte a connection sends: HTTP/2's preface begins with `P`, this
//! stream's [`PREFACE`] with `c`.
//!
//! After the preface both sides write frames: a 4-byte big-endian length, then one protobuf
//! message of that many bytes.
//! 1. The caller's first frame is a `HandshakeRequest`, which names the stream's kind. The
//!    receiver answers with a `StreamReply` that carries its identity, or refuses the caller
//!    with a status code and the reason and closes the connection.
//! 2. On a Raft stream the caller then writes `MessageBatch` frames, the messages in the order
//!    its Raft node made them. When it has had nothing to send for a keepalive interval it
//!    writes an empty batch, so that the receiver can tell a quiet member from a vanished one.
//!    The receiver writes nothing more, except when it ends the stream itself (a malformed
//!    frame, a silent caller, shutdown): one last `StreamReply` that says why.
//! 3. On a write stream the caller writes `ForwardStreamRequest` frames and the leader answers
//!    each with a `ForwardStreamResponse` frame under the same id (see `crate::forward`).
//!
//! Why not gRPC streams: docs/adr/0003-peer-streams.md.
//!
//! [`PeerService::incoming`]: super::PeerService::incoming

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use chorus_proto::peer as pb;
use prost::Message as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_stream::StreamExt as _;
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};

/// The first bytes a caller writes on a peer stream.
pub const PREFACE: &[u8] = b"chorus peer stream\n";
/// Bytes of a frame's length prefix.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// The largest frame the format can carry; `TransportConfig::frame_bytes_max` may not be above.
pub const FRAME_BYTES_LIMIT: usize = u32::MAX as usize;

/// Appends `message` to `buf` as one frame. The caller keeps messages below
/// [`FRAME_BYTES_LIMIT`] (the transport drops larger ones before they get here).
pub fn put_frame(buf: &mut BytesMut, message: &impl prost::Message) {
    let len = message.encoded_len();
    let prefix = u32::try_from(len).expect("frames are kept below FRAME_BYTES_LIMIT");
    buf.reserve(LENGTH_PREFIX_BYTES + len);
    buf.put_u32(prefix);
    message
        .encode(buf)
        .expect("the buffer was given room for the message");
}

/// The frames arriving on `read`. A frame above `frame_bytes_max` is an error
/// (`InvalidData`), and so is a connection that closes in the middle of a frame.
pub fn frames<R: AsyncRead>(
    read: R,
    frame_bytes_max: usize,
) -> FramedRead<R, LengthDelimitedCodec> {
    LengthDelimitedCodec::builder()
        .length_field_length(LENGTH_PREFIX_BYTES)
        .big_endian()
        .max_frame_length(frame_bytes_max)
        .new_read(read)
}

/// Reads the preface; false if the connection sent something else.
pub async fn read_preface(read: &mut (impl AsyncRead + Unpin)) -> std::io::Result<bool> {
    let mut preface = [0u8; PREFACE.len()];
    read.read_exact(&mut preface).await?;
    Ok(preface == PREFACE)
}

/// The reply that accepts a handshake.
pub fn accepted(member: pb::PeerIdentity) -> pb::StreamReply {
    pb::StreamReply {
        member: Some(member),
        code: 0,
        message: String::new(),
    }
}

/// The reply that refuses a handshake or ends a stream, with `status`'s code and message.
pub fn refused(status: &tonic::Status) -> pb::StreamReply {
    pb::StreamReply {
        member: None,
        code: status.code() as u32,
        message: status.message().to_string(),
    }
}

/// The frames a member writes on a stream.
pub type Frames = FramedRead<OwnedReadHalf, LengthDelimitedCodec>;

/// Why a stream (or a gRPC channel) to a member could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The member could not be reached; worth retrying.
    #[error("member unreachable: {0}")]
    Unreachable(String),
    /// The member answered and refused us (another cluster, another member, another version).
    #[error("member refused the handshake: {0}")]
    Refused(String),
}

/// How long opening a stream may take, and the largest frame it accepts.
#[derive(Clone, Copy, Debug)]
pub struct Dial {
    pub connect_timeout: Duration,
    pub handshake_timeout: Duration,
    pub frame_bytes_max: usize,
}

/// A stream the member accepted.
#[derive(Debug)]
pub struct Opened {
    pub frames: Frames,
    pub write: OwnedWriteHalf,
}

/// Opens a stream to the member at `url` (such as `http://10.0.0.2:2380`) with `handshake`,
/// and checks, by the answer, that it is the member `handshake` names in the caller's cluster.
pub async fn open(
    url: &str,
    handshake: &pb::HandshakeRequest,
    dial: Dial,
) -> Result<Opened, ConnectError> {
    let unreachable = |why: String| ConnectError::Unreachable(format!("{url}: {why}"));
    let address = socket_address(url)?;
    let socket = tokio::time::timeout(dial.connect_timeout, TcpStream::connect(address))
        .await
        .map_err(|_| unreachable("connection timed out".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    // What goes on peer streams is small and must not wait for more to fill a segment.
    socket
        .set_nodelay(true)
        .map_err(|e| unreachable(e.to_string()))?;
    let (read, mut write) = socket.into_split();
    let mut frames = self::frames(read, dial.frame_bytes_max);
    let mut opening = BytesMut::from(PREFACE);
    put_frame(&mut opening, handshake);
    let answer = tokio::time::timeout(dial.handshake_timeout, async {
        write.write_all(&opening).await?;
        frames.next().await.transpose()
    })
    .await
    .map_err(|_| unreachable("handshake timed out".into()))?
    .map_err(|e| unreachable(e.to_string()))?
    .ok_or_else(|| unreachable("closed the connection before answering the handshake".into()))?;
    let reply = pb::StreamReply::decode(answer.freeze())
        .map_err(|e| unreachable(format!("undecodable answer to the handshake: {e}")))?;
    if reply.member.is_none() {
        let code = tonic::Code::from(reply.code as i32);
        let why = format!("{url}: {code:?}: {}", reply.message);
        return Err(if is_refusal(code) {
            ConnectError::Refused(why)
        } else {
            ConnectError::Unreachable(why)
        });
    }
    let cluster_id = handshake.from.map_or(0, |from| from.cluster_id);
    check_member(url, cluster_id, handshake.to_member_id, reply.member)?;
    Ok(Opened { frames, write })
}

/// Whether a refusal means the member will never take us (so: not worth retrying soon).
pub fn is_refusal(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::FailedPrecondition
            | tonic::Code::InvalidArgument
            | tonic::Code::PermissionDenied
    )
}

/// The member that answered a handshake must be `member_id`, the one dialled at `url`, in
/// cluster `cluster_id`.
pub fn check_member(
    url: &str,
    cluster_id: u64,
    member_id: u64,
    member: Option<pb::PeerIdentity>,
) -> Result<(), ConnectError> {
    let member = member.ok_or_else(|| {
        ConnectError::Refused(format!("{url} answered the handshake without its identity"))
    })?;
    if member.cluster_id != cluster_id {
        return Err(ConnectError::Refused(format!(
            "{url} is a member of cluster {:#x}, not of our cluster {cluster_id:#x}",
            member.cluster_id
        )));
    }
    if member.member_id != member_id {
        return Err(ConnectError::Refused(format!(
            "{url} is member {:#x}, not the expected member {member_id:#x}",
            member.member_id
        )));
    }
    Ok(())
}

/// The host and port of a peer URL such as `http://10.0.0.2:2380`.
fn socket_address(url: &str) -> Result<(String, u16), ConnectError> {
    let bad = |why: &str| ConnectError::Unreachable(format!("bad URL {url}: {why}"));
    let uri: http::Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
    let authority = uri.authority().ok_or_else(|| bad("no host"))?;
    let port = authority
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    // An IPv6 host comes in brackets, which the resolver does not take.
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    Ok((host.to_string(), port))
}

/// Writes `bytes` (whole frames); a member that takes none of them for `timeout` is taken for
/// gone (a paused process, a cut cable), so that the caller reconnects rather than wait on TCP.
pub async fn write_within(
    write: &mut OwnedWriteHalf,
    bytes: &[u8],
    timeout: Duration,
) -> std::io::Result<()> {
    match tokio::time::timeout(timeout, write.write_all(bytes)).await {
        Ok(written) => written,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("the member took no data for {timeout:?}"),
        )),
    }
}

/// Writes `first`, and every message `next` yields once the other tasks have run, as frames in
/// one socket write (see [`write_within`]). The tasks that queue messages for a stream (the Raft
/// loop with the answers of an applied batch, many clients with their writes) then finish
/// queueing what goes together before the stream takes it.
pub async fn write_gathered<M: prost::Message>(
    write: &mut OwnedWriteHalf,
    buf: &mut BytesMut,
    first: M,
    mut next: impl FnMut() -> Option<M>,
    timeout: Duration,
) -> std::io::Result<()> {
    tokio::task::yield_now().await;
    buf.clear();
    put_frame(buf, &first);
    while let Some(message) = next() {
        put_frame(buf, &message);
    }
    write_within(write, buf, timeout).await
}

/// Why a frame read from a stream is no message.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("undecodable frame: {0}")]
    Undecodable(#[from] prost::DecodeError),
}

/// The message in a frame read from a stream.
pub fn decode<M: prost::Message + Default>(
    frame: std::io::Result<BytesMut>,
) -> Result<M, FrameError> {
    Ok(M::decode(frame?.freeze())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: frames written by `put_frame` come back whole and in order from `frames`, however
    // the bytes are cut on the way, and a frame above the limit is an error, not a huge
    // allocation. Method: write three frames, read them back through a reader that returns one
    // byte at a time; then announce a frame one byte over the limit.
    #[tokio::test]
    async fn frames_round_trip_and_the_limit_holds() {
        let messages = [
            pb::StreamReply {
                member: None,
                code: 9,
                message: "refused".into(),
            },
            accepted(pb::PeerIdentity {
                cluster_id: 7,
                member_id: 2,
                protocol_version: 2,
            }),
            pb::StreamReply::default(),
        ];
        let mut buf = BytesMut::new();
        for message in &messages {
            put_frame(&mut buf, message);
        }
        let wire = buf.freeze();
        let trickle = Trickle(wire.to_vec().into());
        let read: Vec<pb::StreamReply> = frames(trickle, 1024)
            .map(|frame| {
                let frame = frame.expect("a whole frame");
                prost::Message::decode(frame.freeze()).expect("decodes")
            })
            .collect()
            .await;
        assert_eq!(read, messages);

        let mut over = BytesMut::new();
        over.put_u32(1025);
        over.put_bytes(0, 1025);
        let mut stream = frames(&over[..], 1024);
        let error = stream
            .next()
            .await
            .expect("an item")
            .expect_err("above the limit");
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);

        let mut cut = BytesMut::new();
        cut.put_u32(10);
        cut.put_bytes(0, 4);
        let mut stream = frames(&cut[..], 1024);
        assert!(
            stream.next().await.expect("an item").is_err(),
            "a frame cut by the end of the connection is an error"
        );
    }

    /// A reader that hands out its bytes one per read.
    struct Trickle(std::collections::VecDeque<u8>);

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            if let Some(byte) = self.0.pop_front() {
                buf.put_slice(&[byte]);
            }
            std::task::Poll::Ready(Ok(()))
        }
    }

    // Goal: the preface is recognised, and other first bytes are not taken for it; in
    // particular HTTP/2's preface, which shares the port, differs from the first byte.
    // Method: read the preface, HTTP/2's preface, and a short connection.
    #[tokio::test]
    async fn the_preface_is_told_from_http2() {
        assert!(read_preface(&mut &PREFACE[..]).await.expect("read"));
        let http2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        assert_ne!(http2[0], PREFACE[0]);
        assert!(!read_preface(&mut &http2[..]).await.expect("read"));
        assert!(read_preface(&mut &PREFACE[..3]).await.is_err());
    }
}
