//! A store written by an older Chorus, whose engine (redb 2) kept it in the engine's file format
//! v2, opens in the current one with everything it held.
//!
//! The fixture `data/mvcc-v2.redb.gz` is the store file of a single member of Chorus 57644a9
//! (the last version on redb 2), after `put alpha one`, `put beta two`, `put alpha uno`,
//! `del beta` and `lease grant 600` through etcdctl and a clean stop. That version opened it at
//! revision 5, compact revision 0, applied index 6, with 2 keys in its index.

use std::io::Read;
use std::path::Path;

use bytes::Bytes;
use chorus_raft::LogIndex;
use chorus_storage::mvcc::*;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/mvcc-v2.redb.gz");
/// The lease the fixture's member granted (etcdctl printed it in hex).
const LEASE: i64 = 0x33a1_8f2a_478e_4b61;

/// Writes the fixture's store file into `dir`.
fn unpack(dir: &Path) {
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(FIXTURE).unwrap())
        .read_to_end(&mut bytes)
        .unwrap();
    std::fs::write(dir.join(ENGINE_FILE), bytes).unwrap();
}

/// Key, value, create revision, mod revision and version of each key a range returns.
fn read(store: &MvccStore, revision: i64) -> Vec<(Bytes, Bytes, i64, i64, i64)> {
    let request = RangeRequest {
        revision: Revision(revision),
        ..RangeRequest::range("\0", "\0")
    };
    let kvs = store.range(&request).unwrap().kvs;
    kvs.into_iter()
        .map(|kv| {
            let (create, modified) = (kv.create_revision.get(), kv.mod_revision.get());
            (kv.key, kv.value, create, modified, kv.version)
        })
        .collect()
}

fn kv(
    key: &str,
    value: &str,
    create: i64,
    modified: i64,
    version: i64,
) -> (Bytes, Bytes, i64, i64, i64) {
    (
        Bytes::from(key.to_string()),
        Bytes::from(value.to_string()),
        create,
        modified,
        version,
    )
}

/// Goal: a store file in the engine's format v2 opens, after being rewritten in v3, with its
/// revisions, history, leases and applied index; it takes writes, and opens again without
/// another rewrite.
#[test]
fn a_store_of_the_older_file_format_opens_with_everything_it_held() {
    let dir = tempfile::tempdir().unwrap();
    unpack(dir.path());

    let mut store = MvccStore::open(dir.path(), MvccConfig::default()).unwrap();
    assert_eq!(store.current_revision(), Revision(5));
    assert_eq!(store.compact_revision(), Revision(0));
    assert_eq!(store.applied_index(), LogIndex(6));
    assert_eq!(read(&store, 0), vec![kv("alpha", "uno", 2, 4, 2)]);
    assert_eq!(
        read(&store, 3),
        vec![kv("alpha", "one", 2, 2, 1), kv("beta", "two", 3, 3, 1)]
    );
    assert_eq!(store.leases(), vec![(LeaseId(LEASE), 600)]);

    let put = WriteOp::Put(PutRequest::new("gamma", "three"));
    store.apply(LogIndex(7), &put).unwrap();
    store.sync().unwrap();
    drop(store);

    // The file is in the current format now: the engine opens it as it is.
    drop(redb::Database::open(dir.path().join(ENGINE_FILE)).unwrap());
    let store = MvccStore::open(dir.path(), MvccConfig::default()).unwrap();
    assert_eq!(store.current_revision(), Revision(6));
    assert_eq!(store.applied_index(), LogIndex(7));
    assert_eq!(
        read(&store, 0),
        vec![kv("alpha", "uno", 2, 4, 2), kv("gamma", "three", 6, 6, 1)]
    );
    assert_eq!(store.leases(), vec![(LeaseId(LEASE), 600)]);
}
