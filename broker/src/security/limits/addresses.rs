//! Per-address admission at accept, before any TLS or password work: how many connections
//! an address may open per second and hold at once. A refused socket is closed at once, so
//! a flood from one address costs an accept and a close, nothing else.
//!
//! IPv6 addresses count by their /64 (one subscriber's network: an attacker gets a whole
//! /64 and could otherwise take a fresh address per connection); IPv4-mapped IPv6 counts as
//! the IPv4 address. The map is sharded and bounded: an address with no open connection
//! and a refilled bucket is forgotten first, then any address with no open connection
//! (forgetting its rate is the graceful way to degrade); addresses with open connections
//! are bounded by the connection limit.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use super::bucket::TokenBucket;

const SHARDS: usize = 16;

/// What admission enforces; zeros are no limit (open connections are still counted, so a
/// limit set at runtime counts the connections already open).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AddressPolicy {
    /// New connections a second per address (0: no limit).
    pub connects_per_sec: u32,
    /// Connections an address may open at once beyond its rate (0: one second's worth).
    pub connects_burst: u32,
    /// Connections open at once per address (0: no limit).
    pub max_connections: u32,
    /// Addresses tracked at most (beyond those with open connections).
    pub max_tracked: usize,
}

/// Why an address was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressRefusal {
    /// More connections a second than `connects_per_sec` allows.
    Rate,
    /// `max_connections` already open.
    Quota,
}

struct Entry {
    live: u32,
    bucket: Option<TokenBucket>,
}

/// The per-address counters.
pub struct Addresses {
    policy: RwLock<AddressPolicy>,
    shards: Box<[Mutex<HashMap<IpAddr, Entry>>]>,
}

/// An admitted connection's place in its address's count; given back when dropped.
pub struct AddressSlot {
    held: Option<(Arc<Addresses>, IpAddr)>,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        if let Some((addresses, key)) = self.held.take() {
            addresses.release(key);
        }
    }
}

/// The address an admission counts against.
fn key(ip: IpAddr) -> IpAddr {
    super::source(ip)
}

impl Addresses {
    pub fn new(policy: AddressPolicy) -> Arc<Self> {
        Arc::new(Addresses {
            policy: RwLock::new(policy),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        })
    }

    /// A changed policy (reload): buckets take the new rate at their next use.
    pub fn set_policy(&self, policy: AddressPolicy) {
        *self.policy.write().unwrap_or_else(PoisonError::into_inner) = policy;
    }

