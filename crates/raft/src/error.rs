//! The errors the core reports to its caller.

use crate::confchange::ConfChangeError;
use crate::config::ConfigError;
use crate::storage::StorageError;
use crate::types::{GroupId, NodeId};

/// Why an input was refused. None of these leave the node in a bad state.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Error {
    #[error("invalid config: {0}")]
    Config(#[from] ConfigError),
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("message for group {got} delivered to group {expected}")]
    WrongGroup { expected: GroupId, got: GroupId },
    #[error("message for node {to} delivered to node {id}")]
    WrongRecipient { id: NodeId, to: NodeId },
    #[error("message from node id zero")]
    InvalidSender,
    #[error("malformed message from {from}: {reason}")]
    MalformedMessage { from: NodeId, reason: String },
    #[error("conf change: {0}")]
    ConfChange(#[from] ConfChangeError),
    #[error("the applied index {applied} is past the commit index {committed}")]
    AppliedPastCommit { applied: u64, committed: u64 },
    #[error("the persisted hard state is out of range: {0}")]
    BadHardState(String),
}

/// Why a proposal or read request was refused. The caller may retry elsewhere or later.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ProposeError {
    #[error("not the leader (leader hint: {leader_hint:?})")]
    NotLeader { leader_hint: Option<NodeId> },
    #[error("proposal dropped: too much uncommitted or pending work")]
    ProposalDropped,
    #[error("a leadership transfer is in progress")]
    TransferInProgress,
    #[error("a configuration change is still pending")]
    ConfChangeInProgress,
    #[error("invalid configuration change: {0}")]
    InvalidConfChange(ConfChangeError),
}
