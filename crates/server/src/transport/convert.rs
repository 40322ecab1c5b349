//! Conversions between the `chorus-raft` types and the `chorus.peer.v1` protobuf messages.
//!
//! Encoding cannot fail: every Raft value has a wire form. Decoding treats the frame as
//! untrusted input (DESIGN.md): a field the Rust type requires but the frame lacks, an unknown
//! enum value or a zero node id where a member is required is a [`DecodeError`], never a panic.
//!
//! Node id 0 is never a member, so it stands for "none" on the wire where the Rust type has an
//! `Option` (the vote of a hard state).

use bytes::Bytes;
use chorus_proto::peer as pb;
use chorus_raft::{
    ConfChange, ConfChangeSingle, ConfChangeTransition, ConfState, Entry, EntryPayload, GroupId,
    HardState, LogIndex, Message, MessageBody, NodeId, Snapshot, SnapshotMeta, Term,
};

/// Why a frame could not be turned into a Raft value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("{message}.{field} is missing")]
    MissingField {
        message: &'static str,
        field: &'static str,
    },
    #[error("{message}.{field} has the unknown value {value}")]
    UnknownEnumValue {
        message: &'static str,
        field: &'static str,
        value: i32,
    },
    #[error("{message}.{field} is 0, which is not a member id")]
    ZeroNodeId {
        message: &'static str,
        field: &'static str,
    },
}

fn node(id: u64, message: &'static str, field: &'static str) -> Result<NodeId, DecodeError> {
    if id == 0 {
        return Err(DecodeError::ZeroNodeId { message, field });
    }
    Ok(NodeId(id))
}

fn nodes(
    ids: &[u64],
    message: &'static str,
    field: &'static str,
) -> Result<Vec<NodeId>, DecodeError> {
    ids.iter().map(|id| node(*id, message, field)).collect()
}

// ----- Encoding ---------------------------------------------------------------------------

/// The wire form of a Raft message.
pub fn message_to_proto(message: &Message) -> pb::Message {
    pb::Message {
        group_id: message.group_id.get(),
        from: message.from.get(),
        to: message.to.get(),
        term: message.term.get(),
        body: Some(body_to_proto(&message.body)),
    }
}

fn body_to_proto(body: &MessageBody) -> pb::message::Body {
    use pb::message::Body;
    match body {
        MessageBody::PreVote {
            last_index,
            last_term,
        } => Body::PreVote(pb::PreVote {
            last_index: last_index.get(),
            last_term: last_term.get(),
        }),
        MessageBody::PreVoteResponse { reject } => {
            Body::PreVoteResponse(pb::PreVoteResponse { reject: *reject })
        }
        MessageBody::Vote {
            last_index,
            last_term,
            leader_transfer,
        } => Body::Vote(pb::Vote {
            last_index: last_index.get(),
            last_term: last_term.get(),
            leader_transfer: *leader_transfer,
        }),
        MessageBody::VoteResponse { reject } => {
            Body::VoteResponse(pb::VoteResponse { reject: *reject })
        }
        MessageBody::Append {
            prev_index,
            prev_term,
            entries,
            commit,
        } => Body::Append(pb::Append {
            prev_index: prev_index.get(),
            prev_term: prev_term.get(),
            entries: entries.iter().map(entry_to_proto).collect(),
            commit: commit.get(),
        }),
        MessageBody::AppendResponse {
            index,
            reject,
            reject_hint,
            hint_term,
        } => Body::AppendResponse(pb::AppendResponse {
            index: index.get(),
            reject: *reject,
            reject_hint: reject_hint.get(),
            hint_term: hint_term.get(),
        }),
        MessageBody::Heartbeat { commit, context } => Body::Heartbeat(pb::Heartbeat {
            commit: commit.get(),
            context: context.clone(),
        }),
        MessageBody::HeartbeatResponse { context } => {
            Body::HeartbeatResponse(pb::HeartbeatResponse {
                context: context.clone(),
            })
        }
        MessageBody::Snapshot { snapshot } => Body::Snapshot(snapshot_to_proto(snapshot)),
        MessageBody::TimeoutNow => Body::TimeoutNow(pb::TimeoutNow {}),
        MessageBody::ReadIndex { context } => Body::ReadIndex(pb::ReadIndex {
            context: context.clone(),
        }),
        MessageBody::ReadIndexResponse {
            index,
            context,
            reject,
        } => Body::ReadIndexResponse(pb::ReadIndexResponse {
            index: index.get(),
            context: context.clone(),
            reject: *reject,
        }),
    }
}

