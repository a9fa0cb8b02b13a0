//! What a listener speaks: the [`Transport`] and the settings only some transports have
//! (`[listener.websocket]`, `[listener.quic]`). Part of the config file's schema; `config`
//! re-exports it.

use serde::Deserialize;

/// Transports a listener can speak. Every one ends in the same `Connection` over a byte
/// stream, so the handshake, authentication, ACLs, limits, metrics and audit are the
/// same on all of them.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Plain TCP.
    Tcp,
    /// MQTT over TLS 1.3 (rustls).
    Tls,
    /// MQTT over WebSocket (binary frames, subprotocol `mqtt`).
    Ws,
    /// MQTT over WebSocket over TLS 1.3.
    Wss,
    /// MQTT over QUIC (quinn): a bidirectional stream carries the connection.
    Quic,
}

impl Transport {
    /// How many there are (arrays indexed by [`Transport::index`]).
    pub const COUNT: usize = 5;
    /// Every transport, in index order.
    pub const ALL: [Transport; Transport::COUNT] = [
        Transport::Tcp,
        Transport::Tls,
        Transport::Ws,
        Transport::Wss,
        Transport::Quic,
    ];

    /// Its place in per-transport arrays.
    pub fn index(self) -> usize {
        match self {
            Transport::Tcp => 0,
            Transport::Tls => 1,
            Transport::Ws => 2,
            Transport::Wss => 3,
            Transport::Quic => 4,
        }
    }

    /// Its name in URLs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Ws => "ws",
            Transport::Wss => "wss",
            Transport::Quic => "quic",
        }
    }

    /// The transport a URL scheme names (`tcp`, `mqtt`, `tls`, `mqtts`, `ws`, `wss`, `quic`).
    pub fn from_scheme(scheme: &str) -> Option<Transport> {
        Some(match scheme {
            "tcp" | "mqtt" => Transport::Tcp,
            "tls" | "ssl" | "mqtts" => Transport::Tls,
            "ws" => Transport::Ws,
            "wss" => Transport::Wss,
            "quic" => Transport::Quic,
            _ => return None,
        })
    }

    /// The port users expect for it (FIELD-NOTES: Mosquitto's, EMQX's).
    pub fn default_port(self) -> u16 {
        match self {
            Transport::Tcp => 1883,
            Transport::Tls => 8883,
            Transport::Ws => 8083,
            Transport::Wss => 8084,
            Transport::Quic => 14567,
        }
    }

    /// True if it runs over TLS 1.3 and so needs a certificate (`[listener.tls]`).
    pub fn uses_tls(self) -> bool {
        matches!(self, Transport::Tls | Transport::Wss | Transport::Quic)
    }

    /// True for WebSocket and WebSocket over TLS.
    pub fn is_websocket(self) -> bool {
        matches!(self, Transport::Ws | Transport::Wss)
    }
}

/// A WebSocket listener's settings (`[listener.websocket]`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketConfig {
    /// The HTTP path clients upgrade at; any other path is answered 404.
    pub path: String,
    /// Largest WebSocket frame accepted, in bytes (payload). A bigger frame closes that
    /// connection (close code 1009).
    pub max_frame_size: u32,
    /// Largest WebSocket message accepted (frames of one message together), in bytes.
    pub max_message_size: u32,
    /// Origins allowed to open a connection, e.g. `https://app.example.com`. Empty: any.
    /// A browser always sends its page's origin; a request without an Origin header is not
    /// from a browser page and is let through (the list protects users' browsers from
    /// other sites' pages, not the broker from programs, which can send any header).
    pub allowed_origins: Vec<String>,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig {
            path: "/mqtt".into(),
            max_frame_size: 1024 * 1024 + 16,
            max_message_size: 1024 * 1024 + 16,
            allowed_origins: Vec::new(),
        }
    }
}

/// A QUIC listener's settings (`[listener.quic]`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QuicConfig {
    /// Bidirectional streams a client may open. The first carries the MQTT connection
    /// (CONNECT and everything after); with more than one, the further streams carry
    /// PUBLISH packets (and their acknowledgements) of the same connection, so one slow
    /// topic does not hold up the others.
    pub max_streams: u32,
    /// Ask a client whose address is not yet proven to echo a Retry token first (one extra
    /// round trip on its first connection; later ones present a token from the last). Off,
    /// a sender of spoofed UDP could spend another address's connection rate.
    pub validate_address: bool,
    /// Accept TLS 1.3 early data (0-RTT) from resuming clients. Early data can be replayed
    /// by anyone who saw it, so only a CONNECT may ride in it: see docs/TRANSPORTS.md.
    pub enable_0rtt: bool,
}

impl Default for QuicConfig {
    fn default() -> Self {
        QuicConfig {
            max_streams: 1,
            validate_address: true,
            enable_0rtt: false,
        }
    }
}
