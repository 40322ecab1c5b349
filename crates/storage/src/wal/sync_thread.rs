//! A thread that makes the log durable for a Raft driver.
//!
//! The driver appends each Ready to the log and asks this thread for an fsync, then goes on: it
//! steps peer messages, ticks (so heartbeats go out), confirms read indexes and appends the
//! next Readies while the fsync runs. When the fsync returns, the driver acknowledges the
//! Readies it covered (`on_persisted`), sends the messages that waited for them and applies
//! their committed entries, in order. Requests that queue up during an fsync are served by one
//! fsync: it covers everything appended before it began ([`sync_shared`](super::sync_shared)
//! holds the log only to write the buffer, not during the fsync).
//!
//! With the fsync on the driver, a disk stall of a second froze heartbeats and read
//! confirmations along with the writes, and the driver did nothing else during each fsync.

use std::io;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use super::{RaftLogStore, WalError};
use crate::metrics::SLOW_FSYNC;
use crate::worker::Worker;

/// An fsync slower than this is logged (every client write waits for it). One slower than
/// [`SLOW_FSYNC`] is logged by the WAL itself, so it is not logged here a second time.
const SLOW_SYNC: Duration = Duration::from_millis(100);

/// What the thread reports: every Ready up to this number is durable, or the fsync failed.
pub type Synced = Result<u64, WalError>;

/// The handle of the syncing thread (`wal-sync`). Dropping it lets the thread finish the
/// requests already made and waits for it.
#[derive(Debug)]
pub struct SyncThread(Worker<u64>);

impl SyncThread {
    /// Starts the thread. It hands each outcome to `report`, and stops once `report` returns
    /// false or after a failed fsync.
    pub fn spawn(
        log: RaftLogStore,
        mut report: impl FnMut(Synced) -> bool + Send + 'static,
    ) -> io::Result<SyncThread> {
        let worker = Worker::spawn("wal-sync", move |asked: Receiver<u64>| {
            while let Ok(mut number) = asked.recv() {
                // Requests made before this fsync begins are all covered by it.
                while let Ok(later) = asked.try_recv() {
                    number = number.max(later);
                }
                let started = Instant::now();
                let result = log.sync().map(|_| number);
                let took = started.elapsed();
                if took > SLOW_SYNC && took <= SLOW_FSYNC {
                    tracing::warn!(?took, ready = number, "a WAL fsync took too long");
                }
                let failed = result.is_err();
                if !report(result) || failed {
                    return;
                }
            }
        })?;
        Ok(SyncThread(worker))
    }

    /// Asks for everything appended so far, which includes Ready `number`, to be made durable.
    pub fn request(&self, number: u64) {
        // A send fails only once the thread stopped after a failure it reported.
        let _ = self.0.send(number);
    }
}
