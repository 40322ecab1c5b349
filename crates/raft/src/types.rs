//! The vocabulary shared by the core, its storage and its transport: identifiers, log entries,
//! hard state, cluster configuration, snapshots and messages.
//!
//! These types are plain data. Encoding them for a disk or a wire is the job of the crates that
//! own the disk (`chorus-storage`) and the wire (`chorus-server`); nothing here does I/O.

use std::collections::BTreeSet;
use std::fmt;

use bytes::Bytes;

macro_rules! id_newtype {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub u64);

        impl $name {
            /// The raw number.
            pub const fn get(self) -> u64 {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }

        impl From<u64> for $name {
            fn from(value: u64) -> Self {
                Self(value)
            }
        }
    };
}

id_newtype!(
    /// A member of a Raft group. Zero is never a valid node id.
    NodeId
);
id_newtype!(
    /// One Raft group. A node may host many groups; every message names its group.
    GroupId
);
id_newtype!(
    /// A Raft term (§5.1 of the Raft paper). Terms only grow.
    Term
);
id_newtype!(
    /// The position of an entry in the Raft log. The first real entry has index 1; index 0 is the
    /// empty log. A log index is never an MVCC revision.
    LogIndex
);

impl Term {
    /// The next term.
    pub const fn next(self) -> Term {
        Term(self.0 + 1)
    }
}

impl LogIndex {
    /// The index after this one.
    pub const fn next(self) -> LogIndex {
        LogIndex(self.0 + 1)
    }

    /// The index before this one, saturating at zero.
    pub const fn prev(self) -> LogIndex {
        LogIndex(self.0.saturating_sub(1))
    }

    /// This index plus `n`.
    pub const fn plus(self, n: u64) -> LogIndex {
        LogIndex(self.0 + n)
    }
}

/// The part of a node's state that must be on stable storage before it answers a message that
/// depends on it (Figure 2 of the Raft paper: currentTerm, votedFor; plus the commit index, which
/// lets a restarted node apply without waiting for a leader).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    pub term: Term,
    pub vote: Option<NodeId>,
    pub commit: LogIndex,
}

/// What a log entry carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryPayload {
    /// Application data. A leader appends an empty `Normal` entry when it takes office (§5.4.2),
    /// which applications must ignore.
    Normal(Bytes),
    /// A membership change, applied with [`crate::RawNode::apply_conf_change`] once committed.
    ConfChange(ConfChange),
}

/// One entry of the replicated log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub term: Term,
    pub index: LogIndex,
    pub payload: EntryPayload,
}

impl Entry {
    /// The size this entry counts for in byte-based limits (payload plus a fixed overhead).
    pub fn size_bytes(&self) -> u64 {
        const OVERHEAD_BYTES: u64 = 24;
        let payload = match &self.payload {
            EntryPayload::Normal(data) => data.len() as u64,
            EntryPayload::ConfChange(cc) => 16 * cc.changes.len() as u64 + cc.context.len() as u64,
        };
        OVERHEAD_BYTES + payload
    }
}

/// One step of a membership change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfChangeSingle {
    AddVoter(NodeId),
    AddLearner(NodeId),
    RemoveNode(NodeId),
}

/// How a membership change moves through joint consensus (§4.3 of the Raft thesis).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConfChangeTransition {
    /// A single change of one voter is applied directly; anything else enters a joint
    /// configuration that the leader leaves on its own once the change is committed.
    #[default]
    Auto,
    /// Always enter a joint configuration; the leader leaves it on its own.
    JointImplicit,
    /// Always enter a joint configuration; the application leaves it with an empty change.
    JointExplicit,
}

/// A membership change proposal. An empty `changes` list leaves the current joint configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfChange {
    pub transition: ConfChangeTransition,
    pub changes: Vec<ConfChangeSingle>,
    /// Opaque application data carried with the change (for example a member's URLs).
    pub context: Bytes,
}

impl ConfChange {
    /// Whether this change asks to leave a joint configuration.
    pub fn is_leave_joint(&self) -> bool {
        self.changes.is_empty()
    }
}

/// A cluster configuration: the voters, the learners, and during joint consensus the outgoing
/// voters and the learners that join once the joint configuration is left.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfState {
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
    /// Non-empty exactly while in a joint configuration: the voters of the old configuration.
    pub voters_outgoing: BTreeSet<NodeId>,
    /// Voters of the outgoing configuration that become learners when the joint state is left.
    pub learners_next: BTreeSet<NodeId>,
    /// Whether the leader leaves the joint configuration by itself.
    pub auto_leave: bool,
}

