//! The task of one connected client: a `select!` loop over socket reads, the session's
//! queue, the keep-alive deadline, takeover and shutdown. Inbound packets are handled in
//! `inbound`, deliveries written in `outbound`. Each pass handles everything one read
//! brought, then encodes what is queued and writes it all with one flush.

mod acks;
mod inbound;
mod keep_alive;
mod outbound;
mod replay;

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU16;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use messs_codec::{Connect, Disconnect, Packet, ReasonCode, TopicName, Will};
use tokio::time::Sleep;

use crate::clock::{mono_ms, mono_us, unix_ms};
use crate::config::LimitsConfig;
use crate::error::BrokerError;
use crate::message::Message;
use crate::router::TenantRoutes;
use crate::security::auth::Access;
use crate::security::limits::throttle::{Limiter, Throttle, Verdict};
use crate::session::table::Attached;
use crate::session::Departure;
use crate::session::{Session, DRAINING_MS};
use crate::state::BrokerState;
use crate::transport::connection::{Connection, Transport};
use acks::PendingAcks;
use keep_alive::{KeepAlive, KeepAliveVerdict};
use replay::Replay;

/// Most deliveries encoded per pass before the batch is flushed.
const MAX_BATCH: usize = 256;
/// Work a client may do between two yields to the scheduler (a packet counts one, each
/// session a PUBLISH is queued for one more). A socket that always has data never makes the
/// task wait, so without this a flooding client would keep its worker for as long as
/// tokio's own budget allows (128 reads: thousands of messages), and a client whose
/// messages fan out widely would get longer turns than everyone else.
const PASS_WORK: u32 = 16384;

/// What CONNECT and CONNACK settled for this connection.
pub(crate) struct Negotiated {
    /// Close the connection after 1.5 x keep-alive without a packet (its clock starts at
    /// CONNECT).
    keep_alive: KeepAlive,
    /// Most outgoing QoS 1/2 messages unacknowledged at once.
    window: u16,
    /// Largest packet the client accepts.
    client_max_packet: u32,
    /// Topic aliases the client accepts from us.
    client_alias_max: u16,
    /// Topic aliases we accept from the client.
    alias_max: u16,
    /// Unreleased incoming QoS 2 messages allowed.
    receive_maximum: u16,
    /// Session Expiry Interval was 0 at CONNECT (DISCONNECT may not raise it then).
    expiry_was_zero: bool,
}

impl Negotiated {
    pub(crate) fn new(connect: &Connect, keep_alive: u16, limits: &LimitsConfig) -> Self {
        let p = &connect.properties;
        let client_receive = p.receive_maximum.map_or(u16::MAX, NonZeroU16::get);
        Negotiated {
            keep_alive: KeepAlive::new(
                (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500)),
                tokio::time::Instant::now(),
            ),
            window: client_receive.min(limits.max_inflight),
            client_max_packet: p.maximum_packet_size.map_or(u32::MAX, |m| m.get()),
            client_alias_max: p.topic_alias_maximum.unwrap_or(0),
            alias_max: limits.topic_alias_maximum,
            receive_maximum: limits.receive_maximum,
            expiry_was_zero: p.session_expiry_interval.unwrap_or(0) == 0,
        }
    }
}

/// Waits for the first acknowledgement's writes (the branch is armed only when one waits).
async fn front_ack(acks: &mut Option<Box<PendingAcks>>) -> Result<(), messs_storage::StorageError> {
    match acks {
        Some(a) => a.front_done().await,
        None => std::future::pending().await,
    }
}

/// Waits for the writes held deliveries depend on (the branch is armed only when some are
/// held).
async fn held_written(
    held: &mut Option<Box<outbound::Held>>,
) -> Result<(), messs_storage::StorageError> {
    match held {
        Some(h) => (&mut h.wait).await,
        None => std::future::pending().await,
    }
}

async fn expiry(timer: &mut Option<Pin<Box<Sleep>>>) {
    match timer {
        Some(t) => t.as_mut().await,
        None => std::future::pending().await,
    }
}

