//! Who a client is: authentication inside the CONNECT handshake, ending in an [`Identity`]
//! bound to one tenant, and the per-connection [`Access`] that the ACL questions go to.
//!
//! Order of the checks (cheap first, and the address check before any argon2 work):
//! 1. the tenant: the listener's, or the `@TENANT` suffix of the username;
//! 2. a password that matches a verification remembered from the same source (address or
//!    IPv6 /64) gets in (an HMAC and a cache lookup; no hashing), even when that source is
//!    locked out (a device behind the same NAT as a guesser); otherwise the source must not
//!    be locked out. Remembered per source, so a locked source learns nothing from the
//!    cache that another source filled: the right password and a wrong one get one answer;
//! 3. the credential: a client certificate verified in the TLS handshake (its CA says the
//!    tenant; a revoked or disabled device is refused); else a device JWT signed by one of
//!    the tenant's keys (`jwt`); else the username's lockout, a place among the source's
//!    checks in flight (`Lockout::begin`; none left: 0x89, unchecked), then argon2 on the
//!    verification pool (full: 0x89);
//! 4. the device's client-id pattern.
//!
//! Every refusal looks the same to the client whatever its cause among unknown tenant,
//! unknown device, disabled device and wrong password (v5 0x86, 3.1.1 0x04).

mod cert_and_token;
mod jwt;
mod lockout;
pub mod password;
pub(crate) mod scram;
pub(crate) mod tenants;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::hmac;
use messs_codec::{QoS, ReasonCode};
use messs_storage::Store;
use moka::sync::Cache;

use crate::audit_budget::{Admission, AuditBudget};
use crate::config::{Config, ListenerConfig, NoRules};
use crate::error::BrokerError;
use crate::security::acl::{ClientAcl, Subject, TokenScope};
use lockout::{Lockout, LockoutPolicy};
use password::{HashParams, PasswordPool, Verdict};
pub(crate) use tenants::{TenantSecurity, Tenants};

/// How a client proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    /// No credentials, on a listener that allows that.
    Anonymous,
    /// Username and argon2id-verified password (or a remembered verification).
    Password,
    /// A JWT signed by one of the tenant's keys.
    Jwt,
    /// A TLS client certificate from one of the tenant's CAs.
    Certificate,
    /// MQTT 5 enhanced authentication with SCRAM-SHA-256.
    Scram,
    /// Not a client: an operator publishing through the admin plane, checked against the
    /// ACL of the device it names (or of an anonymous client of the tenant).
    Admin,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Anonymous => "anonymous",
            Method::Password => "password",
            Method::Jwt => "jwt",
            Method::Certificate => "certificate",
            Method::Scram => "scram-sha-256",
            Method::Admin => "admin",
        }
    }
}

/// The name within its tenant, and the tenant: the listener's, or `NAME@TENANT` split at
/// the last `@` on a shared listener (empty strings when there is no tenant to find).
pub(crate) fn split_login<'a>(listener: &'a ListenerConfig, raw: &'a str) -> (&'a str, &'a str) {
    match &listener.tenant {
        Some(t) => (raw, t.as_str()),
        None => match raw.rsplit_once('@') {
            Some((n, t)) if !n.is_empty() && !t.is_empty() => (n, t),
            _ => ("", ""),
        },
    }
}

/// A SCRAM login between the server's first message and the client's final one.
pub(crate) struct ScramLogin {
    tenant: Option<Arc<TenantSecurity>>,
    tenant_id: String,
    name: String,
    who: String,
    device: Option<messs_storage::registry::DeviceRecord>,
    pub exchange: scram::Exchange,
    /// The exchange's place against the lockout thresholds, until it ends.
    _in_flight: lockout::InFlight,
}

/// An authenticated client, bound to its tenant.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub tenant: Arc<TenantSecurity>,
    /// `None` for an anonymous client.
    pub username: Option<Arc<str>>,
    pub groups: Arc<[String]>,
    pub method: Method,
    /// Client ids the device may use (`*` wildcard, `%u`), if restricted.
    client_id_pattern: Option<Arc<str>>,
    /// Client ids a device token allows (its `client_id` claim, same syntax), if any: a
    /// client id must match both patterns.
    token_client_id: Option<Arc<str>>,
    /// A token's narrowing of the ACL.
    scope: Option<Arc<TokenScope>>,
    /// The device's overrides of the per-connection rate limits (from its registry
    /// entry; shared and empty for most devices).
    pub device_limits: Arc<[(String, u64)]>,
}

