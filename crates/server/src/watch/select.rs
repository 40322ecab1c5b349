//! What one watcher wants, as pure functions: its key range and filters from a
//! `WatchCreateRequest`, the events of a batch it receives, and the splitting of a large response
//! into fragments. No IO and no locks here, so that the rules are tested on their own.

use bytes::Bytes;
use chorus_proto::etcdserverpb as pb;
use chorus_proto::mvccpb;
use chorus_storage::mvcc::{self, Revision};
use prost::Message as _;

use crate::kv_convert;

/// Why etcd refuses a watch; the text is etcd's, sent as the `cancel_reason` of the created
/// response (etcd does not fail the stream for these).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    /// `range_end` is set and not above `key`.
    #[error("mvcc: watcher range is empty")]
    EmptyRange,
    /// The client chose a `watch_id` already in use on the stream.
    #[error("mvcc: duplicate watch ID provided on the WatchStream")]
    DuplicateId,
}

/// The keys a watcher covers, after etcd's conventions: an empty key means the smallest key
/// (`"\0"`), an empty `range_end` one key, a `range_end` of `"\0"` every key from `key` on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyRange {
    Single(Bytes),
    From(Bytes),
    /// `[key, end)`, with `key < end`.
    Between(Bytes, Bytes),
}

impl KeyRange {
    /// The range of a create request, or etcd's error for an empty one.
    pub fn new(key: &[u8], range_end: &[u8]) -> Result<KeyRange, WatchError> {
        let key = if key.is_empty() {
            Bytes::from_static(&[0])
        } else {
            Bytes::copy_from_slice(key)
        };
        match range_end {
            [] => Ok(KeyRange::Single(key)),
            [0] => Ok(KeyRange::From(key)),
            end if key.as_ref() >= end => Err(WatchError::EmptyRange),
            end => Ok(KeyRange::Between(key, Bytes::copy_from_slice(end))),
        }
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        match self {
            KeyRange::Single(k) => k.as_ref() == key,
            KeyRange::From(k) => key >= k.as_ref(),
            KeyRange::Between(k, end) => key >= k.as_ref() && key < end.as_ref(),
        }
    }
}

/// What one watcher asked for, fixed at creation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchSpec {
    pub range: KeyRange,
    pub no_put: bool,
    pub no_delete: bool,
    pub prev_kv: bool,
    pub fragment: bool,
    pub progress_notify: bool,
}

impl WatchSpec {
    /// The spec of a create request. Unknown filter values are ignored, as etcd does.
    pub fn from_request(request: &pb::WatchCreateRequest) -> Result<WatchSpec, WatchError> {
        use pb::watch_create_request::FilterType;
        let has = |filter: FilterType| request.filters.contains(&(filter as i32));
        Ok(WatchSpec {
            range: KeyRange::new(&request.key, &request.range_end)?,
            no_put: has(FilterType::Noput),
            no_delete: has(FilterType::Nodelete),
            prev_kv: request.prev_kv,
            fragment: request.fragment,
            progress_notify: request.progress_notify,
        })
    }

    /// Whether the watcher receives this event.
    pub fn wants(&self, event: &mvcc::Event) -> bool {
        let filtered = match event.kind {
            mvcc::EventKind::Put => self.no_put,
            mvcc::EventKind::Delete => self.no_delete,
        };
        !filtered && self.range.contains(&event.kv.key)
    }

    /// The events of `events` this watcher receives, as protobuf, with `prev_kv` only when the
    /// watcher asked for it.
    pub fn select(&self, events: &[mvcc::Event]) -> Vec<mvccpb::Event> {
        events
            .iter()
            .filter(|e| self.wants(e))
            .map(|e| event_to_proto(e, self.prev_kv))
            .collect()
    }
}

/// One event as protobuf.
pub fn event_to_proto(event: &mvcc::Event, with_prev_kv: bool) -> mvccpb::Event {
    let kind = match event.kind {
        mvcc::EventKind::Put => mvccpb::event::EventType::Put,
        mvcc::EventKind::Delete => mvccpb::event::EventType::Delete,
    };
    mvccpb::Event {
        r#type: kind as i32,
        kv: Some(kv_convert::kv_to_proto(&event.kv)),
        prev_kv: if with_prev_kv {
            event.prev_kv.as_ref().map(kv_convert::kv_to_proto)
        } else {
            None
        },
    }
}

