//! Smoke tests of the public API through the in-crate test network.

use bytes::Bytes;
use chorus_raft::interaction::Network;
use chorus_raft::{LogIndex, NodeId, Role};

/// Goal: a three-node cluster elects the node that campaigns and replicates a proposal to all.
/// Method: campaign, stabilize, propose, stabilize, compare applied data.
#[test]
fn elect_and_replicate() {
    let mut net = Network::new(&[1, 2, 3], |_| {});
    net.raw(1).campaign().unwrap();
    net.stabilize();
    assert_eq!(net.raw(1).status().role, Role::Leader);
    net.raw(1).propose(Bytes::from_static(b"x")).unwrap();
    net.stabilize();
    for id in 1..=3 {
        let node = net.node(id);
        assert_eq!(
            node.applied,
            vec![(LogIndex(2), Bytes::from_static(b"x"))],
            "node {id}"
        );
        assert_eq!(node.raw.status().leader, Some(NodeId(1)));
    }
}

/// Goal: a ReadIndex on the leader and one forwarded by a follower are both answered with the
/// commit index after a heartbeat round. Method: elect, request, stabilize, inspect read states.
#[test]
fn read_index_on_leader_and_follower() {
    let mut net = Network::new(&[1, 2, 3], |_| {});
    net.raw(1).campaign().unwrap();
    net.stabilize();
    net.raw(1).read_index(Bytes::from_static(b"a")).unwrap();
    net.raw(2).read_index(Bytes::from_static(b"b")).unwrap();
    net.stabilize();
    assert_eq!(
        net.node(1).reads,
        vec![(LogIndex(1), Bytes::from_static(b"a"))]
    );
    assert_eq!(
        net.node(2).reads,
        vec![(LogIndex(1), Bytes::from_static(b"b"))]
    );
}

/// Goal: the basic status a driver reads after every Ready is the full status's term, role,
/// leader, commit and applied index, also while an entry is committed and not yet applied.
/// Method: a single-node group driven by hand; compare the two after each step, and check that
/// the step between persisting and applying was seen with commit ahead of applied.
#[test]
fn basic_status_matches_status() {
    use chorus_raft::{ConfState, Config, GroupId, MemStorage, RawNode};

    fn agree(node: &RawNode<MemStorage>) -> bool {
        let full = node.status();
        assert_eq!(node.basic_status(), full.basic());
        full.commit > full.applied
    }

    let config = Config::new(NodeId(1), GroupId(1));
    let storage = MemStorage::new_with_conf_state(ConfState::with_voters([NodeId(1)]));
    let mut node = RawNode::new(&config, storage).unwrap();
    agree(&node);
    node.campaign().unwrap();
    node.propose(Bytes::from_static(b"x")).unwrap();
    let mut saw_unapplied = false;
    while node.has_ready() {
        let ready = node.ready();
        node.storage_mut().append(&ready.entries).unwrap();
        if let Some(hs) = ready.hard_state {
            node.storage_mut().set_hard_state(hs);
        }
        node.on_persisted(ready.number);
        saw_unapplied |= agree(&node);
        for entry in &ready.committed_entries {
            node.on_applied(entry.index);
            saw_unapplied |= agree(&node);
        }
    }
    assert!(saw_unapplied, "no step had commit ahead of applied");
    assert_eq!(node.basic_status().role, Role::Leader);
    assert_eq!(node.basic_status().applied, LogIndex(2));
}
