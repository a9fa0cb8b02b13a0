//! Per-tenant quotas and shared rates, so one tenant at its limits cannot take another's
//! capacity. Every tenant gets the configuration's `[tenant_limits]`; a tenant's registry
//! record may override any of them by name (`messs tenant set-limit`). Zero is no limit.
//!
//! The rates are token buckets shared by all of the tenant's connections: a connection
//! charges its own buckets and then its tenant's, and pauses for the longer debt, so a
//! tenant's fleet together stays within the tenant's rate while other tenants run free.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Deserialize;

use super::bucket::TokenBucket;
use super::gcra::Gcra;

/// One tenant's limits (0: none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantLimits {
    /// Connections open at once (more: CONNACK 0x97 Quota exceeded; 3.1.1: 3).
    pub max_connections: u64,
    /// Sessions held, online or offline (a CONNECT that needs one more: 0x97).
    pub max_sessions: u64,
    /// Subscriptions held by all of the tenant's sessions (more: SUBACK 0x97).
    pub max_subscriptions: u64,
    /// Packets a second from all of the tenant's connections together (PUBLISH,
    /// SUBSCRIBE, UNSUBSCRIBE, PINGREQ); over it, connections pause reading.
    pub messages_per_sec: u64,
    /// Packets beyond the rate at once (0: one second's worth).
    pub messages_burst: u64,
    /// Bytes a second of those packets, all connections together.
    pub bytes_per_sec: u64,
    /// Bytes beyond the rate at once (0: one second's worth).
    pub bytes_burst: u64,
    /// New connections a second (more: CONNACK 0x9F Connection rate exceeded; 3.1.1: 3).
    pub connects_per_sec: u64,
    /// New connections beyond the rate at once (0: one second's worth).
    pub connects_burst: u64,
    /// Largest packet its clients may send (below `limits.max_packet_size`; told to v5
    /// clients in CONNACK; larger: DISCONNECT 0x95 Packet too large).
    pub max_packet_size: u64,
    /// Retained messages it keeps (below `limits.max_retained_messages`; a retained
    /// PUBLISH to a new topic beyond it is delivered but not retained, v5: PUBACK 0x97).
    pub max_retained_messages: u64,
    /// Bytes of retained messages it keeps (below `limits.max_retained_bytes`; beyond it
    /// as for `max_retained_messages`).
    pub max_retained_bytes: u64,
    /// Bytes all of its sessions hold in memory together, queued and in flight (within
    /// `limits.max_session_bytes_total`): beyond it further deliveries to its sessions are
    /// dropped and counted (a persistent session's wait on disk instead).
    pub max_queued_bytes: u64,
    /// Days the details of its audit records are kept (what its clients did: connects,
    /// disconnects, ACL refusals, flapping bans, auto-registrations); older ones keep
    /// only their time, action and link. Never below `storage.audit.keep_at_least_days`.
    pub audit_max_age_days: u64,
    /// Bytes of its audit records' details kept; beyond it the oldest are dropped as for
    /// `audit_max_age_days`.
    pub audit_max_bytes: u64,
}

/// The names a registry override may use, as in `[tenant_limits]`.
pub const NAMES: &[&str] = &[
    "max_connections",
    "max_sessions",
    "max_subscriptions",
    "messages_per_sec",
    "messages_burst",
    "bytes_per_sec",
    "bytes_burst",
    "connects_per_sec",
    "connects_burst",
    "max_packet_size",
    "max_retained_messages",
    "max_retained_bytes",
    "max_queued_bytes",
    "audit_max_age_days",
    "audit_max_bytes",
];

impl TenantLimits {
    fn slot(&mut self, name: &str) -> Option<&mut u64> {
        Some(match name {
            "max_connections" => &mut self.max_connections,
            "max_sessions" => &mut self.max_sessions,
            "max_subscriptions" => &mut self.max_subscriptions,
            "messages_per_sec" => &mut self.messages_per_sec,
            "messages_burst" => &mut self.messages_burst,
            "bytes_per_sec" => &mut self.bytes_per_sec,
            "bytes_burst" => &mut self.bytes_burst,
            "connects_per_sec" => &mut self.connects_per_sec,
            "connects_burst" => &mut self.connects_burst,
            "max_packet_size" => &mut self.max_packet_size,
            "max_retained_messages" => &mut self.max_retained_messages,
            "max_retained_bytes" => &mut self.max_retained_bytes,
            "max_queued_bytes" => &mut self.max_queued_bytes,
            "audit_max_age_days" => &mut self.audit_max_age_days,
            "audit_max_bytes" => &mut self.audit_max_bytes,
            _ => return None,
        })
    }