/// Splits `events` (oldest first) into runs of one revision each: `(revision, events)`.
pub fn by_revision(events: &[mvcc::Event]) -> Vec<(Revision, &[mvcc::Event])> {
    let mut groups = Vec::new();
    let mut start = 0;
    for i in 1..=events.len() {
        let boundary =
            i == events.len() || events[i].kv.mod_revision != events[start].kv.mod_revision;
        if boundary {
            groups.push((events[start].kv.mod_revision, &events[start..i]));
            start = i;
        }
    }
    groups
}

/// Packs events (oldest first) into runs of whole revisions of at most `bytes_max` encoded
/// bytes each, for catch-up responses; a revision larger than that forms a run of its own.
/// (etcd sends up to 1000 revisions in one catch-up response, which can pass the 4 MiB a gRPC
/// client accepts by default; runs keep each response near `--max-request-bytes`.)
pub fn pack(events: Vec<mvccpb::Event>, bytes_max: usize) -> Vec<Vec<mvccpb::Event>> {
    let revision = |e: &mvccpb::Event| e.kv.as_ref().map_or(0, |kv| kv.mod_revision);
    let mut runs: Vec<Vec<mvccpb::Event>> = Vec::new();
    let mut run: Vec<mvccpb::Event> = Vec::new();
    let mut run_bytes = 0;
    let mut group_start = 0;
    for event in events {
        let bytes = event.encoded_len() + 2;
        let same_revision = run
            .last()
            .is_some_and(|last| revision(last) == revision(&event));
        if !same_revision {
            group_start = run.len();
        }
        if !same_revision && group_start > 0 && run_bytes + bytes > bytes_max {
            runs.push(std::mem::take(&mut run));
            run_bytes = 0;
            group_start = 0;
        } else if same_revision && run_bytes + bytes > bytes_max && group_start > 0 {
            // The revision outgrows the run: move it to a run of its own.
            let group = run.split_off(group_start);
            runs.push(std::mem::replace(&mut run, group));
            run_bytes = run.iter().map(|e| e.encoded_len() + 2).sum();
            group_start = 0;
        }
        run_bytes += bytes;
        run.push(event);
    }
    if !run.is_empty() {
        runs.push(run);
    }
    runs
}

