//! The simulated cluster: nodes driving `chorus-raft` through its public API, their disks, the
//! network between them, the clients and the nemesis, all advanced by one event queue.
//!
//! # The disk model
//!
//! A node's `RawNode` reads its stable log from a `MemStorage`. The simulator writes a Ready's
//! snapshot, entries and hard state into that storage only when the Ready's simulated fsync
//! completes, and then calls `on_persisted`. So at every instant the storage inside the node *is*
//! the disk: a crash keeps a clone of it and drops everything else (the core, its unstable
//! entries, the state machine, the Readies still waiting for their fsync). A crash may also tear
//! the write in flight: a prefix of its entries reaches the disk, its hard state does not (a
//! write-ahead log that truncates a torn tail at recovery ends in exactly that state).
//!
//! That is the mem storage mode. In the WAL mode (`StorageMode::Wal`, see [`crate::storage`]),
//! the node's log is a real `RaftLogStore` on its own `FaultyDisk`: a Ready is appended to the
//! WAL when it is taken, the fsync completion syncs the WAL before `on_persisted`, a crash is the
//! faulty disk's crash (unsynced bytes lost, maybe a torn prefix kept as data, zeros or garbage)
//! and a restart recovers the WAL from the disk.
//!
//! Readies are persisted in order (a FIFO disk queue). Committed entries of a Ready are applied
//! after that Ready is persisted, which keeps "restore the snapshot, then apply" in order.
//!
//! # The state machine
//!
//! The key-value store is volatile. Every `snapshot_every` applied entries the node records a
//! snapshot in its storage (a durable write) and compacts the log; a restart resumes the store
//! from that snapshot and `config.applied` from its index, and the core hands out the committed
//! entries after it again.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use chorus_raft::{
    ConfChange, ConfChangeSingle, ConfChangeTransition, ConfState, Config, Entry, EntryPayload,
    GroupId, HardState, LogIndex, LogStorage, MemStorage, Message, MessageBody, NodeId,
    ProposeError, RawNode, ReadOnlyOption, ReadState, Ready, Role, Snapshot, SnapshotMeta, Term,
};
use chorus_storage::disk::{CrashOptions, TornFill};
use chorus_storage::wal::{RaftLogStore, WalError, WalPosition};

use crate::history::{History, Instant, OpKind, OpResult, Operation};
use crate::invariants::RaftChecker;
use crate::kv::{Command, Key, KvStore, Value};
use crate::net::{Fate, NetParams, Network, Partition};
use crate::params::{BugName, Params, ReadMode, StorageMode};
use crate::queue::{EventQueue, Time};
use crate::rng::Rng;
use crate::storage::{OpenError, SimLog, WalDisk};
use crate::trace::{TraceHash, fnv1a};

/// The one Raft group of the simulation.
pub const GROUP: GroupId = GroupId(1);

/// Client-to-node latency bounds (clients are never partitioned).
const CLIENT_LATENCY_MIN_US: Time = 100;
const CLIENT_LATENCY_MAX_US: Time = 1_000;
/// How many Readies one drive of a node may take before we call it a livelock.
const READIES_PER_DRIVE_MAX: u32 = 1_000;

/// Something that happens at an instant.
#[derive(Debug)]
enum Event {
    Tick {
        node: u64,
        incarnation: u64,
    },
    Deliver {
        msg: Message,
    },
    FsyncDone {
        node: u64,
        incarnation: u64,
    },
    Restart {
        node: u64,
    },
    SnapshotStatus {
        leader: u64,
        incarnation: u64,
        to: u64,
        success: bool,
    },
    ClientNext {
        client: usize,
    },
    ClientRequest {
        client: usize,
        op: u64,
        key: Key,
        kind: OpKind,
        node: u64,
    },
    ClientReply {
        client: usize,
        op: u64,
        reply: Reply,
    },
    ClientTimeout {
        client: usize,
        op: u64,
    },
    Nemesis,
    /// Crash or isolate `node` if it is still leader of `term`.
    LeaderFault {
        node: u64,
        term: Term,
    },
    /// Crash `node` (if still in `incarnation`) soon after it granted a vote, and restart it
    /// soon: the vote must survive on its disk.
    VoterCrash {
        node: u64,
        incarnation: u64,
    },
}

impl Event {
    fn code(&self) -> u8 {
        match self {
            Event::Tick { .. } => 1,
            Event::Deliver { .. } => 2,
            Event::FsyncDone { .. } => 3,
            Event::Restart { .. } => 4,
            Event::SnapshotStatus { .. } => 5,
            Event::ClientNext { .. } => 6,
            Event::ClientRequest { .. } => 7,
            Event::ClientReply { .. } => 8,
            Event::ClientTimeout { .. } => 9,
            Event::Nemesis => 10,
            Event::LeaderFault { .. } => 11,
            Event::VoterCrash { .. } => 12,
        }
    }
}

/// What a node answers a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reply {
    Put { revision: u64 },
    Get { value: Option<Value>, revision: u64 },
    Cas { done: bool, revision: u64 },
    NotLeader { hint: Option<u64> },
    Rejected,
}

/// A Ready waiting for its fsync.
#[derive(Debug)]
struct PendingWrite {
    number: u64,
    hard_state: Option<HardState>,
    entries: Vec<Entry>,
    snapshot: Option<Snapshot>,
    persisted_messages: Vec<Message>,
    committed_entries: Vec<Entry>,
    /// WAL mode: the term of the entry before `entries`, read when they were appended.
    prev_term: Term,
}

/// A read waiting for the state machine to reach its read index.
#[derive(Clone, Copy, Debug)]
struct WaitingRead {
    index: LogIndex,
    op: u64,
    client: usize,
    key: Key,
}

/// One simulated server.
struct Node {
    id: u64,
    incarnation: u64,
    /// The running core; `None` while crashed.
    raw: Option<RawNode<SimLog>>,
    /// Mem mode: the disk while crashed.
    disk: Option<MemStorage>,
    /// WAL mode: the node's disk (always), and the handle through which Readies are persisted
    /// (while running).
    wal_disk: Option<WalDisk>,
    wal_store: Option<RaftLogStore>,
    /// WAL mode: the disk was corrupted while the node was down; it must refuse to start, and
    /// stays down for the rest of the run.
    corrupt: bool,
    kv: KvStore,
    /// The role the core last reported.
    role: Role,
    /// Shut down by the operator for good (no longer a member); clients stop using it.
    retired: bool,
    applied: LogIndex,
    /// The configuration in force at `applied`.
    conf_state: ConfState,
    pending: VecDeque<PendingWrite>,
    disk_free_at: Time,
    tick_us: Time,
    /// Clock faults: ticks to swallow (a pause) or to double (a jump forward).
    ticks_skip: u32,
    ticks_double: u32,
    last_snapshot: LogIndex,
    /// Reads handed to the core, waiting for their read state: op -> (client, key).
    read_requests: BTreeMap<u64, (usize, Key)>,
    reads: Vec<WaitingRead>,
    /// Writes proposed here: write id -> client.
    writes: BTreeMap<u64, usize>,
}

impl Node {
    /// A node that has not started yet, with its disk.
    fn boot(id: u64, tick_us: Time, disk: MemStorage, params: &Params) -> Node {
        let wal = params.storage == StorageMode::Wal;
        Node {
            id,
            incarnation: 0,
            raw: None,
            disk: (!wal).then_some(disk),
            wal_disk: wal.then(|| WalDisk::new(params.wal_buffer_bytes)),
            wal_store: None,
            corrupt: false,
            kv: KvStore::default(),
            role: Role::Follower,
            retired: false,
            applied: LogIndex(0),
            conf_state: ConfState::default(),
            pending: VecDeque::new(),
            disk_free_at: 0,
            tick_us,
            ticks_skip: 0,
            ticks_double: 0,
            last_snapshot: LogIndex(0),
            read_requests: BTreeMap::new(),
            reads: Vec::new(),
            writes: BTreeMap::new(),
        }
    }
}

/// The operation a client is waiting for.
#[derive(Clone, Copy, Debug)]
struct InFlight {
    op: u64,
    key: Key,
    kind: OpKind,
    invoked: Instant,
    node: u64,
}

/// One client: one operation at a time.
#[derive(Default)]
struct Client {
    leader_guess: Option<u64>,
    current: Option<InFlight>,
    /// The last value this client saw for each key, to aim compare-and-sets.
    last_seen: BTreeMap<Key, Value>,
    ok_after_heal: u64,
    idle: bool,
}

