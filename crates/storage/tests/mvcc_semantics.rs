//! The etcd v3 semantics of the MVCC store, one rule per test, each rule checked against the
//! values etcd gives (revisions, versions, counts, errors and their messages). Also restart,
//! batching and snapshot round trips.

use bytes::Bytes;
use chorus_raft::LogIndex;
use chorus_storage::mvcc::*;

fn config() -> MvccConfig {
    MvccConfig {
        commit_sync: false,
        ..MvccConfig::default()
    }
}

fn open() -> (tempfile::TempDir, MvccStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = MvccStore::open(dir.path(), config()).unwrap();
    (dir, store)
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn put(store: &mut MvccStore, k: &str, v: &str) -> Revision {
    store.put(&PutRequest::new(b(k), b(v))).unwrap().revision
}

fn get(store: &MvccStore, k: &str) -> Option<KeyValue> {
    store
        .range(&RangeRequest::key(b(k)))
        .unwrap()
        .kvs
        .into_iter()
        .next()
}

fn keys(resp: &RangeResponse) -> Vec<String> {
    resp.kvs
        .iter()
        .map(|kv| String::from_utf8(kv.key.to_vec()).unwrap())
        .collect()
}

fn grant(store: &mut MvccStore, id: i64, ttl: i64) -> LeaseGrantResponse {
    let req = LeaseGrantRequest {
        id: LeaseId(id),
        ttl,
    };
    store.lease_grant(&req).unwrap()
}

fn del(store: &mut MvccStore, k: &str, end: &str) -> DeleteRangeResponse {
    store
        .delete_range(&DeleteRangeRequest::range(b(k), b(end)))
        .unwrap()
}

// Goal: an empty store is at revision 1 and each put makes one revision with etcd's
// create_revision, mod_revision and version. Method: two puts of one key, one of another.
#[test]
fn puts_number_revisions_and_versions() {
    let (_dir, mut store) = open();
    assert_eq!(store.current_revision(), Revision(1));
    assert_eq!(
        store.range(&RangeRequest::key(b("a"))).unwrap().revision,
        Revision(1)
    );
    assert_eq!(put(&mut store, "a", "1"), Revision(2));
    assert_eq!(put(&mut store, "b", "1"), Revision(3));
    assert_eq!(put(&mut store, "a", "2"), Revision(4));
    let a = get(&store, "a").unwrap();
    assert_eq!(
        (a.create_revision, a.mod_revision, a.version),
        (Revision(2), Revision(4), 2)
    );
    assert_eq!(a.value, b("2"));
    let b_kv = get(&store, "b").unwrap();
    assert_eq!(
        (b_kv.create_revision, b_kv.mod_revision, b_kv.version),
        (Revision(3), Revision(3), 1)
    );
}

// Goal: re-creating a deleted key resets version to 1 and create_revision to the new put.
// Method: put twice, delete, put again; read the key at each revision.
#[test]
fn recreation_starts_a_new_generation() {
    let (_dir, mut store) = open();
    put(&mut store, "k", "1"); // 2
    put(&mut store, "k", "2"); // 3
    assert_eq!(del(&mut store, "k", "").revision, Revision(4));
    assert!(get(&store, "k").is_none());
    put(&mut store, "k", "3"); // 5
    let kv = get(&store, "k").unwrap();
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version),
        (Revision(5), Revision(5), 1)
    );
    let at = |rev| {
        let req = RangeRequest {
            revision: Revision(rev),
            ..RangeRequest::key(b("k"))
        };
        store
            .range(&req)
            .unwrap()
            .kvs
            .first()
            .map(|kv| (kv.version, kv.value.clone()))
    };
    assert_eq!(at(1), None);
    assert_eq!(at(2), Some((1, b("1"))));
    assert_eq!(at(3), Some((2, b("2"))));
    assert_eq!(at(4), None);
    assert_eq!(at(5), Some((1, b("3"))));
}

// Goal: a delete that deletes nothing makes no revision; one that deletes makes one revision
// for all its keys. Method: delete a missing key, then a range of three keys.
#[test]
fn delete_revisions() {
    let (_dir, mut store) = open();
    let resp = del(&mut store, "missing", "");
    assert_eq!((resp.revision, resp.deleted), (Revision(1), 0));
    assert_eq!(store.current_revision(), Revision(1));
    for k in ["a", "b", "c", "d"] {
        put(&mut store, k, "v");
    }
    let resp = store
        .delete_range(&DeleteRangeRequest {
            prev_kv: true,
            ..DeleteRangeRequest::range(b("a"), b("d"))
        })
        .unwrap();
    assert_eq!((resp.revision, resp.deleted), (Revision(6), 3));
    let prev: Vec<_> = resp
        .prev_kvs
        .iter()
        .map(|kv| (kv.key.clone(), kv.mod_revision))
        .collect();
    assert_eq!(
        prev,
        vec![
            (b("a"), Revision(2)),
            (b("b"), Revision(3)),
            (b("c"), Revision(4))
        ]
    );
    assert_eq!(
        keys(&store.range(&RangeRequest::range(b("a"), b("\0"))).unwrap()),
        ["d"]
    );
}

// Goal: Put's prev_kv, ignore_value and ignore_lease, and etcd's errors for them.
// Method: a table of puts on a present and a missing key.
#[test]
fn put_options() {
    let (_dir, mut store) = open();
    grant(&mut store, 7, 10);
    grant(&mut store, 9, 10);
    let first = store
        .put(&PutRequest {
            prev_kv: true,
            ..PutRequest::new(b("k"), b("v1"))
        })
        .unwrap();
    assert_eq!(first.prev_kv, None);
    let leased = PutRequest {
        lease: LeaseId(7),
        prev_kv: true,
        ..PutRequest::new(b("k"), b("v2"))
    };
    let second = store.put(&leased).unwrap();
    assert_eq!(second.prev_kv.unwrap().value, b("v1"));

    let keep_value = PutRequest {
        ignore_value: true,
        ..PutRequest::new(b("k"), Bytes::new())
    };
    store.put(&keep_value).unwrap();
    let kv = get(&store, "k").unwrap();
    assert_eq!(
        (kv.value.clone(), kv.lease, kv.version),
        (b("v2"), LeaseId::NONE, 3)
    );

    store
        .put(&PutRequest {
            lease: LeaseId(9),
            ..PutRequest::new(b("k"), b("v3"))
        })
        .unwrap();
    let keep_lease = PutRequest {
        ignore_lease: true,
        ..PutRequest::new(b("k"), b("v4"))
    };
    store.put(&keep_lease).unwrap();
    let kv = get(&store, "k").unwrap();
    assert_eq!((kv.value.clone(), kv.lease), (b("v4"), LeaseId(9)));

    let revision = store.current_revision();
    let table = [
        (
            PutRequest {
                ignore_value: true,
                ..PutRequest::new(b("nope"), Bytes::new())
            },
            "etcdserver: key not found",
        ),
        (
            PutRequest {
                ignore_lease: true,
                ..PutRequest::new(b("nope"), b("x"))
            },
            "etcdserver: key not found",
        ),
        (
            PutRequest {
                ignore_value: true,
                ..PutRequest::new(b("k"), b("x"))
            },
            "etcdserver: value is provided",
        ),
        (
            PutRequest {
                ignore_lease: true,
                lease: LeaseId(1),
                ..PutRequest::new(b("k"), b("x"))
            },
            "etcdserver: lease is provided",
        ),
        (
            PutRequest::new(Bytes::new(), b("x")),
            "etcdserver: key is not provided",
        ),
    ];
    for (req, message) in table {
        let error = store.put(&req).unwrap_err();
        assert_eq!(error.to_string(), message, "{req:?}");
        assert!(error.is_request_error());
    }
    assert!(matches!(
        store.put(&table_missing()),
        Err(MvccError::KeyNotFound { key }) if key == b("nope")
    ));
    assert_eq!(
        store.current_revision(),
        revision,
        "failed puts make no revision"
    );
}

