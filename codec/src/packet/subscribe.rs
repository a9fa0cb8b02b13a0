//! SUBSCRIBE, SUBACK, UNSUBSCRIBE and UNSUBACK (§3.8-§3.11).

use std::num::NonZeroU16;

use bytes::{BufMut, Bytes, BytesMut};

use super::Limits;
use crate::error::{DecodeError, EncodeError};
use crate::properties::{AckProperties, SubscribeProperties, UnsubscribeProperties};
use crate::reason::{ReasonCode, ReasonContext};
use crate::topic::TopicFilter;
use crate::types::SubscriptionOptions;
use crate::wire::{read_string, read_u16, read_u8, write_string};

/// One entry of a SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The topic filter.
    pub filter: TopicFilter,
    /// Its options.
    pub options: SubscriptionOptions,
}

/// A request to add subscriptions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Packet identifier.
    pub packet_id: NonZeroU16,
    /// Properties (v5).
    pub properties: SubscribeProperties,
    /// At least one subscription.
    pub subscriptions: Vec<Subscription>,
}

/// The answer to SUBSCRIBE: one reason code per requested filter, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    /// Packet identifier of the SUBSCRIBE.
    pub packet_id: NonZeroU16,
    /// Properties (v5).
    pub properties: AckProperties,
    /// Granted QoS (Success/GrantedQoS1/GrantedQoS2) or a failure, per filter.
    pub reasons: Vec<ReasonCode>,
}

/// A request to remove subscriptions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Packet identifier.
    pub packet_id: NonZeroU16,
    /// Properties (v5).
    pub properties: UnsubscribeProperties,
    /// At least one filter.
    pub filters: Vec<TopicFilter>,
}

/// The answer to UNSUBSCRIBE. In 3.1.1 it carries no reason codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    /// Packet identifier of the UNSUBSCRIBE.
    pub packet_id: NonZeroU16,
    /// Properties (v5).
    pub properties: AckProperties,
    /// One reason code per filter (v5 only; empty for 3.1.1).
    pub reasons: Vec<ReasonCode>,
}

fn read_packet_id(body: &mut Bytes) -> Result<NonZeroU16, DecodeError> {
    NonZeroU16::new(read_u16(body)?).ok_or(DecodeError::ZeroPacketId)
}

impl Subscribe {
    pub(crate) fn decode(mut body: Bytes, v5: bool, lim: &Limits) -> Result<Self, DecodeError> {
        let packet_id = read_packet_id(&mut body)?;
        let properties = if v5 {
            SubscribeProperties::decode(&mut body, lim.max_user_properties)?
        } else {
            SubscribeProperties::default()
        };
        let mut subscriptions = Vec::new();
        while !body.is_empty() {
            if subscriptions.len() == lim.max_topic_filters {
                return Err(DecodeError::TooManyTopicFilters {
                    max: lim.max_topic_filters,
                });
            }
            let filter = TopicFilter::new(&read_string(&mut body)?)?;
            let options = SubscriptionOptions::decode(read_u8(&mut body)?, v5)?;
            if v5 && options.no_local && filter.share_group().is_some() {
                return Err(DecodeError::SharedSubscriptionNoLocal);
            }
            subscriptions.push(Subscription { filter, options });
        }
        if subscriptions.is_empty() {
            return Err(DecodeError::NoTopicFilters);
        }
        Ok(Subscribe {
            packet_id,
            properties,
            subscriptions,
        })
    }

    pub(crate) fn encode_body(&self, b: &mut BytesMut, v5: bool) -> Result<(), EncodeError> {
        b.put_u16(self.packet_id.get());
        if v5 {
            self.properties.encode(b)?;
        }
        for s in &self.subscriptions {
            write_string(b, s.filter.as_str())?;
            b.put_u8(s.options.encode(v5));
        }
        Ok(())
    }
}

