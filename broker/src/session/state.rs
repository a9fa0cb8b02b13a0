//! The mutable part of a session: its subscriptions, the queue of deliveries waiting to be
//! sent, outgoing QoS 1/2 messages awaiting acknowledgement, incoming QoS 2 packet ids
//! awaiting PUBREL, and its lifecycle fields. Every change goes through a method here, so
//! the limits (count and bytes) and the byte budget are applied in one place, and the
//! storage layer can later mirror exactly these changes.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::num::{NonZeroU16, NonZeroU32};
use std::sync::Arc;

use messs_codec::{QoS, QosPid, SubscriptionOptions, TopicFilter};
use messs_storage::sessions::{InflightRecord, SessionRecord, WillRecord};
use messs_storage::{Batch, Durable, Ticket};

use super::durable::{PageIn, SessionDisk, PAGE};
use super::timers::TimerKey;
use crate::budget::{ByteBudget, Standing, SMALL_QUEUE};
use crate::config::QueueFullPolicy;
use crate::message::{Delivery, Message};
use crate::persist::codec;
use crate::persist::shared::SharedHold;
use crate::router::{levels, LEVEL_COST};
use crate::security::limits::tenant::TenantHoldings;

/// What a session record costs beyond its client id, in bytes (the `Session`, its map
/// entry and empty collections, rounded up).
pub(crate) const SESSION_COST: usize = 640;
/// What one subscription costs beyond its filter text and its trie nodes, in bytes (the
/// stored copy, the trie entry).
pub(crate) const SUBSCRIPTION_COST: usize = 192;
/// Copies of the filter text one subscription holds: the session's key, its stored
/// subscription, the trie's level keys (the outside audit measured ~3.7x the counted bytes
/// when only one copy was counted).
const FILTER_COPIES: usize = 3;
/// Bytes a session takes from the broker budget at a time for its messages.
const MESSAGE_CHUNK: usize = 16 * 1024;

/// What a page-in did besides filling the queue.
#[derive(Debug, Default)]
pub(crate) struct PagedIn {
    /// Expired messages deleted.
    pub expired: usize,
    /// Messages that could not be read, moved to the quarantine: sequence number and why.
    pub quarantined: Vec<(u64, String)>,
}

/// A subscription as the session remembers it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StoredSubscription {
    pub filter: TopicFilter,
    pub options: SubscriptionOptions,
    pub id: Option<NonZeroU32>,
}

impl StoredSubscription {
    fn cost(&self) -> usize {
        SUBSCRIPTION_COST
            + FILTER_COPIES * self.filter.as_str().len()
            + LEVEL_COST * levels(self.filter.filter())
    }
}

/// Outgoing QoS 1/2 state for one packet id.
#[derive(Debug)]
enum Outgoing {
    /// PUBLISH sent; waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Published(Delivery, usize),
    /// PUBREL sent; waiting for PUBCOMP. The message itself is no longer held; the stored
    /// sequence number (0 if not stored) keys its on-disk state.
    Released(u64),
}

#[derive(Debug)]
struct InflightEntry {
    /// Send order, so a resumed session resends in the original order [MQTT-4.6.0-1].
    seq: u64,
    /// The stored group record holding its packet id (QoS 1 sent in one batch; see
    /// `SessionDisk::groups`), or 0: a record of its own, or not stored.
    group: u64,
    state: Outgoing,
}

/// What a resumed connection must send again before anything new.
pub(crate) enum Resend {
    /// The PUBLISH, with DUP set.
    Publish(Delivery, QosPid),
    /// A PUBREL.
    PubRel(NonZeroU16),
}

/// How an acknowledgement from the client matched the outgoing state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AckMatch {
    /// It completed (or advanced) an exchange.
    Matched,
    /// No exchange uses that packet id (e.g. a late duplicate): ignored.
    Unknown,
    /// The packet id is in flight, but this is the wrong acknowledgement for its QoS or
    /// state (PUBREC for QoS 1, PUBACK for QoS 2, ...): a protocol violation
    /// [MQTT-4.3.2-*], [MQTT-4.3.3-*].
    WrongType,
}

/// A will message whose delay has not passed yet.
pub(crate) struct PendingWill {
    pub message: Arc<Message>,
    /// Its client's rights, for the choke point to check again when the delay has passed
    /// (a rule changed meanwhile is honoured); `None` for a will restored at start-up,
    /// checked when its connection ended.
    pub access: Option<Box<crate::security::auth::Access>>,
    pub timer: TimerKey,
    /// When it is due (Unix ms), as stored.
    pub due_at: u64,
}

/// Why a delivery was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EnqueueError {
    /// QoS 0 for an offline session.
    Offline,
    /// The session's queue is at its limit (messages or bytes).
    Full,
    /// The broker-wide session byte budget is spent.
    Budget,
    /// The tenant's sessions hold its `max_queued_bytes` already.
    TenantQuota,
    /// The session is persistent and the store refused the message (writer too far
    /// behind, or failing).
    Storage,
}

/// Why a subscription was not added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SubscribeRefused {
    /// The session holds `max_subscriptions_per_session` already.
    TooMany,
    /// The broker-wide session byte budget is spent.
    Budget,
    /// The session was ended (its connection was fenced off by a takeover).
    Ended,
}

/// Where a connection came from, for the admin plane's client list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    /// The client's address.
    pub peer: std::net::SocketAddr,
    /// MQTT protocol level: 3 (3.1), 4 (3.1.1) or 5.
    pub protocol_level: u8,
    /// Logged in with a client certificate (closed when its tenant's trust changes).
    pub by_certificate: bool,
    /// The listener's transport (one byte, not a 16-byte name: this is in every connected
    /// session).
    pub transport: crate::config::Transport,
    /// When CONNECT was accepted (Unix ms).
    pub since_ms: u64,
}

