//! The broker's shared state: the services every connection task uses, and the glue that
//! carries out what the session table's transitions leave to do (publishing wills, the
//! timer task). The session lifecycle itself is `session::table`.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use messs_codec::ReasonCode;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::Source;
use crate::budget::ByteBudget;
use crate::clock::Clock;
use crate::config::Config;
use crate::message::Message;
use crate::persist::{AckTicket, Persistence};
use crate::router::Router;
use crate::session::table::{Attached, Effects, TableLimits};
use crate::session::{
    AttachRefused, Departure, Effect, Session, SessionKey, SessionLimits, SessionTable,
};
use crate::stats::Stats;

/// Store reads for connections that may run at once (see `spawn_storage_read`).
const STORAGE_READS: usize = 4;

/// The broker's services wired together, as every connection task shares them: the session
/// table, the router, admission, authentication, the connection gate, the store and the
/// metrics. Each service owns its own state; what is implemented here is only what joins
/// two of them (applying the session table's effects through admission, auditing to the
/// store, registry changes reaching live sessions).
pub(crate) struct BrokerState {
    pub config: Config,
    pub router: Arc<Router>,
    pub stats: Arc<Stats>,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
    /// Authentication, tenants and their ACL rules.
    pub auth: Arc<crate::security::auth::Auth>,
    /// The choke point every message passes.
    pub admission: crate::admission::Admission,
    /// TLS listeners, for certificate reloads.
    tls_listeners: Mutex<Vec<Arc<crate::transport::tls::TlsListener>>>,
    /// Reads from the store on behalf of connections (page-ins, retained payloads) that may
    /// run at once: each holds up to a page (~1 MiB) while it runs, so many clients cannot
    /// make the broker read their backlogs all at the same time.
    storage_reads: Arc<tokio::sync::Semaphore>,
    /// The durable store, if the broker has one (tests of the in-memory engine and the
    /// fuzzer run without).
    pub persist: Option<Arc<Persistence>>,
    /// The session registry and lifecycle.
    pub sessions: SessionTable,
    /// Every connection's keep-alive timer (see `client::keep_alive_timers`).
    pub keep_alives: crate::client::KeepAliveTimers,
    /// Who may open a connection and how many at once (bans, addresses, handshakes).
    pub gate: crate::security::limits::gate::Gate,
    /// Accept loops running (readiness: every configured listener up).
    pub listeners_up: std::sync::atomic::AtomicUsize,
}

impl BrokerState {
    pub fn new(config: Config, persist: Option<Persistence>) -> Result<Self, crate::BrokerError> {
        Self::with_clock(config, persist, Clock::system())
    }

    /// As `new`, with the clock the session table decides on (tests drive a paused one).
    pub(crate) fn with_clock(
        config: Config,
        persist: Option<Persistence>,
        clock: Clock,
    ) -> Result<Self, crate::BrokerError> {
        let stats = Arc::new(Stats::default());
        let persist = persist.map(|p| Arc::new(p.counted_in(&stats)));
        let limits = &config.limits;
        let auth = Arc::new(crate::security::auth::Auth::new(&config)?);
        let tenants = auth.tenants.clone();
        let router = Arc::new(Router::new(
            limits.max_retained_messages,
            limits.max_retained_bytes,
            config.session.queue_qos0_offline,
            stats.clone(),
            persist
                .as_ref()
                .map(|p| (p.store.clone(), p.retained_inline_bytes, p.shared.clone())),
            Box::new(move |tenant| tenants.get_or_insert(tenant, false).rates.holdings.clone()),
        ));
        let budget = Arc::new(ByteBudget::new(
            stats.clone(),
            limits.max_session_bytes_total,
        ));
        let table_limits = TableLimits {
            max_sessions: limits.max_sessions,
            session: SessionLimits {
                max_queued: limits.max_queued_messages,
                max_queued_bytes: limits.max_queued_bytes,
                max_subscriptions: limits.max_subscriptions_per_session,
                max_subscription_bytes: limits.max_subscription_bytes_per_session,
                queue_full: limits.queue_full,
            },
        };
        let sessions = SessionTable::new(
            table_limits,
            budget,
            auth.tenants.clone(),
            router.clone(),
            stats.clone(),
            clock,
        );
        let admission = crate::admission::Admission::new(
            auth.clone(),
            router.clone(),
            persist.clone(),
            stats.clone(),
            limits.max_topic_levels,
            config.rate_limits.throttle(),
        );
        Ok(BrokerState {
            keep_alives: crate::client::KeepAliveTimers::new(stats.clone()),
            auth,
            admission,
            sessions,
            tls_listeners: Mutex::default(),
            router,
            storage_reads: Arc::new(tokio::sync::Semaphore::new(STORAGE_READS)),
            persist,
            stats,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            gate: crate::security::limits::gate::Gate::new(&config)?,
            listeners_up: std::sync::atomic::AtomicUsize::new(0),
            config,
        })
    }

