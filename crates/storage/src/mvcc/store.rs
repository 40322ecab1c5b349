//! The store: the engine file, the in-memory index rebuilt from it, and the reads.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use chorus_raft::LogIndex;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};

use super::codec::{Record, RecordId, corrupt};
use super::commit::{Committer, EngineCommit, InFlight};
use super::detached::EngineReaders;
use super::error::{MvccError, MvccResult, engine};
use super::index::KeyIndex;
use super::txn::check_range_request;
use super::types::{
    Event, EventBatch, EventKind, HashKv, KeyValue, LeaseId, RangeRequest, RangeResponse, Revision,
    TxnRequest, TxnResponse,
};
use super::upgrade;
use super::view::{EngineTable, RecordKey, RecordTable, RecordValue, Records, View};

/// Every version of every key, by record id.
pub(crate) const RECORDS: TableDefinition<RecordKey, RecordValue> = TableDefinition::new("records");
/// The store's counters, written in the same engine transaction as the records they describe.
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(crate) const META_FORMAT: &str = "format";
pub(crate) const META_CURRENT: &str = "current_revision";
pub(crate) const META_COMPACTED: &str = "compact_revision";
/// 1 once any compaction was applied, even one at revision 0 (which etcd accepts once and then
/// refuses as compacted). Absent in stores written before it existed: then derived from
/// `compact_revision`.
pub(crate) const META_COMPACTED_ONCE: &str = "compacted_once";
pub(crate) const META_APPLIED: &str = "applied_index";
/// The granted leases: lease id -> granted TTL in seconds. Written in the same engine
/// transaction as the entry that grants or revokes them.
pub(crate) const LEASES: TableDefinition<i64, i64> = TableDefinition::new("leases");
const FORMAT: u64 = 1;
/// The engine file inside the store's directory.
pub const ENGINE_FILE: &str = "mvcc.redb";

/// The limits and settings of a store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MvccConfig {
    /// The engine's page cache.
    pub engine_cache_bytes: usize,
    /// The largest snapshot chunk (a chunk may exceed it by one record).
    pub snapshot_chunk_bytes_max: usize,
    /// The most compares, or operations of one branch, in a transaction (etcd's
    /// `--max-txn-ops`).
    pub txn_ops_max: usize,
    /// Whether a commit waits for the disk (fsync). Only tests and benchmarks of the in-memory
    /// work turn this off: without it a crash loses acknowledged writes, and commits reach the
    /// file at the next [`MvccStore::sync`] or when the store is dropped.
    pub commit_sync: bool,
    /// The longest time between two engine commits. The batches applied in between are kept in
    /// memory, where reads see them, and reach the engine (and the disk, with `commit_sync`)
    /// together in the next commit, as etcd's backend batches its commits. Zero commits every
    /// batch. A Raft member may set it because its WAL, not the store, keeps what was committed:
    /// after a crash the store reopens at the applied index of its last commit and the entries
    /// after it are applied again from the WAL (the log is only compacted below a snapshot,
    /// and a store behind the snapshot is restored from it).
    pub commit_sync_interval: std::time::Duration,
    /// Whether engine commits run on a thread of the store's own while batches go on applying
    /// (see `commit.rs`). A sync, a compaction and a full buffer still wait for them.
    pub commit_in_background: bool,
}

impl Default for MvccConfig {
    fn default() -> Self {
        MvccConfig {
            engine_cache_bytes: 64 << 20,
            snapshot_chunk_bytes_max: 1 << 20,
            txn_ops_max: 128,
            commit_sync: true,
            commit_sync_interval: std::time::Duration::ZERO,
            commit_in_background: false,
        }
    }
}

impl MvccConfig {
    /// Rejects settings that cannot work, naming the values.
    pub fn validate(&self) -> MvccResult<()> {
        let fail = |detail: String| Err(MvccError::Config { detail });
        if self.engine_cache_bytes < 1 << 20 {
            return fail(format!(
                "engine_cache_bytes {} < 1 MiB",
                self.engine_cache_bytes
            ));
        }
        if !(4096..=64 << 20).contains(&self.snapshot_chunk_bytes_max) {
            return fail(format!(
                "snapshot_chunk_bytes_max {} outside 4 KiB..=64 MiB",
                self.snapshot_chunk_bytes_max
            ));
        }
        if self.txn_ops_max == 0 {
            return fail("txn_ops_max is 0".to_string());
        }
        Ok(())
    }
}

