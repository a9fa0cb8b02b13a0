//! The packet enum and the two entry points, [`decode`] and [`encode`].
//!
//! Decoding checks the fixed header first: packet type, reserved flag bits and the remaining
//! length, which is compared with the maximum packet size **before** the body is buffered,
//! so an oversized packet costs the reader at most five bytes.

mod ack;
mod connack;
mod connect;
mod disconnect;
mod publish;
mod subscribe;

pub use ack::PubResponse;
pub use connack::ConnAck;
pub use connect::{Connect, Will};
pub use disconnect::{Auth, Disconnect};
pub use publish::{Publish, QosPid};
pub use subscribe::{SubAck, Subscribe, Subscription, UnsubAck, Unsubscribe};

use bytes::{Buf, BufMut, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::reason::ReasonContext;
use crate::types::Protocol;
use crate::wire::{peek_remaining_length, write_length_prefixed};

/// Every MQTT control packet. Large variants are boxed so the enum stays small in queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// CONNECT (1).
    Connect(Box<Connect>),
    /// CONNACK (2).
    ConnAck(Box<ConnAck>),
    /// PUBLISH (3).
    Publish(Box<Publish>),
    /// PUBACK (4).
    PubAck(PubResponse),
    /// PUBREC (5).
    PubRec(PubResponse),
    /// PUBREL (6).
    PubRel(PubResponse),
    /// PUBCOMP (7).
    PubComp(PubResponse),
    /// SUBSCRIBE (8).
    Subscribe(Box<Subscribe>),
    /// SUBACK (9).
    SubAck(Box<SubAck>),
    /// UNSUBSCRIBE (10).
    Unsubscribe(Box<Unsubscribe>),
    /// UNSUBACK (11).
    UnsubAck(Box<UnsubAck>),
    /// PINGREQ (12).
    PingReq,
    /// PINGRESP (13).
    PingResp,
    /// DISCONNECT (14).
    Disconnect(Disconnect),
    /// AUTH (15, v5 only).
    Auth(Box<Auth>),
}

impl Packet {
    /// The packet's name, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Packet::Connect(_) => "CONNECT",
            Packet::ConnAck(_) => "CONNACK",
            Packet::Publish(_) => "PUBLISH",
            Packet::PubAck(_) => "PUBACK",
            Packet::PubRec(_) => "PUBREC",
            Packet::PubRel(_) => "PUBREL",
            Packet::PubComp(_) => "PUBCOMP",
            Packet::Subscribe(_) => "SUBSCRIBE",
            Packet::SubAck(_) => "SUBACK",
            Packet::Unsubscribe(_) => "UNSUBSCRIBE",
            Packet::UnsubAck(_) => "UNSUBACK",
            Packet::PingReq => "PINGREQ",
            Packet::PingResp => "PINGRESP",
            Packet::Disconnect(_) => "DISCONNECT",
            Packet::Auth(_) => "AUTH",
        }
    }
}

/// Limits the decoder enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest whole packet accepted, fixed header included.
    pub max_packet_size: usize,
    /// Most User Properties in one packet (per property list); more fail the packet before
    /// they are allocated.
    pub max_user_properties: usize,
    /// Most topic filters in one SUBSCRIBE or UNSUBSCRIBE; more fail the packet before they
    /// are allocated.
    pub max_topic_filters: usize,
}

impl Default for Limits {
    /// What the protocol itself allows: no limit beyond the largest encodable packet.
    fn default() -> Self {
        Limits {
            max_packet_size: crate::wire::MAX_VARINT as usize + 5,
            max_user_properties: usize::MAX,
            max_topic_filters: usize::MAX,
        }
    }
}

impl Limits {
    /// The protocol's limits with a smaller maximum packet size.
    pub fn with_max_packet_size(max_packet_size: usize) -> Self {
        Limits {
            max_packet_size,
            ..Limits::default()
        }
    }
}

