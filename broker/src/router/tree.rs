//! What the subscription trie and the retained-message tree share: nodes keyed by topic
//! level, walked down a path, pruned and dropped without recursion (a client chooses the
//! depth of a topic, and a stack overflow aborts the whole process).

use std::collections::btree_map::{self, BTreeMap};
use std::ops::Bound;

/// A node of a tree keyed by topic level.
pub(crate) trait LevelNode: Sized {
    fn child(&self, level: &str) -> Option<&Self>;
    fn child_mut(&mut self, level: &str) -> Option<&mut Self>;
    fn remove_child(&mut self, level: &str);
    fn child_count(&self) -> usize;
    /// The node holds something of its own (subscribers, a message).
    fn holds_data(&self) -> bool;
    /// Moves the children out (for an iterative drop).
    fn take_children(&mut self) -> Vec<Self>;
}

/// The node at `path` ("a/b" is two levels down), if it exists.
pub(crate) fn descend<'a, N: LevelNode>(root: &'a N, path: &str) -> Option<&'a N> {
    let mut node = root;
    for level in path.split('/') {
        node = node.child(level)?;
    }
    Some(node)
}

/// The node at `path`, mutably, if it exists.
pub(crate) fn descend_mut<'a, N: LevelNode>(root: &'a mut N, path: &str) -> Option<&'a mut N> {
    let mut node = root;
    for level in path.split('/') {
        node = node.child_mut(level)?;
    }
    Some(node)
}

/// Cuts the chain of nodes left empty at the end of `path`: below the last node on the path
/// that has other children or data of its own, every node has exactly one child and nothing
/// else, so the whole chain goes with one removal (dropped by [`drop_subtree`]).
pub(crate) fn prune<N: LevelNode>(root: &mut N, path: &str) {
    let mut cut_depth = 0;
    let mut node = &*root;
    for (depth, level) in path.split('/').enumerate() {
        if depth > 0 && (node.child_count() > 1 || node.holds_data()) {
            cut_depth = depth;
        }
        match node.child(level) {
            Some(child) => node = child,
            None => return,
        }
    }
    let mut levels = path.split('/');
    let mut node = root;
    for _ in 0..cut_depth {
        let Some(level) = levels.next() else { return };
        match node.child_mut(level) {
            Some(child) => node = child,
            None => return,
        }
    }
    if let Some(level) = levels.next() {
        node.remove_child(level);
    }
}

/// Empties `node`'s subtree level by level; call from the node type's `Drop`, so dropping
/// never recurses once per level.
pub(crate) fn drop_subtree<N: LevelNode>(node: &mut N) {
    let mut pending = node.take_children();
    while let Some(mut next) = pending.pop() {
        pending.extend(next.take_children());
    }
}

/// What one level of a path costs a tree at most, in bytes, besides the level's text: its
/// node's entry in the parent ([`Children`]) and the key's allocation. Subscriptions and
/// retained messages are charged this per level of their filter or topic, so a deep path of
/// empty levels (`a/////…`) costs its holder what it costs the broker (the outside audit
/// measured ~470 bytes a level before children were kept this compactly, and ~100x the
/// charge for such filters). A test holds both trees' entries under it.
pub(crate) const LEVEL_COST: usize = 160;

/// Holds a tree's level (its node's entry in the parent, plus the key's smallest
/// allocation, 32, and the allocator's header, 16) under [`LEVEL_COST`].
#[cfg(test)]
pub(crate) fn assert_level_within_cost<N>() {
    let entry = std::mem::size_of::<(Box<str>, N)>();
    assert!(entry + 48 <= LEVEL_COST, "{entry} bytes an entry");
}

/// The levels of a topic or filter (`a/b` is 2, `` is 1).
pub(crate) fn levels(path: &str) -> usize {
    path.bytes().filter(|b| *b == b'/').count() + 1
}

/// Above this many children a node keeps them in a B-tree; at or below, in a sorted vector.
const FEW: usize = 16;

/// A node's children by level, in level order. Few children sit in a sorted vector sized to
/// fit (a level of a deep, narrow path costs one entry, not a hash table's or B-tree node's
/// minimum allocation of several hundred bytes); many sit in a B-tree, so a wide node stays
/// logarithmic to insert into and to search.
pub(crate) enum Children<N> {
    Few(Vec<(Box<str>, N)>),
    /// Boxed: the enum then takes a vector's 24 bytes (a bare map would make it 32), and
    /// it is in every node.
    #[allow(clippy::box_collection)]
    Many(Box<BTreeMap<Box<str>, N>>),
}

