//! Session state (spec §4.1): subscriptions, messages queued for the client, outgoing QoS 1/2
//! messages awaiting acknowledgement, incoming QoS 2 packet ids awaiting PUBREL, expiry.
//!
//! A session outlives its connections. Its state has one owner at a time — the connection
//! attached to it, or nobody while it is offline — and sits behind a mutex that is only held
//! for short, non-async sections. Publishers push deliveries into its bounded queue and wake
//! the attached connection through `notify`.
//!
//! Flow control: past half of its limit, a connected session's queue reports pressure, and
//! the publisher that caused it stops reading from its socket until the queue drains below
//! half again (`space` wakes it) or a bounded wait passes, after which the session counts as
//! stalled and no longer holds publishers back. So a fast publisher slows to what its
//! subscribers can take instead of losing acknowledged messages, and one stuck subscriber
//! cannot stall publishers for more than the wait.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::num::{NonZeroU16, NonZeroU32};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use messs_codec::{QoS, QosPid, ReasonCode, SubscriptionOptions, TopicFilter};
use tokio::sync::Notify;

use crate::message::{Delivery, Message};

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

/// A subscription as the session remembers it.
#[derive(Debug, Clone)]
pub(crate) struct StoredSubscription {
    pub filter: TopicFilter,
    pub options: SubscriptionOptions,
    pub id: Option<NonZeroU32>,
}

/// Outgoing QoS 1/2 state for one packet id.
#[derive(Debug)]
enum Outgoing {
    /// PUBLISH sent; waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Published(Delivery),
    /// PUBREL sent; waiting for PUBCOMP.
    Released,
}

#[derive(Debug)]
struct InflightEntry {
    /// Send order, so a resumed session resends in the original order [MQTT-4.6.0-1].
    seq: u64,
    state: Outgoing,
}

/// What a resumed connection must send again before anything new.
pub(crate) enum Resend {
    /// The PUBLISH, with DUP set.
    Publish(Delivery, QosPid),
    /// A PUBREL.
    PubRel(NonZeroU16),
}

/// A will message whose delay has not passed yet.
pub(crate) struct PendingWill {
    pub message: Arc<Message>,
    pub timer: tokio::task::AbortHandle,
}

/// Why a delivery was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EnqueueError {
    /// QoS 0 for an offline session.
    Offline,
    /// The session's queue is at its limit.
    Full,
}

/// One client session.
pub struct Session {
    /// Unique for the broker's lifetime; identifies the publisher for No Local.
    pub id: u64,
    /// Registry key.
    pub key: SessionKey,
    state: Mutex<SessionState>,
    notify: Notify,
    /// Woken when a queue under pressure drains below its soft limit or a connection
    /// detaches. Shared by all sessions of a broker (waiters recheck their own session), so an
    /// idle session does not carry one.
    space: Arc<Notify>,
    /// Pressure was reported since the last drain below the soft limit: only then does a
    /// drain wake the shared `space`.
    pressured: AtomicBool,
    connected: AtomicBool,
    /// A publisher waited for this session in vain; don't make others wait until it drains.
    stalled: AtomicBool,
    /// The generation of the connection told to close (0: none), and why.
    kicked_generation: AtomicU64,
    kick_code: AtomicU8,
}

/// The mutable part of a session. Ordered maps rather than hash maps: they are small, need no
/// per-map hasher state, and an empty one is half the size (every idle session has three).
pub(crate) struct SessionState {
    pub subscriptions: BTreeMap<Arc<str>, StoredSubscription>,
    queue: VecDeque<Delivery>,
    max_queued: u32,
    inflight: BTreeMap<NonZeroU16, InflightEntry>,
    next_seq: u64,
    next_pid: u16,
    /// QoS 2 packet ids received and answered with PUBREC, awaiting PUBREL.
    pub incoming_qos2: BTreeSet<NonZeroU16>,
    /// Seconds the session outlives its connection.
    pub expiry_interval: u32,
    /// Bumped on every attach, so a stale expiry timer can tell it lost.
    pub generation: u64,
    /// A connection is attached (set by attach, cleared by that connection's detach).
    pub attached: bool,
    /// A delayed will waiting to be published; dropped if the client comes back, published
    /// at once if the session ends first.
    pub pending_will: Option<PendingWill>,
}

