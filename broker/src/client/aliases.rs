//! The topic aliases of one connection, both ways, bounded in bytes.
//!
//! A v5 client names up to Topic Alias Maximum aliases in each direction, and a topic may be
//! 65,535 bytes long: without a byte bound one connection could make the broker keep
//! gigabytes of topic names (the outside audit's finding, outbound). Each map counts the
//! topic bytes it holds against `limits.max_topic_alias_bytes` and in the
//! `messs_topic_alias_bytes` gauge. Outbound, the broker simply stops assigning new aliases
//! at the bound (an alias is the sender's choice); inbound, a client whose aliases would
//! pass it is closed with 0x97 (Quota exceeded).

use std::collections::HashMap;
use std::num::NonZeroU16;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use messs_codec::TopicName;

use crate::stats::Stats;

/// What one alias costs beyond its topic's text: the map entry and the name's header.
const ENTRY_COST: usize = 48;

fn cost(topic: &TopicName) -> usize {
    ENTRY_COST + topic.as_str().len()
}

/// Bytes held by one map, given back to the gauge when the map goes.
struct Held {
    bytes: usize,
    max: usize,
    stats: Arc<Stats>,
}

impl Held {
    fn new(max: usize, stats: Arc<Stats>) -> Self {
        Held {
            bytes: 0,
            max,
            stats,
        }
    }

    fn gauge(&self) -> &AtomicUsize {
        &self.stats.topic_alias_bytes
    }

    /// Takes `add` bytes after giving back `release`, if the result stays within the bound.
    fn retake(&mut self, add: usize, release: usize) -> bool {
        let after = self.bytes.saturating_sub(release) + add;
        if after > self.max && after > self.bytes {
            return false;
        }
        if after > self.bytes {
            self.gauge()
                .fetch_add(after - self.bytes, Ordering::Relaxed);
        } else {
            self.gauge()
                .fetch_sub(self.bytes - after, Ordering::Relaxed);
        }
        self.bytes = after;
        true
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.gauge().fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// Aliases the client defined: alias → topic.
pub(super) struct Inbound {
    topics: HashMap<u16, TopicName>,
    held: Held,
}

/// A client's aliases would hold more than `limits.max_topic_alias_bytes`.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct OverQuota;

impl Inbound {
    pub(super) fn new(max_bytes: usize, stats: Arc<Stats>) -> Self {
        Inbound {
            topics: HashMap::new(),
            held: Held::new(max_bytes, stats),
        }
    }

    pub(super) fn get(&self, alias: u16) -> Option<&TopicName> {
        self.topics.get(&alias)
    }

    /// Sets `alias` to `topic` (replacing what it stood for).
    pub(super) fn set(&mut self, alias: u16, topic: TopicName) -> Result<(), OverQuota> {
        let release = self.topics.get(&alias).map_or(0, cost);
        if !self.held.retake(cost(&topic), release) {
            return Err(OverQuota);
        }
        self.topics.insert(alias, topic);
        Ok(())
    }
}

/// Aliases the broker defined: topic → alias.
pub(super) struct Outbound {
    aliases: HashMap<TopicName, NonZeroU16>,
    held: Held,
}

impl Outbound {
    pub(super) fn new(max_bytes: usize, stats: Arc<Stats>) -> Self {
        Outbound {
            aliases: HashMap::new(),
            held: Held::new(max_bytes, stats),
        }
    }

    pub(super) fn get(&self, topic: &TopicName) -> Option<NonZeroU16> {
        self.aliases.get(topic).copied()
    }

    /// The alias a new topic would get, if `client_max` allows one more and the byte bound
    /// has room for `topic`.
    pub(super) fn next(&self, topic: &TopicName, client_max: u16) -> Option<NonZeroU16> {
        let next = u16::try_from(self.aliases.len() + 1).ok()?;
        let fits = self.held.bytes + cost(topic) <= self.held.max;
        (next <= client_max && fits)
            .then(|| NonZeroU16::new(next))
            .flatten()
    }

    /// Records `alias` for `topic` once it was sent.
    pub(super) fn insert(&mut self, topic: TopicName, alias: NonZeroU16) {
        if self.held.retake(cost(&topic), 0) {
            self.aliases.insert(topic, alias);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(len: usize) -> TopicName {
        TopicName::new(&"t".repeat(len)).unwrap()
    }

    #[test]
    fn inbound_aliases_stop_at_their_bytes_and_give_them_back() {
        let stats = Arc::new(Stats::default());
        let mut a = Inbound::new(3 * cost(&topic(100)), stats.clone());
        for alias in 1..=3 {
            a.set(alias, topic(100)).unwrap();
        }
        assert_eq!(a.set(4, topic(100)), Err(OverQuota));
        // Replacing an alias with a topic of the same size fits: its old topic goes.
        a.set(2, topic(100)).unwrap();
        assert_eq!(a.set(2, topic(101)), Err(OverQuota));
        assert_eq!(a.get(2), Some(&topic(100)));
        let gauge = || stats.topic_alias_bytes.load(Ordering::Relaxed);
        assert_eq!(gauge(), 3 * cost(&topic(100)));
        drop(a);
        assert_eq!(gauge(), 0);
    }

    #[test]
    fn outbound_aliases_stop_being_assigned_at_their_bytes() {
        let stats = Arc::new(Stats::default());
        let mut a = Outbound::new(2 * cost(&topic(1000)), stats.clone());
        for i in 0..2 {
            let t = TopicName::new(&format!("{i}{}", "t".repeat(999))).unwrap();
            let alias = a.next(&t, 100).unwrap();
            a.insert(t.clone(), alias);
            assert_eq!(a.get(&t), Some(alias));
        }
        assert_eq!(a.next(&topic(1000), 100), None, "the bytes are spent");
        assert!(
            a.next(&topic(1), 100).is_none(),
            "so is the room for the entry"
        );
        let roomy = Outbound::new(1 << 20, stats.clone());
        assert_eq!(roomy.next(&topic(1), 0), None, "the client allows none");
        drop(a);
        assert_eq!(stats.topic_alias_bytes.load(Ordering::Relaxed), 0);
    }
}
