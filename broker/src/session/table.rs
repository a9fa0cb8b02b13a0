//! The session table: the one owner of the session registry, the timers (session expiry,
//! delayed wills), the attach locks and eviction. Every change to a session's lifecycle is
//! a transition here, and each transition is **one critical section under that session's
//! lock** that first checks where the session is and then changes it, so no two
//! transitions can interleave on one session.
//!
//! # States
//! A session is *attached* (a connection of generation `g` holds it), *offline* (nobody
//! holds it; its expiry timer runs unless the broker is shutting down) or *ended* (out of
//! the registry, its subscriptions out of the router, its store records deleted; it never
//! comes back: a CONNECT for its client id gets a new session).
//!
//! # Transitions and who calls them
//! - [`attach`](SessionTable::attach) — the CONNECT handshake. Serialised per client id;
//!   asks an attached connection to let go (DISCONNECT 0x8E) and waits for it a bounded
//!   time, then resumes the session (its expiry timer and any pending will taken back) or
//!   ends it and registers a new one, evicting an offline session if the broker is full.
//!   A connection that did not let go in time is fenced by the new generation.
//! - [`detach`](SessionTable::detach) — the connection of generation `g`, as it ends. A
//!   no-op unless `g` is the attached generation; decides the will (now, or a timer) and
//!   the session's fate (ended now, or an expiry timer).
//! - [`fire_due`](SessionTable::fire_due) — the timer task. A fired timer acts only if the
//!   session still holds that very timer key: a resume takes the key back, so an expiry
//!   that raced a resume ends nothing.
//! - [`evict_one`] (inside `attach`) — ends the offline session that expires soonest and
//!   holds no message, checked the same way, of the newcomer's tenant or of a tenant
//!   holding more sessions.
//! - [`end_restored`](SessionTable::end_restored) — start-up, for sessions that expired
//!   while the broker was down.
//! - [`subscribe`](SessionTable::subscribe) / [`unsubscribe`](SessionTable::unsubscribe) —
//!   the attached connection. The session's subscriptions are the source of truth; the
//!   router's trie is changed in the same critical section, so the two never disagree and
//!   an ended session leaves nothing in the trie.
//!
//! Publishing a will cannot happen under a session's lock (it enqueues to other sessions),
//! so transitions return it as an [`Effect`] for the caller to apply, in order, after the
//! lock is released.
//!
//! # Locks
//! The session lock is taken first; the registry map, the timer map and the router's trie
//! are leaves taken under it and never held while taking a session lock. The per-client-id
//! attach lock is async and held across the takeover wait, never under a session lock.
//!
//! # Time
//! Every transition takes the time from the table's [`Clock`]: wall-clock milliseconds for
//! expiry (it is stored), tokio's monotonic clock for the takeover wait. Tests drive both
//! with a paused tokio clock.
//!
//! [`evict_one`]: SessionTable::evict_one

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use messs_codec::{ReasonCode, TopicFilter};
use tokio::sync::Notify;

pub(crate) use super::lifecycle::{
    AttachRefused, Attached, Departure, Effect, Effects, TableLimits, Will,
};
use super::timers::{Due, Timers};
use super::{PendingWill, Session, SessionKey, SessionState, StoredSubscription, TenantId};
use super::{SubscribeRefused, SESSION_COST};
use crate::budget::ByteBudget;
use crate::clock::{after_secs, Clock};
use crate::message::Message;
use crate::router::{Router, TenantRoutes};
use crate::security::auth::tenants::Tenants;
use crate::stats::Stats;

/// Longest wait for the old connection to let go of a session on takeover (within the
/// handshake's own deadline). An idle connection lets go within milliseconds; one stuck in
/// a write to a peer that does not read is not waited for longer than this: it is fenced
/// off by the session's generation instead (it takes nothing more from the session and its
/// detach is a no-op).
const TAKEOVER_WAIT: Duration = Duration::from_secs(1);

/// Offline sessions looked at (soonest expiry first) for one eviction.
const EVICTION_CANDIDATES: usize = 64;

/// Evictions one new session may cause (its cost may need several small ones).
const EVICTIONS_PER_SESSION: usize = 8;

type AttachLocks = HashMap<SessionKey, Weak<tokio::sync::Mutex<()>>>;

