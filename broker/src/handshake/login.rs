//! Who may connect: the client's certificate, the operator's bans, authentication (SCRAM
//! or a login), flapping bans and the tenant's connect rate and quota — and how a CONNECT
//! that fails any of them is turned away (a refused login only after the failure delay).

use std::net::SocketAddr;
use std::sync::Arc;

use messs_codec::{Connect, Protocol, ReasonCode};

use crate::config::ListenerConfig;
use crate::security::auth::{Identity, Login};
use crate::state::BrokerState;
use crate::transport::connection::{Connection, Transport};

/// A refusal: the CONNACK reason code and the reason string sent with it.
pub(super) type Refusal = (ReasonCode, &'static str);

/// How a CONNECT is turned away.
pub(super) enum TurnedAway {
    /// CONNACK with this code and reason string; `delayed`: after the failure delay (a
    /// refused login: see `hold_refusal`).
    Refused {
        code: ReasonCode,
        why: &'static str,
        delayed: bool,
    },
    /// Banned (the operator's ban or flapping): 0x8A after the failure delay.
    Banned,
    /// Nothing to answer: the peer left or the connect deadline passed.
    Gone,
}

impl TurnedAway {
    /// Refused at once (no credentials were tried).
    pub(super) fn now((code, why): Refusal) -> Self {
        TurnedAway::Refused {
            code,
            why,
            delayed: false,
        }
    }
}

/// One CONNECT being accepted: where it came from and what its answer must respect.
pub(super) struct Arrival<'a> {
    pub(super) state: &'a Arc<BrokerState>,
    pub(super) peer: SocketAddr,
    pub(super) listener: &'a ListenerConfig,
    /// Refusals are answered `failure_delay_ms` after this, whatever work they took (a
    /// password hashed or not, a token checked or not), so the answer's timing tells
    /// nothing of which path the credentials took.
    pub(super) arrived: tokio::time::Instant,
    pub(super) deadline: tokio::time::Instant,
    pub(super) protocol: Protocol,
    /// The client's Maximum Packet Size (the CONNACK must fit it).
    pub(super) client_max_packet: usize,
}

/// Who the client is: its certificate, the operator's bans on what it sent, then SCRAM or
/// a login (password, token, certificate, anonymous). Refusals are counted and audited
/// (lockouts and a busy verifier only counted: their cause is audited).
pub(super) async fn authenticate<S: Transport>(
    arrival: &Arrival<'_>,
    conn: &mut Connection<S>,
    connect: &Connect,
    cert: super::PeerCert,
) -> Result<(Identity, Option<String>), TurnedAway> {
    use crate::security::auth::Denied;
    let (state, peer, listener) = (arrival.state, arrival.peer, arrival.listener);
    let certificate = match cert {
        Some(Ok(c)) => Some(c),
        Some(Err(why)) => {
            state
                .stats
                .auth_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            state.audit_refusal(format!("certificate from {peer}: {why}"));
            let d = Denied::BadCredentials;
            return Err(TurnedAway::Refused {
                code: d.code(),
                why: d.reason(),
                delayed: true,
            });
        }
        None => None,
    };
    // The operator's bans, before any password work.
    let named = connect
        .username
        .as_deref()
        .map(|u| crate::security::auth::split_login(listener, u))
        .filter(|(name, _)| !name.is_empty());
    if let Some(kind) = state.gate.bans.listed(&connect.client_id, named) {
        tracing::debug!(%peer, ?kind, "CONNECT refused: banned by the operator");
        return Err(TurnedAway::Banned);
    }
    let scram = connect.properties.authentication_method.as_deref()
        == Some(crate::security::auth::scram::METHOD);
    let authenticated = if scram {
        match super::enhanced::scram(state, conn, connect, peer, listener).await {
            Ok((identity, last)) => Ok((identity, Some(last))),
            Err(super::enhanced::Failed::Refused(r)) => Err(r),
            Err(super::enhanced::Failed::Protocol(why)) => {
                tracing::info!(%peer, why, "enhanced authentication broken off");
                return Err(TurnedAway::now((ReasonCode::ProtocolError, why)));
            }
            Err(super::enhanced::Failed::Gone) => return Err(TurnedAway::Gone),
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
    authenticated.map_err(|refusal| login_refused(state, peer, refusal))
}

/// Counts a refused login and audits it (lockouts and a busy verifier only counted: their
/// cause is audited); it is answered after the failure delay.
pub(super) fn login_refused(
    state: &BrokerState,
    peer: SocketAddr,
    refusal: crate::security::auth::Refusal,
) -> TurnedAway {
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
    TurnedAway::Refused {
        code: d.code(),
        why: d.reason(),
        delayed: true,
    }
}

/// What may still keep an authenticated client out: the operator's bans on the identity
/// authentication settled on, a flapping ban, and its tenant's connect rate and
/// connection quota.
pub(super) fn screen(
    arrival: &Arrival<'_>,
    identity: &Identity,
    client_id: &str,
) -> Result<(), TurnedAway> {
    let (state, peer) = (arrival.state, arrival.peer);
    // A SCRAM login names its user inside the exchange, a certificate inside the
    // certificate and a JWT in its subject, none of them in the CONNECT's User Name.
    let settled = identity
        .username
        .as_deref()
        .map(|name| (name, &*identity.tenant.id));
    let banned = match state.gate.bans.listed(client_id, settled) {
        Some(kind) => Some(format!("{kind:?} banned by the operator")),
        None => state
            .gate
            .bans
            .flapping(
                &identity.tenant.id,
                client_id,
                identity.username.as_deref(),
                crate::clock::unix_ms(),
            )
            .map(|(kind, until)| {
                format!("{kind:?} banned for reconnecting too often, until {until} (Unix ms)")
            }),
    };
    if let Some(why) = banned {
        tracing::debug!(%peer, why, "CONNECT refused");
        return Err(TurnedAway::Banned);
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
        return Err(TurnedAway::now((code, why)));
    }
    Ok(())
}

/// Holds a refused login for `auth.failure_delay_ms` before its CONNACK, ending early at
/// shutdown and always a little before the connect deadline (which would drop the
/// connection without an answer). A guesser waits for each answer, so this is what bounds
/// both its guesses and the handshakes a flood of them costs.
pub(super) async fn hold_refusal(
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
