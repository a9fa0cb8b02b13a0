//! `Connection`: owns one client's byte stream and its read and write buffers, and is the
//! only code that reads or writes frames. It works over any `AsyncRead + AsyncWrite` stream,
//! so TCP, TLS, WebSocket and QUIC streams share it.
//!
//! Reads are cancel-safe: [`Connection::fill`] only appends to the read buffer, so dropping
//! it inside `select!` loses nothing. Writes are batched: packets are encoded into the write
//! buffer and sent with one [`Connection::flush`].

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use messs_codec::{decode, encode, encode_publish, DecodeError, Limits, Packet, Protocol, Publish};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::BrokerError;

/// Smallest read: what an idle connection holds while it waits for bytes.
const MIN_READ: u32 = 256;
/// Largest read: a busy connection grows to this, doubling while reads fill the buffer.
const MAX_READ: u32 = 64 * 1024;

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

/// A framed MQTT connection over a byte stream.
pub(crate) struct Connection<S> {
    stream: S,
    read_buf: BytesMut,
    write_buf: BytesMut,
    /// Current read size, adapted to the traffic between `MIN_READ` and `MAX_READ`.
    read_chunk: u32,
    protocol: Protocol,
    limits: Limits,
    /// Seconds (a `u32`: this struct is in every idle connection).
    write_timeout_secs: u32,
}

impl<S: Transport> Connection<S> {
    /// Wraps a stream; `limits` applies from the first packet (the pre-auth CONNECT limit).
    pub fn new(stream: S, limits: Limits, write_timeout: Duration) -> Self {
        let write_timeout_secs = u32::try_from(write_timeout.as_secs()).unwrap_or(u32::MAX);
        Connection {
            stream,
            read_buf: BytesMut::new(),
            write_buf: BytesMut::new(),
            read_chunk: MIN_READ,
            protocol: Protocol::V5,
            limits,
            write_timeout_secs,
        }
    }

    /// Sets the protocol level and limits once CONNECT is accepted.
    pub fn configure(&mut self, protocol: Protocol, limits: Limits) {
        self.protocol = protocol;
        self.limits = limits;
    }

    /// Reads more bytes into the read buffer. Returns 0 at end of stream. Cancel-safe: it
    /// only appends to the buffer.
    ///
    /// The read size adapts: it doubles while reads fill the buffer and halves while they
    /// use little of it, so a busy connection reads 64 KiB per system call and an idle one
    /// holds no buffer at all while it waits.
    pub async fn fill(&mut self) -> std::io::Result<usize> {
        if self.read_buf.is_empty() {
            let stream = &mut self.stream; // `&mut` keeps the future `Send` without `S: Sync`
            std::future::poll_fn(move |cx| stream.poll_read_ready(cx)).await?;
        }
        let chunk = self.read_chunk as usize;
        if self.read_buf.capacity() - self.read_buf.len() < chunk / 2 {
            self.read_buf.reserve(chunk);
        }
        let spare = self.read_buf.capacity() - self.read_buf.len();
        let n = self.stream.read_buf(&mut self.read_buf).await?;
        if n == spare {
            self.read_chunk = (self.read_chunk * 2).min(MAX_READ);
        } else if n < chunk / 4 {
            self.read_chunk = (self.read_chunk / 2).max(MIN_READ);
        }
        Ok(n)
    }

    /// Decodes the next complete packet already buffered, if any. Once the buffer is
    /// empty its memory is released (payloads decoded from it keep their own reference).
    pub fn next_packet(&mut self) -> Result<Option<Packet>, DecodeError> {
        let packet = decode(&mut self.read_buf, self.protocol, &self.limits)?;
        if self.read_buf.is_empty() && self.read_buf.capacity() > 0 {
            self.read_buf = BytesMut::new();
        }
        Ok(packet)
    }

    /// Bytes read and not yet decoded.
    pub fn buffered(&self) -> usize {
        self.read_buf.len()
    }

    /// The type of the packet at the front of the read buffer, once its first byte is in.
    pub fn peek_type(&self) -> Option<u8> {
        self.read_buf.first().map(|b| b >> 4)
    }