    /// The tenant's own audit retention (see `messs_storage::Store::prune_audit`).
    pub fn audit_retention(&self) -> messs_storage::audit::TenantAuditRetention {
        messs_storage::audit::TenantAuditRetention {
            max_age_ms: (self.audit_max_age_days > 0)
                .then(|| self.audit_max_age_days.saturating_mul(86_400_000)),
            max_bytes: (self.audit_max_bytes > 0).then_some(self.audit_max_bytes),
        }
    }

    /// These limits with a tenant's overrides applied; an unknown name is an error.
    pub fn with(mut self, overrides: &[(String, u64)]) -> Result<Self, String> {
        for (name, value) in overrides {
            *self.slot(name).ok_or_else(|| {
                format!(
                    "unknown tenant limit {name:?} (known: {})",
                    NAMES.join(", ")
                )
            })? = *value;
        }
        Ok(self)
    }
}

/// Whether a limit allows one more when `now` are held.
pub fn below(limit: u64, now: usize) -> bool {
    limit == 0 || (now as u64) < limit
}

/// What a tenant's sessions and retained messages may hold and hold now: read where the
/// router and the sessions charge them, so atomics (a delivery takes no lock for it). A
/// cap of `usize::MAX` is none.
#[derive(Debug)]
pub struct TenantHoldings {
    retained_messages: AtomicUsize,
    retained_bytes: AtomicUsize,
    max_queued_bytes: AtomicUsize,
    queued_bytes: AtomicUsize,
}

impl Default for TenantHoldings {
    fn default() -> Self {
        TenantHoldings {
            retained_messages: AtomicUsize::new(usize::MAX),
            retained_bytes: AtomicUsize::new(usize::MAX),
            max_queued_bytes: AtomicUsize::new(usize::MAX),
            queued_bytes: AtomicUsize::new(0),
        }
    }
}

fn cap(limit: u64) -> usize {
    match limit {
        0 => usize::MAX,
        n => usize::try_from(n).unwrap_or(usize::MAX),
    }
}

impl TenantHoldings {
    fn set(&self, limits: &TenantLimits) {
        let caps = [
            (&self.retained_messages, limits.max_retained_messages),
            (&self.retained_bytes, limits.max_retained_bytes),
            (&self.max_queued_bytes, limits.max_queued_bytes),
        ];
        for (slot, limit) in caps {
            slot.store(cap(limit), Ordering::Relaxed);
        }
    }

    /// The tenant's own caps on retained messages: (count, bytes).
    pub fn retained_caps(&self) -> (usize, usize) {
        (
            self.retained_messages.load(Ordering::Relaxed),
            self.retained_bytes.load(Ordering::Relaxed),
        )
    }

    /// Takes `bytes` of queued messages: how many were counted (0 for a tenant without
    /// a cap, whose sessions then touch no shared counter), or `None` (nothing taken) past
    /// the tenant's cap.
    pub fn try_queue(&self, bytes: usize) -> Option<usize> {
        let max = self.max_queued_bytes.load(Ordering::Relaxed);
        if max == usize::MAX {
            return Some(0);
        }
        let before = self.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        if before.saturating_add(bytes) > max {
            self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            return None;
        }
        Some(bytes)
    }

    /// Takes `bytes` whatever the cap (state restored from the store at start-up); how
    /// many were counted (0 without a cap).
    pub fn force_queue(&self, bytes: usize) -> usize {
        if self.max_queued_bytes.load(Ordering::Relaxed) == usize::MAX {
            return 0;
        }
        self.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        bytes
    }

    /// Gives `bytes` of queued messages back.
    pub fn unqueue(&self, bytes: usize) {
        if bytes > 0 {
            self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
        }
    }

    /// Bytes its sessions hold in memory now, counted while it has a cap (a cap set at
    /// runtime counts what is charged from then on).
    #[cfg(test)]
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes.load(Ordering::Relaxed)
    }
}