/// The wire form of a log entry.
pub fn entry_to_proto(entry: &Entry) -> pb::Entry {
    let payload = match &entry.payload {
        EntryPayload::Normal(data) => pb::entry::Payload::Normal(data.clone()),
        EntryPayload::ConfChange(cc) => pb::entry::Payload::ConfChange(conf_change_to_proto(cc)),
    };
    pb::Entry {
        term: entry.term.get(),
        index: entry.index.get(),
        payload: Some(payload),
    }
}

fn conf_change_to_proto(cc: &ConfChange) -> pb::ConfChange {
    let transition = match cc.transition {
        ConfChangeTransition::Auto => pb::ConfChangeTransition::Auto,
        ConfChangeTransition::JointImplicit => pb::ConfChangeTransition::JointImplicit,
        ConfChangeTransition::JointExplicit => pb::ConfChangeTransition::JointExplicit,
    };
    let changes = cc
        .changes
        .iter()
        .map(|change| {
            use pb::conf_change_single::Change;
            let change = match change {
                ConfChangeSingle::AddVoter(id) => Change::AddVoter(id.get()),
                ConfChangeSingle::AddLearner(id) => Change::AddLearner(id.get()),
                ConfChangeSingle::RemoveNode(id) => Change::RemoveNode(id.get()),
            };
            pb::ConfChangeSingle {
                change: Some(change),
            }
        })
        .collect();
    pb::ConfChange {
        transition: transition as i32,
        changes,
        context: cc.context.clone(),
    }
}

fn conf_state_to_proto(cs: &ConfState) -> pb::ConfState {
    let ids = |set: &std::collections::BTreeSet<NodeId>| set.iter().map(|id| id.get()).collect();
    pb::ConfState {
        voters: ids(&cs.voters),
        learners: ids(&cs.learners),
        voters_outgoing: ids(&cs.voters_outgoing),
        learners_next: ids(&cs.learners_next),
        auto_leave: cs.auto_leave,
    }
}

/// The wire form of a snapshot's metadata.
pub fn snapshot_meta_to_proto(meta: &SnapshotMeta) -> pb::SnapshotMeta {
    pb::SnapshotMeta {
        index: meta.index.get(),
        term: meta.term.get(),
        conf_state: Some(conf_state_to_proto(&meta.conf_state)),
    }
}

fn snapshot_to_proto(snapshot: &Snapshot) -> pb::Snapshot {
    pb::Snapshot {
        meta: Some(snapshot_meta_to_proto(&snapshot.meta)),
        data: snapshot.data.clone(),
    }
}

/// The wire form of a hard state.
pub fn hard_state_to_proto(hs: &HardState) -> pb::HardState {
    pb::HardState {
        term: hs.term.get(),
        vote: hs.vote.map_or(0, NodeId::get),
        commit: hs.commit.get(),
    }
}

// ----- Decoding ---------------------------------------------------------------------------

/// Decodes a Raft message; `from` and `to` must be members (non-zero) and a body must be set.
pub fn message_from_proto(message: pb::Message) -> Result<Message, DecodeError> {
    let body = message.body.ok_or(DecodeError::MissingField {
        message: "Message",
        field: "body",
    })?;
    Ok(Message {
        group_id: GroupId(message.group_id),
        from: node(message.from, "Message", "from")?,
        to: node(message.to, "Message", "to")?,
        term: Term(message.term),
        body: body_from_proto(body)?,
    })
}

