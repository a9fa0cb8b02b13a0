//! Broker configuration: the TOML file's schema and its defaults. Every key is documented in
//! `messs.example.toml` at the repository root; a test keeps the two in step.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::error::BrokerError;
pub use crate::transport::config::{QuicConfig, Transport, WebSocketConfig};

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Listeners to open.
    #[serde(rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    /// Protocol and resource limits.
    pub limits: LimitsConfig,
    /// Session behaviour.
    pub session: SessionConfig,
    /// Durable state.
    pub storage: StorageConfig,
    /// Device authentication.
    pub auth: AuthConfig,
    /// Topic access control.
    pub acl: AclConfig,
    /// `$SYS/` statistics.
    pub sys: SysConfig,
    /// Rates: packets per connection, connections per address, handshakes at once.
    pub rate_limits: RateLimitsConfig,
    /// Every tenant's quotas and shared rates, unless its registry record overrides them.
    pub tenant_limits: crate::security::limits::tenant::TenantLimits,
    /// The operator's ban list.
    pub bans: BansConfig,
    /// Temporary bans of clients that reconnect too often.
    pub flapping: crate::security::limits::bans::FlappingPolicy,
    /// The HTTP admin plane.
    pub admin: crate::admin_config::AdminConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listeners: vec![ListenerConfig::default()],
            limits: LimitsConfig::default(),
            session: SessionConfig::default(),
            storage: StorageConfig::default(),
            auth: AuthConfig::default(),
            acl: AclConfig::default(),
            sys: SysConfig::default(),
            rate_limits: RateLimitsConfig::default(),
            tenant_limits: Default::default(),
            bans: BansConfig::default(),
            flapping: Default::default(),
            admin: Default::default(),
        }
    }
}

/// One listening socket.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerConfig {
    /// Address and port, e.g. `127.0.0.1:1883`. Port 0 picks a free port.
    pub bind: SocketAddr,
    /// Transport: `tcp`, `tls`, `ws`, `wss` or `quic`.
    pub transport: Transport,
    /// Certificate, key and client-certificate settings of a `tls`, `wss` or `quic`
    /// listener.
    pub tls: Option<TlsConfig>,
    /// Path, frame limits and allowed origins of a `ws` or `wss` listener.
    pub websocket: WebSocketConfig,
    /// Streams, address validation and 0-RTT of a `quic` listener.
    pub quic: QuicConfig,
    /// Accept clients without credentials, into `tenant`. Off unless a listener says so:
    /// the default listener of `messs serve` without a config file turns it on for
    /// 127.0.0.1 only.
    pub allow_anonymous: bool,
    /// The tenant of this listener's clients: anonymous clients join it and usernames are
    /// taken as they are. Unset: a device names its tenant in its username,
    /// `NAME@TENANT` (split at the last `@`), and anonymous clients are not possible.
    pub tenant: Option<String>,
    /// Length of the kernel's queue of connections not yet accepted (capped by
    /// `net.core.somaxconn`). A short queue turns a connect storm into SYN retransmits
    /// (a one-second stall for each client that overflows it).
    pub backlog: u32,
    /// Largest packet this listener's clients may send after CONNECT, if smaller than
    /// `limits.max_packet_size` (a tenant's `max_packet_size` may lower it further).
    pub max_packet_size: Option<u32>,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 1883)),
            transport: Transport::Tcp,
            tls: None,
            websocket: WebSocketConfig::default(),
            quic: QuicConfig::default(),
            allow_anonymous: false,
            tenant: None,
            backlog: 4096,
            max_packet_size: None,
        }
    }
}

/// Which part of a client certificate names the device.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum CertIdentity {
    /// The subject's common name.
    #[default]
    Cn,
    /// The first DNS name in the subject alternative names.
    SanDns,
    /// The first e-mail address in the subject alternative names.
    SanEmail,
    /// The first URI in the subject alternative names.
    SanUri,
}

/// A TLS listener's settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The server's certificate chain, PEM (re-read on SIGHUP).
    pub cert_file: PathBuf,
    /// The server's private key, PEM (re-read on SIGHUP).
    pub key_file: PathBuf,
    /// Also accept TLS 1.2 (off: TLS 1.3 only).
    #[serde(default)]
    pub allow_tls12: bool,
    /// Refuse clients without a certificate (off: a certificate is asked for, and a client
    /// without one logs in with a password or token).
    #[serde(default)]
    pub require_client_cert: bool,
    /// Which part of a client certificate is the device's username.
    #[serde(default)]
    pub cert_identity: CertIdentity,
}

