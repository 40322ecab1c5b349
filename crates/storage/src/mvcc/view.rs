//! A read view of the store at one revision: the key index plus the records (the engine's, and
//! those applied since its last commit, which the store keeps in memory until the next one).
//! Range and the reads of a transaction run here.

use std::collections::BTreeMap;
use std::ops::{Bound, RangeBounds};

use bytes::Bytes;
use redb::ReadableTable;

use super::codec::{RECORD_ID_BYTES, Record, RecordId, corrupt};
use super::error::{MvccError, MvccResult, engine};
use super::index::{KeyIndex, KeySpan};
use super::types::{KeyValue, RangeRequest, RangeResponse, Revision, SortOrder, SortTarget};

/// The record table's key and value types.
pub(crate) type RecordKey = &'static [u8; RECORD_ID_BYTES];
pub(crate) type RecordValue = &'static [u8];
/// The engine's records table, as a read transaction sees it.
pub(crate) type EngineTable = redb::ReadOnlyTable<RecordKey, RecordValue>;

/// A readable record table: redb's read-only table or its write table.
pub(crate) trait RecordTable: ReadableTable<RecordKey, RecordValue> {}

impl<T: ReadableTable<RecordKey, RecordValue>> RecordTable for T {}

/// The records a read sees: the engine's table, the records of an engine commit in flight, and
/// the records applied since that commit began (encoded, by id). Every buffered id is above
/// every committing id, which is above every id in the table (ids grow, a commit takes the
/// whole buffer, and the table is read as it was before the commit in flight), so a scan reads
/// the table's part first, then the commit's, then the buffer's.
pub(crate) struct Records<'a, T> {
    pub buffered: &'a BTreeMap<RecordId, Bytes>,
    pub committing: &'a BTreeMap<RecordId, Bytes>,
    pub table: &'a T,
}

impl<'a, T: RecordTable> Records<'a, T> {
    /// The encoded record `id` when it is in memory (applied since the engine's last commit).
    pub fn memory(&self, id: RecordId) -> Option<&'a Bytes> {
        self.buffered.get(&id).or_else(|| self.committing.get(&id))
    }

    /// Reads one record by id and checks that it belongs to `key`.
    pub fn get(&self, id: RecordId, key: &[u8]) -> MvccResult<Record> {
        let record = match self.memory(id) {
            Some(bytes) => Record::decode(id, bytes)?,
            None => {
                let guard = self.table.get(&id.encode()).map_err(engine)?;
                Record::decode(id, guard.ok_or_else(|| missing(id, key))?.value())?
            }
        };
        check_key(&record.kv.key, id, key)?;
        Ok(record)
    }

    /// Calls `each` with the id and the encoded record of every record in `range`, in id order,
    /// until it returns false.
    pub fn scan(
        &self,
        range: impl RangeBounds<RecordId>,
        mut each: impl FnMut(RecordId, &[u8]) -> MvccResult<bool>,
    ) -> MvccResult<()> {
        let encode = |bound: Bound<&RecordId>| bound.map(|id| id.encode());
        let (start, end) = (encode(range.start_bound()), encode(range.end_bound()));
        for entry in self
            .table
            .range::<&[u8; RECORD_ID_BYTES]>((start.as_ref(), end.as_ref()))
            .map_err(engine)?
        {
            let (id, bytes) = entry.map_err(engine)?;
            if !each(RecordId::decode(id.value())?, bytes.value())? {
                return Ok(());
            }
        }
        let bounds = (range.start_bound().cloned(), range.end_bound().cloned());
        for (id, bytes) in self
            .committing
            .range(bounds)
            .chain(self.buffered.range(bounds))
        {
            if !each(*id, bytes)? {
                return Ok(());
            }
        }
        Ok(())
    }
}

impl<T: RecordTable> Records<'_, T> {
    /// `crc` extended with the id and the encoding of every record in `range`, in id order.
    pub fn crc(&self, range: impl RangeBounds<RecordId>, mut crc: u32) -> MvccResult<u32> {
        self.scan(range, |id, bytes| {
            crc = crc32c::crc32c_append(crc, &id.encode());
            crc = crc32c::crc32c_append(crc, bytes);
            Ok(true)
        })?;
        Ok(crc)
    }
}

/// The error for a record the index names and the store does not hold.
pub(crate) fn missing(id: RecordId, key: &[u8]) -> MvccError {
    corrupt("index", format!("record {id:?} of key {key:?} is missing"))
}

/// Checks that the record read under `id`, which holds `found`, belongs to `key`.
pub(crate) fn check_key(found: &[u8], id: RecordId, key: &[u8]) -> MvccResult<()> {
    if found != key {
        return Err(corrupt(
            "index",
            format!("record {id:?} holds {found:?}, not {key:?}"),
        ));
    }
    Ok(())
}

/// Keys in key order, each with the id of the version a read sees.
pub(crate) type KeyIds<'a> = Vec<(&'a [u8], RecordId)>;

/// The store as seen at `current`.
pub(crate) struct View<'a, T> {
    pub index: &'a KeyIndex,
    pub records: Records<'a, T>,
    /// The revision the view reads at by default and reports in response headers.
    pub current: Revision,
    pub compacted: Revision,
}

