//! The I/O shell of a connected client: its task ([`ClientTask`]) polls the socket, the
//! session's wake-up, the store and a pause in a fixed order, reads the clock once per
//! event, feeds each event to the [`ClientCore`], starts the pause it asks for, and writes
//! what it encoded with one flush per pass.
//!
//! The task is a hand-written future rather than an `async fn` around `select!`: `select!`
//! keeps every branch's future (the socket's readiness, the session's wake-up, a timer)
//! inside every idle connection's task; polled by hand, an idle connection's task holds one
//! pointer to its client, and the client no timer at all (its keep-alive is an entry in
//! the broker's `KeepAliveTimers`, its wake-up a slot in its session).

use std::future::Future;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use messs_codec::Will;
use tokio::time::Sleep;

use super::keep_alive_timers::KeepAliveKey;
use super::{ClientCore, End, Event, Negotiated, PauseRequest};
use crate::clock::Now;
use crate::error::BrokerError;
use crate::security::auth::Access;
use crate::session::table::Attached;
use crate::state::BrokerState;
use crate::transport::connection::{Connection, Socket, Transport};

/// A paused publisher's wait, boxed once per pause; it yields the pause's length in
/// milliseconds.
type PauseWait = Pin<Box<dyn Future<Output = u64> + Send>>;

/// The wait for a pause the core asked for.
fn wait_for(request: PauseRequest, state: &BrokerState) -> PauseWait {
    match request {
        PauseRequest::ForSubscriber {
            session,
            deadline,
            stall,
        } => {
            let stats = state.stats.clone();
            Box::pin(async move {
                let started = tokio::time::Instant::now();
                if session.wait_for_space(deadline, stall).await {
                    stats.subscribers_stalled.fetch_add(1, Ordering::Relaxed);
                }
                u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
            })
        }
        PauseRequest::Throttled(wait) => Box::pin(async move {
            tokio::time::sleep(wait).await;
            // Not a subscriber's backpressure: no run share to grant after it.
            0
        }),
    }
}

/// A connected client: its core and the I/O that drives it.
pub(crate) struct Client<S> {
    core: ClientCore,
    socket: Socket<S>,
    /// The pause the core asked for, while it lasts.
    pause: Option<PauseWait>,
    /// Bounds a write that blocks (see `Socket::poll_flush`): set only while one does.
    write_deadline: Option<Pin<Box<Sleep>>>,
    /// This connection's entry among the keep-alive timers, while it has one.
    keep_alive: Option<KeepAliveKey>,
    /// `Event::Start` was fed.
    started: bool,
    /// The task yielded to the scheduler as the core asked: `Event::Resumed` is next.
    yielded: bool,
}