fn table_missing() -> PutRequest {
    PutRequest {
        ignore_value: true,
        ..PutRequest::new(b("nope"), Bytes::new())
    }
}

// Goal: etcd's range_end conventions, prefixes, limit, more and count.
// Method: five keys, a table of ranges with the keys, count and more etcd returns.
#[test]
fn range_spans_limits_and_counts() {
    let (_dir, mut store) = open();
    for k in ["a", "ab", "abc", "b", "c"] {
        put(&mut store, k, "v");
    }
    // key, range_end, limit, keys, count, more
    type Case = (
        &'static str,
        &'static str,
        i64,
        &'static [&'static str],
        i64,
        bool,
    );
    let table: [Case; 9] = [
        ("a", "", 0, &["a"], 1, false),
        ("a", "b", 0, &["a", "ab", "abc"], 3, false),
        ("ab", "\0", 0, &["ab", "abc", "b", "c"], 4, false),
        ("\0", "\0", 0, &["a", "ab", "abc", "b", "c"], 5, false),
        ("\0", "\0", 2, &["a", "ab"], 5, true),
        ("a", "b", 3, &["a", "ab", "abc"], 3, false),
        ("a", "ac", 1, &["a"], 3, true),
        ("c", "a", 0, &[], 0, false),
        ("zz", "\0", 0, &[], 0, false),
    ];
    for (key, end, limit, want, count, more) in table {
        let req = RangeRequest {
            limit,
            ..RangeRequest::range(b(key), b(end))
        };
        let resp = store.range(&req).unwrap();
        assert_eq!(keys(&resp), want, "{key:?}..{end:?} limit {limit}");
        assert_eq!(
            (resp.count, resp.more),
            (count, more),
            "{key:?}..{end:?} limit {limit}"
        );
        assert_eq!(resp.revision, Revision(6));
    }
}

// Goal: keys_only drops values, count_only returns only the count.
#[test]
fn keys_only_and_count_only() {
    let (_dir, mut store) = open();
    put(&mut store, "a", "1");
    put(&mut store, "b", "2");
    let all = RangeRequest::range(b("a"), b("\0"));
    let resp = store
        .range(&RangeRequest {
            keys_only: true,
            ..all.clone()
        })
        .unwrap();
    assert_eq!(keys(&resp), ["a", "b"]);
    assert!(
        resp.kvs
            .iter()
            .all(|kv| kv.value.is_empty() && kv.version == 1)
    );
    let resp = store
        .range(&RangeRequest {
            count_only: true,
            limit: 1,
            ..all
        })
        .unwrap();
    assert!(resp.kvs.is_empty());
    assert_eq!((resp.count, resp.more), (2, false));
}

// Goal: sort by each target and order, as etcd sorts; limit applies after sorting.
// Method: three keys with different versions, create and mod revisions and values.
#[test]
fn sorting() {
    let (_dir, mut store) = open();
    put(&mut store, "a", "z"); // 2
    put(&mut store, "b", "y"); // 3
    put(&mut store, "c", "x"); // 4
    put(&mut store, "a", "w"); // 5: a has version 2, mod 5, value w
    put(&mut store, "b", "v"); // 6
    put(&mut store, "b", "u"); // 7: b has version 3, mod 7, value u
    use SortOrder::*;
    use SortTarget::*;
    let table: [(SortOrder, SortTarget, &[&str]); 10] = [
        (None, Key, &["a", "b", "c"]),
        (Ascend, Key, &["a", "b", "c"]),
        (Descend, Key, &["c", "b", "a"]),
        (None, Version, &["c", "a", "b"]),
        (Descend, Version, &["b", "a", "c"]),
        (Ascend, Create, &["a", "b", "c"]),
        (Descend, Create, &["c", "b", "a"]),
        (Ascend, Mod, &["c", "a", "b"]),
        (Ascend, Value, &["b", "a", "c"]),
        (Descend, Value, &["c", "a", "b"]),
    ];
    for (order, target, want) in table {
        let req = RangeRequest {
            sort_order: order,
            sort_target: target,
            ..RangeRequest::range(b("a"), b("\0"))
        };
        assert_eq!(
            keys(&store.range(&req).unwrap()),
            want,
            "{order:?} {target:?}"
        );
    }
    let req = RangeRequest {
        sort_order: Descend,
        sort_target: Key,
        limit: 1,
        ..RangeRequest::range(b("a"), b("\0"))
    };
    let resp = store.range(&req).unwrap();
    assert_eq!(
        (keys(&resp), resp.more, resp.count),
        (vec!["c".to_string()], true, 3)
    );
}

// Goal: the min/max mod/create revision filters; count ignores them, as in etcd.
#[test]
fn revision_filters() {
    let (_dir, mut store) = open();
    put(&mut store, "a", "1"); // 2
    put(&mut store, "b", "1"); // 3
    put(&mut store, "c", "1"); // 4
    put(&mut store, "a", "2"); // 5: a created 2, mod 5
    let all = RangeRequest::range(b("a"), b("\0"));
    let table: [(RangeRequest, &[&str]); 6] = [
        (
            RangeRequest {
                min_mod_revision: Revision(4),
                ..all.clone()
            },
            &["a", "c"],
        ),
        (
            RangeRequest {
                max_mod_revision: Revision(4),
                ..all.clone()
            },
            &["b", "c"],
        ),
        (
            RangeRequest {
                min_create_revision: Revision(3),
                ..all.clone()
            },
            &["b", "c"],
        ),
        (
            RangeRequest {
                max_create_revision: Revision(3),
                ..all.clone()
            },
            &["a", "b"],
        ),
        (
            RangeRequest {
                min_mod_revision: Revision(3),
                max_create_revision: Revision(3),
                ..all.clone()
            },
            &["a", "b"],
        ),
        (
            RangeRequest {
                min_mod_revision: Revision(3),
                limit: 1,
                ..all.clone()
            },
            &["a"],
        ),
    ];
    for (req, want) in table {
        let resp = store.range(&req).unwrap();
        assert_eq!(keys(&resp), want, "{req:?}");
        assert_eq!(resp.count, 3, "count ignores the filters");
    }
}

