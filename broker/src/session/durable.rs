//! The on-disk side of a persistent session (clean start 0 / expiry > 0): every change to
//! its state is mirrored to the store by the `SessionState` method that makes it, under the
//! session's lock, so the writer sees one session's changes in the order they happened.
//!
//! The queue is split: memory holds what is about to be sent, the store holds everything
//! not yet acknowledged. While the session is offline — or once its memory queue is full —
//! new messages go to disk only (`on_disk`, from `cursor`), and the attached connection
//! pages them back in a batch at a time (`page_in`), so a million messages queued for
//! offline sessions cost disk, not memory.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use messs_storage::sessions::{QueuedRecord, SessionPrefix};
use messs_storage::{Batch, StorageError, Store, Ticket};

use crate::stats::Stats;

/// Limits on what one persistent session may keep in the store.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DiskLimits {
    pub max_messages: u64,
    pub max_bytes: usize,
}

/// The store, the session's key prefix, and where its queue stands on disk.
pub(crate) struct SessionDisk {
    pub store: Store,
    /// The session's id, written into its record.
    pub session_id: u64,
    pub prefix: SessionPrefix,
    pub limits: DiskLimits,
    pub stats: Arc<Stats>,
    /// Sequence number of the next stored message.
    pub next_seq: u64,
    /// Messages stored (in memory and on disk) and their bytes, for the limits.
    pub stored: u64,
    pub stored_bytes: usize,
    /// Messages on disk only, all at or after `cursor`; the highest of them.
    pub on_disk: u64,
    pub cursor: u64,
    pub disk_high: u64,
    /// A page-in is running.
    pub paging: bool,
    /// After a failed page-in, not before this (Unix ms).
    pub retry_at_ms: u64,
    /// Sequence numbers restored into memory as in-flight at start-up: a page-in skips them.
    pub restored_inflight: BTreeSet<u64>,
    /// Changes no acknowledgement waits on (deletes at PUBACK, in-flight packet ids),
    /// collected over one pass of the connection and submitted as one request: at its end
    /// (`flush_deferred`), or before any other change of this session, so the store still
    /// sees the session's changes in order. (A cell: the state's lock already serialises.)
    pub deferred: std::cell::RefCell<Batch>,
}

/// A page-in to run on the blocking pool (see [`read_page`]).
pub(crate) struct PageIn {
    pub store: Store,
    pub prefix: SessionPrefix,
    pub from: u64,
    pub limit: usize,
}

/// Most messages read per page-in.
pub(crate) const PAGE: usize = 512;
/// About how many bytes a page-in reads.
const PAGE_BYTES: usize = 1 << 20;

/// Reads one page of a session's stored queue. Blocking: waits for the writer to finish
/// what was submitted before it (so every message counted as on disk is visible), then
/// reads.
pub(crate) fn read_page(p: &PageIn) -> Result<Vec<(u64, QueuedRecord)>, StorageError> {
    p.store.wait_written()?;
    p.store.read_queue(&p.prefix, p.from, p.limit, PAGE_BYTES)
}

impl SessionDisk {
    /// Submits `batch` (with `ticket`, whose acknowledgement waits on it); a refused batch
    /// fails the ticket, is logged, and returns false.
    pub fn submit(&self, batch: Batch, ticket: Option<&Ticket>) -> bool {
        self.flush_deferred();
        match self.store.submit(batch, ticket) {
            Ok(()) => true,
            Err(e) => {
                if let Some(t) = ticket {
                    t.fail();
                }
                tracing::warn!(error = %e, "session change not stored");
                false
            }
        }
    }

    /// Adds changes to the deferred batch (see `deferred`).
    pub fn defer(&self, mut batch: Batch) {
        self.deferred.borrow_mut().append(&mut batch);
    }

    /// Submits the deferred changes, if any. They hold no new data, so the writer never
    /// refuses them for being behind.
    pub fn flush_deferred(&self) {
        let deferred = std::mem::take(&mut *self.deferred.borrow_mut());
        if !deferred.is_empty() {
            if let Err(e) = self.store.submit(deferred, None) {
                tracing::warn!(error = %e, "session changes not stored");
            }
        }
    }

    /// Whether one more message of `cost` bytes fits the session's stored limits.
    pub fn has_room(&self, cost: usize) -> bool {
        self.stored < self.limits.max_messages
            && self.stored_bytes.saturating_add(cost) <= self.limits.max_bytes
    }

    /// Counts a message stored.
    pub fn count_stored(&mut self, cost: usize) {
        self.stored += 1;
        self.stored_bytes += cost;
    }

    /// Counts a message deleted from the store.
    pub fn count_deleted(&mut self, cost: usize) {
        self.stored = self.stored.saturating_sub(1);
        self.stored_bytes = self.stored_bytes.saturating_sub(cost);
    }

    /// Counts `seq` as kept on disk only.
    pub fn push_on_disk(&mut self, seq: u64) {
        if self.on_disk == 0 {
            self.cursor = seq;
        }
        self.on_disk += 1;
        self.disk_high = self.disk_high.max(seq);
        self.stats.queued_on_disk.fetch_add(1, Ordering::Relaxed);
    }

    /// `n` on-disk messages were paged in (or dropped).
    pub fn took_from_disk(&mut self, n: u64) {
        let n = n.min(self.on_disk);
        self.on_disk -= n;
        self.stats.queued_on_disk.fetch_sub(n, Ordering::Relaxed);
    }
}

impl Drop for SessionDisk {
    fn drop(&mut self) {
        self.stats
            .queued_on_disk
            .fetch_sub(self.on_disk, Ordering::Relaxed);
    }
}