impl Identity {
    /// `name@tenant` (or `anonymous@tenant`) for logs and the audit log.
    pub fn describe(&self) -> String {
        format!(
            "{}@{}",
            clip(self.username.as_deref().unwrap_or("anonymous")),
            self.tenant.id
        )
    }

    pub fn method_name(&self) -> &'static str {
        self.method.name()
    }

    /// Whether the device may use `client_id`: it matches the device's pattern and the
    /// token's, where there are any.
    pub fn allows_client_id(&self, client_id: &str) -> bool {
        let username = self.username.as_deref().unwrap_or("");
        [&self.client_id_pattern, &self.token_client_id]
            .into_iter()
            .flatten()
            .all(|pattern| glob(&pattern.replace("%u", username), client_id))
    }
}

impl Identity {
    /// The identity an operator's publish is checked as: the named device of an enabled
    /// tenant (its username and groups), or an anonymous client of it.
    pub fn for_admin(
        tenant: Arc<TenantSecurity>,
        device: Option<messs_storage::registry::DeviceRecord>,
    ) -> Identity {
        let (username, group_list) = match device {
            Some(d) => (Some(Arc::from(d.username.as_str())), d.groups),
            None => (None, Vec::new()),
        };
        Identity {
            tenant,
            username,
            groups: groups(group_list),
            method: Method::Admin,
            client_id_pattern: None,
            token_client_id: None,
            scope: None,
            device_limits: device_limits(Vec::new()),
        }
    }
}

/// A device's limit overrides, shared when empty (as `groups`).
pub(crate) fn device_limits(list: Vec<(String, u64)>) -> Arc<[(String, u64)]> {
    static NONE: std::sync::OnceLock<Arc<[(String, u64)]>> = std::sync::OnceLock::new();
    if list.is_empty() {
        NONE.get_or_init(|| Arc::from(Vec::new())).clone()
    } else {
        Arc::from(list)
    }
}

/// A group list, shared when empty (most devices have no groups; an empty `Arc<[String]>`
/// still allocates, and this is in every connection).
fn groups(list: Vec<String>) -> Arc<[String]> {
    static NONE: std::sync::OnceLock<Arc<[String]>> = std::sync::OnceLock::new();
    if list.is_empty() {
        NONE.get_or_init(|| Arc::from(Vec::new())).clone()
    } else {
        Arc::from(list)
    }
}