// Goal: historical reads, and etcd's errors for compacted and future revisions, for ranges and
// compactions. Method: write, compact, then read at and around the compacted revision.
#[test]
fn compaction_and_revision_errors() {
    let (_dir, mut store) = open();
    put(&mut store, "k", "1"); // 2
    put(&mut store, "k", "2"); // 3
    put(&mut store, "k", "3"); // 4
    let at = |store: &MvccStore, rev: i64| {
        store.range(&RangeRequest {
            revision: Revision(rev),
            ..RangeRequest::key(b("k"))
        })
    };
    let future = at(&store, 5).unwrap_err();
    assert_eq!(
        future.to_string(),
        "mvcc: required revision is a future revision"
    );
    assert!(matches!(
        future,
        MvccError::FutureRevision {
            current_revision: Revision(4)
        }
    ));

    assert_eq!(store.compact(Revision(3)).unwrap().revision, Revision(4));
    assert_eq!(
        store.current_revision(),
        Revision(4),
        "compaction makes no revision"
    );
    let compacted = at(&store, 2).unwrap_err();
    assert_eq!(
        compacted.to_string(),
        "mvcc: required revision has been compacted"
    );
    assert!(matches!(
        compacted,
        MvccError::Compacted {
            compact_revision: Revision(3)
        }
    ));
    assert_eq!(
        at(&store, 3).unwrap().kvs[0].value,
        b("2"),
        "the compacted revision is readable"
    );
    assert_eq!(at(&store, 0).unwrap().kvs[0].value, b("3"));

    let table = [
        (2, "mvcc: required revision has been compacted"),
        (3, "mvcc: required revision has been compacted"),
        (5, "mvcc: required revision is a future revision"),
    ];
    for (rev, message) in table {
        assert_eq!(
            store.compact(Revision(rev)).unwrap_err().to_string(),
            message,
            "compact {rev}"
        );
    }
    store.compact(Revision(4)).unwrap();
    assert_eq!(
        store.record_count().unwrap(),
        1,
        "only the latest version is left"
    );
}

// Goal: compaction physically removes old versions and deleted keys, and keeps the compacted
// revision's own events. Method: count records before and after, read the history.
#[test]
fn compaction_is_physical() {
    let (_dir, mut store) = open();
    put(&mut store, "a", "1"); // 2
    put(&mut store, "a", "2"); // 3
    put(&mut store, "b", "1"); // 4
    del(&mut store, "b", ""); // 5
    put(&mut store, "c", "1"); // 6
    assert_eq!(store.record_count().unwrap(), 5);
    store.compact(Revision(5)).unwrap();
    // Kept: a@3 (latest of a), b's tombstone @5 (the compacted revision's event), c@6.
    assert_eq!(store.record_count().unwrap(), 3);
    let events = store.events(Revision(5), 100, false).unwrap().events;
    let kinds: Vec<_> = events.iter().map(|e| (e.kind, e.kv.key.clone())).collect();
    assert_eq!(
        kinds,
        vec![(EventKind::Delete, b("b")), (EventKind::Put, b("c"))]
    );
    store.compact(Revision(6)).unwrap();
    assert_eq!(
        store.record_count().unwrap(),
        2,
        "the old tombstone goes with the next compaction"
    );
}

// Goal: a transaction is one revision shared by its writes; a transaction that writes nothing
// makes none; reads inside see earlier writes; sub-responses carry etcd's header revisions.
#[test]
fn txn_revisions() {
    let (_dir, mut store) = open();
    put(&mut store, "x", "0"); // 2
    let txn = TxnRequest {
        compare: vec![],
        success: vec![
            RequestOp::Range(RangeRequest::key(b("a"))),
            RequestOp::Put(PutRequest::new(b("a"), b("1"))),
            RequestOp::Range(RangeRequest::key(b("a"))),
            RequestOp::Put(PutRequest::new(b("b"), b("1"))),
            RequestOp::DeleteRange(DeleteRangeRequest::key(b("x"))),
            RequestOp::DeleteRange(DeleteRangeRequest::key(b("nothing"))),
        ],
        failure: vec![],
    };
    let resp = store.txn(&txn).unwrap();
    assert!(resp.succeeded);
    assert_eq!(resp.revision, Revision(3));
    assert_eq!(store.current_revision(), Revision(3));
    let [
        ResponseOp::Range(r1),
        ResponseOp::Put(p1),
        ResponseOp::Range(r2),
        ResponseOp::Put(p2),
        ResponseOp::DeleteRange(d1),
        ResponseOp::DeleteRange(d2),
    ] = &resp.responses[..]
    else {
        panic!("unexpected responses {:?}", resp.responses)
    };
    assert_eq!((r1.revision, r1.kvs.len()), (Revision(2), 0));
    assert_eq!(p1.revision, Revision(3));
    assert_eq!(
        (r2.revision, r2.kvs[0].value.clone()),
        (Revision(3), b("1"))
    );
    assert_eq!(p2.revision, Revision(3));
    assert_eq!((d1.revision, d1.deleted), (Revision(3), 1));
    assert_eq!((d2.revision, d2.deleted), (Revision(3), 0));
    let a = get(&store, "a").unwrap();
    let b_kv = get(&store, "b").unwrap();
    assert_eq!(
        (a.mod_revision, b_kv.mod_revision),
        (Revision(3), Revision(3))
    );

    let read_only = TxnRequest {
        compare: vec![],
        success: vec![RequestOp::Range(RangeRequest::key(b("a")))],
        failure: vec![],
    };
    assert_eq!(store.txn(&read_only).unwrap().revision, Revision(3));
    let delete_nothing = TxnRequest {
        compare: vec![],
        success: vec![RequestOp::DeleteRange(DeleteRangeRequest::key(b("none")))],
        failure: vec![],
    };
    assert_eq!(store.txn(&delete_nothing).unwrap().revision, Revision(3));
    assert_eq!(store.current_revision(), Revision(3));
    let history = store.events(Revision(3), 100, false).unwrap().events;
    assert_eq!(history.len(), 3, "one revision, three events");
    assert!(history.iter().all(|e| e.kv.mod_revision == Revision(3)));
}

fn cmp(key: &str, result: CompareResult, target: CompareTarget) -> Compare {
    Compare::key(b(key), result, target)
}

