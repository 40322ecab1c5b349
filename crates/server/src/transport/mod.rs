//! The peer transport: Raft messages and snapshots between the members of one cluster.
//!
//! Sending ([`PeerTransport`]): the Raft loop hands every outgoing message to
//! [`PeerTransport::send`], which never blocks. Each remote member has a bounded queue; when it is
//! full the message is dropped, counted, and the node is told the peer is unreachable (Raft
//! tolerates lost messages and slows down replication to an unreachable follower). A task per
//! member drains the queue into `MessageBatch` frames of at most `batch_msgs_max` messages and
//! `batch_bytes_max` bytes, over one long-lived Raft message stream: a TCP connection of its own
//! to the member's peer port, in the format of [`stream`]. It connects on the first message,
//! checks the member with a handshake, and after a failure reconnects with exponential backoff
//! and jitter, bounded by `reconnect_backoff_max`. Snapshots go through their own task and the
//! `InstallSnapshot` gRPC stream, so a large snapshot never holds up heartbeats.
//!
//! Receiving ([`server::PeerService`]): the service tells Raft message streams from HTTP/2
//! connections on the peer port, checks each stream's handshake and the sender's identity,
//! decodes every frame (a malformed frame ends that stream with an error; the server keeps
//! serving), and hands the messages to the node through a bounded channel.
//!
//! Every limit is in [`TransportConfig`]. What is not here: deciding whom to send to (the Raft
//! driver), TLS (roadmap step 4).

pub mod convert;
pub mod server;
pub mod snapshot;
pub mod stream;

mod peer;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chorus_proto::peer as pb;
use chorus_raft::{Message, MessageBody, NodeId};
use tokio::sync::mpsc;

pub use server::{PeerService, serve};

/// The limits of the peer transport. Validate with [`TransportConfig::validate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportConfig {
    /// Messages waiting for one remote member; more are dropped.
    pub peer_queue_msgs_max: usize,
    /// Messages in one `MessageBatch`.
    pub batch_msgs_max: usize,
    /// Encoded bytes of the messages in one `MessageBatch` (a single larger message, up to
    /// `frame_bytes_max`, travels alone).
    pub batch_bytes_max: usize,
    /// Largest frame either side accepts, on a Raft message stream as in gRPC; larger messages
    /// are dropped by the sender. At most [`stream::FRAME_BYTES_LIMIT`].
    pub frame_bytes_max: usize,
    /// Snapshot data in one `SnapshotChunk`.
    pub snapshot_chunk_bytes_max: usize,
    /// Largest snapshot a receiver accepts (it is held in memory until complete).
    pub snapshot_bytes_max: u64,
    /// Snapshots waiting for one remote member; more are dropped and reported as failed.
    pub snapshot_queue_max: usize,
    /// Received messages waiting for the node; a full queue slows the senders down.
    pub inbound_queue_msgs_max: usize,
    /// Reports (unreachable peer, snapshot outcome) waiting for the node; more are dropped.
    pub report_queue_max: usize,
    /// First delay before reconnecting to a member.
    pub reconnect_backoff_min: Duration,
    /// Longest delay between two connection attempts.
    pub reconnect_backoff_max: Duration,
    /// Time allowed to open a TCP connection.
    pub connect_timeout: Duration,
    /// Time allowed for a handshake answer.
    pub handshake_timeout: Duration,
    /// Interval of HTTP/2 pings on an idle or busy connection, so that a member that vanished
    /// without closing its connection (a cut cable, a paused process) is noticed.
    pub keepalive_interval: Duration,
    /// Time without an answer to a ping after which the connection is considered dead.
    pub keepalive_timeout: Duration,
    /// After shutdown is requested, time allowed for open streams to end before the server
    /// stops anyway.
    pub shutdown_grace: Duration,
}

/// Room left in a frame for everything but the snapshot data of a chunk, or for the framing
/// around the messages of a batch.
pub const FRAME_OVERHEAD_BYTES: usize = 64 * 1024;

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            peer_queue_msgs_max: 4096,
            batch_msgs_max: 256,
            batch_bytes_max: 1024 * 1024,
            frame_bytes_max: 16 * 1024 * 1024,
            snapshot_chunk_bytes_max: 1024 * 1024,
            snapshot_bytes_max: 4 * 1024 * 1024 * 1024,
            snapshot_queue_max: 2,
            inbound_queue_msgs_max: 4096,
            report_queue_max: 1024,
            reconnect_backoff_min: Duration::from_millis(50),
            reconnect_backoff_max: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(3),
            handshake_timeout: Duration::from_secs(5),
            keepalive_interval: Duration::from_secs(2),
            keepalive_timeout: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(2),
        }
    }
}