/// Waits on the pause future, if any (the branch is disabled when there is none; this
/// small future is what `select!` builds on every pass, so it must not allocate). Returns
/// how long the pause lasted, in milliseconds.
async fn pause_over(pause: &mut Option<PauseWait>) -> u64 {
    match pause {
        Some(wait) => wait.as_mut().await,
        None => std::future::pending().await,
    }
}

/// A paused publisher's wait for a subscriber's queue to drain, boxed once per pause; it
/// yields the pause's length in milliseconds.
type PauseWait = Pin<Box<dyn std::future::Future<Output = u64> + Send>>;

/// After a pause of `d`, for `d / RUN_SHARE_DIVISOR`, a publisher is paused again only for a
/// subscriber that is visibly draining (it took from its queue within `DRAINING_MS`): so
/// subscribers that do not read get at most ~90% of a publisher's time, while one that
/// keeps up can still hold it back instead of overflowing (the burst right after a long
/// pause is exactly when a reading subscriber's queue is fullest).
const RUN_SHARE_DIVISOR: u64 = 9;

/// Why the loop ended.
pub(crate) enum End {
    /// The client sent DISCONNECT (with 0x04: send the will anyway).
    Disconnect { with_will: bool },
    /// The peer closed the socket.
    Closed,
    /// Nothing received for 1.5 x keep-alive [MQTT-3.1.2-22].
    KeepAlive,
    /// Another connection took the session.
    TakenOver,
    /// Told to close (e.g. by an administrator) with this reason.
    Kicked(ReasonCode),
    /// The broker is shutting down.
    Shutdown,
    /// A protocol violation or I/O failure.
    Failed(BrokerError),
}

/// A connected client.
pub(crate) struct Client<S> {
    state: Arc<BrokerState>,
    conn: Connection<S>,
    /// The listener's transport (per-transport connection gauge).
    transport: crate::config::Transport,
    session: Arc<Session>,
    generation: u64,
    session_present: bool,
    neg: Negotiated,
    /// Boxed: most clients have none, and it is only read at the end.
    will: Option<Box<Will>>,
    /// Topic aliases the client defined (inbound).
    /// Boxed on first use (most clients use no aliases; an idle connection stays small:
    /// a `None` is 8 bytes, an empty `HashMap` 48).
    #[allow(clippy::box_collection)]
    in_aliases: Option<Box<HashMap<u16, TopicName>>>,
    /// Topic aliases we defined (outbound).
    #[allow(clippy::box_collection)]
    out_aliases: Option<Box<HashMap<TopicName, NonZeroU16>>>,
    /// Set when this client's publishes filled a subscriber's queue past its soft limit:
    /// the socket is not read until that queue drains, the subscriber stalls, or the
    /// pause's deadline passes.
    pause: Option<PauseWait>,
    /// Until this (`clock::mono_ms`), pause only for a draining subscriber (see
    /// `RUN_SHARE_DIVISOR`).
    pause_allowed_at: u64,
    /// Retained messages still to deliver for new subscriptions, walked a bounded chunk
    /// per pass as the session queue has room. Boxed on first use.
    #[allow(clippy::box_collection)]
    replays: Option<Box<VecDeque<Replay>>>,
    /// A replay has more to walk and the queue has room: come back after yielding.
    replay_more: bool,
    /// `PASS_WORK` was reached: yield, then go on with what is buffered.
    input_more: bool,
    /// Deliveries were left queued because the write buffer was full: another pass after
    /// the flush.
    drain_more: bool,
    /// Work done since the client last yielded.
    pass_work: u32,
    /// Fires at (or after) `deadline`; reset lazily when it fires early, so packets do not
    /// touch the timer wheel.
    keep_alive_timer: Option<Pin<Box<Sleep>>>,
    /// The tenant's routes, looked up once.
    routes: Arc<TenantRoutes>,
    /// Acknowledgements waiting for the store, in order (see `acks`). Boxed on first use.
    #[allow(clippy::box_collection)]
    acks: Option<Box<PendingAcks>>,
    /// Input processing stopped because too many acknowledgements wait for the store; it
    /// goes on once one is sent.
    input_held: bool,
    /// Deliveries taken from the queue that wait for their QoS 2 packet ids to be stored
    /// before they are written (see `outbound`); nothing else is delivered meanwhile, so
    /// order holds. Boxed: set only for a moment.
    held: Option<Box<outbound::Held>>,
    /// Who the client is and what its ACL allows. Boxed: one pointer in every connection.
    access: Box<Access>,
    /// The packet rate limiter, if the limits have one (boxed: most brokers have none).
    limiter: Option<Box<Limiter>>,
    /// The version of the rate limits `limiter` follows.
    throttle_epoch: u64,
}

