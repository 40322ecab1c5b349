//! Splitting a snapshot into `SnapshotChunk` frames, and putting it back together.
//!
//! The sender sends the Raft message once, in the first chunk, with the snapshot data taken out;
//! the data follows in pieces of at most `snapshot_chunk_bytes_max`, in order, and the last chunk
//! carries the CRC-32C of the whole data. The receiver ([`SnapshotAssembler`]) checks every
//! promise the stream makes: the header comes first, the size is announced and within the limit,
//! the offsets leave no gap, nothing follows the last chunk, and the checksum matches.

use bytes::{Bytes, BytesMut};
use chorus_proto::peer as pb;
use chorus_raft::{Message, MessageBody};

use super::convert::{DecodeError, message_from_proto, message_to_proto};

/// Splits a snapshot message into the frames of one `InstallSnapshot` stream.
///
/// Precondition: `message` carries a snapshot body; `chunk_bytes_max > 0`.
pub fn snapshot_chunks(
    from: pb::PeerIdentity,
    message: &Message,
    chunk_bytes_max: usize,
) -> Vec<pb::SnapshotChunk> {
    assert!(chunk_bytes_max > 0, "chunk size must be positive");
    let MessageBody::Snapshot { snapshot } = &message.body else {
        panic!(
            "snapshot_chunks called with a {} message",
            message.body.kind()
        );
    };
    let data = snapshot.data.clone();
    let mut header = message_to_proto(message);
    if let Some(pb::message::Body::Snapshot(s)) = header.body.as_mut() {
        s.data = Bytes::new();
    }
    let crc = crc32c::crc32c(&data);
    let count = data.len().div_ceil(chunk_bytes_max).max(1);
    (0..count)
        .map(|i| {
            let start = i * chunk_bytes_max;
            let end = (start + chunk_bytes_max).min(data.len());
            let last = i + 1 == count;
            pb::SnapshotChunk {
                from: (i == 0).then_some(from),
                message: (i == 0).then(|| header.clone()),
                data_bytes: data.len() as u64,
                offset: start as u64,
                data: data.slice(start..end),
                last,
                data_crc32c: if last { crc } else { 0 },
            }
        })
        .collect()
}