// Goal: every compare target and result, with ranges and missing keys, as etcd evaluates them.
// Method: a table of compares against a known state; each decides which branch runs.
#[test]
fn txn_compares() {
    let (_dir, mut store) = open();
    grant(&mut store, 5, 10);
    put(&mut store, "a", "1"); // 2
    put(&mut store, "a", "2"); // 3: a version 2, create 2, mod 3
    store
        .put(&PutRequest {
            lease: LeaseId(5),
            ..PutRequest::new(b("b"), b("9"))
        })
        .unwrap(); // 4
    use CompareResult::*;
    use CompareTarget::*;
    let table: Vec<(Compare, bool)> = vec![
        (cmp("a", Equal, Value(b("2"))), true),
        (cmp("a", Greater, Value(b("1"))), true),
        (cmp("a", Less, Value(b("1"))), false),
        (cmp("a", NotEqual, Value(b("2"))), false),
        (cmp("a", Equal, Version(2)), true),
        (cmp("a", Equal, Create(Revision(2))), true),
        (cmp("a", Equal, Mod(Revision(3))), true),
        (cmp("a", Less, Mod(Revision(3))), false),
        (cmp("b", Equal, Lease(LeaseId(5))), true),
        (cmp("a", Equal, Lease(LeaseId::NONE)), true),
        // A missing key compares as zeros, except that a value compare fails.
        (cmp("m", Equal, Version(0)), true),
        (cmp("m", Equal, Create(Revision(0))), true),
        (cmp("m", Equal, Value(Bytes::new())), false),
        (cmp("m", NotEqual, Value(b("x"))), false),
        // With range_end, every key must satisfy the compare.
        (
            Compare {
                range_end: b("c"),
                ..cmp("a", Greater, Mod(Revision(2)))
            },
            true,
        ),
        (
            Compare {
                range_end: b("c"),
                ..cmp("a", Equal, Version(2))
            },
            false,
        ),
        (
            Compare {
                range_end: b("\0"),
                ..cmp("a", Less, Create(Revision(5)))
            },
            true,
        ),
        (
            Compare {
                range_end: b("z"),
                ..cmp("x", Equal, Value(b("1")))
            },
            false,
        ),
    ];
    for (compare, holds) in table {
        let txn = TxnRequest {
            compare: vec![compare.clone()],
            success: vec![RequestOp::Range(RangeRequest::key(b("a")))],
            failure: vec![],
        };
        let resp = store.txn(&txn).unwrap();
        assert_eq!(resp.succeeded, holds, "{compare:?}");
        assert_eq!(resp.responses.len(), usize::from(holds));
    }
    assert_eq!(store.current_revision(), Revision(4));
}

// Goal: nested transactions take their branches from the state before the outer one writes,
// share its revision, and leave their own header revision unset. Method: an outer put of `a`
// and a nested compare on `a`'s old value.
#[test]
fn nested_txns() {
    let (_dir, mut store) = open();
    put(&mut store, "a", "old"); // 2
    let nested = TxnRequest {
        compare: vec![cmp(
            "a",
            CompareResult::Equal,
            CompareTarget::Value(b("old")),
        )],
        success: vec![RequestOp::Put(PutRequest::new(b("saw-old"), b("1")))],
        failure: vec![RequestOp::Put(PutRequest::new(b("saw-new"), b("1")))],
    };
    let outer = TxnRequest {
        compare: vec![cmp("a", CompareResult::Equal, CompareTarget::Version(1))],
        success: vec![
            RequestOp::Put(PutRequest::new(b("a"), b("new"))),
            RequestOp::Txn(nested),
        ],
        failure: vec![],
    };
    let resp = store.txn(&outer).unwrap();
    assert!(resp.succeeded);
    assert_eq!(resp.revision, Revision(3));
    let ResponseOp::Txn(inner) = &resp.responses[1] else {
        panic!("{resp:?}")
    };
    assert!(
        inner.succeeded,
        "the nested compare saw the value before the outer put"
    );
    assert_eq!(inner.revision, Revision(0));
    let ResponseOp::Put(inner_put) = &inner.responses[0] else {
        panic!("{inner:?}")
    };
    assert_eq!(inner_put.revision, Revision(3));
    assert_eq!(get(&store, "saw-old").unwrap().mod_revision, Revision(3));
    assert!(get(&store, "saw-new").is_none());
}

// Goal: the request errors of a transaction leave the store unchanged, with etcd's messages.
// Method: a table of failing transactions.
#[test]
fn txn_errors() {
    let (_dir, mut store) = open();
    put(&mut store, "a", "1"); // 2
    put(&mut store, "a", "2"); // 3
    store.compact(Revision(3)).unwrap();
    let put_a = || RequestOp::Put(PutRequest::new(b("a"), b("x")));
    let range_at = |rev| {
        RequestOp::Range(RangeRequest {
            revision: Revision(rev),
            ..RangeRequest::key(b("a"))
        })
    };
    let missing = RequestOp::Put(PutRequest {
        ignore_value: true,
        ..PutRequest::new(b("m"), Bytes::new())
    });
    let table: Vec<(TxnRequest, &str)> = vec![
        (
            TxnRequest {
                compare: vec![],
                success: vec![put_a(), put_a()],
                failure: vec![],
            },
            "etcdserver: duplicate key given in txn request",
        ),
        (
            TxnRequest {
                compare: vec![],
                success: vec![put_a(), range_at(4)],
                failure: vec![],
            },
            "mvcc: required revision is a future revision",
        ),
        (
            TxnRequest {
                compare: vec![],
                success: vec![put_a(), range_at(2)],
                failure: vec![],
            },
            "mvcc: required revision has been compacted",
        ),
        (
            TxnRequest {
                compare: vec![],
                success: vec![put_a(), missing],
                failure: vec![],
            },
            "etcdserver: key not found",
        ),
        (
            TxnRequest {
                compare: vec![cmp("", CompareResult::Equal, CompareTarget::Version(0))],
                success: vec![],
                failure: vec![],
            },
            "etcdserver: key is not provided",
        ),
    ];
    for (txn, message) in table {
        assert_eq!(store.txn(&txn).unwrap_err().to_string(), message, "{txn:?}");
        assert_eq!(store.current_revision(), Revision(3));
        assert_eq!(get(&store, "a").unwrap().value, b("2"));
    }
    // The checks only cover the branch that runs.
    let other_branch = TxnRequest {
        compare: vec![],
        success: vec![put_a()],
        failure: vec![range_at(4)],
    };
    assert!(store.txn(&other_branch).unwrap().succeeded);
    let mut small = config();
    small.txn_ops_max = 1;
    let dir = tempfile::tempdir().unwrap();
    let mut limited = MvccStore::open(dir.path(), small).unwrap();
    let two = TxnRequest {
        compare: vec![],
        success: vec![put_a(), RequestOp::Put(PutRequest::new(b("b"), b("x")))],
        failure: vec![],
    };
    assert_eq!(
        limited.txn(&two).unwrap_err().to_string(),
        "etcdserver: too many operations in txn request"
    );
}