/// The session registry and its lifecycle (see the module header).
pub(crate) struct SessionTable {
    sessions: Mutex<HashMap<SessionKey, Arc<Session>>>,
    timers: Timers,
    /// One lock per client id being attached, so two CONNECTs with one client id cannot
    /// interleave while CONNECTs for other client ids never wait on them.
    attach_locks: Mutex<AttachLocks>,
    /// The `space` signal every session shares (see `Session`).
    space: Arc<Notify>,
    budget: Arc<ByteBudget>,
    stats: Arc<Stats>,
    tenants: Arc<Tenants>,
    router: Arc<Router>,
    limits: TableLimits,
    clock: Clock,
    /// Session ids and assigned client ids start from the start time in microseconds, so
    /// they are unique across restarts (as long as fewer than a million are made per second
    /// of uptime).
    id_base: u64,
    next_id: AtomicU64,
}

impl SessionTable {
    /// An empty table. Sessions are charged to `budget` and counted in their tenant's
    /// entry of `tenants`; their subscriptions live in `router`.
    pub(crate) fn new(
        limits: TableLimits,
        budget: Arc<ByteBudget>,
        tenants: Arc<Tenants>,
        router: Arc<Router>,
        stats: Arc<Stats>,
        clock: Clock,
    ) -> Self {
        SessionTable {
            sessions: Mutex::new(HashMap::new()),
            timers: Timers::new(stats.clone()),
            attach_locks: Mutex::new(HashMap::new()),
            space: Arc::new(Notify::new()),
            budget,
            stats,
            tenants,
            router,
            limits,
            id_base: clock.unix_ms().saturating_mul(1000),
            next_id: AtomicU64::new(1),
            clock,
        }
    }

    fn map(&self) -> MutexGuard<'_, HashMap<SessionKey, Arc<Session>>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The table's clock.
    pub(crate) fn clock(&self) -> Clock {
        self.clock
    }

    /// A number no other session or assigned client id of this broker has had, across
    /// restarts (see `id_base`).
    pub(crate) fn unique_id(&self) -> u64 {
        self.id_base + self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The session registered under `key`, if any.
    pub(crate) fn get(&self, key: &SessionKey) -> Option<Arc<Session>> {
        self.map().get(key).cloned()
    }

    /// Every session (a snapshot).
    pub(crate) fn all(&self) -> Vec<Arc<Session>> {
        self.map().values().cloned().collect()
    }

    /// Tells every attached connection to close with `code` (shutdown).
    pub(crate) fn kick_all(&self, code: ReasonCode) {
        for session in self.all() {
            session.kick(code);
        }
    }

    /// Resolves when a timer earlier than all others was scheduled (the timer task then
    /// recomputes its wake-up).
    pub(crate) fn timers_changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.timers.changed()
    }

    // --- attach ----------------------------------------------------------------------

    /// Attaches a new connection to the session `key` before `deadline` (see the module
    /// header): a will still waiting for its delay is deleted [MQTT-3.1.2-8]; the old
    /// session is resumed only without `clean_start` and if it is persistent (expiry > 0)
    /// [MQTT-3.1.2-4], [MQTT-3.1.2-5], [MQTT-3.1.2-6]. The effects (wills of sessions
    /// ended to make room or replaced) are returned whatever the outcome.
    pub(crate) async fn attach(
        &self,
        key: SessionKey,
        clean_start: bool,
        expiry: u32,
        deadline: tokio::time::Instant,
    ) -> (Result<Attached, AttachRefused>, Effects) {
        let lock = self.attach_lock(&key);
        let result = match tokio::time::timeout_at(deadline, lock.lock()).await {
            Ok(_serial) => {
                if let Some(old) = self.get(&key) {
                    if old.lock().is_attached() {
                        old.kick(ReasonCode::SessionTakenOver);
                        let wait = deadline.min(self.clock.instant() + TAKEOVER_WAIT);
                        old.wait_detached(wait).await;
                    }
                }
                self.attach_now(key.clone(), clean_start, expiry)
            }
            Err(_) => (Err(AttachRefused::Timeout), Effects::new()),
        };
        self.release_attach_lock(&key, lock);
        result
    }

