//! The CONNECT handshake of one socket: read CONNECT within the connect timeout and the
//! pre-auth size limit, then (in `accept`) check it, settle the client's identity and
//! limits, attach the session and send CONNACK — all under one deadline — and hand over to
//! the client loop.

mod accept;
mod enhanced;
mod login;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use messs_codec::{ConnAck, ConnAckProperties, DecodeError, Packet, Protocol, ReasonCode};

use crate::client::{Client, ClientTask};
use crate::config::ListenerConfig;
use crate::error::BrokerError;
use crate::state::BrokerState;
use crate::transport::connection::{Connection, Transport};

/// The tenant every client belongs to until the tenancy issue adds real ones.
pub const DEFAULT_TENANT: &str = "default";

/// A client certificate from the TLS handshake: who it names, or why it names nobody.
pub(crate) type PeerCert = Option<Result<crate::transport::tls::CertLogin, String>>;

/// A place among the handshakes allowed at once (`rate_limits.max_handshakes`), given back
/// when the handshake ends, whatever its outcome.
pub(crate) struct HandshakeSlot {
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
    stats: Arc<crate::Stats>,
}

impl HandshakeSlot {
    pub(crate) fn new(
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
        stats: Arc<crate::Stats>,
    ) -> Self {
        stats
            .handshakes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        HandshakeSlot {
            _permit: permit,
            stats,
        }
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        self.stats
            .handshakes
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Held back between the CONNACK and the client loop: a 0-RTT QUIC connection's handshake,
/// so nothing after CONNECT is read from early data (docs/TRANSPORTS.md). Every other
/// transport passes a ready future.
pub(crate) type Gate = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Serves one accepted TCP socket: the TLS handshake (a `tls` or `wss` listener) and the
/// WebSocket upgrade (`ws`, `wss`) run in this task and count against the connect timeout,
/// like the CONNECT that follows. A connected client then gets a task of its own, so an
/// idle connection keeps only the client loop's small state, not the handshake's. `slot`
/// is given back when the handshake ends; `permit` (a connection slot) lives as long as the
/// connection.
pub(crate) async fn serve<P>(
    state: Arc<BrokerState>,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    listener: Arc<ListenerConfig>,
    tls: Option<Arc<crate::transport::tls::TlsListener>>,
    slot: HandshakeSlot,
    permit: P,
) where
    P: Send + 'static,
{
    let deadline = tokio::time::Instant::now() + state.config.limits.connect_timeout();
    let held = (slot, permit);
    let Some(tls) = tls else {
        then_mqtt(state, tcp, peer, listener, deadline, None, held).await;
        return;
    };
    let accepted = tokio::select! {
        _ = state.shutdown.cancelled() => return,
        a = tokio::time::timeout_at(deadline, tls.acceptor.accept(tcp)) => a,
    };
    let failures = &state.stats.tls_handshake_failures;
    let Some(stream) = step(accepted, failures, peer, "TLS handshake") else {
        return;
    };
    let cert = stream
        .get_ref()
        .1
        .peer_certificates()
        .map(|chain| state.auth.client_cas.login(chain, tls.identity()));
    then_mqtt(state, stream, peer, listener, deadline, cert, held).await;
}

/// The outcome of a transport's handshake (TLS, WebSocket upgrade, QUIC) under the connect
/// deadline: its stream, or `None` once the failure is counted in `failures` and logged.
pub(crate) fn step<T, E: std::fmt::Display>(
    outcome: Result<Result<T, E>, tokio::time::error::Elapsed>,
    failures: &std::sync::atomic::AtomicU64,
    peer: SocketAddr,
    what: &str,
) -> Option<T> {
    let why = match outcome {
        Ok(Ok(stream)) => return Some(stream),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "did not finish within the connect timeout".to_owned(),
    };
    failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::debug!(%peer, "{what} failed: {why}");
    None
}

/// MQTT over a TCP or TLS stream: directly, or for a `ws` or `wss` listener after the
/// WebSocket upgrade (within the deadline).
async fn then_mqtt<S, P>(
    state: Arc<BrokerState>,
    stream: S,
    peer: SocketAddr,
    listener: Arc<ListenerConfig>,
    deadline: tokio::time::Instant,
    cert: PeerCert,
    held: (HandshakeSlot, P),
) where
    S: Transport + 'static,
    P: Send + 'static,
{
    let ready = std::future::ready(());
    if !listener.transport.is_websocket() {
        serve_within(state, stream, peer, listener, deadline, cert, ready, held).await;
        return;
    }
    let upgraded = tokio::select! {
        _ = state.shutdown.cancelled() => return,
        u = tokio::time::timeout_at(deadline, crate::transport::ws::upgrade(stream, &listener.websocket)) => u,
    };
    let failures = &state.stats.websocket_upgrade_failures;
    let Some(ws) = step(upgraded, failures, peer, "WebSocket upgrade") else {
        return;
    };
    serve_within(state, ws, peer, listener, deadline, cert, ready, held).await;
}

/// Runs the MQTT handshake over a ready byte stream, then (once `gate` opens) the client
/// loop in a task of its own.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve_within<S, G, P>(
    state: Arc<BrokerState>,
    stream: S,
    peer: SocketAddr,
    listener: Arc<ListenerConfig>,
    deadline: tokio::time::Instant,
    cert: PeerCert,
    gate: G,
    (slot, permit): (HandshakeSlot, P),
) where
    S: Transport + 'static,
    G: std::future::Future<Output = ()> + Send,
    P: Send + 'static,
{
    let tasks = state.tasks.clone();
    let shutdown = state.shutdown.clone();
    let client = handshake(state, stream, peer, listener, deadline, cert).await;
    let Some(client) = client else {
        return;
    };
    // Shutdown opens the gate: the client loop then sees its kick and says goodbye.
    let opened = tokio::select! {
        _ = shutdown.cancelled() => true,
        g = tokio::time::timeout_at(deadline, gate) => g.is_ok(),
    };
    drop(slot);
    if opened {
        tasks.spawn(ClientTask::new(client, permit));
    } else {
        tracing::debug!(%peer, "handshake not confirmed within the connect timeout");
        tasks.spawn(ClientTask::unconfirmed(client, permit));
    }
}

/// Reads and answers CONNECT; the connected client, or `None` if it was refused or failed.
/// Everything up to the CONNACK, takeover included, happens before one deadline.
async fn handshake<S>(
    state: Arc<BrokerState>,
    stream: S,
    peer: SocketAddr,
    listener: Arc<ListenerConfig>,
    deadline: tokio::time::Instant,
    cert: PeerCert,
) -> Option<Client<S>>
where
    S: Transport,
{
    let limits = &state.config.limits;
    let write_timeout = Duration::from_secs(limits.write_timeout_secs);
    let mut conn = Connection::new(stream, limits.connect_codec_limits(), write_timeout);
    let first = tokio::select! {
        _ = state.shutdown.cancelled() => return None,
        first = tokio::time::timeout_at(deadline, read_connect(&mut conn)) => first,
    };
    let connect = match first {
        Err(_) => {
            tracing::debug!(%peer, "no CONNECT within the connect timeout");
            return None;
        }
        Ok(Ok(Some(Packet::Connect(c)))) => c,
        Ok(Ok(Some(other))) => {
            // [MQTT-3.1.0-1]: the first packet must be CONNECT.
            tracing::debug!(%peer, packet = other.name(), "first packet is not CONNECT");
            conn.close().await;
            return None;
        }
        Ok(Ok(None)) => return None,
        Ok(Err(BrokerError::Decode(DecodeError::UnsupportedProtocol { name, level }))) => {
            tracing::debug!(%peer, %name, level, "unsupported protocol");
            if name != "MQTT" && name != "MQIsdp" {
                // Not MQTT at all: close without a CONNACK [MQTT-3.1.2-1], [MQTT-3.1.4-1].
                conn.close().await;
                return None;
            }
            let protocol = if level == 5 {
                Protocol::V5
            } else {
                Protocol::V3_1_1
            };
            reject(
                &mut conn,
                protocol,
                ReasonCode::UnsupportedProtocolVersion,
                "supported: MQTT 3.1, 3.1.1 and 5.0",
                usize::MAX,
            )
            .await;
            return None;
        }
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "bad CONNECT");
            conn.close().await;
            return None;
        }
    };
    let accepted = tokio::time::timeout_at(
        deadline,
        accept::accept(&state, conn, *connect, peer, &listener, deadline, cert),
    )
    .await;
    match accepted {
        Ok(client) => client,
        Err(_) => {
            tracing::info!(%peer, "handshake did not finish within the connect timeout");
            None
        }
    }
}

