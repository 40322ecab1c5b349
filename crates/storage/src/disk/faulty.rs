//! An in-memory disk that fails the way real disks do, for crash tests and the simulator.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::Disk;

/// What the unsynced bytes that survive a torn write contain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TornFill {
    /// The bytes that were written (the write was cut short).
    Data,
    /// Zeros (the file's size reached the disk but its data did not).
    Zeros,
    /// Pseudo-random bytes from this seed.
    Garbage { seed: u64 },
}

/// How [`FaultyDisk::crash`] treats unsynced data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrashOptions {
    /// How many unsynced bytes of the last file written survive over its synced contents: the
    /// first this many bytes of its writes since its last sync, in the order they were made
    /// (appends and writes in place alike). Zero loses every unsynced write. Ignored if that
    /// file was truncated since its last sync.
    pub torn_bytes: u64,
    pub torn_fill: TornFill,
}

impl CrashOptions {
    /// Only synced data survives.
    pub const LOSE_UNSYNCED: CrashOptions = CrashOptions {
        torn_bytes: 0,
        torn_fill: TornFill::Data,
    };
}

#[derive(Debug, Default)]
struct FileData {
    /// The contents a reader sees now.
    data: Vec<u8>,
    /// The contents as of the last successful sync: what survives a crash.
    durable: Vec<u8>,
    /// The writes since the last sync, in order: offset and bytes. A torn write keeps a prefix
    /// of them.
    unsynced: Vec<(usize, Vec<u8>)>,
    /// Whether the file was truncated since the last sync; a crash then keeps no torn bytes.
    truncated: bool,
}

impl FileData {
    fn write(&mut self, offset: usize, data: &[u8]) {
        let end = offset + data.len();
        if self.data.len() < end {
            self.data.resize(end, 0);
        }
        self.data[offset..end].copy_from_slice(data);
        self.unsynced.push((offset, data.to_vec()));
    }

    fn unsynced_bytes(&self) -> u64 {
        self.unsynced.iter().map(|(_, d)| d.len() as u64).sum()
    }

    /// What survives a crash: the synced contents and, if `torn_bytes` is not zero, the first
    /// `torn_bytes` of the writes since, as `fill` says.
    fn crash(&mut self, torn_bytes: u64, fill_with: TornFill) {
        let mut kept = self.durable.clone();
        let mut budget = usize::try_from(torn_bytes).unwrap_or(usize::MAX);
        if self.truncated {
            budget = 0;
        }
        for (offset, data) in &self.unsynced {
            if budget == 0 {
                break;
            }
            let take = data.len().min(budget);
            budget -= take;
            let mut torn = data[..take].to_vec();
            fill(&mut torn, fill_with);
            let end = offset + take;
            if kept.len() < end {
                kept.resize(end, 0);
            }
            kept[*offset..end].copy_from_slice(&torn);
        }
        self.data = kept.clone();
        self.durable = kept;
        self.unsynced.clear();
        self.truncated = false;
    }
}

#[derive(Debug, Default)]
struct State {
    /// Path to inode, as the process sees it now.
    names: BTreeMap<PathBuf, u64>,
    /// Path to inode, as of the last `sync_dir` of each parent.
    durable_names: BTreeMap<PathBuf, u64>,
    inodes: BTreeMap<u64, FileData>,
    inode_next: u64,
    dirs: BTreeSet<PathBuf>,
    /// Mutating operations done so far.
    ops_done: u64,
    /// Once `ops_done` reaches this, every operation fails until `crash`.
    crash_at_ops: Option<u64>,
    halted: bool,
    /// The next this many syncs fail.
    sync_failures_pending: u32,
    last_written: Option<u64>,
}

