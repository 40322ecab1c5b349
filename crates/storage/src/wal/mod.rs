//! The segmented write-ahead log shared by all Raft groups of a node.
//!
//! One log per node holds the entries, hard states, configurations and snapshot marks of every
//! group, so that a batch of Readies from many groups becomes durable with one fsync (group
//! commit). [`RaftLogStore`] is one group's view of it and implements
//! [`chorus_raft::LogStorage`]. The snapshot data itself lives elsewhere; the WAL records only
//! snapshot metadata.
//!
//! # Files
//!
//! The log is a directory of segments named `<seq as 16 hex digits>.wal`, numbered without gaps.
//! Each segment starts with a `SegmentHeader` record naming its number. When a segment would grow
//! past `segment_bytes_max`, it is closed with a `SegmentSeal` record and fsynced before the next
//! one is created, so every segment but the last is complete and durable. The record format is
//! described in [`codec`].
//!
//! With `WalConfig::preallocate` a segment is zero-filled to `segment_bytes_max` before its first
//! record, and records are written over the zeros (see [`prepare`] for why): the end of a
//! segment's records is then the first frame that does not read, with nothing but zeros after
//! it. Zeros after the seal are the unused rest of a preallocated segment.
//!
//! # Recovery
//!
//! [`Wal::open`] replays every segment in order into a per-group memtable ([`GroupLog`]):
//! - where a frame does not read and only zeros follow, the segment's records end (the unused
//!   rest of a preallocated segment, or a write whose data never reached the disk);
//! - a record that cannot be read at the end of the last segment, after which no valid record
//!   can be found, is a write torn by a crash: it was never acknowledged, and it is cut off;
//! - any other unreadable record (in a sealed segment, or followed by a valid record), a missing
//!   segment, or a record that contradicts the log is [`WalError::Corrupt`], naming the file and
//!   offset. The node must not start: silently truncating there would lose acknowledged writes.
//!
//! A limit of this scheme: a bit flipped in the very last record of the log looks exactly like a
//! torn write and that record is dropped. Acknowledged writes are lost that way only to media
//! corruption, which Raft repairs from the other replicas.
//!
//! # Failures
//!
//! A failed fsync or write poisons the WAL: every later call returns [`WalError::Poisoned`]. An
//! fsync is never retried, because after a failed fsync the kernel may have dropped the data.
//!
//! # Recycling
//!
//! [`Wal::purge`] deletes the oldest segments once no group keeps entries in them (they were
//! compacted after a snapshot). Groups whose hard state or configuration was last written in those
//! segments get a `GroupState` record in the active segment first. In a server
//! ([`Wal::purge_in_background`]) the log forgets the segments under its lock and a thread of
//! their own deletes the files, oldest first (see [`purge`]).

pub mod codec;
mod log_store;
mod memtable;
mod prepare;
mod purge;
mod sync_thread;

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use chorus_raft::{Entry, GroupId, LogIndex};

use crate::disk::Disk;
use codec::{FRAME_HEADER_BYTES, Record};
pub use log_store::{RaftLogStore, SnapshotSource};
pub use memtable::GroupLog;
use memtable::Mode;
pub use sync_thread::{SyncThread, Synced};

/// A WAL shared by the groups of one node.
pub type SharedWal = Arc<Mutex<Wal>>;

/// Makes every record appended to `wal` so far durable, as [`Wal::sync`] does, without holding
/// its lock during the fsync: other threads go on appending meanwhile, and their records are
/// made durable by a later sync.
pub fn sync_shared(wal: &Mutex<Wal>) -> Result<WalPosition, WalError> {
    let lock = || wal.lock().unwrap_or_else(|e| e.into_inner());
    let (disk, path, target) = {
        let mut wal = lock();
        match wal.begin_sync()? {
            Some((path, target)) => (wal.disk.clone(), path, target),
            None => return Ok(wal.synced),
        }
    };
    let (result, took) = timed_sync(&*disk, &path);
    lock().finish_sync(path, target, result, took)
}