impl<S: Transport> Client<S> {
    pub(crate) fn new(
        state: Arc<BrokerState>,
        conn: Connection<S>,
        attached: Attached,
        neg: Negotiated,
        will: Option<Will>,
        access: Access,
        transport: crate::config::Transport,
    ) -> Self {
        let will = will.map(Box::new);
        let routes = state.router.tenant(&attached.session.key.tenant);
        state.stats.connections.fetch_add(1, Ordering::Relaxed);
        state.stats.connections_by_transport[transport.index()].fetch_add(1, Ordering::Relaxed);
        state
            .stats
            .connections_total
            .fetch_add(1, Ordering::Relaxed);
        let keep_alive_timer = neg
            .keep_alive
            .is_on()
            .then(|| Box::pin(tokio::time::sleep_until(neg.keep_alive.deadline())));
        let pipelined = conn.buffered() > 0;
        let throttle_epoch = state.throttle_epoch();
        let policy = state.throttle_policy().with(&access.identity.device_limits);
        let limiter = Throttle::new(policy, mono_us()).map(|own| Box::new(Limiter::with_own(own)));
        Client {
            limiter,
            throttle_epoch,
            state,
            conn,
            transport,
            session: attached.session,
            generation: attached.generation,
            session_present: attached.session_present,
            neg,
            will,
            in_aliases: None,
            out_aliases: None,
            pause: None,
            pause_allowed_at: 0,
            replays: None,
            replay_more: false,
            // Packets the client sent right behind its CONNECT (it need not wait for the
            // CONNACK) may already be buffered: they are handled at the first pass, not
            // when more bytes happen to arrive.
            input_more: pipelined,
            drain_more: false,
            pass_work: 0,
            keep_alive_timer,
            routes,
            acks: None,
            input_held: false,
            held: None,
            access: {
                access
                    .identity
                    .tenant
                    .counters
                    .connected
                    .fetch_add(1, Ordering::Relaxed);
                Box::new(access)
            },
        }
    }

    /// Re-checks the session's subscriptions against the ACL: while one is no longer
    /// wholly allowed, every delivery is checked on its own (see `Access`).
    fn recheck_subscriptions(&mut self) {
        let acl = self.access.acl();
        let all_allowed = acl.is_allow_all()
            || self
                .session
                .lock()
                .all_subscriptions(|filter, qos| acl.may_subscribe(filter, qos));
        self.access.check_deliveries = !all_allowed;
    }

    /// Picks up a change of the tenant's ACL rules.
    pub(super) fn refresh_access(&mut self) {
        if self.access.refresh(&self.state.auth) {
            self.recheck_subscriptions();
        }
    }

    /// Runs the client until it ends, then detaches it from its session. The client lives
    /// in a box so the task's future holds a pointer to it, not a second copy.
    pub(crate) async fn run(mut self: Box<Self>) {
        let end = self.event_loop().await;
        // Boxed: the end of a connection happens once, so its state need not be part of
        // every idle connection's future.
        Box::pin(self.finish(end)).await;
    }

    /// Ends a client whose connection was never confirmed (a 0-RTT QUIC handshake that did
    /// not complete): nothing after its CONNECT was read, and it leaves as if the peer had
    /// closed the socket.
    pub(crate) async fn end_unconfirmed(mut self: Box<Self>) {
        Box::pin(self.finish(End::Closed)).await;
    }

