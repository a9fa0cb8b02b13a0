//! Brute-force protection of admin logins, held in memory, with time as an input:
//!
//! - **per (account, source)**: the source is the client's address as the login rate
//!   limit counts it ([`crate::limiter::key`]: IPv6 by /64, IPv4-mapped as IPv4).
//!   `lockout_failures` failed logins in a row from one source lock that source out of
//!   that account for `lockout_secs`. Other sources, the admin's among them, are not
//!   affected: an attacker locks only itself out;
//! - **known sources**: a source that logged in to the account successfully (within
//!   `known_source_secs` of its last success) is never locked out of it;
//! - **per account**: failures from every source together; past `account_slow_after`,
//!   every attempt for the account waits before it is checked (250 ms, doubling with
//!   each further failure, at most `account_slow_max_ms`), the right password too, which
//!   still gets in. Slowed, never locked. Forgotten after `lockout_secs` without one.
//!
//! Nothing here asks whether the account exists: an unknown name is counted, locked out
//! and slowed exactly like a real one, so none of it tells which names exist. Each of the
//! three maps holds at most `max_tracked_logins` entries (expired ones are dropped first,
//! then the least recently touched); their sizes are metrics.
//!
//! This replaces the account-wide lock stored on the admin record (`failed_logins`,
//! `locked_until_ms`), with which one wrong guess per lockout period from anywhere kept
//! an admin out for good. Those fields are no longer read or written (they stay in the
//! record format, so existing records decode). A restart forgets what is counted here,
//! as it forgets the per-address rate limit.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use messs_broker::AdminConfig;

use crate::limiter::key;

/// The first delay of a slowed account; each further failure doubles it.
const SLOW_BASE: Duration = Duration::from_millis(250);

/// What the guard is configured with (from `[admin]`).
#[derive(Debug, Clone, Copy)]
pub struct GuardSettings {
    /// Failures in a row that lock a source out of an account.
    pub lockout_failures: u32,
    /// How long a source stays locked out; also the quiet time after which failures are
    /// forgotten.
    pub lockout: Duration,
    /// Failures of an account, all sources together, past which it is slowed.
    pub slow_after: u32,
    /// The longest delay of a slowed account.
    pub slow_max: Duration,
    /// How long a successful login keeps its (account, source) exempt from the lockout.
    pub known_for: Duration,
    /// Entries each map holds at most.
    pub capacity: usize,
}

impl GuardSettings {
    /// The `[admin]` settings.
    pub fn from_config(c: &AdminConfig) -> Self {
        GuardSettings {
            lockout_failures: c.lockout_failures.max(1),
            lockout: Duration::from_secs(c.lockout_secs),
            slow_after: c.account_slow_after.max(1),
            // A connection silent for idle_timeout_secs is closed: a delay never nears it.
            slow_max: Duration::from_millis(
                c.account_slow_max_ms
                    .min(c.idle_timeout_secs.saturating_mul(500)),
            ),
            known_for: Duration::from_secs(c.known_source_secs),
            capacity: c.max_tracked_logins.max(1),
        }
    }
}

/// May this attempt be checked?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The source is locked out of the account: refuse at once (429), retry after that
    /// many seconds. Nothing is checked, so the answer says nothing about the password.
    Locked(u64),
    /// Check the credentials after waiting this long (zero unless the account is slowed).
    Proceed(Duration),
}

/// Failures of one account from one source.
#[derive(Debug, Clone, Copy)]
struct SourceFailures {
    in_a_row: u32,
    locked_until: Option<Instant>,
    last: Instant,
}

/// Failures of one account from every source.
#[derive(Debug, Clone, Copy)]
struct AccountFailures {
    count: u32,
    last: Instant,
}

type Pair = (String, IpAddr);

#[derive(Default)]
struct Maps {
    sources: HashMap<Pair, SourceFailures>,
    accounts: HashMap<String, AccountFailures>,
    /// The last successful login of each (account, source).
    known: HashMap<Pair, Instant>,
}

