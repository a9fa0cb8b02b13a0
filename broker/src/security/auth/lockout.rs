//! Brute-force protection that cannot be turned into a denial of service.
//!
//! Failed logins are counted three ways, each in a bounded cache (least recently used go
//! first, forgotten after a quiet period), with usernames kept as 32-byte digests, never
//! as the (up to 64 KiB) names a client sent:
//!
//! - per **source address** (IPv6 by its /64, so one host cannot dodge the count by cycling
//!   the addresses of its own prefix): past `ip_threshold` the source is locked out, for
//!   every username, with a lockout that doubles per further failure;
//! - per **(username, source)**: past `user_threshold` that username is locked out *from
//!   that source only*. Someone guessing at a device's password from elsewhere locks only
//!   themselves out: the device, from its own address, still logs in. (A lock per username
//!   alone let one wrong guess per lockout period keep any known device out for good.);
//! - per **username**, across sources: past `user_slow_after` failures the username is
//!   **slowed**, not locked: each login for it waits a delay that doubles per further
//!   failure up to `slow_max_ms` before its password is checked, while the device itself
//!   still gets in, a little later. (It slows a guesser that waits for its answers, not
//!   a botnet guessing in parallel: the per-source limits bound that.)
//!
//! Guesses **in flight** count too ([`Lockout::begin`]): a check that has started but not
//! ended holds a place against the thresholds, so parallel connections cannot all be
//! checked before the first failure is counted (an outside review had 150 parallel guesses
//! from one source checked, against a threshold of 5). A source has `threshold - failures`
//! places (one once it has been locked out before); a login beyond them is answered "server
//! busy" without being checked.
//!
//! A credential proven before (the verification cache) skips all of this: see
//! `Auth::authenticate`. Time is an input (`now_ms`), so the schedule is testable.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use moka::sync::Cache;

use crate::security::limits::source;

/// Lockout settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LockoutPolicy {
    /// Failures from one source before it is locked out.
    pub ip_threshold: u32,
    /// Failures for one username from one source before that pair is locked out.
    pub user_threshold: u32,
    /// Failures for one username from all sources before its logins are slowed.
    pub user_slow_after: u32,
    /// First lockout, in milliseconds; each further failure doubles it.
    pub base_ms: u64,
    /// Longest lockout, in milliseconds.
    pub max_ms: u64,
    /// Longest delay a slowed username's login waits, in milliseconds.
    pub slow_max_ms: u64,
    /// Most entries tracked (each map).
    pub capacity: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Failures {
    count: u32,
    locked_until_ms: u64,
}

/// `base` doubled per failure past `threshold`, capped at `max`.
fn doubling(count: u32, threshold: u32, base: u64, max: u64) -> u64 {
    let exp = count.saturating_sub(threshold).min(30);
    base.saturating_mul(1u64 << exp).min(max)
}

impl Failures {
    fn bump(mut self, threshold: u32, policy: &LockoutPolicy, now_ms: u64) -> (Self, Option<u64>) {
        self.count = self.count.saturating_add(1);
        if self.count < threshold {
            return (self, None);
        }
        let ms = doubling(self.count, threshold, policy.base_ms, policy.max_ms);
        self.locked_until_ms = now_ms + ms;
        (self, Some(ms))
    }
}

/// A lockout that a failure started: what and for how long (for the audit log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Locked {
    /// `ip 1.2.3.4` or `user name@tenant from 1.2.3.4`.
    pub what: String,
    /// Length in milliseconds.
    pub ms: u64,
}

/// Failure counters per source, per (username, source) and per username.
pub(crate) struct Lockout {
    policy: LockoutPolicy,
    by_ip: Cache<IpAddr, Failures>,
    by_user_source: Cache<[u8; 32], Failures>,
    by_user: Cache<[u8; 32], u32>,
    in_flight: Arc<Mutex<InFlightCounts>>,
}

/// Checks in flight per source and per (username, source). An entry lives only while a
/// check does, and checks are bounded by the verification queue and the handshake limit,
/// so the maps are too.
#[derive(Default)]
struct InFlightCounts {
    by_ip: HashMap<IpAddr, u32>,
    by_user_source: HashMap<[u8; 32], u32>,
}

impl InFlightCounts {
    fn add(&mut self, ip: IpAddr, pair: [u8; 32]) {
        *self.by_ip.entry(ip).or_default() += 1;
        *self.by_user_source.entry(pair).or_default() += 1;
    }

