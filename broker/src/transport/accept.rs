//! The accept path every listener shares: before any TLS, QUIC or password work, a new
//! connection takes a connection permit and a handshake slot, and its address passes the
//! operator's bans and the per-address admission (rate, connections open); a refused
//! socket is closed at once. The TCP accept loop lives here; QUIC's (`quic`) uses the same
//! steps.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::ListenerConfig;
use crate::handshake;
use crate::security::limits::addresses::{AddressRefusal, AddressSlot};
use crate::state::BrokerState;

/// Counts an accept loop as up, for readiness, until it returns.
pub(crate) struct ListenerUp(Arc<BrokerState>);

impl ListenerUp {
    pub(crate) fn new(state: &Arc<BrokerState>) -> Self {
        state.listeners_up.fetch_add(1, Ordering::Relaxed);
        ListenerUp(state.clone())
    }
}

impl Drop for ListenerUp {
    fn drop(&mut self) {
        self.0.listeners_up.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection permit and a handshake slot, taken before each accept so at most
/// `max_connections` sockets are served and `max_handshakes` are in their handshake; `None`
/// once the broker shuts down.
pub(crate) async fn take_slots(
    state: &BrokerState,
    permits: &Arc<Semaphore>,
) -> Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)> {
    let permit = tokio::select! {
        _ = state.shutdown.cancelled() => return None,
        p = permits.clone().acquire_owned() => p.ok()?,
    };
    let handshake = tokio::select! {
        _ = state.shutdown.cancelled() => return None,
        p = state.gate.handshakes.clone().acquire_owned() => p.ok()?,
    };
    Some((permit, handshake))
}

/// True (and counted) if the address of a new connection is banned.
pub(crate) fn banned(state: &BrokerState, peer: SocketAddr) -> bool {
    let banned = state
        .gate
        .bans
        .address_banned(peer.ip(), crate::clock::unix_ms())
        .is_some();
    if banned {
        state.stats.refused_banned.fetch_add(1, Ordering::Relaxed);
        tracing::trace!(%peer, "connection refused at accept: banned address");
    }
    banned
}

/// The address's admission (rate, connections open) for a new connection: its place, or
/// `None` (counted) if refused.
pub(crate) fn admit(state: &BrokerState, peer: SocketAddr) -> Option<AddressSlot> {
    match state
        .gate
        .addresses
        .admit(peer.ip(), crate::clock::mono_us())
    {
        Ok(slot) => Some(slot),
        Err(why) => {
            let counter = match why {
                AddressRefusal::Rate => &state.stats.refused_address_rate,
                AddressRefusal::Quota => &state.stats.refused_address_quota,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            tracing::trace!(%peer, ?why, "connection refused at accept");
            None
        }
    }
}

/// Takes its slots before each accept; then the address's bans and admission, which
/// close a refused socket at once, before any TLS or password work. The handshake runs in
/// the connection's own task, never in this loop.
pub(crate) async fn accept_loop(
    state: Arc<BrokerState>,
    listener: TcpListener,
    config: Arc<ListenerConfig>,
    tls: Option<Arc<super::tls::TlsListener>>,
    permits: Arc<Semaphore>,
) {
    let _up = ListenerUp::new(&state);
    loop {
        let Some((permit, handshake)) = take_slots(&state, &permits).await else {
            return;
        };
        let accepted = tokio::select! {
            _ = state.shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Typically EMFILE: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if banned(&state, peer) {
            continue;
        }
        let Some(address) = admit(&state, peer) else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let slot = handshake::HandshakeSlot::new(Some(handshake), state.stats.clone());
        state.tasks.spawn(handshake::serve(
            state.clone(),
            stream,
            peer,
            config.clone(),
            tls.clone(),
            slot,
            (permit, address),
        ));
    }
}
