//! The real file system.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::Disk;

/// The `Disk` of a real node: `std::fs`, with `fdatasync` for files and `fsync` for directories.
///
/// Open files are cached so that a file's `sync` uses the same descriptor as its writes. This
/// matters: since Linux 4.13 a writeback error is reported once per open file description, so an
/// fsync through a descriptor opened after the error would not see it.
#[derive(Debug, Default)]
pub struct RealDisk {
    open: Mutex<HashMap<PathBuf, File>>,
}

impl RealDisk {
    /// A disk with no files open.
    pub fn new() -> Self {
        Self::default()
    }

    fn with_file<T>(
        &self,
        path: &Path,
        f: impl FnOnce(&mut File) -> io::Result<T>,
    ) -> io::Result<T> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if !open.contains_key(path) {
            let file = OpenOptions::new().read(true).append(true).open(path)?;
            open.insert(path.to_path_buf(), file);
        }
        f(open.get_mut(path).expect("inserted above"))
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
            .append(true)
            .create_new(true)
            .open(path)?;
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(path.to_path_buf(), file);
        Ok(())
    }

    fn append(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        self.with_file(path, |file| file.write_all(data))
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        fs::read(path)
    }

    fn file_len(&self, path: &Path) -> io::Result<u64> {
        Ok(fs::metadata(path)?.len())
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        self.with_file(path, |file| file.set_len(len))
    }

    fn sync(&self, path: &Path) -> io::Result<()> {
        self.with_file(path, |file| file.sync_data())
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