impl<'a, T: RecordTable> View<'a, T> {
    /// The key-value stored under `id` for `key`.
    pub fn kv(&self, key: &[u8], id: RecordId) -> MvccResult<KeyValue> {
        Ok(self.records.get(id, key)?.kv)
    }

    /// The current value of a live key.
    pub fn latest(&self, key: &[u8]) -> MvccResult<Option<KeyValue>> {
        self.index
            .latest(key)
            .map(|id| self.kv(key, id))
            .transpose()
    }

    /// The live key-values of `span`, in key order.
    pub fn live(&self, span: &KeySpan) -> MvccResult<Vec<KeyValue>> {
        let found = self.index.live(span);
        found.iter().map(|(key, id)| self.kv(key, *id)).collect()
    }

    /// The revision a request reads at, or why it cannot: zero or negative means the current one.
    pub fn read_revision(&self, requested: Revision) -> MvccResult<Revision> {
        if requested > self.current {
            return Err(MvccError::FutureRevision {
                current_revision: self.current,
            });
        }
        let at = if requested.get() <= 0 {
            self.current
        } else {
            requested
        };
        if at < self.compacted {
            return Err(MvccError::Compacted {
                compact_revision: self.compacted,
            });
        }
        Ok(at)
    }

    /// etcd's Range: read, filter by revisions, sort, limit.
    pub fn range(&self, req: &RangeRequest) -> MvccResult<RangeResponse> {
        let (found, count) = self.range_keys(req)?;
        let kvs = found
            .iter()
            .map(|(key, id)| self.kv(key, *id))
            .collect::<MvccResult<Vec<_>>>()?;
        Ok(shape_range(req, kvs, self.current, count))
    }

    /// The keys a range reads with the ids of their versions (none for `count_only`), and how
    /// many keys it matches.
    pub fn range_keys(&self, req: &RangeRequest) -> MvccResult<(KeyIds<'a>, i64)> {
        let at = self.read_revision(req.revision)?;
        let span = KeySpan::new(&req.key, &req.range_end);
        // Sorting and filtering need every key; otherwise read one more than the limit to learn
        // whether the limit cut the result. As in etcd, a sort target other than the key with
        // no sort order does not count as sorting here: it sorts only the keys read.
        let fetch_all = req.sort_order != SortOrder::None || has_revision_filters(req);
        let limit = (!fetch_all && req.limit > 0).then(|| req.limit as usize + 1);
        let (mut found, count) = self.index.range(&span, at, limit);
        if req.count_only {
            found.clear();
        }
        Ok((found, i64::try_from(count).expect("key counts fit in i64")))
    }
}

/// A range's response from the key-values it read (in key order): filtered by revisions,
/// sorted, cut at the limit.
pub(crate) fn shape_range(
    req: &RangeRequest,
    mut kvs: Vec<KeyValue>,
    current: Revision,
    count: i64,
) -> RangeResponse {
    kvs.retain(|kv| passes_revision_filters(req, kv));
    sort_kvs(&mut kvs, req.sort_order, req.sort_target);
    let mut more = false;
    if req.limit > 0 && kvs.len() > req.limit as usize {
        kvs.truncate(req.limit as usize);
        more = true;
    }
    if req.keys_only {
        for kv in &mut kvs {
            kv.value = Bytes::new();
        }
    }
    RangeResponse {
        revision: current,
        kvs,
        more,
        count,
    }
}

fn has_revision_filters(req: &RangeRequest) -> bool {
    req.min_mod_revision.get() != 0
        || req.max_mod_revision.get() != 0
        || req.min_create_revision.get() != 0
        || req.max_create_revision.get() != 0
}

/// etcd's filters: each one set (non-zero) drops the key-values outside it.
fn passes_revision_filters(req: &RangeRequest, kv: &KeyValue) -> bool {
    let set = |r: Revision| r.get() != 0;
    !(set(req.max_mod_revision) && kv.mod_revision > req.max_mod_revision
        || set(req.min_mod_revision) && kv.mod_revision < req.min_mod_revision
        || set(req.max_create_revision) && kv.create_revision > req.max_create_revision
        || set(req.min_create_revision) && kv.create_revision < req.min_create_revision)
}

/// etcd's sort rules: a target other than the key with no order sorts ascending; the key target
/// ascending is the natural order. Ties keep key order (a stable sort; etcd's is unstable, so
/// its order among ties is unspecified).
pub(crate) fn sort_kvs(kvs: &mut [KeyValue], order: SortOrder, target: SortTarget) {
    let order = match (target, order) {
        (SortTarget::Key, SortOrder::Ascend) => SortOrder::None,
        (SortTarget::Key, order) => order,
        (_, SortOrder::None) => SortOrder::Ascend,
        (_, order) => order,
    };
    let compare = |a: &KeyValue, b: &KeyValue| match target {
        SortTarget::Key => a.key.cmp(&b.key),
        SortTarget::Version => a.version.cmp(&b.version),
        SortTarget::Create => a.create_revision.cmp(&b.create_revision),
        SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
        SortTarget::Value => a.value.cmp(&b.value),
    };
    match order {
        SortOrder::None => {}
        SortOrder::Ascend => kvs.sort_by(compare),
        SortOrder::Descend => kvs.sort_by(|a, b| compare(b, a)),
    }
}
