//! MQTT over WebSocket (RFC 6455; MQTT 5 section 6): the HTTP upgrade at the listener's path
//! with subprotocol `mqtt` (or `mqttv3.1`) and the optional Origin allow-list, and
//! [`WsStream`], which turns the binary frames of a WebSocket into the byte stream a
//! `Connection` reads — so a WebSocket client meets the same handshake, authentication,
//! ACLs and limits as a TCP one.
//!
//! MQTT needs a byte stream, not messages, so the framing is ours and works in place:
//! [`WsStream`] reads raw bytes into the caller's buffer and takes the frame headers out
//! there, unmasking each payload where it lies. It keeps no buffer of its own (an idle
//! WebSocket connection costs what an idle TCP one does plus this struct) and can wait on
//! the socket's readiness; a general WebSocket library (tungstenite, before) kept a 4 KiB
//! read buffer per connection and copied every payload twice.
//!
//! Frame and message sizes are checked from a frame's header, before its payload is read: a
//! bigger frame ends that connection (close code 1009) and nothing else.

use std::borrow::Cow;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::config::WebSocketConfig;
use crate::transport::connection::Transport;

/// Subprotocols we answer to, in order of preference [MQTT-6.0.0-3], [MQTT-6.0.0-4].
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];
/// The upgrade request may be this long, headers included; longer is refused (431).
const MAX_REQUEST: usize = 8 * 1024;
/// Headers an upgrade request may carry.
const MAX_HEADERS: usize = 32;
/// RFC 6455 section 1.3: appended to the client's key to prove the upgrade was understood.
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The smallest and largest socket read, in bytes (the window adapts between them).
const MIN_RAW_READ: u32 = 512;
const MAX_RAW_READ: u32 = 64 * 1024;
/// Bytes of frame headers and control frames a client may send beyond
/// `OVERHEAD_PER_BYTE` for each byte of MQTT it sent: pings, pongs and empty frames carry
/// no MQTT, so no rate limit sees them, and without this bound a client (before CONNECT
/// too) could keep a core busy with them for as long as it likes.
const OVERHEAD_ALLOWANCE: u64 = 64 * 1024;
const OVERHEAD_PER_BYTE: u64 = 16;

/// Close codes (RFC 6455 section 7.4.1).
const CLOSE_NORMAL: u16 = 1000;
const CLOSE_PROTOCOL: u16 = 1002;
const CLOSE_UNSUPPORTED: u16 = 1003;
const CLOSE_POLICY: u16 = 1008;
const CLOSE_TOO_BIG: u16 = 1009;
const CLOSE_BAD_DATA: u16 = 1007;

/// Upgrades an accepted stream to a WebSocket: reads the HTTP request, checks the path, the
/// subprotocol and the Origin, and answers anything else with an HTTP error (the reason in
/// its body). The caller bounds the time it may take.
pub(crate) async fn upgrade<S>(mut stream: S, config: &WebSocketConfig) -> io::Result<WsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; MAX_REQUEST];
    let mut len = 0;
    let (request_len, answer) = loop {
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed during the upgrade request",
            ));
        }
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(end)) => break (end, check_upgrade(config, &request)),
            Ok(httparse::Status::Partial) if len < MAX_REQUEST => continue,
            Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
                break (
                    len,
                    Err(Refusal::new(431, "the upgrade request is too large")),
                )
            }
            Err(_) => break (len, Err(Refusal::new(400, "not an HTTP request"))),
        }
    };
    match answer {
        Ok(response) => {
            stream.write_all(response.as_bytes()).await?;
            stream.flush().await?;
            // Bytes past the request: frames from a client that did not wait for the 101.
            let early = Bytes::copy_from_slice(&buf[request_len..len]);
            Ok(WsStream::new(stream, early, config))
        }
        Err(refusal) => {
            let _ = stream.write_all(refusal.response().as_bytes()).await;
            let _ = stream.flush().await;
            Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("refused ({}): {}", refusal.status, refusal.why),
            ))
        }
    }
}

/// An upgrade refused: the HTTP status and the reason, sent as the response's body.
struct Refusal {
    status: u16,
    why: Cow<'static, str>,
    /// Extra header lines (each ending in CRLF).
    headers: &'static str,
}

impl Refusal {
    fn new(status: u16, why: impl Into<Cow<'static, str>>) -> Self {
        Refusal {
            status,
            why: why.into(),
            headers: "",
        }
    }

    fn response(&self) -> String {
        let reason = match self.status {
            400 => "Bad Request",
            403 => "Forbidden",
            404 => "Not Found",
            405 => "Method Not Allowed",
            426 => "Upgrade Required",
            431 => "Request Header Fields Too Large",
            _ => "Error",
        };
        format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
             Connection: close\r\n{}\r\n{}",
            self.status,
            self.why.len(),
            self.headers,
            self.why
        )
    }
}

