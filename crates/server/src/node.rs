//! The Raft driver of one member: one tokio task owns the `RawNode` of the (single) Raft group
//! and does everything its `Ready`s ask, in the order the contract gives (crates/raft/src/lib.rs).
//!
//! Inputs: a tick every heartbeat interval, messages from peers, reports from the transport,
//! and commands from the gRPC edge ([`NodeHandle`]): proposals and read barriers. Proposals are
//! taken in batches of up to `proposal_batch_max` before the next `Ready`, so one fsync covers
//! them all (group commit).
//!
//! For each `Ready`, at once: send `messages`; hand snapshot, entries and hard state to the WAL;
//! ask the `wal-sync` thread for an fsync if they need one (see [`SyncThread`]); confirm
//! its read indexes. Then the driver goes on with its inputs. Once the fsync covering it
//! returns, and the Readies before it are done: `on_persisted`; send `persisted_messages`;
//! apply the committed entries to the MVCC store in one batch with the applied index;
//! `on_applied`; answer the waiters. Readies taken while an fsync runs share the next one.
//! A snapshot received from the leader is made durable in line, before anything after it.
//!
//! A proposal carries a request id (member id and counter, see `chorus.internal.v1.Proposal`).
//! The proposer remembers the index and term Raft gave it. When the entry at that index is
//! applied, the waiter gets the apply result if the entry is its own (same term and id), and
//! etcd's "leader changed" error if another term's entry took the index: never a silent retry.
//!
//! Reads: a linearizable read asks Raft for a read index (ReadIndex, §6.4 of the Raft thesis)
//! and proceeds once the applied index reaches it; the edge then reads the store locally. The
//! reads that arrive while a read index is being asked for share the next one (see [`reads`]).
//!
//! Snapshots: every `--snapshot-count` applied entries the driver marks a snapshot at the
//! applied index: once the store's commits made it durable there, the WAL records the mark and
//! compacts the log behind it, and once an fsync covers those records the segments they freed
//! are deleted. The store is the snapshot's data, and nothing is copied; the driver never
//! waits for the disk on the way (see [`Driver::advance_mark`]). Only when a follower needs
//! entries the log no longer has does the driver write the store into a snapshot file, on a
//! thread of its own (from a read transaction of the store, so applies go on), and offer it to
//! Raft. A snapshot received from the leader replaces the store (see [`crate::snap`]).
//!
//! Membership: a committed ConfChange (or `member_update` proposal) updates the replicated
//! table of [`crate::membership`] durably before the store records the entry as applied, and
//! the transport and forwarder follow it. The snapshot file offered to followers is withdrawn,
//! so that a member added later gets one that lists it. A member that applies its own removal
//! stops.
//!
//! What is not here: leases.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chorus_proto::etcdserverpb as pb;
use chorus_proto::internal as ipb;
use chorus_raft::{
    Entry, EntryPayload, LogIndex, LogStorage, Message, NodeId, ProposeError, RawNode, ReadState,
    Ready, Role, Term,
};
use chorus_storage::mvcc::{self, MvccConfig, MvccError, MvccStore, WriteOp, WriteResponse};
use chorus_storage::wal::{PurgePlan, RaftLogStore, SyncThread, Synced, WalError, WalPosition};
use prost::Message as _;
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::ServerError;
use crate::forward::StreamAnswer;
use crate::kv_convert;
use crate::lease::Lessor;
use crate::membership::{
    self, LeaderView, Members, PeerProgress, PeerSync, Planned, SharedMembers,
};
use crate::snap::{self, SnapFiles};
use crate::transport::{PeerTransport, TransportReport};

mod reads;

use reads::{ReadReply, ReadRounds};

/// The limits of the driver. Validate with [`NodeConfig::validate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    /// Commands (proposals, reads) waiting for the driver; more are refused with etcd's
    /// "too many requests".
    pub command_queue_max: usize,
    /// Commands taken at once before the next `Ready` (group commit).
    pub proposal_batch_max: usize,
    /// Proposals proposed and not yet applied; more are refused with "too many requests".
    pub waiters_max: usize,
    /// Read barriers waiting for a read index or for the applied index to reach it.
    pub reads_pending_max: usize,
    /// The time between two ticks (etcd's heartbeat interval).
    pub tick_interval: Duration,
}

/// Why a [`NodeConfig`] was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NodeConfigError {
    #[error("{name} must be at least 1 (got 0)")]
    LimitZero { name: &'static str },
    #[error("proposal_batch_max ({batch}) must not exceed command_queue_max ({queue})")]
    BatchAboveQueue { batch: usize, queue: usize },
    #[error("tick_interval must not be zero")]
    TickZero,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            command_queue_max: 4096,
            proposal_batch_max: 256,
            waiters_max: 16 * 1024,
            reads_pending_max: 16 * 1024,
            tick_interval: Duration::from_millis(100),
        }
    }
}

impl NodeConfig {
    pub fn validate(&self) -> Result<(), NodeConfigError> {
        let limits = [
            ("command_queue_max", self.command_queue_max),
            ("proposal_batch_max", self.proposal_batch_max),
            ("waiters_max", self.waiters_max),
            ("reads_pending_max", self.reads_pending_max),
        ];
        for (name, value) in limits {
            if value == 0 {
                return Err(NodeConfigError::LimitZero { name });
            }
        }
        if self.proposal_batch_max > self.command_queue_max {
            return Err(NodeConfigError::BatchAboveQueue {
                batch: self.proposal_batch_max,
                queue: self.command_queue_max,
            });
        }
        if self.tick_interval.is_zero() {
            return Err(NodeConfigError::TickZero);
        }
        Ok(())
    }
}

/// What the edge may know of the Raft state, for response headers and forwarding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeStatus {
    pub term: Term,
    pub leader: Option<NodeId>,
    pub role: Option<Role>,
    pub commit: LogIndex,
    pub applied: LogIndex,
}

/// The result of an applied write.
pub type WriteResult = Result<WriteResponse, ServerError>;

/// Where the outcome of a proposed write goes.
#[derive(Debug)]
pub enum WriteReply {
    /// A caller on this member, waiting for it.
    Caller(oneshot::Sender<WriteResult>),
    /// A write another member forwarded on a stream: the outcome joins the stream's answers
    /// under the write's id, with no task waiting for it here.
    Stream(StreamAnswer<WriteResult>),
}

impl WriteReply {
    fn send(self, result: WriteResult) {
        match self {
            WriteReply::Caller(caller) => {
                // The caller may have stopped waiting (its request timed out).
                let _ = caller.send(result);
            }
            WriteReply::Stream(answer) => answer.send(result),
        }
    }
}

enum Command {
    Propose {
        request: ipb::forward_request::Request,
        reply: WriteReply,
    },
    ReadBarrier {
        reply: ReadReply,
    },
    /// Starts handing leadership to a voter (etcd's MoveLeader); answers once started.
    TransferLeader {
        to: NodeId,
        reply: oneshot::Sender<Result<(), ServerError>>,
    },
    /// Checks and proposes a membership change (this member must lead).
    ProposeMember {
        change: ipb::member_change_request::Change,
        reply: oneshot::Sender<MemberResult>,
    },
}

/// etcd's error for a command the Raft loop's queue did not take.
fn refusal(error: &mpsc::error::TrySendError<Command>) -> ServerError {
    match error {
        mpsc::error::TrySendError::Full(_) => ServerError::TooManyRequests,
        mpsc::error::TrySendError::Closed(_) => ServerError::Stopped,
    }
}

/// The result of an applied membership change.
pub type MemberResult = Result<ipb::MemberChangeResponse, ServerError>;

/// A membership or alarm proposal waiting for its entry: its term, the member concerned (none
/// for an alarm) and who to answer.
type MemberWaiter = (
    Term,
    Option<ipb::MemberRecord>,
    oneshot::Sender<MemberResult>,
);

