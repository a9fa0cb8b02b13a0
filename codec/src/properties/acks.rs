//! Properties of the acknowledgements, SUBSCRIBE, UNSUBSCRIBE, DISCONNECT and AUTH.

use std::num::NonZeroU32;

use bytes::{BufMut, Bytes, BytesMut};

use super::UserProperties;
use super::{id, once, push_user, put_bin, put_str, put_u32, put_user, read_properties, Value};
use crate::error::{DecodeError, EncodeError};
use crate::wire::{write_length_prefixed, write_varint};

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

    pub(crate) fn decode(buf: &mut Bytes, max_user: usize) -> Result<Self, DecodeError> {
        use id::*;
        let mut p = AckProperties::default();
        read_properties(buf, max_user, |pid, v| match pid {
            REASON_STRING => once(&mut p.reason_string, pid, take!(v, Str, pid)),
            USER_PROPERTY => push_user(&mut p.user_properties, v, pid),
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
    pub(crate) fn decode(buf: &mut Bytes, max_user: usize) -> Result<Self, DecodeError> {
        use id::*;
        let mut p = SubscribeProperties::default();
        read_properties(buf, max_user, |pid, v| match pid {
            SUBSCRIPTION_ID => {
                let n = NonZeroU32::new(take!(v, VarInt, pid))
                    .ok_or(DecodeError::InvalidPropertyValue { id: pid })?;
                once(&mut p.subscription_identifier, pid, n)
            }
            USER_PROPERTY => push_user(&mut p.user_properties, v, pid),
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
    pub(crate) fn decode(buf: &mut Bytes, max_user: usize) -> Result<Self, DecodeError> {
        let mut p = UnsubscribeProperties::default();
        read_properties(buf, max_user, |pid, v| match pid {
            id::USER_PROPERTY => push_user(&mut p.user_properties, v, pid),
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

    pub(crate) fn decode(buf: &mut Bytes, max_user: usize) -> Result<Self, DecodeError> {
        use id::*;
        let mut p = DisconnectProperties::default();
        read_properties(buf, max_user, |pid, v| match pid {
            SESSION_EXPIRY => once(&mut p.session_expiry_interval, pid, take!(v, U32, pid)),
            REASON_STRING => once(&mut p.reason_string, pid, take!(v, Str, pid)),
            SERVER_REFERENCE => once(&mut p.server_reference, pid, take!(v, Str, pid)),
            USER_PROPERTY => push_user(&mut p.user_properties, v, pid),
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
    pub(crate) fn decode(buf: &mut Bytes, max_user: usize) -> Result<Self, DecodeError> {
        use id::*;
        let mut p = AuthProperties::default();
        read_properties(buf, max_user, |pid, v| match pid {
            AUTH_METHOD => once(&mut p.authentication_method, pid, take!(v, Str, pid)),
            AUTH_DATA => once(&mut p.authentication_data, pid, take!(v, Bin, pid)),
            REASON_STRING => once(&mut p.reason_string, pid, take!(v, Str, pid)),
            USER_PROPERTY => push_user(&mut p.user_properties, v, pid),
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
