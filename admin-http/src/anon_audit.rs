//! What requests without credentials may write to the audit log, and how much.
//!
//! Rate-limited and failed logins are worth recording, but anyone who reaches the port
//! can cause them, so they are bounded twice over:
//!
//! - in size: such a record names the username it was given only through [`clip`] (at
//!   most 64 bytes, escaped);
//! - in number: `[admin] anonymous_audit_per_minute` records a minute, the rest counted
//!   and summed up in one `admin.audit.suppressed` record (the broker's
//!   [`AuditBudget`], which the MQTT port's refused logins share), written at once when
//!   someone reads the log.

use std::time::Instant;

use messs_broker::audit_budget::AuditBudget;

/// Longest form of an unauthenticated username in a record, bytes (before the quotes).
pub const MAX_SHOWN: usize = 64;

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
}

/// What to write for one event.
pub use messs_broker::audit_budget::Admission;

/// The budget of audit records for requests without credentials.
pub struct AnonBudget(AuditBudget);

impl AnonBudget {
    /// `per_minute` records a minute, and a burst of as many; full at `now`.
    pub fn new(per_minute: u32, now: Instant) -> Self {
        const PLURALS: &[&str] = &["rate-limited logins", "failed logins"];
        AnonBudget(AuditBudget::new(
            per_minute,
            "unauthenticated events",
            PLURALS,
            now,
        ))
    }

    /// One `event` at `now` (`now_ms` on the wall clock): whether it gets a record, and a
    /// due summary to write first.
    pub fn admit(&self, event: AnonEvent, now: Instant, now_ms: u64) -> Admission {
        self.0.admit(event.index(), now, now_ms)
    }

    /// The summary of the suppressed events: when due at `now`, or with `force` (someone
    /// is reading the log) whenever there is one.
    pub fn flush(&self, now: Instant, force: bool) -> Option<String> {
        self.0.flush(now, force)
    }

    /// Events of each kind not recorded one by one since the start (the metric).
    pub fn suppressed(&self) -> [(AnonEvent, u64); 2] {
        let n = self.0.suppressed();
        AnonEvent::ALL.map(|e| (e, n.get(e.index()).copied().unwrap_or(0)))
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
    fn events_map_to_their_kinds() {
        let t = Instant::now();
        let b = AnonBudget::new(1, t);
        assert!(b.admit(AnonEvent::FailedLogin, t, 1).record);
        assert!(!b.admit(AnonEvent::RateLimitedLogin, t, 1).record);
        assert!(!b.admit(AnonEvent::FailedLogin, t, 1).record);
        assert!(!b.admit(AnonEvent::FailedLogin, t, 1).record);
        assert_eq!(
            b.suppressed(),
            [
                (AnonEvent::RateLimitedLogin, 1),
                (AnonEvent::FailedLogin, 2)
            ]
        );
        assert_eq!(
            b.flush(t, true).as_deref(),
            Some("3 unauthenticated events not recorded one by one (1 rate-limited logins, 2 failed logins) since 1 (Unix ms)")
        );
    }
}