/// A deliberate mistake in the simulator's own server logic (not in the core), used by tests to
/// prove that the end-to-end checkers reject the histories such a server produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HarnessFault {
    /// Answer reads at once from the local state machine, skipping the read index.
    ReadWithoutReadIndex,
    /// Acknowledge a write as soon as it is proposed, before it commits.
    AckWritesOnPropose,
    /// WAL mode: skip the WAL's `sync` when the simulated fsync completes, then call
    /// `on_persisted` anyway (a persistence path that acknowledges what is not durable).
    SkipWalSync,
}

/// The phase a run is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Safety,
    Liveness,
}

/// Counters reported for a run.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub events: u64,
    pub messages_sent: u64,
    pub messages_dropped: u64,
    pub elections: u64,
    pub crashes: u64,
    pub torn_writes: u64,
    pub partitions: u64,
    pub snapshots_installed: u64,
    pub transfers: u64,
    pub conf_changes_proposed: u64,
    pub conf_changes_applied: u64,
    pub ops_ok: u64,
    pub ops_indeterminate: u64,
    pub ops_refused: u64,
    pub step_errors: u64,
    pub max_commit: u64,
    /// Simulated microseconds from healing to the first new commit.
    pub heal_to_commit_us: Option<Time>,
    pub linearizability_unknown: u64,
    /// WAL mode: restarts that recovered the log from the disk.
    pub wal_recoveries: u64,
    /// WAL mode: bits flipped in a down node's WAL (each node refused to start, as it must).
    pub bit_flips: u64,
    /// WAL mode: fsyncs that failed (each stopped its node).
    pub fsync_failures: u64,
    /// WAL mode: segments deleted by purges (each finished after the fsync that covered it).
    pub segments_purged: u64,
}

/// The result of one run.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub violations: Vec<String>,
    pub trace_hash: u64,
    pub stats: Stats,
}

/// A whole simulated cluster for one seed.
pub struct Simulation {
    params: Params,
    queue: EventQueue<Event>,
    rng_net: Rng,
    rng_disk: Rng,
    rng_client: Rng,
    rng_nemesis: Rng,
    net: Network,
    nodes: Vec<Node>,
    clients: Vec<Client>,
    history: History,
    checker: RaftChecker,
    trace: TraceHash,
    verbose: bool,
    stats: Stats,
    phase: Phase,
    op_next: u64,
    healed_at: Time,
    commit_at_heal: u64,
    clients_stop_at: Time,
    events_max: u64,
    fault: Option<HarnessFault>,
    /// A membership change was applied in the liveness phase; reconcile after this event.
    reconcile_pending: bool,
}

impl Simulation {
    /// Builds the cluster of `params` at time zero.
    pub fn new(params: Params, verbose: bool) -> Simulation {
        let mut root = Rng::new(params.seed);
        let mut rng_clock = root.fork();
        let voters = ConfState::with_voters((1..=params.initial_voters as u64).map(NodeId));
        let mut nodes = Vec::new();
        for id in params.node_ids() {
            let drift = rng_clock.range_inclusive(0, 2 * params.drift_ppm_max) as i64
                - params.drift_ppm_max as i64;
            let tick_us = (params.tick_us as i64 * (1_000_000 + drift) / 1_000_000) as Time;
            // Every node boots with the genesis configuration, including the spares that are not
            // in it: a spare that joins later replays the log from index 1 (or gets a snapshot),
            // and its conf changes apply on top of the genesis configuration.
            let boot = MemStorage::new_with_conf_state(voters.clone());
            nodes.push(Node::boot(id, tick_us, boot, &params));
        }
        let clients = (0..params.clients).map(|_| Client::default()).collect();
        let net = Network::new(params.net.clone());
        let mut sim = Simulation {
            queue: EventQueue::default(),
            rng_net: root.fork(),
            rng_disk: root.fork(),
            rng_client: root.fork(),
            rng_nemesis: root.fork(),
            net,
            nodes,
            clients,
            history: History::default(),
            checker: RaftChecker::default(),
            trace: TraceHash::default(),
            verbose,
            stats: Stats::default(),
            phase: Phase::Safety,
            op_next: 1,
            healed_at: 0,
            commit_at_heal: 0,
            clients_stop_at: params.safety_us + params.liveness_us / 2,
            events_max: 5_000_000,
            fault: None,
            reconcile_pending: false,
            params,
        };
        for id in sim.params.node_ids() {
            sim.start_node(id);
        }
        for client in 0..sim.clients.len() {
            let delay = sim.rng_client.range_inclusive(0, 50_000);
            sim.queue.schedule_in(delay, Event::ClientNext { client });
        }
        let first = sim
            .rng_nemesis
            .range_inclusive(sim.params.nemesis_min_us, 500_000);
        sim.queue.schedule_in(first, Event::Nemesis);
        sim
    }

    /// Switches on a harness fault (tests only).
    pub fn with_fault(mut self, fault: HarnessFault) -> Simulation {
        self.fault = Some(fault);
        self
    }

    fn log(&self, text: impl FnOnce() -> String) {
        if self.verbose {
            println!("{:>10} {}", self.queue.now(), text());
        }
    }

    fn violation(&mut self, text: String) {
        self.log(|| format!("VIOLATION {text}"));
        self.checker.report(text);
    }

    fn node(&mut self, id: u64) -> &mut Node {
        &mut self.nodes[id as usize - 1]
    }

    fn instant(&self) -> Instant {
        (self.queue.now(), self.stats.events)
    }

    /// Runs both phases and all end-of-run checks.
    pub fn run(mut self) -> Outcome {
        let heal_at = self.params.safety_us;
        let end_at = heal_at + self.params.liveness_us;
        self.run_until(heal_at);
        self.heal();
        self.run_until(end_at);
        self.check_liveness();
        self.check_history();
        for n in &self.nodes {
            self.trace.write_u64(n.applied.get());
        }
        let mut violations = self.checker.violations().to_vec();
        violations.dedup();
        Outcome {
            violations,
            trace_hash: self.trace.digest(),
            stats: self.stats,
        }
    }

    fn run_until(&mut self, until: Time) {
        while let Some((at, event)) = self.queue.pop_until(until) {
            self.stats.events += 1;
            if self.stats.events > self.events_max {
                self.violation(format!("event budget of {} exceeded", self.events_max));
                return;
            }
            self.trace.begin_event(at, event.code());
            self.dispatch(event);
            if std::mem::take(&mut self.reconcile_pending) {
                self.reconcile_membership();
            }
            if self.checker.violations().len() >= 8 {
                return;
            }
        }
        self.queue.advance_to(until);
    }

    fn dispatch(&mut self, event: Event) {
        match event {
            Event::Tick { node, incarnation } => self.on_tick(node, incarnation),
            Event::Deliver { msg } => self.on_deliver(msg),
            Event::FsyncDone { node, incarnation } => self.on_fsync_done(node, incarnation),
            // Once healed, the operator (`reconcile_membership`) decides who runs.
            Event::Restart { node } if self.phase == Phase::Safety => self.restart(node),
            Event::Restart { .. } => {}
            Event::SnapshotStatus {
                leader,
                incarnation,
                to,
                success,
            } => {
                self.trace.write_u64(leader);
                self.trace.write_u64(to);
                let n = self.node(leader);
                if n.incarnation == incarnation
                    && let Some(raw) = n.raw.as_mut()
                {
                    raw.report_snapshot(NodeId(to), success);
                    self.drive(leader);
                }
            }
            Event::ClientNext { client } => self.client_next(client),
            Event::ClientRequest {
                client,
                op,
                key,
                kind,
                node,
            } => {
                self.trace.write_u64(op);
                self.on_client_request(client, op, key, kind, node)
            }
            Event::ClientReply { client, op, reply } => {
                self.trace.write_u64(op);
                self.on_client_reply(client, op, reply)
            }
            Event::ClientTimeout { client, op } => self.on_client_timeout(client, op),
            Event::Nemesis => self.on_nemesis(),
            Event::LeaderFault { node, term } => self.on_leader_fault(node, term),
            Event::VoterCrash { node, incarnation } => {
                if self.phase == Phase::Safety && self.node(node).incarnation == incarnation {
                    self.log(|| format!("nemesis: crash node {node} after its vote"));
                    self.crash(node);
                    let downtime = self
                        .rng_nemesis
                        .range_inclusive(1_000, 2 * self.params.tick_us);
                    self.queue.schedule_in(downtime, Event::Restart { node });
                }
            }
        }
    }

    // ----- nodes -----

    fn config(&self, id: u64, applied: LogIndex, incarnation: u64) -> Config {
        let p = &self.params;
        let mut c = Config::new(NodeId(id), GROUP);
        c.election_ticks = p.election_ticks;
        c.heartbeat_ticks = p.heartbeat_ticks;
        c.pre_vote = p.pre_vote;
        c.check_quorum = p.check_quorum;
        c.read_only = match p.read_mode {
            ReadMode::ReadIndex => ReadOnlyOption::Safe,
            ReadMode::Lease => ReadOnlyOption::LeaseBased,
        };
        c.lease_drift_ticks = p.lease_drift_ticks;
        c.applied = applied;
        c.seed = p
            .seed
            .wrapping_mul(0x9E37_79B9)
            .wrapping_add(id * 1_000 + incarnation);
        c.inflight_msgs_max = p.inflight_msgs_max;
        c.append_bytes_max = p.append_bytes_max;
        set_injected_bug(&mut c, p.bug);
        c
    }

