//! WAL throughput with group commit: `batch` appends of one 256-byte entry each, spread over
//! eight groups, made durable by one fsync, on the real file system in a temporary directory.
//! Each batch size runs twice: with segments preallocated by a thread of their own, as a server
//! runs (`preallocated`), and with segments that grow as records are appended (`appending`).
//!
//! Run: `cargo bench -p chorus-storage --bench wal`. Criterion reports appends per second
//! (elements); MB/s is that times 256 bytes of payload.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chorus_raft::{Entry, EntryPayload, GroupId, LogIndex, Term};
use chorus_storage::disk::RealDisk;
use chorus_storage::wal::codec::Record;
use chorus_storage::wal::{Wal, WalConfig};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const ENTRY_BYTES: usize = 256;
const GROUPS: u64 = 8;

struct Writer {
    wal: Wal,
    next_index: Vec<u64>,
    payload: Bytes,
    _dir: tempfile::TempDir,
}

impl Writer {
    fn new(preallocate: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = WalConfig {
            preallocate,
            ..WalConfig::new(dir.path().join("wal"))
        };
        let mut wal = Wal::open(Arc::new(RealDisk::new()), config).expect("open");
        wal.prepare_segments_in_background().expect("spawn");
        Writer {
            wal,
            next_index: vec![1; GROUPS as usize],
            payload: Bytes::from(vec![0x5a; ENTRY_BYTES]),
            _dir: dir,
        }
    }

    /// `batch` appends, then one fsync; compacts and purges now and then so that the directory
    /// stays small.
    fn commit(&mut self, batch: usize) {
        for i in 0..batch {
            let g = i % GROUPS as usize;
            let index = LogIndex(self.next_index[g]);
            self.next_index[g] += 1;
            let entry = Entry {
                term: Term(1),
                index,
                payload: EntryPayload::Normal(self.payload.clone()),
            };
            let record = Record::Entries {
                group: GroupId(g as u64),
                entries: vec![entry],
            };
            self.wal.append(&record).expect("append");
        }
        self.wal.sync().expect("sync");
        if self.wal.segment_paths().len() > 4 {
            for (g, next) in self.next_index.iter().enumerate() {
                let last = LogIndex(next - 1);
                if last.0 > 0 {
                    let record = Record::Compact {
                        group: GroupId(g as u64),
                        index: last,
                        term: Term(1),
                    };
                    self.wal.append(&record).expect("compact");
                }
            }
            self.wal.purge().expect("purge");
        }
    }
}

fn group_commit(c: &mut Criterion) {
    let mut group = c.benchmark_group("wal_group_commit");
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(3));
    for batch in [1usize, 8, 64, 256] {
        group.throughput(Throughput::Elements(batch as u64));
        for (name, preallocate) in [("preallocated", true), ("appending", false)] {
            let mut writer = Writer::new(preallocate);
            group.bench_with_input(BenchmarkId::new(name, batch), &batch, |b, &batch| {
                b.iter(|| writer.commit(batch));
            });
        }
    }
    group.finish();
}

criterion_group!(benches, group_commit);
criterion_main!(benches);
