//! The CONNECT handshake of one socket: read CONNECT within the connect timeout and the
//! pre-auth size limit, then (in `accept`) check it, settle the client's identity and
//! limits, attach the session and send CONNACK — all under one deadline — and hand over to
//! the client loop.

mod accept;
mod enhanced;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use messs_codec::{ConnAck, ConnAckProperties, DecodeError, Packet, Protocol, ReasonCode};

use crate::client::Client;
use crate::config::ListenerConfig;
use crate::connection::{Connection, Transport};
use crate::error::BrokerError;
use crate::state::BrokerState;

/// The tenant every client belongs to until the tenancy issue adds real ones.
pub const DEFAULT_TENANT: &str = "default";

/// A client certificate from the TLS handshake: who it names, or why it names nobody.
pub(crate) type PeerCert = Option<Result<crate::tls::CertLogin, String>>;

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

/// Serves one accepted socket: the handshake runs in this task; a connected client then
/// gets a task of its own, so an idle connection keeps only the client loop's small state,
/// not the handshake's. `slot` is given back when the handshake ends; `permit` (a
/// connection slot) lives as long as the connection.
pub(crate) async fn serve<S, P>(
    state: Arc<BrokerState>,
    stream: S,
    peer: SocketAddr,
    listener: Arc<ListenerConfig>,
    slot: HandshakeSlot,
    permit: P,
) where
    S: Transport + 'static,
    P: Send + 'static,
{
    let deadline = tokio::time::Instant::now() + state.config.limits.connect_timeout();
    serve_within(
        state,
        stream,
        peer,
        listener,
        deadline,
        None,
        (slot, permit),
    )
    .await;
}

/// Serves one accepted TCP socket of a TLS listener: the TLS handshake runs in this task
/// and counts against the connect timeout, like the CONNECT that follows it.
pub(crate) async fn serve_tls<P>(
    state: Arc<BrokerState>,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    listener: Arc<ListenerConfig>,
    tls: Arc<crate::tls::TlsListener>,
    slot: HandshakeSlot,
    permit: P,
) where
    P: Send + 'static,
{
    let deadline = tokio::time::Instant::now() + state.config.limits.connect_timeout();
    let accepted = tokio::select! {
        _ = state.shutdown.cancelled() => return,
        a = tokio::time::timeout_at(deadline, tls.acceptor.accept(tcp)) => a,
    };
    let stream = match accepted {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            state
                .stats
                .tls_handshake_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            state
                .stats
                .tls_handshake_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(%peer, "TLS handshake did not finish within the connect timeout");
            return;
        }
    };
    let cert = stream
        .get_ref()
        .1
        .peer_certificates()
        .map(|chain| state.auth.client_cas.login(chain, tls.identity()));
    serve_within(
        state,
        stream,
        peer,
        listener,
        deadline,
        cert,
        (slot, permit),
    )
    .await;
}

async fn serve_within<S, P>(
    state: Arc<BrokerState>,
    stream: S,
    peer: SocketAddr,
    listener: Arc<ListenerConfig>,
    deadline: tokio::time::Instant,
    cert: PeerCert,
    (slot, permit): (HandshakeSlot, P),
) where
    S: Transport + 'static,
    P: Send + 'static,
{
    let tasks = state.tasks.clone();
    let client = handshake(state, stream, peer, listener, deadline, cert).await;
    drop(slot);
    if let Some(client) = client {
        let client = Box::new(client);
        tasks.spawn(async move {
            client.run().await;
            drop(permit);
        });
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
