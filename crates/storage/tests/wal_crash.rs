//! Crash consistency of the write-ahead log on the faulty disk.
//!
//! Goal: after a crash at any point, recovery returns every acknowledged (synced) write, returns
//! nothing that was not written, and refuses to start on corruption in the middle of the log.
//!
//! Method: run a workload on a `FaultyDisk` that stops after `n` disk operations, for every `n`
//! the workload performs; crash, losing unsynced data or keeping a torn prefix of the last write
//! (every torn length, filled with real data, zeros or garbage); reopen; compare the recovered
//! state with a naive model after each prefix of the workload. Then keep writing on the recovered
//! log and reopen again. Separately, flip bits everywhere in a synced log and check that the
//! error names the file and offset of the damaged record.

mod wal_support;

use std::sync::Arc;

use chorus_raft::{GroupId, LogIndex, SnapshotMeta, Term};
use chorus_storage::disk::{CrashOptions, Disk, FaultyDisk, TornFill};
use chorus_storage::wal::codec::{self, Record};
use chorus_storage::wal::{Wal, WalConfig, WalError};
use wal_support::*;

const G1: GroupId = GroupId(1);
const G2: GroupId = GroupId(2);

/// Two groups, interleaved appends, hard states, a conflicting suffix, a compaction.
fn workload_two_groups() -> Vec<Op> {
    vec![
        Op::ConfState(G1, voters(&[1, 2, 3])),
        Op::Append(G1, entries(1, 3, 1, "a")),
        Op::Append(G2, entries(1, 2, 1, "b")),
        Op::HardState(G1, hard_state(1, 1, 0)),
        Op::Sync,
        Op::Append(G1, entries(4, 2, 1, "a")),
        Op::HardState(G2, hard_state(1, 2, 1)),
        Op::Sync,
        // A new leader overwrites G1's uncommitted tail.
        Op::Append(G1, entries(3, 2, 2, "c")),
        Op::HardState(G1, hard_state(2, 3, 3)),
        Op::Sync,
        Op::Compact(G1, LogIndex(2)),
        Op::Append(G2, entries(3, 1, 1, "b")),
        Op::Sync,
    ]
}

/// Enough data to rotate segments, a snapshot install, and compaction of everything, with the
/// compaction not yet synced.
fn workload_up_to_recycling() -> Vec<Op> {
    let meta = SnapshotMeta {
        index: LogIndex(10),
        term: Term(3),
        conf_state: voters(&[1, 2]),
    };
    vec![
        Op::Append(G1, entries(1, 4, 1, "first")),
        Op::HardState(G1, hard_state(1, 1, 2)),
        Op::Append(G2, entries(1, 4, 1, "second")),
        Op::Sync,
        Op::Append(G1, entries(5, 4, 1, "first")),
        Op::HardState(G2, hard_state(1, 1, 4)),
        Op::Sync,
        Op::InstallSnapshot(G2, meta),
        Op::Append(G2, entries(11, 2, 3, "after")),
        Op::Compact(G1, LogIndex(8)),
    ]
}

/// [`workload_up_to_recycling`], then a purge that deletes old segments and restates group state.
fn workload_recycle() -> Vec<Op> {
    let mut ops = workload_up_to_recycling();
    ops.extend([
        Op::Sync,
        Op::Purge,
        Op::Append(G1, entries(9, 2, 1, "first")),
        Op::Sync,
    ]);
    ops
}

/// [`workload_recycle`] with the purge in two halves, as a server runs it: prepared right
/// after the compaction with nothing synced, finished only after a later fsync; then a second
/// one finished with nothing synced since, which must sync first.
fn workload_recycle_in_halves() -> Vec<Op> {
    let mut ops = workload_up_to_recycling();
    ops.extend([
        Op::PreparePurge,
        Op::Append(G1, entries(9, 2, 1, "first")),
        Op::Sync,
        Op::FinishPurge,
        Op::Append(G1, entries(11, 3, 1, "more")),
        Op::Sync,
        Op::Append(G1, entries(14, 3, 1, "more")),
        Op::Sync,
        Op::Append(G1, entries(17, 3, 1, "more")),
        Op::Sync,
        Op::Compact(G2, LogIndex(12)),
        Op::Compact(G1, LogIndex(18)),
        Op::PreparePurge,
        Op::FinishPurge,
        Op::Append(G1, entries(20, 2, 1, "more")),
        Op::Sync,
    ]);
    ops
}

