//! KV: Range, Put, DeleteRange, Txn and Compact with the options clients use.

use etcd_client::{
    Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
    TxnOpResponse,
};

use super::{rev, single};

fn keys(kvs: &[etcd_client::KeyValue]) -> Vec<String> {
    kvs.iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect()
}

#[tokio::test]
async fn range_with_prefix_limit_sort_revision_count_and_keys_only() {
    // Goal: every Range option clients use answers as etcd does.
    // Method: write five keys under a prefix plus one outside it, then read with each option.
    let cluster = single().await;
    let mut c = cluster.client().await;
    let mut first_rev = 0;
    for (i, k) in ["p/a", "p/b", "p/c", "p/d", "q/x"].iter().enumerate() {
        let put = c.put(*k, format!("v{i}"), None).await.expect("put");
        if i == 0 {
            first_rev = rev(put.header());
        }
    }
    c.put("p/b", "v1-again", None).await.expect("overwrite");

    let all = c
        .get("p/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("prefix");
    assert_eq!(keys(all.kvs()), ["p/a", "p/b", "p/c", "p/d"]);
    assert_eq!(all.count(), 4);
    let b = &all.kvs()[1];
    assert_eq!(b.value(), b"v1-again");
    assert_eq!(b.version(), 2);
    assert_eq!(b.create_revision(), first_rev + 1);
    assert_eq!(b.mod_revision(), first_rev + 5);

    let limited = c
        .get("p/", Some(GetOptions::new().with_prefix().with_limit(2)))
        .await
        .expect("limit");
    assert_eq!(keys(limited.kvs()), ["p/a", "p/b"]);
    assert!(limited.more(), "more keys remain past the limit");
    assert_eq!(limited.count(), 4, "count ignores the limit");

    let sorted = c
        .get(
            "p/",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Key, SortOrder::Descend),
            ),
        )
        .await
        .expect("sort");
    assert_eq!(keys(sorted.kvs()), ["p/d", "p/c", "p/b", "p/a"]);
    let by_mod = c
        .get(
            "p/",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Mod, SortOrder::Descend)
                    .with_limit(1),
            ),
        )
        .await
        .expect("sort by mod revision");
    assert_eq!(keys(by_mod.kvs()), ["p/b"]);

    let old = c
        .get(
            "p/",
            Some(GetOptions::new().with_prefix().with_revision(first_rev + 1)),
        )
        .await
        .expect("at a revision");
    assert_eq!(keys(old.kvs()), ["p/a", "p/b"]);
    assert_eq!(old.kvs()[1].value(), b"v1");
    assert_eq!(
        rev(old.header()),
        first_rev + 5,
        "the header carries the current revision"
    );

    let counted = c
        .get(
            "p/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .expect("count only");
    assert!(counted.kvs().is_empty());
    assert_eq!(counted.count(), 4);

    let keys_only = c
        .get("p/", Some(GetOptions::new().with_prefix().with_keys_only()))
        .await
        .expect("keys only");
    assert_eq!(keys(keys_only.kvs()), ["p/a", "p/b", "p/c", "p/d"]);
    assert!(keys_only.kvs().iter().all(|kv| kv.value().is_empty()));

    let ranged = c
        .get("p/b", Some(GetOptions::new().with_range("p/d")))
        .await
        .expect("half-open range");
    assert_eq!(keys(ranged.kvs()), ["p/b", "p/c"]);
    let from = c
        .get("p/c", Some(GetOptions::new().with_from_key()))
        .await
        .expect("from key");
    assert_eq!(keys(from.kvs()), ["p/c", "p/d", "q/x"]);
    let serializable = c
        .get("q/x", Some(GetOptions::new().with_serializable()))
        .await
        .expect("serializable");
    assert_eq!(serializable.kvs()[0].value(), b"v4");
}

#[tokio::test]
async fn put_with_prev_kv_and_ignore_value() {
    // Goal: Put returns the previous pair when asked and can keep the value (ignore_value).
    // Method: put twice with prev_kv, then put with ignore_value and read back.
    let cluster = single().await;
    let mut c = cluster.client().await;
    let first = c
        .put("k", "one", Some(PutOptions::new().with_prev_key()))
        .await
        .expect("first put");
    assert!(first.prev_key().is_none(), "no previous pair for a new key");
    let second = c
        .put("k", "two", Some(PutOptions::new().with_prev_key()))
        .await
        .expect("second put");
    let prev = second.prev_key().expect("the previous pair");
    assert_eq!(prev.value(), b"one");
    assert_eq!(prev.version(), 1);
    assert_eq!(rev(second.header()), rev(first.header()) + 1);

    let kept = c
        .put("k", "", Some(PutOptions::new().with_ignore_value()))
        .await
        .expect("put with ignore_value");
    let got = c.get("k", None).await.expect("get");
    assert_eq!(got.kvs()[0].value(), b"two");
    assert_eq!(got.kvs()[0].version(), 3);
    assert_eq!(got.kvs()[0].mod_revision(), rev(kept.header()));
}