/// Which live keys carry which lease. Lease deadlines are the server's; the store records the
/// granted leases (see [`Core::granted`]) and the attachments, so that a revocation deletes a
/// lease's keys.
#[derive(Clone, Debug, Default)]
pub(crate) struct LeaseKeys {
    by_lease: BTreeMap<LeaseId, BTreeSet<Bytes>>,
    by_key: HashMap<Bytes, LeaseId>,
}

impl LeaseKeys {
    /// Records that `key` now carries `lease` (possibly none).
    pub fn attach(&mut self, key: &Bytes, lease: LeaseId) {
        self.detach(key);
        if lease.is_some() {
            self.by_lease.entry(lease).or_default().insert(key.clone());
            self.by_key.insert(key.clone(), lease);
        }
    }

    /// Records that `key` carries no lease (it was deleted).
    pub fn detach(&mut self, key: &[u8]) {
        let Some(old) = self.by_key.remove(key) else {
            return;
        };
        let keys = self.by_lease.get_mut(&old).expect("both maps agree");
        keys.remove(key);
        if keys.is_empty() {
            self.by_lease.remove(&old);
        }
    }

    pub fn keys(&self, lease: LeaseId) -> Vec<Bytes> {
        self.by_lease
            .get(&lease)
            .map(|keys| keys.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// The most bytes of records kept in memory between two engine commits; a batch that brings the
/// buffer to this size commits at once (see [`MvccConfig::commit_sync_interval`]).
pub(crate) const BUFFER_BYTES_MAX: usize = 16 << 20;

/// What was applied since the engine's last commit: the next commit writes it, with the
/// counters of [`Core`] as they are then.
#[derive(Debug, Default)]
pub(crate) struct Buffer {
    /// New records, encoded, by id (all above the engine's ids).
    pub records: BTreeMap<RecordId, Bytes>,
    /// Lease grants (with the TTL) and revocations (`None`), by id.
    pub leases: BTreeMap<i64, Option<i64>>,
    /// A compaction applied since: the engine's records below the id that are not in the set
    /// are removed by the next commit, which comes at the end of the batch that compacted (no
    /// read sees the engine in between). The buffer itself is compacted at once.
    pub compaction: Option<(RecordId, HashSet<RecordId>)>,
    /// The size of `records` (ids and encodings).
    pub bytes: usize,
    /// Whether a batch ended since the last engine commit (it may have changed only the
    /// applied index).
    pub pending: bool,
}

/// The in-memory state: what the engine and the buffer hold, indexed.
#[derive(Debug)]
pub(crate) struct Core {
    pub index: KeyIndex,
    pub leases: LeaseKeys,
    /// The granted leases and their TTLs in seconds, as the `leases` table (with the buffer's
    /// changes) holds them.
    pub granted: BTreeMap<LeaseId, i64>,
    pub current: Revision,
    pub compacted: Revision,
    /// Whether any compaction was applied (see [`META_COMPACTED_ONCE`]).
    pub compacted_once: bool,
    pub applied: LogIndex,
}

/// The MVCC key-value store of one Raft group's state machine.
///
/// Reads take `&self`; writes go through a [`WriteBatch`](super::WriteBatch) (`&mut self`). The
/// records, the revisions and the applied Raft index reach the engine together in one engine
/// transaction, for one batch or, with [`MvccConfig::commit_sync_interval`], for the batches
/// applied since the last commit.
pub struct MvccStore {
    /// Shared with the commit thread while it writes.
    pub(crate) db: Arc<Database>,
    /// A read transaction of the engine as of the last commit the store saw finish, and its
    /// records table, through which reads and batches read the engine; pinned anew after each
    /// commit. `None` only while defragmenting.
    pub(crate) engine: Option<Pinned>,
    /// The engine commit running on the commit thread, if any.
    pub(crate) in_flight: Option<InFlight>,
    /// The detached ranges reading the engine (see [`DetachedRange`](super::DetachedRange)).
    pub(crate) readers: Arc<EngineReaders>,
    /// The commit thread, with `MvccConfig::commit_in_background`.
    committer: Option<Committer>,
    pub(crate) config: MvccConfig,
    pub(crate) core: Core,
    pub(crate) dir: PathBuf,
    /// Set when a write failed half-way: the index may be ahead of the engine, so the store
    /// refuses writes and the node must stop and reopen it.
    pub(crate) failed: bool,
    /// The batches applied since the last engine commit began.
    pub(crate) buffer: Buffer,
    /// The applied index of the last engine commit seen to finish durably (see
    /// [`MvccStore::durable_index`]).
    pub(crate) durable: LogIndex,
    /// When the last engine commit began (see `MvccConfig::commit_sync_interval`).
    pub(crate) last_commit: Option<std::time::Instant>,
    /// The engine file's size after the last engine commit or compaction: only they change
    /// it, and the quota check reads it on every write.
    pub(crate) file_bytes: u64,
}

impl Drop for MvccStore {
    fn drop(&mut self) {
        // The commit in flight finishes and the store's read transaction ends before the engine
        // closes.
        self.committer = None;
        self.in_flight = None;
        self.readers.wait_idle();
        self.engine = None;
    }
}

impl std::fmt::Debug for MvccStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MvccStore")
            .field("dir", &self.dir)
            .field("current", &self.core.current)
            .field("compacted", &self.core.compacted)
            .field("applied", &self.core.applied)
            .field("failed", &self.failed)
            .finish()
    }
}

impl MvccStore {
    /// Opens the store in `dir`, creating an empty one (at revision 1) if there is none, and
    /// rebuilds the index from the engine.
    pub fn open(dir: &Path, config: MvccConfig) -> MvccResult<MvccStore> {
        config.validate()?;
        MvccStore::open_file(dir, config).map_err(|source| {
            let path = dir.join(ENGINE_FILE);
            tracing::error!(path = %path.display(), error = %source, "cannot open the mvcc store");
            MvccError::Open {
                path,
                source: Box::new(source),
            }
        })
    }

