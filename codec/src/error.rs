//! The codec's one error enum for decoding and one for encoding. Every decode error maps to
//! the MQTT 5 reason code the broker sends (in CONNACK or DISCONNECT) before closing.

use crate::reason::ReasonCode;

/// Why bytes from a peer could not be decoded into a packet. The connection that sent them
/// must be closed; [`DecodeError::reason_code`] says what to tell a v5 peer first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The remaining length uses more than 4 bytes [MQTT-1.5.5-1].
    #[error("malformed remaining length (more than 4 bytes)")]
    MalformedRemainingLength,
    /// A variable byte integer inside the packet uses more than 4 bytes.
    #[error("malformed variable byte integer")]
    MalformedVarInt,
    /// The packet is larger than the maximum packet size.
    #[error("packet of {size} bytes exceeds the maximum packet size of {max}")]
    PacketTooLarge {
        /// Total packet size in bytes, fixed header included.
        size: usize,
        /// The limit in force.
        max: usize,
    },
    /// Packet type 0, or 15 (AUTH) before MQTT 5.
    #[error("invalid packet type {0}")]
    InvalidPacketType(u8),
    /// Fixed-header flag bits that the spec reserves are wrong [MQTT-2.1.3-1].
    #[error("reserved fixed-header flags set on packet type {packet_type} [MQTT-2.1.3-1]")]
    ReservedFlags {
        /// The packet type whose flags are wrong.
        packet_type: u8,
    },
    /// QoS 3 in a PUBLISH, a will or a subscription [MQTT-3.3.1-4].
    #[error("invalid QoS value 3 [MQTT-3.3.1-4]")]
    InvalidQoS,
    /// A field runs past the end of the packet.
    #[error("packet truncated: a field runs past the remaining length")]
    Truncated,
    /// Bytes are left over after the last field of the packet.
    #[error("unexpected bytes after the end of the packet")]
    TrailingBytes,
    /// A string is not well-formed UTF-8 [MQTT-1.5.4-1].
    #[error("string is not valid UTF-8 [MQTT-1.5.4-1]")]
    InvalidUtf8,
    /// A string contains U+0000 [MQTT-1.5.4-2].
    #[error("string contains the null character U+0000 [MQTT-1.5.4-2]")]
    NullCharacter,
    /// The protocol name or level is not one this codec speaks.
    #[error("unsupported protocol {name:?} level {level} [MQTT-3.1.2-2]")]
    UnsupportedProtocol {
        /// The protocol name sent.
        name: String,
        /// The protocol level sent.
        level: u8,
    },
    /// CONNECT's reserved flag bit is set [MQTT-3.1.2-3].
    #[error("CONNECT reserved flag is set [MQTT-3.1.2-3]")]
    ConnectReservedFlag,
    /// Will QoS or Will Retain set without the Will Flag [MQTT-3.1.2-11], [MQTT-3.1.2-13].
    #[error("will QoS or retain set without the will flag [MQTT-3.1.2-11]")]
    WillFlags,
    /// MQTT 3.1.1: the password flag is set without the user name flag [MQTT-3.1.2-22].
    #[error("password flag set without user name flag [MQTT-3.1.2-22]")]
    PasswordWithoutUsername,
    /// A property identifier unknown or not allowed in this packet (spec §2.2.2.2).
    #[error("property 0x{id:02X} is not valid in this packet")]
    InvalidProperty {
        /// The property identifier.
        id: u8,
    },
    /// A property that may appear once appears twice.
    #[error("property 0x{id:02X} appears more than once")]
    DuplicateProperty {
        /// The property identifier.
        id: u8,
    },
    /// A property value outside its allowed range (e.g. Receive Maximum 0).
    #[error("property 0x{id:02X} has a value that is not allowed")]
    InvalidPropertyValue {
        /// The property identifier.
        id: u8,
    },
    /// A packet identifier of 0 [MQTT-2.2.1-3].
    #[error("packet identifier 0 is not allowed [MQTT-2.2.1-3]")]
    ZeroPacketId,
    /// A reason code not defined for this packet type.
    #[error("reason code 0x{code:02X} is not valid in this packet")]
    InvalidReasonCode {
        /// The byte sent.
        code: u8,
    },
    /// A topic name is empty (without an alias), too long, or contains a wildcard
    /// [MQTT-3.3.2-2].
    #[error("invalid topic name: {0} [MQTT-3.3.2-2]")]
    TopicNameInvalid(&'static str),
    /// A topic filter breaks the wildcard rules (spec §4.7).
    #[error("invalid topic filter: {0} [MQTT-4.7.1-1]")]
    TopicFilterInvalid(&'static str),
    /// SUBSCRIBE or UNSUBSCRIBE without any topic filter [MQTT-3.8.3-2], [MQTT-3.10.3-2].
    #[error("no topic filter in SUBSCRIBE/UNSUBSCRIBE [MQTT-3.8.3-2]")]
    NoTopicFilters,
    /// Reserved bits set in subscription options [MQTT-3.8.3-5].
    #[error("reserved bits set in subscription options [MQTT-3.8.3-5]")]
    SubscriptionOptionsReserved,
    /// Retain Handling 3 [MQTT-3.8.3-5].
    #[error("retain handling 3 is not allowed")]
    InvalidRetainHandling,
    /// No Local on a shared subscription [MQTT-3.8.3-4].
    #[error("no local set on a shared subscription [MQTT-3.8.3-4]")]
    SharedSubscriptionNoLocal,
    /// A PUBLISH with an empty topic and no Topic Alias (§3.3.2.1).
    #[error("empty topic name without a topic alias")]
    EmptyTopicWithoutAlias,
    /// Maximum QoS 3 in a subscription's options (a Protocol Error, §3.8.3.1).
    #[error("maximum QoS 3 in subscription options (§3.8.3.1)")]
    SubscriptionQoSInvalid,
    /// More User Properties than the receiver's limit.
    #[error("more than {max} user properties in one packet")]
    TooManyUserProperties {
        /// The limit in force.
        max: usize,
    },
    /// More topic filters in one SUBSCRIBE or UNSUBSCRIBE than the receiver's limit.
    #[error("more than {max} topic filters in one packet")]
    TooManyTopicFilters {
        /// The limit in force.
        max: usize,
    },
    /// A Topic Alias of 0 [MQTT-3.3.2-8].
    #[error("topic alias 0 is not allowed [MQTT-3.3.2-8]")]
    TopicAliasZero,
}

impl DecodeError {
    /// The reason code a v5 peer is told (CONNACK before the session exists, DISCONNECT
    /// after) before its connection closes.
    pub fn reason_code(&self) -> ReasonCode {
        use DecodeError::*;
        match self {
            PacketTooLarge { .. } => ReasonCode::PacketTooLarge,
            UnsupportedProtocol { .. } => ReasonCode::UnsupportedProtocolVersion,
            DuplicateProperty { .. }
            | InvalidPropertyValue { .. }
            | ZeroPacketId
            | NoTopicFilters
            | InvalidRetainHandling
            | SharedSubscriptionNoLocal
            | EmptyTopicWithoutAlias
            | SubscriptionQoSInvalid => ReasonCode::ProtocolError,
            TooManyUserProperties { .. } | TooManyTopicFilters { .. } => ReasonCode::QuotaExceeded,
            TopicNameInvalid(_) => ReasonCode::TopicNameInvalid,
            TopicFilterInvalid(_) => ReasonCode::TopicFilterInvalid,
            TopicAliasZero => ReasonCode::TopicAliasInvalid,
            MalformedRemainingLength
            | MalformedVarInt
            | InvalidPacketType(_)
            | ReservedFlags { .. }
            | InvalidQoS
            | Truncated
            | TrailingBytes
            | InvalidUtf8
            | NullCharacter
            | ConnectReservedFlag
            | WillFlags
            | PasswordWithoutUsername
            | InvalidProperty { .. }
            | InvalidReasonCode { .. }
            | SubscriptionOptionsReserved => ReasonCode::MalformedPacket,
        }
    }
}

/// Why a packet could not be encoded. The broker only builds packets from validated parts,
/// so this signals a bug or a value a peer cannot receive (e.g. a string over 65,535 bytes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A string or binary field is longer than 65,535 bytes.
    #[error("field of {0} bytes is longer than 65535")]
    FieldTooLong(usize),
    /// The packet's remaining length exceeds 268,435,455 bytes.
    #[error("packet body of {0} bytes exceeds the MQTT maximum")]
    PacketTooLarge(usize),
    /// A packet type that does not exist at the target protocol level (e.g. AUTH in 3.1.1).
    #[error("{0} cannot be sent at this protocol level")]
    NotInProtocol(&'static str),
}
