//! The I/O shell of a connected client: one task whose `select!` loop waits on the socket,
//! the session queue, the store, a pause and the keep-alive timer, reads the clock once per
//! event, feeds the event to the [`ClientCore`], starts the pause it asks for, and writes
//! what it encoded with one flush per pass.

use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use messs_codec::Will;
use tokio::time::Sleep;

use super::{acks, outbound, ClientCore, End, Event, Negotiated, PauseRequest};
use crate::clock::Now;
use crate::error::BrokerError;
use crate::security::auth::Access;
use crate::session::table::Attached;
use crate::state::BrokerState;
use crate::transport::connection::{Connection, Socket, Transport};

/// Waits for the first acknowledgement's writes (the branch is armed only when one waits).
async fn front_ack(
    acks: &mut Option<Box<acks::PendingAcks>>,
) -> Result<(), messs_storage::StorageError> {
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

/// A paused publisher's wait, boxed once per pause; it yields the pause's length in
/// milliseconds.
type PauseWait = Pin<Box<dyn std::future::Future<Output = u64> + Send>>;

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
    /// Fires at (or after) the core's keep-alive deadline; reset lazily when it fires
    /// early, so packets do not touch the timer wheel.
    keep_alive_timer: Option<Pin<Box<Sleep>>>,
    /// The pause the core asked for, while it lasts.
    pause: Option<PauseWait>,
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
        let keep_alive_timer = core
            .keep_alive_deadline()
            .map(|at| Box::pin(tokio::time::sleep_until(at)));
        Client {
            core,
            socket,
            keep_alive_timer,
            pause: None,
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

    /// The keep-alive timer fired: unless the core ends the connection, it fires again at
    /// the (possibly moved) deadline.
    fn keep_alive_fired(&mut self) -> ControlFlow<End> {
        self.feed(Event::KeepAliveTimer)?;
        if let (Some(t), Some(at)) = (
            self.keep_alive_timer.as_mut(),
            self.core.keep_alive_deadline(),
        ) {
            t.as_mut().reset(at);
        }
        ControlFlow::Continue(())
    }

    async fn event_loop(&mut self) -> End {
        if let ControlFlow::Break(end) = self.feed(Event::Start) {
            return end;
        }
        loop {
            let queued = self.core.frames.pending_out();
            let flushed = self.socket.flush(&mut self.core.frames).await;
            if queued > 0 {
                let written = queued - self.core.frames.pending_out();
                self.core
                    .state
                    .stats
                    .bytes_sent
                    .fetch_add(written as u64, Ordering::Relaxed);
            }
            if let Err(e) = flushed {
                return End::Failed(e);
            }
            let wants = self.core.wants();
            let paused = self.pause.is_some();
            // Each event is fed where it happens: nothing of it lives across the next wait,
            // so it takes no room in the future every idle connection holds.
            let flow = tokio::select! {
                biased;
                written = held_written(&mut self.core.held), if wants.held_stored => {
                    self.feed(Event::HeldStored(written))
                }
                done = front_ack(&mut self.core.acks), if wants.ack_stored => {
                    self.feed(Event::AckStored(done))
                }
                lasted_ms = pause_over(&mut self.pause), if paused => {
                    self.pause = None;
                    self.feed(Event::PauseOver { lasted_ms })
                }
                // More buffered input or retained replay: let other tasks run first.
                _ = tokio::task::yield_now(), if wants.resume => self.feed(Event::Resumed),
                read = self.socket.fill(&mut self.core.frames), if wants.read => match read {
                    Ok(0) => self.feed(Event::PeerClosed),
                    Ok(n) => {
                        self.core.state.stats.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
                        self.feed(Event::Received)
                    }
                    Err(e) => return End::Failed(BrokerError::from(e)),
                },
                // Always armed (a kick comes this way); with the window full, a wake-up for new
                // messages costs one pass, since only an empty queue's first message wakes.
                _ = self.core.session.queued() => self.feed(Event::Woken),
                _ = expiry(&mut self.keep_alive_timer), if self.keep_alive_timer.is_some() => {
                    self.keep_alive_fired()
                }
            };
            if let ControlFlow::Break(end) = flow {
                return end;
            }
        }
    }

    async fn finish(&mut self, end: End) {
        self.core.farewell(&end);
        self.socket.close(&mut self.core.frames).await;
        let now = self.now();
        self.core.leave(end, now);
    }
}
