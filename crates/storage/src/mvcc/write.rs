//! Writes: puts, deletes, transactions, compactions and lease grants and revocations, applied in a
//! [`WriteBatch`] and committed to the engine with the applied Raft index in one engine
//! transaction (with the batches before it, see `MvccConfig::commit_sync_interval`).
//!
//! The index and the buffer of new records in memory are updated as each operation runs, so
//! later operations (and, once the batch ends, reads) see earlier ones; the engine sees them when
//! the store commits. Request errors are found before an operation changes anything. Any other
//! failure (the engine, a corrupt record, a batch dropped without commit after it changed
//! something) leaves the index ahead of the engine, so the store marks itself failed and refuses
//! further writes: the node stops and reopens it (DESIGN.md: storage failures in the Raft path
//! are fatal).

use std::collections::BTreeMap;

use bytes::Bytes;
use chorus_raft::LogIndex;

use super::codec::{RECORD_ID_BYTES, Record, RecordId};
use super::error::{MvccError, MvccResult};
use super::index::KeySpan;
use super::store::{Buffer, Core, MvccStore, committing, pinned};
use super::txn::{TxnPath, check_delete_request, check_put_request, check_txn_request};
use super::types::{
    CompactResponse, DeleteRangeRequest, DeleteRangeResponse, KeyValue, LeaseGrantRequest,
    LeaseGrantResponse, LeaseId, LeaseRevokeResponse, PutRequest, PutResponse, RequestOp,
    ResponseOp, Revision, TxnRequest, TxnResponse, WriteOp, WriteResponse,
};
use super::view::{EngineTable, Records, View};

/// Writes applied together and committed to the engine in one transaction with the applied
/// index.
///
/// Dropping a batch that changed the store without committing it fails the store.
pub struct WriteBatch<'s> {
    store: &'s mut MvccStore,
    /// Until the commit.
    open: bool,
    dirty: bool,
}

impl MvccStore {
    /// Starts a batch of writes.
    pub fn begin(&mut self) -> MvccResult<WriteBatch<'_>> {
        if self.failed {
            return Err(MvccError::Failed);
        }
        Ok(WriteBatch {
            store: self,
            open: true,
            dirty: false,
        })
    }

    /// Applies one write in its own batch, recording `applied` as the applied Raft index.
    pub fn apply(&mut self, applied: LogIndex, op: &WriteOp) -> MvccResult<WriteResponse> {
        let mut batch = self.begin()?;
        let response = batch.apply(op);
        if matches!(&response, Err(error) if !error.is_request_error()) {
            return response; // the storage failure itself, not the `Failed` of the commit
        }
        batch.set_applied_index(applied);
        batch.commit()?;
        response
    }

    /// Applies the writes of committed Raft entries in one batch, and records the last index as
    /// applied (entries without a write, such as configuration changes, pass `None`). Returns each
    /// entry's response or request error; the outer error is a storage failure, after which none
    /// of the batch is durable and the store is closed.
    pub fn apply_entries<'op>(
        &mut self,
        entries: impl IntoIterator<Item = (LogIndex, Option<&'op WriteOp>)>,
    ) -> MvccResult<Vec<MvccResult<WriteResponse>>> {
        let mut batch = self.begin()?;
        let entries = entries.into_iter();
        // A committed batch is mostly writes: one allocation, not a doubling per few entries.
        let mut responses = Vec::with_capacity(entries.size_hint().0);
        let mut last = None;
        for (index, op) in entries {
            if let Some(op) = op {
                let response = batch.apply(op);
                if matches!(&response, Err(error) if !error.is_request_error()) {
                    return Err(response.expect_err("an error"));
                }
                responses.push(response);
            }
            last = Some(index);
        }
        if let Some(index) = last {
            batch.set_applied_index(index);
        }
        batch.commit()?;
        Ok(responses)
    }

    /// A put in its own batch (the applied index is unchanged).
    pub fn put(&mut self, req: &PutRequest) -> MvccResult<PutResponse> {
        self.apply_one(|batch| batch.put(req))
    }

    /// A delete in its own batch (the applied index is unchanged).
    pub fn delete_range(&mut self, req: &DeleteRangeRequest) -> MvccResult<DeleteRangeResponse> {
        self.apply_one(|batch| batch.delete_range(req))
    }

    /// A transaction in its own batch (the applied index is unchanged).
    pub fn txn(&mut self, req: &TxnRequest) -> MvccResult<TxnResponse> {
        self.apply_one(|batch| batch.txn(req))
    }

    /// A compaction in its own batch (the applied index is unchanged).
    pub fn compact(&mut self, revision: Revision) -> MvccResult<CompactResponse> {
        self.apply_one(|batch| batch.compact(revision))
    }

    /// A lease grant in its own batch (the applied index is unchanged).
    pub fn lease_grant(&mut self, req: &LeaseGrantRequest) -> MvccResult<LeaseGrantResponse> {
        self.apply_one(|batch| batch.lease_grant(req))
    }

    /// A lease revocation in its own batch (the applied index is unchanged).
    pub fn lease_revoke(&mut self, lease: LeaseId) -> MvccResult<LeaseRevokeResponse> {
        self.apply_one(|batch| batch.lease_revoke(lease))
    }

    fn apply_one<R>(
        &mut self,
        op: impl FnOnce(&mut WriteBatch<'_>) -> MvccResult<R>,
    ) -> MvccResult<R> {
        let mut batch = self.begin()?;
        let response = op(&mut batch)?;
        batch.commit()?;
        Ok(response)
    }
}