    /// The attach transition itself, once the client id's attach lock is held and any old
    /// connection was given its chance to let go.
    fn attach_now(
        &self,
        key: SessionKey,
        clean_start: bool,
        expiry: u32,
    ) -> (Result<Attached, AttachRefused>, Effects) {
        // The new connection counts as making progress from now (see `Session`).
        let now_ms = self.clock.mono_ms();
        let mut effects = Effects::new();
        if let Some(old) = self.get(&key) {
            let routes = self.router.tenant(&key.tenant);
            let mut st = old.lock();
            if !st.is_ended() {
                if let Some(will) = st.take_pending_will() {
                    // Back before the will delay passed: the will is deleted.
                    self.timers.cancel(will.timer);
                }
                if let Some(timer) = st.take_expiry_timer() {
                    self.timers.cancel(timer);
                }
                if !clean_start && st.expiry_interval() > 0 {
                    let generation = old.attach_locked(&mut st, expiry, now_ms);
                    drop(st);
                    let attached = Attached {
                        session: old,
                        session_present: true,
                        generation,
                    };
                    return (Ok(attached), effects);
                }
                self.end_locked(&old, &mut st, &routes, &mut effects);
            }
        }
        let session = match self.new_session(key, &mut effects) {
            Ok(session) => session,
            Err(refused) => return (Err(refused), effects),
        };
        let generation = {
            let mut st = session.lock();
            session.attach_locked(&mut st, expiry, now_ms)
        };
        let attached = Attached {
            session,
            session_present: false,
            generation,
        };
        (Ok(attached), effects)
    }

    fn attach_locks(&self) -> MutexGuard<'_, AttachLocks> {
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