/// An in-memory [`Disk`] that tracks, for each file, what is synced and what is not.
///
/// - [`crash`](FaultyDisk::crash) keeps only synced data and durable directory entries, plus
///   optionally a torn prefix of the unsynced bytes of the last file written;
/// - [`crash_after_ops`](FaultyDisk::crash_after_ops) stops the disk after a given number of
///   mutating operations, so a test can enumerate every crash point;
/// - [`flip_bit`](FaultyDisk::flip_bit) corrupts stored bytes;
/// - [`fail_next_sync`](FaultyDisk::fail_next_sync) makes an fsync fail (its data never
///   becomes durable).
///
/// Deterministic: the only randomness is the seed in [`TornFill::Garbage`]. Clones share the same
/// disk, so a test keeps one handle while the WAL owns another.
#[derive(Clone, Debug, Default)]
pub struct FaultyDisk {
    state: Arc<Mutex<State>>,
}

fn crashed_error() -> io::Error {
    io::Error::other("faulty disk: the node crashed")
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("faulty disk: no file {}", path.display()),
    )
}

impl FaultyDisk {
    /// An empty disk.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Mutating operations done so far (a crash point is a number in `0..=ops_done()`).
    pub fn ops_done(&self) -> u64 {
        self.lock().ops_done
    }

    /// After `ops` mutating operations in total, every operation fails as if the node had died.
    pub fn crash_after_ops(&self, ops: u64) {
        self.lock().crash_at_ops = Some(ops);
    }

    /// Makes the next sync (file or directory) fail; its data does not become durable.
    pub fn fail_next_sync(&self) {
        self.lock().sync_failures_pending += 1;
    }

    /// Simulates a power loss and restart: unsynced data and directory entries are lost, except a
    /// torn prefix of the last file written as `options` say. The disk then works again.
    pub fn crash(&self, options: CrashOptions) {
        let mut state = self.lock();
        let state = &mut *state;
        state.names = state.durable_names.clone();
        let live: BTreeSet<u64> = state.names.values().copied().collect();
        state.inodes.retain(|inode, _| live.contains(inode));
        for (inode, file) in state.inodes.iter_mut() {
            let torn_bytes = if Some(*inode) == state.last_written {
                options.torn_bytes
            } else {
                0
            };
            file.crash(torn_bytes, options.torn_fill);
        }
        state.crash_at_ops = None;
        state.halted = false;
        state.sync_failures_pending = 0;
        state.last_written = None;
    }

    /// Flips one bit of a stored file, in its current and its durable contents.
    pub fn flip_bit(&self, path: &Path, offset: u64, bit: u8) -> io::Result<()> {
        let mut state = self.lock();
        let inode = *state.names.get(path).ok_or_else(|| not_found(path))?;
        let file = state.inodes.get_mut(&inode).expect("named inodes exist");
        let mask = 1u8 << (bit % 8);
        let offset = usize::try_from(offset).unwrap_or(usize::MAX);
        if offset >= file.data.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "flip past the end",
            ));
        }
        file.data[offset] ^= mask;
        if let Some(byte) = file.durable.get_mut(offset) {
            *byte ^= mask;
        }
        Ok(())
    }

    /// Bytes of `path` written but not yet synced.
    pub fn unsynced_bytes(&self, path: &Path) -> u64 {
        let state = self.lock();
        state
            .names
            .get(path)
            .and_then(|inode| state.inodes.get(inode))
            .map_or(0, FileData::unsynced_bytes)
    }

    /// Unsynced bytes of the file written last: the most a torn write can keep at a crash now.
    pub fn last_write_unsynced_bytes(&self) -> u64 {
        let state = self.lock();
        let file = state
            .last_written
            .and_then(|inode| state.inodes.get(&inode));
        file.map_or(0, FileData::unsynced_bytes)
    }

    /// Every file path, sorted.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.lock().names.keys().cloned().collect()
    }
}

fn fill(bytes: &mut [u8], how: TornFill) {
    match how {
        TornFill::Data => {}
        TornFill::Zeros => bytes.fill(0),
        TornFill::Garbage { seed } => {
            let mut x = seed;
            for byte in bytes.iter_mut() {
                // SplitMix64: enough for garbage, and deterministic.
                x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = x;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                *byte = (z ^ (z >> 31)) as u8;
            }
        }
    }
}