impl ConfState {
    /// A configuration of the given voters and no learners.
    pub fn with_voters(voters: impl IntoIterator<Item = NodeId>) -> Self {
        ConfState {
            voters: voters.into_iter().collect(),
            ..ConfState::default()
        }
    }

    /// Whether this is a joint configuration.
    pub fn is_joint(&self) -> bool {
        !self.voters_outgoing.is_empty()
    }
}

/// Describes the state a snapshot covers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// The last log index the snapshot includes.
    pub index: LogIndex,
    /// The term of the entry at `index`.
    pub term: Term,
    /// The configuration in force at `index`.
    pub conf_state: ConfState,
}

/// A point-in-time image of the application state machine, with the metadata Raft needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub meta: SnapshotMeta,
    pub data: Bytes,
}

/// A message between members of one Raft group.
///
/// `term` is the sender's term, except for pre-vote requests and their granting responses, which
/// carry the term the candidate would campaign with (§9.6 of the Raft thesis).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub group_id: GroupId,
    pub from: NodeId,
    pub to: NodeId,
    pub term: Term,
    pub body: MessageBody,
}

/// The message kinds of the protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageBody {
    /// Pre-vote request (§9.6 of the Raft thesis).
    PreVote {
        last_index: LogIndex,
        last_term: Term,
    },
    PreVoteResponse {
        reject: bool,
    },
    /// RequestVote (§5.2). `leader_transfer` marks a campaign started by `TimeoutNow`, which
    /// voters grant even while they believe a leader is alive (§3.10 of the thesis).
    Vote {
        last_index: LogIndex,
        last_term: Term,
        leader_transfer: bool,
    },
    VoteResponse {
        reject: bool,
    },
    /// AppendEntries (§5.3).
    Append {
        prev_index: LogIndex,
        prev_term: Term,
        entries: Vec<Entry>,
        commit: LogIndex,
    },
    /// Answer to `Append`. On success `index` is the follower's last matching index. On a
    /// rejection `index` is the rejected `prev_index`, and `reject_hint`/`hint_term` let the leader
    /// skip a whole conflicting term at once (fast backtracking).
    AppendResponse {
        index: LogIndex,
        reject: bool,
        reject_hint: LogIndex,
        hint_term: Term,
    },
    /// Leader heartbeat. `context` carries the leader's heartbeat round (eight bytes, big
    /// endian), which the follower echoes; rounds confirm reads and measure the lease (see
    /// `read_only`). Followers treat it as opaque.
    Heartbeat {
        commit: LogIndex,
        context: Bytes,
    },
    HeartbeatResponse {
        context: Bytes,
    },
    /// InstallSnapshot (§7).
    Snapshot {
        snapshot: Snapshot,
    },
    /// Tells the transfer target to campaign at once (§3.10 of the thesis).
    TimeoutNow,
    /// A follower asks the leader for a read index on behalf of a local read request.
    ReadIndex {
        context: Bytes,
    },
    /// The leader's answer: reads that wait until `index` is applied are linearizable. An index of
    /// zero with `reject` means the leader could not serve it (it has not committed in its term).
    ReadIndexResponse {
        index: LogIndex,
        context: Bytes,
        reject: bool,
    },
}

impl MessageBody {
    /// A short name for logs and statistics.
    pub fn kind(&self) -> &'static str {
        match self {
            MessageBody::PreVote { .. } => "PreVote",
            MessageBody::PreVoteResponse { .. } => "PreVoteResponse",
            MessageBody::Vote { .. } => "Vote",
            MessageBody::VoteResponse { .. } => "VoteResponse",
            MessageBody::Append { .. } => "Append",
            MessageBody::AppendResponse { .. } => "AppendResponse",
            MessageBody::Heartbeat { .. } => "Heartbeat",
            MessageBody::HeartbeatResponse { .. } => "HeartbeatResponse",
            MessageBody::Snapshot { .. } => "Snapshot",
            MessageBody::TimeoutNow => "TimeoutNow",
            MessageBody::ReadIndex { .. } => "ReadIndex",
            MessageBody::ReadIndexResponse { .. } => "ReadIndexResponse",
        }
    }
}