/// Limits on what one client may make the broker hold or do.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest packet accepted from a client after CONNECT, in bytes (sent as Maximum
    /// Packet Size in a v5 CONNACK).
    pub max_packet_size: u32,
    /// Largest CONNECT accepted, in bytes: a small pre-authentication limit.
    pub max_connect_packet_size: u32,
    /// Seconds a new socket has to send its CONNECT.
    pub connect_timeout_secs: u64,
    /// Largest keep-alive granted, in seconds; a v5 client asking for more (or for 0) is
    /// told this value as Server Keep Alive. 0 = accept what the client asks.
    pub max_keep_alive_secs: u16,
    /// How many QoS 2 PUBLISHes a client may have unreleased at once (Receive Maximum).
    pub receive_maximum: u16,
    /// How many topic aliases a client may define (Topic Alias Maximum).
    pub topic_alias_maximum: u16,
    /// Bytes of topic names one connection's topic aliases may hold, each way. A client
    /// whose aliases would hold more is closed with 0x97; the broker stops assigning
    /// aliases of its own at it. Without it one connection could pin gigabytes of
    /// 64 KiB topic names.
    pub max_topic_alias_bytes: usize,
    /// Most unacknowledged QoS 1/2 messages sent to one client at once (also capped by
    /// the client's own Receive Maximum).
    pub max_inflight: u16,
    /// Most messages queued in memory for one session. Beyond it new messages for a session
    /// that is not persistent are dropped and counted; a persistent one keeps them on disk
    /// (up to `storage.max_stored_messages_per_session`).
    pub max_queued_messages: usize,
    /// Most bytes of messages queued in memory or in flight for one session; beyond it as
    /// above.
    pub max_queued_bytes: usize,
    /// What happens when a session that is not persistent has its queue full (a slow
    /// consumer): `drop_new` (the new message is dropped), `drop_oldest` (queued messages
    /// not yet sent make room, oldest first) or `disconnect` (the client is closed with
    /// 0x97 Quota exceeded; it can reconnect and catch up). Every drop is counted
    /// (`dropped_queue_full`).
    pub queue_full: QueueFullPolicy,
    /// Most bytes all sessions together may hold: queued and in-flight messages,
    /// subscriptions and the sessions themselves. Beyond it new deliveries are dropped,
    /// new subscriptions refused (0x97) and new sessions refused (0x97 / 3.1.1: 0x03).
    pub max_session_bytes_total: usize,
    /// Most sessions, online or offline. A CONNECT that would create one more ends the
    /// offline session that would expire first; with none offline it is refused with 0x97
    /// Quota exceeded (3.1.1: 0x03 Server unavailable).
    pub max_sessions: usize,
    /// Most subscriptions one session may hold; further filters get 0x97 Quota exceeded
    /// in SUBACK (3.1.1: 0x80).
    pub max_subscriptions_per_session: usize,
    /// Bytes one session's subscriptions may hold, counted as they cost the broker (192
    /// bytes, three copies of the filter and `router::LEVEL_COST` a level); a filter beyond
    /// gets 0x97 in SUBACK. Without it, 1,000 filters of 64 KiB were 200 MB for one session.
    pub max_subscription_bytes_per_session: usize,
    /// Most topic filters in one SUBSCRIBE or UNSUBSCRIBE; more close the connection
    /// (v5: DISCONNECT 0x97).
    pub max_filters_per_subscribe: usize,
    /// Most levels in a topic name or filter. Deeper topics close the connection (v5:
    /// DISCONNECT 0x90 for a topic name, 0x8F for a filter; a will topic is refused with
    /// CONNACK 0x90).
    pub max_topic_levels: usize,
    /// Most User Properties in one packet; more close the connection (v5: 0x97).
    pub max_user_properties: usize,
    /// Longest time, in milliseconds, one pause of a publisher may last while a subscriber
    /// drains a queue that its messages filled past half its limit.
    pub backpressure_wait_ms: u64,
    /// A subscriber that has taken nothing from its queue for this many milliseconds is
    /// stalled: it no longer holds publishers back (its queue fills and drops instead)
    /// until it drains below half its limit again.
    pub stall_timeout_ms: u64,
    /// Most retained messages per tenant; a retained PUBLISH to a new topic beyond this is
    /// delivered but not retained (v5 clients get reason 0x97 Quota exceeded).
    pub max_retained_messages: usize,
    /// Most bytes of retained messages per tenant; beyond it as for
    /// `max_retained_messages`.
    pub max_retained_bytes: usize,
    /// Most simultaneous client connections; further sockets wait in the accept backlog.
    pub max_connections: usize,
    /// Seconds a write to a client may block before the client is dropped as too slow.
    pub write_timeout_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_packet_size: 1024 * 1024,
            max_connect_packet_size: 64 * 1024,
            connect_timeout_secs: 10,
            max_keep_alive_secs: 0,
            receive_maximum: 1024,
            topic_alias_maximum: 64,
            max_topic_alias_bytes: 64 * 1024,
            max_inflight: 1024,
            max_queued_messages: 10_000,
            max_queued_bytes: 16 * 1024 * 1024,
            queue_full: QueueFullPolicy::DropNew,
            max_session_bytes_total: 192 * 1024 * 1024,
            max_sessions: 100_000,
            max_subscriptions_per_session: 1000,
            max_subscription_bytes_per_session: 2 * 1024 * 1024,
            max_filters_per_subscribe: 256,
            max_topic_levels: 128,
            max_user_properties: 128,
            backpressure_wait_ms: 1000,
            stall_timeout_ms: 250,
            max_retained_messages: 100_000,
            max_retained_bytes: 64 * 1024 * 1024,
            max_connections: 100_000,
            write_timeout_secs: 30,
        }
    }
}

