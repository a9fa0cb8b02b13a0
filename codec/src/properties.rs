//! MQTT 5 properties (spec §2.2.2): one struct per packet kind, holding exactly the
//! properties that packet may carry. Decoding rejects unknown or misplaced identifiers
//! (malformed), repeated single-use properties and out-of-range values (protocol errors).

use std::num::{NonZeroU16, NonZeroU32};

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::topic::TopicName;
use crate::types::QoS;
use crate::wire::{
    read_binary, read_string, read_u16, read_u32, read_u8, read_varint, write_binary,
    write_length_prefixed, write_string, write_varint,
};

/// User properties: name/value pairs, in order, repeats allowed.
pub type UserProperties = Vec<(String, String)>;

mod id {
    pub const PAYLOAD_FORMAT: u8 = 0x01;
    pub const MESSAGE_EXPIRY: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_ID: u8 = 0x0B;
    pub const SESSION_EXPIRY: u8 = 0x11;
    pub const ASSIGNED_CLIENT_ID: u8 = 0x12;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const AUTH_METHOD: u8 = 0x15;
    pub const AUTH_DATA: u8 = 0x16;
    pub const REQUEST_PROBLEM_INFO: u8 = 0x17;
    pub const WILL_DELAY: u8 = 0x18;
    pub const REQUEST_RESPONSE_INFO: u8 = 0x19;
    pub const RESPONSE_INFO: u8 = 0x1A;
    pub const SERVER_REFERENCE: u8 = 0x1C;
    pub const REASON_STRING: u8 = 0x1F;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const MAXIMUM_QOS: u8 = 0x24;
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub const WILDCARD_SUB_AVAILABLE: u8 = 0x28;
    pub const SUB_ID_AVAILABLE: u8 = 0x29;
    pub const SHARED_SUB_AVAILABLE: u8 = 0x2A;
}

/// A decoded property value; its type is fixed by the identifier.
enum Value {
    Byte(u8),
    U16(u16),
    U32(u32),
    VarInt(u32),
    Str(String),
    Bin(Bytes),
    Pair((String, String)),
}

fn read_value(buf: &mut Bytes, pid: u8) -> Result<Value, DecodeError> {
    use id::*;
    Ok(match pid {
        PAYLOAD_FORMAT
        | REQUEST_PROBLEM_INFO
        | REQUEST_RESPONSE_INFO
        | MAXIMUM_QOS
        | RETAIN_AVAILABLE
        | WILDCARD_SUB_AVAILABLE
        | SUB_ID_AVAILABLE
        | SHARED_SUB_AVAILABLE => Value::Byte(read_u8(buf)?),
        SERVER_KEEP_ALIVE | RECEIVE_MAXIMUM | TOPIC_ALIAS_MAXIMUM | TOPIC_ALIAS => {
            Value::U16(read_u16(buf)?)
        }
        MESSAGE_EXPIRY | SESSION_EXPIRY | WILL_DELAY | MAXIMUM_PACKET_SIZE => {
            Value::U32(read_u32(buf)?)
        }
        SUBSCRIPTION_ID => Value::VarInt(read_varint(buf)?),
        CONTENT_TYPE | RESPONSE_TOPIC | ASSIGNED_CLIENT_ID | AUTH_METHOD | RESPONSE_INFO
        | SERVER_REFERENCE | REASON_STRING => Value::Str(read_string(buf)?),
        CORRELATION_DATA | AUTH_DATA => Value::Bin(read_binary(buf)?),
        USER_PROPERTY => Value::Pair((read_string(buf)?, read_string(buf)?)),
        _ => return Err(DecodeError::InvalidProperty { id: pid }),
    })
}

/// Reads the property length and calls `each` for every property in it.
fn read_properties(
    buf: &mut Bytes,
    mut each: impl FnMut(u8, Value) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    let len = read_varint(buf)? as usize;
    if buf.len() < len {
        return Err(DecodeError::Truncated);
    }
    let mut props = buf.split_to(len);
    while !props.is_empty() {
        let pid = read_varint(&mut props)?;
        let pid = u8::try_from(pid).map_err(|_| DecodeError::InvalidProperty { id: 0xFF })?;
        let value = read_value(&mut props, pid)?;
        each(pid, value)?;
    }
    Ok(())
}

