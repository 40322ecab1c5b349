//! MVCC store throughput: puts per second (batched as the server applies Raft entries: 1 and 64
//! puts per engine transaction, each commit synced to disk with the applied index) and ranges
//! per second (point gets and 100-key prefix ranges over 10,000 keys).
//!
//! Figures go to docs/storage.md ("MVCC store"). Run with
//! `cargo bench -p chorus-storage --bench mvcc`.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use chorus_raft::LogIndex;
use chorus_storage::mvcc::{MvccConfig, MvccStore, PutRequest, RangeRequest};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const KEYS: u64 = 10_000;
const VALUE_BYTES: usize = 128;

fn key(i: u64) -> Bytes {
    // 100 prefixes of 100 keys each: "p042/k00017".
    Bytes::from(format!("p{:03}/k{:05}", (i / 100) % 100, i % 100))
}

/// A cheap deterministic sequence of key numbers (xorshift).
fn next_pick(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state % KEYS
}

fn open(dir: &tempfile::TempDir) -> MvccStore {
    MvccStore::open(dir.path(), MvccConfig::default()).expect("open the store")
}

fn bench_puts(c: &mut Criterion) {
    let mut group = c.benchmark_group("mvcc_put");
    let value = Bytes::from(vec![7u8; VALUE_BYTES]);
    for batch_puts in [1u64, 64] {
        group.throughput(Throughput::Elements(batch_puts));
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let mut store = open(&dir);
        let mut applied = 0u64;
        let mut pick = 0x9E37_79B9_7F4A_7C15u64;
        group.bench_function(BenchmarkId::new("durable_batch", batch_puts), |b| {
            b.iter(|| {
                let mut batch = store.begin().expect("begin a batch");
                for _ in 0..batch_puts {
                    let req = PutRequest::new(key(next_pick(&mut pick)), value.clone());
                    black_box(batch.put(&req).expect("put"));
                    applied += 1;
                }
                batch.set_applied_index(LogIndex(applied));
                batch.commit().expect("commit");
            })
        });
    }
    group.finish();
}

fn bench_ranges(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let mut store = open(&dir);
    let value = Bytes::from(vec![7u8; VALUE_BYTES]);
    for chunk in 0..KEYS / 1000 {
        let mut batch = store.begin().expect("begin a batch");
        for i in chunk * 1000..(chunk + 1) * 1000 {
            batch
                .put(&PutRequest::new(key(i), value.clone()))
                .expect("put");
        }
        batch.commit().expect("commit");
    }
    let mut group = c.benchmark_group("mvcc_range");
    group.throughput(Throughput::Elements(1));
    let mut pick = 0x2545_F491_4F6C_DD1Du64;
    group.bench_function("point_get", |b| {
        b.iter(|| {
            let resp = store
                .range(&RangeRequest::key(key(next_pick(&mut pick))))
                .expect("get");
            assert_eq!(resp.kvs.len(), 1);
        })
    });
    group.bench_function("prefix_100", |b| {
        b.iter(|| {
            let prefix = format!("p{:03}/", next_pick(&mut pick) % 100);
            let mut end = prefix.clone().into_bytes();
            *end.last_mut().expect("non-empty") += 1;
            let resp = store
                .range(&RangeRequest::range(prefix, end))
                .expect("range");
            assert_eq!(resp.kvs.len(), 100);
        })
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_puts, bench_ranges
}
criterion_main!(benches);
