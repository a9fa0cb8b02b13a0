//! The subscription trie of one tenant: topic levels as edges, subscribers at the nodes.
//!
//! Matching walks the topic once, following the exact level, `+` and `#` edges, so its cost
//! depends on the topic's depth and the number of matching subscribers, not on how many
//! subscriptions exist. Shared subscriptions (`$share/group/filter`) sit at the node of their
//! filter, one group per share name, and each message goes to one member of each group.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use messs_codec::{SubscriptionOptions, TopicFilter};

use super::tree::{descend_mut, drop_subtree, prune, Children, LevelNode};
use crate::session::Session;

/// One session's subscription at a trie node.
#[derive(Clone)]
pub(crate) struct Subscriber {
    pub session: Arc<Session>,
    pub options: SubscriptionOptions,
    pub id: Option<NonZeroU32>,
}

struct SharedGroup {
    name: Arc<str>,
    members: Vec<Subscriber>,
    next: AtomicUsize,
}

impl SharedGroup {
    /// Round-robin over the members, preferring ones that are online so a message is not
    /// parked with an offline member while another could take it now.
    fn pick(&self) -> Option<&Subscriber> {
        let n = self.members.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &self.members[(start + i) % n])
            .find(|m| m.session.is_connected())
            .or_else(|| self.members.get(start % n))
    }
}

#[derive(Default)]
struct Node {
    children: Children<Node>,
    subscribers: Vec<Subscriber>,
    shared: Vec<SharedGroup>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && !self.holds_data()
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
        !self.subscribers.is_empty() || !self.shared.is_empty()
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

/// All subscriptions of one tenant.
#[derive(Default)]
pub(crate) struct SubscriptionTrie {
    root: Node,
    count: usize,
}

/// Puts `sub` in `list`, replacing the same session's entry. True if it replaced one.
fn upsert(list: &mut Vec<Subscriber>, sub: Subscriber) -> bool {
    match list.iter_mut().find(|s| s.session.id == sub.session.id) {
        Some(existing) => {
            *existing = sub;
            true
        }
        None => {
            list.push(sub);
            false
        }
    }
}

fn remove_from(list: &mut Vec<Subscriber>, session_id: u64) -> bool {
    match list.iter().position(|s| s.session.id == session_id) {
        Some(i) => {
            list.swap_remove(i);
            true
        }
        None => false,
    }
}

/// A last-in-first-out stack that keeps its first `N` entries inline, so a match on a topic
/// of ordinary depth allocates nothing, while a deep one spills to the heap instead of
/// recursing.
struct SmallStack<T: Copy, const N: usize> {
    inline: [Option<T>; N],
    len: usize,
    spill: Vec<T>,
}

impl<T: Copy, const N: usize> SmallStack<T, N> {
    fn new() -> Self {
        SmallStack {
            inline: [None; N],
            len: 0,
            spill: Vec::new(),
        }
    }

    fn push(&mut self, value: T) {
        if self.len < N {
            self.inline[self.len] = Some(value);
            self.len += 1;
        } else {
            self.spill.push(value);
        }
    }

    fn pop(&mut self) -> Option<T> {
        if let Some(v) = self.spill.pop() {
            return Some(v);
        }
        if self.len == 0 {
            return None;
        }
        self.len -= 1;
        self.inline[self.len].take()
    }
}

impl SubscriptionTrie {
    /// Number of subscriptions held.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Adds or replaces a session's subscription. True if it replaced an existing one.
    pub fn insert(&mut self, filter: &TopicFilter, sub: Subscriber) -> bool {
        let mut node = &mut self.root;
        for level in filter.filter().split('/') {
            node = node.children.get_or_insert_with(level, Node::default);
        }
        let replaced = match filter.share_group() {
            None => upsert(&mut node.subscribers, sub),
            Some(name) => match node.shared.iter_mut().find(|g| &*g.name == name) {
                Some(group) => upsert(&mut group.members, sub),
                None => {
                    node.shared.push(SharedGroup {
                        name: Arc::from(name),
                        members: vec![sub],
                        next: AtomicUsize::new(0),
                    });
                    false
                }
            },
        };
        if !replaced {
            self.count += 1;
        }
        replaced
    }

    /// Removes a session's subscription and prunes the branch it leaves empty. True if it
    /// existed. Iterative: walks down the filter's levels, no recursion.
    pub fn remove(&mut self, filter: &TopicFilter, session_id: u64) -> bool {
        let Some(node) = descend_mut(&mut self.root, filter.filter()) else {
            return false;
        };
        let removed = match filter.share_group() {
            None => remove_from(&mut node.subscribers, session_id),
            Some(name) => {
                let Some(i) = node.shared.iter().position(|g| &*g.name == name) else {
                    return false;
                };
                let removed = remove_from(&mut node.shared[i].members, session_id);
                if node.shared[i].members.is_empty() {
                    node.shared.swap_remove(i);
                }
                removed
            }
        };
        if !removed {
            return false;
        }
        self.count -= 1;
        if node.is_empty() {
            prune(&mut self.root, filter.filter());
        }
        true
    }

