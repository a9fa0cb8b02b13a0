//! Accepting a decoded CONNECT, step by step (`admit`, then `welcome`): refuse what the
//! broker cannot take (`check`), find out who the client is and whether it may connect
//! (`login`: certificate, bans, authentication, flapping, the tenant's rate and quota),
//! settle the client id (`client_id`) and check it against the device, check the will
//! against the ACL, settle the session expiry and keep-alive (`negotiate`), attach the
//! session in the client's tenant, and answer with CONNACK. A refusal is answered by
//! `turn_away`. Every refusal and every login is audited.

use std::net::SocketAddr;
use std::num::{NonZeroU16, NonZeroU32};
use std::sync::Arc;

use messs_codec::{ConnAck, ConnAckProperties, Connect, Packet, Protocol, ReasonCode};

use super::login::{authenticate, hold_refusal, screen, Arrival, Refusal, TurnedAway};
use super::reject;
use crate::admission::topic_levels;
use crate::client::{Client, Negotiated};
use crate::config::{LimitsConfig, ListenerConfig};
use crate::security::auth::Access;
use crate::session::AttachRefused;
use crate::session::SessionKey;
use crate::state::BrokerState;
use crate::transport::connection::{Connection, Transport};

/// Checks the CONNECT, attaches the session and sends CONNACK; `None` if refused.
pub(super) async fn accept<S>(
    state: &Arc<BrokerState>,
    mut conn: Connection<S>,
    connect: Connect,
    peer: SocketAddr,
    listener: &ListenerConfig,
    deadline: tokio::time::Instant,
    cert: super::PeerCert,
) -> Option<Client<S>>
where
    S: Transport,
{
    let arrival = Arrival {
        state,
        peer,
        listener,
        arrived: tokio::time::Instant::now(),
        deadline,
        protocol: connect.protocol,
        client_max_packet: connect
            .properties
            .maximum_packet_size
            .map_or(usize::MAX, |m| m.get() as usize),
    };
    conn.configure(arrival.protocol, state.config.limits.codec_limits());
    match admit(&arrival, &mut conn, &connect, cert).await {
        Ok((access, auth_data, assigned)) => {
            welcome(&arrival, conn, connect, access, auth_data, assigned).await
        }
        Err(turned) => {
            turn_away(&arrival, &mut conn, turned).await;
            None
        }
    }
}

/// Answers a CONNECT that was turned away.
async fn turn_away<S: Transport>(
    arrival: &Arrival<'_>,
    conn: &mut Connection<S>,
    turned: TurnedAway,
) {
    let (state, protocol, max) = (arrival.state, arrival.protocol, arrival.client_max_packet);
    match turned {
        TurnedAway::Refused { code, why, delayed } => {
            if delayed {
                hold_refusal(state, arrival.arrived, arrival.deadline).await;
            }
            reject(conn, protocol, code, why, max).await;
        }
        TurnedAway::Banned => {
            state
                .stats
                .refused_banned
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            hold_refusal(state, arrival.arrived, arrival.deadline).await;
            reject(
                conn,
                protocol,
                ReasonCode::Banned,
                "banned; retry later",
                max,
            )
            .await;
        }
        TurnedAway::Gone => {}
    }
}

