//! Shared by the WAL tests: a workload language, a naive reference model of what the WAL should
//! hold, a runner on the faulty disk, and a deterministic PRNG.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use chorus_raft::{
    ConfState, Entry, EntryPayload, GroupId, HardState, LogIndex, NodeId, SnapshotMeta, Term,
};
use chorus_storage::disk::FaultyDisk;
use chorus_storage::wal::codec::Record;
use chorus_storage::wal::{PurgePlan, Wal, WalConfig, WalError};

/// One step of a workload.
#[derive(Clone, Debug)]
pub enum Op {
    Append(GroupId, Vec<Entry>),
    HardState(GroupId, HardState),
    ConfState(GroupId, ConfState),
    Compact(GroupId, LogIndex),
    InstallSnapshot(GroupId, SnapshotMeta),
    MarkSnapshot(GroupId, SnapshotMeta),
    Remove(GroupId),
    Sync,
    Purge,
    /// The first half of a purge, as a server runs it ([`Wal::prepare_purge`]); a later one
    /// replaces a plan not yet finished.
    PreparePurge,
    /// The second half, of the plan prepared last, if any ([`Wal::finish_purge`]).
    FinishPurge,
}

/// What one group should look like, kept as plainly as possible (a map of index to entry).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupImage {
    pub first_index: u64,
    pub compact_term: u64,
    pub entries: BTreeMap<u64, Entry>,
    pub hard_state: HardState,
    pub conf_state: ConfState,
    pub snapshot: SnapshotMeta,
}

impl Default for GroupImage {
    fn default() -> Self {
        GroupImage {
            first_index: 1,
            compact_term: 0,
            entries: BTreeMap::new(),
            hard_state: HardState::default(),
            conf_state: ConfState::default(),
            snapshot: SnapshotMeta::default(),
        }
    }
}

impl GroupImage {
    pub fn last_index(&self) -> u64 {
        self.entries
            .keys()
            .next_back()
            .copied()
            .unwrap_or(self.first_index - 1)
    }

    pub fn term(&self, index: u64) -> u64 {
        if index + 1 == self.first_index {
            return self.compact_term;
        }
        self.entries[&index].term.0
    }
}

/// The state of every group that differs from an untouched one.
pub type Image = BTreeMap<GroupId, GroupImage>;

/// Applies a state-changing op to the model. Syncs and purges change nothing.
pub fn model_apply(image: &mut Image, op: &Op) {
    match op {
        Op::Append(g, entries) => {
            let group = image.entry(*g).or_default();
            let first = entries[0].index.0;
            group.entries.retain(|&i, _| i < first);
            for e in entries.iter().filter(|e| e.index.0 >= group.first_index) {
                group.entries.insert(e.index.0, e.clone());
            }
        }
        Op::HardState(g, hs) => image.entry(*g).or_default().hard_state = *hs,
        Op::ConfState(g, cs) => image.entry(*g).or_default().conf_state = cs.clone(),
        Op::Compact(g, index) => {
            let group = image.entry(*g).or_default();
            if index.0 >= group.first_index {
                group.compact_term = group.term(index.0);
                group.entries.retain(|&i, _| i > index.0);
                group.first_index = index.0 + 1;
            }
        }
        Op::InstallSnapshot(g, meta) => {
            let group = image.entry(*g).or_default();
            group.entries.clear();
            group.first_index = meta.index.0 + 1;
            group.compact_term = meta.term.0;
            group.conf_state = meta.conf_state.clone();
            group.snapshot = meta.clone();
        }
        Op::MarkSnapshot(g, meta) => image.entry(*g).or_default().snapshot = meta.clone(),
        Op::Remove(g) => {
            image.remove(g);
        }
        Op::Sync | Op::Purge | Op::PreparePurge | Op::FinishPurge => {}
    }
    image.retain(|_, g| *g != GroupImage::default());
}

