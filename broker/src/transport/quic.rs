//! MQTT over QUIC (quinn): the endpoint of a `quic` listener, its accept loop, and
//! [`QuicStream`], the bidirectional stream that carries one MQTT connection as the byte
//! stream a `Connection` reads — so a QUIC client meets the same handshake,
//! authentication, ACLs and limits as a TCP one.
//!
//! The conventions are EMQX's (ALPN `mqtt`, UDP 14567), so its QUIC clients work. TLS is
//! the TLS listener's: TLS 1.3, the same certificate and client-certificate check. Clients
//! may move to a new address (connection migration); the session stays. The QUIC idle
//! timeout only has to outlast MQTT's own keep-alive, which closes a silent client after
//! 1.5 times its keep-alive on every transport: see [`idle_timeout`].

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use quinn::crypto::rustls::QuicServerConfig;
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Semaphore;

use super::quic_streams::Closing;
use crate::config::{LimitsConfig, ListenerConfig};
use crate::error::BrokerError;
use crate::handshake::{self, HandshakeSlot};
use crate::state::BrokerState;
use crate::transport::connection::Transport;
use crate::transport::tls::TlsListener;

/// Socket buffers asked for a QUIC listener's UDP socket, each way. The kernel's default
/// (about 200 KiB) overflows when a burst of clients connects at once (each handshake
/// brings and answers several full-size datagrams), and a dropped handshake datagram
/// costs that client a retransmission timeout. Linux caps the request at
/// `net.core.rmem_max` / `wmem_max`; raise those for busy listeners.
const UDP_BUFFER: usize = 4 * 1024 * 1024;

/// Bytes a client may send on one stream before the broker has read them (quinn's default
/// is 1.25 MB). With the connection's window at this times `max_streams`, it is what one
/// QUIC connection can make the broker hold of unread input, like a TCP socket's receive
/// buffer.
const STREAM_WINDOW: u32 = 1024 * 1024;
/// Bytes written to a connection and not yet acknowledged by the client (quinn's default is
/// 10 MB): past it, writes wait, and the write timeout drops a client that never reads.
const SEND_WINDOW: u64 = 2 * 1024 * 1024;

/// Bytes kept of one connection attempt not yet accepted (its first flight is a few
/// datagrams of at most ~1.5 KB), and of all of them together.
const INCOMING_BUFFER: u64 = 64 * 1024;
const INCOMING_BUFFER_TOTAL: u64 = 8 * 1024 * 1024;

/// Binds a listener's UDP socket (before the store opens, so a taken port fails fast).
pub(crate) fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = UdpSocket::bind(addr)?;
    let state = quinn::udp::UdpSocketState::new((&socket).into())?;
    // Best effort: a smaller buffer still works.
    let _ = state.set_recv_buffer_size((&socket).into(), UDP_BUFFER);
    let _ = state.set_send_buffer_size((&socket).into(), UDP_BUFFER);
    tracing::debug!(
        %addr,
        recv = state.recv_buffer_size((&socket).into()).unwrap_or(0),
        send = state.send_buffer_size((&socket).into()).unwrap_or(0),
        "QUIC socket buffers"
    );
    Ok(socket)
}

/// The QUIC idle timeout: a connection with no packets for this long is gone. MQTT's
/// keep-alive closes a silent client after 1.5 times its keep-alive on every transport, so
/// QUIC only needs to outlast the longest keep-alive the broker allows (1.5 times
/// `limits.max_keep_alive_secs`, or of 65,535 s when that is unlimited): it then catches
/// only peers that vanished before or without a keep-alive (keep-alive 0).
pub(crate) fn idle_timeout(limits: &LimitsConfig) -> Duration {
    let longest = match limits.max_keep_alive_secs {
        0 => u16::MAX,
        n => n,
    };
    Duration::from_millis(u64::from(longest) * 1500)
}

/// Builds the endpoint of a bound socket; `pending` is how many connection attempts may
/// wait for the accept loop (`rate_limits.max_handshakes`).
pub(crate) fn endpoint(
    socket: UdpSocket,
    listener: &ListenerConfig,
    tls: &TlsListener,
    limits: &LimitsConfig,
    pending: usize,
) -> Result<quinn::Endpoint, BrokerError> {
    let crypto = tls.quic_crypto(listener.quic.enable_0rtt)?;
    let crypto = QuicServerConfig::try_from(crypto)
        .map_err(|e| BrokerError::Config(format!("quic listener {}: {e}", listener.bind)))?;
    let mut transport = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(idle_timeout(limits))
        .map_err(|e| BrokerError::Config(format!("quic idle timeout: {e}")))?;
    let streams = listener.quic.max_streams;
    transport
        .max_idle_timeout(Some(idle))
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(streams))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(0))
        .stream_receive_window(quinn::VarInt::from_u32(STREAM_WINDOW))
        // At most 64 x 1 MiB: far inside a VarInt.
        .receive_window(quinn::VarInt::from_u32(
            STREAM_WINDOW.saturating_mul(streams),
        ))
        .send_window(SEND_WINDOW)
        // MQTT has no use for unreliable datagrams: none are offered, so none are buffered.
        .datagram_receive_buffer_size(None);
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    // Connection attempts the accept loop has not taken yet (it waits while every
    // connection or handshake slot is in use): at most `pending` of them, and what they
    // sent is bounded (quinn's defaults would hold 65,536 and up to 100 MiB).
    server
        .transport_config(Arc::new(transport))
        .migration(true)
        .max_incoming(pending.max(1))
        .incoming_buffer_size(INCOMING_BUFFER)
        .incoming_buffer_size_total(INCOMING_BUFFER_TOTAL);
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(BrokerError::Io)
}

