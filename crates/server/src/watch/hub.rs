//! The hub: the watchers of every stream of this member, and the task that follows the applied
//! revision and fans each new revision's events out to the synced watchers.
//!
//! A watcher is *synced* when every event below its `next` revision has been queued for it and
//! the hub delivers the rest; it is *unsynced* when its own stream must read history from `next`
//! first. The hub reads each new batch of events from the store once and queues one response
//! per watcher and revision into its stream's bounded buffer with `try_send`: it never waits for
//! a stream. A watcher whose buffer is full becomes unsynced at the revision that did not fit,
//! and its stream catches it up from the history later (see [`super::stream`]).
//!
//! Invariants, under the one hub lock:
//! - `revision` only grows; every event up to it has been offered to each synced watcher.
//! - A synced watcher has nothing queued of a revision at or above its `next`, and nothing of a
//!   revision below its `next` remains to be queued.
//! - Responses reach a stream's buffer in the order of their revisions, per watcher.
//!
//! The store's read lock is held only inside `read_store`, never across an await, and the hub
//! lock is a plain mutex held for in-memory work only.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use chorus_proto::mvccpb;
use chorus_storage::mvcc::{EventBatch, MvccError, Revision};
use tokio::sync::{Notify, mpsc, watch};

use super::WatchConfig;
use super::select::{WatchError, WatchSpec, by_revision};
use crate::node::NodeHandle;

/// What the hub (or a stream's own control path) queues for a stream to send.
#[derive(Clone, Debug, PartialEq)]
pub enum Outbound {
    /// Events of one revision for one watcher.
    Events {
        watch_id: i64,
        revision: Revision,
        events: Vec<mvccpb::Event>,
        fragment: bool,
    },
    /// A progress notification: everything up to `revision` has been queued for the watcher
    /// (`watch_id` -1: for every watcher of the stream).
    Progress { watch_id: i64, revision: Revision },
}

/// One watcher's state in the hub.
#[derive(Clone, Debug)]
pub struct Watcher {
    pub spec: WatchSpec,
    /// The first revision whose events the watcher has not been given.
    pub next: Revision,
    pub synced: bool,
}

/// One stream's buffer and watchers.
struct Slot {
    tx: mpsc::Sender<Outbound>,
    /// Woken when a watcher of the stream becomes unsynced.
    wake: Arc<Notify>,
    watchers: BTreeMap<i64, Watcher>,
    /// etcd's automatic ids: the lowest unused number from here on.
    next_auto_id: i64,
}

/// Everything under the hub lock.
#[derive(Default)]
pub struct HubState {
    /// Every event up to this revision has been offered to the synced watchers.
    pub revision: Revision,
    streams: HashMap<u64, Slot>,
    next_stream: u64,
}

/// The watchers of one member. Shared by its streams and its fan-out task.
pub struct Hub {
    state: Mutex<HubState>,
    node: NodeHandle,
    config: WatchConfig,
    /// Set when the node stops: streams end then, so that the servers can shut down.
    stopped: watch::Sender<bool>,
    /// Serializes [`Hub::advance`]: each batch is fanned out once.
    advancing: Mutex<()>,
}

/// A stream's registration; dropping it removes the stream and all its watchers.
pub struct StreamHandle {
    pub id: u64,
    pub rx: mpsc::Receiver<Outbound>,
    pub wake: Arc<Notify>,
    hub: Arc<Hub>,
}

impl Drop for StreamHandle {
    fn drop(&mut self) {
        self.hub.lock().streams.remove(&self.id);
    }
}

/// What a catch-up read found for one unsynced watcher.
pub enum CatchUp {
    /// Events from the watcher's `next`, the store's revision at the read, and the watcher's
    /// spec (to select them).
    Read {
        watch_id: i64,
        batch: EventBatch,
        current: Revision,
        spec: WatchSpec,
    },
    /// The history the watcher needs is gone; it has been removed.
    Compacted {
        watch_id: i64,
        compact_revision: Revision,
    },
    /// No watcher of the stream is unsynced.
    AllSynced,
}

