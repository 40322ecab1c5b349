//! End-to-end tests of the simulator: determinism, a clean run of a few dozen seeds against the
//! real core, and proof that the end-to-end checkers reject histories of a broken server.

use chorus_sim::{HarnessFault, Overrides, Params, StorageMode, run_seed, run_seed_with_fault};

fn params(seed: u64) -> Params {
    Params::from_seed(seed, &Overrides::default())
}

#[test]
fn same_seed_gives_the_same_trace_and_different_seeds_differ() {
    // Goal: a run is a pure function of its seed (TESTING.md). Method: run three seeds twice
    // each and compare trace hashes and counters; the three hashes must also differ.
    let mut hashes = Vec::new();
    for seed in [1, 2, 3] {
        let a = run_seed(params(seed), false);
        let b = run_seed(params(seed), false);
        assert_ne!(a.trace_hash, 0, "seed {seed} panicked: {:?}", a.violations);
        assert_eq!(
            a.trace_hash, b.trace_hash,
            "seed {seed} is not deterministic"
        );
        assert_eq!(a.stats.events, b.stats.events);
        assert_eq!(a.stats.ops_ok, b.stats.ops_ok);
        hashes.push(a.trace_hash);
    }
    hashes.sort_unstable();
    hashes.dedup();
    assert_eq!(hashes.len(), 3, "different seeds gave the same trace");
}

#[test]
fn a_few_dozen_seeds_run_clean_and_do_real_work() {
    // Goal: the core survives the faults of a few dozen seeds, and the runs are not vacuous.
    // Method: run seeds 0..24; require no violation, and that the runs as a whole committed
    // entries, crashed nodes, elected several leaders and completed client operations.
    let (mut ops, mut crashes, mut elections) = (0, 0, 0);
    for seed in 0..24 {
        let out = run_seed(params(seed), false);
        assert!(
            out.violations.is_empty(),
            "seed {seed} ({}) failed: {:#?}",
            params(seed),
            out.violations
        );
        assert!(out.stats.max_commit > 0, "seed {seed} committed nothing");
        assert!(
            out.stats.heal_to_commit_us.is_some(),
            "seed {seed}: no commit after healing"
        );
        ops += out.stats.ops_ok;
        crashes += out.stats.crashes;
        elections += out.stats.elections;
    }
    assert!(ops > 1_000, "only {ops} client operations completed");
    assert!(crashes > 10, "only {crashes} crashes");
    assert!(elections > 24, "only {elections} elections");
}

/// The first seed in `0..limit` whose run reports a violation containing `needle`.
fn first_caught(fault: HarnessFault, limit: u64, needle: &str) -> Option<u64> {
    (0..limit).find(|&seed| {
        run_seed_with_fault(params(seed), fault)
            .violations
            .iter()
            .any(|v| v.contains(needle))
    })
}

#[test]
fn reads_that_skip_the_read_index_are_caught() {
    // Goal: the linearizability checker catches stale reads end to end. Method: a server that
    // answers reads from its local state without a read index must be caught within 20 seeds.
    let caught = first_caught(HarnessFault::ReadWithoutReadIndex, 20, "linearizability");
    assert!(
        caught.is_some(),
        "stale local reads went unnoticed for 20 seeds"
    );
}

#[test]
fn writes_acknowledged_before_commit_are_caught() {
    // Goal: acknowledging uncommitted writes is caught end to end. Method: a server that answers
    // writes when proposed must be caught within 20 seeds.
    let caught = first_caught(HarnessFault::AckWritesOnPropose, 20, "linearizability");
    assert!(
        caught.is_some(),
        "early write acknowledgements went unnoticed for 20 seeds"
    );
}

#[test]
fn learner_with_a_newer_term_catches_up_seed_3038() {
    // Goal: regression test for FOUND.md bug 1. Method: replay seed 3038, where a learner that
    // adopted a removed node's higher term must still catch up after healing.
    let out = run_seed(params(3038), false);
    assert!(out.violations.is_empty(), "{:#?}", out.violations);
}