    fn open_file(dir: &Path, config: MvccConfig) -> MvccResult<MvccStore> {
        fs::create_dir_all(dir).map_err(|source| MvccError::Io {
            context: format!("create directory {}", dir.display()),
            source,
        })?;
        let path = dir.join(ENGINE_FILE);
        if !path.exists() {
            create_atomically(dir, &path)?;
        }
        let open = || {
            Database::builder()
                .set_cache_size(config.engine_cache_bytes)
                .create(&path)
        };
        let db = match open() {
            Err(redb::DatabaseError::UpgradeRequired(upgrade::FORMAT_V2)) => {
                upgrade::upgrade_v2(&path)?;
                open()
            }
            opened => opened,
        }
        .map_err(engine)?;
        MvccStore::from_database(db, dir, config)
    }

    /// Opens the store on a storage backend of the engine's instead of a file: for tests that
    /// crash the disk, and for a simulated disk. `label` only names the store in logs.
    pub fn open_with_backend(
        label: &Path,
        backend: impl redb::StorageBackend,
        config: MvccConfig,
    ) -> MvccResult<MvccStore> {
        config.validate()?;
        let db = Database::builder()
            .set_cache_size(config.engine_cache_bytes)
            .create_with_backend(backend)
            .map_err(engine)?;
        MvccStore::from_database(db, label, config)
    }

    fn from_database(db: Database, dir: &Path, config: MvccConfig) -> MvccResult<MvccStore> {
        init_meta(&db)?;
        let core = recover(&db)?;
        tracing::info!(
            dir = %dir.display(),
            current_revision = %core.current,
            compact_revision = %core.compacted,
            applied_index = %core.applied,
            keys = core.index.len(),
            "opened the mvcc store"
        );
        let committer = if config.commit_in_background {
            Some(Committer::spawn()?)
        } else {
            None
        };
        Ok(MvccStore {
            durable: core.applied,
            engine: Some(Pinned::take(&db)?),
            db: Arc::new(db),
            in_flight: None,
            readers: Arc::default(),
            committer,
            config,
            core,
            dir: dir.to_path_buf(),
            failed: false,
            buffer: Buffer::default(),
            last_commit: None,
            file_bytes: engine_file_size(dir),
        })
    }