impl<S> Drop for Client<S> {
    fn drop(&mut self) {
        if let Some(key) = self.keep_alive.take() {
            self.core.state.keep_alives.cancel(key);
        }
    }
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
        let (socket, frames) = conn.into_parts();
        let now = state.sessions.clock().now();
        let core = ClientCore::new(state, frames, attached, neg, will, access, transport, now);
        Client {
            core,
            socket,
            pause: None,
            write_deadline: None,
            keep_alive: None,
            started: false,
            yielded: false,
        }
    }

    /// The time, read once per event.
    fn now(&self) -> Now {
        self.core.state.sessions.clock().now()
    }

    /// Feeds one event to the core and starts the pause it asks for, if any.
    fn feed(&mut self, event: Event) -> ControlFlow<End> {
        let now = self.now();
        let flow = self.core.handle(event, now);
        if let Some(request) = self.core.take_pause() {
            self.pause = Some(wait_for(request, &self.core.state));
        }
        flow
    }

    /// Puts this connection among the keep-alive timers at its core's deadline, if it has
    /// a keep-alive.
    fn schedule_keep_alive(&mut self) {
        if let Some(at) = self.core.keep_alive_deadline() {
            let key = self.core.state.keep_alives.schedule(
                at,
                self.core.session.clone(),
                self.core.generation,
            );
            self.keep_alive = Some(key);
        }
    }

    /// The keep-alive timer fired (its entry is gone): unless the core ends the connection,
    /// it fires again at the (possibly moved) deadline.
    fn keep_alive_fired(&mut self, input_held: bool) -> ControlFlow<End> {
        self.keep_alive = None;
        self.feed(Event::KeepAliveTimer { input_held })?;
        self.schedule_keep_alive();
        ControlFlow::Continue(())
    }

    /// While a write waits for the client to read, the keep-alive still runs
    /// [MQTT-3.1.2-24]: its firing is taken from the session's wake-up (other wake-ups wait
    /// for the write), and what the client sent meanwhile is read and handled first (one
    /// read per firing, and none once its waiting output is past its byte cap: then its
    /// silence is the broker's doing), so a client that pings while it does not read is
    /// alive, and the write timeout is what ends it; one that sends nothing (or never a
    /// whole packet) is closed.
    fn poll_keep_alive_while_writing(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        let generation = self.core.generation;
        if self
            .core
            .session
            .poll_keep_alive_due(cx, generation)
            .is_pending()
        {
            return Poll::Pending;
        }
        let input_held = !self.core.may_read_while_writing();
        if self.core.wants().read && !input_held {
            let read = self.socket.poll_fill(cx, &mut self.core.frames);
            if let Poll::Ready(read) = read {
                if let ControlFlow::Break(end) = self.received(read) {
                    return Poll::Ready(end);
                }
            }
        }
        match self.keep_alive_fired(input_held) {
            ControlFlow::Break(end) => Poll::Ready(end),
            ControlFlow::Continue(()) => Poll::Pending,
        }
    }

    /// Feeds what a read brought: the peer's end, bytes, or the failure.
    fn received(&mut self, read: std::io::Result<usize>) -> ControlFlow<End> {
        match read {
            Ok(0) => self.feed(Event::PeerClosed),
            Ok(n) => {
                self.core
                    .state
                    .stats
                    .bytes_received
                    .fetch_add(n as u64, Ordering::Relaxed);
                self.feed(Event::Received)
            }
            Err(e) => ControlFlow::Break(End::Failed(BrokerError::from(e))),
        }
    }

    /// Runs the client until it should end: flush, then feed the first event that is
    /// ready, and again, until nothing is.
    fn poll_run(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        if !self.started {
            self.started = true;
            self.schedule_keep_alive();
            if let ControlFlow::Break(end) = self.feed(Event::Start) {
                return Poll::Ready(end);
            }
        }
        loop {
            let queued = self.core.frames.pending_out();
            let flushed =
                self.socket
                    .poll_flush(cx, &mut self.core.frames, &mut self.write_deadline);
            if queued > 0 {
                let written = queued - self.core.frames.pending_out();
                self.core
                    .state
                    .stats
                    .bytes_sent
                    .fetch_add(written as u64, Ordering::Relaxed);
            }
            match flushed {
                Poll::Pending => return self.poll_keep_alive_while_writing(cx),
                Poll::Ready(Err(e)) => return Poll::Ready(End::Failed(e)),
                Poll::Ready(Ok(())) => {}
            }
            match self.poll_event(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(ControlFlow::Break(end)) => return Poll::Ready(end),
                Poll::Ready(ControlFlow::Continue(())) => {}
            }
        }
    }

    /// Polls what the core waits for, in this order, and feeds the first that is ready:
    /// the store (held deliveries, then acknowledgements), the pause, a turn after
    /// yielding, the socket, and the session's wake-up (always: a kick and the keep-alive
    /// come that way). Each event is fed where it happens: nothing of it lives across the
    /// next wait.
    ///
    /// A turn after yielding ([`Wants::resume`](super::Wants)) is taken like `select!`'s
    /// `yield_now` branch was: the socket and the wake-up are still polled in the pass
    /// that yields, so a long replay or drain never stops the connection from reading
    /// its client's acknowledgements and PINGREQs, nor from seeing its keep-alive.
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<ControlFlow<End>> {
        let wants = self.core.wants();
        // The yield of the last pass, if it was one: any event fed now ends it.
        let yielded = std::mem::take(&mut self.yielded);
        if wants.held_stored {
            if let Some(held) = self.core.held.as_mut() {
                if let Poll::Ready(written) = Pin::new(&mut held.wait).poll(cx) {
                    return Poll::Ready(self.feed(Event::HeldStored(written)));
                }
            }
        }
        if wants.ack_stored {
            if let Some(acks) = self.core.acks.as_mut() {
                if let Poll::Ready(done) = acks.poll_front_done(cx) {
                    return Poll::Ready(self.feed(Event::AckStored(done)));
                }
            }
        }
        if let Some(pause) = self.pause.as_mut() {
            if let Poll::Ready(lasted_ms) = pause.as_mut().poll(cx) {
                self.pause = None;
                return Poll::Ready(self.feed(Event::PauseOver { lasted_ms }));
            }
        }
        if wants.resume && yielded {
            return Poll::Ready(self.feed(Event::Resumed));
        }
        if wants.read {
            if let Poll::Ready(read) = self.socket.poll_fill(cx, &mut self.core.frames) {
                return Poll::Ready(self.received(read));
            }
        }
        // With the window full, a wake-up for new messages costs one pass, since only an
        // empty queue's first message wakes.
        if let Poll::Ready(wake) = self.core.session.poll_woken(cx, self.core.generation) {
            return Poll::Ready(if wake.keep_alive {
                self.keep_alive_fired(false)
            } else {
                self.feed(Event::Woken)
            });
        }
        if wants.resume {
            // More buffered input, retained replay or deliveries: let other tasks run
            // first. A task that wakes itself while it runs goes to the back of the run
            // queue; the next poll takes the turn.
            self.yielded = true;
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }

    async fn finish(&mut self, end: End) {
        // A client that left a write blocked (or timed out) does not read: its DISCONNECT
        // would wait behind what it did not take, so the socket closes at once.
        let patient =
            self.write_deadline.is_none() && !matches!(end, End::Failed(BrokerError::WriteTimeout));
        self.core.farewell(&end);
        self.socket.close(&mut self.core.frames, patient).await;
        let now = self.now();
        self.core.leave(end, now);
    }
}