/// A client-chosen name as it goes into logs and the audit log: at most 64 characters
/// (a CONNECT may carry 64 KiB of username; the audit log must not grow by that much per
/// failed login), control characters and invisible formatting characters (bidi
/// overrides such as U+202E, zero-width ones) escaped as `\u{...}`, so it can neither
/// forge a line nor make a record read as something it does not say.
pub(crate) fn clip(name: &str) -> String {
    const MAX: usize = 64;
    let mut out = String::with_capacity(name.len().min(MAX * 4));
    for c in name.chars().take(MAX) {
        if c.is_control() || is_invisible_format(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    if name.chars().nth(MAX).is_some() {
        out.push('…');
    }
    out
}

/// Unicode format characters that change how the text around them reads without showing
/// themselves: bidi embeddings, overrides, isolates and marks, zero-width characters, the
/// soft hyphen, interlinear annotation and tag characters.
fn is_invisible_format(c: char) -> bool {
    matches!(c,
        '\u{ad}' | '\u{61c}' | '\u{180e}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}'
        | '\u{2060}'..='\u{206f}' | '\u{feff}' | '\u{fff9}'..='\u{fffb}'
        | '\u{e0000}'..='\u{e007f}')
}

/// `*` matches any run of characters; everything else itself. Iterative (no recursion a
/// pattern could deepen).
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Why a CONNECT was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Denied {
    /// Unknown tenant or device, disabled, wrong password: all the same to the client.
    BadCredentials,
    /// No credentials on a listener that needs them.
    AnonymousRefused,
    /// The verification queue is full.
    Busy,
    /// The address or username is locked out after too many failures.
    LockedOut,
    /// The device may not use this client id.
    ClientIdNotAllowed,
}

impl Denied {
    /// The CONNACK reason code (the codec maps it for 3.1.1).
    pub fn code(self) -> ReasonCode {
        match self {
            Denied::BadCredentials => ReasonCode::BadUserNameOrPassword,
            Denied::AnonymousRefused => ReasonCode::NotAuthorized,
            Denied::Busy => ReasonCode::ServerBusy,
            Denied::LockedOut => ReasonCode::Banned,
            Denied::ClientIdNotAllowed => ReasonCode::ClientIdentifierNotValid,
        }
    }

    /// The reason string sent to the client: nothing that tells which check failed.
    pub fn reason(self) -> &'static str {
        match self {
            Denied::BadCredentials => "bad user name or password",
            Denied::AnonymousRefused => "this listener does not allow anonymous clients",
            Denied::Busy => "too many logins are being verified; retry later",
            Denied::LockedOut => "too many failed logins; retry later",
            Denied::ClientIdNotAllowed => "this device may not use that client id",
        }
    }
}

/// A refusal with what the audit log gets (never a password).
#[derive(Debug)]
pub(crate) struct Refusal {
    pub denied: Denied,
    /// Who and why, for the audit log.
    pub detail: String,
    /// Lockouts this failure started, for the audit log.
    pub lockouts: Vec<String>,
}

impl Refusal {
    /// A refusal that started no lockout.
    fn new(denied: Denied, detail: String) -> Self {
        Refusal {
            denied,
            detail,
            lockouts: Vec::new(),
        }
    }
}

/// A verification remembered under a keyed digest of the credential.
#[derive(Debug, Clone)]
struct Remembered {
    tenant: Arc<str>,
    username: Arc<str>,
    groups: Arc<[String]>,
    client_id_pattern: Option<Arc<str>>,
    device_limits: Arc<[(String, u64)]>,
}

/// An audit record a refused login may write, within `auth.failure_audit_per_minute` (the
/// discriminant is its kind in the budget).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RefusalEvent {
    /// `auth.failure`.
    Failure = 0,
    /// `auth.lockout`.
    Lockout = 1,
}

/// Why a login was refused as busy without a check: see `Lockout::begin`.
const IN_FLIGHT_FULL: &str =
    "as many checks in flight from this source as it has guesses left before a lockout";

/// The authenticator: tenants, the verification pool and cache, and the lockout counters.
pub(crate) struct Auth {
    pub tenants: Arc<Tenants>,
    /// Every tenant's trusted client CAs (shared with the TLS listeners).
    pub client_cas: Arc<crate::transport::tls::ClientCas>,
    pool: PasswordPool,
    remembered: Cache<[u8; 32], Remembered>,
    /// Key of the digest the cache is keyed by: random per process, so the cache's keys
    /// say nothing about the passwords outside it.
    digest_key: hmac::Key,
    /// Key of the SCRAM decoys for unknown devices: the data directory's own secret
    /// (`Store::local_secret`), so a decoy's salt is as stable across restarts as a real
    /// device's; `digest_key` until the registry is loaded (or without a store).
    decoy_key: std::sync::OnceLock<hmac::Key>,
    /// Moves at every `forget`: a verification that started before a credential changed
    /// must not put the old credential into `remembered` after the change forgot it.
    forgets: std::sync::atomic::AtomicU64,
    lockout: Lockout,
    no_rules: NoRules,
    jwt_leeway_secs: u64,
    pub(crate) hash_params: HashParams,
    /// How many refused logins get an audit record of their own (see `refused`).
    refusal_audit: AuditBudget,
}

/// The credentials a CONNECT carried, and where it came from.
pub(crate) struct Login<'a> {
    pub peer: IpAddr,
    pub listener: &'a ListenerConfig,
    /// The client certificate the TLS handshake verified, if any.
    pub certificate: Option<crate::transport::tls::CertLogin>,
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
}