    /// The store's current revision (1 when empty).
    pub fn current_revision(&self) -> Revision {
        self.core.current
    }

    /// The revision of the last compaction (0 if none).
    pub fn compact_revision(&self) -> Revision {
        self.core.compacted
    }

    /// The last Raft index whose entry is reflected in the data.
    pub fn applied_index(&self) -> LogIndex {
        self.core.applied
    }

    /// The last Raft index whose entry is on disk: the applied index of the last engine commit
    /// that synced and that the store saw finish (it takes note of commits on its thread when it
    /// writes a batch, commits or syncs). Entries up to it survive a crash without the log.
    pub fn durable_index(&self) -> LogIndex {
        self.durable
    }

    /// The directory of the store.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The configuration the store was opened with.
    pub fn config(&self) -> &MvccConfig {
        &self.config
    }

    /// The live keys that carry `lease`, in key order.
    pub fn keys_with_lease(&self, lease: LeaseId) -> Vec<Bytes> {
        self.core.leases.keys(lease)
    }

    /// The granted TTL (seconds) of a lease the store holds.
    pub fn lease_ttl(&self, lease: LeaseId) -> Option<i64> {
        self.core.granted.get(&lease).copied()
    }

    /// Every granted lease with its TTL in seconds, by id.
    pub fn leases(&self) -> Vec<(LeaseId, i64)> {
        self.core
            .granted
            .iter()
            .map(|(id, ttl)| (*id, *ttl))
            .collect()
    }

    /// Reads use the in-memory index, which a failed write may have left ahead of the engine.
    pub(crate) fn check_not_failed(&self) -> MvccResult<()> {
        if self.failed {
            Err(MvccError::Failed)
        } else {
            Ok(())
        }
    }

    /// The engine's records table as of the last commit the store saw finish.
    pub(crate) fn engine_table(&self) -> &EngineTable {
        &pinned(&self.engine).table
    }

    /// The records of the commit in flight (empty if none).
    pub(crate) fn committing(&self) -> &BTreeMap<RecordId, Bytes> {
        committing(&self.in_flight)
    }

    pub(crate) fn records(&self) -> Records<'_, EngineTable> {
        Records {
            buffered: &self.buffer.records,
            committing: self.committing(),
            table: self.engine_table(),
        }
    }