/// The record the WAL is given for a state-changing op.
pub fn record_of(image: &Image, op: &Op) -> Option<Record> {
    Some(match op {
        Op::Append(group, entries) => Record::Entries {
            group: *group,
            entries: entries.clone(),
        },
        Op::HardState(group, hs) => Record::HardState {
            group: *group,
            hard_state: *hs,
        },
        Op::ConfState(group, cs) => Record::ConfState {
            group: *group,
            conf_state: cs.clone(),
        },
        Op::Compact(group, index) => {
            let term = image.get(group).map_or(0, |g| g.term(index.0));
            Record::Compact {
                group: *group,
                index: *index,
                term: Term(term),
            }
        }
        Op::InstallSnapshot(group, meta) => Record::Snapshot {
            group: *group,
            meta: meta.clone(),
        },
        Op::MarkSnapshot(group, meta) => Record::SnapshotMark {
            group: *group,
            meta: meta.clone(),
        },
        Op::Remove(group) => Record::RemoveGroup { group: *group },
        Op::Sync | Op::Purge | Op::PreparePurge | Op::FinishPurge => return None,
    })
}

/// What the WAL holds, in the model's shape.
pub fn wal_image(wal: &Wal) -> Image {
    let mut image = Image::new();
    for id in wal.group_ids() {
        let log = wal.group(id).expect("not poisoned").expect("listed");
        let first = log.first_index();
        let last = log.last_index();
        let entries = log
            .entries(first, last.next(), u64::MAX)
            .expect("kept entries");
        let group = GroupImage {
            first_index: first.0,
            compact_term: log
                .term(first.prev())
                .expect("term of the compacted index")
                .0,
            entries: entries.into_iter().map(|e| (e.index.0, e)).collect(),
            hard_state: log.hard_state(),
            conf_state: log.conf_state().clone(),
            snapshot: log.snapshot_meta().clone(),
        };
        if group != GroupImage::default() {
            image.insert(id, group);
        }
    }
    image
}

/// The result of running a workload until it ends or the disk "crashes".
pub struct Outcome {
    /// `images[i]` is the model after the first `i` state-changing ops.
    pub images: Vec<Image>,
    /// How many state-changing ops a successful sync acknowledged.
    pub acked: usize,
    /// How many state-changing ops were handed to the WAL (the last may have failed).
    pub attempted: usize,
    pub error: Option<WalError>,
    /// The purge prepared and not yet finished.
    pub purge: Option<PurgePlan>,
}

impl Outcome {
    /// Nothing run yet.
    pub fn new() -> Outcome {
        Outcome {
            images: vec![Image::new()],
            acked: 0,
            attempted: 0,
            error: None,
            purge: None,
        }
    }
}

/// Hands one op to the WAL. A state-changing op first records the model image it leads to, so
/// `outcome.images` always holds the state the WAL may have reached.
pub fn perform(wal: &mut Wal, outcome: &mut Outcome, op: &Op) -> Result<(), WalError> {
    let model = outcome.images.last().expect("never empty").clone();
    match op {
        Op::Sync => wal.sync().map(|_| ()),
        Op::Purge => wal.purge().map(|_| ()),
        Op::PreparePurge => {
            if let Some(plan) = wal.prepare_purge()? {
                outcome.purge = Some(plan);
            }
            Ok(())
        }
        Op::FinishPurge => match outcome.purge.take() {
            Some(plan) => wal.finish_purge(plan).map(|_| ()),
            None => Ok(()),
        },
        _ => {
            let record = record_of(&model, op).expect("a state op");
            let mut next = model;
            model_apply(&mut next, op);
            outcome.images.push(next);
            outcome.attempted += 1;
            wal.append(&record).map(|_| ())
        }
    }
}

/// Runs `ops` on a WAL over `disk`, stopping at the first error.
pub fn run(disk: &FaultyDisk, config: &WalConfig, ops: &[Op]) -> Outcome {
    let mut outcome = Outcome::new();
    let mut wal = match Wal::open(Arc::new(disk.clone()), config.clone()) {
        Ok(wal) => wal,
        Err(err) => {
            outcome.error = Some(err);
            return outcome;
        }
    };
    for op in ops {
        match perform(&mut wal, &mut outcome, op) {
            // A purge syncs only when it deletes something, so only `Sync` acknowledges.
            Ok(()) if matches!(op, Op::Sync) => outcome.acked = outcome.attempted,
            Ok(()) => {}
            Err(err) => {
                outcome.error = Some(err);
                return outcome;
            }
        }
    }
    outcome
}

