//! `Socket`: the only code that reads or writes a client's byte stream, moving bytes
//! between it and a [`Framing`]'s buffers. It works over any `AsyncRead + AsyncWrite`
//! stream, so TCP, TLS, WebSocket and QUIC streams share it. `Connection` is the two
//! together, as the handshake uses them; a connected client splits it into the socket (its
//! I/O shell's) and the framing (its core's).
//!
//! Reads are cancel-safe: [`Socket::fill`] only appends to the read buffer, so dropping it
//! inside `select!` loses nothing. Writes are batched: packets are encoded into the write
//! buffer and sent with one [`Socket::flush`].

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use messs_codec::{DecodeError, Limits, Packet, Protocol};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::framing::{Framing, MAX_READ, MIN_READ};
use crate::error::BrokerError;

/// A byte stream a connection runs over. `poll_read_ready` lets an idle connection wait for
/// data without holding a read buffer (and without a waiter node in its future); a stream
/// that cannot tell reports ready at once and then waits inside the read, buffer reserved.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send {
    /// Ready when a read is likely not to block.
    fn poll_read_ready(&self, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Transport for tokio::net::TcpStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        tokio::net::TcpStream::poll_read_ready(self, cx)
    }
}

/// TLS: always "ready". rustls may hold decrypted bytes that the socket's readiness knows
/// nothing about (a record larger than the last read), so waiting on the socket could
/// stall; an idle TLS connection waits inside the read instead, with its small buffer.
impl Transport for tokio_rustls::server::TlsStream<tokio::net::TcpStream> {}

/// One client's byte stream.
pub(crate) struct Socket<S> {
    stream: S,
    /// Seconds (a `u32`: this struct is in every idle connection).
    write_timeout_secs: u32,
}

impl<S: Transport> Socket<S> {
    /// Reads more bytes into `frames`' read buffer (see [`Socket::poll_fill`]).
    pub async fn fill(&mut self, frames: &mut Framing) -> std::io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx, frames)).await
    }

    /// Reads more bytes into `frames`' read buffer. Ready with 0 at end of stream.
    ///
    /// The read size adapts: it doubles while reads fill the buffer and halves while they
    /// use little of it, so a busy connection reads 64 KiB per system call. An idle one
    /// holds no buffer while it waits: it waits for readiness first where the stream can
    /// tell, and a buffer reserved for a read that found nothing is given back.
    pub fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        frames: &mut Framing,
    ) -> Poll<std::io::Result<usize>> {
        if frames.read_buf.is_empty() && self.stream.poll_read_ready(cx)?.is_pending() {
            // Idle: the buffer goes back (the handshake's, or the last busy read's).
            if frames.read_buf.capacity() > 0 {
                frames.read_buf = BytesMut::new();
            }
            return Poll::Pending;
        }
        let chunk = frames.read_chunk as usize;
        if frames.read_buf.capacity() - frames.read_buf.len() < chunk / 2 {
            frames.read_buf.reserve(chunk);
        }
        let spare = frames.read_buf.capacity() - frames.read_buf.len();
        let n = match tokio_util::io::poll_read_buf(
            Pin::new(&mut self.stream),
            cx,
            &mut frames.read_buf,
        ) {
            Poll::Ready(n) => n?,
            Poll::Pending => {
                if frames.read_buf.is_empty() {
                    frames.read_buf = BytesMut::new();
                }
                return Poll::Pending;
            }
        };
        if n == spare {
            frames.read_chunk = (frames.read_chunk * 2).min(MAX_READ);
        } else if n < chunk / 4 {
            frames.read_chunk = (frames.read_chunk / 2).max(MIN_READ);
        }
        Poll::Ready(Ok(n))
    }

    /// Writes everything `frames` has queued, within the write timeout (see
    /// [`Socket::poll_flush`]).
    pub async fn flush(&mut self, frames: &mut Framing) -> Result<(), BrokerError> {
        let mut deadline = None;
        std::future::poll_fn(|cx| self.poll_flush(cx, frames, &mut deadline)).await
    }

    /// Writes everything `frames` has queued. The common case — the socket takes it all at
    /// once — needs no timer; only a write that would block starts `deadline` (boxed, and
    /// kept by the caller across polls until the flush ends), which fails the flush with
    /// [`BrokerError::WriteTimeout`] if the peer does not read in time.
    ///
    /// What is written leaves the buffer at once, so a flush that fails or times out (or is
    /// abandoned) leaves exactly the unwritten rest: the DISCONNECT that closing queues
    /// behind it continues a valid stream instead of repeating bytes.
    pub fn poll_flush(
        &mut self,
        cx: &mut Context<'_>,
        frames: &mut Framing,
        deadline: &mut Option<Pin<Box<tokio::time::Sleep>>>,
    ) -> Poll<Result<(), BrokerError>> {
        let write_buf = &mut frames.write_buf;
        while !write_buf.is_empty() {
            match Pin::new(&mut self.stream).poll_write(cx, write_buf) {
                Poll::Ready(Ok(0)) => {
                    *deadline = None;
                    return Poll::Ready(Err(
                        std::io::Error::from(std::io::ErrorKind::WriteZero).into()
                    ));
                }
                Poll::Ready(Ok(n)) => write_buf.advance(n),
                Poll::Ready(Err(e)) => {
                    *deadline = None;
                    return Poll::Ready(Err(e.into()));
                }
                Poll::Pending => return self.poll_write_deadline(cx, deadline),
            }
        }
        // TCP has nothing to flush; a stream that does (TLS) is held to the deadline too.
        match Pin::new(&mut self.stream).poll_flush(cx) {
            Poll::Ready(result) => {
                *deadline = None;
                result?;
            }
            Poll::Pending => return self.poll_write_deadline(cx, deadline),
        }
        // Released after every flush: an idle connection holds no write buffer, and a busy
        // one pays one allocation per batch, not per message.
        *write_buf = BytesMut::new();
        Poll::Ready(Ok(()))
    }

    /// A write would block: pending until the write timeout, started now if not yet.
    fn poll_write_deadline(
        &self,
        cx: &mut Context<'_>,
        deadline: &mut Option<Pin<Box<tokio::time::Sleep>>>,
    ) -> Poll<Result<(), BrokerError>> {
        let timeout = self.write_timeout();
        let sleep = deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        ready!(sleep.as_mut().poll(cx));
        *deadline = None;
        Poll::Ready(Err(BrokerError::WriteTimeout))
    }

    /// Flushes what is queued (briefly: at most 2 s, or not at all when the client is known
    /// not to read, `patient` false) and shuts the stream down; errors are irrelevant now.
    pub async fn close(&mut self, frames: &mut Framing, patient: bool) {
        self.write_timeout_secs = if patient {
            self.write_timeout_secs.min(2)
        } else {
            0
        };
        let _ = self.flush(frames).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.stream.shutdown()).await;
    }

    fn write_timeout(&self) -> Duration {
        Duration::from_secs(u64::from(self.write_timeout_secs))
    }
}