impl WriteBatch<'_> {
    /// Applies one write.
    pub fn apply(&mut self, op: &WriteOp) -> MvccResult<WriteResponse> {
        match op {
            WriteOp::Put(req) => self.put(req).map(WriteResponse::Put),
            WriteOp::DeleteRange(req) => self.delete_range(req).map(WriteResponse::DeleteRange),
            WriteOp::Txn(req) => self.txn(req).map(WriteResponse::Txn),
            WriteOp::Compact(revision) => self.compact(*revision).map(WriteResponse::Compact),
            WriteOp::LeaseGrant(req) => self.lease_grant(req).map(WriteResponse::LeaseGrant),
            WriteOp::LeaseRevoke(lease) => {
                self.lease_revoke(*lease).map(WriteResponse::LeaseRevoke)
            }
        }
    }

    /// etcd's Put. A lease to attach must be granted (etcd refuses the put on every member).
    pub fn put(&mut self, req: &PutRequest) -> MvccResult<PutResponse> {
        check_put_request(req)?;
        self.check_lease(req.lease)?;
        self.write(|writer| writer.put(req))
    }

    /// Records a granted lease. The id must be new: ids are chosen before the proposal, so two
    /// grants may race for one id and the later one is refused on every member alike.
    pub fn lease_grant(&mut self, req: &LeaseGrantRequest) -> MvccResult<LeaseGrantResponse> {
        assert!(req.id.is_some(), "the server picks an id before proposing");
        assert!(req.ttl >= 1, "the server settles the TTL before proposing");
        if self.store.core.granted.contains_key(&req.id) {
            return Err(MvccError::LeaseExists { lease: req.id });
        }
        let store = &mut *self.store;
        store.buffer.leases.insert(req.id.get(), Some(req.ttl));
        store.core.granted.insert(req.id, req.ttl);
        self.dirty = true;
        Ok(LeaseGrantResponse {
            revision: store.core.current,
            id: req.id,
            ttl: req.ttl,
        })
    }

    /// Forgets a lease and deletes all its keys at one new revision (one delete event per key,
    /// as etcd); a lease without keys makes no revision.
    pub fn lease_revoke(&mut self, lease: LeaseId) -> MvccResult<LeaseRevokeResponse> {
        if !self.store.core.granted.contains_key(&lease) {
            return Err(MvccError::LeaseNotFound { lease });
        }
        let keys = self.keys_with_lease(lease);
        let (revision, deleted) = self.write(|writer| {
            for key in &keys {
                writer.delete_range(&DeleteRangeRequest::key(key.clone()))?;
            }
            Ok((writer.revision_after(), keys.len()))
        })?;
        self.store.buffer.leases.insert(lease.get(), None);
        self.store.core.granted.remove(&lease);
        let deleted = i64::try_from(deleted).expect("key counts fit in i64");
        Ok(LeaseRevokeResponse { revision, deleted })
    }

    /// Refuses a lease to attach that the store does not hold.
    fn check_lease(&self, lease: LeaseId) -> MvccResult<()> {
        if lease.is_some() && !self.store.core.granted.contains_key(&lease) {
            return Err(MvccError::LeaseNotFound { lease });
        }
        Ok(())
    }

    /// Every lease the puts of the transaction's chosen path attach must be granted.
    fn check_txn_leases(&self, req: &TxnRequest, path: &TxnPath) -> MvccResult<()> {
        let branch = if path.succeeded {
            &req.success
        } else {
            &req.failure
        };
        let mut nested = path.nested.iter();
        for op in branch {
            match op {
                RequestOp::Put(put) => self.check_lease(put.lease)?,
                RequestOp::Txn(txn) => {
                    let path = nested.next().expect("a path for every nested txn");
                    self.check_txn_leases(txn, path)?;
                }
                RequestOp::Range(_) | RequestOp::DeleteRange(_) => {}
            }
        }
        Ok(())
    }

    /// etcd's DeleteRange. Deleting nothing does not make a revision.
    pub fn delete_range(&mut self, req: &DeleteRangeRequest) -> MvccResult<DeleteRangeResponse> {
        check_delete_request(req)?;
        self.write(|writer| writer.delete_range(req))
    }

    /// etcd's Txn: one revision for all its writes, none if it writes nothing.
    pub fn txn(&mut self, req: &TxnRequest) -> MvccResult<TxnResponse> {
        check_txn_request(req, self.store.config.txn_ops_max)?;
        let path = {
            let view = self.store.view();
            let path = TxnPath::evaluate(&view, req)?;
            path.check(&view, req)?;
            path
        };
        self.check_txn_leases(req, &path)?;
        self.write(|writer| {
            let mut response = writer.txn(req, &path)?;
            response.revision = writer.revision_after();
            Ok(response)
        })
    }

    /// etcd's Compact: forgets the versions no read at or above `revision` needs. The removal
    /// from the engine is part of this batch, so it is always physical.
    pub fn compact(&mut self, revision: Revision) -> MvccResult<CompactResponse> {
        let core = &self.store.core;
        // As etcd: a store never compacted accepts revision 0 once (etcd starts its compacted
        // revision at -1); after that, revisions up to the compacted one are refused.
        if revision < core.compacted || (revision == core.compacted && core.compacted_once) {
            return Err(MvccError::Compacted {
                compact_revision: core.compacted,
            });
        }
        if revision > core.current {
            return Err(MvccError::FutureRevision {
                current_revision: core.current,
            });
        }
        if revision.get() == 0 {
            // Nothing lies below revision 1: only the fact of the compaction is recorded.
            self.store.core.compacted_once = true;
            self.dirty = true;
            return Ok(CompactResponse {
                revision: self.store.core.current,
            });
        }
        self.with_records(|core, buffer, _| {
            let retained = core.index.compact(revision);
            let below = RecordId::first_of(revision);
            let mut removed = 0;
            buffer.records.retain(|id, record| {
                let keep = *id >= below || retained.contains(id);
                if !keep {
                    removed += RECORD_ID_BYTES + record.len();
                }
                keep
            });
            buffer.bytes -= removed;
            // The engine's records go with the commit at the end of this batch.
            buffer.compaction = Some((below, retained));
            core.compacted = revision;
            core.compacted_once = true;
            tracing::debug!(compact_revision = %revision, "compacted the mvcc store");
            Ok(CompactResponse {
                revision: core.current,
            })
        })
    }

    /// The live keys that carry `lease`, as of the writes so far in this batch (to delete them
    /// in the same batch when the lease is revoked or expires).
    pub fn keys_with_lease(&self, lease: LeaseId) -> Vec<Bytes> {
        self.store.core.leases.keys(lease)
    }

    /// Records the Raft index whose entry this batch applies. Applied indexes never go back.
    pub fn set_applied_index(&mut self, index: LogIndex) {
        let core = &mut self.store.core;
        assert!(
            index >= core.applied,
            "applied index goes back: {} -> {index}",
            core.applied
        );
        core.applied = index;
        self.dirty = true;
    }

    /// Ends the batch. Its records, the revisions and the applied index reach the engine
    /// together (and the disk, unless the store was configured without `commit_sync`) now, or
    /// with a later batch when the store batches its engine commits
    /// (`MvccConfig::commit_sync_interval`); reads see them at once either way.
    pub fn commit(mut self) -> MvccResult<()> {
        assert!(self.open, "a batch commits once");
        self.open = false;
        let store = &mut *self.store;
        if store.failed {
            // An operation failed half-way: its partial writes must not reach the engine.
            return Err(MvccError::Failed);
        }
        store.buffer.pending = true;
        if !store.commit_due() {
            return Ok(());
        }
        store.commit_batches()
    }

    /// Runs `op` on the records; a failure that is not a request error fails the store.
    fn with_records<R>(
        &mut self,
        op: impl FnOnce(&mut Core, &mut Buffer, Engine<'_>) -> MvccResult<R>,
    ) -> MvccResult<R> {
        if self.store.failed {
            return Err(MvccError::Failed);
        }
        assert!(self.open, "an open batch");
        let store = &mut *self.store;
        let engine = Engine {
            table: &pinned(&store.engine).table,
            committing: committing(&store.in_flight),
        };
        let result = op(&mut store.core, &mut store.buffer, engine);
        match &result {
            Ok(_) => self.dirty = true,
            Err(error) if error.is_request_error() => {}
            Err(error) => {
                tracing::error!(%error, "an mvcc write failed; the store is closed");
                self.store.failed = true;
            }
        }
        result
    }

    /// Runs `op` as one revision.
    fn write<R>(&mut self, op: impl FnOnce(&mut Writer<'_>) -> MvccResult<R>) -> MvccResult<R> {
        self.with_records(|core, buffer, engine| {
            let mut writer = Writer::new(core, buffer, engine);
            let response = op(&mut writer)?;
            writer.finish();
            Ok(response)
        })
    }
}

impl Drop for WriteBatch<'_> {
    fn drop(&mut self) {
        if self.open && self.dirty {
            tracing::error!("an mvcc batch was dropped after it changed the store; closing it");
            self.store.failed = true;
        }
    }
}

