//! Consistent point-in-time snapshots of the store, streamed in chunks (for Raft's
//! InstallSnapshot and etcd's Maintenance.Snapshot), and their restore into a fresh directory.
//!
//! A snapshot reads one engine read transaction plus the batches applied since the engine's last
//! commit (a copy of the store's buffer, which shares the records' bytes), so it sees exactly the
//! store as it was when taken: the records, the revisions and the applied index that covers them.
//! Writes may go on meanwhile.
//!
//! Stream format (integers big-endian), cut into chunks at record boundaries:
//!
//! ```text
//! magic "CHMVCC02" | current_revision u64 | compact_revision u64 | applied_index u64
//! { 0x03 | lease id i64 | granted TTL i64 } ...          (ascending ids, before any record)
//! { 0x01 | record id (16 bytes) | length u32 | record } ...
//! 0x02 | record count u64 | lease count u64 | crc32c u32 of every byte before it
//! ```
//!
//! The restore side trusts nothing: it checks the magic, every length, the order of the ids and
//! of the leases, every record's encoding and every lease, the counts and the checksum, and
//! commits only when all hold. Format version 1 (no leases) is refused by its magic.

use std::ops::Bound;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use chorus_raft::LogIndex;
use redb::{Database, ReadOnlyTable, WriteTransaction};

use super::codec::{RECORD_ID_BYTES, Record, RecordId};
use super::error::{MvccError, MvccResult, engine};
use super::store::{
    ENGINE_FILE, LEASES, META, META_APPLIED, META_COMPACTED, META_CURRENT, MvccConfig, MvccStore,
    RECORDS, pinned,
};
use super::types::Revision;
use super::view::{RecordKey, RecordValue};

/// The first bytes of a snapshot stream (format version 2: with the granted leases).
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"CHMVCC02";
const HEADER_BYTES: usize = SNAPSHOT_MAGIC.len() + 3 * 8;
const TAG_RECORD: u8 = 1;
const TAG_END: u8 = 2;
const TAG_LEASE: u8 = 3;
const LEASE_BYTES: usize = 1 + 8 + 8;
const RECORD_HEAD_BYTES: usize = 1 + RECORD_ID_BYTES + 4;
const END_BYTES: usize = 1 + 8 + 8 + 4;

/// What a snapshot covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotMeta {
    pub current_revision: Revision,
    pub compact_revision: Revision,
    pub applied_index: LogIndex,
}

impl SnapshotMeta {
    fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut out = [0u8; HEADER_BYTES];
        out[..8].copy_from_slice(&SNAPSHOT_MAGIC);
        out[8..16].copy_from_slice(&(self.current_revision.get() as u64).to_be_bytes());
        out[16..24].copy_from_slice(&(self.compact_revision.get() as u64).to_be_bytes());
        out[24..32].copy_from_slice(&self.applied_index.get().to_be_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> MvccResult<SnapshotMeta> {
        if bytes[..8] != SNAPSHOT_MAGIC {
            return Err(bad(format!("unknown magic {:?}", &bytes[..8])));
        }
        let int_at = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8"));
        let revision = |at: usize| {
            i64::try_from(int_at(at))
                .map(Revision)
                .map_err(|_| bad("revision out of range".into()))
        };
        let meta = SnapshotMeta {
            current_revision: revision(8)?,
            compact_revision: revision(16)?,
            applied_index: LogIndex(int_at(24)),
        };
        if meta.current_revision < Revision::FIRST || meta.compact_revision > meta.current_revision
        {
            return Err(bad(format!("inconsistent revisions {meta:?}")));
        }
        Ok(meta)
    }
}

fn bad(detail: String) -> MvccError {
    MvccError::Snapshot { detail }
}

/// A snapshot being streamed. Iterate it (or call [`Snapshot::next_chunk`]) for the chunks.
pub struct Snapshot {
    table: ReadOnlyTable<RecordKey, RecordValue>,
    /// The records not in the table, by id (all above the table's): an engine commit's in
    /// flight and the buffer's.
    buffered: Vec<(RecordId, Bytes)>,
    /// The position of the next buffered record to send, once the table's are sent.
    buffered_next: usize,
    /// Every granted lease, by id.
    leases: Vec<(i64, i64)>,
    meta: SnapshotMeta,
    chunk_bytes_max: usize,
    /// The last record sent, the position of the next chunk.
    last: Option<[u8; RECORD_ID_BYTES]>,
    header_sent: bool,
    leases_sent: bool,
    finished: bool,
    crc: u32,
    records: u64,
    lease_count: u64,
}

impl MvccStore {
    /// Takes a consistent snapshot of the committed state.
    pub fn snapshot(&self) -> MvccResult<Snapshot> {
        self.check_not_failed()?;
        let core = &self.core;
        let meta = SnapshotMeta {
            current_revision: core.current,
            compact_revision: core.compacted,
            applied_index: core.applied,
        };
        let buffered = self.committing().iter().chain(&self.buffer.records);
        Ok(Snapshot {
            table: pinned(&self.engine)
                .txn
                .open_table(RECORDS)
                .map_err(engine)?,
            buffered: buffered.map(|(id, record)| (*id, record.clone())).collect(),
            buffered_next: 0,
            leases: core
                .granted
                .iter()
                .map(|(id, ttl)| (id.get(), *ttl))
                .collect(),
            meta,
            chunk_bytes_max: self.config.snapshot_chunk_bytes_max,
            last: None,
            header_sent: false,
            leases_sent: false,
            finished: false,
            crc: 0,
            records: 0,
            lease_count: 0,
        })
    }