impl Hub {
    /// A hub at the store's current revision.
    pub fn new(node: NodeHandle, config: WatchConfig) -> Arc<Hub> {
        let revision = node.read_store(|store| store.current_revision());
        Arc::new(Hub {
            state: Mutex::new(HubState {
                revision,
                ..HubState::default()
            }),
            node,
            config,
            stopped: watch::Sender::new(false),
            advancing: Mutex::new(()),
        })
    }

    /// A receiver that turns true when the node has stopped.
    pub fn stopped(&self) -> watch::Receiver<bool> {
        self.stopped.subscribe()
    }

    pub fn config(&self) -> &WatchConfig {
        &self.config
    }

    pub fn node(&self) -> &NodeHandle {
        &self.node
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The revision up to which events have been fanned out.
    pub fn revision(&self) -> Revision {
        self.lock().revision
    }

    /// Registers a new stream with its bounded buffer.
    pub fn open_stream(self: &Arc<Self>) -> StreamHandle {
        let (tx, rx) = mpsc::channel(self.config.stream_buffer_max);
        let wake = Arc::new(Notify::new());
        let mut state = self.lock();
        let id = state.next_stream;
        state.next_stream += 1;
        state.streams.insert(
            id,
            Slot {
                tx,
                wake: wake.clone(),
                watchers: BTreeMap::new(),
                next_auto_id: 0,
            },
        );
        StreamHandle {
            id,
            rx,
            wake,
            hub: self.clone(),
        }
    }

    /// Adds a watcher to a stream, unsynced from `start_revision` (0: the next revision), and
    /// returns its id and the hub revision for the created response's header. The stream syncs
    /// it after sending the created response, so that no event precedes that response.
    pub fn add_watcher(
        &self,
        stream: u64,
        requested_id: i64,
        start_revision: i64,
        spec: WatchSpec,
    ) -> Result<(i64, Revision), WatchError> {
        self.advance();
        let mut state = self.lock();
        let revision = state.revision;
        let Some(slot) = state.streams.get_mut(&stream) else {
            // Only after the stream's handle is dropped, when nothing asks any more; etcd
            // answers a watch on a closed stream with this error too.
            return Err(WatchError::EmptyRange);
        };
        let id = if requested_id == 0 {
            while slot.watchers.contains_key(&slot.next_auto_id) {
                slot.next_auto_id += 1;
            }
            slot.next_auto_id += 1;
            slot.next_auto_id - 1
        } else if slot.watchers.contains_key(&requested_id) {
            return Err(WatchError::DuplicateId);
        } else {
            requested_id
        };
        let next = if start_revision == 0 {
            revision.next()
        } else {
            Revision(start_revision)
        };
        let watcher = Watcher {
            spec,
            next,
            synced: false,
        };
        slot.watchers.insert(id, watcher);
        Ok((id, revision))
    }

    /// Removes a watcher; returns whether it existed, and the hub revision.
    pub fn remove_watcher(&self, stream: u64, watch_id: i64) -> (bool, Revision) {
        let mut state = self.lock();
        let revision = state.revision;
        let removed = state
            .streams
            .get_mut(&stream)
            .is_some_and(|slot| slot.watchers.remove(&watch_id).is_some());
        (removed, revision)
    }

    /// Queues a progress response for `watch_id` (-1: all of the stream's watchers) when the
    /// watcher (all of them) is synced. Returns whether it was queued.
    pub fn queue_progress(&self, stream: u64, watch_id: i64) -> bool {
        self.advance();
        let state = self.lock();
        let Some(slot) = state.streams.get(&stream) else {
            return false;
        };
        let synced = if watch_id == -1 {
            slot.watchers.values().all(|w| w.synced)
        } else {
            slot.watchers.get(&watch_id).is_some_and(|w| w.synced)
        };
        let progress = Outbound::Progress {
            watch_id,
            revision: state.revision,
        };
        synced && slot.tx.try_send(progress).is_ok()
    }

    /// Reads history for the stream's first unsynced watcher, or syncs it when nothing is left.
    /// The store lock is held only for the read; the hub lock is not held during it.
    pub fn catch_up_read(&self, stream: u64) -> CatchUp {
        loop {
            let (watch_id, next, spec) = {
                let state = self.lock();
                let Some(slot) = state.streams.get(&stream) else {
                    return CatchUp::AllSynced;
                };
                let Some((id, w)) = slot.watchers.iter().find(|(_, w)| !w.synced) else {
                    return CatchUp::AllSynced;
                };
                (*id, w.next, w.spec.clone())
            };
            let events_max = self.config.catch_up_events_max;
            let read = self.node.read_store(|store| {
                let batch = store.events(next, events_max, spec.prev_kv)?;
                Ok::<_, MvccError>((batch, store.current_revision()))
            });
            match read {
                Ok((batch, current)) => {
                    if batch.events.is_empty() {
                        // Nothing to send: try to sync (or move on) and look again.
                        self.advance_unsynced(stream, watch_id, batch.next);
                        continue;
                    }
                    return CatchUp::Read {
                        watch_id,
                        batch,
                        current,
                        spec,
                    };
                }
                Err(MvccError::Compacted { compact_revision }) => {
                    self.remove_watcher(stream, watch_id);
                    return CatchUp::Compacted {
                        watch_id,
                        compact_revision,
                    };
                }
                Err(error) => {
                    // The store failed; the hub cannot serve this watcher now. Leave it
                    // unsynced: the next wake retries.
                    tracing::warn!(%error, watch_id, "reading the watch history failed");
                    return CatchUp::AllSynced;
                }
            }
        }
    }

    /// Records that an unsynced watcher has been given every event below `next`; it becomes
    /// synced when the hub has not fanned out past that point.
    pub fn advance_unsynced(&self, stream: u64, watch_id: i64, next: Revision) {
        let mut state = self.lock();
        let revision = state.revision;
        let Some(w) = state
            .streams
            .get_mut(&stream)
            .and_then(|slot| slot.watchers.get_mut(&watch_id))
        else {
            return;
        };
        assert!(!w.synced, "only an unsynced watcher catches up");
        w.next = w.next.max(next);
        w.synced = w.next > revision;
    }

    /// Reads and fans out every revision the store has applied beyond the hub's. The hub's
    /// task calls it on each applied change; streams call it before answering with the
    /// revision (created and progress responses), so that the revision they report is the
    /// store's, as etcd's.
    pub fn advance(&self) {
        let _advancing = self.advancing.lock().unwrap_or_else(|e| e.into_inner());
        // With no synced watcher there is no one to offer events to: the hub moves to the
        // store's revision without reading them. The revision is read before the hub is
        // locked, so a watcher added meanwhile is seen here (and the events are read for it),
        // and one added after starts behind this revision only if it asked to, and then
        // catches up from history as unsynced watchers do.
        let current = self.node.read_store(|store| store.current_revision());
        {
            let mut state = self.lock();
            if !state.any_synced() {
                state.revision = state.revision.max(current);
                return;
            }
        }
        loop {
            let (from, with_prev_kv) = {
                let state = self.lock();
                (state.revision.next(), state.any_prev_kv())
            };
            let batch_max = self.config.hub_events_max;
            let read = self.node.read_store(|store| {
                let current = store.current_revision();
                if current < from {
                    return Ok(None);
                }
                Ok(Some((
                    store.events(from, batch_max, with_prev_kv)?,
                    current,
                )))
            });
            match read {
                Ok(None) => return,
                Ok(Some((batch, current))) => {
                    let done = batch.next > current;
                    self.lock().fan_out(&batch, with_prev_kv);
                    if done {
                        return;
                    }
                }
                Err(MvccError::Compacted { .. }) => {
                    // A compaction passed the hub (a restored snapshot, or a compaction right
                    // after writes): the synced watchers must read the history themselves, and
                    // are canceled there with the compacted revision if it is gone.
                    let current = self.node.read_store(|store| store.current_revision());
                    self.lock().unsync_all(current);
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, "reading new events for watchers failed");
                    return;
                }
            }
        }
    }