fn body_from_proto(body: pb::message::Body) -> Result<MessageBody, DecodeError> {
    use pb::message::Body;
    Ok(match body {
        Body::PreVote(m) => MessageBody::PreVote {
            last_index: LogIndex(m.last_index),
            last_term: Term(m.last_term),
        },
        Body::PreVoteResponse(m) => MessageBody::PreVoteResponse { reject: m.reject },
        Body::Vote(m) => MessageBody::Vote {
            last_index: LogIndex(m.last_index),
            last_term: Term(m.last_term),
            leader_transfer: m.leader_transfer,
        },
        Body::VoteResponse(m) => MessageBody::VoteResponse { reject: m.reject },
        Body::Append(m) => MessageBody::Append {
            prev_index: LogIndex(m.prev_index),
            prev_term: Term(m.prev_term),
            entries: m
                .entries
                .into_iter()
                .map(entry_from_proto)
                .collect::<Result<_, _>>()?,
            commit: LogIndex(m.commit),
        },
        Body::AppendResponse(m) => MessageBody::AppendResponse {
            index: LogIndex(m.index),
            reject: m.reject,
            reject_hint: LogIndex(m.reject_hint),
            hint_term: Term(m.hint_term),
        },
        Body::Heartbeat(m) => MessageBody::Heartbeat {
            commit: LogIndex(m.commit),
            context: m.context,
        },
        Body::HeartbeatResponse(m) => MessageBody::HeartbeatResponse { context: m.context },
        Body::Snapshot(m) => MessageBody::Snapshot {
            snapshot: snapshot_from_proto(m)?,
        },
        Body::TimeoutNow(pb::TimeoutNow {}) => MessageBody::TimeoutNow,
        Body::ReadIndex(m) => MessageBody::ReadIndex { context: m.context },
        Body::ReadIndexResponse(m) => MessageBody::ReadIndexResponse {
            index: LogIndex(m.index),
            context: m.context,
            reject: m.reject,
        },
    })
}

/// Decodes a log entry; its payload must be set.
pub fn entry_from_proto(entry: pb::Entry) -> Result<Entry, DecodeError> {
    let payload = match entry.payload {
        // A copy, not a slice of the received frame: the log keeps entries until compaction,
        // and a slice would keep the frame's whole receive buffer in memory with it.
        Some(pb::entry::Payload::Normal(data)) => {
            EntryPayload::Normal(Bytes::copy_from_slice(&data))
        }
        Some(pb::entry::Payload::ConfChange(cc)) => {
            EntryPayload::ConfChange(conf_change_from_proto(cc)?)
        }
        None => {
            return Err(DecodeError::MissingField {
                message: "Entry",
                field: "payload",
            });
        }
    };
    Ok(Entry {
        term: Term(entry.term),
        index: LogIndex(entry.index),
        payload,
    })
}

fn conf_change_from_proto(cc: pb::ConfChange) -> Result<ConfChange, DecodeError> {
    let transition = match pb::ConfChangeTransition::try_from(cc.transition) {
        Ok(pb::ConfChangeTransition::Auto) => ConfChangeTransition::Auto,
        Ok(pb::ConfChangeTransition::JointImplicit) => ConfChangeTransition::JointImplicit,
        Ok(pb::ConfChangeTransition::JointExplicit) => ConfChangeTransition::JointExplicit,
        Err(_) => {
            return Err(DecodeError::UnknownEnumValue {
                message: "ConfChange",
                field: "transition",
                value: cc.transition,
            });
        }
    };
    let changes = cc
        .changes
        .into_iter()
        .map(|single| {
            use pb::conf_change_single::Change;
            let (msg, field) = ("ConfChangeSingle", "change");
            match single.change {
                Some(Change::AddVoter(id)) => Ok(ConfChangeSingle::AddVoter(node(id, msg, field)?)),
                Some(Change::AddLearner(id)) => {
                    Ok(ConfChangeSingle::AddLearner(node(id, msg, field)?))
                }
                Some(Change::RemoveNode(id)) => {
                    Ok(ConfChangeSingle::RemoveNode(node(id, msg, field)?))
                }
                None => Err(DecodeError::MissingField {
                    message: msg,
                    field,
                }),
            }
        })
        .collect::<Result<_, _>>()?;
    Ok(ConfChange {
        transition,
        changes,
        context: cc.context,
    })
}