    /// Opens a stopped node's disk: the log to start from, the snapshot the state machine
    /// resumes from, and the configuration at that snapshot.
    fn open_disk(&mut self, id: u64) -> Option<(SimLog, Snapshot, ConfState)> {
        if self.params.storage == StorageMode::Wal {
            return self.open_wal(id);
        }
        let storage = self
            .node(id)
            .disk
            .take()
            .expect("a stopped node has a disk");
        let snapshot = storage.snapshot(LogIndex(0)).unwrap_or_default();
        let conf_state = storage.conf_state().clone();
        Some((SimLog::Mem(storage), snapshot, conf_state))
    }

    /// WAL mode: recovers the node's log from its disk. Every crash so far only lost unsynced
    /// data or tore the last write (flipped bits are checked where they are flipped), so a
    /// recovery that fails is a violation: the WAL cannot recover from a legal crash.
    fn open_wal(&mut self, id: u64) -> Option<(SimLog, Snapshot, ConfState)> {
        let genesis = ConfState::with_voters((1..=self.params.initial_voters as u64).map(NodeId));
        let n = self.node(id);
        let restart = n.incarnation > 0;
        let disk = n.wal_disk.as_mut().expect("WAL mode");
        let recovered = match disk.open(&genesis) {
            Ok(r) => r,
            Err(e) => {
                self.violation(format!(
                    "node {id} cannot recover its WAL after a crash: {e}"
                ));
                return None;
            }
        };
        n.wal_store = Some(recovered.store.clone());
        if restart {
            self.stats.wal_recoveries += 1;
        }
        // The recovered log is what this node holds now; entries a crash kept beyond what was
        // acknowledged (a later Ready synced with an earlier one, or a torn write) count too.
        let store = &recovered.store;
        let (first, last) = (store.first_index(), store.last_index());
        if let (Ok(first), Ok(last)) = (first, last)
            && first <= last
        {
            let prev = store.term(first.prev()).unwrap_or(Term(0));
            match store.entries(first, last.next(), u64::MAX) {
                Ok(entries) => self.checker.on_persist_entries(NodeId(id), prev, &entries),
                Err(e) => self.violation(format!("node {id}: recovered log unreadable: {e}")),
            }
        }
        let conf_state = recovered.conf_state.clone();
        Some((SimLog::Wal(recovered.store), recovered.snapshot, conf_state))
    }

    /// Starts (or restarts) a node from its disk.
    fn start_node(&mut self, id: u64) {
        if self.node(id).corrupt {
            return;
        }
        let Some((storage, snapshot, conf_state)) = self.open_disk(id) else {
            return;
        };
        let kv = match KvStore::decode(&snapshot.data) {
            Ok(kv) => kv,
            Err(e) => {
                self.violation(format!(
                    "node {id}: persisted snapshot does not decode: {e:?}"
                ));
                KvStore::default()
            }
        };
        let applied = snapshot.meta.index;
        let incarnation = self.node(id).incarnation;
        let config = self.config(id, applied, incarnation);
        let raw = match RawNode::new(&config, storage.clone()) {
            Ok(raw) => raw,
            Err(e) => {
                self.violation(format!("node {id} cannot start from its disk: {e}"));
                if let SimLog::Mem(storage) = storage {
                    self.node(id).disk = Some(storage);
                }
                return;
            }
        };
        let tick_us = self.node(id).tick_us;
        let n = self.node(id);
        n.raw = Some(raw);
        n.retired = false;
        n.role = Role::Follower;
        n.kv = kv;
        n.applied = applied;
        n.last_snapshot = applied;
        n.conf_state = conf_state;
        n.ticks_skip = 0;
        n.ticks_double = 0;
        self.log(|| format!("node {id} starts (incarnation {incarnation}, applied {applied})"));
        let first_tick = self.rng_disk.range_inclusive(1, tick_us);
        self.queue.schedule_in(
            first_tick,
            Event::Tick {
                node: id,
                incarnation,
            },
        );
    }

    fn crash(&mut self, id: u64) {
        if self.params.storage == StorageMode::Wal {
            self.crash_wal(id);
            return;
        }
        let torn = self.rng_disk.chance(self.params.torn_write_p);
        let n = self.node(id);
        let Some(raw) = n.raw.take() else { return };
        let SimLog::Mem(mut disk) = raw.storage().clone() else {
            unreachable!("mem mode");
        };
        let mut torn_entries = Vec::new();
        if torn
            && let Some(w) = n.pending.front()
            && w.snapshot.is_none()
            && w.entries.len() > 1
        {
            torn_entries = w.entries[..w.entries.len() / 2].to_vec();
        }
        n.incarnation += 1;
        n.pending.clear();
        n.read_requests.clear();
        n.reads.clear();
        n.writes.clear();
        n.kv = KvStore::default();
        if !torn_entries.is_empty() {
            if let Err(e) = disk.append(&torn_entries) {
                self.violation(format!("node {id}: torn write does not append: {e}"));
            } else {
                self.stats.torn_writes += 1;
                let prev = disk.term(torn_entries[0].index.prev()).unwrap_or(Term(0));
                self.checker
                    .on_persist_entries(NodeId(id), prev, &torn_entries);
            }
        }
        self.node(id).disk = Some(disk);
        self.stats.crashes += 1;
        let kept = torn_entries.len();
        self.log(|| format!("node {id} crashes (torn entries kept: {kept})"));
    }

    /// WAL mode: the node stops and its disk loses what was not synced, except maybe a torn
    /// prefix of the last write (its data, zeros or garbage). While it is down, a bit of its WAL
    /// may flip.
    fn crash_wal(&mut self, id: u64) {
        let n = self.node(id);
        if n.raw.take().is_none() {
            return;
        }
        n.wal_store = None;
        n.incarnation += 1;
        n.pending.clear();
        n.read_requests.clear();
        n.reads.clear();
        n.writes.clear();
        n.kv = KvStore::default();
        let unsynced = n.wal_disk.as_ref().expect("WAL mode").unsynced_bytes();
        let options = if unsynced > 0 && self.rng_disk.chance(self.params.torn_write_p) {
            let torn_bytes = self.rng_disk.range_inclusive(1, unsynced);
            let garbage = TornFill::Garbage {
                seed: self.rng_disk.below(u64::MAX),
            };
            let torn_fill =
                *self
                    .rng_disk
                    .choose(&[TornFill::Data, TornFill::Data, TornFill::Zeros, garbage]);
            self.stats.torn_writes += 1;
            CrashOptions {
                torn_bytes,
                torn_fill,
            }
        } else {
            CrashOptions::LOSE_UNSYNCED
        };
        let disk = self.node(id).wal_disk.as_mut().expect("WAL mode");
        disk.crash(options);
        self.stats.crashes += 1;
        self.log(|| format!("node {id} crashes (unsynced {unsynced} bytes, {options:?})"));
        self.maybe_flip_bit(id);
    }

    /// WAL mode: flips a bit of a down node's WAL, which must then refuse to start with
    /// `Corrupt`. The node stays down for the rest of the run (wiping a voter's disk and letting
    /// it rejoin empty is not safe in general), so this is done only in runs without membership
    /// changes and only while the nodes still able to start are more than a majority.
    fn maybe_flip_bit(&mut self, id: u64) {
        let p = &self.params;
        if p.bit_flip_p == 0.0 || p.membership_changes || self.phase != Phase::Safety {
            return;
        }
        let down_for_good = self.nodes.iter().filter(|n| n.corrupt).count();
        if down_for_good + 1 > (p.nodes - 1) / 2 || !self.rng_disk.chance(p.bit_flip_p) {
            return;
        }
        let rng = &mut self.rng_disk;
        let disk = self.nodes[id as usize - 1]
            .wal_disk
            .as_mut()
            .expect("WAL mode");
        let Some((file, offset)) = disk.flip_bit(|n| rng.below(n)) else {
            return;
        };
        let genesis = ConfState::default();
        match disk.open(&genesis) {
            Err(OpenError::Wal(WalError::Corrupt { .. })) => {}
            Err(e) => self.violation(format!(
                "node {id}: a bit flipped at {}:{offset} gives {e}, not Corrupt",
                file.display()
            )),
            Ok(_) => self.violation(format!(
                "node {id}: the WAL starts despite a bit flipped at {}:{offset}",
                file.display()
            )),
        }
        self.log(|| format!("node {id}: bit flipped at {}:{offset}", file.display()));
        self.stats.bit_flips += 1;
        let n = self.node(id);
        n.corrupt = true;
        n.retired = true;
    }