    /// Bytes encoded and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.write_buf.len()
    }

    /// Encodes a packet into the write buffer.
    pub fn queue(&mut self, packet: &Packet) -> Result<(), BrokerError> {
        encode(packet, self.protocol, &mut self.write_buf)?;
        Ok(())
    }

    /// Encodes a CONNACK or DISCONNECT within the peer's Maximum Packet Size: if it would be
    /// larger, the Reason String and User Properties are left out [MQTT-3.2.2-19],
    /// [MQTT-3.14.2-3]; if it is still larger, nothing is sent. True if queued.
    pub fn queue_within(
        &mut self,
        mut packet: Packet,
        max_size: usize,
    ) -> Result<bool, BrokerError> {
        let start = self.write_buf.len();
        self.queue(&packet)?;
        if self.write_buf.len() - start <= max_size {
            return Ok(true);
        }
        self.write_buf.truncate(start);
        match &mut packet {
            Packet::ConnAck(ack) => {
                ack.properties.reason_string = None;
                ack.properties.user_properties.clear();
            }
            Packet::Disconnect(d) => {
                d.properties.reason_string = None;
                d.properties.user_properties.clear();
            }
            _ => {}
        }
        self.queue(&packet)?;
        if self.write_buf.len() - start <= max_size {
            return Ok(true);
        }
        self.write_buf.truncate(start);
        Ok(false)
    }

    /// Encodes a PUBLISH unless it would exceed `max_size` bytes; false if it was too large
    /// (nothing is queued then).
    pub fn queue_publish(
        &mut self,
        publish: &Publish,
        max_size: usize,
    ) -> Result<bool, BrokerError> {
        let start = self.write_buf.len();
        encode_publish(publish, self.protocol, &mut self.write_buf)?;
        if self.write_buf.len() - start > max_size {
            self.write_buf.truncate(start);
            return Ok(false);
        }
        Ok(true)
    }

    /// Bytes queued and not yet written.
    pub fn pending_out(&self) -> usize {
        self.write_buf.len()
    }

    /// Writes everything queued, within the write timeout.
    ///
    /// The common case — the socket takes it all at once — needs no timer; only a write that
    /// would block gets a (boxed) timeout, which keeps every connection's future small.
    pub async fn flush(&mut self) -> Result<(), BrokerError> {
        // What is written leaves the buffer at once, so a flush that fails or times out
        // (or is cancelled) leaves exactly the unwritten rest: the DISCONNECT that closing
        // queues behind it continues a valid stream instead of repeating bytes.
        while !self.write_buf.is_empty() {
            let attempt = std::future::poll_fn(|cx| {
                match Pin::new(&mut self.stream).poll_write(cx, &self.write_buf) {
                    Poll::Pending => Poll::Ready(None),
                    Poll::Ready(r) => Poll::Ready(Some(r)),
                }
            })
            .await;
            match attempt {
                Some(Ok(0)) => {
                    return Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into())
                }
                Some(Ok(n)) => self.write_buf.advance(n),
                Some(Err(e)) => return Err(e.into()),
                None => break,
            }
        }
        if !self.write_buf.is_empty() {
            let timeout = self.write_timeout();
            let (stream, buf) = (&mut self.stream, &mut self.write_buf);
            let slow = Box::pin(tokio::time::timeout(timeout, async move {
                while !buf.is_empty() {
                    match stream.write(buf).await? {
                        0 => return Err(std::io::Error::from(std::io::ErrorKind::WriteZero)),
                        n => buf.advance(n),
                    }
                }
                Ok(())
            }));
            match slow.await {
                Ok(result) => result?,
                Err(_) => return Err(BrokerError::WriteTimeout),
            }
        }
        // TCP has nothing to flush; a stream that does (TLS) gets the boxed timeout too.
        let flushed = std::future::poll_fn(|cx| match Pin::new(&mut self.stream).poll_flush(cx) {
            Poll::Pending => Poll::Ready(None),
            Poll::Ready(r) => Poll::Ready(Some(r)),
        })
        .await;
        match flushed {
            Some(result) => result?,
            None => {
                let slow = Box::pin(tokio::time::timeout(
                    self.write_timeout(),
                    self.stream.flush(),
                ));
                match slow.await {
                    Ok(result) => result?,
                    Err(_) => return Err(BrokerError::WriteTimeout),
                }
            }
        }
        // Released after every flush: an idle connection holds no write buffer, and a busy
        // one pays one allocation per batch, not per message.
        self.write_buf = BytesMut::new();
        Ok(())
    }

    /// Flushes what is queued (briefly) and shuts the stream down; errors are irrelevant now.
    pub async fn close(&mut self) {
        self.write_timeout_secs = self.write_timeout_secs.min(2);
        let _ = self.flush().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.stream.shutdown()).await;
    }

    fn write_timeout(&self) -> Duration {
        Duration::from_secs(u64::from(self.write_timeout_secs))
    }

    /// The protocol level in force.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }
}
