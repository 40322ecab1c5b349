//! Property tests of the WAL record codec.
//!
//! Goal: every record round-trips through the frame and the codec, and no byte string, however
//! malformed, makes a decoder panic. Method: proptest strategies for every record kind; random
//! and mutated byte strings fed to `read_frame` and `decode_record`.

use bytes::Bytes;
use chorus_raft::{
    ConfChange, ConfChangeSingle, ConfChangeTransition, ConfState, Entry, EntryPayload, GroupId,
    HardState, LogIndex, NodeId, SnapshotMeta, Term,
};
use chorus_storage::wal::codec::{self, FRAME_HEADER_BYTES, FrameError, Record};
use proptest::collection::{btree_set, vec};
use proptest::prelude::*;

fn node() -> impl Strategy<Value = NodeId> {
    prop_oneof![0u64..8, any::<u64>()].prop_map(NodeId)
}

fn conf_change() -> impl Strategy<Value = ConfChange> {
    let transition = prop_oneof![
        Just(ConfChangeTransition::Auto),
        Just(ConfChangeTransition::JointImplicit),
        Just(ConfChangeTransition::JointExplicit),
    ];
    let single = prop_oneof![
        node().prop_map(ConfChangeSingle::AddVoter),
        node().prop_map(ConfChangeSingle::AddLearner),
        node().prop_map(ConfChangeSingle::RemoveNode),
    ];
    (transition, vec(single, 0..4), vec(any::<u8>(), 0..16)).prop_map(|(transition, changes, c)| {
        ConfChange {
            transition,
            changes,
            context: Bytes::from(c),
        }
    })
}

fn entries() -> impl Strategy<Value = Vec<Entry>> {
    let payload = prop_oneof![
        vec(any::<u8>(), 0..64).prop_map(|d| EntryPayload::Normal(Bytes::from(d))),
        conf_change().prop_map(EntryPayload::ConfChange),
    ];
    (0u64..1 << 40, vec((any::<u64>(), payload), 0..6)).prop_map(|(first, items)| {
        let to_entry = |(i, (term, payload)): (usize, (u64, EntryPayload))| Entry {
            term: Term(term),
            index: LogIndex(first + i as u64),
            payload,
        };
        items.into_iter().enumerate().map(to_entry).collect()
    })
}

fn hard_state() -> impl Strategy<Value = HardState> {
    (any::<u64>(), proptest::option::of(node()), any::<u64>()).prop_map(|(t, vote, c)| HardState {
        term: Term(t),
        vote,
        commit: LogIndex(c),
    })
}

fn conf_state() -> impl Strategy<Value = ConfState> {
    let set = || btree_set(node(), 0..5);
    (set(), set(), set(), set(), any::<bool>()).prop_map(|(v, l, vo, ln, auto_leave)| ConfState {
        voters: v,
        learners: l,
        voters_outgoing: vo,
        learners_next: ln,
        auto_leave,
    })
}

fn meta() -> impl Strategy<Value = SnapshotMeta> {
    (any::<u64>(), any::<u64>(), conf_state()).prop_map(|(i, t, conf_state)| SnapshotMeta {
        index: LogIndex(i),
        term: Term(t),
        conf_state,
    })
}

fn record() -> impl Strategy<Value = Record> {
    let group = any::<u64>().prop_map(GroupId);
    prop_oneof![
        any::<u64>().prop_map(|seq| Record::SegmentHeader { seq }),
        any::<u64>().prop_map(|seq| Record::SegmentSeal { seq }),
        (group.clone(), entries()).prop_map(|(group, entries)| Record::Entries { group, entries }),
        (group.clone(), hard_state())
            .prop_map(|(group, hard_state)| Record::HardState { group, hard_state }),
        (group.clone(), conf_state())
            .prop_map(|(group, conf_state)| Record::ConfState { group, conf_state }),
        (group.clone(), meta()).prop_map(|(group, meta)| Record::Snapshot { group, meta }),
        (group.clone(), meta()).prop_map(|(group, meta)| Record::SnapshotMark { group, meta }),
        (group.clone(), any::<u64>(), any::<u64>()).prop_map(|(group, i, t)| Record::Compact {
            group,
            index: LogIndex(i),
            term: Term(t),
        }),
        (
            group.clone(),
            hard_state(),
            conf_state(),
            meta(),
            any::<u64>(),
            any::<u64>()
        )
            .prop_map(|(group, hard_state, conf_state, snapshot, i, t)| {
                Record::GroupState {
                    group,
                    hard_state,
                    conf_state,
                    snapshot,
                    compact_index: LogIndex(i),
                    compact_term: Term(t),
                }
            }),
        group.prop_map(|group| Record::RemoveGroup { group }),
    ]
}

