//! Chooses the embedded engine of the MVCC state machine (see docs/adr/0001).
//!
//! Goal: compare redb and fjall on the access pattern of the MVCC store. Method: the same three
//! workloads against both engines in a temporary directory:
//! - `commit_durable/N`: one atomic batch of N revision-keyed records (16-byte big-endian key,
//!   128-byte value, one record per revision as N applied Raft entries would write) plus a meta
//!   record (the applied index), committed and synced to disk;
//! - `point_get`: a read of one record of 10,000 by key;
//! - `scan_100`: a scan of 100 consecutive records.
//!
//! Each engine runs with its default configuration and its strongest durability setting, which
//! is what the state machine needs (the applied index and its data reach the disk together).
//! Commits of the two engines are interleaved (see `bench_commit`).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use fjall::{PartitionCreateOptions, PersistMode};
use redb::{ReadableDatabase, TableDefinition};

const DATA: TableDefinition<&[u8], &[u8]> = TableDefinition::new("data");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const VALUE_BYTES: usize = 128;
const RECORDS_PRELOADED: u64 = 10_000;

fn record_key(main: u64, sub: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&main.to_be_bytes());
    key[8..].copy_from_slice(&sub.to_be_bytes());
    key
}

/// A cheap deterministic sequence of record numbers for the reads (xorshift).
fn next_pick(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state % RECORDS_PRELOADED
}

struct Redb {
    _dir: tempfile::TempDir,
    db: redb::Database,
    next: u64,
}

impl Redb {
    fn open() -> Self {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let db = redb::Database::create(dir.path().join("engine.redb")).expect("create redb");
        Redb {
            _dir: dir,
            db,
            next: 1,
        }
    }

    fn commit(&mut self, records: u64) {
        let value = [7u8; VALUE_BYTES];
        let txn = self.db.begin_write().expect("begin a write");
        {
            let mut data = txn.open_table(DATA).expect("open data");
            for main in self.next..self.next + records {
                data.insert(&record_key(main, 0)[..], &value[..])
                    .expect("insert");
            }
            let mut meta = txn.open_table(META).expect("open meta");
            meta.insert("applied", &self.next.to_be_bytes()[..])
                .expect("insert meta");
        }
        txn.commit().expect("commit");
        self.next += records;
    }

    fn get(&self, main: u64) -> usize {
        let txn = self.db.begin_read().expect("begin a read");
        let data = txn.open_table(DATA).expect("open data");
        let value = data.get(&record_key(main, 0)[..]).expect("get");
        value.map(|v| v.value().len()).unwrap_or(0)
    }

    fn scan(&self, main: u64) -> usize {
        let txn = self.db.begin_read().expect("begin a read");
        let data = txn.open_table(DATA).expect("open data");
        let from = record_key(main, 0);
        let mut bytes = 0;
        for entry in data.range(&from[..]..).expect("range").take(100) {
            let (_, value) = entry.expect("read an entry");
            bytes += value.value().len();
        }
        bytes
    }
}

struct Fjall {
    _dir: tempfile::TempDir,
    keyspace: fjall::Keyspace,
    data: fjall::PartitionHandle,
    meta: fjall::PartitionHandle,
    next: u64,
}

impl Fjall {
    fn open() -> Self {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let keyspace = fjall::Config::new(dir.path()).open().expect("open fjall");
        let data = keyspace
            .open_partition("data", PartitionCreateOptions::default())
            .expect("open data");
        let meta = keyspace
            .open_partition("meta", PartitionCreateOptions::default())
            .expect("open meta");
        Fjall {
            _dir: dir,
            keyspace,
            data,
            meta,
            next: 1,
        }
    }

    fn commit(&mut self, records: u64) {
        let value = [7u8; VALUE_BYTES];
        let mut batch = self.keyspace.batch().durability(Some(PersistMode::SyncAll));
        for main in self.next..self.next + records {
            batch.insert(&self.data, record_key(main, 0), value);
        }
        batch.insert(&self.meta, "applied", self.next.to_be_bytes());
        batch.commit().expect("commit");
        self.next += records;
    }

    fn get(&self, main: u64) -> usize {
        let value = self.data.get(record_key(main, 0)).expect("get");
        value.map(|v| v.len()).unwrap_or(0)
    }

    fn scan(&self, main: u64) -> usize {
        let from = record_key(main, 0);
        let mut bytes = 0;
        for entry in self.data.range(from..).take(100) {
            let (_, value) = entry.expect("read an entry");
            bytes += value.len();
        }
        bytes
    }
}

fn bench_commit(c: &mut Criterion) {
    // The fsync dominates and its latency drifts with the other work on the machine, so the two
    // engines' commits are interleaved: each benchmark times one engine while committing to the
    // other, untimed, between its commits, and both see the same disk load.
    let mut group = c.benchmark_group("commit_durable");
    for records in [1u64, 64] {
        group.throughput(Throughput::Elements(records));
        let mut redb = Redb::open();
        let mut fjall = Fjall::open();
        group.bench_function(BenchmarkId::new("redb", records), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    redb.commit(black_box(records));
                    timed += start.elapsed();
                    fjall.commit(records);
                }
                timed
            })
        });
        group.bench_function(BenchmarkId::new("fjall", records), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    redb.commit(records);
                    let start = Instant::now();
                    fjall.commit(black_box(records));
                    timed += start.elapsed();
                }
                timed
            })
        });
    }
    group.finish();
}

fn bench_reads(c: &mut Criterion) {
    let mut redb = Redb::open();
    let mut fjall = Fjall::open();
    for _ in 0..RECORDS_PRELOADED / 100 {
        redb.commit(100);
        fjall.commit(100);
    }
    let mut group = c.benchmark_group("read");
    group.throughput(Throughput::Elements(1));
    let mut pick = 0x9E37_79B9_7F4A_7C15u64;
    group.bench_function("point_get/redb", |b| {
        b.iter(|| redb.get(1 + next_pick(&mut pick)))
    });
    group.bench_function("point_get/fjall", |b| {
        b.iter(|| fjall.get(1 + next_pick(&mut pick)))
    });
    group.bench_function("scan_100/redb", |b| {
        b.iter(|| redb.scan(1 + next_pick(&mut pick) % (RECORDS_PRELOADED - 100)))
    });
    group.bench_function("scan_100/fjall", |b| {
        b.iter(|| fjall.scan(1 + next_pick(&mut pick) % (RECORDS_PRELOADED - 100)))
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
    targets = bench_commit, bench_reads
}
criterion_main!(benches);
