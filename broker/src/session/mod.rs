//! Sessions (spec §4.1). A session outlives its connections. Its state (in `state`) has one
//! owner at a time — the connection attached to it, or nobody while it is offline — and sits
//! behind a mutex that is only held for short, non-async sections. Publishers push
//! deliveries into its bounded queue and wake the attached connection through `notify`.
//!
//! Flow control: past half of its limits, a connected session's queue reports pressure, and
//! the publisher that caused it stops reading from its socket until the queue drains below
//! half again (`space` wakes it). Progress, not a fixed wait, decides when a subscriber is
//! *stalled*: one that has taken nothing from its queue for `stall_timeout_ms` no longer
//! holds publishers back (its queue fills and then drops, counted) until it drains below
//! half again, while one that keeps draining — however slowly — keeps its publishers
//! paused, so they slow to its pace instead of losing messages. Each pause is also capped
//! (`backpressure_wait_ms`), and the publisher side caps the share of time spent paused.

mod durable;
mod lifecycle;
mod state;
pub(crate) mod table;
pub(crate) mod timers;
mod wake;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use messs_codec::{QoS, ReasonCode};
use tokio::sync::Notify;

use crate::clock::mono_ms;
use crate::config::QueueFullPolicy;
use crate::message::Delivery;
use crate::persist::shared::SharedHold;

pub(crate) use durable::{read_page, DiskLimits, SessionDisk};
pub(crate) use state::{
    AckMatch, EnqueueError, Link, PendingWill, Resend, SessionLimits, SessionState,
    StoredSubscription, SubscribeRefused, SESSION_COST,
};
pub(crate) use table::{AttachRefused, Departure, Effect, SessionTable};
pub(crate) use wake::Wake;

/// A delivery queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Enqueued {
    /// The publisher should pause for this subscriber.
    pub pressure: bool,
    /// Older deliveries dropped to make room (`queue_full = "drop_oldest"`).
    pub dropped_oldest: u32,
}

/// How recent a subscriber's last take from its queue must be for it to count as draining
/// when a publisher decides whether to pause for it.
pub(crate) const DRAINING_MS: u64 = 25;
/// How recent it must be for the session to keep the byte budget tier of a client that
/// reads (see `budget`).
const DRAINING_BUDGET_MS: u64 = 250;

/// A tenant's name; every router, store and registry key starts with it.
pub type TenantId = Arc<str>;

/// The registry key of a session.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionKey {
    /// Tenant the client belongs to.
    pub tenant: TenantId,
    /// Client identifier.
    pub client_id: Arc<str>,
}

/// One client session.
pub struct Session {
    /// Unique across restarts (see `BrokerState::new_session`); identifies the publisher
    /// for No Local.
    pub id: u64,
    /// Registry key.
    pub key: SessionKey,
    state: Mutex<SessionState>,
    /// Wakes the attached connection (deliveries queued, a kick, its keep-alive timer).
    wake: wake::WakeSlot,
    /// Woken when a queue under pressure drains below its soft limit or a connection
    /// detaches. Shared by all sessions of a broker (waiters recheck their own session), so an
    /// idle session does not carry one.
    space: Arc<Notify>,
    /// Pressure was reported since the last drain below the soft limit: only then does a
    /// drain wake the shared `space`.
    pressured: AtomicBool,
    connected: AtomicBool,
    /// No progress for the stall timeout while a publisher waited: don't make others wait
    /// until it drains below its soft limit.
    stalled: AtomicBool,
    /// When the connection last took something from the queue, on the monotonic clock
    /// (`clock::mono_ms`: tokio's, which paused-time tests drive). Stall detection compares
    /// against it, so a wall-clock step never stalls or frees a subscriber.
    progress_ms: AtomicU64,
    /// The generation told to close (0: none), and why (shutdown or an admin kick; a
    /// takeover is seen from the generation itself).
    kicked_generation: AtomicU64,
    kick_code: AtomicU8,
    /// The generation of the attached connection, mirrored out of the lock so every pass
    /// of a connection's loop can check it cheaply.
    live_generation: AtomicU64,
    /// The session is mirrored to the store (mirrored out of the lock so a publish asks
    /// for a storage ticket only for sessions that need one).
    durable: AtomicBool,
    /// Retained messages with on-disk payloads are being read for this session.
    fetching: AtomicBool,
}

