//! The broker-wide byte budget for what sessions hold: queued and in-flight deliveries,
//! subscriptions and the session records themselves. One counter that every session charges
//! and releases, so no number of sessions (reconnect churn with fresh client ids, say) can
//! make the broker hold more than `limits.max_session_bytes_total`. The counter is the
//! `session_bytes` gauge in [`Stats`].
//!
//! The budget is shared out in tiers, so that subscribers that never read cannot take it
//! all: a session that is draining its queue, or whose queue is small (under
//! [`SMALL_QUEUE`]), may fill it to three quarters; one with a large queue it is not
//! draining (a client that does not read) only to one half; the last quarter is kept for
//! session records and subscriptions, so new clients still get in. Subscriptions on their
//! own may hold at most half of it ([`ByteBudget::try_charge_subscription`]): filters are
//! not messages, and however many an attacker's sessions hold, messages always keep a
//! quarter (the outside audit filled the whole budget with 60 KB filters, and every
//! QoS 1 message to a clean session was then acknowledged and dropped).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::stats::Stats;

/// A shared byte budget.
/// A session queue below this (queued and in-flight bytes) counts as small.
pub(crate) const SMALL_QUEUE: usize = 256 * 1024;

/// How a session stands when a message is charged for it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Standing {
    /// Bytes it holds already.
    pub held: usize,
    /// It took from its queue recently.
    pub draining: bool,
}

pub(crate) struct ByteBudget {
    stats: Arc<Stats>,
    limit: usize,
}

impl ByteBudget {
    pub fn new(stats: Arc<Stats>, limit: usize) -> Self {
        ByteBudget { stats, limit }
    }

    /// Takes `bytes` for a session record; false (and nothing taken) if that would pass
    /// the limit.
    pub fn try_charge(&self, bytes: usize) -> bool {
        self.charge_within(bytes, self.limit)
    }

    /// Takes `bytes` for a subscription: within half of the limit for all subscriptions
    /// together (the `subscription_bytes` gauge), and within the limit.
    pub fn try_charge_subscription(&self, bytes: usize) -> bool {
        let subs = &self.stats.subscription_bytes;
        let before = subs.fetch_add(bytes, Ordering::Relaxed);
        if before.saturating_add(bytes) > self.limit / 2 || !self.try_charge(bytes) {
            subs.fetch_sub(bytes, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Gives back `bytes` a subscription took.
    pub fn release_subscription(&self, bytes: usize) {
        if bytes > 0 {
            self.stats
                .subscription_bytes
                .fetch_sub(bytes, Ordering::Relaxed);
            self.release(bytes);
        }
    }

    /// Takes `bytes` for a message queued to a session, within that session's tier (see
    /// the module header).
    pub fn try_charge_message(&self, bytes: usize, standing: Standing) -> bool {
        let tier = if standing.draining || standing.held < SMALL_QUEUE {
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

    /// Takes `bytes` whatever the limit: state restored from the store at start-up, which
    /// exists already and must be held (it can push the total past the limit; new charges
    /// are then refused until it drains).
    pub fn force_charge(&self, bytes: usize) {
        self.stats.session_bytes.fetch_add(bytes, Ordering::Relaxed);
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
    fn stuck_queues_fill_half_draining_or_small_ones_three_quarters_sessions_all() {
        let stats = Arc::new(Stats::default());
        let budget = ByteBudget::new(stats.clone(), 100);
        let stuck = Standing {
            held: SMALL_QUEUE,
            draining: false,
        };
        let draining = Standing {
            held: SMALL_QUEUE,
            draining: true,
        };
        let small = Standing {
            held: 0,
            draining: false,
        };
        assert!(budget.try_charge_message(50, stuck));
        assert!(
            !budget.try_charge_message(1, stuck),
            "stuck big queues: half"
        );
        assert!(budget.try_charge_message(20, draining));
        assert!(budget.try_charge_message(5, small));
        assert!(!budget.try_charge_message(1, small), "three quarters");
        assert!(!budget.try_charge_message(1, draining), "three quarters");

        assert!(
            budget.try_charge(25),
            "sessions and subscriptions: all of it"
        );
        assert!(!budget.try_charge(1));
    }

    #[test]
    fn subscriptions_hold_at_most_half_and_messages_keep_their_share() {
        let stats = Arc::new(Stats::default());
        let budget = ByteBudget::new(stats.clone(), 100);
        assert!(budget.try_charge_subscription(50));
        assert!(!budget.try_charge_subscription(1), "half for subscriptions");
        assert_eq!(stats.subscription_bytes.load(Ordering::Relaxed), 50);
        let small = Standing {
            held: 0,
            draining: false,
        };
        assert!(
            budget.try_charge_message(25, small),
            "messages still get in"
        );
        budget.release_subscription(50);
        assert_eq!(stats.subscription_bytes.load(Ordering::Relaxed), 0);
        assert_eq!(stats.session_bytes.load(Ordering::Relaxed), 25);
        // Within the half but past the whole: refused, nothing taken.
        assert!(budget.try_charge(70));
        assert!(!budget.try_charge_subscription(10));
        assert_eq!(stats.subscription_bytes.load(Ordering::Relaxed), 0);
    }
}
