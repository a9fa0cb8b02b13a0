//! Damage to the write-ahead log. RocksDB's default recovery stops at the first damaged WAL
//! record and drops everything after it without a word, and opening read-write then makes
//! that final. The store opens in a mode that refuses a damaged log instead (a torn last
//! record — a write cut by power loss, never acknowledged at `fsync` — is still
//! tolerated): start-up and every maintenance command fail with [`WalDamage`], which says
//! how much would be lost, and nothing on disk changes. Point-in-time recovery runs only
//! when the operator asks (`messs serve --recover-wal`), after the damaged log files are
//! copied aside.

use std::path::{Path, PathBuf};

use rocksdb::{DBRecoveryMode, Options, DB};

use crate::error::StorageError;

/// What a damaged write-ahead log would cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalDamage {
    /// The sequence number recovery stops at (changes before the damage).
    pub kept: u64,
    /// The sequence number the log reaches past the damage (its last readable change).
    pub written: u64,
}

impl WalDamage {
    /// About how many changes are after the damage (lost by point-in-time recovery).
    pub fn lost(&self) -> u64 {
        self.written.saturating_sub(self.kept)
    }
}

/// Whether `e` says RocksDB found damaged data.
pub(crate) fn is_corruption(e: &StorageError) -> bool {
    matches!(e, StorageError::Db(e) if e.kind() == rocksdb::ErrorKind::Corruption)
}

/// The latest sequence number a read-only open in `mode` recovers, or `None` if it cannot
/// open. Read-only: the directory is not changed.
fn recovered_to(path: &Path, mode: DBRecoveryMode) -> Option<u64> {
    let names = DB::list_cf(&Options::default(), path).ok()?;
    let mut opts = Options::default();
    opts.set_wal_recovery_mode(mode);
    let _log = InfoLogElsewhere::set(&mut opts);
    DB::open_cf_for_read_only(&opts, path, names, false)
        .ok()
        .map(|db| db.latest_sequence_number())
}

/// RocksDB writes its diagnostic `LOG` into the database directory (rotating the old one)
/// even when it opens read-only: a read-only open points it at a directory of its own in
/// the system's temporary directory instead, removed when this is dropped (RocksDB keeps
/// writing to the open file).
pub(crate) struct InfoLogElsewhere(Option<PathBuf>);

impl InfoLogElsewhere {
    pub(crate) fn set(opts: &mut Options) -> InfoLogElsewhere {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("messs-info-log-{}-{n}", std::process::id()));
        match std::fs::create_dir_all(&dir) {
            Ok(()) => {
                opts.set_db_log_dir(&dir);
                InfoLogElsewhere(Some(dir))
            }
            // Then RocksDB writes it where it always does.
            Err(_) => InfoLogElsewhere(None),
        }
    }
}

impl Drop for InfoLogElsewhere {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// After a strict open failed with a corruption: whether the damage is in the write-ahead
/// log (a point-in-time recovery opens) and how much lies past it. `None`: the damage is
/// elsewhere (an SST file, the manifest).
pub(crate) fn diagnose(path: &Path) -> Option<WalDamage> {
    let kept = recovered_to(path, DBRecoveryMode::PointInTime)?;
    let written = recovered_to(path, DBRecoveryMode::SkipAnyCorruptedRecord).unwrap_or(kept);
    Some(WalDamage {
        kept,
        written: written.max(kept),
    })
}

/// Copies the write-ahead log files into a new `wal-damaged-<unix seconds>` directory
/// inside `path` before a recovery drops what is after the damage; returns it.
pub(crate) fn set_aside(path: &Path) -> Result<PathBuf, StorageError> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let aside = path.join(format!("wal-damaged-{secs}"));
    std::fs::create_dir(&aside)?;
    crate::owner_only(&aside)?;
    for entry in std::fs::read_dir(path)? {
        let file = entry?.path();
        if file.extension().is_some_and(|e| e == "log") && file.is_file() {
            if let Some(name) = file.file_name() {
                std::fs::copy(&file, aside.join(name))?;
            }
        }
    }
    Ok(aside)
}

/// Whether `path` holds files of a RocksDB database (so a missing `CURRENT` means damage,
/// not a new directory).
pub(crate) fn has_database_files(path: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(path) else {
        return false;
    };
    entries.flatten().any(|e| {
        let name = e.file_name();
        let name = name.to_string_lossy();
        name == "CURRENT"
            || name == "IDENTITY"
            || name.starts_with("MANIFEST-")
            || name.starts_with("OPTIONS-")
            || name.ends_with(".sst")
            || name.ends_with(".log") && name.chars().next().is_some_and(|c| c.is_ascii_digit())
    })
}
