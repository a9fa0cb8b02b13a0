//! The broker's figures as metric samples, for the admin plane to export (Prometheus text).
//! Collected when asked, from the counters the hot path keeps anyway (`Stats`, the
//! tenants' traffic counters, the store writer's), so exporting costs nothing between
//! scrapes. Every counter of `Stats` is listed here; drops, refusals and limit hits are one
//! family each with a `reason` label.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::state::BrokerState;
use crate::stats::Stats;

/// Whether a value only grows (since start) or goes up and down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only grows, from 0 at start.
    Counter,
    /// A level now.
    Gauge,
    /// Bucketed observations: samples with the suffixes `_bucket` (label `le`), `_sum` and
    /// `_count`.
    Histogram,
}

/// One sample: a family name, its help and kind, labels and the value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The family (`messs_...`; counters end in `_total`).
    pub name: &'static str,
    /// One line for people.
    pub help: &'static str,
    /// Counter or gauge.
    pub kind: MetricKind,
    /// Label names and values (the same names for every sample of a family).
    pub labels: Vec<(&'static str, String)>,
    /// The value now.
    pub value: f64,
    /// Appended to the family name on the sample's line (a histogram's `_bucket`, `_sum`,
    /// `_count`); empty otherwise.
    pub suffix: &'static str,
}

impl Sample {
    /// A sample without labels.
    pub fn new(name: &'static str, help: &'static str, kind: MetricKind, value: u64) -> Self {
        Sample {
            name,
            help,
            kind,
            labels: Vec::new(),
            value: value as f64,
            suffix: "",
        }
    }

