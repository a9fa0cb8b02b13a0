//! The subscription trie of one tenant: topic levels as edges, subscribers at the nodes.
//!
//! Matching walks the topic once, following the exact level, `+` and `#` edges, so its cost
//! depends on the topic's depth and the number of matching subscribers, not on how many
//! subscriptions exist. Shared subscriptions (`$share/group/filter`) sit at the node of their
//! filter, one group per share name, and each message goes to one member of each group.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use messs_codec::{SubscriptionOptions, TopicFilter};

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
    children: HashMap<Box<str>, Node>,
    subscribers: Vec<Subscriber>,
    shared: Vec<SharedGroup>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.subscribers.is_empty() && self.shared.is_empty()
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

impl SubscriptionTrie {
    /// Number of subscriptions held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.count
    }

    /// Adds or replaces a session's subscription. True if it replaced an existing one.
    pub fn insert(&mut self, filter: &TopicFilter, sub: Subscriber) -> bool {
        let mut node = &mut self.root;
        for level in filter.filter().split('/') {
            node = node.children.entry(Box::from(level)).or_default();
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

    /// Removes a session's subscription. True if it existed.
    pub fn remove(&mut self, filter: &TopicFilter, session_id: u64) -> bool {
        let levels: Vec<&str> = filter.filter().split('/').collect();
        let removed = Self::remove_at(&mut self.root, &levels, filter.share_group(), session_id);
        if removed {
            self.count -= 1;
        }
        removed
    }

    fn remove_at(node: &mut Node, levels: &[&str], group: Option<&str>, session_id: u64) -> bool {
        let Some((first, rest)) = levels.split_first() else {
            return match group {
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
        };
        let Some(child) = node.children.get_mut(*first) else {
            return false;
        };
        let removed = Self::remove_at(child, rest, group, session_id);
        if child.is_empty() {
            node.children.remove(*first);
        }
        removed
    }

    /// Calls `found` for every subscription matching `topic` (one member per shared group).
    /// A `$` topic is not matched by a leading wildcard [MQTT-4.7.2-1].
    pub fn for_each_match(&self, topic: &str, found: &mut impl FnMut(&Subscriber)) {
        Self::walk(&self.root, Some(topic), topic.starts_with('$'), found);
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

    fn walk(
        node: &Node,
        rest: Option<&str>,
        no_wildcard: bool,
        found: &mut impl FnMut(&Subscriber),
    ) {
        let Some(rest) = rest else {
            Self::visit(node, found);
            // "a/#" also matches "a" [MQTT-4.7.1-2].
            if let Some(hash) = node.children.get("#") {
                Self::visit(hash, found);
            }
            return;
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
                Self::walk(plus, next, false, found);
            }
        }
        if let Some(child) = node.children.get(level) {
            Self::walk(child, next, false, found);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::SessionKey;
    use messs_codec::QoS;

    fn sub(id: u64) -> Subscriber {
        let key = SessionKey {
            tenant: Arc::from("t"),
            client_id: Arc::from(format!("c{id}")),
        };
        Subscriber {
            session: Arc::new(Session::new(id, key, 10, Default::default())),
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
    fn shared_group_gets_one_copy_round_robin() {
        let mut t = SubscriptionTrie::default();
        let f = TopicFilter::new("$share/g/a/+").unwrap();
        for id in 1..=3 {
            let s = sub(id);
            s.session.set_connected(true);
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