impl Auth {
    pub fn new(config: &Config) -> Result<Self, BrokerError> {
        let a = &config.auth;
        let hash_params = HashParams {
            memory_kib: a.argon2_memory_kib,
            iterations: a.argon2_iterations,
            parallelism: a.argon2_parallelism,
            scram_iterations: a.scram_iterations,
        };
        let threads = match a.verify_threads {
            // All cores but one (at least one), at a lower priority: a login flood can
            // never hold every core, and what connected clients leave is used.
            0 => {
                std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
            }
            n => n,
        };
        let pool = PasswordPool::new(threads, a.verify_queue, hash_params);
        let mut key = [0u8; 32];
        aws_lc_rs::rand::fill(&mut key)
            .map_err(|_| BrokerError::Config("no system randomness".into()))?;
        let tenants = Arc::new(Tenants::default());
        tenants.set_defaults(config.tenant_limits);
        for l in &config.listeners {
            if let Some(t) = &l.tenant {
                tenants.get_or_insert(&Arc::from(t.as_str()), false);
            }
        }
        Ok(Auth {
            tenants,
            client_cas: Arc::default(),
            pool,
            remembered: Cache::builder()
                .max_capacity(a.cache_capacity)
                .time_to_live(Duration::from_secs(a.cache_ttl_secs))
                .support_invalidation_closures()
                .build(),
            digest_key: hmac::Key::new(hmac::HMAC_SHA256, &key),
            decoy_key: std::sync::OnceLock::new(),
            forgets: std::sync::atomic::AtomicU64::new(0),
            lockout: Lockout::new(LockoutPolicy {
                ip_threshold: a.lockout_ip_threshold,
                user_threshold: a.lockout_user_threshold,
                user_slow_after: a.lockout_user_slow_after,
                base_ms: a.lockout_base_secs.saturating_mul(1000),
                max_ms: a.lockout_max_secs.saturating_mul(1000),
                slow_max_ms: a.lockout_slow_max_ms,
                capacity: a.lockout_capacity,
            }),
            no_rules: config.acl.tenant_without_rules,
            jwt_leeway_secs: a.jwt_leeway_secs,
            hash_params,
            refusal_audit: AuditBudget::new(
                a.failure_audit_per_minute,
                "login events",
                &["refused logins", "lockouts"],
                std::time::Instant::now(),
            ),
        })
    }

    /// Loads every registered tenant with its rules and keys. Blocking.
    pub fn load(&self, store: &Store) -> Result<usize, BrokerError> {
        let decoy = store.local_secret("scram_decoy")?;
        let _ = self
            .decoy_key
            .set(hmac::Key::new(hmac::HMAC_SHA256, &decoy));
        let tenants = store.tenants()?;
        for t in &tenants {
            self.reload_tenant(store, &t.id)?;
        }
        Ok(tenants.len())
    }

    /// Re-reads one tenant's record, rules and keys; returns whether it is enabled.
    /// Blocking.
    pub fn reload_tenant(&self, store: &Store, id: &str) -> Result<bool, BrokerError> {
        let Some(t) = store.tenant(id)? else {
            return Ok(true);
        };
        let entry = self.tenants.get_or_insert(&Arc::from(id), true);
        entry.set_jwt_keys(store.jwt_keys(id)?);
        entry.set_revoked(store.revoked_certs(id)?);
        let cas: Vec<Vec<u8>> = store.cas(id)?.into_iter().map(|c| c.der).collect();
        self.client_cas.set(&entry.id, &cas)?;
        entry.set_rules(store.acl_rules(id)?);
        self.tenants
            .set_overrides(&entry, t.limits.clone())
            .map_err(|e| BrokerError::Registry(format!("tenant {id}: {e}")))?;
        entry.set_cert_auto_register(t.cert_auto_register);
        entry.set_enabled(t.enabled);
        Ok(t.enabled)
    }

    /// A wrong credential: counted against the address and the username, with the lockouts
    /// that starts.
    fn bad_credentials(
        &self,
        peer: IpAddr,
        tenant: &str,
        name: &str,
        detail: String,
        now_ms: u64,
    ) -> Refusal {
        let lockouts = self
            .lockout
            .failed(peer, Some((tenant, name)), now_ms)
            .into_iter()
            .map(|l| format!("{} locked out for {} ms", l.what, l.ms))
            .collect();
        Refusal {
            denied: Denied::BadCredentials,
            detail,
            lockouts,
        }
    }