impl Session {
    /// A new, empty session.
    pub(crate) fn new(id: u64, key: SessionKey, max_queued: usize, space: Arc<Notify>) -> Self {
        Session {
            id,
            key,
            state: Mutex::new(SessionState {
                subscriptions: BTreeMap::new(),
                queue: VecDeque::new(),
                max_queued: u32::try_from(max_queued).unwrap_or(u32::MAX),
                inflight: BTreeMap::new(),
                next_seq: 0,
                next_pid: 0,
                incoming_qos2: BTreeSet::new(),
                expiry_interval: 0,
                generation: 0,
                attached: false,
                pending_will: None,
            }),
            notify: Notify::new(),
            space,
            pressured: AtomicBool::new(false),
            connected: AtomicBool::new(false),
            stalled: AtomicBool::new(false),
            kicked_generation: AtomicU64::new(0),
            kick_code: AtomicU8::new(0),
        }
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

    pub(crate) fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Release);
    }

    /// Resolves when deliveries were queued since the last call (a plain `Notified`, not an
    /// `async fn` around it: it sits in every idle connection's future).
    pub(crate) fn queued(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }

    /// Tells the attached connection, if any, to close with `code` (it sends DISCONNECT
    /// with that reason to a v5 client). The connection notices through the queue's wake-up:
    /// one signal per idle connection instead of a channel of its own.
    pub(crate) fn kick(&self, code: ReasonCode) {
        let generation = {
            let st = self.lock();
            if !st.attached {
                return;
            }
            st.generation
        };
        self.kick_code.store(code.as_u8(), Ordering::Release);
        self.kicked_generation.store(generation, Ordering::Release);
        self.notify.notify_one();
    }

    /// Why the connection of `generation` was told to close, if it was.
    pub(crate) fn kicked(&self, generation: u64) -> Option<ReasonCode> {
        if self.kicked_generation.load(Ordering::Acquire) != generation {
            return None;
        }
        ReasonCode::from_u8(self.kick_code.load(Ordering::Acquire))
    }

    /// Queues a delivery, subject to the session's limit, and wakes the connection.
    /// `Ok(true)` means the queue is past its soft limit: the publisher should pause
    /// (see [`Session::wait_for_space`]).
    pub(crate) fn enqueue(
        &self,
        delivery: Delivery,
        queue_qos0_offline: bool,
    ) -> Result<bool, EnqueueError> {
        let connected = self.is_connected();
        if delivery.qos == QoS::AtMostOnce && !queue_qos0_offline && !connected {
            return Err(EnqueueError::Offline);
        }
        let (pressure, was_empty) = {
            let mut st = self.lock();
            if st.queue.len() >= st.max_queued as usize {
                return Err(EnqueueError::Full);
            }
            let was_empty = st.queue.is_empty();
            st.queue.push_back(delivery);
            (st.queue.len() >= st.soft_limit(), was_empty)
        };
        // The connection drains until the queue is empty or its window is full (and an ack
        // reopening the window makes it drain again), so only the first message after empty
        // needs a wake-up: one cross-thread wake per batch, not per message.
        if was_empty {
            self.notify.notify_one();
        }
        let pressure = pressure && connected && !self.stalled.load(Ordering::Relaxed);
        if pressure {
            self.pressured.store(true, Ordering::Release);
        }
        Ok(pressure)
    }

    /// Waits until the queue is below its soft limit, the session goes offline, or
    /// `deadline` passes (then the session is marked stalled). Cancel-safe.
    pub(crate) async fn wait_for_space(&self, deadline: tokio::time::Instant) {
        loop {
            let space = self.space.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            {
                let st = self.lock();
                if st.queue.len() < st.soft_limit() || !self.is_connected() {
                    return;
                }
            }
            if tokio::time::timeout_at(deadline, space).await.is_err() {
                self.stalled.store(true, Ordering::Relaxed);
                return;
            }
        }
    }

    /// Called by the connection after taking from the queue: wakes paused publishers once
    /// it is below the soft limit.
    pub(crate) fn after_drain(&self, queued: usize, soft_limit: usize) {
        if queued < soft_limit {
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

    /// Wakes paused publishers and a waiting takeover when the connection goes away.
    pub(crate) fn release_waiters(&self) {
        self.space.notify_waiters();
    }
}

impl SessionState {
    /// Queue length past which publishers are paused.
    pub fn soft_limit(&self) -> usize {
        (self.max_queued as usize / 2).max(1)
    }

    /// Number of outgoing QoS 1/2 messages not yet completed.
    #[cfg(test)]
    pub fn inflight_len(&self) -> usize {
        self.inflight.len()
    }

    /// Messages waiting to be sent.
    pub fn queued_len(&self) -> usize {
        self.queue.len()
    }

    /// Moves up to `max` queued deliveries into `out`, giving QoS 1/2 ones a packet id and
    /// an inflight slot while fewer than `window` are inflight. Expired messages are dropped
    /// and counted in the return value.
    pub fn take_batch(
        &mut self,
        now: Instant,
        window: usize,
        max: usize,
        out: &mut Vec<(Delivery, QosPid)>,
    ) -> usize {
        let mut expired = 0;
        while out.len() < max {
            let Some(front) = self.queue.front() else {
                break;
            };
            if front.message.is_expired(now) {
                self.queue.pop_front();
                expired += 1;
                continue;
            }
            if front.qos == QoS::AtMostOnce {
                if let Some(d) = self.queue.pop_front() {
                    out.push((d, QosPid::AtMostOnce));
                }
                continue;
            }
            if self.inflight.len() >= window {
                break;
            }
            let Some(pid) = self.allocate_pid() else {
                break;
            };
            let Some(d) = self.queue.pop_front() else {
                break;
            };
            let qos_pid = QosPid::new(d.qos, pid);
            self.next_seq += 1;
            self.inflight.insert(
                pid,
                InflightEntry {
                    seq: self.next_seq,
                    state: Outgoing::Published(d.clone()),
                },
            );
            out.push((d, qos_pid));
        }
        expired
    }

    fn allocate_pid(&mut self) -> Option<NonZeroU16> {
        for _ in 0..u16::MAX {
            self.next_pid = self.next_pid.wrapping_add(1);
            if let Some(pid) = NonZeroU16::new(self.next_pid) {
                if !self.inflight.contains_key(&pid) {
                    return Some(pid);
                }
            }
        }
        None
    }

    /// PUBACK: completes a QoS 1 message. False if nothing matched.
    pub fn on_puback(&mut self, pid: NonZeroU16) -> bool {
        match self.inflight.get(&pid) {
            Some(InflightEntry {
                state: Outgoing::Published(d),
                ..
            }) if d.qos == QoS::AtLeastOnce => {
                self.inflight.remove(&pid);
                true
            }
            _ => false,
        }
    }

    /// PUBREC: a QoS 2 message moves to "released". False if nothing matched. A PUBREC
    /// with a failure reason code (v5) ends the exchange instead: the caller passes `failed`.
    pub fn on_pubrec(&mut self, pid: NonZeroU16, failed: bool) -> bool {
        let Some(entry) = self.inflight.get_mut(&pid) else {
            return false;
        };
        match &entry.state {
            Outgoing::Published(d) if d.qos == QoS::ExactlyOnce => {
                if failed {
                    self.inflight.remove(&pid);
                } else {
                    entry.state = Outgoing::Released;
                }
                true
            }
            // A repeated PUBREC after our PUBREL: answer with PUBREL again.
            Outgoing::Released => true,
            _ => false,
        }
    }

    /// PUBCOMP: completes a QoS 2 message. False if nothing matched.
    pub fn on_pubcomp(&mut self, pid: NonZeroU16) -> bool {
        match self.inflight.get(&pid) {
            Some(InflightEntry {
                state: Outgoing::Released,
                ..
            }) => {
                self.inflight.remove(&pid);
                true
            }
            _ => false,
        }
    }

    /// Forgets an outgoing message that could not be sent (too large for the client).
    pub fn forget_inflight(&mut self, pid: NonZeroU16) {
        self.inflight.remove(&pid);
    }

    /// Everything to resend on session resume, in the original order [MQTT-4.4.0-1].
    pub fn resend_list(&self) -> Vec<Resend> {
        let mut entries: Vec<(&NonZeroU16, &InflightEntry)> = self.inflight.iter().collect();
        entries.sort_by_key(|(_, e)| e.seq);
        entries
            .into_iter()
            .map(|(pid, e)| match &e.state {
                Outgoing::Published(d) => Resend::Publish(d.clone(), QosPid::new(d.qos, *pid)),
                Outgoing::Released => Resend::PubRel(*pid),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::MessageProperties;
    use messs_codec::TopicName;

    fn delivery(qos: QoS) -> Delivery {
        Delivery {
            message: Arc::new(Message {
                topic: TopicName::new("t").unwrap(),
                payload: bytes::Bytes::from_static(b"x"),
                qos,
                retain: false,
                properties: MessageProperties::default(),
                expires_at: None,
                origin: 0,
            }),
            qos,
            retain: false,
            subscription_ids: Vec::new(),
        }
    }

    fn session(max: usize) -> Session {
        let key = SessionKey {
            tenant: Arc::from("t"),
            client_id: Arc::from("c"),
        };
        let s = Session::new(1, key, max, Arc::new(Notify::new()));
        s.set_connected(true);
        s
    }

    #[test]
    fn queue_is_bounded_and_reports_pressure_past_half() {
        let s = session(4);
        assert_eq!(s.enqueue(delivery(QoS::AtLeastOnce), false), Ok(false));
        for _ in 0..3 {
            assert_eq!(s.enqueue(delivery(QoS::AtLeastOnce), false), Ok(true));
        }
        assert_eq!(
            s.enqueue(delivery(QoS::AtLeastOnce), false),
            Err(EnqueueError::Full)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn paused_publisher_resumes_on_drain_or_marks_stalled() {
        let s = Arc::new(session(4));
        for _ in 0..3 {
            s.enqueue(delivery(QoS::AtLeastOnce), false).unwrap();
        }
        // Draining below the soft limit wakes the waiter.
        let waiter = {
            let s = s.clone();
            tokio::spawn(async move {
                s.wait_for_space(tokio::time::Instant::now() + std::time::Duration::from_secs(5))
                    .await
            })
        };
        tokio::task::yield_now().await;
        {
            let mut st = s.lock();
            let mut out = Vec::new();
            st.take_batch(Instant::now(), 10, 2, &mut out);
            let (left, soft) = (st.queued_len(), st.soft_limit());
            drop(st);
            s.after_drain(left, soft);
        }
        waiter.await.unwrap();
        assert!(!s.stalled.load(Ordering::Relaxed));
        // Nobody drains: the wait ends at the deadline and the session is stalled, so it no
        // longer reports pressure.
        s.enqueue(delivery(QoS::AtLeastOnce), false).unwrap();
        s.wait_for_space(tokio::time::Instant::now() + std::time::Duration::from_secs(1))
            .await;
        assert!(s.stalled.load(Ordering::Relaxed));
        assert_eq!(s.enqueue(delivery(QoS::AtLeastOnce), false), Ok(false));
    }

    #[test]
    fn offline_qos0_is_not_queued() {
        let s = session(10);
        s.set_connected(false);
        assert_eq!(
            s.enqueue(delivery(QoS::AtMostOnce), false),
            Err(EnqueueError::Offline)
        );
        assert!(s.enqueue(delivery(QoS::AtMostOnce), true).is_ok());
    }

    #[test]
    fn window_limits_inflight_and_acks_free_it() {
        let s = session(10);
        for _ in 0..3 {
            s.enqueue(delivery(QoS::AtLeastOnce), false).unwrap();
        }
        let mut st = s.lock();
        let mut out = Vec::new();
        st.take_batch(Instant::now(), 2, 100, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(st.queued_len(), 1);
        let pid = out[0].1.packet_id().unwrap();
        assert!(st.on_puback(pid));
        assert!(!st.on_puback(pid), "a second PUBACK matches nothing");
        out.clear();
        st.take_batch(Instant::now(), 2, 100, &mut out);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn qos2_flow_and_resend_order() {
        let s = session(10);
        s.enqueue(delivery(QoS::ExactlyOnce), false).unwrap();
        s.enqueue(delivery(QoS::AtLeastOnce), false).unwrap();
        let mut st = s.lock();
        let mut out = Vec::new();
        st.take_batch(Instant::now(), 10, 10, &mut out);
        let p2 = out[0].1.packet_id().unwrap();
        assert!(st.on_pubrec(p2, false));
        let resend = st.resend_list();
        assert!(matches!(resend[0], Resend::PubRel(p) if p == p2));
        assert!(matches!(
            resend[1],
            Resend::Publish(_, QosPid::AtLeastOnce(_))
        ));
        assert!(st.on_pubcomp(p2));
        assert_eq!(st.inflight_len(), 1);
    }
}