    fn restart(&mut self, id: u64) {
        if self.node(id).raw.is_none() {
            self.start_node(id);
        }
    }

    fn on_tick(&mut self, id: u64, incarnation: u64) {
        self.trace.write_u64(id);
        let n = self.node(id);
        if n.incarnation != incarnation || n.raw.is_none() {
            return;
        }
        let tick_us = n.tick_us;
        let ticks = if n.ticks_skip > 0 {
            n.ticks_skip -= 1;
            0
        } else if n.ticks_double > 0 {
            n.ticks_double -= 1;
            2
        } else {
            1
        };
        let raw = n.raw.as_mut().expect("checked above");
        for _ in 0..ticks {
            raw.tick();
        }
        self.queue.schedule_in(
            tick_us,
            Event::Tick {
                node: id,
                incarnation,
            },
        );
        self.drive(id);
    }

    fn on_deliver(&mut self, msg: Message) {
        let to = msg.to.get();
        self.trace.write_u64(msg.from.get());
        self.trace.write_u64(to);
        self.trace.write_u64(msg.term.get());
        self.trace.write_bytes(msg.body.kind().as_bytes());
        if self.verbose {
            self.log(|| {
                format!(
                    "deliver {} -> {} t{} {:?}",
                    msg.from,
                    to,
                    msg.term,
                    short(&msg)
                )
            });
        }
        let Some(raw) = self.node(to).raw.as_mut() else {
            return;
        };
        if let Err(e) = raw.step(msg) {
            self.stats.step_errors += 1;
            self.log(|| format!("node {to} refuses a message: {e}"));
        }
        self.drive(to);
    }

    fn send(&mut self, msg: Message) {
        let (from, to) = (msg.from.get(), msg.to.get());
        if to == 0 || to > self.params.nodes as u64 || to == from {
            self.violation(format!("node {from} sends a message to invalid node {to}"));
            return;
        }
        if msg.group_id != GROUP {
            self.violation(format!(
                "node {from} sends a message of group {}",
                msg.group_id
            ));
            return;
        }
        self.stats.messages_sent += 1;
        if let MessageBody::VoteResponse { reject: false } = msg.body {
            let p = &self.params;
            if self.phase == Phase::Safety && p.crashes && self.rng_nemesis.chance(p.voter_fault_p)
            {
                let incarnation = self.nodes[from as usize - 1].incarnation;
                let delay = self.rng_nemesis.range_inclusive(0, p.net.delay_max_us);
                self.queue.schedule_in(
                    delay,
                    Event::VoterCrash {
                        node: from,
                        incarnation,
                    },
                );
            }
        }
        let is_snapshot = matches!(msg.body, MessageBody::Snapshot { .. });
        let incarnation = self.node(from).incarnation;
        match self.net.route(&mut self.rng_net, from, to) {
            Fate::Delivered(delays) => {
                let last = delays.iter().copied().max().unwrap_or(0);
                for d in delays {
                    self.queue
                        .schedule_in(d, Event::Deliver { msg: msg.clone() });
                }
                if is_snapshot {
                    let success = true;
                    let ev = Event::SnapshotStatus {
                        leader: from,
                        incarnation,
                        to,
                        success,
                    };
                    self.queue.schedule_in(last, ev);
                }
            }
            Fate::Dropped | Fate::Blocked => {
                self.stats.messages_dropped += 1;
                if is_snapshot {
                    let success = false;
                    let ev = Event::SnapshotStatus {
                        leader: from,
                        incarnation,
                        to,
                        success,
                    };
                    self.queue.schedule_in(self.params.net.delay_max_us, ev);
                }
            }
        }
    }

    /// Takes and handles Readies until the node has none (or must wait for its disk).
    fn drive(&mut self, id: u64) {
        for _ in 0..READIES_PER_DRIVE_MAX {
            let pipeline = self.params.pipeline;
            let n = self.node(id);
            let Some(raw) = n.raw.as_mut() else { return };
            if !raw.has_ready() || (!pipeline && !n.pending.is_empty()) {
                return;
            }
            let ready = raw.ready();
            self.handle_ready(id, ready);
        }
        self.violation(format!(
            "node {id} still has a Ready after {READIES_PER_DRIVE_MAX}"
        ));
    }

    fn handle_ready(&mut self, id: u64, ready: Ready) {
        let prev_term = if self.params.storage == StorageMode::Wal {
            self.append_to_wal(id, &ready)
        } else {
            Term(0)
        };
        let Ready {
            number,
            soft_state,
            hard_state,
            snapshot,
            entries,
            messages,
            persisted_messages,
            committed_entries,
            read_states,
        } = ready;
        if let Some(ss) = soft_state {
            self.node(id).role = ss.role;
            if ss.role == Role::Leader {
                self.on_became_leader(id);
            }
        }
        if let Some(hs) = hard_state {
            let n = &self.nodes[id as usize - 1];
            if n.role == Role::Leader {
                let raw = n.raw.as_ref().expect("running node");
                let entry_term = |i: LogIndex| raw.term(i).ok();
                self.checker
                    .on_leader_commit(NodeId(id), hs.term, hs.commit, entry_term);
            }
        }
        for rs in read_states {
            self.on_read_state(id, rs);
        }
        for m in messages {
            self.send(m);
        }
        let needs_fsync = hard_state.is_some() || !entries.is_empty() || snapshot.is_some();
        let write = PendingWrite {
            number,
            hard_state,
            entries,
            snapshot,
            persisted_messages,
            committed_entries,
            prev_term,
        };
        let (fsync_min, fsync_max) = (self.params.fsync_min_us, self.params.fsync_max_us);
        let latency = if needs_fsync {
            self.rng_disk.range_inclusive(fsync_min, fsync_max)
        } else {
            0
        };
        let now = self.queue.now();
        let n = self.node(id);
        if !needs_fsync && n.pending.is_empty() {
            self.complete_write(id, write);
            return;
        }
        let at = now.max(n.disk_free_at) + latency;
        n.disk_free_at = at;
        n.pending.push_back(write);
        let incarnation = n.incarnation;
        self.queue.schedule_at(
            at,
            Event::FsyncDone {
                node: id,
                incarnation,
            },
        );
    }

    /// WAL mode: appends what the Ready persists (buffered, not synced) and returns the term of
    /// the entry before its entries, for the checker. The application keeps a received
    /// snapshot's data durably before the WAL records it.
    fn append_to_wal(&mut self, id: u64, ready: &Ready) -> Term {
        let n = self.node(id);
        let store = n.wal_store.clone().expect("a running node has its WAL");
        if let Some(snapshot) = &ready.snapshot {
            let disk = n.wal_disk.as_mut().expect("WAL mode");
            disk.keep_snapshot(snapshot.meta.index, snapshot.data.clone());
        }
        if let Err(e) = store.persist_ready(ready) {
            self.violation(format!(
                "node {id}: Ready {} does not persist: {e}",
                ready.number
            ));
        }
        match ready.entries.first() {
            Some(e) => store.term(e.index.prev()).unwrap_or(Term(0)),
            None => Term(0),
        }
    }

    /// WAL mode: the simulated fsync completes by syncing the WAL. Returns false if the sync
    /// failed, in which case the node has stopped (a failed fsync is never retried: the kernel
    /// may have dropped the data) and restarts from its disk later.
    fn sync_wal(&mut self, id: u64) -> bool {
        if self.fault == Some(HarnessFault::SkipWalSync) {
            return true;
        }
        // Faults stop when the liveness phase begins.
        let fail = self.phase == Phase::Safety && self.rng_disk.chance(self.params.fsync_fail_p);
        let n = self.node(id);
        let disk = n.wal_disk.as_ref().expect("WAL mode");
        // Only a sync that reaches the disk can fail (and consume the armed failure).
        let fail = fail && disk.has_unsynced();
        if fail {
            disk.disk.fail_next_sync();
        }
        let store = n.wal_store.as_ref().expect("a running node has its WAL");
        // A purge prepared at a snapshot finishes once an fsync covers it.
        let synced = store
            .sync()
            .and_then(|_| n.wal_disk.as_mut().expect("WAL mode").finish_purge());
        let e = match synced {
            Ok(purged) => {
                self.stats.segments_purged += purged as u64;
                return true;
            }
            Err(e) => e,
        };
        if !fail {
            self.violation(format!("node {id}: WAL sync failed: {e}"));
        }
        self.log(|| format!("node {id}: fsync fails ({e}), the node stops"));
        self.stats.fsync_failures += 1;
        self.crash(id);
        let downtime = self.rng_nemesis.range_inclusive(10_000, 500_000);
        self.queue
            .schedule_in(downtime, Event::Restart { node: id });
        false
    }

