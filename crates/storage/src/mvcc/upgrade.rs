//! Store files written before the engine's file format v3.
//!
//! Chorus kept its store in redb 2, whose files are in the engine's format v2; redb 3 and later
//! open only format v3 and refuse the older one ("Manual upgrade required"). redb 2.6 can
//! rewrite a v2 file as v3 in place, through its own commits, so a file from an older Chorus is
//! upgraded once when it is opened, before the store reads it, and nothing in it is lost. The
//! older engine is linked only for this rewrite (as the `redb2` dependency).

use std::path::Path;
use std::time::Instant;

use super::error::{MvccError, MvccResult};

/// The engine's file format that [`upgrade_v2`] rewrites.
pub(crate) const FORMAT_V2: u8 = 2;

/// Rewrites the engine file at `path`, in the engine's format v2, in format v3.
pub(crate) fn upgrade_v2(path: &Path) -> MvccResult<()> {
    let failed = |detail: String| MvccError::Upgrade {
        from: FORMAT_V2,
        detail,
    };
    tracing::info!(
        path = %path.display(),
        "the store file is in the engine's file format v2 (an older Chorus); rewriting it in v3"
    );
    let started = Instant::now();
    let mut db = redb2::Database::open(path).map_err(|e| failed(format!("open: {e}")))?;
    let upgraded = db.upgrade().map_err(|e| failed(e.to_string()))?;
    drop(db);
    tracing::info!(
        path = %path.display(),
        upgraded,
        took = ?started.elapsed(),
        "rewrote the store file in the engine's file format v3"
    );
    Ok(())
}
