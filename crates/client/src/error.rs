//! The client's one error type, and the classification of gRPC failures into "safe to retry",
//! "not sent" and "outcome unknown".

use std::error::Error as StdError;

use tonic::Code;

/// Everything a client call can fail with.
///
/// Server answers keep etcd's gRPC code and message (for example `InvalidArgument` /
/// `"etcdserver: requested lease not found"`), so callers can match on the same strings as with
/// etcd's own clients.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The server answered with an error: etcd's code and message, unchanged.
    #[error("server error ({code:?}): {message}")]
    Server {
        /// The gRPC status code.
        code: Code,
        /// etcd's message, e.g. `etcdserver: requested lease not found`.
        message: String,
    },
    /// A write was sent but no answer came back: it may or may not have been applied. The
    /// client never re-sends such a write on its own; the caller decides (read back, or use a
    /// txn that is safe to repeat).
    #[error("outcome unknown: the write may or may not have been applied ({message})")]
    OutcomeUnknown {
        /// What went wrong on the way.
        message: String,
    },
    /// No endpoint could take the request: all are unhealthy, open-circuited, or failed.
    #[error("no endpoint available: {message}")]
    Unavailable {
        /// The last failure seen.
        message: String,
    },
    /// The retry budget is spent: the request failed and retrying now would add load to a
    /// cluster that is already failing.
    #[error("retry budget exhausted after: {last}")]
    RetryBudgetExhausted {
        /// The failure that would have been retried.
        last: String,
    },
    /// A watch asked for revisions that were compacted away. Events between the requested
    /// revision and `compact_revision` are lost; the watcher must re-read the state.
    #[error("required revision has been compacted; compact revision {compact_revision}")]
    Compacted {
        /// The oldest revision still available.
        compact_revision: i64,
    },
    /// The server canceled a watch for another reason than compaction.
    #[error("watch canceled: {reason}")]
    WatchCanceled {
        /// The server's reason.
        reason: String,
    },
    /// A lease ended (expired, revoked, or could not be renewed in time).
    #[error("lease {id:x} lost: {reason}")]
    LeaseLost {
        /// The lease ID.
        id: i64,
        /// Why it was lost.
        reason: String,
    },
    /// A caller-side mistake: bad endpoint, bad option.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A recipe's own failure (a lock no longer held, a saga step failed, ...).
    #[error("{0}")]
    Recipe(String),
}

/// Convenience alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The gRPC code of a server answer, if this is one.
    pub fn code(&self) -> Option<Code> {
        match self {
            Error::Server { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The error of a server answer.
    pub(crate) fn from_status(status: &tonic::Status) -> Error {
        Error::Server {
            code: status.code(),
            message: status.message().to_string(),
        }
    }
}

/// What a failed attempt means for the request and for the endpoint it went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The request never left the client (connection refused, no route): safe to send elsewhere,
    /// even a write. The endpoint is at fault.
    NotSent,
    /// The server refused before doing anything (no leader, too many requests): safe to send
    /// elsewhere. The endpoint is at fault.
    Refused,
    /// The request may have reached the server and been applied: only reads and idempotent
    /// operations may be retried. The endpoint is at fault.
    Ambiguous,
    /// A definite answer about the request itself (bad argument, not found, compare failed):
    /// never retried, and the endpoint is healthy.
    Definite,
}

/// etcd messages that are returned before a request is proposed, so nothing was applied.
const REFUSED_MESSAGES: &[&str] = &[
    "etcdserver: no leader",
    "etcdserver: not capable",
    "etcdserver: too many requests",
    "etcdserver: server stopped",
];

/// Classifies a failed call.
pub(crate) fn classify(status: &tonic::Status) -> Failure {
    if is_connect_failure(status) {
        return Failure::NotSent;
    }
    if REFUSED_MESSAGES.contains(&status.message()) {
        return Failure::Refused;
    }
    match status.code() {
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Cancelled
        | Code::Unknown
        | Code::Aborted
        | Code::Internal => Failure::Ambiguous,
        _ => Failure::Definite,
    }
}

/// Whether the call failed while connecting, i.e. before any byte of the request was written.
/// tonic reports those as `Unavailable` with the transport error as the source; the connect
/// step is recognisable by its I/O error kind or its message.
fn is_connect_failure(status: &tonic::Status) -> bool {
    if status.code() != Code::Unavailable {
        return false;
    }
    let mut source: Option<&(dyn StdError + 'static)> = status.source();
    while let Some(error) = source {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            if matches!(
                io.kind(),
                ConnectionRefused | AddrNotAvailable | HostUnreachable | NetworkUnreachable
            ) {
                return true;
            }
        }
        let text = error.to_string();
        if text.contains("tcp connect error") || text.contains("Connection refused") {
            return true;
        }
        source = error.source();
    }
    status.message().contains("tcp connect error")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_of_server_answers() {
        // Goal: only answers that prove nothing was applied count as refused; timeouts are
        // ambiguous; argument errors are definite. Method: table of statuses.
        let table = [
            (Code::Unavailable, "etcdserver: no leader", Failure::Refused),
            (
                Code::ResourceExhausted,
                "etcdserver: too many requests",
                Failure::Refused,
            ),
            (
                Code::Unavailable,
                "etcdserver: request timed out",
                Failure::Ambiguous,
            ),
            (Code::DeadlineExceeded, "deadline", Failure::Ambiguous),
            (
                Code::Unavailable,
                "etcdserver: leader changed",
                Failure::Ambiguous,
            ),
            (
                Code::InvalidArgument,
                "etcdserver: key is not provided",
                Failure::Definite,
            ),
            (
                Code::NotFound,
                "etcdserver: requested lease not found",
                Failure::Definite,
            ),
            (
                Code::Unavailable,
                "error trying to connect: tcp connect error",
                Failure::NotSent,
            ),
        ];
        for (code, message, expected) in table {
            assert_eq!(
                classify(&tonic::Status::new(code, message)),
                expected,
                "{message}"
            );
        }
    }
}
