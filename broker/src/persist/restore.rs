//! Start-up: rebuilds persistent sessions and retained messages from the store before any
//! listener accepts. Expiry is wall-clock: a session whose expiry passed while the broker
//! was down ends once every session is restored (its pending will is published then, so it
//! reaches every session); the others get their expiry and will timers at the times
//! stored. Queued messages stay on disk; only messages that were in flight are read, to be
//! resent (DUP) with their packet ids.

use std::num::NonZeroU16;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use messs_storage::sessions::{InflightRecord, LoadedSession, SessionPrefix};
use messs_storage::Batch;

use super::codec;
use crate::clock::unix_ms;
use crate::error::BrokerError;
use crate::session::SessionKey;
use crate::state::BrokerState;

/// What a restore found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RestoreReport {
    /// Sessions restored.
    pub sessions: usize,
    /// Sessions whose expiry passed while the broker was down (ended now).
    pub expired_sessions: usize,
    /// Messages queued on disk for restored sessions.
    pub queued_messages: u64,
    /// Retained messages restored.
    pub retained: usize,
    /// Messages stored once for several sessions' queues, still referred to.
    pub shared_messages: u64,
    /// Shared messages nobody referred to any more (a crash between the last reference
    /// going and the message itself), deleted.
    pub shared_swept: u64,
    /// Queue references to shared messages already gone (every session had let the
    /// message go; this reference's delete was not written before a crash), deleted.
    pub dangling_refs: u64,
}

impl BrokerState {
    /// Restores what the store holds. Blocking; runs once, before serving.
    pub(crate) fn restore(&self) -> Result<RestoreReport, BrokerError> {
        let Some(persist) = &self.persist else {
            return Ok(RestoreReport::default());
        };
        let store = &persist.store;
        let now = unix_ms();
        let mut report = RestoreReport::default();
        let mut cleanup = Batch::new();
        let (retained, quarantined) = store.load_retained(persist.retained_inline_bytes)?;
        for (tenant, error) in &quarantined {
            self.report_quarantined(&format!("a retained message of tenant {tenant}"), 1, error);
        }
        for r in retained {
            let message = codec::message_from_record(r.message)?;
            if message.is_expired(now) {
                store.delete_retained(&mut cleanup, &r.tenant, message.topic.as_str())?;
                continue;
            }
            let disk_len = if r.payload_on_disk { r.payload_len } else { 0 };
            self.router
                .restore_retained(&self.tenant_id(&r.tenant), message, disk_len);
            report.retained += 1;
        }
        store.submit(cleanup, None)?;
        // Sessions that expired while the broker was down end only once every session is
        // back: ending one publishes its will, which must reach every session restored
        // after it too.
        let mut expired = Vec::new();
        for loaded in store.load_sessions()? {
            if let Some(session) = self.restore_session(loaded, now, &mut report)? {
                expired.push(session);
            }
        }
        for session in expired {
            let effects = self.sessions.end_restored(&session);
            self.apply(effects);
        }
        // Every reference is counted now: a shared message nobody holds is a leftover.
        report.shared_swept = store.sweep_shared_messages(|id| persist.shared.is_held(id))?;
        report.shared_messages = self
            .stats
            .shared_messages
            .load(std::sync::atomic::Ordering::Relaxed);
        Ok(report)
    }