impl State {
    /// Counts a mutating operation, or fails it if the node has "crashed".
    fn begin_op(&mut self) -> io::Result<()> {
        if self.halted {
            return Err(crashed_error());
        }
        if self.crash_at_ops.is_some_and(|at| self.ops_done >= at) {
            self.halted = true;
            return Err(crashed_error());
        }
        self.ops_done += 1;
        Ok(())
    }

    fn check_alive(&self) -> io::Result<()> {
        if self.halted {
            Err(crashed_error())
        } else {
            Ok(())
        }
    }

    fn file_mut(&mut self, path: &Path) -> io::Result<(u64, &mut FileData)> {
        let inode = *self.names.get(path).ok_or_else(|| not_found(path))?;
        Ok((
            inode,
            self.inodes.get_mut(&inode).expect("named inodes exist"),
        ))
    }

    fn file(&self, path: &Path) -> io::Result<&FileData> {
        let inode = self.names.get(path).ok_or_else(|| not_found(path))?;
        Ok(self.inodes.get(inode).expect("named inodes exist"))
    }

    fn take_sync_failure(&mut self) -> io::Result<()> {
        if self.sync_failures_pending > 0 {
            self.sync_failures_pending -= 1;
            return Err(io::Error::other("faulty disk: injected fsync failure"));
        }
        Ok(())
    }
}

impl Disk for FaultyDisk {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.check_alive()?;
        // Directories are durable at once: the WAL creates its directory only on first start.
        state.dirs.insert(dir.to_path_buf());
        Ok(())
    }

    fn create(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.begin_op()?;
        if state.names.contains_key(path) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "file exists"));
        }
        let inode = state.inode_next;
        state.inode_next += 1;
        state.inodes.insert(inode, FileData::default());
        state.names.insert(path.to_path_buf(), inode);
        Ok(())
    }

    fn append(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let mut state = self.lock();
        state.begin_op()?;
        let (inode, file) = state.file_mut(path)?;
        file.write(file.data.len(), data);
        state.last_written = Some(inode);
        Ok(())
    }

    fn write_at(&self, path: &Path, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut state = self.lock();
        state.begin_op()?;
        let (inode, file) = state.file_mut(path)?;
        let offset = usize::try_from(offset).unwrap_or(usize::MAX);
        if offset > file.data.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "faulty disk: write at {offset}, past the end of {}",
                    path.display()
                ),
            ));
        }
        file.write(offset, data);
        state.last_written = Some(inode);
        Ok(())
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let state = self.lock();
        state.check_alive()?;
        Ok(state.file(path)?.data.clone())
    }

    fn file_len(&self, path: &Path) -> io::Result<u64> {
        let state = self.lock();
        state.check_alive()?;
        Ok(state.file(path)?.data.len() as u64)
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let mut state = self.lock();
        state.begin_op()?;
        let (inode, file) = state.file_mut(path)?;
        file.data
            .resize(usize::try_from(len).unwrap_or(usize::MAX), 0);
        file.truncated = true;
        state.last_written = Some(inode);
        Ok(())
    }

    fn sync(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.begin_op()?;
        state.file(path)?;
        state.take_sync_failure()?;
        let (_, file) = state.file_mut(path)?;
        file.durable = file.data.clone();
        file.unsynced.clear();
        file.truncated = false;
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.begin_op()?;
        state.take_sync_failure()?;
        let in_dir = |p: &PathBuf| p.parent() == Some(dir);
        let state = &mut *state;
        state.durable_names.retain(|p, _| !in_dir(p));
        for (path, inode) in state.names.iter().filter(|(p, _)| in_dir(p)) {
            state.durable_names.insert(path.clone(), *inode);
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let state = self.lock();
        state.check_alive()?;
        let names = state
            .names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        Ok(names)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.begin_op()?;
        let inode = state.names.remove(from).ok_or_else(|| not_found(from))?;
        state.names.insert(to.to_path_buf(), inode);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.begin_op()?;
        state.names.remove(path).ok_or_else(|| not_found(path))?;
        Ok(())
    }
}
