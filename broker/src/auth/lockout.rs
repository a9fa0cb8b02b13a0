//! Brute-force protection: failed logins counted per IP address and per username, with an
//! exponentially growing lockout once a threshold is passed. The IP check runs before any
//! password work, so a locked-out address costs a map lookup per attempt. Both maps are
//! bounded caches (least recently used entries go first) whose entries are forgotten after
//! a quiet period, and a username is kept as a 32-byte digest, never as the (up to 64 KiB)
//! name a client sent: an attacker cycling names or addresses fills at most
//! `capacity` small entries.
//!
//! Time is an input (`now_ms`), so the schedule is testable.

use std::net::IpAddr;
use std::time::Duration;

use moka::sync::Cache;

/// Lockout settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LockoutPolicy {
    /// Failures from one address before it is locked out.
    pub ip_threshold: u32,
    /// Failures for one username before it is locked out.
    pub user_threshold: u32,
    /// First lockout, in milliseconds; each further failure doubles it.
    pub base_ms: u64,
    /// Longest lockout, in milliseconds.
    pub max_ms: u64,
    /// Most addresses and usernames tracked (each map).
    pub capacity: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Failures {
    count: u32,
    locked_until_ms: u64,
}

impl Failures {
    fn bump(mut self, threshold: u32, policy: &LockoutPolicy, now_ms: u64) -> (Self, Option<u64>) {
        self.count = self.count.saturating_add(1);
        if self.count < threshold {
            return (self, None);
        }
        let exp = (self.count - threshold).min(30);
        let ms = policy
            .base_ms
            .saturating_mul(1u64 << exp)
            .min(policy.max_ms);
        self.locked_until_ms = now_ms + ms;
        (self, Some(ms))
    }
}

/// A lockout that a failure started: what and for how long (for the audit log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Locked {
    /// `ip 1.2.3.4` or `user name@tenant`.
    pub what: String,
    /// Length in milliseconds.
    pub ms: u64,
}

/// Failure counters per address and per username.
pub(crate) struct Lockout {
    policy: LockoutPolicy,
    by_ip: Cache<IpAddr, Failures>,
    by_user: Cache<[u8; 32], Failures>,
}

/// The key of a username in `by_user`: SHA-256 of the length-prefixed tenant and name.
fn user_key(tenant: &str, username: &str) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for part in [tenant, username] {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part.as_bytes());
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
            by_user: Cache::builder()
                .max_capacity(policy.capacity)
                .time_to_idle(idle)
                .build(),
        }
    }

    /// Milliseconds `ip` stays locked out, if it is.
    pub fn ip_locked(&self, ip: IpAddr, now_ms: u64) -> Option<u64> {
        let f = self.by_ip.get(&ip)?;
        (f.locked_until_ms > now_ms).then(|| f.locked_until_ms - now_ms)
    }

    /// Milliseconds a username stays locked out, if it is.
    pub fn user_locked(&self, tenant: &str, username: &str, now_ms: u64) -> Option<u64> {
        let f = self.by_user.get(&user_key(tenant, username))?;
        (f.locked_until_ms > now_ms).then(|| f.locked_until_ms - now_ms)
    }

    /// Counts a failed login; returns the lockouts it started.
    pub fn failed(&self, ip: IpAddr, user: Option<(&str, &str)>, now_ms: u64) -> Vec<Locked> {
        let mut started = Vec::new();
        let p = &self.policy;
        let mut ip_lock = None;
        self.by_ip.entry(ip).and_upsert_with(|old| {
            let (f, lock) =
                old.map(|e| e.into_value())
                    .unwrap_or_default()
                    .bump(p.ip_threshold, p, now_ms);
            ip_lock = lock;
            f
        });
        if let Some(ms) = ip_lock {
            started.push(Locked {
                what: format!("ip {ip}"),
                ms,
            });
        }
        if let Some((tenant, username)) = user {
            let mut user_lock = None;
            self.by_user
                .entry(user_key(tenant, username))
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
                    what: format!("user {}@{}", super::clip(username), super::clip(tenant)),
                    ms,
                });
            }
        }
        started
    }

    /// A successful login clears the username's counter (not the address's: one valid
    /// credential must not reset an attacker's address).
    pub fn succeeded(&self, tenant: &str, username: &str) {
        self.by_user.invalidate(&user_key(tenant, username));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> LockoutPolicy {
        LockoutPolicy {
            ip_threshold: 4,
            user_threshold: 2,
            base_ms: 1000,
            max_ms: 5000,
            capacity: 100,
        }
    }

    #[test]
    fn lockouts_start_at_the_threshold_double_and_cap() {
        let l = Lockout::new(policy());
        let ip: IpAddr = [10, 0, 0, 1].into();
        let now = 1_000_000;
        assert!(l.failed(ip, Some(("t", "u")), now).is_empty());
        assert_eq!(l.user_locked("t", "u", now), None);
        let started = l.failed(ip, Some(("t", "u")), now);
        assert_eq!(
            started,
            vec![Locked {
                what: "user u@t".into(),
                ms: 1000
            }]
        );
        assert_eq!(l.user_locked("t", "u", now + 10), Some(990));
        assert_eq!(l.user_locked("t", "u", now + 1000), None);
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
        assert_eq!(l.user_locked("t", "u", now), Some(5000), "capped");
        // Another user and another address are not affected.
        assert_eq!(l.user_locked("t", "v", now), None);
        assert_eq!(l.ip_locked([10, 0, 0, 2].into(), now), None);
        l.succeeded("t", "u");
        assert_eq!(l.user_locked("t", "u", now), None);
    }
}
