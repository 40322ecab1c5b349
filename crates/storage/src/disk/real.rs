//! The real file system.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::Disk;

/// The `Disk` of a real node: `std::fs`, with `fdatasync` for files and `fsync` for directories.
///
/// Open files are cached so that a file's `sync` uses the same descriptor as its writes. This
/// matters: since Linux 4.13 a writeback error is reported once per open file description, so an
/// fsync through a descriptor opened after the error would not see it. The cache's lock is held
/// only to find a file, never during its I/O, so that one thread filling a file does not hold up
/// another's fsync.
///
/// Files are opened for writing without `O_APPEND`, which on Linux would make every positioned
/// write land at the end of the file whatever its offset.
#[derive(Debug, Default)]
pub struct RealDisk {
    open: Mutex<HashMap<PathBuf, Arc<File>>>,
}

impl RealDisk {
    /// A disk with no files open.
    pub fn new() -> Self {
        Self::default()
    }

    fn file(&self, path: &Path) -> io::Result<Arc<File>> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(file) = open.get(path) {
            return Ok(file.clone());
        }
        let file = Arc::new(OpenOptions::new().read(true).write(true).open(path)?);
        open.insert(path.to_path_buf(), file.clone());
        Ok(file)
    }

    fn forget(&self, path: &Path) {
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(path);
    }
}

impl Disk for RealDisk {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }

    fn create(&self, path: &Path) -> io::Result<()> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(path.to_path_buf(), Arc::new(file));
        Ok(())
    }

    fn append(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let file = self.file(path)?;
        let end = file.metadata()?.len();
        file.write_all_at(data, end)
    }

    fn write_at(&self, path: &Path, offset: u64, data: &[u8]) -> io::Result<()> {
        // No check of the offset against the file's length here: a stat before each write asks
        // the kernel for the file's change time, after which (Linux 6.13 and later) the next
        // write stamps the file with a fine-grained time instead of the clock tick's, so that
        // every write changes the inode and every fdatasync writes the inode as well. Without
        // the stat the times move once a tick. The faulty disk checks the offset in tests.
        self.file(path)?.write_all_at(data, offset)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        fs::read(path)
    }

    fn file_len(&self, path: &Path) -> io::Result<u64> {
        Ok(fs::metadata(path)?.len())
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        self.file(path)?.set_len(len)
    }

    fn sync(&self, path: &Path) -> io::Result<()> {
        self.file(path)?.sync_data()
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        Ok(names)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.forget(from);
        self.forget(to);
        fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.forget(path);
        fs::remove_file(path)
    }
}