    pub(crate) fn view(&self) -> View<'_, EngineTable> {
        View {
            index: &self.core.index,
            records: self.records(),
            current: self.core.current,
            compacted: self.core.compacted,
        }
    }

    /// etcd's Range.
    pub fn range(&self, req: &RangeRequest) -> MvccResult<RangeResponse> {
        check_range_request(req)?;
        self.check_not_failed()?;
        self.view().range(req)
    }

    /// etcd's Txn for a transaction that only reads ([`TxnRequest::is_read_only`]): the response
    /// applying it would give, with the same checks and errors, without writing anything. As
    /// etcd does, a server serves such a transaction as a read rather than through the log (and
    /// can read its ranges without the store: [`MvccStore::start_read_txn`]).
    ///
    /// # Panics
    ///
    /// If the transaction writes.
    pub fn read_txn(&self, req: &TxnRequest) -> MvccResult<TxnResponse> {
        self.start_read_txn(req)?.finish()
    }

    /// The events of the revisions from `from` on, oldest first, stopping after the first
    /// revision that brings the batch to `events_max` events (a revision is never split).
    /// `with_prev_kv` also reads each key's previous version when it is still retained.
    ///
    /// Errors: [`MvccError::Compacted`] when `from` is below the compacted revision (as etcd's
    /// watch; the compacted revision's own events are all kept).
    pub fn events(
        &self,
        from: Revision,
        events_max: usize,
        with_prev_kv: bool,
    ) -> MvccResult<EventBatch> {
        assert!(events_max > 0, "an event batch holds at least one event");
        self.check_not_failed()?;
        if from < self.core.compacted {
            return Err(MvccError::Compacted {
                compact_revision: self.core.compacted,
            });
        }
        let from = from.max(Revision::FIRST);
        let view = self.view();
        let mut events: Vec<Event> = Vec::new();
        let mut last_main = None;
        let mut cut_at = None;
        view.records.scan(RecordId::first_of(from).., |id, bytes| {
            if events.len() >= events_max && last_main != Some(id.main) {
                cut_at = Some(id.main);
                return Ok(false);
            }
            last_main = Some(id.main);
            let record = Record::decode(id, bytes)?;
            let prev_kv = if with_prev_kv {
                previous(&view, &record.kv)?
            } else {
                None
            };
            let kind = if record.tombstone {
                EventKind::Delete
            } else {
                EventKind::Put
            };
            events.push(Event {
                kind,
                kv: record.kv,
                prev_kv,
            });
            Ok(true)
        })?;
        Ok(EventBatch {
            events,
            next: cut_at.unwrap_or_else(|| from.max(self.core.current.next())),
        })
    }

    /// A checksum of the store's data and revisions (not of the applied index, which differs
    /// between members at the same data): equal on members that applied the same history and
    /// compactions, and preserved by a snapshot round trip.
    pub fn hash(&self) -> MvccResult<u32> {
        let mut crc = crc32c::crc32c(&self.core.current.get().to_be_bytes());
        crc = crc32c::crc32c_append(crc, &self.core.compacted.get().to_be_bytes());
        crc = self.records().crc(.., crc)?;
        for (id, ttl) in &self.core.granted {
            crc = crc32c::crc32c_append(crc, &id.get().to_be_bytes());
            crc = crc32c::crc32c_append(crc, &ttl.to_be_bytes());
        }
        Ok(crc)
    }

    /// etcd's HashKV: a checksum of every retained version up to `revision` (zero or negative:
    /// the current one), for members to compare their data at a common revision. Members that
    /// applied the same history and compactions agree, whatever they applied after `revision`.
    /// (The value is this store's own CRC32C, not etcd's hash.)
    pub fn hash_kv(&self, revision: Revision) -> MvccResult<HashKv> {
        self.check_not_failed()?;
        let at = self.view().read_revision(revision)?;
        let crc = crc32c::crc32c(&self.core.compacted.get().to_be_bytes());
        let crc = self.records().crc(..RecordId::first_of(at.next()), crc)?;
        Ok(HashKv {
            hash: crc,
            revision: at,
            compact_revision: self.core.compacted,
            current_revision: self.core.current,
        })
    }

    /// The number of records the engine holds (every retained version and tombstone).
    pub fn record_count(&self) -> MvccResult<u64> {
        let engine_count = self.engine_table().len().map_err(engine)?;
        let memory = self.committing().len() + self.buffer.records.len();
        Ok(engine_count + memory as u64)
    }

    /// The size of the engine's file on disk, in bytes (etcd's `dbSize`).
    pub fn file_size(&self) -> u64 {
        self.file_bytes
    }

    /// etcd's Defragment: rewrites the engine's file so that the space freed by compactions
    /// and deletions is returned to the file system. The contents are unchanged. Fails with an
    /// engine error while a read transaction (a snapshot being taken) is open; try again.
    /// Returns whether the engine compacted anything.
    pub fn defragment(&mut self) -> MvccResult<bool> {
        self.check_not_failed()?;
        // Everything in the engine first, and durable: compaction needs no state but the last
        // durable one alive, so the store's own read transaction goes too.
        self.sync()?;
        self.readers.wait_idle();
        self.engine = None;
        let db = Arc::get_mut(&mut self.db).expect("no commit in flight holds the engine");
        let compacted = db.compact().map_err(engine);
        let pinned = Pinned::take(&self.db);
        self.file_bytes = engine_file_size(&self.dir);
        match pinned {
            Ok(pinned) => self.engine = Some(pinned),
            Err(error) => {
                self.failed = true;
                return Err(error);
            }
        }
        compacted
    }

    /// Commits every batch applied so far to the engine, durably (see
    /// `MvccConfig::commit_sync_interval`), for example before a clean shutdown.
    pub fn sync(&mut self) -> MvccResult<()> {
        self.commit_buffer(Durability::Immediate)
    }

    /// Commits the batches applied since the last engine commit if the interval has passed
    /// (`MvccConfig::commit_sync_interval`), so that they reach the disk even when no further
    /// batch comes; with `MvccConfig::commit_in_background`, first takes note of a commit that
    /// finished, and starts the next only when none is in flight. Returns whether it committed
    /// (or started a commit). A server calls it on a timer.
    pub fn commit_if_due(&mut self) -> MvccResult<bool> {
        if self.failed {
            return Ok(false);
        }
        self.finish_commit(false)?;
        if !self.buffer.pending || !self.commit_due() || self.in_flight.is_some() {
            return Ok(false);
        }
        self.commit_batches()?;
        Ok(true)
    }

    /// Whether the batch just applied should commit to the engine (see
    /// `MvccConfig::commit_sync_interval`).
    pub(crate) fn commit_due(&self) -> bool {
        let interval = self.config.commit_sync_interval;
        self.buffer.compaction.is_some()
            || self.buffer.bytes >= BUFFER_BYTES_MAX
            || self
                .last_commit
                .is_none_or(|last| last.elapsed() >= interval)
    }

    /// Commits the buffer as a batch that found the commit due does: in line, or on the commit
    /// thread if the store has one and nothing forces it in line. A compaction commits in line
    /// (no read may see the engine's compacted records, which only its commit removes); a commit
    /// still in flight is waited for if the buffer is full, else left to finish while the
    /// buffer waits for the next batch.
    pub(crate) fn commit_batches(&mut self) -> MvccResult<()> {
        let durability = if self.config.commit_sync {
            Durability::Immediate
        } else {
            Durability::None
        };
        if self.committer.is_none() || self.buffer.compaction.is_some() {
            return self.commit_buffer(durability);
        }
        self.finish_commit(self.buffer.bytes >= BUFFER_BYTES_MAX)?;
        if self.in_flight.is_some() {
            return Ok(());
        }
        self.last_commit = Some(Instant::now());
        let commit = self.take_buffer(durability);
        let committer = self.committer.as_ref().expect("a commit thread");
        self.in_flight = Some(committer.start(self.db.clone(), commit));
        Ok(())
    }

    /// Writes the buffer, the counters and the applied index to the engine in one transaction,
    /// after the commit in flight. A failure closes the store: the index is then ahead of the
    /// engine.
    pub(crate) fn commit_buffer(&mut self, durability: Durability) -> MvccResult<()> {
        self.check_not_failed()?;
        self.finish_commit(true)?;
        self.last_commit = Some(Instant::now());
        let commit = self.take_buffer(durability);
        let result = commit.write(&self.db);
        self.committed(result, commit.durable_through())
    }

    /// Takes note of the commit in flight if it finished (or once it does, with `wait`): pins
    /// the engine after it and lets its records go.
    fn finish_commit(&mut self, wait: bool) -> MvccResult<()> {
        let Some(in_flight) = &self.in_flight else {
            return Ok(());
        };
        let Some(outcome) = in_flight.outcome(wait) else {
            return Ok(());
        };
        let result = self.committed(outcome, in_flight.durable_through);
        self.in_flight = None;
        result
    }

    /// The buffer as an engine commit, with the counters as they are now; the buffer starts
    /// empty.
    fn take_buffer(&mut self, durability: Durability) -> EngineCommit {
        let buffer = std::mem::take(&mut self.buffer);
        let core = &self.core;
        EngineCommit {
            records: Arc::new(buffer.records),
            leases: buffer.leases,
            compaction: buffer.compaction,
            current: core.current,
            compacted: core.compacted,
            compacted_once: core.compacted_once,
            applied: core.applied,
            durability,
        }
    }

    /// After an engine commit that makes `durable_through` durable if it synced: pins the
    /// engine as it now is, or closes the store if the commit failed.
    fn committed(
        &mut self,
        result: MvccResult<()>,
        durable_through: Option<LogIndex>,
    ) -> MvccResult<()> {
        self.file_bytes = engine_file_size(&self.dir);
        let result = result.and_then(|()| Pinned::take(&self.db));
        match result {
            Ok(pinned) => {
                self.engine = Some(pinned);
                if let Some(index) = durable_through {
                    self.durable = self.durable.max(index);
                }
                Ok(())
            }
            Err(error) => {
                tracing::error!(%error, "committing to the mvcc engine failed; the store is closed");
                self.failed = true;
                Err(error)
            }
        }
    }
}

