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
    // RocksDB skips a damaged record's whole 32 KiB block, so what it reaches past the
    // damage can undercount; the log's own record headers say how far it goes.
    let skipped = recovered_to(path, DBRecoveryMode::SkipAnyCorruptedRecord).unwrap_or(kept);
    let written = skipped.max(last_sequence_in_logs(path)).max(kept);
    Some(WalDamage { kept, written })
}

/// The last sequence number the write-ahead log files of `path` hold, read from their
/// record framing without checking checksums (an estimate of how far the log goes past
/// damage; 0 if nothing can be read).
fn last_sequence_in_logs(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "log") && p.is_file())
        .filter_map(|p| std::fs::read(p).ok())
        .map(|bytes| last_sequence(&bytes))
        .max()
        .unwrap_or(0)
}

/// RocksDB's log format: 32 KiB blocks of physical records (`crc u32, length u16, type u8`,
/// and a `log number u32` for the recyclable types 5-8), a logical record being one FULL or
/// a FIRST, MIDDLE..., LAST run; a logical record that is a write batch starts with its
/// sequence number (u64) and count (u32), little-endian.
fn last_sequence(log: &[u8]) -> u64 {
    const BLOCK: usize = 32 * 1024;
    let mut last = 0u64;
    let mut logical: Vec<u8> = Vec::new();
    for block in log.chunks(BLOCK) {
        let mut at = 0;
        while at + 7 <= block.len() {
            let len = usize::from(u16::from_le_bytes([block[at + 4], block[at + 5]]));
            let kind = block[at + 6];
            let header = if (5..=8).contains(&kind) { 11 } else { 7 };
            let Some(payload) = block.get(at + header..at + header + len) else {
                break; // damaged framing or the block's padding: go on with the next block
            };
            match kind {
                1 | 5 => note_batch(payload, &mut last),
                2 | 6 => {
                    logical.clear();
                    logical.extend_from_slice(payload);
                }
                3 | 7 => logical.extend_from_slice(payload),
                4 | 8 => {
                    logical.extend_from_slice(payload);
                    note_batch(&logical, &mut last);
                    logical.clear();
                }
                0 if len == 0 => break, // zeroed tail (preallocated)
                _ => {}
            }
            at += header + len;
        }
    }
    last
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

/// Raises `last` to the last sequence number of the write batch `record`, if it is one.
fn note_batch(record: &[u8], last: &mut u64) {
    let (Some(seq), Some(count)) = (record.get(..8), record.get(8..12)) else {
        return;
    };
    let seq = u64::from_le_bytes(seq.try_into().unwrap_or([0; 8]));
    let count = u32::from_le_bytes(count.try_into().unwrap_or([0; 4]));
    if count > 0 && seq > 0 {
        *last = (*last).max(seq.saturating_add(u64::from(count) - 1));
    }
}
