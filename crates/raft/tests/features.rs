//! Behaviour beyond the basic paper rules: pre-vote, check-quorum, leases, leader transfer,
//! snapshots, membership changes, flow control and limits. Each test states its goal and
//! method; most run the in-crate test network.

mod common;

use bytes::Bytes;
use chorus_raft::interaction::{Network, test_config};
use chorus_raft::{
    ConfChange, ConfChangeSingle, ConfChangeTransition, Error, GroupId, LogIndex, MemStorage,
    MessageBody, NodeId, ProgressState, ProposeError, ReadOnlyOption, Role, Term,
};
use common::*;

fn elected(ids: &[u64], configure: impl Fn(&mut chorus_raft::Config)) -> Network {
    let mut net = Network::new(ids, configure);
    net.raw(1).campaign().unwrap();
    net.stabilize();
    assert_eq!(net.raw(1).status().role, Role::Leader);
    net
}

fn role(net: &mut Network, id: u64) -> Role {
    net.raw(id).status().role
}

fn term(net: &mut Network, id: u64) -> Term {
    net.raw(id).status().term
}

/// Goal (§9.6 of the thesis): with pre-vote, a partitioned node does not inflate its term and
/// does not depose the leader when it comes back. Method: isolate node 3 for many election
/// timeouts, heal, and compare terms and leadership.
#[test]
fn pre_vote_prevents_disruption() {
    let mut net = elected(&[1, 2, 3], |c| c.check_quorum = false);
    let before = term(&mut net, 1);
    net.partition(&[vec![1, 2], vec![3]]);
    net.tick_all(100);
    assert_eq!(
        term(&mut net, 3),
        before,
        "pre-vote keeps the isolated node's term"
    );
    net.heal();
    net.tick_all(20);
    assert_eq!(role(&mut net, 1), Role::Leader);
    assert_eq!(term(&mut net, 1), before);
}

/// Goal: the counterpart without pre-vote, showing what pre-vote prevents: the isolated node's
/// term grows, and on return it forces the leader out of its term.
#[test]
fn without_pre_vote_a_returning_node_disrupts() {
    let mut net = elected(&[1, 2, 3], |c| {
        c.check_quorum = false;
        c.pre_vote = false;
    });
    let before = term(&mut net, 1);
    net.partition(&[vec![1, 2], vec![3]]);
    net.tick_all(100);
    assert!(term(&mut net, 3) > before);
    net.heal();
    net.tick_all(40);
    assert!(
        term(&mut net, 1) > before,
        "the leader had to move to a newer term"
    );
}

/// Goal (§6.2 of the thesis): with check-quorum a leader cut off from the quorum steps down
/// within two election timeouts. Method: isolate the leader and tick.
#[test]
fn check_quorum_steps_down_isolated_leader() {
    let mut net = elected(&[1, 2, 3], |_| {});
    net.partition(&[vec![1], vec![2, 3]]);
    for _ in 0..20 {
        net.tick_all(1);
    }
    assert_eq!(role(&mut net, 1), Role::Follower);
    assert!(matches!(
        net.raw(1).propose(Bytes::new()),
        Err(ProposeError::NotLeader { .. })
    ));
}

/// Goal: without check-quorum the isolated leader stays leader (so the previous test can fail).
#[test]
fn without_check_quorum_isolated_leader_stays() {
    let mut net = elected(&[1, 2, 3], |c| c.check_quorum = false);
    net.partition(&[vec![1], vec![2, 3]]);
    net.tick_all(20);
    assert_eq!(role(&mut net, 1), Role::Leader);
}

/// Goal (§4.2.3 of the thesis): with check-quorum, a follower that heard from the leader within
/// the election timeout ignores vote requests, so a disruptive candidate cannot win. Method:
/// node 3 campaigns without pre-vote while the leader is healthy.
#[test]
fn follower_in_lease_ignores_votes() {
    let mut net = elected(&[1, 2, 3], |c| c.pre_vote = false);
    net.tick_all(1);
    net.raw(3).campaign().unwrap();
    net.stabilize();
    assert_eq!(role(&mut net, 1), Role::Leader);
    assert_ne!(role(&mut net, 3), Role::Leader);
}