fn once<T>(slot: &mut Option<T>, pid: u8, value: T) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::DuplicateProperty { id: pid });
    }
    *slot = Some(value);
    Ok(())
}

fn bool_value(pid: u8, v: u8) -> Result<bool, DecodeError> {
    match v {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(DecodeError::InvalidPropertyValue { id: pid }),
    }
}

/// Extracts a value of the expected shape, or reports a misplaced property.
macro_rules! take {
    ($value:expr, $variant:ident, $pid:expr) => {
        match $value {
            Value::$variant(v) => v,
            _ => return Err(DecodeError::InvalidProperty { id: $pid }),
        }
    };
}

fn put_byte(b: &mut BytesMut, pid: u8, v: Option<u8>) {
    if let Some(v) = v {
        b.put_u8(pid);
        b.put_u8(v);
    }
}
fn put_u16(b: &mut BytesMut, pid: u8, v: Option<u16>) {
    if let Some(v) = v {
        b.put_u8(pid);
        b.put_u16(v);
    }
}
fn put_u32(b: &mut BytesMut, pid: u8, v: Option<u32>) {
    if let Some(v) = v {
        b.put_u8(pid);
        b.put_u32(v);
    }
}
fn put_str(b: &mut BytesMut, pid: u8, v: Option<&str>) -> Result<(), EncodeError> {
    if let Some(v) = v {
        b.put_u8(pid);
        write_string(b, v)?;
    }
    Ok(())
}
fn put_bin(b: &mut BytesMut, pid: u8, v: Option<&[u8]>) -> Result<(), EncodeError> {
    if let Some(v) = v {
        b.put_u8(pid);
        write_binary(b, v)?;
    }
    Ok(())
}
fn put_user(b: &mut BytesMut, props: &UserProperties) -> Result<(), EncodeError> {
    for (k, v) in props {
        b.put_u8(id::USER_PROPERTY);
        write_string(b, k)?;
        write_string(b, v)?;
    }
    Ok(())
}

/// CONNECT properties (§3.1.2.11).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectProperties {
    /// Session Expiry Interval in seconds (absent = 0).
    pub session_expiry_interval: Option<u32>,
    /// How many QoS 1/2 PUBLISHes the client accepts at once.
    pub receive_maximum: Option<NonZeroU16>,
    /// The largest packet the client accepts.
    pub maximum_packet_size: Option<NonZeroU32>,
    /// How many topic aliases the client accepts from the server.
    pub topic_alias_maximum: Option<u16>,
    /// Request Response Information.
    pub request_response_information: Option<bool>,
    /// Request Problem Information.
    pub request_problem_information: Option<bool>,
    /// Authentication Method (enhanced authentication).
    pub authentication_method: Option<String>,
    /// Authentication Data.
    pub authentication_data: Option<Bytes>,
    /// User properties.
    pub user_properties: UserProperties,
}

