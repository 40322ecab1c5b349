//! Ranges read in two steps, so that a range over many keys does not hold the store while it
//! reads the engine.
//!
//! A server keeps the store behind a lock that applying takes exclusively. A range's cost is
//! mostly reading and decoding its records from the engine, which for a range over a large part
//! of the store takes long enough to hold every write up behind it. [`MvccStore::start_range`]
//! does the part that needs the store, under its lock: the key index's walk, the records still
//! in memory, and a read transaction of the engine as the store sees it. [`DetachedRange::finish`]
//! does the rest with no lock: the engine's reads, the filters, the sort and the limit. The
//! result is the one [`MvccStore::range`] gives at the moment `start_range` ran, whatever the
//! store applies meanwhile: the read transaction keeps the engine's records as they were, and
//! the range holds its own references to the records in memory.
//!
//! A transaction that only reads starts the same way ([`MvccStore::start_read_txn`]): its
//! compares are evaluated and the ranges of its branch started together, under one hold of the
//! lock, so that they all read the same revision; [`DetachedTxn::finish`] reads them.

use std::cmp::Ordering;
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use bytes::{Bytes, BytesMut};

use super::codec::{RECORD_ID_BYTES, RecordId, RecordRef};
use super::error::{MvccResult, engine};
use super::store::{MvccStore, RECORDS, pinned};
use super::txn::{TxnPath, check_range_request, check_txn_request};
use super::types::{
    KeyValue, RangeRequest, RangeResponse, RequestOp, ResponseOp, Revision, SortTarget, TxnRequest,
    TxnResponse,
};
use super::view::{EngineTable, RecordKey, RecordValue, check_key, missing, shape_range};

/// A range whose keys are known and whose records are not yet read: see the module's doc. Hold
/// it only as long as it takes to [finish](DetachedRange::finish): a defragmentation, or
/// dropping the store, waits until every detached range has ended.
#[must_use = "a detached range reads nothing until it is finished"]
pub struct DetachedRange {
    // Fields drop in order: the engine's read transaction ends before the guard lets a
    // defragmentation or the closing of the engine go on.
    /// The engine's records as the store saw them, if any record is to be read from there.
    table: Option<EngineTable>,
    _reader: Option<ReaderGuard>,
    req: RangeRequest,
    current: Revision,
    count: i64,
    /// The keys of `found`, one after the other.
    keys: Vec<u8>,
    found: Vec<Found>,
}

/// One key a detached range reads.
struct Found {
    /// Where the key ends in `DetachedRange::keys` (it starts where the previous one ends).
    key_end: usize,
    id: RecordId,
    /// The encoded record, when the store held it in memory (applied since the engine's last
    /// commit); `None` when it is in the engine.
    memory: Option<Bytes>,
}

impl MvccStore {
    /// The first step of a range that reads the engine without the store (see the module's
    /// doc). Request errors (compacted, future revision, bad arguments) come from this step, as
    /// from [`MvccStore::range`]; only a corrupt or failing engine errs in the second.
    pub fn start_range(&self, req: &RangeRequest) -> MvccResult<DetachedRange> {
        check_range_request(req)?;
        self.check_not_failed()?;
        let view = self.view();
        let (found, count) = view.range_keys(req)?;
        // Every id in memory is above every id in the engine (see `Records`).
        let records = self.records();
        let memory_from = records
            .committing
            .keys()
            .next()
            .or_else(|| records.buffered.keys().next())
            .copied();
        let mut keys = Vec::with_capacity(found.iter().map(|(key, _)| key.len()).sum());
        let mut located = Vec::with_capacity(found.len());
        for (key, id) in found {
            let memory = match memory_from {
                Some(from) if id >= from => {
                    Some(records.memory(id).ok_or_else(|| missing(id, key))?.clone())
                }
                _ => None,
            };
            keys.extend_from_slice(key);
            located.push(Found {
                key_end: keys.len(),
                id,
                memory,
            });
        }
        let (table, reader) = if located.iter().any(|found| found.memory.is_none()) {
            let reader = self.readers.enter();
            let table = pinned(&self.engine)
                .txn
                .open_table(RECORDS)
                .map_err(engine)?;
            (Some(table), Some(reader))
        } else {
            (None, None)
        };
        Ok(DetachedRange {
            table,
            _reader: reader,
            req: req.clone(),
            current: view.current,
            count,
            keys,
            found: located,
        })
    }
}

impl DetachedRange {
    /// How many records the second step reads, from memory or from the engine.
    pub fn len(&self) -> usize {
        self.found.len()
    }

    /// Whether the second step reads nothing (a range that matched no key, or `count_only`).
    pub fn is_empty(&self) -> bool {
        self.found.is_empty()
    }

