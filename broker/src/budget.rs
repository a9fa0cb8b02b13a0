//! The broker-wide byte budget for what sessions hold: queued and in-flight deliveries,
//! subscriptions and the session records themselves. One counter that every session charges
//! and releases, so no number of sessions (reconnect churn with fresh client ids, say) can
//! make the broker hold more than `limits.max_session_bytes_total`. The counter is the
//! `session_bytes` gauge in [`Stats`].

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::stats::Stats;

/// A shared byte budget.
pub(crate) struct ByteBudget {
    stats: Arc<Stats>,
    limit: usize,
}

impl ByteBudget {
    pub fn new(stats: Arc<Stats>, limit: usize) -> Self {
        ByteBudget { stats, limit }
    }

    /// Takes `bytes` from the budget; false (and nothing taken) if that would pass the
    /// limit.
    pub fn try_charge(&self, bytes: usize) -> bool {
        let used = &self.stats.session_bytes;
        let before = used.fetch_add(bytes, Ordering::Relaxed);
        if before.saturating_add(bytes) > self.limit {
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
}
