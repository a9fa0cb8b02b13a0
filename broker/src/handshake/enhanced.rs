//! MQTT 5 enhanced authentication inside the handshake (§4.12): the CONNECT names the
//! method and carries the client's first message; the broker answers with AUTH 0x18 and
//! reads the client's AUTH 0x18 back; the last server message goes out in CONNACK. Only
//! SCRAM-SHA-256 is offered; all of it runs under the connect deadline, and the client's
//! AUTH is read with the small pre-authentication size limit.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use messs_codec::{Auth, AuthProperties, Connect, Packet, ReasonCode};

use crate::config::ListenerConfig;
use crate::security::auth::scram::METHOD;
use crate::security::auth::{Identity, Refusal};
use crate::state::BrokerState;
use crate::transport::connection::{Connection, Transport};

/// How an exchange that did not log the client in ended.
pub(super) enum Failed {
    /// The credentials were refused (answered like a refused password login).
    Refused(Refusal),
    /// The client broke the exchange: CONNACK with this code.
    Protocol(&'static str),
    /// The connection failed or closed.
    Gone,
}

/// Runs a SCRAM-SHA-256 exchange; the identity and the server's final message.
pub(super) async fn scram<S: Transport>(
    state: &Arc<BrokerState>,
    conn: &mut Connection<S>,
    connect: &Connect,
    peer: SocketAddr,
    listener: &ListenerConfig,
) -> Result<(Identity, String), Failed> {
    let first = connect
        .properties
        .authentication_data
        .as_deref()
        .unwrap_or_default();
    let store = state.persist.as_ref().map(|p| &p.store);
    let login = state
        .auth
        .scram_begin(listener, peer.ip(), first, store, crate::clock::unix_ms())
        .await
        .map_err(Failed::Refused)?;
    let challenge = Auth {
        reason: ReasonCode::ContinueAuthentication,
        properties: AuthProperties {
            authentication_method: Some(METHOD.to_owned()),
            authentication_data: Some(Bytes::copy_from_slice(
                login.exchange.server_first().as_bytes(),
            )),
            ..AuthProperties::default()
        },
    };
    conn.queue(&Packet::Auth(Box::new(challenge)))
        .map_err(|_| Failed::Gone)?;
    conn.flush().await.map_err(|_| Failed::Gone)?;
    let answer = match read_packet(conn, state).await {
        Some(Packet::Auth(a)) => a,
        Some(_) => {
            return Err(Failed::Protocol(
                "expected AUTH during enhanced authentication",
            ))
        }
        None => return Err(Failed::Gone),
    };
    if answer.reason != ReasonCode::ContinueAuthentication
        || answer.properties.authentication_method.as_deref() != Some(METHOD)
    {
        // [MQTT-4.12.0-5]: the method is the CONNECT's for the whole exchange.
        return Err(Failed::Protocol(
            "AUTH must continue the exchange with the CONNECT's method",
        ));
    }
    let last = answer.properties.authentication_data.unwrap_or_default();
    state
        .auth
        .scram_finish(login, &last, peer.ip(), crate::clock::unix_ms())
        .map_err(Failed::Refused)
}

/// The client's next packet, decoded with the pre-authentication size limit.
async fn read_packet<S: Transport>(
    conn: &mut Connection<S>,
    state: &BrokerState,
) -> Option<Packet> {
    let protocol = conn.protocol();
    let limits = &state.config.limits;
    conn.configure(protocol, limits.connect_codec_limits());
    let packet = loop {
        match conn.next_packet() {
            Ok(Some(p)) => break Some(p),
            Ok(None) => {}
            Err(_) => break None,
        }
        match conn.fill().await {
            Ok(0) | Err(_) => break None,
            Ok(_) => {}
        }
    };
    conn.configure(protocol, limits.codec_limits());
    packet
}
