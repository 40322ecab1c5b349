//! The in-memory key index: for every key, the ids of its records grouped in generations, as
//! etcd's `treeIndex` keeps them.
//!
//! A generation is the life of a key from a creating put to the delete that ends it (or to now).
//! A put on a deleted or never-seen key starts a new generation, which is why a re-created key has
//! version 1 and a new create revision.
//!
//! Invariants:
//! - generations of a key are in revision order, and only the last may be live (no tombstone);
//! - every generation holds at least one put;
//! - a key is in the map only while it has at least one generation.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashSet};
use std::ops::Bound;

use bytes::Bytes;

use super::codec::RecordId;
use super::types::Revision;

/// One life of a key.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Generation {
    /// The create revision of the key in this generation.
    created: Revision,
    /// The version of the latest put of this generation.
    version: i64,
    /// The puts still retained, in order (compaction removes those it no longer needs).
    puts: Vec<RecordId>,
    /// The delete that ended this generation.
    tombstone: Option<RecordId>,
}

impl Generation {
    fn first_main(&self) -> Revision {
        self.puts
            .first()
            .expect("a generation holds at least one put")
            .main
    }

    fn is_live(&self) -> bool {
        self.tombstone.is_none()
    }

    /// The latest put at or before `at`, if the generation was live at `at`.
    fn visible_at(&self, at: Revision) -> Option<RecordId> {
        if self.first_main() > at {
            return None;
        }
        if let Some(tombstone) = self.tombstone
            && tombstone.main <= at
        {
            return None;
        }
        self.puts.iter().rev().find(|id| id.main <= at).copied()
    }
}

/// A lower and an upper bound on keys.
type ByteBounds<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

/// The keys a range covers, from etcd's `key` and `range_end` conventions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum KeySpan {
    /// Exactly one key (`range_end` empty).
    Single(Bytes),
    /// Every key `>= key` (`range_end` is a single zero byte).
    From(Bytes),
    /// `[key, range_end)`; empty when `range_end <= key`.
    Between(Bytes, Bytes),
}

impl KeySpan {
    pub fn new(key: &Bytes, range_end: &Bytes) -> KeySpan {
        if range_end.is_empty() {
            KeySpan::Single(key.clone())
        } else if range_end.as_ref() == [0u8] {
            KeySpan::From(key.clone())
        } else {
            KeySpan::Between(key.clone(), range_end.clone())
        }
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        match self {
            KeySpan::Single(k) => k.as_ref() == key,
            KeySpan::From(k) => key >= k.as_ref(),
            KeySpan::Between(k, end) => key >= k.as_ref() && key < end.as_ref(),
        }
    }

    fn bounds(&self) -> Option<ByteBounds<'_>> {
        match self {
            KeySpan::Single(k) => Some((Bound::Included(k.as_ref()), Bound::Included(k.as_ref()))),
            KeySpan::From(k) => Some((Bound::Included(k.as_ref()), Bound::Unbounded)),
            // BTreeMap::range panics on an inverted range; an inverted span is empty.
            KeySpan::Between(k, end) if end <= k => None,
            KeySpan::Between(k, end) => {
                Some((Bound::Included(k.as_ref()), Bound::Excluded(end.as_ref())))
            }
        }
    }
}

/// The history of one key.
///
/// Most keys are put once and never touched again, so that case has a form of its own that
/// fits in the map's slot: a key's history costs no allocation beyond the key itself until the
/// key is put again or deleted (with a million keys, about 80 MB less than generation lists).
#[derive(Clone, Debug, PartialEq, Eq)]
enum History {
    /// One live generation of a single put: created at that put, version 1.
    Once(RecordId),
    /// Every other history, as generations.
    Generations(Vec<Generation>),
}

impl History {
    /// The latest put of the key, if the key is live.
    fn latest(&self) -> Option<RecordId> {
        match self {
            History::Once(id) => Some(*id),
            History::Generations(generations) => {
                let generation = generations.last()?;
                generation
                    .is_live()
                    .then(|| generation.puts.last().copied())?
            }
        }
    }

