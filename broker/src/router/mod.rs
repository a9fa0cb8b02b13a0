//! The router: per-tenant subscription tries and retained stores, and the fan-out of a
//! published message into the queues of the sessions it matches.
//!
//! Fan-out runs on the publisher's own task: it takes a read lock on the tenant's trie,
//! collects the matching sessions, releases the lock, then pushes one `Arc`-shared delivery
//! into each session's bounded queue. There is no central router task to become a
//! bottleneck, and tenants never share a trie, so `#` cannot reach across tenants.

mod retained;
mod tree;
pub(crate) mod trie;

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use messs_codec::TopicFilter;

use crate::message::{Delivery, Message};
use crate::persist::shared::{SharedHold, SharedMessages};
use crate::persist::AckTicket;
use crate::security::limits::tenant::TenantHoldings;
use crate::session::{EnqueueError, Session, StoredSubscription, TenantId, DRAINING_MS};
use crate::stats::Stats;
use retained::RetainedStore;
pub(crate) use retained::ScanEnd;
pub(crate) use tree::{levels, LEVEL_COST};
use trie::{Subscriber, SubscriptionTrie};

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

/// One tenant's subscription trie and retained store. A client holds its tenant's routes so
/// a publish skips the tenant lookup.
pub(crate) struct TenantRoutes {
    trie: RwLock<SubscriptionTrie>,
    retained: RwLock<RetainedStore>,
}

impl TenantRoutes {
    /// Retained messages held.
    pub fn retained_count(&self) -> usize {
        read(&self.retained).len()
    }

    /// Subscriptions held by all of the tenant's sessions.
    pub fn subscription_count(&self) -> usize {
        read(&self.trie).len()
    }
}

/// What happened to a published message.
pub(crate) struct PublishOutcome {
    /// Sessions it was queued for.
    pub matched: usize,
    /// It asked to be retained, but the tenant's retained store is full.
    pub retained_rejected: bool,
    /// A subscriber whose queue is past its soft limit: the publisher should pause.
    pub pressure: Option<Arc<Session>>,
}

/// All tenants' routes.
pub(crate) struct Router {
    tenants: RwLock<HashMap<TenantId, Arc<TenantRoutes>>>,
    max_retained: usize,
    max_retained_bytes: usize,
    queue_qos0_offline: bool,
    stats: Arc<Stats>,
    /// Where retained messages are mirrored, if the broker has a store.
    store: Option<messs_storage::Store>,
    /// Messages stored once for several persistent sessions (with a store).
    shared: Option<Arc<SharedMessages>>,
    /// Retained payloads larger than this stay in the store only (`usize::MAX` without one).
    retained_inline: usize,
    /// Where a tenant's own caps are found when its routes are made.
    holdings_of: HoldingsOf,
}

/// Finds a tenant's caps on what it holds (the tenant registry's, in a broker).
pub(crate) type HoldingsOf = Box<dyn Fn(&TenantId) -> Arc<TenantHoldings> + Send + Sync>;

thread_local! {
    /// Reused per thread so a publish does not allocate its list of matches.
    static MATCHES: RefCell<Vec<Match>> = const { RefCell::new(Vec::new()) };
}

/// One session's share of a message, before overlapping subscriptions are merged.
struct Match {
    session: Arc<Session>,
    delivery_qos: messs_codec::QoS,
    retain: bool,
    id: Option<std::num::NonZeroU32>,
}

impl Router {
    pub fn new(
        max_retained: usize,
        max_retained_bytes: usize,
        queue_qos0_offline: bool,
        stats: Arc<Stats>,
        store: Option<(messs_storage::Store, usize, Arc<SharedMessages>)>,
        holdings_of: HoldingsOf,
    ) -> Self {
        let (store, retained_inline, shared) = match store {
            Some((store, inline, shared)) => (Some(store), inline, Some(shared)),
            None => (None, usize::MAX, None),
        };
        Router {
            tenants: RwLock::new(HashMap::new()),
            max_retained,
            max_retained_bytes,
            queue_qos0_offline,
            stats,
            store,
            shared,
            retained_inline,
            holdings_of,
        }
    }

