//! The one timer structure for every connection's keep-alive, driven by one task
//! ([`KeepAliveTimers::run`]). A boxed `tokio::time::Sleep` per connection was 112 bytes
//! plus its allocation in every idle connection; an entry here is 32 bytes in a B-tree.
//!
//! An entry says only *when to look*: when it is due, the connection is woken through its
//! session (`Session::keep_alive_due`) and asks its keep-alive rule what that means. Packets
//! move the deadline without touching this map (the rule rearms when an entry fires early),
//! so a busy connection costs it one operation per keep-alive period, not one per packet.
//! A connection holds at most one entry and cancels it when it ends. Times are tokio's
//! monotonic clock (paused-time tests drive it; a wall-clock step moves nothing).

use std::collections::BTreeMap;
use std::num::NonZeroU64;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::session::Session;
use crate::stats::Stats;

/// Identifies one connection's entry: its due time and a tie-breaking sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct KeepAliveKey {
    /// On the `clock::mono_ns` scale.
    due_ns: u64,
    /// Never 0, so an `Option` of a key is no larger than the key.
    seq: NonZeroU64,
}

/// Most entries fired under one hold of the lock.
const FIRE_BATCH: usize = 4096;

type Entries = (BTreeMap<KeepAliveKey, (Arc<Session>, u64)>, NonZeroU64);

/// Every connection's next keep-alive check.
pub(crate) struct KeepAliveTimers {
    entries: Mutex<Entries>,
    /// Woken when an entry earlier than all others is scheduled.
    changed: Notify,
    stats: Arc<Stats>,
}

impl KeepAliveTimers {
    pub fn new(stats: Arc<Stats>) -> Self {
        KeepAliveTimers {
            entries: Mutex::new((BTreeMap::new(), NonZeroU64::MIN)),
            changed: Notify::new(),
            stats,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes the connection of `generation` on `session` at `at`.
    pub fn schedule(&self, at: Instant, session: Arc<Session>, generation: u64) -> KeepAliveKey {
        let due_ns = crate::clock::mono_ns_at(at);
        let (key, earliest) = {
            let mut guard = self.lock();
            let (map, seq) = &mut *guard;
            *seq = seq.saturating_add(1);
            let key = KeepAliveKey { due_ns, seq: *seq };
            map.insert(key, (session, generation));
            (key, map.keys().next() == Some(&key))
        };
        self.stats.keep_alive_timers.fetch_add(1, Ordering::Relaxed);
        if earliest {
            self.changed.notify_one();
        }
        key
    }

    /// Cancels an entry (nothing if it already fired).
    pub fn cancel(&self, key: KeepAliveKey) {
        if self.lock().0.remove(&key).is_some() {
            self.stats.keep_alive_timers.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Wakes connections whose entry is due at `now` (removing the entries), at most
    /// `FIRE_BATCH` of them, and returns when the next one is due (at or before `now` if
    /// more are). In batches so that a million connections due at once (they all connected
    /// in one storm) hold the lock, which every connect and disconnect takes, for a batch at
    /// a time, and the list of woken ones stays small.
    pub fn fire_due(&self, now: Instant) -> Option<Instant> {
        let now_ns = crate::clock::mono_ns_at(now);
        let mut due = Vec::new();
        let next = {
            let mut guard = self.lock();
            let map = &mut guard.0;
            while due.len() < FIRE_BATCH {
                let Some(entry) = map.first_entry() else {
                    break;
                };
                if entry.key().due_ns > now_ns {
                    break;
                }
                due.push(entry.remove());
            }
            map.keys().next().map(|k| k.due_ns)
        };
        if !due.is_empty() {
            self.stats
                .keep_alive_timers
                .fetch_sub(due.len(), Ordering::Relaxed);
        }
        // Woken outside the lock: a woken connection may schedule its next entry at once.
        for (session, generation) in due {
            session.keep_alive_due(generation);
        }
        next.map(crate::clock::instant_at_ns)
    }

    /// Fires entries as they fall due until `shutdown` (one task for the whole broker).
    pub async fn run(&self, shutdown: tokio_util::sync::CancellationToken) {
        loop {
            let now = Instant::now();
            let next = self.fire_due(now);
            if next.is_some_and(|at| at <= now) {
                // More are due: let the woken connections run before the next batch.
                tokio::task::yield_now().await;
                continue;
            }
            // Checked at least once a minute: cheap, and no wait hangs on a lost wake-up.
            let wake = next.unwrap_or_else(|| Instant::now() + std::time::Duration::from_secs(60));
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.changed.notified() => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    /// Entries pending.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::{Context, Poll};
    use std::time::Duration;

    fn poll_wake(session: &Session, generation: u64) -> Poll<crate::session::Wake> {
        let waker = std::task::Waker::noop();
        session.poll_woken(&mut Context::from_waker(waker), generation)
    }

    #[tokio::test(start_paused = true)]
    async fn a_due_entry_wakes_its_connection_once_and_a_cancelled_one_never() {
        let stats = Arc::new(Stats::default());
        let timers = KeepAliveTimers::new(stats.clone());
        let a = Arc::new(crate::session::unbounded_session(1, 1));
        let b = Arc::new(crate::session::unbounded_session(2, 1));
        assert!(poll_wake(&a, 1).is_pending());
        assert!(poll_wake(&b, 1).is_pending());
        let start = Instant::now();
        timers.schedule(start + Duration::from_secs(2), a.clone(), 1);
        let cancelled = timers.schedule(start + Duration::from_secs(1), b.clone(), 1);
        assert_eq!(stats.keep_alive_timers.load(Ordering::Relaxed), 2);
        timers.cancel(cancelled);
        assert_eq!(
            timers.fire_due(start + Duration::from_millis(1500)),
            Some(start + Duration::from_secs(2))
        );
        assert!(poll_wake(&b, 1).is_pending(), "cancelled: never fires");
        assert!(poll_wake(&a, 1).is_pending(), "not due yet");
        assert_eq!(timers.fire_due(start + Duration::from_secs(2)), None);
        assert_eq!(
            poll_wake(&a, 1),
            Poll::Ready(crate::session::Wake { keep_alive: true })
        );
        assert_eq!(timers.len(), 0);
        assert_eq!(stats.keep_alive_timers.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn many_due_at_once_are_fired_a_batch_at_a_time() {
        let timers = KeepAliveTimers::new(Arc::new(Stats::default()));
        let s = Arc::new(crate::session::unbounded_session(1, 1));
        let at = Instant::now() + Duration::from_secs(1);
        for generation in 0..=FIRE_BATCH as u64 {
            timers.schedule(at, s.clone(), generation);
        }
        let due = timers.fire_due(at);
        assert!(due.is_some_and(|next| next <= at), "more are due");
        assert_eq!(timers.len(), 1, "one batch fired");
        assert_eq!(timers.fire_due(at), None);
        assert_eq!(timers.len(), 0);
    }
}