/// Goal: a restarted node refuses votes for one election timeout (it cannot know whether it
/// heard from a leader just before the crash), then grants them. Method: a node with term 2
/// on disk receives a vote request at once, and again after ten ticks.
#[test]
fn restarted_node_waits_before_voting() {
    let mut config = test_config(1);
    config.seed = 99;
    let mut n = node_with(config, &[1, 2, 3], &[], (2, None, 0));
    n.step(vote(2, 1, 3, 0, 0)).unwrap();
    assert_eq!(
        vote_answer(&drain(&mut n), 2),
        None,
        "ignored right after the restart"
    );
    for _ in 0..10 {
        n.tick();
    }
    drain(&mut n);
    let term = n.status().term.get();
    n.step(vote(2, 1, term + 1, 0, 0)).unwrap();
    assert_eq!(vote_answer(&drain(&mut n), 2), Some(true));
}

/// Goal: a vote survives a restart (it is in the persisted hard state), so the node cannot vote
/// twice in a term across a crash. Method: vote, persist, rebuild the node from its storage.
#[test]
fn vote_survives_restart() {
    let mut n = node(1, &[1, 2, 3], &[], (1, None, 0));
    n.step(vote(2, 1, 2, 0, 0)).unwrap();
    drain(&mut n);
    let storage = n.storage().clone();
    let mut n = chorus_raft::RawNode::new(&config(1), storage).unwrap();
    assert_eq!(n.status().vote, Some(NodeId(2)));
    n.step(vote(3, 1, 2, 0, 0)).unwrap();
    assert_eq!(vote_answer(&drain(&mut n), 3), Some(false));
}

/// Goal (§3.10 of the thesis): leadership transfer hands leadership to the target; proposals
/// are refused while it is in progress. Method: transfer 1 -> 2 with the target cut off first,
/// check the refusal and the abort after an election timeout, then transfer for real.
#[test]
fn leader_transfer() {
    let mut net = elected(&[1, 2, 3], |_| {});
    net.partition(&[vec![1, 3], vec![2]]);
    net.raw(1).transfer_leader(NodeId(2));
    net.stabilize();
    assert_eq!(
        net.raw(1).propose(Bytes::new()),
        Err(ProposeError::TransferInProgress)
    );
    assert_eq!(net.raw(1).status().lead_transferee, Some(NodeId(2)));
    for _ in 0..10 {
        net.tick(1, 1);
    }
    net.stabilize();
    assert_eq!(
        net.raw(1).status().lead_transferee,
        None,
        "aborted after an election timeout"
    );
    assert!(
        net.raw(1)
            .propose(Bytes::from_static(b"after-abort"))
            .is_ok()
    );
    net.heal();
    net.tick_all(3);
    net.raw(1).transfer_leader(NodeId(2));
    net.stabilize();
    assert_eq!(role(&mut net, 2), Role::Leader);
    assert_eq!(role(&mut net, 1), Role::Follower);
    assert!(net.applied_prefixes_agree());
}

/// Goal: a transfer to a lagging target first brings it up to date. Method: the target misses
/// proposals, then the transfer starts after healing; the target wins with the full log.
#[test]
fn leader_transfer_to_lagging_target() {
    let mut net = elected(&[1, 2, 3], |_| {});
    net.partition(&[vec![1, 2], vec![3]]);
    for i in 0..5 {
        net.raw(1).propose(Bytes::from(format!("p{i}"))).unwrap();
    }
    net.stabilize();
    net.heal();
    net.raw(1).transfer_leader(NodeId(3));
    net.stabilize();
    assert_eq!(role(&mut net, 3), Role::Leader);
    assert_eq!(net.node(3).applied.len(), 5);
}

/// Goal (§7): a follower that needs compacted entries catches up through a snapshot. Method:
/// isolate node 3, commit entries, snapshot and compact the leader's log, heal, check node 3
/// installs the snapshot and applies the entries after it.
#[test]
fn snapshot_catch_up() {
    let mut net = elected(&[1, 2, 3], |_| {});
    net.partition(&[vec![1, 2], vec![3]]);
    for i in 0..10 {
        net.raw(1).propose(Bytes::from(format!("p{i}"))).unwrap();
    }
    net.stabilize();
    let applied = net.raw(1).status().applied;
    let cs = net.raw(1).status().conf_state;
    let storage = net.raw(1).storage_mut();
    storage
        .create_snapshot(applied, cs, Bytes::from_static(b"image"))
        .unwrap();
    storage.compact(applied).unwrap();
    net.raw(1).propose(Bytes::from_static(b"after")).unwrap();
    net.stabilize();
    net.heal();
    net.tick_all(3);
    assert!(
        net.output
            .iter()
            .any(|l| l.starts_with("n3: installed snapshot")),
        "a snapshot was sent"
    );
    let s3 = net.raw(3).status();
    assert_eq!(s3.applied, net.raw(1).status().applied);
    assert_eq!(
        net.node(3).applied.last().map(|(_, d)| d.clone()),
        Some(Bytes::from_static(b"after"))
    );
}