    /// Creates and registers a session. At `max_sessions`, or with the byte budget spent,
    /// offline sessions are evicted to make room (see `evict_one`): a connecting client gets
    /// in rather than everyone being refused until sessions expire. With none to evict the
    /// connection is refused.
    fn new_session(
        &self,
        key: SessionKey,
        effects: &mut Effects,
    ) -> Result<Arc<Session>, AttachRefused> {
        let cost = SESSION_COST + key.client_id.len();
        // The tenant's own quota: no eviction of other tenants' sessions makes room for it.
        if let Some(t) = self.tenants.get(&key.tenant) {
            let held = t.sessions.load(Ordering::Relaxed);
            if !crate::security::limits::tenant::below(t.limits().max_sessions, held) {
                self.stats
                    .tenant_quota_refusals
                    .fetch_add(1, Ordering::Relaxed);
                return Err(AttachRefused::Quota);
            }
        }
        let mut evictions = 0;
        loop {
            // A place under `max_sessions` is taken before the session exists, so CONNECTs
            // of many client ids at once cannot overshoot it.
            let max = self.limits.max_sessions;
            let place =
                self.stats
                    .sessions
                    .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                        (n < max).then_some(n + 1)
                    });
            if place.is_ok() {
                if self.budget.try_charge(cost) {
                    break;
                }
                self.stats.sessions.fetch_sub(1, Ordering::Relaxed);
            }
            if evictions == EVICTIONS_PER_SESSION || !self.evict_one(&key.tenant, effects) {
                return Err(AttachRefused::Quota);
            }
            evictions += 1;
        }
        Ok(self.register(key, self.unique_id(), cost))
    }

    /// Builds an empty session with the configured limits (its record's `cost` already
    /// charged, its place in `stats.sessions` taken) and puts it in the registry.
    fn register(&self, key: SessionKey, id: u64, cost: usize) -> Arc<Session> {
        let tenant = self.tenants.get_or_insert(&key.tenant, false);
        let state = SessionState::new(
            self.limits.session,
            self.budget.clone(),
            tenant.rates.holdings.clone(),
            cost,
        );
        let session = Arc::new(Session::new(id, key.clone(), state, self.space.clone()));
        tenant.sessions.fetch_add(1, Ordering::Relaxed);
        self.map().insert(key, session.clone());
        session
    }

    /// Ends an offline session, the one whose expiry is due first among those that hold no
    /// message (queued, in flight or stored): evicting one that does would drop messages
    /// their publishers were told are kept. A candidate counts only if, under its lock, it
    /// still holds the expiry timer it was found by (a resume takes it back). False if
    /// there is none among the `EVICTION_CANDIDATES` due first.
    ///
    /// A newcomer of `tenant` may end a session of its own tenant, or of a tenant holding
    /// more sessions than its own, and takes one of the tenant holding the most first: the
    /// table is shared, but one tenant's churn must not end a smaller tenant's sessions
    /// (the outside audit ended another tenant's persistent session by connecting fresh
    /// client ids at `max_sessions`).
    fn evict_one(&self, tenant: &TenantId, effects: &mut Effects) -> bool {
        let held = |t: &TenantId| {
            self.tenants
                .get(t)
                .map_or(0, |t| t.sessions.load(Ordering::Relaxed))
        };
        let own = held(tenant);
        let mut candidates = self.timers.first_session_expiries(EVICTION_CANDIDATES);
        candidates.retain(|(_, v)| v.key.tenant == *tenant || held(&v.key.tenant) > own);
        // Stable: the soonest expiry first within a tenant.
        candidates.sort_by_cached_key(|(_, v)| std::cmp::Reverse(held(&v.key.tenant)));
        for (timer, victim) in candidates {
            let routes = self.router.tenant(&victim.key.tenant);
            let mut st = victim.lock();
            let offline = st.expiry_timer() == Some(timer) && !st.is_attached();
            if !offline || st.is_ended() || st.holds_messages() {
                continue;
            }
            tracing::debug!(client_id = %victim.key.client_id, "offline session evicted for room");
            self.end_locked(&victim, &mut st, &routes, effects);
            self.stats.sessions_evicted.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        false
    }

    // --- detach ----------------------------------------------------------------------

    /// The connection of `generation` ended (see the module header). `will` is the will
    /// (and its delay) if the connection's will is to be published: `Clean` and `Shutdown`
    /// departures discard it. The session's fate is settled, and the connection marked
    /// gone, in one critical section, so a takeover waiting for it never sees it half done.
    pub(crate) fn detach(
        &self,
        session: &Arc<Session>,
        generation: u64,
        departure: Departure,
        will: Option<Will>,
    ) -> Effects {
        let now_ms = self.clock.unix_ms();
        let routes = self.router.tenant(&session.key.tenant);
        let mut effects = Effects::new();
        let mut st = session.lock();
        if st.generation() != generation || !st.is_attached() {
            return effects; // a newer connection owns the session already
        }
        st.detach(generation, now_ms);
        let publish_will = !matches!(departure, Departure::Clean | Departure::Shutdown);
        let will = will.filter(|_| publish_will);
        let expiry = st.expiry_interval();
        if st.is_ended() {
            // Ended under this connection (a takeover with clean start that did not wait
            // for it): its will goes now, as a session's end sends it [MQTT-3.1.3-9].
            if let Some(w) = will {
                let message = Arc::new(w.message);
                effects.push(Effect::PublishWill(session.clone(), message, w.access));
            }
        } else {
            if let Some(w) = will {
                let message = Arc::new(w.message);
                let delay = w.delay.min(expiry);
                if delay == 0 {
                    effects.push(Effect::PublishWill(session.clone(), message, w.access));
                } else {
                    let due_at = after_secs(now_ms, delay);
                    let timer = self.timers.schedule(due_at, Due::Will(session.clone()));
                    st.set_pending_will(PendingWill {
                        message,
                        access: w.access,
                        timer,
                        due_at,
                    });
                }
            }
            let keep = matches!(departure, Departure::TakenOver | Departure::Shutdown);
            if !keep {
                if expiry == 0 {
                    self.end_locked(session, &mut st, &routes, &mut effects);
                } else {
                    let due_at = after_secs(now_ms, expiry);
                    let timer = self
                        .timers
                        .schedule(due_at, Due::SessionExpiry(session.clone()));
                    st.set_expiry_timer(timer);
                }
            }
        }
        session.mark_disconnected(generation);
        effects
    }

    // --- timers ----------------------------------------------------------------------

    /// Fires every timer due now: ends expired sessions and returns the wills to publish
    /// (delayed wills that are due, and pending wills of the sessions ended), with the next
    /// due time (Unix ms) if any timer is left.
    pub(crate) fn fire_due(&self) -> (Effects, Option<u64>) {
        let (due, next) = self.timers.take_due(self.clock.unix_ms());
        let mut effects = Effects::new();
        for (key, due) in due {
            match due {
                Due::SessionExpiry(session) => {
                    let routes = self.router.tenant(&session.key.tenant);
                    let mut st = session.lock();
                    if st.expiry_timer() == Some(key) && !st.is_attached() {
                        self.end_locked(&session, &mut st, &routes, &mut effects);
                    }
                }
                Due::Will(session) => {
                    let mut st = session.lock();
                    if st.will_timer() == Some(key) {
                        if let Some(will) = st.take_pending_will() {
                            let (message, access) = (will.message, will.access);
                            effects.push(Effect::PublishWill(session.clone(), message, access));
                        }
                    }
                }
            }
        }
        (effects, next)
    }

    // --- end -------------------------------------------------------------------------

    /// Ends a session whose lock the caller holds (`st`): out of the registry, its timers
    /// cancelled, its subscriptions out of `routes` (its tenant's), its store records
    /// deleted, and its pending will, if any, returned in `effects` [MQTT-3.1.3-9].
    fn end_locked(
        &self,
        session: &Arc<Session>,
        st: &mut SessionState,
        routes: &TenantRoutes,
        effects: &mut Effects,
    ) {
        if !st.end() {
            return;
        }
        {
            let mut map = self.map();
            if map.get(&session.key).is_some_and(|s| s.id == session.id) {
                map.remove(&session.key);
                self.stats.sessions.fetch_sub(1, Ordering::Relaxed);
                if let Some(t) = self.tenants.get(&session.key.tenant) {
                    t.sessions.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
        if let Some(timer) = st.take_expiry_timer() {
            self.timers.cancel(timer);
        }
        for sub in st.take_subscriptions() {
            self.router.unsubscribe(routes, session.id, &sub.filter);
        }
        if let Some(will) = st.take_pending_will() {
            self.timers.cancel(will.timer);
            effects.push(Effect::PublishWill(
                session.clone(),
                will.message,
                will.access,
            ));
        }
    }

    // --- subscriptions ---------------------------------------------------------------

    /// Adds or replaces a subscription of `session` (whose tenant's routes are `routes`):
    /// in the session and in the router's trie, in one critical section. `Ok(Some(old))`
    /// if it replaced one with the same filter. A persistent session stores it with
    /// `ticket`.
    pub(crate) fn subscribe(
        &self,
        session: &Arc<Session>,
        routes: &TenantRoutes,
        sub: StoredSubscription,
        ticket: Option<&messs_storage::Ticket>,
    ) -> Result<Option<StoredSubscription>, SubscribeRefused> {
        let mut st = session.lock();
        if st.is_ended() {
            return Err(SubscribeRefused::Ended);
        }
        let replaced = st.add_subscription(sub.clone(), ticket)?;
        self.router.subscribe(routes, session, &sub);
        Ok(replaced)
    }

    /// Removes a subscription from the session and the router's trie in one critical
    /// section; the removed subscription, if the session had it.
    pub(crate) fn unsubscribe(
        &self,
        session: &Arc<Session>,
        routes: &TenantRoutes,
        filter: &TopicFilter,
        ticket: Option<&messs_storage::Ticket>,
    ) -> Option<StoredSubscription> {
        let mut st = session.lock();
        let had = st.remove_subscription(filter.as_str(), ticket);
        self.router.unsubscribe(routes, session.id, filter);
        had
    }

    // --- start-up ----------------------------------------------------------------------

    /// Registers a session restored from the store: it existed before the restart, so it is
    /// charged whatever the limits.
    pub(crate) fn restore(&self, key: SessionKey, id: u64) -> Arc<Session> {
        let cost = SESSION_COST + key.client_id.len();
        self.budget.force_charge(cost);
        self.stats.sessions.fetch_add(1, Ordering::Relaxed);
        self.register(key, id, cost)
    }

    /// Schedules a restored session's expiry (`st` is its locked state).
    pub(crate) fn restore_expiry(&self, session: &Arc<Session>, st: &mut SessionState, at: u64) {
        let timer = self
            .timers
            .schedule(at, Due::SessionExpiry(session.clone()));
        st.set_expiry_timer(timer);
    }

    /// Schedules a restored session's pending will (`st` is its locked state).
    pub(crate) fn restore_will(
        &self,
        session: &Arc<Session>,
        st: &mut SessionState,
        message: Arc<Message>,
        due_at: u64,
    ) {
        let timer = self.timers.schedule(due_at, Due::Will(session.clone()));
        st.set_pending_will(PendingWill {
            message,
            access: None,
            timer,
            due_at,
        });
    }

    /// Ends a restored session that expired while the broker was down (unless a
    /// connection attached to it meanwhile).
    pub(crate) fn end_restored(&self, session: &Arc<Session>) -> Effects {
        let routes = self.router.tenant(&session.key.tenant);
        let mut effects = Effects::new();
        let mut st = session.lock();
        if !st.is_attached() {
            self.end_locked(session, &mut st, &routes, &mut effects);
        }
        effects
    }

    /// Pending timers (session expiries and delayed wills).
    #[cfg(test)]
    pub(crate) fn timer_count(&self) -> usize {
        self.timers.len()
    }
}

#[cfg(test)]
#[path = "table_tests.rs"]
mod tests;
