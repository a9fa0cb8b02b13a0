//! Small value types shared by several packets: protocol level, QoS, subscription options.

use crate::error::DecodeError;

/// The protocol level a connection speaks, fixed by its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// MQTT 3.1 (protocol name `MQIsdp`, level 3); encoded like 3.1.1.
    V3_1,
    /// MQTT 3.1.1 (level 4).
    V3_1_1,
    /// MQTT 5.0 (level 5).
    V5,
}

impl Protocol {
    /// True for MQTT 5.0, the only level with properties and reason codes everywhere.
    pub fn is_v5(self) -> bool {
        self == Protocol::V5
    }

    /// The protocol level byte.
    pub fn level(self) -> u8 {
        match self {
            Protocol::V3_1 => 3,
            Protocol::V3_1_1 => 4,
            Protocol::V5 => 5,
        }
    }

    /// The protocol name in CONNECT.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::V3_1 => "MQIsdp",
            _ => "MQTT",
        }
    }
}

/// Quality of service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QoS {
    /// At most once.
    AtMostOnce = 0,
    /// At least once.
    AtLeastOnce = 1,
    /// Exactly once.
    ExactlyOnce = 2,
}

impl QoS {
    /// QoS from its two-bit value; 3 is malformed [MQTT-3.3.1-4].
    pub fn from_u8(value: u8) -> Result<Self, DecodeError> {
        match value {
            0 => Ok(QoS::AtMostOnce),
            1 => Ok(QoS::AtLeastOnce),
            2 => Ok(QoS::ExactlyOnce),
            _ => Err(DecodeError::InvalidQoS),
        }
    }

    /// The two-bit value.
    pub fn as_u8(self) -> u8 {
        self as u8
    }
}

/// When retained messages are sent for a new subscription (v5 §3.8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RetainHandling {
    /// Send retained messages at the time of the subscribe.
    #[default]
    SendAtSubscribe = 0,
    /// Send them only if the subscription did not exist already.
    SendIfNewSubscription = 1,
    /// Do not send retained messages.
    DoNotSend = 2,
}

/// The options byte of one SUBSCRIBE entry. In 3.1.1 only `qos` is carried; the others keep
/// their defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionOptions {
    /// Maximum QoS the subscriber accepts.
    pub qos: QoS,
    /// Do not deliver the client's own publications back to it.
    pub no_local: bool,
    /// Keep the RETAIN flag as published instead of clearing it on live delivery.
    pub retain_as_published: bool,
    /// When to send retained messages.
    pub retain_handling: RetainHandling,
}

impl SubscriptionOptions {
    /// Options with the given QoS and v5 defaults for the rest.
    pub fn new(qos: QoS) -> Self {
        SubscriptionOptions {
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: RetainHandling::SendAtSubscribe,
        }
    }

    pub(crate) fn decode(byte: u8, v5: bool) -> Result<Self, DecodeError> {
        let reserved_mask = if v5 { 0b1100_0000 } else { 0b1111_1100 };
        if byte & reserved_mask != 0 {
            return Err(DecodeError::SubscriptionOptionsReserved);
        }
        // v5 §3.8.3.1: Maximum QoS 3 is a Protocol Error (in 3.1.1 it is malformed, and
        // a 3.1.1 peer is told nothing either way).
        let qos = QoS::from_u8(byte & 0b11).map_err(|_| DecodeError::SubscriptionQoSInvalid)?;
        let retain_handling = match (byte >> 4) & 0b11 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendIfNewSubscription,
            2 => RetainHandling::DoNotSend,
            _ => return Err(DecodeError::InvalidRetainHandling),
        };
        Ok(SubscriptionOptions {
            qos,
            no_local: byte & 0b0100 != 0,
            retain_as_published: byte & 0b1000 != 0,
            retain_handling,
        })
    }

    pub(crate) fn encode(&self, v5: bool) -> u8 {
        if !v5 {
            return self.qos.as_u8();
        }
        self.qos.as_u8()
            | (u8::from(self.no_local) << 2)
            | (u8::from(self.retain_as_published) << 3)
            | ((self.retain_handling as u8) << 4)
    }
}
