//! `$SYS/` statistics, per tenant: every `sys.interval_secs`, each tenant with a client
//! connected gets its own figures as retained messages in its own namespace, so a tenant
//! sees only itself (the router keeps tenants apart; a client's `#` never matches `$SYS`,
//! it has to subscribe to `$SYS/#`, which its ACL must allow). A value is republished only
//! when it changed, so an idle tenant costs no writes.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use messs_codec::{QoS, TopicName};

use crate::message::{Message, MessageProperties};
use crate::persist::AckTicket;
use crate::session::TenantId;
use crate::state::BrokerState;

/// What one tenant's `$SYS` topics say.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Figures {
    connected: u64,
    sessions: u64,
    subscriptions: u64,
    retained: u64,
    received: u64,
    sent: u64,
}

impl Figures {
    fn topics(&self) -> [(&'static str, u64); 6] {
        [
            ("$SYS/broker/clients/connected", self.connected),
            ("$SYS/broker/sessions/count", self.sessions),
            ("$SYS/broker/subscriptions/count", self.subscriptions),
            ("$SYS/broker/retained messages/count", self.retained),
            ("$SYS/broker/messages/received", self.received),
            ("$SYS/broker/messages/sent", self.sent),
        ]
    }
}

/// Publishes every tenant's figures every `every`, until shutdown.
pub(crate) async fn run(state: Arc<BrokerState>, every: Duration) {
    let started = tokio::time::Instant::now();
    let mut last: HashMap<TenantId, Figures> = HashMap::new();
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        publish_once(&state, &mut last, started.elapsed().as_secs());
    }
}

fn publish_once(state: &BrokerState, last: &mut HashMap<TenantId, Figures>, uptime: u64) {
    let mut now: HashMap<TenantId, Figures> = HashMap::new();
    for s in state.sessions.all() {
        let f = now.entry(s.key.tenant.clone()).or_default();
        f.sessions += 1;
        f.subscriptions += s.lock().subscription_count() as u64;
    }
    now.retain(|tenant, f| {
        let Some(t) = state.auth.tenants.get(tenant) else {
            return false;
        };
        let c = &t.counters;
        f.connected = c.connected.load(Ordering::Relaxed) as u64;
        f.received = c.received.load(Ordering::Relaxed);
        f.sent = c.sent.load(Ordering::Relaxed);
        f.retained = state.router.tenant(tenant).retained_count() as u64;
        f.connected > 0
    });
    let version = env!("CARGO_PKG_VERSION");
    for (tenant, figures) in &now {
        let before = last.get(tenant).map(Figures::topics);
        let mut changed: Vec<(&str, String)> = Vec::new();
        for (i, (topic, value)) in figures.topics().into_iter().enumerate() {
            if before.is_none_or(|old| old[i].1 != value) {
                changed.push((topic, value.to_string()));
            }
        }
        if before.is_none() {
            changed.push(("$SYS/broker/version", format!("messs {version}")));
        }
        changed.push(("$SYS/broker/uptime", format!("{uptime} seconds")));
        let routes = state.router.tenant(tenant);
        for (topic, value) in changed {
            let Ok(topic) = TopicName::new(topic) else {
                continue;
            };
            let message = Message {
                topic,
                payload: Bytes::from(value),
                qos: QoS::AtMostOnce,
                retain: true,
                properties: MessageProperties::default(),
                expires_at: None,
                origin: 0,
            };
            // The broker's own messages: past the client rules of the choke point (which
            // refuse `$SYS` to clients), straight to the tenant's router.
            let mut no_ack = AckTicket::new(false);
            state
                .router
                .publish_to(tenant, &routes, Arc::new(message), &mut no_ack);
        }
    }
    *last = now;
}
