//! The broker's shared state and the session lifecycle: attaching a connection to a session
//! (with takeover), detaching it (will, expiry), and ending a session.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use messs_codec::ReasonCode;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::message::Message;
use crate::router::Router;
use crate::session::{PendingWill, Session, SessionKey};
use crate::stats::Stats;

/// How long a takeover waits for the old connection to let go of the session.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

/// Everything the connection tasks share.
pub(crate) struct BrokerState {
    pub config: Config,
    pub router: Router,
    pub stats: Arc<Stats>,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
    /// The one tenant until tenancy lands; shared so sessions don't each allocate its name.
    pub default_tenant: crate::session::TenantId,
    sessions: Mutex<HashMap<SessionKey, Arc<Session>>>,
    /// The `space` signal every session shares (see `Session`).
    space: Arc<tokio::sync::Notify>,
    /// Serialises attach/takeover so two CONNECTs with one client id cannot interleave.
    takeover: tokio::sync::Mutex<()>,
    next_session_id: AtomicU64,
}

/// A connection's hold on a session.
pub(crate) struct Attached {
    pub session: Arc<Session>,
    pub session_present: bool,
    /// The generation this attach created; detach is a no-op if another attach followed.
    pub generation: u64,
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
    pub fn new(config: Config) -> Self {
        let stats = Arc::new(Stats::default());
        let router = Router::new(
            config.limits.max_retained_messages,
            config.session.queue_qos0_offline,
            stats.clone(),
        );
        BrokerState {
            config,
            router,
            stats,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            default_tenant: std::sync::Arc::from(crate::handshake::DEFAULT_TENANT),
            sessions: Mutex::new(HashMap::new()),
            space: Arc::new(tokio::sync::Notify::new()),
            takeover: tokio::sync::Mutex::new(()),
            next_session_id: AtomicU64::new(1),
        }
    }

    fn sessions(&self) -> MutexGuard<'_, HashMap<SessionKey, Arc<Session>>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn new_session(&self, key: SessionKey) -> Arc<Session> {
        let id = self.next_session_id.fetch_add(1, Ordering::Relaxed);
        let session = Arc::new(Session::new(
            id,
            key.clone(),
            self.config.limits.max_queued_messages,
            self.space.clone(),
        ));
        self.sessions().insert(key, session.clone());
        self.stats.sessions.fetch_add(1, Ordering::Relaxed);
        session
    }

    /// Attaches a new connection to the session `key`: an existing connection is told to
    /// close (DISCONNECT 0x8E) and awaited; with `clean_start` the old session ends, else it
    /// is resumed [MQTT-3.1.2-4], [MQTT-3.1.2-5].
    pub async fn attach(&self, key: SessionKey, clean_start: bool, expiry: u32) -> Attached {
        let _serial = self.takeover.lock().await;
        let existing = self.sessions().get(&key).cloned();
        if let Some(old) = &existing {
            if old.lock().attached {
                old.kick(ReasonCode::SessionTakenOver);
                old.wait_detached(tokio::time::Instant::now() + TAKEOVER_WAIT)
                    .await;
            }
        }
        let (session, session_present) = match existing {
            Some(old) if !clean_start => (old, true),
            Some(old) => {
                self.end_session(&old);
                (self.new_session(key), false)
            }
            None => (self.new_session(key), false),
        };
        let generation = {
            let mut st = session.lock();
            st.attached = true;
            st.generation += 1;
            st.expiry_interval = expiry;
            if let Some(will) = st.pending_will.take() {
                // The client is back before its will delay passed [MQTT-3.1.3-9].
                will.timer.abort();
            }
            st.generation
        };
        session.set_connected(true);
        if self.shutdown.is_cancelled() {
            // Attached after `kick_all` ran: close at once.
            session.kick(ReasonCode::ServerShuttingDown);
        }
        Attached {
            session,
            session_present,
            generation,
        }
    }

    /// Tells every attached connection to close with `code` (shutdown).
    pub fn kick_all(&self, code: ReasonCode) {
        let sessions: Vec<Arc<Session>> = self.sessions().values().cloned().collect();
        for session in sessions {
            session.kick(code);
        }
    }

    /// Detaches a connection from its session: publishes or schedules the will, and ends the
    /// session now or schedules its expiry.
    pub fn detach(
        self: &Arc<Self>,
        session: &Arc<Session>,
        generation: u64,
        departure: Departure,
        will: Option<(Message, u32)>,
    ) {
        let expiry = {
            let mut st = session.lock();
            if st.generation != generation {
                return; // a newer connection owns the session already
            }
            st.attached = false;
            st.expiry_interval
        };
        let publish_will = !matches!(departure, Departure::Clean | Departure::Shutdown);
        if let (Some((message, delay)), true) = (will, publish_will) {
            let message = Arc::new(message);
            let delay = delay.min(expiry);
            if delay == 0 {
                self.router.publish(&session.key.tenant, message);
            } else {
                self.schedule_will(session, message, delay);
            }
        }
        // Last change to the session by this connection: a takeover waits for it.
        session.set_connected(false);
        session.release_waiters();
        if matches!(departure, Departure::TakenOver | Departure::Shutdown) {
            return; // the taker resumes or ends the session; shutdown keeps it as it is
        }
        if expiry == 0 {
            self.end_session(session);
        } else {
            self.schedule_expiry(session, generation, expiry);
        }
    }

    fn schedule_will(self: &Arc<Self>, session: &Arc<Session>, message: Arc<Message>, delay: u32) {
        let state = self.clone();
        let owner = session.clone();
        let msg = message.clone();
        let handle = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(u64::from(delay))).await;
            let due = owner.lock().pending_will.take();
            if due.is_some() {
                state.router.publish(&owner.key.tenant, msg);
            }
        });
        session.lock().pending_will = Some(PendingWill {
            message,
            timer: handle.abort_handle(),
        });
    }

    fn schedule_expiry(self: &Arc<Self>, session: &Arc<Session>, generation: u64, expiry: u32) {
        let state = self.clone();
        let session = session.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(u64::from(expiry))).await;
            let still_ours = {
                let st = session.lock();
                st.generation == generation && !st.attached
            };
            if still_ours {
                state.end_session(&session);
            }
        });
    }

    /// Ends a session: forgets it, removes its subscriptions, and publishes a will that was
    /// still waiting for its delay (the session ending comes first) [MQTT-3.1.3-9].
    pub fn end_session(&self, session: &Arc<Session>) {
        {
            let mut map = self.sessions();
            if map.get(&session.key).is_some_and(|s| s.id == session.id) {
                map.remove(&session.key);
                self.stats.sessions.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let (subs, will) = {
            let mut st = session.lock();
            let subs: Vec<_> = std::mem::take(&mut st.subscriptions)
                .into_values()
                .collect();
            (subs, st.pending_will.take())
        };
        for sub in subs {
            self.router
                .unsubscribe(&session.key.tenant, session.id, &sub.filter);
        }
        if let Some(will) = will {
            will.timer.abort();
            self.router.publish(&session.key.tenant, will.message);
        }
    }

    /// Drops expired retained messages (called periodically).
    pub fn purge_expired(&self) {
        self.router.purge_expired_retained(Instant::now());
    }
}