/// A read transaction of the engine and its records table.
pub(crate) struct Pinned {
    /// Kept for the snapshots, which open the table again from it.
    pub txn: redb::ReadTransaction,
    pub table: EngineTable,
}

impl Pinned {
    fn take(db: &Database) -> MvccResult<Pinned> {
        let txn = db.begin_read().map_err(engine)?;
        let table = txn.open_table(RECORDS).map_err(engine)?;
        Ok(Pinned { txn, table })
    }
}

/// The engine as the store pinned it (it always is, but while defragmenting). A function of the
/// field, not of the store, so that a batch can read it while it writes the store's other
/// fields.
pub(crate) fn pinned(engine: &Option<Pinned>) -> &Pinned {
    engine.as_ref().expect("the engine is pinned")
}

/// The records of the commit in flight (empty if none).
pub(crate) fn committing(in_flight: &Option<InFlight>) -> &BTreeMap<RecordId, Bytes> {
    static NONE: BTreeMap<RecordId, Bytes> = BTreeMap::new();
    in_flight.as_ref().map_or(&NONE, |c| &c.records)
}

/// The key's version just before `kv` was written, if a read at that revision is still allowed.
fn previous<T: RecordTable>(view: &View<'_, T>, kv: &KeyValue) -> MvccResult<Option<KeyValue>> {
    let before = Revision(kv.mod_revision.get() - 1);
    if before < view.compacted || before.get() < 1 {
        return Ok(None);
    }
    view.index
        .get(&kv.key, before)
        .map(|id| view.kv(&kv.key, id))
        .transpose()
}

