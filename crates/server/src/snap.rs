//! Raft snapshots on disk: the snapshot data files and the MVCC store directory they restore.
//!
//! A snapshot's data (the membership and an MVCC snapshot stream) lives in
//! `member/snap/<term>-<index>.snap`. Two kinds of file exist:
//!
//! - a snapshot received from the leader, written and fsynced before the WAL records it, so that
//!   a crash before the store is replaced can finish the restore from it;
//! - a snapshot of the local store, written only when a follower needs one that the log can no
//!   longer give (see [`SnapFiles::offer`]). The snapshots a member takes every
//!   `--snapshot-count` entries write no file: the store, synced, is their data.
//!
//! The newest file is offered to followers (the log store reads it back through
//! [`chorus_storage::wal::SnapshotSource`]); older ones are removed.
//!
//! The MVCC store lives in the directory named by `member/mvcc.current` (`mvcc` when the file
//! does not exist). A snapshot is restored into a fresh directory, the pointer file is replaced
//! atomically, and the old directory is removed. A crash before the pointer moves leaves the old
//! store, whose applied index is below the snapshot's: the next start restores again from the
//! snapshot file.

use std::fs::{self, File};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use chorus_raft::{LogIndex, SnapshotMeta};
use chorus_storage::mvcc::{MvccConfig, MvccError, MvccStore};

/// The file naming the current MVCC directory.
const POINTER_FILE: &str = "mvcc.current";
/// The MVCC directory of a member that never restored a snapshot.
const FIRST_STORE_DIR: &str = "mvcc";

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `bytes` to `path` atomically and durably (temporary file, fsync, rename, fsync dir).
pub(crate) fn write_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// The start of a snapshot that carries the membership (see [`envelope`]).
const ENVELOPE_MAGIC: &[u8; 8] = b"CHSNAPM1";

/// The start of the data of a Raft snapshot: `CHSNAPM1`, the length (u32, big endian) and
/// CRC-32C of the encoded membership table, then the table. The MVCC snapshot stream follows
/// unchanged.
pub fn envelope_header(membership: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(16 + membership.len());
    out.extend_from_slice(ENVELOPE_MAGIC);
    out.extend_from_slice(
        &u32::try_from(membership.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(&crc32c::crc32c(membership).to_be_bytes());
    out.extend_from_slice(membership);
    Bytes::from(out)
}

/// The whole data of a snapshot: [`envelope_header`] followed by the MVCC stream.
pub fn envelope(membership: &[u8], mvcc: &[u8]) -> Bytes {
    let mut out = envelope_header(membership).to_vec();
    out.extend_from_slice(mvcc);
    Bytes::from(out)
}

/// Splits snapshot data into the membership table (absent in data written before the
/// envelope existed) and the MVCC stream. Refuses a damaged envelope.
pub fn open_envelope(data: Bytes) -> io::Result<(Option<Bytes>, Bytes)> {
    if !data.starts_with(ENVELOPE_MAGIC) {
        return Ok((None, data));
    }
    let bad = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("snapshot envelope: {what}"),
        )
    };
    let header = data.get(8..16).ok_or_else(|| bad("truncated header"))?;
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    let end = 16usize
        .checked_add(len)
        .filter(|end| *end <= data.len())
        .ok_or_else(|| bad("truncated membership"))?;
    let membership = data.slice(16..end);
    if crc32c::crc32c(&membership) != crc {
        return Err(bad("membership checksum mismatch"));
    }
    Ok((Some(membership), data.slice(end..)))
}

/// The snapshot data files of one member. Clones share which file is offered.
#[derive(Clone, Debug)]
pub struct SnapFiles {
    dir: PathBuf,
    offered: Arc<Mutex<Offered>>,
}

/// Which snapshot followers are sent, and whether one needed a newer one.
#[derive(Debug, Default)]
struct Offered {
    meta: Option<SnapshotMeta>,
    wanted: bool,
}

impl SnapFiles {
    pub fn open(dir: PathBuf) -> io::Result<SnapFiles> {
        fs::create_dir_all(&dir)?;
        Ok(SnapFiles {
            dir,
            offered: Arc::default(),
        })
    }

    fn offered(&self) -> std::sync::MutexGuard<'_, Offered> {
        self.offered.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Offers the saved snapshot `meta` to followers that need a snapshot, and clears the
    /// request for one ([`take_wanted`](Self::take_wanted)).
    pub fn offer(&self, meta: SnapshotMeta) {
        *self.offered() = Offered {
            meta: Some(meta),
            wanted: false,
        };
    }

    /// Stops offering any snapshot (after a membership change: a member that the offered
    /// snapshot's configuration does not list would ignore it).
    pub fn withdraw(&self) {
        self.offered().meta = None;
    }