    fn on_fsync_done(&mut self, id: u64, incarnation: u64) {
        self.trace.write_u64(id);
        let n = self.node(id);
        if n.incarnation != incarnation || n.raw.is_none() {
            return;
        }
        if self.params.storage == StorageMode::Wal && !self.sync_wal(id) {
            return;
        }
        let n = self.node(id);
        let write = n
            .pending
            .pop_front()
            .expect("one pending write per fsync event");
        self.complete_write(id, write);
        self.drive(id);
    }

    /// The write of one Ready reached the disk: store it, acknowledge it, send what waited for
    /// it, and apply its committed entries.
    fn complete_write(&mut self, id: u64, write: PendingWrite) {
        if let Some(snapshot) = write.snapshot {
            self.install_snapshot(id, snapshot);
        }
        let wal = self.params.storage == StorageMode::Wal;
        if !write.entries.is_empty() && wal {
            self.checker
                .on_persist_entries(NodeId(id), write.prev_term, &write.entries);
        } else if !write.entries.is_empty() {
            let raw = self.node(id).raw.as_mut().expect("running node");
            match mem_storage(raw).append(&write.entries) {
                Ok(()) => {
                    let first = write.entries[0].index;
                    let prev = raw.storage().term(first.prev()).unwrap_or(Term(0));
                    self.checker
                        .on_persist_entries(NodeId(id), prev, &write.entries);
                }
                Err(e) => self.violation(format!("node {id}: Ready entries do not append: {e}")),
            }
        }
        let raw = self.node(id).raw.as_mut().expect("running node");
        if let Some(hs) = write.hard_state.filter(|_| !wal) {
            mem_storage(raw).set_hard_state(hs);
        }
        raw.on_persisted(write.number);
        for m in write.persisted_messages {
            self.send(m);
        }
        self.apply_entries(id, write.committed_entries);
    }

    fn install_snapshot(&mut self, id: u64, snapshot: Snapshot) {
        let index = snapshot.meta.index;
        self.checker
            .on_snapshot(NodeId(id), index, fnv1a(&snapshot.data));
        let kv = KvStore::decode(&snapshot.data);
        let raw = self.node(id).raw.as_mut().expect("running node");
        // In WAL mode the snapshot reached the WAL when its Ready was taken.
        if let SimLog::Mem(storage) = raw.storage_mut()
            && let Err(e) = storage.apply_snapshot(snapshot.clone())
        {
            self.violation(format!(
                "node {id}: snapshot at {index} does not install: {e}"
            ));
            return;
        }
        let Ok(kv) = kv else {
            self.violation(format!("node {id}: snapshot at {index} does not decode"));
            return;
        };
        self.stats.snapshots_installed += 1;
        let n = self.node(id);
        if index <= n.applied {
            let applied = n.applied;
            self.violation(format!(
                "node {id}: snapshot at {index} is behind applied {applied}"
            ));
            return;
        }
        n.kv = kv;
        n.applied = index;
        n.last_snapshot = index;
        n.conf_state = snapshot.meta.conf_state.clone();
        self.log(|| format!("node {id} installs snapshot at {index}"));
        self.answer_writes_from_outcomes(id);
        self.serve_reads(id);
    }

    fn apply_entries(&mut self, id: u64, entries: Vec<Entry>) {
        if entries.is_empty() {
            return;
        }
        let mut conf_changed = false;
        for entry in entries {
            let applied = self.node(id).applied;
            if entry.index != applied.next() {
                self.violation(format!(
                    "node {id}: handed entry {} to apply after {applied}",
                    entry.index
                ));
                return;
            }
            self.checker.on_apply(NodeId(id), &entry);
            match &entry.payload {
                EntryPayload::Normal(data) if data.is_empty() => {}
                EntryPayload::Normal(data) => self.apply_command(id, &entry, data),
                EntryPayload::ConfChange(cc) => {
                    self.apply_conf_change(id, cc);
                    conf_changed = true;
                }
            }
            self.node(id).applied = entry.index;
            self.stats.max_commit = self.stats.max_commit.max(entry.index.get());
            if self.phase == Phase::Liveness
                && self.stats.heal_to_commit_us.is_none()
                && entry.index.get() > self.commit_at_heal
            {
                self.stats.heal_to_commit_us = Some(self.queue.now() - self.healed_at);
            }
        }
        let n = self.node(id);
        let applied = n.applied;
        n.raw.as_mut().expect("running node").on_applied(applied);
        self.maybe_snapshot(id, conf_changed);
        self.serve_reads(id);
    }

    fn apply_command(&mut self, id: u64, entry: &Entry, data: &Bytes) {
        let cmd = match Command::decode(data) {
            Ok(cmd) => cmd,
            Err(e) => {
                self.violation(format!(
                    "node {id}: entry {} does not decode: {e:?}",
                    entry.index
                ));
                return;
            }
        };
        let n = self.node(id);
        if n.kv.outcome(cmd.id()).is_some() {
            self.violation(format!("node {id}: write {} applied twice", cmd.id()));
            return;
        }
        let done = n.kv.apply(&cmd);
        let revision = entry.index.get();
        if let Some(client) = n.writes.remove(&cmd.id()) {
            let reply = match cmd {
                Command::Put { .. } => Reply::Put { revision },
                Command::Cas { .. } => Reply::Cas { done, revision },
            };
            self.reply(client, cmd.id(), reply);
        }
    }

    fn apply_conf_change(&mut self, id: u64, cc: &ConfChange) {
        let raw = self.node(id).raw.as_mut().expect("running node");
        match raw.apply_conf_change(cc) {
            Ok(cs) => {
                self.log(|| format!("node {id} applies {cc:?} -> {cs:?}"));
                self.node(id).conf_state = cs;
                self.stats.conf_changes_applied += 1;
                // Not at once: the operator may shut down this very node, which is in the middle
                // of applying.
                if self.phase == Phase::Liveness {
                    self.reconcile_pending = true;
                }
            }
            Err(e) => self.violation(format!("node {id}: committed {cc:?} does not apply: {e}")),
        }
    }

    /// Takes a snapshot every `snapshot_every` applied entries, and after every membership
    /// change: the core refuses a snapshot whose configuration does not include it (as etcd's
    /// raft does), so a node added after the latest snapshot could never catch up from it. A real
    /// server builds the snapshot on demand with its current configuration; taking one at each
    /// change has the same effect here.
    fn maybe_snapshot(&mut self, id: u64, conf_changed: bool) {
        let (every, lag) = (self.params.snapshot_every, self.params.compact_lag);
        let wal = self.params.storage == StorageMode::Wal;
        let n = self.node(id);
        let due = n.applied.get() >= n.last_snapshot.get() + every;
        let conf_snapshot = conf_changed && n.applied > n.last_snapshot;
        if !due && !conf_snapshot {
            return;
        }
        let index = n.applied;
        let data = n.kv.encode();
        let conf_state = n.conf_state.clone();
        n.last_snapshot = index;
        if wal {
            self.snapshot_to_wal(id, index, conf_state, data.clone());
            self.checker.on_snapshot(NodeId(id), index, fnv1a(&data));
            return;
        }
        let raw = n.raw.as_mut().expect("running node");
        let storage = mem_storage(raw);
        if let Err(e) = storage.create_snapshot(index, conf_state.clone(), data.clone()) {
            self.violation(format!("node {id}: cannot snapshot at {index}: {e}"));
            return;
        }
        // The stored configuration is the one a restart starts from; it must match the
        // snapshot the restart resumes from, not the latest applied change.
        storage.set_conf_state(conf_state);
        let compact_to = LogIndex(index.get().saturating_sub(lag));
        let first = storage.first_index().unwrap_or(LogIndex(1));
        if compact_to >= first
            && let Err(e) = storage.compact(compact_to)
        {
            self.violation(format!("node {id}: cannot compact to {compact_to}: {e}"));
        }
        self.checker.on_snapshot(NodeId(id), index, fnv1a(&data));
    }

