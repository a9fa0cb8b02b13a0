//! `Connection`: owns one client's byte stream and its read and write buffers, and is the
//! only code that reads or writes frames. It works over any `AsyncRead + AsyncWrite` stream,
//! so TCP, TLS, WebSocket and QUIC streams share it.
//!
//! Reads are cancel-safe: [`Connection::fill`] only appends to the read buffer, so dropping
//! it inside `select!` loses nothing. Writes are batched: packets are encoded into the write
//! buffer and sent with one [`Connection::flush`].

use std::time::Duration;

use bytes::BytesMut;
use messs_codec::{decode, encode, encode_publish, DecodeError, Limits, Packet, Protocol, Publish};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::BrokerError;

/// Read in chunks of this size; buffers start empty and grow on demand.
const READ_CHUNK: usize = 4096;
/// Buffers larger than this are released once empty, so one burst does not pin memory.
const SHRINK_ABOVE: usize = 64 * 1024;

/// A framed MQTT connection over a byte stream.
pub(crate) struct Connection<S> {
    stream: S,
    read_buf: BytesMut,
    write_buf: BytesMut,
    protocol: Protocol,
    limits: Limits,
    write_timeout: Duration,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// Wraps a stream; `limits` applies from the first packet (the pre-auth CONNECT limit).
    pub fn new(stream: S, limits: Limits, write_timeout: Duration) -> Self {
        Connection {
            stream,
            read_buf: BytesMut::new(),
            write_buf: BytesMut::new(),
            protocol: Protocol::V5,
            limits,
            write_timeout,
        }
    }

    /// Sets the protocol level and limits once CONNECT is accepted.
    pub fn configure(&mut self, protocol: Protocol, limits: Limits) {
        self.protocol = protocol;
        self.limits = limits;
    }

    /// Reads more bytes into the read buffer. Returns 0 at end of stream. Cancel-safe.
    pub async fn fill(&mut self) -> std::io::Result<usize> {
        if self.read_buf.capacity() - self.read_buf.len() < READ_CHUNK / 4 {
            self.read_buf.reserve(READ_CHUNK);
        }
        self.stream.read_buf(&mut self.read_buf).await
    }

    /// Decodes the next complete packet already buffered, if any.
    pub fn next_packet(&mut self) -> Result<Option<Packet>, DecodeError> {
        let packet = decode(&mut self.read_buf, self.protocol, &self.limits)?;
        if self.read_buf.is_empty() && self.read_buf.capacity() > SHRINK_ABOVE {
            self.read_buf = BytesMut::new();
        }
        Ok(packet)
    }

    /// The type of the packet at the front of the read buffer, once its first byte is in.
    pub fn peek_type(&self) -> Option<u8> {
        self.read_buf.first().map(|b| b >> 4)
    }

    /// Encodes a packet into the write buffer.
    pub fn queue(&mut self, packet: &Packet) -> Result<(), BrokerError> {
        encode(packet, self.protocol, &mut self.write_buf)?;
        Ok(())
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

    /// Writes everything queued, within the write timeout.
    pub async fn flush(&mut self) -> Result<(), BrokerError> {
        if self.write_buf.is_empty() {
            return Ok(());
        }
        let write = async {
            self.stream.write_all(&self.write_buf).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(self.write_timeout, write).await {
            Ok(result) => result?,
            Err(_) => return Err(BrokerError::WriteTimeout),
        }
        self.write_buf.clear();
        if self.write_buf.capacity() > SHRINK_ABOVE {
            self.write_buf = BytesMut::new();
        }
        Ok(())
    }

    /// Flushes what is queued (briefly) and shuts the stream down; errors are irrelevant now.
    pub async fn close(&mut self) {
        self.write_timeout = self.write_timeout.min(Duration::from_secs(2));
        let _ = self.flush().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.stream.shutdown()).await;
    }

    /// The protocol level in force.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }
}