/// Why a snapshot stream was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotStreamError {
    #[error("the first snapshot chunk lacks {field}")]
    MissingHeader { field: &'static str },
    #[error("snapshot message is malformed: {0}")]
    Decode(#[from] DecodeError),
    #[error("InstallSnapshot carries a {kind} message, not a snapshot")]
    NotASnapshot { kind: &'static str },
    #[error("snapshot of {data_bytes} bytes is above the limit of {data_bytes_max} bytes")]
    TooLarge {
        data_bytes: u64,
        data_bytes_max: u64,
    },
    #[error("snapshot chunk at offset {offset}, expected offset {expected}")]
    Gap { offset: u64, expected: u64 },
    #[error("snapshot chunks hold {received} bytes, more than the announced {data_bytes}")]
    Overflow { received: u64, data_bytes: u64 },
    #[error("snapshot stream ended before its first chunk")]
    Empty,
    #[error("snapshot chunk after the last one")]
    AfterLast,
    #[error("snapshot stream ended after {received} of {data_bytes} bytes")]
    Truncated { received: u64, data_bytes: u64 },
    #[error("snapshot checksum mismatch: computed {computed:#010x}, sender sent {sent:#010x}")]
    ChecksumMismatch { computed: u32, sent: u32 },
}

/// The most a receiver reserves before the data arrives.
const RESERVE_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// Rebuilds one snapshot message from the chunks of one stream.
#[derive(Debug)]
pub struct SnapshotAssembler {
    data_bytes_max: u64,
    header: Option<(pb::PeerIdentity, Message, u64)>,
    data: BytesMut,
    done: bool,
}

impl SnapshotAssembler {
    /// An assembler that refuses snapshots above `data_bytes_max`.
    pub fn new(data_bytes_max: u64) -> Self {
        SnapshotAssembler {
            data_bytes_max,
            header: None,
            data: BytesMut::new(),
            done: false,
        }
    }

    /// The sender, known once the first chunk has been accepted.
    pub fn from(&self) -> Option<&pb::PeerIdentity> {
        self.header.as_ref().map(|(from, _, _)| from)
    }

    /// Takes the next chunk. Returns the complete message after the last chunk.
    pub fn push(
        &mut self,
        chunk: pb::SnapshotChunk,
    ) -> Result<Option<Message>, SnapshotStreamError> {
        if self.done {
            return Err(SnapshotStreamError::AfterLast);
        }
        if self.header.is_none() {
            self.accept_header(&chunk)?;
        }
        let data_bytes = self.header.as_ref().map_or(0, |(_, _, n)| *n);
        let received = self.data.len() as u64;
        if chunk.offset != received {
            return Err(SnapshotStreamError::Gap {
                offset: chunk.offset,
                expected: received,
            });
        }
        let after = received + chunk.data.len() as u64;
        if after > data_bytes {
            return Err(SnapshotStreamError::Overflow {
                received: after,
                data_bytes,
            });
        }
        self.data.extend_from_slice(&chunk.data);
        if !chunk.last {
            return Ok(None);
        }
        self.done = true;
        if after != data_bytes {
            return Err(SnapshotStreamError::Truncated {
                received: after,
                data_bytes,
            });
        }
        let computed = crc32c::crc32c(&self.data);
        if computed != chunk.data_crc32c {
            return Err(SnapshotStreamError::ChecksumMismatch {
                computed,
                sent: chunk.data_crc32c,
            });
        }
        // The header was accepted on the first chunk; a stream cannot reach here without it.
        let Some((_, mut message, _)) = self.header.take() else {
            return Err(SnapshotStreamError::Empty);
        };
        if let MessageBody::Snapshot { snapshot } = &mut message.body {
            snapshot.data = std::mem::take(&mut self.data).freeze();
        }
        Ok(Some(message))
    }

    /// Checks the stream ended properly: a stream that stops before its last chunk is refused.
    pub fn finish(&self) -> Result<(), SnapshotStreamError> {
        if self.done {
            return Ok(());
        }
        if self.header.is_none() {
            return Err(SnapshotStreamError::Empty);
        }
        let data_bytes = self.header.as_ref().map_or(0, |(_, _, n)| *n);
        Err(SnapshotStreamError::Truncated {
            received: self.data.len() as u64,
            data_bytes,
        })
    }

    fn accept_header(&mut self, chunk: &pb::SnapshotChunk) -> Result<(), SnapshotStreamError> {
        let from = chunk
            .from
            .ok_or(SnapshotStreamError::MissingHeader { field: "from" })?;
        let frame = chunk
            .message
            .clone()
            .ok_or(SnapshotStreamError::MissingHeader { field: "message" })?;
        let message = message_from_proto(frame)?;
        if !matches!(message.body, MessageBody::Snapshot { .. }) {
            return Err(SnapshotStreamError::NotASnapshot {
                kind: message.body.kind(),
            });
        }
        if chunk.data_bytes > self.data_bytes_max {
            return Err(SnapshotStreamError::TooLarge {
                data_bytes: chunk.data_bytes,
                data_bytes_max: self.data_bytes_max,
            });
        }
        // Reserve no more than a bound up front, whatever the sender announced: memory grows
        // with the data that actually arrives.
        self.data
            .reserve(chunk.data_bytes.min(RESERVE_BYTES_MAX) as usize);
        self.header = Some((from, message, chunk.data_bytes));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use chorus_raft::{ConfState, GroupId, LogIndex, NodeId, Snapshot, SnapshotMeta, Term};

    use super::*;

    fn identity() -> pb::PeerIdentity {
        pb::PeerIdentity {
            cluster_id: 7,
            member_id: 1,
            protocol_version: 1,
        }
    }

    fn snapshot_message(len: usize) -> Message {
        let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        Message {
            group_id: GroupId(1),
            from: NodeId(1),
            to: NodeId(2),
            term: Term(5),
            body: MessageBody::Snapshot {
                snapshot: Snapshot {
                    meta: SnapshotMeta {
                        index: LogIndex(100),
                        term: Term(4),
                        conf_state: ConfState::with_voters([NodeId(1), NodeId(2)]),
                    },
                    data: Bytes::from(data),
                },
            },
        }
    }

    fn assemble(chunks: Vec<pb::SnapshotChunk>) -> Result<Option<Message>, SnapshotStreamError> {
        let mut assembler = SnapshotAssembler::new(1 << 20);
        let mut result = None;
        for chunk in chunks {
            if let Some(m) = assembler.push(chunk)? {
                result = Some(m);
            }
        }
        assembler.finish()?;
        Ok(result)
    }

    // Goal: split then reassemble gives back the message, for sizes around chunk boundaries
    // and the empty snapshot. Method: a table of sizes with a chunk size of 10.
    #[test]
    fn split_and_reassemble_round_trips() {
        assert_eq!(
            assemble(Vec::new()),
            Err(SnapshotStreamError::Empty),
            "no chunks at all"
        );
        for len in [0, 1, 9, 10, 11, 20, 95] {
            let message = snapshot_message(len);
            let chunks = snapshot_chunks(identity(), &message, 10);
            assert_eq!(chunks.len(), len.div_ceil(10).max(1), "len {len}");
            assert!(chunks.iter().all(|c| c.data.len() <= 10));
            assert_eq!(assemble(chunks), Ok(Some(message)), "len {len}");
        }
    }

    // Goal: every broken promise of the stream is refused with its own error.
    // Method: tamper with the chunks of a valid 25-byte snapshot, one way per row.
    #[test]
    fn broken_streams_are_refused() {
        type Tamper = fn(&mut Vec<pb::SnapshotChunk>);
        type Check = fn(&SnapshotStreamError) -> bool;
        let cases: &[(Tamper, Check)] = &[
            (
                |c| c[0].from = None,
                |e| matches!(e, SnapshotStreamError::MissingHeader { field: "from" }),
            ),
            (
                |c| c[0].message = None,
                |e| matches!(e, SnapshotStreamError::MissingHeader { field: "message" }),
            ),
            (
                |c| c[0].message.as_mut().unwrap().body = None,
                |e| matches!(e, SnapshotStreamError::Decode(_)),
            ),
            (
                |c| {
                    c[0].message.as_mut().unwrap().body =
                        Some(pb::message::Body::TimeoutNow(pb::TimeoutNow {}))
                },
                |e| matches!(e, SnapshotStreamError::NotASnapshot { kind: "TimeoutNow" }),
            ),
            (
                |c| c[0].data_bytes = 2 << 20,
                |e| matches!(e, SnapshotStreamError::TooLarge { .. }),
            ),
            (
                |c| {
                    c.remove(1);
                },
                |e| {
                    matches!(
                        e,
                        SnapshotStreamError::Gap {
                            offset: 20,
                            expected: 10
                        }
                    )
                },
            ),
            (
                |c| c[0].data_bytes = 15,
                |e| matches!(e, SnapshotStreamError::Overflow { .. }),
            ),
            (
                |c| c[2].data_crc32c ^= 1,
                |e| matches!(e, SnapshotStreamError::ChecksumMismatch { .. }),
            ),
            (
                |c| {
                    c.pop();
                },
                |e| matches!(e, SnapshotStreamError::Truncated { received: 20, .. }),
            ),
            (
                |c| {
                    let extra = c[2].clone();
                    c.push(extra);
                },
                |e| matches!(e, SnapshotStreamError::AfterLast),
            ),
            (
                |c| {
                    c[0].data_bytes = 30;
                },
                |e| {
                    matches!(
                        e,
                        SnapshotStreamError::Truncated {
                            received: 25,
                            data_bytes: 30
                        }
                    )
                },
            ),
        ];
        for (i, (tamper, check)) in cases.iter().enumerate() {
            let mut chunks = snapshot_chunks(identity(), &snapshot_message(25), 10);
            tamper(&mut chunks);
            let err = assemble(chunks).expect_err(&format!("case {i} must be refused"));
            assert!(check(&err), "case {i}: unexpected {err:?}");
        }
    }
}