/// Goal: a leader in Snapshot state sends nothing else to that member until the snapshot is
/// reported; a failure report makes it probe again, and the member then catches up. Method:
/// compact the leader's log past node 3, drop the snapshot message, report the failure.
#[test]
fn report_snapshot_failure_resumes_probing() {
    let mut net = elected(&[1, 2, 3], |_| {});
    net.partition(&[vec![1, 2], vec![3]]);
    net.raw(1).propose(Bytes::from_static(b"x")).unwrap();
    net.stabilize();
    let applied = net.raw(1).status().applied;
    let cs = net.raw(1).status().conf_state;
    let storage = net.raw(1).storage_mut();
    storage.create_snapshot(applied, cs, Bytes::new()).unwrap();
    storage.compact(applied).unwrap();
    net.heal();
    net.tick(1, 1);
    // Deliver everything except snapshots, which are "lost in transit".
    for _ in 0..10 {
        for id in 1..=3 {
            while net.process_ready(NodeId(id)) {}
        }
        net.queue
            .retain(|m| !matches!(m.body, MessageBody::Snapshot { .. }));
        net.deliver_all();
    }
    let state = |net: &mut Network| net.raw(1).status().progress[&NodeId(3)].state;
    assert_eq!(state(&mut net), ProgressState::Snapshot);
    net.raw(1).report_snapshot(NodeId(3), false);
    assert_eq!(state(&mut net), ProgressState::Probe);
    net.tick_all(3);
    assert_eq!(net.raw(3).status().applied, net.raw(1).status().applied);
    assert_eq!(state(&mut net), ProgressState::Replicate);
}

/// Adds a node that joins under the leader's current configuration (how an application
/// bootstraps a new member: the initial configuration is not in the log).
fn add_node(net: &mut Network, id: u64) {
    let cs = net.raw(1).status().conf_state;
    net.add_node(test_config(id), MemStorage::new_with_conf_state(cs));
}

fn cc(transition: ConfChangeTransition, changes: Vec<ConfChangeSingle>) -> ConfChange {
    ConfChange {
        transition,
        changes,
        context: Bytes::new(),
    }
}

/// Goal (§4.3 of the thesis): a joint change replacing two voters enters the joint
/// configuration and leaves it automatically. Method: replace 2 and 3 by 4 and 5.
#[test]
fn joint_change_with_auto_leave() {
    let mut net = elected(&[1, 2, 3], |_| {});
    add_node(&mut net, 4);
    add_node(&mut net, 5);
    let changes = vec![
        ConfChangeSingle::AddVoter(NodeId(4)),
        ConfChangeSingle::AddVoter(NodeId(5)),
        ConfChangeSingle::RemoveNode(NodeId(2)),
        ConfChangeSingle::RemoveNode(NodeId(3)),
    ];
    net.raw(1)
        .propose_conf_change(cc(ConfChangeTransition::Auto, changes))
        .unwrap();
    net.stabilize();
    net.tick_all(3);
    let want: std::collections::BTreeSet<NodeId> = [1, 4, 5].into_iter().map(NodeId).collect();
    for id in [1, 4, 5] {
        let cs = net.raw(id).status().conf_state;
        assert_eq!(cs.voters, want, "node {id}");
        assert!(!cs.is_joint(), "node {id} left the joint configuration");
    }
    assert!(
        net.output.iter().any(|l| l.contains("&&")),
        "the joint configuration was entered"
    );
    // The new configuration works without 2 and 3.
    net.crash(2);
    net.crash(3);
    net.raw(1)
        .propose(Bytes::from_static(b"new-config"))
        .unwrap();
    net.stabilize();
    assert_eq!(
        net.node(5).applied.last().map(|(_, d)| d.clone()),
        Some(Bytes::from_static(b"new-config"))
    );
}