/// Every record is handed to the disk as soon as it is appended: more crash points, and several
/// unsynced writes for a crash to tear.
fn unbuffered_config() -> WalConfig {
    WalConfig {
        pending_bytes_max: 1,
        ..small_config()
    }
}

/// A log of several sealed segments and no purge.
fn workload_long() -> Vec<Op> {
    let mut ops = workload_two_groups();
    for i in 0..6 {
        ops.push(Op::Append(G2, entries(4 + 2 * i, 2, 1, "long")));
        ops.push(Op::HardState(G2, hard_state(1, 2, 3 + 2 * i)));
        ops.push(Op::Sync);
    }
    ops
}

/// Every crash point, every torn length, for one workload. Returns how many crashes were checked.
fn crash_everywhere(name: &str, config: &WalConfig, ops: &[Op]) -> u64 {
    let dry = FaultyDisk::new();
    let outcome = run(&dry, config, ops);
    assert!(
        outcome.error.is_none(),
        "{name}: the workload fails without a crash"
    );
    let ops_total = dry.ops_done();
    let mut crashes = 0;
    for crash_at in 0..=ops_total {
        // Learn how many unsynced bytes the last write left, to enumerate torn lengths.
        let probe = FaultyDisk::new();
        probe.crash_after_ops(crash_at);
        run(&probe, config, ops);
        let unsynced = probe.last_write_unsynced_bytes();
        let mut options = vec![CrashOptions::LOSE_UNSYNCED];
        for torn_bytes in 1..=unsynced {
            options.push(CrashOptions {
                torn_bytes,
                torn_fill: TornFill::Data,
            });
        }
        for torn_bytes in [1, 4, 8, 9, 16, 64].into_iter().filter(|&b| b <= unsynced) {
            options.push(CrashOptions {
                torn_bytes,
                torn_fill: TornFill::Zeros,
            });
            let seed = crash_at * 1000 + torn_bytes;
            options.push(CrashOptions {
                torn_bytes,
                torn_fill: TornFill::Garbage { seed },
            });
        }
        for option in options {
            let context = format!("{name}: crash after {crash_at} ops with {option:?}");
            crash_and_check(config, ops, crash_at, option, &context);
            crashes += 1;
        }
    }
    assert!(crashes > ops_total, "{name}: every crash point was tried");
    println!(
        "{name}: {} crash points, {crashes} crashes checked",
        ops_total + 1
    );
    crashes
}

fn crash_and_check(
    config: &WalConfig,
    ops: &[Op],
    crash_at: u64,
    option: CrashOptions,
    context: &str,
) {
    let disk = FaultyDisk::new();
    disk.crash_after_ops(crash_at);
    let outcome = run(&disk, config, ops);
    disk.crash(option);
    let recovered = {
        let wal = Wal::open(Arc::new(disk.clone()), config.clone())
            .unwrap_or_else(|e| panic!("{context}: recovery failed: {e}"));
        wal_image(&wal)
    };
    let m = assert_prefix(&outcome, &recovered, context);
    // The recovered log must accept new writes and keep them across another restart.
    let extra = Op::Append(GroupId(99), entries(1, 2, 7, "extra"));
    let mut expected = outcome.images[m].clone();
    model_apply(&mut expected, &extra);
    {
        let mut wal = Wal::open(Arc::new(disk.clone()), config.clone()).expect("second open");
        wal.append(&record_of(&expected, &extra).expect("state op"))
            .expect("append");
        wal.sync().expect("sync");
    }
    disk.crash(CrashOptions::LOSE_UNSYNCED);
    let wal = Wal::open(Arc::new(disk.clone()), config.clone()).expect("third open");
    assert_eq!(
        wal_image(&wal),
        expected,
        "{context}: writes after recovery"
    );
}

#[test]
fn every_crash_point_of_two_group_workload() {
    crash_everywhere("two groups", &small_config(), &workload_two_groups());
    crash_everywhere(
        "two groups, unbuffered",
        &unbuffered_config(),
        &workload_two_groups(),
    );
    crash_everywhere("long", &small_config(), &workload_long());
    crash_everywhere(
        "two groups, appending",
        &appending_config(),
        &workload_two_groups(),
    );
    crash_everywhere("long, appending", &appending_config(), &workload_long());
}