    /// Restores a snapshot stream into `dir` (which must hold no store) and opens it.
    pub fn restore<I>(dir: &Path, config: MvccConfig, chunks: I) -> MvccResult<MvccStore>
    where
        I: IntoIterator<Item = MvccResult<Bytes>>,
    {
        let mut restore = SnapshotRestore::create(dir, config)?;
        for chunk in chunks {
            restore.push(&chunk?)?;
        }
        restore.finish()
    }
}

impl Snapshot {
    /// What the snapshot covers.
    pub fn meta(&self) -> SnapshotMeta {
        self.meta
    }

    /// The next chunk of the stream, or `None` after the last.
    pub fn next_chunk(&mut self) -> MvccResult<Option<Bytes>> {
        if self.finished {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(self.chunk_bytes_max.min(1 << 16));
        if !self.header_sent {
            out.extend_from_slice(&self.meta.encode());
            self.header_sent = true;
        }
        let mut full = !self.leases_sent && self.push_leases(&mut out)?;
        if !full {
            full = self.push_records(&mut out)?;
        }
        if !full {
            out.push(TAG_END);
            out.extend_from_slice(&self.records.to_be_bytes());
            out.extend_from_slice(&self.lease_count.to_be_bytes());
            self.crc = crc32c::crc32c_append(self.crc, &out);
            out.extend_from_slice(&self.crc.to_be_bytes());
            self.finished = true;
        } else {
            self.crc = crc32c::crc32c_append(self.crc, &out);
        }
        Ok(Some(Bytes::from(out)))
    }

    /// Appends the leases after the last one sent; returns whether the chunk is full.
    fn push_leases(&mut self, out: &mut Vec<u8>) -> MvccResult<bool> {
        while let Some((id, ttl)) = self.leases.get(self.lease_count as usize) {
            out.push(TAG_LEASE);
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&ttl.to_be_bytes());
            self.lease_count += 1;
            if out.len() >= self.chunk_bytes_max {
                return Ok(true);
            }
        }
        self.leases_sent = true;
        Ok(false)
    }