/// The brute-force guard of admin logins.
pub struct LoginGuard {
    s: GuardSettings,
    maps: Mutex<Maps>,
    refused: AtomicU64,
}

fn older_than(then: Instant, now: Instant, age: Duration) -> bool {
    now.saturating_duration_since(then) >= age
}

/// Before a new key goes into a full `map`: drops what `expired` says, then, if it is
/// still full, the entry `last` says was touched longest ago.
fn make_room<K: Clone + Eq + Hash, V>(
    map: &mut HashMap<K, V>,
    capacity: usize,
    expired: impl Fn(&V) -> bool,
    last: impl Fn(&V) -> Instant,
) {
    if map.len() < capacity {
        return;
    }
    map.retain(|_, v| !expired(v));
    while map.len() >= capacity {
        let Some(oldest) = map
            .iter()
            .min_by_key(|(_, v)| last(v))
            .map(|(k, _)| k.clone())
        else {
            return;
        };
        map.remove(&oldest);
    }
}

impl LoginGuard {
    /// An empty guard.
    pub fn new(settings: GuardSettings) -> Self {
        LoginGuard {
            s: settings,
            maps: Mutex::new(Maps::default()),
            refused: AtomicU64::new(0),
        }
    }

    fn maps(&self) -> MutexGuard<'_, Maps> {
        self.maps.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_known(&self, m: &Maps, pair: &Pair, now: Instant) -> bool {
        m.known
            .get(pair)
            .is_some_and(|&t| !older_than(t, now, self.s.known_for))
    }

    /// The delay of an account with `failures` recent failures.
    fn delay(&self, failures: u32) -> Duration {
        if failures < self.s.slow_after {
            return Duration::ZERO;
        }
        let doublings = (failures - self.s.slow_after).min(16);
        SLOW_BASE
            .saturating_mul(1 << doublings)
            .min(self.s.slow_max)
    }

    /// Whether an attempt for `account` from `ip` at `now` may be checked, and after
    /// what delay.
    pub fn admit(&self, account: &str, ip: IpAddr, now: Instant) -> Admission {
        let m = self.maps();
        let pair = (account.to_owned(), key(ip));
        if !self.is_known(&m, &pair, now) {
            let until = m.sources.get(&pair).and_then(|f| f.locked_until);
            if let Some(until) = until.filter(|&u| u > now) {
                self.refused.fetch_add(1, Ordering::Relaxed);
                let secs = until.saturating_duration_since(now).as_secs_f64().ceil();
                return Admission::Locked((secs as u64).max(1));
            }
        }
        let failures = m
            .accounts
            .get(account)
            .filter(|a| !older_than(a.last, now, self.s.lockout))
            .map_or(0, |a| a.count);
        Admission::Proceed(self.delay(failures))
    }

    /// Counts a failed login for `account` from `ip` at `now`. Returns how long the
    /// source is now locked out for when this failure locked it (once per lockout: the
    /// caller audits it then).
    pub fn failed(&self, account: &str, ip: IpAddr, now: Instant) -> Option<Duration> {
        let s = self.s;
        let mut m = self.maps();
        if !m.accounts.contains_key(account) {
            let expired = |a: &AccountFailures| older_than(a.last, now, s.lockout);
            make_room(&mut m.accounts, s.capacity, expired, |a| a.last);
        }
        let a = m
            .accounts
            .entry(account.to_owned())
            .or_insert(AccountFailures {
                count: 0,
                last: now,
            });
        if older_than(a.last, now, s.lockout) {
            a.count = 0;
        }
        a.count = a.count.saturating_add(1);
        a.last = now;

        let pair = (account.to_owned(), key(ip));
        if self.is_known(&m, &pair, now) {
            return None;
        }
        if !m.sources.contains_key(&pair) {
            let expired = |f: &SourceFailures| {
                f.locked_until.is_none_or(|u| u <= now) && older_than(f.last, now, s.lockout)
            };
            make_room(&mut m.sources, s.capacity, expired, |f| f.last);
        }
        let f = m.sources.entry(pair).or_insert(SourceFailures {
            in_a_row: 0,
            locked_until: None,
            last: now,
        });
        match f.locked_until {
            // Checked while the lockout began (a concurrent attempt): it stands as it is.
            Some(u) if u > now => return None,
            Some(_) => {
                f.locked_until = None;
                f.in_a_row = 0;
            }
            None if older_than(f.last, now, s.lockout) => f.in_a_row = 0,
            None => {}
        }
        f.in_a_row = f.in_a_row.saturating_add(1);
        f.last = now;
        if f.in_a_row < s.lockout_failures {
            return None;
        }
        f.in_a_row = 0;
        f.locked_until = Some(now + s.lockout);
        Some(s.lockout)
    }