/// Decodes one packet from the front of `buf`.
///
/// Returns `Ok(None)` when `buf` holds only part of a packet (nothing is consumed; capacity
/// for the rest is reserved). `protocol` is the connection's level from its CONNECT; a
/// CONNECT itself is decoded whatever `protocol` says. On error the connection must close.
pub fn decode(
    buf: &mut BytesMut,
    protocol: Protocol,
    limits: &Limits,
) -> Result<Option<Packet>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let packet_type = first >> 4;
    let flags = first & 0x0F;
    let expected_flags = match packet_type {
        3 => flags,
        6 | 8 | 10 => 0b0010,
        _ => 0,
    };
    if flags != expected_flags {
        return Err(DecodeError::ReservedFlags { packet_type });
    }
    if packet_type == 0 || (packet_type == 15 && !protocol.is_v5()) {
        return Err(DecodeError::InvalidPacketType(packet_type));
    }
    let Some((remaining, len_bytes)) = peek_remaining_length(&buf[1..])? else {
        return Ok(None);
    };
    let total = 1 + len_bytes + remaining;
    if total > limits.max_packet_size {
        return Err(DecodeError::PacketTooLarge {
            size: total,
            max: limits.max_packet_size,
        });
    }
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let mut body = buf.split_to(total).freeze();
    body.advance(1 + len_bytes);
    let v5 = protocol.is_v5();
    let packet = match packet_type {
        1 => Packet::Connect(Box::new(Connect::decode(body, limits)?)),
        2 => Packet::ConnAck(Box::new(ConnAck::decode(body, v5, limits)?)),
        3 => Packet::Publish(Box::new(Publish::decode(flags, body, v5, limits)?)),
        4 => Packet::PubAck(PubResponse::decode(
            body,
            v5,
            ReasonContext::PubAckOrRec,
            limits,
        )?),
        5 => Packet::PubRec(PubResponse::decode(
            body,
            v5,
            ReasonContext::PubAckOrRec,
            limits,
        )?),
        6 => Packet::PubRel(PubResponse::decode(
            body,
            v5,
            ReasonContext::PubRelOrComp,
            limits,
        )?),
        7 => Packet::PubComp(PubResponse::decode(
            body,
            v5,
            ReasonContext::PubRelOrComp,
            limits,
        )?),
        8 => Packet::Subscribe(Box::new(Subscribe::decode(body, v5, limits)?)),
        9 => Packet::SubAck(Box::new(SubAck::decode(body, v5, limits)?)),
        10 => Packet::Unsubscribe(Box::new(Unsubscribe::decode(body, v5, limits)?)),
        11 => Packet::UnsubAck(Box::new(UnsubAck::decode(body, v5, limits)?)),
        12 | 13 => {
            if !body.is_empty() {
                return Err(DecodeError::TrailingBytes);
            }
            if packet_type == 12 {
                Packet::PingReq
            } else {
                Packet::PingResp
            }
        }
        14 => Packet::Disconnect(Disconnect::decode(body, v5, limits)?),
        15 if v5 => Packet::Auth(Box::new(Auth::decode(body, limits)?)),
        other => return Err(DecodeError::InvalidPacketType(other)),
    };
    Ok(Some(packet))
}

/// Appends the encoding of `packet` at `protocol` level to `buf`. On error nothing is
/// appended.
pub fn encode(packet: &Packet, protocol: Protocol, buf: &mut BytesMut) -> Result<(), EncodeError> {
    let start = buf.len();
    let result = encode_inner(packet, protocol, buf);
    if result.is_err() {
        buf.truncate(start);
    }
    result
}

