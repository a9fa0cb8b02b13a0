//! Transports and the accept path: everything between a listening socket and a byte
//! stream the MQTT handshake can read. `accept` admits sockets (bans, per-address limits,
//! permits) for every listener; `tls`, `ws` and `quic` (with `quic_streams`) turn them into
//! streams; `framing` holds a connection's MQTT buffers and `connection` moves
//! their bytes over any of those streams; `config` tunes the sockets
//! and QUIC; `self_signed` makes the certificate a TLS listener without one uses.

pub(crate) mod accept;
pub(crate) mod config;
pub(crate) mod connection;
pub(crate) mod framing;
pub(crate) mod quic;
pub(crate) mod quic_streams;
pub mod self_signed;
pub(crate) mod tls;
pub(crate) mod ws;