/// Asserts that `image` is the model after some number of ops in `acked..=attempted`: nothing
/// acknowledged is missing, and nothing that was never written (or was written corrupt) appears.
pub fn assert_prefix(outcome: &Outcome, image: &Image, context: &str) -> usize {
    let found = (outcome.acked..=outcome.attempted).find(|&m| outcome.images[m] == *image);
    match found {
        Some(m) => m,
        None => panic!(
            "{context}: recovered state matches no prefix in {}..={}\nrecovered: {image:#?}\nacked: {:#?}",
            outcome.acked, outcome.attempted, outcome.images[outcome.acked]
        ),
    }
}

/// Small limits, so that short workloads rotate segments often. Segments are preallocated, as a
/// server's are.
pub fn small_config() -> WalConfig {
    WalConfig {
        dir: PathBuf::from("/wal"),
        segment_bytes_max: 220,
        record_bytes_max: 128,
        pending_bytes_max: 64,
        preallocate: true,
    }
}

/// [`small_config`] with segments that grow as records are appended.
pub fn appending_config() -> WalConfig {
    WalConfig {
        preallocate: false,
        ..small_config()
    }
}

pub fn entry(index: u64, term: u64, payload: &str) -> Entry {
    Entry {
        term: Term(term),
        index: LogIndex(index),
        payload: EntryPayload::Normal(Bytes::copy_from_slice(payload.as_bytes())),
    }
}

pub fn entries(first: u64, count: u64, term: u64, tag: &str) -> Vec<Entry> {
    (first..first + count)
        .map(|i| entry(i, term, &format!("{tag}-{i}")))
        .collect()
}

pub fn hard_state(term: u64, vote: u64, commit: u64) -> HardState {
    HardState {
        term: Term(term),
        vote: Some(NodeId(vote)),
        commit: LogIndex(commit),
    }
}

pub fn voters(ids: &[u64]) -> ConfState {
    ConfState::with_voters(ids.iter().map(|&i| NodeId(i)))
}

/// SplitMix64: a small deterministic generator for seeded tests.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// A random valid workload of `len` ops over `groups` groups.
pub fn random_workload(rng: &mut Rng, len: usize, groups: u64) -> Vec<Op> {
    let mut image = Image::new();
    let mut ops = Vec::with_capacity(len);
    let mut term = 1;
    while ops.len() < len {
        let g = GroupId(1 + rng.below(groups));
        let group = image.get(&g).cloned().unwrap_or_default();
        let last = group.last_index();
        let op = match rng.below(100) {
            0..=34 => {
                let first = group.first_index + rng.below(last + 2 - group.first_index);
                if rng.chance(10) {
                    term += 1;
                }
                let tag = format!("s{}", rng.below(1000));
                Op::Append(g, entries(first, 1 + rng.below(4), term, &tag))
            }
            35..=49 => Op::HardState(g, hard_state(term, 1 + rng.below(3), rng.below(last + 1))),
            50..=54 => Op::ConfState(g, voters(&[1, 2, 1 + rng.below(5)])),
            55..=64 if last >= group.first_index => Op::Compact(
                g,
                LogIndex(group.first_index + rng.below(last + 1 - group.first_index)),
            ),
            65..=67 => {
                let index = LogIndex(group.first_index + rng.below(8));
                Op::InstallSnapshot(
                    g,
                    SnapshotMeta {
                        index,
                        term: Term(term),
                        conf_state: voters(&[1, 2, 3]),
                    },
                )
            }
            68..=70 if last >= group.snapshot.index.0 => {
                let index =
                    LogIndex(group.snapshot.index.0 + rng.below(last + 1 - group.snapshot.index.0));
                Op::MarkSnapshot(
                    g,
                    SnapshotMeta {
                        index,
                        term: Term(term),
                        conf_state: group.conf_state.clone(),
                    },
                )
            }
            71 => Op::Remove(g),
            72..=89 => Op::Sync,
            90..=94 => Op::Purge,
            95..=97 => Op::PreparePurge,
            98..=99 => Op::FinishPurge,
            _ => continue,
        };
        model_apply(&mut image, &op);
        ops.push(op);
    }
    ops.push(Op::Sync);
    ops
}
