//! The CONNECT handshake of one socket: read CONNECT within the connect timeout and the
//! pre-auth size limit, check it, negotiate limits, attach the session, send CONNACK, and
//! hand over to the client loop.

use std::net::SocketAddr;
use std::num::{NonZeroU16, NonZeroU32};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use messs_codec::{
    ConnAck, ConnAckProperties, Connect, DecodeError, Limits, Packet, Protocol, ReasonCode,
};

use crate::client::{Client, Negotiated};
use crate::config::ListenerConfig;
use crate::connection::{Connection, Transport};
use crate::error::BrokerError;
use crate::session::{SessionKey, TenantId};
use crate::state::BrokerState;

/// The tenant every client belongs to until the tenancy issue adds real ones.
pub const DEFAULT_TENANT: &str = "default";

static ASSIGNED_IDS: AtomicU64 = AtomicU64::new(0);

/// Serves one accepted socket: the handshake runs in this task; a connected client then
/// gets a task of its own, so an idle connection keeps only the client loop's small state,
/// not the handshake's. `permit` (a connection slot) lives as long as the connection.
pub(crate) async fn serve<S, P>(
    state: Arc<BrokerState>,
    stream: S,
    peer: SocketAddr,
    listener: Arc<ListenerConfig>,
    permit: P,
) where
    S: Transport + 'static,
    P: Send + 'static,
{
    let tasks = state.tasks.clone();
    if let Some(client) = handshake(state, stream, peer, listener).await {
        let client = Box::new(client);
        tasks.spawn(async move {
            client.run().await;
            drop(permit);
        });
    }
}

/// Reads and answers CONNECT; the connected client, or `None` if it was refused or failed.
async fn handshake<S>(
    state: Arc<BrokerState>,
    stream: S,
    peer: SocketAddr,
    listener: Arc<ListenerConfig>,
) -> Option<Client<S>>
where
    S: Transport,
{
    let limits = &state.config.limits;
    let pre_auth = Limits {
        max_packet_size: limits.max_connect_packet_size as usize,
    };
    let write_timeout = Duration::from_secs(limits.write_timeout_secs);
    let mut conn = Connection::new(stream, pre_auth, write_timeout);
    let first = tokio::select! {
        _ = state.shutdown.cancelled() => return None,
        first = tokio::time::timeout(limits.connect_timeout(), read_connect(&mut conn)) => first,
    };
    let connect = match first {
        Err(_) => {
            tracing::debug!(%peer, "no CONNECT within the connect timeout");
            return None;
        }
        Ok(Ok(Some(Packet::Connect(c)))) => c,
        Ok(Ok(Some(other))) => {
            // [MQTT-3.1.0-1]: the first packet must be CONNECT.
            tracing::debug!(%peer, packet = other.name(), "first packet is not CONNECT");
            conn.close().await;
            return None;
        }
        Ok(Ok(None)) => return None,
        Ok(Err(BrokerError::Decode(DecodeError::UnsupportedProtocol { name, level }))) => {
            tracing::debug!(%peer, %name, level, "unsupported protocol");
            let protocol = if level == 5 {
                Protocol::V5
            } else {
                Protocol::V3_1_1
            };
            reject(
                &mut conn,
                protocol,
                ReasonCode::UnsupportedProtocolVersion,
                "supported: MQTT 3.1, 3.1.1 and 5.0",
            )
            .await;
            return None;
        }
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "bad CONNECT");
            conn.close().await;
            return None;
        }
    };
    accept(&state, conn, *connect, peer, &listener).await
}

/// Reads the first packet, refusing at its first byte anything that is not a CONNECT, so a
/// stray protocol cannot hold the socket open until the connect timeout.
async fn read_connect<S>(conn: &mut Connection<S>) -> Result<Option<Packet>, BrokerError>
where
    S: Transport,
{
    loop {
        if conn.peek_type().is_some_and(|t| t != 1) {
            return Err(BrokerError::protocol(
                ReasonCode::ProtocolError,
                "first packet is not CONNECT [MQTT-3.1.0-1]",
            ));
        }
        if let Some(p) = conn.next_packet()? {
            return Ok(Some(p));
        }
        if conn.fill().await? == 0 {
            return Ok(None);
        }
    }
}

