//! A budget of audit records for events anyone can cause (refused logins on the MQTT port,
//! unauthenticated requests to the admin plane).
//!
//! Such events are worth recording, but an attacker who can reach the port can cause them
//! as fast as the broker can refuse, and every record is kept for good. So they are
//! bounded in number: a token bucket of `per_minute` records a minute (and a burst of as
//! many). Beyond it, events are only counted; the count is written as one summary record
//! once the budget has a token again and a minute has passed since the first event it
//! counts (a long flood gives one summary a minute, not one per token), or at once when
//! someone asks ([`AuditBudget::flush`] with `force`: a reader of the log, shutdown).
//!
//! Time is an input (`now`), as for every bucket of the broker.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// How long suppressed events are gathered before their summary is due.
const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// Events not recorded one by one since `since_ms`, per kind.
#[derive(Debug, Clone)]
struct Pending {
    counts: Box<[u64]>,
    since: Instant,
    since_ms: u64,
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

/// The budget of audit records for one class of events, of a few kinds.
pub struct AuditBudget {
    per_minute: f64,
    /// What the events are, for the summary ("unauthenticated events").
    subject: &'static str,
    /// Each kind's plural, for the summary ("failed logins"); kinds are indexes into it.
    /// With one kind, the summary names only the subject.
    kinds: &'static [&'static str],
    bucket: Mutex<Bucket>,
    suppressed: Box<[AtomicU64]>,
}

impl AuditBudget {
    /// `per_minute` records a minute, and a burst of as many; full at `now`.
    pub fn new(
        per_minute: u32,
        subject: &'static str,
        kinds: &'static [&'static str],
        now: Instant,
    ) -> Self {
        let per_minute = f64::from(per_minute.max(1));
        AuditBudget {
            per_minute,
            subject,
            kinds,
            bucket: Mutex::new(Bucket {
                tokens: per_minute,
                last: now,
                pending: None,
            }),
            suppressed: kinds.iter().map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn lock(&self, now: Instant) -> MutexGuard<'_, Bucket> {
        let mut b = self.bucket.lock().unwrap_or_else(PoisonError::into_inner);
        let refill = now.saturating_duration_since(b.last).as_secs_f64() * self.per_minute / 60.0;
        b.tokens = (b.tokens + refill).min(self.per_minute);
        b.last = b.last.max(now);
        b
    }

    fn summary(&self, p: &Pending) -> String {
        let total: u64 = p.counts.iter().sum();
        let parts = if self.kinds.len() > 1 {
            let parts: Vec<String> = self
                .kinds
                .iter()
                .zip(p.counts.iter())
                .map(|(plural, n)| format!("{n} {plural}"))
                .collect();
            format!(" ({})", parts.join(", "))
        } else {
            String::new()
        };
        format!(
            "{total} {} not recorded one by one{parts} since {} (Unix ms)",
            self.subject, p.since_ms
        )
    }

    /// The summary, taking a token, if one is due at `now`.
    fn due(&self, b: &mut Bucket, now: Instant) -> Option<String> {
        let p = b.pending.as_ref()?;
        if b.tokens < 1.0 || now.saturating_duration_since(p.since) < SUMMARY_EVERY {
            return None;
        }
        let summary = self.summary(p);
        b.tokens -= 1.0;
        b.pending = None;
        Some(summary)
    }

    /// One event of kind `kind` (an index into the kinds given to [`AuditBudget::new`]) at
    /// `now` (`now_ms` on the wall clock): whether it gets a record, and a due summary to
    /// write first.
    pub fn admit(&self, kind: usize, now: Instant, now_ms: u64) -> Admission {
        let mut b = self.lock(now);
        let summary = self.due(&mut b, now);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Admission {
                summary,
                record: true,
            };
        }
        let kinds = self.kinds.len();
        let p = b.pending.get_or_insert_with(|| Pending {
            counts: vec![0; kinds].into_boxed_slice(),
            since: now,
            since_ms: now_ms,
        });
        if let Some(n) = p.counts.get_mut(kind) {
            *n += 1;
        }
        if let Some(n) = self.suppressed.get(kind) {
            n.fetch_add(1, Ordering::Relaxed);
        }
        Admission {
            summary,
            record: false,
        }
    }

    /// The summary of the suppressed events: when due at `now`, or with `force` (someone
    /// is reading the log, or the broker is stopping) whenever there is one.
    pub fn flush(&self, now: Instant, force: bool) -> Option<String> {
        let mut b = self.lock(now);
        if force {
            let p = b.pending.take()?;
            return Some(self.summary(&p));
        }
        self.due(&mut b, now)
    }

    /// Events of each kind not recorded one by one since the start (the metric), in the
    /// order of the kinds.
    pub fn suppressed(&self) -> Vec<u64> {
        self.suppressed
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KINDS: &[&str] = &["rate-limited logins", "failed logins"];

    #[test]
    fn beyond_the_budget_events_are_counted_then_summed_up_once() {
        let t = Instant::now();
        let b = AuditBudget::new(3, "unauthenticated events", KINDS, t);
        for _ in 0..3 {
            let a = b.admit(1, t, 1000);
            assert_eq!((a.summary, a.record), (None, true));
        }
        for i in 0..10 {
            assert!(!b.admit(i % 2, t, 1000).record);
        }
        // A token is back after 20 s, but the summary waits a minute: the event takes it.
        let a = b.admit(1, t + Duration::from_secs(20), 21_000);
        assert_eq!((a.summary, a.record), (None, true));
        assert!(b.flush(t + Duration::from_secs(30), false).is_none());
        // After a minute, the first token goes to the one summary.
        let a = b.admit(1, t + Duration::from_secs(61), 62_000);
        assert_eq!(
            a.summary.as_deref(),
            Some("10 unauthenticated events not recorded one by one (5 rate-limited logins, 5 failed logins) since 1000 (Unix ms)")
        );
        assert!(a.record, "two tokens had come back by then");
        assert!(b.flush(t + Duration::from_secs(200), true).is_none());
        assert_eq!(b.suppressed(), [5, 5]);
    }

    #[test]
    fn a_reader_gets_the_summary_at_once_and_a_flood_stays_within_the_budget() {
        let t = Instant::now();
        let b = AuditBudget::new(60, "events", KINDS, t);
        let mut written = 0;
        // Ten minutes of 100 events a second.
        for ms in (0..600_000u64).step_by(10) {
            let now = t + Duration::from_millis(ms);
            let a = b.admit(0, now, ms);
            written += usize::from(a.record) + usize::from(a.summary.is_some());
        }
        assert!(written <= 60 + 600 + 1, "{written} records in ten minutes");
        let summary = b.flush(t + Duration::from_secs(600), true);
        assert!(summary.is_some());
        assert!(b.flush(t + Duration::from_secs(600), true).is_none());
    }
}