/// Why a [`TransportConfig`] was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransportConfigError {
    #[error("transport limit {name} must be greater than 0")]
    Zero { name: &'static str },
    #[error(
        "batch_bytes_max ({batch_bytes_max}) plus {FRAME_OVERHEAD_BYTES} bytes of framing must \
         fit in frame_bytes_max ({frame_bytes_max})"
    )]
    BatchAboveFrame {
        batch_bytes_max: usize,
        frame_bytes_max: usize,
    },
    #[error(
        "snapshot_chunk_bytes_max ({chunk_bytes_max}) plus {FRAME_OVERHEAD_BYTES} bytes of \
         framing must fit in frame_bytes_max ({frame_bytes_max})"
    )]
    ChunkAboveFrame {
        chunk_bytes_max: usize,
        frame_bytes_max: usize,
    },
    #[error("reconnect_backoff_min ({min:?}) is above reconnect_backoff_max ({max:?})")]
    BackoffInverted { min: Duration, max: Duration },
    #[error(
        "frame_bytes_max ({frame_bytes_max}) is above {}, the most a frame's length prefix can say",
        stream::FRAME_BYTES_LIMIT
    )]
    FrameAboveLimit { frame_bytes_max: usize },
}

impl TransportConfig {
    /// How peer streams are opened under these limits.
    pub fn dial(&self) -> stream::Dial {
        stream::Dial {
            connect_timeout: self.connect_timeout,
            handshake_timeout: self.handshake_timeout,
            frame_bytes_max: self.frame_bytes_max,
        }
    }

    /// Rejects limits that cannot work, naming the values.
    pub fn validate(&self) -> Result<(), TransportConfigError> {
        let counts = [
            ("peer_queue_msgs_max", self.peer_queue_msgs_max as u64),
            ("batch_msgs_max", self.batch_msgs_max as u64),
            ("batch_bytes_max", self.batch_bytes_max as u64),
            ("frame_bytes_max", self.frame_bytes_max as u64),
            (
                "snapshot_chunk_bytes_max",
                self.snapshot_chunk_bytes_max as u64,
            ),
            ("snapshot_bytes_max", self.snapshot_bytes_max),
            ("snapshot_queue_max", self.snapshot_queue_max as u64),
            ("inbound_queue_msgs_max", self.inbound_queue_msgs_max as u64),
            ("report_queue_max", self.report_queue_max as u64),
        ];
        let durations = [
            ("reconnect_backoff_min", self.reconnect_backoff_min),
            ("reconnect_backoff_max", self.reconnect_backoff_max),
            ("connect_timeout", self.connect_timeout),
            ("handshake_timeout", self.handshake_timeout),
            ("keepalive_interval", self.keepalive_interval),
            ("keepalive_timeout", self.keepalive_timeout),
            ("shutdown_grace", self.shutdown_grace),
        ];
        if let Some((name, _)) = counts.iter().find(|(_, v)| *v == 0) {
            return Err(TransportConfigError::Zero { name });
        }
        if let Some((name, _)) = durations.iter().find(|(_, d)| d.is_zero()) {
            return Err(TransportConfigError::Zero { name });
        }
        if self.batch_bytes_max.saturating_add(FRAME_OVERHEAD_BYTES) > self.frame_bytes_max {
            return Err(TransportConfigError::BatchAboveFrame {
                batch_bytes_max: self.batch_bytes_max,
                frame_bytes_max: self.frame_bytes_max,
            });
        }
        if self
            .snapshot_chunk_bytes_max
            .saturating_add(FRAME_OVERHEAD_BYTES)
            > self.frame_bytes_max
        {
            return Err(TransportConfigError::ChunkAboveFrame {
                chunk_bytes_max: self.snapshot_chunk_bytes_max,
                frame_bytes_max: self.frame_bytes_max,
            });
        }
        if self.frame_bytes_max > stream::FRAME_BYTES_LIMIT {
            return Err(TransportConfigError::FrameAboveLimit {
                frame_bytes_max: self.frame_bytes_max,
            });
        }
        if self.reconnect_backoff_min > self.reconnect_backoff_max {
            return Err(TransportConfigError::BackoffInverted {
                min: self.reconnect_backoff_min,
                max: self.reconnect_backoff_max,
            });
        }
        Ok(())
    }
}

/// Who this member is, as told to peers in every handshake and first frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LocalIdentity {
    /// Equal on every member of one cluster.
    pub cluster_id: u64,
    pub member_id: NodeId,
}

impl LocalIdentity {
    /// The wire form, with this crate's protocol version.
    pub fn to_proto(self) -> pb::PeerIdentity {
        pb::PeerIdentity {
            cluster_id: self.cluster_id,
            member_id: self.member_id.get(),
            protocol_version: chorus_proto::PEER_PROTOCOL_VERSION,
        }
    }
}

