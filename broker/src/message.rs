//! An application message as the router holds it, and one delivery of it to one session.
//!
//! A [`Message`] is built once per PUBLISH and shared (`Arc`) by every subscriber's queue and
//! the retained store: fan-out copies a pointer, never the payload. Its payload is copied
//! out of the connection's read buffer once, so a queued or retained message holds only
//! its own bytes, not the whole read chunk it arrived in.

use std::num::NonZeroU32;
use std::sync::Arc;

use bytes::Bytes;
use messs_codec::{
    Publish, PublishProperties, QoS, QosPid, TopicName, UserProperties, WillProperties,
};

/// Payloads up to this size are copied into one allocation together with their reference
/// count (most IoT payloads are small).
const INLINE_PAYLOAD: usize = 120;

/// A small payload stored inline in the `Bytes` owner allocation.
struct InlinePayload {
    len: u8,
    data: [u8; INLINE_PAYLOAD],
}

impl AsRef<[u8]> for InlinePayload {
    fn as_ref(&self) -> &[u8] {
        &self.data[..usize::from(self.len)]
    }
}

/// Copies a payload out of the read buffer into memory of its own. `Bytes::copy_from_slice`
/// would cost two allocations (the vector, then the shared header on the first clone,
/// which every fan-out does); a small payload here costs one, and clones only count.
fn own_copy(payload: &[u8]) -> Bytes {
    match u8::try_from(payload.len()) {
        Ok(len) if payload.len() <= INLINE_PAYLOAD => {
            let mut data = [0u8; INLINE_PAYLOAD];
            data[..payload.len()].copy_from_slice(payload);
            Bytes::from_owner(InlinePayload { len, data })
        }
        _ => Bytes::from_owner(Box::<[u8]>::from(payload)),
    }
}

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
    /// When it expires (from Message Expiry Interval), in Unix milliseconds: wall-clock,
    /// so it can be stored and still mean the same after a restart.
    pub expires_at: Option<u64>,
    /// The publishing session, for No Local; 0 for the broker itself.
    pub origin: u64,
}

impl Message {
    /// A message from a client's PUBLISH whose topic is already resolved, received at
    /// `now_ms` (Unix milliseconds: its expiry counts from then). The payload is copied out
    /// of the read buffer (see the module header).
    pub fn from_publish(p: Publish, topic: TopicName, origin: u64, now_ms: u64) -> Self {
        let props = p.properties;
        Message {
            topic,
            payload: own_copy(&p.payload),
            qos: p.qos_pid.qos(),
            retain: p.retain,
            expires_at: props
                .message_expiry_interval
                .map(|s| crate::clock::after_secs(now_ms, s)),
            properties: MessageProperties {
                payload_format_indicator: props.payload_format_indicator,
                content_type: props.content_type,
                response_topic: props.response_topic,
                correlation_data: props.correlation_data.as_deref().map(own_copy),
                user_properties: props.user_properties,
            },
            origin,
        }
    }

    /// A will message, its expiry counted from `now_ms` (Unix milliseconds).
    pub fn from_will(will: messs_codec::Will, origin: u64, now_ms: u64) -> Self {
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
            payload: own_copy(&will.payload),
            qos: will.qos,
            retain: will.retain,
            expires_at: message_expiry_interval.map(|s| crate::clock::after_secs(now_ms, s)),
            properties: MessageProperties {
                payload_format_indicator,
                content_type,
                response_topic,
                correlation_data: correlation_data.as_deref().map(own_copy),
                user_properties,
            },
            origin,
        }
    }

    /// True once the message's lifetime has passed (`now_ms` in Unix milliseconds).
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at.is_some_and(|t| t <= now_ms)
    }

    /// Seconds of lifetime left, rounded up, for the Message Expiry Interval sent on
    /// delivery [MQTT-3.3.2-6].
    pub fn remaining_expiry(&self, now_ms: u64) -> Option<u32> {
        self.expires_at.map(|t| {
            let left = t.saturating_sub(now_ms);
            u32::try_from(left.div_ceil(1000)).unwrap_or(u32::MAX)
        })
    }

    /// Roughly what this message holds in memory, in bytes: what limits and budgets count.
    pub fn cost(&self) -> usize {
        const FIXED: usize = std::mem::size_of::<Message>() + 32;
        let p = &self.properties;
        let user: usize = p
            .user_properties
            .iter()
            .map(|(k, v)| k.len() + v.len() + 48)
            .sum();
        FIXED
            + self.topic.as_str().len()
            + self.payload.len()
            + p.content_type.as_ref().map_or(0, String::len)
            + p.response_topic.as_ref().map_or(0, |t| t.as_str().len())
            + p.correlation_data.as_ref().map_or(0, Bytes::len)
            + user
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
    /// Its key in the session's stored queue (persistent sessions); 0 while not stored.
    pub stored_seq: u64,
}

impl Delivery {
    /// What this delivery holds a session to, in bytes: the message (counted in full for
    /// each session, since each may keep it alive alone) and the delivery's own fields.
    pub fn cost(&self) -> usize {
        self.message.cost() + std::mem::size_of::<Delivery>() + 4 * self.subscription_ids.len()
    }