/// Everything that decides whether the client may connect, in order: the broker's limits,
/// its certificate, the operator's bans, authentication, the client id (and the bans and
/// flapping on it), the tenant's rate and quota, the device's client ids and the will's
/// ACL. The client's rights, the SCRAM server-final data and the assigned client id.
async fn admit<S: Transport>(
    arrival: &Arrival<'_>,
    conn: &mut Connection<S>,
    connect: &Connect,
    cert: super::PeerCert,
) -> Result<(Access, Option<String>, Option<String>), TurnedAway> {
    let (state, peer) = (arrival.state, arrival.peer);
    let limits = &state.config.limits;
    if let Err((code, why)) = check(connect, limits) {
        tracing::info!(%peer, %code, why, "CONNECT refused");
        return Err(TurnedAway::now((code, why)));
    }
    let (identity, auth_data) = authenticate(arrival, conn, connect, cert).await?;
    let (client_id, assigned) = client_id(state, connect);
    screen(arrival, &identity, &client_id)?;
    // From here on, packets are held to the listener's and the tenant's size limits too.
    let max_packet =
        limits.packet_size_for(arrival.listener, identity.tenant.limits().max_packet_size);
    conn.configure(
        arrival.protocol,
        messs_codec::Limits {
            max_packet_size: max_packet as usize,
            ..limits.codec_limits()
        },
    );
    let refused_id = !identity.allows_client_id(&client_id);
    let access = Access::new(&state.auth, identity, Arc::from(client_id.as_str()));
    let refusal = if refused_id {
        let d = crate::security::auth::Denied::ClientIdNotAllowed;
        Some((d.code(), d.reason(), "client id not allowed for the device"))
    } else {
        connect
            .will
            .as_ref()
            .filter(|w| !access.acl().may_publish(w.topic.as_str(), w.qos, w.retain))
            .map(|_| {
                (
                    ReasonCode::NotAuthorized,
                    "the ACL does not allow this will topic",
                    "will topic denied by the ACL",
                )
            })
    };
    if let Some((code, why, audit)) = refusal {
        state.audit_refusal(format!(
            "{} client {:?} from {peer}: {audit}",
            access.identity.describe(),
            crate::security::auth::clip(&client_id)
        ));
        return Err(TurnedAway::now((code, why)));
    }
    Ok((access, auth_data, assigned))
}

/// Attaches the admitted client's session and answers with CONNACK; audits the login and
/// any flapping ban it earns. The connected client, or `None` if the session could not be
/// attached.
async fn welcome<S: Transport>(
    arrival: &Arrival<'_>,
    mut conn: Connection<S>,
    connect: Connect,
    access: Access,
    auth_data: Option<String>,
    assigned: Option<String>,
) -> Option<Client<S>> {
    let (state, peer, listener, protocol) = (
        arrival.state,
        arrival.peer,
        arrival.listener,
        arrival.protocol,
    );
    let client_max_packet = arrival.client_max_packet;
    let limits = &state.config.limits;
    let client_id = access.client_id.to_string();
    let max_packet =
        limits.packet_size_for(listener, access.identity.tenant.limits().max_packet_size);
    let (expiry, requested_expiry, keep_alive) = negotiate(state, &connect);
    let granted = Granted {
        expiry: (expiry != requested_expiry).then_some(expiry),
        keep_alive: (keep_alive != connect.keep_alive).then_some(keep_alive),
        max_packet,
    };
    let mut ack = match connack(arrival, granted, assigned, auth_data) {
        Ok(ack) => ack,
        Err(turned) => {
            turn_away(arrival, &mut conn, turned).await;
            return None;
        }
    };

    let key = SessionKey {
        tenant: access.identity.tenant.id.clone(),
        client_id: access.client_id.clone(),
    };
    let attached = match attach(arrival, key, connect.clean_start, expiry).await {
        Ok(attached) => attached,
        Err(turned) => {
            turn_away(arrival, &mut conn, turned).await;
            return None;
        }
    };
    attached
        .session
        .lock()
        .set_owner(access.identity.username.clone(), link(arrival, &access));

    ack.session_present = attached.session_present;
    // Encoded once already (above), so this cannot fail, and it fits.
    let _ = conn.queue_within(Packet::ConnAck(Box::new(ack)), client_max_packet);
    tracing::debug!(%peer, client_id = %client_id, ?protocol, "connected");
    audit_login(arrival, &access);
    let negotiated = Negotiated::new(
        &connect,
        keep_alive,
        limits,
        state.sessions.clock().instant(),
    );
    Some(Client::new(
        state.clone(),
        conn,
        attached,
        negotiated,
        connect.will,
        access,
        listener.transport,
    ))
}

