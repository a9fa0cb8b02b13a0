//! DISCONNECT (§3.14) and AUTH (§3.15): a reason code and properties, both omitted on the
//! wire when they are the defaults.

use bytes::{BufMut, Bytes, BytesMut};

use super::Limits;
use crate::error::{DecodeError, EncodeError};
use crate::properties::{AuthProperties, DisconnectProperties};
use crate::reason::{ReasonCode, ReasonContext};
use crate::wire::read_u8;

/// The last packet of a connection, from either side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    /// Why (v5; Success = normal disconnection).
    pub reason: ReasonCode,
    /// Properties (v5).
    pub properties: DisconnectProperties,
}

impl Disconnect {
    /// A DISCONNECT with a reason code and no properties.
    pub fn new(reason: ReasonCode) -> Self {
        Disconnect {
            reason,
            properties: DisconnectProperties::default(),
        }
    }

    pub(crate) fn decode(mut body: Bytes, v5: bool, lim: &Limits) -> Result<Self, DecodeError> {
        let mut d = Disconnect::new(ReasonCode::Success);
        if v5 && !body.is_empty() {
            d.reason = ReasonCode::decode_in(read_u8(&mut body)?, ReasonContext::Disconnect)?;
            if !body.is_empty() {
                d.properties = DisconnectProperties::decode(&mut body, lim.max_user_properties)?;
            }
        }
        if !body.is_empty() {
            return Err(DecodeError::TrailingBytes);
        }
        Ok(d)
    }

    pub(crate) fn encode_body(&self, b: &mut BytesMut, v5: bool) -> Result<(), EncodeError> {
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

/// Enhanced authentication exchange (v5 only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    /// Success, Continue Authentication or Re-authenticate.
    pub reason: ReasonCode,
    /// Properties.
    pub properties: AuthProperties,
}

impl Auth {
    pub(crate) fn decode(mut body: Bytes, lim: &Limits) -> Result<Self, DecodeError> {
        let mut a = Auth {
            reason: ReasonCode::Success,
            properties: AuthProperties::default(),
        };
        if !body.is_empty() {
            a.reason = ReasonCode::decode_in(read_u8(&mut body)?, ReasonContext::Auth)?;
            if !body.is_empty() {
                a.properties = AuthProperties::decode(&mut body, lim.max_user_properties)?;
            }
        }
        if !body.is_empty() {
            return Err(DecodeError::TrailingBytes);
        }
        Ok(a)
    }

    pub(crate) fn encode_body(&self, b: &mut BytesMut) -> Result<(), EncodeError> {
        let props = self.properties != AuthProperties::default();
        if self.reason != ReasonCode::Success || props {
            b.put_u8(self.reason.as_u8());
        }
        if props {
            self.properties.encode(b)?;
        }
        Ok(())
    }
}