    /// The routes of a tenant (created on first use).
    pub fn tenant(&self, tenant: &TenantId) -> Arc<TenantRoutes> {
        if let Some(t) = read(&self.tenants).get(tenant) {
            return t.clone();
        }
        // Looked up before the lock: the lookup may take the tenant registry's.
        let holdings = (self.holdings_of)(tenant);
        write(&self.tenants)
            .entry(tenant.clone())
            .or_insert_with(|| {
                Arc::new(TenantRoutes {
                    trie: RwLock::new(SubscriptionTrie::default()),
                    retained: RwLock::new(RetainedStore::new(
                        self.max_retained,
                        self.max_retained_bytes,
                        holdings,
                        self.stats.clone(),
                    )),
                })
            })
            .clone()
    }

    /// Adds or replaces a subscription in a tenant's trie (`routes`); true if the session
    /// already had this filter. Only the session table calls this, under the session's
    /// lock, so the trie follows the session's own list.
    pub fn subscribe(
        &self,
        routes: &TenantRoutes,
        session: &Arc<Session>,
        sub: &StoredSubscription,
    ) -> bool {
        let subscriber = Subscriber {
            session: session.clone(),
            options: sub.options,
            id: sub.id,
        };
        let existed = write(&routes.trie).insert(&sub.filter, subscriber);
        if !existed {
            self.stats.subscriptions.fetch_add(1, Ordering::Relaxed);
        }
        existed
    }