#[test]
fn every_crash_point_of_recycling_workload() {
    let config = small_config();
    // The workload must really rotate and purge, or it tests less than it says.
    let disk = FaultyDisk::new();
    let outcome = run(&disk, &config, &workload_recycle());
    assert!(outcome.error.is_none());
    let wal = Wal::open(Arc::new(disk.clone()), config.clone()).expect("open");
    assert!(
        wal.segment_paths()[0] != wal.segment_path(1),
        "segment 1 was purged"
    );
    assert!(wal.segment_paths().len() >= 2, "segments rotated");
    crash_everywhere("recycle", &config, &workload_recycle());
    crash_everywhere(
        "recycle, unbuffered",
        &unbuffered_config(),
        &workload_recycle(),
    );
    crash_everywhere(
        "recycle, appending",
        &appending_config(),
        &workload_recycle(),
    );
}

#[test]
fn every_crash_point_of_a_purge_in_two_halves() {
    // Goal: a purge prepared at a compaction and finished after a later fsync (as a server's
    // Raft driver does, so as never to wait for the disk) keeps the same guarantees at every
    // crash point, including between the halves, where the segments it will delete are still
    // replayed. Method: the recycling workload with the purge in halves; check first that the
    // first half deletes nothing and the second deletes the first segment.
    let config = small_config();
    let ops = workload_recycle_in_halves();
    let prepared = 1 + ops
        .iter()
        .position(|op| matches!(op, Op::PreparePurge))
        .expect("a prepared purge");
    let segments = |ops: &[Op]| {
        let disk = FaultyDisk::new();
        let outcome = run(&disk, &config, ops);
        assert!(outcome.error.is_none(), "{:?}", outcome.error);
        let wal = Wal::open(Arc::new(disk.clone()), config.clone()).expect("open");
        (wal.segment_paths(), wal.segment_path(1))
    };
    let (half, first) = segments(&ops[..prepared]);
    assert!(half.len() >= 2, "segments rotated");
    assert_eq!(half[0], first, "nothing deleted yet");
    let (whole, _) = segments(&ops);
    assert!(whole[0] != first, "segment 1 was purged");
    let last_finish = ops.len() - 3;
    assert!(matches!(ops[last_finish], Op::FinishPurge));
    let (before, _) = segments(&ops[..last_finish]);
    let (after, _) = segments(&ops[..=last_finish]);
    assert!(
        after[0] > before[0],
        "the second purge deletes segments: {before:?} then {after:?}"
    );
    crash_everywhere("recycle in halves", &config, &ops);
    crash_everywhere("recycle in halves, unbuffered", &unbuffered_config(), &ops);
    crash_everywhere("recycle in halves, appending", &appending_config(), &ops);
}

#[test]
fn randomized_workloads_survive_random_crashes() {
    // Goal: longer, random histories (seeded) keep the same guarantees. Each seed runs once without
    // a crash to count disk operations, then crashes at several random points.
    let config = small_config();
    for seed in 0..60 {
        let mut rng = Rng::new(seed);
        let ops = random_workload(&mut rng, 80, 3);
        let dry = FaultyDisk::new();
        let outcome = run(&dry, &config, &ops);
        assert!(outcome.error.is_none(), "seed {seed}: {:?}", outcome.error);
        let reopened = Wal::open(Arc::new(dry.clone()), config.clone()).expect("reopen");
        assert_eq!(
            wal_image(&reopened),
            outcome.images[outcome.attempted],
            "seed {seed}"
        );
        let ops_total = dry.ops_done();
        for _ in 0..8 {
            let crash_at = rng.below(ops_total + 1);
            let torn_fill = match rng.below(3) {
                0 => TornFill::Data,
                1 => TornFill::Zeros,
                _ => TornFill::Garbage {
                    seed: rng.next_u64(),
                },
            };
            let option = CrashOptions {
                torn_bytes: rng.below(300),
                torn_fill,
            };
            let context = format!("seed {seed}: crash after {crash_at} ops with {option:?}");
            crash_and_check(&config, &ops, crash_at, option, &context);
        }
    }
}

/// The start offset of every frame in a segment, and where its records end (zeros follow).
fn frame_starts(bytes: &[u8], config: &WalConfig) -> (Vec<usize>, usize) {
    let bytes = bytes::Bytes::copy_from_slice(bytes);
    let mut starts = Vec::new();
    let mut offset = 0;
    while offset < bytes.len() && bytes[offset..].iter().any(|&b| b != 0) {
        starts.push(offset);
        let (_, next) = codec::read_frame(&bytes, offset, config.record_bytes_max).expect("clean");
        offset = next;
    }
    (starts, offset)
}