/// The mutable part of a session. Ordered maps rather than hash maps: they are small, need no
/// per-map hasher state, and an empty one is half the size.
pub(crate) struct SessionState {
    subscriptions: BTreeMap<Arc<str>, StoredSubscription>,
    max_subscriptions: u32,
    /// Bytes its subscriptions may hold (`SessionLimits::max_subscription_bytes`).
    max_subscription_bytes: u32,
    queue: VecDeque<Delivery>,
    max_queued: u32,
    /// What a full queue does (not persistent sessions).
    queue_full: QueueFullPolicy,
    /// Bytes of deliveries queued or in flight, and the limit on them.
    held_bytes: usize,
    max_bytes: usize,
    inflight: BTreeMap<NonZeroU16, InflightEntry>,
    next_seq: u64,
    next_pid: u16,
    /// QoS 2 packet ids received and answered with PUBREC, awaiting PUBREL.
    incoming_qos2: BTreeSet<NonZeroU16>,
    /// Seconds the session outlives its connection.
    expiry_interval: u32,
    /// Bumped on every attach, so a stale connection or timer can tell it lost.
    generation: u64,
    /// A connection is attached (set by attach, cleared by that connection's detach).
    attached: bool,
    /// The session was ended: it is out of the registry and must not be resumed.
    ended: bool,
    /// A delayed will waiting to be published; dropped if the client comes back, published
    /// at once if the session ends first.
    /// Boxed: most sessions never have one, and this is in every session.
    pending_will: Option<Box<PendingWill>>,
    /// The pending session-expiry timer, while offline.
    expiry_timer: Option<TimerKey>,
    /// Everything this session has charged to the broker-wide budget; given back when the
    /// state is dropped, so no path can leak a charge.
    charged: usize,
    /// Part of `charged` its subscriptions hold (within `max_subscription_bytes`, and the
    /// budget's share for subscriptions).
    subscription_bytes: u32,
    /// Part of `charged` taken for messages but not held by any: messages are charged from
    /// the broker-wide counter in chunks, so a delivery costs no shared atomic (publishers
    /// and subscribers on different cores would fight over it), and the reserve goes back
    /// whenever the session holds nothing.
    reserve: usize,
    budget: Arc<ByteBudget>,
    /// The part of `charged` taken for messages that the tenant's queued bytes were
    /// charged for too (nothing while the tenant has no cap on them).
    tenant_charged: usize,
    tenant: Arc<TenantHoldings>,
    /// The store mirror of a persistent session (boxed: most sessions have none).
    disk: Option<Box<SessionDisk>>,
    /// The username the attached (or last) connection logged in with, so disabling a
    /// device can disconnect it.
    owner: Option<Arc<str>>,
    /// The attached (or last) connection's address, protocol and start.
    link: Option<Link>,
    /// The owner's rate limit overrides as changed in the registry while it is connected,
    /// for the connection to take (see `BrokerState::apply_registry`).
    new_device_limits: Option<Arc<[(String, u64)]>>,
}

/// Per-session limits from the configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SessionLimits {
    pub max_queued: usize,
    pub max_queued_bytes: usize,
    pub max_subscriptions: usize,
    /// Bytes its subscriptions may hold (see `StoredSubscription::cost`).
    pub max_subscription_bytes: usize,
    pub queue_full: crate::config::QueueFullPolicy,
}

impl Drop for SessionState {
    fn drop(&mut self) {
        let subs = self.subscription_bytes as usize;
        self.budget.release_subscription(subs);
        self.budget.release(self.charged.saturating_sub(subs));
        self.tenant.unqueue(self.tenant_charged);
    }
}

impl SessionState {
    /// An empty state; `charged` is what the caller already took from `budget` for it.
    /// Its messages are charged to `budget` and to its `tenant`'s queued bytes.
    pub fn new(
        limits: SessionLimits,
        budget: Arc<ByteBudget>,
        tenant: Arc<TenantHoldings>,
        charged: usize,
    ) -> Self {
        SessionState {
            owner: None,
            link: None,
            new_device_limits: None,
            subscriptions: BTreeMap::new(),
            max_subscriptions: u32::try_from(limits.max_subscriptions).unwrap_or(u32::MAX),
            max_subscription_bytes: u32::try_from(limits.max_subscription_bytes)
                .unwrap_or(u32::MAX),
            subscription_bytes: 0,
            queue: VecDeque::new(),
            max_queued: u32::try_from(limits.max_queued).unwrap_or(u32::MAX),
            queue_full: limits.queue_full,
            held_bytes: 0,
            max_bytes: limits.max_queued_bytes,
            inflight: BTreeMap::new(),
            next_seq: 0,
            next_pid: 0,
            incoming_qos2: BTreeSet::new(),
            expiry_interval: 0,
            generation: 0,
            attached: false,
            ended: false,
            pending_will: None,
            expiry_timer: None,
            charged,
            reserve: 0,
            budget,
            tenant_charged: 0,
            tenant,
            disk: None,
        }
    }

    /// Takes `bytes` for a message from the reserve, topping it up from the broker budget
    /// and the tenant's queued bytes (a chunk at a time, or just what is missing if a
    /// chunk does not fit).
    fn charge_message(
        &mut self,
        bytes: usize,
        draining: impl FnOnce() -> bool,
    ) -> Result<(), EnqueueError> {
        if self.reserve < bytes {
            let standing = Standing {
                held: self.held_bytes,
                draining: self.held_bytes >= SMALL_QUEUE && draining(),
            };
            let missing = bytes - self.reserve;
            let chunk = missing.max(MESSAGE_CHUNK);
            let (taken, tenant_taken) = match self.take_for_messages(chunk, standing) {
                Ok(t) => (chunk, t),
                Err(_) => (missing, self.take_for_messages(missing, standing)?),
            };
            self.charged += taken;
            self.tenant_charged += tenant_taken;
            self.reserve += taken;
        }
        self.reserve -= bytes;
        Ok(())
    }

