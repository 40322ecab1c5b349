//! The linearizable reads a member holds, and the read index rounds it asks Raft for.
//!
//! A read waits for a read index learnt after it arrived (ReadIndex, §6.4 of the Raft thesis),
//! then for the applied index to reach it. One round is out at a time, as in etcd's read loop:
//! the reads that arrive while a round is out wait for the next one, so that under load each
//! round serves every read that arrived during the one before, and the heartbeat rounds per
//! second stay near one per round trip to a quorum whatever the reads per second. A round not
//! answered within the retry interval (its request or its answer may have been lost) is asked
//! for again with the same context, as etcd retries its read index request: whichever answer
//! comes first serves it, so a round trip slower than the interval still completes.

use std::time::{Duration, Instant};

use bytes::Bytes;
use chorus_raft::{LogIndex, NodeId};
use tokio::sync::oneshot;

use crate::error::ServerError;

/// Where a read waiting for its barrier gets the outcome.
pub(super) type ReadReply = oneshot::Sender<Result<(), ServerError>>;

/// A read index request out to Raft, and the reads it will serve.
struct Round {
    context: Bytes,
    /// When the round was first asked for, and last.
    asked: Instant,
    asked_last: Instant,
    replies: Vec<ReadReply>,
}

/// A round that was answered: how long it took and how many reads it served.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Answered {
    pub took: Duration,
    pub reads: usize,
}

pub(super) struct ReadRounds {
    member_id: NodeId,
    /// Numbers the rounds, so that a late answer to a round already answered or failed is
    /// told apart from the answer to the round out.
    seq: u64,
    retry_after: Duration,
    pending_max: usize,
    /// Reads that arrived since the round out was asked.
    new: Vec<ReadReply>,
    out: Option<Round>,
    /// Reads with a read index, waiting for the applied index to reach it.
    confirmed: Vec<(LogIndex, ReadReply)>,
}

impl ReadRounds {
    /// `pending_max` bounds the reads held at once; `retry_after` is how long a round may stay
    /// unanswered before it is asked for again.
    pub fn new(member_id: NodeId, pending_max: usize, retry_after: Duration) -> ReadRounds {
        ReadRounds {
            member_id,
            seq: 0,
            retry_after,
            pending_max,
            new: Vec::new(),
            out: None,
            confirmed: Vec::new(),
        }
    }

    fn held(&self) -> usize {
        self.new.len() + self.out.as_ref().map_or(0, |r| r.replies.len()) + self.confirmed.len()
    }

    /// Takes a read; past `pending_max` reads held, it is refused with etcd's "too many
    /// requests".
    pub fn push(&mut self, reply: ReadReply) {
        if self.held() >= self.pending_max {
            let _ = reply.send(Err(ServerError::TooManyRequests));
        } else {
            self.new.push(reply);
        }
    }

    /// The context to ask Raft for a read index with, if any: the round out again once the
    /// retry interval passed since it was last asked for, or else a new round for the reads
    /// waiting, if any.
    pub fn start(&mut self, now: Instant) -> Option<Bytes> {
        if let Some(out) = &mut self.out {
            if now.saturating_duration_since(out.asked_last) < self.retry_after {
                return None;
            }
            out.asked_last = now;
            return Some(out.context.clone());
        }
        if self.new.is_empty() {
            return None;
        }
        self.seq += 1;
        let mut context = Vec::with_capacity(16);
        context.extend_from_slice(&self.member_id.get().to_be_bytes());
        context.extend_from_slice(&self.seq.to_be_bytes());
        let context = Bytes::from(context);
        self.out = Some(Round {
            context: context.clone(),
            asked: now,
            asked_last: now,
            replies: std::mem::take(&mut self.new),
        });
        Some(context)
    }

    /// Raft refused the request just made for the round out: its reads fail with `error`.
    pub fn refuse(&mut self, error: &ServerError) {
        for reply in self.out.take().into_iter().flat_map(|r| r.replies) {
            let _ = reply.send(Err(error.clone()));
        }
    }

    /// Raft answered the round asked with `context`: its reads wait for `index` to be applied
    /// (an index of 0 means no leader could confirm it). Answers to a round already answered
    /// (it was asked for more than once) are ignored.
    pub fn confirm(&mut self, context: &[u8], index: LogIndex, now: Instant) -> Option<Answered> {
        if self.out.as_ref().is_none_or(|r| r.context != context) {
            return None;
        }
        let round = self.out.take().expect("checked above");
        let answered = Answered {
            took: now.saturating_duration_since(round.asked),
            reads: round.replies.len(),
        };
        for reply in round.replies {
            if index == LogIndex(0) {
                let _ = reply.send(Err(ServerError::NoLeader));
            } else {
                self.confirmed.push((index, reply));
            }
        }
        Some(answered)
    }