impl<N> Default for Children<N> {
    fn default() -> Self {
        Children::Few(Vec::new())
    }
}

impl<N> Children<N> {
    pub(crate) fn len(&self) -> usize {
        match self {
            Children::Few(few) => few.len(),
            Children::Many(many) => many.len(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn find(few: &[(Box<str>, N)], level: &str) -> Result<usize, usize> {
        few.binary_search_by(|(key, _)| (**key).cmp(level))
    }

    pub(crate) fn get(&self, level: &str) -> Option<&N> {
        match self {
            Children::Few(few) => Self::find(few, level).ok().map(|i| &few[i].1),
            Children::Many(many) => many.get(level),
        }
    }

    pub(crate) fn get_mut(&mut self, level: &str) -> Option<&mut N> {
        match self {
            Children::Few(few) => match Self::find(few, level) {
                Ok(i) => Some(&mut few[i].1),
                Err(_) => None,
            },
            Children::Many(many) => many.get_mut(level),
        }
    }

    #[cfg(test)]
    pub(crate) fn contains(&self, level: &str) -> bool {
        self.get(level).is_some()
    }

    /// The child at `level`, made with `make` if there is none.
    pub(crate) fn get_or_insert_with(&mut self, level: &str, make: impl FnOnce() -> N) -> &mut N {
        if let Children::Few(few) = self {
            if few.len() >= FEW && Self::find(few, level).is_err() {
                let many: BTreeMap<Box<str>, N> = std::mem::take(few).into_iter().collect();
                *self = Children::Many(Box::new(many));
            }
        }
        match self {
            Children::Few(few) => {
                let i = match Self::find(few, level) {
                    Ok(i) => i,
                    Err(i) => {
                        // Grow by one: the vector's own growth would reserve 4 entries
                        // for the first, and most nodes of a deep path have one child.
                        few.reserve_exact(1);
                        few.insert(i, (Box::from(level), make()));
                        i
                    }
                };
                &mut few[i].1
            }
            Children::Many(many) => many.entry(Box::from(level)).or_insert_with(make),
        }
    }

    /// Removes the child at `level`; a B-tree left with few children becomes a vector again.
    pub(crate) fn remove(&mut self, level: &str) -> Option<N> {
        match self {
            Children::Few(few) => {
                let removed = Self::find(few, level).ok().map(|i| few.remove(i).1);
                if few.capacity() > few.len() * 2 {
                    few.shrink_to_fit();
                }
                removed
            }
            Children::Many(many) => {
                let removed = many.remove(level);
                if many.len() <= FEW / 2 {
                    let mut few: Vec<(Box<str>, N)> = Vec::with_capacity(many.len());
                    few.extend(std::mem::take(&mut **many));
                    *self = Children::Few(few);
                }
                removed
            }
        }
    }

    /// Moves every child out (for an iterative drop).
    pub(crate) fn take_all(&mut self) -> Vec<N> {
        match std::mem::take(self) {
            Children::Few(few) => few.into_iter().map(|(_, n)| n).collect(),
            Children::Many(many) => many.into_values().collect(),
        }
    }

    /// The children whose levels lie in `(lower, upper)`, in level order.
    pub(crate) fn range<'a>(&'a self, lower: Bound<&str>, upper: Bound<&str>) -> ChildRange<'a, N> {
        match self {
            Children::Few(few) => {
                let start = match lower {
                    Bound::Included(l) => few.partition_point(|(k, _)| **k < *l),
                    Bound::Excluded(l) => few.partition_point(|(k, _)| **k <= *l),
                    Bound::Unbounded => 0,
                };
                let end = match upper {
                    Bound::Included(u) => few.partition_point(|(k, _)| **k <= *u),
                    Bound::Excluded(u) => few.partition_point(|(k, _)| **k < *u),
                    Bound::Unbounded => few.len(),
                };
                ChildRange::Few(few.get(start..end.max(start)).unwrap_or(&[]).iter())
            }
            // `BTreeMap::range` panics on bounds that cross; they hold nothing.
            Children::Many(_) if crossed(lower, upper) => ChildRange::Few([].iter()),
            Children::Many(many) => ChildRange::Many(many.range::<str, _>((lower, upper))),
        }
    }
}

/// True if no level lies between `lower` and `upper`'s bounds because they cross.
fn crossed(lower: Bound<&str>, upper: Bound<&str>) -> bool {
    match (lower, upper) {
        (Bound::Included(l), Bound::Included(u)) => l > u,
        (Bound::Included(l) | Bound::Excluded(l), Bound::Excluded(u))
        | (Bound::Excluded(l), Bound::Included(u)) => l >= u,
        _ => false,
    }
}

/// An ordered walk over some of a node's children (see [`Children::range`]).
pub(crate) enum ChildRange<'a, N> {
    Few(std::slice::Iter<'a, (Box<str>, N)>),
    Many(btree_map::Range<'a, Box<str>, N>),
}

impl<'a, N> Iterator for ChildRange<'a, N> {
    type Item = (&'a str, &'a N);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            ChildRange::Few(it) => it.next().map(|(k, n)| (&**k, n)),
            ChildRange::Many(it) => it.next().map(|(k, n)| (&**k, n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ops::RangeBounds;

    fn keys(c: &Children<u32>, lower: Bound<&str>, upper: Bound<&str>) -> Vec<String> {
        c.range(lower, upper).map(|(k, _)| k.to_string()).collect()
    }

    /// Both representations answer alike, across the switch in both directions.
    #[test]
    fn children_switch_between_vector_and_btree_without_losing_order_or_entries() {
        assert_eq!(
            std::mem::size_of::<Children<[u64; 8]>>(),
            24,
            "a vector's size"
        );
        let mut c: Children<u32> = Children::default();
        let mut model: BTreeMap<String, u32> = BTreeMap::new();
        // A fixed shuffle of 0..40, inserted, then removed in another order.
        let order: Vec<u32> = (0..40).map(|i| (i * 17) % 40).collect();
        for (n, i) in order.iter().enumerate() {
            let level = format!("l{i:02}");
            *c.get_or_insert_with(&level, || *i) += 0;
            model.insert(level, *i);
            assert_eq!(c.len(), n + 1);
            assert_eq!(matches!(c, Children::Many(_)), n + 1 > FEW);
        }
        assert_eq!(
            keys(&c, Bound::Unbounded, Bound::Unbounded),
            model.keys().cloned().collect::<Vec<_>>()
        );
        assert_eq!(
            keys(&c, Bound::Included("l10"), Bound::Excluded("l13")),
            ["l10", "l11", "l12"]
        );
        for i in order.iter().rev().step_by(2) {
            let level = format!("l{i:02}");
            assert_eq!(c.remove(&level), model.remove(&level));
        }
        for i in &order {
            let level = format!("l{i:02}");
            assert_eq!(c.get(&level), model.get(&level));
        }
        while let Some(level) = model.keys().next().cloned() {
            assert_eq!(c.remove(&level), model.remove(&level));
            assert_eq!(c.len(), model.len());
        }
        assert!(matches!(c, Children::Few(_)) && c.is_empty());
        assert_eq!(
            keys(&c, Bound::Included("a"), Bound::Included("z")),
            Vec::<String>::new()
        );
    }

    #[test]
    fn few_children_ranges_match_a_btree() {
        // Few children (a vector) and many (a B-tree) answer every range alike.
        for extra in [0, 20] {
            let mut c: Children<u32> = Children::default();
            let mut model: BTreeMap<Box<str>, u32> = BTreeMap::new();
            let filler = (0..extra).map(|i| format!("m{i:02}"));
            for level in ["", "#", "+", "a", "ab", "b", "z"]
                .map(String::from)
                .into_iter()
                .chain(filler)
            {
                c.get_or_insert_with(&level, || 0);
                model.insert(Box::from(level.as_str()), 0);
            }
            assert_eq!(matches!(c, Children::Many(_)), extra > 0);
            check_ranges(&c, &model);
        }
    }

    fn check_ranges(c: &Children<u32>, model: &BTreeMap<Box<str>, u32>) {
        let bounds = [
            Bound::Unbounded,
            Bound::Included("a"),
            Bound::Excluded("a"),
            Bound::Included("c"),
        ];
        for lower in bounds {
            for upper in bounds {
                let expected: Vec<String> = model
                    .keys()
                    .filter(|k| {
                        <(Bound<&str>, Bound<&str>) as RangeBounds<str>>::contains(
                            &(lower, upper),
                            &***k,
                        )
                    })
                    .map(|k| k.to_string())
                    .collect();
                assert_eq!(keys(c, lower, upper), expected, "{lower:?}..{upper:?}");
            }
        }
    }
}