    /// With one more label.
    pub fn label(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.labels.push((name, value.into()));
        self
    }
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

fn load_usize(a: &AtomicUsize) -> u64 {
    a.load(Ordering::Relaxed) as u64
}

/// Families of `Stats` with no label: (name, help, kind, value).
fn plain(s: &Stats) -> Vec<(&'static str, &'static str, MetricKind, u64)> {
    use MetricKind::{Counter, Gauge};
    vec![
        (
            "messs_connections",
            "Client connections open.",
            Gauge,
            load_usize(&s.connections),
        ),
        (
            "messs_connections_total",
            "Client connections accepted since start.",
            Counter,
            load(&s.connections_total),
        ),
        (
            "messs_bytes_received_total",
            "Bytes read from clients' connections after their CONNECT.",
            Counter,
            load(&s.bytes_received),
        ),
        (
            "messs_bytes_sent_total",
            "Bytes written to clients' connections after their CONNACK.",
            Counter,
            load(&s.bytes_sent),
        ),
        (
            "messs_handshakes",
            "TLS and CONNECT handshakes in progress.",
            Gauge,
            load_usize(&s.handshakes),
        ),
        (
            "messs_messages_received_total",
            "PUBLISH packets received from clients.",
            Counter,
            load(&s.messages_received),
        ),
        (
            "messs_admin_publishes_total",
            "Messages operators published through the admin plane.",
            Counter,
            load(&s.admin_publishes),
        ),
        (
            "messs_messages_routed_total",
            "Deliveries queued for sessions.",
            Counter,
            load(&s.messages_routed),
        ),
        (
            "messs_messages_sent_total",
            "PUBLISH packets sent to clients.",
            Counter,
            load(&s.messages_sent),
        ),
        (
            "messs_sessions",
            "Sessions held, online or offline.",
            Gauge,
            load_usize(&s.sessions),
        ),
        (
            "messs_sessions_evicted_total",
            "Offline sessions ended early to make room.",
            Counter,
            load(&s.sessions_evicted),
        ),
        (
            "messs_subscriptions",
            "Subscriptions held.",
            Gauge,
            load_usize(&s.subscriptions),
        ),
        (
            "messs_session_bytes",
            "Bytes sessions hold (queues, in flight, subscriptions, records).",
            Gauge,
            load_usize(&s.session_bytes),
        ),
        (
            "messs_subscription_bytes",
            "Bytes subscriptions hold (part of messs_session_bytes; at most half of limits.max_session_bytes_total).",
            Gauge,
            load_usize(&s.subscription_bytes),
        ),
        (
            "messs_topic_alias_bytes",
            "Bytes of topic names held by connections' topic aliases (each connection's bounded by limits.max_topic_alias_bytes, each way).",
            Gauge,
            load_usize(&s.topic_alias_bytes),
        ),
        (
            "messs_retained_bytes",
            "Bytes of retained messages held.",
            Gauge,
            load_usize(&s.retained_bytes),
        ),
        (
            "messs_queued_on_disk",
            "Messages of persistent sessions kept on disk only.",
            Gauge,
            load(&s.queued_on_disk),
        ),
        (
            "messs_shared_messages",
            "Messages stored once for the queues of several persistent sessions.",
            Gauge,
            load(&s.shared_messages),
        ),
        (
            "messs_records_quarantined_total",
            "Stored messages that could not be read, moved to the quarantine.",
            Counter,
            load(&s.records_quarantined),
        ),
        (
            "messs_audit_withheld_total",
            "Client-caused audit records summed up instead of written while free disk space was low.",
            Counter,
            load(&s.audit_withheld),
        ),
        (
            "messs_audit_dropped_total",
            "Audit records dropped by the broker-wide audit retention (the oldest).",
            Counter,
            load(&s.audit_dropped),
        ),
        (
            "messs_audit_redacted_total",
            "Audit records whose details their tenant's audit retention dropped.",
            Counter,
            load(&s.audit_redacted),
        ),
        (
            "messs_timers",
            "Session-expiry and will-delay timers pending.",
            Gauge,
            load_usize(&s.timers),
        ),
        (
            "messs_keep_alive_timers",
            "Keep-alive timers pending (one per connection with a keep-alive).",
            Gauge,
            load_usize(&s.keep_alive_timers),
        ),
        (
            "messs_subscribers_stalled_total",
            "Times a subscriber was found stalled while a publisher waited.",
            Counter,
            load(&s.subscribers_stalled),
        ),
        (
            "messs_telemetry_stored_total",
            "Telemetry messages stored.",
            Counter,
            load(&s.telemetry_stored),
        ),
        (
            "messs_throttled_total",
            "Times a connection was held back by its packet rate.",
            Counter,
            load(&s.throttled),
        ),
        (
            "messs_tenant_throttled_total",
            "Times a connection was held back by its tenant's shared packet rate.",
            Counter,
            load(&s.tenant_throttled),
        ),
        (
            "messs_flapping_bans_total",
            "Flapping bans started.",
            Counter,
            load(&s.flapping_bans),
        ),
    ]
}

/// Labelled families of `Stats`: (name, help, [(reason, value)]).
type Family = (&'static str, &'static str, Vec<(&'static str, u64)>);

fn by_reason(s: &Stats) -> Vec<Family> {
    vec![
        (
            "messs_deliveries_dropped_total",
            "Deliveries dropped, by reason.",
            vec![
                ("queue_full", load(&s.dropped_queue_full)),
                ("offline", load(&s.dropped_offline)),
                ("expired", load(&s.dropped_expired)),
                ("too_large", load(&s.dropped_too_large)),
                ("broker_budget", load(&s.dropped_budget)),
                ("tenant_quota", load(&s.dropped_tenant_quota)),
                ("storage", load(&s.dropped_storage)),
                ("acl", load(&s.acl_delivery_denied)),
            ],
        ),
        (
            "messs_refused_total",
            "Requests refused, by reason.",
            vec![
                ("retained_full", load(&s.retained_rejected)),
                ("sessions_full", load(&s.sessions_refused)),
                ("subscriptions_full", load(&s.subscriptions_refused)),
                ("message_admission", load(&s.messages_refused)),
                ("publish_storage", load(&s.publishes_refused_storage)),
                ("tenant_quota", load(&s.tenant_quota_refusals)),
                ("acl_publish", load(&s.acl_publish_denied)),
                ("acl_subscribe", load(&s.acl_subscribe_denied)),
            ],
        ),
        (
            "messs_auth_refused_total",
            "CONNECTs and handshakes refused before a session, by reason.",
            vec![
                ("credentials", load(&s.auth_failures)),
                ("locked_out", load(&s.auth_locked_out)),
                ("busy", load(&s.auth_busy)),
                ("tls_handshake", load(&s.tls_handshake_failures)),
                ("websocket_upgrade", load(&s.websocket_upgrade_failures)),
                ("quic_retry", load(&s.quic_retries)),
                ("banned", load(&s.refused_banned)),
                ("address_rate", load(&s.refused_address_rate)),
                ("address_quota", load(&s.refused_address_quota)),
            ],
        ),
        (
            "messs_disconnects_total",
            "Connections the broker closed for a limit, by reason.",
            vec![
                ("rate_limit", load(&s.rate_limit_disconnects)),
                ("write_timeout", load(&s.write_timeouts)),
            ],
        ),
    ]
}

/// Every sample now.
pub(crate) fn collect(state: &BrokerState) -> Vec<Sample> {
    let s = &state.stats;
    let mut out = Vec::new();
    for (name, help, kind, value) in plain(s) {
        out.push(Sample::new(name, help, kind, value));
    }
    let (lockout_entries, remembered) = state.auth.tracked();
    out.push(Sample::new(
        "messs_auth_lockout_entries",
        "Failure counters held by the brute-force lockout (sources, username-source pairs, usernames; each map at most auth.lockout_capacity).",
        MetricKind::Gauge,
        lockout_entries,
    ));
    out.push(Sample::new(
        "messs_auth_remembered_logins",
        "Verified logins remembered (at most auth.cache_capacity).",
        MetricKind::Gauge,
        remembered,
    ));
    out.push(Sample::new(
        "messs_auth_audit_suppressed_total",
        "Refused logins and lockouts counted but not audited one by one (beyond auth.failure_audit_per_minute; summed up in auth.audit.suppressed records).",
        MetricKind::Counter,
        state.auth.refusals_suppressed(),
    ));
    for t in crate::config::Transport::ALL {
        out.push(
            Sample::new(
                "messs_transport_connections",
                "Client connections open, by listener transport.",
                MetricKind::Gauge,
                load_usize(&s.connections_by_transport[t.index()]),
            )
            .label("transport", t.name()),
        );
    }
    for (name, help, values) in by_reason(s) {
        for (reason, value) in values {
            out.push(Sample::new(name, help, MetricKind::Counter, value).label("reason", reason));
        }
    }
    let tenant = |name, help, kind, id: &str, value| {
        Sample::new(name, help, kind, value).label("tenant", id)
    };
    let mut tenants = state.auth.tenants.all();
    tenants.sort_by(|a, b| a.id.cmp(&b.id));
    for (name, help, kind) in [
        (
            "messs_tenant_connections",
            "Client connections open, by tenant.",
            MetricKind::Gauge,
        ),
        (
            "messs_tenant_messages_received_total",
            "PUBLISH packets received, by tenant.",
            MetricKind::Counter,
        ),
        (
            "messs_tenant_messages_sent_total",
            "PUBLISH packets sent, by tenant.",
            MetricKind::Counter,
        ),
    ] {
        for t in &tenants {
            let c = &t.counters;
            let value = match name {
                "messs_tenant_connections" => load_usize(&c.connected),
                "messs_tenant_messages_received_total" => load(&c.received),
                _ => load(&c.sent),
            };
            out.push(tenant(name, help, kind, &t.id, value));
        }
    }
    if let Some(p) = &state.persist {
        let w = p.store.writer_stats();
        let memory = p.store.memory();
        let storage: [(&'static str, &'static str, MetricKind, u64); 8] = [
            (
                "messs_storage_block_cache_bytes",
                "Bytes in RocksDB's block cache, shared by every column family (storage.block_cache_bytes bounds it).",
                MetricKind::Gauge,
                memory.block_cache_bytes,
            ),
            (
                "messs_storage_memtable_bytes",
                "Bytes in RocksDB's memtables, every column family.",
                MetricKind::Gauge,
                memory.memtable_bytes,
            ),
            (
                "messs_storage_writes_total",
                "Group-committed RocksDB writes.",
                MetricKind::Counter,
                load(&w.writes),
            ),
            (
                "messs_storage_bytes_written_total",
                "Bytes of keys and values written.",
                MetricKind::Counter,
                load(&w.bytes),
            ),
            (
                "messs_storage_write_failures_total",
                "RocksDB writes that failed.",
                MetricKind::Counter,
                load(&w.failures),
            ),
            (
                "messs_storage_pending_bytes",
                "Bytes submitted to the writer and not yet written.",
                MetricKind::Gauge,
                load_usize(&w.pending_bytes),
            ),
            (
                "messs_storage_failing",
                "1 while the last write failed.",
                MetricKind::Gauge,
                u64::from(p.store.is_failing()),
            ),
            (
                "messs_storage_queue_requests",
                "Requests submitted to the writer and not yet written (its queue depth).",
                MetricKind::Gauge,
                load_usize(&w.pending_requests),
            ),
        ];
        for (name, help, kind, value) in storage {
            out.push(Sample::new(name, help, kind, value));
        }
        // The head's sequence number only: its link changes with every record, and as a
        // label it would make a new series each time (GET /api/v1/audit/head serves it).
        out.push(Sample::new(
            "messs_audit_head_seq",
            "Sequence number of the newest audit record; it never goes down, so a drop after a restart means a rolled-back store.",
            MetricKind::Gauge,
            p.store.audit_head().seq,
        ));
        out.push(Sample::new(
            "messs_audit_keyed",
            "1 when audit records are linked with a key kept outside the data directory.",
            MetricKind::Gauge,
            u64::from(p.store.audit_keyed()),
        ));
        histogram(
            &mut out,
            "messs_storage_write_seconds",
            "Time of each RocksDB write (one group commit).",
            &w.write_latency,
        );
    }
    out
}

/// A latency histogram as `_bucket` (cumulative, `le` in seconds), `_sum` and `_count`.
fn histogram(
    out: &mut Vec<Sample>,
    name: &'static str,
    help: &'static str,
    h: &messs_storage::writer::LatencyHistogram,
) {
    let sample = |suffix, value: f64| Sample {
        name,
        help,
        kind: MetricKind::Histogram,
        labels: Vec::new(),
        value,
        suffix,
    };
    let count = load(&h.count);
    let mut cumulative = 0;
    for (bound, bucket) in messs_storage::writer::LATENCY_BOUNDS_MICROS
        .iter()
        .zip(&h.buckets)
    {
        cumulative += load(bucket);
        out.push(
            sample("_bucket", cumulative as f64).label("le", (*bound as f64 / 1e6).to_string()),
        );
    }
    out.push(sample("_bucket", count as f64).label("le", "+Inf"));
    out.push(sample("_sum", load(&h.sum_micros) as f64 / 1e6));
    out.push(sample("_count", count as f64));
}