impl Session {
    /// A new, empty session; `state` carries its limits and budget charge.
    pub(crate) fn new(id: u64, key: SessionKey, state: SessionState, space: Arc<Notify>) -> Self {
        Session {
            id,
            key,
            state: Mutex::new(state),
            wake: wake::WakeSlot::default(),
            space,
            pressured: AtomicBool::new(false),
            connected: AtomicBool::new(false),
            stalled: AtomicBool::new(false),
            progress_ms: AtomicU64::new(0),
            kicked_generation: AtomicU64::new(0),
            kick_code: AtomicU8::new(0),
            live_generation: AtomicU64::new(0),
            durable: AtomicBool::new(false),
            fetching: AtomicBool::new(false),
        }
    }

    /// Whether retained payloads are being read from disk for this session.
    pub(crate) fn is_fetching(&self) -> bool {
        self.fetching.load(Ordering::Acquire)
    }

    /// Marks a retained fetch started or done.
    pub(crate) fn set_fetching(&self, on: bool) {
        self.fetching.store(on, Ordering::Release);
    }

    /// Whether the session is mirrored to the store.
    pub(crate) fn is_durable(&self) -> bool {
        self.durable.load(Ordering::Acquire)
    }

    /// Marks the session mirrored to the store (after `SessionState::make_durable`).
    pub(crate) fn set_durable(&self) {
        self.durable.store(true, Ordering::Release);
    }

    /// Locks the state. A panic while holding the lock cannot leave the plain-data state
    /// half-updated in a way that matters more than losing the client, so poison is ignored.
    pub(crate) fn lock(&self) -> MutexGuard<'_, SessionState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a connection is attached.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Attaches a connection to an unattached session outside any table: for the benches
    /// and unit tests, which drive sessions without a broker. The broker attaches through
    /// `SessionTable::attach`.
    pub(crate) fn attach(&self, expiry_interval: u32) -> u64 {
        let mut st = self.lock();
        self.attach_locked(&mut st, expiry_interval, mono_ms())
    }

    /// Attaches a connection, with the session's lock held by the caller (`st` is this
    /// session's state): returns its generation. The connection counts as making progress
    /// from `now_ms` (a new subscriber gets one stall timeout before it can be stalled).
    pub(crate) fn attach_locked(
        &self,
        st: &mut SessionState,
        expiry_interval: u32,
        now_mono_ms: u64,
    ) -> u64 {
        let generation = st.attach(expiry_interval);
        self.live_generation.store(generation, Ordering::Release);
        self.progress_ms.store(now_mono_ms, Ordering::Relaxed);
        self.stalled.store(false, Ordering::Relaxed);
        self.connected.store(true, Ordering::Release);
        generation
    }

    /// The connection of `generation` is gone: wakes paused publishers and a waiting
    /// takeover. Called by `SessionTable::detach` under the session's lock, once the
    /// session's fate is decided.
    pub(crate) fn mark_disconnected(&self, generation: u64) {
        if self.live_generation.load(Ordering::Acquire) == generation {
            self.connected.store(false, Ordering::Release);
        }
        self.space.notify_waiters();
    }

    /// Wakes the attached connection (a page-in finished).
    pub(crate) fn wake(&self) {
        self.wake.wake();
    }

    /// Ready when the connection of `generation` was woken since it last looked: deliveries
    /// were queued, it was kicked or taken over, or its keep-alive timer fired.
    pub(crate) fn poll_woken(
        &self,
        cx: &mut std::task::Context<'_>,
        generation: u64,
    ) -> std::task::Poll<Wake> {
        self.wake.poll_woken(cx, generation)
    }