impl ConnectProperties {
    pub(crate) fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        use id::*;
        let mut p = ConnectProperties::default();
        read_properties(buf, |pid, v| match pid {
            SESSION_EXPIRY => once(&mut p.session_expiry_interval, pid, take!(v, U32, pid)),
            RECEIVE_MAXIMUM => {
                let n = NonZeroU16::new(take!(v, U16, pid))
                    .ok_or(DecodeError::InvalidPropertyValue { id: pid })?;
                once(&mut p.receive_maximum, pid, n)
            }
            MAXIMUM_PACKET_SIZE => {
                let n = NonZeroU32::new(take!(v, U32, pid))
                    .ok_or(DecodeError::InvalidPropertyValue { id: pid })?;
                once(&mut p.maximum_packet_size, pid, n)
            }
            TOPIC_ALIAS_MAXIMUM => once(&mut p.topic_alias_maximum, pid, take!(v, U16, pid)),
            REQUEST_RESPONSE_INFO => {
                let b = bool_value(pid, take!(v, Byte, pid))?;
                once(&mut p.request_response_information, pid, b)
            }
            REQUEST_PROBLEM_INFO => {
                let b = bool_value(pid, take!(v, Byte, pid))?;
                once(&mut p.request_problem_information, pid, b)
            }
            AUTH_METHOD => once(&mut p.authentication_method, pid, take!(v, Str, pid)),
            AUTH_DATA => once(&mut p.authentication_data, pid, take!(v, Bin, pid)),
            USER_PROPERTY => {
                p.user_properties.push(take!(v, Pair, pid));
                Ok(())
            }
            _ => Err(DecodeError::InvalidProperty { id: pid }),
        })?;
        if p.authentication_data.is_some() && p.authentication_method.is_none() {
            // [MQTT-3.1.2-30] data without a method is a protocol error.
            return Err(DecodeError::InvalidPropertyValue { id: AUTH_DATA });
        }
        Ok(p)
    }

    pub(crate) fn encode(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        use id::*;
        write_length_prefixed(buf, 0, |b| {
            put_u32(b, SESSION_EXPIRY, self.session_expiry_interval);
            put_u16(
                b,
                RECEIVE_MAXIMUM,
                self.receive_maximum.map(NonZeroU16::get),
            );
            put_u32(
                b,
                MAXIMUM_PACKET_SIZE,
                self.maximum_packet_size.map(NonZeroU32::get),
            );
            put_u16(b, TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
            put_byte(
                b,
                REQUEST_RESPONSE_INFO,
                self.request_response_information.map(u8::from),
            );
            put_byte(
                b,
                REQUEST_PROBLEM_INFO,
                self.request_problem_information.map(u8::from),
            );
            put_str(b, AUTH_METHOD, self.authentication_method.as_deref())?;
            put_bin(b, AUTH_DATA, self.authentication_data.as_deref())?;
            put_user(b, &self.user_properties)
        })
    }
}

/// Will properties (§3.1.3.2), carried in the CONNECT payload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WillProperties {
    /// Seconds to wait before publishing the will.
    pub will_delay_interval: Option<u32>,
    /// True if the payload is UTF-8 text.
    pub payload_format_indicator: Option<bool>,
    /// Lifetime of the will message in seconds.
    pub message_expiry_interval: Option<u32>,
    /// Content type.
    pub content_type: Option<String>,
    /// Response topic.
    pub response_topic: Option<TopicName>,
    /// Correlation data.
    pub correlation_data: Option<Bytes>,
    /// User properties.
    pub user_properties: UserProperties,
}

impl WillProperties {
    pub(crate) fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        use id::*;
        let mut p = WillProperties::default();
        read_properties(buf, |pid, v| match pid {
            WILL_DELAY => once(&mut p.will_delay_interval, pid, take!(v, U32, pid)),
            PAYLOAD_FORMAT => {
                let b = bool_value(pid, take!(v, Byte, pid))?;
                once(&mut p.payload_format_indicator, pid, b)
            }
            MESSAGE_EXPIRY => once(&mut p.message_expiry_interval, pid, take!(v, U32, pid)),
            CONTENT_TYPE => once(&mut p.content_type, pid, take!(v, Str, pid)),
            RESPONSE_TOPIC => {
                let t = TopicName::new(&take!(v, Str, pid))?;
                once(&mut p.response_topic, pid, t)
            }
            CORRELATION_DATA => once(&mut p.correlation_data, pid, take!(v, Bin, pid)),
            USER_PROPERTY => {
                p.user_properties.push(take!(v, Pair, pid));
                Ok(())
            }
            _ => Err(DecodeError::InvalidProperty { id: pid }),
        })?;
        Ok(p)
    }

    pub(crate) fn encode(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        use id::*;
        write_length_prefixed(buf, 0, |b| {
            put_u32(b, WILL_DELAY, self.will_delay_interval);
            put_byte(
                b,
                PAYLOAD_FORMAT,
                self.payload_format_indicator.map(u8::from),
            );
            put_u32(b, MESSAGE_EXPIRY, self.message_expiry_interval);
            put_str(b, CONTENT_TYPE, self.content_type.as_deref())?;
            put_str(
                b,
                RESPONSE_TOPIC,
                self.response_topic.as_ref().map(TopicName::as_str),
            )?;
            put_bin(b, CORRELATION_DATA, self.correlation_data.as_deref())?;
            put_user(b, &self.user_properties)
        })
    }
}