    fn policy(&self) -> AddressPolicy {
        *self.policy.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn shard(&self, key: &IpAddr) -> &Mutex<HashMap<IpAddr, Entry>> {
        use std::hash::BuildHasher;
        static SEED: std::sync::OnceLock<std::collections::hash_map::RandomState> =
            std::sync::OnceLock::new();
        let hash = SEED.get_or_init(Default::default).hash_one(key);
        &self.shards[(hash as usize) % SHARDS]
    }

    /// Admits a connection from `ip` at `now_us`, or says why not.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, now_us: u64) -> Result<AddressSlot, AddressRefusal> {
        let p = self.policy();
        let key = key(ip);
        let mut shard = self
            .shard(&key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !shard.contains_key(&key) && shard.len() >= (p.max_tracked / SHARDS).max(1) {
            make_room(&mut shard, now_us);
        }
        let entry = shard.entry(key).or_insert(Entry {
            live: 0,
            bucket: None,
        });
        if p.max_connections > 0 && entry.live >= p.max_connections {
            return Err(AddressRefusal::Quota);
        }
        if p.connects_per_sec == 0 {
            entry.bucket = None;
        } else {
            let rate = u64::from(p.connects_per_sec);
            let burst = u64::from(p.connects_burst);
            let bucket = entry
                .bucket
                .get_or_insert_with(|| TokenBucket::new(rate, burst, now_us));
            bucket.set_limit(rate, burst, now_us);
            if !bucket.try_take(1, now_us) {
                return Err(AddressRefusal::Rate);
            }
        }
        entry.live += 1;
        Ok(AddressSlot {
            held: Some((self.clone(), key)),
        })
    }

    fn release(&self, key: IpAddr) {
        let mut shard = self
            .shard(&key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(e) = shard.get_mut(&key) {
            e.live = e.live.saturating_sub(1);
            if e.live == 0 && e.bucket.is_none() {
                shard.remove(&key);
            }
        }
    }

    /// Connections open now from `ip`'s address.
    #[cfg(test)]
    pub fn live(&self, ip: IpAddr) -> u32 {
        let key = key(ip);
        let shard = self
            .shard(&key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        shard.get(&key).map_or(0, |e| e.live)
    }

    /// Addresses tracked now (a gauge: bounded by `max_tracked` plus those with open
    /// connections).
    pub fn tracked(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }
}

/// Forgets addresses with nothing open and nothing owed; if that frees nothing, every
/// address with nothing open (their rate history is lost, which only helps them).
fn make_room(shard: &mut HashMap<IpAddr, Entry>, now_us: u64) {
    let before = shard.len();
    shard.retain(|_, e| e.live > 0 || e.bucket.as_ref().is_some_and(|b| !b.is_full(now_us)));
    if shard.len() == before {
        shard.retain(|_, e| e.live > 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn policy(rate: u32, burst: u32, max: u32) -> AddressPolicy {
        AddressPolicy {
            connects_per_sec: rate,
            connects_burst: burst,
            max_connections: max,
            max_tracked: 1600,
        }
    }

    #[test]
    fn without_limits_nothing_is_refused_and_open_connections_are_counted() {
        let a = Addresses::new(AddressPolicy {
            max_tracked: 16,
            ..Default::default()
        });
        let slots: Vec<_> = (0..1000).map(|_| a.admit(ip("10.0.0.1"), 0)).collect();
        assert!(slots.iter().all(Result::is_ok));
        assert_eq!(a.live(ip("10.0.0.1")), 1000);
        // A limit set now counts them.
        a.set_policy(policy(0, 0, 1000));
        assert_eq!(
            a.admit(ip("10.0.0.1"), 0).err(),
            Some(AddressRefusal::Quota)
        );
        drop(slots);
        assert_eq!(a.tracked(), 0, "nothing open, nothing owed: forgotten");
    }

    #[test]
    fn rate_and_quota_per_address_and_slots_give_back() {
        let a = Addresses::new(policy(10, 5, 3));
        let s1 = a.admit(ip("10.0.0.1"), 0).unwrap();
        let _s2 = a.admit(ip("10.0.0.1"), 0).unwrap();
        let _s3 = a.admit(ip("10.0.0.1"), 0).unwrap();
        assert_eq!(
            a.admit(ip("10.0.0.1"), 0).err(),
            Some(AddressRefusal::Quota)
        );
        // Another address is not affected.
        assert!(a.admit(ip("10.0.0.2"), 0).is_ok());
        drop(s1);
        assert_eq!(a.live(ip("10.0.0.1")), 2);
        let _s4 = a.admit(ip("10.0.0.1"), 0).unwrap();
        // The burst of 5 is spent (4 admitted, one refused by quota took nothing)...
        drop(a.admit(ip("10.0.0.9"), 0));
        let b = Addresses::new(policy(10, 5, 0));
        let ok = (0..20)
            .filter(|_| b.admit(ip("10.0.0.1"), 0).is_ok())
            .count();
        assert_eq!(ok, 5);
        assert_eq!(b.admit(ip("10.0.0.1"), 0).err(), Some(AddressRefusal::Rate));
        // ...and a tenth of a second later one more.
        assert!(b.admit(ip("10.0.0.1"), 100_000).is_ok());
        assert!(b.admit(ip("10.0.0.1"), 100_000).is_err());
    }

    #[test]
    fn ipv6_counts_by_its_64_and_mapped_ipv4_as_ipv4() {
        let a = Addresses::new(policy(0, 0, 2));
        let _x = a.admit(ip("2001:db8:1:2::1"), 0).unwrap();
        let _y = a.admit(ip("2001:db8:1:2:ffff::9"), 0).unwrap();
        assert!(a.admit(ip("2001:db8:1:2:abcd::1"), 0).is_err());
        assert!(a.admit(ip("2001:db8:1:3::1"), 0).is_ok());
        let _z = a.admit(ip("192.0.2.7"), 0).unwrap();
        let _w = a.admit(ip("::ffff:192.0.2.7"), 0).unwrap();
        assert!(a.admit(ip("192.0.2.7"), 0).is_err());
    }

    #[test]
    fn the_map_stays_bounded_under_many_addresses() {
        let a = Addresses::new(policy(1, 1, 0));
        let mut held = Vec::new();
        for i in 0..50_000u32 {
            let addr = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            if let Ok(s) = a.admit(addr, 0) {
                if i % 1000 == 0 {
                    held.push(s);
                } else {
                    drop(s);
                }
            }
        }
        // 1,600 tracked at most (plus addresses with open connections).
        assert!(a.tracked() <= 1600 + held.len(), "{}", a.tracked());
        drop(held);
    }
}