    /// Appends the records after the last one sent; returns whether the chunk is full.
    fn push_records(&mut self, out: &mut Vec<u8>) -> MvccResult<bool> {
        let lower = match &self.last {
            Some(last) => Bound::Excluded(last),
            None => Bound::Unbounded,
        };
        if self.buffered_next == 0 {
            for entry in self
                .table
                .range::<&[u8; RECORD_ID_BYTES]>((lower, Bound::Unbounded))
                .map_err(engine)?
            {
                let (id, record) = entry.map_err(engine)?;
                self.last = Some(*id.value());
                if self.push_record(out, id.value(), record.value()) {
                    return Ok(true);
                }
            }
        }
        while let Some((id, record)) = self.buffered.get(self.buffered_next) {
            let (id, record) = (id.encode(), record.clone());
            self.buffered_next += 1;
            if self.push_record(out, &id, &record) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Appends one record; returns whether the chunk is full.
    fn push_record(
        &mut self,
        out: &mut Vec<u8>,
        id: &[u8; RECORD_ID_BYTES],
        record: &[u8],
    ) -> bool {
        let len = u32::try_from(record.len()).expect("records are below 4 GiB");
        out.push(TAG_RECORD);
        out.extend_from_slice(id);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(record);
        self.records += 1;
        out.len() >= self.chunk_bytes_max
    }
}

impl Iterator for Snapshot {
    type Item = MvccResult<Bytes>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_chunk().transpose()
    }
}

/// A restore in progress: push the chunks in order, then finish.
pub struct SnapshotRestore {
    dir: PathBuf,
    config: MvccConfig,
    /// Declared before `db`: the transaction must end before the database closes.
    txn: WriteTransaction,
    db: Database,
    pending: Vec<u8>,
    meta: Option<SnapshotMeta>,
    last: Option<RecordId>,
    last_lease: Option<i64>,
    crc: u32,
    records: u64,
    lease_count: u64,
    done: bool,
}

impl SnapshotRestore {
    /// Prepares a restore into `dir`, which must not hold a store yet.
    pub fn create(dir: &Path, config: MvccConfig) -> MvccResult<SnapshotRestore> {
        config.validate()?;
        let path = dir.join(ENGINE_FILE);
        if path.exists() {
            return Err(bad(format!(
                "refusing to restore over the store in {}",
                dir.display()
            )));
        }
        std::fs::create_dir_all(dir).map_err(|source| MvccError::Io {
            context: format!("create directory {}", dir.display()),
            source,
        })?;
        let db = Database::create(&path).map_err(engine)?;
        let txn = db.begin_write().map_err(engine)?;
        Ok(SnapshotRestore {
            dir: dir.to_path_buf(),
            config,
            db,
            txn,
            pending: Vec::new(),
            meta: None,
            last: None,
            last_lease: None,
            crc: 0,
            records: 0,
            lease_count: 0,
            done: false,
        })
    }

    /// Takes the next chunk (chunks may be cut anywhere).
    pub fn push(&mut self, chunk: &[u8]) -> MvccResult<()> {
        self.pending.extend_from_slice(chunk);
        let mut at = 0;
        while let Some(used) = self.parse_one(at)? {
            self.crc = if self.done {
                self.crc // the end marker updates the checksum itself
            } else {
                crc32c::crc32c_append(self.crc, &self.pending[at..at + used])
            };
            at += used;
        }
        self.pending.drain(..at);
        Ok(())
    }

    /// Parses one item at `at`; returns its length, or `None` if more bytes are needed.
    fn parse_one(&mut self, at: usize) -> MvccResult<Option<usize>> {
        let bytes = &self.pending[at..];
        if self.done {
            if !bytes.is_empty() {
                return Err(bad(format!("{} bytes after the end marker", bytes.len())));
            }
            return Ok(None);
        }
        let Some(meta) = self.meta else {
            if bytes.len() < HEADER_BYTES {
                return Ok(None);
            }
            self.meta = Some(SnapshotMeta::decode(&bytes[..HEADER_BYTES])?);
            return Ok(Some(HEADER_BYTES));
        };
        match bytes.first() {
            None => Ok(None),
            Some(&TAG_RECORD) => self.parse_record(at, meta),
            Some(&TAG_LEASE) => self.parse_lease(at),
            Some(&TAG_END) => self.parse_end(at),
            Some(tag) => Err(bad(format!(
                "unknown tag {tag} after {} records",
                self.records
            ))),
        }
    }

