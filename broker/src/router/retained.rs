//! The retained messages of one tenant (spec §3.3.1.3): a topic tree with the last retained
//! message at each topic's node, bounded in count and bytes.
//!
//! A new subscription's retained messages are found by walking the tree along its filter,
//! so the cost follows the matching part of the tree, not the store's size. Children are
//! kept in order, which gives every walk a stable order; a walk can therefore stop after a
//! budget of nodes (or when the subscriber's queue is full) and resume later from the last
//! topic it visited, without holding the store's lock in between. Everything is iterative:
//! a client chooses the depth of a topic.

use std::collections::BTreeSet;
use std::ops::Bound;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use messs_codec::TopicName;

use super::tree::{
    descend, descend_mut, drop_subtree, levels, prune, ChildRange, Children, LevelNode, LEVEL_COST,
};
use crate::message::Message;
use crate::security::limits::tenant::TenantHoldings;
use crate::stats::Stats;

#[derive(Default)]
struct Node {
    children: Children<Node>,
    message: Option<Arc<Message>>,
    /// The message's payload is not in memory but in the store, this many bytes long (0: the
    /// payload is in `message`). Large payloads stay on disk; memory holds the tree.
    disk_len: usize,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.message.is_none()
    }
}

impl LevelNode for Node {
    fn child(&self, level: &str) -> Option<&Self> {
        self.children.get(level)
    }

    fn child_mut(&mut self, level: &str) -> Option<&mut Self> {
        self.children.get_mut(level)
    }

    fn remove_child(&mut self, level: &str) {
        self.children.remove(level);
    }

    fn child_count(&self) -> usize {
        self.children.len()
    }

    fn holds_data(&self) -> bool {
        self.message.is_some()
    }

    fn take_children(&mut self) -> Vec<Self> {
        self.children.take_all()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if !self.children.is_empty() {
            drop_subtree(self);
        }
    }
}

/// Retained messages of one tenant.
pub(crate) struct RetainedStore {
    root: Node,
    count: usize,
    bytes: usize,
    /// The broker's caps for every tenant (`limits.max_retained_*`).
    max: usize,
    max_bytes: usize,
    /// The tenant's own caps (its `[tenant_limits]` and overrides), which may be lower.
    tenant: Arc<TenantHoldings>,
    /// Messages with an expiry, by (expiry, topic), so purging does not walk the tree.
    expiring: BTreeSet<(u64, TopicName)>,
    stats: Arc<Stats>,
}

/// The store is at its limit (count or bytes) and the message does not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RetainedFull;

/// How a walk ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ScanEnd {
    /// Every match was offered.
    Done,
    /// The walk stopped (budget spent, or the sink had no room); resume after this topic
    /// path, the last node visited.
    Paused(Vec<Box<str>>),
}

/// One level of an ongoing walk: the children of a node still to visit.
struct Frame<'a> {
    children: ChildRange<'a, Node>,
    /// Level index of those children (their depth in the tree, from 0).
    depth: usize,
    /// Filter level index each child has matched up to once entered.
    next_fi: usize,
    /// The parent lies on the resume path, so children at or before it were visited.
    bounded: bool,
}

