//! The on-disk side of a persistent session (clean start 0 / expiry > 0): every change to
//! its state is mirrored to the store by the `SessionState` method that makes it, under the
//! session's lock, so the writer sees one session's changes in the order they happened.
//!
//! The queue is split: memory holds what is about to be sent, the store holds everything
//! not yet acknowledged. While the session is offline — or once its memory queue is full —
//! new messages go to disk only (`on_disk`, from `cursor`), and the attached connection
//! pages them back in a batch at a time (`page_in`), so a million messages queued for
//! offline sessions cost disk, not memory.
//!
//! A message queued for several persistent sessions at once is stored once and referred to
//! (see `persist::shared`): the session keeps which of its stored messages are such
//! references (`refs`, 16 bytes each, bounded by its stored-message limit) and gives its
//! hold back whenever one leaves its queue, deleting the message if it held the last.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use messs_storage::sessions::{QueueEntry, SessionPrefix};
use messs_storage::{Batch, StorageError, Store, Ticket};

use crate::persist::shared::SharedMessages;
use crate::session::TenantId;
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
    /// The session's tenant (shared messages are the tenant's).
    pub tenant: TenantId,
    /// Who holds which shared message.
    pub shared: Arc<SharedMessages>,
    /// Stored messages that refer to a shared message: (sequence number, message id), in
    /// sequence order.
    pub refs: std::collections::VecDeque<(u64, u64)>,
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
    /// QoS 1 messages in flight per group record (keyed by its first sequence number): the
    /// record is deleted when the last of them is acknowledged. Bounded by the window.
    pub groups: std::collections::BTreeMap<u64, u32>,
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
pub(crate) fn read_page(p: &PageIn) -> Result<Vec<QueueEntry>, StorageError> {
    p.store.wait_written()?;
    p.store
        .read_queue_entries(&p.prefix, p.from, p.limit, PAGE_BYTES)
}