/// A connected client's task: runs its [`Client`] until it ends, then says goodbye (boxed:
/// the end of a connection happens once, so its state is no part of an idle connection).
///
/// tokio's task cell around this future is 256 bytes on x86_64 whatever the future's size
/// up to ~110 bytes (its header, trailer and join result take more than the first 128),
/// so the permit lives here, not in the client's box.
pub(crate) struct ClientTask<S, P> {
    stage: Stage<S>,
    /// The connection's place among those allowed (dropped when the task ends).
    _permit: P,
}

enum Stage<S> {
    Running(Box<Client<S>>),
    Ending(Pin<Box<dyn Future<Output = ()> + Send>>),
    Done,
}

// The task never pins its fields (it polls boxed futures only), so it may move.
impl<S, P> Unpin for ClientTask<S, P> {}

impl<S: Transport + 'static, P: Send + 'static> ClientTask<S, P> {
    /// The task of a connected client.
    pub(crate) fn new(client: Client<S>, permit: P) -> Self {
        ClientTask {
            stage: Stage::Running(Box::new(client)),
            _permit: permit,
        }
    }

    /// The task of a client whose connection was never confirmed (a 0-RTT QUIC handshake
    /// that did not complete): nothing after its CONNECT is read, and it leaves as if the
    /// peer had closed the socket.
    pub(crate) fn unconfirmed(client: Client<S>, permit: P) -> Self {
        ClientTask {
            stage: Stage::Ending(Self::ending(Box::new(client), End::Closed)),
            _permit: permit,
        }
    }

    fn ending(mut client: Box<Client<S>>, end: End) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move { client.finish(end).await })
    }
}

impl<S: Transport + 'static, P: Send + 'static> Future for ClientTask<S, P> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            match &mut this.stage {
                Stage::Running(client) => {
                    let Poll::Ready(end) = client.poll_run(cx) else {
                        return Poll::Pending;
                    };
                    if let Stage::Running(client) = std::mem::replace(&mut this.stage, Stage::Done)
                    {
                        this.stage = Stage::Ending(Self::ending(client, end));
                    }
                }
                Stage::Ending(ending) => {
                    if ending.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    this.stage = Stage::Done;
                }
                Stage::Done => return Poll::Ready(()),
            }
        }
    }
}