    fn parse_record(&mut self, at: usize, meta: SnapshotMeta) -> MvccResult<Option<usize>> {
        let bytes = &self.pending[at..];
        if bytes.len() < RECORD_HEAD_BYTES {
            return Ok(None);
        }
        let id_bytes: [u8; RECORD_ID_BYTES] = bytes[1..17].try_into().expect("16 bytes");
        let len = u32::from_be_bytes(bytes[17..21].try_into().expect("4 bytes")) as usize;
        if bytes.len() < RECORD_HEAD_BYTES + len {
            return Ok(None);
        }
        let id = RecordId::decode(&id_bytes)?;
        if self.last.is_some_and(|last| last >= id) || id.main > meta.current_revision {
            return Err(bad(format!(
                "record {id:?} out of order after {:?}",
                self.last
            )));
        }
        let record = &bytes[RECORD_HEAD_BYTES..RECORD_HEAD_BYTES + len];
        Record::decode(id, record)?;
        let mut table = self.txn.open_table(RECORDS).map_err(engine)?;
        table.insert(&id_bytes, record).map_err(engine)?;
        self.last = Some(id);
        self.records += 1;
        Ok(Some(RECORD_HEAD_BYTES + len))
    }

    fn parse_lease(&mut self, at: usize) -> MvccResult<Option<usize>> {
        let bytes = &self.pending[at..];
        if bytes.len() < LEASE_BYTES {
            return Ok(None);
        }
        let id = i64::from_be_bytes(bytes[1..9].try_into().expect("8 bytes"));
        let ttl = i64::from_be_bytes(bytes[9..17].try_into().expect("8 bytes"));
        if self.records > 0 {
            return Err(bad(format!("lease {id} after {} records", self.records)));
        }
        if self.last_lease.is_some_and(|last| last >= id) {
            return Err(bad(format!(
                "lease {id} out of order after {:?}",
                self.last_lease
            )));
        }
        if id == 0 || ttl < 1 {
            return Err(bad(format!("lease {id} with TTL {ttl}")));
        }
        let mut table = self.txn.open_table(LEASES).map_err(engine)?;
        table.insert(id, ttl).map_err(engine)?;
        self.last_lease = Some(id);
        self.lease_count += 1;
        Ok(Some(LEASE_BYTES))
    }

    fn parse_end(&mut self, at: usize) -> MvccResult<Option<usize>> {
        let bytes = &self.pending[at..];
        if bytes.len() < END_BYTES {
            return Ok(None);
        }
        let count = u64::from_be_bytes(bytes[1..9].try_into().expect("8 bytes"));
        let lease_count = u64::from_be_bytes(bytes[9..17].try_into().expect("8 bytes"));
        let crc = u32::from_be_bytes(bytes[17..21].try_into().expect("4 bytes"));
        if count != self.records {
            return Err(bad(format!(
                "end marker counts {count} records, stream had {}",
                self.records
            )));
        }
        if lease_count != self.lease_count {
            return Err(bad(format!(
                "end marker counts {lease_count} leases, stream had {}",
                self.lease_count
            )));
        }
        let expected = crc32c::crc32c_append(self.crc, &bytes[..17]);
        if crc != expected {
            return Err(bad(format!(
                "checksum {crc:#010x}, computed {expected:#010x}"
            )));
        }
        self.done = true;
        Ok(Some(END_BYTES))
    }

    /// Checks that the stream was complete, commits it and opens the restored store.
    pub fn finish(self) -> MvccResult<MvccStore> {
        let meta = match self.meta {
            Some(meta) if self.done && self.pending.is_empty() => meta,
            _ => return Err(bad("the stream ended before its end marker".to_string())),
        };
        {
            let mut table = self.txn.open_table(META).map_err(engine)?;
            table.insert(super::store::META_FORMAT, 1).map_err(engine)?;
            table
                .insert(META_CURRENT, meta.current_revision.get() as u64)
                .map_err(engine)?;
            table
                .insert(META_COMPACTED, meta.compact_revision.get() as u64)
                .map_err(engine)?;
            table
                .insert(META_APPLIED, meta.applied_index.get())
                .map_err(engine)?;
        }
        self.txn.open_table(RECORDS).map_err(engine)?;
        self.txn.open_table(LEASES).map_err(engine)?;
        self.txn.commit().map_err(engine)?;
        drop(self.db);
        MvccStore::open(&self.dir, self.config)
    }
}
