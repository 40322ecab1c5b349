//! One test per rule of the Raft paper (Figure 2 and Figure 3, §5), each citing its section.
//!
//! Most tests build one node with a chosen log and feed it messages directly; the properties of
//! Figure 3 are checked over randomized runs of the in-crate test network.

mod common;

use bytes::Bytes;
use chorus_raft::{LogIndex, MessageBody, NodeId, Role, Term};
use common::run::Run;
use common::*;

/// §5.1: a node that sees a higher term adopts it and becomes a follower. Method: a leader of
/// term 1 receives an append answer carrying term 5.
#[test]
fn higher_term_makes_follower() {
    let mut n = node(1, &[1, 2, 3], &[], (0, None, 0));
    n.campaign().unwrap();
    drain(&mut n);
    n.step(msg(2, 1, 1, MessageBody::PreVoteResponse { reject: false }))
        .unwrap();
    drain(&mut n);
    n.step(msg(2, 1, 1, MessageBody::VoteResponse { reject: false }))
        .unwrap();
    drain(&mut n);
    assert_eq!(n.status().role, Role::Leader);
    let ack = MessageBody::AppendResponse {
        index: LogIndex(0),
        reject: false,
        reject_hint: LogIndex(0),
        hint_term: Term(0),
    };
    n.step(msg(2, 1, 5, ack)).unwrap();
    let s = n.status();
    assert_eq!((s.role, s.term, s.vote), (Role::Follower, Term(5), None));
}

/// §5.1: a request from a stale term is rejected. Method: a node in term 3 receives a vote
/// request of term 2; it must not grant, and keeps its term.
#[test]
fn stale_term_vote_is_ignored() {
    let mut n = node(1, &[1, 2, 3], &[], (3, None, 0));
    n.step(vote(2, 1, 2, 10, 2)).unwrap();
    let msgs = drain(&mut n);
    assert_eq!(vote_answer(&msgs, 2), None, "no grant for a stale term");
    assert_eq!(n.status().term, Term(3));
}

/// Figure 2 (AppendEntries: "reply false if term < currentTerm", the reply carrying
/// currentTerm): a stale append or heartbeat is answered in the receiver's term so that the stale
/// leader steps down, even with neither pre-vote nor check-quorum. Method: a member in term 5
/// receives a heartbeat and an append of term 3 from node 1; each must be answered with a message
/// of term 5. Regression for simulator seed 3038, where a learner that had adopted a removed
/// member's higher term dropped the real leader's appends in silence and never caught up.
#[test]
fn stale_append_is_answered_in_the_current_term() {
    let mut cfg = config(3);
    cfg.pre_vote = false;
    cfg.check_quorum = false;
    let mut n = node_with(cfg, &[1, 2, 3], &[], (5, None, 0));
    let heartbeat = MessageBody::Heartbeat {
        commit: LogIndex(0),
        context: Bytes::new(),
    };
    let append = MessageBody::Append {
        prev_index: LogIndex(0),
        prev_term: Term(0),
        entries: Vec::new(),
        commit: LogIndex(0),
    };
    for body in [heartbeat, append] {
        n.step(msg(1, 3, 3, body)).unwrap();
        let answers: Vec<_> = drain(&mut n)
            .into_iter()
            .filter(|m| m.to == NodeId(1))
            .collect();
        assert_eq!(
            answers.len(),
            1,
            "exactly one answer to the stale leader: {answers:?}"
        );
        assert_eq!(
            answers[0].term,
            Term(5),
            "the answer carries the newer term"
        );
        assert!(matches!(
            answers[0].body,
            MessageBody::AppendResponse { .. }
        ));
    }
    assert_eq!(
        n.status().term,
        Term(5),
        "a stale message never lowers the term"
    );
}

