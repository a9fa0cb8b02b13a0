//! The choke point: every message that enters the router — a client PUBLISH, a will (at
//! once, after its delay, or when its session ends), an operator's publish — passes
//! [`Admission::publish`], where the broker's rules for messages are applied: the
//! reserved `$SYS/` namespace, the topic depth limit, the publisher's ACL, and what must be
//! stored (telemetry here; retained topics and persistent subscribers in the router, with
//! the same ticket). Every packet a client sends that costs the broker work (PUBLISH,
//! SUBSCRIBE, UNSUBSCRIBE, PINGREQ) is charged to its rate limits here first
//! ([`Admission::charge`], before it is handled: a packet that breaks the limit for good
//! is never routed); admin publishes and wills have none.
//!
//! A will is checked against its client's ACL when the connection ends
//! ([`Admission::will_allowed`]): that is when the client's rights are last known.
//!
//! `Admission` is a component of its own: it holds the services it decides with (the
//! router, authentication for ACL refreshes, the store) and nothing else of the broker's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use messs_codec::ReasonCode;

use crate::clock::Now;
use crate::error::BrokerError;
use crate::message::Message;
use crate::persist::{codec, AckTicket, Persistence};
use crate::router::{PublishOutcome, Router, TenantRoutes};
use crate::security::auth::{Access, Auth};
use crate::security::limits::throttle::{Limiter, Throttle, ThrottlePolicy, Verdict};
use crate::session::{Session, TenantId};
use crate::stats::Stats;

/// Topics whose first level is this belong to the broker; clients may not publish to them,
/// directly or through a will.
const SYS_LEVEL: &str = "$SYS";

/// Where a message entering the router comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// A client's PUBLISH.
    Client,
    /// A client's will message.
    Will,
    /// An operator's publish through the admin plane.
    Admin,
}

pub use crate::error::Refused;

/// Levels in a topic name or filter ("a/b" has two, "/" has two, "a" one).
pub(crate) fn topic_levels(topic: &str) -> usize {
    topic.bytes().filter(|&b| b == b'/').count() + 1
}

/// The choke point (see the module header).
pub(crate) struct Admission {
    auth: Arc<Auth>,
    router: Arc<Router>,
    persist: Option<Arc<Persistence>>,
    stats: Arc<Stats>,
    /// `limits.max_topic_levels`.
    max_topic_levels: usize,
    /// The per-connection packet limits in force (`[rate_limits]`).
    throttle: RwLock<ThrottlePolicy>,
    /// Their version: a connection compares it (one relaxed load) at each charged packet
    /// and reads the policy only when it moved (new limits, or a device's own changed).
    throttle_epoch: AtomicU64,
}

/// A connection's rate-limit state, kept by its core and charged by
/// [`Admission::charge`].
pub(crate) struct ConnectionRates {
    /// The packet rate limiter, if the limits have one (boxed: most brokers have none).
    limiter: Option<Box<Limiter>>,
    /// The version of the limits `limiter` follows.
    epoch: u64,
}

impl ConnectionRates {
    /// The clock reading the next charges are made at (one per batch of packets).
    pub(crate) fn set_now(&mut self, now: Now) {
        if let Some(limiter) = self.limiter.as_mut() {
            limiter.set_now(now.mono_ns());
        }
    }
}

/// One packet as the rate limits see it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PacketCost {
    /// A PUBLISH, SUBSCRIBE, UNSUBSCRIBE or PINGREQ: it counts against the message rate
    /// too (every packet pays its bytes; see `Throttle::charge`).
    pub message: bool,
    /// Its size on the wire.
    pub size: usize,
    /// More of the client's packets are already read behind it.
    pub more_buffered: bool,
}

/// What the rate limits say about one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Charge {
    /// Within the limits.
    Go,
    /// Over a rate: stop reading the connection for this long.
    Pause(Duration),
}

