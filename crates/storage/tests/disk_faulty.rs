//! The faulty disk keeps exactly what its contract says survives a crash.
//!
//! Goal: crash tests are only as good as the disk model. Method: one table of small scenarios,
//! each checking what a crash keeps: synced bytes, durable names, torn prefixes, flipped bits,
//! failed fsyncs, and the stop after a chosen number of operations.

use std::path::Path;

use chorus_storage::disk::{CrashOptions, Disk, FaultyDisk, RealDisk, TornFill};

const DIR: &str = "/d";

fn file(name: &str) -> std::path::PathBuf {
    Path::new(DIR).join(name)
}

fn synced_file(disk: &FaultyDisk, name: &str, data: &[u8]) {
    disk.create(&file(name)).expect("create");
    disk.append(&file(name), data).expect("append");
    disk.sync(&file(name)).expect("sync");
    disk.sync_dir(Path::new(DIR)).expect("sync dir");
}

#[test]
fn unsynced_bytes_are_lost_and_synced_bytes_kept() {
    let disk = FaultyDisk::new();
    synced_file(&disk, "a", b"durable");
    disk.append(&file("a"), b"-volatile").expect("append");
    assert_eq!(disk.read(&file("a")).expect("read"), b"durable-volatile");
    assert_eq!(disk.unsynced_bytes(&file("a")), 9);
    disk.crash(CrashOptions::LOSE_UNSYNCED);
    assert_eq!(disk.read(&file("a")).expect("read"), b"durable");
}

#[test]
fn names_need_a_directory_sync() {
    let disk = FaultyDisk::new();
    synced_file(&disk, "kept", b"x");
    disk.create(&file("new")).expect("create");
    disk.append(&file("new"), b"y").expect("append");
    disk.sync(&file("new"))
        .expect("file sync alone does not make the name durable");
    disk.remove(&file("kept")).expect("remove");
    disk.crash(CrashOptions::LOSE_UNSYNCED);
    let mut names = disk.list(Path::new(DIR)).expect("list");
    names.sort();
    assert_eq!(
        names,
        vec!["kept".to_string()],
        "the removal and the creation were not durable"
    );
}

#[test]
fn a_torn_write_keeps_a_prefix_of_the_last_file_only() {
    let cases: [(TornFill, &[u8]); 3] = [
        (TornFill::Data, b"base-to"),
        (TornFill::Zeros, b"base\0\0\0"),
        (TornFill::Garbage { seed: 7 }, b""),
    ];
    for (fill, expected) in cases {
        let disk = FaultyDisk::new();
        synced_file(&disk, "other", b"o");
        synced_file(&disk, "last", b"base");
        disk.append(&file("other"), b"lost").expect("append");
        disk.append(&file("last"), b"-torn").expect("append");
        assert_eq!(disk.last_write_unsynced_bytes(), 5);
        disk.crash(CrashOptions {
            torn_bytes: 3,
            torn_fill: fill,
        });
        let last = disk.read(&file("last")).expect("read");
        assert_eq!(last.len(), 7, "{fill:?}");
        assert_eq!(&last[..4], b"base", "{fill:?}");
        if !expected.is_empty() {
            assert_eq!(last, expected, "{fill:?}");
        }
        assert_eq!(disk.read(&file("other")).expect("read"), b"o", "{fill:?}");
    }
}

#[test]
fn a_failed_fsync_makes_nothing_durable() {
    let disk = FaultyDisk::new();
    synced_file(&disk, "a", b"one");
    disk.append(&file("a"), b"two").expect("append");
    disk.fail_next_sync();
    assert!(disk.sync(&file("a")).is_err());
    assert_eq!(
        disk.read(&file("a")).expect("read"),
        b"onetwo",
        "still readable before a crash"
    );
    disk.crash(CrashOptions::LOSE_UNSYNCED);
    assert_eq!(disk.read(&file("a")).expect("read"), b"one");
}

#[test]
fn the_disk_stops_after_the_chosen_operation_count() {
    let disk = FaultyDisk::new();
    disk.crash_after_ops(2);
    disk.create(&file("a")).expect("first op");
    disk.append(&file("a"), b"x").expect("second op");
    assert!(disk.sync(&file("a")).is_err(), "third op fails");
    assert!(
        disk.read(&file("a")).is_err(),
        "a stopped disk answers nothing"
    );
    assert_eq!(disk.ops_done(), 2);
    disk.crash(CrashOptions::LOSE_UNSYNCED);
    assert!(
        disk.list(Path::new(DIR)).expect("list").is_empty(),
        "the name was never durable"
    );
}

#[test]
fn flip_bit_changes_one_bit_in_place() {
    let disk = FaultyDisk::new();
    synced_file(&disk, "a", &[0u8; 4]);
    disk.flip_bit(&file("a"), 2, 3).expect("flip");
    disk.crash(CrashOptions::LOSE_UNSYNCED);
    assert_eq!(disk.read(&file("a")).expect("read"), vec![0, 0, 8, 0]);
    assert!(disk.flip_bit(&file("a"), 4, 0).is_err(), "past the end");
}

#[test]
fn a_torn_write_in_place_keeps_a_prefix_of_the_writes_over_the_synced_bytes() {
    // Preallocated WAL segments are written over their zeros: a crash keeps the synced bytes
    // and the first torn bytes of the writes since, in the order they were made.
    let disk = FaultyDisk::new();
    synced_file(&disk, "a", &[0u8; 8]);
    disk.write_at(&file("a"), 2, b"xyz").expect("write");
    disk.write_at(&file("a"), 6, b"uv").expect("write");
    assert_eq!(disk.unsynced_bytes(&file("a")), 5);
    assert_eq!(disk.read(&file("a")).expect("read"), b"\0\0xyz\0uv");
    disk.crash(CrashOptions {
        torn_bytes: 4,
        torn_fill: TornFill::Data,
    });
    assert_eq!(disk.read(&file("a")).expect("read"), b"\0\0xyz\0u\0");
    assert_eq!(disk.unsynced_bytes(&file("a")), 0);
    assert!(
        disk.write_at(&file("a"), 9, b"x").is_err(),
        "a write past the end would leave a hole"
    );
    disk.write_at(&file("a"), 8, b"w")
        .expect("a write at the end extends");
    disk.crash(CrashOptions::LOSE_UNSYNCED);
    assert_eq!(disk.read(&file("a")).expect("read").len(), 8);
}

#[test]
fn the_real_disk_does_the_same_operations() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = RealDisk::new();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    disk.create(&a).expect("create");
    assert!(disk.create(&a).is_err(), "create refuses an existing file");
    disk.append(&a, b"hello ").expect("append");
    disk.append(&a, b"world").expect("append");
    disk.sync(&a).expect("sync");
    assert_eq!(disk.file_len(&a).expect("len"), 11);
    disk.truncate(&a, 5).expect("truncate");
    disk.append(&a, b"!").expect("append after truncate");
    assert_eq!(disk.read(&a).expect("read"), b"hello!");
    disk.write_at(&a, 1, b"EL").expect("write in place");
    disk.write_at(&a, 6, b"?").expect("write at the end");
    disk.sync(&a).expect("sync");
    assert_eq!(disk.read(&a).expect("read"), b"hELlo!?");
    disk.rename(&a, &b).expect("rename");
    disk.sync_dir(dir.path()).expect("sync dir");
    assert_eq!(disk.list(dir.path()).expect("list"), vec!["b".to_string()]);
    disk.remove(&b).expect("remove");
    assert!(disk.list(dir.path()).expect("list").is_empty());
}
