//! Engine commits: one engine transaction writes the batches applied since the last commit,
//! with the store's counters as the last of them left them. The store writes it in line or,
//! with [`MvccConfig::commit_in_background`](super::MvccConfig::commit_in_background), hands
//! it to a thread of its own (`mvcc-commit`) and goes on applying.
//!
//! While a commit runs on that thread, the store keeps its records in memory, where reads find
//! them between the engine and the newer batches, and reads the engine through the read
//! transaction it pinned before the commit began. A read therefore sees the same records
//! whether or not the commit has finished. Once the store learns that it has, it pins a new
//! read transaction and lets the records go. One commit runs at a time; a compaction, a sync
//! and a full buffer wait for the one in flight.

use std::collections::{BTreeMap, HashSet};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chorus_raft::LogIndex;
use redb::{Database, Durability};

use super::codec::{RECORD_ID_BYTES, RecordId};
use super::error::{MvccError, MvccResult, engine};
use super::store::{
    LEASES, META, META_APPLIED, META_COMPACTED, META_COMPACTED_ONCE, META_CURRENT, RECORDS,
};
use super::types::Revision;
use crate::worker::Worker;

/// An engine commit slower than this is logged: with commits in line, the applies wait for it.
const SLOW_COMMIT: Duration = Duration::from_millis(100);

/// What one engine transaction writes.
pub(crate) struct EngineCommit {
    /// New records, encoded, by id (all above the engine's ids).
    pub records: Arc<BTreeMap<RecordId, Bytes>>,
    /// Lease grants (with the TTL) and revocations (`None`), by id.
    pub leases: BTreeMap<i64, Option<i64>>,
    /// A compaction: the engine's records below the id that are not in the set are removed.
    pub compaction: Option<(RecordId, HashSet<RecordId>)>,
    pub current: Revision,
    pub compacted: Revision,
    pub compacted_once: bool,
    pub applied: LogIndex,
    pub durability: Durability,
}

impl EngineCommit {
    /// The applied index this commit makes durable once it succeeds, if it syncs (a commit
    /// without durability reaches the disk only with the next one that syncs).
    pub fn durable_through(&self) -> Option<LogIndex> {
        (!matches!(self.durability, Durability::None)).then_some(self.applied)
    }

    /// Writes the records, the leases and the counters in one engine transaction.
    pub fn write(&self, db: &Database) -> MvccResult<()> {
        let started = Instant::now();
        let result = self.write_transaction(db);
        let took = started.elapsed();
        crate::metrics::BACKEND_COMMIT_SECONDS.observe(took.as_secs_f64());
        if took > SLOW_COMMIT {
            tracing::warn!(
                ?took,
                records = self.records.len(),
                "an engine commit of the store took too long"
            );
        }
        result
    }

    fn write_transaction(&self, db: &Database) -> MvccResult<()> {
        let mut txn = db.begin_write().map_err(engine)?;
        txn.set_durability(self.durability).map_err(engine)?;
        {
            let mut records = txn.open_table(RECORDS).map_err(engine)?;
            if let Some((below, retained)) = &self.compaction {
                records
                    .retain_in::<&[u8; RECORD_ID_BYTES], _>(..&below.encode(), |id, _| {
                        // An undecodable id is kept: recovery reports it with context.
                        RecordId::decode(id).is_ok_and(|id| retained.contains(&id))
                    })
                    .map_err(engine)?;
            }
            for (id, record) in self.records.iter() {
                records
                    .insert(&id.encode(), record.as_ref())
                    .map_err(engine)?;
            }
            let mut leases = txn.open_table(LEASES).map_err(engine)?;
            for (id, ttl) in &self.leases {
                match ttl {
                    Some(ttl) => leases.insert(id, ttl).map_err(engine)?,
                    None => leases.remove(id).map_err(engine)?,
                };
            }
            let mut meta = txn.open_table(META).map_err(engine)?;
            meta.insert(META_CURRENT, self.current.get() as u64)
                .map_err(engine)?;
            meta.insert(META_COMPACTED, self.compacted.get() as u64)
                .map_err(engine)?;
            meta.insert(META_COMPACTED_ONCE, u64::from(self.compacted_once))
                .map_err(engine)?;
            meta.insert(META_APPLIED, self.applied.get())
                .map_err(engine)?;
        }
        txn.commit().map_err(engine)
    }
}

/// A commit handed to the commit thread and not yet seen to finish.
pub(crate) struct InFlight {
    /// Its records, which reads find here until the store pins the engine after it.
    pub records: Arc<BTreeMap<RecordId, Bytes>>,
    /// The applied index it makes durable, if it syncs.
    pub durable_through: Option<LogIndex>,
    /// In a mutex only so that the store, which readers share, is `Sync`.
    done: Mutex<Receiver<MvccResult<()>>>,
}

impl InFlight {
    /// The commit's outcome if it has finished (waiting for it with `wait`), else `None`.
    pub fn outcome(&self, wait: bool) -> Option<MvccResult<()>> {
        let stopped = || -> MvccResult<()> {
            Err(MvccError::Io {
                context: "the store's commit thread stopped".to_string(),
                source: std::io::Error::other("the thread ended without an outcome"),
            })
        };
        let done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        if wait {
            return Some(done.recv().unwrap_or_else(|_| stopped()));
        }
        match done.try_recv() {
            Ok(outcome) => Some(outcome),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => Some(stopped()),
        }
    }
}

struct Job {
    /// The engine, held only while the job runs (defragmenting needs it alone).
    db: Arc<Database>,
    commit: EngineCommit,
    done: SyncSender<MvccResult<()>>,
}

/// The store's commit thread. Dropping it waits for the commit in flight.
pub(crate) struct Committer(Worker<Job>);

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Committer")
    }
}

impl Committer {
    pub fn spawn() -> MvccResult<Committer> {
        let worker = Worker::spawn("mvcc-commit", |jobs: Receiver<Job>| {
            while let Ok(Job { db, commit, done }) = jobs.recv() {
                let outcome = commit.write(&db);
                // The store may compact the engine once it has the outcome: let go first.
                drop(db);
                drop(commit);
                let _ = done.send(outcome);
            }
        })
        .map_err(|source| MvccError::Io {
            context: "start the store's commit thread".to_string(),
            source,
        })?;
        Ok(Committer(worker))
    }

    /// Hands `commit` to the thread.
    pub fn start(&self, db: Arc<Database>, commit: EngineCommit) -> InFlight {
        let records = commit.records.clone();
        let durable_through = commit.durable_through();
        let (done, outcome) = sync_channel(1);
        // If the thread is gone, the dropped sender reports it as stopped.
        self.0.send(Job { db, commit, done });
        InFlight {
            records,
            durable_through,
            done: Mutex::new(outcome),
        }
    }
}
