//! MQTT 5 properties (spec §2.2.2): one struct per packet kind, holding exactly the
//! properties that packet may carry (in `connect`, `publish` and `acks`). Decoding rejects unknown or misplaced identifiers
//! (malformed), repeated single-use properties and out-of-range values (protocol errors).

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::wire::{
    read_binary, read_string, read_u16, read_u32, read_u8, read_varint, write_binary, write_string,
};

/// User properties: name/value pairs, in order, repeats allowed.
pub type UserProperties = Vec<(String, String)>;

pub(super) mod id {
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
pub(super) enum Value {
    Byte(u8),
    U16(u16),
    U32(u32),
    VarInt(u32),
    Str(String),
    Bin(Bytes),
    Pair((String, String)),
}

pub(super) fn read_value(buf: &mut Bytes, pid: u8) -> Result<Value, DecodeError> {
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
///
/// More than `max_user` User Properties fail the packet before they are allocated: each
/// costs ~50 bytes of memory for 5 bytes on the wire.
pub(super) fn read_properties(
    buf: &mut Bytes,
    max_user: usize,
    mut each: impl FnMut(u8, Value) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    let mut user = 0usize;
    let len = read_varint(buf)? as usize;
    if buf.len() < len {
        return Err(DecodeError::Truncated);
    }
    let mut props = buf.split_to(len);
    while !props.is_empty() {
        let pid = read_varint(&mut props)?;
        let pid = u8::try_from(pid).map_err(|_| DecodeError::InvalidProperty { id: 0xFF })?;
        if pid == id::USER_PROPERTY {
            user += 1;
            if user > max_user {
                return Err(DecodeError::TooManyUserProperties { max: max_user });
            }
        }
        let value = read_value(&mut props, pid)?;
        each(pid, value)?;
    }
    Ok(())
}

pub(super) fn once<T>(slot: &mut Option<T>, pid: u8, value: T) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::DuplicateProperty { id: pid });
    }
    *slot = Some(value);
    Ok(())
}

/// A byte property that must be 0 or 1, set once.
pub(super) fn once_bool(slot: &mut Option<bool>, pid: u8, v: Value) -> Result<(), DecodeError> {
    let Value::Byte(b) = v else {
        return Err(DecodeError::InvalidProperty { id: pid });
    };
    once(slot, pid, bool_value(pid, b)?)
}

/// A user property (may repeat).
pub(super) fn push_user(props: &mut UserProperties, v: Value, pid: u8) -> Result<(), DecodeError> {
    let Value::Pair(pair) = v else {
        return Err(DecodeError::InvalidProperty { id: pid });
    };
    props.push(pair);
    Ok(())
}

pub(super) fn bool_value(pid: u8, v: u8) -> Result<bool, DecodeError> {
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

pub(super) fn put_byte(b: &mut BytesMut, pid: u8, v: Option<u8>) {
    if let Some(v) = v {
        b.put_u8(pid);
        b.put_u8(v);
    }
}
pub(super) fn put_u16(b: &mut BytesMut, pid: u8, v: Option<u16>) {
    if let Some(v) = v {
        b.put_u8(pid);
        b.put_u16(v);
    }
}
pub(super) fn put_u32(b: &mut BytesMut, pid: u8, v: Option<u32>) {
    if let Some(v) = v {
        b.put_u8(pid);
        b.put_u32(v);
    }
}
pub(super) fn put_str(b: &mut BytesMut, pid: u8, v: Option<&str>) -> Result<(), EncodeError> {
    if let Some(v) = v {
        b.put_u8(pid);
        write_string(b, v)?;
    }
    Ok(())
}
pub(super) fn put_bin(b: &mut BytesMut, pid: u8, v: Option<&[u8]>) -> Result<(), EncodeError> {
    if let Some(v) = v {
        b.put_u8(pid);
        write_binary(b, v)?;
    }
    Ok(())
}
pub(super) fn put_user(b: &mut BytesMut, props: &UserProperties) -> Result<(), EncodeError> {
    for (k, v) in props {
        b.put_u8(id::USER_PROPERTY);
        write_string(b, k)?;
        write_string(b, v)?;
    }
    Ok(())
}

mod acks;
mod connect;
mod publish;

pub use acks::{
    AckProperties, AuthProperties, DisconnectProperties, SubscribeProperties, UnsubscribeProperties,
};
pub use connect::{ConnAckProperties, ConnectProperties, WillProperties};
pub use publish::PublishProperties;
