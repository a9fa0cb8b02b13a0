//! PUBACK, PUBREC, PUBREL and PUBCOMP (§3.4-§3.7): a packet id, and in v5 an optional reason
//! code and properties (omitted on the wire when they are the defaults).

use std::num::NonZeroU16;

use bytes::{BufMut, Bytes, BytesMut};

use super::Limits;
use crate::error::{DecodeError, EncodeError};
use crate::properties::AckProperties;
use crate::reason::{ReasonCode, ReasonContext};
use crate::wire::{read_u16, read_u8};

/// The body shared by the four QoS acknowledgement packets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubResponse {
    /// The packet identifier acknowledged.
    pub packet_id: NonZeroU16,
    /// The outcome (always Success in 3.1.1).
    pub reason: ReasonCode,
    /// Properties (v5).
    pub properties: AckProperties,
}

impl PubResponse {
    /// A successful acknowledgement of `packet_id`.
    pub fn success(packet_id: NonZeroU16) -> Self {
        PubResponse {
            packet_id,
            reason: ReasonCode::Success,
            properties: AckProperties::default(),
        }
    }

    pub(crate) fn decode(
        mut body: Bytes,
        v5: bool,
        ctx: ReasonContext,
        lim: &Limits,
    ) -> Result<Self, DecodeError> {
        let packet_id = NonZeroU16::new(read_u16(&mut body)?).ok_or(DecodeError::ZeroPacketId)?;
        let mut reason = ReasonCode::Success;
        let mut properties = AckProperties::default();
        if v5 && !body.is_empty() {
            reason = ReasonCode::decode_in(read_u8(&mut body)?, ctx)?;
            if !body.is_empty() {
                properties = AckProperties::decode(&mut body, lim.max_user_properties)?;
            }
        }
        if !body.is_empty() {
            return Err(DecodeError::TrailingBytes);
        }
        Ok(PubResponse {
            packet_id,
            reason,
            properties,
        })
    }

    pub(crate) fn encode_body(&self, b: &mut BytesMut, v5: bool) -> Result<(), EncodeError> {
        b.put_u16(self.packet_id.get());
        if v5 {
            let props = !self.properties.is_empty();
            if self.reason != ReasonCode::Success || props {
                b.put_u8(self.reason.as_u8());
            }
            if props {
                self.properties.encode(b)?;
            }
        }
        Ok(())
    }
}