/// Takes a connection permit and a handshake slot before each incoming connection, like the
/// TCP accept loop; then the address's bans, address validation (a Retry, when asked for)
/// and admission — all before any TLS work. The handshake runs in the connection's task.
pub(crate) async fn accept_loop(
    state: Arc<BrokerState>,
    endpoint: quinn::Endpoint,
    listener: Arc<ListenerConfig>,
    tls: Arc<TlsListener>,
    permits: Arc<Semaphore>,
) {
    let _up = crate::transport::accept::ListenerUp::new(&state);
    loop {
        let Some((permit, slot)) = crate::transport::accept::take_slots(&state, &permits).await
        else {
            break;
        };
        let incoming = tokio::select! {
            _ = state.shutdown.cancelled() => break,
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => break,
            },
        };
        let peer = incoming.remote_address();
        if crate::transport::accept::banned(&state, peer) {
            incoming.ignore();
            continue;
        }
        if listener.quic.validate_address && !incoming.remote_address_validated() {
            if incoming.may_retry() {
                // Stateless: the client comes back with the token, proving its address.
                state.stats.quic_retries.fetch_add(1, Ordering::Relaxed);
                let _ = incoming.retry();
            } else {
                incoming.refuse();
            }
            continue;
        }
        let Some(address) = crate::transport::accept::admit(&state, peer) else {
            incoming.refuse();
            continue;
        };
        let connecting = match incoming.accept() {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "QUIC connection failed at once");
                continue;
            }
        };
        let slot = HandshakeSlot::new(Some(slot), state.stats.clone());
        state.tasks.spawn(serve(
            state.clone(),
            connecting,
            peer,
            listener.clone(),
            tls.clone(),
            slot,
            (permit, address),
        ));
    }
    // No new connections; the open ones end as their clients are told (DISCONNECT 0x8B),
    // each closing its own QUIC connection, not all at once here.
    endpoint.set_server_config(None);
}

/// Serves one QUIC connection: the QUIC handshake and the first stream within the connect
/// timeout, then the MQTT handshake over that stream.
async fn serve<P: Send + 'static>(
    state: Arc<BrokerState>,
    connecting: quinn::Connecting,
    peer: SocketAddr,
    listener: Arc<ListenerConfig>,
    tls: Arc<TlsListener>,
    slot: HandshakeSlot,
    permit: P,
) {
    let deadline = tokio::time::Instant::now() + state.config.limits.connect_timeout();
    // With 0-RTT the connection is usable before the handshake completes; the gate below
    // holds everything after CONNECT until it has.
    let ready: handshake::Gate = Box::pin(std::future::ready(()));
    let early = if listener.quic.enable_0rtt {
        connecting.into_0rtt()
    } else {
        Err(connecting)
    };
    let (handshaken, established) = match early {
        Ok((c, accepted)) => {
            let established: handshake::Gate = Box::pin(async move {
                accepted.await;
            });
            (Ok(Ok(c)), established)
        }
        Err(connecting) => {
            let done = tokio::select! {
                _ = state.shutdown.cancelled() => return,
                c = tokio::time::timeout_at(deadline, connecting) => c,
            };
            (done, ready)
        }
    };
    let failures = &state.stats.tls_handshake_failures;
    let Some(connection) = handshake::step(handshaken, failures, peer, "QUIC handshake") else {
        return;
    };
    let first = tokio::select! {
        _ = state.shutdown.cancelled() => return,
        s = tokio::time::timeout_at(deadline, connection.accept_bi()) => s,
    };
    let (send, recv) = match first {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "QUIC connection ended before its first stream");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "no QUIC stream within the connect timeout");
            connection.close(quinn::VarInt::from_u32(0), b"no stream");
            return;
        }
    };
    let cert = connection
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .map(|chain| state.auth.client_cas.login(&chain, tls.identity()));
    let held = (slot, permit);
    let streams = listener.quic.max_streams as usize;
    if streams > 1 {
        let limits = &state.config.limits;
        let stream = crate::transport::quic_streams::MultiStream::new(
            connection,
            send,
            recv,
            streams,
            limits.max_connect_packet_size as usize,
            limits.max_packet_size as usize,
        );
        handshake::serve_within(
            state,
            stream,
            peer,
            listener,
            deadline,
            cert,
            established,
            held,
        )
        .await;
    } else {
        let stream = QuicStream::new(connection, send, recv);
        handshake::serve_within(
            state,
            stream,
            peer,
            listener,
            deadline,
            cert,
            established,
            held,
        )
        .await;
    }
}

/// One bidirectional QUIC stream as a byte stream; shutting it down is a [`Closing`].
pub(crate) struct QuicStream {
    connection: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    closing: Closing,
}

impl QuicStream {
    pub(crate) fn new(
        connection: quinn::Connection,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
    ) -> Self {
        QuicStream {
            connection,
            send,
            recv,
            closing: Closing::default(),
        }
    }
}

/// Always "ready": quinn buffers received data in the connection, not in the socket.
impl Transport for QuicStream {}

impl AsyncRead for QuicStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().recv).poll_read(cx, buf)
    }
}

impl AsyncWrite for QuicStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        AsyncWrite::poll_write(Pin::new(&mut self.get_mut().send), cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_flush(Pin::new(&mut self.get_mut().send), cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.closing
            .poll_close(cx, &mut this.send, &this.connection)
    }
}

impl Drop for QuicStream {
    /// A connection that ends without a graceful shutdown (an error, a timeout) is closed
    /// at once rather than left to the idle timeout.
    fn drop(&mut self) {
        self.connection.close(quinn::VarInt::from_u32(0), b"");
    }
}
