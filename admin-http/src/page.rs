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
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// Start after this cursor (the `next` of the previous page).
    pub after: Option<String>,
}

/// A page size as asked for (default [`DEFAULT_LIMIT`]); outside 1..=1000 is the caller's
/// error, as the OpenAPI document says.
pub fn limit(asked: Option<usize>) -> Result<usize, crate::error::AdminError> {
    match asked.unwrap_or(DEFAULT_LIMIT) {
        n @ 1..=MAX_LIMIT => Ok(n),
        _ => Err(crate::error::AdminError::BadRequest(format!(
            "limit: 1 to {MAX_LIMIT}"
        ))),
    }
}

impl PageQuery {
    /// The page size asked for.
    pub fn limit(&self) -> Result<usize, crate::error::AdminError> {
        limit(self.limit)
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
    pub fn of(
        mut items: Vec<T>,
        query: &PageQuery,
        key: impl Fn(&T) -> String,
    ) -> Result<Page<T>, crate::error::AdminError> {
        let limit = query.limit()?;
        if let Some(after) = &query.after {
            items.retain(|i| key(i).as_str() > after.as_str());
        }
        items.sort_by_key(|i| key(i));
        let more = items.len() > limit;
        items.truncate(limit);
        let next = if more { items.last().map(&key) } else { None };
        Ok(Page { items, next })
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
            let p = Page::of(all.clone(), &q, key).unwrap();
            seen.extend(p.items);
            match p.next {
                Some(n) => q.after = Some(n),
                None => break,
            }
        }
        assert_eq!(seen, all);
    }
}