impl SessionDisk {
    /// The mirror of a session whose next stored message gets `next_seq`, with nothing
    /// stored or on disk yet.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        session_id: u64,
        prefix: SessionPrefix,
        tenant: TenantId,
        shared: Arc<SharedMessages>,
        limits: DiskLimits,
        stats: Arc<Stats>,
        next_seq: u64,
    ) -> Self {
        SessionDisk {
            store,
            session_id,
            prefix,
            tenant,
            shared,
            refs: Default::default(),
            limits,
            stats,
            next_seq,
            stored: 0,
            stored_bytes: 0,
            on_disk: 0,
            cursor: next_seq,
            disk_high: 0,
            paging: false,
            retry_at_ms: 0,
            restored_inflight: Default::default(),
            deferred: Default::default(),
            groups: Default::default(),
        }
    }

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
                // The writer logs when refusals start and end; the metrics count them.
                tracing::debug!(error = %e, "session change not stored");
                false
            }
        }
    }

    /// Adds changes to the deferred batch (see `deferred`). What is deferred are deletes of
    /// acknowledged (or expired, or sent QoS 0) messages and QoS 1 in-flight packet ids:
    /// on a disk too full for bookkeeping the deletes still go through.
    pub fn defer(&self, mut batch: Batch) {
        batch.deletes_survive_refusal();
        self.deferred.borrow_mut().append(&mut batch);
    }

    /// Submits the deferred changes, if any. They hold no new data, so the writer never
    /// refuses them for being behind.
    pub fn flush_deferred(&self) {
        let deferred = std::mem::take(&mut *self.deferred.borrow_mut());
        if !deferred.is_empty() {
            if let Err(e) = self.store.submit(deferred, None) {
                tracing::debug!(error = %e, "session changes not stored");
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

    /// Records that stored message `seq` refers to shared message `id` (its hold taken).
    pub fn note_ref(&mut self, seq: u64, id: u64) {
        match self.refs.back() {
            Some(&(last, _)) if last > seq => {
                let at = self.refs.partition_point(|&(s, _)| s < seq);
                self.refs.insert(at, (seq, id));
            }
            _ => self.refs.push_back((seq, id)),
        }
    }

    /// Stored message `seq` leaves the queue: if it referred to a shared message, gives
    /// the hold back, and deletes the message with `b` if it was the last.
    pub fn release_ref(&mut self, seq: u64, b: &mut Batch) {
        let at = match self.refs.front() {
            Some(&(first, _)) if first == seq => 0,
            _ => match self.refs.binary_search_by_key(&seq, |&(s, _)| s) {
                Ok(at) => at,
                Err(_) => return,
            },
        };
        if let Some((_, id)) = self.refs.remove(at) {
            self.release_shared(id, b);
        }
    }

    /// Gives back every hold (the session ends), deleting with `b` what it held last.
    pub fn release_all_refs(&mut self, b: &mut Batch) {
        for (_, id) in std::mem::take(&mut self.refs) {
            self.release_shared(id, b);
        }
    }

    fn release_shared(&self, id: u64, b: &mut Batch) {
        if self.shared.release(id) {
            if let Err(e) = self.store.delete_shared_message(b, &self.tenant, id) {
                tracing::warn!(error = %e, "shared message not deleted");
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::ByteBudget;
    use crate::message::{Delivery, Message, MessageProperties};
    use crate::session::{SessionLimits, SessionState};
    use messs_codec::{QoS, QosPid, TopicName};
    use messs_storage::StoreOptions;

    fn delivery(n: u8) -> Delivery {
        Delivery {
            message: Arc::new(Message {
                topic: TopicName::new("t").unwrap(),
                payload: bytes::Bytes::copy_from_slice(&[n]),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: MessageProperties::default(),
                expires_at: None,
                origin: 0,
            }),
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: Vec::new(),
            stored_seq: 0,
        }
    }

    fn taken(st: &mut SessionState) -> Vec<u8> {
        let mut out: Vec<(Delivery, QosPid)> = Vec::new();
        st.take_batch(0, 100, 100, usize::MAX, &mut out);
        out.iter().map(|(d, _)| d.message.payload[0]).collect()
    }

    /// A page read before the connection left and came back (putting its memory queue back
    /// on disk, below the page) must not jump the queue: order is kept.
    #[test]
    fn a_stale_page_in_is_dropped_and_order_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(StoreOptions::new(dir.path())).unwrap();
        let stats = Arc::new(Stats::default());
        let budget = Arc::new(ByteBudget::new(stats.clone(), usize::MAX));
        let limits = SessionLimits {
            max_queued: 3,
            max_queued_bytes: usize::MAX,
            max_subscriptions: 10,
            max_subscription_bytes: usize::MAX,
            queue_full: Default::default(),
        };
        let mut st = SessionState::new(limits, budget, Arc::default(), 0);
        let limits = DiskLimits {
            max_messages: 100,
            max_bytes: usize::MAX,
        };
        let prefix = SessionPrefix::new("t", "c").unwrap();
        let shared = Arc::new(SharedMessages::new(1, stats.clone()));
        st.make_durable(SessionDisk::new(
            store,
            1,
            prefix,
            Arc::from("t"),
            shared,
            limits,
            stats,
            1,
        ));
        let generation = st.attach(60);
        // 1-3 in memory (its limit), 4-6 on disk only.
        for n in 1..=6 {
            st.push(delivery(n), || true, None, None).unwrap();
        }
        let stale = st.page_in_request(0).expect("a page-in from 4");
        assert_eq!(stale.from, 4);
        // The connection leaves (1-3 go back to disk) and a new one attaches.
        st.detach(generation, 0);
        st.attach(60);
        let page = read_page(&stale);
        assert_eq!(st.page_in_done(page, stale.from, 0).expired, 0);
        assert!(taken(&mut st).is_empty(), "the stale page was not taken in");
        let fresh = st.page_in_request(0).expect("a page-in from 1");
        assert_eq!(fresh.from, 1);
        let page = read_page(&fresh);
        st.page_in_done(page, fresh.from, 0);
        assert_eq!(taken(&mut st), vec![1, 2, 3, 4, 5, 6]);
    }
}