    /// WAL mode: keeps the snapshot's data, records the snapshot and its configuration in the
    /// WAL, compacts the log behind it and recycles segments nobody needs.
    fn snapshot_to_wal(&mut self, id: u64, index: LogIndex, conf_state: ConfState, data: Bytes) {
        let lag = self.params.compact_lag;
        let n = self.node(id);
        let disk = n.wal_disk.as_mut().expect("WAL mode");
        // A snapshot received from the leader may already be in the WAL ahead of what this node
        // has applied (it was appended when its Ready was taken); nothing older may follow it.
        if disk.snapshot_index() >= index {
            return;
        }
        // The stored log, not the core's view: the core may already hold a newer snapshot from
        // the leader, not yet handed out in a Ready, and answer Compacted for older indices.
        let store = n.wal_store.clone().expect("a running node has its WAL");
        let term = match store.term(index) {
            Ok(t) => t,
            Err(e) => {
                self.violation(format!("node {id}: no term for applied index {index}: {e}"));
                return;
            }
        };
        disk.keep_snapshot(index, data.clone());
        let meta = SnapshotMeta {
            index,
            term,
            conf_state: conf_state.clone(),
        };
        let mut result = store.set_snapshot(Snapshot { meta, data });
        result = result.and_then(|_| store.set_conf_state(conf_state));
        let compact_to = LogIndex(index.get().saturating_sub(lag));
        let first = store.first_index().unwrap_or(LogIndex(1));
        if compact_to >= first {
            result = result.and_then(|_| store.compact(compact_to));
        }
        if let Err(e) = result.and_then(|_| disk.prepare_purge().map(|()| WalPosition::default())) {
            self.violation(format!(
                "node {id}: cannot snapshot at {index} in the WAL: {e}"
            ));
        }
    }

    fn on_became_leader(&mut self, id: u64) {
        self.stats.elections += 1;
        let raw = self.nodes[id as usize - 1]
            .raw
            .as_ref()
            .expect("running node");
        let status = raw.status();
        let term = status.term;
        if self.verbose {
            println!(
                "{:>10} node {id} becomes leader of term {term}",
                self.queue.now()
            );
        }
        self.checker.on_leader(NodeId(id), term);
        let p = &self.params;
        if self.phase == Phase::Safety
            && (p.crashes || p.partitions)
            && self.rng_nemesis.chance(p.leader_fault_p)
        {
            // Half of the time within a couple of message delays and an fsync (the first entries
            // of the term have not reached a quorum yet), otherwise within a few heartbeats.
            let within = if self.rng_nemesis.chance(0.5) {
                2 * p.net.delay_max_us + p.fsync_max_us
            } else {
                4 * u64::from(p.heartbeat_ticks) * p.tick_us
            };
            let delay = self.rng_nemesis.range_inclusive(0, within);
            self.queue
                .schedule_in(delay, Event::LeaderFault { node: id, term });
        }
        // Leader completeness: the new leader's log (stable and unstable) holds every entry
        // committed in an earlier term.
        let need = self.checker.committed_before(term);
        let first = raw.storage().first_index().unwrap_or(LogIndex(1));
        let last = LogIndex(status.last_index.get().min(need));
        let mut log = Vec::new();
        let mut i = first;
        while i <= last {
            match raw.term(i) {
                Ok(t) => log.push((i, t)),
                Err(_) => break,
            }
            i = i.next();
        }
        self.checker
            .on_leader_log(NodeId(id), term, status.last_index, &log);
    }

    // ----- clients -----

    fn client_next(&mut self, client: usize) {
        if self.queue.now() >= self.clients_stop_at {
            self.clients[client].idle = true;
            return;
        }
        let op = self.op_next;
        self.op_next += 1;
        let key = self.rng_client.below(u64::from(self.params.keys)) as Key;
        let kind = match self.rng_client.below(100) {
            0..40 => OpKind::Get,
            40..75 => OpKind::Put { value: op },
            _ => {
                let c = &self.clients[client];
                let expected = if self.rng_client.chance(0.8) {
                    c.last_seen.get(&key).copied()
                } else {
                    None
                };
                OpKind::Cas {
                    expected,
                    value: op,
                }
            }
        };
        // Clients know the endpoints of every node the operator has not retired.
        let endpoints: Vec<u64> = self
            .nodes
            .iter()
            .filter(|n| !n.retired)
            .map(|n| n.id)
            .collect();
        let random_node = *self.rng_client.choose(&endpoints);
        let guess = self.clients[client].leader_guess;
        let node = match guess {
            Some(n) if !self.rng_client.chance(0.1) && !self.nodes[n as usize - 1].retired => n,
            _ => random_node,
        };
        let invoked = self.instant();
        self.clients[client].current = Some(InFlight {
            op,
            key,
            kind,
            invoked,
            node,
        });
        self.log(|| format!("client {client} op {op} {kind:?} key {key} -> node {node}"));
        let latency = self
            .rng_client
            .range_inclusive(CLIENT_LATENCY_MIN_US, CLIENT_LATENCY_MAX_US);
        self.queue.schedule_in(
            latency,
            Event::ClientRequest {
                client,
                op,
                key,
                kind,
                node,
            },
        );
        let timeout = self.params.op_timeout_us;
        self.queue
            .schedule_in(timeout, Event::ClientTimeout { client, op });
    }

    fn on_client_request(&mut self, client: usize, op: u64, key: Key, kind: OpKind, id: u64) {
        let fault = self.fault;
        let n = self.node(id);
        let Some(raw) = n.raw.as_mut() else { return };
        if kind == OpKind::Get && fault == Some(HarnessFault::ReadWithoutReadIndex) {
            let reply = Reply::Get {
                value: n.kv.get(key),
                revision: n.applied.get(),
            };
            self.reply(client, op, reply);
            return;
        }
        let refused = match kind {
            OpKind::Get => {
                n.read_requests.insert(op, (client, key));
                let result = raw.read_index(Bytes::copy_from_slice(&op.to_le_bytes()));
                if result.is_err() {
                    n.read_requests.remove(&op);
                }
                result.err()
            }
            OpKind::Put { value } | OpKind::Cas { value, .. } => {
                let cmd = match kind {
                    OpKind::Cas { expected, .. } => Command::Cas {
                        key,
                        expected,
                        value,
                    },
                    _ => Command::Put { key, value },
                };
                match raw.propose(cmd.encode()) {
                    Ok(_) if fault == Some(HarnessFault::AckWritesOnPropose) => {
                        let revision = n.applied.get().max(1);
                        let reply = match cmd {
                            Command::Put { .. } => Reply::Put { revision },
                            // Guess the outcome from the local state, as a careless server might.
                            Command::Cas { expected, .. } => Reply::Cas {
                                done: n.kv.get(key) == expected,
                                revision,
                            },
                        };
                        self.reply(client, op, reply);
                        None
                    }
                    Ok(_) => {
                        n.writes.insert(value, client);
                        None
                    }
                    Err(e) => Some(e),
                }
            }
        };
        if let Some(e) = refused {
            let reply = match e {
                ProposeError::NotLeader { leader_hint } => Reply::NotLeader {
                    hint: leader_hint.map(NodeId::get),
                },
                _ => Reply::Rejected,
            };
            self.reply(client, op, reply);
        }
        self.drive(id);
    }

    fn reply(&mut self, client: usize, op: u64, reply: Reply) {
        let latency = self
            .rng_client
            .range_inclusive(CLIENT_LATENCY_MIN_US, CLIENT_LATENCY_MAX_US);
        self.queue
            .schedule_in(latency, Event::ClientReply { client, op, reply });
    }

    fn on_read_state(&mut self, id: u64, rs: ReadState) {
        let Ok(bytes) = <[u8; 8]>::try_from(rs.context.as_ref()) else {
            self.violation(format!("node {id}: read state with a foreign context"));
            return;
        };
        let op = u64::from_le_bytes(bytes);
        let n = self.node(id);
        if let Some((client, key)) = n.read_requests.remove(&op) {
            n.reads.push(WaitingRead {
                index: rs.index,
                op,
                client,
                key,
            });
            self.serve_reads(id);
        }
    }

    fn serve_reads(&mut self, id: u64) {
        let n = self.node(id);
        let applied = n.applied;
        let (ready, waiting): (Vec<WaitingRead>, Vec<WaitingRead>) =
            n.reads.drain(..).partition(|r| r.index <= applied);
        n.reads = waiting;
        let answers: Vec<(usize, u64, Option<Value>)> = ready
            .iter()
            .map(|r| (r.client, r.op, n.kv.get(r.key)))
            .collect();
        for (client, op, value) in answers {
            self.reply(
                client,
                op,
                Reply::Get {
                    value,
                    revision: applied.get(),
                },
            );
        }
    }

    /// After a snapshot, answers the writes proposed here that the snapshot covers. The index
    /// each was applied at is not known from a snapshot, so the answer carries revision zero
    /// ("unknown"), which the revision check skips.
    fn answer_writes_from_outcomes(&mut self, id: u64) {
        let n = self.node(id);
        let done: Vec<(u64, usize, bool)> = n
            .writes
            .iter()
            .filter_map(|(&w, &c)| n.kv.outcome(w).map(|ok| (w, c, ok)))
            .collect();
        for (w, client, ok) in done {
            self.node(id).writes.remove(&w);
            self.reply(
                client,
                w,
                Reply::Cas {
                    done: ok,
                    revision: 0,
                },
            );
        }
    }

