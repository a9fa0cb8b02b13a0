//! Pagination: every list takes `limit` (1..=1000, default 100) and `after` (the `next`
//! of the page before) and answers `{"items": [...], "next": CURSOR or null}`.

use serde::{Deserialize, Serialize};

/// Default page size.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest page.
pub const MAX_LIMIT: usize = 1000;

/// Query parameters of a list.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Items per page (1..=1000; default 100).
    pub limit: Option<usize>,
    /// Start after this cursor (the `next` of the previous page).
    pub after: Option<String>,
}

impl PageQuery {
    /// The page size asked for, clamped.
    pub fn limit(&self) -> usize {
        self.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT)
    }
}

/// One page of a list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Cursor of the next page; null on the last.
    pub next: Option<String>,
}

impl<T> Page<T> {
    /// A page of `items` sorted by `key`, after `after`, of at most `limit`.
    pub fn of(mut items: Vec<T>, query: &PageQuery, key: impl Fn(&T) -> String) -> Page<T> {
        let limit = query.limit();
        if let Some(after) = &query.after {
            items.retain(|i| key(i).as_str() > after.as_str());
        }
        items.sort_by_key(|i| key(i));
        let more = items.len() > limit;
        items.truncate(limit);
        let next = if more { items.last().map(&key) } else { None };
        Page { items, next }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_walk_the_whole_list_once() {
        let all: Vec<u32> = (0..25).collect();
        let key = |i: &u32| format!("{i:03}");
        let mut q = PageQuery {
            limit: Some(10),
            after: None,
        };
        let mut seen = Vec::new();
        loop {
            let p = Page::of(all.clone(), &q, key);
            seen.extend(p.items);
            match p.next {
                Some(n) => q.after = Some(n),
                None => break,
            }
        }
        assert_eq!(seen, all);
    }
}