    fn remove(&mut self, ip: IpAddr, pair: [u8; 32]) {
        fn down<K: std::hash::Hash + Eq>(map: &mut HashMap<K, u32>, key: K) {
            if let std::collections::hash_map::Entry::Occupied(mut e) = map.entry(key) {
                *e.get_mut() -= 1;
                if *e.get() == 0 {
                    e.remove();
                }
            }
        }
        down(&mut self.by_ip, ip);
        down(&mut self.by_user_source, pair);
    }
}

/// A credential check in flight, holding its place against the thresholds until dropped
/// (after its failure, if it failed, has been counted).
pub(crate) struct InFlight {
    counts: Arc<Mutex<InFlightCounts>>,
    source: IpAddr,
    pair: [u8; 32],
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(self.source, self.pair);
    }
}

/// The key of a username (and a source) in the maps: SHA-256 of the length-prefixed parts.
fn user_key(tenant: &str, username: &str, from: Option<IpAddr>) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for part in [tenant, username] {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part.as_bytes());
    }
    match from.map(source) {
        Some(IpAddr::V4(v4)) => ctx.update(&v4.octets()),
        Some(IpAddr::V6(v6)) => ctx.update(&v6.octets()),
        None => {}
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(ctx.finish().as_ref());
    key
}

impl Lockout {
    pub fn new(policy: LockoutPolicy) -> Self {
        // A counter is forgotten once quiet for twice the longest lockout.
        let idle = Duration::from_millis(policy.max_ms.saturating_mul(2).max(1000));
        Lockout {
            policy,
            by_ip: Cache::builder()
                .max_capacity(policy.capacity)
                .time_to_idle(idle)
                .build(),
            by_user_source: Cache::builder()
                .max_capacity(policy.capacity)
                .time_to_idle(idle)
                .build(),
            by_user: Cache::builder()
                .max_capacity(policy.capacity)
                .time_to_idle(idle)
                .build(),
            in_flight: Arc::default(),
        }
    }

    /// Takes a place for one credential check of `username` from `ip`, or `None` when the
    /// source already has as many checks in flight as it has guesses left before a
    /// lockout (`threshold - failures`, and one once past the threshold), for the
    /// username or for the source as a whole. Hold the place until the failure, if any,
    /// is counted.
    pub fn begin(&self, ip: IpAddr, tenant: &str, username: &str) -> Option<InFlight> {
        let p = &self.policy;
        let from = source(ip);
        let pair = user_key(tenant, username, Some(ip));
        let places = |threshold: u32, failures: Option<Failures>| {
            threshold
                .saturating_sub(failures.map_or(0, |f| f.count))
                .max(1)
        };
        let ip_places = places(p.ip_threshold, self.by_ip.get(&from));
        let pair_places = places(p.user_threshold, self.by_user_source.get(&pair));
        let mut counts = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let busy = counts.by_ip.get(&from).copied().unwrap_or(0) >= ip_places
            || counts.by_user_source.get(&pair).copied().unwrap_or(0) >= pair_places;
        if busy {
            return None;
        }
        counts.add(from, pair);
        Some(InFlight {
            counts: self.in_flight.clone(),
            source: from,
            pair,
        })
    }

    /// Milliseconds the source of `ip` stays locked out, if it is.
    pub fn ip_locked(&self, ip: IpAddr, now_ms: u64) -> Option<u64> {
        let f = self.by_ip.get(&source(ip))?;
        (f.locked_until_ms > now_ms).then(|| f.locked_until_ms - now_ms)
    }

    /// Milliseconds a username stays locked out for logins from `ip`'s source, if it is.
    pub fn user_locked(
        &self,
        ip: IpAddr,
        tenant: &str,
        username: &str,
        now_ms: u64,
    ) -> Option<u64> {
        let f = self
            .by_user_source
            .get(&user_key(tenant, username, Some(ip)))?;
        (f.locked_until_ms > now_ms).then(|| f.locked_until_ms - now_ms)
    }

    /// How long a login for a username waits before its password is checked: nothing
    /// until `user_slow_after` failures from all sources, then doubling per failure.
    pub fn user_delay(&self, tenant: &str, username: &str) -> Option<Duration> {
        let count = self.by_user.get(&user_key(tenant, username, None))?;
        let p = &self.policy;
        (count >= p.user_slow_after).then(|| {
            Duration::from_millis(doubling(count, p.user_slow_after, p.base_ms, p.slow_max_ms))
        })
    }

