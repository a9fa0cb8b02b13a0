//! Accepting a decoded CONNECT, step by step: refuse what the broker cannot take (`check`),
//! authenticate (`auth`: the client's identity and tenant), settle the client id
//! (`client_id`) and check it against the device, check the will against the ACL, settle
//! the session expiry and keep-alive (`negotiate`), attach the session in the client's
//! tenant, and answer with CONNACK. Every refusal and every login is audited.

use std::net::SocketAddr;
use std::num::{NonZeroU16, NonZeroU32};
use std::sync::Arc;

use messs_codec::{ConnAck, ConnAckProperties, Connect, Packet, Protocol, ReasonCode};

use super::reject;
use crate::admission::topic_levels;
use crate::client::{Client, Negotiated};
use crate::config::{LimitsConfig, ListenerConfig};
use crate::security::auth::{Access, Login};
use crate::session::AttachRefused;
use crate::session::SessionKey;
use crate::state::BrokerState;
use crate::transport::connection::{Connection, Transport};

/// A refusal: the CONNACK reason code and the reason string sent with it.
type Refusal = (ReasonCode, &'static str);

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
    // Refusals are answered `failure_delay_ms` after this, whatever work they took (a
    // password hashed or not, a token checked or not), so the answer's timing tells
    // nothing of which path the credentials took.
    let arrived = tokio::time::Instant::now();
    let protocol = connect.protocol;
    let limits = &state.config.limits;
    let client_max_packet = connect
        .properties
        .maximum_packet_size
        .map_or(usize::MAX, |m| m.get() as usize);
    conn.configure(protocol, limits.codec_limits());
    if let Err((code, why)) = check(&connect, limits) {
        tracing::info!(%peer, %code, why, "CONNECT refused");
        reject(&mut conn, protocol, code, why, client_max_packet).await;
        return None;
    }
    let (certificate, bad_cert) = match cert {
        Some(Ok(c)) => (Some(c), None),
        Some(Err(why)) => (None, Some(why)),
        None => (None, None),
    };
    if let Some(why) = bad_cert {
        let d = crate::security::auth::Denied::BadCredentials;
        state
            .stats
            .auth_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        state.audit_refusal(format!("certificate from {peer}: {why}"));
        hold_refusal(state, arrived, deadline).await;
        reject(&mut conn, protocol, d.code(), d.reason(), client_max_packet).await;
        return None;
    }
    // The operator's bans, before any password work.
    let named = connect
        .username
        .as_deref()
        .map(|u| crate::security::auth::split_login(listener, u))
        .filter(|(name, _)| !name.is_empty());
    if let Some(kind) = state.bans.listed(&connect.client_id, named) {
        tracing::debug!(%peer, ?kind, "CONNECT refused: banned by the operator");
        refuse_banned(
            state,
            &mut conn,
            protocol,
            (arrived, deadline),
            client_max_packet,
        )
        .await;
        return None;
    }
    let scram = connect.properties.authentication_method.as_deref()
        == Some(crate::security::auth::scram::METHOD);
    let authenticated = if scram {
        match super::enhanced::scram(state, &mut conn, &connect, peer, listener).await {
            Ok((identity, last)) => Ok((identity, Some(last))),
            Err(super::enhanced::Failed::Refused(r)) => Err(r),
            Err(super::enhanced::Failed::Protocol(why)) => {
                tracing::info!(%peer, why, "enhanced authentication broken off");
                let code = ReasonCode::ProtocolError;
                reject(&mut conn, protocol, code, why, client_max_packet).await;
                return None;
            }
            Err(super::enhanced::Failed::Gone) => return None,
        }
    } else {
        let login = Login {
            peer: peer.ip(),
            listener,
            certificate,
            username: connect.username.as_deref(),
            password: connect.password.as_deref(),
        };
        let store = state.persist.as_ref().map(|p| &p.store);
        state
            .auth
            .authenticate(login, store, crate::clock::unix_ms())
            .await
            .map(|identity| (identity, None))
    };
    let (identity, auth_data) = match authenticated {
        Ok(done) => done,
        Err(refusal) => {
            use crate::security::auth::Denied;
            let stats = &state.stats;
            let counter = match refusal.denied {
                Denied::LockedOut => &stats.auth_locked_out,
                Denied::Busy => &stats.auth_busy,
                _ => &stats.auth_failures,
            };
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if matches!(refusal.denied, Denied::LockedOut | Denied::Busy) {
                // Counted, not audited one by one: the lockout that caused them is, and an
                // attacker must not be able to grow the audit log as fast as it connects.
                tracing::debug!(%peer, code = %refusal.denied.code(), detail = %refusal.detail, "login refused");
            } else {
                tracing::info!(%peer, code = %refusal.denied.code(), detail = %refusal.detail, "login refused");
                state.audit_refusal(refusal.detail);
            }
            for lock in refusal.lockouts {
                tracing::warn!(%peer, lockout = %lock, "lockout");
                state.audit_lockout(lock);
            }
            let d = refusal.denied;
            hold_refusal(state, arrived, deadline).await;
            reject(&mut conn, protocol, d.code(), d.reason(), client_max_packet).await;
            return None;
        }
    };
    let (client_id, assigned) = client_id(state, &connect);
    // The operator's username bans again, on the identity authentication settled on: a
    // SCRAM login names its user inside the exchange, a certificate inside the certificate
    // and a JWT in its subject, none of them in the CONNECT's User Name.
    let settled = identity
        .username
        .as_deref()
        .map(|name| (name, &*identity.tenant.id));
    // Then a flapping ban on its client id or username.
    let banned = match state.bans.listed(&client_id, settled) {
        Some(kind) => Some(format!("{kind:?} banned by the operator")),
        None => state
            .bans
            .flapping(
                &identity.tenant.id,
                &client_id,
                identity.username.as_deref(),
                crate::clock::unix_ms(),
            )
            .map(|(kind, until)| {
                format!("{kind:?} banned for reconnecting too often, until {until} (Unix ms)")
            }),
    };
    if let Some(why) = banned {
        tracing::debug!(%peer, why, "CONNECT refused");
        refuse_banned(
            state,
            &mut conn,
            protocol,
            (arrived, deadline),
            client_max_packet,
        )
        .await;
        return None;
    }
    // The tenant's connect rate and connection quota.
    let tenant = &identity.tenant;
    let over = if !tenant.rates.try_connect(crate::clock::mono_us()) {
        Some((
            ReasonCode::ConnectionRateExceeded,
            "the tenant's connection rate is exceeded",
        ))
    } else if !crate::security::limits::tenant::below(
        tenant.limits().max_connections,
        tenant
            .counters
            .connected
            .load(std::sync::atomic::Ordering::Relaxed),
    ) {
        Some((
            ReasonCode::QuotaExceeded,
            "the tenant has as many connections as it may",
        ))
    } else {
        None
    };
    if let Some((code, why)) = over {
        state
            .stats
            .tenant_quota_refusals
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(%peer, tenant = %tenant.id, %code, "CONNECT refused by the tenant's limits");
        reject(&mut conn, protocol, code, why, client_max_packet).await;
        return None;
    }
    // From here on, packets are held to the listener's and the tenant's size limits too.
    let max_packet = limits.packet_size_for(listener, tenant.limits().max_packet_size);
    conn.configure(
        protocol,
        messs_codec::Limits {
            max_packet_size: max_packet as usize,
            ..limits.codec_limits()
        },
    );
    let refused_id = !identity.allows_client_id(&client_id);
    let access = Access::new(&state.auth, identity, Arc::from(client_id.as_str()));
    let refusal = if refused_id {
        Some((
            crate::security::auth::Denied::ClientIdNotAllowed.code(),
            crate::security::auth::Denied::ClientIdNotAllowed.reason(),
            "client id not allowed for the device",
        ))
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
        reject(&mut conn, protocol, code, why, client_max_packet).await;
        return None;
    }
    let (expiry, requested_expiry, keep_alive) = negotiate(state, &connect);

    let key = SessionKey {
        tenant: access.identity.tenant.id.clone(),
        client_id: access.client_id.clone(),
    };
    let attached = match state
        .attach(key, connect.clean_start, expiry, deadline)
        .await
    {
        Ok(attached) => attached,
        Err(AttachRefused::Quota) => {
            state
                .stats
                .sessions_refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(%peer, "CONNECT refused: session limit reached");
            let why = "the broker holds as many sessions as it may";
            reject(
                &mut conn,
                protocol,
                ReasonCode::QuotaExceeded,
                why,
                client_max_packet,
            )
            .await;
            return None;
        }
        Err(AttachRefused::Timeout) => return None,
    };
    attached.session.lock().set_owner(
        access.identity.username.clone(),
        crate::session::Link {
            peer,
            protocol_level: match protocol {
                messs_codec::Protocol::V3_1 => 3,
                messs_codec::Protocol::V3_1_1 => 4,
                messs_codec::Protocol::V5 => 5,
            },
            by_certificate: access.identity.method == crate::security::auth::Method::Certificate,
            transport: listener.transport.name(),
            since_ms: crate::clock::unix_ms(),
        },
    );

    let properties = if protocol.is_v5() {
        ConnAckProperties {
            session_expiry_interval: (expiry != requested_expiry).then_some(expiry),
            receive_maximum: NonZeroU16::new(limits.receive_maximum),
            maximum_packet_size: NonZeroU32::new(max_packet),
            assigned_client_identifier: assigned,
            topic_alias_maximum: Some(limits.topic_alias_maximum),
            server_keep_alive: (keep_alive != connect.keep_alive).then_some(keep_alive),
            authentication_method: auth_data
                .is_some()
                .then(|| crate::security::auth::scram::METHOD.to_owned()),
            authentication_data: auth_data.map(bytes::Bytes::from),
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
    if conn
        .queue_within(Packet::ConnAck(Box::new(ack)), client_max_packet)
        .is_err()
    {
        return None;
    }
    tracing::debug!(%peer, client_id = %client_id, ?protocol, "connected");
    let flapping = state.bans.connected(
        &access.identity.tenant.id,
        &client_id,
        access.identity.username.as_deref(),
        peer.ip(),
        crate::clock::unix_ms(),
    );
    for (kind, ms) in flapping {
        let what = match kind {
            crate::security::limits::bans::Kind::ClientId => {
                format!(
                    "client id {:?} of tenant {}",
                    crate::security::auth::clip(&client_id),
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
        state.audit(
            "flapping.ban",
            format!("{what} banned for {ms} ms: too many connections"),
        );
    }
    state.audit(
        "client.connect",
        format!(
            "{} client {:?} from {peer} ({}, {protocol:?})",
            access.identity.describe(),
            crate::security::auth::clip(&client_id),
            access.identity.method_name()
        ),
    );
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

/// Holds a refused login for `auth.failure_delay_ms` before its CONNACK, ending early at
/// shutdown and always a little before the connect deadline (which would drop the
/// connection without an answer). A guesser waits for each answer, so this is what bounds
/// both its guesses and the handshakes a flood of them costs.
async fn hold_refusal(
    state: &BrokerState,
    arrived: tokio::time::Instant,
    deadline: tokio::time::Instant,
) {
    let delay = std::time::Duration::from_millis(state.config.auth.failure_delay_ms);
    if delay.is_zero() {
        return;
    }
    let answer_by = deadline
        .checked_sub(std::time::Duration::from_millis(100))
        .unwrap_or(deadline);
    let until = (arrived + delay).min(answer_by);
    tokio::select! {
        _ = state.shutdown.cancelled() => {}
        _ = tokio::time::sleep_until(until) => {}
    }
}

/// Refuses a banned client (the operator's ban or flapping) with 0x8A (3.1.1: 5) after the
/// failure delay. Counted, not audited one by one: the ban itself is.
async fn refuse_banned<S: Transport>(
    state: &BrokerState,
    conn: &mut Connection<S>,
    protocol: Protocol,
    (arrived, deadline): (tokio::time::Instant, tokio::time::Instant),
    client_max_packet: usize,
) {
    state
        .stats
        .refused_banned
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    hold_refusal(state, arrived, deadline).await;
    let why = "banned; retry later";
    reject(conn, protocol, ReasonCode::Banned, why, client_max_packet).await;
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