/// Fsyncs `path`, and how long it took.
fn timed_sync(disk: &dyn Disk, path: &Path) -> (io::Result<()>, std::time::Duration) {
    let started = std::time::Instant::now();
    let result = disk.sync(path);
    (result, started.elapsed())
}

/// The largest frame of a `SegmentSeal` record (header, kind, ten-byte varint), rounded up.
const SEAL_FRAME_BYTES_MAX: u64 = 32;
/// The largest frame of a `SegmentHeader` record, rounded up.
const HEADER_FRAME_BYTES_MAX: u64 = 32;

/// Limits of the write-ahead log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalConfig {
    /// The directory of the segment files.
    pub dir: PathBuf,
    /// A segment is closed before it would grow past this many bytes.
    pub segment_bytes_max: u64,
    /// The largest record body; larger entry batches are split, a larger single entry is refused.
    pub record_bytes_max: u32,
    /// Appended bytes kept in memory before they are written to the segment (without fsync).
    pub pending_bytes_max: usize,
    /// Whether each segment is zero-filled to `segment_bytes_max` before its first record, so
    /// that an fsync writes the records alone and not the file's new size as well.
    pub preallocate: bool,
}

impl WalConfig {
    /// Defaults for a node: 64 MiB segments, preallocated, 8 MiB records, 1 MiB write buffer.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        WalConfig {
            dir: dir.into(),
            segment_bytes_max: 64 << 20,
            record_bytes_max: 8 << 20,
            pending_bytes_max: 1 << 20,
            preallocate: true,
        }
    }

    /// Rejects limits that cannot work together, naming the values.
    pub fn validate(&self) -> Result<(), WalError> {
        let fail = |reason: String| Err(WalError::Config(reason));
        if self.record_bytes_max < 64 {
            return fail(format!(
                "record_bytes_max = {} is below 64",
                self.record_bytes_max
            ));
        }
        if self.record_bytes_max > 1 << 30 {
            return fail(format!(
                "record_bytes_max = {} is above 1 GiB",
                self.record_bytes_max
            ));
        }
        let needed = u64::from(self.record_bytes_max)
            + FRAME_HEADER_BYTES as u64
            + SEAL_FRAME_BYTES_MAX
            + HEADER_FRAME_BYTES_MAX;
        if self.segment_bytes_max < needed {
            return fail(format!(
                "segment_bytes_max = {} cannot hold a record of record_bytes_max = {} (needs {})",
                self.segment_bytes_max, self.record_bytes_max, needed
            ));
        }
        if self.pending_bytes_max == 0 {
            return fail("pending_bytes_max = 0 must be positive".to_string());
        }
        Ok(())
    }
}

/// Errors of the write-ahead log.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// The configuration is invalid.
    #[error("invalid WAL config: {0}")]
    Config(String),
    /// The log is damaged somewhere other than a torn tail. The node must not start.
    #[error("WAL corrupt in {} at offset {offset}: {reason}", .file.display())]
    Corrupt {
        file: PathBuf,
        offset: u64,
        reason: String,
    },
    /// An fsync failed. Fatal: the WAL is poisoned and the node must stop.
    #[error("fsync of {} failed; the WAL is stopped: {source}", .file.display())]
    SyncFailed { file: PathBuf, source: io::Error },
    /// Another disk operation failed.
    #[error("{op} of {} failed: {source}", .file.display())]
    Io {
        op: &'static str,
        file: PathBuf,
        source: io::Error,
    },
    /// An earlier write or fsync failed; nothing more can be done with this WAL.
    #[error("the WAL stopped after an earlier failure: {reason}")]
    Poisoned { reason: String },
    /// A record (for entries: a single entry) is larger than `record_bytes_max`.
    #[error("a record of {bytes} bytes is larger than record_bytes_max = {max}")]
    RecordTooLarge { bytes: u64, max: u32 },
    /// The record contradicts the group's log (for example entries that leave a gap).
    #[error("rejected a record of group {group}: {reason}")]
    Rejected { group: GroupId, reason: String },
}

/// A purge prepared by [`Wal::prepare_purge`]: the segments below `below` go once the log is
/// durable up to `durable_at` (the compactions and restated state that free them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "the segments go only with `Wal::finish_purge`"]
pub struct PurgePlan {
    below: u64,
    durable_at: WalPosition,
}

