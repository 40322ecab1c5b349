//! The thread that makes the WAL durable for the Raft driver.
//!
//! The driver appends each Ready to the WAL and asks this thread for an fsync, then goes on:
//! it steps peer messages, ticks (so heartbeats go out), confirms read indexes and appends the
//! next Readies while the fsync runs. When the fsync returns, the driver acknowledges the
//! Readies it covered (`on_persisted`), sends the messages that waited for them and applies
//! their committed entries, in order. Requests that queue up during an fsync are served by one
//! fsync: it covers everything appended before it began.
//!
//! Before, the fsync ran on the driver: a disk stall of a second froze heartbeats and read
//! confirmations along with the writes, and the driver did nothing else during each fsync.

use std::io;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chorus_storage::wal::{RaftLogStore, WalError};
use tokio::sync::mpsc as tokio_mpsc;

/// An fsync slower than this is logged (every client write waits for it).
const SLOW_SYNC: Duration = Duration::from_millis(100);

/// What the thread reports: every Ready up to this number is durable, or the fsync failed.
pub(crate) type Synced = Result<u64, WalError>;

/// The handle of the syncing thread. Dropping it lets the thread finish the requests already
/// made and waits for it.
#[derive(Debug)]
pub(crate) struct WalSyncer {
    requests: Option<mpsc::Sender<u64>>,
    thread: Option<JoinHandle<()>>,
}

impl WalSyncer {
    /// Starts the thread; it reports on the returned receiver.
    pub(crate) fn spawn(
        log: RaftLogStore,
    ) -> io::Result<(WalSyncer, tokio_mpsc::UnboundedReceiver<Synced>)> {
        let (requests, asked) = mpsc::channel::<u64>();
        let (report, reports) = tokio_mpsc::unbounded_channel();
        let thread = std::thread::Builder::new()
            .name("wal-sync".to_string())
            .spawn(move || {
                while let Ok(mut number) = asked.recv() {
                    // Requests made before this fsync begins are all covered by it.
                    while let Ok(later) = asked.try_recv() {
                        number = number.max(later);
                    }
                    let started = Instant::now();
                    let result = log.sync().map(|_| number);
                    let took = started.elapsed();
                    if took > SLOW_SYNC {
                        tracing::warn!(?took, ready = number, "a WAL fsync took too long");
                    }
                    let failed = result.is_err();
                    if report.send(result).is_err() || failed {
                        return;
                    }
                }
            })?;
        let syncer = WalSyncer {
            requests: Some(requests),
            thread: Some(thread),
        };
        Ok((syncer, reports))
    }

    /// Asks for everything appended so far, which includes Ready `number`, to be made durable.
    pub(crate) fn request(&self, number: u64) {
        if let Some(requests) = &self.requests {
            // A send fails only once the thread stopped after a failure it reported.
            let _ = requests.send(number);
        }
    }
}

impl Drop for WalSyncer {
    fn drop(&mut self) {
        drop(self.requests.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