    /// Follows the applied revision until the node stops.
    pub async fn run(self: Arc<Self>) {
        let mut status = self.node.status_watch();
        loop {
            self.advance();
            if status.changed().await.is_err() {
                self.stopped.send_replace(true);
                return;
            }
        }
    }
}

impl HubState {
    fn any_synced(&self) -> bool {
        self.streams
            .values()
            .any(|slot| slot.watchers.values().any(|w| w.synced))
    }

    fn any_prev_kv(&self) -> bool {
        self.streams
            .values()
            .flat_map(|slot| slot.watchers.values())
            .any(|w| w.synced && w.spec.prev_kv)
    }

    /// Offers a batch (read with prev_kv iff `with_prev_kv`) to every synced watcher.
    fn fan_out(&mut self, batch: &EventBatch, with_prev_kv: bool) {
        assert!(batch.next > self.revision, "the hub moves forward");
        let groups = by_revision(&batch.events);
        for slot in self.streams.values_mut() {
            let mut woke = false;
            for (id, w) in slot.watchers.iter_mut().filter(|(_, w)| w.synced) {
                woke |= offer(&slot.tx, *id, w, &groups, with_prev_kv);
                if w.synced {
                    w.next = w.next.max(batch.next);
                }
            }
            if woke {
                slot.wake.notify_one();
            }
        }
        self.revision = Revision(batch.next.get() - 1);
    }