/// A position in the log: a segment and a byte offset in it. Positions only grow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WalPosition {
    pub segment: u64,
    pub offset: u64,
}

/// The write-ahead log of one node. See the module documentation.
#[derive(Debug)]
pub struct Wal {
    disk: Arc<dyn Disk>,
    config: WalConfig,
    /// Live segments; the last is the active one.
    segments: BTreeSet<u64>,
    active: u64,
    /// Bytes of the active segment handed to the disk (maybe not synced).
    active_written: u64,
    /// Encoded records not yet handed to the disk.
    pending: Vec<u8>,
    synced: WalPosition,
    groups: BTreeMap<GroupId, GroupLog>,
    poisoned: Option<String>,
    /// The thread preparing the next segment, once started.
    preparer: Option<prepare::Preparer>,
    /// The thread deleting purged segments, once started.
    purger: Option<purge::Purger>,
}

/// The file name of segment `seq`.
pub fn segment_file_name(seq: u64) -> String {
    format!("{seq:016x}.wal")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".wal")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

fn io_error<'a>(op: &'static str, file: &'a Path) -> impl FnOnce(io::Error) -> WalError + 'a {
    move |source| WalError::Io {
        op,
        file: file.to_path_buf(),
        source,
    }
}

impl Wal {
    /// Opens the log in `config.dir` (creating it if empty) and replays it.
    pub fn open(disk: Arc<dyn Disk>, config: WalConfig) -> Result<Wal, WalError> {
        config.validate()?;
        disk.create_dir_all(&config.dir)
            .map_err(io_error("create", &config.dir))?;
        let names = disk
            .list(&config.dir)
            .map_err(io_error("list", &config.dir))?;
        let mut seqs: Vec<u64> = names.iter().filter_map(|n| parse_segment_name(n)).collect();
        seqs.sort_unstable();
        let mut wal = Wal {
            disk,
            config,
            segments: BTreeSet::new(),
            active: 0,
            active_written: 0,
            pending: Vec::new(),
            synced: WalPosition::default(),
            groups: BTreeMap::new(),
            poisoned: None,
            preparer: None,
            purger: None,
        };
        wal.remove_leftover_temp_files(&names)?;
        if seqs.is_empty() {
            // A fresh log: make the directory's own name durable before anything is acknowledged.
            if let Some(parent) = wal
                .config
                .dir
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                && let Err(source) = wal.disk.sync_dir(parent)
            {
                return Err(WalError::SyncFailed {
                    file: parent.to_path_buf(),
                    source,
                });
            }
            wal.start_segment(1)?;
            wal.sync()?;
        } else {
            wal.recover(&seqs)?;
        }
        tracing::info!(
            dir = %wal.config.dir.display(),
            segments = wal.segments.len(),
            groups = wal.groups.len(),
            "write-ahead log opened"
        );
        Ok(wal)
    }

    /// The path of segment `seq`.
    pub fn segment_path(&self, seq: u64) -> PathBuf {
        self.config.dir.join(segment_file_name(seq))
    }

    /// Paths of the live segments, oldest first.
    pub fn segment_paths(&self) -> Vec<PathBuf> {
        self.segments
            .iter()
            .map(|&s| self.segment_path(s))
            .collect()
    }

    /// The configuration.
    pub fn config(&self) -> &WalConfig {
        &self.config
    }

