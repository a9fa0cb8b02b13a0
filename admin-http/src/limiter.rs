//! The per-address login rate limit: a token bucket per client address (IPv6 by /64, so one
//! host cannot dodge it by cycling addresses of its own prefix), in a map of bounded size.
//! When the map is full, addresses whose buckets have refilled are forgotten first (they
//! carry no state worth keeping), then the least recently seen.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Login attempts per address.
pub struct LoginLimiter {
    per_minute: f64,
    capacity: usize,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

/// The source an address counts as (IPv4, or an IPv6 /64): the broker's rule, shared by
/// the login limits and the login lockout.
pub(crate) fn key(ip: IpAddr) -> IpAddr {
    messs_broker::address_source(ip)
}

impl LoginLimiter {
    /// `per_minute` attempts a minute (and a burst of as many) per address, tracking at
    /// most `capacity` addresses.
    pub fn new(per_minute: u32, capacity: usize) -> Self {
        LoginLimiter {
            per_minute: f64::from(per_minute.max(1)),
            capacity: capacity.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one attempt for `ip` at `now`: `Ok` or the seconds until the next is allowed.
    pub fn attempt(&self, ip: IpAddr, now: Instant) -> Result<(), u64> {
        let mut map = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let k = key(ip);
        if !map.contains_key(&k) && map.len() >= self.capacity {
            let full = self.per_minute;
            let rate = self.per_minute / 60.0;
            map.retain(|_, b| b.tokens + now.duration_since(b.last).as_secs_f64() * rate < full);
            if map.len() >= self.capacity {
                if let Some(oldest) = map.iter().min_by_key(|(_, b)| b.last).map(|(k, _)| *k) {
                    map.remove(&oldest);
                }
            }
        }
        let b = map.entry(k).or_insert(Bucket {
            tokens: self.per_minute,
            last: now,
        });
        let rate = self.per_minute / 60.0;
        b.tokens =
            (b.tokens + now.duration_since(b.last).as_secs_f64() * rate).min(self.per_minute);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - b.tokens) / rate).ceil() as u64)
        }
    }

    /// Addresses tracked now.
    pub fn tracked(&self) -> usize {
        self.buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_refill_per_address() {
        let l = LoginLimiter::new(3, 100);
        let t = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(l.attempt(a, t).is_ok());
        }
        let wait = l.attempt(a, t).unwrap_err();
        assert!((1..=20).contains(&wait), "{wait}");
        assert!(l.attempt(b, t).is_ok(), "another address is not affected");
        assert!(
            l.attempt(a, t + Duration::from_secs(21)).is_ok(),
            "refilled"
        );
    }

    #[test]
    fn ipv6_counts_by_prefix_and_the_map_stays_bounded() {
        let l = LoginLimiter::new(1, 10);
        let t = Instant::now();
        assert!(l.attempt("2001:db8::1".parse().unwrap(), t).is_ok());
        assert!(
            l.attempt("2001:db8::2".parse().unwrap(), t).is_err(),
            "same /64"
        );
        for i in 0..1000u32 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            let _ = l.attempt(ip, t);
        }
        assert!(l.tracked() <= 10);
    }
}
