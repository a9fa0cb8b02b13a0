//! A connected client. [`ClientCore`] is one connection's MQTT protocol logic as a state
//! machine, in the style of quinn-proto. [`ClientCore::handle`] takes an [`Event`] (bytes were read, the session
//! queue woke it, a store write finished, a pause or the keep-alive timer ended) and the
//! time it happened, and answers by encoding packets into its [`Framing`]'s write buffer,
//! asking for a pause ([`ClientCore::take_pause`]) or ending ([`End`]). It never touches
//! the socket, never awaits and never reads a clock; the shell (`shell`, [`Client`]) does all
//! three and feeds the results back in.
//!
//! What the core does share with the rest of the broker is in memory: its session (queue,
//! in-flight, subscriptions), the router it publishes into and the store's write queue,
//! whose completions come back as [`Event::AckStored`] and [`Event::HeldStored`].
//!
//! Each event is handled in two steps: the event itself (handle the packets one read
//! brought, release acknowledgements, …), then one *pass*: stop if the session was taken
//! over or kicked, encode what the session queue holds within the window, and submit the
//! pass's acknowledgement writes as one request.

//! Inside the core: `inbound` handles packets from the client, `outbound` encodes
//! deliveries, `acks` orders acknowledgements behind the store, `replay` walks retained
//! messages for new subscriptions, `keep_alive` is the keep-alive rule and `departure` the
//! end of the connection.

mod acks;
mod aliases;
mod departure;
mod inbound;
mod keep_alive;
mod keep_alive_timers;
mod outbound;
mod replay;
mod shell;

#[cfg(test)]
mod core_tests;

pub(crate) use keep_alive_timers::KeepAliveTimers;
pub(crate) use shell::{Client, ClientTask};

use std::collections::VecDeque;
use std::num::NonZeroU16;
use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use messs_codec::{Connect, Packet, ReasonCode, Will};
use messs_storage::StorageError;

use crate::admission::{Charge, ConnectionRates, PacketCost};
use crate::clock::Now;
use crate::config::LimitsConfig;
use crate::error::BrokerError;
use crate::router::TenantRoutes;
use crate::security::auth::Access;
use crate::session::table::Attached;
use crate::session::{Session, DRAINING_MS};
use crate::state::BrokerState;
use crate::transport::framing::Framing;
use acks::PendingAcks;
use keep_alive::{KeepAlive, KeepAliveVerdict};
use outbound::Held;
use replay::Replay;

