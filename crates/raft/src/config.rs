//! The one validated configuration of a Raft node: timing in ticks, feature switches and every
//! limit the core enforces.

use crate::types::{GroupId, LogIndex, NodeId};

/// How a leader answers a linearizable read (§6.4 of the Raft thesis).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReadOnlyOption {
    /// ReadIndex: the leader confirms it is still leader with a round of heartbeats acknowledged
    /// by a quorum before it answers (§6.4).
    #[default]
    Safe,
    /// Lease reads: the leader answers at once while it has heard from a quorum within the lease
    /// (§6.4.1). Relies on bounded clock drift, and requires check-quorum.
    LeaseBased,
}

/// A deliberately broken rule, compiled in only with the `inject-bugs` feature so that the
/// simulator can prove that its checkers catch each kind of violation.
#[cfg(feature = "inject-bugs")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InjectedBug {
    /// A voter grants its vote to a second candidate in the same term (breaks §5.2).
    DoubleVote,
    /// The leader commits an entry of an older term by counting replicas (breaks §5.4.2).
    CommitOldTerm,
    /// A lease read is served without checking that the lease still holds: the leader never
    /// checks quorum contact, neither for its lease nor for the check-quorum step-down.
    StaleLeaseRead,
    /// A restarted node ignores the vote in its persisted hard state.
    ForgetVoteOnRestart,
}

/// The configuration of one node of one group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// This node. Never zero.
    pub id: NodeId,
    /// The group this node belongs to; messages of other groups are refused.
    pub group_id: GroupId,
    /// The base election timeout. The effective timeout is drawn in
    /// `[election_ticks, 2 * election_ticks)` after each reset (§5.2).
    pub election_ticks: u32,
    /// How often a leader sends heartbeats. Must be below `election_ticks`.
    pub heartbeat_ticks: u32,
    /// Run a pre-vote phase before incrementing the term (§9.6 of the thesis).
    pub pre_vote: bool,
    /// A leader steps down when it has not heard from a quorum within an election timeout, and
    /// followers that heard from a leader recently refuse votes (§6.2 of the thesis).
    pub check_quorum: bool,
    /// How reads are confirmed.
    pub read_only: ReadOnlyOption,
    /// The safety margin for clock drift: a lease lasts `election_ticks - lease_drift_ticks`.
    pub lease_drift_ticks: u32,
    /// The most `Append` messages in flight to one follower.
    pub inflight_msgs_max: usize,
    /// The most entry bytes in one `Append` message (at least one entry is always sent).
    pub append_bytes_max: u64,
    /// The most bytes of proposed but uncommitted entries a leader accepts.
    pub uncommitted_bytes_max: u64,
    /// The most bytes of committed entries handed out in one `Ready` (at least one entry).
    pub committed_bytes_max: u64,
    /// The most read requests a leader queues while it has not yet committed in its term.
    pub read_index_pending_max: usize,
    /// The applied index to resume from after a restart.
    pub applied: LogIndex,
    /// Seeds the randomized election timeouts.
    pub seed: u64,
    /// A deliberately broken rule (simulator only).
    #[cfg(feature = "inject-bugs")]
    pub injected_bug: Option<InjectedBug>,
}

/// Why a [`Config`] was refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ConfigError {
    #[error("node id must not be zero")]
    IdZero,
    #[error(
        "election_ticks ({election_ticks}) must be greater than heartbeat_ticks ({heartbeat_ticks})"
    )]
    ElectionNotAboveHeartbeat {
        election_ticks: u32,
        heartbeat_ticks: u32,
    },
    #[error("heartbeat_ticks must be at least 1")]
    HeartbeatTicksZero,
    #[error("inflight_msgs_max must be at least 1")]
    InflightMsgsZero,
    #[error("{name} must be at least 1")]
    LimitZero { name: &'static str },
    #[error("read_only = LeaseBased requires check_quorum = true")]
    LeaseWithoutCheckQuorum,
    #[error(
        "lease_drift_ticks ({lease_drift_ticks}) must be below election_ticks ({election_ticks})"
    )]
    LeaseDriftTooLarge {
        lease_drift_ticks: u32,
        election_ticks: u32,
    },
}