/// The upgrade request's checks, in the order a client can fix them; the 101 response if
/// it passes.
fn check_upgrade(
    config: &WebSocketConfig,
    request: &httparse::Request<'_, '_>,
) -> Result<String, Refusal> {
    let headers: Vec<(&str, &str)> = request
        .headers
        .iter()
        .filter_map(|h| Some((h.name, std::str::from_utf8(h.value).ok()?)))
        .collect();
    let header = |name| header_values(&headers, name);
    let has_token = |name, token: &str| {
        header(name)
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if request.method != Some("GET") {
        return Err(Refusal::new(405, "a WebSocket upgrade is a GET"));
    }
    if request.version != Some(1) {
        return Err(Refusal::new(400, "a WebSocket upgrade needs HTTP/1.1"));
    }
    let path = request.path.unwrap_or("");
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    if path != config.path {
        let why = format!("MQTT is served at {}", config.path);
        return Err(Refusal::new(404, why));
    }
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return Err(Refusal::new(400, "not a WebSocket upgrade"));
    }
    if !header("sec-websocket-version").any(|v| v.trim() == "13") {
        return Err(Refusal {
            status: 426,
            why: "WebSocket version 13 is required".into(),
            headers: "Sec-WebSocket-Version: 13\r\n",
        });
    }
    let mut keys = header("sec-websocket-key").map(str::trim);
    let (Some(key), None) = (keys.next(), keys.next()) else {
        return Err(Refusal::new(400, "one Sec-WebSocket-Key is required"));
    };
    if !is_valid_key(key) {
        return Err(Refusal::new(
            400,
            "Sec-WebSocket-Key must be 16 bytes in base64 [RFC 6455 4.1]",
        ));
    }
    if !config.allowed_origins.is_empty() {
        if let Some(origin) = header("origin").next() {
            let allowed = config
                .allowed_origins
                .iter()
                .any(|a| a.eq_ignore_ascii_case(origin.trim()));
            if !allowed {
                return Err(Refusal::new(403, "origin not allowed"));
            }
        }
    }
    let offered: Vec<&str> = header("sec-websocket-protocol")
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    // The answer is the client's own spelling: a client compares it with what it offered.
    let Some(chosen) = SUBPROTOCOLS
        .iter()
        .find_map(|p| offered.iter().find(|o| o.eq_ignore_ascii_case(p)))
    else {
        return Err(Refusal::new(
            400,
            "Sec-WebSocket-Protocol must offer mqtt [MQTT-6.0.0-3]",
        ));
    };
    Ok(format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: {chosen}\r\n\r\n",
        accept_key(key.as_bytes())
    ))
}

/// The values of the headers named `name` (any case).
fn header_values<'a>(
    headers: &'a [(&'a str, &'a str)],
    name: &'a str,
) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| *v)
}

/// A client's key is the base64 of 16 random bytes.
fn is_valid_key(key: &str) -> bool {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(key)
        .is_ok_and(|k| k.len() == 16)
}