/// The edge's handle on the driver. Cheap to clone.
#[derive(Clone)]
pub struct NodeHandle {
    commands: mpsc::Sender<Command>,
    status: watch::Receiver<NodeStatus>,
    store: Arc<RwLock<MvccStore>>,
    pub member_id: NodeId,
    pub cluster_id: u64,
    /// The lease deadlines, kept while this member leads.
    pub lessor: Arc<Lessor>,
    /// The replicated membership as applied here.
    pub members: SharedMembers,
    snapshot_writing: Arc<SnapshotWriting>,
}

impl NodeHandle {
    /// Proposes a membership change here (this member must lead) and waits until it is
    /// applied.
    pub async fn propose_member(&self, change: ipb::member_change_request::Change) -> MemberResult {
        let (reply, rx) = oneshot::channel();
        self.enqueue(Command::ProposeMember { change, reply })?;
        rx.await.map_err(|_| ServerError::Stopped)?
    }

    fn enqueue(&self, command: Command) -> Result<(), ServerError> {
        self.commands.try_send(command).map_err(|e| refusal(&e))
    }

    /// Proposes a write here (this member must lead) and waits until it is applied.
    pub async fn propose(&self, request: ipb::forward_request::Request) -> WriteResult {
        let (reply, rx) = oneshot::channel();
        self.propose_to(request, WriteReply::Caller(reply));
        rx.await.map_err(|_| ServerError::Stopped)?
    }

    /// Proposes a write here (this member must lead) and sends its outcome to `reply` once
    /// applied, or at once if the write cannot be taken.
    pub fn propose_to(&self, request: ipb::forward_request::Request, reply: WriteReply) {
        if let Err(error) = self.commands.try_send(Command::Propose { request, reply }) {
            let refused = refusal(&error);
            if let Command::Propose { reply, .. } = error.into_inner() {
                reply.send(Err(refused));
            }
        }
    }

    /// Waits until this member has applied everything committed when the call started, as
    /// confirmed by the leader: a read of the local store is then linearizable.
    pub async fn read_barrier(&self) -> Result<(), ServerError> {
        let (reply, rx) = oneshot::channel();
        self.enqueue(Command::ReadBarrier { reply })?;
        rx.await.map_err(|_| ServerError::Stopped)?
    }

    /// Asks the driver, which must lead, to hand leadership to the voter `to`. Answers once
    /// the transfer started; watch [`NodeHandle::status_watch`] for its end.
    pub async fn transfer_leader(&self, to: NodeId) -> Result<(), ServerError> {
        let (reply, rx) = oneshot::channel();
        self.enqueue(Command::TransferLeader { to, reply })?;
        rx.await.map_err(|_| ServerError::Stopped)?
    }

    /// Runs `f` on the store with exclusive access, blocking the driver's applies meanwhile.
    /// Only for maintenance that leaves the contents unchanged (defragmentation); writes go
    /// through Raft.
    ///
    /// Waits (blocking) for a snapshot being written to end: the engine cannot be compacted
    /// under its read transaction.
    pub fn maintain_store<T>(&self, f: impl FnOnce(&mut MvccStore) -> T) -> T {
        let mut store = self.store.write().unwrap_or_else(|e| e.into_inner());
        // No snapshot starts while the write lock is held: one is running or none is.
        self.snapshot_writing.wait_idle();
        f(&mut store)
    }

    pub fn status(&self) -> NodeStatus {
        *self.status.borrow()
    }

    /// A receiver of every status change.
    pub fn status_watch(&self) -> watch::Receiver<NodeStatus> {
        self.status.clone()
    }

    /// The active alarms, as applied here.
    pub fn alarms(&self) -> crate::alarm::AlarmSet {
        let members = self.members.read().unwrap_or_else(|e| e.into_inner());
        members.alarms.clone()
    }

    /// Whether the applied membership lists this member as a learner.
    pub fn is_learner(&self) -> bool {
        let members = self.members.read().unwrap_or_else(|e| e.into_inner());
        members
            .members
            .get(&self.member_id)
            .is_some_and(|m| m.is_learner)
    }

    /// Runs `f` on the store as it is now (reads only).
    pub fn read_store<T>(&self, f: impl FnOnce(&MvccStore) -> T) -> T {
        let store = self.store.read().unwrap_or_else(|e| e.into_inner());
        f(&store)
    }

    /// A handle on a bare store with no driver behind it, and the sender of its status: for
    /// tests of the layers that only read the store and follow the status.
    #[cfg(test)]
    pub(crate) fn detached(
        store: Arc<RwLock<MvccStore>>,
    ) -> (NodeHandle, watch::Sender<NodeStatus>) {
        let (commands, _) = mpsc::channel(1);
        let (status_tx, status) = watch::channel(NodeStatus::default());
        let handle = NodeHandle {
            commands,
            status,
            store,
            member_id: NodeId(1),
            cluster_id: 7,
            lessor: Arc::new(Lessor::new(Duration::ZERO)),
            members: SharedMembers::default(),
            snapshot_writing: Arc::default(),
        };
        (handle, status_tx)
    }
}

/// A proposal waiting for its entry to be applied.
struct Waiter {
    term: Term,
    seq: u64,
    reply: WriteReply,
}

/// A Ready taken whose writes may not be durable yet.
struct InFlight {
    /// Whether its writes wait for an fsync (else it completes right after the Ready before).
    needs_sync: bool,
    ready: Ready,
}

/// The driver's state. Owned by its task.
pub struct Driver {
    config: NodeConfig,
    lessor: Arc<Lessor>,
    raw: RawNode<RaftLogStore>,
    log: RaftLogStore,
    store: Arc<RwLock<MvccStore>>,
    transport: PeerTransport,
    member_id: NodeId,
    status: watch::Sender<NodeStatus>,
    seq: u64,
    waiters: BTreeMap<LogIndex, Waiter>,
    reads: ReadRounds,
    /// When a read index slower than `SLOW_STEP` was last logged: at most one a second is.
    slow_read_logged: Option<Instant>,
    snapshots: SnapshotPolicy,
    /// The hard state last handed to the WAL: a Ready that changes its term or vote is synced
    /// before the messages that depend on it are sent.
    written_hard_state: chorus_raft::HardState,
    /// Readies taken and not yet completed, oldest first (see [`Driver::complete_durable`]).
    in_flight: VecDeque<InFlight>,
    /// Every Ready up to this number is durable.
    synced_through: u64,
    /// Makes the WAL durable on a thread of its own.
    syncer: SyncThread,
    /// What the syncing thread reports.
    synced: Option<tokio::sync::mpsc::UnboundedReceiver<Synced>>,
    members: SharedMembers,
    peers: PeerSync,
    /// Membership proposals waiting for their entries: term and the member concerned.
    /// (No member for an alarm request.)
    member_waiters: BTreeMap<LogIndex, MemberWaiter>,
    /// etcd's answers to the alarm requests of the batch being applied, by index.
    alarm_answers: HashMap<LogIndex, Vec<pb::AlarmMember>>,
    /// The snapshot being written to its file by a background thread.
    snapshot_job: Option<SnapshotJob>,
    /// Woken when a snapshot job ends.
    snapshot_done: Arc<tokio::sync::Notify>,
    snapshot_writing: Arc<SnapshotWriting>,
    /// The snapshot mark under way, if any.
    mark: Option<Mark>,
    /// This member applied its own removal.
    removed: bool,
    /// The entries of the batch being applied, decoded: kept between batches so that a busy
    /// member does not allocate it afresh for each.
    decoded: Vec<DecodedEntry>,
}

/// A committed entry as [`Driver::apply`] takes it: index, term, the sequence number of this
/// member's proposal, and the write.
type DecodedEntry = (LogIndex, Term, Option<u64>, Option<WriteOp>);

/// The steps of a snapshot mark (see [`Driver::advance_mark`]), each waiting for the disk.
enum Mark {
    /// Chosen at the applied index; waits for the store's commits to make it durable.
    Store {
        meta: chorus_raft::SnapshotMeta,
        started: Instant,
    },
    /// Recorded in the WAL with the compaction behind it; waits for an fsync to cover them
    /// before the segments they free are deleted.
    Log(RecordedMark),
}