fn conf_state_from_proto(cs: pb::ConfState) -> Result<ConfState, DecodeError> {
    let m = "ConfState";
    Ok(ConfState {
        voters: nodes(&cs.voters, m, "voters")?.into_iter().collect(),
        learners: nodes(&cs.learners, m, "learners")?.into_iter().collect(),
        voters_outgoing: nodes(&cs.voters_outgoing, m, "voters_outgoing")?
            .into_iter()
            .collect(),
        learners_next: nodes(&cs.learners_next, m, "learners_next")?
            .into_iter()
            .collect(),
        auto_leave: cs.auto_leave,
    })
}

/// Decodes a snapshot's metadata; its configuration must be set.
pub fn snapshot_meta_from_proto(meta: pb::SnapshotMeta) -> Result<SnapshotMeta, DecodeError> {
    let conf_state = meta.conf_state.ok_or(DecodeError::MissingField {
        message: "SnapshotMeta",
        field: "conf_state",
    })?;
    Ok(SnapshotMeta {
        index: LogIndex(meta.index),
        term: Term(meta.term),
        conf_state: conf_state_from_proto(conf_state)?,
    })
}

fn snapshot_from_proto(snapshot: pb::Snapshot) -> Result<Snapshot, DecodeError> {
    let meta = snapshot.meta.ok_or(DecodeError::MissingField {
        message: "Snapshot",
        field: "meta",
    })?;
    Ok(Snapshot {
        meta: snapshot_meta_from_proto(meta)?,
        data: snapshot.data,
    })
}