    /// The second step: reads the records and shapes the response as [`MvccStore::range`] does.
    ///
    /// The key-values share their memory: each key is a slice of one buffer of the range's
    /// keys, a value still in memory a slice of its record, and the values read from the engine
    /// slices of a few large copies. The engine's records are read in id order through one
    /// cursor, which moves from record to record where they lie close together in the engine
    /// (as the keys of a prefix written together do) instead of descending the engine's tree
    /// once per record.
    pub fn finish(self) -> MvccResult<RangeResponse> {
        let keys = Bytes::from(self.keys);
        let key_start = |at: usize| {
            at.checked_sub(1)
                .map_or(0, |before| self.found[before].key_end)
        };
        // Values are dropped below when only keys are asked for, unless the sort needs them.
        let values_wanted = !self.req.keys_only || self.req.sort_target == SortTarget::Value;
        let mut kvs = Vec::with_capacity(self.found.len());
        let mut in_engine = Vec::new();
        for (at, found) in self.found.iter().enumerate() {
            let key = keys.slice(key_start(at)..found.key_end);
            let kv = match &found.memory {
                Some(bytes) => {
                    let record = RecordRef::decode(found.id, bytes)?;
                    check_key(record.key, found.id, &key)?;
                    let value = if values_wanted {
                        bytes.slice_ref(record.value)
                    } else {
                        Bytes::new()
                    };
                    record.kv(found.id, key, value)
                }
                None => {
                    in_engine.push(at);
                    KeyValue {
                        key,
                        ..KeyValue::default()
                    }
                }
            };
            kvs.push(kv);
        }
        if !in_engine.is_empty() {
            let table = self
                .table
                .as_ref()
                .expect("a range with records in the engine opens its table");
            if !in_engine.is_sorted_by_key(|&at| self.found[at].id) {
                in_engine.sort_unstable_by_key(|&at| self.found[at].id);
            }
            let mut cursor = EngineCursor::new(table);
            let mut values = Values::default();
            for (done, &at) in in_engine.iter().enumerate() {
                let id = self.found[at].id;
                let key = &keys[key_start(at)..self.found[at].key_end];
                let guard = cursor.read(id, key)?;
                let record = RecordRef::decode(id, guard.value())?;
                check_key(record.key, id, key)?;
                let value = if values_wanted {
                    values.copy(record.value, in_engine.len() - done)
                } else {
                    Bytes::new()
                };
                let kv = &mut kvs[at];
                *kv = record.kv(id, std::mem::take(&mut kv.key), value);
            }
        }
        Ok(shape_range(&self.req, kvs, self.current, self.count))
    }
}

/// A transaction that only reads, its compares evaluated and the ranges of its branch started:
/// see the module's doc. Held as briefly as a [`DetachedRange`], for the same reason.
#[must_use = "a detached transaction reads nothing until it is finished"]
pub struct DetachedTxn {
    /// The header's revision: the store's for the outer transaction, zero for a nested one.
    revision: Revision,
    succeeded: bool,
    ops: Vec<DetachedOp>,
}

/// One operation of a detached transaction's branch.
enum DetachedOp {
    Range(Box<DetachedRange>),
    Txn(DetachedTxn),
}

impl MvccStore {
    /// The first step of a transaction that only reads ([`TxnRequest::is_read_only`]): the
    /// checks, the compares and the start of every range on the branch they choose. Its errors
    /// are those of applying the transaction; [`DetachedTxn::finish`] then gives the response
    /// applying it would.
    ///
    /// # Panics
    ///
    /// If the transaction writes.
    pub fn start_read_txn(&self, req: &TxnRequest) -> MvccResult<DetachedTxn> {
        assert!(
            req.is_read_only(),
            "start_read_txn takes a transaction that only reads"
        );
        check_txn_request(req, self.config.txn_ops_max)?;
        self.check_not_failed()?;
        let view = self.view();
        let path = TxnPath::evaluate(&view, req)?;
        path.check(&view, req)?;
        let mut txn = self.start_path(req, &path)?;
        txn.revision = view.current;
        Ok(txn)
    }

    fn start_path(&self, req: &TxnRequest, path: &TxnPath) -> MvccResult<DetachedTxn> {
        let branch = if path.succeeded {
            &req.success
        } else {
            &req.failure
        };
        let mut nested = path.nested.iter();
        let ops = branch
            .iter()
            .map(|op| match op {
                RequestOp::Range(range) => self
                    .start_range(range)
                    .map(|range| DetachedOp::Range(Box::new(range))),
                RequestOp::Txn(txn) => {
                    let path = nested.next().expect("a path for every nested txn");
                    self.start_path(txn, path).map(DetachedOp::Txn)
                }
                RequestOp::Put(_) | RequestOp::DeleteRange(_) => {
                    unreachable!("checked by start_read_txn: the transaction only reads")
                }
            })
            .collect::<MvccResult<Vec<_>>>()?;
        Ok(DetachedTxn {
            revision: Revision(0),
            succeeded: path.succeeded,
            ops,
        })
    }
}