/// Goal: an explicit joint change stays joint until the application leaves it, and a second
/// change is refused while the first is not applied (§4.1: one change at a time).
#[test]
fn explicit_joint_and_one_change_at_a_time() {
    let mut net = elected(&[1, 2, 3], |_| {});
    add_node(&mut net, 4);
    let add4 = cc(
        ConfChangeTransition::JointExplicit,
        vec![ConfChangeSingle::AddVoter(NodeId(4))],
    );
    net.raw(1).propose_conf_change(add4).unwrap();
    let again = cc(
        ConfChangeTransition::Auto,
        vec![ConfChangeSingle::AddLearner(NodeId(5))],
    );
    assert_eq!(
        net.raw(1).propose_conf_change(again.clone()),
        Err(ProposeError::ConfChangeInProgress)
    );
    net.stabilize();
    net.tick_all(3);
    assert!(
        net.raw(1).status().conf_state.is_joint(),
        "explicit: no automatic leave"
    );
    let err = net.raw(1).propose_conf_change(again);
    assert!(
        matches!(err, Err(ProposeError::InvalidConfChange(_))),
        "no simple change while joint: {err:?}"
    );
    net.raw(1)
        .propose_conf_change(ConfChange::default())
        .unwrap();
    net.stabilize();
    assert!(!net.raw(4).status().conf_state.is_joint());
}

/// Goal: a learner receives the log but does not vote or campaign; once promoted it counts.
/// Method: add learner 4, check it replicates and cannot campaign, promote it.
#[test]
fn learner_promotion() {
    let mut net = elected(&[1, 2, 3], |_| {});
    add_node(&mut net, 4);
    net.raw(1)
        .propose_conf_change(cc(
            ConfChangeTransition::Auto,
            vec![ConfChangeSingle::AddLearner(NodeId(4))],
        ))
        .unwrap();
    net.stabilize();
    net.raw(1).propose(Bytes::from_static(b"x")).unwrap();
    net.stabilize();
    assert_eq!(net.node(4).applied.len(), 1, "the learner replicates");
    net.raw(4).campaign().unwrap();
    net.stabilize();
    assert_eq!(
        role(&mut net, 4),
        Role::Follower,
        "a learner never campaigns"
    );
    // A quorum of voters is still 2 of 3: with 2 and 3 down, nothing commits even with 4 up.
    net.crash(3);
    net.crash(2);
    let (_, index) = net.raw(1).propose(Bytes::from_static(b"y")).unwrap();
    net.stabilize();
    assert!(
        net.raw(1).status().commit < index,
        "a learner does not count toward the quorum"
    );
    net.restart(2);
    net.stabilize();
    net.tick_all(2);
    net.raw(1)
        .propose_conf_change(cc(
            ConfChangeTransition::Auto,
            vec![ConfChangeSingle::AddVoter(NodeId(4))],
        ))
        .unwrap();
    net.stabilize();
    let cs = net.raw(4).status().conf_state;
    assert!(cs.voters.contains(&NodeId(4)) && cs.learners.is_empty());
}

/// Goal: a leader that removes itself steps down once the change is applied, and the others
/// elect a new leader. Method: remove node 1 from {1, 2, 3}.
#[test]
fn removed_leader_steps_down() {
    let mut net = elected(&[1, 2, 3], |_| {});
    net.raw(1)
        .propose_conf_change(cc(
            ConfChangeTransition::Auto,
            vec![ConfChangeSingle::RemoveNode(NodeId(1))],
        ))
        .unwrap();
    net.stabilize();
    assert_ne!(role(&mut net, 1), Role::Leader);
    net.tick_all(40);
    let leaders: Vec<u64> = [2, 3]
        .into_iter()
        .filter(|id| net.raw(*id).status().role == Role::Leader)
        .collect();
    assert_eq!(leaders.len(), 1, "a new leader among the remaining voters");
}

/// Goal: proposals past `uncommitted_bytes_max` are dropped, and accepted again once the log
/// commits. Method: cut the leader off so nothing commits, propose until dropped, heal.
#[test]
fn uncommitted_limit_drops_proposals() {
    let mut net = elected(&[1, 2, 3], |c| {
        c.uncommitted_bytes_max = 1000;
        c.check_quorum = false;
    });
    net.partition(&[vec![1], vec![2, 3]]);
    let mut accepted = 0;
    let result = loop {
        match net.raw(1).propose(Bytes::from(vec![7u8; 100])) {
            Ok(_) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted < 100, "the limit never triggered");
    };
    assert_eq!(result, ProposeError::ProposalDropped);
    assert_eq!(
        accepted,
        1000 / 124,
        "each entry counts 100 bytes plus 24 of overhead"
    );
    net.heal();
    net.tick_all(3);
    assert!(net.raw(1).propose(Bytes::from(vec![7u8; 100])).is_ok());
}

