//! Bans: the operator's list (addresses and networks, client ids, usernames; from the
//! configuration, reloaded on SIGHUP) and flapping detection (a client id, username or
//! address that connects more than `max_connects` times within `window_secs` is banned for
//! `ban_secs`).
//!
//! Addresses are checked at accept, before anything else; client ids and usernames when
//! the CONNECT is read, before authentication. Flapping is counted on successful
//! connections (a crash-looping device, a misconfigured fleet), keyed by tenant, and
//! checked after authentication so one tenant's client id cannot get another tenant's
//! banned. The counts and bans are in one bounded map of keyed 64-bit hashes (`recent`),
//! never the client's up-to-64-KiB strings. Time is an input.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::{PoisonError, RwLock};

use super::recent::{Recent, Thresholds};

/// An IPv4 or IPv6 network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    /// Parses `1.2.3.4`, `10.0.0.0/8`, `2001:db8::/32` (a bare address is one host).
    pub fn parse(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an address or network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: prefix length must be 0..={max}"))?,
        };
        Ok(Network { addr, prefix })
    }

    /// Whether `ip` is inside (an IPv4-mapped IPv6 address counts as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// The operator's bans.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StaticBans {
    pub networks: Vec<Network>,
    /// Client ids banned in every tenant.
    pub client_ids: HashSet<String>,
    /// `NAME@TENANT`.
    pub usernames: HashSet<String>,
}

/// Flapping detection (`[flapping]`): more than `max_connects_per_*` successful
/// connections within `window_secs` bans that client id, username or address for
/// `ban_secs` (audited as `flapping.ban`). Client ids and usernames count per tenant. 0
/// switches a kind off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlappingPolicy {
    /// Connections of one client id (in its tenant) per window before it is banned.
    pub max_connects_per_client_id: u32,
    /// Connections of one username (in its tenant) per window before it is banned.
    pub max_connects_per_username: u32,
    /// Connections from one address per window before it is banned (mind NAT gateways).
    pub max_connects_per_ip: u32,
    /// The window, in seconds.
    pub window_secs: u64,
    /// How long a ban lasts, in seconds.
    pub ban_secs: u64,
    /// Client ids, usernames and addresses tracked (32 bytes each; read at start-up).
    pub max_tracked: u64,
}

impl Default for FlappingPolicy {
    fn default() -> Self {
        FlappingPolicy {
            max_connects_per_client_id: 30,
            max_connects_per_username: 0,
            max_connects_per_ip: 0,
            window_secs: 60,
            ban_secs: 300,
            max_tracked: 100_000,
        }
    }
}

/// What a flapping key is (for the audit record).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    ClientId,
    Username,
    Address,
}

/// Static bans and flapping state.
pub struct Bans {
    static_bans: RwLock<StaticBans>,
    policy: RwLock<FlappingPolicy>,
    /// Connections per key in the current window, and flapping bans.
    recent: Recent,
}

impl Bans {
    pub fn new(static_bans: StaticBans, policy: FlappingPolicy) -> Self {
        Bans {
            static_bans: RwLock::new(static_bans),
            policy: RwLock::new(policy),
            recent: Recent::new(policy.max_tracked),
        }
    }