impl Admission {
    /// The choke point over these services.
    pub(crate) fn new(
        auth: Arc<Auth>,
        router: Arc<Router>,
        persist: Option<Arc<Persistence>>,
        stats: Arc<Stats>,
        max_topic_levels: usize,
        throttle: ThrottlePolicy,
    ) -> Self {
        Admission {
            auth,
            router,
            persist,
            stats,
            max_topic_levels,
            throttle: RwLock::new(throttle),
            throttle_epoch: AtomicU64::new(0),
        }
    }

    /// The packet limits now.
    pub(crate) fn throttle_policy(&self) -> ThrottlePolicy {
        *self.throttle.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Puts new packet limits in force for new and live connections alike.
    pub(crate) fn set_throttle_policy(&self, policy: ThrottlePolicy) {
        let mut t = self
            .throttle
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if *t != policy {
            *t = policy;
            self.throttle_epoch.fetch_add(1, Ordering::Release);
        }
    }

    /// Makes every connection look at its limits again at its next packet (a device's
    /// own limits changed).
    pub(crate) fn recheck_rates(&self) {
        self.throttle_epoch.fetch_add(1, Ordering::Release);
    }

    /// The rate-limit state of a connection by `access`, starting at `now`.
    pub(crate) fn rates_for(&self, access: &Access, now: Now) -> ConnectionRates {
        let epoch = self.throttle_epoch.load(Ordering::Acquire);
        let policy = self.throttle_policy().with(&access.identity.device_limits);
        ConnectionRates {
            limiter: Throttle::new(policy, now.mono_us())
                .map(|own| Box::new(Limiter::with_own(own))),
            epoch,
        }
    }

    /// Charges a packet to the connection's rate limits and its tenant's shared rate (see
    /// [`PacketCost`]). Over either
    /// rate: a pause until it is back within both. Kept over its own for too long: refused
    /// with 0x96, and the connection closes. Picks up changed limits first (the session
    /// carries a device's new limits to its connection).
    pub(crate) fn charge(
        &self,
        rates: &mut ConnectionRates,
        access: &mut Access,
        session: &Session,
        packet: PacketCost,
        now: Now,
    ) -> Result<Charge, BrokerError> {
        let PacketCost {
            message,
            size,
            more_buffered,
        } = packet;
        let epoch = self.throttle_epoch.load(Ordering::Acquire);
        if epoch != rates.epoch {
            rates.epoch = epoch;
            if let Some(limits) = session.lock().take_device_limits() {
                access.identity.device_limits = limits;
            }
            let policy = self.throttle_policy().with(&access.identity.device_limits);
            let limiter = rates.limiter.get_or_insert_with(Box::default);
            match limiter.own.as_mut() {
                Some(_) if policy.is_off() => limiter.own = None,
                Some(t) => t.set_policy(policy, now.mono_us()),
                None => limiter.own = Throttle::new(policy, now.mono_us()),
            }
        }
        // The tenant's shared rate counts too: a connection of a tenant that limits
        // packets gets a limiter even without limits of its own.
        let tenant = &access.identity.tenant.rates;
        if rates.limiter.is_none() && !tenant.limits_packets() {
            return Ok(Charge::Go);
        }
        let limiter = rates.limiter.get_or_insert_with(Box::default);
        let (own, shared) = limiter.charge(message, size, more_buffered, tenant);
        let own_wait = match own {
            Verdict::Go => Duration::ZERO,
            Verdict::Pause(wait) => {
                self.stats.throttled.fetch_add(1, Ordering::Relaxed);
                wait
            }
            Verdict::Disconnect => {
                self.stats
                    .rate_limit_disconnects
                    .fetch_add(1, Ordering::Relaxed);
                return Err(BrokerError::protocol(
                    ReasonCode::MessageRateTooHigh,
                    "kept over the connection's rate limit",
                ));
            }
        };
        if !shared.is_zero() {
            self.stats.tenant_throttled.fetch_add(1, Ordering::Relaxed);
        }
        let wait = own_wait.max(shared);
        Ok(if wait.is_zero() {
            Charge::Go
        } else {
            Charge::Pause(wait)
        })
    }

    /// Appends a security event of `tenant`'s to the audit log (when there is a store).
    fn audit(&self, tenant: &str, action: &str, detail: String) {
        if let Some(p) = &self.persist {
            if p.audit_for(Some(tenant), action, detail) {
                self.stats.audit_withheld.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Admits a message and routes it, or refuses it (counted; the caller tells the client
    /// where it can). The single entry into the router. Writes the message needs are
    /// submitted with `ack`'s ticket, which the publisher's acknowledgement waits on.
    /// `access` is the publishing client's (`None` for a will, checked when its connection
    /// ended, and for the broker's own messages).
    pub fn publish(
        &self,
        tenant: &TenantId,
        routes: &TenantRoutes,
        source: Source,
        message: Arc<Message>,
        ack: &mut AckTicket,
        access: Option<&mut Access>,
    ) -> Result<PublishOutcome, Refused> {
        if let Err(refused) = self.admit(&message) {
            self.stats.messages_refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(?source, %refused, "message refused");
            return Err(refused);
        }
        if let Some(access) = access {
            access
                .identity
                .tenant
                .counters
                .received
                .fetch_add(1, Ordering::Relaxed);
            access.refresh(&self.auth);
            let m = &message;
            if !access.may_publish(&m.topic, m.qos, m.retain) {
                self.acl_denied(access, "publish", m.topic.as_str());
                return Err(Refused::NotAuthorized);
            }
        }
        self.store_telemetry(tenant, &message, ack);
        Ok(self.router.publish_to(tenant, routes, message, ack))
    }

    /// Stores the message as telemetry if its topic matches a telemetry filter.
    fn store_telemetry(&self, tenant: &TenantId, message: &Message, ack: &mut AckTicket) {
        let Some(persist) = &self.persist else {
            return;
        };
        if !persist.is_telemetry(message.topic.as_str()) {
            return;
        }
        let mut batch = messs_storage::Batch::new();
        let written = codec::message_record(message)
            .and_then(|r| {
                persist
                    .store
                    .put_telemetry(&mut batch, tenant, crate::clock::unix_ms(), &r)
            })
            .and_then(|()| persist.store.submit(batch, ack.get()));
        match written {
            Ok(()) => {
                self.stats.telemetry_stored.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                if let Some(t) = ack.get() {
                    t.fail();
                }
                // Counted by the writer (refusals) and the ack; one log line per state change.
                tracing::debug!(error = %e, "telemetry not stored");
            }
        }
    }

    /// Whether a client's will may be published, under its ACL as it is now (refused wills
    /// are counted and audited).
    pub fn will_allowed(&self, access: &mut Access, will: &Message) -> bool {
        access.refresh(&self.auth);
        if access
            .acl()
            .may_publish(will.topic.as_str(), will.qos, will.retain)
        {
            return true;
        }
        self.acl_denied(access, "will", will.topic.as_str());
        false
    }

    /// Counts an ACL refusal; the first of a connection is audited (the rest are counted
    /// in the disconnect record), so a client cannot flood the audit log.
    pub fn acl_denied(&self, access: &mut Access, what: &str, topic: &str) {
        let counter = match what {
            "subscribe" => &self.stats.acl_subscribe_denied,
            _ => &self.stats.acl_publish_denied,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        access.denied += 1;
        if access.denied == 1 {
            self.audit(
                &access.identity.tenant.id,
                "acl.deny",
                format!(
                    "{} client {:?}: {what} {:?}",
                    access.identity.describe(),
                    crate::security::auth::clip(&access.client_id),
                    crate::security::auth::clip(topic)
                ),
            );
        }
    }

    fn admit(&self, message: &Message) -> Result<(), Refused> {
        let topic = message.topic.as_str();
        if topic.split('/').next() == Some(SYS_LEVEL) {
            return Err(Refused::ReservedTopic);
        }
        if topic_levels(topic) > self.max_topic_levels {
            return Err(Refused::TooDeep);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_count_empty_ones_too() {
        assert_eq!(topic_levels("a"), 1);
        assert_eq!(topic_levels("a/b"), 2);
        assert_eq!(topic_levels("/"), 2);
        assert_eq!(topic_levels(&"/".repeat(127)), 128);
    }
}