/// Goal: a follower refuses proposals and names the leader. Method: propose on node 2.
#[test]
fn not_leader_names_the_leader() {
    let mut net = elected(&[1, 2, 3], |_| {});
    assert_eq!(
        net.raw(2).propose(Bytes::new()),
        Err(ProposeError::NotLeader {
            leader_hint: Some(NodeId(1))
        })
    );
}

/// Goal: bad envelopes are errors, never panics. Method: wrong group, wrong recipient, sender
/// zero, and a response from an unknown member.
#[test]
fn bad_envelopes_are_errors() {
    let mut n = node(1, &[1, 2, 3], &[], (1, None, 0));
    let mut m = vote(2, 1, 2, 0, 0);
    m.group_id = GroupId(9);
    assert!(matches!(n.step(m), Err(Error::WrongGroup { .. })));
    assert!(matches!(
        n.step(vote(2, 7, 2, 0, 0)),
        Err(Error::WrongRecipient { .. })
    ));
    assert!(matches!(
        n.step(vote(0, 1, 2, 0, 0)),
        Err(Error::InvalidSender)
    ));
    let stray = msg(
        42,
        1,
        1,
        MessageBody::HeartbeatResponse {
            context: Bytes::from_static(b"junk"),
        },
    );
    assert!(n.step(stray).is_ok(), "a stray answer is ignored");
}

/// Goal: at most `inflight_msgs_max` appends are outstanding to a silent follower in Replicate
/// state (flow control). Method: cut answers from node 2, propose many, count appends to 2.
#[test]
fn inflight_window_bounds_appends() {
    let mut net = elected(&[1, 2, 3], |c| {
        c.inflight_msgs_max = 3;
        c.check_quorum = false;
    });
    net.cut.insert((NodeId(2), NodeId(1)));
    let mark = net.output.len();
    for i in 0..10 {
        net.raw(1).propose(Bytes::from(format!("p{i}"))).unwrap();
        net.stabilize();
    }
    let appends = net.output[mark..]
        .iter()
        .filter(|l| l.starts_with("1->2 Append") && l.contains("ents="))
        .count();
    assert_eq!(
        appends, 3,
        "only the window's worth of appends to the silent follower"
    );
    assert_eq!(net.raw(1).status().progress[&NodeId(2)].inflight, 3);
}

/// Goal: one append carries at most `append_bytes_max` bytes of entries (but at least one
/// entry). Method: lagging follower catches up 10 entries of 124 bytes with a 300-byte limit.
#[test]
fn append_bytes_max_splits_batches() {
    let mut net = elected(&[1, 2, 3], |c| c.append_bytes_max = 300);
    net.partition(&[vec![1, 2], vec![3]]);
    for _ in 0..10 {
        net.raw(1).propose(Bytes::from(vec![1u8; 100])).unwrap();
    }
    net.stabilize();
    net.heal();
    let mark = net.output.len();
    net.tick_all(3);
    for line in net.output[mark..]
        .iter()
        .filter(|l| l.starts_with("1->3 Append") && l.contains("ents=["))
    {
        let span = line
            .split("ents=[")
            .nth(1)
            .unwrap()
            .split(']')
            .next()
            .unwrap();
        let (a, b) = span.split_once("..").unwrap();
        let count = b.parse::<u64>().unwrap() - a.parse::<u64>().unwrap() + 1;
        assert!(
            count <= 2,
            "at most two 124-byte entries in 300 bytes: {line}"
        );
    }
    assert_eq!(net.node(3).applied.len(), 10);
}