/// Creates an empty store file under a temporary name and renames it into place, so that a crash
/// during creation leaves no half-written engine file (which the engine would refuse to open).
fn create_atomically(dir: &Path, path: &Path) -> MvccResult<()> {
    let io = |context: String| move |source| MvccError::Io { context, source };
    let temporary = dir.join(format!("{ENGINE_FILE}.creating"));
    if temporary.exists() {
        fs::remove_file(&temporary).map_err(io(format!("remove {}", temporary.display())))?;
    }
    let db = Database::create(&temporary).map_err(engine)?;
    init_meta(&db)?;
    drop(db);
    fs::rename(&temporary, path).map_err(io(format!("rename {}", temporary.display())))?;
    let handle = fs::File::open(dir).map_err(io(format!("open {}", dir.display())))?;
    handle
        .sync_all()
        .map_err(io(format!("sync {}", dir.display())))
}

/// Writes the meta of an empty store if the engine has none.
fn init_meta(db: &Database) -> MvccResult<()> {
    let txn = db.begin_write().map_err(engine)?;
    {
        let mut meta = txn.open_table(META).map_err(engine)?;
        let format = meta.get(META_FORMAT).map_err(engine)?.map(|v| v.value());
        match format {
            Some(FORMAT) => {}
            Some(other) => return Err(corrupt("meta", format!("unknown format {other}"))),
            None => {
                meta.insert(META_FORMAT, FORMAT).map_err(engine)?;
                meta.insert(META_CURRENT, Revision::FIRST.get() as u64)
                    .map_err(engine)?;
                meta.insert(META_COMPACTED, 0).map_err(engine)?;
                meta.insert(META_APPLIED, 0).map_err(engine)?;
            }
        }
        txn.open_table(RECORDS).map_err(engine)?;
        txn.open_table(LEASES).map_err(engine)?;
    }
    txn.commit().map_err(engine)
}