    /// The latest version of the key, if the key is live.
    fn live_version(&self) -> Option<LiveVersion> {
        match self {
            History::Once(id) => Some(LiveVersion {
                created: id.main,
                modified: id.main,
                version: 1,
            }),
            History::Generations(generations) => {
                let generation = generations.last().filter(|g| g.is_live())?;
                Some(LiveVersion {
                    created: generation.created,
                    modified: generation.puts.last()?.main,
                    version: generation.version,
                })
            }
        }
    }

    /// The put visible at revision `at`, if the key existed then.
    fn visible_at(&self, at: Revision) -> Option<RecordId> {
        match self {
            History::Once(id) => (id.main <= at).then_some(*id),
            History::Generations(generations) => {
                generations.iter().rev().find_map(|g| g.visible_at(at))
            }
        }
    }

    /// The generations, turning the single-put form into a list first.
    fn generations_mut(&mut self) -> &mut Vec<Generation> {
        if let History::Once(id) = *self {
            *self = History::Generations(vec![Generation {
                created: id.main,
                version: 1,
                puts: vec![id],
                tombstone: None,
            }]);
        }
        match self {
            History::Generations(generations) => generations,
            History::Once(_) => unreachable!("turned into generations above"),
        }
    }

    /// Back to the single-put form when the generations say no more than it does.
    fn compress(&mut self) {
        if let History::Generations(generations) = self
            && let [only] = generations.as_slice()
            && only.is_live()
            && only.version == 1
            && only.puts.len() == 1
        {
            *self = History::Once(only.puts[0]);
        }
    }
}

/// The key index.
///
/// Keys are boxed slices of their own, not `Bytes`: a `Bytes` taken from a decoded request
/// shares (and on its first clone allocates) a reference count, and takes 32 bytes in the map
/// against 16, which with a million keys cost about 37 MB more.
#[derive(Clone, Debug, Default)]
pub(crate) struct KeyIndex {
    keys: BTreeMap<Box<[u8]>, History>,
}

/// What the index knows of a live key's latest version without its record: its create and mod
/// revisions and its version (the record adds the value and the lease).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LiveVersion {
    pub created: Revision,
    pub modified: Revision,
    pub version: i64,
}

/// What a put did to the index: the create revision and version the new record gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PutOutcome {
    pub created: Revision,
    pub version: i64,
}

impl KeyIndex {
    /// The number of keys with any retained history.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// The latest put of a live key.
    pub fn latest(&self, key: &[u8]) -> Option<RecordId> {
        self.keys.get(key)?.latest()
    }

    /// The put visible at revision `at`, if the key existed then.
    pub fn get(&self, key: &[u8], at: Revision) -> Option<RecordId> {
        self.keys.get(key)?.visible_at(at)
    }

    /// The keys of `span` visible at `at`, in key order: the first `limit` of them (all when
    /// `limit` is `None`) and the total count.
    pub fn range(
        &self,
        span: &KeySpan,
        at: Revision,
        limit: Option<usize>,
    ) -> (Vec<(&[u8], RecordId)>, usize) {
        let Some(bounds) = span.bounds() else {
            return (Vec::new(), 0);
        };
        let mut found = Vec::new();
        let mut total = 0;
        for (key, history) in self.keys.range::<[u8], _>(bounds) {
            let Some(id) = history.visible_at(at) else {
                continue;
            };
            total += 1;
            if limit.is_none_or(|limit| found.len() < limit) {
                found.push((key.as_ref(), id));
            }
        }
        (found, total)
    }

    /// The live keys of `span` and their latest puts, in key order.
    pub fn live(&self, span: &KeySpan) -> Vec<(&[u8], RecordId)> {
        let Some(bounds) = span.bounds() else {
            return Vec::new();
        };
        self.keys
            .range::<[u8], _>(bounds)
            .filter_map(|(key, history)| Some((key.as_ref(), history.latest()?)))
            .collect()
    }

