//! Audit records clients cause (a connect and a disconnect per connection, ACL denials,
//! refused logins) are not written one by one while free disk space is below the
//! watermark: anonymous connection churn alone would otherwise fill the disk with them
//! (the outside audit filled a tmpfs in 24 s). They are counted by action instead, and one
//! `audit.withheld` record sums them up — once a minute while space is low, and at the
//! first record written after it is back — so the log still says what happened, in a
//! bounded number of bytes. Operator actions and the broker's own events are written as
//! always.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How often a summary is written while space stays low.
const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// Whether clients can cause `action` (so it is withheld on a low disk).
pub(crate) fn is_client_caused(action: &str) -> bool {
    CLIENT_ACTIONS.contains(&action)
}

/// The withheld records, by action (a handful of fixed names: bounded).
#[derive(Default)]
pub(crate) struct Withheld {
    inner: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    by_action: BTreeMap<&'static str, u64>,
    since_ms: u64,
    last_summary: Option<Instant>,
}

impl Withheld {
    /// Counts one withheld record of `action`; returns a summary to write if one is due.
    pub(crate) fn withhold(&self, action: &str, now: Instant, now_ms: u64) -> Option<String> {
        let mut c = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let name = CLIENT_ACTIONS
            .iter()
            .find(|a| **a == action)
            .copied()
            .unwrap_or("other");
        *c.by_action.entry(name).or_default() += 1;
        if c.since_ms == 0 {
            c.since_ms = now_ms;
        }
        let due = c
            .last_summary
            .is_none_or(|at| now.duration_since(at) >= SUMMARY_EVERY);
        if !due {
            return None;
        }
        c.last_summary = Some(now);
        Some(summary(&c))
    }

    /// Whether nothing is withheld now.
    pub(crate) fn is_empty(&self) -> bool {
        let c = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        c.by_action.is_empty()
    }

    /// The summary of what is withheld, if anything (space is back: write it first).
    pub(crate) fn pending(&self) -> Option<String> {
        let c = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        (!c.by_action.is_empty()).then(|| summary(&c))
    }

    /// A summary was written: what it counted is recorded. (Counted again if written
    /// twice in a race: an over-count in the log, never a silent loss.)
    pub(crate) fn written(&self) {
        let mut c = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        c.by_action.clear();
        c.since_ms = 0;
    }
}

const CLIENT_ACTIONS: [&str; 7] = [
    "client.connect",
    "client.disconnect",
    "acl.deny",
    "auth.failure",
    "auth.lockout",
    "auth.audit.suppressed",
    "flapping.ban",
];

fn summary(c: &Counts) -> String {
    let total: u64 = c.by_action.values().sum();
    let each: Vec<String> = c
        .by_action
        .iter()
        .map(|(action, n)| format!("{action} {n}"))
        .collect();
    format!(
        "free disk space was below storage.min_free_disk_bytes: {total} records not written since {} ms (Unix): {}",
        c.since_ms,
        each.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_action_and_sums_up_once_a_minute() {
        let w = Withheld::default();
        let t0 = Instant::now();
        let first = w.withhold("client.connect", t0, 1000).unwrap();
        assert!(first.contains("client.connect 1"), "{first}");
        for _ in 0..5 {
            assert!(w.withhold("client.disconnect", t0, 1001).is_none());
        }
        let later = w
            .withhold("client.connect", t0 + SUMMARY_EVERY, 61_000)
            .unwrap();
        assert!(
            later.contains("7 records") && later.contains("client.disconnect 5"),
            "{later}"
        );
        w.written();
        assert!(w.pending().is_none());
    }
}