// Goal: the history watch reads: every event from a revision, prev_kv, delete events as etcd
// shapes them, batches that never split a revision, and the compacted error.
#[test]
fn event_history() {
    let (_dir, mut store) = open();
    put(&mut store, "a", "1"); // 2
    put(&mut store, "a", "2"); // 3
    let txn = TxnRequest {
        compare: vec![],
        success: vec![
            RequestOp::Put(PutRequest::new(b("b"), b("1"))),
            RequestOp::DeleteRange(DeleteRangeRequest::key(b("a"))),
        ],
        failure: vec![],
    };
    store.txn(&txn).unwrap(); // 4
    let all = store.events(Revision(1), 100, true).unwrap();
    assert_eq!(all.next, Revision(5));
    let summary: Vec<_> = all
        .events
        .iter()
        .map(|e| {
            (
                e.kind,
                e.kv.key.clone(),
                e.kv.mod_revision,
                e.prev_kv.as_ref().map(|p| p.value.clone()),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (EventKind::Put, b("a"), Revision(2), None),
            (EventKind::Put, b("a"), Revision(3), Some(b("1"))),
            (EventKind::Put, b("b"), Revision(4), None),
            (EventKind::Delete, b("a"), Revision(4), Some(b("2"))),
        ]
    );
    let delete = &all.events[3].kv;
    assert_eq!(
        (delete.version, delete.create_revision, delete.value.len()),
        (0, Revision(0), 0)
    );

    // A batch of at most 3 events stops after revision 3, then resumes without splitting 4.
    let first = store.events(Revision(2), 1, false).unwrap();
    assert_eq!((first.events.len(), first.next), (1, Revision(3)));
    let second = store.events(Revision(3), 2, false).unwrap();
    assert_eq!((second.events.len(), second.next), (3, Revision(5)));
    let none = store.events(Revision(9), 2, false).unwrap();
    assert_eq!((none.events.len(), none.next), (0, Revision(9)));

    store.compact(Revision(3)).unwrap();
    let error = store.events(Revision(2), 10, false).unwrap_err();
    assert_eq!(
        error.to_string(),
        "mvcc: required revision has been compacted"
    );
    let from_compacted = store.events(Revision(3), 10, true).unwrap().events;
    assert_eq!(from_compacted.len(), 3);
    assert_eq!(
        from_compacted[0].prev_kv, None,
        "the version before the compacted one is gone"
    );
}

// Goal: the store knows which live keys carry each lease. Method: attach, move, delete.
#[test]
fn keys_by_lease() {
    let (_dir, mut store) = open();
    for id in [1, 2] {
        grant(&mut store, id, 10);
    }
    let leased = |k: &str, lease| PutRequest {
        lease: LeaseId(lease),
        ..PutRequest::new(b(k), b("v"))
    };
    store.put(&leased("a", 1)).unwrap();
    store.put(&leased("b", 1)).unwrap();
    store.put(&leased("c", 2)).unwrap();
    assert_eq!(store.keys_with_lease(LeaseId(1)), vec![b("a"), b("b")]);
    store.put(&leased("b", 2)).unwrap();
    store.put(&PutRequest::new(b("a"), b("no lease"))).unwrap();
    del(&mut store, "c", "");
    assert!(store.keys_with_lease(LeaseId(1)).is_empty());
    assert_eq!(store.keys_with_lease(LeaseId(2)), vec![b("b")]);
}

// Goal: grants and revocations follow etcd: a lease id is granted once, a put or a txn put
// naming a lease that is not granted is refused (and changes nothing), a revocation deletes
// every key of the lease at one revision (none when it has no keys) and forgets the lease.
// Method: the answers and the store after each step.
#[test]
fn lease_grants_and_revocations() {
    let (_dir, mut store) = open();
    let granted = grant(&mut store, 5, 30);
    assert_eq!((granted.id, granted.ttl), (LeaseId(5), 30));
    assert_eq!(granted.revision, Revision(1), "a grant makes no revision");
    let again = store.lease_grant(&LeaseGrantRequest {
        id: LeaseId(5),
        ttl: 9,
    });
    assert!(matches!(
        again,
        Err(MvccError::LeaseExists { lease: LeaseId(5) })
    ));
    assert_eq!(
        store.lease_ttl(LeaseId(5)),
        Some(30),
        "the first grant stands"
    );

    let leased = |k: &str, lease| PutRequest {
        lease: LeaseId(lease),
        ..PutRequest::new(b(k), b("v"))
    };
    store.put(&leased("a", 5)).unwrap();
    store.put(&leased("b", 5)).unwrap();
    put(&mut store, "c", "free");
    let refused = store.put(&leased("d", 6));
    assert!(matches!(
        refused,
        Err(MvccError::LeaseNotFound { lease: LeaseId(6) })
    ));
    let txn = TxnRequest {
        success: vec![RequestOp::Put(leased("e", 6))],
        ..TxnRequest::default()
    };
    assert!(matches!(
        store.txn(&txn),
        Err(MvccError::LeaseNotFound { .. })
    ));
    // The failure branch is not taken: its lease is not checked.
    let txn = TxnRequest {
        failure: vec![RequestOp::Put(leased("e", 6))],
        ..TxnRequest::default()
    };
    assert!(store.txn(&txn).unwrap().succeeded);
    assert_eq!(
        store.current_revision(),
        Revision(4),
        "refused writes make no revision"
    );

    let revoked = store.lease_revoke(LeaseId(5)).unwrap();
    assert_eq!((revoked.revision, revoked.deleted), (Revision(5), 2));
    let events = store.events(Revision(5), 10, false).unwrap().events;
    let deleted: Vec<(Bytes, Revision)> = events
        .iter()
        .map(|e| (e.kv.key.clone(), e.kv.mod_revision))
        .collect();
    assert_eq!(deleted, vec![(b("a"), Revision(5)), (b("b"), Revision(5))]);
    assert_eq!(store.lease_ttl(LeaseId(5)), None);
    assert!(store.keys_with_lease(LeaseId(5)).is_empty());
    assert!(matches!(
        store.lease_revoke(LeaseId(5)),
        Err(MvccError::LeaseNotFound { .. })
    ));
    grant(&mut store, 7, 10);
    let empty = store.lease_revoke(LeaseId(7)).unwrap();
    assert_eq!((empty.revision, empty.deleted), (Revision(5), 0));
    assert!(store.leases().is_empty());
}

// Goal: a batch applies many writes in one engine transaction with the applied index, and a
// reopened store has the same data, revisions, compaction and applied index (with fsync on).
// Method: apply a batch, compact, drop, reopen, compare ranges, hashes and history.
#[test]
fn restart_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let durable = MvccConfig::default();
    let (hash, all) = {
        let mut store = MvccStore::open(dir.path(), durable.clone()).unwrap();
        grant(&mut store, 1, 10);
        grant(&mut store, 2, 20);
        let mut batch = store.begin().unwrap();
        for i in 0..20 {
            let key = format!("k{:02}", i % 7);
            let lease = LeaseId(i % 3);
            batch
                .put(&PutRequest {
                    lease,
                    ..PutRequest::new(b(&key), b(&i.to_string()))
                })
                .unwrap();
        }
        batch
            .delete_range(&DeleteRangeRequest::key(b("k03")))
            .unwrap();
        assert!(
            batch.put(&table_missing()).is_err(),
            "a request error inside a batch"
        );
        batch.set_applied_index(LogIndex(22));
        batch.commit().unwrap();
        store
            .apply(LogIndex(23), &WriteOp::Compact(Revision(10)))
            .unwrap();
        assert_eq!(store.current_revision(), Revision(22));
        let all = store.range(&RangeRequest::range(b("\0"), b("\0"))).unwrap();
        (store.hash().unwrap(), all)
    };
    let store = MvccStore::open(dir.path(), durable).unwrap();
    assert_eq!(store.current_revision(), Revision(22));
    assert_eq!(store.compact_revision(), Revision(10));
    assert_eq!(store.applied_index(), LogIndex(23));
    assert_eq!(store.hash().unwrap(), hash);
    assert_eq!(
        store.range(&RangeRequest::range(b("\0"), b("\0"))).unwrap(),
        all
    );
    assert_eq!(
        store.keys_with_lease(LeaseId(1)),
        vec![b("k02"), b("k05"), b("k06")]
    );
    assert_eq!(store.leases(), vec![(LeaseId(1), 10), (LeaseId(2), 20)]);
    let at = RangeRequest {
        revision: Revision(10),
        ..RangeRequest::range(b("\0"), b("\0"))
    };
    assert_eq!(store.range(&at).unwrap().count, 7);
    assert_eq!(
        store.events(Revision(10), 100, false).unwrap().events.len(),
        13
    );
}

