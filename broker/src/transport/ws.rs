//! MQTT over WebSocket (RFC 6455; MQTT 5 section 6): the HTTP upgrade at the listener's path
//! with subprotocol `mqtt` (or `mqttv3.1`) and the optional Origin allow-list, and
//! [`WsStream`], which turns the binary messages of a WebSocket into the byte stream a
//! `Connection` reads — so a WebSocket client meets the same handshake, authentication,
//! ACLs and limits as a TCP one.
//!
//! Frame and message sizes are bounded by tungstenite before a byte is buffered beyond
//! them: a bigger frame ends that connection (close code 1009) and nothing else.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig as WsLimits};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use crate::config::WebSocketConfig;
use crate::transport::connection::Transport;

/// Subprotocols we answer to, in order of preference [MQTT-6.0.0-3], [MQTT-6.0.0-4].
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];
/// tungstenite's read buffer, allocated per connection at the upgrade. Small, so an idle
/// WebSocket client costs little; it grows to a frame's size while one is read.
const READ_BUFFER: usize = 4096;

/// Upgrades an accepted stream to a WebSocket: checks the path, the subprotocol and the
/// Origin, and answers anything else with an HTTP error (the reason in its body). The
/// caller bounds the time it may take.
pub(crate) async fn upgrade<S>(stream: S, config: &WebSocketConfig) -> Result<WsStream<S>, WsError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let limits = WsLimits::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_frame_size(Some(config.max_frame_size as usize))
        .max_message_size(Some(config.max_message_size as usize));
    #[allow(clippy::result_large_err)]
    let check = |request: &Request, response: Response| check_upgrade(config, request, response);
    let inner =
        tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(limits)).await?;
    Ok(WsStream {
        inner,
        pending: Bytes::new(),
    })
}

/// The upgrade request's checks, in the order a client can fix them. (The error type is
/// tungstenite's callback contract; it is built once per refused upgrade.)
#[allow(clippy::result_large_err)]
fn check_upgrade(
    config: &WebSocketConfig,
    request: &Request,
    mut response: Response,
) -> Result<Response, ErrorResponse> {
    if request.uri().path() != config.path {
        return Err(refuse(
            StatusCode::NOT_FOUND,
            format!("MQTT is served at {}", config.path),
        ));
    }
    if !config.allowed_origins.is_empty() {
        if let Some(origin) = request.headers().get("origin") {
            let allowed = origin.to_str().is_ok_and(|o| {
                config
                    .allowed_origins
                    .iter()
                    .any(|a| a.eq_ignore_ascii_case(o))
            });
            if !allowed {
                return Err(refuse(StatusCode::FORBIDDEN, "origin not allowed".into()));
            }
        }
    }
    let offered: Vec<&str> = request
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let Some(chosen) = SUBPROTOCOLS
        .iter()
        .find(|p| offered.iter().any(|o| o.eq_ignore_ascii_case(p)))
    else {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "Sec-WebSocket-Protocol must offer mqtt [MQTT-6.0.0-3]".into(),
        ));
    };
    response
        .headers_mut()
        .insert("sec-websocket-protocol", HeaderValue::from_static(chosen));
    Ok(response)
}

fn refuse(status: StatusCode, why: String) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(why));
    *response.status_mut() = status;
    response
}

/// A WebSocket as a byte stream: binary messages in, one binary message per write out.
/// Ping and Pong are answered by tungstenite; a text message is a protocol error that
/// closes the connection [MQTT-6.0.0-1].
pub(crate) struct WsStream<S> {
    inner: WebSocketStream<S>,
    /// The unread rest of the last binary message.
    pending: Bytes,
}

/// Always "ready", like TLS: tungstenite may hold bytes the socket knows nothing about.
impl<S> Transport for WsStream<S> where S: AsyncRead + AsyncWrite + Unpin + Send {}

fn to_io(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        WsError::ConnectionClosed | WsError::AlreadyClosed => io::ErrorKind::BrokenPipe.into(),
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

impl<S> WsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// Starts a close with `code` (best effort: the connection is ending anyway).
    fn start_close(&mut self, cx: &mut Context<'_>, code: CloseCode, why: &'static str) {
        let frame = CloseFrame {
            code,
            reason: why.into(),
        };
        if let Poll::Ready(Ok(())) = Pin::new(&mut self.inner).poll_ready(cx) {
            let _ = Pin::new(&mut self.inner).start_send(Message::Close(Some(frame)));
            let _ = Pin::new(&mut self.inner).poll_flush(cx);
        }
    }
}

impl<S> AsyncRead for WsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending[..n]);
                this.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.inner).poll_next(cx)) {
                None | Some(Ok(Message::Close(_))) => return Poll::Ready(Ok(())),
                Some(Ok(Message::Binary(data))) => this.pending = data,
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Text(_))) => {
                    this.start_close(cx, CloseCode::Unsupported, "MQTT needs binary frames");
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a text frame: MQTT needs binary frames [MQTT-6.0.0-1]",
                    )));
                }
                Some(Err(WsError::Capacity(e))) => {
                    this.start_close(cx, CloseCode::Size, "frame or message too large");
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                }
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
            }
        }
    }
}

impl<S> AsyncWrite for WsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(Pin::new(&mut this.inner).poll_ready(cx)).map_err(to_io)?;
        Pin::new(&mut this.inner)
            .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(to_io)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner)
            .poll_flush(cx)
            .map_err(to_io)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match ready!(Pin::new(&mut self.get_mut().inner).poll_close(cx)) {
            Ok(()) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(to_io(e))),
        }
    }
}
