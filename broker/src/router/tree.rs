//! What the subscription trie and the retained-message tree share: nodes keyed by topic
//! level, walked down a path, pruned and dropped without recursion (a client chooses the
//! depth of a topic, and a stack overflow aborts the whole process).

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
