//! Properties of CONNECT, the will, and CONNACK.

use std::num::{NonZeroU16, NonZeroU32};

use bytes::{Bytes, BytesMut};

use super::UserProperties;
use super::{
    id, once, once_bool, push_user, put_bin, put_byte, put_str, put_u16, put_u32, put_user,
    read_properties, Value,
};
use crate::error::{DecodeError, EncodeError};
use crate::topic::TopicName;
use crate::types::QoS;
use crate::wire::write_length_prefixed;

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
    pub(crate) fn decode(buf: &mut Bytes, max_user: usize) -> Result<Self, DecodeError> {
        use id::*;
        let mut p = ConnectProperties::default();
        read_properties(buf, max_user, |pid, v| match pid {
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
            REQUEST_RESPONSE_INFO => once_bool(&mut p.request_response_information, pid, v),
            REQUEST_PROBLEM_INFO => once_bool(&mut p.request_problem_information, pid, v),
            AUTH_METHOD => once(&mut p.authentication_method, pid, take!(v, Str, pid)),
            AUTH_DATA => once(&mut p.authentication_data, pid, take!(v, Bin, pid)),
            USER_PROPERTY => push_user(&mut p.user_properties, v, pid),
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
    pub(crate) fn decode(buf: &mut Bytes, max_user: usize) -> Result<Self, DecodeError> {
        use id::*;
        let mut p = WillProperties::default();
        read_properties(buf, max_user, |pid, v| match pid {
            WILL_DELAY => once(&mut p.will_delay_interval, pid, take!(v, U32, pid)),
            PAYLOAD_FORMAT => once_bool(&mut p.payload_format_indicator, pid, v),
            MESSAGE_EXPIRY => once(&mut p.message_expiry_interval, pid, take!(v, U32, pid)),
            CONTENT_TYPE => once(&mut p.content_type, pid, take!(v, Str, pid)),
            RESPONSE_TOPIC => {
                let t = TopicName::new(&take!(v, Str, pid))?;
                once(&mut p.response_topic, pid, t)
            }
            CORRELATION_DATA => once(&mut p.correlation_data, pid, take!(v, Bin, pid)),
            USER_PROPERTY => push_user(&mut p.user_properties, v, pid),
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
    pub(crate) fn decode(buf: &mut Bytes, max_user: usize) -> Result<Self, DecodeError> {
        use id::*;
        let mut p = ConnAckProperties::default();
        read_properties(buf, max_user, |pid, v| match pid {
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
            RETAIN_AVAILABLE => once_bool(&mut p.retain_available, pid, v),
            MAXIMUM_PACKET_SIZE => {
                let n = NonZeroU32::new(take!(v, U32, pid))
                    .ok_or(DecodeError::InvalidPropertyValue { id: pid })?;
                once(&mut p.maximum_packet_size, pid, n)
            }
            ASSIGNED_CLIENT_ID => once(&mut p.assigned_client_identifier, pid, take!(v, Str, pid)),
            TOPIC_ALIAS_MAXIMUM => once(&mut p.topic_alias_maximum, pid, take!(v, U16, pid)),
            REASON_STRING => once(&mut p.reason_string, pid, take!(v, Str, pid)),
            WILDCARD_SUB_AVAILABLE => once_bool(&mut p.wildcard_subscription_available, pid, v),
            SUB_ID_AVAILABLE => once_bool(&mut p.subscription_identifiers_available, pid, v),
            SHARED_SUB_AVAILABLE => once_bool(&mut p.shared_subscription_available, pid, v),
            SERVER_KEEP_ALIVE => once(&mut p.server_keep_alive, pid, take!(v, U16, pid)),
            RESPONSE_INFO => once(&mut p.response_information, pid, take!(v, Str, pid)),
            SERVER_REFERENCE => once(&mut p.server_reference, pid, take!(v, Str, pid)),
            AUTH_METHOD => once(&mut p.authentication_method, pid, take!(v, Str, pid)),
            AUTH_DATA => once(&mut p.authentication_data, pid, take!(v, Bin, pid)),
            USER_PROPERTY => push_user(&mut p.user_properties, v, pid),
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