impl Config {
    /// A configuration with sane defaults: 10 election ticks, 1 heartbeat tick, pre-vote and
    /// check-quorum on, Safe reads.
    pub fn new(id: NodeId, group_id: GroupId) -> Config {
        Config {
            id,
            group_id,
            election_ticks: 10,
            heartbeat_ticks: 1,
            pre_vote: true,
            check_quorum: true,
            read_only: ReadOnlyOption::Safe,
            lease_drift_ticks: 2,
            inflight_msgs_max: 256,
            append_bytes_max: 1024 * 1024,
            uncommitted_bytes_max: 64 * 1024 * 1024,
            committed_bytes_max: 16 * 1024 * 1024,
            read_index_pending_max: 4096,
            applied: LogIndex(0),
            seed: id.get(),
            #[cfg(feature = "inject-bugs")]
            injected_bug: None,
        }
    }

    /// Checks every value and every relation between values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id.get() == 0 {
            return Err(ConfigError::IdZero);
        }
        if self.heartbeat_ticks == 0 {
            return Err(ConfigError::HeartbeatTicksZero);
        }
        if self.election_ticks <= self.heartbeat_ticks {
            return Err(ConfigError::ElectionNotAboveHeartbeat {
                election_ticks: self.election_ticks,
                heartbeat_ticks: self.heartbeat_ticks,
            });
        }
        if self.inflight_msgs_max == 0 {
            return Err(ConfigError::InflightMsgsZero);
        }
        self.validate_limits()?;
        self.validate_lease()
    }

    fn validate_limits(&self) -> Result<(), ConfigError> {
        let limits = [
            ("append_bytes_max", self.append_bytes_max),
            ("uncommitted_bytes_max", self.uncommitted_bytes_max),
            ("committed_bytes_max", self.committed_bytes_max),
            ("read_index_pending_max", self.read_index_pending_max as u64),
        ];
        for (name, value) in limits {
            if value == 0 {
                return Err(ConfigError::LimitZero { name });
            }
        }
        Ok(())
    }

    fn validate_lease(&self) -> Result<(), ConfigError> {
        if self.read_only != ReadOnlyOption::LeaseBased {
            return Ok(());
        }
        if !self.check_quorum {
            return Err(ConfigError::LeaseWithoutCheckQuorum);
        }
        if self.lease_drift_ticks >= self.election_ticks {
            return Err(ConfigError::LeaseDriftTooLarge {
                lease_drift_ticks: self.lease_drift_ticks,
                election_ticks: self.election_ticks,
            });
        }
        Ok(())
    }

    /// Whether `bug` is switched on. Always false without the `inject-bugs` feature.
    #[cfg(feature = "inject-bugs")]
    pub(crate) fn bug(&self, bug: InjectedBug) -> bool {
        self.injected_bug == Some(bug)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Config {
        Config::new(NodeId(1), GroupId(1))
    }

    /// Goal: every documented rejection fires, and the defaults pass. Method: a table of
    /// mutations, each with the error it must produce.
    #[test]
    fn validate_rejects_nonsense() {
        type Mutate = fn(&mut Config);
        let cases: Vec<(Mutate, Option<ConfigError>)> = vec![
            (|_| {}, None),
            (|c| c.id = NodeId(0), Some(ConfigError::IdZero)),
            (
                |c| c.heartbeat_ticks = 0,
                Some(ConfigError::HeartbeatTicksZero),
            ),
            (
                |c| c.election_ticks = 1,
                Some(ConfigError::ElectionNotAboveHeartbeat {
                    election_ticks: 1,
                    heartbeat_ticks: 1,
                }),
            ),
            (
                |c| c.inflight_msgs_max = 0,
                Some(ConfigError::InflightMsgsZero),
            ),
            (
                |c| c.append_bytes_max = 0,
                Some(ConfigError::LimitZero {
                    name: "append_bytes_max",
                }),
            ),
            (
                |c| {
                    c.read_only = ReadOnlyOption::LeaseBased;
                    c.check_quorum = false;
                },
                Some(ConfigError::LeaseWithoutCheckQuorum),
            ),
            (
                |c| {
                    c.read_only = ReadOnlyOption::LeaseBased;
                    c.lease_drift_ticks = 10;
                },
                Some(ConfigError::LeaseDriftTooLarge {
                    lease_drift_ticks: 10,
                    election_ticks: 10,
                }),
            ),
            (|c| c.read_only = ReadOnlyOption::LeaseBased, None),
        ];
        for (i, (mutate, want)) in cases.into_iter().enumerate() {
            let mut config = base();
            mutate(&mut config);
            assert_eq!(config.validate().err(), want, "case {i}");
        }
    }
}