async fn reject<S>(conn: &mut Connection<S>, protocol: Protocol, code: ReasonCode, why: &str)
where
    S: Transport,
{
    conn.configure(protocol, Limits::default());
    let ack = ConnAck {
        session_present: false,
        code,
        properties: ConnAckProperties {
            reason_string: Some(why.to_owned()),
            ..ConnAckProperties::default()
        },
    };
    let _ = conn.queue(&Packet::ConnAck(Box::new(ack)));
    conn.close().await;
}

/// Checks the CONNECT, attaches the session and sends CONNACK; `None` if refused.
async fn accept<S>(
    state: &Arc<BrokerState>,
    mut conn: Connection<S>,
    connect: Connect,
    peer: SocketAddr,
    listener: &ListenerConfig,
) -> Option<Client<S>>
where
    S: Transport,
{
    let protocol = connect.protocol;
    let v5 = protocol.is_v5();
    let limits = &state.config.limits;
    conn.configure(
        protocol,
        Limits {
            max_packet_size: limits.max_packet_size as usize,
        },
    );
    if connect.properties.authentication_method.is_some() {
        // Enhanced authentication is not offered [MQTT-4.12.0-1].
        reject(
            &mut conn,
            protocol,
            ReasonCode::BadAuthenticationMethod,
            "enhanced authentication is not offered",
        )
        .await;
        return None;
    }
    if !listener.allow_anonymous {
        tracing::info!(%peer, "refused: this listener does not allow anonymous clients");
        reject(
            &mut conn,
            protocol,
            ReasonCode::NotAuthorized,
            "this listener does not allow anonymous clients",
        )
        .await;
        return None;
    }
    let mut assigned = None;
    let client_id = if connect.client_id.is_empty() {
        // 3.1 never allows it; 3.1.1 only with a clean session [MQTT-3.1.3-7], [MQTT-3.1.3-8].
        if protocol == Protocol::V3_1 || (protocol == Protocol::V3_1_1 && !connect.clean_start) {
            reject(
                &mut conn,
                protocol,
                ReasonCode::ClientIdentifierNotValid,
                "an empty client id needs clean session (3.1.1) or MQTT 5",
            )
            .await;
            return None;
        }
        let n = ASSIGNED_IDS.fetch_add(1, Ordering::Relaxed);
        let id = format!("messs-{:x}-{n}", std::process::id());
        assigned = Some(id.clone());
        id
    } else {
        connect.client_id.clone()
    };

    let max_expiry = state.config.session.max_expiry_secs;
    let (requested_expiry, expiry) = if v5 {
        let e = connect.properties.session_expiry_interval.unwrap_or(0);
        (e, e.min(max_expiry))
    } else if connect.clean_start {
        (0, 0)
    } else {
        (max_expiry, max_expiry)
    };

    let max_keep_alive = limits.max_keep_alive_secs;
    let keep_alive =
        if max_keep_alive > 0 && (connect.keep_alive == 0 || connect.keep_alive > max_keep_alive) {
            max_keep_alive
        } else {
            connect.keep_alive
        };

    let tenant: TenantId = state.default_tenant.clone();
    let key = SessionKey {
        tenant,
        client_id: Arc::from(client_id.as_str()),
    };
    let attached = state.attach(key, connect.clean_start, expiry).await;

    let properties = if v5 {
        ConnAckProperties {
            session_expiry_interval: (expiry != requested_expiry).then_some(expiry),
            receive_maximum: NonZeroU16::new(limits.receive_maximum),
            maximum_packet_size: NonZeroU32::new(limits.max_packet_size),
            assigned_client_identifier: assigned,
            topic_alias_maximum: Some(limits.topic_alias_maximum),
            server_keep_alive: (keep_alive != connect.keep_alive).then_some(keep_alive),
            ..ConnAckProperties::default()
        }
    } else {
        ConnAckProperties::default()
    };
    let ack = ConnAck {
        session_present: attached.session_present,
        code: ReasonCode::Success,
        properties,
    };
    if conn.queue(&Packet::ConnAck(Box::new(ack))).is_err() {
        return None;
    }
    tracing::debug!(%peer, client_id = %client_id, ?protocol, "connected");
    let negotiated = Negotiated::new(&connect, keep_alive, limits);
    Some(Client::new(
        state.clone(),
        conn,
        attached,
        negotiated,
        connect.will,
    ))
}