// Goal: a batch dropped after it changed the index closes the store for writes (the index is
// ahead of the engine), and reopening recovers the last committed state.
#[test]
fn dropped_batch_fails_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = MvccStore::open(dir.path(), config()).unwrap();
    put(&mut store, "a", "1");
    {
        let mut batch = store.begin().unwrap();
        batch.put(&PutRequest::new(b("a"), b("2"))).unwrap();
    }
    assert!(matches!(
        store.put(&PutRequest::new(b("b"), b("1"))),
        Err(MvccError::Failed)
    ));
    let read = store.range(&RangeRequest::key(b("a")));
    assert!(
        matches!(read, Err(MvccError::Failed)),
        "reads refuse a failed store: {read:?}"
    );
    drop(store);
    let store = MvccStore::open(dir.path(), config()).unwrap();
    assert_eq!(store.current_revision(), Revision(2));
    assert_eq!(get(&store, "a").unwrap().value, b("1"));
}

/// The store commits to its engine only when a compaction asks it (see
/// `MvccConfig::commit_sync_interval`): the batches after the last one stay in memory.
fn buffered_config() -> MvccConfig {
    MvccConfig {
        commit_sync_interval: std::time::Duration::from_secs(3600),
        ..config()
    }
}

/// 300 puts over 120 keys, a compaction at revision 100 after the first 150, a delete of 10 keys
/// and three leases. With `buffered_config`, the last 150 puts stay in memory.
fn populated(config: MvccConfig) -> (tempfile::TempDir, MvccStore) {
    let dir = tempfile::tempdir().unwrap();
    let small_chunks = MvccConfig {
        snapshot_chunk_bytes_max: 4096,
        ..config
    };
    let mut store = MvccStore::open(dir.path(), small_chunks).unwrap();
    for id in [3, 1, -4] {
        grant(&mut store, id, 30 + id);
    }
    fn put_range(store: &mut MvccStore, from: u32, to: u32) -> WriteBatch<'_> {
        let mut batch = store.begin().unwrap();
        for i in from..to {
            let value = format!("{i}-{}", "x".repeat((i % 50) as usize));
            batch
                .put(&PutRequest::new(
                    b(&format!("key/{:03}", i % 120)),
                    b(&value),
                ))
                .unwrap();
        }
        batch
    }
    let mut batch = put_range(&mut store, 0, 150);
    batch.set_applied_index(LogIndex(150));
    batch.commit().unwrap();
    store.compact(Revision(100)).unwrap();
    let mut batch = put_range(&mut store, 150, 300);
    batch
        .delete_range(&DeleteRangeRequest::range(b("key/050"), b("key/060")))
        .unwrap();
    batch.set_applied_index(LogIndex(301));
    batch.commit().unwrap();
    (dir, store)
}

// Goal: a snapshot streamed in chunks restores into a fresh directory as an identical store,
// whether the store committed every batch to its engine or keeps the last ones in memory.
// Method: snapshot a store with history and a compaction, write more after taking it (the
// snapshot must not see it), restore, and compare meta, hash, ranges and history.
#[test]
fn snapshot_round_trip() {
    snapshot_round_trip_with(config());
    snapshot_round_trip_with(buffered_config());
}

fn snapshot_round_trip_with(config: MvccConfig) {
    let (_dir, mut store) = populated(config.clone());
    let hash = store.hash().unwrap();
    let all = RangeRequest::range(b("\0"), b("\0"));
    let before = store.range(&all).unwrap();
    let history = store.events(Revision(100), 1000, true).unwrap();
    let at_150 = RangeRequest {
        revision: Revision(150),
        ..all.clone()
    };
    let before_at_150 = store.range(&at_150).unwrap().kvs;
    let mut snapshot = store.snapshot().unwrap();
    let first = snapshot.next_chunk().unwrap().unwrap();
    // Writes and a compaction that deletes records while the snapshot streams: it must not see
    // them.
    put(&mut store, "after", "snapshot");
    store.compact(Revision(250)).unwrap();
    assert_eq!(
        snapshot.meta(),
        SnapshotMeta {
            current_revision: Revision(302),
            compact_revision: Revision(100),
            applied_index: LogIndex(301)
        }
    );
    let mut chunks: Vec<Bytes> = vec![first];
    chunks.extend(snapshot.collect::<MvccResult<Vec<_>>>().unwrap());
    assert!(
        chunks.len() > 3,
        "the stream is chunked: {} chunks",
        chunks.len()
    );
    assert!(chunks.iter().all(|c| c.len() < 4096 + 200));
    let target = tempfile::tempdir().unwrap();
    let restored = MvccStore::restore(
        &target.path().join("restored"),
        config,
        chunks.iter().cloned().map(Ok),
    )
    .unwrap();
    assert_eq!(restored.current_revision(), Revision(302));
    assert_eq!(restored.compact_revision(), Revision(100));
    assert_eq!(restored.applied_index(), LogIndex(301));
    assert_eq!(restored.hash().unwrap(), hash);
    assert_eq!(
        restored.leases(),
        vec![(LeaseId(-4), 26), (LeaseId(1), 31), (LeaseId(3), 33)]
    );
    assert_eq!(restored.range(&all).unwrap(), before);
    assert_eq!(restored.events(Revision(100), 1000, true).unwrap(), history);
    assert_eq!(restored.range(&at_150).unwrap().kvs, before_at_150);
    let error = store.range(&at_150).unwrap_err();
    assert!(
        matches!(error, MvccError::Compacted { .. }),
        "the source moved on: {error}"
    );
}