/// Sec-WebSocket-Accept for a client's key (RFC 6455 section 4.2.2).
fn accept_key(key: &[u8]) -> String {
    use base64::Engine as _;
    let mut input = Vec::with_capacity(key.len() + ACCEPT_GUID.len());
    input.extend_from_slice(key);
    input.extend_from_slice(ACCEPT_GUID);
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// A WebSocket as a byte stream: the payloads of binary frames in, one binary frame per
/// write out. Pings are answered; a text frame is a protocol error that closes the
/// connection [MQTT-6.0.0-1]; a close frame ends the stream and is answered.
pub(crate) struct WsStream<S> {
    stream: S,
    /// Bytes read past the upgrade request, deframed before the socket is read again.
    early: Bytes,
    frames: Deframer,
    out: Framer,
    /// Bytes the next socket read may bring (and so zeroes first).
    raw_window: u32,
}

impl<S> WsStream<S> {
    fn new(stream: S, early: Bytes, config: &WebSocketConfig) -> Self {
        WsStream {
            stream,
            early,
            frames: Deframer::new(config.max_frame_size, config.max_message_size),
            out: Framer::default(),
            raw_window: MIN_RAW_READ,
        }
    }
}

/// Ready when the socket is: this stream holds no bytes the socket does not know of, except
/// those that came with the upgrade request, and no end, except a close frame's.
impl<S: Transport> Transport for WsStream<S> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // After a close frame the next read is the end of the stream: the socket may have
        // nothing more to say, so it cannot be what is waited on.
        if !self.early.is_empty() || self.frames.closed {
            return Poll::Ready(Ok(()));
        }
        self.stream.poll_read_ready(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsStream<S> {
    /// Sends the queued control frames (a pong or a close) if no data frame is half
    /// written. Ready once nothing is queued.
    fn poll_send_control(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.out.left > 0 {
            return Poll::Ready(Ok(()));
        }
        let out = &mut self.out;
        loop {
            if out.sent == out.sending.len() {
                if out.queued.is_empty() {
                    break;
                }
                out.sending = std::mem::take(&mut out.queued);
                out.sent = 0;
            }
            let n = ready!(Pin::new(&mut self.stream).poll_write(cx, &out.sending[out.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            out.sent += n;
            out.unflushed = true;
        }
        if out.unflushed {
            ready!(Pin::new(&mut self.stream).poll_flush(cx))?;
            out.unflushed = false;
            out.sending = Vec::new();
            out.sent = 0;
        }
        Poll::Ready(Ok(()))
    }

    /// Sends what the reader queued, without waiting: the read side must not block on the
    /// peer reading (it is retried at the next read, write or flush).
    fn try_send_control(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.poll_send_control(cx) {
            Poll::Ready(result) => result,
            Poll::Pending => Ok(()),
        }
    }

    /// The next raw bytes into `buf`'s unfilled part: the upgrade's leftovers, then the
    /// socket's. Ready with how many (0 at the end of the stream).
    fn poll_raw(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<usize>> {
        if !self.early.is_empty() {
            let n = self.early.len().min(buf.remaining());
            buf.put_slice(&self.early[..n]);
            self.early.advance(n);
            if self.early.is_empty() {
                self.early = Bytes::new();
            }
            return Poll::Ready(Ok(n));
        }
        // Safe code cannot hand uninitialized memory to the inner read, so a window of the
        // buffer is zeroed first. The window follows the traffic (doubling while reads fill
        // it), not the buffer's capacity: the decoder reserves room for a whole announced
        // packet, and zeroing all of it would make 10 bytes from a client cost the broker
        // a megabyte of touched memory.
        let window = (self.raw_window as usize).min(buf.remaining());
        let mut inner = ReadBuf::new(buf.initialize_unfilled_to(window));
        ready!(Pin::new(&mut self.stream).poll_read(cx, &mut inner))?;
        let n = inner.filled().len();
        buf.advance(n);
        if n == window {
            self.raw_window = (self.raw_window * 2).min(MAX_RAW_READ);
        } else if n < window / 4 {
            self.raw_window = (self.raw_window / 2).max(MIN_RAW_READ);
        }
        Poll::Ready(Ok(n))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            this.try_send_control(cx)?;
            if this.frames.closed || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            let start = buf.filled().len();
            if ready!(this.poll_raw(cx, buf))? == 0 {
                // The end of the stream (mid-frame too: the MQTT layer sees a cut packet).
                return Poll::Ready(Ok(()));
            }
            let outcome = this.frames.deframe(&mut buf.filled_mut()[start..]);
            if let Some(reply) = this.frames.reply.take() {
                this.out.queue(reply);
            }
            match outcome {
                Ok(payload) => {
                    buf.set_filled(start + payload);
                    if payload > 0 {
                        this.try_send_control(cx)?;
                        return Poll::Ready(Ok(()));
                    }
                }
                Err(violation) => {
                    buf.set_filled(start);
                    this.out.queue(Reply::Close(violation.code, violation.why));
                    let _ = this.try_send_control(cx);
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        violation.why,
                    )));
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.out.left == 0 {
            ready!(this.poll_send_control(cx))?;
            if this.out.closing {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the WebSocket is closing",
                )));
            }
            this.out.start_frame(buf.len());
        }
        loop {
            let payload = &buf[..buf.len().min(this.out.left)];
            let header =
                &this.out.header[this.out.header_at as usize..this.out.header_len as usize];
            let n = if header.is_empty() {
                ready!(Pin::new(&mut this.stream).poll_write(cx, payload))?
            } else {
                let parts = [IoSlice::new(header), IoSlice::new(payload)];
                ready!(Pin::new(&mut this.stream).poll_write_vectored(cx, &parts))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let of_header = n.min(header.len());
            this.out.header_at += of_header as u8;
            let written = n - of_header;
            this.out.left -= written;
            if written > 0 {
                return Poll::Ready(Ok(written));
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_control(cx))?;
        Pin::new(&mut this.stream).poll_flush(cx)
    }

    /// Says goodbye with a close frame (unless one was sent, or a data frame is half
    /// written), then shuts the socket's write side.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.out.left == 0 && !this.out.closing {
            this.out.queue(Reply::Close(CLOSE_NORMAL, ""));
        }
        ready!(this.poll_send_control(cx))?;
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }
}

/// A control frame the reader owes the peer.
#[derive(Debug, PartialEq)]
enum Reply {
    Pong(Vec<u8>),
    Close(u16, &'static str),
}

/// A frame that breaks the protocol or a limit: the close code and the reason.
#[derive(Debug, PartialEq)]
struct Violation {
    code: u16,
    why: &'static str,
}

fn protocol(why: &'static str) -> Violation {
    Violation {
        code: CLOSE_PROTOCOL,
        why,
    }
}

/// Where the reader is in the stream of frames.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Header,
    Data,
    Control(u8),
}

/// Takes the frames apart in the caller's buffer: headers out, payloads unmasked and moved
/// together. Holds at most one frame header (14 bytes) and one control frame's payload
/// (125) between reads.
struct Deframer {
    header: [u8; 14],
    header_len: u8,
    phase: Phase,
    mask: [u8; 4],
    /// Where in the mask the next payload byte is.
    mask_at: u8,
    /// A data message is unfinished: a continuation frame must come next.
    in_message: bool,
    /// Payload bytes of the current frame still to come.
    left: u64,
    /// Bytes of the unfinished message so far, its current frame included.
    message_len: u64,
    max_frame: u64,
    max_message: u64,
    /// The payload of the control frame being read.
    control: Vec<u8>,
    /// A close frame came: the stream has ended.
    closed: bool,
    /// Bytes of frame headers and control frames so far, and of data frames' payloads (the
    /// MQTT bytes): the first may not outgrow the second (see `OVERHEAD_ALLOWANCE`).
    overhead: u64,
    payload: u64,
    /// What the last `deframe` owes the peer.
    reply: Option<Reply>,
}

impl Deframer {
    fn new(max_frame: u32, max_message: u32) -> Self {
        Deframer {
            header: [0; 14],
            header_len: 0,
            phase: Phase::Header,
            mask: [0; 4],
            mask_at: 0,
            in_message: false,
            left: 0,
            message_len: 0,
            max_frame: max_frame.into(),
            max_message: max_message.into(),
            control: Vec::new(),
            closed: false,
            overhead: 0,
            payload: 0,
            reply: None,
        }
    }

    /// The header's length once its first two bytes are known (2 until then).
    fn header_needed(&self) -> usize {
        if self.header_len < 2 {
            return 2;
        }
        let extended = match self.header[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
        2 + extended + mask
    }

    /// Deframes `data` in place: the data frames' payloads, unmasked, end up together at its
    /// start, and their length is returned. Stops at a close frame.
    fn deframe(&mut self, data: &mut [u8]) -> Result<usize, Violation> {
        let (mut read, mut kept) = (0, 0);
        while read < data.len() && !self.closed {
            match self.phase {
                Phase::Header => {
                    let have = self.header_len as usize;
                    let take = (self.header_needed() - have).min(data.len() - read);
                    self.header[have..have + take].copy_from_slice(&data[read..read + take]);
                    self.header_len += take as u8;
                    read += take;
                    if self.header_len as usize == self.header_needed() && self.header_len >= 2 {
                        self.start_frame()?;
                    }
                }
                Phase::Data => {
                    let n =
                        (data.len() - read).min(usize::try_from(self.left).unwrap_or(usize::MAX));
                    for i in 0..n {
                        let mask = self.mask[(self.mask_at as usize + i) & 3];
                        data[kept + i] = data[read + i] ^ mask;
                    }
                    self.consumed(n);
                    self.payload += n as u64;
                    read += n;
                    kept += n;
                }
                Phase::Control(opcode) => {
                    let n = (data.len() - read).min(self.left as usize);
                    for (i, byte) in data[read..read + n].iter().enumerate() {
                        let mask = self.mask[(self.mask_at as usize + i) & 3];
                        self.control.push(byte ^ mask);
                    }
                    self.consumed(n);
                    self.overhead += n as u64;
                    read += n;
                    if self.phase == Phase::Header {
                        self.end_control(opcode)?;
                    }
                }
            }
        }
        Ok(kept)
    }

    /// `n` payload bytes of the current frame went by; at the frame's end, the next header.
    fn consumed(&mut self, n: usize) {
        self.left -= n as u64;
        self.mask_at = ((self.mask_at as usize + n) & 3) as u8;
        if self.left == 0 {
            self.phase = Phase::Header;
        }
    }

    /// A whole header is in `header`: checks it and starts its frame.
    fn start_frame(&mut self) -> Result<(), Violation> {
        let [b0, b1] = [self.header[0], self.header[1]];
        let length_at = &self.header[2..self.header_len as usize];
        self.overhead += u64::from(self.header_len);
        self.header_len = 0;
        let allowed =
            OVERHEAD_ALLOWANCE.saturating_add(self.payload.saturating_mul(OVERHEAD_PER_BYTE));
        if self.overhead > allowed {
            return Err(Violation {
                code: CLOSE_POLICY,
                why: "too many WebSocket frames without MQTT in them",
            });
        }
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0f;
        if b0 & 0x70 != 0 {
            return Err(protocol("reserved bits set: no extension was agreed"));
        }
        if b1 & 0x80 == 0 {
            return Err(protocol("an unmasked frame from a client [RFC 6455 5.1]"));
        }
        let length = match b1 & 0x7f {
            126 => u64::from(u16::from_be_bytes([length_at[0], length_at[1]])),
            127 => {
                let mut be = [0u8; 8];
                be.copy_from_slice(&length_at[..8]);
                if be[0] & 0x80 != 0 {
                    return Err(protocol("a 64-bit length with its top bit set"));
                }
                u64::from_be_bytes(be)
            }
            n => u64::from(n),
        };
        self.mask.copy_from_slice(&length_at[length_at.len() - 4..]);
        self.mask_at = 0;
        self.left = length;
        match opcode {
            0x0 | 0x2 => {
                if (opcode == 0x0) != self.in_message {
                    return Err(protocol(if opcode == 0x0 {
                        "a continuation frame with no message to continue"
                    } else {
                        "a new message inside an unfinished one"
                    }));
                }
                let message = self.message_len.saturating_add(length);
                if length > self.max_frame || message > self.max_message {
                    return Err(Violation {
                        code: CLOSE_TOO_BIG,
                        why: "frame or message too large",
                    });
                }
                self.in_message = !fin;
                self.message_len = if fin { 0 } else { message };
                self.phase = if length == 0 {
                    Phase::Header
                } else {
                    Phase::Data
                };
            }
            0x1 => {
                return Err(Violation {
                    code: CLOSE_UNSUPPORTED,
                    why: "a text frame: MQTT needs binary frames [MQTT-6.0.0-1]",
                })
            }
            0x8..=0xa => {
                if !fin {
                    return Err(protocol("a fragmented control frame"));
                }
                if length > 125 {
                    return Err(protocol("a control frame over 125 bytes"));
                }
                self.control = Vec::with_capacity(length as usize);
                self.phase = Phase::Control(opcode);
                if length == 0 {
                    self.phase = Phase::Header;
                    self.end_control(opcode)?;
                }
            }
            _ => return Err(protocol("an unknown opcode")),
        }
        Ok(())
    }

    /// A control frame's payload is complete: answer a ping, end at a close.
    fn end_control(&mut self, opcode: u8) -> Result<(), Violation> {
        let payload = std::mem::take(&mut self.control);
        match opcode {
            0x9 => self.reply = Some(Reply::Pong(payload)),
            0x8 => {
                if payload.len() == 1 {
                    return Err(protocol("a close frame with a one-byte payload"));
                }
                let code = match payload.get(..2) {
                    Some(&[hi, lo]) => u16::from_be_bytes([hi, lo]),
                    _ => CLOSE_NORMAL,
                };
                // Codes a peer may send (RFC 6455 7.4.1-7.4.2; 1005, 1006 and 1015 never go
                // on the wire), and a reason in UTF-8 (section 8.1).
                if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
                    return Err(protocol("a close frame with a code no peer may send"));
                }
                if std::str::from_utf8(&payload[payload.len().min(2)..]).is_err() {
                    return Err(Violation {
                        code: CLOSE_BAD_DATA,
                        why: "a close reason that is not UTF-8",
                    });
                }
                self.closed = true;
                self.reply = Some(Reply::Close(code, ""));
            }
            _ => {} // a pong: nothing to do
        }
        Ok(())
    }
}

/// The writer's state: the header of the data frame being written, and a control frame
/// waiting for the frame to end.
#[derive(Default)]
struct Framer {
    header: [u8; 10],
    header_len: u8,
    /// How much of `header` is written.
    header_at: u8,
    /// Payload bytes of the current data frame still to write.
    left: usize,
    /// The control frame being written, and how much of it is.
    sending: Vec<u8>,
    sent: usize,
    /// The control frame next in line. A newer pong replaces an older one not yet started
    /// (answering the latest ping is enough, RFC 6455 section 5.5.3), a close replaces a
    /// pong, and nothing replaces a close: at most two small frames are ever held.
    queued: Vec<u8>,
    /// Control bytes written and not yet flushed.
    unflushed: bool,
    /// A close frame is queued or sent: nothing may follow it.
    closing: bool,
}

impl Framer {
    /// A binary frame (final, unmasked: a server's frames are not masked) of `len` bytes.
    fn start_frame(&mut self, len: usize) {
        let h = &mut self.header;
        h[0] = 0x82;
        self.header_len = match len {
            0..=125 => {
                h[1] = len as u8;
                2
            }
            126..=0xffff => {
                h[1] = 126;
                h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
                4
            }
            _ => {
                h[1] = 127;
                h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
                10
            }
        };
        self.header_at = 0;
        self.left = len;
    }

    /// Queues a control frame; a close wins over a pong and is sent once.
    fn queue(&mut self, reply: Reply) {
        if self.closing {
            return;
        }
        let (opcode, payload) = match reply {
            Reply::Pong(payload) => (0x8a, payload),
            Reply::Close(code, why) => {
                self.closing = true;
                let mut payload = code.to_be_bytes().to_vec();
                payload.extend_from_slice(&why.as_bytes()[..why.len().min(123)]);
                (0x88, payload)
            }
        };
        let mut frame = Vec::with_capacity(2 + payload.len());
        frame.push(opcode);
        frame.push(payload.len() as u8);
        frame.extend_from_slice(&payload);
        self.queued = frame;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client's frame: `opcode`, final or not, masked with `mask`.
    fn frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            n @ 0..=125 => out.push(0x80 | n as u8),
            n @ 126..=0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    /// Feeds `wire` to a deframer in pieces of `step` bytes, as reads would; the payload.
    fn deframe_in_steps(d: &mut Deframer, wire: &[u8], step: usize) -> Result<Vec<u8>, Violation> {
        let mut out = Vec::new();
        for piece in wire.chunks(step) {
            let mut piece = piece.to_vec();
            let kept = d.deframe(&mut piece)?;
            out.extend_from_slice(&piece[..kept]);
        }
        Ok(out)
    }

    /// The upgrade's checks on the request alone: the key, and the subprotocol answered
    /// in the client's own spelling.
    #[test]
    fn upgrade_checks_the_key_and_answers_the_offered_spelling() {
        let check = |key: &str, protocol: &str| {
            let text = format!(
                "GET /mqtt HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Version: 13\r\n{key}Sec-WebSocket-Protocol: {protocol}\r\n\r\n"
            );
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut request = httparse::Request::new(&mut headers);
            assert!(request.parse(text.as_bytes()).unwrap().is_complete());
            check_upgrade(&WebSocketConfig::default(), &request).map_err(|r| r.status)
        };
        let good = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
        assert!(check(good, "MQTT")
            .unwrap()
            .contains("Sec-WebSocket-Protocol: MQTT\r\n"));
        assert!(check(good, "chat, mqtt")
            .unwrap()
            .contains("Sec-WebSocket-Protocol: mqtt\r\n"));
        assert_eq!(check("", "mqtt"), Err(400), "no key");
        assert_eq!(
            check("Sec-WebSocket-Key: abc\r\n", "mqtt"),
            Err(400),
            "not 16 bytes"
        );
        assert_eq!(
            check(&format!("{good}{good}"), "mqtt"),
            Err(400),
            "two keys"
        );
    }

    #[test]
    fn accept_key_is_the_rfc_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn payloads_come_out_unmasked_and_together_however_the_reads_split_them() {
        let big: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        let mut wire = frame(true, 0x2, b"hello", [1, 2, 3, 4]);
        wire.extend(frame(false, 0x2, &big[..300], [9, 8, 7, 6]));
        wire.extend(frame(true, 0x9, b"are you there", [5, 5, 5, 5]));
        wire.extend(frame(true, 0x0, &big[300..], [0xff, 0, 0xff, 0]));
        wire.extend(frame(true, 0x2, b"", [1, 1, 1, 1]));
        let mut want = b"hello".to_vec();
        want.extend_from_slice(&big);
        for step in [1, 2, 3, 7, 14, 100, 4096, wire.len()] {
            let mut d = Deframer::new(1 << 20, 1 << 20);
            assert_eq!(
                deframe_in_steps(&mut d, &wire, step).unwrap(),
                want,
                "step {step}"
            );
            assert_eq!(
                d.reply,
                Some(Reply::Pong(b"are you there".to_vec())),
                "step {step}"
            );
            assert!(!d.in_message && d.phase == Phase::Header, "step {step}");
        }
    }

    #[test]
    fn a_close_ends_the_stream_and_is_answered_with_its_code() {
        let mut wire = frame(true, 0x2, b"last", [1, 2, 3, 4]);
        wire.extend(frame(
            true,
            0x8,
            &[0x03, 0xe9, b'b', b'y', b'e'],
            [7, 7, 7, 7],
        ));
        wire.extend(frame(true, 0x2, b"after the close", [1, 2, 3, 4]));
        let mut d = Deframer::new(1024, 1024);
        assert_eq!(deframe_in_steps(&mut d, &wire, 5).unwrap(), b"last");
        assert!(d.closed);
        assert_eq!(d.reply, Some(Reply::Close(1001, "")));
    }

    #[test]
    fn limits_are_checked_from_the_header_before_the_payload() {
        let mut d = Deframer::new(4096, 8192);
        let header_only = &frame(true, 0x2, &[0u8; 5000], [0; 4])[..8];
        assert_eq!(
            d.deframe(&mut header_only.to_vec()).unwrap_err().code,
            CLOSE_TOO_BIG
        );
        // Frames within the frame limit, a message over the message limit.
        let mut d = Deframer::new(4096, 8192);
        let mut wire = frame(false, 0x2, &[0u8; 4000], [0; 4]);
        wire.extend(frame(false, 0x0, &[0u8; 4000], [0; 4]));
        wire.extend(frame(true, 0x0, &[0u8; 4000], [0; 4]));
        assert_eq!(
            deframe_in_steps(&mut d, &wire, 1000).unwrap_err().code,
            CLOSE_TOO_BIG
        );
    }

    #[test]
    fn protocol_violations_are_refused_with_their_close_code() {
        let unmasked = vec![0x82, 0x01, b'x'];
        let mut cases = vec![
            (frame(true, 0x1, b"text", [1; 4]), CLOSE_UNSUPPORTED),
            (unmasked, CLOSE_PROTOCOL),
            (frame(true, 0x0, b"no message", [1; 4]), CLOSE_PROTOCOL),
            (frame(false, 0x9, b"ping", [1; 4]), CLOSE_PROTOCOL),
            (frame(true, 0x9, &[0u8; 126], [1; 4]), CLOSE_PROTOCOL),
            (frame(true, 0x3, b"", [1; 4]), CLOSE_PROTOCOL),
            (frame(true, 0x8, b"x", [1; 4]), CLOSE_PROTOCOL),
        ];
        let mut rsv = frame(true, 0x2, b"x", [1; 4]);
        rsv[0] |= 0x40;
        cases.push((rsv, CLOSE_PROTOCOL));
        let mut nested = frame(false, 0x2, b"a", [1; 4]);
        nested.extend(frame(true, 0x2, b"b", [1; 4]));
        cases.push((nested, CLOSE_PROTOCOL));
        // A 64-bit length with its top bit set: the header alone is refused.
        let mut top_bit = vec![0x82, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 1];
        top_bit.extend_from_slice(&[1; 4]);
        cases.push((top_bit, CLOSE_PROTOCOL));
        for code in [999u16, 1004, 1005, 1006, 1015, 2999, 5000] {
            cases.push((
                frame(true, 0x8, &code.to_be_bytes(), [1; 4]),
                CLOSE_PROTOCOL,
            ));
        }
        let mut bad_reason = 1000u16.to_be_bytes().to_vec();
        bad_reason.extend_from_slice(&[0xff, 0xfe]);
        cases.push((frame(true, 0x8, &bad_reason, [1; 4]), CLOSE_BAD_DATA));
        for (wire, code) in cases {
            let mut d = Deframer::new(1024, 1024);
            let err = deframe_in_steps(&mut d, &wire, 1).unwrap_err();
            assert_eq!(err.code, code, "{wire:02x?}: {}", err.why);
        }
    }

    /// Pings, pongs and empty frames carry no MQTT, so no rate limit sees them: past a
    /// fixed allowance they may come only in proportion to the MQTT bytes sent.
    #[test]
    fn frames_without_mqtt_are_bounded_by_the_mqtt_sent() {
        let ping = frame(true, 0x9, b"", [1; 4]);
        let empty = frame(true, 0x2, b"", [1; 4]);
        for (what, flood) in [("pings", &ping), ("empty frames", &empty)] {
            let mut d = Deframer::new(1 << 20, 1 << 20);
            let mut sent = 0;
            let err = loop {
                match d.deframe(&mut flood.clone()) {
                    Ok(_) => sent += flood.len() as u64,
                    Err(e) => break e,
                }
                assert!(sent <= 2 * OVERHEAD_ALLOWANCE, "{what}: never refused");
            };
            assert_eq!(err.code, CLOSE_POLICY, "{what}");
            assert!(
                sent >= OVERHEAD_ALLOWANCE - 16,
                "{what}: refused early, at {sent}"
            );
        }
        // A client that sends its MQTT one byte a frame, with a ping after each, is fine.
        let mut d = Deframer::new(1 << 20, 1 << 20);
        for i in 0..50_000u32 {
            let mut wire = frame(true, 0x2, &[i as u8], [1, 2, 3, 4]);
            wire.extend(frame(true, 0x9, b"", [1; 4]));
            assert_eq!(d.deframe(&mut wire), Ok(1), "frame {i}");
        }
    }

    /// A payload and a close in one read: the payload comes out, and then the stream must
    /// say it is ready (to return its end) although the socket has nothing more; waiting
    /// on the socket left the connection open with its will unsent.
    #[tokio::test]
    async fn after_a_close_the_stream_is_ready_to_end() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = WsStream::new(tcp, Bytes::new(), &WebSocketConfig::default());
        let mut wire = frame(true, 0x2, b"x", [1, 2, 3, 4]);
        wire.extend(frame(true, 0x8, &1000u16.to_be_bytes(), [5; 4]));
        client.write_all(&wire).await.unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(ws.read(&mut buf).await.unwrap(), 1);
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            std::future::poll_fn(|cx| ws.poll_read_ready(cx)),
        )
        .await
        .expect("ready after a close")
        .unwrap();
        assert_eq!(ws.read(&mut buf).await.unwrap(), 0, "the end");
    }

    /// The socket is read into a window that follows the traffic, not into all the room
    /// the caller's buffer has (the decoder reserves a whole announced packet, and every
    /// byte read into is zeroed first): a first read takes at most the smallest window.
    #[tokio::test]
    async fn reads_take_a_window_of_the_buffer_that_follows_the_traffic() {
        let (ours, mut peer) = tokio::io::duplex(1 << 20);
        let mut ws = WsStream::new(ours, Bytes::new(), &WebSocketConfig::default());
        let mut wire = Vec::new();
        for _ in 0..64 {
            wire.extend(frame(true, 0x2, &[7u8; 1000], [1, 2, 3, 4]));
        }
        peer.write_all(&wire).await.unwrap();
        let mut big = vec![0u8; 1 << 20];
        let first = ws.read(&mut big).await.unwrap();
        assert!(first <= MIN_RAW_READ as usize, "read {first}");
        let mut total = first;
        let mut largest = first;
        while total < 64_000 {
            let n = ws.read(&mut big).await.unwrap();
            largest = largest.max(n);
            total += n;
        }
        assert!(
            largest > MIN_RAW_READ as usize * 4,
            "the window grew: {largest}"
        );
    }

    #[test]
    fn frames_out_carry_the_length_in_the_shortest_form() {
        let mut f = Framer::default();
        for (len, header) in [(5, 2), (125, 2), (126, 4), (65_535, 4), (65_536, 10)] {
            f.start_frame(len);
            assert_eq!(f.header_len, header, "{len}");
            assert_eq!(f.header[0], 0x82);
        }
        f.queue(Reply::Pong(b"p".to_vec()));
        assert_eq!(f.queued, [0x8a, 1, b'p']);
        f.queue(Reply::Close(1009, "too big"));
        assert_eq!(&f.queued[..4], &[0x88, 9, 0x03, 0xf1]);
        f.queue(Reply::Pong(Vec::new()));
        assert_eq!(f.queued[0], 0x88, "a close is not replaced");
    }

    /// A client that pings while the broker's pong is stuck half written gets whole frames:
    /// the half-sent pong is finished before the next one starts.
    #[tokio::test]
    async fn a_pong_half_written_is_finished_before_the_next_one() {
        let (ours, mut peer) = tokio::io::duplex(3);
        let mut ws = WsStream::new(ours, Bytes::new(), &WebSocketConfig::default());
        let mut cx = Context::from_waker(std::task::Waker::noop());
        ws.out.queue(Reply::Pong(b"first".to_vec()));
        assert!(
            ws.poll_send_control(&mut cx).is_pending(),
            "3 of 7 bytes fit"
        );
        ws.out.queue(Reply::Pong(b"second".to_vec()));
        ws.out.queue(Reply::Pong(b"third".to_vec()));
        let mut wire = Vec::new();
        while ws.poll_send_control(&mut cx).is_pending() {
            let mut chunk = [0u8; 3];
            let n = peer.read(&mut chunk).await.unwrap();
            wire.extend_from_slice(&chunk[..n]);
        }
        while wire.len() < 14 {
            let mut chunk = [0u8; 16];
            let n = peer.read(&mut chunk).await.unwrap();
            wire.extend_from_slice(&chunk[..n]);
        }
        let mut want = vec![0x8a, 5];
        want.extend_from_slice(b"first");
        want.extend_from_slice(&[0x8a, 5]);
        want.extend_from_slice(b"third");
        assert_eq!(wire, want);
    }

    /// The whole stream over a real socket pair: an upgrade with a frame sent before the
    /// 101, payloads read back, a ping answered, data written as frames.
    #[tokio::test]
    async fn upgrade_then_frames_both_ways_over_a_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut request = b"GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
                Connection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\n\
                Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                Sec-WebSocket-Protocol: mqtt\r\n\r\n"
                .to_vec();
            request.extend(frame(true, 0x2, b"early", [1, 2, 3, 4]));
            tcp.write_all(&request).await.unwrap();
            let mut response = vec![0u8; 1024];
            let mut got = 0;
            while !response[..got].windows(4).any(|w| w == b"\r\n\r\n") {
                got += tcp.read(&mut response[got..]).await.unwrap();
            }
            let text = String::from_utf8_lossy(&response[..got]).to_string();
            assert!(text.starts_with("HTTP/1.1 101"), "{text}");
            assert!(text.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{text}");
            tcp.write_all(&frame(true, 0x9, b"hi", [3; 4]))
                .await
                .unwrap();
            tcp.write_all(&frame(true, 0x2, b" and late", [4; 4]))
                .await
                .unwrap();
            let mut back = vec![0u8; 11];
            tcp.read_exact(&mut back).await.unwrap();
            back
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = upgrade(tcp, &WebSocketConfig::default()).await.unwrap();
        let mut got = Vec::new();
        while got.len() < b"early and late".len() {
            let mut buf = [0u8; 64];
            let n = ws.read(&mut buf).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"early and late");
        ws.write_all(b"reply").await.unwrap();
        ws.flush().await.unwrap();
        let back = client.await.unwrap();
        // The pong, then the data frame.
        assert_eq!(&back[..4], &[0x8a, 2, b'h', b'i']);
        assert_eq!(&back[4..], &[0x82, 5, b'r', b'e', b'p', b'l', b'y']);
    }
}
