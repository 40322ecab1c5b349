//! etcd's `Maintenance` calls beyond `Status`: Hash, HashKV, Snapshot, Defragment and
//! MoveLeader. Each is served by the member that receives it, from its own store, as etcd does;
//! MoveLeader must reach the leader.
//!
//! - **Hash** and **HashKV** checksum the store (CRC32C; see `MvccStore::hash` and
//!   `MvccStore::hash_kv`). Members that applied the same history agree, so comparing HashKV at
//!   one revision across members detects a diverged replica. The values are Chorus's own, not
//!   etcd's: compare Chorus members with each other.
//! - **Snapshot** streams a consistent copy of the store in Chorus's MVCC snapshot format (the
//!   one Raft's InstallSnapshot carries), framed as etcd frames its own: etcd clients require
//!   the stream's length to be 32 more than a multiple of 512 and its last 32 bytes to be the
//!   SHA-256 of the rest (`etcdctl snapshot save` refuses anything else). The frame is
//!   `MVCC stream | zero padding | stream length (u64, big-endian) | SHA-256 of all before`,
//!   padded so that everything before the digest is a multiple of 512 bytes; see
//!   [`unframe_snapshot`]. The copy is first written to a temporary file next to the store, so
//!   the stream holds no engine transaction while a slow client reads it and `remaining_bytes`
//!   is exact.
//! - **Defragment** rewrites the engine's file to return freed space; applies wait meanwhile.
//! - **MoveLeader** hands leadership to another voter and answers once it leads.

use std::io::{Read as _, Seek as _, Write as _};
use std::time::Duration;

use chorus_proto::etcdserverpb as pb;
use chorus_proto::internal as ipb;
use chorus_raft::NodeId;
use chorus_storage::mvcc::Revision;
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::error::ServerError;
use crate::kv_convert;
use crate::service::Edge;

/// The size of the blobs of a Snapshot stream (etcd sends 32 KiB).
pub const SNAPSHOT_BLOB_BYTES: usize = 32 * 1024;

/// The version a Snapshot stream reports: the storage format, as etcd reports its own.
pub const SNAPSHOT_VERSION: &str = "3.5.0";

/// Runs blocking store work off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ServerError> + Send + 'static,
) -> Result<T, ServerError> {
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|e| {
        Err(ServerError::Unexpected {
            message: format!("chorus: maintenance task failed: {e}"),
        })
    })
}

fn header(edge: &Edge, revision: Revision) -> Option<pb::ResponseHeader> {
    let mut header = kv_convert::header(revision);
    edge.fill(&mut header);
    header
}

pub async fn hash(edge: &Edge) -> Result<pb::HashResponse, Status> {
    let node = edge.node.clone();
    let (hash, revision) =
        blocking(move || node.read_store(|store| Ok((store.hash()?, store.current_revision()))))
            .await?;
    Ok(pb::HashResponse {
        header: header(edge, revision),
        hash,
    })
}

pub async fn hash_kv(
    edge: &Edge,
    request: pb::HashKvRequest,
) -> Result<pb::HashKvResponse, Status> {
    let node = edge.node.clone();
    let hash = blocking(move || {
        node.read_store(|store| store.hash_kv(Revision(request.revision)))
            .map_err(ServerError::from)
    })
    .await?;
    Ok(pb::HashKvResponse {
        header: header(edge, hash.current_revision),
        hash: hash.hash,
        compact_revision: hash.compact_revision.get(),
        hash_revision: hash.revision.get(),
    })
}

/// etcd's `Maintenance.Alarm`: GET lists the active alarms (after a read barrier, as a
/// linearizable read); ACTIVATE and DEACTIVATE go through Raft on the leader and answer the
/// alarm they touched.
pub async fn alarm(edge: &Edge, request: pb::AlarmRequest) -> Result<pb::AlarmResponse, Status> {
    use pb::alarm_request::AlarmAction;
    let alarms = match AlarmAction::try_from(request.action) {
        Ok(AlarmAction::Activate | AlarmAction::Deactivate) => {
            let change = ipb::member_change_request::Change::Alarm(request);
            crate::cluster::change_on_leader(edge, change).await?.alarms
        }
        Ok(AlarmAction::Get) | Err(_) => {
            let barrier = edge.node.read_barrier();
            edge.within_timeout(async { barrier.await.map_err(Status::from) })
                .await?;
            let kind = pb::AlarmType::try_from(request.alarm).unwrap_or(pb::AlarmType::None);
            edge.node.alarms().list(kind)
        }
    };
    let mut header = None;
    edge.fill_current(&mut header);
    Ok(pb::AlarmResponse { header, alarms })
}

