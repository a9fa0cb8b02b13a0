//! Deliveries to the client: take them from the session queue within the inflight window,
//! apply topic aliases, expiry and the client's Maximum Packet Size, and encode them.

use std::num::NonZeroU16;
use std::sync::atomic::Ordering;

use messs_codec::{Packet, PubResponse, PublishFlags, QosPid, TopicName};

use super::{aliases, ClientCore, MAX_BATCH};

/// About how many bytes of deliveries are encoded before they are flushed.
const MAX_WRITE_BUFFER: usize = 256 * 1024;
use crate::clock::{unix_ms, Now};
use crate::error::BrokerError;
use crate::message::Delivery;
use crate::session::{read_page, Resend};

/// Deliveries taken from the queue whose sending waits for a write: the packet ids of the
/// stored QoS 2 ones among them (see `SessionState::take_batch`).
pub(super) struct Held {
    pub(super) wait: messs_storage::Durable,
    deliveries: Vec<(Delivery, QosPid)>,
}

thread_local! {
    /// Reused per thread for deliveries taken from a session queue, so neither each pass nor
    /// each idle connection carries its own buffer.
    static BATCH: std::cell::Cell<Vec<(Delivery, QosPid)>> = const { std::cell::Cell::new(Vec::new()) };
}

impl ClientCore {
    /// Whether the shell may read (and so answer) the client while a write to it is
    /// blocked: only while its output stays under twice `MAX_WRITE_BUFFER`, so a client
    /// that sends without reading cannot grow what waits for it without a byte bound.
    pub(super) fn may_read_while_writing(&self) -> bool {
        self.frames.pending_out() < 2 * MAX_WRITE_BUFFER
    }

    /// On session resume, resends unacknowledged PUBLISHes (DUP set) and PUBRELs in their
    /// original order, before anything new [MQTT-4.4.0-1].
    pub(super) fn resend_inflight(&mut self, now: Now) -> Result<(), BrokerError> {
        let resend = self.session.lock().resend_list();
        let now = now.unix_ms;
        for r in resend {
            match r {
                Resend::Publish(d, qos_pid) => self.write_delivery(&d, qos_pid, true, now)?,
                Resend::PubRel(pid) => self
                    .frames
                    .queue(&Packet::PubRel(PubResponse::success(pid)))?,
            }
        }
        Ok(())
    }

    /// Tops the queue up with owed retained messages, then encodes queued deliveries while
    /// the window allows.
    pub(super) fn drain_outbox(&mut self, now: Now) -> Result<(), BrokerError> {
        self.refresh_access();
        self.replay_retained(now);
        let result = self.encode_queued(now);
        self.replay_more = self.replay_pending();
        self.page_in(now);
        result
    }

    /// Starts reading the next page of a persistent session's on-disk queue when its memory
    /// queue runs low. The read runs on the blocking pool; when it is done the page is in
    /// the queue and the connection is woken.
    fn page_in(&mut self, now: Now) {
        let Some(request) = self.session.lock().page_in_request(now.unix_ms) else {
            return;
        };
        let session = self.session.clone();
        let state = self.state.clone();
        self.state.spawn_storage_read(move || {
            let page = read_page(&request);
            // Read when the page is in (the pool may have been busy), not when asked for.
            let paged = session.lock().page_in_done(page, request.from, unix_ms());
            if paged.expired > 0 {
                state
                    .stats
                    .dropped_expired
                    .fetch_add(paged.expired as u64, Ordering::Relaxed);
            }
            state.report_quarantined_messages(&session.key, &paged.quarantined);
            session.wake();
        });
    }

    /// Encodes queued deliveries, in batches, until the queue is empty, the window is full,
    /// or about `MAX_WRITE_BUFFER` bytes wait to be written; in the last case `drain_more`
    /// asks for another pass once they are flushed. So the write buffer of a client that
    /// does not read stays small, and what waits for it stays in its (counted) queue.
    fn encode_queued(&mut self, now: Now) -> Result<(), BrokerError> {
        let (now, now_mono_ms) = (now.unix_ms, now.mono_ms());
        self.drain_more = false;
        loop {
            let room = MAX_WRITE_BUFFER.saturating_sub(self.frames.pending_out());
            if room == 0 {
                self.drain_more = true;
                return Ok(());
            }
            if self.held.is_some() {
                // Nothing overtakes deliveries waiting for their packet ids to be stored.
                return Ok(());
            }
            let mut batch = BATCH.take();
            let ((expired, wait), below_soft_limit) = {
                let mut st = self.session.lock();
                let window = usize::from(self.neg.window);
                let taken = st.take_batch(now, window, MAX_BATCH, room, &mut batch);
                (taken, !st.over_soft_limit())
            };
            let took = !batch.is_empty() || expired > 0;
            let progress_at = if took { now_mono_ms } else { 0 };
            self.session
                .after_drain(took, progress_at, below_soft_limit);
            if expired > 0 {
                self.state
                    .stats
                    .dropped_expired
                    .fetch_add(expired as u64, Ordering::Relaxed);
            }
            if let Some(wait) = wait {
                self.held = Some(Box::new(Held {
                    wait,
                    deliveries: std::mem::take(&mut batch),
                }));
                BATCH.set(batch);
                return Ok(());
            }
            // Nothing taken and nothing expired: the queue is empty or the window is full.
            // Otherwise go on: the next round stops at the write-buffer cap.
            let done = batch.is_empty() && expired == 0;
            let result = batch
                .drain(..)
                .try_for_each(|(d, qos_pid)| self.write_delivery(&d, qos_pid, false, now));
            BATCH.set(batch);
            result?;
            if done {
                return Ok(());
            }
        }
    }