    /// Takes `bytes` from the broker budget and the tenant's queued bytes; what the
    /// tenant counted.
    fn take_for_messages(&self, bytes: usize, standing: Standing) -> Result<usize, EnqueueError> {
        if !self.budget.try_charge_message(bytes, standing) {
            return Err(EnqueueError::Budget);
        }
        self.tenant.try_queue(bytes).ok_or_else(|| {
            self.budget.release(bytes);
            EnqueueError::TenantQuota
        })
    }

    fn release(&mut self, bytes: usize) {
        let bytes = bytes.min(self.charged);
        self.charged -= bytes;
        self.budget.release(bytes);
    }

    /// Gives back message bytes: to the broker budget and (what it counted) the
    /// tenant's queued bytes.
    fn release_messages(&mut self, bytes: usize) {
        let counted = bytes.min(self.tenant_charged);
        self.tenant_charged -= counted;
        self.tenant.unqueue(counted);
        self.release(bytes);
    }

    /// A message no longer held: its bytes go to the reserve, which goes back to the broker
    /// budget once the session holds nothing (or grows past two chunks).
    fn release_held(&mut self, bytes: usize) {
        self.held_bytes = self.held_bytes.saturating_sub(bytes);
        self.reserve += bytes;
        let keep = if self.held_bytes == 0 {
            0
        } else {
            MESSAGE_CHUNK
        };
        if self.reserve > keep && (self.held_bytes == 0 || self.reserve > 2 * MESSAGE_CHUNK) {
            let back = self.reserve - keep;
            self.reserve = keep;
            self.release_messages(back);
        }
    }

    // --- lifecycle -------------------------------------------------------------------

    /// Marks a new connection attached; returns its generation.
    pub fn attach(&mut self, expiry_interval: u32) -> u64 {
        self.attached = true;
        self.generation += 1;
        self.expiry_interval = expiry_interval;
        self.write_session_record(None);
        self.generation
    }

    /// Marks the connection of `generation` gone (at `now_ms`); false if a newer one owns
    /// the session. A persistent session's queue goes back to disk only.
    pub fn detach(&mut self, generation: u64, now_ms: u64) -> bool {
        if self.generation != generation {
            return false;
        }
        self.attached = false;
        self.write_session_record(Some(now_ms));
        self.spill_queue_to_disk();
        true
    }

    // --- persistence -----------------------------------------------------------------

    /// Submits the changes deferred during this pass of the connection (see
    /// `SessionDisk::deferred`).
    pub fn flush_deferred(&self) {
        if let Some(d) = &self.disk {
            d.flush_deferred();
        }
    }

    /// Mirrors the session to the store from now on, starting with its record and its
    /// subscriptions.
    pub fn make_durable(&mut self, disk: SessionDisk) {
        let mut b = Batch::new();
        for sub in self.subscriptions.values() {
            disk.store
                .put_subscription(&mut b, &disk.prefix, &codec::subscription_record(sub));
        }
        disk.submit(b, None);
        self.disk = Some(Box::new(disk));
        self.write_session_record(if self.attached {
            None
        } else {
            Some(crate::clock::unix_ms())
        });
    }

    /// Gives a session restored at start-up its store mirror. Nothing is written: the
    /// restore builds the state first (no mirror, so no writes), then attaches it.
    pub fn restore_disk(&mut self, disk: SessionDisk) {
        self.disk = Some(Box::new(disk));
    }

    fn write_session_record(&self, disconnected_at: Option<u64>) {
        if let Some(d) = &self.disk {
            let mut b = Batch::new();
            let record = SessionRecord {
                session_id: d.session_id,
                expiry_interval: self.expiry_interval,
                disconnected_at,
            };
            d.store.put_session(&mut b, &d.prefix, &record);
            d.submit(b, None);
        }
    }

    /// Drops the in-memory copies of stored queued messages (they are all on disk): an
    /// offline session costs disk, not memory. The memory queue holds the lowest unsent
    /// sequence numbers, so the disk part now starts at its front.
    fn spill_queue_to_disk(&mut self) {
        let Some(d) = self.disk.as_deref_mut() else {
            return;
        };
        if self.queue.is_empty() {
            return;
        }
        let queue = std::mem::take(&mut self.queue);
        let mut freed = 0;
        let mut spilled = 0;
        let mut first = None;
        let mut last = 0;
        for q in &queue {
            freed += q.cost();
            if q.stored_seq != 0 {
                first.get_or_insert(q.stored_seq);
                last = q.stored_seq;
                spilled += 1;
            }
        }
        if let Some(first) = first {
            let before = d.on_disk;
            d.on_disk += spilled;
            d.cursor = first;
            d.disk_high = d.disk_high.max(last);
            d.stats
                .queued_on_disk
                .fetch_add(d.on_disk - before, std::sync::atomic::Ordering::Relaxed);
        }
        drop(queue);
        self.release_held(freed);
    }

    /// Asks for a page-in when the session is attached, has messages on disk only, and its
    /// memory queue runs low (see `durable`).
    pub fn page_in_request(&mut self, now_ms: u64) -> Option<PageIn> {
        let (attached, queued) = (self.attached, self.queue.len());
        let half_full = queued >= PAGE / 2 || self.held_bytes >= self.max_bytes / 2;
        let d = self.disk.as_deref_mut()?;
        if !attached || d.on_disk == 0 || d.paging || now_ms < d.retry_at_ms || half_full {
            return None;
        }
        d.paging = true;
        Some(PageIn {
            store: d.store.clone(),
            prefix: d.prefix.clone(),
            from: d.cursor,
            limit: PAGE,
        })
    }

