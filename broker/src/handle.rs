//! A cloneable handle on a running broker for the admin plane (and tests): its counters,
//! a snapshot of its sessions, and the power to disconnect a client. It holds the shared
//! state, not the listeners, so it stays valid while `Broker::run` owns the broker.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use messs_codec::ReasonCode;

use crate::session::SessionKey;
use crate::state::BrokerState;
use crate::stats::Stats;

/// A handle on a broker's shared state.
#[derive(Clone)]
pub struct BrokerHandle {
    state: Arc<BrokerState>,
}

/// What readiness depends on (`/readyz`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Readiness {
    /// Accept loops running.
    pub listeners_up: usize,
    /// Listeners configured.
    pub listeners_configured: usize,
    /// Whether the store's last write failed (`None`: no store).
    pub storage_failing: Option<bool>,
}

impl Readiness {
    /// Every listener up and the store (if any) writing.
    pub fn is_ready(&self) -> bool {
        self.listeners_up >= self.listeners_configured && self.storage_failing != Some(true)
    }
}

/// What the admin plane may see of one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// Tenant.
    pub tenant: String,
    /// Client id.
    pub client_id: String,
    /// A connection is attached.
    pub connected: bool,
    /// Subscriptions held.
    pub subscriptions: usize,
    /// Messages queued (not yet sent).
    pub queued_messages: usize,
    /// Bytes of messages queued or in flight.
    pub queued_bytes: usize,
    /// Seconds the session outlives its connection.
    pub expiry_interval: u32,
    /// Messages kept in the store for a persistent session (queued in memory or on disk,
    /// or in flight); 0 for a session that is not persistent.
    pub stored_messages: u64,
    /// Bytes of those messages.
    pub stored_bytes: usize,
}

/// A connected client, for the admin plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    /// Tenant.
    pub tenant: String,
    /// Client id.
    pub client_id: String,
    /// The device it logged in as (`None`: anonymous).
    pub username: Option<String>,
    /// Its address.
    pub peer: std::net::SocketAddr,
    /// MQTT protocol level: 3, 4 (3.1.1) or 5.
    pub protocol_level: u8,
    /// Listener transport.
    pub transport: &'static str,
    /// Connected since (Unix ms).
    pub connected_ms: u64,
    /// Subscriptions held.
    pub subscriptions: usize,
    /// Messages queued for it.
    pub queued_messages: usize,
}

impl BrokerHandle {
    pub(crate) fn new(state: Arc<BrokerState>) -> Self {
        BrokerHandle { state }
    }

    pub(crate) fn state(&self) -> &Arc<BrokerState> {
        &self.state
    }

    /// The broker's counters and gauges.
    pub fn stats(&self) -> Arc<Stats> {
        self.state.stats.clone()
    }