    async fn event_loop(&mut self) -> End {
        if self.session_present {
            // Subscriptions from before this connection (maybe from before a rule change).
            self.recheck_subscriptions();
            if let Err(e) = self.resend_inflight() {
                return End::Failed(e);
            }
        }
        loop {
            // Takeover and shutdown arrive as a kick plus the queue's wake-up, so an idle
            // connection waits on one signal. Checked before draining: a connection whose
            // session was taken over must not take its deliveries.
            match self.session.kicked(self.generation) {
                Some(ReasonCode::ServerShuttingDown) => return End::Shutdown,
                Some(ReasonCode::SessionTakenOver) => return End::TakenOver,
                Some(code) => return End::Kicked(code),
                None => {}
            }
            if let Err(e) = self.drain_outbox() {
                return End::Failed(e);
            }
            if self.session.is_durable() {
                // This pass's acknowledgement deletes and in-flight ids, as one request.
                self.session.lock().flush_deferred();
            }
            let queued = self.conn.pending_out();
            let flushed = self.conn.flush().await;
            if queued > 0 {
                let written = queued - self.conn.pending_out();
                self.state
                    .stats
                    .bytes_sent
                    .fetch_add(written as u64, Ordering::Relaxed);
            }
            if let Err(e) = flushed {
                return End::Failed(e);
            }
            let paused = self.pause.is_some();
            let more = self.replay_more || self.input_more || self.drain_more;
            let input_more = self.input_more;
            let input_held = self.input_held;
            let ack_waiting = self.ack_waiting();
            let held = self.held.is_some();
            tokio::select! {
                biased;
                written = held_written(&mut self.held), if held => {
                    if let Err(e) = written.map_err(BrokerError::Storage).and_then(|()| self.write_held()) {
                        return End::Failed(e);
                    }
                }
                done = front_ack(&mut self.acks), if ack_waiting => {
                    if let Err(e) = self.release_acks(Some(done)) {
                        return End::Failed(e);
                    }
                    if self.input_held && !self.acks_full() {
                        if let Some(end) = self.process_input() {
                            return end;
                        }
                    }
                }
                lasted = pause_over(&mut self.pause), if paused => {
                    self.pause = None;
                    self.pause_allowed_at = mono_ms() + lasted / RUN_SHARE_DIVISOR;
                    // Packets already read wait behind the pause; time spent paused is the
                    // broker's doing, so it also restarts the keep-alive clock.
                    if let Some(end) = self.process_input() {
                        return end;
                    }
                }
                // More buffered input or retained replay: let other tasks run first.
                _ = tokio::task::yield_now(), if more && !paused => {
                    self.pass_work = 0;
                    if self.input_more {
                        if let Some(end) = self.process_input() {
                            return end;
                        }
                    }
                }
                read = self.conn.fill(), if !paused && !input_more && !input_held => match read {
                    Ok(0) => return End::Closed,
                    Ok(n) => {
                        self.state.stats.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
                        if let Some(end) = self.process_input() {
                            return end;
                        }
                    }
                    Err(e) => return End::Failed(e.into()),
                },
                // Always armed (a kick comes this way); with the window full, a wake-up for new
                // messages costs one pass, since only an empty queue's first message wakes.
                _ = self.session.queued() => {}
                _ = expiry(&mut self.keep_alive_timer), if self.keep_alive_timer.is_some() => {
                    // Not reading is the broker's doing while paused (a rate limit can hold
                    // a client back for longer than its keep-alive).
                    let now = tokio::time::Instant::now();
                    match self.neg.keep_alive.on_timer(now, self.pause.is_some()) {
                        KeepAliveVerdict::Expired => return End::KeepAlive,
                        KeepAliveVerdict::RearmAt(at) => {
                            if let Some(t) = self.keep_alive_timer.as_mut() {
                                t.as_mut().reset(at);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Pauses reading after a publish pushed a subscriber's queue past its soft limit —
    /// unless the publisher was paused too recently and the subscriber is not draining
    /// (see `RUN_SHARE_DIVISOR`).
    pub(super) fn pause_for(&mut self, session: Arc<Session>) {
        if self.pause.is_some() || session.id == self.session.id {
            return;
        }
        if self.pause_allowed_at > 0
            && mono_ms() < self.pause_allowed_at
            && !session.drained_within(DRAINING_MS)
        {
            return;
        }
        let limits = &self.state.config.limits;
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(limits.backpressure_wait_ms);
        let stall = Duration::from_millis(limits.stall_timeout_ms);
        let stats = self.state.stats.clone();
        self.pause = Some(Box::pin(async move {
            let started = mono_ms();
            if session.wait_for_space(deadline, stall).await {
                stats.subscribers_stalled.fetch_add(1, Ordering::Relaxed);
            }
            mono_ms().saturating_sub(started)
        }));
    }

    /// Handles the complete packets in the read buffer, stopping early if a publish pauses
    /// the client (the rest stay buffered until the pause ends) or `PASS_WORK` is reached
    /// (the rest wait until the client has yielded).
    fn process_input(&mut self) -> Option<End> {
        if self.neg.keep_alive.is_on() {
            self.neg.keep_alive.on_input(tokio::time::Instant::now());
        }
        if let Some(limiter) = self.limiter.as_mut() {
            limiter.set_now(crate::clock::mono_ns());
        }
        self.input_more = false;
        self.input_held = false;
        while self.pause.is_none() {
            if self.acks_full() {
                self.input_held = true;
                return None;
            }
            if self.pass_work >= PASS_WORK {
                self.input_more = true;
                return None;
            }
            self.pass_work += 1;
            let before = self.conn.buffered();
            match self.conn.next_packet() {
                Ok(Some(packet)) => {
                    let charged = matches!(
                        packet,
                        Packet::Publish(_)
                            | Packet::Subscribe(_)
                            | Packet::Unsubscribe(_)
                            | Packet::PingReq
                    );
                    let size = before.saturating_sub(self.conn.buffered());
                    match self.handle(packet) {
                        Ok(None) => {}
                        Ok(Some(end)) => return Some(end),
                        Err(e) => return Some(End::Failed(e)),
                    }
                    if charged {
                        if let Some(end) = self.charge(size) {
                            return Some(end);
                        }
                    }
                }
                Ok(None) => return None,
                Err(e) => return Some(End::Failed(e.into())),
            }
        }
        None
    }

    /// Charges a packet of `size` bytes to the connection's rate limiter and its tenant's:
    /// over either rate, reading pauses until it is back within both; kept over its own
    /// for too long, it is closed (0x96). Picks up changed limits first.
    fn charge(&mut self, size: usize) -> Option<End> {
        let epoch = self.state.throttle_epoch();
        if epoch != self.throttle_epoch {
            self.throttle_epoch = epoch;
            if let Some(limits) = self.session.lock().take_device_limits() {
                self.access.identity.device_limits = limits;
            }
            let policy = self
                .state
                .throttle_policy()
                .with(&self.access.identity.device_limits);
            let limiter = self.limiter.get_or_insert_with(Box::default);
            match limiter.own.as_mut() {
                Some(_) if policy.is_off() => limiter.own = None,
                Some(t) => t.set_policy(policy, mono_us()),
                None => limiter.own = Throttle::new(policy, mono_us()),
            }
        }
        // The tenant's shared rate counts too: a connection of a tenant that limits
        // packets gets a limiter even without limits of its own.
        let tenant = &self.access.identity.tenant.rates;
        if self.limiter.is_none() && !tenant.limits_packets() {
            return None;
        }
        let limiter = self.limiter.get_or_insert_with(Box::default);
        let (own, shared) = limiter.charge(size, self.conn.buffered() > 0, tenant);
        let own_wait = match own {
            Verdict::Go => Duration::ZERO,
            Verdict::Pause(wait) => {
                self.state.stats.throttled.fetch_add(1, Ordering::Relaxed);
                wait
            }
            Verdict::Disconnect => {
                self.state
                    .stats
                    .rate_limit_disconnects
                    .fetch_add(1, Ordering::Relaxed);
                return Some(End::Failed(BrokerError::protocol(
                    ReasonCode::MessageRateTooHigh,
                    "kept over the connection's rate limit",
                )));
            }
        };
        if !shared.is_zero() {
            self.state
                .stats
                .tenant_throttled
                .fetch_add(1, Ordering::Relaxed);
        }
        let wait = own_wait.max(shared);
        if !wait.is_zero() && self.pause.is_none() {
            self.pause = Some(Box::pin(async move {
                tokio::time::sleep(wait).await;
                // Not a subscriber's backpressure: no run share to grant after it.
                0
            }));
        }
        None
    }

    async fn finish(&mut self, end: End) {
        let reason = match &end {
            End::TakenOver => Some(ReasonCode::SessionTakenOver),
            End::Kicked(code) => Some(*code),
            End::Shutdown => Some(ReasonCode::ServerShuttingDown),
            End::KeepAlive => Some(ReasonCode::KeepAliveTimeout),
            End::Failed(e) => e.disconnect_reason(),
            End::Disconnect { .. } | End::Closed => None,
        };
        match &end {
            End::Failed(e) => {
                if matches!(e, BrokerError::WriteTimeout) {
                    self.state
                        .stats
                        .write_timeouts
                        .fetch_add(1, Ordering::Relaxed);
                }
                tracing::info!(client_id = %self.session.key.client_id, error = %e, "closing connection")
            }
            End::KeepAlive => {
                tracing::info!(client_id = %self.session.key.client_id, "keep-alive timeout")
            }
            _ => {
                tracing::debug!(client_id = %self.session.key.client_id, "disconnected")
            }
        }
        if let (Some(code), true) = (reason, self.conn.protocol().is_v5()) {
            let mut disconnect = Disconnect::new(code);
            if let End::Failed(e) = &end {
                // Protocol text only: errors never carry credentials or payloads.
                disconnect.properties.reason_string = Some(e.to_string());
            }
            let max = self.neg.client_max_packet as usize;
            let _ = self.conn.queue_within(Packet::Disconnect(disconnect), max);
        }
        self.conn.close().await;
        let end_name = match &end {
            End::Disconnect { with_will: false } => "client disconnected".to_owned(),
            End::Disconnect { with_will: true } => "client disconnected with will".to_owned(),
            End::Closed => "connection closed by the client".to_owned(),
            End::KeepAlive => "keep-alive timeout".to_owned(),
            End::TakenOver => "session taken over".to_owned(),
            End::Kicked(code) => format!("kicked ({code})"),
            End::Shutdown => "broker shutting down".to_owned(),
            End::Failed(e) => format!("closed: {e}"),
        };
        let departure = match end {
            End::Disconnect { with_will: false } => Departure::Clean,
            End::TakenOver => Departure::TakenOver,
            End::Shutdown => Departure::Shutdown,
            _ => Departure::Abnormal,
        };
        let now_ms = unix_ms();
        let publishes = !matches!(departure, Departure::Clean | Departure::Shutdown);
        let will = self
            .will
            .take()
            .filter(|_| publishes)
            .map(|w| {
                let delay = w.properties.will_delay_interval.unwrap_or(0);
                (Message::from_will(*w, self.session.id, now_ms), delay)
            })
            .filter(|(m, _)| self.state.admission.will_allowed(&mut self.access, m))
            .map(|(message, delay)| crate::session::table::Will {
                message,
                delay,
                // Checked again when it is published (after its delay, the rules may
                // have changed).
                access: Some(Box::new(crate::security::auth::Access::new(
                    &self.state.auth,
                    self.access.identity.clone(),
                    self.access.client_id.clone(),
                ))),
            });
        let a = &self.access;
        self.state.audit(
            "client.disconnect",
            format!(
                "{} client {:?}: {}{}",
                a.identity.describe(),
                crate::security::auth::clip(&a.client_id),
                end_name,
                if a.denied > 0 {
                    format!(
                        "; {} messages or subscriptions refused by the ACL",
                        a.denied
                    )
                } else {
                    String::new()
                }
            ),
        );
        self.state
            .detach(&self.session, self.generation, departure, will);
        self.state.stats.connections.fetch_sub(1, Ordering::Relaxed);
        self.state.stats.connections_by_transport[self.transport.index()]
            .fetch_sub(1, Ordering::Relaxed);
        self.access
            .identity
            .tenant
            .counters
            .connected
            .fetch_sub(1, Ordering::Relaxed);
    }
}