/// A snapshot mark the WAL records (not yet durably).
struct RecordedMark {
    meta: chorus_raft::SnapshotMeta,
    compact_to: u64,
    purge: Option<PurgePlan>,
    /// The end of the mark's records (and the purge's restated state) in the WAL.
    durable_at: WalPosition,
    started: Instant,
}

/// Everything the driver's task listens to.
pub struct DriverInputs {
    pub inbound: mpsc::Receiver<Message>,
    pub reports: mpsc::Receiver<TransportReport>,
    pub shutdown: watch::Receiver<bool>,
}

/// A failure that stops the node (DESIGN.md: storage failures in the Raft path are fatal).
#[derive(Debug, thiserror::Error)]
pub enum FatalError {
    #[error("persisting Raft state failed: {0}")]
    Wal(#[from] WalError),
    #[error("applying committed entries failed: {0}")]
    Apply(#[from] MvccError),
    #[error("snapshot: {0}")]
    Snapshot(String),
}

/// A step of the Raft loop that takes longer than this is logged with where the time went, as
/// etcd warns of an apply that took over 100 ms: every client of the member waits for it.
const SLOW_STEP: Duration = Duration::from_millis(100);

/// How long a read index round may stay unanswered before it is asked for again (etcd's
/// `readIndexRetryTime`).
const READ_INDEX_RETRY: Duration = Duration::from_millis(500);

fn snapshot_error(context: &str) -> impl FnOnce(std::io::Error) -> FatalError + '_ {
    move |e| FatalError::Snapshot(format!("{context}: {e}"))
}

/// When to take a Raft snapshot and how much log to keep behind it.
#[derive(Clone, Debug)]
pub struct SnapshotPolicy {
    /// etcd's `--snapshot-count`: applied entries between two snapshots.
    pub snapshot_count: u64,
    /// Entries kept in the log below a snapshot, so that a follower slightly behind catches up
    /// from the log rather than with a whole snapshot (etcd's `SnapshotCatchUpEntries`).
    pub catchup_entries: u64,
    /// Where the snapshot files (written only when a follower needs one) and the store
    /// directories live.
    pub files: SnapFiles,
    pub member_dir: PathBuf,
    pub mvcc_config: MvccConfig,
    /// The index of the latest snapshot mark (0 for none).
    pub last_index: LogIndex,
}

/// A snapshot of the store being written to its file off the driver's task: the store's read
/// transaction keeps the view of the snapshot's applied index while applies go on.
struct SnapshotJob {
    meta: chorus_raft::SnapshotMeta,
    done: std::sync::mpsc::Receiver<std::io::Result<()>>,
    /// The membership changed since the job began: its file must not be offered.
    stale: bool,
}

/// Whether a snapshot job holds a read transaction of the store, for maintenance that needs
/// none alive ([`NodeHandle::maintain_store`]).
#[derive(Debug, Default)]
struct SnapshotWriting {
    busy: std::sync::Mutex<bool>,
    idle: std::sync::Condvar,
}

impl SnapshotWriting {
    fn set(&self, busy: bool) {
        *self.busy.lock().unwrap_or_else(|e| e.into_inner()) = busy;
        if !busy {
            self.idle.notify_all();
        }
    }