/// §5.2: each server votes for at most one candidate per term, first come first served.
/// Method: grant node 2 in term 2, then ask for node 3 in the same term.
#[test]
fn one_vote_per_term() {
    let mut n = node(1, &[1, 2, 3], &[], (1, None, 0));
    n.step(vote(2, 1, 2, 0, 0)).unwrap();
    assert_eq!(vote_answer(&drain(&mut n), 2), Some(true));
    n.step(vote(3, 1, 2, 0, 0)).unwrap();
    assert_eq!(
        vote_answer(&drain(&mut n), 3),
        Some(false),
        "second candidate of the term"
    );
    // Asking again for the same candidate is answered the same way (a retransmission).
    n.step(vote(2, 1, 2, 0, 0)).unwrap();
    assert_eq!(vote_answer(&drain(&mut n), 2), Some(true));
}

/// §5.2 with Figure 2 "persist before responding": a vote answer is released only after the
/// Ready holding the vote is persisted. Method: inspect where the answer sits in the Ready.
#[test]
fn vote_answer_waits_for_persistence() {
    let mut n = node(1, &[1, 2, 3], &[], (1, None, 0));
    n.step(vote(2, 1, 2, 0, 0)).unwrap();
    let ready = n.ready();
    assert_eq!(ready.hard_state.map(|hs| hs.vote), Some(Some(NodeId(2))));
    assert!(
        ready
            .messages
            .iter()
            .all(|m| !matches!(m.body, MessageBody::VoteResponse { .. }))
    );
    assert_eq!(vote_answer(&ready.persisted_messages, 2), Some(true));
}

/// §5.4.1: a voter denies its vote to a candidate whose log is less up-to-date: lower last
/// term, or same last term and shorter. Method: table against a voter whose log ends (3, t2).
#[test]
fn vote_requires_up_to_date_log() {
    let cases = [
        ((3, 2), true),
        ((4, 2), true),
        ((2, 2), false),
        ((9, 1), false),
        ((1, 3), true),
    ];
    for (i, ((last_index, last_term), grant)) in cases.iter().enumerate() {
        let mut n = node(1, &[1, 2, 3], &[1, 2, 2], (2, None, 0));
        n.step(vote(2, 1, 3, *last_index, *last_term)).unwrap();
        assert_eq!(vote_answer(&drain(&mut n), 2), Some(*grant), "case {i}");
    }
}

/// §5.2: a candidate that receives an append from a leader of its term returns to follower.
#[test]
fn candidate_yields_to_leader_of_its_term() {
    let mut config = config(1);
    config.pre_vote = false;
    let mut n = node_with(config, &[1, 2, 3], &[], (0, None, 0));
    n.campaign().unwrap();
    drain(&mut n);
    assert_eq!(n.status().role, Role::Candidate);
    let append = MessageBody::Append {
        prev_index: LogIndex(0),
        prev_term: Term(0),
        entries: vec![],
        commit: LogIndex(0),
    };
    n.step(msg(2, 1, 1, append)).unwrap();
    let s = n.status();
    assert_eq!(
        (s.role, s.leader, s.term),
        (Role::Follower, Some(NodeId(2)), Term(1))
    );
}

/// §5.2: election timeouts are randomized in [election_ticks, 2 * election_ticks). Method: run
/// many nodes with different seeds and record the tick at which each first campaigns.
#[test]
fn election_timeout_is_randomized() {
    let mut seen = std::collections::BTreeSet::new();
    for seed in 0..50 {
        let mut config = config(1);
        config.seed = seed;
        config.pre_vote = false;
        let mut n = node_with(config, &[1, 2, 3], &[], (0, None, 0));
        let mut ticks = 0;
        while n.status().role == Role::Follower {
            n.tick();
            ticks += 1;
            assert!(ticks < 20, "campaigns before twice the election timeout");
        }
        assert!(ticks >= 10, "never before the election timeout");
        seen.insert(ticks);
    }
    assert!(seen.len() >= 5, "timeouts spread out: {seen:?}");
}