impl LimitsConfig {
    /// The connect timeout as a duration.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }

    /// The largest packet a client may send: the smallest of these limits, the listener's
    /// and the tenant's (0: none).
    pub(crate) fn packet_size_for(&self, listener: &ListenerConfig, tenant_max: u64) -> u32 {
        let mut max = self.max_packet_size;
        if let Some(l) = listener.max_packet_size {
            max = max.min(l);
        }
        if tenant_max > 0 {
            max = max.min(u32::try_from(tenant_max).unwrap_or(u32::MAX));
        }
        max
    }

    /// What the decoder enforces after CONNECT.
    pub(crate) fn codec_limits(&self) -> messs_codec::Limits {
        messs_codec::Limits {
            max_packet_size: self.max_packet_size as usize,
            max_user_properties: self.max_user_properties,
            max_topic_filters: self.max_filters_per_subscribe,
        }
    }

    /// What the decoder enforces on the CONNECT itself (before authentication).
    pub(crate) fn connect_codec_limits(&self) -> messs_codec::Limits {
        messs_codec::Limits {
            max_packet_size: self.max_connect_packet_size as usize,
            ..self.codec_limits()
        }
    }
}

/// Session behaviour.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// Upper bound on any session's expiry interval, in seconds (a 3.1.1 persistent
    /// session, whose expiry is "never", gets this).
    pub max_expiry_secs: u32,
    /// Queue QoS 0 messages for offline persistent sessions too.
    pub queue_qos0_offline: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            max_expiry_secs: 7 * 24 * 3600,
            queue_qos0_offline: false,
        }
    }
}

/// When an acknowledged write counts as done (see `messs_storage::Durability`).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum DurabilityLevel {
    /// Acknowledge at once; a crash may lose what was not yet flushed.
    None,
    /// Acknowledge once in the write-ahead log: survives a crash of the process.
    #[default]
    Wal,
    /// Acknowledge once the write-ahead log is synced: survives power loss.
    Fsync,
}

impl DurabilityLevel {
    pub(crate) fn to_storage(self) -> messs_storage::Durability {
        match self {
            DurabilityLevel::None => messs_storage::Durability::None,
            DurabilityLevel::Wal => messs_storage::Durability::Wal,
            DurabilityLevel::Fsync => messs_storage::Durability::Fsync,
        }
    }
}