    /// Ready when the keep-alive timer of the connection of `generation` fired; other
    /// wake-ups stay for [`Session::poll_woken`].
    pub(crate) fn poll_keep_alive_due(
        &self,
        cx: &mut std::task::Context<'_>,
        generation: u64,
    ) -> std::task::Poll<()> {
        self.wake.poll_keep_alive_due(cx, generation)
    }

    /// The keep-alive timer of the connection of `generation` fired.
    pub(crate) fn keep_alive_due(&self, generation: u64) {
        self.wake.keep_alive_due(generation);
    }

    /// [`Session::poll_woken`] as a future.
    #[cfg(test)]
    pub(crate) async fn woken(&self, generation: u64) -> Wake {
        std::future::poll_fn(|cx| self.poll_woken(cx, generation)).await
    }

    /// Tells the attached connection, if any, to close with `code` (it sends DISCONNECT
    /// with that reason to a v5 client). The connection notices through the queue's wake-up:
    /// one signal per idle connection instead of a channel of its own.
    pub(crate) fn kick(&self, code: ReasonCode) {
        let generation = {
            let st = self.lock();
            if !st.is_attached() {
                return;
            }
            st.generation()
        };
        self.kick_code.store(code.as_u8(), Ordering::Release);
        self.kicked_generation.store(generation, Ordering::Release);
        self.wake.wake();
    }

    /// Why the connection of `generation` must close, if it must: another connection took
    /// the session (a newer generation is live), or it was kicked.
    pub(crate) fn kicked(&self, generation: u64) -> Option<ReasonCode> {
        if self.live_generation.load(Ordering::Acquire) != generation {
            return Some(ReasonCode::SessionTakenOver);
        }
        if self.kicked_generation.load(Ordering::Acquire) != generation {
            return None;
        }
        ReasonCode::from_u8(self.kick_code.load(Ordering::Acquire))
    }

    /// Queues a delivery, subject to the session's limits, and wakes the connection.
    /// `pressure` means the queue is past its soft limit and the subscriber is not stalled:
    /// the publisher should pause (see [`Session::wait_for_space`]). A full queue follows
    /// the session's `queue_full` policy: the new delivery is refused (`Full`), the oldest
    /// queued ones make room (`dropped_oldest`), or the connection is closed (0x97) and the
    /// delivery refused.
    /// A persistent session stores the delivery with `ticket` (the publisher's
    /// acknowledgement waits on it).
    /// `shared` is a hold on the message stored once for several sessions (see
    /// `persist::shared`): kept with this session's reference to it, or given back.
    pub(crate) fn enqueue(
        &self,
        delivery: Delivery,
        queue_qos0_offline: bool,
        ticket: Option<&messs_storage::Ticket>,
        shared: Option<&SharedHold>,
    ) -> Result<Enqueued, EnqueueError> {
        let connected = self.is_connected();
        if delivery.qos == QoS::AtMostOnce && !queue_qos0_offline && !connected {
            if let Some(hold) = shared {
                hold.give_back(ticket);
            }
            return Err(EnqueueError::Offline);
        }
        let (pressure, was_empty, dropped_oldest) = {
            let mut st = self.lock();
            let was_empty = st.queued_len() == 0;
            let drained = || self.drained_within(DRAINING_BUDGET_MS);
            let pushed = st.push(delivery, drained, ticket, shared);
            let dropped = match pushed {
                Ok(dropped) => dropped,
                Err(EnqueueError::Full)
                    if st.queue_full_policy() == QueueFullPolicy::Disconnect =>
                {
                    drop(st);
                    self.kick(ReasonCode::QuotaExceeded);
                    return Err(EnqueueError::Full);
                }
                Err(e) => return Err(e),
            };
            (st.over_soft_limit(), was_empty, dropped)
        };
        // The connection drains until the queue is empty or its window is full (and an ack
        // reopening the window makes it drain again), so only the first message after empty
        // needs a wake-up: one cross-thread wake per batch, not per message.
        if was_empty {
            self.wake.wake();
        }
        let pressure = pressure && connected && !self.stalled.load(Ordering::Relaxed);
        if pressure {
            self.pressured.store(true, Ordering::Release);
        }
        Ok(Enqueued {
            pressure,
            dropped_oldest,
        })
    }

