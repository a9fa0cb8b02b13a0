//! The broker-wide byte budget for what sessions hold: queued and in-flight deliveries,
//! subscriptions and the session records themselves. One counter that every session charges
//! and releases, so no number of sessions (reconnect churn with fresh client ids, say) can
//! make the broker hold more than `limits.max_session_bytes_total`. The counter is the
//! `session_bytes` gauge in [`Stats`].
//!
//! The budget is shared out in tiers, so that subscribers that never read cannot take it
//! all: sessions whose queues already hold [`SMALL_QUEUE`] bytes or more may fill it to one
//! half, sessions with small queues (a client that keeps up) to three quarters, and the
//! last quarter is kept for session records and subscriptions, so new clients still get in.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::stats::Stats;

/// A shared byte budget.
/// A session queue at least this large (queued and in-flight bytes) counts as big.
pub(crate) const SMALL_QUEUE: usize = 256 * 1024;

pub(crate) struct ByteBudget {
    stats: Arc<Stats>,
    limit: usize,
}

impl ByteBudget {
    pub fn new(stats: Arc<Stats>, limit: usize) -> Self {
        ByteBudget { stats, limit }
    }

    /// Takes `bytes` for a session record or subscription; false (and nothing taken) if
    /// that would pass the limit.
    pub fn try_charge(&self, bytes: usize) -> bool {
        self.charge_within(bytes, self.limit)
    }

    /// Takes `bytes` for a message queued to a session already holding `held` bytes,
    /// within that session's tier (see the module header).
    pub fn try_charge_message(&self, bytes: usize, held: usize) -> bool {
        let tier = if held < SMALL_QUEUE {
            self.limit - self.limit / 4
        } else {
            self.limit / 2
        };
        self.charge_within(bytes, tier)
    }

    fn charge_within(&self, bytes: usize, limit: usize) -> bool {
        let used = &self.stats.session_bytes;
        let before = used.fetch_add(bytes, Ordering::Relaxed);
        if before.saturating_add(bytes) > limit {
            used.fetch_sub(bytes, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Gives `bytes` back.
    pub fn release(&self, bytes: usize) {
        if bytes > 0 {
            self.stats.session_bytes.fetch_sub(bytes, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_within_the_limit_only() {
        let stats = Arc::new(Stats::default());
        let budget = ByteBudget::new(stats.clone(), 100);
        assert!(budget.try_charge(60));
        assert!(!budget.try_charge(41));
        assert_eq!(stats.session_bytes.load(Ordering::Relaxed), 60);
        assert!(budget.try_charge(40));
        budget.release(100);
        assert_eq!(stats.session_bytes.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn big_queues_fill_half_small_ones_three_quarters_sessions_all() {
        let stats = Arc::new(Stats::default());
        let budget = ByteBudget::new(stats.clone(), 100);
        assert!(budget.try_charge_message(50, SMALL_QUEUE));
        assert!(
            !budget.try_charge_message(1, SMALL_QUEUE),
            "big queues: half"
        );
        assert!(budget.try_charge_message(25, 0));
        assert!(
            !budget.try_charge_message(1, 0),
            "small queues: three quarters"
        );
        assert!(
            budget.try_charge(25),
            "sessions and subscriptions: all of it"
        );
        assert!(!budget.try_charge(1));
    }
}