    /// The writes held deliveries waited for are done: writes them (the next pass goes on
    /// with the queue).
    pub(super) fn write_held(&mut self, now: Now) -> Result<(), BrokerError> {
        let Some(held) = self.held.take() else {
            return Ok(());
        };
        let now = now.unix_ms;
        held.deliveries
            .into_iter()
            .try_for_each(|(d, qos_pid)| self.write_delivery(&d, qos_pid, false, now))
    }

    /// Picks the topic alias for a topic: an existing one (send an empty topic), a new one
    /// while the client's Topic Alias Maximum allows (send both), or none.
    fn outbound_alias(&mut self, topic: &TopicName) -> (Option<NonZeroU16>, bool) {
        let max = self.state.config.limits.max_topic_alias_bytes;
        let stats = &self.state.stats;
        let aliases = self
            .out_aliases
            .get_or_insert_with(|| Box::new(aliases::Outbound::new(max, stats.clone())));
        if let Some(a) = aliases.get(topic) {
            return (Some(a), false);
        }
        match aliases.next(topic, self.neg.client_alias_max) {
            Some(a) => (Some(a), true),
            None => (None, false),
        }
    }

    pub(super) fn write_delivery(
        &mut self,
        d: &Delivery,
        qos_pid: QosPid,
        dup: bool,
        now: u64,
    ) -> Result<(), BrokerError> {
        if !self
            .access
            .may_receive(d.message.topic.as_str(), d.qos, d.retain)
        {
            // A rule changed since the subscription was granted: withhold it.
            self.settle_unsent(qos_pid);
            self.state
                .stats
                .acl_delivery_denied
                .fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let aliasing = self.frames.protocol().is_v5() && self.neg.client_alias_max > 0;
        if !aliasing && d.is_plain() {
            // No properties to send and no alias to pick: encoded from the shared message
            // by reference, no owned copy of its fields per subscriber.
            let flags = PublishFlags {
                dup,
                qos_pid,
                retain: d.retain,
            };
            let fits = self.frames.queue_plain_publish(
                flags,
                &d.message,
                self.neg.client_max_packet as usize,
            )?;
            self.delivered(fits, qos_pid);
            return Ok(());
        }
        let mut publish = d.to_publish(qos_pid, dup, now);
        let mut new_alias = None;
        if self.frames.protocol().is_v5() && self.neg.client_alias_max > 0 {
            let (alias, is_new) = self.outbound_alias(&publish.topic);
            publish.properties.topic_alias = alias;
            if let (Some(a), true) = (alias, is_new) {
                new_alias = Some(a);
            } else if alias.is_some() {
                publish.topic = TopicName::empty();
            }
        }
        let fits = self
            .frames
            .queue_publish(&publish, self.neg.client_max_packet as usize)?;
        if let (true, Some(a), Some(aliases)) = (fits, new_alias, self.out_aliases.as_mut()) {
            aliases.insert(d.message.topic.clone(), a);
        }
        self.delivered(fits, qos_pid);
        Ok(())
    }

    /// Counts a delivery written (`fits`), or discards one too large for the client as if
    /// sent [MQTT-3.1.2-25].
    fn delivered(&mut self, fits: bool, qos_pid: QosPid) {
        if fits {
            self.state
                .stats
                .messages_sent
                .fetch_add(1, Ordering::Relaxed);
            self.access
                .identity
                .tenant
                .counters
                .sent
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.settle_unsent(qos_pid);
        self.state
            .stats
            .dropped_too_large
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Settles a delivery that is not sent as if it had been, so its packet id and storage
    /// are freed.
    fn settle_unsent(&mut self, qos_pid: QosPid) {
        if let Some(pid) = qos_pid.packet_id() {
            self.session.lock().forget_inflight(pid);
        }
    }
}