#[test]
fn bit_flips_before_the_tail_refuse_to_start_naming_file_and_offset() {
    // Goal: corruption anywhere but the very last record is reported, never truncated. Method:
    // build a synced multi-segment log, then flip each bit position of every byte (one bit per
    // byte, rotating) on a fresh copy and reopen.
    let config = small_config();
    let disk = FaultyDisk::new();
    let outcome = run(&disk, &config, &workload_long());
    assert!(outcome.error.is_none());
    let paths = disk.paths();
    assert!(
        paths.len() >= 3,
        "needs sealed segments, has {}",
        paths.len()
    );
    let last_path = paths.last().expect("segments").clone();
    let mut flips = 0;
    for path in &paths {
        let bytes = disk.read(path).expect("read");
        let (starts, records_end) = frame_starts(&bytes, &config);
        let last_frame = *starts.last().expect("frames");
        for offset in 0..bytes.len() {
            let copy = FaultyDisk::new();
            run(&copy, &config, &workload_long());
            copy.flip_bit(path, offset as u64, (offset % 8) as u8)
                .expect("flip");
            let result = Wal::open(Arc::new(copy.clone()), config.clone());
            let record_start = *starts.iter().rev().find(|&&s| s <= offset).expect("frame") as u64;
            // Past the seal, in the zeros of a preallocated segment, the damage is reported
            // where the zeros start.
            let reported_at = if offset >= records_end {
                records_end as u64
            } else {
                record_start
            };
            if *path == last_path && offset >= last_frame {
                // The last record of the log: indistinguishable from a torn write, so it is cut.
                let wal = result.unwrap_or_else(|e| panic!("flip at {offset} of the tail: {e}"));
                let outcome = Outcome {
                    images: outcome.images.clone(),
                    acked: outcome.attempted - 1,
                    attempted: outcome.attempted,
                    ..Outcome::new()
                };
                assert_prefix(&outcome, &wal_image(&wal), "tail flip");
            } else {
                match result {
                    Err(WalError::Corrupt {
                        file,
                        offset: at,
                        reason,
                    }) => {
                        assert_eq!(&file, path, "flip at {offset}: {reason}");
                        assert_eq!(at, reported_at, "flip at {offset}: {reason}");
                        let message = WalError::Corrupt {
                            file,
                            offset: at,
                            reason,
                        }
                        .to_string();
                        assert!(message.contains(&path.display().to_string()), "{message}");
                        assert!(message.contains(&format!("offset {at}")), "{message}");
                    }
                    Err(e) => panic!("flip at {offset} of {}: wrong error {e}", path.display()),
                    Ok(_) => panic!("flip at {offset} of {} was not detected", path.display()),
                }
            }
            flips += 1;
        }
    }
    assert!(flips > 500, "only {flips} flips");
}