    /// Waits until the queue is below its soft limit, the session goes offline, `deadline`
    /// passes, or the connection makes no progress for `stall` (then the session is marked
    /// stalled and `true` returned). Cancel-safe.
    pub(crate) async fn wait_for_space(
        &self,
        deadline: tokio::time::Instant,
        stall: Duration,
    ) -> bool {
        let stall_ms = u64::try_from(stall.as_millis()).unwrap_or(u64::MAX);
        loop {
            let space = self.space.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            if !self.lock().over_soft_limit() || !self.is_connected() {
                return false;
            }
            let idle = mono_ms().saturating_sub(self.progress_ms.load(Ordering::Relaxed));
            if idle >= stall_ms {
                self.stalled.store(true, Ordering::Relaxed);
                return true;
            }
            let recheck = tokio::time::Instant::now() + Duration::from_millis(stall_ms - idle);
            let wake = recheck.min(deadline);
            if tokio::time::timeout_at(wake, space).await.is_err()
                && tokio::time::Instant::now() >= deadline
            {
                return false;
            }
        }
    }

    /// Whether the connection took from the queue within the last `ms` milliseconds.
    pub(crate) fn drained_within(&self, ms: u64) -> bool {
        self.drained_within_at(ms, mono_ms())
    }

    /// `drained_within` at `now_mono_ms` (`clock::mono_ms`), for callers given the time.
    pub(crate) fn drained_within_at(&self, ms: u64, now_mono_ms: u64) -> bool {
        now_mono_ms.saturating_sub(self.progress_ms.load(Ordering::Relaxed)) <= ms
    }

    /// Called by the connection after taking from the queue at `now_mono_ms`
    /// (`clock::mono_ms`, read only when it took something):
    /// records progress (if it took something) and wakes paused publishers once the queue
    /// is below its soft limit.
    pub(crate) fn after_drain(&self, took: bool, now_mono_ms: u64, below_soft_limit: bool) {
        if took {
            self.progress_ms.store(now_mono_ms, Ordering::Relaxed);
        }
        if below_soft_limit {
            self.stalled.store(false, Ordering::Relaxed);
            if self.pressured.swap(false, Ordering::AcqRel) {
                self.space.notify_waiters();
            }
        }
    }

    /// Waits (until `deadline`) for the attached connection to finish detaching: a takeover
    /// must not touch the session while the old connection still does. Cancel-safe.
    pub(crate) async fn wait_detached(&self, deadline: tokio::time::Instant) {
        loop {
            let signal = self.space.notified();
            tokio::pin!(signal);
            signal.as_mut().enable();
            if !self.is_connected() {
                return;
            }
            if tokio::time::timeout_at(deadline, signal).await.is_err() {
                return;
            }
        }
    }

    /// Whether publishers currently treat this session as stalled.
    #[cfg(test)]
    pub(crate) fn is_stalled(&self) -> bool {
        self.stalled.load(Ordering::Relaxed)
    }
}