pub async fn defragment(edge: &Edge) -> Result<pb::DefragmentResponse, Status> {
    let node = edge.node.clone();
    let revision = blocking(move || {
        node.maintain_store(|store| {
            let before = store.file_size();
            store.defragment()?;
            tracing::info!(
                before_bytes = before,
                after_bytes = store.file_size(),
                "defragmented the store"
            );
            Ok(store.current_revision())
        })
    })
    .await?;
    Ok(pb::DefragmentResponse {
        header: header(edge, revision),
    })
}

type SnapshotItem = Result<pb::SnapshotResponse, Status>;

/// Writes a consistent snapshot of the store to a temporary file next to it and returns the
/// file (rewound), its size and the revision it covers.
fn snapshot_to_file(edge: &Edge) -> Result<(std::fs::File, u64, Revision), ServerError> {
    let io = |context: &'static str| {
        move |e: std::io::Error| ServerError::Unexpected {
            message: format!("chorus: snapshot: {context}: {e}"),
        }
    };
    let (snapshot, dir) = edge.node.read_store(|store| {
        let dir = store.dir().parent().unwrap_or(store.dir()).to_path_buf();
        store.snapshot().map(|s| (s, dir))
    })?;
    let revision = snapshot.meta().current_revision;
    // Removed from the directory at once; the open handle keeps the data until it is dropped.
    let mut file = tempfile::tempfile_in(&dir).map_err(io("create a temporary file"))?;
    let mut size = 0u64;
    let mut digest = Sha256::new();
    let mut write = |bytes: &[u8]| -> Result<(), ServerError> {
        digest.update(bytes);
        file.write_all(bytes).map_err(io("write"))
    };
    for chunk in snapshot {
        let chunk = chunk?;
        write(&chunk)?;
        size += chunk.len() as u64;
    }
    let stream_len = size;
    let framed = (stream_len + 8).div_ceil(SNAPSHOT_FRAME_ALIGN) * SNAPSHOT_FRAME_ALIGN;
    write(&vec![0u8; (framed - 8 - stream_len) as usize])?;
    write(&stream_len.to_be_bytes())?;
    let digest = digest.finalize();
    file.write_all(&digest).map_err(io("write"))?;
    let size = framed + digest.len() as u64;
    file.flush().map_err(io("flush"))?;
    file.rewind().map_err(io("rewind"))?;
    Ok((file, size, revision))
}

/// The alignment of a framed snapshot before its digest (etcd clients check it).
pub const SNAPSHOT_FRAME_ALIGN: u64 = 512;

/// Why [`unframe_snapshot`] refused a file.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotFrameError {
    #[error(
        "a snapshot file of {0} bytes is not {SNAPSHOT_FRAME_ALIGN}-byte aligned plus a SHA-256 digest"
    )]
    Length(usize),
    #[error("the snapshot's SHA-256 digest does not match its contents")]
    Digest,
    #[error("the snapshot's recorded length {0} does not fit the file")]
    StreamLength(u64),
}

/// Checks a framed snapshot (as `etcdctl snapshot save` stores it) and returns the MVCC stream
/// inside, for `MvccStore::restore`.
pub fn unframe_snapshot(file: &[u8]) -> Result<&[u8], SnapshotFrameError> {
    const DIGEST: usize = 32;
    let n = file.len();
    if n < DIGEST + 8 || !(n - DIGEST).is_multiple_of(SNAPSHOT_FRAME_ALIGN as usize) {
        return Err(SnapshotFrameError::Length(n));
    }
    let (body, digest) = file.split_at(n - DIGEST);
    if Sha256::digest(body).as_slice() != digest {
        return Err(SnapshotFrameError::Digest);
    }
    let len_at = body.len() - 8;
    let stream_len = u64::from_be_bytes(body[len_at..].try_into().expect("8 bytes"));
    if stream_len > len_at as u64 || body[stream_len as usize..len_at].iter().any(|b| *b != 0) {
        return Err(SnapshotFrameError::StreamLength(stream_len));
    }
    Ok(&body[..stream_len as usize])
}