    /// Restores one session; returns it if it expired while the broker was down (for the
    /// caller to end once every session is restored).
    fn restore_session(
        &self,
        loaded: LoadedSession,
        now: u64,
        report: &mut RestoreReport,
    ) -> Result<Option<Arc<crate::session::Session>>, BrokerError> {
        let Some(persist) = &self.persist else {
            return Ok(None);
        };
        let key = SessionKey {
            tenant: self.tenant_id(&loaded.tenant),
            client_id: Arc::from(loaded.client_id.as_str()),
        };
        let session = self.sessions.restore(key.clone(), loaded.record.session_id);
        let routes = self.router.tenant(&key.tenant);
        let expiry = loaded
            .record
            .expiry_interval
            .min(self.config.session.max_expiry_secs);
        let disconnected_at = loaded.record.disconnected_at.unwrap_or(now);
        let expires_at = crate::clock::after_secs(disconnected_at, expiry);
        let prefix = SessionPrefix::new(&loaded.tenant, &loaded.client_id)?;
        let mut restored_inflight = std::collections::BTreeSet::new();
        let mut quarantined = Vec::new();
        // Group records (QoS 1 ids sent together) become single records for what is left
        // of them: deleted first, since a group is keyed like its first member's record.
        let mut rewrite = Batch::new();
        for group in &loaded.inflight_groups {
            persist.store.delete_inflight(&mut rewrite, &prefix, *group);
        }
        // References whose message is gone were acknowledged by this session before the
        // crash (a message goes only with its last reference): deleted, not quarantined.
        for seq in &loaded.dangling_refs {
            persist.store.delete_queued(&mut rewrite, &prefix, *seq);
        }
        report.dangling_refs += loaded.dangling_refs.len() as u64;
        {
            let mut st = session.lock();
            // No store mirror yet: nothing below writes.
            st.set_expiry_interval(expiry);
            for record in &loaded.subscriptions {
                let sub = codec::subscription_from_record(record)?;
                if st.add_subscription(sub.clone(), None).is_ok() {
                    self.router.subscribe(&routes, &session, &sub);
                }
            }
            for pid in loaded
                .incoming_qos2
                .iter()
                .filter_map(|p| NonZeroU16::new(*p))
            {
                st.add_incoming_qos2(pid, usize::MAX, None);
            }
            for (seq, state) in &loaded.inflight {
                if loaded.dangling_refs.contains(seq) {
                    continue;
                }
                match *state {
                    InflightRecord::Published(pid) => {
                        let Some(pid) = NonZeroU16::new(pid) else {
                            continue;
                        };
                        let page =
                            persist
                                .store
                                .read_queue_entries(&prefix, *seq, 1, usize::MAX)?;
                        if let Some((found, record)) = page.into_iter().next() {
                            if found == *seq {
                                let delivery = match record
                                    .and_then(|r| codec::delivery_from_record(found, r))
                                {
                                    Ok(delivery) => delivery,
                                    Err(e) => {
                                        // Unreadable: out of the way, kept, reported.
                                        persist.store.quarantine_queued(
                                            &mut rewrite,
                                            &prefix,
                                            found,
                                        )?;
                                        persist.store.delete_inflight(&mut rewrite, &prefix, found);
                                        quarantined.push((found, e.to_string()));
                                        continue;
                                    }
                                };
                                st.restore_inflight(pid, found, Some(delivery));
                                restored_inflight.insert(found);
                                persist.store.put_inflight(
                                    &mut rewrite,
                                    &prefix,
                                    found,
                                    InflightRecord::Published(pid.get()),
                                );
                            }
                        }
                    }
                    InflightRecord::Released(pid) => {
                        if let Some(pid) = NonZeroU16::new(pid) {
                            st.restore_inflight(pid, *seq, None);
                            persist.store.put_inflight(
                                &mut rewrite,
                                &prefix,
                                *seq,
                                InflightRecord::Released(pid.get()),
                            );
                        }
                    }
                }
            }
            if !loaded.inflight_groups.is_empty()
                || !quarantined.is_empty()
                || !loaded.dangling_refs.is_empty()
            {
                persist.store.submit(rewrite, None)?;
            }
            if let Some(will) = &loaded.will {
                let message = Arc::new(codec::message_from_record(will.message.clone())?);
                self.sessions
                    .restore_will(&session, &mut st, message, will.due_at);
            }
            if let Some(mut disk) =
                persist.session_disk(&key, session.id, loaded.next_seq, &self.stats)
            {
                let gone = quarantined.len() as u64;
                disk.stored = loaded.queued.saturating_sub(gone);
                disk.stored_bytes = usize::try_from(loaded.queued_bytes).unwrap_or(usize::MAX);
                let on_disk = disk.stored.saturating_sub(restored_inflight.len() as u64);
                disk.on_disk = on_disk;
                disk.cursor = 0;
                disk.disk_high = loaded.next_seq.saturating_sub(1);
                disk.restored_inflight = restored_inflight;
                for &(seq, id) in &loaded.shared_refs {
                    // A quarantined reference holds nothing (its message, if no one else
                    // refers to it, is swept below).
                    if quarantined.iter().all(|(q, _)| *q != seq) {
                        persist.shared.hold(id);
                        disk.note_ref(seq, id);
                    }
                }
                self.stats
                    .queued_on_disk
                    .fetch_add(on_disk, Ordering::Relaxed);
                st.restore_disk(disk);
                session.set_durable();
            }
        }
        self.report_quarantined_messages(&key, &quarantined);
        report.queued_messages += loaded.queued;
        if expires_at <= now {
            report.expired_sessions += 1;
            return Ok(Some(session));
        }
        self.sessions
            .restore_expiry(&session, &mut session.lock(), expires_at);
        report.sessions += 1;
        Ok(None)
    }
}