    /// Starts a SCRAM-SHA-256 login from the client's first message: the same tenant rules,
    /// lockouts and answers as a password login, but no hashing here (the client does the
    /// iterations). An unknown or disabled device, or one without a SCRAM verifier, gets a
    /// decoy exchange that no proof completes.
    pub async fn scram_begin(
        &self,
        listener: &ListenerConfig,
        peer: IpAddr,
        client_first: &[u8],
        store: Option<&Store>,
        now_ms: u64,
    ) -> Result<ScramLogin, Refusal> {
        let refuse = Refusal::new;
        let first = scram::parse_client_first(client_first)
            .map_err(|e| refuse(Denied::BadCredentials, format!("SCRAM from {peer}: {e}")))?;
        let (name, tenant_id) = split_login(listener, &first.username);
        let (name, tenant_id) = (name.to_owned(), tenant_id.to_owned());
        let who = format!("{}@{} from {peer} (SCRAM)", clip(&name), clip(&tenant_id));
        if let Some(ms) = self.lockout.ip_locked(peer, now_ms) {
            let detail = format!("{who}: address locked out for {ms} ms more");
            return Err(refuse(Denied::LockedOut, detail));
        }
        if let Some(ms) = self.lockout.user_locked(peer, &tenant_id, &name, now_ms) {
            let detail = format!("{who}: username locked out for {ms} ms more");
            return Err(refuse(Denied::LockedOut, detail));
        }
        let in_flight = self
            .lockout
            .begin(peer, &tenant_id, &name)
            .ok_or_else(|| refuse(Denied::Busy, format!("{who}: {IN_FLIGHT_FULL}")))?;
        if let Some(delay) = self.lockout.user_delay(&tenant_id, &name) {
            tokio::time::sleep(delay).await;
        }
        let tenant = self
            .tenants
            .get(&tenant_id)
            .filter(|t| t.registered.load(std::sync::atomic::Ordering::Acquire) && t.is_enabled());
        let device = match (&tenant, store.cloned()) {
            (Some(_), Some(store)) => {
                let (t, n) = (tenant_id.clone(), name.clone());
                match tokio::task::spawn_blocking(move || store.device(&t, &n)).await {
                    Ok(Ok(d)) => d,
                    _ => {
                        return Err(refuse(
                            Denied::BadCredentials,
                            format!("{who}: registry unreadable"),
                        ))
                    }
                }
            }
            _ => None,
        };
        let credential = device
            .as_ref()
            .filter(|d| d.enabled)
            .and_then(|d| d.scram.clone())
            .unwrap_or_else(|| {
                scram::decoy(
                    self.decoy_key.get().unwrap_or(&self.digest_key),
                    &tenant_id,
                    &name,
                    self.hash_params.scram_iterations,
                )
            });
        let exchange = scram::Exchange::start(first, credential)
            .map_err(|e| refuse(Denied::BadCredentials, format!("{who}: {e}")))?;
        Ok(ScramLogin {
            tenant,
            tenant_id,
            name,
            who,
            device,
            exchange,
            _in_flight: in_flight,
        })
    }

    /// Ends a SCRAM login with the client's final message: the identity and the server's
    /// final message (for CONNACK), or a refusal counted like a wrong password.
    pub fn scram_finish(
        &self,
        login: ScramLogin,
        client_final: &[u8],
        peer: IpAddr,
        now_ms: u64,
    ) -> Result<(Identity, String), Refusal> {
        // `_in_flight` lives to the end of this function: a failure is counted first.
        let ScramLogin {
            tenant,
            tenant_id,
            name,
            who,
            device,
            exchange,
            _in_flight,
        } = login;
        let outcome = exchange.finish(client_final);
        match (outcome, tenant, device) {
            (Ok(server_final), Some(tenant), Some(d)) if d.enabled && d.scram.is_some() => {
                self.lockout.succeeded(peer, &tenant_id, &name);
                let identity = Identity {
                    tenant,
                    username: Some(Arc::from(d.username.as_str())),
                    groups: groups(d.groups),
                    method: Method::Scram,
                    client_id_pattern: d.client_id_pattern.map(Arc::from),
                    token_client_id: None,
                    scope: None,
                    device_limits: device_limits(d.limits),
                };
                Ok((identity, server_final))
            }
            (Err(why), ..) => {
                Err(self.bad_credentials(peer, &tenant_id, &name, format!("{who}: {why}"), now_ms))
            }
            _ => Err(self.bad_credentials(
                peer,
                &tenant_id,
                &name,
                format!("{who}: bad credentials"),
                now_ms,
            )),
        }
    }