/// Durable storage settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Directory of the RocksDB store: persistent sessions, their queues, retained messages,
    /// telemetry and the audit log.
    pub data_dir: PathBuf,
    /// When a PUBACK/PUBREC for a message that must be stored is sent.
    pub durability: DurabilityLevel,
    /// Bytes of writes waiting for the writer thread beyond which new QoS >= 1 messages
    /// that need storage are refused (v5: 0x80).
    pub max_pending_bytes: usize,
    /// RocksDB block cache, in bytes.
    pub block_cache_bytes: usize,
    /// Below this many free bytes on the data directory's file system, new messages that
    /// need storage are refused (RocksDB stops for good on a full disk; this keeps it from
    /// getting there). 0 turns the check off.
    pub min_free_disk_bytes: u64,
    /// Most messages stored for one persistent session (in memory and on disk); beyond it
    /// new messages for that session are dropped and counted.
    pub max_stored_messages_per_session: usize,
    /// Most bytes stored for one persistent session; beyond it as above.
    pub max_stored_bytes_per_session: usize,
    /// Retained payloads up to this size are kept in memory after a restart; larger ones
    /// are read from disk when delivered.
    pub retained_inline_bytes: usize,
    /// File with the encryption key(s) for payloads and secrets at rest (`id:hex` lines;
    /// the last is active). Unset with `encryption_key_env` unset: values are stored plain.
    pub encryption_key_file: Option<PathBuf>,
    /// Name of an environment variable holding the key(s) instead of a file.
    pub encryption_key_env: Option<String>,
    /// File with the key (64 hex digits) the audit log's records are linked with
    /// (HMAC-SHA256), outside the data directory. Unset: derived from the encryption key
    /// (its lowest-numbered one); neither: plain SHA-256 links, which a person who can
    /// write the data directory can recompute.
    pub audit_key_file: Option<PathBuf>,
    /// Telemetry capture and retention.
    pub telemetry: TelemetryConfig,
    /// Periodic online backups (checkpoints).
    pub backup: BackupConfig,
    /// How long the audit log is kept.
    pub audit: AuditRetentionConfig,
    /// Start on a damaged write-ahead log, keeping what is before the damage: set for one
    /// start by `messs serve --recover-wal`, never from the file (a damaged log is an
    /// error by default, see the storage crate's `wal` module).
    #[serde(skip)]
    pub recover_wal: bool,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            data_dir: PathBuf::from("./data"),
            durability: DurabilityLevel::Wal,
            max_pending_bytes: 64 * 1024 * 1024,
            block_cache_bytes: 32 * 1024 * 1024,
            min_free_disk_bytes: 64 * 1024 * 1024,
            max_stored_messages_per_session: 100_000,
            max_stored_bytes_per_session: 64 * 1024 * 1024,
            retained_inline_bytes: 4096,
            encryption_key_file: None,
            encryption_key_env: None,
            audit_key_file: None,
            telemetry: TelemetryConfig::default(),
            backup: BackupConfig::default(),
            audit: AuditRetentionConfig::default(),
            recover_wal: false,
        }
    }
}

/// Online backups: a RocksDB checkpoint (a consistent copy, mostly hard links) written
/// while the broker serves.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BackupConfig {
    /// Directory the checkpoints go to, one subdirectory per checkpoint named by its Unix
    /// time in milliseconds. Unset: no periodic checkpoints.
    pub dir: Option<PathBuf>,
    /// Seconds between checkpoints.
    pub every_secs: u64,
    /// Checkpoints kept; older ones are deleted.
    pub keep: usize,
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            dir: None,
            every_secs: 3600,
            keep: 24,
        }
    }
}

/// How long the audit log is kept: the oldest records go by age and by bytes, never one
/// younger than `keep_at_least_days`; the chain stays verifiable from the first record kept
/// (its anchor is signed with the audit key).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuditRetentionConfig {
    /// Records older than this many days are dropped (0: kept regardless of age).
    pub max_age_days: u64,
    /// Beyond this many bytes the oldest records are dropped (0: no cap).
    pub max_bytes: u64,
    /// Records younger than this many days are kept whatever the caps say.
    pub keep_at_least_days: u64,
    /// Seconds between retention runs (a run reads the log's record sizes once).
    pub retention_interval_secs: u64,
}

impl Default for AuditRetentionConfig {
    fn default() -> Self {
        AuditRetentionConfig {
            max_age_days: 365,
            max_bytes: 1024 * 1024 * 1024,
            keep_at_least_days: 90,
            retention_interval_secs: 3600,
        }
    }
}

impl AuditRetentionConfig {
    /// The storage crate's policy.
    pub fn policy(&self) -> messs_storage::audit::AuditRetention {
        const DAY_MS: u64 = 86_400_000;
        messs_storage::audit::AuditRetention {
            max_age_ms: (self.max_age_days > 0).then(|| self.max_age_days.saturating_mul(DAY_MS)),
            max_bytes: (self.max_bytes > 0).then_some(self.max_bytes),
            keep_at_least_ms: self.keep_at_least_days.saturating_mul(DAY_MS),
        }
    }
}

/// Which messages are kept as telemetry, and for how long.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Topic filters; a message on a matching topic is stored with its arrival time (in
    /// the publisher's tenant).
    pub filters: Vec<String>,
    /// Telemetry older than this many seconds is deleted (0: kept regardless of age).
    pub max_age_secs: u64,
    /// Beyond this many bytes per tenant the oldest telemetry is deleted (0: no cap).
    pub max_bytes_per_tenant: u64,
    /// Seconds between retention runs.
    pub retention_interval_secs: u64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            filters: Vec::new(),
            max_age_secs: 7 * 24 * 3600,
            max_bytes_per_tenant: 1024 * 1024 * 1024,
            retention_interval_secs: 60,
        }
    }
}