impl DetachedTxn {
    /// How many records the second step reads, over all its ranges.
    pub fn len(&self) -> usize {
        self.ops
            .iter()
            .map(|op| match op {
                DetachedOp::Range(range) => range.len(),
                DetachedOp::Txn(txn) => txn.len(),
            })
            .sum()
    }

    /// Whether the second step reads nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The second step: reads every range and gives the response applying the transaction
    /// would.
    pub fn finish(self) -> MvccResult<TxnResponse> {
        let responses = self
            .ops
            .into_iter()
            .map(|op| match op {
                DetachedOp::Range(range) => range.finish().map(ResponseOp::Range),
                DetachedOp::Txn(txn) => txn.finish().map(ResponseOp::Txn),
            })
            .collect::<MvccResult<Vec<_>>>()?;
        Ok(TxnResponse {
            revision: self.revision,
            succeeded: self.succeeded,
            responses,
        })
    }
}

/// Reads records from the engine in increasing id order. It keeps a range cursor on the table
/// and steps it forward to the next id asked for; when that id lies more than
/// [`EngineCursor::MAX_SKIP`] records ahead, it seeks there afresh, which costs what a point
/// lookup costs. So reading ids that lie together costs a step each, and reading scattered ids
/// costs at most a few steps more than looking each one up.
struct EngineCursor<'t> {
    table: &'t EngineTable,
    range: Option<redb::Range<'static, RecordKey, RecordValue>>,
}

impl<'t> EngineCursor<'t> {
    /// How many records a step forward passes over before a seek is cheaper.
    const MAX_SKIP: usize = 8;

    fn new(table: &'t EngineTable) -> Self {
        EngineCursor { table, range: None }
    }

    /// The encoded record `id` (of `key`, for the error when it is missing). Ids must be asked
    /// for in increasing order.
    fn read(&mut self, id: RecordId, key: &[u8]) -> MvccResult<EngineGuard> {
        let wanted = id.encode();
        if let Some(range) = &mut self.range {
            for _ in 0..=Self::MAX_SKIP {
                let Some(entry) = range.next() else {
                    break;
                };
                let (at, bytes) = entry.map_err(engine)?;
                match at.value().cmp(&wanted) {
                    Ordering::Less => continue,
                    Ordering::Equal => return Ok(bytes),
                    Ordering::Greater => return Err(missing(id, key)),
                }
            }
        }
        let mut range = self
            .table
            .range::<&[u8; RECORD_ID_BYTES]>(&wanted..)
            .map_err(engine)?;
        let (at, bytes) = range
            .next()
            .ok_or_else(|| missing(id, key))?
            .map_err(engine)?;
        if at.value() != &wanted {
            return Err(missing(id, key));
        }
        self.range = Some(range);
        Ok(bytes)
    }
}

/// An encoded record as the engine holds it, in a page of its own read transaction.
type EngineGuard = redb::AccessGuard<'static, RecordValue>;

/// Copies of values read from the engine, many to an allocation, each handed out as a slice.
#[derive(Default)]
struct Values {
    /// What is left of the current allocation.
    spare: BytesMut,
}

impl Values {
    /// The most one allocation holds, unless a single value is larger.
    const CHUNK: usize = 1 << 20;

    /// A copy of `value`, the first of `left` values still to copy (which sizes a new
    /// allocation, guessing the others about as large).
    fn copy(&mut self, value: &[u8], left: usize) -> Bytes {
        if self.spare.capacity() < value.len() {
            let guess = value.len().saturating_mul(left).min(Self::CHUNK);
            self.spare = BytesMut::with_capacity(guess.max(value.len()));
        }
        self.spare.extend_from_slice(value);
        self.spare.split().freeze()
    }
}

/// Counts the detached ranges reading the engine, for what needs no read transaction alive:
/// redb compacts its file only with none, and closing the engine must not free pages a reader
/// still reads.
#[derive(Debug, Default)]
pub(crate) struct EngineReaders {
    count: Mutex<usize>,
    idle: Condvar,
}

impl EngineReaders {
    fn enter(self: &Arc<Self>) -> ReaderGuard {
        *self.count.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        ReaderGuard(self.clone())
    }

    /// Waits until no detached range reads the engine. New ones cannot start meanwhile: they
    /// start under the store's lock, which the caller holds exclusively (`&mut MvccStore`).
    pub(crate) fn wait_idle(&self) {
        let count = self.count.lock().unwrap_or_else(PoisonError::into_inner);
        drop(
            self.idle
                .wait_while(count, |count| *count > 0)
                .unwrap_or_else(PoisonError::into_inner),
        );
    }
}

struct ReaderGuard(Arc<EngineReaders>);

impl Drop for ReaderGuard {
    fn drop(&mut self) {
        let mut count = self.0.count.lock().unwrap_or_else(PoisonError::into_inner);
        *count -= 1;
        if *count == 0 {
            self.0.idle.notify_all();
        }
    }
}
