//! Store once: a message queued for two or more persistent sessions is written once (a
//! shared message in the store) and each queue holds a reference to it. This is the count
//! of those references, per shared message: the publisher takes one hold per session it
//! is about to queue the message for, plus one of its own while it fans out (so a
//! subscriber that acknowledges at once cannot make the count reach zero before the other
//! queues hold theirs); each queue gives its hold back when its reference goes
//! (acknowledged, expired, quarantined, or the session ended). Whoever gives back the last
//! hold deletes the message, in the same write as its own change.
//!
//! The count lives in memory only: at start-up it is rebuilt from the references the
//! queues hold, and shared messages nobody refers to any more are swept then.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use messs_storage::{Batch, Store, Ticket};

use crate::stats::Stats;

/// One hold on a shared message, handed with a delivery to a session's queue (see
/// `SessionState::push`): the queue keeps it with its reference, or gives it back.
pub(crate) struct SharedHold {
    id: u64,
    shared: Arc<SharedMessages>,
    store: Store,
    tenant: Arc<str>,
}

impl SharedHold {
    /// The shared message's id.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Gives one hold back (a delivery refused, or the publisher's own at the end of its
    /// fan-out); the last one deletes the message, with `ticket` (the publisher's unit).
    pub(crate) fn give_back(&self, ticket: Option<&Ticket>) {
        if self.shared.release(self.id) {
            let mut b = Batch::new();
            let deleted = self
                .store
                .delete_shared_message(&mut b, &self.tenant, self.id)
                .and_then(|()| self.store.submit(b, ticket));
            if let Err(e) = deleted {
                tracing::warn!(error = %e, "shared message not deleted; the next start sweeps it");
            }
        }
    }
}

/// The reference counts of shared messages (see the module header).
pub(crate) struct SharedMessages {
    holds: Mutex<HashMap<u64, u32>>,
    /// Ids start from the start time in microseconds, so they stay unique across
    /// restarts (as long as fewer than a million are made per second of uptime).
    id_base: u64,
    next_id: AtomicU64,
    stats: Arc<Stats>,
}

impl SharedMessages {
    /// No shared message yet; ids counted from `now_ms`.
    pub(crate) fn new(now_ms: u64, stats: Arc<Stats>) -> Self {
        SharedMessages {
            holds: Mutex::new(HashMap::new()),
            id_base: now_ms.saturating_mul(1000),
            next_id: AtomicU64::new(1),
            stats,
        }
    }

    fn holds(&self) -> MutexGuard<'_, HashMap<u64, u32>> {
        self.holds.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new shared message id with `holds` holds on it.
    pub(crate) fn create(&self, holds: u32) -> u64 {
        let id = self.id_base + self.next_id.fetch_add(1, Ordering::Relaxed);
        self.holds().insert(id, holds);
        self.stats.shared_messages.fetch_add(1, Ordering::Relaxed);
        id
    }

    /// Stores `record` once for `sessions` persistent sessions of `tenant` about to queue
    /// it, with `ticket` (the publisher's unit): returns the publisher's hold, which also
    /// stands for each session's (`SharedHold` is handed to each enqueue by reference;
    /// every enqueue keeps or gives back one hold, and the publisher gives back its own
    /// when the fan-out ends). `None` if it could not be stored: the sessions then store
    /// the message each.
    pub(crate) fn store_once(
        self: &Arc<Self>,
        store: &Store,
        tenant: &Arc<str>,
        record: &messs_storage::sessions::MessageRecord,
        sessions: usize,
        ticket: Option<&Ticket>,
    ) -> Option<SharedHold> {
        let holds = u32::try_from(sessions.checked_add(1)?).ok()?;
        let id = self.create(holds);
        let mut b = Batch::new();
        let stored = store
            .put_shared_message(&mut b, tenant, id, record)
            .and_then(|()| store.submit(b, ticket));
        if let Err(e) = stored {
            tracing::debug!(error = %e, "shared message not stored");
            let mut holds = self.holds();
            if holds.remove(&id).is_some() {
                self.stats.shared_messages.fetch_sub(1, Ordering::Relaxed);
            }
            return None;
        }
        Some(SharedHold {
            id,
            shared: self.clone(),
            store: store.clone(),
            tenant: tenant.clone(),
        })
    }

    /// One more hold on `id` (a reference restored at start-up).
    pub(crate) fn hold(&self, id: u64) {
        let mut holds = self.holds();
        let n = holds.entry(id).or_insert_with(|| {
            self.stats.shared_messages.fetch_add(1, Ordering::Relaxed);
            0
        });
        *n = n.saturating_add(1);
    }

    /// Gives back one hold on `id`; true if it was the last (the caller deletes the
    /// message with its own write).
    pub(crate) fn release(&self, id: u64) -> bool {
        let mut holds = self.holds();
        let Some(n) = holds.get_mut(&id) else {
            return false;
        };
        *n = n.saturating_sub(1);
        if *n > 0 {
            return false;
        }
        holds.remove(&id);
        self.stats.shared_messages.fetch_sub(1, Ordering::Relaxed);
        true
    }

    /// Whether anything holds `id` (the start-up sweep keeps those).
    pub(crate) fn is_held(&self, id: u64) -> bool {
        self.holds().contains_key(&id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_release_is_told_and_ids_are_unique() {
        let stats = Arc::new(Stats::default());
        let shared = SharedMessages::new(1_000, stats.clone());
        let a = shared.create(3);
        let b = shared.create(1);
        assert_ne!(a, b);
        assert_eq!(stats.shared_messages.load(Ordering::Relaxed), 2);
        assert!(!shared.release(a));
        assert!(!shared.release(a));
        assert!(shared.release(a), "the third of three");
        assert!(!shared.release(a), "gone: nothing more to tell");
        assert!(!shared.is_held(a) && shared.is_held(b));
        shared.hold(b);
        assert!(!shared.release(b));
        assert!(shared.release(b));
        assert_eq!(stats.shared_messages.load(Ordering::Relaxed), 0);
    }
}
