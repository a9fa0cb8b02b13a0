//! CONNECT (§3.1): protocol name and level, flags, keep-alive, properties, client id, will,
//! credentials.

use bytes::{BufMut, Bytes, BytesMut};

use super::Limits;
use crate::error::{DecodeError, EncodeError};
use crate::properties::{ConnectProperties, WillProperties};
use crate::topic::TopicName;
use crate::types::{Protocol, QoS};
use crate::wire::{read_binary, read_string, read_u16, read_u8, write_binary, write_string};

/// A client's request to open a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// Protocol level, from the protocol name and level bytes.
    pub protocol: Protocol,
    /// Clean Start (v5) / Clean Session (3.1.1).
    pub clean_start: bool,
    /// Keep-alive in seconds (0 = off).
    pub keep_alive: u16,
    /// CONNECT properties (v5; default otherwise).
    pub properties: ConnectProperties,
    /// The client identifier (may be empty).
    pub client_id: String,
    /// The will message, if the will flag is set.
    pub will: Option<Will>,
    /// User name.
    pub username: Option<String>,
    /// Password (binary data).
    pub password: Option<Bytes>,
}

/// The will message a CONNECT registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    /// Will topic.
    pub topic: TopicName,
    /// Will payload.
    pub payload: Bytes,
    /// Will QoS.
    pub qos: QoS,
    /// Will retain.
    pub retain: bool,
    /// Will properties (v5).
    pub properties: WillProperties,
}

mod flag {
    pub const RESERVED: u8 = 0x01;
    pub const CLEAN_START: u8 = 0x02;
    pub const WILL: u8 = 0x04;
    pub const WILL_QOS_SHIFT: u8 = 3;
    pub const WILL_RETAIN: u8 = 0x20;
    pub const PASSWORD: u8 = 0x40;
    pub const USERNAME: u8 = 0x80;
}

impl Connect {
    pub(crate) fn decode(mut body: Bytes, lim: &Limits) -> Result<Self, DecodeError> {
        let name = read_binary(&mut body)?;
        let level = read_u8(&mut body)?;
        let protocol = match (&name[..], level) {
            (b"MQTT", 4) => Protocol::V3_1_1,
            (b"MQTT", 5) => Protocol::V5,
            (b"MQIsdp", 3) => Protocol::V3_1,
            _ => {
                return Err(DecodeError::UnsupportedProtocol {
                    name: String::from_utf8_lossy(&name).into_owned(),
                    level,
                })
            }
        };
        let flags = read_u8(&mut body)?;
        if flags & flag::RESERVED != 0 {
            return Err(DecodeError::ConnectReservedFlag);
        }
        let will_flag = flags & flag::WILL != 0;
        let will_qos = QoS::from_u8((flags >> flag::WILL_QOS_SHIFT) & 0b11)?;
        let will_retain = flags & flag::WILL_RETAIN != 0;
        if !will_flag && (will_qos != QoS::AtMostOnce || will_retain) {
            return Err(DecodeError::WillFlags);
        }
        let has_username = flags & flag::USERNAME != 0;
        let has_password = flags & flag::PASSWORD != 0;
        if has_password && !has_username && !protocol.is_v5() {
            return Err(DecodeError::PasswordWithoutUsername);
        }
        let keep_alive = read_u16(&mut body)?;
        let properties = if protocol.is_v5() {
            ConnectProperties::decode(&mut body, lim.max_user_properties)?
        } else {
            ConnectProperties::default()
        };
        let client_id = read_string(&mut body)?;
        let will = if will_flag {
            let properties = if protocol.is_v5() {
                WillProperties::decode(&mut body, lim.max_user_properties)?
            } else {
                WillProperties::default()
            };
            let topic = TopicName::new(&read_string(&mut body)?)?;
            let payload = read_binary(&mut body)?;
            Some(Will {
                topic,
                payload,
                qos: will_qos,
                retain: will_retain,
                properties,
            })
        } else {
            None
        };
        let username = if has_username {
            Some(read_string(&mut body)?)
        } else {
            None
        };
        let password = if has_password {
            Some(read_binary(&mut body)?)
        } else {
            None
        };
        if !body.is_empty() {
            return Err(DecodeError::TrailingBytes);
        }
        Ok(Connect {
            protocol,
            clean_start: flags & flag::CLEAN_START != 0,
            keep_alive,
            properties,
            client_id,
            will,
            username,
            password,
        })
    }

    pub(crate) fn encode_body(&self, b: &mut BytesMut) -> Result<(), EncodeError> {
        write_string(b, self.protocol.name())?;
        b.put_u8(self.protocol.level());
        let mut flags = 0u8;
        if self.clean_start {
            flags |= flag::CLEAN_START;
        }
        if let Some(will) = &self.will {
            flags |= flag::WILL | (will.qos.as_u8() << flag::WILL_QOS_SHIFT);
            if will.retain {
                flags |= flag::WILL_RETAIN;
            }
        }
        if self.username.is_some() {
            flags |= flag::USERNAME;
        }
        if self.password.is_some() {
            flags |= flag::PASSWORD;
        }
        b.put_u8(flags);
        b.put_u16(self.keep_alive);
        let v5 = self.protocol.is_v5();
        if v5 {
            self.properties.encode(b)?;
        }
        write_string(b, &self.client_id)?;
        if let Some(will) = &self.will {
            if v5 {
                will.properties.encode(b)?;
            }
            write_string(b, will.topic.as_str())?;
            write_binary(b, &will.payload)?;
        }
        if let Some(u) = &self.username {
            write_string(b, u)?;
        }
        if let Some(p) = &self.password {
            write_binary(b, p)?;
        }
        Ok(())
    }
}
