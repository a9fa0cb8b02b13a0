//! What requests without credentials may write to the audit log, and how much.
//!
//! Rate-limited and failed logins are worth recording, but anyone who reaches the port
//! can cause them, so they are bounded twice over:
//!
//! - in size: such a record names the username it was given only through [`clip`] (at
//!   most 64 bytes, escaped);
//! - in number: a token bucket of `[admin] anonymous_audit_per_minute` records a minute
//!   (and a burst of as many). Beyond it, events are only counted; the count is written
//!   as one `admin.audit.suppressed` record once the budget has a token again and a
//!   minute has passed since the first event it counts (so a long flood gives one
//!   summary a minute, not one per token), or at once when someone reads the log.
//!
//! Time is an input (`now`), as for every bucket of the broker.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Longest form of an unauthenticated username in a record, bytes (before the quotes).
pub const MAX_SHOWN: usize = 64;

/// How long suppressed events are gathered before their summary is due.
const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// An event caused by a request without credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnonEvent {
    /// A login refused by the per-address rate limit.
    RateLimitedLogin,
    /// A login refused for its credentials (unknown account, wrong password or code,
    /// locked, malformed).
    FailedLogin,
}

impl AnonEvent {
    /// Every kind, in the order of the counters.
    pub const ALL: [AnonEvent; 2] = [AnonEvent::RateLimitedLogin, AnonEvent::FailedLogin];

    fn index(self) -> usize {
        match self {
            AnonEvent::RateLimitedLogin => 0,
            AnonEvent::FailedLogin => 1,
        }
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            AnonEvent::RateLimitedLogin => "rate_limited_login",
            AnonEvent::FailedLogin => "failed_login",
        }
    }

    fn plural(self) -> &'static str {
        match self {
            AnonEvent::RateLimitedLogin => "rate-limited logins",
            AnonEvent::FailedLogin => "failed logins",
        }
    }
}

/// Events not recorded one by one since `since_ms`.
#[derive(Debug, Clone, Copy)]
struct Pending {
    counts: [u64; 2],
    since: Instant,
    since_ms: u64,
}

impl Pending {
    fn summary(&self) -> String {
        let total: u64 = self.counts.iter().sum();
        let parts: Vec<String> = AnonEvent::ALL
            .iter()
            .map(|e| format!("{} {}", self.counts[e.index()], e.plural()))
            .collect();
        format!(
            "{total} unauthenticated events not recorded one by one ({}) since {} (Unix ms)",
            parts.join(", "),
            self.since_ms
        )
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
    pending: Option<Pending>,
}

/// What to write for one event.
#[derive(Debug, PartialEq, Eq)]
pub struct Admission {
    /// The summary of earlier suppressed events, to write before anything else.
    pub summary: Option<String>,
    /// Whether this event gets its own record.
    pub record: bool,
}

/// The budget of audit records for requests without credentials.
pub struct AnonBudget {
    per_minute: f64,
    bucket: Mutex<Bucket>,
    suppressed: [AtomicU64; 2],
}

impl AnonBudget {
    /// `per_minute` records a minute, and a burst of as many; full at `now`.
    pub fn new(per_minute: u32, now: Instant) -> Self {
        let per_minute = f64::from(per_minute.max(1));
        AnonBudget {
            per_minute,
            bucket: Mutex::new(Bucket {
                tokens: per_minute,
                last: now,
                pending: None,
            }),
            suppressed: [AtomicU64::new(0), AtomicU64::new(0)],
        }
    }

    fn lock(&self, now: Instant) -> std::sync::MutexGuard<'_, Bucket> {
        let mut b = self
            .bucket
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let refill = now.saturating_duration_since(b.last).as_secs_f64() * self.per_minute / 60.0;
        b.tokens = (b.tokens + refill).min(self.per_minute);
        b.last = b.last.max(now);
        b
    }

    /// The summary, taking a token, if one is due at `now`.
    fn due(b: &mut Bucket, now: Instant) -> Option<String> {
        let p = b.pending?;
        if b.tokens < 1.0 || now.saturating_duration_since(p.since) < SUMMARY_EVERY {
            return None;
        }
        b.tokens -= 1.0;
        b.pending = None;
        Some(p.summary())
    }

