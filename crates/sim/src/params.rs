//! The parameters of one run, all drawn from its seed.
//!
//! Every knob a run uses lives here, so that a failing seed can be printed with everything needed
//! to understand and replay it. Command-line options may pin a few of them (the cluster size, the
//! injected bug); the rest always come from the seed.

use std::fmt;

use crate::net::NetParams;
use crate::queue::Time;
use crate::rng::Rng;

/// How linearizable reads are served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadMode {
    /// ReadIndex confirmed by a heartbeat round (§6.4 of the Raft thesis).
    ReadIndex,
    /// Leader lease: no heartbeat round, relies on bounded clock drift.
    Lease,
}

/// Where a node keeps its Raft log and hard state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageMode {
    /// A `MemStorage` written at each simulated fsync; a crash keeps a clone of it.
    Mem,
    /// The real write-ahead log (`chorus_storage::wal`) on the node's own `FaultyDisk`; a crash
    /// is `FaultyDisk::crash` and a restart recovers the log from the disk.
    Wal,
}

impl StorageMode {
    /// The command-line spelling.
    pub fn name(self) -> &'static str {
        match self {
            StorageMode::Mem => "mem",
            StorageMode::Wal => "wal",
        }
    }

    /// Parses the command-line spelling.
    pub fn parse(text: &str) -> Option<StorageMode> {
        [StorageMode::Mem, StorageMode::Wal]
            .into_iter()
            .find(|m| m.name() == text)
    }
}

impl fmt::Display for StorageMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The deliberately broken rules of the core the simulator can switch on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum BugName {
    DoubleVote,
    CommitOldTerm,
    StaleLeaseRead,
    ForgetVoteOnRestart,
}

impl BugName {
    /// Every bug, in the order CI checks them.
    pub const ALL: [BugName; 4] = [
        BugName::DoubleVote,
        BugName::CommitOldTerm,
        BugName::StaleLeaseRead,
        BugName::ForgetVoteOnRestart,
    ];

    /// The command-line spelling.
    pub fn name(self) -> &'static str {
        match self {
            BugName::DoubleVote => "double-vote",
            BugName::CommitOldTerm => "commit-old-term",
            BugName::StaleLeaseRead => "stale-lease-read",
            BugName::ForgetVoteOnRestart => "forget-vote-on-restart",
        }
    }

    /// Parses the command-line spelling.
    pub fn parse(text: &str) -> Option<BugName> {
        BugName::ALL.into_iter().find(|b| b.name() == text)
    }
}

impl fmt::Display for BugName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the command line pins; everything else comes from the seed.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub nodes: Option<usize>,
    pub bug: Option<BugName>,
    pub storage: Option<StorageMode>,
}

/// Everything one run does, drawn from its seed.
#[derive(Clone, Debug)]
pub struct Params {
    pub seed: u64,
    /// Nodes in the simulation (ids 1..=nodes); 3 to 7.
    pub nodes: usize,
    /// Voters at the start (ids 1..=initial_voters); the rest join through membership changes.
    pub initial_voters: usize,
    pub read_mode: ReadMode,
    pub pre_vote: bool,
    pub check_quorum: bool,
    pub election_ticks: u32,
    pub heartbeat_ticks: u32,
    pub lease_drift_ticks: u32,
    /// The nominal tick period; each node's own period is scaled by its drift.
    pub tick_us: Time,
    /// Largest relative clock drift of a node, in parts per million.
    pub drift_ppm_max: u64,
    /// Whether clocks may pause and jump (never with lease reads).
    pub clock_jumps: bool,
    pub net: NetParams,
    pub partitions: bool,
    pub crashes: bool,
    /// Probability that a crash keeps a prefix of the entries of the write in flight.
    pub torn_write_p: f64,
    pub fsync_min_us: Time,
    pub fsync_max_us: Time,
    /// Whether a node takes its next Ready before the previous one is persisted.
    pub pipeline: bool,
    /// Applied entries between state machine snapshots.
    pub snapshot_every: u64,
    /// Entries kept in the log behind a snapshot.
    pub compact_lag: u64,
    pub clients: usize,
    pub keys: u8,
    pub op_timeout_us: Time,
    pub think_max_us: Time,
    pub nemesis_min_us: Time,
    pub nemesis_max_us: Time,
    pub membership_changes: bool,
    pub leader_transfers: bool,
    /// Probability that a new leader is crashed or isolated within a few heartbeats of its
    /// election (the short reigns of Figure 8 of the Raft paper).
    pub leader_fault_p: f64,
    /// Probability that a node that grants a vote crashes right after and restarts quickly.
    pub voter_fault_p: f64,
    /// The core's per-message entry budget and append window (small values split a catch-up
    /// into many messages, which opens the windows that commit rules must guard).
    pub append_bytes_max: u64,
    pub inflight_msgs_max: usize,
    pub safety_us: Time,
    /// How long the healed cluster gets to make progress and catch up.
    pub liveness_us: Time,
    pub bug: Option<BugName>,
    /// Where nodes keep their log (drawn last, so that it shifts no other parameter).
    pub storage: StorageMode,
    /// In WAL mode: the probability that a crash flips a bit in the node's WAL while it is down
    /// (the node must then refuse to start); only drawn when a majority survives it.
    pub bit_flip_p: f64,
    /// In WAL mode: the probability that a simulated fsync fails (the node must stop).
    pub fsync_fail_p: f64,
    /// In WAL mode: the WAL's write buffer (`pending_bytes_max`); 1 hands every record to the
    /// disk at once, unsynced, which leaves more for a crash to tear.
    pub wal_buffer_bytes: usize,
}