    /// Takes a page read from disk from sequence number `from` into the memory queue
    /// (expired messages are deleted and counted in the result). Stops early at the
    /// session's byte limit (`max_queued_bytes`) or when the byte budget is spent; the rest
    /// stay on disk for the next page. A page read from a cursor that has moved since (the connection left and came back meanwhile, putting its
    /// memory queue back on disk) is dropped: the next pass reads from the right place. A
    /// record that cannot be read is moved to the store's quarantine and reported in the
    /// result: the queue goes on behind it. Blocking (the quarantine reads the record).
    pub fn page_in_done(
        &mut self,
        result: Result<Vec<messs_storage::sessions::QueueEntry>, messs_storage::StorageError>,
        from: u64,
        now_ms: u64,
    ) -> PagedIn {
        let mut out = PagedIn::default();
        let attached = self.attached;
        let Some(d) = self.disk.as_deref_mut() else {
            return out;
        };
        d.paging = false;
        let records = match result {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "reading a stored queue failed; retrying in a second");
                d.retry_at_ms = now_ms + 1000;
                return out;
            }
        };
        if !attached || from != d.cursor {
            return out;
        }
        let full_page = records.len() >= PAGE;
        let empty = records.is_empty();
        let mut stopped = false;
        let mut deletes = Batch::new();
        for (seq, record) in records {
            let Some(d) = self.disk.as_deref_mut() else {
                break;
            };
            if seq < d.cursor {
                continue;
            }
            if d.restored_inflight.contains(&seq) {
                // In memory already (in flight since before the restart): the next page
                // starts after it, or a page of nothing but these would be read forever.
                d.cursor = seq + 1;
                continue;
            }
            let delivery = match record.and_then(|r| codec::delivery_from_record(seq, r)) {
                Ok(delivery) => delivery,
                Err(e) => {
                    if let Err(q) = d.store.quarantine_queued(&mut deletes, &d.prefix, seq) {
                        tracing::error!(error = %q, seq, "an unreadable stored message could not be quarantined; it is dropped");
                        d.store.delete_queued(&mut deletes, &d.prefix, seq);
                    }
                    d.release_ref(seq, &mut deletes);
                    out.quarantined.push((seq, e.to_string()));
                    d.count_deleted(0);
                    d.took_from_disk(1);
                    d.cursor = seq + 1;
                    continue;
                }
            };
            let cost = delivery.cost();
            if delivery.message.is_expired(now_ms) {
                d.store.delete_queued(&mut deletes, &d.prefix, seq);
                d.release_ref(seq, &mut deletes);
                d.count_deleted(cost);
                d.took_from_disk(1);
                d.cursor = seq + 1;
                out.expired += 1;
                continue;
            }
            // The session's own byte limit holds for what comes back from disk too (at
            // least one message, so a large one still moves).
            let over_limit = self.held_bytes.saturating_add(cost) > self.max_bytes;
            if (over_limit && !self.queue.is_empty()) || self.charge_message(cost, || true).is_err()
            {
                stopped = true;
                break;
            }
            self.held_bytes += cost;
            self.queue.push_back(delivery);
            if let Some(d) = self.disk.as_deref_mut() {
                d.took_from_disk(1);
                d.cursor = seq + 1;
            }
        }
        if let Some(d) = self.disk.as_deref_mut() {
            d.defer(deletes);
            if !stopped && !full_page {
                d.restored_inflight.clear();
                if d.cursor > d.disk_high || empty {
                    if d.on_disk > 0 && empty {
                        tracing::warn!(missing = d.on_disk, "stored queue shorter than counted");
                    }
                    let left = d.on_disk;
                    d.took_from_disk(left);
                }
            }
        }
        out
    }

    /// The generation of the latest attach.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether a connection is attached.
    pub fn is_attached(&self) -> bool {
        self.attached
    }

    /// Marks the session ended (out of the registry) and deletes what the store holds of
    /// it; false if it already was.
    pub fn end(&mut self) -> bool {
        if std::mem::replace(&mut self.ended, true) {
            return false;
        }
        if let Some(mut d) = self.disk.take() {
            let mut b = Batch::new();
            d.release_all_refs(&mut b);
            d.store.delete_session(&mut b, &d.prefix);
            d.submit(b, None);
        }
        true
    }

    /// Whether the session was ended (it must not be resumed).
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// Seconds the session outlives its connection.
    pub fn expiry_interval(&self) -> u32 {
        self.expiry_interval
    }

    /// Changes the expiry (DISCONNECT may, within the rules checked by the caller).
    pub fn set_expiry_interval(&mut self, secs: u32) {
        self.expiry_interval = secs;
        self.write_session_record(None);
    }

    /// Records the pending will (a delayed will after an abnormal end).
    pub fn set_pending_will(&mut self, will: PendingWill) {
        if let Some(d) = &self.disk {
            let mut b = Batch::new();
            let stored = codec::message_record(&will.message).and_then(|message| {
                let record = WillRecord {
                    due_at: will.due_at,
                    message,
                };
                d.store.put_will(&mut b, &d.prefix, &record)
            });
            match stored {
                Ok(()) => {
                    d.submit(b, None);
                }
                Err(e) => tracing::warn!(error = %e, "pending will not stored"),
            }
        }
        self.pending_will = Some(Box::new(will));
    }

    /// Takes the pending will, if any (to publish it, or to delete it).
    pub fn take_pending_will(&mut self) -> Option<PendingWill> {
        let will = self.pending_will.take();
        if let (Some(_), Some(d)) = (&will, &self.disk) {
            let mut b = Batch::new();
            d.store.delete_will(&mut b, &d.prefix);
            d.submit(b, None);
        }
        will.map(|w| *w)
    }

    /// Records the expiry timer started when the connection went away.
    pub fn set_expiry_timer(&mut self, key: TimerKey) {
        self.expiry_timer = Some(key);
    }

    /// Takes the expiry timer, if any (to cancel it).
    pub fn take_expiry_timer(&mut self) -> Option<TimerKey> {
        self.expiry_timer.take()
    }

    /// The pending expiry timer, if any: a fired timer acts only if it is still this one.
    pub fn expiry_timer(&self) -> Option<TimerKey> {
        self.expiry_timer
    }

    /// The pending will's timer, if any: a fired will timer acts only if it is still this.
    pub fn will_timer(&self) -> Option<TimerKey> {
        self.pending_will.as_ref().map(|w| w.timer)
    }

    // --- subscriptions ---------------------------------------------------------------

    /// Adds or replaces a subscription; `Ok(Some(old))` if it replaced one with the same
    /// filter. A persistent session stores it (with `ticket`, which its SUBACK waits on).
    pub fn add_subscription(
        &mut self,
        sub: StoredSubscription,
        ticket: Option<&Ticket>,
    ) -> Result<Option<StoredSubscription>, SubscribeRefused> {
        if let Some(d) = &self.disk {
            let mut b = Batch::new();
            d.store
                .put_subscription(&mut b, &d.prefix, &codec::subscription_record(&sub));
            d.submit(b, ticket);
        }
        let key: &str = sub.filter.as_str();
        if let Some(existing) = self.subscriptions.get_mut(key) {
            return Ok(Some(std::mem::replace(existing, sub)));
        }
        if self.subscriptions.len() >= self.max_subscriptions as usize {
            self.unstore_subscription(key, None);
            return Err(SubscribeRefused::TooMany);
        }
        let cost = sub.cost();
        let within = u32::try_from(cost)
            .ok()
            .and_then(|c| self.subscription_bytes.checked_add(c))
            .filter(|&total| total <= self.max_subscription_bytes);
        let Some(total) = within else {
            self.unstore_subscription(key, None);
            return Err(SubscribeRefused::TooMany);
        };
        if !self.budget.try_charge_subscription(cost) {
            self.unstore_subscription(key, None);
            return Err(SubscribeRefused::Budget);
        }
        self.charged += cost;
        self.subscription_bytes = total;
        self.subscriptions.insert(Arc::from(key), sub);
        Ok(None)
    }

    /// Gives back what subscriptions of `cost` bytes took.
    fn release_subscriptions(&mut self, cost: usize) {
        let held = self.subscription_bytes;
        let cost = u32::try_from(cost).unwrap_or(u32::MAX).min(held);
        self.subscription_bytes = held - cost;
        let cost = cost as usize;
        self.charged = self.charged.saturating_sub(cost);
        self.budget.release_subscription(cost);
    }

    fn unstore_subscription(&self, filter: &str, ticket: Option<&Ticket>) {
        if let Some(d) = &self.disk {
            let mut b = Batch::new();
            d.store.delete_subscription(&mut b, &d.prefix, filter);
            d.submit(b, ticket);
        }
    }

    /// Whether the session has a subscription with this filter.
    pub fn has_subscription(&self, filter: &str) -> bool {
        self.subscriptions.contains_key(filter)
    }

    /// Removes a subscription; the one removed, if it existed.
    pub fn remove_subscription(
        &mut self,
        filter: &str,
        ticket: Option<&Ticket>,
    ) -> Option<StoredSubscription> {
        let sub = self.subscriptions.remove(filter)?;
        self.release_subscriptions(sub.cost());
        self.unstore_subscription(filter, ticket);
        Some(sub)
    }

    /// Removes every subscription (the session ends).
    pub fn take_subscriptions(&mut self) -> Vec<StoredSubscription> {
        let subs: Vec<StoredSubscription> = std::mem::take(&mut self.subscriptions)
            .into_values()
            .collect();
        let cost = subs.iter().map(StoredSubscription::cost).sum();
        self.release_subscriptions(cost);
        subs
    }

    /// Whether every subscription passes `allowed(filter without $share prefix, max QoS)`
    /// (the ACL check of a session's subscriptions after a rule change).
    pub fn all_subscriptions(
        &self,
        mut allowed: impl FnMut(&str, messs_codec::QoS) -> bool,
    ) -> bool {
        self.subscriptions
            .values()
            .all(|s| allowed(s.filter.filter(), s.options.qos))
    }

    /// Records who the attached connection logged in as, and from where.
    pub fn set_owner(&mut self, username: Option<Arc<str>>, link: Link) {
        self.owner = username;
        self.link = Some(link);
    }

    /// Where the attached (or last) connection came from.
    pub fn link(&self) -> Option<Link> {
        self.link
    }

    /// The username of the attached (or last) connection.
    pub fn owner(&self) -> Option<&str> {
        self.owner.as_deref()
    }

    /// Hands the attached connection its device's changed limit overrides.
    pub fn set_device_limits(&mut self, limits: Arc<[(String, u64)]>) {
        self.new_device_limits = Some(limits);
    }

    /// The device's changed limit overrides, if any came since the last call.
    pub fn take_device_limits(&mut self) -> Option<Arc<[(String, u64)]>> {
        self.new_device_limits.take()
    }

    /// Each subscription: its filter as subscribed (with any `$share/` prefix), its
    /// options and its subscription id.
    pub fn each_subscription(&self, mut f: impl FnMut(&StoredSubscription)) {
        self.subscriptions.values().for_each(&mut f);
    }

    /// Number of subscriptions.
    pub fn subscription_count(&self) -> usize {
        self.subscriptions.len()
    }

    // --- incoming QoS 2 --------------------------------------------------------------

    /// Whether an incoming QoS 2 packet id is awaiting PUBREL (a resend must not be routed
    /// twice).
    pub fn has_incoming_qos2(&self, pid: NonZeroU16) -> bool {
        self.incoming_qos2.contains(&pid)
    }

    /// Records an incoming QoS 2 packet id; false if `max` are unreleased already. A
    /// persistent session stores it with `ticket` (its PUBREC waits on it: a resend after a
    /// restart must not be routed twice).
    pub fn add_incoming_qos2(
        &mut self,
        pid: NonZeroU16,
        max: usize,
        ticket: Option<&Ticket>,
    ) -> bool {
        if self.incoming_qos2.len() >= max {
            return false;
        }
        if let Some(d) = &self.disk {
            let mut b = Batch::new();
            d.store.put_incoming_qos2(&mut b, &d.prefix, pid.get());
            d.submit(b, ticket);
        }
        self.incoming_qos2.insert(pid);
        true
    }

    /// PUBREL (or a failed PUBREC) ends an incoming QoS 2 exchange; false if unknown. A
    /// persistent session deletes it with `ticket` (PUBCOMP waits on it).
    pub fn release_incoming_qos2(&mut self, pid: NonZeroU16, ticket: Option<&Ticket>) -> bool {
        let known = self.incoming_qos2.remove(&pid);
        if let (true, Some(d)) = (known, &self.disk) {
            let mut b = Batch::new();
            d.store.delete_incoming_qos2(&mut b, &d.prefix, pid.get());
            d.submit(b, ticket);
        }
        known
    }

    // --- the queue ---------------------------------------------------------------------

    /// Queues a delivery within the session's limits and the broker budget; `draining`
    /// says whether the connection took from the queue recently (see `budget`; asked only
    /// when the queue is large, as it reads the clock).
    /// `shared` is a hold on the shared message this delivery's message is stored as (see
    /// `persist::shared`): a persistent session keeps it with its reference; otherwise, or
    /// if the delivery is refused, it is given back.
    pub fn push(
        &mut self,
        delivery: Delivery,
        draining: impl FnOnce() -> bool,
        ticket: Option<&Ticket>,
        shared: Option<&SharedHold>,
    ) -> Result<u32, EnqueueError> {
        let cost = delivery.cost();
        if self.disk.is_some() {
            return self
                .push_durable(delivery, cost, draining, ticket, shared)
                .map(|()| 0);
        }
        if let Some(hold) = shared {
            hold.give_back(ticket);
        }
        let full = |st: &Self| {
            st.queue.len() >= st.max_queued as usize
                || st.held_bytes.saturating_add(cost) > st.max_bytes
        };
        let mut dropped = 0;
        if full(self) {
            if self.queue_full != QueueFullPolicy::DropOldest {
                return Err(EnqueueError::Full);
            }
            // Oldest first, only what is queued (in-flight messages stay): if that is not
            // enough room, the new one is dropped after all.
            while full(self) {
                let Some(old) = self.queue.pop_front() else {
                    break;
                };
                self.release_held(old.cost());
                dropped += 1;
            }
            if full(self) {
                return Err(EnqueueError::Full);
            }
        }
        self.charge_message(cost, draining)?;
        self.held_bytes += cost;
        self.queue.push_back(delivery);
        Ok(dropped)
    }

    /// The policy for a full queue.
    pub fn queue_full_policy(&self) -> QueueFullPolicy {
        self.queue_full
    }

    /// Stores a delivery for a persistent session (with `ticket`, which the publisher's
    /// acknowledgement waits on), then keeps it in memory too if the session is attached,
    /// nothing is waiting on disk before it, and the memory queue and budget have room;
    /// otherwise it stays on disk only. Only the stored limits make it `Full`.
    fn push_durable(
        &mut self,
        mut delivery: Delivery,
        cost: usize,
        draining: impl FnOnce() -> bool,
        ticket: Option<&Ticket>,
        shared: Option<&SharedHold>,
    ) -> Result<(), EnqueueError> {
        let refused = |e: EnqueueError| {
            if let Some(hold) = shared {
                hold.give_back(ticket);
            }
            Err(e)
        };
        let Some(d) = self.disk.as_deref_mut() else {
            return refused(EnqueueError::Storage);
        };
        if !d.has_room(cost) {
            return refused(EnqueueError::Full);
        }
        let seq = d.next_seq;
        let mut b = Batch::new();
        let stored = codec::queued_record(&delivery, shared.map(SharedHold::id))
            .and_then(|record| d.store.put_queued(&mut b, &d.prefix, seq, &record));
        if let Err(e) = stored {
            tracing::warn!(error = %e, "message not stored");
            if let Some(t) = ticket {
                t.fail();
            }
            return refused(EnqueueError::Storage);
        }
        if !d.submit(b, ticket) {
            return refused(EnqueueError::Storage);
        }
        if let Some(hold) = shared {
            d.note_ref(seq, hold.id());
        }
        d.next_seq += 1;
        d.count_stored(cost);
        delivery.stored_seq = seq;
        let nothing_on_disk = d.on_disk == 0;
        let to_memory = self.attached
            && nothing_on_disk
            && self.queue.len() < self.max_queued as usize
            && self.held_bytes.saturating_add(cost) <= self.max_bytes
            && self.charge_message(cost, draining).is_ok();
        if to_memory {
            self.held_bytes += cost;
            self.queue.push_back(delivery);
        } else if let Some(d) = self.disk.as_deref_mut() {
            d.push_on_disk(seq);
        }
        Ok(())
    }

    /// Deletes a stored message (acknowledged, expired, or undeliverable) and its outgoing
    /// state: its own in-flight record, or its share of `group`'s (deleted with the last).
    fn forget_stored(&mut self, seq: u64, cost: usize, group: u64) {
        if seq == 0 {
            return;
        }
        if let Some(d) = self.disk.as_deref_mut() {
            let mut b = Batch::new();
            d.release_ref(seq, &mut b);
            if group == 0 {
                d.store.delete_queued(&mut b, &d.prefix, seq);
            } else {
                d.store.delete_queued_only(&mut b, &d.prefix, seq);
                let last = d.groups.get_mut(&group).is_some_and(|n| {
                    *n = n.saturating_sub(1);
                    *n == 0
                });
                if last {
                    d.groups.remove(&group);
                    d.store.delete_inflight(&mut b, &d.prefix, group);
                }
            }
            d.count_deleted(cost);
            d.defer(b);
        }
    }

    /// Whether fewer than `ahead` messages are queued (and the queue is below half its
    /// byte limit): retained replay fills the queue only this far ahead of the client.
    pub fn has_room(&self, ahead: usize) -> bool {
        self.queue.len() < ahead.min(self.max_queued as usize)
            && self.held_bytes < self.max_bytes / 2
    }

    /// Past half of its limits (messages, or bytes queued and in flight): publishers are
    /// asked to pause.
    pub fn over_soft_limit(&self) -> bool {
        self.queue.len() >= self.soft_limit() || self.held_bytes >= self.max_bytes / 2
    }

    fn soft_limit(&self) -> usize {
        (self.max_queued as usize / 2).max(1)
    }

    /// Number of outgoing QoS 1/2 messages not yet completed.
    #[cfg(test)]
    pub fn inflight_len(&self) -> usize {
        self.inflight.len()
    }

    /// Whether any message is queued, in flight or stored for the session (an offline
    /// session that holds one is not evicted for room).
    pub fn holds_messages(&self) -> bool {
        !self.queue.is_empty() || !self.inflight.is_empty() || self.stored().0 > 0
    }

    /// Messages waiting to be sent.
    pub fn queued_len(&self) -> usize {
        self.queue.len()
    }

    /// Messages (and their bytes) kept in the store; zero for a session without one.
    pub fn stored(&self) -> (u64, usize) {
        self.disk
            .as_deref()
            .map_or((0, 0), |d| (d.stored, d.stored_bytes))
    }

    /// Bytes of deliveries queued or in flight.
    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    /// Moves up to `max` queued deliveries, and about `max_bytes` (at least one delivery),
    /// into `out`, giving QoS 1/2 ones a packet id and an inflight slot while fewer than
    /// `window` are inflight. Returns the number of expired messages dropped, and — when a
    /// stored QoS 2 message was taken — what its sending must wait for: exactly once needs
    /// its packet id on disk before the PUBLISH is on the wire (a receiver keeps the id
    /// until PUBREL, so after a crash the message must come back with it, and the id must
    /// not be given to another message). `now_ms` is in Unix milliseconds.
    pub fn take_batch(
        &mut self,
        now_ms: u64,
        window: usize,
        max: usize,
        max_bytes: usize,
        out: &mut Vec<(Delivery, QosPid)>,
    ) -> (usize, Option<Durable>) {
        let mut send_after_write = false;
        let mut expired = 0;
        let mut bytes = 0usize;
        // Store changes of this batch (deletes of sent QoS 0 and expired messages, in-flight
        // packet ids), submitted once at the end.
        let mut changes = Batch::new();
        // Stored QoS 1 messages sent in this batch: their packet ids go in one record.
        let mut sent_qos1: Vec<(u64, u16)> = Vec::new();
        while out.len() < max && bytes < max_bytes {
            let Some(front) = self.queue.front() else {
                break;
            };
            if front.message.is_expired(now_ms) {
                if let Some(d) = self.queue.pop_front() {
                    let cost = d.cost();
                    self.release_held(cost);
                    self.note_deleted(&mut changes, d.stored_seq, cost);
                }
                expired += 1;
                continue;
            }
            if front.qos == QoS::AtMostOnce {
                if let Some(d) = self.queue.pop_front() {
                    let cost = d.cost();
                    bytes += cost;
                    self.release_held(cost);
                    self.note_deleted(&mut changes, d.stored_seq, cost);
                    out.push((d, QosPid::AtMostOnce));
                }
                continue;
            }
            if self.inflight.len() >= window {
                break;
            }
            let Some(pid) = self.allocate_pid() else {
                break;
            };
            let Some(d) = self.queue.pop_front() else {
                break;
            };
            let qos_pid = QosPid::new(d.qos, pid);
            self.next_seq += 1;
            let cost = d.cost();
            bytes += cost;
            let mut group = 0;
            if let (Some(disk), true) = (self.disk.as_deref(), d.stored_seq != 0) {
                if d.qos == QoS::AtLeastOnce {
                    sent_qos1.push((d.stored_seq, pid.get()));
                    group = sent_qos1[0].0;
                } else {
                    let record = InflightRecord::Published(pid.get());
                    disk.store
                        .put_inflight(&mut changes, &disk.prefix, d.stored_seq, record);
                    send_after_write = true;
                }
            }
            self.inflight.insert(
                pid,
                InflightEntry {
                    seq: self.next_seq,
                    group,
                    state: Outgoing::Published(d.clone(), cost),
                },
            );
            out.push((d, qos_pid));
        }
        if let (Some(disk), Some(&(first, _))) = (self.disk.as_deref_mut(), sent_qos1.first()) {
            disk.store
                .put_inflight_group(&mut changes, &disk.prefix, &sent_qos1);
            disk.groups
                .insert(first, u32::try_from(sent_qos1.len()).unwrap_or(u32::MAX));
        }
        let mut wait = None;
        if let (Some(disk), false) = (self.disk.as_deref(), changes.is_empty()) {
            if send_after_write {
                let (ticket, durable) = Ticket::new();
                // A refused write fails the ticket: the wait then ends the connection.
                disk.submit(changes, Some(&ticket));
                wait = Some(durable);
            } else {
                disk.defer(changes);
            }
        }
        (expired, wait)
    }

    /// Adds the delete of stored message `seq` to `changes`.
    fn note_deleted(&mut self, changes: &mut Batch, seq: u64, cost: usize) {
        if let (Some(d), true) = (self.disk.as_deref_mut(), seq != 0) {
            d.store.delete_queued(changes, &d.prefix, seq);
            d.release_ref(seq, changes);
            d.count_deleted(cost);
        }
    }

    fn allocate_pid(&mut self) -> Option<NonZeroU16> {
        for _ in 0..u16::MAX {
            self.next_pid = self.next_pid.wrapping_add(1);
            if let Some(pid) = NonZeroU16::new(self.next_pid) {
                if !self.inflight.contains_key(&pid) {
                    return Some(pid);
                }
            }
        }
        None
    }

    /// PUBACK: completes a QoS 1 message.
    pub fn on_puback(&mut self, pid: NonZeroU16) -> AckMatch {
        let cost = match self.inflight.get(&pid) {
            None => return AckMatch::Unknown,
            Some(InflightEntry {
                state: Outgoing::Published(d, cost),
                ..
            }) if d.qos == QoS::AtLeastOnce => *cost,
            Some(_) => return AckMatch::WrongType,
        };
        if let Some(InflightEntry {
            state: Outgoing::Published(d, _),
            group,
            ..
        }) = self.inflight.remove(&pid)
        {
            self.forget_stored(d.stored_seq, cost, group);
        }
        self.release_held(cost);
        AckMatch::Matched
    }

    /// PUBREC: a QoS 2 message moves to "released" (its bytes are given back); a persistent
    /// session stores that with `ticket`, which the PUBREL waits on (once the receiver has
    /// had PUBREL it may forget the id, so a PUBLISH with it after a crash would be a new
    /// message). A PUBREC with a failure reason code (v5) ends the exchange instead: the
    /// caller passes `failed`.
    pub fn on_pubrec(
        &mut self,
        pid: NonZeroU16,
        failed: bool,
        ticket: Option<&Ticket>,
    ) -> AckMatch {
        let Some(entry) = self.inflight.get_mut(&pid) else {
            return AckMatch::Unknown;
        };
        let (cost, seq) = match &entry.state {
            Outgoing::Published(d, cost) if d.qos == QoS::ExactlyOnce => (*cost, d.stored_seq),
            // A repeated PUBREC after our PUBREL: answer with PUBREL again.
            Outgoing::Released(_) => return AckMatch::Matched,
            Outgoing::Published(..) => return AckMatch::WrongType,
        };
        if failed {
            self.inflight.remove(&pid);
            self.forget_stored(seq, cost, 0);
        } else {
            entry.state = Outgoing::Released(seq);
            if let (Some(d), true) = (self.disk.as_deref_mut(), seq != 0) {
                let mut b = Batch::new();
                d.store.release_queued(&mut b, &d.prefix, seq, pid.get());
                d.release_ref(seq, &mut b);
                d.count_deleted(cost);
                // Not deferred: a release must be stored whole (see `SessionDisk::defer`).
                d.submit(b, ticket);
            }
        }
        self.release_held(cost);
        AckMatch::Matched
    }

    /// PUBCOMP: completes a QoS 2 message.
    pub fn on_pubcomp(&mut self, pid: NonZeroU16) -> AckMatch {
        match self.inflight.get(&pid) {
            None => AckMatch::Unknown,
            Some(InflightEntry {
                state: Outgoing::Released(seq),
                ..
            }) => {
                let seq = *seq;
                self.inflight.remove(&pid);
                if let (Some(d), true) = (self.disk.as_deref(), seq != 0) {
                    let mut b = Batch::new();
                    d.store.delete_inflight(&mut b, &d.prefix, seq);
                    d.defer(b);
                }
                AckMatch::Matched
            }
            Some(_) => AckMatch::WrongType,
        }
    }

    /// Forgets an outgoing message that could not be sent (too large for the client).
    pub fn forget_inflight(&mut self, pid: NonZeroU16) {
        if let Some(entry) = self.inflight.remove(&pid) {
            if let Outgoing::Published(d, cost) = entry.state {
                self.forget_stored(d.stored_seq, cost, entry.group);
                self.release_held(cost);
            }
        }
    }

    /// Restores an outgoing message that was in flight when the broker stopped: it is
    /// resent (DUP) with its packet id when the client comes back. A `delivery` of `None`
    /// is a QoS 2 message already released (PUBREL is resent).
    pub fn restore_inflight(&mut self, pid: NonZeroU16, seq: u64, delivery: Option<Delivery>) {
        self.next_seq += 1;
        let state = match delivery {
            Some(d) => {
                let cost = d.cost();
                // Restored state is charged like any other; the budget is checked at start-up
                // by the caller as a whole.
                self.charged += cost;
                self.budget.force_charge(cost);
                self.tenant_charged += self.tenant.force_queue(cost);
                self.held_bytes += cost;
                Outgoing::Published(d, cost)
            }
            None => Outgoing::Released(seq),
        };
        self.inflight.insert(
            pid,
            InflightEntry {
                seq: self.next_seq,
                group: 0,
                state,
            },
        );
    }

    /// Everything to resend on session resume, in the original order [MQTT-4.4.0-1].
    pub fn resend_list(&self) -> Vec<Resend> {
        let mut entries: Vec<(&NonZeroU16, &InflightEntry)> = self.inflight.iter().collect();
        entries.sort_by_key(|(_, e)| e.seq);
        entries
            .into_iter()
            .map(|(pid, e)| match &e.state {
                Outgoing::Published(d, _) => Resend::Publish(d.clone(), QosPid::new(d.qos, *pid)),
                Outgoing::Released(_) => Resend::PubRel(*pid),
            })
            .collect()
    }
}