/// §5.3: AppendEntries is rejected when the log has no entry at prev_index with prev_term, and
/// the answer's hint lets the leader skip the conflicting term (fast backtracking).
#[test]
fn append_rejected_on_log_mismatch() {
    let mut n = node(2, &[1, 2, 3], &[1, 1, 2, 2, 2], (3, None, 0));
    let append = MessageBody::Append {
        prev_index: LogIndex(5),
        prev_term: Term(3),
        entries: vec![],
        commit: LogIndex(0),
    };
    n.step(msg(1, 2, 3, append)).unwrap();
    let msgs = drain(&mut n);
    let answer = msgs.iter().find_map(|m| match m.body {
        MessageBody::AppendResponse {
            index,
            reject,
            reject_hint,
            hint_term,
        } => Some((index, reject, reject_hint, hint_term)),
        _ => None,
    });
    // The hint names the last entry of a term at or below prev_term: (5, 2).
    assert_eq!(answer, Some((LogIndex(5), true, LogIndex(5), Term(2))));
}

/// §5.3: a conflicting suffix is deleted and replaced; entries already present are kept.
#[test]
fn append_replaces_conflicting_suffix() {
    let mut n = node(2, &[1, 2, 3], &[1, 1, 2, 2], (3, None, 0));
    let entries = vec![entry(3, 3), entry(4, 3), entry(5, 3)];
    let append = MessageBody::Append {
        prev_index: LogIndex(2),
        prev_term: Term(1),
        entries,
        commit: LogIndex(4),
    };
    n.step(msg(1, 2, 3, append)).unwrap();
    drain(&mut n);
    let terms: Vec<u64> = n
        .entries(LogIndex(1), LogIndex(6))
        .unwrap()
        .iter()
        .map(|e| e.term.get())
        .collect();
    assert_eq!(terms, vec![1, 1, 3, 3, 3]);
    assert_eq!(
        n.status().commit,
        LogIndex(4),
        "commit = min(leaderCommit, index of last new entry)"
    );
}

/// §5.3 and the harness contract: a malformed append (a gap in its entries) is refused with an
/// error and changes nothing, instead of panicking.
#[test]
fn malformed_append_is_an_error() {
    let mut n = node(2, &[1, 2, 3], &[1], (1, None, 0));
    let entries = vec![entry(2, 1), entry(4, 1)];
    let append = MessageBody::Append {
        prev_index: LogIndex(1),
        prev_term: Term(1),
        entries,
        commit: LogIndex(0),
    };
    assert!(n.step(msg(1, 2, 1, append)).is_err());
    assert_eq!(n.status().last_index, LogIndex(1));
}

/// §5.4.2 (Figure 8): a leader never commits an entry of an older term by counting replicas;
/// it commits it only together with an entry of its own term. Method: a leader of term 3 with
/// a term-2 entry that a follower also holds; the follower acknowledging only index 2 must not
/// commit it; acknowledging the leader's term-3 entry commits both.
#[test]
fn commit_only_current_term_by_counting() {
    let mut n = leader_of_term_3_with_old_entry(config(1));
    n.step(msg(2, 1, 3, ack(2))).unwrap();
    drain(&mut n);
    assert_eq!(
        n.status().commit,
        LogIndex(1),
        "the term-2 entry is not committed by counting"
    );
    n.step(msg(2, 1, 3, ack(3))).unwrap();
    drain(&mut n);
    assert_eq!(n.status().commit, LogIndex(3));
}

pub fn ack(index: u64) -> MessageBody {
    MessageBody::AppendResponse {
        index: LogIndex(index),
        reject: false,
        reject_hint: LogIndex(0),
        hint_term: Term(0),
    }
}

/// Node 1 becomes leader of term 3 with log [t1, t2] committed at 1, and appends its term-3
/// entry at index 3.
pub fn leader_of_term_3_with_old_entry(
    mut config: chorus_raft::Config,
) -> chorus_raft::RawNode<chorus_raft::MemStorage> {
    config.pre_vote = false;
    let mut n = node_with(config, &[1, 2, 3], &[1, 2], (2, None, 1));
    n.campaign().unwrap();
    drain(&mut n);
    n.step(msg(2, 1, 3, MessageBody::VoteResponse { reject: false }))
        .unwrap();
    drain(&mut n);
    let s = n.status();
    assert_eq!(
        (s.role, s.term, s.last_index, s.commit),
        (Role::Leader, Term(3), LogIndex(3), LogIndex(1))
    );
    n
}