/// CONNACK properties (§3.2.2.3).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnAckProperties {
    /// Session Expiry Interval the server uses, if it differs from the client's.
    pub session_expiry_interval: Option<u32>,
    /// How many QoS 1/2 PUBLISHes the server accepts at once.
    pub receive_maximum: Option<NonZeroU16>,
    /// Highest QoS the server supports (0 or 1; absent = 2).
    pub maximum_qos: Option<QoS>,
    /// Whether retained messages are supported.
    pub retain_available: Option<bool>,
    /// The largest packet the server accepts.
    pub maximum_packet_size: Option<NonZeroU32>,
    /// The client id the server assigned to an empty one.
    pub assigned_client_identifier: Option<String>,
    /// How many topic aliases the server accepts.
    pub topic_alias_maximum: Option<u16>,
    /// Human-readable reason.
    pub reason_string: Option<String>,
    /// User properties.
    pub user_properties: UserProperties,
    /// Whether wildcard subscriptions are supported.
    pub wildcard_subscription_available: Option<bool>,
    /// Whether subscription identifiers are supported.
    pub subscription_identifiers_available: Option<bool>,
    /// Whether shared subscriptions are supported.
    pub shared_subscription_available: Option<bool>,
    /// Keep alive the client must use instead of its own.
    pub server_keep_alive: Option<u16>,
    /// Response Information.
    pub response_information: Option<String>,
    /// Another server to use.
    pub server_reference: Option<String>,
    /// Authentication Method.
    pub authentication_method: Option<String>,
    /// Authentication Data.
    pub authentication_data: Option<Bytes>,
}