    /// A successful login of `account` from `ip` at `now`: the source is known to the
    /// account from now on (for `known_source_secs`) and its failures are forgotten. The
    /// account's failures from other sources stay (they are someone else's).
    pub fn succeeded(&self, account: &str, ip: IpAddr, now: Instant) {
        let s = self.s;
        let mut m = self.maps();
        let pair = (account.to_owned(), key(ip));
        m.sources.remove(&pair);
        if !m.known.contains_key(&pair) {
            let expired = |&t: &Instant| older_than(t, now, s.known_for);
            make_room(&mut m.known, s.capacity, expired, |&t| t);
        }
        m.known.insert(pair, now);
    }

    /// Lifts every lockout of `account` and forgets its failures (a superadmin's
    /// `unlock`). Known sources stay known.
    pub fn unlock(&self, account: &str) {
        let mut m = self.maps();
        m.sources.retain(|(name, _), _| name != account);
        m.accounts.remove(account);
    }

    /// Sources locked out of `account` at `now`, and its recent failures (all sources).
    pub fn status(&self, account: &str, now: Instant) -> (usize, u32) {
        let m = self.maps();
        let locked = m
            .sources
            .iter()
            .filter(|((name, _), f)| name == account && f.locked_until.is_some_and(|u| u > now))
            .count();
        let failures = m
            .accounts
            .get(account)
            .filter(|a| !older_than(a.last, now, self.s.lockout))
            .map_or(0, |a| a.count);
        (locked, failures)
    }