fn wal_params(seed: u64) -> Params {
    let overrides = Overrides {
        storage: Some(StorageMode::Wal),
        ..Overrides::default()
    };
    Params::from_seed(seed, &overrides)
}

#[test]
fn the_wal_mode_is_deterministic() {
    // Goal: with every node on the real WAL and a faulty disk, a run is still a pure function of
    // its seed. Method: run three seeds with crashes in WAL mode twice each; compare trace hashes
    // and counters, including the WAL recoveries.
    for seed in [4, 27, 32] {
        let a = run_seed(wal_params(seed), false);
        let b = run_seed(wal_params(seed), false);
        assert_ne!(a.trace_hash, 0, "seed {seed} panicked: {:?}", a.violations);
        assert!(
            a.stats.wal_recoveries > 0,
            "seed {seed} never recovered a WAL"
        );
        assert_eq!(
            a.trace_hash, b.trace_hash,
            "seed {seed} is not deterministic"
        );
        assert_eq!(a.stats.events, b.stats.events);
        assert_eq!(a.stats.wal_recoveries, b.stats.wal_recoveries);
        assert_ne!(a.trace_hash, run_seed(params_mem(seed), false).trace_hash);
    }
}

fn params_mem(seed: u64) -> Params {
    let overrides = Overrides {
        storage: Some(StorageMode::Mem),
        ..Overrides::default()
    };
    Params::from_seed(seed, &overrides)
}

#[test]
fn a_few_dozen_seeds_run_clean_on_the_wal_and_recover_from_it() {
    // Goal: the core and the WAL together survive crashes that lose unsynced writes and tear
    // the last one, bit flips in a down node's WAL and failed fsyncs, and the runs are not
    // vacuous. Method: run seeds 0..40 in WAL mode; require no violation (a recovery that fails
    // after a legal crash, or a flipped bit the WAL accepts, is one), and that the runs as a
    // whole crashed and recovered nodes from their WAL many times, tore writes, flipped bits,
    // failed fsyncs, and completed client operations.
    let (mut ops, mut recoveries, mut torn, mut flips, mut fsync_failures) = (0, 0, 0, 0, 0);
    for seed in 0..40 {
        let out = run_seed(wal_params(seed), false);
        assert!(
            out.violations.is_empty(),
            "seed {seed} ({}) failed: {:#?}",
            wal_params(seed),
            out.violations
        );
        assert!(
            out.stats.heal_to_commit_us.is_some(),
            "seed {seed}: no commit after healing"
        );
        ops += out.stats.ops_ok;
        recoveries += out.stats.wal_recoveries;
        torn += out.stats.torn_writes;
        flips += out.stats.bit_flips;
        fsync_failures += out.stats.fsync_failures;
    }
    assert!(ops > 1_000, "only {ops} client operations completed");
    assert!(
        recoveries > 100,
        "only {recoveries} recoveries from the WAL"
    );
    assert!(torn > 3, "only {torn} torn writes");
    assert!(flips > 0, "no bit was flipped");
    assert!(fsync_failures > 0, "no fsync failed");
}

#[test]
fn acknowledging_writes_the_wal_did_not_sync_is_caught() {
    // Goal: the WAL mode can fail: a persistence path that calls `on_persisted` (and sends the
    // messages waiting for it) without syncing the WAL loses acknowledged votes and entries at
    // crashes, which the checkers must notice. Method: switch that path on and require a
    // violation of a Raft or history checker within 30 seeds in WAL mode.
    let caught = (0..30).find(|&seed| {
        let out = run_seed_with_fault(wal_params(seed), HarnessFault::SkipWalSync);
        !out.violations.is_empty()
    });
    assert!(
        caught.is_some(),
        "unsynced acknowledgements went unnoticed for 30 seeds"
    );
}