    /// Whether a refused login's record (`auth.failure`) or a lockout's (`auth.lockout`)
    /// at `now` gets written, and a summary of earlier ones that did not, to write first
    /// (`auth.failure_audit_per_minute`).
    pub fn refused(&self, event: RefusalEvent, now: std::time::Instant, now_ms: u64) -> Admission {
        self.refusal_audit.admit(event as usize, now, now_ms)
    }

    /// The summary of refusals not recorded one by one: when due, or with `force`
    /// (shutdown, a reader of the audit log) whenever there is one.
    pub fn refusals_unrecorded(&self, now: std::time::Instant, force: bool) -> Option<String> {
        self.refusal_audit.flush(now, force)
    }

    /// Refused logins and lockouts not recorded one by one since the start (the metric).
    pub fn refusals_suppressed(&self) -> u64 {
        self.refusal_audit.suppressed().iter().sum()
    }

    /// Entries of the lockout's maps and of the verification cache, for the metrics.
    pub fn tracked(&self) -> (u64, u64) {
        (self.lockout.tracked(), self.remembered.entry_count())
    }

    /// Argon2 computations run so far (tests count them).
    pub fn verifications(&self) -> u64 {
        self.pool.runs.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Forgets remembered verifications of one device (its credential or status changed),
    /// or of a whole tenant (`username` `None`).
    pub fn forget(&self, tenant: &str, username: Option<&str>) {
        // First the generation, then the invalidation: see `remember`.
        self.forgets
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let (tenant, username) = (tenant.to_owned(), username.map(str::to_owned));
        let _ = self.remembered.invalidate_entries_if(move |_, r| {
            *r.tenant == *tenant && username.as_deref().is_none_or(|u| *r.username == *u)
        });
    }

    /// Remembers a verification that started at `forgets` generation `since`, unless a
    /// credential was forgotten since. Inserting and then checking closes the race both
    /// ways: a `forget` before the check is seen here (and the entry removed), one after
    /// it invalidates the entry already inserted.
    fn remember(&self, digest: [u8; 32], r: Remembered, since: u64) {
        self.remembered.insert(digest, r);
        if self.forgets.load(std::sync::atomic::Ordering::Acquire) != since {
            self.remembered.invalidate(&digest);
        }
    }

    /// The cache key of a credential presented from `peer`: keyed by the source too, so a
    /// verification proven from one source is never an answer for another.
    fn digest(&self, peer: IpAddr, tenant: &str, username: &str, password: &[u8]) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.digest_key);
        let source = match crate::security::limits::source(peer) {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        };
        ctx.update(&source);
        for part in [tenant.as_bytes(), username.as_bytes()] {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part);
        }
        ctx.update(password);
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    /// Authenticates a CONNECT. `store` is where devices are looked up (none: only
    /// anonymous clients can connect).
    pub async fn authenticate(
        &self,
        login: Login<'_>,
        store: Option<&Store>,
        now_ms: u64,
    ) -> Result<Identity, Refusal> {
        let refuse = Refusal::new;
        let peer = login.peer;
        let ip_locked = |what: &str| {
            self.lockout.ip_locked(peer, now_ms).map(|ms| {
                refuse(
                    Denied::LockedOut,
                    format!("{what}: address locked out for {ms} ms more"),
                )
            })
        };
        if let Some(cert) = &login.certificate {
            if let Some(r) = ip_locked(&format!("certificate from {peer}")) {
                return Err(r);
            }
            return self.certificate(cert, peer, store).await;
        }
        if login.username.is_none() && login.password.is_none() {
            if let Some(r) = ip_locked(&format!("anonymous from {peer}")) {
                return Err(r);
            }
            return self.anonymous(&login);
        }
        let (name, tenant_id) = split_login(login.listener, login.username.unwrap_or(""));
        let password = login.password.unwrap_or(b"");
        let who = format!("{}@{} from {peer}", clip(name), clip(tenant_id));
        let tenant = self
            .tenants
            .get(tenant_id)
            .filter(|t| t.registered.load(std::sync::atomic::Ordering::Acquire));
        if jwt::looks_like_jwt(password) {
            let keys = tenant
                .as_ref()
                .filter(|t| t.is_enabled())
                .map(|t| (t.clone(), t.jwt_keys()))
                .filter(|(_, k)| !k.is_empty());
            if let Some((t, keys)) = keys {
                if let Some(r) = ip_locked(&who) {
                    return Err(r);
                }
                return self
                    .token(&login, t, &keys, (name, &who), store, now_ms)
                    .await;
            }
        }
        let digest = self.digest(peer, tenant_id, name, password);
        if let Some(r) = self.remembered.get(&digest) {
            if let Some(t) = tenant.as_ref().filter(|t| t.is_enabled()) {
                return Ok(Identity {
                    tenant: t.clone(),
                    username: Some(r.username),
                    groups: r.groups,
                    method: Method::Password,
                    client_id_pattern: r.client_id_pattern,
                    token_client_id: None,
                    scope: None,
                    device_limits: r.device_limits,
                });
            }
        }
        // A credential remembered from this source was proven here before and costs no
        // hashing, so it gets in even when the source is locked out (a device behind the
        // same NAT as an attacker); everything else meets the lockouts before any argon2.
        if let Some(r) = ip_locked(&who) {
            return Err(r);
        }
        if let Some(ms) = self.lockout.user_locked(peer, tenant_id, name, now_ms) {
            return Err(refuse(
                Denied::LockedOut,
                format!("{who}: username locked out for {ms} ms more"),
            ));
        }
        // Held until the end, after a failure has been counted.
        let _in_flight = self
            .lockout
            .begin(peer, tenant_id, name)
            .ok_or_else(|| refuse(Denied::Busy, format!("{who}: {IN_FLIGHT_FULL}")))?;
        // A username guessed at from many sources: slowed, not locked.
        if let Some(delay) = self.lockout.user_delay(tenant_id, name) {
            tokio::time::sleep(delay).await;
        }
        // Unknown or disabled tenants cost the same as a wrong password.
        let usable_tenant = tenant.filter(|t| t.is_enabled());
        let lookup = usable_tenant.as_ref().and(store).cloned();
        let since = self.forgets.load(std::sync::atomic::Ordering::Acquire);
        let verdict = self
            .pool
            .verify(
                lookup,
                tenant_id.to_owned(),
                name.to_owned(),
                password.to_vec(),
            )
            .await;
        match (verdict, usable_tenant) {
            (None, _) => Err(refuse(
                Denied::Busy,
                format!("{who}: verification queue full"),
            )),
            (Some(Verdict::Valid(device)), Some(t)) => {
                self.lockout.succeeded(peer, tenant_id, name);
                let remembered = Remembered {
                    tenant: t.id.clone(),
                    username: Arc::from(device.username.as_str()),
                    groups: groups(device.groups),
                    client_id_pattern: device.client_id_pattern.map(Arc::from),
                    device_limits: device_limits(device.limits),
                };
                self.remember(digest, remembered.clone(), since);
                Ok(Identity {
                    tenant: t,
                    username: Some(remembered.username),
                    groups: remembered.groups,
                    method: Method::Password,
                    client_id_pattern: remembered.client_id_pattern,
                    token_client_id: None,
                    scope: None,
                    device_limits: remembered.device_limits,
                })
            }
            (Some(v), _) => {
                let why = match v {
                    Verdict::StoreError => "registry unreadable",
                    _ => "bad credentials",
                };
                Err(self.bad_credentials(peer, tenant_id, name, format!("{who}: {why}"), now_ms))
            }
        }
    }

    fn anonymous(&self, login: &Login<'_>) -> Result<Identity, Refusal> {
        let tenant = match (&login.listener.tenant, login.listener.allow_anonymous) {
            (Some(t), true) => self.tenants.get_or_insert(&Arc::from(t.as_str()), false),
            _ => {
                return Err(Refusal {
                    denied: Denied::AnonymousRefused,
                    detail: format!("anonymous from {}: listener needs credentials", login.peer),
                    lockouts: Vec::new(),
                })
            }
        };
        if !tenant.is_enabled() {
            return Err(Refusal {
                denied: Denied::AnonymousRefused,
                detail: format!(
                    "anonymous from {}: tenant {} disabled",
                    login.peer, tenant.id
                ),
                lockouts: Vec::new(),
            });
        }
        Ok(Identity {
            tenant,
            username: None,
            groups: groups(Vec::new()),
            method: Method::Anonymous,
            client_id_pattern: None,
            token_client_id: None,
            scope: None,
            device_limits: device_limits(Vec::new()),
        })
    }

    /// The ACL for a client, compiled from its tenant's current rules.
    pub fn compile(&self, identity: &Identity, client_id: &str) -> (ClientAcl, u64) {
        let (rules, epoch) = identity.tenant.rules();
        let scope = identity.scope.as_deref();
        let acl = if rules.is_empty() && self.no_rules == NoRules::Allow {
            ClientAcl::allow_all(scope)
        } else {
            ClientAcl::compile(
                &rules,
                &Subject {
                    username: identity.username.as_deref(),
                    client_id,
                    groups: &identity.groups,
                },
                scope,
            )
        };
        (acl, epoch)
    }
}