    /// Removes a subscription from a tenant's trie; true if it existed. Only the session
    /// table calls this (see `subscribe`).
    pub fn unsubscribe(
        &self,
        routes: &TenantRoutes,
        session_id: u64,
        filter: &TopicFilter,
    ) -> bool {
        let removed = write(&routes.trie).remove(filter, session_id);
        if removed {
            self.stats.subscriptions.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    /// Publishes: updates the retained store if asked, then queues a delivery for every
    /// matching session (one per session, with the highest QoS and all subscription ids of
    /// its matching subscriptions). Only `BrokerState::publish`, the admission choke point,
    /// calls this.
    pub fn publish_to(
        &self,
        tenant: &TenantId,
        routes: &TenantRoutes,
        message: Arc<Message>,
        ack: &mut AckTicket,
    ) -> PublishOutcome {
        let mut retained_rejected = false;
        if message.retain {
            let mut retained = write(&routes.retained);
            // A large payload is kept in the store only; the tree holds the rest.
            let disk_len = message.payload.len();
            retained_rejected = if disk_len > self.retained_inline {
                let stripped = Message {
                    payload: bytes::Bytes::new(),
                    ..(*message).clone()
                };
                retained.set_entry(Arc::new(stripped), disk_len).is_err()
            } else {
                retained.set(message.clone()).is_err()
            };
            if retained_rejected {
                self.stats.retained_rejected.fetch_add(1, Ordering::Relaxed);
            } else {
                // Under the store's lock, so two publishers of one topic reach the disk in
                // the order they reached memory.
                self.store_retained(tenant, &message, ack);
            }
        }
        let (matched, pressure) = MATCHES.with_borrow_mut(|matches| {
            let result = self.fan_out(tenant, routes, &message, matches, ack);
            matches.clear();
            result
        });
        self.stats
            .messages_routed
            .fetch_add(matched as u64, Ordering::Relaxed);
        PublishOutcome {
            matched,
            retained_rejected,
            pressure,
        }
    }

    /// Queues `message` for every matching session, one delivery per session (highest QoS
    /// and every subscription id of its overlapping subscriptions). Returns how many
    /// sessions matched and one whose queue is past its soft limit, if any.
    fn fan_out(
        &self,
        tenant: &TenantId,
        routes: &TenantRoutes,
        message: &Arc<Message>,
        matches: &mut Vec<Match>,
        ack: &mut AckTicket,
    ) -> (usize, Option<Arc<Session>>) {
        read(&routes.trie).for_each_match(message.topic.as_str(), &mut |s| {
            if s.options.no_local && s.session.id == message.origin {
                return; // [MQTT-3.8.3-3]
            }
            matches.push(Match {
                session: s.session.clone(),
                delivery_qos: message.qos.min(s.options.qos),
                // Live deliveries clear RETAIN unless Retain As Published [MQTT-3.3.1-12].
                retain: s.options.retain_as_published && message.retain,
                id: s.id,
            });
        });
        if matches.len() > 1 {
            matches.sort_by_key(|m| m.session.id);
        }
        // One hold per persistent session counted here: exactly that many are handed out
        // below (a session that became persistent since takes one only if one is left, and
        // any left over are given back), so the count can never reach zero early.
        let (shared, mut holds_left) = match self.store_once(tenant, message, matches, ack) {
            Some((hold, n)) => (Some(hold), n),
            None => (None, 0),
        };
        let mut matched = 0;
        let mut pressure = None;
        let mut i = 0;
        while i < matches.len() {
            let first = &matches[i];
            let mut delivery = Delivery {
                message: message.clone(),
                qos: first.delivery_qos,
                retain: first.retain,
                subscription_ids: first.id.into_iter().collect(),
                stored_seq: 0,
            };
            let mut j = i + 1;
            while j < matches.len() && matches[j].session.id == first.session.id {
                let m = &matches[j];
                delivery.qos = delivery.qos.max(m.delivery_qos);
                delivery.retain |= m.retain;
                delivery.subscription_ids.extend(m.id);
                j += 1;
            }
            if delivery.subscription_ids.len() > 1 {
                // One SUBSCRIBE's id shared by overlapping filters is sent once.
                delivery.subscription_ids.sort_unstable();
                delivery.subscription_ids.dedup();
            }
            let durable = first.session.is_durable();
            let ticket = if durable { ack.get() } else { None };
            let hold = shared.as_ref().filter(|_| durable && holds_left > 0);
            if hold.is_some() {
                holds_left -= 1;
            }
            match first
                .session
                .enqueue(delivery, self.queue_qos0_offline, ticket, hold)
            {
                Ok(queued) => {
                    matched += 1;
                    if queued.dropped_oldest > 0 {
                        self.stats
                            .dropped_queue_full
                            .fetch_add(u64::from(queued.dropped_oldest), Ordering::Relaxed);
                    }
                    let over = queued.pressure;
                    // Report one pressured subscriber, a draining one if there is any: a
                    // publisher may skip a pause for a subscriber that is not reading,
                    // never for one that is (see `Client::pause_for`).
                    // (The clock is read only when two subscribers compete.)
                    let replace = over
                        && pressure.as_ref().is_none_or(|p: &Arc<Session>| {
                            !p.drained_within(DRAINING_MS)
                                && first.session.drained_within(DRAINING_MS)
                        });
                    if replace {
                        pressure = Some(first.session.clone());
                    }
                }
                Err(EnqueueError::Offline) => {
                    self.stats.dropped_offline.fetch_add(1, Ordering::Relaxed);
                }
                Err(dropped) => {
                    matched += 1;
                    self.count_dropped(dropped);
                }
            }
            i = j;
        }
        if let Some(hold) = shared {
            for _ in 0..holds_left {
                hold.give_back(ack.get());
            }
            // The publisher's own hold.
            hold.give_back(ack.get());
        }
        (matched, pressure)
    }

    /// Counts a delivery a matching session's queue refused.
    fn count_dropped(&self, why: EnqueueError) {
        let counter = match why {
            EnqueueError::Offline => &self.stats.dropped_offline,
            EnqueueError::Full => &self.stats.dropped_queue_full,
            EnqueueError::Budget => &self.stats.dropped_budget,
            EnqueueError::TenantQuota => &self.stats.dropped_tenant_quota,
            EnqueueError::Storage => &self.stats.dropped_storage,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Stores `message` once if two or more persistent sessions are among `matches`
    /// (sorted by session): each of them then stores a reference to it instead of a copy
    /// (see `persist::shared`). Returns the hold to hand to each of them, and how many
    /// holds it took for them (besides the publisher's own).
    fn store_once(
        &self,
        tenant: &TenantId,
        message: &Message,
        matches: &[Match],
        ack: &mut AckTicket,
    ) -> Option<(SharedHold, usize)> {
        let (store, shared) = (self.store.as_ref()?, self.shared.as_ref()?);
        let mut durable = 0;
        let mut last = None;
        for m in matches {
            if last != Some(m.session.id) && m.session.is_durable() {
                durable += 1;
            }
            last = Some(m.session.id);
        }
        if durable < 2 {
            return None;
        }
        let record = crate::persist::codec::message_record(message).ok()?;
        let hold = shared.store_once(store, tenant, &record, durable, ack.get())?;
        Some((hold, durable))
    }

    /// Walks the retained messages matching `filter` for a new subscription (see
    /// [`RetainedStore::scan`]); the store's lock is held for this one bounded walk only.
    pub fn scan_retained(
        &self,
        routes: &TenantRoutes,
        filter: &str,
        resume: Option<&[Box<str>]>,
        now_ms: u64,
        budget: usize,
        sink: &mut impl FnMut(&Arc<Message>, usize) -> bool,
    ) -> ScanEnd {
        read(&routes.retained).scan(filter, resume, now_ms, budget, sink)
    }

    /// Removes expired retained messages everywhere (and from the store); returns how
    /// many.
    pub fn purge_expired_retained(&self, now_ms: u64) -> usize {
        let tenants: Vec<_> = read(&self.tenants)
            .iter()
            .map(|(name, routes)| (name.clone(), routes.clone()))
            .collect();
        let mut purged = 0;
        for (tenant, routes) in tenants {
            let mut retained = write(&routes.retained);
            let topics = retained.purge_expired(now_ms);
            purged += topics.len();
            if let (Some(store), false) = (&self.store, topics.is_empty()) {
                let mut batch = messs_storage::Batch::new();
                for topic in &topics {
                    if let Err(e) = store.delete_retained(&mut batch, &tenant, topic.as_str()) {
                        tracing::warn!(error = %e, "expired retained message not deleted from the store");
                    }
                }
                if let Err(e) = store.submit(batch, None) {
                    tracing::warn!(error = %e, "expired retained messages not deleted from the store");
                }
            }
        }
        purged
    }

    /// Mirrors a retained message (or its deletion, for an empty payload) to the store.
    fn store_retained(&self, tenant: &TenantId, message: &Message, ack: &mut AckTicket) {
        let Some(store) = &self.store else {
            return;
        };
        let mut batch = messs_storage::Batch::new();
        let written = if message.payload.is_empty() {
            store.delete_retained(&mut batch, tenant, message.topic.as_str())
        } else {
            crate::persist::codec::message_record(message)
                .and_then(|r| store.put_retained(&mut batch, tenant, &r))
        }
        .and_then(|()| store.submit(batch, ack.get()));
        if let Err(e) = written {
            if let Some(t) = ack.get() {
                t.fail();
            }
            tracing::debug!(error = %e, "retained message not stored");
        }
    }

    /// Deletes a topic's retained message (an operator's delete: nothing is delivered);
    /// false if it had none.
    pub fn clear_retained(&self, tenant: &TenantId, topic: &messs_codec::TopicName) -> bool {
        let routes = self.tenant(tenant);
        let mut retained = write(&routes.retained);
        if !retained.has(topic.as_str()) {
            return false;
        }
        let empty = Message {
            topic: topic.clone(),
            payload: bytes::Bytes::new(),
            qos: messs_codec::QoS::AtMostOnce,
            retain: true,
            properties: Default::default(),
            expires_at: None,
            origin: 0,
        };
        let _ = retained.set(Arc::new(empty.clone()));
        self.store_retained(tenant, &empty, &mut AckTicket::new(false));
        true
    }

    /// Up to `limit` unexpired retained messages of a tenant matching `filter`, in topic
    /// order after `resume`, visiting at most `budget` nodes; and where to resume.
    pub fn retained_page(
        &self,
        tenant: &TenantId,
        filter: &str,
        resume: Option<&[Box<str>]>,
        limit: usize,
        budget: usize,
    ) -> (Vec<(Arc<Message>, usize)>, ScanEnd) {
        let routes = self.tenant(tenant);
        let retained = read(&routes.retained);
        let mut out = Vec::new();
        let end = retained.scan(
            filter,
            resume,
            crate::clock::unix_ms(),
            budget,
            &mut |m, disk_len| {
                if out.len() >= limit {
                    return false;
                }
                out.push((m.clone(), disk_len));
                true
            },
        );
        (out, end)
    }

    /// Puts a retained message read from the store at start-up into its tenant's tree
    /// (nothing is written; `disk_len > 0`: its payload stayed on disk), over the tenant's
    /// retained limits if need be (see `RetainedStore::restore_entry`).
    pub fn restore_retained(&self, tenant: &TenantId, message: Message, disk_len: usize) {
        let routes = self.tenant(tenant);
        write(&routes.retained).restore_entry(Arc::new(message), disk_len);
    }
}