impl Params {
    /// The parameters of `seed`.
    pub fn from_seed(seed: u64, overrides: &Overrides) -> Params {
        let mut rng = Rng::new(seed ^ 0x5EED_0FC4_0B05);
        let nodes = overrides
            .nodes
            .unwrap_or(rng.range_inclusive(3, 7) as usize);
        assert!((3..=7).contains(&nodes), "the simulator runs 3 to 7 nodes");
        let membership_changes = rng.chance(0.3);
        let initial_voters = if membership_changes && nodes > 3 {
            rng.range_inclusive(3, nodes as u64) as usize
        } else {
            nodes
        };
        let read_mode = match overrides.bug {
            Some(BugName::StaleLeaseRead) => ReadMode::Lease,
            _ if rng.chance(0.5) => ReadMode::Lease,
            _ => ReadMode::ReadIndex,
        };
        let lease = read_mode == ReadMode::Lease;
        let election_ticks = 10;
        let lease_drift_ticks = rng.range_inclusive(2, 3) as u32;
        let tick_us = 10_000;
        // With leases, a leader's lease of (election - drift) ticks on its clock must end before
        // a follower's election timeout of `election` ticks on its own clock: the ratio of the
        // slowest to the fastest clock must stay below election / (election - drift). A drift of
        // at most drift / (2 * election) per node keeps it there (for drift of 2 or 3 ticks out of
        // 10: ratio * lease <= 9.8 ticks), and message delays stay well inside a tick.
        let drift_ppm_max = if lease {
            let margin = f64::from(lease_drift_ticks) / f64::from(election_ticks);
            rng.range_inclusive(0, (margin / 2.0 * 1e6) as u64)
        } else {
            rng.range_inclusive(0, 150_000)
        };
        let (delay_min_us, delay_max_us) =
            (rng.range_inclusive(50, 500), rng.range_inclusive(500, 4000));
        let net = NetParams {
            drop_p: *rng.choose(&[0.0, 0.01, 0.05, 0.1, 0.2]),
            duplicate_p: *rng.choose(&[0.0, 0.01, 0.05]),
            delay_min_us,
            delay_max_us,
            slow_p: *rng.choose(&[0.0, 0.02, 0.1]),
            slow_max_us: if lease {
                tick_us / 2
            } else {
                *rng.choose(&[20_000, 100_000, 400_000])
            },
        };
        let fsync_min_us = rng.range_inclusive(100, 1000);
        Params {
            seed,
            nodes,
            initial_voters,
            read_mode,
            pre_vote: rng.chance(0.5),
            check_quorum: lease || rng.chance(0.5),
            election_ticks,
            heartbeat_ticks: rng.range_inclusive(1, 3) as u32,
            lease_drift_ticks,
            tick_us,
            drift_ppm_max,
            clock_jumps: !lease && rng.chance(0.5),
            net,
            partitions: rng.chance(0.8),
            crashes: rng.chance(0.7),
            torn_write_p: *rng.choose(&[0.0, 0.3]),
            fsync_min_us,
            fsync_max_us: fsync_min_us + rng.range_inclusive(0, 8000),
            pipeline: rng.chance(0.5),
            snapshot_every: *rng.choose(&[8, 20, 50, 200]),
            compact_lag: *rng.choose(&[0, 5, 20]),
            clients: rng.range_inclusive(2, 5) as usize,
            keys: rng.range_inclusive(1, 4) as u8,
            op_timeout_us: rng.range_inclusive(300_000, 1_000_000),
            think_max_us: *rng.choose(&[0, 5_000, 30_000]),
            nemesis_min_us: 50_000,
            nemesis_max_us: rng.range_inclusive(100_000, 600_000),
            membership_changes,
            leader_transfers: rng.chance(0.4),
            leader_fault_p: *rng.choose(&[0.0, 0.3, 0.8]),
            voter_fault_p: *rng.choose(&[0.0, 0.3, 0.7]),
            append_bytes_max: *rng.choose(&[1, 512, 4096]),
            inflight_msgs_max: *rng.choose(&[1, 4, 64]),
            safety_us: rng.range_inclusive(2_000_000, 5_000_000),
            liveness_us: 6_000_000,
            bug: overrides.bug,
            storage: match (overrides.storage, rng.chance(0.5)) {
                (Some(mode), _) => mode,
                (None, true) => StorageMode::Wal,
                (None, false) => StorageMode::Mem,
            },
            bit_flip_p: *rng.choose(&[0.0, 0.0, 0.2]),
            fsync_fail_p: *rng.choose(&[0.0, 0.0, 0.003]),
            wal_buffer_bytes: *rng.choose(&[1, 64, 4096]),
        }
    }