    fn on_client_reply(&mut self, client: usize, op: u64, reply: Reply) {
        let Some(current) = self.clients[client].current else {
            return;
        };
        if current.op != op {
            return;
        }
        let (result, revision) = match (reply, current.kind) {
            (Reply::NotLeader { hint }, _) => {
                self.clients[client].leader_guess = hint;
                self.finish_op(client, None);
                return;
            }
            (Reply::Rejected, _) => {
                self.finish_op(client, None);
                return;
            }
            (Reply::Put { revision }, _) => (OpResult::PutOk, revision),
            // A write answered from a snapshot's outcome table: a put reports as done.
            (Reply::Cas { revision, .. }, OpKind::Put { .. }) => (OpResult::PutOk, revision),
            (Reply::Cas { done, revision }, _) => (OpResult::CasOk(done), revision),
            (Reply::Get { value, revision }, _) => (OpResult::GetOk(value), revision),
        };
        let c = &mut self.clients[client];
        c.leader_guess = Some(current.node);
        match (current.kind, result) {
            (OpKind::Put { value }, _) | (OpKind::Cas { value, .. }, OpResult::CasOk(true)) => {
                c.last_seen.insert(current.key, value);
            }
            (_, OpResult::GetOk(Some(v))) => {
                c.last_seen.insert(current.key, v);
            }
            _ => {}
        }
        if self.phase == Phase::Liveness {
            c.ok_after_heal += 1;
        }
        self.stats.ops_ok += 1;
        self.finish_op(client, Some((result, revision)));
    }

    fn on_client_timeout(&mut self, client: usize, op: u64) {
        let Some(current) = self.clients[client].current else {
            return;
        };
        if current.op != op {
            return;
        }
        self.stats.ops_indeterminate += 1;
        self.clients[client].leader_guess = None;
        self.finish_op(client, Some((OpResult::Indeterminate, 0)));
    }

    /// Ends the client's current operation, recording it unless it certainly did not happen.
    fn finish_op(&mut self, client: usize, outcome: Option<(OpResult, u64)>) {
        let current = self.clients[client]
            .current
            .take()
            .expect("an operation in flight");
        let completed = self.instant();
        match outcome {
            Some((result, revision)) => {
                self.trace.write_u64(current.op);
                self.trace.write_u64(revision);
                self.log(|| {
                    format!(
                        "client {client} op {} -> {result:?} rev {revision}",
                        current.op
                    )
                });
                self.history.record(Operation {
                    id: current.op,
                    client: client as u32,
                    key: current.key,
                    kind: current.kind,
                    invoked: current.invoked,
                    completed,
                    result,
                    revision,
                });
            }
            None => {
                self.stats.ops_refused += 1;
                self.log(|| format!("client {client} op {} refused", current.op));
            }
        }
        let think = self.rng_client.range_inclusive(0, self.params.think_max_us);
        self.queue
            .schedule_in(think.max(1), Event::ClientNext { client });
    }

    // ----- nemesis -----

    fn on_nemesis(&mut self) {
        if self.phase != Phase::Safety {
            return;
        }
        let p = &self.params;
        let mut actions: Vec<u8> = Vec::new();
        if p.partitions {
            actions.extend([0, 0, 1]);
        }
        if p.crashes {
            actions.extend([2, 2]);
        }
        if p.clock_jumps {
            actions.push(3);
        }
        if p.leader_transfers {
            actions.push(4);
        }
        if p.membership_changes {
            actions.extend([5, 5]);
        }
        if !actions.is_empty() {
            let action = *self.rng_nemesis.choose(&actions);
            self.trace.write_u64(u64::from(action));
            match action {
                0 => self.nemesis_partition(),
                1 => self.nemesis_heal(),
                2 => self.nemesis_crash(),
                3 => self.nemesis_clock(),
                4 => self.nemesis_transfer(),
                _ => self.nemesis_membership(),
            }
        }
        let (lo, hi) = (self.params.nemesis_min_us, self.params.nemesis_max_us);
        let next = self.rng_nemesis.range_inclusive(lo, hi);
        self.queue.schedule_in(next, Event::Nemesis);
    }

    fn on_leader_fault(&mut self, id: u64, term: Term) {
        if self.phase != Phase::Safety {
            return;
        }
        let n = &self.nodes[id as usize - 1];
        let Some(raw) = n.raw.as_ref() else { return };
        let status = raw.status();
        if status.role != Role::Leader || status.term != term {
            return;
        }
        let crash =
            self.params.crashes && (!self.params.partitions || self.rng_nemesis.chance(0.5));
        if crash {
            self.log(|| format!("nemesis: crash leader {id} of term {term}"));
            self.crash(id);
            let downtime = self.rng_nemesis.range_inclusive(10_000, 1_000_000);
            self.queue
                .schedule_in(downtime, Event::Restart { node: id });
        } else {
            let rest: Vec<u64> = self.params.node_ids().filter(|&n| n != id).collect();
            let partition = Partition::Split {
                left: vec![id],
                right: rest,
            };
            self.log(|| format!("nemesis: isolate leader {id} of term {term}: {partition}"));
            self.net.set_partition(partition);
            self.stats.partitions += 1;
        }
    }

    fn nemesis_partition(&mut self) {
        let ids: Vec<u64> = self.params.node_ids().collect();
        let leader = self.leader().map(|(id, _)| id);
        let partition = match leader {
            // Isolate the leader with a minority: the majority elects a new one while clients
            // may still talk to the old one.
            Some(l) if self.rng_nemesis.chance(0.3) => {
                let mut others: Vec<u64> = ids.iter().copied().filter(|&n| n != l).collect();
                self.rng_nemesis.shuffle(&mut others);
                let minority = (ids.len() - 1) / 2;
                let take = self.rng_nemesis.range_inclusive(0, minority as u64 - 1) as usize;
                let mut left = vec![l];
                left.extend(others.drain(..take));
                Partition::Split {
                    left,
                    right: others,
                }
            }
            _ => Partition::random(&mut self.rng_nemesis, &ids),
        };
        self.log(|| format!("nemesis: partition {partition}"));
        self.net.set_partition(partition);
        self.stats.partitions += 1;
    }

    fn nemesis_heal(&mut self) {
        self.log(|| "nemesis: heal partition".to_string());
        self.net.set_partition(Partition::None);
    }

    fn nemesis_crash(&mut self) {
        let up: Vec<u64> = self
            .nodes
            .iter()
            .filter(|n| n.raw.is_some())
            .map(|n| n.id)
            .collect();
        if up.is_empty() {
            return;
        }
        let id = *self.rng_nemesis.choose(&up);
        self.crash(id);
        let downtime = self.rng_nemesis.range_inclusive(10_000, 1_500_000);
        self.queue
            .schedule_in(downtime, Event::Restart { node: id });
    }

    fn nemesis_clock(&mut self) {
        let id = self
            .rng_nemesis
            .range_inclusive(1, self.params.nodes as u64);
        let ticks = self
            .rng_nemesis
            .range_inclusive(1, 3 * u64::from(self.params.election_ticks));
        let pause = self.rng_nemesis.chance(0.5);
        let n = self.node(id);
        if pause {
            n.ticks_skip = ticks as u32;
        } else {
            n.ticks_double = ticks as u32;
        }
        self.log(|| {
            format!(
                "nemesis: node {id} clock {} {ticks} ticks",
                if pause { "pauses" } else { "jumps" }
            )
        });
    }

    /// The node that believes itself leader with the highest term, if any.
    fn leader(&self) -> Option<(u64, Term)> {
        self.nodes
            .iter()
            .filter_map(|n| {
                let s = n.raw.as_ref()?.status();
                (s.role == Role::Leader).then_some((n.id, s.term))
            })
            .max_by_key(|&(id, t)| (t, id))
    }

    fn nemesis_transfer(&mut self) {
        let Some((leader, _)) = self.leader() else {
            return;
        };
        let voters: Vec<u64> = self
            .node(leader)
            .conf_state
            .voters
            .iter()
            .map(|v| v.get())
            .collect();
        let others: Vec<u64> = voters.into_iter().filter(|&v| v != leader).collect();
        if others.is_empty() {
            return;
        }
        let to = *self.rng_nemesis.choose(&others);
        self.log(|| format!("nemesis: transfer leadership {leader} -> {to}"));
        self.stats.transfers += 1;
        self.node(leader)
            .raw
            .as_mut()
            .expect("leader runs")
            .transfer_leader(NodeId(to));
        self.drive(leader);
    }