    /// The PUBLISH to send for this delivery (topic alias and packet id are filled in by the
    /// connection).
    /// Whether its PUBLISH carries no properties at all (no expiry, no subscription
    /// identifiers, none of the publisher's): the common case, encoded by reference.
    pub fn is_plain(&self) -> bool {
        let m = &self.message;
        let p = &m.properties;
        self.subscription_ids.is_empty()
            && m.expires_at.is_none()
            && p.payload_format_indicator.is_none()
            && p.content_type.is_none()
            && p.response_topic.is_none()
            && p.correlation_data.is_none()
            && p.user_properties.is_empty()
    }

    pub fn to_publish(&self, qos_pid: QosPid, dup: bool, now_ms: u64) -> Publish {
        let m = &self.message;
        Publish {
            dup,
            qos_pid,
            retain: self.retain,
            topic: m.topic.clone(),
            properties: PublishProperties {
                payload_format_indicator: m.properties.payload_format_indicator,
                message_expiry_interval: m.remaining_expiry(now_ms),
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

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use messs_codec::Packet;
    use messs_codec::Protocol;

    #[test]
    fn payloads_are_copied_out_of_the_read_buffer() {
        let read_buffer = Bytes::from(vec![7u8; 64 * 1024]);
        for len in [0, 1, INLINE_PAYLOAD, INLINE_PAYLOAD + 1, 4096] {
            let slice = read_buffer.slice(100..100 + len);
            let owned = own_copy(&slice);
            assert_eq!(owned, slice);
            assert_eq!(owned.clone(), slice, "clones see the same bytes");
            let start = read_buffer.as_ptr() as usize;
            let at = owned.as_ptr() as usize;
            assert!(
                len == 0 || !(start..start + read_buffer.len()).contains(&at),
                "a {len}-byte payload still points into the read buffer"
            );
        }
    }

    /// A read buffer as a connection has it: one chunk holding a packet among others.
    fn read_buffer_with(packet: &Packet, protocol: Protocol) -> BytesMut {
        let mut buf = BytesMut::with_capacity(256 * 1024);
        buf.extend_from_slice(&[0u8; 1000]);
        let _ = buf.split_to(1000);
        messs_codec::encode(packet, protocol, &mut buf).unwrap_or_else(|e| panic!("{e}"));
        buf.extend_from_slice(&[0u8; 64 * 1024]);
        buf
    }

    /// Asserts that no byte buffer of `m` points into `chunk`. Every field is named, so a
    /// new field must be looked at here.
    fn assert_owns_its_bytes(m: &Message, chunk: std::ops::Range<usize>) {
        let Message {
            topic: _,
            payload,
            qos: _,
            retain: _,
            properties:
                MessageProperties {
                    payload_format_indicator: _,
                    content_type: _,
                    response_topic: _,
                    correlation_data,
                    user_properties: _,
                },
            expires_at: _,
            origin: _,
        } = m;
        let inside = |b: &Bytes| !b.is_empty() && chunk.contains(&(b.as_ptr() as usize));
        assert!(!inside(payload), "the payload pins the read buffer");
        assert!(
            !correlation_data.as_ref().is_some_and(inside),
            "the correlation data pins the read buffer"
        );
    }

    #[test]
    fn a_message_from_a_decoded_publish_or_will_holds_no_read_buffer() {
        use messs_codec::{Connect, ConnectProperties, Limits};
        let topic = TopicName::new("t/1").unwrap_or_else(|e| panic!("{e}"));
        let publish = Publish {
            dup: false,
            qos_pid: QosPid::AtMostOnce,
            retain: false,
            topic: topic.clone(),
            properties: PublishProperties {
                correlation_data: Some(Bytes::from_static(b"request-42")),
                ..PublishProperties::default()
            },
            payload: Bytes::from_static(b"hello"),
        };
        let mut buf = read_buffer_with(&Packet::Publish(Box::new(publish)), Protocol::V5);
        let chunk = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.capacity();
        let decoded = messs_codec::decode(&mut buf, Protocol::V5, &Limits::default());
        let Ok(Some(Packet::Publish(p))) = decoded else {
            panic!("{decoded:?}")
        };
        assert!(
            chunk.contains(&(p.payload.as_ptr() as usize)),
            "decoded in place"
        );
        let m = Message::from_publish(*p, topic.clone(), 1, 0);
        assert_eq!(
            m.properties.correlation_data.as_deref(),
            Some(&b"request-42"[..])
        );
        assert_owns_its_bytes(&m, chunk);

        let connect = Connect {
            protocol: Protocol::V5,
            client_id: "c".into(),
            clean_start: true,
            keep_alive: 30,
            username: None,
            password: None,
            will: Some(messs_codec::Will {
                topic,
                payload: Bytes::from_static(b"gone"),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: WillProperties {
                    correlation_data: Some(Bytes::from_static(b"will-7")),
                    ..WillProperties::default()
                },
            }),
            properties: ConnectProperties::default(),
        };
        let mut buf = read_buffer_with(&Packet::Connect(Box::new(connect)), Protocol::V5);
        let chunk = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.capacity();
        let decoded = messs_codec::decode(&mut buf, Protocol::V5, &Limits::default());
        let Ok(Some(Packet::Connect(c))) = decoded else {
            panic!("{decoded:?}")
        };
        let will = c.will.unwrap_or_else(|| panic!("a will"));
        let m = Message::from_will(will, 1, 0);
        assert_eq!(
            m.properties.correlation_data.as_deref(),
            Some(&b"will-7"[..])
        );
        assert_owns_its_bytes(&m, chunk);
    }
}