    /// The node ids.
    pub fn node_ids(&self) -> impl Iterator<Item = u64> + use<> {
        1..=self.nodes as u64
    }
}

impl fmt::Display for Params {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "nodes={} voters={} reads={:?} pre_vote={} check_quorum={} heartbeat={} \
             lease_drift={} drift_ppm_max={} clock_jumps={} drop={} dup={} delay={}..{}us \
             slow={}/{}us partitions={} crashes={} torn={} fsync={}..{}us pipeline={} \
             snapshot_every={} compact_lag={} clients={} keys={} op_timeout={}us \
             membership={} transfers={} leader_fault={} voter_fault={} append_bytes_max={} inflight_max={} \
             safety={}us liveness={}us bug={} storage={} bit_flip={} fsync_fail={} wal_buffer={}",
            self.nodes,
            self.initial_voters,
            self.read_mode,
            self.pre_vote,
            self.check_quorum,
            self.heartbeat_ticks,
            self.lease_drift_ticks,
            self.drift_ppm_max,
            self.clock_jumps,
            self.net.drop_p,
            self.net.duplicate_p,
            self.net.delay_min_us,
            self.net.delay_max_us,
            self.net.slow_p,
            self.net.slow_max_us,
            self.partitions,
            self.crashes,
            self.torn_write_p,
            self.fsync_min_us,
            self.fsync_max_us,
            self.pipeline,
            self.snapshot_every,
            self.compact_lag,
            self.clients,
            self.keys,
            self.op_timeout_us,
            self.membership_changes,
            self.leader_transfers,
            self.leader_fault_p,
            self.voter_fault_p,
            self.append_bytes_max,
            self.inflight_msgs_max,
            self.safety_us,
            self.liveness_us,
            self.bug.map_or("none", BugName::name),
            self.storage,
            self.bit_flip_p,
            self.fsync_fail_p,
            self.wal_buffer_bytes,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_a_function_of_the_seed_and_respect_bounds() {
        // Goal: a seed always yields the same parameters, and the lease safety bounds hold.
        // Method: draw many seeds twice and check the rules that make lease reads legitimate.
        for seed in 0..500 {
            let a = Params::from_seed(seed, &Overrides::default());
            let b = Params::from_seed(seed, &Overrides::default());
            assert_eq!(a.to_string(), b.to_string());
            assert!((3..=7).contains(&a.nodes));
            assert!(a.initial_voters >= 3 && a.initial_voters <= a.nodes);
            if a.read_mode == ReadMode::Lease {
                assert!(a.check_quorum);
                assert!(!a.clock_jumps);
                let ratio = (1e6 + a.drift_ppm_max as f64) / (1e6 - a.drift_ppm_max as f64);
                let lease = f64::from(a.election_ticks - a.lease_drift_ticks);
                assert!(ratio * lease < f64::from(a.election_ticks));
                assert!(a.net.delay_bound_us() < a.tick_us);
            }
        }
    }

    #[test]
    fn overrides_pin_their_values_and_bug_names_round_trip() {
        // Goal: the command line can pin the size and the bug. Method: parse and draw.
        let o = Overrides {
            nodes: Some(7),
            bug: Some(BugName::StaleLeaseRead),
            storage: Some(StorageMode::Wal),
        };
        let p = Params::from_seed(1, &o);
        assert_eq!(p.nodes, 7);
        assert_eq!(p.storage, StorageMode::Wal);
        assert_eq!(StorageMode::parse("mem"), Some(StorageMode::Mem));
        assert_eq!(StorageMode::parse("disk"), None);
        assert_eq!(p.read_mode, ReadMode::Lease);
        for b in BugName::ALL {
            assert_eq!(BugName::parse(b.name()), Some(b));
        }
        assert_eq!(BugName::parse("no-such-bug"), None);
    }
}