/// What the transport tells the node, as the Raft core's `report_unreachable` and
/// `report_snapshot` expect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportReport {
    /// Messages to this member were lost (queue full, connection failed or refused).
    Unreachable(NodeId),
    /// A snapshot to this member was delivered and checked (`ok`), or was lost.
    Snapshot { to: NodeId, ok: bool },
}

/// Counters of the whole transport; read with [`PeerTransport::stats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    msgs_sent: AtomicU64,
    batches_sent: AtomicU64,
    msgs_dropped_queue_full: AtomicU64,
    msgs_dropped_too_large: AtomicU64,
    msgs_dropped_no_peer: AtomicU64,
    msgs_dropped_send_failed: AtomicU64,
    connect_failures: AtomicU64,
    streams_opened: AtomicU64,
    handshake_refusals: AtomicU64,
    snapshots_sent: AtomicU64,
    snapshots_failed: AtomicU64,
    reports_dropped: AtomicU64,
}

/// A copy of the transport's counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Messages written to a Raft message stream.
    pub msgs_sent: u64,
    pub batches_sent: u64,
    /// Messages dropped because the member's queue was full.
    pub msgs_dropped_queue_full: u64,
    /// Messages dropped because their encoding is above `frame_bytes_max`.
    pub msgs_dropped_too_large: u64,
    /// Messages to a member the transport does not know.
    pub msgs_dropped_no_peer: u64,
    /// Messages dropped because their member was removed while they waited to be sent again.
    pub msgs_dropped_send_failed: u64,
    /// Connection attempts that failed (refused, timed out, handshake unanswered).
    pub connect_failures: u64,
    /// Raft message streams opened: the first to each member, and each after one was lost.
    pub streams_opened: u64,
    /// Handshakes the remote member refused (another cluster, another member, bad version).
    pub handshake_refusals: u64,
    pub snapshots_sent: u64,
    pub snapshots_failed: u64,
    /// Reports dropped because the node's report queue was full.
    pub reports_dropped: u64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn snapshot(&self) -> TransportStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TransportStats {
            msgs_sent: get(&self.msgs_sent),
            batches_sent: get(&self.batches_sent),
            msgs_dropped_queue_full: get(&self.msgs_dropped_queue_full),
            msgs_dropped_too_large: get(&self.msgs_dropped_too_large),
            msgs_dropped_no_peer: get(&self.msgs_dropped_no_peer),
            msgs_dropped_send_failed: get(&self.msgs_dropped_send_failed),
            connect_failures: get(&self.connect_failures),
            streams_opened: get(&self.streams_opened),
            handshake_refusals: get(&self.handshake_refusals),
            snapshots_sent: get(&self.snapshots_sent),
            snapshots_failed: get(&self.snapshots_failed),
            reports_dropped: get(&self.reports_dropped),
        }
    }
}

/// What the per-member tasks share with the transport.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: TransportConfig,
    pub(crate) local: LocalIdentity,
    pub(crate) counters: Counters,
    reports: mpsc::Sender<TransportReport>,
}

impl Shared {
    /// Tells the node something without ever waiting: a full report queue drops the report.
    pub(crate) fn report(&self, report: TransportReport) {
        if self.reports.try_send(report).is_err() {
            Counters::add(&self.counters.reports_dropped, 1);
        }
    }
}

/// The queues of one remote member; dropping them ends its tasks.
#[derive(Debug)]
struct PeerQueues {
    messages: mpsc::Sender<Message>,
    snapshots: mpsc::Sender<Message>,
}

/// Sends Raft messages to the other members. Cheap to clone; all clones share the members.
///
/// Must be used inside a tokio runtime: adding a member spawns its tasks.
#[derive(Clone, Debug)]
pub struct PeerTransport {
    shared: Arc<Shared>,
    peers: Arc<Mutex<HashMap<NodeId, PeerQueues>>>,
}

impl PeerTransport {
    /// A transport for `local`, with the receiving end of its reports.
    pub fn new(
        config: TransportConfig,
        local: LocalIdentity,
    ) -> Result<(Self, mpsc::Receiver<TransportReport>), TransportConfigError> {
        config.validate()?;
        let (reports, reports_rx) = mpsc::channel(config.report_queue_max);
        let shared = Arc::new(Shared {
            config,
            local,
            counters: Counters::default(),
            reports,
        });
        let transport = PeerTransport {
            shared,
            peers: Arc::new(Mutex::new(HashMap::new())),
        };
        Ok((transport, reports_rx))
    }

