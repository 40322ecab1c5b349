//! Segments created at their full size ahead of time.
//!
//! An fdatasync after an append must make the file's new size durable as well as its data: on
//! ext4 the inode (through the journal, where there is one) besides the data block and the
//! flush, three device writes where a write into a file whose blocks are already allocated and
//! zero-filled takes two. `fallocate` alone is not enough: the extents it leaves unwritten are
//! converted by the first write into them, a metadata change of its own. So a segment is
//! zero-filled to `segment_bytes_max` before its first record (`WalConfig::preallocate`), and a
//! server does it on a thread of its own for the next segment while the current one fills
//! ([`Wal::prepare_segments_in_background`](super::Wal::prepare_segments_in_background)).
//!
//! The thread fills `<seq>.wal.tmp`, which the log ignores; the log renames it to the segment's
//! name when it starts that segment. A leftover temporary file (a crash while it was filled, or
//! a stop before the segment was needed) is deleted when the log is next opened.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, channel};

use crate::disk::Disk;
use crate::worker::Worker;

/// Bytes of zeros written at a time. Each chunk is synced before the next, so that a filling
/// never queues more than this ahead of the log's own fsyncs.
const ZERO_CHUNK_BYTES: u64 = 1 << 20;

/// The suffix of a segment being prepared.
pub(super) const TEMP_SUFFIX: &str = ".wal.tmp";

/// Writes zeros into `path` from its current end up to `len` bytes, a chunk at a time, syncing
/// each chunk.
pub(super) fn zero_fill(disk: &dyn Disk, path: &Path, len: u64) -> io::Result<()> {
    let mut at = disk.file_len(path)?;
    let zeros = vec![0u8; ZERO_CHUNK_BYTES.min(len) as usize];
    while at < len {
        let n = (len - at).min(ZERO_CHUNK_BYTES);
        disk.write_at(path, at, &zeros[..n as usize])?;
        disk.sync(path)?;
        at += n;
    }
    Ok(())
}

/// The temporary path of segment `seq` while it is prepared.
fn temp_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016x}{TEMP_SUFFIX}"))
}

/// A thread preparing one segment at a time, on request.
#[derive(Debug)]
pub(super) struct Preparer {
    worker: Worker<u64>,
    results: Receiver<(u64, io::Result<PathBuf>)>,
    /// The segment asked for and not yet taken.
    requested: Option<u64>,
}

impl Preparer {
    /// Starts the thread; it fills segments of `len` bytes in `dir` as they are requested.
    pub(super) fn spawn(disk: Arc<dyn Disk>, dir: PathBuf, len: u64) -> io::Result<Preparer> {
        let (done, results) = channel();
        let worker = Worker::spawn("wal-prepare", move |asked: Receiver<u64>| {
            for seq in asked {
                let path = temp_path(&dir, seq);
                let started = std::time::Instant::now();
                let result = prepare(disk.as_ref(), &path, len).map(|()| path);
                tracing::debug!(seq, took = ?started.elapsed(), ok = result.is_ok(), "prepared a WAL segment");
                if done.send((seq, result)).is_err() {
                    return;
                }
            }
        })?;
        Ok(Preparer {
            worker,
            results,
            requested: None,
        })
    }

    /// Asks for segment `seq` to be prepared.
    pub(super) fn request(&mut self, seq: u64) {
        if self.worker.send(seq) {
            self.requested = Some(seq);
        }
    }

    /// The prepared file of segment `seq`, waiting for it if it is being filled. `None` if it
    /// was not asked for or could not be prepared (the reason is logged).
    pub(super) fn take(&mut self, seq: u64) -> Option<PathBuf> {
        if self.requested.take() != Some(seq) {
            return None;
        }
        loop {
            match self.results.recv() {
                Ok((got, Ok(path))) if got == seq => return Some(path),
                Ok((got, Err(error))) if got == seq => {
                    tracing::warn!(
                        seq,
                        %error,
                        "could not prepare a WAL segment ahead of time; creating it now"
                    );
                    return None;
                }
                // An answer to an earlier request that was never taken.
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }
}

/// Creates `path` afresh and fills it with zeros up to `len` bytes.
fn prepare(disk: &dyn Disk, path: &Path, len: u64) -> io::Result<()> {
    match disk.remove(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    disk.create(path)?;
    zero_fill(disk, path, len)
}
