//! What the admin plane does to live broker state beyond the registry: publish a message
//! through the choke point, list and delete retained messages, list a session's
//! subscriptions. Kept apart from `handle.rs`, which holds the read-only views.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use messs_codec::{QoS, TopicName};

use crate::admission::Source;
use crate::error::BrokerError;
use crate::message::Message;
use crate::persist::AckTicket;
use crate::router::ScanEnd;
use crate::security::auth::{Access, Identity};
use crate::session::SessionKey;
use crate::BrokerHandle;

/// An operator's message.
#[derive(Debug, Clone)]
pub struct AdminPublish {
    /// Tenant.
    pub tenant: String,
    /// Topic name (no wildcards).
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// 0, 1 or 2.
    pub qos: u8,
    /// Retain it.
    pub retain: bool,
    /// Publish under this device's ACL (its username and groups); `None`: under the rules
    /// of an anonymous client of the tenant.
    pub as_device: Option<String>,
}

/// One retained message, as the admin plane lists it.
#[derive(Debug, Clone)]
pub struct RetainedInfo {
    /// Topic.
    pub topic: String,
    /// QoS it was published with.
    pub qos: u8,
    /// Payload length in bytes.
    pub payload_len: usize,
    /// The payload, when it is held in memory (large ones stay on disk).
    pub payload: Option<Bytes>,
    /// Expires then (Unix ms).
    pub expires_ms: Option<u64>,
}

/// One subscription of a session.
#[derive(Debug, Clone)]
pub struct SubscriptionInfo {
    /// Filter as subscribed (with any `$share/GROUP/` prefix).
    pub filter: String,
    /// Maximum QoS.
    pub qos: u8,
    /// No Local.
    pub no_local: bool,
    /// Retain As Published.
    pub retain_as_published: bool,
    /// Subscription identifier.
    pub id: Option<u32>,
}

fn qos(n: u8) -> Result<QoS, BrokerError> {
    match n {
        0 => Ok(QoS::AtMostOnce),
        1 => Ok(QoS::AtLeastOnce),
        2 => Ok(QoS::ExactlyOnce),
        _ => Err(BrokerError::Registry("qos is 0, 1 or 2".into())),
    }
}

impl BrokerHandle {
    /// Publishes as an operator: through the choke point (the `$SYS` rule, topic depth,
    /// the tenant's ACL for `as_device`, telemetry, retained, persistence), so no admin
    /// message skips a rule a client meets. Returns how many sessions it was queued for;
    /// a QoS 1 or 2 message returns once it is durable where the durability level asks.
    pub async fn publish_as_admin(&self, p: AdminPublish) -> Result<usize, BrokerError> {
        let state = self.state();
        let tenant = state
            .auth
            .tenants
            .get(&p.tenant)
            .filter(|t| t.is_enabled())
            .ok_or_else(|| BrokerError::Registry(format!("no enabled tenant {:?}", p.tenant)))?;
        let topic = TopicName::new(&p.topic)
            .map_err(|e| BrokerError::Registry(format!("topic {:?}: {e}", p.topic)))?;
        let qos = qos(p.qos)?;
        let device = match (&p.as_device, &state.persist) {
            (None, _) => None,
            (Some(name), Some(persist)) => {
                let (store, t, n) = (persist.store.clone(), p.tenant.clone(), name.clone());
                let d = tokio::task::spawn_blocking(move || store.device(&t, &n))
                    .await
                    .map_err(|e| BrokerError::Config(format!("registry read: {e}")))??;
                Some(d.filter(|d| d.enabled).ok_or_else(|| {
                    BrokerError::Registry(format!("no enabled device {name:?} in {:?}", p.tenant))
                })?)
            }
            (Some(_), None) => return Err(BrokerError::Config("this broker has no store".into())),
        };
        let identity = Identity::for_admin(tenant.clone(), device);
        let mut access = Access::new(&state.auth, identity, Arc::from("admin"));
        let message = Arc::new(Message {
            topic,
            payload: p.payload,
            qos,
            retain: p.retain,
            properties: Default::default(),
            expires_at: None,
            origin: 0,
        });
        let routes = state.router.tenant(&tenant.id);
        let mut ack = AckTicket::new(qos != QoS::AtMostOnce && state.persist.is_some());
        let outcome = state
            .admission
            .publish(
                &tenant.id,
                &routes,
                Source::Admin,
                message,
                &mut ack,
                Some(&mut access),
            )
            .map_err(BrokerError::Refused)?;
        if let Some(durable) = ack.finish() {
            // A store that cannot write is the store's error (the admin plane: 503).
            durable.await?;
        }
        state.stats.admin_publishes.fetch_add(1, Ordering::Relaxed);
        Ok(outcome.matched)
    }