impl ConnAckProperties {
    pub(crate) fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        use id::*;
        let mut p = ConnAckProperties::default();
        read_properties(buf, |pid, v| match pid {
            SESSION_EXPIRY => once(&mut p.session_expiry_interval, pid, take!(v, U32, pid)),
            RECEIVE_MAXIMUM => {
                let n = NonZeroU16::new(take!(v, U16, pid))
                    .ok_or(DecodeError::InvalidPropertyValue { id: pid })?;
                once(&mut p.receive_maximum, pid, n)
            }
            MAXIMUM_QOS => {
                let q = match take!(v, Byte, pid) {
                    0 => QoS::AtMostOnce,
                    1 => QoS::AtLeastOnce,
                    _ => return Err(DecodeError::InvalidPropertyValue { id: pid }),
                };
                once(&mut p.maximum_qos, pid, q)
            }
            RETAIN_AVAILABLE => {
                let b = bool_value(pid, take!(v, Byte, pid))?;
                once(&mut p.retain_available, pid, b)
            }
            MAXIMUM_PACKET_SIZE => {
                let n = NonZeroU32::new(take!(v, U32, pid))
                    .ok_or(DecodeError::InvalidPropertyValue { id: pid })?;
                once(&mut p.maximum_packet_size, pid, n)
            }
            ASSIGNED_CLIENT_ID => once(&mut p.assigned_client_identifier, pid, take!(v, Str, pid)),
            TOPIC_ALIAS_MAXIMUM => once(&mut p.topic_alias_maximum, pid, take!(v, U16, pid)),
            REASON_STRING => once(&mut p.reason_string, pid, take!(v, Str, pid)),
            WILDCARD_SUB_AVAILABLE => {
                let b = bool_value(pid, take!(v, Byte, pid))?;
                once(&mut p.wildcard_subscription_available, pid, b)
            }
            SUB_ID_AVAILABLE => {
                let b = bool_value(pid, take!(v, Byte, pid))?;
                once(&mut p.subscription_identifiers_available, pid, b)
            }
            SHARED_SUB_AVAILABLE => {
                let b = bool_value(pid, take!(v, Byte, pid))?;
                once(&mut p.shared_subscription_available, pid, b)
            }
            SERVER_KEEP_ALIVE => once(&mut p.server_keep_alive, pid, take!(v, U16, pid)),
            RESPONSE_INFO => once(&mut p.response_information, pid, take!(v, Str, pid)),
            SERVER_REFERENCE => once(&mut p.server_reference, pid, take!(v, Str, pid)),
            AUTH_METHOD => once(&mut p.authentication_method, pid, take!(v, Str, pid)),
            AUTH_DATA => once(&mut p.authentication_data, pid, take!(v, Bin, pid)),
            USER_PROPERTY => {
                p.user_properties.push(take!(v, Pair, pid));
                Ok(())
            }
            _ => Err(DecodeError::InvalidProperty { id: pid }),
        })?;
        Ok(p)
    }

    pub(crate) fn encode(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        use id::*;
        write_length_prefixed(buf, 0, |b| {
            put_u32(b, SESSION_EXPIRY, self.session_expiry_interval);
            put_u16(
                b,
                RECEIVE_MAXIMUM,
                self.receive_maximum.map(NonZeroU16::get),
            );
            put_byte(b, MAXIMUM_QOS, self.maximum_qos.map(QoS::as_u8));
            put_byte(b, RETAIN_AVAILABLE, self.retain_available.map(u8::from));
            put_u32(
                b,
                MAXIMUM_PACKET_SIZE,
                self.maximum_packet_size.map(NonZeroU32::get),
            );
            put_str(
                b,
                ASSIGNED_CLIENT_ID,
                self.assigned_client_identifier.as_deref(),
            )?;
            put_u16(b, TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
            put_str(b, REASON_STRING, self.reason_string.as_deref())?;
            put_user(b, &self.user_properties)?;
            put_byte(
                b,
                WILDCARD_SUB_AVAILABLE,
                self.wildcard_subscription_available.map(u8::from),
            );
            put_byte(
                b,
                SUB_ID_AVAILABLE,
                self.subscription_identifiers_available.map(u8::from),
            );
            put_byte(
                b,
                SHARED_SUB_AVAILABLE,
                self.shared_subscription_available.map(u8::from),
            );
            put_u16(b, SERVER_KEEP_ALIVE, self.server_keep_alive);
            put_str(b, RESPONSE_INFO, self.response_information.as_deref())?;
            put_str(b, SERVER_REFERENCE, self.server_reference.as_deref())?;
            put_str(b, AUTH_METHOD, self.authentication_method.as_deref())?;
            put_bin(b, AUTH_DATA, self.authentication_data.as_deref())
        })
    }
}

/// PUBLISH properties (§3.3.2.3).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishProperties {
    /// True if the payload is UTF-8 text.
    pub payload_format_indicator: Option<bool>,
    /// Lifetime in seconds; on delivery, the time left.
    pub message_expiry_interval: Option<u32>,
    /// Topic Alias.
    pub topic_alias: Option<NonZeroU16>,
    /// Response topic.
    pub response_topic: Option<TopicName>,
    /// Correlation data.
    pub correlation_data: Option<Bytes>,
    /// User properties.
    pub user_properties: UserProperties,
    /// Identifiers of the subscriptions that matched (server to client only).
    pub subscription_identifiers: Vec<NonZeroU32>,
    /// Content type.
    pub content_type: Option<String>,
}

