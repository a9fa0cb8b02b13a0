//! messs-broker: the MQTT broker engine.
//!
//! The path of a PUBLISH, top to bottom: `transport` accepts a socket (`transport::accept`:
//! bans, per-address limits) and turns it into a byte stream (TCP, TLS, WebSocket, QUIC);
//! `handshake` reads CONNECT, authenticates it (`security`) and attaches a `session` through
//! the session table (`session::table`, the one owner of the session lifecycle); `client`
//! runs the connection loop over a `transport::connection` (framing with messs-codec),
//! charging each packet to its rate limits and handing each PUBLISH to the choke point
//! (`admission`), which applies the broker's rules for messages and then the `router`,
//! which fans it out into the bounded queues of matching sessions; each session's own client
//! task drains its queue back to its socket. Storage (`persist`, messs-storage) sits beside
//! the path: what a publish must keep is submitted to the store's writer with the
//! publisher's acknowledgement ticket.
//!
//! `state::BrokerState` wires these services together (`server` builds it and runs the
//! listeners and periodic tasks); `handle` is the operator's view (the admin plane's).

mod admin_config;
mod admission;
pub mod audit_budget;
#[doc(hidden)]
pub mod bench_support;
mod budget;
mod client;
mod clock;
mod config;
mod error;
#[doc(hidden)]
pub mod fuzz_support;
mod handle;
mod handle_ops;
mod handshake;
mod message;
pub mod metrics;
mod persist;
pub mod registry;
mod router;
mod security;
mod server;
mod session;
mod state;
mod stats;
mod sys;
mod transport;

pub use admin_config::{AdminConfig, MetricsTenantLabels};
pub use config::{
    AclConfig, AuthConfig, BackupConfig, BansConfig, CertIdentity, Config, DurabilityLevel,
    LimitsConfig, ListenerConfig, NoRules, QueueFullPolicy, QuicConfig, RateLimitsConfig,
    SessionConfig, StorageConfig, SysConfig, TelemetryConfig, TlsConfig, Transport,
    WebSocketConfig,
};
pub use error::BrokerError;
pub use error::Refused as PublishRefused;
pub use handle::{BrokerHandle, ClientInfo, Readiness, SessionInfo};
pub use handle_ops::{AdminPublish, RetainedInfo, SubscriptionInfo};
pub use handshake::DEFAULT_TENANT;
pub use security::auth::password::{hash_password, HashParams};
pub use security::limits::bans::FlappingPolicy;
pub use security::limits::source as address_source;
pub use security::limits::tenant::{TenantLimits, NAMES as TENANT_LIMIT_NAMES};
pub use server::Broker;

/// Opens the store a broker with `config` would use (operator tasks on a stopped broker's
/// data directory).
pub fn open_store(config: &StorageConfig) -> Result<messs_storage::Store, BrokerError> {
    persist::Persistence::open(config).map(|p| p.store)
}

/// Opens the configured data directory read-only (`messs storage verify`): nothing in it
/// changes, a damaged write-ahead log is reported, never recovered.
pub fn open_store_read_only(config: &StorageConfig) -> Result<messs_storage::Store, BrokerError> {
    let mut options = persist::store_options(config)?;
    options.read_only = true;
    options.recover_wal = false;
    Ok(messs_storage::Store::open(options)?)
}
/// The storage crate, for registry and audit types the admin plane and CLI use.
pub use messs_storage as storage;
pub use persist::seal_store;

/// Sets the process's file-mode creation mask to 077, so the files and directories the
/// broker creates (the data directory, RocksDB's files, checkpoints, the self-signed key)
/// are owner-only (0700, 0600) whatever umask it was started with. Call it first in
/// `main`, before other threads run.
pub fn restrict_new_files() {
    #[cfg(unix)]
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}
pub use stats::Stats;
pub use transport::self_signed;
pub use transport::tls::{https_acceptor, parse_pem_certs, read_pem_certs};