/// Device authentication: password hashing cost, the verification pool, the cache of
/// successful verifications, and brute-force lockout.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// argon2id memory per hash, KiB (new hashes; existing ones keep their own).
    pub argon2_memory_kib: u32,
    /// argon2id iterations.
    pub argon2_iterations: u32,
    /// argon2id lanes.
    pub argon2_parallelism: u32,
    /// PBKDF2 iterations of the SCRAM-SHA-256 verifier stored for a device that opts in to
    /// SCRAM (MQTT 5 enhanced authentication; RFC 7677 asks for at least 4096). The client
    /// runs them at each login (the broker only when the verifier is made); a stolen store
    /// can be attacked through the verifier at a cost of this many HMACs per guess, so the
    /// default is OWASP's for PBKDF2-HMAC-SHA256. Lower it only for devices that cannot
    /// afford it, knowing the trade (docs/SECURITY.md).
    pub scram_iterations: u32,
    /// Threads verifying passwords (0: one per CPU core but one, at least one). They run
    /// at a lower priority (nice 10) than the threads serving connected clients.
    pub verify_threads: usize,
    /// Verifications that may wait for a thread; a CONNECT beyond that is refused at once
    /// with 0x89 Server busy (3.1.1: 0x03), so a login flood cannot stall other clients.
    pub verify_queue: usize,
    /// Successful verifications remembered (a reconnecting device skips argon2).
    pub cache_capacity: u64,
    /// Seconds a remembered verification stays valid.
    pub cache_ttl_secs: u64,
    /// Failed logins from one source (an IPv4 address, an IPv6 /64) before it is locked
    /// out, for every username.
    pub lockout_ip_threshold: u32,
    /// Failed logins for one username from one source before that username is locked out
    /// *from that source*: someone guessing from elsewhere does not lock the device out (a
    /// device whose verification is remembered from that source gets in even when it is
    /// locked).
    pub lockout_user_threshold: u32,
    /// Failed logins for one username from all sources before its logins are slowed (each
    /// waits a delay that doubles per further failure, up to `lockout_slow_max_ms`, before
    /// its password is checked). Slowed, never locked.
    pub lockout_user_slow_after: u32,
    /// Longest delay of a slowed username's login, in milliseconds.
    pub lockout_slow_max_ms: u64,
    /// First lockout, in seconds; it doubles with each further failure.
    pub lockout_base_secs: u64,
    /// Longest lockout, in seconds.
    pub lockout_max_secs: u64,
    /// Sources, username-source pairs and usernames whose failures are tracked (each).
    pub lockout_capacity: u64,
    /// Seconds of clock difference tolerated in JWT `exp` and `nbf`.
    pub jwt_leeway_secs: u64,
    /// Milliseconds a refused login waits for its CONNACK (wrong or unknown credential,
    /// lockout, server busy; never past the connect timeout). A password guesser must read
    /// the answer, so each of its connections tries at most one guess per delay, and a
    /// flood of refusals costs the broker that many fewer handshakes (0: answer at once).
    pub failure_delay_ms: u64,
    /// Refused logins and lockouts recorded one by one in the audit log a minute (and a
    /// burst of as many); beyond it they are counted and summed up in one
    /// `auth.audit.suppressed` record, so a flood of guesses cannot grow the audit log
    /// without bound.
    pub failure_audit_per_minute: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            argon2_memory_kib: 19456,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            scram_iterations: 600_000,
            verify_threads: 0,
            verify_queue: 256,
            cache_capacity: 100_000,
            cache_ttl_secs: 600,
            lockout_ip_threshold: 20,
            lockout_user_threshold: 5,
            lockout_user_slow_after: 20,
            lockout_slow_max_ms: 5000,
            lockout_base_secs: 1,
            lockout_max_secs: 900,
            lockout_capacity: 100_000,
            jwt_leeway_secs: 30,
            failure_delay_ms: 1000,
            failure_audit_per_minute: 120,
        }
    }
}

/// What a full session queue does with the next delivery (see `limits.queue_full`).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum QueueFullPolicy {
    /// Drop the new delivery.
    #[default]
    DropNew,
    /// Drop queued deliveries not yet sent, oldest first, to make room.
    DropOldest,
    /// Close the slow consumer's connection (0x97 Quota exceeded).
    Disconnect,
}