/// Most deliveries encoded per pass before the batch is flushed.
const MAX_BATCH: usize = 256;
/// Work a client may do between two yields to the scheduler (a packet counts one, each
/// session a PUBLISH is queued for one more). A socket that always has data never makes the
/// task wait, so without this a flooding client would keep its worker for as long as
/// tokio's own budget allows (128 reads: thousands of messages), and a client whose
/// messages fan out widely would get longer turns than everyone else.
const PASS_WORK: u32 = 16384;
/// After a pause of `d`, for `d / RUN_SHARE_DIVISOR`, a publisher is paused again only for a
/// subscriber that is visibly draining (it took from its queue within `DRAINING_MS`): so
/// subscribers that do not read get at most ~90% of a publisher's time, while one that
/// keeps up can still hold it back instead of overflowing (the burst right after a long
/// pause is exactly when a reading subscriber's queue is fullest).
const RUN_SHARE_DIVISOR: u64 = 9;

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
    /// The terms of `connect` with the server's `keep_alive`, starting at `now`.
    pub(crate) fn new(
        connect: &Connect,
        keep_alive: u16,
        limits: &LimitsConfig,
        now: tokio::time::Instant,
    ) -> Self {
        let p = &connect.properties;
        let client_receive = p.receive_maximum.map_or(u16::MAX, NonZeroU16::get);
        Negotiated {
            keep_alive: KeepAlive::new(
                (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500)),
                now,
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

/// Why a connection ended.
#[derive(Debug)]
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

/// What happened to a connection, as the shell reports it to the core.
#[derive(Debug)]
pub(crate) enum Event {
    /// The connection begins (a resumed session's in-flight messages are sent again).
    Start,
    /// Bytes were appended to the read buffer.
    Received,
    /// The peer closed its side of the stream.
    PeerClosed,
    /// The shell yielded to the scheduler as asked ([`Wants::resume`]): go on with what is
    /// buffered or owed.
    Resumed,
    /// The pause the core asked for is over after `lasted_ms` milliseconds.
    PauseOver { lasted_ms: u64 },
    /// The writes the first waiting acknowledgement needed finished.
    AckStored(Result<(), StorageError>),
    /// The writes held deliveries needed finished.
    HeldStored(Result<(), StorageError>),
    /// The session's queue woke the connection (a message, or a kick).
    Woken,
    /// The keep-alive timer fired. `input_held`: the shell did not read what the client
    /// may have sent (a write to it is blocked and its output is past its byte cap, see
    /// `ClientCore::may_read_while_writing`), so a silence is the broker's doing.
    KeepAliveTimer { input_held: bool },
}

/// A pause of reading the core asked for; the shell waits and reports
/// [`Event::PauseOver`].
pub(crate) enum PauseRequest {
    /// Until `session`'s queue is below its soft limit, the session goes offline, `deadline`
    /// passes or it makes no progress for `stall` (see `Session::wait_for_space`).
    ForSubscriber {
        session: Arc<Session>,
        deadline: tokio::time::Instant,
        stall: Duration,
    },
    /// For this long: a rate limit (not a subscriber: no run share follows it).
    Throttled(Duration),
}

/// A pause of reading, from the core's side.
enum Pause {
    /// Asked for, not yet taken by the shell.
    Asked(PauseRequest),
    /// The shell is waiting it out.
    Waiting,
}

/// What the core waits for, so the shell knows which sources to listen to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Wants {
    /// Bytes from the socket.
    pub(crate) read: bool,
    /// A turn after yielding to the scheduler ([`Event::Resumed`]).
    pub(crate) resume: bool,
    /// The first waiting acknowledgement's writes ([`Event::AckStored`]).
    pub(crate) ack_stored: bool,
    /// Held deliveries' writes ([`Event::HeldStored`]).
    pub(crate) held_stored: bool,
}

/// A connected client's protocol state.
pub(crate) struct ClientCore {
    state: Arc<BrokerState>,
    /// The connection's read and write buffers; the shell moves their bytes.
    pub(crate) frames: Framing,
    /// The listener's transport (per-transport connection gauge).
    transport: crate::config::Transport,
    session: Arc<Session>,
    generation: u64,
    session_present: bool,
    neg: Negotiated,
    /// Boxed: most clients have none, and it is only read at the end.
    will: Option<Box<Will>>,
    /// Topic aliases the client defined (inbound) and the ones we defined (outbound).
    /// Boxed on first use (most clients use no aliases; an idle connection stays small:
    /// a `None` is 8 bytes, an empty `HashMap` 48).
    in_aliases: Option<Box<aliases::Inbound>>,
    out_aliases: Option<Box<aliases::Outbound>>,
    /// Set while reading is paused (see `PauseRequest`): packets already read wait behind
    /// it. Boxed: pauses are rare, and this is in every idle connection.
    pause: Option<Box<Pause>>,
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
    held: Option<Box<Held>>,
    /// Who the client is and what its ACL allows. Boxed: one pointer in every connection.
    access: Box<Access>,
    /// What the rate limits have charged this connection (see `Admission::charge`).
    rates: ConnectionRates,
}

impl ClientCore {
    /// The core of a connection accepted at `now`: `frames` may already hold packets the
    /// client sent right behind its CONNECT.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        state: Arc<BrokerState>,
        frames: Framing,
        attached: Attached,
        neg: Negotiated,
        will: Option<Will>,
        access: Access,
        transport: crate::config::Transport,
        now: Now,
    ) -> Self {
        let will = will.map(Box::new);
        let routes = state.router.tenant(&attached.session.key.tenant);
        state.stats.connections.fetch_add(1, Ordering::Relaxed);
        state.stats.connections_by_transport[transport.index()].fetch_add(1, Ordering::Relaxed);
        state
            .stats
            .connections_total
            .fetch_add(1, Ordering::Relaxed);
        access
            .identity
            .tenant
            .counters
            .connected
            .fetch_add(1, Ordering::Relaxed);
        let pipelined = frames.buffered() > 0;
        let rates = state.admission.rates_for(&access, now);
        ClientCore {
            rates,
            state,
            frames,
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
            routes,
            acks: None,
            input_held: false,
            held: None,
            access: Box::new(access),
        }
    }

    /// Handles `event`, which happened at `now`, then makes one pass (see the module
    /// header). `Break` when the connection should end.
    pub(crate) fn handle(&mut self, event: Event, now: Now) -> ControlFlow<End> {
        match self.on_event(event, now) {
            Ok(()) => self.pass(now),
            Err(end) => ControlFlow::Break(end),
        }
    }

    fn on_event(&mut self, event: Event, now: Now) -> Result<(), End> {
        match event {
            Event::Start => {
                if self.session_present {
                    // Subscriptions from before this connection (maybe from before a rule
                    // change).
                    self.recheck_subscriptions();
                    self.resend_inflight(now).map_err(End::Failed)?;
                }
            }
            Event::Received => self.process_input(now)?,
            Event::PeerClosed => return Err(End::Closed),
            Event::Resumed => {
                self.pass_work = 0;
                if self.input_more {
                    self.process_input(now)?;
                }
            }
            Event::PauseOver { lasted_ms } => {
                self.pause = None;
                self.pause_allowed_at = now.mono_ms() + lasted_ms / RUN_SHARE_DIVISOR;
                // Packets already read wait behind the pause; time spent paused is the
                // broker's doing, so it also restarts the keep-alive clock.
                if self.neg.keep_alive.is_on() {
                    self.neg.keep_alive.on_input(now.instant);
                }
                self.process_input(now)?;
            }
            Event::AckStored(done) => {
                self.release_acks(Some(done)).map_err(End::Failed)?;
                if self.input_held && !self.acks_full() {
                    self.process_input(now)?;
                }
            }
            Event::HeldStored(written) => {
                written
                    .map_err(BrokerError::Storage)
                    .and_then(|()| self.write_held(now))
                    .map_err(End::Failed)?;
            }
            Event::Woken => {}
            Event::KeepAliveTimer { input_held } => {
                // Not reading is the broker's doing while paused (a rate limit can hold a
                // client back for longer than its keep-alive), while packets already read
                // wait for the store or for the next pass, or while the shell holds the
                // client's input back behind a blocked write.
                let held_back =
                    self.is_paused() || self.input_held || self.input_more || input_held;
                if self.neg.keep_alive.on_timer(now.instant, held_back) == KeepAliveVerdict::Expired
                {
                    return Err(End::KeepAlive);
                }
            }
        }
        Ok(())
    }

    /// Stops for a kick, then encodes what the session queue holds and submits the pass's
    /// bookkeeping writes.
    fn pass(&mut self, now: Now) -> ControlFlow<End> {
        // Takeover and shutdown arrive as a kick plus the queue's wake-up, so an idle
        // connection waits on one signal. Checked before draining: a connection whose
        // session was taken over must not take its deliveries.
        match self.session.kicked(self.generation) {
            Some(ReasonCode::ServerShuttingDown) => return ControlFlow::Break(End::Shutdown),
            Some(ReasonCode::SessionTakenOver) => return ControlFlow::Break(End::TakenOver),
            Some(code) => return ControlFlow::Break(End::Kicked(code)),
            None => {}
        }
        if let Err(e) = self.drain_outbox(now) {
            return ControlFlow::Break(End::Failed(e));
        }
        if self.session.is_durable() {
            // This pass's acknowledgement deletes and in-flight ids, as one request.
            self.session.lock().flush_deferred();
        }
        ControlFlow::Continue(())
    }

    /// What the core waits for now.
    pub(crate) fn wants(&self) -> Wants {
        let paused = self.is_paused();
        Wants {
            read: !paused && !self.input_more && !self.input_held,
            resume: !paused && (self.replay_more || self.input_more || self.drain_more),
            ack_stored: self.ack_waiting(),
            held_stored: self.held.is_some(),
        }
    }

    /// The pause the core asked for, once: the shell waits it out and reports
    /// [`Event::PauseOver`].
    pub(crate) fn take_pause(&mut self) -> Option<PauseRequest> {
        match self.pause.as_deref_mut() {
            Some(pause @ Pause::Asked(_)) => match std::mem::replace(pause, Pause::Waiting) {
                Pause::Asked(request) => Some(request),
                Pause::Waiting => None,
            },
            _ => None,
        }
    }

    /// When the keep-alive timer should fire next (`None`: the client has no keep-alive).
    pub(crate) fn keep_alive_deadline(&self) -> Option<tokio::time::Instant> {
        self.neg
            .keep_alive
            .is_on()
            .then(|| self.neg.keep_alive.deadline())
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
    fn refresh_access(&mut self) {
        if self.access.refresh(&self.state.auth) {
            self.recheck_subscriptions();
        }
    }

    /// Pauses reading after a publish pushed a subscriber's queue past its soft limit —
    /// unless the publisher was paused too recently and the subscriber is not draining
    /// (see `RUN_SHARE_DIVISOR`).
    fn pause_for(&mut self, session: Arc<Session>, now: Now) {
        if self.is_paused() || session.id == self.session.id {
            return;
        }
        let now_ms = now.mono_ms();
        if self.pause_allowed_at > 0
            && now_ms < self.pause_allowed_at
            && !session.drained_within_at(DRAINING_MS, now_ms)
        {
            return;
        }
        let limits = &self.state.config.limits;
        self.pause(PauseRequest::ForSubscriber {
            session,
            deadline: now.instant + Duration::from_millis(limits.backpressure_wait_ms),
            stall: Duration::from_millis(limits.stall_timeout_ms),
        });
    }

    /// Whether reading is paused.
    fn is_paused(&self) -> bool {
        self.pause.is_some()
    }

    /// Stops reading until the shell reports the pause over.
    fn pause(&mut self, request: PauseRequest) {
        self.pause = Some(Box::new(Pause::Asked(request)));
    }

    /// Handles the complete packets in the read buffer, stopping early if a publish pauses
    /// the client (the rest stay buffered until the pause ends) or `PASS_WORK` is reached
    /// (the rest wait until the client has yielded).
    fn process_input(&mut self, now: Now) -> Result<(), End> {
        self.rates.set_now(now);
        self.input_more = false;
        self.input_held = false;
        while !self.is_paused() {
            if self.acks_full() {
                self.input_held = true;
                return Ok(());
            }
            if self.pass_work >= PASS_WORK {
                self.input_more = true;
                return Ok(());
            }
            self.pass_work += 1;
            let before = self.frames.buffered();
            let packet = match self.frames.next_packet() {
                Ok(Some(packet)) => packet,
                Ok(None) => return Ok(()),
                Err(e) => return Err(End::Failed(e.into())),
            };
            // Only a whole control packet restarts the keep-alive clock [MQTT-3.1.2-22]: a
            // client trickling one byte of a packet at a time is silent.
            if self.neg.keep_alive.is_on() {
                self.neg.keep_alive.on_input(now.instant);
            }
            // Every packet pays its bytes; these count as messages too. (Acknowledgements
            // once paid nothing, and carried 60 KB of user properties each past a bytes
            // rate: the outside audit's finding.)
            let message = matches!(
                packet,
                Packet::Publish(_)
                    | Packet::Subscribe(_)
                    | Packet::Unsubscribe(_)
                    | Packet::PingReq
            );
            // Charged before it is handled: one that breaks the limit for good is refused.
            let cost = PacketCost {
                message,
                size: before.saturating_sub(self.frames.buffered()),
                more_buffered: self.frames.buffered() > 0,
            };
            let charge = self
                .state
                .admission
                .charge(&mut self.rates, &mut self.access, &self.session, cost, now)
                .map_err(End::Failed)?;
            match self.handle_packet(packet, now) {
                Ok(None) => {}
                Ok(Some(end)) => return Err(end),
                Err(e) => return Err(End::Failed(e)),
            }
            if let Charge::Pause(wait) = charge {
                if !self.is_paused() {
                    self.pause(PauseRequest::Throttled(wait));
                }
            }
        }
        Ok(())
    }
}
