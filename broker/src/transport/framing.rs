//! `Framing`: one connection's MQTT framing without its socket — the read buffer packets are
//! decoded from, the write buffer packets are encoded into, and the protocol level and
//! limits both follow. It does no I/O: the connection's socket fills and drains its
//! buffers, so a connected client's protocol core can be driven with bytes in tests.

use bytes::BytesMut;
use messs_codec::{decode, encode, encode_publish, DecodeError, Limits, Packet, Protocol, Publish};

use crate::error::BrokerError;

/// Smallest read: what an idle connection holds while it waits for bytes.
pub(super) const MIN_READ: u32 = 256;
/// Largest read: a busy connection grows to this, doubling while reads fill the buffer.
pub(super) const MAX_READ: u32 = 64 * 1024;

/// The framing state of one connection.
pub(crate) struct Framing {
    pub(super) read_buf: BytesMut,
    pub(super) write_buf: BytesMut,
    /// Current read size, adapted to the traffic between `MIN_READ` and `MAX_READ`.
    pub(super) read_chunk: u32,
    protocol: Protocol,
    /// The codec's limits, kept in 12 bytes instead of 24 (this is in every idle
    /// connection); `u32::MAX` stands for no limit.
    limits: [u32; 3],
}

fn pack(limits: Limits) -> [u32; 3] {
    let small = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
    [
        small(limits.max_packet_size),
        small(limits.max_user_properties),
        small(limits.max_topic_filters),
    ]
}

fn unpack(limits: [u32; 3]) -> Limits {
    let wide = |v: u32| {
        if v == u32::MAX {
            usize::MAX
        } else {
            v as usize
        }
    };
    Limits {
        max_packet_size: wide(limits[0]),
        max_user_properties: wide(limits[1]),
        max_topic_filters: wide(limits[2]),
    }
}

impl Framing {
    /// Empty buffers; `limits` applies from the first packet (the pre-auth CONNECT limit).
    pub(crate) fn new(limits: Limits) -> Self {
        Framing {
            read_buf: BytesMut::new(),
            write_buf: BytesMut::new(),
            read_chunk: MIN_READ,
            protocol: Protocol::V5,
            limits: pack(limits),
        }
    }

    /// Sets the protocol level and limits once CONNECT is accepted.
    pub(crate) fn configure(&mut self, protocol: Protocol, limits: Limits) {
        self.protocol = protocol;
        self.limits = pack(limits);
    }

    /// Appends bytes as if read from the socket (tests drive the client core this way).
    #[cfg(test)]
    pub(crate) fn receive(&mut self, bytes: &[u8]) {
        self.read_buf.extend_from_slice(bytes);
    }

    /// Takes everything encoded and not yet written (tests read the core's output this way).
    #[cfg(test)]
    pub(crate) fn take_written(&mut self) -> BytesMut {
        std::mem::take(&mut self.write_buf)
    }

    /// Decodes the next complete packet already buffered, if any. Once the buffer is
    /// empty its memory is released (payloads decoded from it keep their own reference).
    pub(crate) fn next_packet(&mut self) -> Result<Option<Packet>, DecodeError> {
        let packet = decode(&mut self.read_buf, self.protocol, &unpack(self.limits))?;
        if self.read_buf.is_empty() && self.read_buf.capacity() > 0 {
            self.read_buf = BytesMut::new();
        }
        Ok(packet)
    }

    /// Bytes read and not yet decoded.
    pub(crate) fn buffered(&self) -> usize {
        self.read_buf.len()
    }

    /// The type of the packet at the front of the read buffer, once its first byte is in.
    pub(crate) fn peek_type(&self) -> Option<u8> {
        self.read_buf.first().map(|b| b >> 4)
    }

    /// Bytes encoded and not yet written.
    pub(crate) fn pending_out(&self) -> usize {
        self.write_buf.len()
    }

    /// Encodes a packet into the write buffer.
    pub(crate) fn queue(&mut self, packet: &Packet) -> Result<(), BrokerError> {
        encode(packet, self.protocol, &mut self.write_buf)?;
        Ok(())
    }

    /// Encodes a CONNACK or DISCONNECT within the peer's Maximum Packet Size: if it would be
    /// larger, the Reason String and User Properties are left out [MQTT-3.2.2-19],
    /// [MQTT-3.14.2-3]; if it is still larger, nothing is sent. True if queued.
    pub(crate) fn queue_within(
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
    pub(crate) fn queue_publish(
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

    /// Encodes a delivery of `message` that carries no properties (see
    /// `Delivery::is_plain`) unless it would exceed `max_size`; false if it was too large
    /// (nothing is queued then).
    pub(crate) fn queue_plain_publish(
        &mut self,
        flags: messs_codec::PublishFlags,
        message: &crate::message::Message,
        max_size: usize,
    ) -> Result<bool, BrokerError> {
        let start = self.write_buf.len();
        messs_codec::encode_plain_publish(
            flags,
            message.topic.as_str(),
            &message.payload,
            self.protocol,
            &mut self.write_buf,
        )?;
        if self.write_buf.len() - start > max_size {
            self.write_buf.truncate(start);
            return Ok(false);
        }
        Ok(true)
    }

    /// The protocol level in force.
    pub(crate) fn protocol(&self) -> Protocol {
        self.protocol
    }
}
