//! The binary encoding of WAL records, and the frame that wraps each record on disk.
//!
//! # Frame
//!
//! ```text
//! +----------------+----------------+------+------------------+
//! | body_len: u32  | crc32c: u32    | kind | payload          |
//! | little endian  | little endian  | u8   | body_len-1 bytes |
//! +----------------+----------------+------+------------------+
//! ```
//!
//! `body_len` counts the kind byte and the payload. The checksum is CRC32C (Castagnoli) over the
//! four `body_len` bytes followed by the body, so a flipped bit in the length is caught as well.
//!
//! # Payloads
//!
//! Integers are LEB128 varints unless said otherwise; byte strings are a varint length followed by
//! the bytes; sets are a varint count followed by strictly increasing ids. Every decoder returns a
//! [`CodecError`] on malformed input and never panics: the bytes come from a disk we do not trust.
//! A decoder consumes its whole payload; trailing bytes are an error.

use std::collections::BTreeSet;
use std::fmt;

use bytes::Bytes;
use chorus_raft::{
    ConfChange, ConfChangeSingle, ConfChangeTransition, ConfState, Entry, EntryPayload, GroupId,
    HardState, LogIndex, NodeId, SnapshotMeta, Term,
};

/// Bytes of the frame header: body length and checksum.
pub const FRAME_HEADER_BYTES: usize = 8;

/// The first bytes of every segment's header record: "CHORUSWL".
pub const SEGMENT_MAGIC: u64 = u64::from_le_bytes(*b"CHORUSWL");

/// The version of this format, written in every segment header.
pub const FORMAT_VERSION: u8 = 1;

/// One record of the write-ahead log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// The first record of every segment: names the segment so a misplaced file is detected.
    SegmentHeader { seq: u64 },
    /// The last record of every segment but the active one: proves the segment is complete.
    SegmentSeal { seq: u64 },
    /// Entries of one group, with contiguous indexes. They replace every entry of the group at or
    /// after the first of them (a conflicting suffix is truncated, §5.3 of the Raft paper).
    Entries { group: GroupId, entries: Vec<Entry> },
    /// The group's hard state.
    HardState {
        group: GroupId,
        hard_state: HardState,
    },
    /// The group's configuration, set by the application after it applies a membership change.
    ConfState {
        group: GroupId,
        conf_state: ConfState,
    },
    /// The group installed a snapshot from its leader: every entry is discarded, the log restarts
    /// after `meta.index`, and the configuration becomes `meta.conf_state`.
    Snapshot { group: GroupId, meta: SnapshotMeta },
    /// The application built a snapshot locally; entries are untouched (see `Compact`).
    SnapshotMark { group: GroupId, meta: SnapshotMeta },
    /// Entries up to and including `index` are discarded; `term` is the term of `index`.
    Compact {
        group: GroupId,
        index: LogIndex,
        term: Term,
    },
    /// The whole non-entry state of a group, rewritten into the active segment so that older
    /// segments can be deleted. Entries after `compact_index` are kept.
    GroupState {
        group: GroupId,
        hard_state: HardState,
        conf_state: ConfState,
        snapshot: SnapshotMeta,
        compact_index: LogIndex,
        compact_term: Term,
    },
    /// The group is removed from this node; all of its state is discarded.
    RemoveGroup { group: GroupId },
}

mod kind {
    pub const SEGMENT_HEADER: u8 = 1;
    pub const SEGMENT_SEAL: u8 = 2;
    pub const ENTRIES: u8 = 3;
    pub const HARD_STATE: u8 = 4;
    pub const CONF_STATE: u8 = 5;
    pub const SNAPSHOT: u8 = 6;
    pub const SNAPSHOT_MARK: u8 = 7;
    pub const COMPACT: u8 = 8;
    pub const GROUP_STATE: u8 = 9;
    pub const REMOVE_GROUP: u8 = 10;
}

impl Record {
    /// The group this record belongs to, if any.
    pub fn group(&self) -> Option<GroupId> {
        match self {
            Record::SegmentHeader { .. } | Record::SegmentSeal { .. } => None,
            Record::Entries { group, .. }
            | Record::HardState { group, .. }
            | Record::ConfState { group, .. }
            | Record::Snapshot { group, .. }
            | Record::SnapshotMark { group, .. }
            | Record::Compact { group, .. }
            | Record::GroupState { group, .. }
            | Record::RemoveGroup { group } => Some(*group),
        }
    }
}