    /// Entries tracked (addresses, username-source pairs, usernames; and checks in
    /// flight), for the metrics.
    pub fn tracked(&self) -> u64 {
        let in_flight = {
            let c = self
                .in_flight
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            (c.by_ip.len() + c.by_user_source.len()) as u64
        };
        self.by_ip.entry_count()
            + self.by_user_source.entry_count()
            + self.by_user.entry_count()
            + in_flight
    }

    /// Counts a failed login; returns the lockouts it started.
    pub fn failed(&self, ip: IpAddr, user: Option<(&str, &str)>, now_ms: u64) -> Vec<Locked> {
        let mut started = Vec::new();
        let p = &self.policy;
        let from = source(ip);
        let mut ip_lock = None;
        self.by_ip.entry(from).and_upsert_with(|old| {
            let (f, lock) =
                old.map(|e| e.into_value())
                    .unwrap_or_default()
                    .bump(p.ip_threshold, p, now_ms);
            ip_lock = lock;
            f
        });
        if let Some(ms) = ip_lock {
            started.push(Locked {
                what: format!("ip {from}"),
                ms,
            });
        }
        if let Some((tenant, username)) = user {
            let mut user_lock = None;
            self.by_user_source
                .entry(user_key(tenant, username, Some(ip)))
                .and_upsert_with(|old| {
                    let (f, lock) = old.map(|e| e.into_value()).unwrap_or_default().bump(
                        p.user_threshold,
                        p,
                        now_ms,
                    );
                    user_lock = lock;
                    f
                });
            if let Some(ms) = user_lock {
                started.push(Locked {
                    what: format!(
                        "user {}@{} from {from}",
                        super::clip(username),
                        super::clip(tenant)
                    ),
                    ms,
                });
            }
            self.by_user
                .entry(user_key(tenant, username, None))
                .and_upsert_with(|old| old.map_or(1, |e| e.into_value().saturating_add(1)));
        }
        started
    }

