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

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use bytes::Bytes;

use super::codec::{Record, RecordId};
use super::error::{MvccResult, engine};
use super::store::{MvccStore, RECORDS, pinned};
use super::txn::check_range_request;
use super::types::{RangeRequest, RangeResponse, Revision};
use super::view::{EngineTable, Records, check_key, missing, shape_range};

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
    pub fn finish(self) -> MvccResult<RangeResponse> {
        static NONE: BTreeMap<RecordId, Bytes> = BTreeMap::new();
        let mut kvs = Vec::with_capacity(self.found.len());
        let mut start = 0;
        for found in &self.found {
            let key = &self.keys[start..found.key_end];
            start = found.key_end;
            let record = match (&found.memory, &self.table) {
                (Some(bytes), _) => check_key(Record::decode(found.id, bytes)?, found.id, key)?,
                (None, Some(table)) => Records {
                    buffered: &NONE,
                    committing: &NONE,
                    table,
                }
                .get(found.id, key)?,
                (None, None) => unreachable!("a range with records in the engine opens its table"),
            };
            kvs.push(record.kv);
        }
        Ok(shape_range(&self.req, kvs, self.current, self.count))
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
