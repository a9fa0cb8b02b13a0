//! How a load client reaches a broker: TCP, TLS, WebSocket (plain or over TLS) or QUIC, and
//! the halves a connection is split into so one task can write while another reads.
//! WebSocket halves move whole binary messages; the others move bytes.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// A stream a WebSocket runs over (TCP or TLS).
pub trait Socket: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Socket for T {}

type Ws = WebSocketStream<Box<dyn Socket>>;

/// TLS settings: the connector and the name the server's certificate must carry.
pub type TlsTo = (
    tokio_rustls::TlsConnector,
    rustls_pki_types::ServerName<'static>,
);

/// The transport of a run.
#[derive(Clone)]
pub enum Dial {
    Tcp,
    Tls(TlsTo),
    /// WebSocket at `path`, over TLS if given.
    Ws {
        path: String,
        tls: Option<TlsTo>,
    },
    /// QUIC through one client endpoint shared by the run's connections.
    Quic {
        endpoint: quinn::Endpoint,
        server_name: String,
    },
}

impl Dial {
    /// Its name, as `--transport` spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Dial::Tcp => "tcp",
            Dial::Tls(_) => "tls",
            Dial::Ws { tls: None, .. } => "ws",
            Dial::Ws { tls: Some(_), .. } => "wss",
            Dial::Quic { .. } => "quic",
        }
    }
}

/// The reading half of a connection.
pub enum ReadHalf {
    Bytes(Box<dyn AsyncRead + Unpin + Send>),
    Ws(SplitStream<Ws>),
    Quic {
        recv: quinn::RecvStream,
        /// Keeps the QUIC connection open as long as its reader.
        _connection: quinn::Connection,
    },
}

/// The writing half of a connection.
pub enum WriteHalf {
    Bytes(Box<dyn AsyncWrite + Unpin + Send>),
    Ws(SplitSink<Ws, Message>),
    Quic(quinn::SendStream),
}

impl ReadHalf {
    /// Appends what arrives next to `buf`; 0 when the broker closed the connection.
    /// Cancel-safe: nothing is taken from the transport without being appended.
    pub async fn read_into(&mut self, buf: &mut BytesMut) -> anyhow::Result<usize> {
        match self {
            ReadHalf::Bytes(r) => Ok(r.read_buf(buf).await?),
            ReadHalf::Quic { recv, .. } => Ok(recv.read_buf(buf).await?),
            ReadHalf::Ws(r) => loop {
                match r.next().await {
                    Some(Ok(Message::Binary(data))) if !data.is_empty() => {
                        buf.extend_from_slice(&data);
                        return Ok(data.len());
                    }
                    Some(Ok(Message::Close(_))) | None => return Ok(0),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e.into()),
                }
            },
        }
    }
}

impl WriteHalf {
    /// Sends `data` (as one binary message on a WebSocket).
    pub async fn write_all(&mut self, data: &[u8]) -> anyhow::Result<()> {
        match self {
            WriteHalf::Bytes(w) => w.write_all(data).await?,
            WriteHalf::Quic(w) => w.write_all(data).await?,
            WriteHalf::Ws(w) => {
                w.send(Message::Binary(Bytes::copy_from_slice(data)))
                    .await?
            }
        }
        Ok(())
    }
}

/// A QUIC client endpoint (on IPv6 for an IPv6 broker) that trusts `tls`'s roots and
/// offers ALPN `mqtt`.
pub fn quic_endpoint(mut tls: rustls::ClientConfig, v6: bool) -> anyhow::Result<quinn::Endpoint> {
    tls.alpn_protocols = vec![b"mqtt".to_vec()];
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).context("QUIC needs TLS 1.3")?;
    let local = if v6 { "[::]:0" } else { "0.0.0.0:0" };
    // Every connection of the run shares this socket: large buffers, or a burst of
    // handshakes overflows it and the lost datagrams cost retransmission timeouts.
    let socket = std::net::UdpSocket::bind(local)?;
    let state = quinn::udp::UdpSocketState::new((&socket).into())?;
    let _ = state.set_recv_buffer_size((&socket).into(), 8 * 1024 * 1024);
    let _ = state.set_send_buffer_size((&socket).into(), 8 * 1024 * 1024);
    let mut endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    Ok(endpoint)
}

/// Opens a connection to `addr` over `dial` (from `local_ip`, if given, for TCP-based
/// transports), within `timeout` for each step.
pub async fn open(
    dial: &Dial,
    addr: std::net::SocketAddr,
    local_ip: Option<std::net::IpAddr>,
    timeout: Duration,
) -> anyhow::Result<(ReadHalf, WriteHalf)> {
    if let Dial::Quic {
        endpoint,
        server_name,
    } = dial
    {
        let connecting = endpoint.connect(addr, server_name)?;
        let connection = tokio::time::timeout(timeout, connecting)
            .await
            .context("QUIC handshake timed out")?
            .context("QUIC handshake")?;
        let (send, recv) = connection
            .open_bi()
            .await
            .context("opening a QUIC stream")?;
        let read = ReadHalf::Quic {
            recv,
            _connection: connection,
        };
        return Ok((read, WriteHalf::Quic(send)));
    }
    let connecting = async {
        match local_ip {
            None => TcpStream::connect(addr).await,
            Some(ip) => {
                let socket = match ip {
                    std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                    std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
                };
                socket.bind((ip, 0).into())?;
                socket.connect(addr).await
            }
        }
    };
    let tcp = tokio::time::timeout(timeout, connecting)
        .await
        .context("TCP connect timed out")?
        .with_context(|| format!("TCP connect to {addr}"))?;
    tcp.set_nodelay(true)?;
    let tls = match dial {
        Dial::Tls(tls) | Dial::Ws { tls: Some(tls), .. } => Some(tls),
        _ => None,
    };
    let socket: Box<dyn Socket> = match tls {
        None => Box::new(tcp),
        Some((connector, name)) => Box::new(
            tokio::time::timeout(timeout, connector.connect(name.clone(), tcp))
                .await
                .context("TLS handshake timed out")?
                .context("TLS handshake")?,
        ),
    };
    match dial {
        Dial::Ws { path, .. } => {
            let mut request = format!("ws://{addr}{path}").into_client_request()?;
            request
                .headers_mut()
                .insert("sec-websocket-protocol", "mqtt".parse()?);
            let config = WebSocketConfig::default()
                .read_buffer_size(16 * 1024)
                .write_buffer_size(0);
            let (ws, _) = tokio::time::timeout(
                timeout,
                tokio_tungstenite::client_async_with_config(request, socket, Some(config)),
            )
            .await
            .context("WebSocket upgrade timed out")?
            .context("WebSocket upgrade")?;
            let (w, r) = ws.split();
            Ok((ReadHalf::Ws(r), WriteHalf::Ws(w)))
        }
        _ => {
            let (r, w) = tokio::io::split(socket);
            Ok((ReadHalf::Bytes(Box::new(r)), WriteHalf::Bytes(Box::new(w))))
        }
    }
}
