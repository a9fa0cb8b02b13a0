//! Retained messages for new subscriptions, delivered as the session's queue has room.
//!
//! A SUBSCRIBE only records what to replay; each pass of the client loop then walks the
//! tenant's retained tree for a bounded number of nodes, pushing matches into the session's
//! bounded queue, and stops once a batch is queued ahead of the client or the budget is
//! spent. The walk
//! resumes from the last topic it visited, so a subscription to `#` over a large store costs
//! the subscriber time, not the broker memory, and never holds a worker or the store's lock
//! for long. Repeated filters replace their pending replay instead of adding one.
//!
//! A retained message whose payload is kept on disk (larger than
//! `storage.retained_inline_bytes`) is read on the blocking pool: the walk collects up to
//! `FETCH_MAX` of them, a task reads them and queues them for the session, and the walk
//! goes on once they are in.

use std::num::NonZeroU32;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use messs_codec::{QoS, TopicFilter, TopicName};

use super::{ClientCore, MAX_BATCH};
use crate::clock::{unix_ms, Now};
use crate::message::{Delivery, Message};
use crate::router::ScanEnd;
use crate::session::EnqueueError;

/// Nodes of the retained tree one walk may visit per pass.
const NODES_PER_WALK: usize = 1024;
/// Walks per pass (one per pending subscription, at most).
const WALKS_PER_PASS: usize = 8;
/// Messages replay keeps queued ahead of the client: one batch. More follow only as the
/// client takes them, so a client that subscribes and never reads costs one batch and what
/// its socket buffers hold, not a queue full of retained messages.
const AHEAD: usize = MAX_BATCH;
/// Retained messages with on-disk payloads read by one fetch, and about how many bytes (at
/// least one message): what one fetch holds while it runs.
const FETCH_MAX: usize = 32;
const FETCH_BYTES: usize = 1 << 20;

/// A retained message to read from the store for one subscription.
struct Fetch {
    topic: TopicName,
    qos: QoS,
    id: Option<NonZeroU32>,
}

/// The retained messages still owed to one new subscription.
pub(super) struct Replay {
    filter: TopicFilter,
    qos: QoS,
    id: Option<NonZeroU32>,
    /// Where the last walk stopped (`None`: from the start).
    resume: Option<Vec<Box<str>>>,
}

impl ClientCore {
    /// Records the retained replay a new subscription is owed, replacing a pending one for
    /// the same filter.
    pub(super) fn schedule_replay(
        &mut self,
        filter: TopicFilter,
        qos: QoS,
        id: Option<NonZeroU32>,
    ) {
        let replays = self.replays.get_or_insert_default();
        replays.retain(|r| r.filter.as_str() != filter.as_str());
        replays.push_back(Replay {
            filter,
            qos,
            id,
            resume: None,
        });
    }

    /// Drops the pending replay of an unsubscribed filter.
    pub(super) fn cancel_replay(&mut self, filter: &str) {
        if let Some(replays) = self.replays.as_mut() {
            replays.retain(|r| r.filter.as_str() != filter);
        }
    }

