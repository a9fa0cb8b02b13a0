//! The broker's shared state and the session lifecycle: attaching a connection to a session
//! (with takeover), detaching it (will, expiry), ending a session, and the timer task that
//! expires sessions and publishes delayed wills.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use messs_codec::ReasonCode;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::Source;
use crate::budget::ByteBudget;
use crate::clock::{after_secs, unix_ms};
use crate::config::Config;
use crate::message::Message;
use crate::persist::{AckTicket, Persistence};
use crate::router::Router;
use crate::session::{PendingWill, Session, SessionKey, SessionLimits, SessionState, SESSION_COST};
use crate::stats::Stats;
use crate::timers::{Due, Timers};

/// Longest wait for the old connection to let go of a session on takeover (within the
/// handshake's own deadline). An idle connection lets go within milliseconds; one stuck in
/// a write to a peer that does not read is not waited for longer than this: it is fenced
/// off by the session's generation instead (it takes nothing more from the session and its
/// detach is a no-op).
const TAKEOVER_WAIT: Duration = Duration::from_secs(1);

/// Store reads for connections that may run at once (see `spawn_storage_read`).
const STORAGE_READS: usize = 4;

/// Everything the connection tasks share.
pub(crate) struct BrokerState {
    pub config: Config,
    pub router: Router,
    pub stats: Arc<Stats>,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
    /// Authentication, tenants and their ACL rules.
    pub auth: crate::auth::Auth,
    /// TLS listeners, for certificate reloads.
    tls_listeners: Mutex<Vec<Arc<crate::tls::TlsListener>>>,
    pub timers: Timers,
    /// Reads from the store on behalf of connections (page-ins, retained payloads) that may
    /// run at once: each holds up to a page (~1 MiB) while it runs, so many clients cannot
    /// make the broker read their backlogs all at the same time.
    storage_reads: Arc<tokio::sync::Semaphore>,
    /// The durable store, if the broker has one (tests of the in-memory engine and the
    /// fuzzer run without).
    pub persist: Option<Persistence>,
    budget: Arc<ByteBudget>,
    sessions: Mutex<HashMap<SessionKey, Arc<Session>>>,
    /// The `space` signal every session shares (see `Session`).
    space: Arc<tokio::sync::Notify>,
    /// One lock per client id being attached, so two CONNECTs with one client id cannot
    /// interleave while CONNECTs for other client ids never wait on them.
    attach_locks: Mutex<HashMap<SessionKey, Weak<tokio::sync::Mutex<()>>>>,
    /// Session ids and assigned client ids start from the start time in microseconds, so
    /// they are unique across restarts (as long as fewer than a million are made per second
    /// of uptime).
    id_base: u64,
    next_id: AtomicU64,
    /// The operator's bans and flapping detection.
    pub bans: crate::limits::bans::Bans,
    /// `[rate_limits]` as last set (start or reload), for showing them.
    pub rate_limits_listed: Mutex<crate::config::RateLimitsConfig>,
    /// The operator's ban list as given (config, reload or admin plane), for showing it.
    pub bans_listed: Mutex<crate::config::BansConfig>,
    /// Per-address admission at accept.
    pub addresses: Arc<crate::limits::addresses::Addresses>,
    /// Handshakes (TLS and CONNECT) that may be in progress at once.
    pub handshakes: Arc<tokio::sync::Semaphore>,
    /// The packet limits every connection applies.
    throttle: std::sync::RwLock<crate::limits::throttle::ThrottlePolicy>,
    /// `max_handshakes` now (the semaphore's size).
    max_handshakes: std::sync::atomic::AtomicUsize,
    /// Accept loops running (readiness: every configured listener up).
    pub listeners_up: std::sync::atomic::AtomicUsize,
    /// Their version: a connection compares it (one relaxed load) at each charged packet
    /// and reads the policy only when it moved.
    throttle_epoch: AtomicU64,
}

/// A connection's hold on a session.
pub(crate) struct Attached {
    pub session: Arc<Session>,
    pub session_present: bool,
    /// The generation this attach created; detach is a no-op if another attach followed.
    pub generation: u64,
}

/// Why a connection could not get a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AttachRefused {
    /// `max_sessions` or the session byte budget is reached.
    Quota,
    /// The handshake deadline passed while waiting for another CONNECT of this client id.
    Timeout,
}

/// How a connection ended, as far as the session is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Departure {
    /// DISCONNECT 0x00: the will is discarded.
    Clean,
    /// Any abnormal end: the will is published (after its delay).
    Abnormal,
    /// Another connection took the session over (the will is published as for Abnormal; the
    /// new owner decides the session's fate).
    TakenOver,
    /// The broker is shutting down: no will, no timers.
    Shutdown,
}

