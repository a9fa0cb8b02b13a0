//! CONNACK (§3.2). One representation for both levels: a 3.1.1 return code is mapped to the
//! v5 reason code with the same meaning.

use bytes::{BufMut, Bytes, BytesMut};

use super::Limits;
use crate::error::{DecodeError, EncodeError};
use crate::properties::ConnAckProperties;
use crate::reason::{ReasonCode, ReasonContext};
use crate::types::Protocol;
use crate::wire::read_u8;

/// The server's answer to CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    /// Whether the server resumed an existing session.
    pub session_present: bool,
    /// The outcome.
    pub code: ReasonCode,
    /// CONNACK properties (v5).
    pub properties: ConnAckProperties,
}

/// The 3.1.1 return code (§3.2.2.3) closest to a v5 reason code.
fn v3_return_code(code: ReasonCode) -> u8 {
    match code {
        ReasonCode::Success => 0,
        ReasonCode::UnsupportedProtocolVersion => 1,
        ReasonCode::ClientIdentifierNotValid => 2,
        ReasonCode::BadUserNameOrPassword | ReasonCode::BadAuthenticationMethod => 4,
        ReasonCode::NotAuthorized | ReasonCode::Banned => 5,
        _ => 3,
    }
}

fn from_v3_return_code(rc: u8) -> Result<ReasonCode, DecodeError> {
    Ok(match rc {
        0 => ReasonCode::Success,
        1 => ReasonCode::UnsupportedProtocolVersion,
        2 => ReasonCode::ClientIdentifierNotValid,
        3 => ReasonCode::ServerUnavailable,
        4 => ReasonCode::BadUserNameOrPassword,
        5 => ReasonCode::NotAuthorized,
        _ => return Err(DecodeError::InvalidReasonCode { code: rc }),
    })
}

impl ConnAck {
    pub(crate) fn decode(mut body: Bytes, v5: bool, lim: &Limits) -> Result<Self, DecodeError> {
        let flags = read_u8(&mut body)?;
        if flags & 0xFE != 0 {
            return Err(DecodeError::ReservedFlags { packet_type: 2 });
        }
        let raw = read_u8(&mut body)?;
        let (code, properties) = if v5 {
            let code = ReasonCode::decode_in(raw, ReasonContext::ConnAck)?;
            (
                code,
                ConnAckProperties::decode(&mut body, lim.max_user_properties)?,
            )
        } else {
            (from_v3_return_code(raw)?, ConnAckProperties::default())
        };
        if !body.is_empty() {
            return Err(DecodeError::TrailingBytes);
        }
        Ok(ConnAck {
            // A refusal never has a session [MQTT-3.2.2-4], as `encode_body` also holds.
            session_present: flags & 1 == 1 && code == ReasonCode::Success,
            code,
            properties,
        })
    }

    /// Session Present is sent only where it exists and only with success: MQTT 3.1
    /// reserves the whole first byte, and a refusal carries 0 [MQTT-3.2.2-4], [MQTT-3.2.2-6].
    pub(crate) fn encode_body(
        &self,
        b: &mut BytesMut,
        protocol: Protocol,
    ) -> Result<(), EncodeError> {
        let v5 = protocol.is_v5();
        let present =
            self.session_present && self.code == ReasonCode::Success && protocol != Protocol::V3_1;
        b.put_u8(u8::from(present));
        if v5 {
            b.put_u8(self.code.as_u8());
            self.properties.encode(b)?;
        } else {
            b.put_u8(v3_return_code(self.code));
        }
        Ok(())
    }
}