fn suback_code_from_v3(raw: u8) -> Result<ReasonCode, DecodeError> {
    match raw {
        0 => Ok(ReasonCode::Success),
        1 => Ok(ReasonCode::GrantedQoS1),
        2 => Ok(ReasonCode::GrantedQoS2),
        0x80 => Ok(ReasonCode::UnspecifiedError),
        _ => Err(DecodeError::InvalidReasonCode { code: raw }),
    }
}

impl SubAck {
    pub(crate) fn decode(mut body: Bytes, v5: bool, lim: &Limits) -> Result<Self, DecodeError> {
        let packet_id = read_packet_id(&mut body)?;
        let properties = if v5 {
            AckProperties::decode(&mut body, lim.max_user_properties)?
        } else {
            AckProperties::default()
        };
        let mut reasons = Vec::with_capacity(body.len());
        while !body.is_empty() {
            let raw = read_u8(&mut body)?;
            reasons.push(if v5 {
                ReasonCode::decode_in(raw, ReasonContext::SubAck)?
            } else {
                suback_code_from_v3(raw)?
            });
        }
        Ok(SubAck {
            packet_id,
            properties,
            reasons,
        })
    }

    pub(crate) fn encode_body(&self, b: &mut BytesMut, v5: bool) -> Result<(), EncodeError> {
        b.put_u16(self.packet_id.get());
        if v5 {
            self.properties.encode(b)?;
        }
        for r in &self.reasons {
            // 3.1.1 knows only 0, 1, 2 and 0x80 (failure).
            b.put_u8(if v5 || r.is_success() {
                r.as_u8()
            } else {
                0x80
            });
        }
        Ok(())
    }
}

impl Unsubscribe {
    pub(crate) fn decode(mut body: Bytes, v5: bool, lim: &Limits) -> Result<Self, DecodeError> {
        let packet_id = read_packet_id(&mut body)?;
        let properties = if v5 {
            UnsubscribeProperties::decode(&mut body, lim.max_user_properties)?
        } else {
            UnsubscribeProperties::default()
        };
        let mut filters = Vec::new();
        while !body.is_empty() {
            if filters.len() == lim.max_topic_filters {
                return Err(DecodeError::TooManyTopicFilters {
                    max: lim.max_topic_filters,
                });
            }
            filters.push(TopicFilter::new(&read_string(&mut body)?)?);
        }
        if filters.is_empty() {
            return Err(DecodeError::NoTopicFilters);
        }
        Ok(Unsubscribe {
            packet_id,
            properties,
            filters,
        })
    }

    pub(crate) fn encode_body(&self, b: &mut BytesMut, v5: bool) -> Result<(), EncodeError> {
        b.put_u16(self.packet_id.get());
        if v5 {
            self.properties.encode(b)?;
        }
        for f in &self.filters {
            write_string(b, f.as_str())?;
        }
        Ok(())
    }
}

impl UnsubAck {
    pub(crate) fn decode(mut body: Bytes, v5: bool, lim: &Limits) -> Result<Self, DecodeError> {
        let packet_id = read_packet_id(&mut body)?;
        if !v5 {
            if !body.is_empty() {
                return Err(DecodeError::TrailingBytes);
            }
            return Ok(UnsubAck {
                packet_id,
                properties: AckProperties::default(),
                reasons: Vec::new(),
            });
        }
        let properties = AckProperties::decode(&mut body, lim.max_user_properties)?;
        let mut reasons = Vec::with_capacity(body.len());
        while !body.is_empty() {
            reasons.push(ReasonCode::decode_in(
                read_u8(&mut body)?,
                ReasonContext::UnsubAck,
            )?);
        }
        Ok(UnsubAck {
            packet_id,
            properties,
            reasons,
        })
    }

    pub(crate) fn encode_body(&self, b: &mut BytesMut, v5: bool) -> Result<(), EncodeError> {
        b.put_u16(self.packet_id.get());
        if v5 {
            self.properties.encode(b)?;
            for r in &self.reasons {
                b.put_u8(r.as_u8());
            }
        }
        Ok(())
    }
}
