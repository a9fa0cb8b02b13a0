//! A token bucket many threads charge at once without a lock: GCRA (the generic cell rate
//! algorithm) keeps one number, the theoretical arrival time of the next packet, in an
//! atomic. Charging `n` moves it `n` intervals forward (from now, if it lies in the past);
//! how far it runs ahead of now beyond the burst's tolerance is the debt to wait out.
//! Equivalent to `TokenBucket::charge` (a full bucket of `burst` refilling at `rate`), and
//! what a tenant's connections on every core share.
//!
//! Times are nanoseconds on one monotonic clock (an input, for tests).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A shared rate; a rate of 0 is off (charging costs one load).
#[derive(Debug, Default)]
pub struct Gcra {
    /// Theoretical arrival time, ns.
    tat: AtomicU64,
    /// Nanoseconds per token (as `f64` bits; 0 = off).
    interval: AtomicU64,
    /// How far `tat` may run ahead of now without debt, ns (the burst).
    tolerance: AtomicU64,
}

impl Gcra {
    /// Sets the rate and burst (0: one second's worth); a rate of 0 switches it off.
    pub fn set(&self, rate: u64, burst: u64) {
        let interval = if rate == 0 { 0.0 } else { 1e9 / rate as f64 };
        let burst = if burst == 0 { rate } else { burst }.max(1);
        self.interval.store(interval.to_bits(), Ordering::Relaxed);
        self.tolerance
            .store((interval * burst as f64) as u64, Ordering::Relaxed);
    }

    /// Charges `n` tokens at `now_ns`; how long the charger must wait to be back within the
    /// rate (zero if it is).
    pub fn charge(&self, n: u64, now_ns: u64) -> Duration {
        let interval = f64::from_bits(self.interval.load(Ordering::Relaxed));
        if interval == 0.0 {
            return Duration::ZERO;
        }
        let tolerance = self.tolerance.load(Ordering::Relaxed);
        let cost = (n as f64 * interval).ceil() as u64;
        // Starting from now less the tolerance is a full bucket.
        let floor = now_ns.saturating_sub(tolerance);
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let next = tat.max(floor).saturating_add(cost);
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return Duration::from_nanos(next.saturating_sub(now_ns)),
                Err(seen) => tat = seen,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn a_burst_is_free_then_the_rate_paces_it() {
        let g = Gcra::default();
        g.set(100, 10);
        let now = 10 * S;
        for _ in 0..10 {
            assert_eq!(g.charge(1, now), Duration::ZERO);
        }
        assert_eq!(g.charge(1, now), Duration::from_millis(10));
        assert_eq!(g.charge(4, now), Duration::from_millis(50));
        // Half a second later the debt is gone and 45 tokens are back (of 10 at most).
        for _ in 0..10 {
            assert_eq!(g.charge(1, now + S / 2 + 50_000_000), Duration::ZERO);
        }
    }

    #[test]
    fn paced_by_its_waits_it_delivers_the_rate() {
        let g = Gcra::default();
        g.set(1000, 100);
        let mut now = S;
        for _ in 0..10_000 {
            now += g.charge(1, now).as_nanos() as u64;
        }
        let secs = (now - S) as f64 / 1e9;
        assert!((secs - 9.9).abs() < 0.01, "{secs}");
    }

    #[test]
    fn off_is_free_and_threads_share_it() {
        let g = std::sync::Arc::new(Gcra::default());
        assert_eq!(g.charge(1_000_000, 0), Duration::ZERO);
        g.set(1000, 1000);
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let g = g.clone();
                std::thread::spawn(move || {
                    (0..500).filter(|_| g.charge(1, 5 * S).is_zero()).count()
                })
            })
            .collect();
        let free: usize = handles.into_iter().map(|h| h.join().unwrap_or(0)).sum();
        // Four threads, one bucket: exactly the burst went free.
        assert_eq!(free, 1000);
    }
}