    /// The snapshot offered to followers, if any.
    pub fn offered_meta(&self) -> Option<SnapshotMeta> {
        self.offered().meta.clone()
    }

    /// Whether a follower asked for a snapshot newer than the one offered since the last
    /// call: the member should write one.
    pub fn take_wanted(&self) -> bool {
        std::mem::take(&mut self.offered().wanted)
    }

    fn path(&self, meta: &SnapshotMeta) -> PathBuf {
        self.dir.join(format!(
            "{:016x}-{:016x}.snap",
            meta.term.get(),
            meta.index.get()
        ))
    }

    /// Stores the data of the snapshot `meta` durably.
    pub fn save(&self, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()> {
        write_durably(&self.path(meta), data)
    }

    /// Stores the snapshot `meta` durably from its chunks, without holding it in memory.
    pub fn save_chunks<E: std::fmt::Display>(
        &self,
        meta: &SnapshotMeta,
        chunks: impl IntoIterator<Item = Result<Bytes, E>>,
    ) -> io::Result<()> {
        let path = self.path(meta);
        let tmp = path.with_extension("tmp");
        let mut file = io::BufWriter::new(File::create(&tmp)?);
        for chunk in chunks {
            let chunk = chunk.map_err(|e| io::Error::other(e.to_string()))?;
            file.write_all(&chunk)?;
        }
        let file = file.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        fs::rename(&tmp, &path)?;
        sync_dir(&self.dir)
    }

    /// Whether the data file of the snapshot `meta` exists.
    pub fn exists(&self, meta: &SnapshotMeta) -> bool {
        self.path(meta).is_file()
    }

    /// The data of the snapshot `meta`.
    pub fn load(&self, meta: &SnapshotMeta) -> io::Result<Bytes> {
        let path = self.path(meta);
        fs::read(&path)
            .map(Bytes::from)
            .map_err(|e| io::Error::new(e.kind(), format!("read {}: {e}", path.display())))
    }

    /// Removes every snapshot file but the one of `keep` (all of them with `None`).
    pub fn purge_except(&self, keep: Option<&SnapshotMeta>) -> io::Result<()> {
        let keep = keep.map(|meta| self.path(meta));
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let is_snap = path.extension().is_some_and(|e| e == "snap" || e == "tmp");
            if is_snap && keep.as_ref() != Some(&path) {
                fs::remove_file(&path)?;
            }
        }
        Ok(())
    }
}