// Goal: a restore accepts chunks cut anywhere, and rejects every damaged or incomplete stream
// without opening a store. Method: re-cut the stream into 7-byte pieces; flip bytes; truncate.
#[test]
fn snapshot_restore_rejects_damage() {
    let (_dir, store) = populated(buffered_config());
    let stream: Vec<u8> = store
        .snapshot()
        .unwrap()
        .map(|c| c.unwrap())
        .flat_map(|c| c.to_vec())
        .collect();
    let restore = |bytes: &[u8]| {
        let target = tempfile::tempdir().unwrap();
        let pieces: Vec<MvccResult<Bytes>> = bytes
            .chunks(7)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        MvccStore::restore(&target.path().join("s"), config(), pieces).map(|s| s.hash().unwrap())
    };
    assert_eq!(restore(&stream).unwrap(), store.hash().unwrap());
    for at in [
        0,
        9,
        40,
        stream.len() / 2,
        stream.len() - 5,
        stream.len() - 1,
    ] {
        let mut damaged = stream.clone();
        damaged[at] ^= 0x40;
        let result = restore(&damaged);
        assert!(
            result.is_err(),
            "a flipped byte at {at} of {} went unnoticed",
            stream.len()
        );
    }
    for len in [0, 10, 32, stream.len() / 3, stream.len() - 1] {
        assert!(
            restore(&stream[..len]).is_err(),
            "a stream cut at {len} was accepted"
        );
    }
    let mut longer = stream.clone();
    longer.push(0);
    assert!(restore(&longer).is_err(), "trailing bytes were accepted");
    let existing = tempfile::tempdir().unwrap();
    MvccStore::open(existing.path(), config()).unwrap();
    assert!(
        SnapshotRestore::create(existing.path(), config()).is_err(),
        "restore over a store"
    );
}

// Goal: the server's path: many Raft entries in one batch, request errors reported per entry
// without stopping the batch, the last index recorded as applied, entries without a write
// (configuration changes) still counted. Method: apply four entries and reopen.
#[test]
fn apply_entries_in_one_batch() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = MvccStore::open(dir.path(), config()).unwrap();
    let ops = [
        WriteOp::Put(PutRequest::new(b("a"), b("1"))),
        WriteOp::Put(table_missing()),
        WriteOp::DeleteRange(DeleteRangeRequest::key(b("a"))),
    ];
    let entries = [
        (LogIndex(5), Some(&ops[0])),
        (LogIndex(6), Some(&ops[1])),
        (LogIndex(7), None),
        (LogIndex(8), Some(&ops[2])),
    ];
    let responses = store.apply_entries(entries).unwrap();
    assert_eq!(responses.len(), 3);
    assert!(matches!(&responses[0], Ok(WriteResponse::Put(p)) if p.revision == Revision(2)));
    assert!(matches!(&responses[1], Err(MvccError::KeyNotFound { .. })));
    assert!(matches!(&responses[2], Ok(WriteResponse::DeleteRange(d)) if d.deleted == 1));
    drop(store);
    let store = MvccStore::open(dir.path(), config()).unwrap();
    assert_eq!(store.applied_index(), LogIndex(8));
    assert_eq!(store.current_revision(), Revision(3));
}

// Goal: etcd accepts a transaction that deletes every key >= "a" (range_end "\0") and puts "b"
// (its duplicate check does not see such deletes); the key ends up re-created at that revision,
// with both events in the history. Method: run it over a live "b" and read the result.
#[test]
fn txn_delete_to_end_then_put() {
    let (_dir, mut store) = open();
    put(&mut store, "b", "old"); // 2
    put(&mut store, "b", "older"); // 3: version 2
    let txn = TxnRequest {
        compare: vec![],
        success: vec![
            RequestOp::DeleteRange(DeleteRangeRequest::range(b("a"), b("\0"))),
            RequestOp::Put(PutRequest::new(b("b"), b("new"))),
        ],
        failure: vec![],
    };
    assert_eq!(store.txn(&txn).unwrap().revision, Revision(4));
    let kv = get(&store, "b").unwrap();
    assert_eq!(
        (kv.create_revision, kv.version, kv.value),
        (Revision(4), 1, b("new"))
    );
    let events = store.events(Revision(4), 10, true).unwrap().events;
    let kinds: Vec<_> = events.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [EventKind::Delete, EventKind::Put]);
    let at_3 = RangeRequest {
        revision: Revision(3),
        ..RangeRequest::key(b("b"))
    };
    assert_eq!(store.range(&at_3).unwrap().kvs[0].value, b("older"));
}

// Goal: HashKV agrees between stores with the same history up to a revision, whatever came
// after, and differs when the history differs; it rejects compacted and future revisions.
// Method: two stores diverging after revision 4.
#[test]
fn hash_kv_compares_members_at_a_revision() {
    let (_d1, mut one) = open();
    let (_d2, mut two) = open();
    for store in [&mut one, &mut two] {
        put(store, "a", "1"); // 2
        put(store, "b", "1"); // 3
        del(store, "a", ""); // 4
    }
    put(&mut one, "c", "one"); // 5
    put(&mut two, "c", "two"); // 5
    let at = |store: &MvccStore, rev| store.hash_kv(Revision(rev)).unwrap().hash;
    for rev in 1..=4 {
        assert_eq!(at(&one, rev), at(&two, rev), "at {rev}");
    }
    assert_ne!(at(&one, 5), at(&two, 5));
    assert_ne!(at(&one, 3), at(&one, 4), "a delete changes the hash");
    let current = one.hash_kv(Revision(0)).unwrap();
    assert_eq!(
        (current.revision, current.current_revision),
        (Revision(5), Revision(5))
    );
    one.compact(Revision(3)).unwrap();
    two.compact(Revision(3)).unwrap();
    assert_eq!(at(&one, 4), at(&two, 4), "equal after the same compaction");
    let compacted = one.hash_kv(Revision(2)).unwrap_err();
    assert_eq!(
        compacted.to_string(),
        "mvcc: required revision has been compacted"
    );
    let future = one.hash_kv(Revision(6)).unwrap_err();
    assert_eq!(
        future.to_string(),
        "mvcc: required revision is a future revision"
    );
}

// Goal: a batch sees the grants and lease attachments of its own earlier writes, so a grant,
// puts and a revocation apply in one batch. Method: grant, attach, list, revoke, commit.
#[test]
fn lease_revoke_in_one_batch() {
    let (_dir, mut store) = open();
    let mut batch = store.begin().unwrap();
    let lease = LeaseGrantRequest {
        id: LeaseId(3),
        ttl: 10,
    };
    batch.lease_grant(&lease).unwrap();
    for k in ["a", "b"] {
        let req = PutRequest {
            lease: LeaseId(3),
            ..PutRequest::new(b(k), b("v"))
        };
        batch.put(&req).unwrap();
    }
    assert_eq!(batch.keys_with_lease(LeaseId(3)), vec![b("a"), b("b")]);
    let revoked = batch.lease_revoke(LeaseId(3)).unwrap();
    assert_eq!((revoked.revision, revoked.deleted), (Revision(4), 2));
    assert!(batch.keys_with_lease(LeaseId(3)).is_empty());
    batch.commit().unwrap();
    assert_eq!(store.current_revision(), Revision(4));
    assert!(store.leases().is_empty());
    assert_eq!(
        store.range(&RangeRequest::range("\0", "\0")).unwrap().count,
        0
    );
}

// Goal: the server can share the store between tasks and stream a snapshot from another task.
// Method: compile-time bounds (the test fails to build if they stop holding).
#[test]
fn store_and_snapshot_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<MvccStore>();
    send::<Snapshot>();
    send::<SnapshotRestore>();
    send_sync::<MvccError>();
}