/// Attaches the session (taking it over from a live connection, if any) within the
/// connect deadline; refused when the broker holds as many sessions as it may.
async fn attach(
    arrival: &Arrival<'_>,
    key: SessionKey,
    clean_start: bool,
    expiry: u32,
) -> Result<crate::session::table::Attached, TurnedAway> {
    let state = arrival.state;
    match state
        .attach(key, clean_start, expiry, arrival.deadline)
        .await
    {
        Ok(attached) => Ok(attached),
        Err(AttachRefused::Quota) => {
            state
                .stats
                .sessions_refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(peer = %arrival.peer, "CONNECT refused: session limit reached");
            Err(TurnedAway::now((
                ReasonCode::QuotaExceeded,
                "the broker holds as many sessions as it may",
            )))
        }
        Err(AttachRefused::Timeout) => Err(TurnedAway::Gone),
    }
}

/// How the client is connected, as the admin plane shows it.
fn link(arrival: &Arrival<'_>, access: &Access) -> crate::session::Link {
    let protocol = arrival.protocol;
    let peer = arrival.peer;
    let listener = arrival.listener;
    crate::session::Link {
        peer,
        protocol_level: match protocol {
            messs_codec::Protocol::V3_1 => 3,
            messs_codec::Protocol::V3_1_1 => 4,
            messs_codec::Protocol::V5 => 5,
        },
        by_certificate: access.identity.method == crate::security::auth::Method::Certificate,
        transport: listener.transport,
        since_ms: crate::clock::unix_ms(),
    }
}

/// The successful CONNACK (v5: with what was `granted`, the client id `assigned` and the
/// SCRAM server-final data), before any session is attached: the first packet must be the
/// CONNACK [MQTT-3.2.0-1], so one the client's Maximum Packet Size cannot take is a
/// refusal (0x95, if even that fits). `session_present` is set later; it does not change
/// the size.
fn connack(
    arrival: &Arrival<'_>,
    granted: Granted,
    assigned: Option<String>,
    auth_data: Option<String>,
) -> Result<ConnAck, TurnedAway> {
    let (protocol, max) = (arrival.protocol, arrival.client_max_packet);
    let properties = if protocol.is_v5() {
        connack_properties(&arrival.state.config.limits, granted, assigned, auth_data)
    } else {
        ConnAckProperties::default()
    };
    let ack = ConnAck {
        session_present: false,
        code: ReasonCode::Success,
        properties,
    };
    if encoded_len(&ack, protocol).is_none_or(|len| len > max) {
        tracing::debug!(peer = %arrival.peer, max, "CONNECT refused: the CONNACK would not fit");
        let why = "the CONNACK is larger than the client's Maximum Packet Size";
        return Err(TurnedAway::now((ReasonCode::PacketTooLarge, why)));
    }
    Ok(ack)
}

/// The CONNACK's encoded size (`None`: it cannot be encoded).
fn encoded_len(ack: &ConnAck, protocol: Protocol) -> Option<usize> {
    let mut buf = bytes::BytesMut::new();
    let packet = Packet::ConnAck(Box::new(ack.clone()));
    messs_codec::encode(&packet, protocol, &mut buf).ok()?;
    Some(buf.len())
}

/// What the broker granted that differs from what the client asked for (v5 CONNACK).
struct Granted {
    /// Session expiry, if lowered.
    expiry: Option<u32>,
    /// Keep-alive, if changed (Server Keep Alive).
    keep_alive: Option<u16>,
    /// The broker's Maximum Packet Size for this client.
    max_packet: u32,
}

/// A v5 CONNACK's properties: the broker's limits, what it granted, the client id it
/// assigned and the SCRAM server-final data.
fn connack_properties(
    limits: &LimitsConfig,
    granted: Granted,
    assigned: Option<String>,
    auth_data: Option<String>,
) -> ConnAckProperties {
    ConnAckProperties {
        session_expiry_interval: granted.expiry,
        receive_maximum: NonZeroU16::new(limits.receive_maximum),
        maximum_packet_size: NonZeroU32::new(granted.max_packet),
        assigned_client_identifier: assigned,
        topic_alias_maximum: Some(limits.topic_alias_maximum),
        server_keep_alive: granted.keep_alive,
        authentication_method: auth_data
            .is_some()
            .then(|| crate::security::auth::scram::METHOD.to_owned()),
        authentication_data: auth_data.map(bytes::Bytes::from),
        ..ConnAckProperties::default()
    }
}