/// A tenant's shared buckets: packets and bytes lock-free (every packet of every one of
/// its connections charges them, on any core), connections under a lock (one per login).
#[derive(Debug, Default)]
pub struct TenantRates {
    limits: Mutex<TenantLimits>,
    messages: Gcra,
    bytes: Gcra,
    connects: Mutex<Option<TokenBucket>>,
    /// Whether packets are rate limited: read on every packet, so a tenant without packet
    /// rates costs its connections one relaxed load.
    packets_limited: AtomicBool,
    /// Packets a connection gathers before it charges them to the shared counters.
    batch: AtomicU32,
    /// Its caps on what it holds, shared with its routes and sessions.
    pub holdings: Arc<TenantHoldings>,
}

impl TenantRates {
    /// Takes new limits (the connect bucket keeps what it holds).
    pub fn set(&self, limits: TenantLimits, now_us: u64) {
        self.messages
            .set(limits.messages_per_sec, limits.messages_burst);
        self.bytes.set(limits.bytes_per_sec, limits.bytes_burst);
        {
            let mut c = self.connects.lock().unwrap_or_else(PoisonError::into_inner);
            match (c.as_mut(), limits.connects_per_sec) {
                (_, 0) => *c = None,
                (Some(b), rate) => b.set_limit(rate, limits.connects_burst, now_us),
                (None, rate) => *c = Some(TokenBucket::new(rate, limits.connects_burst, now_us)),
            }
        }
        self.holdings.set(&limits);
        *self.limits.lock().unwrap_or_else(PoisonError::into_inner) = limits;
        self.packets_limited.store(
            limits.messages_per_sec > 0 || limits.bytes_per_sec > 0,
            Ordering::Relaxed,
        );
        // One charge per millisecond's worth of the tenant's rate, 1 to 32 packets: a
        // slow tenant is charged packet by packet, a fast one without every packet of
        // every connection contending for one counter.
        let batch = match limits.messages_per_sec {
            0 => 8,
            rate => (rate / 1000).clamp(1, 32),
        };
        self.batch.store(batch as u32, Ordering::Relaxed);
    }

    /// Packets a connection gathers before charging them.
    pub fn batch(&self) -> u32 {
        self.batch.load(Ordering::Relaxed).max(1)
    }

    pub fn limits(&self) -> TenantLimits {
        *self.limits.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Charges `packets` packets of `bytes` bytes in all to the tenant's rates; how long
    /// the connection must pause (zero when the tenant is within them).
    pub fn charge(&self, packets: u32, bytes: u64, now_ns: u64) -> Duration {
        let m = self.messages.charge(u64::from(packets), now_ns);
        let b = self.bytes.charge(bytes, now_ns);
        m.max(b)
    }

    /// Takes a connection attempt from the tenant's connect rate; false if over it.
    pub fn try_connect(&self, now_us: u64) -> bool {
        let mut c = self.connects.lock().unwrap_or_else(PoisonError::into_inner);
        c.as_mut().is_none_or(|k| k.try_take(1, now_us))
    }

    /// Whether packets are rate limited (connections of tenants without packet rates skip
    /// the charge).
    pub fn limits_packets(&self) -> bool {
        self.packets_limited.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_by_name_and_unknown_names_refused() {
        let base = TenantLimits {
            max_connections: 100,
            ..Default::default()
        };
        let t = base
            .with(&[
                ("max_connections".into(), 5),
                ("messages_per_sec".into(), 50),
            ])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((t.max_connections, t.messages_per_sec), (5, 50));
        assert!(base.with(&[("max_conections".into(), 5)]).is_err());
        assert!(below(0, 1_000_000));
        assert!(below(5, 4) && !below(5, 5));
    }

    #[test]
    fn shared_rates_pace_all_connections_together() {
        let r = TenantRates::default();
        r.set(
            TenantLimits {
                messages_per_sec: 100,
                messages_burst: 10,
                connects_per_sec: 1,
                connects_burst: 2,
                ..Default::default()
            },
            0,
        );
        assert!(r.limits_packets());
        // Two connections drawing from one bucket: the 11th packet waits 10 ms.
        let now_ns = 5_000_000_000;
        for _ in 0..10 {
            assert_eq!(r.charge(1, 10, now_ns), Duration::ZERO);
        }
        assert_eq!(r.charge(1, 10, now_ns), Duration::from_millis(10));
        assert_eq!(r.batch(), 1, "100/s is charged packet by packet");
        assert!(r.try_connect(0) && r.try_connect(0) && !r.try_connect(0));
        assert!(r.try_connect(1_000_000));
        r.set(TenantLimits::default(), 0);
        assert!(!r.limits_packets());
        assert_eq!(r.charge(1, 10, 0), Duration::ZERO);
    }
}