    /// Entries of each map, by the label of its metric.
    pub fn sizes(&self) -> [(&'static str, usize); 3] {
        let m = self.maps();
        [
            ("source_failures", m.sources.len()),
            ("account_failures", m.accounts.len()),
            ("known_sources", m.known.len()),
        ]
    }

    /// Attempts refused because their source was locked out (not audited one by one).
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// How a source shows in a record: the address, or the /64 of an IPv6 one.
pub fn source_label(ip: IpAddr) -> String {
    match key(ip) {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("{v6}/64"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(capacity: usize) -> LoginGuard {
        LoginGuard::new(GuardSettings {
            lockout_failures: 3,
            lockout: Duration::from_secs(60),
            slow_after: 5,
            slow_max: Duration::from_secs(5),
            known_for: Duration::from_secs(3600),
            capacity,
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const GO: Admission = Admission::Proceed(Duration::ZERO);

    #[test]
    fn a_source_locks_only_itself_out_and_only_for_a_while() {
        let g = guard(100);
        let t = Instant::now();
        let (a, b) = (ip("10.0.0.1"), ip("10.0.0.2"));
        assert_eq!(g.failed("admin", a, t), None);
        assert_eq!(g.failed("admin", a, t), None);
        assert_eq!(g.failed("admin", a, t), Some(Duration::from_secs(60)));
        assert_eq!(g.admit("admin", a, t), Admission::Locked(60));
        assert_eq!(g.admit("admin", b, t), GO, "another source");
        assert_eq!(g.admit("other", a, t), GO, "another account");
        assert_eq!(
            g.admit("admin", ip("::ffff:10.0.0.1"), t),
            Admission::Locked(60),
            "IPv4-mapped"
        );
        assert_eq!(g.status("admin", t), (1, 3));
        assert_eq!(g.refused(), 2);
        let later = t + Duration::from_secs(60);
        assert_eq!(g.admit("admin", a, later), GO);
        assert_eq!(g.failed("admin", a, later), None, "a fresh count");
    }

    #[test]
    fn ipv6_counts_by_prefix() {
        let g = guard(100);
        let t = Instant::now();
        for _ in 0..3 {
            g.failed("admin", ip("2001:db8::1"), t);
        }
        assert!(matches!(
            g.admit("admin", ip("2001:db8::ffff"), t),
            Admission::Locked(_)
        ));
        assert_eq!(g.admit("admin", ip("2001:db8:0:1::1"), t), GO);
        assert_eq!(source_label(ip("2001:db8::1")), "2001:db8::/64");
    }

    #[test]
    fn failures_in_a_row_are_forgotten_after_quiet_and_success() {
        let g = guard(100);
        let t = Instant::now();
        let a = ip("10.0.0.1");
        g.failed("admin", a, t);
        g.failed("admin", a, t);
        let quiet = t + Duration::from_secs(61);
        assert_eq!(g.failed("admin", a, quiet), None, "forgotten");
        assert_eq!(g.failed("admin", a, quiet), None);
        g.succeeded("admin", a, quiet);
        let b = ip("10.0.0.2");
        g.failed("admin", b, quiet);
        g.succeeded("admin", b, quiet);
        assert_eq!(g.failed("admin", b, quiet), None, "reset by the success");
    }

    #[test]
    fn a_known_source_is_never_locked_out() {
        let g = guard(100);
        let t = Instant::now();
        let office = ip("10.0.0.1");
        g.succeeded("admin", office, t);
        for _ in 0..10 {
            assert_eq!(g.failed("admin", office, t), None);
        }
        assert!(matches!(g.admit("admin", office, t), Admission::Proceed(_)));
        // Until the success is older than known_source_secs.
        let later = t + Duration::from_secs(3600);
        for _ in 0..2 {
            g.failed("admin", office, later);
        }
        assert!(g.failed("admin", office, later).is_some());
    }

    #[test]
    fn an_account_is_slowed_past_the_threshold_never_locked() {
        let g = guard(100);
        let t = Instant::now();
        for i in 0..5u8 {
            assert_eq!(g.admit("admin", ip("10.1.0.1"), t), GO, "{i}");
            g.failed("admin", IpAddr::from([10, 0, 0, i]), t);
        }
        let fresh = ip("10.1.0.1");
        assert_eq!(
            g.admit("admin", fresh, t),
            Admission::Proceed(Duration::from_millis(250))
        );
        g.failed("admin", ip("10.0.0.9"), t);
        assert_eq!(
            g.admit("admin", fresh, t),
            Admission::Proceed(Duration::from_millis(500))
        );
        for i in 0..100u8 {
            g.failed("admin", IpAddr::from([10, 0, 1, i]), t);
        }
        assert_eq!(
            g.admit("admin", fresh, t),
            Admission::Proceed(Duration::from_secs(5)),
            "capped"
        );
        assert_eq!(g.admit("ghost", fresh, t), GO, "per account");
        let quiet = t + Duration::from_secs(60);
        assert_eq!(g.admit("admin", fresh, quiet), GO, "forgotten after quiet");
        g.failed("admin", fresh, t);
        g.unlock("admin");
        assert_eq!(g.admit("admin", fresh, t), GO, "unlocked");
        assert_eq!(g.status("admin", t), (0, 0));
    }

    #[test]
    fn every_map_stays_bounded() {
        let g = guard(10);
        let t = Instant::now();
        for i in 0..1000u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            let name = format!("user{i}");
            g.failed(&name, ip, t);
            g.failed("admin", ip, t);
            g.succeeded(&name, ip, t);
        }
        for (map, n) in g.sizes() {
            assert!(n <= 10, "{map}: {n}");
        }
    }
}
