//! PUBLISH (§3.3): the only packet with an application payload, which stays a zero-copy
//! slice of the read buffer.

use std::num::NonZeroU16;

use bytes::{BufMut, Bytes, BytesMut};

use super::Limits;
use crate::error::{DecodeError, EncodeError};
use crate::properties::PublishProperties;
use crate::topic::TopicName;
use crate::types::QoS;
use crate::wire::{read_string, read_u16};

/// QoS together with the packet identifier it requires: QoS 0 has none, QoS 1 and 2 always
/// have a non-zero one, so neither mistake can be represented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QosPid {
    /// QoS 0.
    AtMostOnce,
    /// QoS 1 with its packet identifier.
    AtLeastOnce(NonZeroU16),
    /// QoS 2 with its packet identifier.
    ExactlyOnce(NonZeroU16),
}

impl QosPid {
    /// Builds the pair for a QoS; `pid` is ignored for QoS 0.
    pub fn new(qos: QoS, pid: NonZeroU16) -> Self {
        match qos {
            QoS::AtMostOnce => QosPid::AtMostOnce,
            QoS::AtLeastOnce => QosPid::AtLeastOnce(pid),
            QoS::ExactlyOnce => QosPid::ExactlyOnce(pid),
        }
    }

    /// The QoS.
    pub fn qos(self) -> QoS {
        match self {
            QosPid::AtMostOnce => QoS::AtMostOnce,
            QosPid::AtLeastOnce(_) => QoS::AtLeastOnce,
            QosPid::ExactlyOnce(_) => QoS::ExactlyOnce,
        }
    }

    /// The packet identifier (QoS 1 and 2).
    pub fn packet_id(self) -> Option<NonZeroU16> {
        match self {
            QosPid::AtMostOnce => None,
            QosPid::AtLeastOnce(p) | QosPid::ExactlyOnce(p) => Some(p),
        }
    }
}

/// An application message on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// Redelivery of an earlier attempt.
    pub dup: bool,
    /// QoS and packet identifier.
    pub qos_pid: QosPid,
    /// Retain flag.
    pub retain: bool,
    /// Topic; empty only in a v5 PUBLISH that carries a Topic Alias.
    pub topic: TopicName,
    /// PUBLISH properties (v5).
    pub properties: PublishProperties,
    /// Application payload.
    pub payload: Bytes,
}

impl Publish {
    pub(crate) fn decode(
        flags: u8,
        mut body: Bytes,
        v5: bool,
        lim: &Limits,
    ) -> Result<Self, DecodeError> {
        let dup = flags & 0b1000 != 0;
        let qos = QoS::from_u8((flags >> 1) & 0b11)?;
        let retain = flags & 1 != 0;
        if dup && qos == QoS::AtMostOnce {
            // [MQTT-3.3.1-2]: DUP must be 0 for QoS 0.
            return Err(DecodeError::ReservedFlags { packet_type: 3 });
        }
        let topic_str = read_string(&mut body)?;
        let qos_pid = match qos {
            QoS::AtMostOnce => QosPid::AtMostOnce,
            _ => {
                let pid = NonZeroU16::new(read_u16(&mut body)?).ok_or(DecodeError::ZeroPacketId)?;
                QosPid::new(qos, pid)
            }
        };
        let properties = if v5 {
            PublishProperties::decode(&mut body, lim.max_user_properties)?
        } else {
            PublishProperties::default()
        };
        let topic = if topic_str.is_empty() {
            if !v5 {
                return Err(DecodeError::TopicNameInvalid("empty"));
            }
            if properties.topic_alias.is_none() {
                return Err(DecodeError::EmptyTopicWithoutAlias);
            }
            TopicName::empty()
        } else {
            TopicName::new(&topic_str)?
        };
        Ok(Publish {
            dup,
            qos_pid,
            retain,
            topic,
            properties,
            payload: body,
        })
    }

    pub(crate) fn flags(&self) -> u8 {
        (u8::from(self.dup) << 3) | (self.qos_pid.qos().as_u8() << 1) | u8::from(self.retain)
    }

    /// Writes topic, packet id and properties; the caller appends the payload.
    pub(crate) fn encode_header(&self, b: &mut BytesMut, v5: bool) -> Result<(), EncodeError> {
        crate::wire::write_string(b, self.topic.as_str())?;
        if let Some(pid) = self.qos_pid.packet_id() {
            b.put_u16(pid.get());
        }
        if v5 {
            self.properties.encode(b)?;
        }
        Ok(())
    }
}