/// A framed MQTT connection over a byte stream, as the handshake uses it.
pub(crate) struct Connection<S> {
    socket: Socket<S>,
    frames: Framing,
}

impl<S: Transport> Connection<S> {
    /// Wraps a stream; `limits` applies from the first packet (the pre-auth CONNECT limit).
    pub fn new(stream: S, limits: Limits, write_timeout: Duration) -> Self {
        let write_timeout_secs = u32::try_from(write_timeout.as_secs()).unwrap_or(u32::MAX);
        Connection {
            socket: Socket {
                stream,
                write_timeout_secs,
            },
            frames: Framing::new(limits),
        }
    }

    /// The socket and the framing, for a connected client's shell and core.
    pub fn into_parts(self) -> (Socket<S>, Framing) {
        (self.socket, self.frames)
    }

    /// Sets the protocol level and limits once CONNECT is accepted.
    pub fn configure(&mut self, protocol: Protocol, limits: Limits) {
        self.frames.configure(protocol, limits);
    }

    /// Reads more bytes (see [`Socket::fill`]).
    pub async fn fill(&mut self) -> std::io::Result<usize> {
        self.socket.fill(&mut self.frames).await
    }

    /// Decodes the next complete packet already buffered, if any.
    pub fn next_packet(&mut self) -> Result<Option<Packet>, DecodeError> {
        self.frames.next_packet()
    }

    /// The type of the packet at the front of the read buffer, once its first byte is in.
    pub fn peek_type(&self) -> Option<u8> {
        self.frames.peek_type()
    }

    /// Encodes a packet into the write buffer.
    pub fn queue(&mut self, packet: &Packet) -> Result<(), BrokerError> {
        self.frames.queue(packet)
    }

    /// Encodes a CONNACK or DISCONNECT within the peer's Maximum Packet Size (see
    /// [`Framing::queue_within`]).
    pub fn queue_within(&mut self, packet: Packet, max_size: usize) -> Result<bool, BrokerError> {
        self.frames.queue_within(packet, max_size)
    }

    /// Writes everything queued (see [`Socket::flush`]).
    pub async fn flush(&mut self) -> Result<(), BrokerError> {
        self.socket.flush(&mut self.frames).await
    }

    /// Flushes what is queued (briefly) and shuts the stream down.
    pub async fn close(&mut self) {
        self.socket.close(&mut self.frames, true).await;
    }

    /// The protocol level in force.
    pub fn protocol(&self) -> Protocol {
        self.frames.protocol()
    }
}