/// etcd's fragmenting: a response of at least `bytes_max` encoded bytes with two or more events
/// is sent as several responses, each below `bytes_max` unless it holds one event only, all
/// but the last marked `fragment`. Other responses go out whole.
pub fn fragments(response: pb::WatchResponse, bytes_max: usize) -> Vec<pb::WatchResponse> {
    if response.encoded_len() < bytes_max || response.events.len() < 2 {
        return vec![response];
    }
    let mut shell = response.clone();
    shell.events = Vec::new();
    shell.fragment = true;
    let mut parts = Vec::new();
    let mut current = shell.clone();
    for event in response.events {
        current.events.push(event);
        if current.events.len() > 1 && current.encoded_len() >= bytes_max {
            let overflow = current.events.pop();
            parts.push(std::mem::replace(&mut current, shell.clone()));
            current.events.extend(overflow);
        }
    }
    current.fragment = false;
    parts.push(current);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, revision: i64) -> mvcc::KeyValue {
        mvcc::KeyValue {
            key: Bytes::copy_from_slice(key.as_bytes()),
            create_revision: Revision(revision),
            mod_revision: Revision(revision),
            version: 1,
            value: Bytes::from_static(b"v"),
            lease: mvcc::LeaseId(0),
        }
    }

    fn put(key: &str, revision: i64) -> mvcc::Event {
        mvcc::Event {
            kind: mvcc::EventKind::Put,
            kv: kv(key, revision),
            prev_kv: Some(kv(key, revision - 1)),
        }
    }

    fn delete(key: &str, revision: i64) -> mvcc::Event {
        mvcc::Event {
            kind: mvcc::EventKind::Delete,
            ..put(key, revision)
        }
    }

    fn create(key: &[u8], range_end: &[u8], filters: &[i32]) -> pb::WatchCreateRequest {
        pb::WatchCreateRequest {
            key: key.to_vec().into(),
            range_end: range_end.to_vec().into(),
            filters: filters.to_vec(),
            ..Default::default()
        }
    }

    /// Goal: etcd's key conventions. Method: a table of (key, range_end) -> keys inside and
    /// outside, and the empty ranges etcd refuses.
    #[test]
    fn key_ranges_follow_etcd_conventions() {
        /// (key, range_end, keys inside, keys outside)
        type Case<'a> = (&'a [u8], &'a [u8], &'a [&'a [u8]], &'a [&'a [u8]]);
        let cases: &[Case<'_>] = &[
            (b"foo", b"", &[b"foo"], &[b"fo", b"foo0", b"fop"]),
            (
                b"foo",
                b"fop",
                &[b"foo", b"foo/a", b"foozz"],
                &[b"fop", b"fo", b"g"],
            ),
            (b"b", b"\0", &[b"b", b"c", b"zzz"], &[b"a", b"\0"]),
            (b"", b"\0", &[b"\0", b"a", b"\xff"], &[]),
            (b"", b"", &[b"\0"], &[b"a"]),
        ];
        for (key, end, inside, outside) in cases {
            let range = KeyRange::new(key, end).expect("a valid range");
            for k in *inside {
                assert!(range.contains(k), "{key:?}..{end:?} should hold {k:?}");
            }
            for k in *outside {
                assert!(!range.contains(k), "{key:?}..{end:?} should not hold {k:?}");
            }
        }
        assert_eq!(KeyRange::new(b"b", b"a"), Err(WatchError::EmptyRange));
        assert_eq!(KeyRange::new(b"a", b"a"), Err(WatchError::EmptyRange));
        assert_eq!(
            WatchError::EmptyRange.to_string(),
            "mvcc: watcher range is empty"
        );
    }

    /// Goal: NOPUT and NODELETE drop their event kind, prev_kv is sent only when asked, and
    /// unknown filter values are ignored. Method: one batch through specs with each filter.
    #[test]
    fn filters_and_prev_kv() {
        let events = [put("a", 2), delete("a", 3), put("b", 4)];
        let keys = |spec: &WatchSpec| -> Vec<(i32, i64)> {
            spec.select(&events)
                .iter()
                .map(|e| (e.r#type, e.kv.as_ref().map_or(0, |kv| kv.mod_revision)))
                .collect()
        };
        let all = WatchSpec::from_request(&create(b"a", b"", &[])).unwrap();
        assert_eq!(keys(&all), vec![(0, 2), (1, 3)]);
        let no_put = WatchSpec::from_request(&create(b"a", b"", &[0])).unwrap();
        assert_eq!(keys(&no_put), vec![(1, 3)]);
        let no_delete = WatchSpec::from_request(&create(b"a", b"", &[1, 7])).unwrap();
        assert_eq!(keys(&no_delete), vec![(0, 2)]);
        let both = WatchSpec::from_request(&create(b"", b"\0", &[0, 1])).unwrap();
        assert!(keys(&both).is_empty());

        assert!(all.select(&events).iter().all(|e| e.prev_kv.is_none()));
        let mut with_prev = all.clone();
        with_prev.prev_kv = true;
        let selected = with_prev.select(&events);
        assert_eq!(
            selected[1].prev_kv.as_ref().map(|kv| kv.mod_revision),
            Some(2)
        );
    }

    /// Goal: a batch splits into one run per revision, in order. Method: a batch with a
    /// two-event revision between one-event revisions, and an empty batch.
    #[test]
    fn batches_split_by_revision() {
        let events = [put("a", 5), put("b", 6), delete("c", 6), put("a", 9)];
        let groups: Vec<(i64, usize)> = by_revision(&events)
            .iter()
            .map(|(r, e)| (r.get(), e.len()))
            .collect();
        assert_eq!(groups, vec![(5, 1), (6, 2), (9, 1)]);
        assert!(by_revision(&[]).is_empty());
    }

    fn big_response(events: usize, value_bytes: usize) -> pb::WatchResponse {
        let event = |i: usize| mvccpb::Event {
            r#type: 0,
            kv: Some(mvccpb::KeyValue {
                key: format!("k{i}").into_bytes().into(),
                value: vec![b'x'; value_bytes].into(),
                mod_revision: i as i64 + 1,
                ..Default::default()
            }),
            prev_kv: None,
        };
        pb::WatchResponse {
            watch_id: 7,
            header: Some(pb::ResponseHeader {
                revision: 99,
                ..Default::default()
            }),
            events: (0..events).map(event).collect(),
            ..Default::default()
        }
    }

    /// Goal: catch-up runs hold whole revisions, stay under the byte limit unless a revision
    /// alone passes it, and keep every event in order. Method: events of one-, two- and
    /// three-event revisions of 100 bytes packed under several limits.
    #[test]
    fn pack_keeps_revisions_whole() {
        let event = |revision: i64, i: usize| mvccpb::Event {
            r#type: 0,
            kv: Some(mvccpb::KeyValue {
                key: format!("k{i}").into_bytes().into(),
                value: vec![b'x'; 100].into(),
                mod_revision: revision,
                ..Default::default()
            }),
            prev_kv: None,
        };
        let layout = [1, 2, 1, 3, 1, 1, 2];
        let mut events = Vec::new();
        for (r, count) in layout.iter().enumerate() {
            for i in 0..*count {
                events.push(event(r as i64 + 1, events.len() + i));
            }
        }
        let one = events[0].encoded_len() + 2;
        for limit in [1, one, 2 * one, 3 * one + 5, 5 * one, 100 * one] {
            let runs = pack(events.clone(), limit);
            let flat: Vec<_> = runs.iter().flatten().cloned().collect();
            assert_eq!(flat, events, "limit {limit}");
            for run in &runs {
                let revisions: std::collections::BTreeSet<i64> = run
                    .iter()
                    .map(|e| e.kv.as_ref().unwrap().mod_revision)
                    .collect();
                let bytes: usize = run.iter().map(|e| e.encoded_len() + 2).sum();
                assert!(
                    bytes <= limit || revisions.len() == 1,
                    "limit {limit}: {bytes}"
                );
            }
            for pair in runs.windows(2) {
                let last = pair[0].last().unwrap().kv.as_ref().unwrap().mod_revision;
                let first = pair[1][0].kv.as_ref().unwrap().mod_revision;
                assert!(last < first, "limit {limit}: a revision was split");
            }
        }
        assert_eq!(pack(events.clone(), 100 * one).len(), 1);
        assert!(pack(Vec::new(), 10).is_empty());
    }

    /// Goal: etcd's fragment rules. Method: a response over the limit splits into parts below
    /// it, all but the last marked, events in order and none lost; a small response, and one
    /// with a single event larger than the limit, go out whole.
    #[test]
    fn fragments_split_large_responses_only() {
        let response = big_response(10, 100);
        let limit = 350;
        let parts = fragments(response.clone(), limit);
        assert!(parts.len() > 1, "{} parts", parts.len());
        for (i, part) in parts.iter().enumerate() {
            assert_eq!(part.fragment, i + 1 < parts.len());
            assert_eq!(part.watch_id, 7);
            assert_eq!(part.header, response.header);
            assert!(!part.events.is_empty());
            assert!(part.events.len() == 1 || part.encoded_len() < limit);
        }
        let rejoined: Vec<_> = parts.into_iter().flat_map(|p| p.events).collect();
        assert_eq!(rejoined, response.events);

        let small = big_response(3, 10);
        assert_eq!(fragments(small.clone(), 10_000), vec![small]);
        let single = big_response(1, 1000);
        assert_eq!(fragments(single.clone(), 100), vec![single]);
    }
}