    /// Makes every synced watcher unsynced at its `next` and moves the hub to `current`.
    fn unsync_all(&mut self, current: Revision) {
        for slot in self.streams.values_mut() {
            let mut woke = false;
            for w in slot.watchers.values_mut().filter(|w| w.synced) {
                w.synced = false;
                woke = true;
            }
            if woke {
                slot.wake.notify_one();
            }
        }
        self.revision = self.revision.max(current);
    }
}

/// Queues one watcher's events of each revision; returns true when the watcher became
/// unsynced (its buffer was full, or it needs prev_kv the batch was read without).
fn offer(
    tx: &mpsc::Sender<Outbound>,
    watch_id: i64,
    w: &mut Watcher,
    groups: &[(Revision, &[chorus_storage::mvcc::Event])],
    with_prev_kv: bool,
) -> bool {
    for (revision, events) in groups {
        if *revision < w.next {
            continue;
        }
        if w.spec.prev_kv && !with_prev_kv {
            w.synced = false;
            w.next = *revision;
            return true;
        }
        let events = w.spec.select(events);
        if events.is_empty() {
            continue;
        }
        let outbound = Outbound::Events {
            watch_id,
            revision: *revision,
            events,
            fragment: w.spec.fragment,
        };
        match tx.try_send(outbound) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::debug!(watch_id, %revision, "a stream is full: its watcher catches up later");
                w.synced = false;
                w.next = *revision;
                return true;
            }
            // The stream is ending; dropping its handle removes it.
            Err(mpsc::error::TrySendError::Closed(_)) => return false,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use std::sync::RwLock;

    use bytes::Bytes;
    use chorus_proto::etcdserverpb as pb;
    use chorus_storage::mvcc::{DeleteRangeRequest, MvccConfig, MvccStore, PutRequest};

    use super::*;

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Arc<RwLock<MvccStore>>,
        hub: Arc<Hub>,
    }

    fn fixture(stream_buffer_max: usize) -> Fixture {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = MvccStore::open(dir.path(), MvccConfig::default()).expect("open a store");
        let store = Arc::new(RwLock::new(store));
        let (node, _status) = NodeHandle::detached(store.clone());
        let config = WatchConfig {
            stream_buffer_max,
            hub_events_max: 3,
            catch_up_events_max: 2,
            ..WatchConfig::default()
        };
        Fixture {
            _dir: dir,
            store,
            hub: Hub::new(node, config),
        }
    }

    impl Fixture {
        fn put(&self, key: &str, value: &str) -> i64 {
            let mut store = self.store.write().unwrap();
            let request = PutRequest {
                key: Bytes::copy_from_slice(key.as_bytes()),
                value: Bytes::copy_from_slice(value.as_bytes()),
                ..PutRequest::default()
            };
            store.put(&request).expect("put").revision.get()
        }

        fn delete(&self, key: &str) -> i64 {
            let mut store = self.store.write().unwrap();
            let request = DeleteRangeRequest {
                key: Bytes::copy_from_slice(key.as_bytes()),
                ..DeleteRangeRequest::default()
            };
            store.delete_range(&request).expect("delete").revision.get()
        }

        /// A watcher on `stream`, synced the way its stream syncs it (reading nothing, since it
        /// starts at the next revision).
        fn synced_watcher(&self, stream: u64, key: &[u8], range_end: &[u8], prev_kv: bool) -> i64 {
            let spec = spec(key, range_end, prev_kv);
            let (id, _) = self.hub.add_watcher(stream, 0, 0, spec).expect("added");
            assert!(matches!(self.hub.catch_up_read(stream), CatchUp::AllSynced));
            id
        }
    }

    fn spec(key: &[u8], range_end: &[u8], prev_kv: bool) -> WatchSpec {
        WatchSpec::from_request(&pb::WatchCreateRequest {
            key: key.to_vec().into(),
            range_end: range_end.to_vec().into(),
            prev_kv,
            ..Default::default()
        })
        .expect("a valid spec")
    }

    /// (watch id, revision, keys) of everything queued for a stream.
    fn queued(handle: &mut StreamHandle) -> Vec<(i64, i64, Vec<String>)> {
        let mut out = Vec::new();
        while let Ok(outbound) = handle.rx.try_recv() {
            match outbound {
                Outbound::Events {
                    watch_id,
                    revision,
                    events,
                    ..
                } => {
                    let keys = events
                        .iter()
                        .map(|e| {
                            let kv = e.kv.as_ref().expect("an event has a kv");
                            String::from_utf8_lossy(&kv.key).into_owned()
                        })
                        .collect();
                    out.push((watch_id, revision.get(), keys));
                }
                Outbound::Progress { watch_id, revision } => {
                    out.push((watch_id, revision.get(), vec!["<progress>".into()]))
                }
            }
        }
        out
    }

    /// Goal: the hub reads new revisions once and queues, per synced watcher, one response per
    /// revision with the events of its range, in order, across batches of the hub's size.
    /// Method: a key watcher and a prefix watcher on one stream, five writes, one `advance`.
    #[tokio::test]
    async fn synced_watchers_get_each_revision_in_order() {
        let f = fixture(64);
        let mut stream = f.hub.open_stream();
        let key = f.synced_watcher(stream.id, b"a", b"", false);
        let prefix = f.synced_watcher(stream.id, b"b/", b"b0", false);
        assert_eq!((key, prefix), (0, 1), "etcd's automatic ids start at 0");
        let r1 = f.put("a", "1");
        let r2 = f.put("b/x", "1");
        let r3 = f.put("c", "1");
        let r4 = f.delete("a");
        let r5 = f.put("b/y", "1");
        f.hub.advance();
        assert_eq!(f.hub.revision().get(), r5);
        let all = queued(&mut stream);
        let of = |id: i64| -> Vec<_> { all.iter().filter(|q| q.0 == id).cloned().collect() };
        let a = vec!["a".to_string()];
        assert_eq!(of(key), vec![(key, r1, a.clone()), (key, r4, a)]);
        assert_eq!(
            of(prefix),
            vec![
                (prefix, r2, vec!["b/x".to_string()]),
                (prefix, r5, vec!["b/y".to_string()])
            ]
        );
        assert_eq!(all.len(), 4);
        let _ = r3;
        f.hub.advance();
        assert!(queued(&mut stream).is_empty(), "nothing is delivered twice");
    }

    /// Goal: a full stream buffer makes its watcher unsynced at the revision that did not fit,
    /// wakes the stream, and does not hold back another stream; catching up from the history
    /// then yields the missing events in order and syncs the watcher again. Method: a buffer of
    /// two responses, five writes, then the catch-up reads the stream task does.
    #[tokio::test]
    async fn full_buffer_unsyncs_and_history_catches_up() {
        let f = fixture(2);
        let mut slow = f.hub.open_stream();
        let mut other = f.hub.open_stream();
        let w = f.synced_watcher(slow.id, b"k", b"", false);
        let o = f.synced_watcher(other.id, b"k", b"", false);
        let revisions: Vec<i64> = (0..5).map(|i| f.put("k", &i.to_string())).collect();
        f.hub.advance();

        let first: Vec<i64> = queued(&mut slow).iter().map(|q| q.1).collect();
        assert_eq!(first, revisions[..2].to_vec());
        assert_eq!(queued(&mut other).len(), 2, "the other buffer was full too");
        // Both were woken and catch up on their own; the slow one reads history.
        tokio::time::timeout(std::time::Duration::from_secs(5), slow.wake.notified())
            .await
            .expect("the slow stream was woken");
        let mut caught = Vec::new();
        loop {
            match f.hub.catch_up_read(slow.id) {
                CatchUp::AllSynced => break,
                CatchUp::Read {
                    watch_id,
                    batch,
                    spec,
                    ..
                } => {
                    assert_eq!(watch_id, w);
                    caught.extend(
                        spec.select(&batch.events)
                            .iter()
                            .map(|e| e.kv.as_ref().unwrap().mod_revision),
                    );
                    f.hub.advance_unsynced(slow.id, watch_id, batch.next);
                }
                CatchUp::Compacted { .. } => panic!("nothing was compacted"),
            }
        }
        assert_eq!(caught, revisions[2..].to_vec());
        // Synced again: the next write is queued by the hub.
        let r6 = f.put("k", "6");
        f.hub.advance();
        assert_eq!(queued(&mut slow), vec![(w, r6, vec!["k".to_string()])]);
        let _ = o;
    }

    /// Goal: a watcher whose history was compacted is removed and reported with the compacted
    /// revision; a future start revision is synced at once and skips earlier revisions.
    /// Method: compact at revision 4, then watchers from 2 and from the future.
    #[tokio::test]
    async fn compacted_history_cancels_and_future_start_waits() {
        let f = fixture(64);
        for i in 0..4 {
            f.put("k", &i.to_string());
        }
        f.store
            .write()
            .unwrap()
            .compact(Revision(4))
            .expect("compact");
        f.hub.advance();
        let mut stream = f.hub.open_stream();
        let (old, _) = f
            .hub
            .add_watcher(stream.id, 0, 2, spec(b"k", b"", false))
            .unwrap();
        match f.hub.catch_up_read(stream.id) {
            CatchUp::Compacted {
                watch_id,
                compact_revision,
            } => assert_eq!((watch_id, compact_revision), (old, Revision(4))),
            _ => panic!("expected the compacted answer"),
        }
        assert!(!f.hub.remove_watcher(stream.id, old).0, "it was removed");

        let (future, _) = f
            .hub
            .add_watcher(stream.id, 0, 7, spec(b"k", b"", false))
            .unwrap();
        assert!(matches!(f.hub.catch_up_read(stream.id), CatchUp::AllSynced));
        f.put("k", "6"); // revision 6: before the watcher's start
        let r7 = f.put("k", "7");
        f.hub.advance();
        assert_eq!(
            queued(&mut stream),
            vec![(future, r7, vec!["k".to_string()])]
        );
    }

    /// Goal: etcd's watch ids per stream (automatic from 0, skipping used ones; a duplicate
    /// refused) and progress only when synced. Method: ids on one stream; progress requested
    /// before and after the stream's watchers are synced.
    #[tokio::test]
    async fn ids_and_progress() {
        let f = fixture(64);
        let r1 = f.put("k", "v");
        f.hub.advance();
        let mut stream = f.hub.open_stream();
        let other = f.hub.open_stream();
        assert!(
            f.hub.queue_progress(stream.id, -1),
            "no watchers: all synced"
        );
        let add = |id: i64, start: i64| {
            f.hub
                .add_watcher(stream.id, id, start, spec(b"k", b"", false))
        };
        assert_eq!(add(1, 0).map(|a| a.0), Ok(1));
        assert_eq!(add(0, 0).map(|a| a.0), Ok(0));
        assert_eq!(add(0, 0).map(|a| a.0), Ok(2), "the automatic id skips 1");
        assert_eq!(add(2, 0), Err(WatchError::DuplicateId));
        assert_eq!(
            f.hub
                .add_watcher(other.id, 2, 0, spec(b"k", b"", false))
                .map(|a| a.0),
            Ok(2),
            "ids are per stream"
        );
        let _ = add(9, 1).unwrap(); // from the past: unsynced until caught up
        assert!(!f.hub.queue_progress(stream.id, -1));
        assert!(!f.hub.queue_progress(stream.id, 9));
        while let CatchUp::Read {
            watch_id, batch, ..
        } = f.hub.catch_up_read(stream.id)
        {
            f.hub.advance_unsynced(stream.id, watch_id, batch.next);
        }
        assert!(f.hub.queue_progress(stream.id, -1));
        assert!(f.hub.queue_progress(stream.id, 9));
        // A closed stream frees its watchers; the other stream keeps its own.
        drop(other);
        assert_eq!(f.hub.lock().streams.len(), 1);
        let progress = queued(&mut stream);
        let p = "<progress>".to_string();
        assert_eq!(
            progress,
            vec![
                (-1, r1, vec![p.clone()]),
                (-1, r1, vec![p.clone()]),
                (9, r1, vec![p])
            ]
        );
    }

    /// Goal: prev_kv reaches watchers that asked for it, including one that joins when the hub
    /// read a batch without it (it catches up from the history instead). Method: a watcher with
    /// prev_kv synced before the write; the events it gets carry the previous value.
    #[tokio::test]
    async fn prev_kv_is_read_for_watchers_that_want_it() {
        let f = fixture(64);
        f.put("k", "old");
        f.hub.advance();
        let mut stream = f.hub.open_stream();
        let w = f.synced_watcher(stream.id, b"k", b"", true);
        f.put("k", "new");
        f.hub.advance();
        let Some(Outbound::Events {
            watch_id, events, ..
        }) = stream.rx.try_recv().ok()
        else {
            panic!("an event was queued");
        };
        assert_eq!(watch_id, w);
        let prev = events[0].prev_kv.as_ref().expect("prev_kv was asked for");
        assert_eq!(prev.value.as_ref(), b"old");

        let mut state = f.hub.lock();
        let batch = f
            .hub
            .node
            .read_store(|s| s.events(Revision(2), 10, false))
            .unwrap();
        // Replay revision 3 as if the hub had read it without prev_kv.
        let before = state.revision;
        state.revision = Revision(2);
        let slot = state.streams.get_mut(&stream.id).unwrap();
        slot.watchers.get_mut(&w).unwrap().next = Revision(3);
        state.fan_out(&batch, false);
        let watcher = &state.streams[&stream.id].watchers[&w];
        assert!(
            !watcher.synced,
            "a batch without prev_kv unsyncs a prev_kv watcher"
        );
        assert_eq!(watcher.next, Revision(3));
        assert_eq!(state.revision, before);
    }
}
