//! Helpers shared by the integration tests: nodes built from a chosen log, and messages.
#![allow(dead_code)]

pub mod run;

use bytes::Bytes;
use chorus_raft::interaction::test_config;
use chorus_raft::{
    ConfState, Config, Entry, EntryPayload, GroupId, HardState, LogIndex, MemStorage, Message,
    MessageBody, NodeId, RawNode, Ready, Term,
};

pub fn entry(index: u64, term: u64) -> Entry {
    Entry {
        term: Term(term),
        index: LogIndex(index),
        payload: EntryPayload::Normal(Bytes::new()),
    }
}

/// Storage holding entries with the given terms from index 1, voters `voters`, and the hard
/// state `(term, vote, commit)`.
pub fn storage(voters: &[u64], terms: &[u64], hs: (u64, Option<u64>, u64)) -> MemStorage {
    let cs = ConfState::with_voters(voters.iter().map(|v| NodeId(*v)));
    let mut s = MemStorage::new_with_conf_state(cs);
    let entries: Vec<Entry> = terms
        .iter()
        .enumerate()
        .map(|(i, t)| entry(i as u64 + 1, *t))
        .collect();
    s.append(&entries).unwrap();
    s.set_hard_state(HardState {
        term: Term(hs.0),
        vote: hs.1.map(NodeId),
        commit: LogIndex(hs.2),
    });
    s
}

/// A node with a chosen log. Check-quorum is off, so that a restarted node (term > 0) answers
/// votes at once; the tests of check-quorum build their own config.
pub fn node(
    id: u64,
    voters: &[u64],
    terms: &[u64],
    hs: (u64, Option<u64>, u64),
) -> RawNode<MemStorage> {
    node_with(config(id), voters, terms, hs)
}

/// The test config of node `id`, with check-quorum off.
pub fn config(id: u64) -> Config {
    let mut config = test_config(id);
    config.check_quorum = false;
    config
}

pub fn node_with(
    config: Config,
    voters: &[u64],
    terms: &[u64],
    hs: (u64, Option<u64>, u64),
) -> RawNode<MemStorage> {
    RawNode::new(&config, storage(voters, terms, hs)).unwrap()
}

pub fn msg(from: u64, to: u64, term: u64, body: MessageBody) -> Message {
    Message {
        group_id: GroupId(1),
        from: NodeId(from),
        to: NodeId(to),
        term: Term(term),
        body,
    }
}

pub fn vote(from: u64, to: u64, term: u64, last_index: u64, last_term: u64) -> Message {
    let body = MessageBody::Vote {
        last_index: LogIndex(last_index),
        last_term: Term(last_term),
        leader_transfer: false,
    };
    msg(from, to, term, body)
}

/// Persists a Ready into the node's own storage and acknowledges it, like an application would.
pub fn persist(raw: &mut RawNode<MemStorage>, ready: &Ready) {
    let storage = raw.storage_mut();
    if let Some(snap) = &ready.snapshot {
        storage.apply_snapshot(snap.clone()).unwrap();
    }
    storage.append(&ready.entries).unwrap();
    if let Some(hs) = ready.hard_state {
        storage.set_hard_state(hs);
    }
    raw.on_persisted(ready.number);
}

/// Takes a Ready, persists it and returns every message it carried (both kinds).
pub fn drain(raw: &mut RawNode<MemStorage>) -> Vec<Message> {
    let mut out = Vec::new();
    while raw.has_ready() {
        let ready = raw.ready();
        persist(raw, &ready);
        out.extend(ready.messages.iter().cloned());
        out.extend(ready.persisted_messages.iter().cloned());
        if let Some(last) = ready.committed_entries.last() {
            raw.on_applied(last.index);
        }
    }
    out
}

/// Whether `msgs` holds a vote answer to `to` with the given rejection flag.
pub fn vote_answer(msgs: &[Message], to: u64) -> Option<bool> {
    msgs.iter().find_map(|m| match m.body {
        MessageBody::VoteResponse { reject } if m.to == NodeId(to) => Some(!reject),
        _ => None,
    })
}

/// A tiny deterministic generator for randomized tests (SplitMix64).
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    }
}
