//! An application message as the router holds it, and one delivery of it to one session.
//!
//! A [`Message`] is built once per PUBLISH and shared (`Arc`) by every subscriber's queue and
//! the retained store: fan-out copies a pointer, never the payload.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use messs_codec::{
    Publish, PublishProperties, QoS, QosPid, TopicName, UserProperties, WillProperties,
};

/// The properties that travel with a message unchanged from publisher to subscriber.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageProperties {
    /// Payload Format Indicator.
    pub payload_format_indicator: Option<bool>,
    /// Content Type.
    pub content_type: Option<String>,
    /// Response Topic.
    pub response_topic: Option<TopicName>,
    /// Correlation Data.
    pub correlation_data: Option<Bytes>,
    /// User Properties, in order.
    pub user_properties: UserProperties,
}

/// A published message.
#[derive(Debug, Clone)]
pub struct Message {
    /// Topic (aliases already resolved).
    pub topic: TopicName,
    /// Payload.
    pub payload: Bytes,
    /// QoS it was published with.
    pub qos: QoS,
    /// Retain flag as published.
    pub retain: bool,
    /// Pass-through properties.
    pub properties: MessageProperties,
    /// When it expires (from Message Expiry Interval).
    pub expires_at: Option<Instant>,
    /// The publishing session, for No Local; 0 for the broker itself.
    pub origin: u64,
}

impl Message {
    /// A message from a client's PUBLISH whose topic is already resolved. The clock is read
    /// only when the message has an expiry interval.
    pub fn from_publish(p: Publish, topic: TopicName, origin: u64) -> Self {
        let props = p.properties;
        Message {
            topic,
            payload: p.payload,
            qos: p.qos_pid.qos(),
            retain: p.retain,
            expires_at: props
                .message_expiry_interval
                .map(|s| Instant::now() + Duration::from_secs(u64::from(s))),
            properties: MessageProperties {
                payload_format_indicator: props.payload_format_indicator,
                content_type: props.content_type,
                response_topic: props.response_topic,
                correlation_data: props.correlation_data,
                user_properties: props.user_properties,
            },
            origin,
        }
    }

    /// A will message.
    pub fn from_will(will: messs_codec::Will, origin: u64, now: Instant) -> Self {
        let WillProperties {
            payload_format_indicator,
            message_expiry_interval,
            content_type,
            response_topic,
            correlation_data,
            user_properties,
            ..
        } = will.properties;
        Message {
            topic: will.topic,
            payload: will.payload,
            qos: will.qos,
            retain: will.retain,
            expires_at: message_expiry_interval.map(|s| now + Duration::from_secs(u64::from(s))),
            properties: MessageProperties {
                payload_format_indicator,
                content_type,
                response_topic,
                correlation_data,
                user_properties,
            },
            origin,
        }
    }

    /// True once the message's lifetime has passed.
    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }

    /// Seconds of lifetime left, rounded up, for the Message Expiry Interval sent on
    /// delivery [MQTT-3.3.2-6].
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|t| {
            let left = t.saturating_duration_since(now);
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            u32::try_from(secs).unwrap_or(u32::MAX)
        })
    }
}

/// One message on its way to one session, with what that session's subscriptions decided.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The shared message.
    pub message: Arc<Message>,
    /// QoS for this subscriber (the publish QoS, downgraded to the subscription's).
    pub qos: QoS,
    /// RETAIN flag to send.
    pub retain: bool,
    /// Subscription identifiers of the matching subscriptions.
    pub subscription_ids: Vec<NonZeroU32>,
}

impl Delivery {
    /// The PUBLISH to send for this delivery (topic alias and packet id are filled in by the
    /// connection).
    pub fn to_publish(&self, qos_pid: QosPid, dup: bool, now: Instant) -> Publish {
        let m = &self.message;
        Publish {
            dup,
            qos_pid,
            retain: self.retain,
            topic: m.topic.clone(),
            properties: PublishProperties {
                payload_format_indicator: m.properties.payload_format_indicator,
                message_expiry_interval: m.remaining_expiry(now),
                topic_alias: None,
                response_topic: m.properties.response_topic.clone(),
                correlation_data: m.properties.correlation_data.clone(),
                user_properties: m.properties.user_properties.clone(),
                subscription_identifiers: self.subscription_ids.clone(),
                content_type: m.properties.content_type.clone(),
            },
            payload: m.payload.clone(),
        }
    }
}