    /// Whether an earlier failure stopped this WAL.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.is_some()
    }

    fn check_poisoned(&self) -> Result<(), WalError> {
        match &self.poisoned {
            Some(reason) => Err(WalError::Poisoned {
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Records `err` as the reason this WAL stops, and returns it.
    fn poison(&mut self, err: WalError) -> WalError {
        tracing::error!(error = %err, "write-ahead log stopped");
        self.poisoned = Some(err.to_string());
        err
    }

    /// The group's log, if the WAL holds anything of it.
    pub fn group(&self, group: GroupId) -> Result<Option<&GroupLog>, WalError> {
        self.check_poisoned()?;
        Ok(self.groups.get(&group))
    }

    /// The groups the WAL holds state for.
    pub fn group_ids(&self) -> Vec<GroupId> {
        self.groups.keys().copied().collect()
    }

    /// The position after the last appended record (durable or not).
    pub fn appended_position(&self) -> WalPosition {
        WalPosition {
            segment: self.active,
            offset: self.active_written + self.pending.len() as u64,
        }
    }

    /// The position up to which every record is durable.
    pub fn synced_position(&self) -> WalPosition {
        self.synced
    }

    /// Appends the records in order; they are visible at once and durable after [`Wal::sync`].
    /// On an error, the records before the failing one stay appended.
    pub fn append_batch(&mut self, records: &[Record]) -> Result<WalPosition, WalError> {
        for record in records {
            self.append(record)?;
        }
        Ok(self.appended_position())
    }

    /// Appends one record; it is visible at once and durable after [`Wal::sync`]. An `Entries`
    /// record too large for `record_bytes_max` is split into several.
    pub fn append(&mut self, record: &Record) -> Result<WalPosition, WalError> {
        self.check_poisoned()?;
        let Some(group) = record.group() else {
            let reason = "segment records are written by the WAL itself".to_string();
            return Err(WalError::Rejected {
                group: GroupId(0),
                reason,
            });
        };
        if let Record::RemoveGroup { .. } = record {
            self.write_record(record)?;
            self.groups.remove(&group);
            return Ok(self.appended_position());
        }
        if let Record::Entries { entries, .. } = record {
            let first_index = self
                .groups
                .get(&group)
                .map_or(LogIndex(1), GroupLog::first_index);
            if entries.first().is_some_and(|e| e.index < first_index) {
                // Entries already compacted are dropped before they are written, so a record
                // never holds entries below the compaction point of its time.
                let kept: Vec<Entry> = entries
                    .iter()
                    .filter(|e| e.index >= first_index)
                    .cloned()
                    .collect();
                return self.append(&Record::Entries {
                    group,
                    entries: kept,
                });
            }
            if entries.is_empty() {
                return Ok(self.appended_position());
            }
        }
        let empty = GroupLog::default();
        let log = self.groups.get(&group).unwrap_or(&empty);
        log.check(record, Mode::Live)
            .map_err(|reason| WalError::Rejected { group, reason })?;
        match self.write_record(record) {
            Err(WalError::RecordTooLarge { .. }) if splittable(record) => {
                let Record::Entries { entries, .. } = record else {
                    unreachable!()
                };
                let (a, b) = entries.split_at(entries.len() / 2);
                self.append(&Record::Entries {
                    group,
                    entries: a.to_vec(),
                })?;
                return self.append(&Record::Entries {
                    group,
                    entries: b.to_vec(),
                });
            }
            result => result?,
        };
        let segment = self.active;
        self.groups.entry(group).or_default().apply(record, segment);
        Ok(self.appended_position())
    }

    /// Encodes `record` into the pending buffer, rotating the segment first if it would not fit.
    ///
    /// The frame is encoded in place at the end of the buffer, whose capacity outlives each
    /// write: a batch of entries is neither allocated apart nor copied once more. Only a frame
    /// that starts a new segment (once per segment) is taken out while the old one is sealed.
    fn write_record(&mut self, record: &Record) -> Result<(), WalError> {
        let start = self.pending.len();
        let frame_len = codec::encode_frame(record, &mut self.pending);
        let body_bytes = (frame_len - FRAME_HEADER_BYTES) as u64;
        if body_bytes > u64::from(self.config.record_bytes_max) {
            self.pending.truncate(start);
            // A refused record leaves no oversized buffer behind.
            self.pending
                .shrink_to(self.config.pending_bytes_max + self.config.record_bytes_max as usize);
            return Err(WalError::RecordTooLarge {
                bytes: body_bytes,
                max: self.config.record_bytes_max,
            });
        }
        // The appended position counts the frame, which is now in the buffer.
        let end = self.appended_position().offset + SEAL_FRAME_BYTES_MAX;
        if end > self.config.segment_bytes_max {
            let frame = self.pending.split_off(start);
            self.rotate()?;
            self.pending.extend_from_slice(&frame);
        }
        if self.pending.len() >= self.config.pending_bytes_max {
            self.write_pending()?;
        }
        Ok(())
    }

    /// Hands the pending bytes to the disk, without fsync.
    fn write_pending(&mut self) -> Result<(), WalError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let path = self.segment_path(self.active);
        if let Err(source) = self
            .disk
            .write_at(&path, self.active_written, &self.pending)
        {
            return Err(self.poison(WalError::Io {
                op: "write to",
                file: path,
                source,
            }));
        }
        self.active_written += self.pending.len() as u64;
        self.pending.clear();
        Ok(())
    }

    /// Makes every appended record durable with one fsync, and returns the synced position.
    pub fn sync(&mut self) -> Result<WalPosition, WalError> {
        let Some((path, target)) = self.begin_sync()? else {
            return Ok(self.synced);
        };
        let (result, took) = timed_sync(&*self.disk, &path);
        self.finish_sync(path, target, result, took)
    }

    /// The first half of a sync: hands the buffered records to the disk and returns the file to
    /// fsync and the position that fsync makes durable, or `None` if everything is.
    fn begin_sync(&mut self) -> Result<Option<(PathBuf, WalPosition)>, WalError> {
        self.check_poisoned()?;
        let target = self.appended_position();
        if target <= self.synced {
            return Ok(None);
        }
        self.write_pending()?;
        Ok(Some((self.segment_path(self.active), target)))
    }

    /// The second half of a sync: records the outcome of the fsync of `path` that made the log
    /// durable up to `target`. Another sync may have finished meanwhile (a rotation syncs the
    /// segment it seals), so the synced position only grows.
    fn finish_sync(
        &mut self,
        path: PathBuf,
        target: WalPosition,
        result: io::Result<()>,
        took: std::time::Duration,
    ) -> Result<WalPosition, WalError> {
        if let Err(source) = result {
            return Err(self.poison(WalError::SyncFailed { file: path, source }));
        }
        self.check_poisoned()?;
        crate::metrics::WAL_FSYNC_SECONDS.observe(took.as_secs_f64());
        if took > crate::metrics::SLOW_FSYNC {
            tracing::warn!(
                ?took,
                expected = ?crate::metrics::SLOW_FSYNC,
                file = %path.display(),
                "slow fdatasync of the write-ahead log"
            );
        }
        self.synced = self.synced.max(target);
        Ok(self.synced)
    }

    /// Seals the active segment, makes it durable, and starts the next one.
    fn rotate(&mut self) -> Result<(), WalError> {
        let mut seal = Vec::new();
        codec::encode_frame(&Record::SegmentSeal { seq: self.active }, &mut seal);
        self.pending.extend_from_slice(&seal);
        self.sync()?;
        let next = self.active + 1;
        self.start_segment(next)
    }

    /// Creates segment `seq` (preallocated if the configuration says so), makes its name
    /// durable, and queues its header.
    fn start_segment(&mut self, seq: u64) -> Result<(), WalError> {
        debug_assert!(self.pending.is_empty());
        let path = self.segment_path(seq);
        let prepared = self.preparer.as_mut().and_then(|p| p.take(seq));
        let made = match prepared {
            Some(temp) => self
                .disk
                .rename(&temp, &path)
                .map_err(io_error("rename", &temp)),
            None => self.create_segment_file(&path),
        };
        if let Err(err) = made {
            return Err(self.poison(err));
        }
        if let Err(source) = self.disk.sync_dir(&self.config.dir) {
            let file = self.config.dir.clone();
            return Err(self.poison(WalError::SyncFailed { file, source }));
        }
        self.segments.insert(seq);
        self.active = seq;
        self.active_written = 0;
        codec::encode_frame(&Record::SegmentHeader { seq }, &mut self.pending);
        if let Some(preparer) = &mut self.preparer {
            preparer.request(seq + 1);
        }
        Ok(())
    }

    /// Creates the file of a segment here and now, zero-filled if the configuration says so.
    /// A crash part-way leaves a segment of zeros, which recovery takes for an empty one.
    fn create_segment_file(&self, path: &Path) -> Result<(), WalError> {
        self.disk.create(path).map_err(io_error("create", path))?;
        if self.config.preallocate {
            prepare::zero_fill(self.disk.as_ref(), path, self.config.segment_bytes_max)
                .map_err(io_error("preallocate", path))?;
        }
        Ok(())
    }

    /// Starts a thread that zero-fills the next segment while the current one fills, so that
    /// starting a segment costs a rename instead of writing `segment_bytes_max` bytes. Does
    /// nothing unless the configuration preallocates segments.
    pub fn prepare_segments_in_background(&mut self) -> io::Result<()> {
        if !self.config.preallocate || self.preparer.is_some() {
            return Ok(());
        }
        let mut preparer = prepare::Preparer::spawn(
            self.disk.clone(),
            self.config.dir.clone(),
            self.config.segment_bytes_max,
        )?;
        preparer.request(self.active + 1);
        self.preparer = Some(preparer);
        Ok(())
    }

    /// Deletes segments prepared ahead of time and never started (see [`prepare`]).
    fn remove_leftover_temp_files(&self, names: &[String]) -> Result<(), WalError> {
        for name in names.iter().filter(|n| n.ends_with(prepare::TEMP_SUFFIX)) {
            let path = self.config.dir.join(name);
            self.disk.remove(&path).map_err(io_error("remove", &path))?;
        }
        Ok(())
    }

    /// Starts a thread that deletes the segments [`Wal::purge`] frees, so that a purge costs
    /// the log no more than restating some groups' state (see [`purge`]).
    pub fn purge_in_background(&mut self) -> io::Result<()> {
        if self.purger.is_none() {
            self.purger = Some(purge::Purger::spawn(
                self.disk.clone(),
                self.config.dir.clone(),
            )?);
        }
        Ok(())
    }

    /// Deletes the oldest segments that no group needs any more, and returns how many. Groups
    /// whose non-entry state was last written in those segments get it restated first. With
    /// [`Wal::purge_in_background`] the files are deleted by that thread, after this returns.
    ///
    /// Syncs the log if what frees the segments (compactions, restated state) is not durable
    /// yet. A caller that must not wait for the disk uses [`Wal::prepare_purge`], waits for an
    /// fsync by anyone to cover the plan, and then calls [`Wal::finish_purge`].
    pub fn purge(&mut self) -> Result<usize, WalError> {
        match self.prepare_purge()? {
            Some(plan) => self.finish_purge(plan),
            None => Ok(0),
        }
    }

    /// The first half of a purge, which never waits for the disk: finds the oldest segments that
    /// no group needs any more and restates (appends, without syncing) the state of the groups
    /// last written in them. Returns `None` if there are none. The segments stay until
    /// [`Wal::finish_purge`]; a restart before then replays them as well, and finds in them
    /// only entries compacted and state restated since.
    ///
    /// Once prepared, the segments stay unneeded whatever is appended meanwhile: new records go
    /// to the active segment, and a group's first entry only moves forward.
    pub fn prepare_purge(&mut self) -> Result<Option<PurgePlan>, WalError> {
        self.check_poisoned()?;
        let pinned = self
            .groups
            .values()
            .filter_map(GroupLog::first_entry_segment)
            .min();
        let below = pinned.unwrap_or(self.active).min(self.active);
        if self.segments.range(..below).next().is_none() {
            return Ok(None);
        }
        let restate: Vec<Record> = self
            .groups
            .iter()
            .filter(|(_, log)| log.state_segment().is_some_and(|s| s < below))
            .map(|(&group, log)| log.state_record(group))
            .collect();
        self.append_batch(&restate)?;
        Ok(Some(PurgePlan {
            below,
            durable_at: self.appended_position(),
        }))
    }

    /// The second half of a purge: once the log is durable up to the plan's position (it syncs
    /// first if not), deletes the segments the plan found, or with
    /// [`Wal::purge_in_background`] forgets them and hands them to that thread. Returns how
    /// many. Segments deleted meanwhile by another purge are skipped.
    pub fn finish_purge(&mut self, plan: PurgePlan) -> Result<usize, WalError> {
        if self.purger.is_some() {
            let paths = self.detach(plan)?;
            let count = paths.len();
            self.purger.as_ref().expect("checked above").remove(paths);
            return Ok(count);
        }
        let old = self.planned(plan)?;
        // Oldest first, each forgotten only once deleted, so that a crash or an error part-way
        // leaves a gap-free run of segments that a later purge starts from again.
        for &seq in &old {
            let path = self.segment_path(seq);
            self.disk.remove(&path).map_err(io_error("remove", &path))?;
            self.segments.remove(&seq);
        }
        if !old.is_empty() {
            if let Err(source) = self.disk.sync_dir(&self.config.dir) {
                let file = self.config.dir.clone();
                return Err(self.poison(WalError::SyncFailed { file, source }));
            }
            tracing::info!(segments = old.len(), "purged write-ahead log segments");
        }
        Ok(old.len())
    }

    /// A purge in the background but for the deletion: prepares it, and once what frees the
    /// segments is durable (syncing if needed), forgets them and returns their paths, oldest
    /// first, without deleting them. Until they are deleted, a restart replays them as well.
    pub fn detach_purgeable(&mut self) -> Result<Vec<PathBuf>, WalError> {
        match self.prepare_purge()? {
            Some(plan) => self.detach(plan),
            None => Ok(Vec::new()),
        }
    }

    /// Forgets the segments `plan` found, once it is durable, and returns their paths.
    fn detach(&mut self, plan: PurgePlan) -> Result<Vec<PathBuf>, WalError> {
        let old = self.planned(plan)?;
        for seq in &old {
            self.segments.remove(seq);
        }
        Ok(old.iter().map(|&seq| self.segment_path(seq)).collect())
    }

    /// The segments `plan` found that are still there, after syncing the log up to the plan's
    /// position if no fsync covered it yet.
    fn planned(&mut self, plan: PurgePlan) -> Result<Vec<u64>, WalError> {
        self.check_poisoned()?;
        if self.synced < plan.durable_at {
            self.sync()?;
        }
        Ok(self.segments.range(..plan.below).copied().collect())
    }

    /// Replays the segments `seqs` (sorted, non-empty) and opens the last one for appending.
    fn recover(&mut self, seqs: &[u64]) -> Result<(), WalError> {
        for pair in seqs.windows(2) {
            if pair[1] != pair[0] + 1 {
                return Err(WalError::Corrupt {
                    file: self.segment_path(pair[0] + 1),
                    offset: 0,
                    reason: format!("segment missing between {} and {}", pair[0], pair[1]),
                });
            }
        }
        let last = *seqs.last().expect("non-empty");
        let mut end = SegmentEnd {
            valid_len: 0,
            sealed: false,
            torn: false,
        };
        for &seq in seqs {
            end = self.replay_segment(seq, seq == last)?;
            self.segments.insert(seq);
        }
        for (group, log) in &self.groups {
            log.finish_replay().map_err(|reason| WalError::Corrupt {
                file: self.segment_path(seqs[0]),
                offset: 0,
                reason: format!("group {group}: {reason}"),
            })?;
        }
        let path = self.segment_path(last);
        if end.torn {
            self.cut_torn_tail(&path, end.valid_len)?;
        }
        self.active = last;
        self.active_written = end.valid_len;
        self.synced = self.appended_position();
        if end.sealed {
            // The crash came after the seal was synced and before the next segment existed.
            self.start_segment(last + 1)?;
        } else if end.valid_len == 0 {
            codec::encode_frame(&Record::SegmentHeader { seq: last }, &mut self.pending);
        }
        self.sync()?;
        Ok(())
    }

    fn cut_torn_tail(&mut self, path: &Path, valid_len: u64) -> Result<(), WalError> {
        tracing::warn!(
            file = %path.display(),
            offset = valid_len,
            "cutting a torn write at the tail of the write-ahead log"
        );
        self.disk
            .truncate(path, valid_len)
            .map_err(io_error("truncate", path))?;
        // Synced at once, so that later appends extend a file whose durable length is known.
        self.disk.sync(path).map_err(|source| WalError::SyncFailed {
            file: path.to_path_buf(),
            source,
        })
    }

    fn replay_segment(&mut self, seq: u64, is_last: bool) -> Result<SegmentEnd, WalError> {
        let path = self.segment_path(seq);
        let bytes = Bytes::from(self.disk.read(&path).map_err(io_error("read", &path))?);
        let body_bytes_max = self.config.record_bytes_max;
        let corrupt = |offset: usize, reason: String| WalError::Corrupt {
            file: path.clone(),
            offset: offset as u64,
            reason,
        };
        let mut offset = 0usize;
        let mut sealed = false;
        while offset < bytes.len() {
            let (body, next) = match codec::read_frame(&bytes, offset, body_bytes_max) {
                Ok(frame) => frame,
                // The unused rest of a preallocated segment, or a write whose data never
                // reached the disk: the records end here.
                Err(_) if bytes[offset..].iter().all(|&b| b == 0) => break,
                Err(err) if !is_last => return Err(corrupt(offset, err.to_string())),
                Err(err) => match find_valid_frame(&bytes, offset + 1, body_bytes_max) {
                    Some(at) => {
                        let reason = format!("{err}, yet a valid record follows at offset {at}");
                        return Err(corrupt(offset, reason));
                    }
                    None => {
                        return Ok(SegmentEnd {
                            valid_len: offset as u64,
                            sealed,
                            torn: true,
                        });
                    }
                },
            };
            if sealed {
                return Err(corrupt(offset, "record after the segment seal".to_string()));
            }
            let record = codec::decode_record(&body).map_err(|e| corrupt(offset, e.to_string()))?;
            match (offset, record) {
                (0, Record::SegmentHeader { seq: named }) if named == seq => {}
                (0, Record::SegmentHeader { seq: named }) => {
                    return Err(corrupt(0, format!("the header names segment {named}")));
                }
                (0, _) => return Err(corrupt(0, "segment does not start with a header".into())),
                (_, Record::SegmentHeader { .. }) => {
                    return Err(corrupt(offset, "segment header in mid-segment".into()));
                }
                (_, Record::SegmentSeal { seq: named }) if named == seq => sealed = true,
                (_, Record::SegmentSeal { seq: named }) => {
                    return Err(corrupt(offset, format!("the seal names segment {named}")));
                }
                (_, record) => self
                    .replay_record(&record, seq)
                    .map_err(|r| corrupt(offset, r))?,
            }
            offset = next;
        }
        if !is_last && !sealed {
            return Err(corrupt(
                offset,
                "segment ends without its seal record".into(),
            ));
        }
        Ok(SegmentEnd {
            valid_len: offset as u64,
            sealed,
            torn: false,
        })
    }

    fn replay_record(&mut self, record: &Record, segment: u64) -> Result<(), String> {
        let group = record
            .group()
            .expect("segment records are handled by the caller");
        if let Record::RemoveGroup { .. } = record {
            self.groups.remove(&group);
            return Ok(());
        }
        let log = self.groups.entry(group).or_default();
        log.check(record, Mode::Replay)
            .map_err(|r| format!("group {group}: {r}"))?;
        log.apply(record, segment);
        Ok(())
    }
}

/// How the replay of a segment ended.
#[derive(Clone, Copy, Debug)]
struct SegmentEnd {
    /// Bytes of whole, valid records.
    valid_len: u64,
    /// Whether the segment ends with its seal.
    sealed: bool,
    /// Whether unreadable bytes follow `valid_len` (a torn write).
    torn: bool,
}

fn splittable(record: &Record) -> bool {
    matches!(record, Record::Entries { entries, .. } if entries.len() > 1)
}

/// The first offset at or after `start` where a whole frame with a valid checksum begins. Used
/// only on the error path, to tell a torn tail (nothing valid after it) from corruption.
fn find_valid_frame(bytes: &Bytes, start: usize, body_bytes_max: u32) -> Option<usize> {
    let last_start = bytes.len().checked_sub(FRAME_HEADER_BYTES)?;
    (start..=last_start).find(|&at| codec::read_frame(bytes, at, body_bytes_max).is_ok())
}