    /// Calls `found` for every subscription matching `topic` (one member per shared group).
    /// A `$` topic is not matched by a leading wildcard [MQTT-4.7.2-1]. Iterative: an
    /// explicit stack of (node, rest of the topic) instead of recursion per level.
    pub fn for_each_match(&self, topic: &str, found: &mut impl FnMut(&Subscriber)) {
        let mut stack: SmallStack<(&Node, Option<&str>, bool), 16> = SmallStack::new();
        stack.push((&self.root, Some(topic), topic.starts_with('$')));
        while let Some((node, rest, no_wildcard)) = stack.pop() {
            let Some(rest) = rest else {
                Self::visit(node, found);
                // "a/#" also matches "a" [MQTT-4.7.1-2].
                if let Some(hash) = node.children.get("#") {
                    Self::visit(hash, found);
                }
                continue;
            };
            let (level, next) = match rest.split_once('/') {
                Some((level, next)) => (level, Some(next)),
                None => (rest, None),
            };
            if !no_wildcard {
                if let Some(hash) = node.children.get("#") {
                    Self::visit(hash, found);
                }
                if let Some(plus) = node.children.get("+") {
                    stack.push((plus, next, false));
                }
            }
            if let Some(child) = node.children.get(level) {
                stack.push((child, next, false));
            }
        }
    }

    fn visit(node: &Node, found: &mut impl FnMut(&Subscriber)) {
        for s in &node.subscribers {
            found(s);
        }
        for g in &node.shared {
            if let Some(s) = g.pick() {
                found(s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use messs_codec::QoS;

    #[test]
    fn a_level_costs_no_more_than_it_is_charged() {
        super::super::tree::assert_level_within_cost::<Node>();
    }

    fn sub(id: u64) -> Subscriber {
        Subscriber {
            session: Arc::new(crate::session::unbounded_session(id, 10)),
            options: SubscriptionOptions::new(QoS::AtMostOnce),
            id: None,
        }
    }

    fn matched(trie: &SubscriptionTrie, topic: &str) -> Vec<u64> {
        let mut ids = Vec::new();
        trie.for_each_match(topic, &mut |s| ids.push(s.session.id));
        ids.sort();
        ids
    }

    #[test]
    fn exact_plus_hash_and_dollar() {
        let mut t = SubscriptionTrie::default();
        let filters = ["a/b", "a/+", "a/#", "#", "+/b", "$SYS/#", "+/+"];
        for (i, f) in filters.iter().enumerate() {
            t.insert(&TopicFilter::new(f).unwrap(), sub(i as u64));
        }
        assert_eq!(matched(&t, "a/b"), vec![0, 1, 2, 3, 4, 6]);
        assert_eq!(matched(&t, "a"), vec![2, 3]);
        assert_eq!(matched(&t, "$SYS/x"), vec![5]);
        assert_eq!(matched(&t, "x/y/z"), vec![3]);
        assert_eq!(t.len(), filters.len());
    }

    #[test]
    fn remove_prunes_and_counts() {
        let mut t = SubscriptionTrie::default();
        let f = TopicFilter::new("a/b/c").unwrap();
        assert!(!t.insert(&f, sub(1)));
        assert!(t.insert(&f, sub(1)), "same session replaces");
        assert_eq!(t.len(), 1);
        assert!(t.remove(&f, 1));
        assert!(!t.remove(&f, 1));
        assert_eq!(t.len(), 0);
        assert!(t.root.is_empty());
    }

    #[test]
    fn remove_keeps_branches_that_others_use() {
        let mut t = SubscriptionTrie::default();
        let deep = TopicFilter::new("a/b/c/d").unwrap();
        let mid = TopicFilter::new("a/b").unwrap();
        let side = TopicFilter::new("a/x/y").unwrap();
        t.insert(&deep, sub(1));
        t.insert(&mid, sub(2));
        t.insert(&side, sub(3));
        assert!(t.remove(&deep, 1));
        assert_eq!(matched(&t, "a/b"), vec![2]);
        assert_eq!(matched(&t, "a/x/y"), vec![3]);
        let b = &t.root.children.get("a").unwrap().children.get("b").unwrap();
        assert!(b.children.is_empty(), "the empty chain c/d is pruned");
        assert!(t.remove(&mid, 2));
        assert!(!t.root.children.get("a").unwrap().children.contains("b"));
        assert!(t.remove(&side, 3));
        assert!(t.root.is_empty());
    }

    /// Far deeper than any stack could recurse: insert, match, remove and drop must all
    /// be iterative (the broker's `max_topic_levels` is the first line; this is the second).
    #[test]
    fn deep_filters_do_not_recurse() {
        // As deep as a 65,535-byte topic can be: 32,768 `+` levels, 65,536 empty ones (the
        // recursive version overflowed at ~5,400 and ~9,300).
        const LEVELS: usize = 32_768;
        let mut t = SubscriptionTrie::default();
        let empty_levels = TopicFilter::new(&"/".repeat(65_535)).unwrap();
        let pluses = TopicFilter::new(&vec!["+"; LEVELS].join("/")).unwrap();
        t.insert(&empty_levels, sub(1));
        t.insert(&pluses, sub(2));
        let topic = vec!["x"; LEVELS].join("/");
        assert_eq!(matched(&t, &topic), vec![2]);
        assert_eq!(matched(&t, &"/".repeat(LEVELS - 1)), vec![2]);
        assert_eq!(matched(&t, &"/".repeat(65_535)), vec![1]);
        assert!(t.remove(&empty_levels, 1));
        assert!(t.root.children.contains("+"));
        // The `+` chain is dropped with the trie.
        drop(t);
    }

    #[test]
    fn shared_group_gets_one_copy_round_robin() {
        let mut t = SubscriptionTrie::default();
        let f = TopicFilter::new("$share/g/a/+").unwrap();
        for id in 1..=3 {
            let s = sub(id);
            s.session.attach(0);
            t.insert(&f, s);
        }
        let mut seen = Vec::new();
        for _ in 0..6 {
            let m = matched(&t, "a/x");
            assert_eq!(m.len(), 1);
            seen.push(m[0]);
        }
        for id in 1..=3 {
            assert_eq!(seen.iter().filter(|&&s| s == id).count(), 2);
        }
    }
}