    /// Lets the reads whose read index is applied go.
    pub fn release(&mut self, applied: LogIndex) {
        if self.confirmed.iter().all(|(index, _)| *index > applied) {
            return;
        }
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.confirmed)
            .into_iter()
            .partition(|(index, _)| *index <= applied);
        self.confirmed = waiting;
        for (_, reply) in ready {
            let _ = reply.send(Ok(()));
        }
    }

    /// The member saw the leadership change: the round out will not be answered by the leader
    /// it was asked of, and its reads fail with etcd's "leader changed".
    pub fn leader_changed(&mut self) {
        self.refuse(&ServerError::LeaderChanged);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RETRY: Duration = Duration::from_millis(500);

    fn read(rounds: &mut ReadRounds) -> oneshot::Receiver<Result<(), ServerError>> {
        let (reply, rx) = oneshot::channel();
        rounds.push(reply);
        rx
    }

    fn outcome(rx: &mut oneshot::Receiver<Result<(), ServerError>>) -> Option<Result<(), String>> {
        rx.try_recv().ok().map(|r| r.map_err(|e| e.to_string()))
    }

    #[test]
    fn one_round_at_a_time_and_later_reads_wait_for_the_next() {
        let t0 = Instant::now();
        let mut rounds = ReadRounds::new(NodeId(3), 100, RETRY);
        assert_eq!(rounds.start(t0), None, "no read, no round");
        let mut a = read(&mut rounds);
        let first = rounds.start(t0).expect("a round for the first read");
        assert_eq!(
            &first[..8],
            &3u64.to_be_bytes(),
            "the context names the member"
        );
        let mut b = read(&mut rounds);
        assert_eq!(rounds.start(t0 + RETRY / 2), None, "a round is out");

        let answered = rounds.confirm(&first, LogIndex(7), t0 + Duration::from_millis(2));
        assert_eq!(
            answered,
            Some(Answered {
                took: Duration::from_millis(2),
                reads: 1
            })
        );
        rounds.release(LogIndex(6));
        assert_eq!(outcome(&mut a), None, "index 7 is not applied yet");
        rounds.release(LogIndex(7));
        assert_eq!(outcome(&mut a), Some(Ok(())));
        assert_eq!(
            outcome(&mut b),
            None,
            "b arrived after the first round was asked"
        );

        let second = rounds
            .start(t0 + Duration::from_millis(3))
            .expect("b's round");
        assert_ne!(first, second);
        rounds.confirm(&second, LogIndex(9), t0 + Duration::from_millis(4));
        rounds.release(LogIndex(9));
        assert_eq!(outcome(&mut b), Some(Ok(())));
    }

    #[test]
    fn an_unanswered_round_is_asked_again_and_either_answer_serves_it() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut rounds = ReadRounds::new(NodeId(1), 100, RETRY);
        let mut a = read(&mut rounds);
        let round = rounds.start(t0).expect("a's round");
        assert_eq!(rounds.start(t0 + RETRY - ms(1)), None);
        let mut b = read(&mut rounds);
        assert_eq!(
            rounds.start(t0 + RETRY),
            Some(round.clone()),
            "asked again, with the same context"
        );
        assert_eq!(rounds.start(t0 + RETRY + ms(1)), None, "once per interval");
        assert_eq!(rounds.start(t0 + RETRY * 2), Some(round.clone()));

        // The answer to the first request arrives late, and serves the round.
        let answered = rounds.confirm(&round, LogIndex(6), t0 + RETRY * 2 + ms(1));
        assert_eq!(
            answered,
            Some(Answered {
                took: RETRY * 2 + ms(1),
                reads: 1
            })
        );
        assert_eq!(
            rounds.confirm(&round, LogIndex(6), t0 + RETRY * 2 + ms(2)),
            None,
            "the answer to the second request is ignored"
        );
        rounds.release(LogIndex(6));
        assert_eq!(outcome(&mut a), Some(Ok(())));
        assert_eq!(
            outcome(&mut b),
            None,
            "b arrived after the round was first asked"
        );
        let next = rounds.start(t0 + RETRY * 2 + ms(3)).expect("b's round");
        assert_ne!(next, round);
    }

    #[test]
    fn refusals_leader_changes_and_the_limit_fail_reads_with_etcd_errors() {
        let t0 = Instant::now();
        let mut rounds = ReadRounds::new(NodeId(1), 2, RETRY);
        let mut a = read(&mut rounds);
        let context = rounds.start(t0).expect("a's round");
        let mut b = read(&mut rounds);
        let mut c = read(&mut rounds);
        assert_eq!(
            outcome(&mut c),
            Some(Err(ServerError::TooManyRequests.to_string()))
        );
        rounds.leader_changed();
        assert_eq!(
            outcome(&mut a),
            Some(Err(ServerError::LeaderChanged.to_string()))
        );
        assert_eq!(rounds.confirm(&context, LogIndex(4), t0), None);

        rounds.start(t0).expect("b's round");
        rounds.refuse(&ServerError::NoLeader);
        assert_eq!(
            outcome(&mut b),
            Some(Err(ServerError::NoLeader.to_string()))
        );

        let mut d = read(&mut rounds);
        let context = rounds.start(t0).expect("d's round");
        rounds.confirm(&context, LogIndex(0), t0);
        assert_eq!(
            outcome(&mut d),
            Some(Err(ServerError::NoLeader.to_string()))
        );
        assert_eq!(rounds.held(), 0);
    }
}
