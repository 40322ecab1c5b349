//! Bytes from the network are never trusted: whatever a peer sends, `step` returns (Ok or an
//! error) and the node keeps its invariants. Method: feed thousands of random, mostly malformed
//! messages to nodes in every role, and check the node still works afterwards.

mod common;

use bytes::Bytes;
use chorus_raft::interaction::Network;
use chorus_raft::{
    ConfState, Entry, EntryPayload, GroupId, LogIndex, Message, MessageBody, NodeId, Role,
    Snapshot, SnapshotMeta, Term,
};
use common::Rng;

fn random_entries(rng: &mut Rng, prev: u64) -> Vec<Entry> {
    let n = rng.below(4);
    let contiguous = rng.below(4) != 0;
    (0..n)
        .map(|i| {
            let index = if contiguous {
                prev + 1 + i
            } else {
                rng.below(20)
            };
            Entry {
                term: Term(rng.below(6)),
                index: LogIndex(index),
                payload: EntryPayload::Normal(Bytes::new()),
            }
        })
        .collect()
}

fn random_body(rng: &mut Rng) -> MessageBody {
    let idx = |rng: &mut Rng| LogIndex(rng.below(20));
    let term = |rng: &mut Rng| Term(rng.below(6));
    match rng.below(12) {
        0 => MessageBody::PreVote {
            last_index: idx(rng),
            last_term: term(rng),
        },
        1 => MessageBody::PreVoteResponse {
            reject: rng.below(2) == 0,
        },
        2 => MessageBody::Vote {
            last_index: idx(rng),
            last_term: term(rng),
            leader_transfer: rng.below(4) == 0,
        },
        3 => MessageBody::VoteResponse {
            reject: rng.below(2) == 0,
        },
        4 => {
            let prev = rng.below(12);
            let entries = random_entries(rng, prev);
            MessageBody::Append {
                prev_index: LogIndex(prev),
                prev_term: term(rng),
                entries,
                commit: idx(rng),
            }
        }
        5 => MessageBody::AppendResponse {
            index: idx(rng),
            reject: rng.below(2) == 0,
            reject_hint: idx(rng),
            hint_term: term(rng),
        },
        6 => MessageBody::Heartbeat {
            commit: idx(rng),
            context: Bytes::from(rng.below(300).to_be_bytes().to_vec()),
        },
        7 => MessageBody::HeartbeatResponse {
            context: Bytes::from(rng.below(300).to_be_bytes().to_vec()),
        },
        8 => {
            let voters = (1..=1 + rng.below(4)).map(NodeId).collect();
            let meta = SnapshotMeta {
                index: idx(rng),
                term: term(rng),
                conf_state: ConfState {
                    voters,
                    ..ConfState::default()
                },
            };
            MessageBody::Snapshot {
                snapshot: Snapshot {
                    meta,
                    data: Bytes::new(),
                },
            }
        }
        9 => MessageBody::TimeoutNow,
        10 => MessageBody::ReadIndex {
            context: Bytes::from_static(b"r"),
        },
        _ => MessageBody::ReadIndexResponse {
            index: idx(rng),
            context: Bytes::new(),
            reject: rng.below(2) == 0,
        },
    }
}

fn random_message(rng: &mut Rng, to: u64) -> Message {
    let group = if rng.below(10) == 0 { 2 } else { 1 };
    let to = if rng.below(20) == 0 { 9 } else { to };
    Message {
        group_id: GroupId(group),
        from: NodeId(rng.below(6)),
        to: NodeId(to),
        term: Term(rng.below(6)),
        body: random_body(rng),
    }
}

/// Goal: no input from the network panics a node, in any role. Method: 30 seeds; each builds a
/// cluster, drives node 1 into a role, then steps 400 random messages into it, persisting its
/// Readies as an application would; finally the node must still answer `status`.
#[test]
fn random_messages_never_panic() {
    for seed in 0..30 {
        let mut rng = Rng(seed);
        let mut net = Network::new(&[1, 2, 3], |c| c.check_quorum = seed % 2 == 0);
        net.trace_messages = false;
        match seed % 3 {
            0 => {
                net.raw(1).campaign().unwrap();
                net.stabilize();
                assert_eq!(net.raw(1).status().role, Role::Leader);
            }
            1 => {
                net.raw(2).campaign().unwrap();
                net.stabilize();
            }
            _ => {}
        }
        net.crash(2);
        net.crash(3);
        let mut accepted = 0;
        for _ in 0..400 {
            let m = random_message(&mut rng, 1);
            accepted += usize::from(net.raw(1).step(m).is_ok());
            if rng.below(3) == 0 {
                net.raw(1).tick();
            }
            if rng.below(5) == 0 {
                let _ = net.raw(1).propose(Bytes::from_static(b"p"));
            }
            net.process_ready(NodeId(1));
            net.queue.clear();
        }
        assert!(
            accepted > 100,
            "seed {seed}: most messages reach the state machine ({accepted})"
        );
        let s = net.raw(1).status();
        assert!(
            s.applied <= s.commit,
            "seed {seed}: applied {} <= commit {}",
            s.applied,
            s.commit
        );
        assert!(
            s.commit <= s.last_index,
            "seed {seed}: commit <= last index"
        );
    }
}