/// Rate limits in the connection layer (token buckets: a rate per second and a burst; a
/// burst of 0 is one second's worth). A rate of 0 is no limit. They change on reload
/// (SIGHUP), live connections included.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitsConfig {
    /// Packets a second one connection may send (PUBLISH, SUBSCRIBE, UNSUBSCRIBE and
    /// PINGREQ each count one). Over it, the connection's socket is not read until it is
    /// back within its rate (TCP holds the client back).
    pub messages_per_sec: u32,
    /// Packets a connection may send at once beyond its rate.
    pub messages_burst: u32,
    /// Bytes a second one connection may send in those packets.
    pub bytes_per_sec: u64,
    /// Bytes a connection may send at once beyond its rate.
    pub bytes_burst: u64,
    /// A connection kept back without a break for as long as this many bursts take at its
    /// rate is closed (v5: DISCONNECT 0x96 Message rate too high). 0: throttle only.
    pub disconnect_multiple: u32,
    /// New connections a second from one address (IPv6: one /64), checked at accept before
    /// any TLS or password work; a refused socket is closed at once.
    pub connects_per_sec_per_ip: u32,
    /// New connections one address may open at once beyond its rate.
    pub connects_burst_per_ip: u32,
    /// Connections open at once from one address (0: no limit).
    pub max_connections_per_ip: u32,
    /// Addresses whose rate is remembered (those with open connections are always kept).
    pub max_tracked_addresses: usize,
    /// TLS and CONNECT handshakes in progress at once; further sockets wait in the accept
    /// backlog until one finishes.
    pub max_handshakes: usize,
}

impl Default for RateLimitsConfig {
    fn default() -> Self {
        RateLimitsConfig {
            messages_per_sec: 0,
            messages_burst: 0,
            bytes_per_sec: 0,
            bytes_burst: 0,
            disconnect_multiple: 10,
            connects_per_sec_per_ip: 0,
            connects_burst_per_ip: 0,
            max_connections_per_ip: 0,
            max_tracked_addresses: 100_000,
            max_handshakes: 1024,
        }
    }
}

impl RateLimitsConfig {
    pub(crate) fn throttle(&self) -> crate::security::limits::throttle::ThrottlePolicy {
        crate::security::limits::throttle::ThrottlePolicy {
            messages_per_sec: self.messages_per_sec,
            messages_burst: self.messages_burst,
            bytes_per_sec: self.bytes_per_sec,
            bytes_burst: self.bytes_burst,
            disconnect_multiple: self.disconnect_multiple,
        }
    }

    pub(crate) fn addresses(&self) -> crate::security::limits::addresses::AddressPolicy {
        crate::security::limits::addresses::AddressPolicy {
            connects_per_sec: self.connects_per_sec_per_ip,
            connects_burst: self.connects_burst_per_ip,
            max_connections: self.max_connections_per_ip,
            max_tracked: self.max_tracked_addresses,
        }
    }
}

/// The operator's ban list (reloaded on SIGHUP). A banned address is closed at accept; a
/// banned client id or username gets CONNACK 0x8A Banned (3.1.1: 5) before any password
/// work. Refusals are counted (`refused_banned`), not audited one by one.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct BansConfig {
    /// Addresses and networks: `192.0.2.7`, `10.0.0.0/8`, `2001:db8::/32`.
    pub addresses: Vec<String>,
    /// Client ids, in every tenant.
    pub client_ids: Vec<String>,
    /// `NAME@TENANT`.
    pub usernames: Vec<String>,
}

impl BansConfig {
    pub(crate) fn compile(&self) -> Result<crate::security::limits::bans::StaticBans, BrokerError> {
        let networks = self
            .addresses
            .iter()
            .map(|a| crate::security::limits::bans::Network::parse(a))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| BrokerError::Config(format!("bans.addresses: {e}")))?;
        Ok(crate::security::limits::bans::StaticBans {
            networks,
            client_ids: self.client_ids.iter().cloned().collect(),
            usernames: self.usernames.iter().cloned().collect(),
        })
    }
}

/// `$SYS/` statistics topics.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SysConfig {
    /// Seconds between updates of each tenant's `$SYS/broker/...` topics (0: none).
    pub interval_secs: u64,
}

impl Default for SysConfig {
    fn default() -> Self {
        SysConfig { interval_secs: 10 }
    }
}

/// What a tenant without any ACL rule allows.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum NoRules {
    /// Nothing (deny by default).
    #[default]
    Deny,
    /// Everything in the tenant: only for trying messs out (the no-config default).
    Allow,
}