fn encode_inner(
    packet: &Packet,
    protocol: Protocol,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    let v5 = protocol.is_v5();
    match packet {
        Packet::Publish(p) => encode_publish_inner(p, v5, buf),
        Packet::Connect(c) => body(buf, 0x10, |b| c.encode_body(b)),
        Packet::ConnAck(c) => body(buf, 0x20, |b| c.encode_body(b, protocol)),
        Packet::PubAck(r) => body(buf, 0x40, |b| r.encode_body(b, v5)),
        Packet::PubRec(r) => body(buf, 0x50, |b| r.encode_body(b, v5)),
        Packet::PubRel(r) => body(buf, 0x62, |b| r.encode_body(b, v5)),
        Packet::PubComp(r) => body(buf, 0x70, |b| r.encode_body(b, v5)),
        Packet::Subscribe(s) => body(buf, 0x82, |b| s.encode_body(b, v5)),
        Packet::SubAck(s) => body(buf, 0x90, |b| s.encode_body(b, v5)),
        Packet::Unsubscribe(u) => body(buf, 0xA2, |b| u.encode_body(b, v5)),
        Packet::UnsubAck(u) => body(buf, 0xB0, |b| u.encode_body(b, v5)),
        Packet::PingReq => body(buf, 0xC0, |_| Ok(())),
        Packet::PingResp => body(buf, 0xD0, |_| Ok(())),
        Packet::Disconnect(d) => body(buf, 0xE0, |b| d.encode_body(b, v5)),
        Packet::Auth(a) if v5 => body(buf, 0xF0, |b| a.encode_body(b)),
        Packet::Auth(_) => Err(EncodeError::NotInProtocol("AUTH")),
    }
}

/// Appends a PUBLISH without boxing it into a [`Packet`] first: the broker's delivery path
/// builds one per subscriber. On error nothing is appended.
pub fn encode_publish(
    publish: &Publish,
    protocol: Protocol,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    let start = buf.len();
    let result = encode_publish_inner(publish, protocol.is_v5(), buf);
    if result.is_err() {
        buf.truncate(start);
    }
    result
}

/// Appends a PUBLISH that carries no properties (in MQTT 5, an empty property list) from
/// borrowed parts: the broker's fan-out path, where building an owned [`Publish`] per
/// subscriber would touch the shared message's reference counts from every subscriber's
/// thread. The same bytes as [`encode_publish`] of the equivalent `Publish`. On error
/// nothing is appended.
pub fn encode_plain_publish(
    flags: PublishFlags,
    topic: &str,
    payload: &[u8],
    protocol: Protocol,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    let topic_len =
        u16::try_from(topic.len()).map_err(|_| EncodeError::FieldTooLong(topic.len()))?;
    let pid = flags.qos_pid.packet_id();
    let v5 = protocol.is_v5();
    let remaining =
        2 + topic.len() + 2 * usize::from(pid.is_some()) + usize::from(v5) + payload.len();
    if remaining > crate::wire::MAX_VARINT as usize {
        return Err(EncodeError::PacketTooLarge(remaining));
    }
    let mut prefix = [0u8; 4];
    let prefix_len = crate::wire::varint_into(&mut prefix, remaining);
    buf.reserve(1 + prefix_len + remaining);
    let first = 0x30
        | (u8::from(flags.dup) << 3)
        | (flags.qos_pid.qos().as_u8() << 1)
        | u8::from(flags.retain);
    buf.put_u8(first);
    buf.put_slice(&prefix[..prefix_len]);
    buf.put_u16(topic_len);
    buf.put_slice(topic.as_bytes());
    if let Some(pid) = pid {
        buf.put_u16(pid.get());
    }
    if v5 {
        buf.put_u8(0);
    }
    buf.put_slice(payload);
    Ok(())
}

/// The fixed-header flags and packet id of a PUBLISH (see [`encode_plain_publish`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishFlags {
    /// DUP: a resend.
    pub dup: bool,
    /// QoS and packet id.
    pub qos_pid: QosPid,
    /// RETAIN.
    pub retain: bool,
}

fn encode_publish_inner(p: &Publish, v5: bool, buf: &mut BytesMut) -> Result<(), EncodeError> {
    buf.reserve(p.topic.as_str().len() + p.payload.len() + 16);
    buf.put_u8(0x30 | p.flags());
    write_length_prefixed(buf, p.payload.len(), |b| p.encode_header(b, v5))?;
    buf.extend_from_slice(&p.payload);
    Ok(())
}

fn body<F>(buf: &mut BytesMut, first: u8, f: F) -> Result<(), EncodeError>
where
    F: FnOnce(&mut BytesMut) -> Result<(), EncodeError>,
{
    buf.put_u8(first);
    write_length_prefixed(buf, 0, f)
}