// Goal: a damaged engine file stops the open with an error naming the file, never a panic.
// Method: overwrite the middle of a store's file with garbage and reopen.
#[test]
fn damaged_file_is_refused_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = MvccStore::open(dir.path(), config()).unwrap();
        put(&mut store, "a", "1");
    }
    let path = dir.path().join(ENGINE_FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.iter_mut().take(4096).for_each(|b| *b ^= 0x5a);
    std::fs::write(&path, bytes).unwrap();
    let error = MvccStore::open(dir.path(), config()).unwrap_err();
    assert!(matches!(error, MvccError::Open { .. }), "{error}");
    assert!(error.to_string().contains(ENGINE_FILE), "{error}");
}

// Goal: a range started detached reads the store as it was when it started, and a
// defragmentation (redb compacts its file only with no read transaction alive) waits for it
// rather than failing.
// Method: start a detached range over records in the engine, defragment on another thread,
// check that it has not ended, finish the range, then join the defragmentation.
#[test]
fn defragmentation_waits_for_detached_ranges() {
    let (_dir, mut store) = open();
    for i in 0..100 {
        put(&mut store, &format!("k{i:03}"), "v");
    }
    del(&mut store, "k050", "k100");
    let req = RangeRequest::range(b("k"), b("l"));
    let want = store.range(&req).unwrap();
    assert_eq!(want.kvs.len(), 50);
    // Declared before the range so that a failing assertion drops the range first: the store,
    // dropped with the thread's result, waits for it.
    let defragment;
    let range = store.start_range(&req).unwrap();
    assert_eq!(range.len(), 50);
    let (done_tx, done) = std::sync::mpsc::channel();
    defragment = std::thread::spawn(move || {
        let result = store.defragment();
        done_tx.send(()).unwrap();
        (store, result)
    });
    assert!(
        done.recv_timeout(std::time::Duration::from_millis(100))
            .is_err(),
        "the defragmentation waits for the detached range"
    );
    assert_eq!(range.finish().unwrap(), want);
    let (mut store, result) = defragment.join().unwrap();
    result.unwrap();
    assert_eq!(store.range(&req).unwrap(), want);
    put(&mut store, "k000", "w");
    assert_eq!(get(&store, "k000").unwrap().value, b("w"));
}

// Goal: a detached range reads the engine's records right whether they lie together or far
// apart in the engine (it steps a cursor over close ones and seeks to far ones), and whether
// they are in the engine or still in memory.
// Method: write keys once in order, rewrite some of them between runs of other keys' writes (so
// that the records a range reads are one after another in places and tens of records apart in
// others), delete some, make it all durable, write a few more that stay in memory, then compare
// detached ranges of several shapes and revisions with the point lookups of `range`. A third of
// the values are larger than a quarter of the engine's pages.
#[test]
fn detached_ranges_read_records_near_and_far_apart() {
    let value = |prefix: &str, i: usize| {
        let padding = if i.is_multiple_of(3) { 700 + i } else { 0 };
        format!("{prefix}{i}{}", ".".repeat(padding))
    };
    let dir = tempfile::tempdir().unwrap();
    let config = MvccConfig {
        commit_sync_interval: std::time::Duration::from_secs(3600),
        ..config()
    };
    let mut store = MvccStore::open(dir.path(), config).unwrap();
    for i in 0..600 {
        put(&mut store, &format!("k{i:03}"), &value("v", i));
    }
    let first_pass = store.current_revision();
    for i in (0..600).step_by(7) {
        put(&mut store, &format!("k{i:03}"), &value("w", i));
        if i % 5 == 0 {
            for j in 0..20 {
                put(&mut store, &format!("z{j:02}"), &format!("{i}"));
            }
        }
    }
    for i in (5..600).step_by(13) {
        del(&mut store, &format!("k{i:03}"), "");
    }
    store.sync().unwrap();
    for i in (3..600).step_by(97) {
        put(&mut store, &format!("k{i:03}"), &value("m", i));
    }
    let shapes = [
        RangeRequest::range(b("k"), b("l")),
        RangeRequest::range(b("\0"), b("\0")),
        RangeRequest {
            limit: 250,
            ..RangeRequest::range(b("k100"), b("z"))
        },
        RangeRequest {
            keys_only: true,
            ..RangeRequest::range(b("k"), b("l"))
        },
        RangeRequest {
            keys_only: true,
            sort_order: SortOrder::Descend,
            sort_target: SortTarget::Value,
            ..RangeRequest::range(b("k"), b("l"))
        },
        RangeRequest {
            revision: first_pass,
            ..RangeRequest::range(b("k"), b("l"))
        },
        RangeRequest {
            revision: Revision(first_pass.get() + 40),
            min_mod_revision: first_pass,
            ..RangeRequest::range(b("k"), b("l"))
        },
    ];
    for req in shapes {
        let want = store.range(&req).unwrap();
        assert!(!want.kvs.is_empty(), "{req:?}");
        let detached = store.start_range(&req).unwrap();
        assert_eq!(detached.finish().unwrap(), want, "{req:?}");
    }
    let all = store.range(&RangeRequest::range(b("k"), b("l"))).unwrap();
    assert_eq!(all.kvs.len(), 600 - 46);
    let stored = |key: &str| {
        let kv = all.kvs.iter().find(|kv| kv.key == b(key));
        kv.map(|kv| kv.value.clone())
    };
    assert_eq!(stored("k001"), Some(b(&value("v", 1))));
    assert_eq!(stored("k003"), Some(b(&value("m", 3))));
    assert_eq!(stored("k005"), None);
    assert_eq!(stored("k007"), Some(b(&value("w", 7))));
    assert_eq!(stored("k021").map(|value| value.len()), Some(724));
}

// Goal: a transaction that only reads, started detached, answers as the store stood when it
// started, for every range of its branch, whatever is applied before it finishes. Method:
// start one (a compare that holds, a range, a nested transaction with a range), then overwrite
// and delete what it reads and compact, then finish it and compare with `read_txn` before the
// writes.
#[test]
fn detached_read_transactions_read_the_revision_they_started_at() {
    let (_dir, mut store) = open();
    for i in 0..50 {
        put(&mut store, &format!("k{i:02}"), &format!("v{i}"));
    }
    let range = |key: &str, end: &str| RequestOp::Range(RangeRequest::range(b(key), b(end)));
    let req = TxnRequest {
        compare: vec![Compare {
            key: b("k00"),
            range_end: Bytes::new(),
            result: CompareResult::Equal,
            target: CompareTarget::Value(b("v0")),
        }],
        success: vec![
            range("k", "l"),
            RequestOp::Txn(TxnRequest {
                success: vec![range("k10", "k20")],
                ..TxnRequest::default()
            }),
        ],
        failure: vec![],
    };
    let want = store.read_txn(&req).unwrap();
    assert!(want.succeeded);
    assert_eq!(want.revision, store.current_revision());
    let started = store.start_read_txn(&req).unwrap();
    assert_eq!(started.len(), 60);
    for i in 0..50 {
        put(&mut store, &format!("k{i:02}"), "w");
    }
    del(&mut store, "k", "l");
    store.compact(store.current_revision()).unwrap();
    assert_eq!(started.finish().unwrap(), want);
    assert!(!store.read_txn(&req).unwrap().succeeded);
}