/// Records a login: the flapping bans it earns (counted, logged, audited) and the login
/// itself in the audit log.
fn audit_login(arrival: &Arrival<'_>, access: &Access) {
    let (state, peer, protocol) = (arrival.state, arrival.peer, arrival.protocol);
    let client_id = &*access.client_id;
    let flapping = state.gate.bans.connected(
        &access.identity.tenant.id,
        client_id,
        access.identity.username.as_deref(),
        peer.ip(),
        crate::clock::unix_ms(),
    );
    for (kind, ms) in flapping {
        let what = match kind {
            crate::security::limits::bans::Kind::ClientId => {
                format!(
                    "client id {:?} of tenant {}",
                    crate::security::auth::clip(client_id),
                    access.identity.tenant.id
                )
            }
            crate::security::limits::bans::Kind::Username => access.identity.describe(),
            crate::security::limits::bans::Kind::Address => format!("address {}", peer.ip()),
        };
        state
            .stats
            .flapping_bans
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(%peer, ban = %what, ms, "flapping: banned for reconnecting too often");
        let detail = format!("{what} banned for {ms} ms: too many connections");
        match kind {
            // An address is banned for every tenant: the broker's record.
            crate::security::limits::bans::Kind::Address => state.audit("flapping.ban", detail),
            _ => state.audit_for(&access.identity.tenant.id, "flapping.ban", detail),
        }
    }
    state.audit_for(
        &access.identity.tenant.id,
        "client.connect",
        format!(
            "{} client {:?} from {peer} ({}, {protocol:?})",
            access.identity.describe(),
            crate::security::auth::clip(client_id),
            access.identity.method_name()
        ),
    );
}

/// What the broker's limits refuse outright (before any authentication work).
fn check(connect: &Connect, limits: &LimitsConfig) -> Result<(), Refusal> {
    if let Some(method) = &connect.properties.authentication_method {
        if method != crate::security::auth::scram::METHOD {
            // [MQTT-4.12.0-1]: a method the server does not offer.
            return Err((
                ReasonCode::BadAuthenticationMethod,
                "the only authentication method offered is SCRAM-SHA-256",
            ));
        }
    }
    if connect.client_id.is_empty()
        && (connect.protocol == Protocol::V3_1
            || (connect.protocol == Protocol::V3_1_1 && !connect.clean_start))
    {
        // 3.1 never allows it; 3.1.1 only with a clean session [MQTT-3.1.3-7], [MQTT-3.1.3-8].
        return Err((
            ReasonCode::ClientIdentifierNotValid,
            "an empty client id needs clean session (3.1.1) or MQTT 5",
        ));
    }
    if let Some(will) = &connect.will {
        if topic_levels(will.topic.as_str()) > limits.max_topic_levels {
            return Err((
                ReasonCode::TopicNameInvalid,
                "will topic has more levels than the broker allows",
            ));
        }
    }
    Ok(())
}

/// The client id, and the one the broker assigned if the client sent none (unique across
/// restarts: see `BrokerState::unique_id`).
fn client_id(state: &BrokerState, connect: &Connect) -> (String, Option<String>) {
    if connect.client_id.is_empty() {
        let id = format!("messs-{:x}", state.unique_id());
        (id.clone(), Some(id))
    } else {
        (connect.client_id.clone(), None)
    }
}

/// The session expiry granted, the one requested, and the keep-alive granted.
fn negotiate(state: &BrokerState, connect: &Connect) -> (u32, u32, u16) {
    let max_expiry = state.config.session.max_expiry_secs;
    let (requested, expiry) = if connect.protocol.is_v5() {
        let e = connect.properties.session_expiry_interval.unwrap_or(0);
        (e, e.min(max_expiry))
    } else if connect.clean_start {
        (0, 0)
    } else {
        (max_expiry, max_expiry)
    };
    let max_keep_alive = state.config.limits.max_keep_alive_secs;
    let keep_alive =
        if max_keep_alive > 0 && (connect.keep_alive == 0 || connect.keep_alive > max_keep_alive) {
            max_keep_alive
        } else {
            connect.keep_alive
        };
    (expiry, requested, keep_alive)
}