/// A session with no byte limits and no budget, `max_queued` messages, client id `c{id}`,
/// not attached: for the criterion benches and unit tests, which drive sessions without a
/// broker around them.
pub(crate) fn unbounded_session(id: u64, max_queued: usize) -> Session {
    use crate::budget::ByteBudget;
    let key = SessionKey {
        tenant: Arc::from("t"),
        client_id: Arc::from(format!("c{id}")),
    };
    let limits = SessionLimits {
        max_queued,
        max_queued_bytes: usize::MAX,
        max_subscriptions: usize::MAX,
        max_subscription_bytes: usize::MAX,
        queue_full: Default::default(),
    };
    let budget = Arc::new(ByteBudget::new(Default::default(), usize::MAX));
    Session::new(
        id,
        key,
        SessionState::new(limits, budget, Arc::default(), 0),
        Default::default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::ByteBudget;
    use crate::message::{Message, MessageProperties};
    use crate::stats::Stats;
    use messs_codec::{QosPid, TopicName};

    fn delivery_of(qos: QoS, payload: &[u8]) -> Delivery {
        Delivery {
            message: Arc::new(Message {
                topic: TopicName::new("t").unwrap(),
                payload: bytes::Bytes::copy_from_slice(payload),
                qos,
                retain: false,
                properties: MessageProperties::default(),
                expires_at: None,
                origin: 0,
            }),
            qos,
            retain: false,
            subscription_ids: Vec::new(),
            stored_seq: 0,
        }
    }

    fn delivery(qos: QoS) -> Delivery {
        delivery_of(qos, b"x")
    }

    fn session_with(max: usize, max_bytes: usize, budget: usize) -> (Session, Arc<Stats>) {
        session_of_tenant(max, max_bytes, budget, Arc::default())
    }

    fn session_of_tenant(
        max: usize,
        max_bytes: usize,
        budget: usize,
        tenant: Arc<crate::security::limits::tenant::TenantHoldings>,
    ) -> (Session, Arc<Stats>) {
        let key = SessionKey {
            tenant: Arc::from("t"),
            client_id: Arc::from("c"),
        };
        let stats = Arc::new(Stats::default());
        let budget = Arc::new(ByteBudget::new(stats.clone(), budget));
        let limits = SessionLimits {
            max_queued: max,
            max_queued_bytes: max_bytes,
            max_subscriptions: 2,
            max_subscription_bytes: usize::MAX,
            queue_full: Default::default(),
        };
        let s = Session::new(
            1,
            key,
            SessionState::new(limits, budget, tenant, 0),
            Arc::new(Notify::new()),
        );
        s.attach(0);
        (s, stats)
    }

    fn session(max: usize) -> Session {
        session_with(max, usize::MAX, usize::MAX).0
    }

    #[test]
    fn queue_is_bounded_and_reports_pressure_past_half() {
        let s = session(4);
        assert_eq!(
            s.enqueue(delivery(QoS::AtLeastOnce), false, None, None)
                .map(|e| e.pressure),
            Ok(false)
        );
        for _ in 0..3 {
            assert_eq!(
                s.enqueue(delivery(QoS::AtLeastOnce), false, None, None)
                    .map(|e| e.pressure),
                Ok(true)
            );
        }
        assert_eq!(
            s.enqueue(delivery(QoS::AtLeastOnce), false, None, None)
                .map(|e| e.pressure),
            Err(EnqueueError::Full)
        );
    }

    #[test]
    fn queue_is_bounded_in_bytes_and_budget_and_gives_bytes_back() {
        let one = delivery_of(QoS::AtLeastOnce, &[0; 1000]).cost();
        // Room for two by the session's byte limit; a broker budget for three.
        let (s, stats) = session_with(100, 2 * one + 10, 3 * one + 10);
        s.enqueue(delivery_of(QoS::AtLeastOnce, &[0; 1000]), false, None, None)
            .map(|e| e.pressure)
            .unwrap();
        assert_eq!(
            s.enqueue(delivery_of(QoS::AtLeastOnce, &[0; 1000]), false, None, None)
                .map(|e| e.pressure),
            Ok(true),
            "past half of the byte limit: pressure"
        );
        assert_eq!(
            s.enqueue(delivery_of(QoS::AtLeastOnce, &[0; 1000]), false, None, None)
                .map(|e| e.pressure),
            Err(EnqueueError::Full)
        );
        assert_eq!(s.lock().held_bytes(), 2 * one);
        assert_eq!(stats.session_bytes.load(Ordering::Relaxed), 2 * one);
        // In flight still counts; the ack gives it back.
        let mut out = Vec::new();
        s.lock().take_batch(0, 10, 1, usize::MAX, &mut out);
        assert_eq!(stats.session_bytes.load(Ordering::Relaxed), 2 * one);
        let pid = out[0].1.packet_id().unwrap();
        assert_eq!(s.lock().on_puback(pid), AckMatch::Matched);
        assert_eq!(s.lock().held_bytes(), one);
        // The freed bytes stay in the session's reserve while it still holds a message...
        assert_eq!(stats.session_bytes.load(Ordering::Relaxed), 2 * one);
        // ...and go back once it holds nothing.
        out.clear();
        s.lock().take_batch(0, 10, 1, usize::MAX, &mut out);
        let pid = out[0].1.packet_id().unwrap();
        assert_eq!(s.lock().on_puback(pid), AckMatch::Matched);
        assert_eq!(stats.session_bytes.load(Ordering::Relaxed), 0);
        // Dropping the session gives back anything left.
        s.enqueue(delivery_of(QoS::AtLeastOnce, &[0; 1000]), false, None, None)
            .map(|e| e.pressure)
            .unwrap();
        drop(s);
        assert_eq!(stats.session_bytes.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn messages_are_charged_in_chunks_and_the_reserve_is_bounded() {
        let (s, stats) = session_with(100_000, usize::MAX, usize::MAX);
        let one = delivery(QoS::AtMostOnce).cost();
        for _ in 0..1000 {
            s.enqueue(delivery(QoS::AtMostOnce), false, None, None)
                .map(|e| e.pressure)
                .unwrap();
        }
        let held = s.lock().held_bytes();
        assert_eq!(held, 1000 * one);
        let used = stats.session_bytes.load(Ordering::Relaxed);
        assert!(used >= held && used < held + 16 * 1024, "{used} for {held}");
        // Draining most of it keeps at most two chunks in reserve.
        let mut out = Vec::new();
        s.lock().take_batch(0, 10, 990, usize::MAX, &mut out);
        let held = s.lock().held_bytes();
        let used = stats.session_bytes.load(Ordering::Relaxed);
        assert!(used <= held + 2 * 16 * 1024, "{used} for {held}");
        out.clear();
        s.lock().take_batch(0, 10, 10, usize::MAX, &mut out);
        assert_eq!(stats.session_bytes.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn broker_budget_refuses_when_spent() {
        let one = delivery(QoS::AtMostOnce).cost();
        let (s, stats) = session_with(100, usize::MAX, one + one / 2);
        s.enqueue(delivery(QoS::AtMostOnce), false, None, None)
            .map(|e| e.pressure)
            .unwrap();
        assert_eq!(
            s.enqueue(delivery(QoS::AtMostOnce), false, None, None)
                .map(|e| e.pressure),
            Err(EnqueueError::Budget)
        );
        assert_eq!(stats.session_bytes.load(Ordering::Relaxed), one);
    }

    #[test]
    fn a_tenants_sessions_share_its_queued_bytes_cap_and_give_it_back() {
        use crate::security::limits::tenant::{TenantLimits, TenantRates};
        let one = delivery_of(QoS::AtLeastOnce, &[0; 1000]).cost();
        let rates = TenantRates::default();
        rates.set(
            TenantLimits {
                max_queued_bytes: (2 * one + 10) as u64,
                ..Default::default()
            },
            0,
        );
        let tenant = rates.holdings.clone();
        let (a, _) = session_of_tenant(100, usize::MAX, usize::MAX, tenant.clone());
        let (b, stats) = session_of_tenant(100, usize::MAX, usize::MAX, tenant.clone());
        let big = || delivery_of(QoS::AtLeastOnce, &[0; 1000]);
        assert!(a.enqueue(big(), false, None, None).is_ok());
        assert!(b.enqueue(big(), false, None, None).is_ok());
        assert_eq!(
            a.enqueue(big(), false, None, None).map(|e| e.pressure),
            Err(EnqueueError::TenantQuota)
        );
        assert_eq!(tenant.queued_bytes(), 2 * one);
        assert_eq!(
            stats.session_bytes.load(Ordering::Relaxed),
            one,
            "a refused charge gives the broker budget back"
        );
        drop(a);
        assert_eq!(tenant.queued_bytes(), one);
        assert!(b.enqueue(big(), false, None, None).is_ok());
        drop(b);
        assert_eq!(tenant.queued_bytes(), 0);
        // Without a cap nothing is counted; a cap set later counts from then on.
        rates.set(TenantLimits::default(), 0);
        let (c, _) = session_of_tenant(100, usize::MAX, usize::MAX, tenant.clone());
        assert!(c.enqueue(big(), false, None, None).is_ok());
        assert_eq!(tenant.queued_bytes(), 0);
        rates.set(
            TenantLimits {
                max_queued_bytes: (2 * one + 10) as u64,
                ..Default::default()
            },
            0,
        );
        let (d, _) = session_of_tenant(100, usize::MAX, usize::MAX, tenant.clone());
        assert!(d.enqueue(big(), false, None, None).is_ok());
        assert!(
            c.enqueue(big(), false, None, None).is_ok(),
            "from its reserve"
        );
        assert_eq!(tenant.queued_bytes(), one);
        drop(c);
        drop(d);
        assert_eq!(
            tenant.queued_bytes(),
            0,
            "no more given back than was counted"
        );
    }

    #[test]
    fn subscriptions_are_capped_and_charged() {
        let (s, stats) = session_with(10, usize::MAX, usize::MAX);
        let sub = |f: &str| StoredSubscription {
            filter: messs_codec::TopicFilter::new(f).unwrap(),
            options: messs_codec::SubscriptionOptions::new(QoS::AtMostOnce),
            id: None,
        };
        let mut st = s.lock();
        assert_eq!(st.add_subscription(sub("a"), None), Ok(None));
        assert_eq!(
            st.add_subscription(sub("a"), None),
            Ok(Some(sub("a"))),
            "same filter replaces"
        );
        assert_eq!(st.add_subscription(sub("b"), None), Ok(None));
        assert_eq!(
            st.add_subscription(sub("c"), None),
            Err(SubscribeRefused::TooMany)
        );
        assert!(stats.session_bytes.load(Ordering::Relaxed) > 0);
        assert_eq!(st.remove_subscription("a", None), Some(sub("a")));
        assert_eq!(st.take_subscriptions().len(), 1);
        assert_eq!(stats.session_bytes.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_draining_subscriber_holds_the_publisher_a_silent_one_is_stalled() {
        let s = Arc::new(session(4));
        for _ in 0..3 {
            s.enqueue(delivery(QoS::AtLeastOnce), false, None, None)
                .map(|e| e.pressure)
                .unwrap();
        }
        let stall = Duration::from_millis(250);
        let long = tokio::time::Instant::now() + Duration::from_secs(60);
        // A subscriber that drains, slowly but within the stall timeout, keeps the
        // publisher waiting until it is below the soft limit.
        let waiter = {
            let s = s.clone();
            tokio::spawn(async move { s.wait_for_space(long, stall).await })
        };
        for _ in 0..2 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert!(
                !waiter.is_finished(),
                "still waiting while the queue drains"
            );
            let mut out = Vec::new();
            let below = {
                let mut st = s.lock();
                st.take_batch(0, 10, 1, usize::MAX, &mut out);
                !st.over_soft_limit()
            };
            s.after_drain(true, mono_ms(), below);
        }
        assert!(!waiter.await.unwrap(), "released by draining, not stalled");
        assert!(!s.is_stalled());
        // Nobody drains: the wait ends after the stall timeout and the session is stalled,
        // so it no longer reports pressure.
        s.enqueue(delivery(QoS::AtLeastOnce), false, None, None)
            .map(|e| e.pressure)
            .unwrap();
        s.enqueue(delivery(QoS::AtLeastOnce), false, None, None)
            .map(|e| e.pressure)
            .unwrap();
        let started = tokio::time::Instant::now();
        assert!(s.wait_for_space(long, stall).await);
        // On the paused clock: exactly the stall timeout after the last progress.
        assert!(
            started.elapsed() <= stall,
            "released by the stall timeout, not the deadline: {:?}",
            started.elapsed()
        );
        assert!(s.is_stalled());
        assert_eq!(
            s.enqueue(delivery(QoS::AtLeastOnce), false, None, None)
                .map(|e| e.pressure),
            Ok(false)
        );
    }

    #[test]
    fn offline_qos0_is_not_queued() {
        let s = session(10);
        s.mark_disconnected(1);
        assert_eq!(
            s.enqueue(delivery(QoS::AtMostOnce), false, None, None)
                .map(|e| e.pressure),
            Err(EnqueueError::Offline)
        );
        assert!(s
            .enqueue(delivery(QoS::AtMostOnce), true, None, None)
            .map(|e| e.pressure)
            .is_ok());
    }

    #[test]
    fn window_limits_inflight_and_acks_free_it() {
        let s = session(10);
        for _ in 0..3 {
            s.enqueue(delivery(QoS::AtLeastOnce), false, None, None)
                .map(|e| e.pressure)
                .unwrap();
        }
        let mut st = s.lock();
        let mut out = Vec::new();
        st.take_batch(0, 2, 100, usize::MAX, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(st.queued_len(), 1);
        let pid = out[0].1.packet_id().unwrap();
        assert_eq!(st.on_puback(pid), AckMatch::Matched);
        assert_eq!(st.on_puback(pid), AckMatch::Unknown, "a second PUBACK");
        out.clear();
        st.take_batch(0, 2, 100, usize::MAX, &mut out);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn wrong_acknowledgement_types_are_told_apart() {
        let s = session(10);
        s.enqueue(delivery(QoS::AtLeastOnce), false, None, None)
            .map(|e| e.pressure)
            .unwrap();
        s.enqueue(delivery(QoS::ExactlyOnce), false, None, None)
            .map(|e| e.pressure)
            .unwrap();
        let mut st = s.lock();
        let mut out = Vec::new();
        st.take_batch(0, 10, 10, usize::MAX, &mut out);
        let (p1, p2) = (out[0].1.packet_id().unwrap(), out[1].1.packet_id().unwrap());
        assert_eq!(st.on_pubrec(p1, false, None), AckMatch::WrongType);
        assert_eq!(st.on_pubcomp(p1), AckMatch::WrongType);
        assert_eq!(st.on_puback(p2), AckMatch::WrongType);
        assert_eq!(
            st.on_pubcomp(p2),
            AckMatch::WrongType,
            "PUBCOMP before PUBREC"
        );
        assert_eq!(st.on_pubrec(p2, false, None), AckMatch::Matched);
        assert_eq!(st.on_pubcomp(p2), AckMatch::Matched);
        assert_eq!(st.on_puback(p1), AckMatch::Matched);
    }

    #[test]
    fn qos2_flow_and_resend_order() {
        let s = session(10);
        s.enqueue(delivery(QoS::ExactlyOnce), false, None, None)
            .map(|e| e.pressure)
            .unwrap();
        s.enqueue(delivery(QoS::AtLeastOnce), false, None, None)
            .map(|e| e.pressure)
            .unwrap();
        let mut st = s.lock();
        let mut out = Vec::new();
        st.take_batch(0, 10, 10, usize::MAX, &mut out);
        let p2 = out[0].1.packet_id().unwrap();
        assert_eq!(st.on_pubrec(p2, false, None), AckMatch::Matched);
        let resend = st.resend_list();
        assert!(matches!(resend[0], Resend::PubRel(p) if p == p2));
        assert!(matches!(
            resend[1],
            Resend::Publish(_, QosPid::AtLeastOnce(_))
        ));
        assert_eq!(st.on_pubcomp(p2), AckMatch::Matched);
        assert_eq!(st.inflight_len(), 1);
    }
}
