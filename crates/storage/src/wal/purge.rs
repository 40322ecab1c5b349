//! Deleting the segments a purge detached, on a thread of its own.
//!
//! Deleting a 64 MiB segment and syncing the directory took 58-75 ms on the benchmark machine
//! (the file system frees, and on some discards, every block), and every member of a cluster
//! purges after the snapshot mark at the same index: done under the log's lock, the deletion
//! stalled the whole cluster's Raft loops at once. So a server's log forgets the segments under
//! its lock and hands their paths to a thread that deletes them
//! ([`Wal::purge_in_background`](super::Wal::purge_in_background)).
//!
//! Segments forgotten and not yet deleted at a crash are replayed again at the next start,
//! which is harmless: they hold only entries compacted since and state restated since.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::Receiver;

use super::{WalError, io_error};
use crate::disk::Disk;
use crate::worker::Worker;

/// Deletes `paths` in order and makes the deletions durable. The segments must be the log's
/// oldest, oldest first: a crash part-way then leaves a gap-free run of segments. On an error
/// the later paths are left in place, for the same reason.
pub(super) fn remove_segments(
    disk: &dyn Disk,
    dir: &Path,
    paths: &[PathBuf],
) -> Result<(), WalError> {
    if paths.is_empty() {
        return Ok(());
    }
    for path in paths {
        disk.remove(path).map_err(io_error("remove", path))?;
    }
    disk.sync_dir(dir).map_err(|source| WalError::SyncFailed {
        file: dir.to_path_buf(),
        source,
    })?;
    tracing::info!(segments = paths.len(), "purged write-ahead log segments");
    Ok(())
}

/// A thread deleting batches of detached segments in the order they are handed over. Dropping
/// it waits for the batches already handed over.
#[derive(Debug)]
pub(super) struct Purger(Worker<Vec<PathBuf>>);

impl Purger {
    /// Starts the thread; it deletes segments of the log in `dir`.
    pub(super) fn spawn(disk: Arc<dyn Disk>, dir: PathBuf) -> io::Result<Purger> {
        let worker = Worker::spawn("wal-purge", move |batches: Receiver<Vec<PathBuf>>| {
            for batch in batches {
                if let Err(error) = remove_segments(disk.as_ref(), &dir, &batch) {
                    // Deleting later segments while this one stays would leave a gap, which the
                    // next start refuses: nothing more is deleted by this process. The files
                    // left hold nothing that is needed; the next start replays them.
                    tracing::error!(
                        %error,
                        "could not purge write-ahead log segments; no more are purged until a \
                         restart"
                    );
                    return;
                }
            }
        })?;
        Ok(Purger(worker))
    }

    /// Queues `paths`, the log's oldest segments, oldest first, for deletion.
    pub(super) fn remove(&self, paths: Vec<PathBuf>) {
        if !paths.is_empty() {
            // A send fails only once the thread stopped after a failure, which it logged.
            let _ = self.0.send(paths);
        }
    }
}