impl PublishProperties {
    pub(crate) fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        use id::*;
        let mut p = PublishProperties::default();
        read_properties(buf, |pid, v| match pid {
            PAYLOAD_FORMAT => {
                let b = bool_value(pid, take!(v, Byte, pid))?;
                once(&mut p.payload_format_indicator, pid, b)
            }
            MESSAGE_EXPIRY => once(&mut p.message_expiry_interval, pid, take!(v, U32, pid)),
            TOPIC_ALIAS => {
                let a = NonZeroU16::new(take!(v, U16, pid)).ok_or(DecodeError::TopicAliasZero)?;
                once(&mut p.topic_alias, pid, a)
            }
            RESPONSE_TOPIC => {
                let t = TopicName::new(&take!(v, Str, pid))?;
                once(&mut p.response_topic, pid, t)
            }
            CORRELATION_DATA => once(&mut p.correlation_data, pid, take!(v, Bin, pid)),
            SUBSCRIPTION_ID => {
                let n = NonZeroU32::new(take!(v, VarInt, pid))
                    .ok_or(DecodeError::InvalidPropertyValue { id: pid })?;
                p.subscription_identifiers.push(n);
                Ok(())
            }
            CONTENT_TYPE => once(&mut p.content_type, pid, take!(v, Str, pid)),
            USER_PROPERTY => {
                p.user_properties.push(take!(v, Pair, pid));
                Ok(())
            }
            _ => Err(DecodeError::InvalidProperty { id: pid }),
        })?;
        Ok(p)
    }

    pub(crate) fn encode(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        use id::*;
        write_length_prefixed(buf, 0, |b| {
            put_byte(
                b,
                PAYLOAD_FORMAT,
                self.payload_format_indicator.map(u8::from),
            );
            put_u32(b, MESSAGE_EXPIRY, self.message_expiry_interval);
            put_u16(b, TOPIC_ALIAS, self.topic_alias.map(NonZeroU16::get));
            put_str(
                b,
                RESPONSE_TOPIC,
                self.response_topic.as_ref().map(TopicName::as_str),
            )?;
            put_bin(b, CORRELATION_DATA, self.correlation_data.as_deref())?;
            for sid in &self.subscription_identifiers {
                b.put_u8(SUBSCRIPTION_ID);
                write_varint(b, sid.get() as usize);
            }
            put_str(b, CONTENT_TYPE, self.content_type.as_deref())?;
            put_user(b, &self.user_properties)
        })
    }
}

/// Properties of PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK and UNSUBACK: a reason string and
/// user properties.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckProperties {
    /// Human-readable reason.
    pub reason_string: Option<String>,
    /// User properties.
    pub user_properties: UserProperties,
}

impl AckProperties {
    /// True when nothing needs to be sent.
    pub fn is_empty(&self) -> bool {
        self.reason_string.is_none() && self.user_properties.is_empty()
    }

    pub(crate) fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        use id::*;
        let mut p = AckProperties::default();
        read_properties(buf, |pid, v| match pid {
            REASON_STRING => once(&mut p.reason_string, pid, take!(v, Str, pid)),
            USER_PROPERTY => {
                p.user_properties.push(take!(v, Pair, pid));
                Ok(())
            }
            _ => Err(DecodeError::InvalidProperty { id: pid }),
        })?;
        Ok(p)
    }

    pub(crate) fn encode(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        write_length_prefixed(buf, 0, |b| {
            put_str(b, id::REASON_STRING, self.reason_string.as_deref())?;
            put_user(b, &self.user_properties)
        })
    }
}

/// SUBSCRIBE properties (§3.8.2.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscribeProperties {
    /// Subscription Identifier (1..=268,435,455).
    pub subscription_identifier: Option<NonZeroU32>,
    /// User properties.
    pub user_properties: UserProperties,
}

impl SubscribeProperties {
    pub(crate) fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        use id::*;
        let mut p = SubscribeProperties::default();
        read_properties(buf, |pid, v| match pid {
            SUBSCRIPTION_ID => {
                let n = NonZeroU32::new(take!(v, VarInt, pid))
                    .ok_or(DecodeError::InvalidPropertyValue { id: pid })?;
                once(&mut p.subscription_identifier, pid, n)
            }
            USER_PROPERTY => {
                p.user_properties.push(take!(v, Pair, pid));
                Ok(())
            }
            _ => Err(DecodeError::InvalidProperty { id: pid }),
        })?;
        Ok(p)
    }

    pub(crate) fn encode(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        write_length_prefixed(buf, 0, |b| {
            if let Some(sid) = self.subscription_identifier {
                b.put_u8(id::SUBSCRIPTION_ID);
                write_varint(b, sid.get() as usize);
            }
            put_user(b, &self.user_properties)
        })
    }
}

