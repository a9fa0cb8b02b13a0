//! The one timer structure for session expiry and delayed wills: an ordered map from due
//! time to what is due, owned by the session table (`session::table`) and driven
//! by one task (`BrokerState::run_timers`). Scheduling and cancelling are map operations, so
//! a client that connects and disconnects in a loop leaves nothing behind — no task per
//! session, no timer that outlives its purpose. Due times are wall-clock (Unix
//! milliseconds) so they can be stored.
//!
//! A timer only says *when* to look: the table acts on a fired timer only if the session
//! still holds that very key (`SessionState::expiry_timer`, `PendingWill::timer`), so a
//! timer that a resume took back, or that raced one, changes nothing.
//!
//! The lock here is a leaf: it is taken under a session's lock, never the other way round.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

use crate::session::Session;
use crate::stats::Stats;

/// Identifies one scheduled timer: its due time and a tie-breaking sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct TimerKey {
    due_ms: u64,
    /// Never 0, so an `Option` of a key (in every session) is no larger than the key.
    seq: std::num::NonZeroU64,
}

/// What happens when a timer fires.
pub(crate) enum Due {
    /// The session's expiry interval passed with no connection: end it, if this timer is
    /// still the session's expiry timer.
    SessionExpiry(Arc<Session>),
    /// The will delay passed: publish the session's pending will.
    Will(Arc<Session>),
}

/// Pending timers.
pub(crate) struct Timers {
    entries: Mutex<(BTreeMap<TimerKey, Due>, std::num::NonZeroU64)>,
    /// Woken when a timer earlier than all others is scheduled.
    changed: Notify,
    stats: Arc<Stats>,
}

impl Timers {
    pub fn new(stats: Arc<Stats>) -> Self {
        Timers {
            entries: Mutex::new((BTreeMap::new(), std::num::NonZeroU64::MIN)),
            changed: Notify::new(),
            stats,
        }
    }

    fn lock(&self) -> MutexGuard<'_, (BTreeMap<TimerKey, Due>, std::num::NonZeroU64)> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Schedules `due` at `due_ms` (Unix milliseconds).
    pub fn schedule(&self, due_ms: u64, due: Due) -> TimerKey {
        let (key, earliest) = {
            let mut guard = self.lock();
            let (map, seq) = &mut *guard;
            *seq = seq.saturating_add(1);
            let key = TimerKey { due_ms, seq: *seq };
            map.insert(key, due);
            (key, map.keys().next() == Some(&key))
        };
        self.stats.timers.fetch_add(1, Ordering::Relaxed);
        if earliest {
            self.changed.notify_one();
        }
        key
    }

    /// Cancels a timer; true if it was still pending.
    pub fn cancel(&self, key: TimerKey) -> bool {
        let removed = self.lock().0.remove(&key).is_some();
        if removed {
            self.stats.timers.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    /// Removes and returns every timer due at `now_ms` (with its key), and the next due
    /// time after them.
    pub fn take_due(&self, now_ms: u64) -> (Vec<(TimerKey, Due)>, Option<u64>) {
        let mut due = Vec::new();
        let next = {
            let mut guard = self.lock();
            let map = &mut guard.0;
            while let Some(entry) = map.first_entry() {
                if entry.key().due_ms > now_ms {
                    break;
                }
                let key = *entry.key();
                due.push((key, entry.remove()));
            }
            map.keys().next().map(|k| k.due_ms)
        };
        if !due.is_empty() {
            self.stats.timers.fetch_sub(due.len(), Ordering::Relaxed);
        }
        (due, next)
    }

    /// Up to `n` pending session-expiry timers, the soonest first, and their sessions (a
    /// snapshot: nothing is removed). The caller must not hold this lock's users' locks
    /// in the other order: it only clones.
    pub fn first_session_expiries(&self, n: usize) -> Vec<(TimerKey, Arc<Session>)> {
        let guard = self.lock();
        guard
            .0
            .iter()
            .filter_map(|(k, due)| match due {
                Due::SessionExpiry(session) => Some((*k, session.clone())),
                _ => None,
            })
            .take(n)
            .collect()
    }

    /// Resolves when a timer earlier than the others was scheduled.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// Number of pending timers.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Arc<Session> {
        Arc::new(crate::session::unbounded_session(1, 1))
    }

    #[test]
    fn due_in_order_and_cancelled_ones_never() {
        let stats = Arc::new(Stats::default());
        let timers = Timers::new(stats.clone());
        let s = session();
        let late = timers.schedule(300, Due::Will(s.clone()));
        let early = timers.schedule(100, Due::SessionExpiry(s.clone()));
        let cancelled = timers.schedule(200, Due::Will(s.clone()));
        assert!(timers.cancel(cancelled));
        assert!(!timers.cancel(cancelled));
        assert_eq!(stats.timers.load(Ordering::Relaxed), 2);
        let (due, next) = timers.take_due(250);
        assert_eq!(due.len(), 1);
        assert!(matches!(due[0], (k, Due::SessionExpiry(_)) if k == early));
        assert_eq!(next, Some(300));
        assert!(early < late);
        let (due, next) = timers.take_due(300);
        assert_eq!(due.len(), 1);
        assert_eq!(next, None);
        assert_eq!(timers.len(), 0);
        assert_eq!(stats.timers.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn the_first_session_expiry_is_taken_past_wills() {
        let timers = Timers::new(Arc::new(Stats::default()));
        let (a, b) = (session(), Arc::new(crate::session::unbounded_session(2, 1)));
        timers.schedule(100, Due::Will(a.clone()));
        timers.schedule(300, Due::SessionExpiry(b.clone()));
        timers.schedule(200, Due::SessionExpiry(a.clone()));
        let first: Vec<u64> = timers
            .first_session_expiries(10)
            .iter()
            .map(|(_, s)| s.id)
            .collect();
        assert_eq!(first, [a.id, b.id], "session expiries only, soonest first");
        assert_eq!(timers.first_session_expiries(1).len(), 1);
        assert_eq!(timers.len(), 3, "a snapshot removes nothing");
    }
}