/// One connection's identity and compiled ACL, recompiled when its tenant's rules change.
pub(crate) struct Access {
    pub identity: Identity,
    pub client_id: Arc<str>,
    acl: ClientAcl,
    epoch: u64,
    /// Deliveries must be checked one by one: some subscription of the session is not
    /// wholly allowed any more (after a rule change, or restored from before one).
    pub check_deliveries: bool,
    /// Messages refused so far (the first is audited, the rest counted at disconnect).
    pub denied: u64,
    /// The last publish decision (topic, QoS, retain, verdict): a device publishes to the
    /// same few topics over and over, so a repeat costs a string comparison instead of a
    /// walk over the rules. Cleared when the rules change.
    last_publish: Option<(messs_codec::TopicName, QoS, bool, bool)>,
}

impl Access {
    pub fn new(auth: &Auth, identity: Identity, client_id: Arc<str>) -> Self {
        let (acl, epoch) = auth.compile(&identity, &client_id);
        Access {
            identity,
            client_id,
            acl,
            epoch,
            check_deliveries: false,
            denied: 0,
            last_publish: None,
        }
    }

    /// Recompiles if the tenant's rules changed since; true if they did.
    pub fn refresh(&mut self, auth: &Auth) -> bool {
        if self.identity.tenant.epoch() == self.epoch {
            return false;
        }
        let (acl, epoch) = auth.compile(&self.identity, &self.client_id);
        self.acl = acl;
        self.epoch = epoch;
        self.last_publish = None;
        true
    }