/// Reads the first packet, refusing at its first byte anything that is not a CONNECT, so a
/// stray protocol cannot hold the socket open until the connect timeout.
async fn read_connect<S>(conn: &mut Connection<S>) -> Result<Option<Packet>, BrokerError>
where
    S: Transport,
{
    loop {
        if conn.peek_type().is_some_and(|t| t != 1) {
            return Err(BrokerError::protocol(
                ReasonCode::ProtocolError,
                "first packet is not CONNECT [MQTT-3.1.0-1]",
            ));
        }
        if let Some(p) = conn.next_packet()? {
            return Ok(Some(p));
        }
        if conn.fill().await? == 0 {
            return Ok(None);
        }
    }
}

/// Refuses the connection with a CONNACK carrying `code` (and, room permitting in the
/// client's Maximum Packet Size, the reason), then closes it.
async fn reject<S>(
    conn: &mut Connection<S>,
    protocol: Protocol,
    code: ReasonCode,
    why: &str,
    client_max_packet: usize,
) where
    S: Transport,
{
    conn.configure(protocol, messs_codec::Limits::default());
    let ack = ConnAck {
        session_present: false,
        code,
        properties: ConnAckProperties {
            reason_string: Some(why.to_owned()),
            ..ConnAckProperties::default()
        },
    };
    let _ = conn.queue_within(Packet::ConnAck(Box::new(ack)), client_max_packet);
    conn.close().await;
}