impl BrokerState {
    pub fn new(config: Config, persist: Option<Persistence>) -> Result<Self, crate::BrokerError> {
        let stats = Arc::new(Stats::default());
        let limits = &config.limits;
        let auth = crate::auth::Auth::new(&config)?;
        let tenants = auth.tenants.clone();
        let router = Router::new(
            limits.max_retained_messages,
            limits.max_retained_bytes,
            config.session.queue_qos0_offline,
            stats.clone(),
            persist
                .as_ref()
                .map(|p| (p.store.clone(), p.retained_inline_bytes)),
            Box::new(move |tenant| tenants.get_or_insert(tenant, false).rates.holdings.clone()),
        );
        let budget = Arc::new(ByteBudget::new(
            stats.clone(),
            limits.max_session_bytes_total,
        ));
        Ok(BrokerState {
            auth,
            tls_listeners: Mutex::default(),
            router,
            timers: Timers::new(stats.clone()),
            storage_reads: Arc::new(tokio::sync::Semaphore::new(STORAGE_READS)),
            persist,
            budget,
            stats,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            sessions: Mutex::new(HashMap::new()),
            space: Arc::new(tokio::sync::Notify::new()),
            attach_locks: Mutex::new(HashMap::new()),
            id_base: unix_ms().saturating_mul(1000),
            next_id: AtomicU64::new(1),
            addresses: crate::limits::addresses::Addresses::new(config.rate_limits.addresses()),
            bans: crate::limits::bans::Bans::new(config.bans.compile()?, config.flapping),
            bans_listed: Mutex::new(config.bans.clone()),
            rate_limits_listed: Mutex::new(config.rate_limits.clone()),
            handshakes: Arc::new(tokio::sync::Semaphore::new(
                config.rate_limits.max_handshakes,
            )),
            throttle: std::sync::RwLock::new(config.rate_limits.throttle()),
            throttle_epoch: AtomicU64::new(0),
            max_handshakes: std::sync::atomic::AtomicUsize::new(config.rate_limits.max_handshakes),
            listeners_up: std::sync::atomic::AtomicUsize::new(0),
            config,
        })
    }

    /// The version of the packet limits (see `throttle_epoch`).
    pub fn throttle_epoch(&self) -> u64 {
        self.throttle_epoch.load(Ordering::Acquire)
    }

