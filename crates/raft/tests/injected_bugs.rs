//! The deliberately broken rules of the `inject-bugs` feature: each one, switched on, must break
//! the rule it names, and the same scenario without it must keep the rule. These tests prove the
//! hooks work; the simulator proves its checkers catch them.
#![cfg(feature = "inject-bugs")]

mod common;

use bytes::Bytes;
use chorus_raft::interaction::Network;
use chorus_raft::{
    InjectedBug, LogIndex, MessageBody, NodeId, RawNode, ReadOnlyOption, Role, Term,
};
use common::*;

fn with_bug(id: u64, bug: Option<InjectedBug>) -> chorus_raft::Config {
    let mut c = config(id);
    c.injected_bug = bug;
    c
}

/// DoubleVote: a voter grants a second candidate in the same term.
#[test]
fn double_vote() {
    for (bug, want) in [(None, false), (Some(InjectedBug::DoubleVote), true)] {
        let mut n = node_with(with_bug(1, bug), &[1, 2, 3], &[], (1, None, 0));
        n.step(vote(2, 1, 2, 0, 0)).unwrap();
        assert_eq!(vote_answer(&drain(&mut n), 2), Some(true));
        n.step(vote(3, 1, 2, 0, 0)).unwrap();
        assert_eq!(vote_answer(&drain(&mut n), 3), Some(want), "bug {bug:?}");
    }
}

/// CommitOldTerm: the leader commits an older-term entry by counting replicas (§5.4.2).
#[test]
fn commit_old_term() {
    for (bug, want) in [(None, 1), (Some(InjectedBug::CommitOldTerm), 2)] {
        let mut c = with_bug(1, bug);
        c.pre_vote = false;
        let mut n = node_with(c, &[1, 2, 3], &[1, 2], (2, None, 1));
        n.campaign().unwrap();
        drain(&mut n);
        n.step(msg(2, 1, 3, MessageBody::VoteResponse { reject: false }))
            .unwrap();
        drain(&mut n);
        assert_eq!(n.status().role, Role::Leader);
        let ack = MessageBody::AppendResponse {
            index: LogIndex(2),
            reject: false,
            reject_hint: LogIndex(0),
            hint_term: Term(0),
        };
        n.step(msg(2, 1, 3, ack)).unwrap();
        drain(&mut n);
        assert_eq!(n.status().commit, LogIndex(want), "bug {bug:?}");
    }
}

/// ForgetVoteOnRestart: after a restart the node has forgotten its vote and votes again.
#[test]
fn forget_vote_on_restart() {
    for (bug, want) in [
        (None, false),
        (Some(InjectedBug::ForgetVoteOnRestart), true),
    ] {
        let mut n = node_with(with_bug(1, bug), &[1, 2, 3], &[], (1, None, 0));
        n.step(vote(2, 1, 2, 0, 0)).unwrap();
        drain(&mut n);
        let mut n = RawNode::new(&with_bug(1, bug), n.storage().clone()).unwrap();
        n.step(vote(3, 1, 2, 0, 0)).unwrap();
        assert_eq!(vote_answer(&drain(&mut n), 3), Some(want), "bug {bug:?}");
    }
}

/// StaleLeaseRead: an isolated leader whose lease expired still answers a lease read.
#[test]
fn stale_lease_read() {
    for (bug, want) in [(None, false), (Some(InjectedBug::StaleLeaseRead), true)] {
        let mut net = Network::new(&[1, 2, 3], |c| {
            c.read_only = ReadOnlyOption::LeaseBased;
            c.injected_bug = bug;
        });
        net.raw(1).campaign().unwrap();
        net.stabilize();
        net.tick_all(1);
        net.partition(&[vec![1], vec![2, 3]]);
        for _ in 0..8 {
            net.tick(1, 1);
        }
        net.stabilize();
        assert_eq!(net.raw(1).status().role, Role::Leader);
        net.raw(1).read_index(Bytes::from_static(b"late")).unwrap();
        net.stabilize();
        let served = !net.node(1).reads.is_empty();
        assert_eq!(served, want, "bug {bug:?}");
        assert_eq!(net.raw(1).status().leader, Some(NodeId(1)));
    }
}
