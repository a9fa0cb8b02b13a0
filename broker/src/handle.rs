//! A cloneable handle on a running broker for the admin plane (and tests): its counters,
//! a snapshot of its sessions, and the power to disconnect a client. It holds the shared
//! state, not the listeners, so it stays valid while `Broker::run` owns the broker.

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
}

impl BrokerHandle {
    pub(crate) fn new(state: Arc<BrokerState>) -> Self {
        BrokerHandle { state }
    }

    /// The broker's counters and gauges.
    pub fn stats(&self) -> Arc<Stats> {
        self.state.stats.clone()
    }

    /// A snapshot of every session, online or offline, ordered by tenant and client id.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        let mut infos: Vec<SessionInfo> = self
            .state
            .all_sessions()
            .into_iter()
            .map(|s| {
                let st = s.lock();
                SessionInfo {
                    tenant: s.key.tenant.to_string(),
                    client_id: s.key.client_id.to_string(),
                    connected: s.is_connected(),
                    subscriptions: st.subscription_count(),
                    queued_messages: st.queued_len(),
                    queued_bytes: st.held_bytes(),
                    expiry_interval: st.expiry_interval(),
                }
            })
            .collect();
        infos.sort_by(|a, b| (&a.tenant, &a.client_id).cmp(&(&b.tenant, &b.client_id)));
        infos
    }

    /// Disconnects a client (v5: DISCONNECT 0x98 Administrative action); its will is
    /// published as for any abnormal end. False if it is not connected.
    pub fn kick(&self, tenant: &str, client_id: &str) -> bool {
        let key = SessionKey {
            tenant: Arc::from(tenant),
            client_id: Arc::from(client_id),
        };
        match self.state.session(&key) {
            Some(session) if session.is_connected() => {
                session.kick(ReasonCode::AdministrativeAction);
                true
            }
            _ => false,
        }
    }
}