    /// Applies changed rate limits to new and live connections alike.
    pub fn set_rate_limits(&self, limits: &crate::config::RateLimitsConfig) {
        self.gate.set_rate_limits(limits);
        self.admission.set_throttle_policy(limits.throttle());
    }

    /// A number no other session or assigned client id of this broker has had, across
    /// restarts.
    pub fn unique_id(&self) -> u64 {
        self.sessions.unique_id()
    }

    /// The shared name of a tenant (the registry's `Arc` when it knows the tenant).
    pub fn tenant_id(&self, name: &str) -> crate::session::TenantId {
        match self.auth.tenants.get(name) {
            Some(t) => t.id.clone(),
            None => Arc::from(name),
        }
    }

    pub(crate) fn add_tls_listener(&self, l: Arc<crate::transport::tls::TlsListener>) {
        self.tls_listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(l);
    }

    /// Re-reads every TLS listener's certificate and key (live connections keep theirs);
    /// the first error, if any (that listener keeps its old certificate).
    pub(crate) fn reload_tls(&self) -> Result<usize, crate::BrokerError> {
        let listeners = self
            .tls_listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut first_error = None;
        for l in &listeners {
            if let Err(e) = l.reload() {
                tracing::error!(error = %e, "TLS certificate reload failed; the old one stays");
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(listeners.len()),
        }
    }

    /// Applies registry changes to live state (see `BrokerHandle::registry`). Blocking.
    pub(crate) fn apply_registry(
        &self,
        store: &messs_storage::Store,
        touched: Vec<crate::registry::Touched>,
    ) {
        use crate::registry::Touched;
        for t in touched {
            let (tenant, device, certificates) = match &t {
                Touched::Tenant(t) => (t.as_str(), None, false),
                Touched::Certificates(t) => (t.as_str(), None, true),
                Touched::Device(t, d) => (t.as_str(), Some(d.as_str()), false),
            };
            self.auth.forget(tenant, device);
            let kick = match device {
                None => match self.auth.reload_tenant(store, tenant) {
                    Ok(enabled) => !enabled,
                    Err(e) => {
                        tracing::error!(error = %e, tenant, "reloading a tenant failed");
                        false
                    }
                },
                Some(d) => match store.device(tenant, d) {
                    Ok(Some(dev)) if dev.enabled => {
                        self.give_device_limits(tenant, d, dev.limits);
                        false
                    }
                    _ => true,
                },
            };
            if !kick && !certificates {
                continue;
            }
            for s in self.sessions.all() {
                if *s.key.tenant != *tenant || !s.is_connected() {
                    continue;
                }
                let hit = {
                    let st = s.lock();
                    let owned = device.is_none_or(|d| st.owner() == Some(d));
                    let by_certificate = st.link().is_some_and(|l| l.by_certificate);
                    (kick && owned) || (certificates && by_certificate)
                };
                if hit {
                    s.kick(ReasonCode::AdministrativeAction);
                }
            }
        }
    }

    /// Hands a device's (maybe changed) limit overrides to its live connections, which take
    /// them at their next packet.
    fn give_device_limits(&self, tenant: &str, device: &str, limits: Vec<(String, u64)>) {
        let limits = crate::security::auth::device_limits(limits);
        let mut given = false;
        for s in self.sessions.all() {
            if *s.key.tenant == *tenant && s.is_connected() {
                let mut st = s.lock();
                if st.owner() == Some(device) {
                    st.set_device_limits(limits.clone());
                    given = true;
                }
            }
        }
        if given {
            // Every connection looks at its limits again; those with new ones take them.
            self.admission.recheck_rates();
        }
    }

    /// Appends a security event to the audit log (when the broker has a store).
    pub fn audit(&self, action: &str, detail: String) {
        self.audit_as(None, action, detail);
    }

    /// Appends an event one of `tenant`'s clients caused (the tenant's own audit retention
    /// applies to it: `[tenant_limits]` `audit_max_age_days`, `audit_max_bytes`).
    pub fn audit_for(&self, tenant: &str, action: &str, detail: String) {
        self.audit_as(Some(tenant), action, detail);
    }

    fn audit_as(&self, tenant: Option<&str>, action: &str, detail: String) {
        if let Some(p) = &self.persist {
            if p.audit_for(tenant, action, detail) {
                self.stats.audit_withheld.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Reports a session's stored messages moved to the quarantine (sequence number and
    /// why, the first first), see `report_quarantined`.
    pub fn report_quarantined_messages(
        &self,
        key: &crate::session::SessionKey,
        quarantined: &[(u64, String)],
    ) {
        let Some((seq, error)) = quarantined.first() else {
            return;
        };
        let whose = format!(
            "stored messages of client {:?} of tenant {} (first: seq {seq})",
            crate::security::auth::clip(&key.client_id),
            key.tenant
        );
        self.report_quarantined(&whose, quarantined.len(), error);
    }

    /// Reports `n` stored records (`whose`: what they were) that could not be read and
    /// were moved to the store's quarantine: a log line, the `records_quarantined`
    /// metric, and an audit record (the admin API's audit log shows it).
    pub fn report_quarantined(&self, whose: &str, n: usize, first_error: &str) {
        if n == 0 {
            return;
        }
        self.stats
            .records_quarantined
            .fetch_add(n as u64, Ordering::Relaxed);
        tracing::error!(
            records = n,
            error = %first_error,
            "{whose}: cannot be read; moved to the quarantine, the rest goes on"
        );
        self.audit(
            "storage.quarantine",
            format!("{n} {whose} could not be read ({first_error}); kept in the quarantine"),
        );
    }

    /// Records a refused login (`auth.failure`) within the audit budget for refusals
    /// (anyone who reaches the port can cause them): beyond it, counted and summed up.
    pub fn audit_refusal(&self, detail: String) {
        self.audit_login_event(crate::security::auth::RefusalEvent::Failure, detail);
    }

    /// Records a lockout (`auth.lockout`), within the same budget: one attacker with many
    /// sources can start many.
    pub fn audit_lockout(&self, detail: String) {
        self.audit_login_event(crate::security::auth::RefusalEvent::Lockout, detail);
    }

    fn audit_login_event(&self, event: crate::security::auth::RefusalEvent, detail: String) {
        let now = (std::time::Instant::now(), crate::clock::unix_ms());
        let a = self.auth.refused(event, now.0, now.1);
        if let Some(summary) = a.summary {
            self.audit("auth.audit.suppressed", summary);
        }
        if a.record {
            let action = match event {
                crate::security::auth::RefusalEvent::Failure => "auth.failure",
                crate::security::auth::RefusalEvent::Lockout => "auth.lockout",
            };
            self.audit(action, detail);
        }
    }

    /// Writes the summary of refusals not yet recorded, if there is one (`force`: even
    /// before a minute has passed, for shutdown and readers of the log).
    pub fn flush_refusal_audit(&self, force: bool) {
        if let Some(summary) = self
            .auth
            .refusals_unrecorded(std::time::Instant::now(), force)
        {
            self.audit("auth.audit.suppressed", summary);
        }
    }

    /// Runs `read` (a blocking read of the store for one connection) on the blocking pool,
    /// at most `STORAGE_READS` at a time.
    pub fn spawn_storage_read(&self, read: impl FnOnce() + Send + 'static) {
        let permits = self.storage_reads.clone();
        tokio::spawn(async move {
            let Ok(_permit) = permits.acquire_owned().await else {
                return;
            };
            if let Err(e) = tokio::task::spawn_blocking(read).await {
                tracing::error!(error = %e, "a storage read failed");
            }
        });
    }

    /// Whether acknowledgements may wait for the store.
    pub fn acks_wait(&self) -> bool {
        self.persist.as_ref().is_some_and(|p| p.waits())
    }

    /// Attaches a new connection to the session `key` before `deadline` (see
    /// `SessionTable::attach`), publishes the wills of sessions it ended, and mirrors a
    /// persistent session to the store.
    pub async fn attach(
        &self,
        key: SessionKey,
        clean_start: bool,
        expiry: u32,
        deadline: tokio::time::Instant,
    ) -> Result<Attached, AttachRefused> {
        let (attached, effects) = self
            .sessions
            .attach(key, clean_start, expiry, deadline)
            .await;
        self.apply(effects);
        let attached = attached?;
        let session = &attached.session;
        if expiry > 0 && !session.is_durable() {
            if let Some(disk) = self
                .persist
                .as_ref()
                .and_then(|p| p.session_disk(&session.key, session.id, 1, &self.stats))
            {
                session.lock().make_durable(disk);
                session.set_durable();
            }
        }
        if self.shutdown.is_cancelled() {
            // Attached after `kick_all` ran: close at once.
            session.kick(ReasonCode::ServerShuttingDown);
        }
        Ok(attached)
    }

    /// Detaches a connection from its session (see `SessionTable::detach`) and publishes
    /// its will if that is due now.
    pub fn detach(
        &self,
        session: &Arc<Session>,
        generation: u64,
        departure: Departure,
        will: Option<crate::session::table::Will>,
    ) {
        let effects = self.sessions.detach(session, generation, departure, will);
        self.apply(effects);
    }

    /// Applies what a session transition left to do, in order.
    pub(crate) fn apply(&self, effects: Effects) {
        for effect in effects {
            match effect {
                Effect::PublishWill(session, message, access) => {
                    self.publish_will(&session, message, access)
                }
            }
        }
    }

    fn publish_will(
        &self,
        session: &Session,
        message: Arc<Message>,
        mut access: Option<Box<crate::security::auth::Access>>,
    ) {
        let routes = self.router.tenant(&session.key.tenant);
        // Nobody waits for a will's acknowledgement; its writes are submitted all the same.
        let mut no_ack = AckTicket::new(false);
        if let Err(refused) = self.admission.publish(
            &session.key.tenant,
            &routes,
            Source::Will,
            message,
            &mut no_ack,
            access.as_deref_mut(),
        ) {
            tracing::info!(client_id = %session.key.client_id, %refused, "will not published");
        }
    }

    /// Runs the timers (session expiry, delayed wills, keep-alive) and the retained-message
    /// purge until shutdown: one task for the whole broker.
    pub async fn run_timers(self: Arc<Self>, purge_every: Duration) {
        tokio::join!(
            self.keep_alives.run(self.shutdown.clone()),
            self.run_session_timers(purge_every)
        );
    }

    /// Session expiry, delayed wills and the retained-message purge.
    async fn run_session_timers(&self, purge_every: Duration) {
        let clock = self.sessions.clock();
        let mut next_purge = clock.instant() + purge_every;
        loop {
            let (effects, next) = self.sessions.fire_due();
            self.apply(effects);
            if clock.instant() >= next_purge {
                self.router.purge_expired_retained(clock.unix_ms());
                next_purge = clock.instant() + purge_every;
            }
            let mut wake = next_purge;
            if let Some(at) = next {
                let until = Duration::from_millis(at.saturating_sub(clock.unix_ms()));
                wake = wake.min(clock.instant() + until);
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = self.sessions.timers_changed() => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }
}