/// Goal: fast backtracking skips a whole conflicting term at once instead of one index per
/// round trip. Method: node 3 holds 50 uncommitted entries of a stale term; count rejections.
#[test]
fn fast_backtracking() {
    // Leader and node 2 hold 50 entries of term 3; node 3 holds 50 different entries of term 2.
    let mut leader_terms = vec![1, 1];
    leader_terms.extend(std::iter::repeat_n(3, 50));
    let mut stale_terms = vec![1, 1];
    stale_terms.extend(std::iter::repeat_n(2, 50));
    let mut net = Network::empty();
    net.add_node(config(1), storage(&[1, 2, 3], &leader_terms, (3, None, 0)));
    net.add_node(config(2), storage(&[1, 2, 3], &leader_terms, (3, None, 0)));
    net.add_node(config(3), storage(&[1, 2, 3], &stale_terms, (2, None, 0)));
    net.raw(1).campaign().unwrap();
    net.stabilize();
    assert_eq!(role(&mut net, 1), Role::Leader);
    let rejections = net
        .output
        .iter()
        .filter(|l| l.starts_with("3->1 AppendResponse") && l.contains("rejected"))
        .count();
    assert!(
        rejections <= 2,
        "at most two rejections instead of one per entry, got {rejections}"
    );
    assert_eq!(
        net.raw(3).entries(LogIndex(52), LogIndex(53)).unwrap()[0].term,
        Term(3)
    );
    assert_eq!(
        net.raw(3).status().last_index,
        net.raw(1).status().last_index
    );
}

/// Goal (§6.4.1): with LeaseBased reads a leader with a fresh lease answers at once, without a
/// heartbeat round; once the lease ran out it falls back to a round, which an isolated leader
/// cannot complete. Method: count messages around each read.
#[test]
fn lease_read_and_expiry() {
    let mut net = elected(&[1, 2, 3], |c| c.read_only = ReadOnlyOption::LeaseBased);
    net.tick_all(1);
    net.raw(1).read_index(Bytes::from_static(b"fresh")).unwrap();
    let ready = net.raw(1).ready();
    assert_eq!(ready.read_states.len(), 1, "answered from the lease");
    assert!(ready.messages.is_empty(), "no heartbeat round needed");
    let number = ready.number;
    net.raw(1).on_persisted(number);
    net.partition(&[vec![1], vec![2, 3]]);
    for _ in 0..8 {
        net.tick(1, 1);
    }
    net.stabilize();
    assert_eq!(role(&mut net, 1), Role::Leader, "not yet stepped down");
    net.raw(1)
        .read_index(Bytes::from_static(b"expired"))
        .unwrap();
    net.stabilize();
    let stale_read = net
        .node(1)
        .reads
        .iter()
        .any(|(_, c)| c == &Bytes::from_static(b"expired"));
    assert!(!stale_read, "no read from an expired lease");
}

/// Goal: a Safe ReadIndex requested before the new leader committed an entry of its term waits
/// for that commit (§6.4 step 1). Method: request on a fresh leader before any answer arrives.
#[test]
fn read_index_waits_for_commit_in_term() {
    let mut net = Network::new(&[1, 2, 3], |_| {});
    net.raw(1).campaign().unwrap();
    // Deliver until node 1 is leader, but before its first entry commits.
    while net.raw(1).status().role != Role::Leader {
        for id in 1..=3 {
            net.process_ready(NodeId(id));
        }
        net.deliver_all();
    }
    assert_eq!(net.raw(1).status().commit, LogIndex(0));
    net.raw(1).read_index(Bytes::from_static(b"early")).unwrap();
    net.stabilize();
    assert_eq!(
        net.node(1).reads,
        vec![(LogIndex(1), Bytes::from_static(b"early"))]
    );
}

/// Goal: a read request on a node without a known leader is refused with NotLeader.
#[test]
fn read_index_without_leader() {
    let mut net = Network::new(&[1, 2, 3], |_| {});
    assert_eq!(
        net.raw(2).read_index(Bytes::new()),
        Err(ProposeError::NotLeader { leader_hint: None })
    );
}

/// Goal: one Ready hands out at most `committed_bytes_max` bytes of committed entries (at least
/// one entry), and the following Readies hand out the rest in order. Method: a single-node
/// leader commits ten 124-byte entries at once with a 300-byte limit.
#[test]
fn committed_bytes_max_bounds_each_ready() {
    let mut c = config(1);
    c.committed_bytes_max = 300;
    let mut n = node_with(c, &[1], &[], (0, None, 0));
    n.campaign().unwrap();
    drain(&mut n);
    for _ in 0..10 {
        n.propose(Bytes::from(vec![0u8; 100])).unwrap();
    }
    let mut batches = Vec::new();
    let mut next = LogIndex(2);
    while n.has_ready() {
        let ready = n.ready();
        persist(&mut n, &ready);
        if ready.committed_entries.is_empty() {
            continue;
        }
        for e in &ready.committed_entries {
            assert_eq!(e.index, next, "in order, no gaps");
            next = next.next();
        }
        batches.push(ready.committed_entries.len());
        n.on_applied(ready.committed_entries.last().unwrap().index);
    }
    assert_eq!(next, LogIndex(12), "everything applied");
    assert!(
        batches.iter().all(|b| *b <= 2),
        "at most two entries per Ready: {batches:?}"
    );
}