/// Decodes a hard state; a vote of 0 means "no vote".
pub fn hard_state_from_proto(hs: pb::HardState) -> HardState {
    HardState {
        term: Term(hs.term),
        vote: (hs.vote != 0).then_some(NodeId(hs.vote)),
        commit: LogIndex(hs.commit),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use bytes::Bytes;
    use proptest::prelude::*;
    use prost::Message as _;

    use super::*;

    fn node_id() -> impl Strategy<Value = NodeId> {
        (1u64..=u64::MAX).prop_map(NodeId)
    }

    fn data() -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from)
    }

    fn node_set() -> impl Strategy<Value = BTreeSet<NodeId>> {
        proptest::collection::btree_set(node_id(), 0..5)
    }

    fn conf_change() -> impl Strategy<Value = ConfChange> {
        let transition = prop_oneof![
            Just(ConfChangeTransition::Auto),
            Just(ConfChangeTransition::JointImplicit),
            Just(ConfChangeTransition::JointExplicit),
        ];
        let single = prop_oneof![
            node_id().prop_map(ConfChangeSingle::AddVoter),
            node_id().prop_map(ConfChangeSingle::AddLearner),
            node_id().prop_map(ConfChangeSingle::RemoveNode),
        ];
        (transition, proptest::collection::vec(single, 0..4), data()).prop_map(
            |(transition, changes, context)| ConfChange {
                transition,
                changes,
                context,
            },
        )
    }

    fn entry() -> impl Strategy<Value = Entry> {
        let payload = prop_oneof![
            data().prop_map(EntryPayload::Normal),
            conf_change().prop_map(EntryPayload::ConfChange),
        ];
        (any::<u64>(), any::<u64>(), payload).prop_map(|(term, index, payload)| Entry {
            term: Term(term),
            index: LogIndex(index),
            payload,
        })
    }

    fn snapshot() -> impl Strategy<Value = Snapshot> {
        let conf_state = (
            node_set(),
            node_set(),
            node_set(),
            node_set(),
            any::<bool>(),
        )
            .prop_map(
                |(voters, learners, voters_outgoing, learners_next, auto_leave)| ConfState {
                    voters,
                    learners,
                    voters_outgoing,
                    learners_next,
                    auto_leave,
                },
            );
        (any::<u64>(), any::<u64>(), conf_state, data()).prop_map(
            |(index, term, conf_state, data)| Snapshot {
                meta: SnapshotMeta {
                    index: LogIndex(index),
                    term: Term(term),
                    conf_state,
                },
                data,
            },
        )
    }

    /// Every variant of `MessageBody`; the `kind` test below checks none is missing.
    fn body() -> impl Strategy<Value = MessageBody> {
        let index = || any::<u64>().prop_map(LogIndex);
        let term = || any::<u64>().prop_map(Term);
        prop_oneof![
            (index(), term()).prop_map(|(last_index, last_term)| MessageBody::PreVote {
                last_index,
                last_term
            }),
            any::<bool>().prop_map(|reject| MessageBody::PreVoteResponse { reject }),
            (index(), term(), any::<bool>()).prop_map(
                |(last_index, last_term, leader_transfer)| {
                    MessageBody::Vote {
                        last_index,
                        last_term,
                        leader_transfer,
                    }
                }
            ),
            any::<bool>().prop_map(|reject| MessageBody::VoteResponse { reject }),
            (
                index(),
                term(),
                proptest::collection::vec(entry(), 0..4),
                index()
            )
                .prop_map(|(prev_index, prev_term, entries, commit)| {
                    MessageBody::Append {
                        prev_index,
                        prev_term,
                        entries,
                        commit,
                    }
                }),
            (index(), any::<bool>(), index(), term()).prop_map(
                |(index, reject, reject_hint, hint_term)| MessageBody::AppendResponse {
                    index,
                    reject,
                    reject_hint,
                    hint_term
                }
            ),
            (index(), data())
                .prop_map(|(commit, context)| MessageBody::Heartbeat { commit, context }),
            data().prop_map(|context| MessageBody::HeartbeatResponse { context }),
            snapshot().prop_map(|snapshot| MessageBody::Snapshot { snapshot }),
            Just(MessageBody::TimeoutNow),
            data().prop_map(|context| MessageBody::ReadIndex { context }),
            (index(), data(), any::<bool>()).prop_map(|(index, context, reject)| {
                MessageBody::ReadIndexResponse {
                    index,
                    context,
                    reject,
                }
            }),
        ]
    }

    pub(crate) fn message() -> impl Strategy<Value = Message> {
        (any::<u64>(), node_id(), node_id(), any::<u64>(), body()).prop_map(
            |(group, from, to, term, body)| Message {
                group_id: GroupId(group),
                from,
                to,
                term: Term(term),
                body,
            },
        )
    }

    proptest! {
        // Goal: every message survives encoding to the wire and back, through real protobuf
        // bytes. Method: generate messages of every body kind, encode, decode, compare.
        #[test]
        fn message_round_trips(message in message()) {
            let bytes = message_to_proto(&message).encode_to_vec();
            let decoded = pb::Message::decode(bytes.as_slice()).expect("valid protobuf");
            prop_assert_eq!(message_from_proto(decoded), Ok(message));
        }

        // Goal: hard states round-trip, with "no vote" as 0. Method: generate and compare.
        #[test]
        fn hard_state_round_trips(term in any::<u64>(), vote in proptest::option::of(node_id()), commit in any::<u64>()) {
            let hs = HardState { term: Term(term), vote, commit: LogIndex(commit) };
            prop_assert_eq!(hard_state_from_proto(hard_state_to_proto(&hs)), hs);
        }

        // Goal: arbitrary bytes never panic the decoder. Method: feed random bytes to prost
        // and, when prost accepts them, to the conversion.
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(frame) = pb::Message::decode(bytes.as_slice()) {
                let _ = message_from_proto(frame);
            }
        }
    }

    // Goal: the generator covers every MessageBody variant, so the round trip tests them all.
    // Method: sample the strategy until all twelve kinds have been seen.
    #[test]
    fn generator_covers_every_body_kind() {
        use proptest::strategy::ValueTree;
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let strategy = body();
        let mut kinds = BTreeSet::new();
        for _ in 0..2000 {
            kinds.insert(
                strategy
                    .new_tree(&mut runner)
                    .expect("sample")
                    .current()
                    .kind(),
            );
        }
        assert_eq!(kinds.len(), 12, "{kinds:?}");
    }

    fn valid() -> pb::Message {
        message_to_proto(&Message {
            group_id: GroupId(1),
            from: NodeId(1),
            to: NodeId(2),
            term: Term(3),
            body: MessageBody::Append {
                prev_index: LogIndex(1),
                prev_term: Term(1),
                entries: vec![Entry {
                    term: Term(3),
                    index: LogIndex(2),
                    payload: EntryPayload::ConfChange(ConfChange {
                        transition: ConfChangeTransition::Auto,
                        changes: vec![ConfChangeSingle::AddVoter(NodeId(4))],
                        context: Bytes::new(),
                    }),
                }],
                commit: LogIndex(1),
            },
        })
    }

    fn append(m: &mut pb::Message) -> &mut pb::Append {
        match m.body.as_mut() {
            Some(pb::message::Body::Append(a)) => a,
            _ => unreachable!("valid() builds an Append"),
        }
    }

    fn conf_change_of(m: &mut pb::Message) -> &mut pb::ConfChange {
        match append(m).entries[0].payload.as_mut() {
            Some(pb::entry::Payload::ConfChange(cc)) => cc,
            _ => unreachable!("valid() builds a conf change entry"),
        }
    }

    // Goal: each missing or invalid field is an error naming it, never a panic.
    // Method: break one field of a valid frame per row and check the error.
    #[test]
    fn missing_or_invalid_fields_are_errors() {
        type Break = fn(&mut pb::Message);
        let cases: &[(Break, DecodeError)] = &[
            (
                |m| m.body = None,
                DecodeError::MissingField {
                    message: "Message",
                    field: "body",
                },
            ),
            (
                |m| m.from = 0,
                DecodeError::ZeroNodeId {
                    message: "Message",
                    field: "from",
                },
            ),
            (
                |m| m.to = 0,
                DecodeError::ZeroNodeId {
                    message: "Message",
                    field: "to",
                },
            ),
            (
                |m| append(m).entries[0].payload = None,
                DecodeError::MissingField {
                    message: "Entry",
                    field: "payload",
                },
            ),
            (
                |m| conf_change_of(m).transition = 9,
                DecodeError::UnknownEnumValue {
                    message: "ConfChange",
                    field: "transition",
                    value: 9,
                },
            ),
            (
                |m| conf_change_of(m).changes[0].change = None,
                DecodeError::MissingField {
                    message: "ConfChangeSingle",
                    field: "change",
                },
            ),
            (
                |m| {
                    conf_change_of(m).changes[0].change =
                        Some(pb::conf_change_single::Change::RemoveNode(0))
                },
                DecodeError::ZeroNodeId {
                    message: "ConfChangeSingle",
                    field: "change",
                },
            ),
            (
                |m| m.body = Some(pb::message::Body::Snapshot(pb::Snapshot::default())),
                DecodeError::MissingField {
                    message: "Snapshot",
                    field: "meta",
                },
            ),
            (
                |m| {
                    let snapshot = pb::Snapshot {
                        meta: Some(pb::SnapshotMeta {
                            index: 1,
                            term: 1,
                            conf_state: None,
                        }),
                        data: Bytes::new(),
                    };
                    m.body = Some(pb::message::Body::Snapshot(snapshot));
                },
                DecodeError::MissingField {
                    message: "SnapshotMeta",
                    field: "conf_state",
                },
            ),
            (
                |m| {
                    let conf_state = pb::ConfState {
                        voters: vec![1, 0],
                        ..Default::default()
                    };
                    let snapshot = pb::Snapshot {
                        meta: Some(pb::SnapshotMeta {
                            index: 1,
                            term: 1,
                            conf_state: Some(conf_state),
                        }),
                        data: Bytes::new(),
                    };
                    m.body = Some(pb::message::Body::Snapshot(snapshot));
                },
                DecodeError::ZeroNodeId {
                    message: "ConfState",
                    field: "voters",
                },
            ),
        ];
        assert!(
            message_from_proto(valid()).is_ok(),
            "the unbroken frame decodes"
        );
        for (break_it, expected) in cases {
            let mut frame = valid();
            break_it(&mut frame);
            assert_eq!(message_from_proto(frame), Err(expected.clone()));
        }
    }
}
