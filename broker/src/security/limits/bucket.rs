//! A token bucket: `rate` tokens a second, holding at most `burst`. Time is an argument
//! (microseconds on any monotonic clock), so the arithmetic is tested without waiting.
//!
//! Two ways to spend: `try_take` refuses when the tokens are not there (admission: a
//! connection attempt is refused, never owed), `charge` always takes and may leave the
//! bucket in debt (throttling: the packet was already read; the debt is how long reading
//! must pause before the sender is back within its rate).

use std::time::Duration;

/// A token bucket; tokens are kept as `f64` so fractional refills are not lost.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Tokens per microsecond.
    per_us: f64,
    burst: f64,
    tokens: f64,
    last_us: u64,
}

impl TokenBucket {
    /// A full bucket refilling at `rate` a second, holding at most `burst` tokens (0: one
    /// second's worth; never less than one).
    pub fn new(rate: u64, burst: u64, now_us: u64) -> Self {
        let burst = if burst == 0 { rate } else { burst }.max(1) as f64;
        TokenBucket {
            per_us: rate as f64 / 1e6,
            burst,
            tokens: burst,
            last_us: now_us,
        }
    }

    fn refill(&mut self, now_us: u64) {
        let elapsed = now_us.saturating_sub(self.last_us);
        self.last_us = self.last_us.max(now_us);
        self.tokens = (self.tokens + elapsed as f64 * self.per_us).min(self.burst);
    }

    /// Takes `n` tokens if there are that many; otherwise takes none and says no.
    pub fn try_take(&mut self, n: u64, now_us: u64) -> bool {
        self.refill(now_us);
        if self.tokens >= n as f64 {
            self.tokens -= n as f64;
            true
        } else {
            false
        }
    }

    /// Takes `n` tokens, going into debt if there are fewer; returns how long until the
    /// bucket is out of debt (zero if it is not in debt).
    pub fn charge(&mut self, n: u64, now_us: u64) -> Duration {
        self.refill(now_us);
        self.tokens -= n as f64;
        self.debt_time()
    }

    /// Whether the bucket is in debt at `now_us` (before anything more is taken).
    pub fn in_debt(&mut self, now_us: u64) -> bool {
        self.refill(now_us);
        self.tokens < 0.0
    }

    /// How long until the bucket is out of debt.
    pub fn debt_time(&self) -> Duration {
        if self.tokens >= 0.0 || self.per_us <= 0.0 {
            return Duration::ZERO;
        }
        Duration::from_micros((-self.tokens / self.per_us).ceil() as u64)
    }

    /// Whether the bucket has refilled completely by `now_us` (nothing to remember).
    pub fn is_full(&self, now_us: u64) -> bool {
        let elapsed = now_us.saturating_sub(self.last_us) as f64;
        self.tokens + elapsed * self.per_us >= self.burst
    }

    /// Time to refill the whole burst from empty.
    pub fn burst_time(&self) -> Duration {
        if self.per_us <= 0.0 {
            return Duration::MAX;
        }
        Duration::from_micros((self.burst / self.per_us).ceil() as u64)
    }

    /// Changes the rate and burst (a reloaded limit), keeping the tokens it has (capped).
    pub fn set_limit(&mut self, rate: u64, burst: u64, now_us: u64) {
        self.refill(now_us);
        self.per_us = rate as f64 / 1e6;
        self.burst = if burst == 0 { rate } else { burst }.max(1) as f64;
        self.tokens = self.tokens.min(self.burst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    #[test]
    fn admission_takes_the_burst_then_the_rate() {
        let mut b = TokenBucket::new(10, 20, 0);
        assert_eq!((0..25).filter(|_| b.try_take(1, 0)).count(), 20);
        // Half a second later: five more, not six.
        assert_eq!((0..10).filter(|_| b.try_take(1, S / 2)).count(), 5);
        // A long quiet time refills to the burst, not beyond.
        assert_eq!((0..100).filter(|_| b.try_take(1, 100 * S)).count(), 20);
    }

    #[test]
    fn a_charge_past_the_tokens_is_debt_repaid_at_the_rate() {
        let mut b = TokenBucket::new(100, 10, 0);
        assert_eq!(b.charge(10, 0), Duration::ZERO);
        // Five more: 5 tokens of debt at 100/s is 50 ms.
        assert_eq!(b.charge(5, 0), Duration::from_millis(50));
        assert_eq!(b.debt_time(), Duration::from_millis(50));
        // 30 ms later 20 ms are left; after 50 ms, none.
        assert_eq!(b.charge(0, 30_000), Duration::from_millis(20));
        assert_eq!(b.charge(0, 50_000), Duration::ZERO);
        assert!(!b.try_take(1, 50_000));
        assert!(b.try_take(1, 60_000));
    }

    #[test]
    fn a_sender_paced_by_its_debt_gets_the_rate() {
        // Charge a message, wait out the debt, repeat: 1,000 messages take 10 s at 100/s
        // (after the burst of 50 that was free).
        let mut b = TokenBucket::new(100, 50, 0);
        let mut now = 0;
        for _ in 0..1000 {
            now += b.charge(1, now).as_micros() as u64;
        }
        let expected = (1000 - 50) as f64 / 100.0;
        assert!(((now as f64 / 1e6) - expected).abs() < 0.02, "{now}");
    }

    #[test]
    fn zero_burst_means_a_second_of_rate_and_limits_reload() {
        let mut b = TokenBucket::new(7, 0, 0);
        assert_eq!((0..10).filter(|_| b.try_take(1, 0)).count(), 7);
        assert_eq!(b.burst_time(), Duration::from_secs(1));
        // A new limit keeps the tokens (7 after a second), refilling at the new rate.
        b.set_limit(1000, 100, S);
        assert!(!b.is_full(S));
        assert!(b.is_full(S + 100_000));
        assert_eq!((0..200).filter(|_| b.try_take(1, S + 100_000)).count(), 100);
        // A clock that goes backwards refills nothing and takes nothing away.
        assert!(!b.try_take(1, 0));
    }
}