#[test]
fn a_missing_segment_refuses_to_start() {
    let config = small_config();
    let disk = FaultyDisk::new();
    run(&disk, &config, &workload_long());
    let paths = disk.paths();
    assert!(
        paths.len() >= 3,
        "needs three segments, has {}",
        paths.len()
    );
    disk.remove(&paths[1]).expect("remove");
    disk.sync_dir(&config.dir).expect("sync dir");
    match Wal::open(Arc::new(disk.clone()), config.clone()) {
        Err(WalError::Corrupt { file, reason, .. }) => {
            assert_eq!(file, paths[1], "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn a_sealed_segment_cut_short_refuses_to_start() {
    // A non-last segment that lost its end (its seal) is corruption, not a torn tail.
    let config = small_config();
    let disk = FaultyDisk::new();
    run(&disk, &config, &workload_two_groups());
    let first = disk.paths()[0].clone();
    let bytes = disk.read(&first).expect("read");
    let records_end = bytes.iter().rposition(|&b| b != 0).expect("records") + 1;
    disk.truncate(&first, records_end as u64 - 3)
        .expect("truncate");
    disk.sync(&first).expect("sync");
    match Wal::open(Arc::new(disk.clone()), config.clone()) {
        Err(WalError::Corrupt { file, .. }) => assert_eq!(file, first),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn a_failed_fsync_is_fatal_and_never_retried() {
    // Goal: SyncFailed once, then every call is refused; after a restart, only what an earlier
    // successful sync acknowledged is guaranteed.
    let config = small_config();
    let disk = FaultyDisk::new();
    let mut wal = Wal::open(Arc::new(disk.clone()), config.clone()).expect("open");
    wal.append(&Record::Entries {
        group: G1,
        entries: entries(1, 2, 1, "x"),
    })
    .expect("append");
    wal.sync().expect("sync");
    wal.append(&Record::Entries {
        group: G1,
        entries: entries(3, 1, 1, "x"),
    })
    .expect("append");
    disk.fail_next_sync();
    let ops_before = disk.ops_done();
    assert!(matches!(wal.sync(), Err(WalError::SyncFailed { .. })));
    assert!(wal.is_poisoned());
    assert!(matches!(wal.sync(), Err(WalError::Poisoned { .. })));
    let again = Record::HardState {
        group: G1,
        hard_state: hard_state(1, 1, 1),
    };
    assert!(matches!(wal.append(&again), Err(WalError::Poisoned { .. })));
    assert!(matches!(wal.group(G1), Err(WalError::Poisoned { .. })));
    assert_eq!(
        disk.ops_done(),
        ops_before + 2,
        "only the append and the one fsync reached the disk"
    );
    drop(wal);
    disk.crash(CrashOptions::LOSE_UNSYNCED);
    let wal = Wal::open(Arc::new(disk.clone()), config).expect("reopen");
    let log = wal.group(G1).expect("ok").expect("group");
    assert_eq!(
        log.last_index(),
        LogIndex(2),
        "the entry whose fsync failed is not durable"
    );
}

#[test]
fn randomized_fsync_failures_stop_the_wal_and_lose_nothing_acknowledged() {
    // Goal: whichever fsync fails (file or directory, during a sync, a rotation or a purge), the
    // WAL reports it once as fatal, refuses everything after, and a restart keeps every write
    // acknowledged before. Method: seeded workloads; fail the k-th sync for a random k.
    let config = small_config();
    let mut failures_seen = 0;
    for seed in 100..160 {
        let mut rng = Rng::new(seed);
        let ops = random_workload(&mut rng, 60, 2);
        let disk = FaultyDisk::new();
        let mut outcome = run_with_sync_failure(&disk, &config, &ops, 1 + rng.below(20));
        if let Some(err) = &outcome.error {
            assert!(
                matches!(err, WalError::SyncFailed { .. }),
                "seed {seed}: {err}"
            );
            failures_seen += 1;
        }
        disk.crash(CrashOptions::LOSE_UNSYNCED);
        let wal = Wal::open(Arc::new(disk.clone()), config.clone())
            .unwrap_or_else(|e| panic!("seed {seed}: recovery failed: {e}"));
        outcome.error = None;
        assert_prefix(&outcome, &wal_image(&wal), &format!("seed {seed}"));
    }
    assert!(
        failures_seen >= 40,
        "only {failures_seen} seeds hit an fsync failure"
    );
    println!("fsync failures: {failures_seen} of 60 seeds");
}

/// Like `run`, but the `nth` sync operation of the disk fails, and after the failure every
/// further call on the WAL must be refused as poisoned.
fn run_with_sync_failure(disk: &FaultyDisk, config: &WalConfig, ops: &[Op], nth: u64) -> Outcome {
    let mut outcome = Outcome::new();
    let Ok(mut wal) = Wal::open(Arc::new(disk.clone()), config.clone()) else {
        panic!("open without faults");
    };
    let mut syncs = 0;
    for op in ops {
        if matches!(op, Op::Sync | Op::Purge | Op::FinishPurge) {
            syncs += 1;
            if syncs == nth {
                disk.fail_next_sync();
            }
        }
        match perform(&mut wal, &mut outcome, op) {
            Ok(()) if matches!(op, Op::Sync) => outcome.acked = outcome.attempted,
            Ok(()) => {}
            Err(err) => {
                let again = wal.sync().expect_err("a stopped WAL refuses to sync");
                assert!(matches!(again, WalError::Poisoned { .. }), "{again}");
                let record = Record::RemoveGroup { group: GroupId(1) };
                let refused = wal.append(&record).expect_err("and to append");
                assert!(matches!(refused, WalError::Poisoned { .. }), "{refused}");
                outcome.error = Some(err);
                return outcome;
            }
        }
    }
    outcome
}
