//! The broker crate's error enum.

use messs_codec::{DecodeError, EncodeError, ReasonCode};

/// Errors the broker reports to its caller or uses to end a connection.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The configuration is invalid.
    #[error("configuration error: {0}")]
    Config(String),
    /// A listener could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// Socket I/O failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The peer sent bytes that are not a valid packet.
    #[error("malformed input: {0}")]
    Decode(#[from] DecodeError),
    /// A packet could not be encoded.
    #[error("encode error: {0}")]
    Encode(#[from] EncodeError),
    /// The peer broke a protocol rule; the reason code says which.
    #[error("protocol violation ({code}): {message}")]
    Protocol {
        /// Reason code sent to a v5 peer.
        code: ReasonCode,
        /// What went wrong.
        message: &'static str,
    },
    /// A write to the peer took longer than the write timeout.
    #[error("write timed out")]
    WriteTimeout,
    /// The durable store failed (opening it, or a write an acknowledgement needed).
    #[error("storage: {0}")]
    Storage(#[from] messs_storage::StorageError),
    /// A registry change was refused (a bad name or value, a missing tenant or device).
    #[error("{0}")]
    Registry(String),
    /// A message was refused at the choke point (an operator's publish).
    #[error("{0}")]
    Refused(#[from] Refused),
}

impl BrokerError {
    /// A protocol violation with its reason code.
    pub(crate) fn protocol(code: ReasonCode, message: &'static str) -> Self {
        BrokerError::Protocol { code, message }
    }

    /// The reason code a v5 peer is told before the connection closes, if any.
    pub(crate) fn disconnect_reason(&self) -> Option<ReasonCode> {
        match self {
            BrokerError::Decode(e) => Some(e.reason_code()),
            BrokerError::Protocol { code, .. } => Some(*code),
            // A write the client's packet needed failed: its acknowledgement cannot be sent.
            BrokerError::Storage(messs_storage::StorageError::Busy(_)) => {
                Some(ReasonCode::ServerBusy)
            }
            BrokerError::Storage(_) => Some(ReasonCode::UnspecifiedError),
            _ => None,
        }
    }
}

/// Why a message was refused at the choke point. Typed all the way to the caller: the
/// admin plane answers 403 for `NotAuthorized` and 400 for the others without reading the
/// message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The topic is in the broker's `$SYS/` namespace.
    #[error("$SYS topics are reserved for the broker")]
    ReservedTopic,
    /// The topic has more levels than `limits.max_topic_levels`.
    #[error("topic has more levels than allowed")]
    TooDeep,
    /// The publisher's ACL does not allow it.
    #[error("the ACL does not allow publishing to this topic")]
    NotAuthorized,
}