    fn nemesis_membership(&mut self) {
        let Some((leader, _)) = self.leader() else {
            return;
        };
        let conf = self.node(leader).conf_state.clone();
        if conf.is_joint() {
            return;
        }
        let options = membership_options(&conf, leader, self.params.node_ids());
        if options.is_empty() {
            return;
        }
        let change = *self.rng_nemesis.choose(&options);
        let cc = ConfChange {
            transition: ConfChangeTransition::Auto,
            changes: vec![change],
            context: Bytes::new(),
        };
        let raw = self.node(leader).raw.as_mut().expect("leader runs");
        let result = raw.propose_conf_change(cc);
        self.log(|| format!("nemesis: leader {leader} proposes {change:?}: {result:?}"));
        // A removed node keeps its disk, so adding it back later is safe: to the others it is a
        // node that was partitioned away for a while.
        if result.is_ok() {
            self.stats.conf_changes_proposed += 1;
        }
        self.drive(leader);
    }

    // ----- liveness -----

    fn heal(&mut self) {
        for id in self.params.node_ids() {
            self.restart(id);
        }
        self.phase = Phase::Liveness;
        self.healed_at = self.queue.now();
        self.log(|| "=== liveness phase: heal everything ===".to_string());
        self.net.set_partition(Partition::None);
        let p = &self.params.net;
        self.net.params = NetParams::healthy(p.delay_min_us, p.delay_max_us);
        for n in &mut self.nodes {
            n.ticks_skip = 0;
            n.ticks_double = 0;
        }
        self.reconcile_membership();
        self.commit_at_heal = self
            .nodes
            .iter()
            .filter_map(|n| n.raw.as_ref().map(|r| r.status().commit.get()))
            .max()
            .unwrap_or(0);
        for c in &mut self.clients {
            c.ok_after_heal = 0;
        }
    }

    /// What an operator does once the faults stop: run every member of the latest configuration
    /// (the one at the highest applied index) and shut down every node that is not a member.
    /// A removed server that keeps running disrupts elections with higher terms unless pre-vote
    /// or check-quorum is on (§4.2.3 of the Raft thesis); that is a known property of Raft, not a
    /// liveness bug, so the liveness phase does not leave removed nodes running.
    fn reconcile_membership(&mut self) {
        let Some(latest) = self
            .nodes
            .iter()
            .filter(|n| n.raw.is_some())
            .max_by_key(|n| n.applied)
        else {
            return;
        };
        let cs = &latest.conf_state;
        let members: BTreeSet<u64> = [
            &cs.voters,
            &cs.learners,
            &cs.voters_outgoing,
            &cs.learners_next,
        ]
        .into_iter()
        .flatten()
        .map(|v| v.get())
        .collect();
        for id in self.params.node_ids() {
            let running = self.node(id).raw.is_some();
            if members.contains(&id) && !running {
                self.start_node(id);
            } else if !members.contains(&id) && running {
                self.log(|| format!("operator: shut down node {id}, not a member"));
                self.crash(id);
                self.node(id).retired = true;
            }
        }
    }

    fn check_liveness(&mut self) {
        if !self.checker.violations().is_empty() {
            return;
        }
        let bound = self.params.liveness_us;
        let Some((leader, term)) = self.leader() else {
            self.violation(format!("liveness: no leader {bound}us after healing"));
            return;
        };
        let status = self
            .node(leader)
            .raw
            .as_ref()
            .expect("leader runs")
            .status();
        if status.commit.get() <= self.commit_at_heal {
            let at_heal = self.commit_at_heal;
            self.violation(format!(
                "liveness: leader {leader} (term {term}) commit {} did not pass {at_heal} within \
                 {bound}us of healing",
                status.commit
            ));
        }
        for (i, c) in self.clients.iter().enumerate() {
            if c.ok_after_heal == 0 {
                let text = format!("liveness: client {i} completed no operation after healing");
                self.checker.report(text);
            }
        }
        let members: Vec<u64> = status
            .conf_state
            .voters
            .iter()
            .chain(status.conf_state.learners.iter())
            .map(|v| v.get())
            .collect();
        for id in members {
            let n = self.node(id);
            if n.corrupt {
                // Refused to start on a corrupted disk and stays down (a minority at most).
                continue;
            }
            let applied = n.applied;
            if applied < status.commit {
                self.violation(format!(
                    "liveness: member {id} applied only {applied} of the leader's commit {} \
                     within {bound}us of healing",
                    status.commit
                ));
            }
        }
    }

    fn check_history(&mut self) {
        if let Err(e) = self.history.check_revisions_monotonic() {
            self.violation(e);
        }
        let bad = crate::linearizability::check_history(&self.history.ops, 2_000_000);
        for (key, verdict) in bad {
            match verdict {
                crate::linearizability::Verdict::NotLinearizable(why) => {
                    self.violation(format!("linearizability: {why}"));
                }
                _ => {
                    self.stats.linearizability_unknown += 1;
                    self.log(|| format!("linearizability of key {key}: search budget exhausted"));
                }
            }
        }
    }
}

/// The single-step membership changes a leader may propose under `conf`: add any outsider as a
/// learner or a voter, promote a learner, remove a learner, or remove a voter other than itself
/// while more than three voters remain.
fn membership_options(
    conf: &ConfState,
    leader: u64,
    node_ids: impl Iterator<Item = u64>,
) -> Vec<ConfChangeSingle> {
    use ConfChangeSingle::{AddLearner, AddVoter, RemoveNode};
    let is_member =
        |id: u64| conf.voters.contains(&NodeId(id)) || conf.learners.contains(&NodeId(id));
    // The order matters only for replay: a seed picks among these by position.
    let outsiders: Vec<NodeId> = node_ids.filter(|&id| !is_member(id)).map(NodeId).collect();
    let mut options: Vec<ConfChangeSingle> = outsiders.iter().map(|&id| AddLearner(id)).collect();
    options.extend(outsiders.iter().map(|&id| AddVoter(id)));
    options.extend(conf.learners.iter().map(|&id| AddVoter(id)));
    options.extend(conf.learners.iter().map(|&id| RemoveNode(id)));
    if conf.voters.len() > 3 {
        options.extend(
            conf.voters
                .iter()
                .filter(|v| v.get() != leader)
                .map(|&v| RemoveNode(v)),
        );
    }
    options
}

/// A short description of a message for the verbose trace.
fn short(msg: &Message) -> String {
    match &msg.body {
        MessageBody::Append {
            prev_index,
            prev_term,
            entries,
            commit,
        } => format!(
            "Append prev {prev_index}/{prev_term} n{} commit {commit}",
            entries.len()
        ),
        MessageBody::Snapshot { snapshot } => {
            format!("Snapshot {}/{}", snapshot.meta.index, snapshot.meta.term)
        }
        other => format!("{other:?}"),
    }
}

/// The `MemStorage` of a node in mem mode.
fn mem_storage(raw: &mut RawNode<SimLog>) -> &mut MemStorage {
    match raw.storage_mut() {
        SimLog::Mem(storage) => storage,
        SimLog::Wal(_) => unreachable!("only mem mode writes a MemStorage"),
    }
}

#[cfg(feature = "inject-bugs")]
fn set_injected_bug(config: &mut Config, bug: Option<BugName>) {
    use chorus_raft::InjectedBug;
    config.injected_bug = bug.map(|b| match b {
        BugName::DoubleVote => InjectedBug::DoubleVote,
        BugName::CommitOldTerm => InjectedBug::CommitOldTerm,
        BugName::StaleLeaseRead => InjectedBug::StaleLeaseRead,
        BugName::ForgetVoteOnRestart => InjectedBug::ForgetVoteOnRestart,
    });
}

#[cfg(not(feature = "inject-bugs"))]
fn set_injected_bug(_config: &mut Config, bug: Option<BugName>) {
    assert!(
        bug.is_none(),
        "injected bugs need the `inject-bugs` feature"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn membership_options_keep_three_voters_and_the_leader() {
        // Goal: the nemesis never shrinks below three voters nor removes the leader. Method:
        // list the options for a three-voter and a four-voter configuration.
        let mut conf = ConfState::with_voters([1, 2, 3].map(NodeId));
        conf.learners.insert(NodeId(4));
        let options = membership_options(&conf, 1, 1..=5);
        use ConfChangeSingle::{AddLearner, AddVoter, RemoveNode};
        assert_eq!(
            options,
            vec![
                AddLearner(NodeId(5)),
                AddVoter(NodeId(5)),
                AddVoter(NodeId(4)),
                RemoveNode(NodeId(4))
            ]
        );
        let four = ConfState::with_voters([1, 2, 3, 4].map(NodeId));
        let options = membership_options(&four, 2, 1..=4);
        assert_eq!(
            options,
            vec![
                RemoveNode(NodeId(1)),
                RemoveNode(NodeId(3)),
                RemoveNode(NodeId(4))
            ]
        );
    }
}