const BODY_BYTES_MAX: u32 = 1 << 20;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn records_round_trip(record in record()) {
        let mut frame = Vec::new();
        let len = codec::encode_frame(&record, &mut frame);
        prop_assert_eq!(len, frame.len());
        let frame = Bytes::from(frame);
        let (body, next) = codec::read_frame(&frame, 0, BODY_BYTES_MAX).expect("valid frame");
        prop_assert_eq!(next, frame.len());
        prop_assert_eq!(codec::decode_record(&body).expect("valid body"), record);
    }

    #[test]
    fn random_bytes_never_panic(bytes in vec(any::<u8>(), 0..256)) {
        let bytes = Bytes::from(bytes);
        let _ = codec::decode_record(&bytes);
        for offset in 0..bytes.len() {
            let _ = codec::read_frame(&bytes, offset, BODY_BYTES_MAX);
        }
    }

    #[test]
    fn mutated_bodies_never_panic(record in record(), at in any::<usize>(), byte in any::<u8>()) {
        // Random bytes rarely get past the first field; a valid body with one byte changed, cut
        // short, or extended reaches every decoder.
        let mut body = Vec::new();
        codec::encode_record(&record, &mut body);
        let at = at % body.len();
        body[at] = byte;
        let _ = codec::decode_record(&Bytes::from(body.clone()));
        let _ = codec::decode_record(&Bytes::copy_from_slice(&body[..at]));
        body.push(byte);
        let _ = codec::decode_record(&Bytes::from(body));
    }

    #[test]
    fn a_changed_bit_fails_the_checksum(record in record(), at in any::<usize>(), bit in 0u8..8) {
        let mut frame = Vec::new();
        codec::encode_frame(&record, &mut frame);
        let at = at % frame.len();
        frame[at] ^= 1 << bit;
        prop_assert!(codec::read_frame(&Bytes::from(frame), 0, BODY_BYTES_MAX).is_err());
    }

    #[test]
    fn a_cut_frame_is_truncated(record in record(), cut in any::<usize>()) {
        let mut frame = Vec::new();
        codec::encode_frame(&record, &mut frame);
        let cut = cut % frame.len();
        let result = codec::read_frame(&Bytes::copy_from_slice(&frame[..cut]), 0, BODY_BYTES_MAX);
        let is_truncated = matches!(result, Err(FrameError::Truncated { .. }));
        prop_assert!(is_truncated);
    }
}

#[test]
fn impossible_lengths_are_rejected() {
    // A zero length and a length above the limit are errors before anything is read or allocated.
    let zero = Bytes::from(vec![0u8; 16]);
    assert_eq!(
        codec::read_frame(&zero, 0, 64),
        Err(FrameError::BadLength { body_len: 0 })
    );
    let mut huge = vec![0u8; FRAME_HEADER_BYTES];
    huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
    let huge = Bytes::from(huge);
    let expected = FrameError::BadLength {
        body_len: u64::from(u32::MAX),
    };
    assert_eq!(codec::read_frame(&huge, 0, 64), Err(expected));
}

#[test]
fn counts_larger_than_the_input_are_errors() {
    // An entries record claiming 2^40 entries in a few bytes must not allocate.
    let mut body = vec![3u8, 1]; // kind ENTRIES, group 1
    body.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x20]); // count 2^40 as a varint
    let err = codec::decode_record(&Bytes::from(body)).expect_err("too many entries");
    assert!(err.reason.contains("count"), "{err}");
}
