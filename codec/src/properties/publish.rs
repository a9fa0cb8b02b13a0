//! Properties of PUBLISH.

use std::num::{NonZeroU16, NonZeroU32};

use bytes::{BufMut, Bytes, BytesMut};

use super::UserProperties;
use super::{
    id, once, once_bool, push_user, put_bin, put_byte, put_str, put_u16, put_u32, put_user,
    read_properties, Value,
};
use crate::error::{DecodeError, EncodeError};
use crate::topic::TopicName;
use crate::wire::{write_length_prefixed, write_varint};

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
    pub(crate) fn decode(buf: &mut Bytes, max_user: usize) -> Result<Self, DecodeError> {
        use id::*;
        let mut p = PublishProperties::default();
        read_properties(buf, max_user, |pid, v| match pid {
            PAYLOAD_FORMAT => once_bool(&mut p.payload_format_indicator, pid, v),
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
            USER_PROPERTY => push_user(&mut p.user_properties, v, pid),
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