/// Why bytes could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed record at byte {offset} of its body: {reason}")]
pub struct CodecError {
    /// The offset inside the decoded buffer where decoding failed.
    pub offset: usize,
    pub reason: &'static str,
}

/// Why a frame could not be read at some offset of a segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer bytes remain than the frame header, or than the length it announces.
    Truncated { needed: u64, available: u64 },
    /// The announced length is zero or larger than the configured maximum.
    BadLength { body_len: u64 },
    /// The checksum does not match the bytes.
    Checksum { stored: u32, computed: u32 },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Truncated { needed, available } => {
                write!(f, "record needs {needed} bytes but only {available} remain")
            }
            FrameError::BadLength { body_len } => write!(f, "impossible record length {body_len}"),
            FrameError::Checksum { stored, computed } => {
                write!(
                    f,
                    "checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
                )
            }
        }
    }
}

/// Appends the framed encoding of `record` to `out` and returns the frame's length.
pub fn encode_frame(record: &Record, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER_BYTES]);
    encode_record(record, out);
    let body_len = out.len() - start - FRAME_HEADER_BYTES;
    let body_len_u32 = u32::try_from(body_len).expect("a record body is under 4 GiB");
    let len_bytes = body_len_u32.to_le_bytes();
    let crc = crc32c::crc32c_append(
        crc32c::crc32c(&len_bytes),
        &out[start + FRAME_HEADER_BYTES..],
    );
    out[start..start + 4].copy_from_slice(&len_bytes);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    out.len() - start
}

/// Reads the frame at `offset` of `buf`: returns the checked body (kind byte and payload) and
/// the offset just past the frame. Does not decode the body.
pub fn read_frame(
    buf: &Bytes,
    offset: usize,
    body_bytes_max: u32,
) -> Result<(Bytes, usize), FrameError> {
    let available = buf.len().saturating_sub(offset) as u64;
    if available < FRAME_HEADER_BYTES as u64 {
        return Err(FrameError::Truncated {
            needed: FRAME_HEADER_BYTES as u64,
            available,
        });
    }
    let header = &buf[offset..offset + FRAME_HEADER_BYTES];
    let len_bytes: [u8; 4] = header[0..4].try_into().expect("four bytes");
    let body_len = u32::from_le_bytes(len_bytes);
    let stored = u32::from_le_bytes(header[4..8].try_into().expect("four bytes"));
    if body_len == 0 || body_len > body_bytes_max {
        return Err(FrameError::BadLength {
            body_len: u64::from(body_len),
        });
    }
    let needed = FRAME_HEADER_BYTES as u64 + u64::from(body_len);
    if available < needed {
        return Err(FrameError::Truncated { needed, available });
    }
    let body_start = offset + FRAME_HEADER_BYTES;
    let body_end = body_start + body_len as usize;
    let computed = crc32c::crc32c_append(crc32c::crc32c(&len_bytes), &buf[body_start..body_end]);
    if computed != stored {
        return Err(FrameError::Checksum { stored, computed });
    }
    Ok((buf.slice(body_start..body_end), body_end))
}

