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