    /// Walks pending replays while the session queue has room (see the module header).
    pub(super) fn replay_retained(&mut self, now: Now) {
        if self.session.is_fetching() {
            return; // the fetch wakes the connection when its messages are queued
        }
        let Some(replays) = self.replays.as_mut() else {
            return;
        };
        let now_ms = now.unix_ms;
        let session = &self.session;
        let stats = &self.state.stats;
        let mut fetches: Vec<Fetch> = Vec::new();
        let mut fetch_bytes = 0usize;
        for _ in 0..WALKS_PER_PASS {
            let Some(replay) = replays.front_mut() else {
                break;
            };
            if !session.lock().has_room(AHEAD) {
                break;
            }
            let mut sink = |m: &Arc<Message>, disk_len: usize| -> bool {
                if disk_len > 0 {
                    // Fetched messages count against the batch ahead like queued ones.
                    let room = AHEAD.saturating_sub(fetches.len());
                    let full = fetches.len() >= FETCH_MAX || fetch_bytes >= FETCH_BYTES;
                    if full || !session.lock().has_room(room) {
                        return false;
                    }
                    fetch_bytes += disk_len;
                    fetches.push(Fetch {
                        topic: m.topic.clone(),
                        qos: m.qos.min(replay.qos),
                        id: replay.id,
                    });
                    return true;
                }
                let delivery = Delivery {
                    message: m.clone(),
                    qos: m.qos.min(replay.qos),
                    retain: true,
                    subscription_ids: replay.id.into_iter().collect(),
                    stored_seq: 0,
                };
                let mut st = session.lock();
                if !st.has_room(AHEAD) {
                    return false;
                }
                // Replay fills only one batch ahead, so the queue is small: the tier of
                // a client that reads.
                match st.push(delivery, || true, None, None) {
                    Ok(_) => true,
                    Err(EnqueueError::Full) => false,
                    Err(EnqueueError::Storage) => {
                        stats.dropped_storage.fetch_add(1, Ordering::Relaxed);
                        true
                    }
                    Err(EnqueueError::TenantQuota) => {
                        stats.dropped_tenant_quota.fetch_add(1, Ordering::Relaxed);
                        true
                    }
                    Err(EnqueueError::Budget | EnqueueError::Offline) => {
                        stats.dropped_budget.fetch_add(1, Ordering::Relaxed);
                        true
                    }
                }
            };
            let end = self.state.router.scan_retained(
                &self.routes,
                replay.filter.filter(),
                replay.resume.as_deref(),
                now_ms,
                NODES_PER_WALK,
                &mut sink,
            );
            match end {
                ScanEnd::Done => {
                    replays.pop_front();
                }
                ScanEnd::Paused(at) => {
                    replay.resume = Some(at);
                    break;
                }
            }
        }
        if replays.is_empty() {
            self.replays = None;
        }
        if !fetches.is_empty() {
            self.fetch_retained(fetches);
        }
    }

    /// Reads retained messages whose payloads are on disk and queues them for the session.
    fn fetch_retained(&self, fetches: Vec<Fetch>) {
        let Some(persist) = &self.state.persist else {
            return;
        };
        let store = persist.store.clone();
        let session = self.session.clone();
        let stats = self.state.stats.clone();
        session.set_fetching(true);
        self.state.spawn_storage_read(move || {
            let tenant = session.key.tenant.clone();
            if let Err(e) = store.wait_written() {
                tracing::warn!(error = %e, "retained payloads not read");
            }
            let now_ms = unix_ms();
            for f in fetches {
                let message = match store.read_retained(&tenant, f.topic.as_str()) {
                    Ok(Some(record)) => match crate::persist::codec::message_from_record(record) {
                        Ok(m) => m,
                        Err(e) => {
                            tracing::warn!(error = %e, "a retained message cannot be read");
                            continue;
                        }
                    },
                    // Replaced by a smaller one or deleted meanwhile: the walk saw the old.
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "a retained message cannot be read");
                        continue;
                    }
                };
                if message.is_expired(now_ms) {
                    continue;
                }
                let delivery = Delivery {
                    message: Arc::new(message),
                    qos: f.qos,
                    retain: true,
                    subscription_ids: f.id.into_iter().collect(),
                    stored_seq: 0,
                };
                if let Err(e) = session.lock().push(delivery, || true, None, None) {
                    tracing::debug!(?e, "retained message not queued");
                    stats.dropped_budget.fetch_add(1, Ordering::Relaxed);
                }
            }
            session.set_fetching(false);
            session.wake();
        });
    }

    /// Whether another pass should follow at once to continue a replay.
    pub(super) fn replay_pending(&self) -> bool {
        self.replays.is_some() && !self.session.is_fetching() && self.session.lock().has_room(AHEAD)
    }
}