/// §5.3 with asynchronous persistence: the leader counts its own entries toward a commit only
/// once they are persisted. Method: a single-node leader proposes; the commit waits for
/// `on_persisted` of the Ready holding the entry.
#[test]
fn leader_counts_itself_only_after_persisting() {
    let mut n = node(1, &[1], &[], (0, None, 0));
    n.campaign().unwrap();
    drain(&mut n);
    let (_, index) = n.propose(Bytes::from_static(b"x")).unwrap();
    let ready = n.ready();
    assert_eq!(ready.entries.last().map(|e| e.index), Some(index));
    assert!(n.status().commit < index, "not committed before persisting");
    persist(&mut n, &ready);
    assert_eq!(n.status().commit, index);
    let next = n.ready();
    assert_eq!(next.committed_entries.last().map(|e| e.index), Some(index));
}

/// Figure 2 "apply committed entries": a follower hands out committed entries only once they are
/// persisted locally. Method: deliver an append with commit, take the Ready without persisting;
/// it must not contain the entries as committed.
#[test]
fn follower_applies_only_persisted_entries() {
    let mut n = node(2, &[1, 2, 3], &[], (1, None, 0));
    let entries = vec![entry(1, 1), entry(2, 1)];
    let append = MessageBody::Append {
        prev_index: LogIndex(0),
        prev_term: Term(0),
        entries,
        commit: LogIndex(2),
    };
    n.step(msg(1, 2, 1, append)).unwrap();
    let ready = n.ready();
    assert_eq!(ready.entries.len(), 2);
    assert!(
        ready.committed_entries.is_empty(),
        "nothing applied before persisting"
    );
    assert!(
        ready
            .persisted_messages
            .iter()
            .any(|m| matches!(m.body, MessageBody::AppendResponse { .. }))
    );
    persist(&mut n, &ready);
    let ready = n.ready();
    assert_eq!(ready.committed_entries.len(), 2);
}

/// A randomized run of five nodes with partitions, proposals and crashes, checking the
/// properties of Figure 3 after every tick: election safety, leader append-only, log matching,
/// leader completeness and state machine safety. Method: 20 seeds of 300 steps each.
#[test]
fn figure_3_properties_under_partitions() {
    for seed in 0..20 {
        let mut run = Run::new(seed, |_| {});
        for _ in 0..300 {
            run.step();
            run.check().unwrap_or_else(|e| panic!("{e}"));
        }
        run.heal_and_check_progress()
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

/// §5.2 with Figure 2 "persist before responding": a candidate's vote for itself must be durable
/// before anyone can grant it a vote, or a crash could let it vote again in the same term. Its
/// Vote requests therefore wait in `persisted_messages`; pre-votes, which promise nothing, go
/// out at once.
#[test]
fn vote_requests_wait_for_the_self_vote_to_persist() {
    let mut c = config(1);
    c.pre_vote = false;
    let mut n = node_with(c, &[1, 2, 3], &[], (0, None, 0));
    n.campaign().unwrap();
    let ready = n.ready();
    assert_eq!(
        ready.hard_state.map(|hs| (hs.term, hs.vote)),
        Some((Term(1), Some(NodeId(1))))
    );
    assert!(ready.messages.is_empty());
    assert_eq!(
        ready
            .persisted_messages
            .iter()
            .filter(|m| matches!(m.body, MessageBody::Vote { .. }))
            .count(),
        2
    );

    let mut n = node(1, &[1, 2, 3], &[], (0, None, 0));
    n.campaign().unwrap();
    let ready = n.ready();
    assert_eq!(
        ready
            .messages
            .iter()
            .filter(|m| matches!(m.body, MessageBody::PreVote { .. }))
            .count(),
        2
    );
}
