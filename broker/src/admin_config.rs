//! The `[admin]` section: where the HTTP admin plane listens and how it treats logins. The
//! broker only carries it (one file, one validation); `messs-admin` acts on it.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::error::BrokerError;

/// The admin plane's settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Serve the admin plane at all.
    pub enabled: bool,
    /// Address and port (`--admin-listen` overrides it). Port 0 picks a free port.
    pub bind: SocketAddr,
    /// Serve HTTPS (TLS 1.3 only) with this certificate chain (PEM); with `key_file`. Read at
    /// start: a new certificate takes a restart.
    pub cert_file: Option<PathBuf>,
    /// The private key of `cert_file` (PEM).
    pub key_file: Option<PathBuf>,
    /// Origins allowed to call the API from a browser (CORS); empty: CORS off.
    pub cors_origins: Vec<String>,
    /// Lifetime of an access token, seconds.
    pub access_token_secs: u64,
    /// Lifetime of a login's refresh-token family, seconds, however often it is rotated.
    pub refresh_token_secs: u64,
    /// Logins (refresh-token families) one account keeps; a new one ends the oldest.
    pub max_logins_per_admin: usize,
    /// Accounts without TOTP may only enrol (and change their password) until they have it.
    pub require_mfa: bool,
    /// Failed logins in a row for one account from one source (an address; IPv6 by /64)
    /// that lock that source out of that account. Other sources are not affected, and a
    /// source that logged in to the account before is never locked out of it.
    pub lockout_failures: u32,
    /// How long a source stays locked out of an account, seconds; also how long without a
    /// failure before an account's failures (`account_slow_after`) are forgotten.
    pub lockout_secs: u64,
    /// Failed logins for one account, from all sources together, past which every login
    /// attempt for it (the right password too) is answered late: the account is slowed,
    /// never locked.
    pub account_slow_after: u32,
    /// The longest such delay, milliseconds (it starts at 250 ms and doubles with each
    /// further failure). At most half of `idle_timeout_secs` is used, so a slowed login
    /// is never cut as idle.
    pub account_slow_max_ms: u64,
    /// How long a successful login keeps its (account, source) pair exempt from the
    /// per-source lockout, seconds (renewed by each successful login).
    pub known_source_secs: u64,
    /// Entries each of the login lockout's maps holds at most: (account, source) failure
    /// counts, accounts' failure counts, and known (account, source) pairs.
    pub max_tracked_logins: usize,
    /// Login attempts a minute from one address (and a burst of as many).
    pub login_attempts_per_minute: u32,
    /// Addresses the login rate limit tracks (oldest forgotten first).
    pub max_tracked_addresses: usize,
    /// Audit records a minute (and a burst of as many) that requests without credentials
    /// (rate-limited and failed logins) may write; beyond it they are counted and written
    /// as one summary record.
    pub anonymous_audit_per_minute: u32,
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
    /// Connections to the admin plane open at once (TLS handshakes included); more wait
    /// in the kernel's backlog.
    pub max_connections: usize,
    /// A connection that moves no byte either way for this long is closed, seconds.
    pub idle_timeout_secs: u64,
    /// Who sees the per-tenant samples of `/metrics` (their `tenant` label names every
    /// tenant): `authenticated` callers only (a bearer token allowed to read metrics, of
    /// its tenants) or anyone who reaches the port (`public`).
    pub metrics_tenant_labels: MetricsTenantLabels,
}

/// Who sees `/metrics` samples labelled with a tenant.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MetricsTenantLabels {
    /// A caller with a bearer token that may read metrics, for the tenants it may see.
    #[default]
    Authenticated,
    /// Anyone (the listener's address is then what guards tenant ids).
    Public,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            cert_file: None,
            key_file: None,
            cors_origins: Vec::new(),
            access_token_secs: 900,
            refresh_token_secs: 7 * 24 * 3600,
            max_logins_per_admin: 10,
            require_mfa: true,
            lockout_failures: 5,
            lockout_secs: 900,
            account_slow_after: 20,
            account_slow_max_ms: 5000,
            known_source_secs: 30 * 24 * 3600,
            max_tracked_logins: 10_000,
            login_attempts_per_minute: 10,
            max_tracked_addresses: 10_000,
            anonymous_audit_per_minute: 60,
            max_body_bytes: 256 * 1024,
            max_connections: 256,
            idle_timeout_secs: 30,
            metrics_tenant_labels: MetricsTenantLabels::Authenticated,
        }
    }
}

impl AdminConfig {
    /// Checks values that would make the admin plane unusable or unsafe.
    pub fn validate(&self) -> Result<(), BrokerError> {
        let bad = |what: &str| Err(BrokerError::Config(format!("[admin] {what}")));
        if self.cert_file.is_some() != self.key_file.is_some() {
            return bad("cert_file and key_file go together");
        }
        if self.access_token_secs == 0 || self.access_token_secs > 24 * 3600 {
            return bad("access_token_secs must be 1..=86400");
        }
        if self.refresh_token_secs < self.access_token_secs {
            return bad("refresh_token_secs must be at least access_token_secs");
        }
        if self.max_logins_per_admin == 0
            || self.lockout_failures == 0
            || self.login_attempts_per_minute == 0
            || self.max_tracked_addresses == 0
            || self.anonymous_audit_per_minute == 0
            || self.max_connections == 0
            || self.idle_timeout_secs == 0
            || self.account_slow_after == 0
            || self.max_tracked_logins == 0
        {
            return bad("max_logins_per_admin, lockout_failures, login_attempts_per_minute, max_tracked_addresses, anonymous_audit_per_minute, max_connections, idle_timeout_secs, account_slow_after and max_tracked_logins must be >= 1");
        }
        if self.max_body_bytes < 1024 {
            return bad("max_body_bytes must be >= 1024");
        }
        if self.cors_origins.iter().any(|o| o == "*") {
            return bad("cors_origins lists origins; \"*\" would let any web page call the API");
        }
        Ok(())
    }
}
