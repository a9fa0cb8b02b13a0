//! Broker-wide counters. Every bounded queue or store that drops something counts it here,
//! so a limit being hit is visible (the admin plane will export these as metrics).

use std::sync::atomic::{AtomicU64, AtomicUsize};

/// Counters and gauges, updated with relaxed atomics on the hot path.
#[derive(Debug, Default)]
pub struct Stats {
    /// Client connections open now.
    pub connections: AtomicUsize,
    /// Client connections accepted since start.
    pub connections_total: AtomicU64,
    /// Client connections open now, by listener transport (indexed by
    /// `Transport::index`).
    pub connections_by_transport: [AtomicUsize; crate::config::Transport::COUNT],
    /// Bytes read from clients' connections after their CONNECT.
    pub bytes_received: AtomicU64,
    /// Bytes written to clients' connections after their CONNACK.
    pub bytes_sent: AtomicU64,
    /// PUBLISH packets received from clients.
    pub messages_received: AtomicU64,
    /// Deliveries queued for sessions.
    pub messages_routed: AtomicU64,
    /// PUBLISH packets sent to clients.
    pub messages_sent: AtomicU64,
    /// Deliveries dropped because a session's queue was full.
    pub dropped_queue_full: AtomicU64,
    /// QoS 0 deliveries dropped because the session was offline.
    pub dropped_offline: AtomicU64,
    /// Messages dropped because they expired before delivery.
    pub dropped_expired: AtomicU64,
    /// Messages dropped because they exceeded the client's Maximum Packet Size.
    pub dropped_too_large: AtomicU64,
    /// Retained messages refused because the retained store was full.
    pub retained_rejected: AtomicU64,
    /// Subscriptions held (all tenants).
    pub subscriptions: AtomicUsize,
    /// Sessions held, online or offline.
    pub sessions: AtomicUsize,
    /// Bytes sessions hold (queued and in-flight deliveries, subscriptions, session
    /// records), bounded by `limits.max_session_bytes_total`.
    pub session_bytes: AtomicUsize,
    /// Bytes of retained messages held (all tenants).
    pub retained_bytes: AtomicUsize,
    /// Deliveries dropped because `max_session_bytes_total` was reached.
    pub dropped_budget: AtomicU64,
    /// Deliveries dropped because the tenant's sessions held its `max_queued_bytes`.
    pub dropped_tenant_quota: AtomicU64,
    /// CONNECTs refused because `max_sessions` or the session byte budget was reached
    /// with no offline session left to evict.
    pub sessions_refused: AtomicU64,
    /// Offline sessions ended early to make room for a new one.
    pub sessions_evicted: AtomicU64,
    /// Subscriptions refused (per-session limit or byte budget).
    pub subscriptions_refused: AtomicU64,
    /// Messages refused at admission (e.g. a will to a `$SYS/` topic).
    pub messages_refused: AtomicU64,
    /// Messages operators published through the admin plane.
    pub admin_publishes: AtomicU64,
    /// Session-expiry and will-delay timers pending.
    pub timers: AtomicUsize,
    /// Keep-alive timers pending (one per connection with a keep-alive).
    pub keep_alive_timers: AtomicUsize,
    /// Times a subscriber was found stalled (no progress for `stall_timeout_ms`) while a
    /// publisher waited on it.
    pub subscribers_stalled: AtomicU64,
    /// Deliveries to persistent sessions dropped because storage refused them (writer too
    /// far behind, or writes failing).
    pub dropped_storage: AtomicU64,
    /// QoS 1/2 publishes refused (v5: 0x80 or 0x97; 3.1.1: connection closed) because a
    /// write they needed failed.
    pub publishes_refused_storage: AtomicU64,
    /// Messages of persistent sessions kept on disk only (offline queues), a gauge.
    pub queued_on_disk: AtomicU64,
    /// Messages stored once for the queues of several persistent sessions, a gauge.
    pub shared_messages: AtomicU64,
    /// Stored messages that could not be read (a missing key, damage) and were moved to
    /// the store's quarantine.
    pub records_quarantined: AtomicU64,
    /// Audit records clients caused that were counted in a summary instead of written,
    /// because free disk space was below the watermark.
    pub audit_withheld: AtomicU64,
    /// Bytes all sessions' subscriptions hold (part of `session_bytes`; at most half of
    /// `limits.max_session_bytes_total`).
    pub subscription_bytes: AtomicUsize,
    /// Bytes of topic names connections' topic aliases hold, both ways (each connection's
    /// bounded by `limits.max_topic_alias_bytes`).
    pub topic_alias_bytes: AtomicUsize,
    /// Audit records the retention dropped (the oldest, broker-wide).
    pub audit_dropped: AtomicU64,
    /// Audit records whose details their tenant's audit retention dropped.
    pub audit_redacted: AtomicU64,
    /// Telemetry messages stored.
    pub telemetry_stored: AtomicU64,
    /// TLS handshakes that failed or timed out.
    pub tls_handshake_failures: AtomicU64,
    /// WebSocket upgrades refused (path, subprotocol, origin) or failed.
    pub websocket_upgrade_failures: AtomicU64,
    /// QUIC connection attempts answered with a Retry to prove their address.
    pub quic_retries: AtomicU64,
    /// CONNECTs refused by authentication (bad credentials, anonymous refused, client id
    /// not allowed); each is an audit record.
    pub auth_failures: AtomicU64,
    /// CONNECTs refused because their address or username was locked out (counted, not
    /// audited one by one; the lockout itself is).
    pub auth_locked_out: AtomicU64,
    /// CONNECTs refused with "server busy" because the password verification queue was
    /// full.
    pub auth_busy: AtomicU64,
    /// PUBLISHes and wills the ACL refused.
    pub acl_publish_denied: AtomicU64,
    /// Subscriptions the ACL refused.
    pub acl_subscribe_denied: AtomicU64,
    /// Deliveries (retained, queued or live) withheld because the ACL no longer allows
    /// them.
    pub acl_delivery_denied: AtomicU64,
    /// Sockets closed at accept: their address opened connections faster than
    /// `rate_limits.connects_per_sec_per_ip`.
    pub refused_address_rate: AtomicU64,
    /// Sockets closed at accept: their address had `max_connections_per_ip` open.
    pub refused_address_quota: AtomicU64,
    /// Times a connection was held back by its packet rate limit.
    pub throttled: AtomicU64,
    /// Connections closed for staying over their rate limit (v5: 0x96).
    pub rate_limit_disconnects: AtomicU64,
    /// Connections closed because a write to them stayed blocked for
    /// `limits.write_timeout_secs` (a client that reads nothing).
    pub write_timeouts: AtomicU64,
    /// Connections refused by a ban (the operator's or flapping): closed at accept for an
    /// address, CONNACK 0x8A for a client id or username.
    pub refused_banned: AtomicU64,
    /// Flapping bans started.
    pub flapping_bans: AtomicU64,
    /// Connections, sessions and subscriptions refused by a tenant's quota (0x97), and
    /// connections by its connect rate (0x9F).
    pub tenant_quota_refusals: AtomicU64,
    /// Times a connection was held back by its tenant's shared packet rate.
    pub tenant_throttled: AtomicU64,
    /// Handshakes (TLS and CONNECT) in progress now.
    pub handshakes: AtomicUsize,
}

/// A tenant's traffic counters (connections counted by the client loop, messages at the
/// choke point and at delivery), published by `sys` and the metrics.
#[derive(Debug, Default)]
pub(crate) struct TenantCounters {
    pub connected: AtomicUsize,
    pub received: AtomicU64,
    pub sent: AtomicU64,
}