/// What a batch reads besides its own buffer: the engine's table as the store pinned it, and
/// the records of the engine commit in flight.
#[derive(Clone, Copy)]
struct Engine<'a> {
    table: &'a EngineTable,
    committing: &'a BTreeMap<RecordId, Bytes>,
}

/// The writes of one revision: every change gets the next sub-revision of `main`.
struct Writer<'a> {
    core: &'a mut Core,
    buffer: &'a mut Buffer,
    engine: Engine<'a>,
    main: Revision,
    changes: u64,
}

impl<'a> Writer<'a> {
    fn new(core: &'a mut Core, buffer: &'a mut Buffer, engine: Engine<'a>) -> Self {
        let main = core.current.next();
        Writer {
            core,
            buffer,
            engine,
            main,
            changes: 0,
        }
    }

    /// The store's revision so far: `main` once something was written, else the one before.
    fn revision_after(&self) -> Revision {
        if self.changes > 0 {
            self.main
        } else {
            self.core.current
        }
    }

    fn view(&self) -> View<'_, EngineTable> {
        View {
            index: &self.core.index,
            records: Records {
                buffered: &self.buffer.records,
                committing: self.engine.committing,
                table: self.engine.table,
            },
            current: self.revision_after(),
            compacted: self.core.compacted,
        }
    }

    fn next_id(&mut self) -> RecordId {
        let id = RecordId::new(self.main, self.changes);
        self.changes += 1;
        id
    }

    fn store(&mut self, id: RecordId, record: &Record) -> MvccResult<()> {
        let encoded = Bytes::from(record.encode());
        self.buffer.bytes += RECORD_ID_BYTES + encoded.len();
        let replaced = self.buffer.records.insert(id, encoded);
        debug_assert!(replaced.is_none(), "record ids are never reused: {id:?}");
        Ok(())
    }

    fn put(&mut self, req: &PutRequest) -> MvccResult<PutResponse> {
        let needs_prev = req.prev_kv || req.ignore_value || req.ignore_lease;
        let prev = if needs_prev {
            self.view().latest(&req.key)?
        } else {
            None
        };
        let (mut value, mut lease) = (req.value.clone(), req.lease);
        if req.ignore_value || req.ignore_lease {
            let Some(prev) = &prev else {
                return Err(MvccError::KeyNotFound {
                    key: req.key.clone(),
                });
            };
            if req.ignore_value {
                value = prev.value.clone();
            }
            if req.ignore_lease {
                lease = prev.lease;
            }
        }
        let id = self.next_id();
        let outcome = self.core.index.put(&req.key, id);
        let kv = KeyValue {
            key: req.key.clone(),
            create_revision: outcome.created,
            mod_revision: self.main,
            version: outcome.version,
            value,
            lease,
        };
        self.store(
            id,
            &Record {
                kv,
                tombstone: false,
            },
        )?;
        self.core.leases.attach(&req.key, lease);
        Ok(PutResponse {
            revision: self.main,
            prev_kv: prev.filter(|_| req.prev_kv),
        })
    }

    fn delete_range(&mut self, req: &DeleteRangeRequest) -> MvccResult<DeleteRangeResponse> {
        let live: Vec<(Bytes, RecordId)> = self
            .core
            .index
            .live(&KeySpan::new(&req.key, &req.range_end))
            .into_iter()
            .map(|(key, id)| (Bytes::copy_from_slice(key), id))
            .collect();
        let prev_kvs = if req.prev_kv {
            let view = self.view();
            live.iter()
                .map(|(key, id)| view.kv(key, *id))
                .collect::<MvccResult<Vec<_>>>()?
        } else {
            Vec::new()
        };
        for (key, _) in &live {
            let id = self.next_id();
            self.core.index.tombstone(key, id);
            let kv = KeyValue {
                key: key.clone(),
                mod_revision: self.main,
                ..KeyValue::default()
            };
            self.store(
                id,
                &Record {
                    kv,
                    tombstone: true,
                },
            )?;
            self.core.leases.detach(key);
        }
        let deleted = i64::try_from(live.len()).expect("key counts fit in i64");
        Ok(DeleteRangeResponse {
            revision: self.revision_after(),
            deleted,
            prev_kvs,
        })
    }

    /// Runs the branch `path` chose, with its nested transactions. A nested response's header
    /// revision stays zero, as etcd leaves it.
    fn txn(&mut self, req: &TxnRequest, path: &TxnPath) -> MvccResult<TxnResponse> {
        let branch = if path.succeeded {
            &req.success
        } else {
            &req.failure
        };
        let mut nested = path.nested.iter();
        let mut responses = Vec::with_capacity(branch.len());
        for op in branch {
            let response = match op {
                RequestOp::Range(range) => ResponseOp::Range(self.view().range(range)?),
                RequestOp::Put(put) => ResponseOp::Put(self.put(put)?),
                RequestOp::DeleteRange(delete) => {
                    ResponseOp::DeleteRange(self.delete_range(delete)?)
                }
                RequestOp::Txn(txn) => {
                    let path = nested.next().expect("a path for every nested txn");
                    ResponseOp::Txn(self.txn(txn, path)?)
                }
            };
            responses.push(response);
        }
        Ok(TxnResponse {
            revision: Revision(0),
            succeeded: path.succeeded,
            responses,
        })
    }

    /// Makes `main` the current revision if anything was written.
    fn finish(self) {
        if self.changes > 0 {
            self.core.current = self.main;
        }
    }
}
