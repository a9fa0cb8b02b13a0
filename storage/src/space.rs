//! Free disk space, and who may still write when it runs low. RocksDB treats a full disk
//! under its write-ahead log as a hard error: every write fails until it has recovered
//! (it polls for free space every 5 s and needs a memtable's worth, 16 MiB, to resume). So
//! the store never lets its own writes get there. Every batch has a [`Class`], checked when
//! it is submitted against the free space of the data directory's file system:
//!
//! | class         | written while free space is ...                                    |
//! |---------------|--------------------------------------------------------------------|
//! | `Shrink`      | anything (deletes only: they give space back)                      |
//! | `Reserved`    | anything: operator security changes (disable or delete a device,   |
//! |               | revoke, admin logins) and their audit records, from the margin     |
//! | `Bookkeeping` | at least half the watermark (session records, subscriptions,       |
//! |               | in-flight ids, the broker's audit records)                         |
//! | `NewData`     | at least the watermark (`min_free_disk_bytes`): messages, retained, |
//! |               | telemetry, registry additions                                      |
//!
//! So client traffic stops at the watermark, bookkeeping at half of it, and the other half
//! is the operator's. A refused batch fails at once ([`StorageError::DiskLow`]), before
//! anything depends on it (an audit record refused this way leaves the chain as it was).
//!
//! The file system's free space lags behind what was admitted (the writer has not written
//! it yet; RocksDB writes it twice, to the log and later to a table file), so each admitted
//! batch counts twice its bytes against the free space until the next reading, and the
//! writer's backlog counts the same way: one client's burst of large messages cannot take
//! the disk past the floor between two readings (the outside audit pushed 85 MiB through a
//! 6 MiB margin).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::error::StorageError;

/// How a batch fares when free disk space runs low (see the module header). Ordered from
/// the least to the most easily refused; a batch made of several takes the strictest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Class {
    /// Deletes only (worked out from the batch, never set).
    Shrink,
    /// Security-critical operator changes.
    Reserved,
    /// The default: state that tracks what was already admitted.
    #[default]
    Bookkeeping,
    /// Data clients add.
    NewData,
}

/// How long a free-space reading is trusted.
const CHECK_EVERY_MS: u64 = 100;

/// The data directory's free space, read with `statvfs` at most every `CHECK_EVERY_MS`
/// by whichever thread asks first, and the watermark.
pub(crate) struct Space {
    path: PathBuf,
    min_free: AtomicU64,
    free: AtomicU64,
    /// When `free` was read, in ms since `epoch` (+1, so 0 is "never").
    read_at: AtomicU64,
    /// Bytes admitted since `free` was read (each counted twice: log and table file).
    admitted: AtomicU64,
    epoch: Instant,
}

impl Space {
    pub(crate) fn new(path: PathBuf, min_free: u64) -> Space {
        Space {
            path,
            min_free: AtomicU64::new(min_free),
            free: AtomicU64::new(u64::MAX),
            read_at: AtomicU64::new(0),
            admitted: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    pub(crate) fn set_min_free(&self, bytes: u64) {
        self.min_free.store(bytes, Ordering::Relaxed);
        // Take effect at the next check, not after the cache expires.
        self.read_at.store(0, Ordering::Relaxed);
    }

    pub(crate) fn min_free(&self) -> u64 {
        self.min_free.load(Ordering::Relaxed)
    }

    /// Free bytes on the file system (`u64::MAX` when it cannot be read: then RocksDB is
    /// left to try, and report).
    pub(crate) fn free(&self) -> u64 {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1;
        let at = self.read_at.load(Ordering::Relaxed);
        if at != 0 && now.saturating_sub(at) < CHECK_EVERY_MS {
            return self.free.load(Ordering::Relaxed);
        }
        let free = match rustix::fs::statvfs(&self.path) {
            Ok(st) => st.f_bavail.saturating_mul(st.f_frsize),
            Err(_) => u64::MAX,
        };
        self.free.store(free, Ordering::Relaxed);
        self.read_at.store(now, Ordering::Relaxed);
        self.admitted.store(0, Ordering::Relaxed);
        free
    }

    /// Whether new data is refused now (below the watermark).
    pub(crate) fn is_low(&self) -> bool {
        let min_free = self.min_free();
        min_free > 0 && self.free() < min_free
    }

    /// Whether free space is below twice the watermark: the margin in which the broker sums
    /// up the audit records clients cause, so that churn alone never brings the disk down
    /// to where anyone's data is refused.
    pub(crate) fn is_nearly_low(&self) -> bool {
        let min_free = self.min_free();
        min_free > 0 && self.free() < min_free.saturating_mul(2)
    }

    /// `Err(DiskLow)` if a batch of `class` and `bytes` may not be written now, with
    /// `pending` bytes waiting for the writer; otherwise counts it as admitted.
    pub(crate) fn admit(
        &self,
        class: Class,
        bytes: usize,
        pending: usize,
    ) -> Result<(), StorageError> {
        let min_free = self.min_free();
        let needed = match class {
            Class::Shrink => return Ok(()),
            Class::Reserved => 0,
            Class::Bookkeeping => min_free / 2,
            Class::NewData => min_free,
        };
        if min_free == 0 {
            return Ok(());
        }
        let free = self.free();
        let bytes = bytes as u64;
        // What the disk does not show yet: admitted since the reading, or waiting for the
        // writer (the two overlap, so the larger), and this batch.
        let owed = self
            .admitted
            .load(Ordering::Relaxed)
            .max(pending as u64)
            .saturating_add(bytes)
            .saturating_mul(2);
        let free = free.saturating_sub(owed);
        if needed > 0 && free < needed {
            return Err(StorageError::DiskLow { free, needed });
        }
        self.count_admitted(bytes);
        Ok(())
    }

    /// Counts bytes admitted without a check (the rest of a unit already admitted).
    pub(crate) fn count_admitted(&self, bytes: u64) {
        if self.min_free() > 0 {
            self.admitted.fetch_add(bytes, Ordering::Relaxed);
        }
    }
}