/// UNSUBSCRIBE properties: user properties only (§3.10.2.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnsubscribeProperties {
    /// User properties.
    pub user_properties: UserProperties,
}

impl UnsubscribeProperties {
    pub(crate) fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        let mut p = UnsubscribeProperties::default();
        read_properties(buf, |pid, v| match pid {
            id::USER_PROPERTY => {
                p.user_properties.push(take!(v, Pair, pid));
                Ok(())
            }
            _ => Err(DecodeError::InvalidProperty { id: pid }),
        })?;
        Ok(p)
    }

    pub(crate) fn encode(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        write_length_prefixed(buf, 0, |b| put_user(b, &self.user_properties))
    }
}

/// DISCONNECT properties (§3.14.2.2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DisconnectProperties {
    /// New Session Expiry Interval (client to server only).
    pub session_expiry_interval: Option<u32>,
    /// Human-readable reason.
    pub reason_string: Option<String>,
    /// User properties.
    pub user_properties: UserProperties,
    /// Another server to use.
    pub server_reference: Option<String>,
}

impl DisconnectProperties {
    /// True when nothing needs to be sent.
    pub fn is_empty(&self) -> bool {
        *self == DisconnectProperties::default()
    }

    pub(crate) fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        use id::*;
        let mut p = DisconnectProperties::default();
        read_properties(buf, |pid, v| match pid {
            SESSION_EXPIRY => once(&mut p.session_expiry_interval, pid, take!(v, U32, pid)),
            REASON_STRING => once(&mut p.reason_string, pid, take!(v, Str, pid)),
            SERVER_REFERENCE => once(&mut p.server_reference, pid, take!(v, Str, pid)),
            USER_PROPERTY => {
                p.user_properties.push(take!(v, Pair, pid));
                Ok(())
            }
            _ => Err(DecodeError::InvalidProperty { id: pid }),
        })?;
        Ok(p)
    }

    pub(crate) fn encode(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        use id::*;
        write_length_prefixed(buf, 0, |b| {
            put_u32(b, SESSION_EXPIRY, self.session_expiry_interval);
            put_str(b, REASON_STRING, self.reason_string.as_deref())?;
            put_user(b, &self.user_properties)?;
            put_str(b, SERVER_REFERENCE, self.server_reference.as_deref())
        })
    }
}

/// AUTH properties (§3.15.2.2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthProperties {
    /// Authentication Method.
    pub authentication_method: Option<String>,
    /// Authentication Data.
    pub authentication_data: Option<Bytes>,
    /// Human-readable reason.
    pub reason_string: Option<String>,
    /// User properties.
    pub user_properties: UserProperties,
}

impl AuthProperties {
    pub(crate) fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        use id::*;
        let mut p = AuthProperties::default();
        read_properties(buf, |pid, v| match pid {
            AUTH_METHOD => once(&mut p.authentication_method, pid, take!(v, Str, pid)),
            AUTH_DATA => once(&mut p.authentication_data, pid, take!(v, Bin, pid)),
            REASON_STRING => once(&mut p.reason_string, pid, take!(v, Str, pid)),
            USER_PROPERTY => {
                p.user_properties.push(take!(v, Pair, pid));
                Ok(())
            }
            _ => Err(DecodeError::InvalidProperty { id: pid }),
        })?;
        Ok(p)
    }

    pub(crate) fn encode(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        use id::*;
        write_length_prefixed(buf, 0, |b| {
            put_str(b, AUTH_METHOD, self.authentication_method.as_deref())?;
            put_bin(b, AUTH_DATA, self.authentication_data.as_deref())?;
            put_str(b, REASON_STRING, self.reason_string.as_deref())?;
            put_user(b, &self.user_properties)
        })
    }
}