    fn wait_idle(&self) {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        while *busy {
            busy = self.idle.wait(busy).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Marks the end of a snapshot job when dropped, even if the job panicked.
struct WritingEnds(Arc<SnapshotWriting>);

impl Drop for WritingEnds {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

/// Parts the driver is built from.
pub struct DriverParts {
    pub config: NodeConfig,
    pub raw: RawNode<RaftLogStore>,
    pub log: RaftLogStore,
    pub store: MvccStore,
    pub transport: PeerTransport,
    pub member_id: NodeId,
    pub cluster_id: u64,
    pub snapshots: SnapshotPolicy,
    pub lessor: Arc<Lessor>,
    pub members: SharedMembers,
    pub peers: PeerSync,
}

impl Driver {
    /// Builds the driver and the handle the edge talks to it with, and starts the thread that
    /// syncs the WAL for it.
    pub fn new(parts: DriverParts) -> std::io::Result<(Driver, NodeHandle, Commands)> {
        // A snapshot mark waits for the store's commits to make it durable (`advance_mark`).
        debug_assert!(
            parts.snapshots.mvcc_config.commit_sync,
            "the store's engine commits sync"
        );
        let (report, synced) = tokio::sync::mpsc::unbounded_channel();
        let syncer =
            SyncThread::spawn(parts.log.clone(), move |synced| report.send(synced).is_ok())?;
        let (commands, commands_rx) = mpsc::channel(parts.config.command_queue_max);
        let status_now = NodeStatus {
            applied: parts.store.applied_index(),
            ..NodeStatus::default()
        };
        let (status, status_rx) = watch::channel(status_now);
        let raft_status = parts.raw.status();
        let written_hard_state = chorus_raft::HardState {
            term: raft_status.term,
            vote: raft_status.vote,
            commit: raft_status.commit,
        };
        let store = Arc::new(RwLock::new(parts.store));
        let snapshot_writing = Arc::new(SnapshotWriting::default());
        let handle = NodeHandle {
            commands,
            status: status_rx,
            store: store.clone(),
            member_id: parts.member_id,
            cluster_id: parts.cluster_id,
            lessor: parts.lessor.clone(),
            members: parts.members.clone(),
            snapshot_writing: snapshot_writing.clone(),
        };
        let reads = ReadRounds::new(
            parts.member_id,
            parts.config.reads_pending_max,
            READ_INDEX_RETRY,
        );
        let driver = Driver {
            config: parts.config,
            lessor: parts.lessor,
            raw: parts.raw,
            log: parts.log,
            store,
            transport: parts.transport,
            member_id: parts.member_id,
            status,
            seq: 0,
            waiters: BTreeMap::new(),
            reads,
            slow_read_logged: None,
            snapshots: parts.snapshots,
            written_hard_state,
            in_flight: VecDeque::new(),
            synced_through: 0,
            syncer,
            synced: Some(synced),
            members: parts.members,
            peers: parts.peers,
            member_waiters: BTreeMap::new(),
            decoded: Vec::new(),
            alarm_answers: HashMap::new(),
            snapshot_job: None,
            snapshot_done: Arc::new(tokio::sync::Notify::new()),
            snapshot_writing,
            mark: None,
            removed: false,
        };
        Ok((driver, handle, Commands(commands_rx)))
    }

    /// Runs until shutdown is requested or a fatal error stops the node.
    pub async fn run(
        mut self,
        mut inputs: DriverInputs,
        Commands(mut commands): Commands,
    ) -> Result<(), FatalError> {
        let mut ticker = tokio::time::interval(self.config.tick_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::with_capacity(self.config.proposal_batch_max);
        let snapshot_done = self.snapshot_done.clone();
        let mut synced = self.synced.take().expect("a driver runs once");
        loop {
            tokio::select! {
                report = synced.recv() => match report {
                    Some(report) => self.on_synced(report)?,
                    // The thread ends on its own only after reporting a failure; if it died
                    // otherwise, what waits for an fsync would never complete.
                    None => return Err(FatalError::Wal(WalError::Poisoned {
                        reason: "the thread syncing the WAL stopped".to_string(),
                    })),
                },
                _ = ticker.tick() => {
                    self.raw.tick();
                    self.commit_store_if_due()?;
                    self.advance_mark()?;
                }
                () = snapshot_done.notified() => self.poll_snapshot(false)?,
                Some(message) = inputs.inbound.recv() => self.step(message),
                Some(report) = inputs.reports.recv() => match report {
                    TransportReport::Unreachable(to) => self.raw.report_unreachable(to),
                    TransportReport::Snapshot { to, ok } => self.raw.report_snapshot(to, ok),
                },
                n = commands.recv_many(&mut batch, self.config.proposal_batch_max) => {
                    if n == 0 {
                        return self.stop();
                    }
                    for command in batch.drain(..) {
                        self.handle_command(command);
                    }
                }
                _ = inputs.shutdown.changed() => return self.stop(),
            }
            // Take whatever else arrived meanwhile before the Ready, up to the batch limit.
            while let Ok(message) = inputs.inbound.try_recv() {
                self.step(message);
            }
            // A Ready may confirm the read index in flight, and the reads waiting behind it
            // then ask for the next.
            loop {
                self.read_index();
                if !self.raw.has_ready() {
                    break;
                }
                self.handle_ready()?;
            }
            self.maybe_write_snapshot()?;
            if self.removed {
                tracing::warn!("this member was removed from the cluster; stopping");
                return Ok(());
            }
        }
    }

    /// Commits the store's last applies to its engine (and the disk) if they have waited
    /// `MVCC_SYNC_INTERVAL`: applies commit with the batch that finds the interval passed,
    /// and this covers a member that applies nothing more for a while. The commit runs on the
    /// store's commit thread; this only takes note of the last one and starts the next.
    fn commit_store_if_due(&mut self) -> Result<(), FatalError> {
        let started = Instant::now();
        let mut store = self.store.write().unwrap_or_else(|e| e.into_inner());
        let locked = started.elapsed();
        store.commit_if_due()?;
        let took = started.elapsed();
        if took > SLOW_STEP {
            // The wait for the store's lock (readers hold it while they evaluate a request) is
            // logged apart from the store's own part, to tell the two causes of a slow tick
            // apart.
            tracing::warn!(
                ?took,
                waited_for_lock = ?locked,
                "committing the store on a tick took too long"
            );
        }
        Ok(())
    }

    /// A clean stop: the Readies taken are made durable and applied, and the store's last
    /// applies reach the disk, so the next start replays nothing from the WAL.
    fn stop(&mut self) -> Result<(), FatalError> {
        self.log.sync()?;
        if let Some(last) = self.in_flight.back() {
            self.synced_through = last.ready.number;
        }
        self.complete_durable()?;
        self.poll_snapshot(true)?;
        let mut store = self.store.write().unwrap_or_else(|e| e.into_inner());
        store.sync()?;
        Ok(())
    }

    fn step(&mut self, message: Message) {
        if let Err(error) = self.raw.step(message) {
            tracing::debug!(%error, "refused a peer message");
        }
    }

    fn handle_command(&mut self, command: Command) {
        match command {
            Command::Propose { request, reply } => self.propose(request, reply),
            Command::ReadBarrier { reply } => self.reads.push(reply),
            Command::TransferLeader { to, reply } => {
                let _ = reply.send(self.transfer_leader(to));
            }
            Command::ProposeMember { change, reply } => self.propose_member(change, reply),
        }
    }

    /// Checks a Cluster request against the membership and the leader's view of its peers
    /// (etcd's rules) and proposes it.
    fn propose_member(
        &mut self,
        change: ipb::member_change_request::Change,
        reply: oneshot::Sender<MemberResult>,
    ) {
        let status = self.raw.status();
        if status.role != Role::Leader {
            let _ = reply.send(Err(propose_error(ProposeError::NotLeader {
                leader_hint: status.leader,
            })));
            return;
        }
        let progress: HashMap<NodeId, PeerProgress> = status
            .progress
            .iter()
            .map(|(id, p)| {
                (
                    *id,
                    PeerProgress {
                        matched: p.matched,
                        active: p.recent_active,
                    },
                )
            })
            .collect();
        let last_index = status.last_index;
        let planned = {
            let members = self.members.read().unwrap_or_else(|e| e.into_inner());
            let new_id = match &change {
                ipb::member_change_request::Change::Add(add) => {
                    let urls = membership::parse_peer_urls(&add.peer_ur_ls).unwrap_or_default();
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_nanos() as u64)
                        .unwrap_or(0);
                    membership::new_member_id(&members, &urls, now)
                }
                _ => NodeId(0),
            };
            let view = LeaderView {
                members: &members,
                local_id: self.member_id,
                last_index,
                progress: &progress,
                new_id,
            };
            membership::check_change(&view, &change)
        };
        let proposed = match planned {
            Err(error) => {
                let _ = reply.send(Err(error));
                return;
            }
            Ok(Planned::ConfChange(cc, record)) => self
                .raw
                .propose_conf_change(cc)
                .map(|at| (at, Some(record))),
            Ok(Planned::Update(record)) => {
                let request = ipb::proposal::Request::MemberUpdate(record.clone());
                self.propose_normal(request).map(|at| (at, Some(record)))
            }
            Ok(Planned::Alarm(alarm)) => {
                let request = ipb::proposal::Request::Alarm(alarm);
                self.propose_normal(request).map(|at| (at, None))
            }
        };
        match proposed {
            Ok(((term, index), record)) => {
                if let Some(old) = self.member_waiters.insert(index, (term, record, reply)) {
                    let _ = old.2.send(Err(ServerError::LeaderChanged));
                }
            }
            Err(ProposeError::ConfChangeInProgress) => {
                // etcd queues such a change behind the pending one; the client retries here.
                let _ = reply.send(Err(ServerError::TooManyRequests));
            }
            Err(error) => {
                let _ = reply.send(Err(propose_error(error)));
            }
        }
    }

    /// Proposes a normal entry with this member's next request counter.
    fn propose_normal(
        &mut self,
        request: ipb::proposal::Request,
    ) -> Result<(Term, LogIndex), ProposeError> {
        self.seq += 1;
        let proposal = ipb::Proposal {
            id: Some(ipb::RequestId {
                member_id: self.member_id.get(),
                seq: self.seq,
            }),
            request: Some(request),
        };
        self.raw.propose(Bytes::from(proposal.encode_to_vec()))
    }

    /// Records the membership entries of a committed batch in the table, durably, before the
    /// store marks them applied. Returns whether the table changed.
    fn apply_membership(&mut self, entries: &[Entry]) -> Result<bool, FatalError> {
        let mut members = self.members.write().unwrap_or_else(|e| e.into_inner());
        let mut changed = false;
        for entry in entries {
            match &entry.payload {
                EntryPayload::ConfChange(cc) => match members.apply_conf_change(entry.index, cc) {
                    Ok(c) => changed |= c,
                    Err(error) => tracing::error!(%error, "skipping a membership context"),
                },
                EntryPayload::Normal(data) if !data.is_empty() => {
                    use ipb::proposal::Request as P;
                    let request = ipb::Proposal::decode(data.as_ref())
                        .ok()
                        .and_then(|p| p.request);
                    match request {
                        Some(P::MemberUpdate(update)) => {
                            changed |= members.apply_update(entry.index, &update);
                        }
                        Some(P::Alarm(alarm)) => {
                            if let Some(answer) = members.apply_alarm(entry.index, &alarm) {
                                tracing::warn!(?alarm, "alarm request applied");
                                self.alarm_answers.insert(entry.index, answer);
                                changed = true;
                            }
                        }
                        _ => {}
                    }
                }
                _ => {}
            }
        }
        if changed {
            members
                .save(&self.snapshots.member_dir, self.member_id)
                .map_err(|e| FatalError::Snapshot(e.to_string()))?;
            self.peers.sync(&members);
            tracing::info!(index = %members.index, members = members.members.len(), "membership changed");
        }
        Ok(changed)
    }

    /// Answers the membership proposals whose entries this batch applied.
    fn answer_member_waiters(&mut self, entries: &[Entry]) {
        let Some(last) = entries.last() else { return };
        for entry in entries {
            let Some((term, record, reply)) = self.member_waiters.remove(&entry.index) else {
                continue;
            };
            let result = if term == entry.term {
                let members = self.members.read().unwrap_or_else(|e| e.into_inner());
                Ok(ipb::MemberChangeResponse {
                    member: record.map(|record| {
                        members
                            .members
                            .get(&NodeId(record.id))
                            .cloned()
                            .unwrap_or(record)
                    }),
                    table: Some(members.to_proto(NodeId(0))),
                    alarms: self.alarm_answers.remove(&entry.index).unwrap_or_default(),
                })
            } else {
                Err(ServerError::LeaderChanged)
            };
            let _ = reply.send(result);
        }
        while let Some(entry) = self.member_waiters.first_entry() {
            if *entry.key() > last.index {
                break;
            }
            let _ = entry.remove().2.send(Err(ServerError::LeaderChanged));
        }
        self.alarm_answers.clear();
    }

    fn transfer_leader(&mut self, to: NodeId) -> Result<(), ServerError> {
        let status = self.raw.status();
        if status.role != Role::Leader {
            return Err(ServerError::NotLeader {
                leader_hint: status.leader.map(NodeId::get),
            });
        }
        if !status.conf_state.voters.contains(&to) {
            return Err(ServerError::BadLeaderTransferee);
        }
        if to != self.member_id {
            self.raw.transfer_leader(to);
        }
        Ok(())
    }

    fn propose(&mut self, request: ipb::forward_request::Request, reply: WriteReply) {
        if self.waiters.len() >= self.config.waiters_max {
            reply.send(Err(ServerError::TooManyRequests));
            return;
        }
        self.seq += 1;
        let proposal = ipb::Proposal {
            id: Some(ipb::RequestId {
                member_id: self.member_id.get(),
                seq: self.seq,
            }),
            request: Some(proposal_request(request)),
        };
        let data = Bytes::from(proposal.encode_to_vec());
        match self.raw.propose(data) {
            Ok((term, index)) => {
                // A new entry at an index supersedes any older waiter there (a previous term's
                // entry that this leader's log replaced).
                let waiter = Waiter {
                    term,
                    seq: self.seq,
                    reply,
                };
                if let Some(old) = self.waiters.insert(index, waiter) {
                    old.reply.send(Err(ServerError::LeaderChanged));
                }
            }
            Err(error) => reply.send(Err(propose_error(error))),
        }
    }

    /// Asks Raft for a read index for the reads waiting for one, unless a round is out (see
    /// [`reads`]): one request costs one heartbeat round whatever the number of reads.
    fn read_index(&mut self) {
        let Some(context) = self.reads.start(Instant::now()) else {
            return;
        };
        if let Err(error) = self.raw.read_index(context) {
            self.reads.refuse(&propose_error(error));
        }
    }

    /// Logs a read index that took longer than `SLOW_STEP` to confirm (a heartbeat round to a
    /// quorum), at most once a second.
    fn note_read_index_time(&mut self, took: Duration, reads: usize) {
        if took <= SLOW_STEP
            || self
                .slow_read_logged
                .is_some_and(|at| at.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        self.slow_read_logged = Some(Instant::now());
        tracing::warn!(?took, reads, "confirming a read index took too long");
    }

    /// Takes the next Ready and does at once what needs no fsync: sends its messages, hands its
    /// entries and hard state to the WAL, asks the syncing thread for an fsync if they need one,
    /// and confirms its read indexes. The rest waits in `in_flight` until what it persists is
    /// durable ([`Driver::complete_durable`]).
    fn handle_ready(&mut self) -> Result<(), FatalError> {
        let started = Instant::now();
        let mut ready = self.raw.ready();
        for message in std::mem::take(&mut ready.messages) {
            self.transport.send(message);
        }
        if let Some(snapshot) = &ready.snapshot {
            // The data first: once the WAL records the snapshot, its data must be on disk.
            self.snapshots
                .files
                .save(&snapshot.meta, &snapshot.data)
                .map_err(snapshot_error("save a received snapshot"))?;
        }
        let mut needs_sync = false;
        if ready.snapshot.is_some() || !ready.entries.is_empty() || ready.hard_state.is_some() {
            // Group commit: everything of this Ready (and of the Readies taken while an fsync
            // runs) reaches the disk with one fsync. A Ready that only moves the commit index
            // is written but not synced (the commit index may be learnt again after a crash;
            // at start the applied index of the store, which only covers synced entries,
            // raises it again, see member.rs).
            self.log.persist_ready(&ready)?;
            let term_or_vote = ready.hard_state.is_some_and(|hs| {
                (hs.term, hs.vote) != (self.written_hard_state.term, self.written_hard_state.vote)
            });
            if let Some(hs) = ready.hard_state {
                self.written_hard_state = hs;
            }
            needs_sync = ready.snapshot.is_some() || !ready.entries.is_empty() || term_or_vote;
        }
        let number = ready.number;
        let entries = ready.entries.len();
        let inline = ready.snapshot.is_some();
        for read in std::mem::take(&mut ready.read_states) {
            self.confirm_reads(read);
        }
        self.in_flight.push_back(InFlight { needs_sync, ready });
        if inline {
            // A snapshot from the leader replaces the store: it is made durable here, with
            // everything before it, and applied before anything else happens.
            self.log.sync()?;
            self.synced_through = number;
        } else if needs_sync {
            self.syncer.request(number);
        }
        let took = started.elapsed();
        if took > SLOW_STEP {
            tracing::warn!(
                ?took,
                entries,
                "writing a Raft ready to the WAL took too long"
            );
        }
        self.complete_durable()?;
        self.release_reads();
        Ok(())
    }

    /// Completes, in order, the Readies taken whose writes are durable: everything up to
    /// `synced_through`, and the Readies that needed no fsync right behind them.
    fn complete_durable(&mut self) -> Result<(), FatalError> {
        while self
            .in_flight
            .front()
            .is_some_and(|f| !f.needs_sync || f.ready.number <= self.synced_through)
        {
            let InFlight { ready, .. } = self.in_flight.pop_front().expect("checked above");
            self.finish_ready(ready)?;
        }
        Ok(())
    }

    /// What a Ready asks once its writes are durable: acknowledge them, send the messages that
    /// waited for them, restore a snapshot and apply the committed entries.
    fn finish_ready(&mut self, mut ready: Ready) -> Result<(), FatalError> {
        let started = Instant::now();
        self.raw.on_persisted(ready.number);
        for message in std::mem::take(&mut ready.persisted_messages) {
            self.transport.send(message);
        }
        if let Some(snapshot) = &ready.snapshot {
            self.restore(snapshot)?;
        }
        self.apply(&ready)?;
        let applied = started.elapsed();
        let marking = Instant::now();
        self.advance_mark()?;
        let marked = marking.elapsed();
        self.release_reads();
        self.publish_status(&ready);
        let took = started.elapsed();
        if took > SLOW_STEP {
            tracing::warn!(
                ?took,
                ?applied,
                snapshot_mark = ?marked,
                committed_entries = ready.committed_entries.len(),
                "applying a Raft ready took too long"
            );
        }
        Ok(())
    }

    /// The fsync asked for by the Readies up to `number` returned.
    fn on_synced(&mut self, synced: Synced) -> Result<(), FatalError> {
        let number = synced?;
        self.synced_through = self.synced_through.max(number);
        self.complete_durable()?;
        self.advance_mark()
    }

    /// A read index arrived: the reads that asked for it wait for the applied index to reach it.
    fn confirm_reads(&mut self, read: ReadState) {
        if let Some(answered) = self
            .reads
            .confirm(&read.context, read.index, Instant::now())
        {
            self.note_read_index_time(answered.took, answered.reads);
        }
    }

    fn apply(&mut self, ready: &Ready) -> Result<(), FatalError> {
        let Some(last) = ready.committed_entries.last() else {
            return Ok(());
        };
        let last_index = last.index;
        if self.apply_membership(&ready.committed_entries)? {
            // Followers are sent a snapshot that lists them: the next one is written anew.
            self.snapshots.files.withdraw();
            if let Some(job) = &mut self.snapshot_job {
                job.stale = true;
            }
        }
        let mut decoded = std::mem::take(&mut self.decoded);
        decoded.extend(ready.committed_entries.iter().map(|entry| {
            let (seq, op) = self.decode_entry(entry);
            (entry.index, entry.term, seq, op)
        }));
        let responses = {
            let mut store = self.store.write().unwrap_or_else(|e| e.into_inner());
            store.apply_entries(
                decoded
                    .iter()
                    .map(|(index, _, _, op)| (*index, op.as_ref())),
            )?
        };
        let mut responses = responses.into_iter();
        for (index, term, seq, op) in decoded.drain(..) {
            let response = op.as_ref().and_then(|_| responses.next());
            if let (Some(op), Some(result)) = (&op, &response) {
                self.note_lease(op, result);
            }
            let Some(waiter) = self.waiters.remove(&index) else {
                continue;
            };
            let result = match response {
                Some(result) if waiter.term == term && seq == Some(waiter.seq) => {
                    result.map_err(ServerError::from)
                }
                _ => Err(ServerError::LeaderChanged),
            };
            waiter.reply.send(result);
        }
        self.decoded = decoded;
        for entry in &ready.committed_entries {
            if let EntryPayload::ConfChange(cc) = &entry.payload {
                match self.raw.apply_conf_change(cc) {
                    Ok(conf_state) => {
                        let in_config = conf_state.voters.contains(&self.member_id)
                            || conf_state.learners.contains(&self.member_id)
                            || conf_state.voters_outgoing.contains(&self.member_id);
                        let removes_self = cc.changes.iter().any(|c| {
                            *c == chorus_raft::ConfChangeSingle::RemoveNode(self.member_id)
                        });
                        if removes_self && !in_config {
                            self.removed = true;
                        }
                        self.log.set_conf_state(conf_state)?;
                    }
                    Err(error) => tracing::warn!(%error, "refused a configuration change"),
                }
            }
        }
        self.raw.on_applied(last_index);
        self.answer_member_waiters(&ready.committed_entries);
        // Waiters below the applied index whose entries never came (a new leader's log
        // replaced them) learn it now.
        while let Some(entry) = self.waiters.first_entry() {
            if *entry.key() > last_index {
                break;
            }
            entry.remove().reply.send(Err(ServerError::LeaderChanged));
        }
        Ok(())
    }

    /// Tells the lessor about an applied grant or revocation.
    fn note_lease(&self, op: &WriteOp, result: &Result<WriteResponse, MvccError>) {
        match (op, result) {
            (WriteOp::LeaseGrant(grant), Ok(_)) => self.lessor.granted(grant.id, grant.ttl),
            (WriteOp::LeaseRevoke(id), _) => self.lessor.revoked(*id),
            _ => {}
        }
    }

    /// Replaces the store with the one in a snapshot received from the leader (before the
    /// entries that follow it are applied).
    fn restore(&mut self, snapshot: &chorus_raft::Snapshot) -> Result<(), FatalError> {
        // A local snapshot still being written is older than this one: let it end, unused.
        if let Some(job) = self.snapshot_job.take() {
            let _ = job.done.recv();
        }
        // The received file (saved before the WAL recorded it, so that a crash before the
        // store is switched restores from it) is the one to offer should this member lead.
        self.snapshots.files.offer(snapshot.meta.clone());
        self.snapshots
            .files
            .purge_except(Some(&snapshot.meta))
            .map_err(snapshot_error("remove old snapshots"))?;
        let policy = &self.snapshots;
        let (table, mvcc_data) = snap::open_envelope(snapshot.data.clone())
            .map_err(snapshot_error("open a received snapshot"))?;
        let restored = snap::restore_store(
            &policy.member_dir,
            policy.mvcc_config.clone(),
            &snapshot.meta,
            mvcc_data,
        )?;
        if let Some(table) = table {
            let table = ipb::MemberTable::decode(table.as_ref())
                .map_err(|e| FatalError::Snapshot(format!("the snapshot's membership: {e}")))?;
            let mut members = self.members.write().unwrap_or_else(|e| e.into_inner());
            let cluster_id = members.cluster_id;
            *members = Members::from_proto(&table);
            members.cluster_id = cluster_id;
            members.index = snapshot.meta.index;
            members
                .save(&self.snapshots.member_dir, self.member_id)
                .map_err(|e| FatalError::Snapshot(e.to_string()))?;
            self.peers.sync(&members);
            tracing::info!(
                members = members.members.len(),
                "membership restored from a snapshot"
            );
        }
        let old_dir = {
            let mut store = self.store.write().unwrap_or_else(|e| e.into_inner());
            let old_dir = store.dir().to_path_buf();
            *store = restored;
            old_dir
        };
        snap::remove_store_dir(&old_dir);
        let leases = self
            .store
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .leases();
        self.lessor.restored(leases);
        self.snapshots.last_index = snapshot.meta.index;
        tracing::info!(index = %snapshot.meta.index, term = %snapshot.meta.term, "restored the store from a snapshot");
        // Proposals waiting at indexes the snapshot covers will never be applied here.
        while let Some(entry) = self.waiters.first_entry() {
            if *entry.key() > snapshot.meta.index {
                break;
            }
            entry.remove().reply.send(Err(ServerError::LeaderChanged));
        }
        Ok(())
    }

    /// The index of the snapshot the WAL records: a local mark, or one from the leader.
    fn recorded_snapshot_index(&self) -> Result<LogIndex, FatalError> {
        self.log
            .snapshot_meta()
            .map(|meta| meta.index)
            .map_err(|e| FatalError::Snapshot(format!("read the recorded snapshot: {e}")))
    }

    /// The metadata of a snapshot of the store at the applied index. The term comes from the
    /// stored log, not from the core: the core may hold a newer snapshot not yet handed out and
    /// answer `Compacted` for indexes the log still has.
    fn snapshot_meta_at(
        &self,
        applied: LogIndex,
        conf_state: chorus_raft::ConfState,
    ) -> Result<chorus_raft::SnapshotMeta, FatalError> {
        let term = self
            .log
            .term(applied)
            .map_err(|e| FatalError::Snapshot(format!("term of the applied index: {e}")))?;
        Ok(chorus_raft::SnapshotMeta {
            index: applied,
            term,
            conf_state,
        })
    }

    /// Every `snapshot_count` applied entries: records a snapshot mark at the applied index in
    /// the WAL and compacts the log up to `catchup_entries` below it. Nothing is copied: the
    /// store on disk is the snapshot's data, and a file is written only when a follower needs
    /// one ([`Driver::maybe_write_snapshot`]).
    ///
    /// Nothing here waits for the disk: the mark goes through the steps of [`Mark`] as the
    /// store's commit thread and the WAL's syncing thread make each durable, and this is called
    /// again after every apply, tick and fsync to take the next step. The order that keeps a
    /// crash harmless: the store is durable at the mark before the WAL records it (the log
    /// forgets the entries behind it), and the mark and compaction are durable before the
    /// segments that held those entries are deleted.
    fn advance_mark(&mut self) -> Result<(), FatalError> {
        let mark = match self.mark.take() {
            Some(mark) => mark,
            None => match self.choose_mark()? {
                Some(mark) => mark,
                None => return Ok(()),
            },
        };
        self.mark = self.next_step(mark)?;
        Ok(())
    }

    /// Takes every step of `mark` that the disk allows now; returns the mark if it must wait.
    fn next_step(&mut self, mark: Mark) -> Result<Option<Mark>, FatalError> {
        let recorded = match mark {
            Mark::Store { meta, started } => {
                // A snapshot from the leader may have replaced the store and the log meanwhile.
                if self.recorded_snapshot_index()? >= meta.index {
                    return Ok(None);
                }
                let durable = self
                    .store
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .durable_index();
                if durable < meta.index {
                    return Ok(Some(Mark::Store { meta, started }));
                }
                self.record_mark(meta, started)?
            }
            Mark::Log(recorded) => recorded,
        };
        if self.log.synced_position() < recorded.durable_at {
            return Ok(Some(Mark::Log(recorded)));
        }
        self.finish_mark(recorded)?;
        Ok(None)
    }

    /// A mark at the applied index if `snapshot_count` entries were applied since the last.
    fn choose_mark(&self) -> Result<Option<Mark>, FatalError> {
        let applied = self.raw.basic_status().applied;
        let since = applied
            .get()
            .saturating_sub(self.snapshots.last_index.get());
        if since < self.snapshots.snapshot_count {
            return Ok(None);
        }
        // The WAL may already record a newer snapshot from the leader that this Ready's
        // entries have not reached yet (crates/sim/FOUND.md): no local snapshot below it.
        if self.recorded_snapshot_index()? >= applied {
            return Ok(None);
        }
        let meta = self.snapshot_meta_at(applied, self.raw.status().conf_state)?;
        Ok(Some(Mark::Store {
            meta,
            started: Instant::now(),
        }))
    }

    /// The store is durable at the mark: the WAL records it and the compaction behind it, the
    /// purge they allow is prepared, and the syncing thread is asked for an fsync (no Ready may
    /// need one soon).
    fn record_mark(
        &mut self,
        meta: chorus_raft::SnapshotMeta,
        started: Instant,
    ) -> Result<RecordedMark, FatalError> {
        let index = meta.index;
        self.log.set_snapshot(chorus_raft::Snapshot {
            meta: meta.clone(),
            data: Bytes::new(),
        })?;
        let compact_to = index.get().saturating_sub(self.snapshots.catchup_entries);
        let first = self
            .log
            .first_index()
            .map_err(|e| FatalError::Snapshot(e.to_string()))?;
        if compact_to >= first.get() {
            self.log.compact(LogIndex(compact_to))?;
        }
        // The segments that held only compacted entries go (etcd's WAL purge): without this
        // the WAL's directory grows with every write ever made, and so does replay at start.
        let purge = self.log.prepare_purge()?;
        let durable_at = self.log.appended_position();
        // Every Ready taken so far is in the WAL, so the fsync covers them all.
        let last_ready = self
            .in_flight
            .back()
            .map_or(self.synced_through, |f| f.ready.number);
        self.syncer.request(last_ready);
        self.snapshots.last_index = index;
        Ok(RecordedMark {
            meta,
            compact_to,
            purge,
            durable_at,
            started,
        })
    }

    /// The mark and the compaction are durable: the segments and snapshot files they freed go.
    fn finish_mark(&mut self, mark: RecordedMark) -> Result<(), FatalError> {
        let RecordedMark {
            meta,
            compact_to,
            purge,
            started,
            ..
        } = mark;
        if let Some(plan) = purge {
            // The WAL deletes them on a thread of its own (see `open_storage`).
            self.log.finish_purge(plan)?;
        }
        // A file from before the compaction point cannot serve a follower any more: the log
        // lacks the entries after it.
        let files = &self.snapshots.files;
        if files
            .offered_meta()
            .is_some_and(|offered| offered.index.get() < compact_to)
        {
            files.withdraw();
            if self.snapshot_job.is_none() {
                files
                    .purge_except(None)
                    .map_err(snapshot_error("remove old snapshots"))?;
            }
        }
        tracing::info!(
            index = %meta.index,
            term = %meta.term,
            compacted_to = compact_to,
            took = ?started.elapsed(),
            "took a snapshot"
        );
        Ok(())
    }

    /// A follower needs a snapshot newer than the file offered (if any): write the store at
    /// the applied index into a file on a thread of its own; [`Driver::poll_snapshot`] offers
    /// it once it is on disk. One file is written at a time.
    fn maybe_write_snapshot(&mut self) -> Result<(), FatalError> {
        self.poll_snapshot(false)?;
        if self.snapshot_job.is_some() || !self.snapshots.files.take_wanted() {
            return Ok(());
        }
        let status = self.raw.status();
        let applied = status.applied;
        if self.recorded_snapshot_index()? > applied {
            // A snapshot from the leader is being installed: it will be offered itself.
            return Ok(());
        }
        let meta = self.snapshot_meta_at(applied, status.conf_state)?;
        let term = meta.term;
        let files = &self.snapshots.files;
        let snapshot = {
            let store = self.store.read().unwrap_or_else(|e| e.into_inner());
            assert_eq!(
                store.applied_index(),
                applied,
                "the store applied what Raft did"
            );
            let snapshot = store.snapshot()?;
            // Set under the store's lock: maintenance that holds it sees the job or none.
            self.snapshot_writing.set(true);
            snapshot
        };
        // The membership as of the same applied index goes first (see snap::envelope).
        let header = {
            let members = self.members.read().unwrap_or_else(|e| e.into_inner());
            snap::envelope_header(&members.to_proto(NodeId(0)).encode_to_vec())
        };
        // Streamed to its file chunk by chunk by a thread of its own: a snapshot is as large as
        // the store, and writing it here would stall the Raft loop (and every request) for as
        // long. The log store reads it back from the file when a follower needs it.
        let files = files.clone();
        let (done_tx, done) = std::sync::mpsc::channel();
        let notify = self.snapshot_done.clone();
        let job_meta = meta.clone();
        let writing = WritingEnds(self.snapshot_writing.clone());
        std::thread::Builder::new()
            .name("snapshot".to_string())
            .spawn(move || {
                let _writing = writing;
                let chunks = std::iter::once(Ok(header))
                    .chain(snapshot.map(|c| c.map_err(|e| e.to_string())));
                let _ = done_tx.send(files.save_chunks(&job_meta, chunks));
                notify.notify_one();
            })
            .map_err(snapshot_error("start the snapshot writer"))?;
        tracing::info!(index = %applied, %term, "writing a snapshot file for a follower");
        self.snapshot_job = Some(SnapshotJob {
            meta,
            done,
            stale: false,
        });
        Ok(())
    }

    /// Offers the file of a finished snapshot job to followers and removes older files. With
    /// `wait`, waits for a job still running.
    fn poll_snapshot(&mut self, wait: bool) -> Result<(), FatalError> {
        let Some(job) = &self.snapshot_job else {
            return Ok(());
        };
        let result = if wait {
            job.done
                .recv()
                .unwrap_or_else(|_| Err(std::io::Error::other("the snapshot writer panicked")))
        } else {
            match job.done.try_recv() {
                Ok(result) => result,
                Err(std::sync::mpsc::TryRecvError::Empty) => return Ok(()),
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    Err(std::io::Error::other("the snapshot writer panicked"))
                }
            }
        };
        let job = self.snapshot_job.take().expect("checked above");
        result.map_err(snapshot_error("save a snapshot"))?;
        let files = &self.snapshots.files;
        let keep = if job.stale {
            files.offered_meta()
        } else {
            files.offer(job.meta.clone());
            tracing::info!(index = %job.meta.index, "offering a snapshot file to followers");
            Some(job.meta)
        };
        files
            .purge_except(keep.as_ref())
            .map_err(snapshot_error("remove old snapshots"))
    }

    /// The write of a normal entry, with this member's request counter if it proposed it.
    /// An entry that does not decode is skipped by every member alike and logged.
    fn decode_entry(&self, entry: &Entry) -> (Option<u64>, Option<WriteOp>) {
        let EntryPayload::Normal(data) = &entry.payload else {
            return (None, None);
        };
        if data.is_empty() {
            return (None, None);
        }
        // Decoded from the entry's own buffer, the key and value are slices of it, not copies.
        let proposal = match ipb::Proposal::decode(data.clone()) {
            Ok(proposal) => proposal,
            Err(error) => {
                tracing::error!(index = %entry.index, %error, "skipping an entry that does not decode");
                return (None, None);
            }
        };
        let seq = proposal
            .id
            .filter(|id| id.member_id == self.member_id.get())
            .map(|id| id.seq);
        if let Some(ipb::proposal::Request::MemberUpdate(_) | ipb::proposal::Request::Alarm(_)) =
            &proposal.request
        {
            // Applied to the membership table, not to the store.
            return (seq, None);
        }
        match proposal.request.map(write_op) {
            Some(Ok(op)) => (seq, Some(op)),
            Some(Err(error)) => {
                tracing::error!(index = %entry.index, %error, "skipping an invalid request");
                (seq, None)
            }
            None => (seq, None),
        }
    }

    fn release_reads(&mut self) {
        self.reads.release(self.raw.basic_status().applied);
    }

    fn publish_status(&mut self, ready: &Ready) {
        let status = self.raw.basic_status();
        if let Some(soft) = ready.soft_state {
            tracing::info!(role = ?soft.role, leader = ?soft.leader, term = %status.term, "raft state changed");
            if soft.role == Role::Leader {
                if !self.lessor.is_primary() {
                    let leases = self
                        .store
                        .read()
                        .unwrap_or_else(|e| e.into_inner())
                        .leases();
                    self.lessor.promote(leases);
                }
            } else {
                self.lessor.demote();
            }
            if soft.role != Role::Leader {
                // The round out will not be answered by the leadership it was asked of.
                self.reads.leader_changed();
            }
        }
        self.status.send_replace(NodeStatus {
            term: status.term,
            leader: status.leader,
            role: Some(status.role),
            commit: status.commit,
            applied: status.applied,
        });
    }
}

/// The receiving end of the commands of a [`NodeHandle`], for [`Driver::run`].
pub struct Commands(mpsc::Receiver<Command>);

fn proposal_request(request: ipb::forward_request::Request) -> ipb::proposal::Request {
    use ipb::forward_request::Request as F;
    use ipb::proposal::Request as P;
    match request {
        F::Put(r) => P::Put(r),
        F::DeleteRange(r) => P::DeleteRange(r),
        F::Txn(r) => P::Txn(r),
        F::Compaction(r) => P::Compaction(r),
        F::LeaseGrant(r) => P::LeaseGrant(r),
        F::LeaseRevoke(r) => P::LeaseRevoke(r),
    }
}

fn write_op(request: ipb::proposal::Request) -> Result<WriteOp, ServerError> {
    use ipb::proposal::Request as P;
    Ok(match request {
        P::Put(r) => WriteOp::Put(kv_convert::put_from_proto(&r)),
        P::DeleteRange(r) => WriteOp::DeleteRange(kv_convert::delete_from_proto(&r)),
        P::Txn(r) => WriteOp::Txn(kv_convert::txn_from_proto(&r)?),
        P::Compaction(r) => WriteOp::Compact(mvcc::Revision(r.revision)),
        P::LeaseGrant(r) => {
            // The member that took the grant chose the id and settled the TTL; an entry that
            // breaks this is refused by every member alike.
            if r.id == 0 || r.ttl < 1 {
                return Err(ServerError::Unexpected {
                    message: format!("a lease grant with id {} and TTL {}", r.id, r.ttl),
                });
            }
            WriteOp::LeaseGrant(mvcc::LeaseGrantRequest {
                id: mvcc::LeaseId(r.id),
                ttl: r.ttl,
            })
        }
        P::LeaseRevoke(r) => WriteOp::LeaseRevoke(mvcc::LeaseId(r.id)),
        P::MemberUpdate(_) | P::Alarm(_) => {
            return Err(ServerError::Unexpected {
                message: "a membership update or alarm is not a write".to_string(),
            });
        }
    })
}

fn propose_error(error: ProposeError) -> ServerError {
    match error {
        ProposeError::NotLeader { leader_hint: None } => ServerError::NoLeader,
        ProposeError::NotLeader { leader_hint } => ServerError::NotLeader {
            leader_hint: leader_hint.map(NodeId::get),
        },
        ProposeError::ProposalDropped => ServerError::TooManyRequests,
        ProposeError::TransferInProgress => ServerError::LeaderChanged,
        other => ServerError::Unexpected {
            message: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: a write the Raft loop cannot take is answered at once, on a forwarding stream as
    /// to a caller, with etcd's errors. Method: a handle whose command queue is full, then one
    /// whose loop has stopped.
    #[tokio::test]
    async fn a_write_the_loop_cannot_take_is_answered_at_once() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = MvccStore::open(dir.path(), MvccConfig::default()).expect("open a store");
        let (mut node, _status) = NodeHandle::detached(Arc::new(RwLock::new(store)));
        let (commands, queue) = mpsc::channel(1);
        node.commands = commands;
        let put = || ipb::forward_request::Request::Put(pb::PutRequest::default());
        let (taken, mut taken_answer) = oneshot::channel();
        node.propose_to(put(), WriteReply::Caller(taken));
        let (answers, mut answered) = mpsc::unbounded_channel();
        node.propose_to(
            put(),
            WriteReply::Stream(StreamAnswer::new(9, answers.clone())),
        );
        let (id, outcome) = answered.try_recv().expect("answered at once");
        assert_eq!(id, 9);
        assert_eq!(outcome.unwrap().unwrap_err(), ServerError::TooManyRequests);
        assert!(
            taken_answer.try_recv().is_err(),
            "the queued write is not answered"
        );

        drop(queue);
        node.propose_to(put(), WriteReply::Stream(StreamAnswer::new(10, answers)));
        let (id, outcome) = answered.try_recv().expect("answered at once");
        assert_eq!(id, 10);
        assert_eq!(outcome.unwrap().unwrap_err(), ServerError::Stopped);
        let (caller, mut caller_answer) = oneshot::channel();
        node.propose_to(put(), WriteReply::Caller(caller));
        assert_eq!(
            caller_answer
                .try_recv()
                .expect("answered at once")
                .unwrap_err(),
            ServerError::Stopped
        );
    }

    /// Goal: every limit of the driver is checked and the defaults pass. Method: a table of
    /// mutations with the error each must produce.
    #[test]
    fn node_config_rejects_nonsense() {
        type Mutate = fn(&mut NodeConfig);
        let cases: Vec<(Mutate, Option<NodeConfigError>)> = vec![
            (|_| {}, None),
            (
                |c| c.command_queue_max = 0,
                Some(NodeConfigError::LimitZero {
                    name: "command_queue_max",
                }),
            ),
            (
                |c| c.waiters_max = 0,
                Some(NodeConfigError::LimitZero {
                    name: "waiters_max",
                }),
            ),
            (
                |c| c.proposal_batch_max = c.command_queue_max + 1,
                Some(NodeConfigError::BatchAboveQueue {
                    batch: 4097,
                    queue: 4096,
                }),
            ),
            (
                |c| c.tick_interval = Duration::ZERO,
                Some(NodeConfigError::TickZero),
            ),
        ];
        for (i, (mutate, want)) in cases.into_iter().enumerate() {
            let mut config = NodeConfig::default();
            mutate(&mut config);
            assert_eq!(config.validate().err(), want, "case {i}");
        }
    }

    /// Goal: Raft's refusals reach clients as etcd's errors. Method: each refusal mapped.
    #[test]
    fn propose_errors_map_to_etcd_errors() {
        assert_eq!(
            propose_error(ProposeError::NotLeader { leader_hint: None }),
            ServerError::NoLeader
        );
        assert_eq!(
            propose_error(ProposeError::NotLeader {
                leader_hint: Some(NodeId(3))
            }),
            ServerError::NotLeader {
                leader_hint: Some(3)
            }
        );
        assert_eq!(
            propose_error(ProposeError::ProposalDropped),
            ServerError::TooManyRequests
        );
    }

    /// Goal: a proposal envelope decodes back to the same write on the applying side, and
    /// bytes that are not an envelope are refused, not panicked on.
    #[test]
    fn proposal_envelope_round_trips() {
        let put = chorus_proto::etcdserverpb::PutRequest {
            key: "k".into(),
            value: "v".into(),
            ..Default::default()
        };
        let proposal = ipb::Proposal {
            id: Some(ipb::RequestId {
                member_id: 7,
                seq: 9,
            }),
            request: Some(proposal_request(ipb::forward_request::Request::Put(put))),
        };
        let decoded = ipb::Proposal::decode(proposal.encode_to_vec().as_slice()).unwrap();
        let op = write_op(decoded.request.unwrap()).unwrap();
        assert_eq!(op, WriteOp::Put(mvcc::PutRequest::new("k", "v")));
        assert!(ipb::Proposal::decode(&[0xff, 0xff, 0xff][..]).is_err());
    }
}