    /// Up to `limit` retained messages of `tenant` matching `filter`, in topic order after
    /// the topic `after`; and the topic to continue after, if there may be more.
    pub fn retained(
        &self,
        tenant: &str,
        filter: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<RetainedInfo>, Option<String>), BrokerError> {
        messs_codec::TopicFilter::new(filter)
            .map_err(|e| BrokerError::Registry(format!("filter {filter:?}: {e}")))?;
        let resume: Option<Vec<Box<str>>> = after.map(|a| a.split('/').map(Box::from).collect());
        let tenant: crate::session::TenantId = Arc::from(tenant);
        // Visit at most 100 nodes per message asked for: a sparse match ends the page early
        // (with a cursor) instead of walking a huge tree in one request.
        let (found, end) = self.state().router.retained_page(
            &tenant,
            filter,
            resume.as_deref(),
            limit,
            limit.saturating_mul(100).max(1000),
        );
        let next = match end {
            ScanEnd::Done => None,
            ScanEnd::Paused(path) => Some(path.join("/")),
        };
        let items = found
            .into_iter()
            .map(|(m, disk_len)| RetainedInfo {
                topic: m.topic.as_str().to_owned(),
                qos: m.qos as u8,
                payload_len: if disk_len > 0 {
                    disk_len
                } else {
                    m.payload.len()
                },
                payload: (disk_len == 0).then(|| m.payload.clone()),
                expires_ms: m.expires_at,
            })
            .collect();
        Ok((items, next))
    }

    /// Deletes a retained message (nothing is delivered); false if there was none.
    pub fn delete_retained(&self, tenant: &str, topic: &str) -> Result<bool, BrokerError> {
        let topic = TopicName::new(topic)
            .map_err(|e| BrokerError::Registry(format!("topic {topic:?}: {e}")))?;
        let tenant: crate::session::TenantId = Arc::from(tenant);
        let removed = self.state().router.clear_retained(&tenant, &topic);
        if removed {
            self.state().audit(
                "retained.delete",
                format!("topic {:?} of tenant {tenant:?}", topic.as_str()),
            );
        }
        Ok(removed)
    }

    /// The limits in force: `[rate_limits]`, `[tenant_limits]`, `[flapping]`.
    pub fn limits(
        &self,
    ) -> (
        crate::RateLimitsConfig,
        crate::TenantLimits,
        crate::FlappingPolicy,
    ) {
        let state = self.state();
        (
            state.gate.rate_limits_now(),
            state.auth.tenants.defaults(),
            state.gate.bans.policy(),
        )
    }

    /// The operator's ban list now.
    pub fn bans(&self) -> crate::BansConfig {
        self.state().gate.bans_listed()
    }

    /// Replaces the operator's ban list at runtime (until the next reload or restart,
    /// which take the configuration file's). Audited as `actor`.
    pub fn set_bans(&self, actor: &str, bans: crate::BansConfig) -> Result<(), BrokerError> {
        let state = self.state();
        let compiled = bans.compile()?;
        state.gate.bans.set(compiled, state.gate.bans.policy());
        let detail = format!(
            "{} addresses, {} client ids, {} usernames banned (by {actor})",
            bans.addresses.len(),
            bans.client_ids.len(),
            bans.usernames.len()
        );
        state.gate.list_bans(&bans);
        state.audit("bans.set", detail);
        Ok(())
    }

    /// The subscriptions of a session; `None` if the broker holds no such session.
    pub fn subscriptions(&self, tenant: &str, client_id: &str) -> Option<Vec<SubscriptionInfo>> {
        let key = SessionKey {
            tenant: Arc::from(tenant),
            client_id: Arc::from(client_id),
        };
        let session = self.state().sessions.get(&key)?;
        let mut out = Vec::new();
        session.lock().each_subscription(|s| {
            out.push(SubscriptionInfo {
                filter: s.filter.as_str().to_owned(),
                qos: s.options.qos as u8,
                no_local: s.options.no_local,
                retain_as_published: s.options.retain_as_published,
                id: s.id.map(|i| i.get()),
            })
        });
        Some(out)
    }
}