    /// The latest versions of the live keys of `span`, in key order.
    pub fn live_versions<'a>(
        &'a self,
        span: &'a KeySpan,
    ) -> impl Iterator<Item = LiveVersion> + 'a {
        span.bounds()
            .into_iter()
            .flat_map(|bounds| self.keys.range::<[u8], _>(bounds))
            .filter_map(|(_, history)| history.live_version())
    }

    /// Records a put of `key` at `id`. Precondition: `id` is above every id of the key.
    pub fn put(&mut self, key: &[u8], id: RecordId) -> PutOutcome {
        let Some(history) = self.keys.get_mut(key) else {
            self.keys.insert(key.into(), History::Once(id));
            return PutOutcome {
                created: id.main,
                version: 1,
            };
        };
        let generations = history.generations_mut();
        match generations.last_mut() {
            Some(generation) if generation.is_live() => {
                let last = *generation.puts.last().expect("a generation holds a put");
                assert!(last < id, "put {id:?} of {key:?} is not after {last:?}");
                generation.puts.push(id);
                generation.version += 1;
                PutOutcome {
                    created: generation.created,
                    version: generation.version,
                }
            }
            _ => {
                push_generation(
                    generations,
                    Generation {
                        created: id.main,
                        version: 1,
                        puts: vec![id],
                        tombstone: None,
                    },
                );
                PutOutcome {
                    created: id.main,
                    version: 1,
                }
            }
        }
    }

    /// Records the delete of the live `key` at `id`.
    pub fn tombstone(&mut self, key: &[u8], id: RecordId) {
        let generation = self
            .keys
            .get_mut(key)
            .and_then(|history| history.generations_mut().last_mut())
            .filter(|generation| generation.is_live())
            .unwrap_or_else(|| panic!("delete of {key:?} at {id:?}: the key is not live"));
        let last = *generation.puts.last().expect("a generation holds a put");
        assert!(last < id, "delete {id:?} of {key:?} is not after {last:?}");
        generation.tombstone = Some(id);
    }

    /// Rebuilds the index from a stored record (recovery reads the records in id order). The
    /// record's own create revision and version are taken as they are. Returns `Ok(false)` for a
    /// tombstone whose generation is gone (compaction removed its puts but kept the tombstone for
    /// the history of the compacted revision), and an error for records that contradict the
    /// generation rules.
    pub fn restore(
        &mut self,
        key: &[u8],
        id: RecordId,
        created: Revision,
        version: i64,
        tombstone: bool,
    ) -> Result<bool, String> {
        let history = match self.keys.entry(key.into()) {
            Entry::Vacant(vacant) if !tombstone && version == 1 && created == id.main => {
                vacant.insert(History::Once(id));
                return Ok(true);
            }
            entry => entry.or_insert_with(|| History::Generations(Vec::new())),
        };
        let generations = history.generations_mut();
        let live = generations.last_mut().filter(|g| g.is_live());
        match (live, tombstone) {
            (Some(generation), false) if generation.created == created => {
                generation.puts.push(id);
                generation.version = version;
            }
            (Some(generation), false) => {
                return Err(format!(
                    "put {id:?} of {key:?} created at {created} while the generation created at \
                     {} is live",
                    generation.created
                ));
            }
            (None, false) => {
                push_generation(
                    generations,
                    Generation {
                        created,
                        version,
                        puts: vec![id],
                        tombstone: None,
                    },
                );
            }
            (Some(generation), true) => generation.tombstone = Some(id),
            (None, true) => {
                if generations.is_empty() {
                    self.keys.remove(key);
                }
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Forgets what no read at or above `at` needs: generations deleted at or before `at`, and
    /// in the others every put older than the latest one at or before `at`. Returns the retained
    /// ids below `at`.
    pub fn compact(&mut self, at: Revision) -> HashSet<RecordId> {
        let mut retained = HashSet::new();
        self.keys.retain(|_, history| {
            let generations = match history {
                History::Once(id) => {
                    if id.main < at {
                        retained.insert(*id);
                    }
                    return true;
                }
                History::Generations(generations) => generations,
            };
            generations.retain(|g| g.tombstone.is_none_or(|t| t.main > at));
            if let Some(first) = generations.first_mut() {
                let visible = first.puts.iter().rposition(|id| id.main <= at);
                if let Some(position) = visible {
                    first.puts.drain(..position);
                    if first.puts[0].main < at {
                        retained.insert(first.puts[0]);
                    }
                }
                shrink_if_sparse(&mut first.puts);
            }
            shrink_if_sparse(generations);
            let keep = !generations.is_empty();
            history.compress();
            keep
        });
        retained
    }
}

/// Appends a generation without the spare room `Vec::push` leaves (room for four at the first
/// push): most keys only ever have one generation, and the index holds one list per key.
fn push_generation(generations: &mut Vec<Generation>, generation: Generation) {
    generations.reserve_exact(1);
    generations.push(generation);
}

/// Gives back the room of a list that compaction emptied for the most part.
fn shrink_if_sparse<T>(list: &mut Vec<T>) {
    if list.capacity() > 2 * list.len().max(1) {
        list.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts the bytes each thread has allocated and not yet freed, for the memory test below
    /// (every unit test of this crate runs with it; it only adds a counter to the system
    /// allocator).
    #[allow(unsafe_code)]
    mod counting {
        use std::alloc::{GlobalAlloc, Layout, System};
        use std::cell::Cell;

        thread_local! {
            static LIVE: Cell<isize> = const { Cell::new(0) };
        }

        struct Counting;

        #[global_allocator]
        static ALLOCATOR: Counting = Counting;

        fn add(bytes: isize) {
            // try_with: allocations during thread teardown find the counter gone.
            let _ = LIVE.try_with(|live| live.set(live.get() + bytes));
        }

        // SAFETY: every call is passed to the system allocator unchanged.
        unsafe impl GlobalAlloc for Counting {
            unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
                add(layout.size() as isize);
                unsafe { System.alloc(layout) }
            }

            unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
                add(-(layout.size() as isize));
                unsafe { System.dealloc(ptr, layout) }
            }

            unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
                add(new_size as isize - layout.size() as isize);
                unsafe { System.realloc(ptr, layout, new_size) }
            }
        }

        /// Bytes this thread has allocated and not freed.
        pub fn live_bytes() -> isize {
            LIVE.with(Cell::get)
        }
    }

    // Goal: a key put once costs the index under 110 bytes: its share of the map's nodes and
    // its own bytes (94 for 16-byte keys; held as `Bytes` they cost 131, because the first
    // clone of a decoded key allocates a shared reference count and the map slot is larger).
    // Method: put 100,000 16-byte keys in order, as decoded requests hand them over, and count
    // the bytes this thread allocated for the index.
    #[test]
    fn a_key_put_once_costs_under_110_bytes() {
        const KEYS: i64 = 100_000;
        let requests: Vec<Bytes> = (0..KEYS)
            .map(|i| Bytes::copy_from_slice(format!("key-{i:012}").as_bytes()))
            .collect();
        let before = counting::live_bytes();
        let mut index = KeyIndex::default();
        for (i, key) in requests.iter().enumerate() {
            index.put(key, id(2 + i as i64));
        }
        let per_key = (counting::live_bytes() - before) / KEYS as isize;
        assert!(per_key < 110, "{per_key} bytes per key");
        assert_eq!(index.len(), KEYS as usize);
    }

    fn id(main: i64) -> RecordId {
        RecordId::new(Revision(main), 0)
    }

    fn key(k: &str) -> Bytes {
        Bytes::copy_from_slice(k.as_bytes())
    }

    /// The generations of a key in list form, for the tests below.
    fn listed<'a>(index: &'a KeyIndex, k: &[u8]) -> &'a Vec<Generation> {
        match &index.keys[k] {
            History::Generations(generations) => generations,
            History::Once(id) => panic!("{k:?} is in single-put form at {id:?}"),
        }
    }

    // Goal: the index keeps no spare room per key: a key put once costs no allocation beyond
    // its own bytes, lists have no spare room (`Vec::push` leaves room for four at the first
    // push), and compaction gives back what it frees, down to the single-put form.
    // Method: many keys with one put each, one key re-created three times and one key put 100
    // times; check the forms and capacities, then compact and check again.
    #[test]
    fn no_spare_room_per_key_and_compaction_shrinks() {
        assert_eq!(std::mem::size_of::<History>(), 24);
        let mut index = KeyIndex::default();
        for i in 0..100 {
            index.put(&key(&format!("k{i:03}")), id(2 + i));
        }
        assert!(index.keys.values().all(|h| matches!(h, History::Once(_))));
        let again = key("again");
        for round in 0..3 {
            index.put(&again, id(200 + 2 * round));
            index.tombstone(&again, id(201 + 2 * round));
        }
        index.put(&again, id(210));
        assert_eq!(listed(&index, &again).capacity(), 4);
        let hot = key("hot");
        for i in 0..100 {
            index.put(&hot, id(300 + i));
        }
        assert!(listed(&index, &hot)[0].puts.capacity() >= 100);
        index.compact(Revision(399));
        assert_eq!(index.keys[again.as_ref()], History::Once(id(210)));
        assert_eq!(
            index.put(&again, id(400)),
            PutOutcome {
                created: Revision(210),
                version: 2
            }
        );
        assert!(listed(&index, &hot)[0].puts.capacity() <= 2);
        assert_eq!(index.latest(&hot), Some(id(399)));
        assert_eq!(index.get(&hot, Revision(398)), None, "compacted");
        assert_eq!(index.get(&key("k000"), Revision(1)), None);
        assert_eq!(index.get(&key("k000"), Revision(2)), Some(id(2)));
    }

    // Goal: reads at every revision see the right generation. Method: put, put, delete and
    // re-put one key, then read it at each revision and check versions and create revisions.
    #[test]
    fn generations_answer_reads_at_each_revision() {
        let mut index = KeyIndex::default();
        let k = key("a");
        assert_eq!(
            index.put(&k, id(2)),
            PutOutcome {
                created: Revision(2),
                version: 1
            }
        );
        assert_eq!(
            index.put(&k, id(3)),
            PutOutcome {
                created: Revision(2),
                version: 2
            }
        );
        index.tombstone(&k, id(4));
        assert_eq!(
            index.put(&k, id(6)),
            PutOutcome {
                created: Revision(6),
                version: 1
            }
        );
        let table = [
            (1, None),
            (2, Some(2)),
            (3, Some(3)),
            (4, None),
            (5, None),
            (6, Some(6)),
        ];
        for (at, want) in table {
            assert_eq!(index.get(&k, Revision(at)), want.map(id), "at {at}");
        }
        assert_eq!(index.latest(&k), Some(id(6)));
    }

    // Goal: compaction keeps exactly what reads at or above the compacted revision need.
    // Method: compact at several points and compare reads before and after.
    #[test]
    fn compaction_keeps_reads_at_and_above_it() {
        let mut base = KeyIndex::default();
        let (a, b) = (key("a"), key("b"));
        base.put(&a, id(2));
        base.put(&b, id(3));
        base.put(&a, id(4));
        base.tombstone(&b, id(5));
        base.put(&a, id(6));
        for at in 1..=7 {
            let mut index = base.clone();
            let retained = index.compact(Revision(at));
            for read in at..=7 {
                for k in [&a, &b] {
                    assert_eq!(index.get(k, Revision(read)), base.get(k, Revision(read)));
                }
            }
            assert!(retained.iter().all(|id| id.main.get() < at));
            if at >= 5 {
                assert!(index.get(&b, Revision(at)).is_none());
                assert_eq!(index.len(), 1, "b is gone after its delete is compacted");
            }
        }
    }

    // Goal: etcd's range_end conventions. Method: a table of spans over three keys.
    #[test]
    fn spans_follow_range_end_conventions() {
        let mut index = KeyIndex::default();
        for (i, k) in ["a", "b", "c"].iter().enumerate() {
            index.put(&key(k), id(i as i64 + 2));
        }
        let table: [(&str, &[u8], &[&str]); 6] = [
            ("b", b"", &["b"]),
            ("b", b"\0", &["b", "c"]),
            ("\0", b"\0", &["a", "b", "c"]),
            ("a", b"c", &["a", "b"]),
            ("c", b"a", &[]),
            ("b", b"b", &[]),
        ];
        for (k, end, want) in table {
            let span = KeySpan::new(&key(k), &Bytes::copy_from_slice(end));
            let (found, total) = index.range(&span, Revision(10), None);
            let keys: Vec<&[u8]> = found.iter().map(|(k, _)| *k).collect();
            let want: Vec<&[u8]> = want.iter().map(|k| k.as_bytes()).collect();
            assert_eq!(keys, want, "{k:?}..{end:?}");
            assert_eq!(total, want.len());
            assert_eq!(index.live(&span).len(), want.len());
        }
    }
}