/// Topic access control.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AclConfig {
    /// What a tenant with no ACL rules allows: `deny` (the default) or `allow`.
    pub tenant_without_rules: NoRules,
}

impl Config {
    /// The configuration `messs serve` runs with when given no file: one TCP listener on
    /// 127.0.0.1:1883 for anonymous clients in tenant `default`, which may use every topic
    /// until it gets ACL rules.
    pub fn try_out() -> Self {
        let mut c = Config::default();
        c.listeners[0].allow_anonymous = true;
        c.listeners[0].tenant = Some(crate::DEFAULT_TENANT.to_owned());
        c.acl.tenant_without_rules = NoRules::Allow;
        c
    }

    /// Parses a TOML document.
    pub fn from_toml(text: &str) -> Result<Self, BrokerError> {
        let config: Config =
            toml::from_str(text).map_err(|e| BrokerError::Config(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and parses a TOML file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, BrokerError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| BrokerError::Config(format!("{}: {e}", path.display())))?;
        Self::from_toml(&text)
    }

    /// Rejects values the broker cannot run with.
    pub fn validate(&self) -> Result<(), BrokerError> {
        self.admin.validate()?;
        let l = &self.limits;
        let bad = |what: &str| Err(BrokerError::Config(what.to_owned()));
        if self.listeners.is_empty() {
            return bad("at least one [[listener]] is needed");
        }
        if self.listeners.iter().any(|x| {
            x.max_packet_size
                .is_some_and(|m| m < 64 || m > l.max_packet_size)
        }) {
            return bad("a listener's max_packet_size must be 64..=limits.max_packet_size");
        }
        if l.max_packet_size < 64 || l.max_connect_packet_size < 64 {
            return bad("limits.max_packet_size and max_connect_packet_size must be >= 64");
        }
        if l.receive_maximum == 0 || l.max_inflight == 0 {
            return bad("limits.receive_maximum and limits.max_inflight must be >= 1");
        }
        if l.max_queued_messages == 0 || l.max_connections == 0 {
            return bad("limits.max_queued_messages and max_connections must be >= 1");
        }
        if l.connect_timeout_secs == 0 || l.write_timeout_secs == 0 {
            return bad("limits.connect_timeout_secs and write_timeout_secs must be >= 1");
        }
        if l.max_topic_levels == 0
            || l.max_filters_per_subscribe == 0
            || l.max_subscriptions_per_session == 0
            || l.max_sessions == 0
        {
            return bad("limits.max_topic_levels, max_filters_per_subscribe, max_subscriptions_per_session and max_sessions must be >= 1");
        }
        if l.max_topic_alias_bytes < 1024 {
            return bad("limits.max_topic_alias_bytes must be >= 1024");
        }
        if l.max_subscription_bytes_per_session < 1024 {
            return bad("limits.max_subscription_bytes_per_session must be >= 1024");
        }
        if l.max_queued_bytes < l.max_packet_size as usize {
            return bad("limits.max_queued_bytes must hold at least one max_packet_size message");
        }
        let st = &self.storage;
        if st.max_stored_messages_per_session == 0
            || st.max_stored_bytes_per_session < l.max_packet_size as usize
        {
            return bad("storage.max_stored_messages_per_session must be >= 1 and max_stored_bytes_per_session must hold one max_packet_size message");
        }
        if st.encryption_key_file.is_some() && st.encryption_key_env.is_some() {
            return bad("set storage.encryption_key_file or storage.encryption_key_env, not both");
        }
        for f in &st.telemetry.filters {
            if messs_codec::TopicFilter::new(f).is_err() || f.starts_with("$share/") {
                return bad(&format!(
                    "storage.telemetry.filters: {f:?} is not a valid topic filter"
                ));
            }
        }
        for l in &self.listeners {
            if l.transport.uses_tls() != l.tls.is_some() {
                return bad(&format!(
                    "listener {}: a tls, wss or quic listener needs a [listener.tls] table with cert_file and key_file (and only those have one)",
                    l.bind
                ));
            }
            let ws = &l.websocket;
            if !ws.path.starts_with('/')
                || ws.max_frame_size == 0
                || ws.max_message_size < ws.max_frame_size
            {
                return bad(&format!(
                    "listener {}: websocket.path must start with '/', max_frame_size be >= 1 and max_message_size >= max_frame_size",
                    l.bind
                ));
            }
            if ws.allowed_origins.iter().any(|o| o == "*" || o.is_empty()) {
                return bad(&format!(
                    "listener {}: websocket.allowed_origins lists origins (\"https://app.example.com\"); leave it empty to allow any",
                    l.bind
                ));
            }
            if l.quic.max_streams == 0 || l.quic.max_streams > 64 {
                return bad(&format!(
                    "listener {}: quic.max_streams must be between 1 and 64",
                    l.bind
                ));
            }
            if l.allow_anonymous && l.tenant.is_none() {
                return bad(&format!(
                    "listener {}: allow_anonymous needs a tenant for anonymous clients to join (tenant = \"...\")",
                    l.bind
                ));
            }
            if let Some(t) = &l.tenant {
                if messs_storage::registry::validate_tenant_id(t).is_err() {
                    return bad(&format!(
                        "listener {}: {t:?} is not a valid tenant id",
                        l.bind
                    ));
                }
            }
        }
        let a = &self.auth;
        if a.verify_queue == 0
            || a.lockout_ip_threshold == 0
            || a.lockout_user_threshold == 0
            || a.lockout_user_slow_after == 0
        {
            return bad("auth.verify_queue and the lockout thresholds must be >= 1");
        }
        if a.argon2_memory_kib < 8 * a.argon2_parallelism.max(1) || a.argon2_iterations == 0 {
            return bad("auth.argon2_memory_kib must be >= 8 x argon2_parallelism and argon2_iterations >= 1");
        }
        if a.scram_iterations < 4096 {
            return bad("auth.scram_iterations must be >= 4096 (RFC 7677)");
        }
        if a.failure_delay_ms >= l.connect_timeout_secs.saturating_mul(1000) {
            return bad("auth.failure_delay_ms must be shorter than limits.connect_timeout_secs");
        }
        self.bans.compile()?;
        let f = &self.flapping;
        if f.window_secs == 0 || f.ban_secs == 0 || f.max_tracked == 0 {
            return bad("flapping.window_secs, ban_secs and max_tracked must be >= 1");
        }
        if self.rate_limits.max_handshakes == 0 || self.rate_limits.max_tracked_addresses == 0 {
            return bad("rate_limits.max_handshakes and max_tracked_addresses must be >= 1");
        }
        if st.backup.every_secs == 0 || st.backup.keep == 0 {
            return bad("storage.backup.every_secs and storage.backup.keep must be >= 1");
        }
        if st.telemetry.retention_interval_secs == 0 {
            return bad("storage.telemetry.retention_interval_secs must be >= 1");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_parses_and_matches_defaults() {
        let text = include_str!("../../messs.example.toml");
        let parsed = Config::from_toml(text).unwrap();
        let expected = Config::try_out();
        assert_eq!(
            parsed, expected,
            "messs.example.toml must show every default"
        );
    }

    /// The commented `[listener.websocket]` and `[listener.quic]` tables of the example
    /// show the defaults: uncommented, they parse to them.
    #[test]
    fn example_transport_tables_show_the_defaults() {
        let text = include_str!("../../messs.example.toml");
        let mut tables = String::from("[[listener]]\n");
        let mut inside = false;
        for line in text.lines() {
            let line = line.trim_start_matches("# ");
            if line == "[listener.websocket]" || line == "[listener.quic]" {
                inside = true;
            } else if line.starts_with('[') || !line.contains(" = ") {
                inside = false;
            }
            if inside {
                tables.push_str(line);
                tables.push('\n');
            }
        }
        assert!(
            tables.contains("max_frame_size") && tables.contains("enable_0rtt"),
            "{tables}"
        );
        let parsed = Config::from_toml(&tables).unwrap();
        let l = &parsed.listeners[0];
        assert_eq!(l.websocket, WebSocketConfig::default());
        assert_eq!(l.quic, QuicConfig::default());
    }

    #[test]
    fn transports_check_their_settings() {
        let tls_less = "[[listener]]\ntransport = \"quic\"\n";
        let err = Config::from_toml(tls_less).unwrap_err().to_string();
        assert!(err.contains("[listener.tls]"), "{err}");
        let star =
            "[[listener]]\ntransport = \"ws\"\n[listener.websocket]\nallowed_origins = [\"*\"]\n";
        assert!(Config::from_toml(star).is_err());
        let streams = "[[listener]]\ntransport = \"tcp\"\n[listener.quic]\nmax_streams = 65\n";
        assert!(Config::from_toml(streams).is_err());
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = Config::from_toml("[limits]\nmax_pakcet_size = 5\n").unwrap_err();
        assert!(err.to_string().contains("max_pakcet_size"), "{err}");
    }

    #[test]
    fn zero_limits_are_rejected() {
        assert!(Config::from_toml("[limits]\nmax_inflight = 0\n").is_err());
    }
}