    pub fn policy(&self) -> FlappingPolicy {
        *self.policy.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Replaces the operator's bans and the flapping thresholds (reload). The map of
    /// recent connections keeps its size until a restart.
    pub fn set(&self, static_bans: StaticBans, policy: FlappingPolicy) {
        *self
            .static_bans
            .write()
            .unwrap_or_else(PoisonError::into_inner) = static_bans;
        *self.policy.write().unwrap_or_else(PoisonError::into_inner) = policy;
    }

    /// Whether connections from `ip` are refused at accept: by the operator, or for
    /// flapping (until when, in ms; `u64::MAX` for the operator's).
    pub fn address_banned(&self, ip: IpAddr, now_ms: u64) -> Option<u64> {
        let listed = self
            .static_bans
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .networks
            .iter()
            .any(|n| n.contains(ip));
        if listed {
            return Some(u64::MAX);
        }
        if self.policy().max_connects_per_ip == 0 {
            return None;
        }
        self.recent
            .banned_until(self.recent.key((Kind::Address, ip)), now_ms)
    }

    /// The operator's ban of a client id (any tenant) or of `NAME@TENANT`.
    pub fn listed(&self, client_id: &str, username: Option<(&str, &str)>) -> Option<Kind> {
        let s = self
            .static_bans
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        if s.client_ids.contains(client_id) {
            return Some(Kind::ClientId);
        }
        match username {
            Some((name, tenant)) if s.usernames.contains(&format!("{name}@{tenant}")) => {
                Some(Kind::Username)
            }
            _ => None,
        }
    }

    /// A flapping ban on the client id or username of `tenant`: which, and until when.
    pub fn flapping(
        &self,
        tenant: &str,
        client_id: &str,
        username: Option<&str>,
        now_ms: u64,
    ) -> Option<(Kind, u64)> {
        let p = self.policy();
        if p.max_connects_per_client_id > 0 {
            let k = self.recent.key((Kind::ClientId, tenant, client_id));
            if let Some(until) = self.recent.banned_until(k, now_ms) {
                return Some((Kind::ClientId, until));
            }
        }
        let name = username.filter(|_| p.max_connects_per_username > 0)?;
        let k = self.recent.key((Kind::Username, tenant, name));
        self.recent
            .banned_until(k, now_ms)
            .map(|until| (Kind::Username, until))
    }

    /// Counts a successful connection; returns the bans it started (for the audit log).
    pub fn connected(
        &self,
        tenant: &str,
        client_id: &str,
        username: Option<&str>,
        ip: IpAddr,
        now_ms: u64,
    ) -> Vec<(Kind, u64)> {
        let p = self.policy();
        let t = |max| Thresholds {
            max,
            window_ms: p.window_secs.saturating_mul(1000),
            ban_ms: p.ban_secs.saturating_mul(1000),
        };
        let mut started = Vec::new();
        if p.max_connects_per_client_id > 0 {
            let k = self.recent.key((Kind::ClientId, tenant, client_id));
            if self
                .recent
                .count(k, t(p.max_connects_per_client_id), now_ms)
            {
                started.push((Kind::ClientId, t(0).ban_ms));
            }
        }
        if let Some(name) = username.filter(|_| p.max_connects_per_username > 0) {
            let k = self.recent.key((Kind::Username, tenant, name));
            if self.recent.count(k, t(p.max_connects_per_username), now_ms) {
                started.push((Kind::Username, t(0).ban_ms));
            }
        }
        if p.max_connects_per_ip > 0 {
            let k = self.recent.key((Kind::Address, ip));
            if self.recent.count(k, t(p.max_connects_per_ip), now_ms) {
                started.push((Kind::Address, t(0).ban_ms));
            }
        }
        started
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn policy(per_id: u32, per_ip: u32) -> FlappingPolicy {
        FlappingPolicy {
            max_connects_per_client_id: per_id,
            max_connects_per_username: 0,
            max_connects_per_ip: per_ip,
            window_secs: 10,
            ban_secs: 60,
            max_tracked: 1000,
        }
    }

    #[test]
    fn networks_match_by_prefix() {
        let n = Network::parse("10.1.0.0/16").unwrap_or_else(|e| panic!("{e}"));
        assert!(n.contains(ip("10.1.200.3")));
        assert!(n.contains(ip("::ffff:10.1.0.1")));
        assert!(!n.contains(ip("10.2.0.1")));
        let host = Network::parse("192.0.2.7").unwrap_or_else(|e| panic!("{e}"));
        assert!(host.contains(ip("192.0.2.7")) && !host.contains(ip("192.0.2.8")));
        let v6 = Network::parse("2001:db8::/32").unwrap_or_else(|e| panic!("{e}"));
        assert!(v6.contains(ip("2001:db8:ffff::1")) && !v6.contains(ip("2001:db9::1")));
        let all = Network::parse("0.0.0.0/0").unwrap_or_else(|e| panic!("{e}"));
        assert!(all.contains(ip("8.8.8.8")) && !all.contains(ip("::1")));
        for bad in ["10.0.0.0/33", "nonsense", "::/129", "1.2.3.4/x"] {
            assert!(Network::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn static_bans_by_address_client_id_and_username() {
        let bans = Bans::new(
            StaticBans {
                networks: vec![Network::parse("10.0.0.0/8").unwrap_or_else(|e| panic!("{e}"))],
                client_ids: ["evil".to_owned()].into(),
                usernames: ["mallory@acme".to_owned()].into(),
            },
            policy(0, 0),
        );
        assert_eq!(bans.address_banned(ip("10.9.9.9"), 0), Some(u64::MAX));
        assert_eq!(bans.address_banned(ip("11.0.0.1"), 0), None);
        assert_eq!(bans.listed("evil", None), Some(Kind::ClientId));
        assert_eq!(
            bans.listed("good", Some(("mallory", "acme"))),
            Some(Kind::Username)
        );
        assert_eq!(bans.listed("good", Some(("mallory", "globex"))), None);
        bans.set(StaticBans::default(), policy(0, 0));
        assert_eq!(bans.address_banned(ip("10.9.9.9"), 0), None);
    }

    #[test]
    fn a_client_id_connecting_too_often_is_banned_for_a_while_in_its_tenant_only() {
        let bans = Bans::new(StaticBans::default(), policy(3, 0));
        let a = ip("192.0.2.1");
        for i in 0..3 {
            assert!(bans.connected("acme", "dev", None, a, i * 1000).is_empty());
        }
        let started = bans.connected("acme", "dev", None, a, 3000);
        assert_eq!(started, vec![(Kind::ClientId, 60_000)]);
        assert_eq!(
            bans.flapping("acme", "dev", None, 3001),
            Some((Kind::ClientId, 63_000))
        );
        assert_eq!(bans.flapping("globex", "dev", None, 3001), None);
        // The ban ends.
        assert_eq!(bans.flapping("acme", "dev", None, 63_000), None);
        // Connections spread wider than the window never add up.
        let bans = Bans::new(StaticBans::default(), policy(3, 0));
        for i in 0..20 {
            assert!(bans.connected("acme", "slow", None, a, i * 4000).is_empty());
        }
    }

    #[test]
    fn an_address_flapping_is_refused_at_accept() {
        let bans = Bans::new(StaticBans::default(), policy(0, 2));
        let a = ip("192.0.2.1");
        bans.connected("acme", "x1", None, a, 0);
        bans.connected("acme", "x2", None, a, 0);
        assert_eq!(bans.address_banned(a, 0), None);
        assert_eq!(
            bans.connected("acme", "x3", None, a, 0),
            vec![(Kind::Address, 60_000)]
        );
        assert_eq!(bans.address_banned(a, 1), Some(60_000));
        assert_eq!(bans.address_banned(ip("192.0.2.2"), 1), None);
    }
}