/// Appends the body of `record` (its kind byte and payload) to `out`.
pub fn encode_record(record: &Record, out: &mut Vec<u8>) {
    match record {
        Record::SegmentHeader { seq } => {
            out.push(kind::SEGMENT_HEADER);
            out.extend_from_slice(&SEGMENT_MAGIC.to_le_bytes());
            out.push(FORMAT_VERSION);
            put_varint(out, *seq);
        }
        Record::SegmentSeal { seq } => {
            out.push(kind::SEGMENT_SEAL);
            put_varint(out, *seq);
        }
        Record::Entries { group, entries } => {
            out.push(kind::ENTRIES);
            put_varint(out, group.0);
            encode_entries(entries, out);
        }
        Record::HardState { group, hard_state } => {
            out.push(kind::HARD_STATE);
            put_varint(out, group.0);
            encode_hard_state(hard_state, out);
        }
        Record::ConfState { group, conf_state } => {
            out.push(kind::CONF_STATE);
            put_varint(out, group.0);
            encode_conf_state(conf_state, out);
        }
        Record::Snapshot { group, meta } | Record::SnapshotMark { group, meta } => {
            let is_mark = matches!(record, Record::SnapshotMark { .. });
            out.push(if is_mark {
                kind::SNAPSHOT_MARK
            } else {
                kind::SNAPSHOT
            });
            put_varint(out, group.0);
            encode_snapshot_meta(meta, out);
        }
        Record::Compact { group, index, term } => {
            out.push(kind::COMPACT);
            put_varint(out, group.0);
            put_varint(out, index.0);
            put_varint(out, term.0);
        }
        Record::GroupState {
            group,
            hard_state,
            conf_state,
            snapshot,
            compact_index,
            compact_term,
        } => {
            out.push(kind::GROUP_STATE);
            put_varint(out, group.0);
            encode_hard_state(hard_state, out);
            encode_conf_state(conf_state, out);
            encode_snapshot_meta(snapshot, out);
            put_varint(out, compact_index.0);
            put_varint(out, compact_term.0);
        }
        Record::RemoveGroup { group } => {
            out.push(kind::REMOVE_GROUP);
            put_varint(out, group.0);
        }
    }
}

/// Decodes a record body (kind byte and payload).
pub fn decode_record(body: &[u8]) -> Result<Record, CodecError> {
    let mut r = Reader::new(body);
    let record = match r.u8()? {
        kind::SEGMENT_HEADER => {
            if r.u64_fixed()? != SEGMENT_MAGIC {
                return Err(r.error("segment header has the wrong magic"));
            }
            if r.u8()? != FORMAT_VERSION {
                return Err(r.error("unsupported format version"));
            }
            Record::SegmentHeader { seq: r.varint()? }
        }
        kind::SEGMENT_SEAL => Record::SegmentSeal { seq: r.varint()? },
        kind::ENTRIES => Record::Entries {
            group: r.group()?,
            entries: decode_entries(&mut r)?,
        },
        kind::HARD_STATE => Record::HardState {
            group: r.group()?,
            hard_state: decode_hard_state(&mut r)?,
        },
        kind::CONF_STATE => Record::ConfState {
            group: r.group()?,
            conf_state: decode_conf_state(&mut r)?,
        },
        kind::SNAPSHOT => Record::Snapshot {
            group: r.group()?,
            meta: decode_meta(&mut r)?,
        },
        kind::SNAPSHOT_MARK => Record::SnapshotMark {
            group: r.group()?,
            meta: decode_meta(&mut r)?,
        },
        kind::COMPACT => Record::Compact {
            group: r.group()?,
            index: LogIndex(r.varint()?),
            term: Term(r.varint()?),
        },
        kind::GROUP_STATE => Record::GroupState {
            group: r.group()?,
            hard_state: decode_hard_state(&mut r)?,
            conf_state: decode_conf_state(&mut r)?,
            snapshot: decode_meta(&mut r)?,
            compact_index: LogIndex(r.varint()?),
            compact_term: Term(r.varint()?),
        },
        kind::REMOVE_GROUP => Record::RemoveGroup { group: r.group()? },
        _ => return Err(r.error("unknown record kind")),
    };
    r.finish()?;
    Ok(record)
}

/// Encodes a run of entries. The indexes must be contiguous: only the first is stored.
///
/// # Panics
/// If the indexes are not contiguous; callers check this first.
pub fn encode_entries(entries: &[Entry], out: &mut Vec<u8>) {
    put_varint(out, entries.len() as u64);
    let Some(first) = entries.first() else { return };
    put_varint(out, first.index.0);
    for (i, entry) in entries.iter().enumerate() {
        assert_eq!(
            entry.index.0,
            first.index.0 + i as u64,
            "entries must be contiguous"
        );
        put_varint(out, entry.term.0);
        encode_payload(&entry.payload, out);
    }
}

