//! messs-codec: a sans-IO MQTT 3.1.1 and 5.0 codec.
//!
//! It owns the wire format and nothing else: no sockets, no clock, no runtime. Bytes go in
//! through [`decode`], which returns a validated [`Packet`] (or `Ok(None)` when more bytes are
//! needed), and packets go out through [`encode`]. Everything a peer controls is checked here
//! once — remaining length, reserved bits, UTF-8, topic rules, property placement, packet id 0 —
//! and each failure is a [`DecodeError`] carrying the MQTT 5 reason code to send before closing.
//!
//! One representation covers both protocol levels; v5-only fields are simply default in
//! 3.1.1, and 3.1.1 return codes are mapped to their v5 equivalents.

mod error;
mod packet;
mod properties;
mod reason;
mod topic;
mod types;
mod wire;

pub use error::{DecodeError, EncodeError};
pub use packet::{
    decode, encode, encode_plain_publish, encode_publish, Auth, ConnAck, Connect, Disconnect,
    Limits, Packet, PubResponse, Publish, PublishFlags, QosPid, SubAck, Subscribe, Subscription,
    UnsubAck, Unsubscribe, Will,
};
pub use properties::{
    AckProperties, AuthProperties, ConnAckProperties, ConnectProperties, DisconnectProperties,
    PublishProperties, SubscribeProperties, UnsubscribeProperties, UserProperties, WillProperties,
};
pub use reason::{ReasonCode, ReasonContext};
pub use topic::{topic_matches, TopicFilter, TopicName};
pub use types::{Protocol, QoS, RetainHandling, SubscriptionOptions};
pub use wire::{frame_length, MAX_VARINT};
