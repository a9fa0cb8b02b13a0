//! Recent connections and bans by key, for flapping detection: one bounded map of 64-bit
//! keyed hashes (never the client's strings), in shards each under its own lock.
//!
//! Every successful connection is counted here, so the map is on the connect path of every
//! client: an entry is 32 bytes and a count is one keyed hash and one short lock. The hash
//! is SipHash with a key drawn at start-up (`RandomState`), so a client cannot choose ids
//! that collide. When a shard is full, counters whose window has passed go first, then
//! other counters; a ban is never evicted for a counter, and a key that finds its shard
//! full of bans is not counted.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::sync::{Mutex, MutexGuard, PoisonError};

const SHARDS: usize = 16;

/// One key's connections in its current window, and its ban.
#[derive(Debug, Clone, Copy)]
struct Entry {
    window_start_ms: u64,
    banned_until_ms: u64,
    count: u32,
}

impl Entry {
    fn banned(&self, now_ms: u64) -> bool {
        self.banned_until_ms > now_ms
    }
}

/// The keys are keyed hashes already: the map uses them as they are.
#[derive(Default)]
struct AsIs(u64);

impl Hasher for AsIs {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Shard = HashMap<u64, Entry, BuildHasherDefault<AsIs>>;

/// What a flapping check needs of the policy.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    /// Connections per window before a ban.
    pub max: u32,
    pub window_ms: u64,
    pub ban_ms: u64,
}

pub struct Recent {
    keys: RandomState,
    shards: Box<[Mutex<Shard>]>,
    max_per_shard: usize,
}

impl Recent {
    /// Room for about `max_tracked` keys in all.
    pub fn new(max_tracked: u64) -> Self {
        let max_tracked = usize::try_from(max_tracked).unwrap_or(usize::MAX);
        Recent {
            keys: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            max_per_shard: (max_tracked / SHARDS).max(8),
        }
    }

    /// The key of `what` (a kind tag and the names or address it covers).
    pub fn key(&self, what: impl Hash) -> u64 {
        self.keys.hash_one(what)
    }

    fn shard(&self, key: u64) -> MutexGuard<'_, Shard> {
        // Bits the map itself uses neither for its bucket index (low bits) nor for its
        // control bytes (the top seven).
        let i = (key >> 32) as usize % SHARDS;
        self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Until when (ms) `key` is banned, if it is.
    pub fn banned_until(&self, key: u64, now_ms: u64) -> Option<u64> {
        self.shard(key)
            .get(&key)
            .filter(|e| e.banned(now_ms))
            .map(|e| e.banned_until_ms)
    }

    /// Counts a connection of `key`; true if it started a ban (more than `t.max` within
    /// the window).
    pub fn count(&self, key: u64, t: Thresholds, now_ms: u64) -> bool {
        let mut shard = self.shard(key);
        if !shard.contains_key(&key) && shard.len() >= self.max_per_shard {
            self.make_room(&mut shard, t.window_ms, now_ms);
            if shard.len() >= self.max_per_shard {
                return false;
            }
        }
        let e = shard.entry(key).or_insert(Entry {
            window_start_ms: now_ms,
            banned_until_ms: 0,
            count: 0,
        });
        if now_ms.saturating_sub(e.window_start_ms) >= t.window_ms {
            e.window_start_ms = now_ms;
            e.count = 0;
        }
        e.count = e.count.saturating_add(1);
        if e.count <= t.max || e.banned(now_ms) {
            return false;
        }
        e.banned_until_ms = now_ms.saturating_add(t.ban_ms);
        e.window_start_ms = now_ms;
        e.count = 0;
        true
    }

    /// Frees at least an eighth of a full shard: counters whose window has passed and
    /// whose ban (if any) ended, then other counters. One walk pays for many inserts.
    fn make_room(&self, shard: &mut Shard, window_ms: u64, now_ms: u64) {
        shard.retain(|_, e| {
            e.banned(now_ms) || now_ms.saturating_sub(e.window_start_ms) < window_ms
        });
        let target = self.max_per_shard - self.max_per_shard / 8;
        if shard.len() <= target {
            return;
        }
        let mut excess = shard.len() - target;
        shard.retain(|_, e| {
            if excess == 0 || e.banned(now_ms) {
                return true;
            }
            excess -= 1;
            false
        });
    }

    /// Keys tracked now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Thresholds = Thresholds {
        max: 3,
        window_ms: 10_000,
        ban_ms: 60_000,
    };

    #[test]
    fn more_than_max_in_a_window_bans_until_the_ban_ends() {
        let r = Recent::new(1000);
        let k = r.key((1u8, "acme", "dev"));
        assert!((0..3).all(|i| !r.count(k, T, i * 1000)));
        assert!(r.count(k, T, 3000), "the fourth within 10 s");
        assert_eq!(r.banned_until(k, 3001), Some(63_000));
        assert_eq!(r.banned_until(k, 63_000), None);
        assert_ne!(k, r.key((1u8, "globex", "dev")));
        // Spread wider than the window, connections never add up.
        let slow = r.key((1u8, "acme", "slow"));
        assert!((0..20).all(|i| !r.count(slow, T, i * 4000)));
    }

    #[test]
    fn bounded_counters_give_way_and_bans_stay() {
        let r = Recent::new(16 * 64);
        let banned = r.key("flapper");
        for i in 0..4 {
            r.count(banned, T, i);
        }
        assert!(r.banned_until(banned, 10).is_some());
        // Ten thousand fresh keys: the map stays within its bound, the ban survives.
        for i in 0..10_000u32 {
            r.count(r.key(i), T, 10);
        }
        assert!(r.len() <= 16 * 64, "{}", r.len());
        assert!(r.banned_until(banned, 10).is_some());
        // Later, counters whose window has passed go first: a live counter beside 200 new
        // keys keeps its count (its fourth connection bans it).
        let live = r.key("live");
        r.count(live, T, 20_000);
        r.count(live, T, 20_000);
        for i in 0..200u32 {
            r.count(r.key(("late", i)), T, 20_000);
        }
        assert!(!r.count(live, T, 20_001));
        assert!(r.count(live, T, 20_002));
    }
}