/// Decodes a run of entries written by [`encode_entries`].
pub fn decode_entries(r: &mut Reader<'_>) -> Result<Vec<Entry>, CodecError> {
    // Each entry takes at least three bytes (term, payload kind, length), which bounds the count
    // by the bytes left before anything is allocated.
    let count = r.count(3)?;
    if count == 0 {
        return Ok(Vec::new());
    }
    let first = r.varint()?;
    if first.checked_add(count as u64).is_none() {
        return Err(r.error("entry index overflows"));
    }
    let mut entries = Vec::with_capacity(count);
    for i in 0..count as u64 {
        let term = Term(r.varint()?);
        let payload = decode_payload(r)?;
        entries.push(Entry {
            term,
            index: LogIndex(first + i),
            payload,
        });
    }
    Ok(entries)
}

fn encode_payload(payload: &EntryPayload, out: &mut Vec<u8>) {
    match payload {
        EntryPayload::Normal(data) => {
            out.push(0);
            put_bytes(out, data);
        }
        EntryPayload::ConfChange(cc) => {
            out.push(1);
            encode_conf_change(cc, out);
        }
    }
}

fn decode_payload(r: &mut Reader<'_>) -> Result<EntryPayload, CodecError> {
    match r.u8()? {
        0 => Ok(EntryPayload::Normal(r.bytes()?)),
        1 => Ok(EntryPayload::ConfChange(decode_conf_change(r)?)),
        _ => Err(r.error("unknown entry payload kind")),
    }
}

/// Encodes a membership change.
pub fn encode_conf_change(cc: &ConfChange, out: &mut Vec<u8>) {
    out.push(match cc.transition {
        ConfChangeTransition::Auto => 0,
        ConfChangeTransition::JointImplicit => 1,
        ConfChangeTransition::JointExplicit => 2,
    });
    put_varint(out, cc.changes.len() as u64);
    for change in &cc.changes {
        let (tag, node) = match change {
            ConfChangeSingle::AddVoter(n) => (0, n),
            ConfChangeSingle::AddLearner(n) => (1, n),
            ConfChangeSingle::RemoveNode(n) => (2, n),
        };
        out.push(tag);
        put_varint(out, node.0);
    }
    put_bytes(out, &cc.context);
}

/// Decodes a membership change.
pub fn decode_conf_change(r: &mut Reader<'_>) -> Result<ConfChange, CodecError> {
    let transition = match r.u8()? {
        0 => ConfChangeTransition::Auto,
        1 => ConfChangeTransition::JointImplicit,
        2 => ConfChangeTransition::JointExplicit,
        _ => return Err(r.error("unknown conf change transition")),
    };
    let count = r.count(2)?;
    let mut changes = Vec::with_capacity(count);
    for _ in 0..count {
        let tag = r.u8()?;
        let node = NodeId(r.varint()?);
        changes.push(match tag {
            0 => ConfChangeSingle::AddVoter(node),
            1 => ConfChangeSingle::AddLearner(node),
            2 => ConfChangeSingle::RemoveNode(node),
            _ => return Err(r.error("unknown conf change kind")),
        });
    }
    Ok(ConfChange {
        transition,
        changes,
        context: r.bytes()?,
    })
}

/// Encodes a hard state. The vote has a presence byte so that every value round-trips.
pub fn encode_hard_state(hs: &HardState, out: &mut Vec<u8>) {
    put_varint(out, hs.term.0);
    match hs.vote {
        None => out.push(0),
        Some(node) => {
            out.push(1);
            put_varint(out, node.0);
        }
    }
    put_varint(out, hs.commit.0);
}

/// Decodes a hard state.
pub fn decode_hard_state(r: &mut Reader<'_>) -> Result<HardState, CodecError> {
    let term = Term(r.varint()?);
    let vote = match r.u8()? {
        0 => None,
        1 => Some(NodeId(r.varint()?)),
        _ => return Err(r.error("bad vote presence byte")),
    };
    Ok(HardState {
        term,
        vote,
        commit: LogIndex(r.varint()?),
    })
}

/// Encodes a configuration.
pub fn encode_conf_state(cs: &ConfState, out: &mut Vec<u8>) {
    for set in [
        &cs.voters,
        &cs.learners,
        &cs.voters_outgoing,
        &cs.learners_next,
    ] {
        put_varint(out, set.len() as u64);
        for node in set {
            put_varint(out, node.0);
        }
    }
    out.push(u8::from(cs.auto_leave));
}