/// Opens the current MVCC store of the member in `member_dir`.
pub fn open_store(member_dir: &Path, config: MvccConfig) -> Result<MvccStore, MvccError> {
    let name = match fs::read_to_string(member_dir.join(POINTER_FILE)) {
        Ok(name) => name.trim().to_string(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => FIRST_STORE_DIR.to_string(),
        Err(source) => {
            return Err(MvccError::Io {
                context: format!("read {}", member_dir.join(POINTER_FILE).display()),
                source,
            });
        }
    };
    let dir = member_dir.join(name);
    fs::create_dir_all(&dir).map_err(|source| MvccError::Io {
        context: format!("create {}", dir.display()),
        source,
    })?;
    MvccStore::open(&dir, config)
}

/// Restores the snapshot `data` at `meta` into a fresh directory and makes it the current one.
/// The caller replaces its open store with the result and then calls [`remove_store_dir`] on
/// the old store's directory.
pub fn restore_store(
    member_dir: &Path,
    config: MvccConfig,
    meta: &SnapshotMeta,
    data: Bytes,
) -> Result<MvccStore, MvccError> {
    let name = format!("mvcc-{:016x}-{:016x}", meta.term.get(), meta.index.get());
    let dir = member_dir.join(&name);
    let io_error = |context: String| move |source| MvccError::Io { context, source };
    if dir.exists() {
        // A restore that a crash interrupted: start over.
        fs::remove_dir_all(&dir).map_err(io_error(format!("remove {}", dir.display())))?;
    }
    let store = MvccStore::restore(&dir, config, [Ok(data)])?;
    write_durably(&member_dir.join(POINTER_FILE), name.as_bytes())
        .map_err(io_error(format!("switch the store to {}", dir.display())))?;
    Ok(store)
}

/// Removes a store directory that is no longer current (after a restore).
pub fn remove_store_dir(dir: &Path) {
    if let Err(error) = fs::remove_dir_all(dir) {
        tracing::warn!(dir = %dir.display(), %error, "could not remove an old store directory");
    }
}

impl chorus_storage::wal::SnapshotSource for SnapFiles {
    fn snapshot(&self, min_index: LogIndex) -> io::Result<Option<chorus_raft::Snapshot>> {
        let meta = {
            let mut offered = self.offered();
            match &offered.meta {
                Some(meta) if meta.index >= min_index => meta.clone(),
                _ => {
                    offered.wanted = true;
                    return Ok(None);
                }
            }
        };
        let data = self.load(&meta)?;
        Ok(Some(chorus_raft::Snapshot { meta, data }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_raft::Term;
    use chorus_storage::mvcc::{PutRequest, RangeRequest};

    /// Goal: a snapshot file round-trips, a restore becomes the store that the next open finds,
    /// and purging keeps only the named snapshot. Method: a store with one key, snapshotted,
    /// saved, restored into a second member directory, reopened.
    #[test]
    fn restore_switches_the_current_store() {
        let dir = tempfile::tempdir().unwrap();
        let source_dir = dir.path().join("source");
        let mut source = open_store(&source_dir, MvccConfig::default()).unwrap();
        source
            .apply(
                LogIndex(7),
                &chorus_storage::mvcc::WriteOp::Put(PutRequest::new("k", "v")),
            )
            .unwrap();
        let data: Vec<u8> = source
            .snapshot()
            .unwrap()
            .map(|chunk| chunk.unwrap().to_vec())
            .collect::<Vec<_>>()
            .concat();
        let meta = SnapshotMeta {
            index: LogIndex(7),
            term: Term(2),
            ..SnapshotMeta::default()
        };
        let files = SnapFiles::open(dir.path().join("snap")).unwrap();
        files.save(&meta, &data).unwrap();
        let older = SnapshotMeta {
            index: LogIndex(3),
            ..meta.clone()
        };
        files.save(&older, b"old").unwrap();
        files.purge_except(Some(&meta)).unwrap();
        assert!(files.load(&older).is_err());
        let loaded = files.load(&meta).unwrap();
        assert_eq!(loaded.as_ref(), data.as_slice());

        let member = dir.path().join("member");
        let first = open_store(&member, MvccConfig::default()).unwrap();
        let old_dir = first.dir().to_path_buf();
        drop(first);
        let restored = restore_store(&member, MvccConfig::default(), &meta, loaded).unwrap();
        assert_eq!(restored.applied_index(), LogIndex(7));
        drop(restored);
        remove_store_dir(&old_dir);
        let reopened = open_store(&member, MvccConfig::default()).unwrap();
        assert_eq!(reopened.applied_index(), LogIndex(7));
        let got = reopened.range(&RangeRequest::key("k")).unwrap();
        assert_eq!(got.kvs[0].value.as_ref(), b"v");
    }
}

#[cfg(test)]
mod source_tests {
    use super::*;
    use chorus_raft::Term;
    use chorus_storage::wal::SnapshotSource as _;

    /// Goal: the files offer followers only the snapshot offered last, and only when it is
    /// recent enough; asking for a newer one (or after a withdrawal) requests one once.
    /// Method: save and offer a file at 10, ask at or below 10, above 10, then withdraw.
    #[test]
    fn offers_the_latest_file_and_asks_for_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let files = SnapFiles::open(dir.path().join("snap")).unwrap();
        assert_eq!(
            files.snapshot(LogIndex(1)).unwrap(),
            None,
            "nothing offered"
        );
        assert!(files.take_wanted());
        assert!(!files.take_wanted(), "asked for once");
        let meta = SnapshotMeta {
            index: LogIndex(10),
            term: Term(2),
            ..SnapshotMeta::default()
        };
        files.save(&meta, b"at 10").unwrap();
        files.offer(meta.clone());
        let got = files.snapshot(LogIndex(10)).unwrap().expect("offered");
        assert_eq!((got.meta, &got.data[..]), (meta.clone(), &b"at 10"[..]));
        assert!(!files.take_wanted());
        assert_eq!(files.snapshot(LogIndex(11)).unwrap(), None, "too old");
        assert!(files.take_wanted());
        files.withdraw();
        assert_eq!(files.snapshot(LogIndex(5)).unwrap(), None, "withdrawn");
        assert!(files.take_wanted());
    }
}

#[cfg(test)]
mod envelope_tests {
    use super::*;

    /// Goal: the envelope carries the membership and leaves the MVCC stream intact; damage is
    /// refused and old unwrapped data passes through. Method: wrap, split, flip a byte.
    #[test]
    fn envelope_round_trips_and_checks() {
        let data = envelope(b"members", b"mvcc stream");
        let (membership, mvcc) = open_envelope(data.clone()).unwrap();
        assert_eq!(membership.as_deref(), Some(&b"members"[..]));
        assert_eq!(&mvcc[..], b"mvcc stream");
        let mut damaged = data.to_vec();
        damaged[17] ^= 1;
        assert!(open_envelope(Bytes::from(damaged)).is_err());
        assert!(open_envelope(data.slice(..18)).is_err());
        let (none, plain) = open_envelope(Bytes::from_static(b"plain")).unwrap();
        assert_eq!((none, &plain[..]), (None, &b"plain"[..]));
    }
}