/// Goal: `report_unreachable` stops optimistic streaming to that member (back to Probe).
#[test]
fn report_unreachable_probes() {
    let mut net = elected(&[1, 2, 3], |_| {});
    let state = |net: &mut Network| net.raw(1).status().progress[&NodeId(2)].state;
    assert_eq!(state(&mut net), ProgressState::Replicate);
    net.raw(1).report_unreachable(NodeId(2));
    assert_eq!(state(&mut net), ProgressState::Probe);
}

/// Goal: once a leader has sent TimeoutNow its lease is void (the target may win without
/// waiting for leases to expire), so reads need a heartbeat round again. Method: a fresh lease
/// answers at once; after a transfer whose TimeoutNow is lost, a read sends heartbeats.
#[test]
fn transfer_voids_the_lease() {
    let mut net = elected(&[1, 2, 3], |c| c.read_only = ReadOnlyOption::LeaseBased);
    net.tick_all(1);
    net.raw(1)
        .read_index(Bytes::from_static(b"before"))
        .unwrap();
    assert_eq!(
        net.raw(1).ready().read_states.len(),
        1,
        "answered from the lease"
    );
    net.cut.insert((NodeId(1), NodeId(2)));
    net.raw(1).transfer_leader(NodeId(2));
    net.stabilize();
    assert!(
        net.output
            .iter()
            .any(|l| l.starts_with("1->2 TimeoutNow") && l.ends_with("DROPPED"))
    );
    net.raw(1).read_index(Bytes::from_static(b"after")).unwrap();
    let ready = net.raw(1).ready();
    assert!(
        ready.read_states.is_empty(),
        "no lease read after TimeoutNow"
    );
    assert!(
        ready
            .messages
            .iter()
            .any(|m| matches!(m.body, MessageBody::Heartbeat { .. }))
    );
}

/// Goal: a restarted node resumes from its persisted hard state and the applied index in its
/// config: it neither re-applies nor loses committed entries. Method: crash a follower after
/// it applied, commit more while it is down, restart it.
#[test]
fn restart_resumes_from_applied() {
    let mut net = elected(&[1, 2, 3], |_| {});
    net.raw(1).propose(Bytes::from_static(b"a")).unwrap();
    net.stabilize();
    net.tick_all(1);
    net.crash(3);
    net.raw(1).propose(Bytes::from_static(b"b")).unwrap();
    net.stabilize();
    net.restart(3);
    let s = net.raw(3).status();
    assert_eq!((s.commit, s.applied), (LogIndex(2), LogIndex(2)));
    net.tick_all(3);
    let data: Vec<Bytes> = net.node(3).applied.iter().map(|(_, d)| d.clone()).collect();
    assert_eq!(
        data,
        vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")]
    );
}

/// Goal: an applied index past the persisted commit is refused at startup, with an error.
#[test]
fn applied_past_commit_is_refused() {
    let mut c = config(1);
    c.applied = LogIndex(5);
    let result = chorus_raft::RawNode::new(&c, storage(&[1, 2, 3], &[1, 1], (1, None, 2)));
    assert!(matches!(
        result,
        Err(Error::AppliedPastCommit {
            applied: 5,
            committed: 2
        })
    ));
}

/// Goal: only the current leader can make a follower campaign with TimeoutNow; the same
/// message from another member is ignored. Method: step TimeoutNow from 3, then from 1.
#[test]
fn timeout_now_only_from_the_leader() {
    let mut net = elected(&[1, 2, 3], |_| {});
    net.raw(2)
        .step(msg(3, 2, 1, MessageBody::TimeoutNow))
        .unwrap();
    assert_eq!(role(&mut net, 2), Role::Follower);
    net.raw(2)
        .step(msg(1, 2, 1, MessageBody::TimeoutNow))
        .unwrap();
    assert_eq!(role(&mut net, 2), Role::Candidate);
    net.stabilize();
    assert_eq!(role(&mut net, 2), Role::Leader);
}