/// Decodes a configuration. Node sets must be strictly increasing.
pub fn decode_conf_state(r: &mut Reader<'_>) -> Result<ConfState, CodecError> {
    let voters = decode_node_set(r)?;
    let learners = decode_node_set(r)?;
    let voters_outgoing = decode_node_set(r)?;
    let learners_next = decode_node_set(r)?;
    let auto_leave = match r.u8()? {
        0 => false,
        1 => true,
        _ => return Err(r.error("bad auto_leave byte")),
    };
    Ok(ConfState {
        voters,
        learners,
        voters_outgoing,
        learners_next,
        auto_leave,
    })
}

fn decode_node_set(r: &mut Reader<'_>) -> Result<BTreeSet<NodeId>, CodecError> {
    let count = r.count(1)?;
    let mut set = BTreeSet::new();
    let mut previous: Option<u64> = None;
    for _ in 0..count {
        let id = r.varint()?;
        if previous.is_some_and(|p| p >= id) {
            return Err(r.error("node set is not strictly increasing"));
        }
        previous = Some(id);
        set.insert(NodeId(id));
    }
    Ok(set)
}

/// Encodes snapshot metadata.
pub fn encode_snapshot_meta(meta: &SnapshotMeta, out: &mut Vec<u8>) {
    put_varint(out, meta.index.0);
    put_varint(out, meta.term.0);
    encode_conf_state(&meta.conf_state, out);
}

/// Decodes snapshot metadata.
pub fn decode_meta(r: &mut Reader<'_>) -> Result<SnapshotMeta, CodecError> {
    let index = LogIndex(r.varint()?);
    let term = Term(r.varint()?);
    Ok(SnapshotMeta {
        index,
        term,
        conf_state: decode_conf_state(r)?,
    })
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_bytes(out: &mut Vec<u8>, data: &[u8]) {
    put_varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

/// A cursor over untrusted bytes. Every read checks bounds and returns an error when short.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn error(&self, reason: &'static str) -> CodecError {
        CodecError {
            offset: self.pos,
            reason,
        }
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Fails unless every byte was consumed.
    pub fn finish(&self) -> Result<(), CodecError> {
        if self.remaining() != 0 {
            return Err(self.error("trailing bytes after the record"));
        }
        Ok(())
    }

    fn u8(&mut self) -> Result<u8, CodecError> {
        let byte = *self
            .buf
            .get(self.pos)
            .ok_or_else(|| self.error("unexpected end"))?;
        self.pos += 1;
        Ok(byte)
    }

    fn u64_fixed(&mut self) -> Result<u64, CodecError> {
        if self.remaining() < 8 {
            return Err(self.error("unexpected end"));
        }
        let bytes: [u8; 8] = self.buf[self.pos..self.pos + 8]
            .try_into()
            .expect("eight bytes");
        self.pos += 8;
        Ok(u64::from_le_bytes(bytes))
    }

    fn varint(&mut self) -> Result<u64, CodecError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.u8()?;
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(self.error("varint overflows 64 bits"));
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(self.error("varint longer than ten bytes"))
    }

    fn group(&mut self) -> Result<GroupId, CodecError> {
        Ok(GroupId(self.varint()?))
    }

    /// A count of items that each take at least `item_bytes_min` bytes, checked against what is
    /// left so that a corrupt count cannot make us allocate without bound.
    fn count(&mut self, item_bytes_min: usize) -> Result<usize, CodecError> {
        let count = self.varint()?;
        let fits = usize::try_from(count)
            .ok()
            .and_then(|c| c.checked_mul(item_bytes_min))
            .is_some_and(|bytes| bytes <= self.remaining());
        if !fits {
            return Err(self.error("count larger than the bytes left"));
        }
        Ok(count as usize)
    }

    fn bytes(&mut self) -> Result<Bytes, CodecError> {
        let len = self.varint()?;
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= self.remaining())
            .ok_or_else(|| self.error("byte string longer than the bytes left"))?;
        // A copy, not a slice of a shared buffer: entries outlive the read (the log keeps them
        // until compaction), and a slice would keep the whole buffer it was read from in memory
        // with them.
        let data = Bytes::copy_from_slice(&self.buf[self.pos..self.pos + len]);
        self.pos += len;
        Ok(data)
    }
}