    /// The packet limits now.
    pub fn throttle_policy(&self) -> crate::limits::throttle::ThrottlePolicy {
        *self.throttle.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies changed rate limits to new and live connections alike.
    /// `[rate_limits]` in force.
    pub fn rate_limits_now(&self) -> crate::config::RateLimitsConfig {
        self.rate_limits_listed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn set_rate_limits(&self, limits: &crate::config::RateLimitsConfig) {
        *self
            .rate_limits_listed
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = limits.clone();
        self.addresses.set_policy(limits.addresses());
        let old = self
            .max_handshakes
            .swap(limits.max_handshakes, Ordering::AcqRel);
        if limits.max_handshakes > old {
            self.handshakes.add_permits(limits.max_handshakes - old);
        } else {
            // Free places go at once; places in use are not given back when they end.
            let mut owed = old - limits.max_handshakes;
            owed -= self.handshakes.forget_permits(owed);
            if owed > 0 {
                let handshakes = self.handshakes.clone();
                tokio::spawn(async move {
                    if let Ok(p) = handshakes.acquire_many_owned(owed as u32).await {
                        p.forget();
                    }
                });
            }
        }
        let mut t = self
            .throttle
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if *t != limits.throttle() {
            *t = limits.throttle();
            self.throttle_epoch.fetch_add(1, Ordering::Release);
        }
    }

    fn sessions(&self) -> MutexGuard<'_, HashMap<SessionKey, Arc<Session>>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A number no other session or assigned client id of this broker has had, across
    /// restarts (see `id_base`).
    pub fn unique_id(&self) -> u64 {
        self.id_base + self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The shared name of a tenant (the registry's `Arc` when it knows the tenant).
    pub fn tenant_id(&self, name: &str) -> crate::session::TenantId {
        match self.auth.tenants.get(name) {
            Some(t) => t.id.clone(),
            None => Arc::from(name),
        }
    }

    pub(crate) fn add_tls_listener(&self, l: Arc<crate::tls::TlsListener>) {
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
            for s in self.all_sessions() {
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
        let limits = crate::auth::device_limits(limits);
        let mut given = false;
        for s in self.all_sessions() {
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
            self.throttle_epoch.fetch_add(1, Ordering::Release);
        }
    }

    /// Appends a security event to the audit log (when the broker has a store).
    pub fn audit(&self, action: &str, detail: String) {
        if let Some(p) = &self.persist {
            if p.audit(action, detail) {
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
            crate::auth::clip(&key.client_id),
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
        self.audit_login_event(crate::auth::RefusalEvent::Failure, detail);
    }

    /// Records a lockout (`auth.lockout`), within the same budget: one attacker with many
    /// sources can start many.
    pub fn audit_lockout(&self, detail: String) {
        self.audit_login_event(crate::auth::RefusalEvent::Lockout, detail);
    }

    fn audit_login_event(&self, event: crate::auth::RefusalEvent, detail: String) {
        let now = (std::time::Instant::now(), crate::clock::unix_ms());
        let a = self.auth.refused(event, now.0, now.1);
        if let Some(summary) = a.summary {
            self.audit("auth.audit.suppressed", summary);
        }
        if a.record {
            let action = match event {
                crate::auth::RefusalEvent::Failure => "auth.failure",
                crate::auth::RefusalEvent::Lockout => "auth.lockout",
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
        self.persist.as_ref().is_some_and(Persistence::waits)
    }

    /// Registers a session restored from the store (start-up): it existed before the
    /// restart, so it is charged whatever the limits.
    pub(crate) fn restored_session(&self, key: SessionKey, id: u64) -> Arc<Session> {
        let cost = SESSION_COST + key.client_id.len();
        self.budget.force_charge(cost);
        self.register_session(key, id, cost)
    }

    /// Builds an empty session with the configured limits (its record's `cost` already
    /// charged) and puts it in the registry.
    fn register_session(&self, key: SessionKey, id: u64, cost: usize) -> Arc<Session> {
        let limits = &self.config.limits;
        let session_limits = SessionLimits {
            max_queued: limits.max_queued_messages,
            max_queued_bytes: limits.max_queued_bytes,
            max_subscriptions: limits.max_subscriptions_per_session,
            queue_full: limits.queue_full,
        };
        let tenant = self.auth.tenants.get_or_insert(&key.tenant, false);
        let state = SessionState::new(
            session_limits,
            self.budget.clone(),
            tenant.rates.holdings.clone(),
            cost,
        );
        let session = Arc::new(Session::new(id, key.clone(), state, self.space.clone()));
        tenant.sessions.fetch_add(1, Ordering::Relaxed);
        self.sessions().insert(key, session.clone());
        self.stats.sessions.fetch_add(1, Ordering::Relaxed);
        session
    }

    /// The session registered under `key`, if any.
    pub fn session(&self, key: &SessionKey) -> Option<Arc<Session>> {
        self.sessions().get(key).cloned()
    }

    /// Every session (a snapshot).
    pub fn all_sessions(&self) -> Vec<Arc<Session>> {
        self.sessions().values().cloned().collect()
    }

    /// Creates and registers a session. At `max_sessions`, or with the byte budget spent,
    /// the offline session that would expire soonest is ended to make room (counted in
    /// `sessions_evicted`): a connecting client gets in rather than everyone being refused
    /// until sessions expire. Connected sessions are never evicted; with none offline the
    /// connection is refused.
    fn new_session(&self, key: SessionKey) -> Result<Arc<Session>, AttachRefused> {
        const EVICTIONS_PER_SESSION: usize = 8;
        let limits = &self.config.limits;
        let cost = SESSION_COST + key.client_id.len();
        // The tenant's own quota: no eviction of other tenants' sessions makes room for it.
        if let Some(t) = self.auth.tenants.get(&key.tenant) {
            let held = t.sessions.load(Ordering::Relaxed);
            if !crate::limits::tenant::below(t.limits().max_sessions, held) {
                self.stats
                    .tenant_quota_refusals
                    .fetch_add(1, Ordering::Relaxed);
                return Err(AttachRefused::Quota);
            }
        }
        let mut evictions = 0;
        loop {
            let below_max = self.stats.sessions.load(Ordering::Relaxed) < limits.max_sessions;
            if below_max && self.budget.try_charge(cost) {
                break;
            }
            if evictions == EVICTIONS_PER_SESSION || !self.evict_offline_session() {
                return Err(AttachRefused::Quota);
            }
            evictions += 1;
        }
        Ok(self.register_session(key, self.unique_id(), cost))
    }

    fn attach_locks(&self) -> MutexGuard<'_, HashMap<SessionKey, Weak<tokio::sync::Mutex<()>>>> {
        self.attach_locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The attach lock of one client id (created on first use, dropped with its last user).
    fn attach_lock(&self, key: &SessionKey) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.attach_locks();
        if let Some(lock) = locks.get(key).and_then(Weak::upgrade) {
            return lock;
        }
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        locks.insert(key.clone(), Arc::downgrade(&lock));
        lock
    }

    fn release_attach_lock(&self, key: &SessionKey, lock: Arc<tokio::sync::Mutex<()>>) {
        drop(lock);
        let mut locks = self.attach_locks();
        if locks.get(key).is_some_and(|w| w.strong_count() == 0) {
            locks.remove(key);
        }
    }

    /// Ends the offline session whose expiry is due first among those that hold no
    /// message (queued, in flight or stored): evicting one that does would drop messages
    /// their publishers were told are kept. False if there is none among the
    /// `EVICTION_CANDIDATES` due first: the new session is refused instead (0x97).
    fn evict_offline_session(&self) -> bool {
        const EVICTION_CANDIDATES: usize = 64;
        for (timer, victim) in self.timers.first_session_expiries(EVICTION_CANDIDATES) {
            let mut st = victim.lock();
            if st.holds_messages() {
                continue;
            }
            // Under the session's lock (nothing is queued for it meanwhile); a timer
            // already gone means the session was resumed or ended meanwhile.
            if !self.timers.cancel(timer) {
                continue;
            }
            st.take_expiry_timer();
            drop(st);
            tracing::debug!(client_id = %victim.key.client_id, "offline session evicted for room");
            self.end_session(&victim);
            self.stats.sessions_evicted.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// Attaches a new connection to the session `key` before `deadline`: an existing
    /// connection is told to close (DISCONNECT 0x8E) and awaited; a will still waiting for
    /// its delay is deleted [MQTT-3.1.2-8]; the old session is resumed only without
    /// `clean_start` and if it is persistent (expiry > 0) [MQTT-3.1.2-4], [MQTT-3.1.2-5],
    /// [MQTT-3.1.2-6].
    pub async fn attach(
        &self,
        key: SessionKey,
        clean_start: bool,
        expiry: u32,
        deadline: tokio::time::Instant,
    ) -> Result<Attached, AttachRefused> {
        let lock = self.attach_lock(&key);
        let result = match tokio::time::timeout_at(deadline, lock.lock()).await {
            Ok(_serial) => {
                self.attach_serialised(key.clone(), clean_start, expiry, deadline)
                    .await
            }
            Err(_) => Err(AttachRefused::Timeout),
        };
        self.release_attach_lock(&key, lock);
        result
    }

    async fn attach_serialised(
        &self,
        key: SessionKey,
        clean_start: bool,
        expiry: u32,
        deadline: tokio::time::Instant,
    ) -> Result<Attached, AttachRefused> {
        if let Some(old) = self.session(&key) {
            if old.lock().is_attached() {
                old.kick(ReasonCode::SessionTakenOver);
                let wait = deadline.min(tokio::time::Instant::now() + TAKEOVER_WAIT);
                old.wait_detached(wait).await;
            }
        }
        // Looked up again: the old connection's detach may have ended the session.
        let existing = self.session(&key);
        let (session, session_present) = match existing {
            Some(old) => {
                let resumable = {
                    let mut st = old.lock();
                    if let Some(will) = st.take_pending_will() {
                        // Back before the will delay passed: the will is deleted.
                        self.timers.cancel(will.timer);
                    }
                    if let Some(timer) = st.take_expiry_timer() {
                        self.timers.cancel(timer);
                    }
                    // Ended meanwhile (evicted for room): a new session, not a resumed one.
                    !clean_start && st.expiry_interval() > 0 && !st.is_ended()
                };
                if resumable {
                    (old, true)
                } else {
                    self.end_session(&old);
                    (self.new_session(key)?, false)
                }
            }
            None => (self.new_session(key)?, false),
        };
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
        let generation = session.attach(expiry);
        if self.shutdown.is_cancelled() {
            // Attached after `kick_all` ran: close at once.
            session.kick(ReasonCode::ServerShuttingDown);
        }
        Ok(Attached {
            session,
            session_present,
            generation,
        })
    }

    /// Tells every attached connection to close with `code` (shutdown).
    pub fn kick_all(&self, code: ReasonCode) {
        for session in self.all_sessions() {
            session.kick(code);
        }
    }

    /// Detaches a connection from its session: publishes or schedules the will, and ends the
    /// session now or schedules its expiry. The session's fate is settled before waiters
    /// (a takeover) are released, so a reconnect never resumes a session that is ending.
    pub fn detach(
        &self,
        session: &Arc<Session>,
        generation: u64,
        departure: Departure,
        will: Option<(Message, u32)>,
    ) {
        let expiry = {
            let mut st = session.lock();
            if !st.detach(generation, unix_ms()) {
                return; // a newer connection owns the session already
            }
            st.expiry_interval()
        };
        let publish_will = !matches!(departure, Departure::Clean | Departure::Shutdown);
        if let (Some((message, delay)), true) = (will, publish_will) {
            let message = Arc::new(message);
            let delay = delay.min(expiry);
            if delay == 0 {
                self.publish_will(session, message);
            } else {
                let due_at = after_secs(unix_ms(), delay);
                let timer = self.timers.schedule(due_at, Due::Will(session.clone()));
                session.lock().set_pending_will(PendingWill {
                    message,
                    timer,
                    due_at,
                });
            }
        }
        let keep = matches!(departure, Departure::TakenOver | Departure::Shutdown);
        if !keep {
            if expiry == 0 {
                self.end_session(session);
            } else {
                let due = Due::SessionExpiry(session.clone(), generation);
                let timer = self.timers.schedule(after_secs(unix_ms(), expiry), due);
                session.lock().set_expiry_timer(timer);
            }
        }
        // Last change to the session by this connection: a takeover waits for it.
        session.set_disconnected(generation);
    }

    fn publish_will(&self, session: &Session, message: Arc<Message>) {
        let routes = self.router.tenant(&session.key.tenant);
        // Nobody waits for a will's acknowledgement; its writes are submitted all the same.
        let mut no_ack = AckTicket::new(false);
        if let Err(refused) = self.publish(
            &session.key.tenant,
            &routes,
            Source::Will,
            message,
            &mut no_ack,
            None,
        ) {
            tracing::info!(client_id = %session.key.client_id, %refused, "will not published");
        }
    }

    /// Ends a session: forgets it, removes its subscriptions, and publishes a will that was
    /// still waiting for its delay (the session ending comes first) [MQTT-3.1.3-9].
    pub fn end_session(&self, session: &Arc<Session>) {
        {
            let mut map = self.sessions();
            if map.get(&session.key).is_some_and(|s| s.id == session.id) {
                map.remove(&session.key);
                self.stats.sessions.fetch_sub(1, Ordering::Relaxed);
                if let Some(t) = self.auth.tenants.get(&session.key.tenant) {
                    t.sessions.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
        let (subs, will) = {
            let mut st = session.lock();
            if !st.end() {
                return;
            }
            if let Some(timer) = st.take_expiry_timer() {
                self.timers.cancel(timer);
            }
            (st.take_subscriptions(), st.take_pending_will())
        };
        for sub in subs {
            self.router
                .unsubscribe(&session.key.tenant, session.id, &sub.filter);
        }
        if let Some(will) = will {
            self.timers.cancel(will.timer);
            self.publish_will(session, will.message);
        }
    }

    /// Runs the timers (session expiry, delayed wills) and the retained-message purge until
    /// shutdown: one task for the whole broker.
    pub async fn run_timers(self: Arc<Self>, purge_every: Duration) {
        let mut next_purge = tokio::time::Instant::now() + purge_every;
        loop {
            let now = unix_ms();
            let (due, next) = self.timers.take_due(now);
            for d in due {
                self.fire(d);
            }
            if tokio::time::Instant::now() >= next_purge {
                self.router.purge_expired_retained(now);
                next_purge = tokio::time::Instant::now() + purge_every;
            }
            let mut wake = next_purge;
            if let Some(at) = next {
                let until = Duration::from_millis(at.saturating_sub(unix_ms()));
                wake = wake.min(tokio::time::Instant::now() + until);
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = self.timers.changed() => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    fn fire(&self, due: Due) {
        match due {
            Due::SessionExpiry(session, generation) => {
                let still_ours = {
                    let st = session.lock();
                    st.generation() == generation && !st.is_attached()
                };
                if still_ours {
                    session.lock().take_expiry_timer();
                    self.end_session(&session);
                }
            }
            Due::Will(session) => {
                let will = session.lock().take_pending_will();
                if let Some(will) = will {
                    self.publish_will(&session, will.message);
                }
            }
        }
    }
}