    /// One `event` at `now` (`now_ms` on the wall clock): whether it gets a record, and a
    /// due summary to write first.
    pub fn admit(&self, event: AnonEvent, now: Instant, now_ms: u64) -> Admission {
        let mut b = self.lock(now);
        let summary = Self::due(&mut b, now);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Admission {
                summary,
                record: true,
            };
        }
        let p = b.pending.get_or_insert(Pending {
            counts: [0; 2],
            since: now,
            since_ms: now_ms,
        });
        p.counts[event.index()] += 1;
        self.suppressed[event.index()].fetch_add(1, Ordering::Relaxed);
        Admission {
            summary,
            record: false,
        }
    }

    /// The summary of the suppressed events: when due at `now`, or with `force` (someone
    /// is reading the log) whenever there is one.
    pub fn flush(&self, now: Instant, force: bool) -> Option<String> {
        let mut b = self.lock(now);
        if force {
            return b.pending.take().map(|p| p.summary());
        }
        Self::due(&mut b, now)
    }

    /// Events of each kind not recorded one by one since the start (the metric).
    pub fn suppressed(&self) -> [(AnonEvent, u64); 2] {
        AnonEvent::ALL.map(|e| (e, self.suppressed[e.index()].load(Ordering::Relaxed)))
    }
}

/// A name given by someone not logged in, as a record may show it: quoted, escaped (no
/// control character, quote or non-ASCII character gets through as itself), at most
/// [`MAX_SHOWN`] bytes between the quotes; a longer one is cut and says its length.
pub fn clip(name: &str) -> String {
    let mut out = String::with_capacity(MAX_SHOWN + 32);
    out.push('"');
    let mut shown = 0;
    let mut cut = false;
    for c in name.chars() {
        let piece = c.escape_default();
        if shown + piece.len() > MAX_SHOWN {
            cut = true;
            break;
        }
        shown += piece.len();
        out.extend(piece);
    }
    out.push('"');
    if cut {
        out.push_str(&format!("... ({} bytes)", name.len()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped_and_clipped() {
        assert_eq!(clip("admin"), "\"admin\"");
        assert_eq!(clip("a\"b\n\u{1b}"), "\"a\\\"b\\n\\u{1b}\"");
        assert_eq!(clip("\u{202e}x"), "\"\\u{202e}x\"");
        let long = clip(&"x".repeat(1 << 20));
        assert_eq!(long, format!("\"{}\"... (1048576 bytes)", "x".repeat(64)));
        let controls = clip(&"\u{7}".repeat(100));
        assert!(controls.len() < MAX_SHOWN + 30, "{controls}");
        assert!(!controls.contains('\u{7}'));
    }

    #[test]
    fn beyond_the_budget_events_are_counted_then_summed_up_once() {
        let t = Instant::now();
        let b = AnonBudget::new(3, t);
        for _ in 0..3 {
            let a = b.admit(AnonEvent::FailedLogin, t, 1000);
            assert_eq!((a.summary, a.record), (None, true));
        }
        for i in 0..10 {
            let e = if i % 2 == 0 {
                AnonEvent::FailedLogin
            } else {
                AnonEvent::RateLimitedLogin
            };
            assert!(!b.admit(e, t, 1000).record);
        }
        // A token is back after 20 s, but the summary waits a minute: the event takes it.
        let a = b.admit(AnonEvent::FailedLogin, t + Duration::from_secs(20), 21_000);
        assert_eq!((a.summary, a.record), (None, true));
        assert!(b.flush(t + Duration::from_secs(30), false).is_none());
        // After a minute, the first token goes to the one summary.
        let a = b.admit(AnonEvent::FailedLogin, t + Duration::from_secs(61), 62_000);
        assert_eq!(
            a.summary.as_deref(),
            Some("10 unauthenticated events not recorded one by one (5 rate-limited logins, 5 failed logins) since 1000 (Unix ms)")
        );
        assert!(a.record, "two tokens had come back by then");
        assert!(b.flush(t + Duration::from_secs(200), true).is_none());
        assert_eq!(
            b.suppressed(),
            [
                (AnonEvent::RateLimitedLogin, 5),
                (AnonEvent::FailedLogin, 5)
            ]
        );
    }

    #[test]
    fn a_reader_gets_the_summary_at_once_and_a_flood_stays_within_the_budget() {
        let t = Instant::now();
        let b = AnonBudget::new(60, t);
        let mut written = 0;
        // Ten minutes of 100 events a second.
        for ms in (0..600_000u64).step_by(10) {
            let now = t + Duration::from_millis(ms);
            let a = b.admit(AnonEvent::RateLimitedLogin, now, ms);
            written += usize::from(a.record) + usize::from(a.summary.is_some());
        }
        assert!(written <= 60 + 600 + 1, "{written} records in ten minutes");
        let summary = b.flush(t + Duration::from_secs(600), true);
        assert!(summary.is_some());
        assert!(b.flush(t + Duration::from_secs(600), true).is_none());
    }
}