    /// May the client publish this message? (Rules as last refreshed.)
    pub fn may_publish(&mut self, topic: &messs_codec::TopicName, qos: QoS, retain: bool) -> bool {
        if self.acl.is_allow_all() {
            return true;
        }
        if let Some((t, q, r, verdict)) = &self.last_publish {
            if *q == qos && *r == retain && t == topic {
                return *verdict;
            }
        }
        let verdict = self.acl.may_publish(topic.as_str(), qos, retain);
        self.last_publish = Some((topic.clone(), qos, retain, verdict));
        verdict
    }

    pub fn acl(&self) -> &ClientAcl {
        &self.acl
    }

    /// May a message on `topic` be delivered through a subscription of this client?
    pub fn may_receive(&self, topic: &str, qos: QoS, retain: bool) -> bool {
        !self.check_deliveries || self.acl.may_receive(topic, qos, retain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_clipped_for_the_audit_log() {
        assert_eq!(clip("sensor1"), "sensor1");
        assert_eq!(clip("a\nb"), "a\\u{a}b");
        assert_eq!(clip("capteur-é"), "capteur-é", "visible letters stay");
        // The outside review wrote U+202E into the audit log as itself: a record then
        // reads right to left from there ("evil\u{202e}nimda" shows as "evil" + "admin").
        assert_eq!(clip("evil\u{202e}nimda"), "evil\\u{202e}nimda");
        assert_eq!(clip("a\u{200b}b\u{feff}"), "a\\u{200b}b\\u{feff}");
        let long = "x".repeat(10_000);
        assert_eq!(clip(&long).chars().count(), 65);
    }

    #[test]
    fn client_id_patterns() {
        assert!(glob("sensor-*", "sensor-1"));
        assert!(glob("*", ""));
        assert!(glob("a*b*c", "aXXbYYc"));
        assert!(!glob("a*b*c", "aXXbYY"));
        assert!(!glob("sensor-*", "other"));
        assert!(glob("exact", "exact"));
        assert!(!glob("exact", "exactly"));
    }
}