    /// A snapshot of every session, online or offline, ordered by tenant and client id.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        let mut infos: Vec<SessionInfo> = self
            .state
            .sessions
            .all()
            .into_iter()
            .map(|s| {
                let st = s.lock();
                let (stored_messages, stored_bytes) = st.stored();
                SessionInfo {
                    tenant: s.key.tenant.to_string(),
                    client_id: s.key.client_id.to_string(),
                    connected: s.is_connected(),
                    subscriptions: st.subscription_count(),
                    queued_messages: st.queued_len(),
                    queued_bytes: st.held_bytes(),
                    expiry_interval: st.expiry_interval(),
                    stored_messages,
                    stored_bytes,
                }
            })
            .collect();
        infos.sort_by(|a, b| (&a.tenant, &a.client_id).cmp(&(&b.tenant, &b.client_id)));
        infos
    }

    /// Every connected client of `tenant` (`None`: of every tenant), ordered by tenant and
    /// client id.
    pub fn clients(&self, tenant: Option<&str>) -> Vec<ClientInfo> {
        let mut out: Vec<ClientInfo> = self
            .state
            .sessions
            .all()
            .into_iter()
            .filter(|s| s.is_connected() && tenant.is_none_or(|t| *s.key.tenant == *t))
            .filter_map(|s| {
                let st = s.lock();
                let link = st.link()?;
                Some(ClientInfo {
                    tenant: s.key.tenant.to_string(),
                    client_id: s.key.client_id.to_string(),
                    username: st.owner().map(str::to_owned),
                    peer: link.peer,
                    protocol_level: link.protocol_level,
                    transport: link.transport.name(),
                    connected_ms: link.since_ms,
                    subscriptions: st.subscription_count(),
                    queued_messages: st.queued_len(),
                })
            })
            .collect();
        out.sort_by(|a, b| (&a.tenant, &a.client_id).cmp(&(&b.tenant, &b.client_id)));
        out
    }

    /// Writes an online backup of the store to `dir` (which must not exist): a consistent
    /// RocksDB checkpoint taken while the broker serves; a broker started with `dir` as its
    /// data directory restores it.
    pub async fn checkpoint(&self, dir: std::path::PathBuf) -> Result<(), crate::BrokerError> {
        let Some(persist) = &self.state.persist else {
            return Err(crate::BrokerError::Config(
                "this broker has no store".into(),
            ));
        };
        let store = persist.store.clone();
        let detail = format!("online checkpoint to {}", dir.display());
        tokio::task::spawn_blocking(move || store.checkpoint(&dir))
            .await
            .map_err(|e| crate::BrokerError::Config(format!("checkpoint task: {e}")))??;
        persist.audit("storage.checkpoint", detail);
        Ok(())
    }

    /// The summary of refused MQTT logins not yet recorded one by one, taken (so it is
    /// written once): with `force` whenever there is one (a reader of the audit log is
    /// about to read it), else only when due. The caller writes it as
    /// `auth.audit.suppressed` by `broker`.
    pub fn take_refusal_summary(&self, force: bool) -> Option<String> {
        self.state
            .auth
            .refusals_unrecorded(std::time::Instant::now(), force)
    }

    /// Re-reads the certificate and key of every TLS listener (SIGHUP); live connections
    /// are not touched. Returns how many listeners were reloaded; on an error that
    /// listener keeps its old certificate.
    pub fn reload_tls(&self) -> Result<usize, crate::BrokerError> {
        let n = self.state.reload_tls()?;
        self.state.audit(
            "tls.reload",
            format!("{n} TLS listener certificates reloaded"),
        );
        Ok(n)
    }

    /// Applies the reloadable parts of a configuration (SIGHUP): `[rate_limits]`,
    /// `[tenant_limits]`, `[bans]` and `[flapping]` thresholds, to new and live connections alike. Audited. Other
    /// sections take a restart.
    pub fn reload_limits(&self, config: &crate::Config) -> Result<(), crate::BrokerError> {
        config.validate()?;
        let gate = &self.state.gate;
        gate.bans.set(config.bans.compile()?, config.flapping);
        gate.list_bans(&config.bans);
        self.state.set_rate_limits(&config.rate_limits);
        self.state.auth.tenants.set_defaults(config.tenant_limits);
        self.state.audit(
            "config.reload",
            format!(
                "rate limits now {:?}; tenant limits {:?}; {} banned addresses, {} client ids, {} usernames; flapping {:?}",
                config.rate_limits,
                config.tenant_limits,
                config.bans.addresses.len(),
                config.bans.client_ids.len(),
                config.bans.usernames.len(),
                config.flapping
            ),
        );
        Ok(())
    }

    /// Every metric sample now (see [`crate::metrics`]).
    pub fn metrics(&self) -> Vec<crate::metrics::Sample> {
        crate::metrics::collect(&self.state)
    }

    /// The configuration the broker started with (the reloadable sections as they were
    /// at start).
    pub fn config(&self) -> &crate::Config {
        &self.state.config
    }

    /// The argon2id parameters passwords are hashed with.
    pub fn hash_params(&self) -> crate::HashParams {
        self.state.auth.hash_params
    }

    /// Whether the broker can serve: its listeners accepting, its store writing.
    pub fn readiness(&self) -> Readiness {
        Readiness {
            listeners_up: self.state.listeners_up.load(Ordering::Relaxed),
            listeners_configured: self.state.config.listeners.len(),
            storage_failing: self.state.persist.as_ref().map(|p| p.store.is_failing()),
        }
    }

    /// Client addresses the per-address admission tracks now.
    pub fn tracked_addresses(&self) -> usize {
        self.state.gate.addresses.tracked()
    }

    /// Password verifications (argon2 runs) since start: a refused login that never got
    /// that far (locked out, queue full) does not count.
    pub fn password_verifications(&self) -> u64 {
        self.state.auth.verifications()
    }

    /// The store, for the admin plane (telemetry queries, audit log); `None` without one.
    pub fn store(&self) -> Option<messs_storage::Store> {
        self.state.persist.as_ref().map(|p| p.store.clone())
    }

    /// Runs registry operations (see [`crate::registry::Registry`]) on the running
    /// broker's store as `actor`, then brings live state in line: connections of a changed
    /// tenant recompile its ACL rules at their next packet or delivery, remembered logins
    /// of a changed device or tenant are forgotten, and clients of a disabled tenant or
    /// device are disconnected (v5: 0x98).
    pub async fn registry<R, F>(&self, actor: &str, ops: F) -> Result<R, crate::BrokerError>
    where
        R: Send + 'static,
        F: FnOnce(&mut crate::registry::Registry<'_>) -> Result<R, crate::BrokerError>
            + Send
            + 'static,
    {
        let Some(persist) = &self.state.persist else {
            return Err(crate::BrokerError::Config(
                "this broker has no store".into(),
            ));
        };
        let store = persist.store.clone();
        let state = self.state.clone();
        let actor = actor.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut registry =
                crate::registry::Registry::new(&store, &actor, state.auth.hash_params);
            let result = ops(&mut registry);
            state.apply_registry(&store, registry.take_touched());
            result
        })
        .await
        .map_err(|e| crate::BrokerError::Config(format!("registry task: {e}")))?
    }

    /// Disconnects a client (v5: DISCONNECT 0x98 Administrative action); its will is
    /// published as for any abnormal end. False if it is not connected.
    pub fn kick(&self, tenant: &str, client_id: &str) -> bool {
        let key = SessionKey {
            tenant: Arc::from(tenant),
            client_id: Arc::from(client_id),
        };
        match self.state.sessions.get(&key) {
            Some(session) if session.is_connected() => {
                session.kick(ReasonCode::AdministrativeAction);
                self.state.audit(
                    "client.kick",
                    format!("client {client_id:?} of tenant {tenant:?}"),
                );
                true
            }
            _ => false,
        }
    }
}
