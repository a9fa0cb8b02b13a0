//! MQTT 5.0 reason codes (spec §2.4) and which of them each packet type may carry.
//!
//! One representation serves both protocol levels: 3.1.1 return codes are mapped to and from
//! their v5 equivalents at the edge of the codec (see `packet::connack` and `packet::suback`).

use crate::error::DecodeError;

macro_rules! reason_codes {
    ($($(#[$doc:meta])* $name:ident = $value:literal,)*) => {
        /// A reason code: the outcome of an operation, carried by acks, CONNACK, DISCONNECT
        /// and AUTH.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum ReasonCode {
            $($(#[$doc])* $name = $value,)*
        }

        impl ReasonCode {
            /// The code for a byte, if the byte is a defined reason code.
            pub fn from_u8(value: u8) -> Option<Self> {
                match value {
                    $($value => Some(Self::$name),)*
                    _ => None,
                }
            }
        }
    };
}

reason_codes! {
    /// Success / normal disconnection / granted QoS 0.
    Success = 0x00,
    /// Granted QoS 1.
    GrantedQoS1 = 0x01,
    /// Granted QoS 2.
    GrantedQoS2 = 0x02,
    /// Disconnect and send the will message.
    DisconnectWithWillMessage = 0x04,
    /// The message was accepted but nobody subscribes to it.
    NoMatchingSubscribers = 0x10,
    /// No subscription existed for the filter.
    NoSubscriptionExisted = 0x11,
    /// Continue authentication.
    ContinueAuthentication = 0x18,
    /// Re-authenticate.
    ReAuthenticate = 0x19,
    /// Unspecified error.
    UnspecifiedError = 0x80,
    /// Malformed packet.
    MalformedPacket = 0x81,
    /// Protocol error.
    ProtocolError = 0x82,
    /// Implementation specific error.
    ImplementationSpecificError = 0x83,
    /// Unsupported protocol version.
    UnsupportedProtocolVersion = 0x84,
    /// Client identifier not valid.
    ClientIdentifierNotValid = 0x85,
    /// Bad user name or password.
    BadUserNameOrPassword = 0x86,
    /// Not authorized.
    NotAuthorized = 0x87,
    /// Server unavailable.
    ServerUnavailable = 0x88,
    /// Server busy.
    ServerBusy = 0x89,
    /// Banned.
    Banned = 0x8A,
    /// Server shutting down.
    ServerShuttingDown = 0x8B,
    /// Bad authentication method.
    BadAuthenticationMethod = 0x8C,
    /// Keep alive timeout.
    KeepAliveTimeout = 0x8D,
    /// Session taken over by another connection.
    SessionTakenOver = 0x8E,
    /// Topic filter invalid.
    TopicFilterInvalid = 0x8F,
    /// Topic name invalid.
    TopicNameInvalid = 0x90,
    /// Packet identifier in use.
    PacketIdentifierInUse = 0x91,
    /// Packet identifier not found.
    PacketIdentifierNotFound = 0x92,
    /// Receive maximum exceeded.
    ReceiveMaximumExceeded = 0x93,
    /// Topic alias invalid.
    TopicAliasInvalid = 0x94,
    /// Packet too large.
    PacketTooLarge = 0x95,
    /// Message rate too high.
    MessageRateTooHigh = 0x96,
    /// Quota exceeded.
    QuotaExceeded = 0x97,
    /// Administrative action.
    AdministrativeAction = 0x98,
    /// Payload format invalid.
    PayloadFormatInvalid = 0x99,
    /// Retain not supported.
    RetainNotSupported = 0x9A,
    /// QoS not supported.
    QoSNotSupported = 0x9B,
    /// Use another server.
    UseAnotherServer = 0x9C,
    /// Server moved.
    ServerMoved = 0x9D,
    /// Shared subscriptions not supported.
    SharedSubscriptionsNotSupported = 0x9E,
    /// Connection rate exceeded.
    ConnectionRateExceeded = 0x9F,
    /// Maximum connect time.
    MaximumConnectTime = 0xA0,
    /// Subscription identifiers not supported.
    SubscriptionIdentifiersNotSupported = 0xA1,
    /// Wildcard subscriptions not supported.
    WildcardSubscriptionsNotSupported = 0xA2,
}

/// The packet kinds that carry reason codes, each with its own allowed set (spec §2.4 table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReasonContext {
    /// CONNACK.
    ConnAck,
    /// PUBACK and PUBREC.
    PubAckOrRec,
    /// PUBREL and PUBCOMP.
    PubRelOrComp,
    /// SUBACK.
    SubAck,
    /// UNSUBACK.
    UnsubAck,
    /// DISCONNECT.
    Disconnect,
    /// AUTH.
    Auth,
}

impl ReasonCode {
    /// The byte on the wire.
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    /// True for codes below 0x80 (success of some kind).
    pub fn is_success(self) -> bool {
        (self as u8) < 0x80
    }

    /// Whether this code may appear in a packet of the given kind.
    pub fn allowed_in(self, ctx: ReasonContext) -> bool {
        let v = self as u8;
        let allowed: &[u8] = match ctx {
            ReasonContext::ConnAck => &[
                0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90,
                0x95, 0x97, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
            ],
            ReasonContext::PubAckOrRec => &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99],
            ReasonContext::PubRelOrComp => &[0x00, 0x92],
            ReasonContext::SubAck => &[
                0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
            ],
            ReasonContext::UnsubAck => &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91],
            ReasonContext::Disconnect => &[
                0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93,
                0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1,
                0xA2,
            ],
            ReasonContext::Auth => &[0x00, 0x18, 0x19],
        };
        allowed.contains(&v)
    }

    /// Decode a byte as a reason code valid for `ctx`.
    pub(crate) fn decode_in(value: u8, ctx: ReasonContext) -> Result<Self, DecodeError> {
        match Self::from_u8(value) {
            Some(code) if code.allowed_in(ctx) => Ok(code),
            _ => Err(DecodeError::InvalidReasonCode { code: value }),
        }
    }
}

impl std::fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} (0x{:02X})", self, *self as u8)
    }
}