    /// A successful login clears the username's counters, from that source and across
    /// sources (not the source's own: one valid credential must not reset an attacker's
    /// address).
    pub fn succeeded(&self, ip: IpAddr, tenant: &str, username: &str) {
        self.by_user_source
            .invalidate(&user_key(tenant, username, Some(ip)));
        self.by_user.invalidate(&user_key(tenant, username, None));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> LockoutPolicy {
        LockoutPolicy {
            ip_threshold: 4,
            user_threshold: 2,
            user_slow_after: 6,
            base_ms: 1000,
            max_ms: 5000,
            slow_max_ms: 3000,
            capacity: 100,
        }
    }

    #[test]
    fn lockouts_start_at_the_threshold_double_and_cap() {
        let l = Lockout::new(policy());
        let ip: IpAddr = [10, 0, 0, 1].into();
        let now = 1_000_000;
        assert!(l.failed(ip, Some(("t", "u")), now).is_empty());
        assert_eq!(l.user_locked(ip, "t", "u", now), None);
        let started = l.failed(ip, Some(("t", "u")), now);
        assert_eq!(
            started,
            vec![Locked {
                what: "user u@t from 10.0.0.1".into(),
                ms: 1000
            }]
        );
        assert_eq!(l.user_locked(ip, "t", "u", now + 10), Some(990));
        assert_eq!(l.user_locked(ip, "t", "u", now + 1000), None);
        // The next failure doubles it; the address reaches its own threshold.
        let started = l.failed(ip, Some(("t", "u")), now);
        assert_eq!(started[0].ms, 2000);
        assert_eq!(l.ip_locked(ip, now), None);
        let started = l.failed(ip, None, now);
        assert_eq!(started[0].what, "ip 10.0.0.1");
        assert!(l.ip_locked(ip, now).is_some());
        for _ in 0..10 {
            l.failed(ip, Some(("t", "u")), now);
        }
        assert_eq!(l.user_locked(ip, "t", "u", now), Some(5000), "capped");
        // Another user and another address are not affected.
        assert_eq!(l.user_locked(ip, "t", "v", now), None);
        assert_eq!(l.ip_locked([10, 0, 0, 2].into(), now), None);
        l.succeeded(ip, "t", "u");
        assert_eq!(l.user_locked(ip, "t", "u", now), None);
    }

    /// The audit's finding: a username lock that held for every source let an attacker keep
    /// a device out for good with one guess per lockout period. Now the lock is the
    /// attacker's source's, and failures from everywhere only slow the username down.
    #[test]
    fn guesses_from_elsewhere_lock_out_their_source_and_only_slow_the_username() {
        let l = Lockout::new(policy());
        let now = 5_000_000;
        let attacker: IpAddr = [192, 0, 2, 7].into();
        let device: IpAddr = [198, 51, 100, 1].into();
        for _ in 0..3 {
            l.failed(attacker, Some(("t", "meter")), now);
        }
        assert!(l.user_locked(attacker, "t", "meter", now).is_some());
        assert_eq!(l.user_locked(device, "t", "meter", now), None);
        assert_eq!(l.user_delay("t", "meter"), None, "not slowed yet");
        // Failures from many sources: the name is slowed (doubling, capped), never locked.
        for i in 0..4u8 {
            l.failed([203, 0, 113, i].into(), Some(("t", "meter")), now);
        }
        assert_eq!(l.user_locked(device, "t", "meter", now), None);
        assert_eq!(
            l.user_delay("t", "meter"),
            Some(Duration::from_millis(2000))
        );
        for i in 4..20u8 {
            l.failed([203, 0, 113, i].into(), Some(("t", "meter")), now);
        }
        assert_eq!(
            l.user_delay("t", "meter"),
            Some(Duration::from_millis(3000))
        );
        assert_eq!(l.user_delay("t", "other"), None);
        // The device's own success ends the slowing.
        l.succeeded(device, "t", "meter");
        assert_eq!(l.user_delay("t", "meter"), None);
        assert!(l.user_locked(attacker, "t", "meter", now).is_some());
    }

    /// The outside review's finding: failures were counted when their check ended, so 150
    /// parallel guesses from one source were all checked. Checks in flight now hold the
    /// places the thresholds leave.
    #[test]
    fn checks_in_flight_count_against_the_thresholds() {
        let l = Lockout::new(policy());
        let now = 1_000;
        let a: IpAddr = [10, 0, 0, 1].into();
        // user_threshold 2: two checks of one name at once, not a third.
        let first = l.begin(a, "t", "u").unwrap();
        let second = l.begin(a, "t", "u").unwrap();
        assert!(l.begin(a, "t", "u").is_none());
        // ip_threshold 4: two more names, then the source is full.
        let others: Vec<_> = ["v", "w"]
            .iter()
            .map(|n| l.begin(a, "t", n).unwrap())
            .collect();
        assert!(l.begin(a, "t", "x").is_none());
        assert!(
            l.begin([10, 0, 0, 2].into(), "t", "u").is_some(),
            "another source"
        );
        // One fails and is counted, then lets go of its place: the name has none left (1
        // failure + 1 in flight = 2), nor has the source (1 failure + 3 in flight = 4).
        l.failed(a, Some(("t", "u")), now);
        drop(first);
        assert!(l.begin(a, "t", "u").is_none());
        drop(others);
        drop(second);
        assert_eq!(l.in_flight.lock().unwrap().by_ip.len(), 0, "emptied");
        // Past the threshold (locked out, then the lock expired): one at a time.
        l.failed(a, Some(("t", "u")), now);
        let only = l.begin(a, "t", "u").unwrap();
        assert!(l.begin(a, "t", "u").is_none());
        drop(only);
        assert!(l.begin(a, "t", "u").is_some());
    }

    #[test]
    fn an_ipv6_source_is_its_64() {
        let l = Lockout::new(policy());
        let now = 1_000;
        for last in 1..=4u16 {
            let ip = IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 0, 0, 0, last));
            l.failed(ip, None, now);
        }
        let sibling = IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 9, 9, 9, 9));
        assert!(l.ip_locked(sibling, now).is_some(), "cycling inside a /64");
        let other = IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 1, 3, 0, 0, 0, 1));
        assert_eq!(l.ip_locked(other, now), None);
        let mapped: IpAddr = "::ffff:10.0.0.9".parse().unwrap();
        assert_eq!(source(mapped), IpAddr::from([10, 0, 0, 9]));
    }
}