/// Streams the file in blobs, with the bytes still to come in each message.
fn send_file(
    edge: &Edge,
    mut file: std::fs::File,
    size: u64,
    revision: Revision,
    tx: &mpsc::Sender<SnapshotItem>,
) -> Result<(), ServerError> {
    let mut remaining = size;
    let mut first = true;
    while remaining > 0 {
        let len = remaining.min(SNAPSHOT_BLOB_BYTES as u64) as usize;
        let mut blob = vec![0u8; len];
        file.read_exact(&mut blob)
            .map_err(|e| ServerError::Unexpected {
                message: format!("chorus: snapshot: read back: {e}"),
            })?;
        remaining -= len as u64;
        let message = pb::SnapshotResponse {
            header: header(edge, revision),
            remaining_bytes: remaining,
            blob: blob.into(),
            version: if first {
                SNAPSHOT_VERSION.to_string()
            } else {
                String::new()
            },
        };
        first = false;
        if tx.blocking_send(Ok(message)).is_err() {
            // The client went away: nothing more to do.
            return Ok(());
        }
    }
    Ok(())
}

pub fn snapshot(edge: &Edge) -> ReceiverStream<SnapshotItem> {
    let (tx, rx) = mpsc::channel(4);
    let edge = edge.clone();
    tokio::task::spawn_blocking(move || {
        let result = snapshot_to_file(&edge)
            .and_then(|(file, size, revision)| send_file(&edge, file, size, revision, &tx));
        if let Err(error) = result {
            tracing::warn!(%error, "a snapshot stream failed");
            let _ = tx.blocking_send(Err(error.into()));
        }
    });
    ReceiverStream::new(rx)
}

/// How long MoveLeader waits for the transferee to lead (etcd waits up to the request timeout).
fn transfer_wait(edge: &Edge) -> Duration {
    edge.limits.request_timeout
}

pub async fn move_leader(
    edge: &Edge,
    request: pb::MoveLeaderRequest,
) -> Result<pb::MoveLeaderResponse, Status> {
    let to = NodeId(request.target_id);
    if request.target_id == 0 {
        return Err(ServerError::BadLeaderTransferee.into());
    }
    let mut status = edge.node.status_watch();
    edge.node.transfer_leader(to).await?;
    let moved = status.wait_for(|s| s.leader == Some(to));
    match tokio::time::timeout(transfer_wait(edge), moved).await {
        Ok(Ok(_)) => {}
        Ok(Err(_)) => return Err(ServerError::Stopped.into()),
        Err(_) => return Err(ServerError::TimeoutLeaderTransfer.into()),
    }
    let revision = edge.node.read_store(|store| store.current_revision());
    Ok(pb::MoveLeaderResponse {
        header: header(edge, revision),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(stream: &[u8]) -> Vec<u8> {
        let framed =
            (stream.len() as u64 + 8).div_ceil(SNAPSHOT_FRAME_ALIGN) * SNAPSHOT_FRAME_ALIGN;
        let mut out = stream.to_vec();
        out.resize(framed as usize - 8, 0);
        out.extend_from_slice(&(stream.len() as u64).to_be_bytes());
        let digest = Sha256::digest(&out);
        out.extend_from_slice(&digest);
        out
    }

    /// Goal: the snapshot frame satisfies etcd clients' length rule and gives back exactly the
    /// stream, and a damaged file is refused. Method: streams of lengths around the alignment
    /// framed and unframed; a flipped bit, a truncation and a lying length each refused.
    #[test]
    fn snapshot_frame_round_trips_and_refuses_damage() {
        for len in [0usize, 1, 503, 504, 505, 511, 512, 1000, 4096] {
            let stream: Vec<u8> = (0..len).map(|i| (i % 251) as u8 + 1).collect();
            let file = frame(&stream);
            assert_eq!(file.len() % 512, 32, "etcd's rule for length {len}");
            assert_eq!(unframe_snapshot(&file).unwrap(), stream.as_slice());
        }
        let file = frame(b"some stream");
        let mut flipped = file.clone();
        flipped[3] ^= 1;
        assert_eq!(unframe_snapshot(&flipped), Err(SnapshotFrameError::Digest));
        assert_eq!(
            unframe_snapshot(&file[..file.len() - 1]),
            Err(SnapshotFrameError::Length(file.len() - 1))
        );
        let mut lying = file[..file.len() - 32].to_vec();
        let at = lying.len() - 8;
        lying[at..].copy_from_slice(&600u64.to_be_bytes());
        let digest = Sha256::digest(&lying);
        lying.extend_from_slice(&digest);
        assert_eq!(
            unframe_snapshot(&lying),
            Err(SnapshotFrameError::StreamLength(600))
        );
    }
}
