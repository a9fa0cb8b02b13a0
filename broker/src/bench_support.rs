//! Entry points for the criterion benches in `benches/` (hidden from the docs; not an API).
//! They drive the real trie and router, not copies of them.

use std::sync::Arc;

use bytes::Bytes;
use messs_codec::{QoS, SubscriptionOptions, TopicFilter, TopicName};

use crate::message::{Message, MessageProperties};
use crate::router::trie::{Subscriber, SubscriptionTrie};
use crate::router::Router;
use crate::session::{Session, StoredSubscription, TenantId};
use crate::stats::Stats;

fn session(id: u64, max_queued: usize) -> Arc<Session> {
    let s = Arc::new(crate::session::unbounded_session(id, max_queued));
    s.attach(0);
    s
}

/// A subscription trie filled by the bench.
pub struct BenchTrie {
    trie: SubscriptionTrie,
    sessions: Vec<Arc<Session>>,
}

impl BenchTrie {
    /// An empty trie with `sessions` subscriber sessions to spread subscriptions over.
    pub fn new(sessions: usize) -> Self {
        BenchTrie {
            trie: SubscriptionTrie::default(),
            sessions: (0..sessions.max(1) as u64).map(|i| session(i, 1)).collect(),
        }
    }

    /// Adds a subscription for session `n % sessions`. Panics on an invalid filter (bench
    /// input is fixed).
    pub fn subscribe(&mut self, filter: &str, n: usize) {
        let Ok(filter) = TopicFilter::new(filter) else {
            return;
        };
        let session = self.sessions[n % self.sessions.len()].clone();
        self.trie.insert(
            &filter,
            Subscriber {
                session,
                options: SubscriptionOptions::new(QoS::AtMostOnce),
                id: None,
            },
        );
    }

    /// How many subscriptions match `topic`.
    pub fn count_matches(&self, topic: &str) -> usize {
        let mut n = 0;
        self.trie.for_each_match(topic, &mut |_| n += 1);
        n
    }
}

/// A router with `n` connected sessions subscribed to one filter.
pub struct BenchRouter {
    router: Router,
    tenant: TenantId,
    sessions: Vec<Arc<Session>>,
    origin: u64,
}

impl BenchRouter {
    /// `subscribers` sessions, each subscribed to `filter` at QoS 0.
    pub fn new(subscribers: usize, filter: &str) -> Self {
        let router = Router::new(
            1000,
            usize::MAX,
            false,
            Arc::new(Stats::default()),
            None,
            Box::new(|_| Arc::default()),
        );
        let tenant: TenantId = Arc::from("bench");
        let mut sessions = Vec::with_capacity(subscribers);
        if let Ok(filter) = TopicFilter::new(filter) {
            for i in 0..subscribers as u64 {
                let s = session(i + 1, 1 << 20);
                router.subscribe(
                    &router.tenant(&tenant),
                    &s,
                    &StoredSubscription {
                        filter: filter.clone(),
                        options: SubscriptionOptions::new(QoS::AtMostOnce),
                        id: None,
                    },
                );
                sessions.push(s);
            }
        }
        BenchRouter {
            router,
            tenant,
            sessions,
            origin: u64::MAX,
        }
    }

    /// Publishes one message through the router; returns how many sessions it was queued for.
    pub fn publish(&self, topic: &TopicName, payload: &Bytes) -> usize {
        let message = Message {
            topic: topic.clone(),
            payload: payload.clone(),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: MessageProperties::default(),
            expires_at: None,
            origin: self.origin,
        };
        let routes = self.router.tenant(&self.tenant);
        let mut no_store = crate::persist::AckTicket::new(false);
        self.router
            .publish_to(&self.tenant, &routes, Arc::new(message), &mut no_store)
            .matched
    }

    /// Empties every session queue as their connections would (outside the timed part).
    pub fn drain(&self) {
        let now = 0;
        let mut out = Vec::new();
        for s in &self.sessions {
            let mut st = s.lock();
            st.take_batch(now, 0, usize::MAX, usize::MAX, &mut out);
            out.clear();
        }
    }
}

/// One connection's limiter and its tenant's shared rates, as a client loop uses them,
/// with rates far above what a bench reaches: every packet is charged, none held back
/// (the cost the limits add to a fast path they never slow down).
pub struct BenchLimiter {
    limiter: crate::security::limits::throttle::Limiter,
    tenant: crate::security::limits::tenant::TenantRates,
}

impl Default for BenchLimiter {
    fn default() -> Self {
        use crate::security::limits::tenant::{TenantLimits, TenantRates};
        use crate::security::limits::throttle::{Limiter, Throttle, ThrottlePolicy};
        let now_us = crate::clock::mono_us();
        let policy = ThrottlePolicy {
            messages_per_sec: 100_000_000,
            bytes_per_sec: 100_000_000_000,
            ..Default::default()
        };
        let tenant = TenantRates::default();
        tenant.set(
            TenantLimits {
                messages_per_sec: 100_000_000,
                bytes_per_sec: 100_000_000_000,
                ..Default::default()
            },
            now_us,
        );
        BenchLimiter {
            limiter: Throttle::new(policy, now_us).map_or_else(Limiter::default, Limiter::with_own),
            tenant,
        }
    }
}

impl BenchLimiter {
    /// One read pass of `packets` packets of `size` bytes (the clock read once, as the
    /// client loop does); how many went through without a wait.
    pub fn pass(&mut self, packets: u32, size: usize) -> u32 {
        use crate::security::limits::throttle::Verdict;
        self.limiter.set_now(crate::clock::mono_ns());
        let mut go = 0;
        for left in (0..packets).rev() {
            let (own, shared) = self.limiter.charge(true, size, left > 0, &self.tenant);
            if own == Verdict::Go && shared.is_zero() {
                go += 1;
            }
        }
        go
    }
}
