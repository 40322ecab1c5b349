//! The `Disk` abstraction: the file operations the write-ahead log needs, with the real file
//! system ([`RealDisk`]) and an in-memory faulty disk for crash tests and the simulator
//! ([`FaultyDisk`]).
//!
//! The contract every implementation keeps, and that the WAL relies on:
//! - `append`, `write_at` and `truncate` are durable only after `sync` of that file returns `Ok`;
//! - `create`, `rename` and `remove` are durable only after `sync_dir` of the parent returns `Ok`;
//! - a `sync` that returns an error may have lost the unsynced data: the caller must not retry it
//!   and assume success (fsync errors on Linux clear the dirty state of the pages).

use std::fmt;
use std::io;
use std::path::Path;

mod faulty;
mod real;

pub use faulty::{CrashOptions, FaultyDisk, TornFill};
pub use real::RealDisk;

/// The file operations of the write-ahead log. Object safe; shared as `Arc<dyn Disk>`.
pub trait Disk: Send + Sync + fmt::Debug {
    /// Creates `dir` and its parents if missing.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Creates a new empty file. Fails if it exists.
    fn create(&self, path: &Path) -> io::Result<()>;
    /// Appends `data` at the end of the file.
    fn append(&self, path: &Path, data: &[u8]) -> io::Result<()>;
    /// Writes `data` at byte `offset` of the file, over what is there and past its end. The
    /// offset must not be past the end: files have no holes.
    fn write_at(&self, path: &Path, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Reads the whole file as it is now (including unsynced writes).
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// The file's length now.
    fn file_len(&self, path: &Path) -> io::Result<u64>;
    /// Cuts the file to `len` bytes.
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()>;
    /// Makes the file's data durable.
    fn sync(&self, path: &Path) -> io::Result<()>;
    /// Makes the directory's entries (created, renamed, removed files) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// The names of the files in `dir` (not full paths), in no particular order.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Renames a file, replacing `to` if it exists.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove(&self, path: &Path) -> io::Result<()>;
}