    /// Starts sending to `member` at `url` (such as `http://10.0.0.2:2380`). Replaces an
    /// existing entry for the member, whose queued messages are then dropped.
    pub fn add_peer(&self, member: NodeId, url: String) {
        let config = &self.shared.config;
        let (messages, messages_rx) = mpsc::channel(config.peer_queue_msgs_max);
        let (snapshots, snapshots_rx) = mpsc::channel(config.snapshot_queue_max);
        let target = peer::Target { member, url };
        tokio::spawn(peer::run_message_sender(
            self.shared.clone(),
            target.clone(),
            messages_rx,
        ));
        tokio::spawn(peer::run_snapshot_sender(
            self.shared.clone(),
            target,
            snapshots_rx,
        ));
        self.lock_peers().insert(
            member,
            PeerQueues {
                messages,
                snapshots,
            },
        );
    }

    /// Stops sending to `member`; its queued messages are dropped.
    pub fn remove_peer(&self, member: NodeId) {
        self.lock_peers().remove(&member);
    }

    /// Queues a message for its recipient without waiting. A message that cannot be queued is
    /// dropped, counted and reported as [`TransportReport::Unreachable`] (or, for a snapshot,
    /// as a failed [`TransportReport::Snapshot`]).
    pub fn send(&self, message: Message) {
        let to = message.to;
        let is_snapshot = matches!(message.body, MessageBody::Snapshot { .. });
        let peers = self.lock_peers();
        let Some(queues) = peers.get(&to) else {
            drop(peers);
            Counters::add(&self.shared.counters.msgs_dropped_no_peer, 1);
            tracing::debug!(%to, "dropping a message to an unknown member");
            self.shared.report(TransportReport::Unreachable(to));
            return;
        };
        let queue = if is_snapshot {
            &queues.snapshots
        } else {
            &queues.messages
        };
        if queue.try_send(message).is_err() {
            drop(peers);
            Counters::add(&self.shared.counters.msgs_dropped_queue_full, 1);
            if is_snapshot {
                Counters::add(&self.shared.counters.snapshots_failed, 1);
                self.shared
                    .report(TransportReport::Snapshot { to, ok: false });
            }
            self.shared.report(TransportReport::Unreachable(to));
        }
    }

    /// The transport's counters now.
    pub fn stats(&self) -> TransportStats {
        self.shared.counters.snapshot()
    }

    fn lock_peers(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, PeerQueues>> {
        // A panic while holding this lock cannot leave the map half-updated (every update is a
        // single insert or remove), so a poisoned lock is still usable.
        self.peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: the default limits are valid, and each kind of nonsense is refused by name.
    // Method: a table of one broken field per row.
    #[test]
    fn config_validation() {
        assert_eq!(TransportConfig::default().validate(), Ok(()));
        type Break = fn(&mut TransportConfig);
        let cases: &[(Break, &str)] = &[
            (|c| c.peer_queue_msgs_max = 0, "peer_queue_msgs_max"),
            (|c| c.batch_msgs_max = 0, "batch_msgs_max"),
            (|c| c.batch_bytes_max = 0, "batch_bytes_max"),
            (
                |c| c.snapshot_chunk_bytes_max = 0,
                "snapshot_chunk_bytes_max",
            ),
            (|c| c.snapshot_bytes_max = 0, "snapshot_bytes_max"),
            (|c| c.snapshot_queue_max = 0, "snapshot_queue_max"),
            (|c| c.inbound_queue_msgs_max = 0, "inbound_queue_msgs_max"),
            (|c| c.report_queue_max = 0, "report_queue_max"),
            (|c| c.connect_timeout = Duration::ZERO, "connect_timeout"),
            (
                |c| c.keepalive_timeout = Duration::ZERO,
                "keepalive_timeout",
            ),
            (
                |c| c.reconnect_backoff_min = Duration::ZERO,
                "reconnect_backoff_min",
            ),
            (
                |c| c.batch_bytes_max = c.frame_bytes_max,
                "batch_bytes_max (16777216)",
            ),
            (
                |c| c.snapshot_chunk_bytes_max = c.frame_bytes_max,
                "snapshot_chunk_bytes_max (16777216)",
            ),
            (
                |c| c.reconnect_backoff_min = Duration::from_secs(60),
                "reconnect_backoff_min (60s)",
            ),
            (
                |c| c.frame_bytes_max = stream::FRAME_BYTES_LIMIT + 1,
                "frame_bytes_max (4294967296)",
            ),
        ];
        for (break_it, name) in cases {
            let mut config = TransportConfig::default();
            break_it(&mut config);
            let err = config.validate().expect_err(name);
            assert!(err.to_string().contains(name), "{err} lacks {name}");
        }
    }
}
