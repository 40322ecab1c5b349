//! The wire format of the Raft message stream: how one member carries its Raft messages to
//! another, on a TCP connection of its own to the other's peer port.
//!
//! The peer port serves both this stream and HTTP/2 (the handshake and snapshots of the
//! `chorus.peer.v1.Peer` service, and the internal services); [`PeerService::incoming`] tells
//! them apart by the first byte a connection sends: HTTP/2's preface begins with `P`, this
//! stream's [`PREFACE`] with `c`.
//!
//! After the preface both sides write frames: a 4-byte big-endian length, then one protobuf
//! message of that many bytes.
//! 1. The caller's first frame is a `HandshakeRequest`. The receiver answers with a
//!    `StreamReply` that carries its identity, or refuses the caller with a status code and the
//!    reason and closes the connection.
//! 2. The caller then writes `MessageBatch` frames, the messages in the order its Raft node made
//!    them. When it has had nothing to send for a keepalive interval it writes an empty batch, so
//!    that the receiver can tell a quiet member from a vanished one.
//! 3. The receiver writes nothing more, except when it ends the stream itself (a malformed
//!    frame, a silent caller, shutdown): one last `StreamReply` that says why.
//!
//! Why not a gRPC stream: docs/adr/0003-raft-message-stream.md.
//!
//! [`PeerService::incoming`]: super::PeerService::incoming

use bytes::{BufMut, BytesMut};
use chorus_proto::peer as pb;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};

/// The first bytes a caller writes on a Raft message stream.
pub const PREFACE: &[u8] = b"chorus raft stream\n";

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

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt as _;

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