impl Drop for RetainedStore {
    fn drop(&mut self) {
        self.stats
            .retained_bytes
            .fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl RetainedStore {
    pub fn new(
        max: usize,
        max_bytes: usize,
        tenant: Arc<TenantHoldings>,
        stats: Arc<Stats>,
    ) -> Self {
        RetainedStore {
            root: Node::default(),
            count: 0,
            bytes: 0,
            max,
            max_bytes,
            tenant,
            expiring: BTreeSet::new(),
            stats,
        }
    }

    /// Number of retained messages.
    pub fn len(&self) -> usize {
        self.count
    }

    /// What a retained message is charged: its size, wherever its payload is, and the tree's
    /// nodes along its topic (their keys are a second copy of the topic's text).
    fn charge(message: &Message, disk_len: usize) -> usize {
        let topic = message.topic.as_str();
        message.cost() + disk_len + topic.len() + LEVEL_COST * levels(topic)
    }

    /// Counts a message in (`added`) or out, with `disk_len` payload bytes kept on disk (see
    /// [`Self::charge`]).
    fn account(&mut self, message: &Message, disk_len: usize, added: bool) {
        let cost = Self::charge(message, disk_len);
        if added {
            self.count += 1;
            self.bytes += cost;
            self.stats.retained_bytes.fetch_add(cost, Ordering::Relaxed);
            if let Some(at) = message.expires_at {
                self.expiring.insert((at, message.topic.clone()));
            }
        } else {
            self.count -= 1;
            self.bytes -= cost;
            self.stats.retained_bytes.fetch_sub(cost, Ordering::Relaxed);
            if let Some(at) = message.expires_at {
                self.expiring.remove(&(at, message.topic.clone()));
            }
        }
    }

    /// Stores, replaces, or (empty payload) deletes the retained message of a topic
    /// [MQTT-3.3.1-6], [MQTT-3.3.1-10].
    pub fn set(&mut self, message: Arc<Message>) -> Result<(), RetainedFull> {
        self.set_entry(message, 0)
    }

    /// As [`RetainedStore::set`]; with `disk_len > 0` the message's payload (of that
    /// length) is in the store only and `message` carries none.
    pub fn set_entry(
        &mut self,
        message: Arc<Message>,
        disk_len: usize,
    ) -> Result<(), RetainedFull> {
        let topic = message.topic.as_str();
        if message.payload.is_empty() && disk_len == 0 {
            self.remove(topic);
            return Ok(());
        }
        let old_cost = descend(&self.root, topic)
            .and_then(|n| n.message.as_ref().map(|m| Self::charge(m, n.disk_len)));
        let after_count = self.count + usize::from(old_cost.is_none());
        let after_bytes = self.bytes - old_cost.unwrap_or(0) + Self::charge(&message, disk_len);
        // A store over a cap that was lowered keeps what it has; it only may not grow.
        let (tenant_max, tenant_max_bytes) = self.tenant.retained_caps();
        let grows_past = |after: usize, now: usize, max: usize| after > max && after > now;
        if grows_past(after_count, self.count, self.max.min(tenant_max))
            || grows_past(
                after_bytes,
                self.bytes,
                self.max_bytes.min(tenant_max_bytes),
            )
        {
            return Err(RetainedFull);
        }
        self.put(message, disk_len);
        Ok(())
    }

    /// Puts back a retained message read from the store at start-up. What was stored is
    /// kept even over the caps (they may have been lowered, or what a message is charged
    /// may have grown, since it was admitted): the store then only may not grow, as with
    /// a lowered cap.
    pub fn restore_entry(&mut self, message: Arc<Message>, disk_len: usize) {
        if !message.payload.is_empty() || disk_len > 0 {
            self.put(message, disk_len);
        }
    }

    /// Puts `message` at its topic's node and accounts for it, replacing what was there.
    fn put(&mut self, message: Arc<Message>, disk_len: usize) {
        let mut node = &mut self.root;
        for level in message.topic.as_str().split('/') {
            node = node.children.get_or_insert_with(level, Node::default);
        }
        let old = node.message.replace(message.clone());
        let old_disk = std::mem::replace(&mut node.disk_len, disk_len);
        if let Some(old) = old {
            self.account(&old, old_disk, false);
        }
        self.account(&message, disk_len, true);
    }

    /// Whether a topic has a retained message.
    pub fn has(&self, topic: &str) -> bool {
        descend(&self.root, topic).is_some_and(|n| n.message.is_some())
    }

    /// Deletes the retained message of a topic and prunes the branch it leaves empty.
    fn remove(&mut self, topic: &str) {
        let Some(node) = descend_mut(&mut self.root, topic) else {
            return;
        };
        let old = node.message.take();
        let old_disk = std::mem::take(&mut node.disk_len);
        let now_empty = node.is_empty();
        if let Some(old) = old {
            self.account(&old, old_disk, false);
        }
        if now_empty {
            prune(&mut self.root, topic);
        }
    }

    /// Drops expired messages; returns their topics. Uses the expiry index, not a tree walk.
    pub fn purge_expired(&mut self, now_ms: u64) -> Vec<TopicName> {
        let mut purged = Vec::new();
        while let Some((at, topic)) = self.expiring.first().cloned() {
            if at > now_ms {
                break;
            }
            self.expiring.pop_first();
            let expired = descend(&self.root, topic.as_str())
                .and_then(|n| n.message.as_ref())
                .is_some_and(|m| m.expires_at == Some(at));
            if expired {
                self.remove(topic.as_str());
                purged.push(topic);
            }
        }
        purged
    }

    /// Offers `sink` the unexpired retained messages matching `filter` (without any
    /// `$share/` prefix), in topic order, starting after `resume` (a path returned by an
    /// earlier walk). Visits at most `budget` nodes. `sink` returns false when it has no
    /// room; the walk then pauses before that message, to offer it again on resume. The sink
    /// also gets the length of a payload kept on disk (0 when the message carries it).
    /// A leading wildcard never matches a `$` topic [MQTT-4.7.2-1].
    pub fn scan(
        &self,
        filter: &str,
        resume: Option<&[Box<str>]>,
        now_ms: u64,
        mut budget: usize,
        sink: &mut impl FnMut(&Arc<Message>, usize) -> bool,
    ) -> ScanEnd {
        let levels: Vec<&str> = filter.split('/').collect();
        let resume = resume.unwrap_or(&[]);
        let no_dollar = matches!(levels.first(), Some(&"+") | Some(&"#"));
        // The path of the last node entered; resuming continues after it.
        let mut path: Vec<&str> = resume.iter().map(|l| &**l).collect();
        let mut stack: Vec<Frame<'_>> = Vec::new();
        if let Some(frame) =
            Self::children_of(&self.root, &levels, 0, 0, !resume.is_empty(), resume)
        {
            stack.push(frame);
        }
        while let Some(frame) = stack.last_mut() {
            let Some((key, child)) = frame.children.next() else {
                stack.pop();
                continue;
            };
            let (depth, fi) = (frame.depth, frame.next_fi);
            if depth == 0 && no_dollar && key.starts_with('$') {
                continue;
            }
            // On the resume path: this node is the resume point or one of its ancestors,
            // all visited (and paid for) before.
            let on_resume_path = frame.bounded && resume.get(depth).is_some_and(|r| **r == *key);
            if !on_resume_path {
                if budget == 0 {
                    return ScanEnd::Paused(path.iter().map(|l| Box::from(*l)).collect());
                }
                budget -= 1;
            }
            let matches_here = fi == levels.len() || levels.get(fi) == Some(&"#");
            if matches_here && !on_resume_path {
                if let Some(m) = child.message.as_ref().filter(|m| !m.is_expired(now_ms)) {
                    if !sink(m, child.disk_len) {
                        return ScanEnd::Paused(path.iter().map(|l| Box::from(*l)).collect());
                    }
                }
            }
            path.truncate(depth);
            path.push(key);
            let bounded = on_resume_path && depth + 1 < resume.len();
            if let Some(next) = Self::children_of(child, &levels, fi, depth + 1, bounded, resume) {
                stack.push(next);
            }
        }
        ScanEnd::Done
    }

    /// The frame over `node`'s children that can match filter level `fi`, or `None`.
    fn children_of<'a>(
        node: &'a Node,
        levels: &[&str],
        fi: usize,
        depth: usize,
        bounded: bool,
        resume: &[Box<str>],
    ) -> Option<Frame<'a>> {
        let level = *levels.get(fi)?;
        let lower = if bounded { resume.get(depth) } else { None };
        let (children, next_fi) = match level {
            "#" | "+" => {
                let start = lower.map_or(Bound::Unbounded, |l| Bound::Included(&**l));
                let next_fi = if level == "#" { fi } else { fi + 1 };
                (node.children.range(start, Bound::Unbounded), next_fi)
            }
            literal => {
                if lower.is_some_and(|l| **l > *literal) {
                    return None;
                }
                let exact = (Bound::Included(literal), Bound::Included(literal));
                (node.children.range(exact.0, exact.1), fi + 1)
            }
        };
        Some(Frame {
            children,
            depth,
            next_fi,
            bounded,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::MessageProperties;
    use bytes::Bytes;
    use messs_codec::QoS;

    #[test]
    fn a_level_costs_no_more_than_it_is_charged() {
        super::super::tree::assert_level_within_cost::<Node>();
    }

    fn msg(topic: &str, payload: &'static [u8], expires_at: Option<u64>) -> Arc<Message> {
        Arc::new(Message {
            topic: TopicName::new(topic).unwrap(),
            payload: Bytes::from_static(payload),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: MessageProperties::default(),
            expires_at,
            origin: 0,
        })
    }

    fn store() -> RetainedStore {
        RetainedStore::new(1000, usize::MAX, Arc::default(), Arc::new(Stats::default()))
    }

    fn all(s: &RetainedStore, filter: &str) -> Vec<String> {
        let mut out = Vec::new();
        let end = s.scan(filter, None, 0, usize::MAX, &mut |m, _| {
            out.push(m.topic.to_string());
            true
        });
        assert_eq!(end, ScanEnd::Done);
        out
    }

    fn filled() -> RetainedStore {
        let mut s = store();
        for t in [
            "a", "a/b", "a/b/c", "a/c", "b/x", "$SYS/up", "/lead", "a//d",
        ] {
            s.set(msg(t, b"1", None)).unwrap();
        }
        s
    }

    #[test]
    fn filters_match_as_the_spec_says_in_topic_order() {
        let s = filled();
        assert_eq!(all(&s, "a/#"), ["a", "a//d", "a/b", "a/b/c", "a/c"]);
        assert_eq!(all(&s, "a/+"), ["a/b", "a/c"]);
        assert_eq!(all(&s, "+/+"), ["/lead", "a/b", "a/c", "b/x"]);
        assert_eq!(all(&s, "#").len(), 7, "no $ topic for a leading wildcard");
        assert_eq!(all(&s, "$SYS/#"), ["$SYS/up"]);
        assert_eq!(all(&s, "a/b/c"), ["a/b/c"]);
        assert_eq!(all(&s, "a/+/d"), ["a//d"]);
        assert!(all(&s, "z/#").is_empty());
        for filter in ["#", "+/#", "a/#", "+/+", "+", "a/+/+", "$SYS/+"] {
            let expected: Vec<String> = all(&s, filter);
            let mut brute: Vec<String> = [
                "a", "a/b", "a/b/c", "a/c", "b/x", "$SYS/up", "/lead", "a//d",
            ]
            .iter()
            .filter(|t| messs_codec::topic_matches(filter, t))
            .map(|t| t.to_string())
            .collect();
            brute.sort_by(|x, y| x.split('/').cmp(y.split('/')));
            assert_eq!(expected, brute, "{filter}");
        }
    }

    #[test]
    fn a_walk_resumes_where_it_paused_whatever_the_budget() {
        let s = filled();
        for filter in ["#", "a/#", "+/+", "a/+/d"] {
            let whole = all(&s, filter);
            for budget in 1..4 {
                let mut seen = Vec::new();
                let mut resume: Option<Vec<Box<str>>> = None;
                loop {
                    let end = s.scan(filter, resume.as_deref(), 0, budget, &mut |m, _| {
                        seen.push(m.topic.to_string());
                        true
                    });
                    match end {
                        ScanEnd::Done => break,
                        ScanEnd::Paused(p) => resume = Some(p),
                    }
                }
                assert_eq!(seen, whole, "{filter} with budget {budget}");
            }
        }
    }

    #[test]
    fn a_full_sink_pauses_before_the_message_it_refused() {
        let s = filled();
        let mut seen = Vec::new();
        let mut room = 2;
        let end = s.scan("a/#", None, 0, usize::MAX, &mut |m, _| {
            if room == 0 {
                return false;
            }
            room -= 1;
            seen.push(m.topic.to_string());
            true
        });
        let ScanEnd::Paused(resume) = end else {
            panic!("expected a pause")
        };
        let end = s.scan("a/#", Some(&resume), 0, usize::MAX, &mut |m, _| {
            seen.push(m.topic.to_string());
            true
        });
        assert_eq!(end, ScanEnd::Done);
        assert_eq!(seen, all(&s, "a/#"));
    }

    #[test]
    fn bounded_in_count_and_bytes_and_deletes_prune() {
        let stats = Arc::new(Stats::default());
        let a = RetainedStore::charge(&msg("a", b"12345", None), 0);
        let bc = RetainedStore::charge(&msg("b/c", b"12345", None), 0);
        assert_eq!(
            bc,
            a + 2 + LEVEL_COST + 2,
            "a level and two bytes of text twice more"
        );
        let mut s = RetainedStore::new(2, a + bc + 1, Arc::default(), stats.clone());
        s.set(msg("a", b"12345", None)).unwrap();
        s.set(msg("b/c", b"12345", None)).unwrap();
        assert_eq!(s.set(msg("d", b"12345", None)), Err(RetainedFull));
        assert_eq!(
            s.set(msg("a", b"1234567", None)),
            Err(RetainedFull),
            "bytes"
        );
        s.set(msg("a", b"54321", None)).unwrap();
        assert_eq!(stats.retained_bytes.load(Ordering::Relaxed), a + bc);
        s.set(msg("b/c", b"", None)).unwrap();
        assert!(!s.root.children.contains("b"), "empty branch pruned");
        // What the store held is put back at start-up even over the caps (lowered, or
        // charged more since): nothing stored is lost, but the store may not grow.
        s.restore_entry(msg("x/y", b"12345", None), 0);
        s.restore_entry(msg("z", b"12345", None), 0);
        assert_eq!(s.len(), 3);
        assert!(s.bytes > a + bc + 1, "over the byte cap after restoring");
        assert_eq!(s.set(msg("w", b"1", None)), Err(RetainedFull));
        s.set(msg("z", b"", None)).unwrap();
        s.set(msg("x/y", b"", None)).unwrap();
        assert_eq!(s.len(), 1);
        drop(s);
        assert_eq!(stats.retained_bytes.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn the_tenants_own_caps_apply_below_the_brokers_and_a_lowered_cap_stops_growth() {
        use crate::security::limits::tenant::{TenantLimits, TenantRates};
        let rates = TenantRates::default();
        let mut s = RetainedStore::new(
            100,
            usize::MAX,
            rates.holdings.clone(),
            Arc::new(Stats::default()),
        );
        let limits = |n| TenantLimits {
            max_retained_messages: n,
            ..Default::default()
        };
        rates.set(limits(2), 0);
        s.set(msg("a", b"1", None)).unwrap();
        s.set(msg("b", b"1", None)).unwrap();
        assert_eq!(s.set(msg("c", b"1", None)), Err(RetainedFull));
        rates.set(limits(1), 0);
        s.set(msg("a", b"2", None)).unwrap();
        assert_eq!(s.len(), 2, "over a lowered cap: kept, replaced in place");
        s.set(msg("a", b"", None)).unwrap();
        assert_eq!(s.set(msg("c", b"1", None)), Err(RetainedFull));
        rates.set(limits(0), 0);
        s.set(msg("c", b"1", None)).unwrap();
        assert_eq!(s.len(), 2, "0: the broker's cap only");
    }

    #[test]
    fn expired_messages_are_skipped_and_purged_by_index() {
        let mut s = store();
        s.set(msg("x/1", b"1", Some(100))).unwrap();
        s.set(msg("x/2", b"1", Some(300))).unwrap();
        s.set(msg("x/3", b"1", None)).unwrap();
        let mut seen = 0;
        s.scan("x/#", None, 200, usize::MAX, &mut |_, _| {
            seen += 1;
            true
        });
        assert_eq!(seen, 2);
        assert_eq!(s.purge_expired(200).len(), 1);
        // Replaced without expiry: the stale index entry must not purge it.
        s.set(msg("x/2", b"2", None)).unwrap();
        assert!(s.purge_expired(1000).is_empty());
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn deep_topics_do_not_recurse() {
        let mut s = store();
        let deep = "/".repeat(65_000);
        s.set(msg(&deep, b"1", None)).unwrap();
        assert_eq!(all(&s, "#").len(), 1);
        assert_eq!(all(&s, &deep).len(), 1);
        drop(s);
    }
}