#[tokio::test]
async fn delete_range_with_prev_kv() {
    // Goal: DeleteRange deletes a range, counts what it deleted and returns the old pairs.
    // Method: delete a prefix with prev_kv, then a missing key (no new revision).
    let cluster = single().await;
    let mut c = cluster.client().await;
    for k in ["d/1", "d/2", "d/3", "e"] {
        c.put(k, "v", None).await.expect("put");
    }
    let deleted = c
        .delete(
            "d/",
            Some(DeleteOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .expect("delete prefix");
    assert_eq!(deleted.deleted(), 3);
    assert_eq!(keys(deleted.prev_kvs()), ["d/1", "d/2", "d/3"]);
    let after = rev(deleted.header());
    let none = c
        .delete("missing", None)
        .await
        .expect("delete a missing key");
    assert_eq!(none.deleted(), 0);
    assert_eq!(
        rev(none.header()),
        after,
        "deleting nothing makes no revision"
    );
    let left = c
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .expect("all");
    assert_eq!(keys(left.kvs()), ["e"]);
}

#[tokio::test]
async fn txn_compares_and_nested_ops() {
    // Goal: Txn compares on value, version, create and mod revision, runs the chosen branch,
    // and nests a Txn inside a Txn.
    // Method: a compare-and-swap that succeeds, one that fails, and a nested transaction.
    let cluster = single().await;
    let mut c = cluster.client().await;
    let put = c.put("t", "a", None).await.expect("put");
    let r = rev(put.header());

    let cas = Txn::new()
        .when([
            Compare::value("t", CompareOp::Equal, "a"),
            Compare::version("t", CompareOp::Equal, 1),
            Compare::create_revision("t", CompareOp::Equal, r),
            Compare::mod_revision("t", CompareOp::Less, r + 1),
        ])
        .and_then([
            TxnOp::put("t", "b", Some(PutOptions::new().with_prev_key())),
            TxnOp::get("t", None),
        ])
        .or_else([TxnOp::get("never", None)]);
    let resp = c.txn(cas).await.expect("txn");
    assert!(resp.succeeded());
    assert_eq!(rev(resp.header()), r + 1);
    let ops = resp.op_responses();
    match (&ops[0], &ops[1]) {
        (TxnOpResponse::Put(p), TxnOpResponse::Get(g)) => {
            assert_eq!(p.prev_key().expect("prev").value(), b"a");
            assert_eq!(g.kvs()[0].value(), b"b", "a txn reads its own writes");
        }
        other => panic!("unexpected responses {other:?}"),
    }

    let failed = Txn::new()
        .when([Compare::value("t", CompareOp::Equal, "a")])
        .and_then([TxnOp::put("t", "c", None)])
        .or_else([TxnOp::get("t", None), TxnOp::delete("zzz", None)]);
    let resp = c.txn(failed).await.expect("txn");
    assert!(!resp.succeeded());
    assert_eq!(
        rev(resp.header()),
        r + 1,
        "a read-only branch makes no revision"
    );
    match &resp.op_responses()[..] {
        [TxnOpResponse::Get(g), TxnOpResponse::Delete(d)] => {
            assert_eq!(g.kvs()[0].value(), b"b");
            assert_eq!(d.deleted(), 0);
        }
        other => panic!("unexpected responses {other:?}"),
    }

    let inner = Txn::new()
        .when([Compare::version("t", CompareOp::Greater, 1)])
        .and_then([TxnOp::put("inner", "yes", None)]);
    let outer = Txn::new()
        .when([Compare::value("t", CompareOp::NotEqual, "zzz")])
        .and_then([TxnOp::txn(inner), TxnOp::put("outer", "yes", None)]);
    let resp = c.txn(outer).await.expect("nested txn");
    assert!(resp.succeeded());
    match &resp.op_responses()[0] {
        TxnOpResponse::Txn(t) => assert!(t.succeeded()),
        other => panic!("expected a nested txn response, got {other:?}"),
    }
    assert_eq!(rev(resp.header()), r + 2, "one txn is one revision");
    let both = c
        .get("inner", Some(GetOptions::new().with_range("outer\0")))
        .await
        .expect("get");
    assert_eq!(keys(both.kvs()), ["inner", "outer"]);
    assert!(both.kvs().iter().all(|kv| kv.mod_revision() == r + 2));
}

#[tokio::test]
async fn compact_and_the_compacted_error() {
    // Goal: after Compact, reads below the compacted revision fail with etcd's error; reads at
    // and above it succeed; compacting again at or below it fails too.
    // Method: three revisions of one key, compact at the second, read at each.
    let cluster = single().await;
    let mut c = cluster.client().await;
    let r1 = rev(c.put("c", "1", None).await.expect("put").header());
    let r2 = rev(c.put("c", "2", None).await.expect("put").header());
    c.put("c", "3", None).await.expect("put");
    c.compact(
        r2,
        Some(etcd_client::CompactionOptions::new().with_physical()),
    )
    .await
    .expect("compact");
    let (code, message) =
        chorus_compat::status_of(c.get("c", Some(GetOptions::new().with_revision(r1))).await);
    assert_eq!(code, chorus_compat::Code::OutOfRange);
    assert_eq!(
        message,
        "etcdserver: mvcc: required revision has been compacted"
    );
    let at = c
        .get("c", Some(GetOptions::new().with_revision(r2)))
        .await
        .expect("read at the compacted revision");
    assert_eq!(at.kvs()[0].value(), b"2");
    let (code, message) = chorus_compat::status_of(c.compact(r1, None).await);
    assert_eq!(code, chorus_compat::Code::OutOfRange);
    assert_eq!(
        message,
        "etcdserver: mvcc: required revision has been compacted"
    );
    let (code, message) = chorus_compat::status_of(c.compact(r2 + 100, None).await);
    assert_eq!(code, chorus_compat::Code::OutOfRange);
    assert_eq!(
        message,
        "etcdserver: mvcc: required revision is a future revision"
    );
    let (code, message) = chorus_compat::status_of(
        c.get("c", Some(GetOptions::new().with_revision(r2 + 100)))
            .await,
    );
    assert_eq!(code, chorus_compat::Code::OutOfRange);
    assert_eq!(
        message,
        "etcdserver: mvcc: required revision is a future revision"
    );
}