/// Reads the meta and every record, and rebuilds the index and the lease attachments.
fn recover(db: &Database) -> MvccResult<Core> {
    let txn = db.begin_read().map_err(engine)?;
    let meta = txn.open_table(META).map_err(engine)?;
    let read = |name: &'static str| -> MvccResult<u64> {
        let value = meta.get(name).map_err(engine)?.map(|v| v.value());
        value.ok_or_else(|| corrupt("meta", format!("{name} is missing")))
    };
    let as_revision = |name: &'static str, value: u64| -> MvccResult<Revision> {
        i64::try_from(value)
            .map(Revision)
            .map_err(|_| corrupt("meta", format!("{name} {value} out of range")))
    };
    let current = as_revision(META_CURRENT, read(META_CURRENT)?)?;
    let compacted = as_revision(META_COMPACTED, read(META_COMPACTED)?)?;
    let applied = LogIndex(read(META_APPLIED)?);
    let compacted_once = match meta.get(META_COMPACTED_ONCE).map_err(engine)? {
        Some(once) => once.value() == 1,
        None => compacted.get() > 0,
    };
    if current < Revision::FIRST || compacted > current {
        return Err(corrupt(
            "meta",
            format!("current {current}, compacted {compacted}"),
        ));
    }
    let mut core = Core {
        index: KeyIndex::default(),
        leases: LeaseKeys::default(),
        granted: read_leases(&txn)?,
        current,
        compacted,
        compacted_once,
        applied,
    };
    let table = txn.open_table(RECORDS).map_err(engine)?;
    for entry in table.iter().map_err(engine)? {
        let (id, bytes) = entry.map_err(engine)?;
        let id = RecordId::decode(id.value())?;
        if id.main > current {
            return Err(corrupt(
                "record",
                format!("{id:?} is above current revision {current}"),
            ));
        }
        restore_record(&mut core, id, Record::decode(id, bytes.value())?)?;
    }
    if compacted.get() > 0 {
        core.index.compact(compacted);
    }
    // Every retained version must still be readable: check the index against the records.
    debug_assert!(
        check_index(
            &core,
            &Records {
                buffered: &BTreeMap::new(),
                committing: &BTreeMap::new(),
                table: &table
            }
        )
        .is_ok()
    );
    Ok(core)
}

/// Reads the granted leases; an id of zero or a TTL below one second is corruption.
fn read_leases(txn: &redb::ReadTransaction) -> MvccResult<BTreeMap<LeaseId, i64>> {
    let table = txn.open_table(LEASES).map_err(engine)?;
    let mut granted = BTreeMap::new();
    for entry in table.iter().map_err(engine)? {
        let (id, ttl) = entry.map_err(engine)?;
        let (id, ttl) = (LeaseId(id.value()), ttl.value());
        if !id.is_some() || ttl < 1 {
            return Err(corrupt("leases", format!("lease {id} with TTL {ttl}")));
        }
        granted.insert(id, ttl);
    }
    Ok(granted)
}

/// The size of the engine's file in `dir` (0 for a store on another backend).
fn engine_file_size(dir: &Path) -> u64 {
    std::fs::metadata(dir.join(ENGINE_FILE)).map_or(0, |m| m.len())
}

fn restore_record(core: &mut Core, id: RecordId, record: Record) -> MvccResult<()> {
    let kv = &record.kv;
    let applied = core
        .index
        .restore(
            &kv.key,
            id,
            kv.create_revision,
            kv.version,
            record.tombstone,
        )
        .map_err(|detail| corrupt("records", detail))?;
    if !applied && id.main > core.compacted {
        return Err(corrupt(
            "records",
            format!("tombstone {id:?} of a key that is not live"),
        ));
    }
    if record.tombstone {
        core.leases.detach(&kv.key);
    } else {
        core.leases.attach(&kv.key, kv.lease);
    }
    Ok(())
}

fn check_index<T: RecordTable>(core: &Core, records: &Records<'_, T>) -> MvccResult<()> {
    let all = super::index::KeySpan::From(Bytes::from_static(b"\0"));
    for (key, id) in core.index.live(&all) {
        records.get(id, key)?;
    }
    Ok(())
}
