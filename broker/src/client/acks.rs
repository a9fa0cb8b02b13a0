//! Acknowledgements that wait for the store. A PUBACK or PUBREC for a message that had to be
//! stored, a PUBCOMP after a stored PUBREL, a PUBREL after a stored PUBREC, and a SUBACK or
//! UNSUBACK of a persistent session are sent only once their writes are durable; every
//! acknowledgement after a waiting one queues behind it, because MQTT requires them in
//! order [MQTT-4.6.0-2]. The connection keeps reading and delivering meanwhile; only when
//! `max` acknowledgements wait does it stop reading until the store catches up.
//!
//! A write that failed is never acknowledged as a success, and what the packet changed in
//! memory is undone, so the session stays as the store has it:
//! - a publish: v5 gets 0x80 with a reason string; 3.1.1 (which has no way to refuse)
//!   loses the connection without the acknowledgement, so the client sends it again — and
//!   a QoS 2 packet id is forgotten, so that resend is routed;
//! - SUBSCRIBE: 0x80 (Failure in 3.1.1) for each filter, which is not subscribed;
//! - UNSUBSCRIBE: v5 gets 0x80 for each filter, which stays subscribed; 3.1.1 a close;
//! - PUBREL (from the client) and PUBREC (ours to send PUBREL): the connection closes,
//!   with DISCONNECT 0x80 in v5, and the client's resend after reconnecting is answered.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use std::num::NonZeroU16;

use messs_codec::{Packet, ReasonCode, TopicFilter};
use messs_storage::{Durable, StorageError};

use super::ClientCore;
use crate::error::BrokerError;
use crate::session::StoredSubscription;

/// One acknowledgement in order, with the writes it waits for (if any) and how to undo
/// the packet's change in memory if they fail.
pub(super) struct PendingAck {
    packet: Packet,
    wait: Option<Durable>,
    undo: Option<Box<Undo>>,
}

/// What a packet changed in the session, to put back when its writes fail.
pub(super) enum Undo {
    /// SUBSCRIBE: each granted filter, and the subscription it replaced (if any).
    Subscribed(Vec<(TopicFilter, Option<StoredSubscription>)>),
    /// UNSUBSCRIBE: the subscriptions removed.
    Unsubscribed(Vec<StoredSubscription>),
    /// PUBREL: the incoming QoS 2 packet id released.
    Released(NonZeroU16),
}

/// Acknowledgements waiting, in the order they must be sent.
#[derive(Default)]
pub(super) struct PendingAcks(VecDeque<PendingAck>);

impl PendingAcks {
    /// Ready when the first waiting acknowledgement's writes are done (pending if none
    /// waits: the shell polls this only when one does).
    pub(super) fn poll_front_done(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), StorageError>> {
        match self.0.front_mut().and_then(|a| a.wait.as_mut()) {
            Some(wait) => std::future::Future::poll(std::pin::Pin::new(wait), cx),
            None => std::task::Poll::Pending,
        }
    }
}

impl ClientCore {
    /// Sends `packet` now, or after the writes in `wait` (and every acknowledgement queued
    /// before it).
    pub(super) fn send_ack(
        &mut self,
        packet: Packet,
        wait: Option<Durable>,
    ) -> Result<(), BrokerError> {
        self.send_ack_or_undo(packet, wait, None)
    }

    /// As `send_ack`; if the writes fail, `undo` puts the session back as it was.
    pub(super) fn send_ack_or_undo(
        &mut self,
        packet: Packet,
        wait: Option<Durable>,
        undo: Option<Undo>,
    ) -> Result<(), BrokerError> {
        let queued = self.acks.as_ref().is_some_and(|a| !a.0.is_empty());
        if wait.is_none() && !queued {
            return self.frames.queue(&packet);
        }
        let undo = wait.as_ref().and(undo).map(Box::new);
        self.acks
            .get_or_insert_default()
            .0
            .push_back(PendingAck { packet, wait, undo });
        Ok(())
    }

    /// Whether an acknowledgement waits for the store (the `select!` branch is armed).
    pub(super) fn ack_waiting(&self) -> bool {
        self.acks
            .as_ref()
            .and_then(|a| a.0.front())
            .is_some_and(|a| a.wait.is_some())
    }

    /// Whether so many acknowledgements wait that the socket should not be read.
    pub(super) fn acks_full(&self) -> bool {
        self.acks
            .as_ref()
            .is_some_and(|a| a.0.len() >= usize::from(self.neg.receive_maximum))
    }

    /// The front acknowledgement's writes finished with `result`: sends it (or its refusal),
    /// then everything behind it that is ready.
    pub(super) fn release_acks(
        &mut self,
        mut result: Option<Result<(), StorageError>>,
    ) -> Result<(), BrokerError> {
        loop {
            let Some(acks) = self.acks.as_mut() else {
                return Ok(());
            };
            let Some(front) = acks.0.front_mut() else {
                self.acks = None;
                return Ok(());
            };
            let outcome = match (result.take(), front.wait.as_mut()) {
                (Some(r), _) => r,
                (None, None) => Ok(()),
                (None, Some(wait)) => match wait.try_result() {
                    Some(r) => r,
                    None => return Ok(()),
                },
            };
            let Some(ack) = acks.0.pop_front() else {
                return Ok(());
            };
            match outcome {
                Ok(()) => self.frames.queue(&ack.packet)?,
                Err(e) => {
                    if let Some(undo) = ack.undo {
                        self.undo(*undo);
                    }
                    self.refuse(ack.packet, e)?;
                }
            }
        }
    }

    /// Puts back what a packet whose writes failed changed in memory. The store still has
    /// the session as it was (the packet's writes were one unit), so the writes this makes
    /// again only repeat what is there.
    fn undo(&mut self, undo: Undo) {
        match undo {
            Undo::Subscribed(granted) => {
                for (filter, replaced) in granted {
                    self.cancel_replay(filter.as_str());
                    match replaced {
                        Some(old) => self.resubscribe(old),
                        None => {
                            self.state.sessions.unsubscribe(
                                &self.session,
                                &self.routes,
                                &filter,
                                None,
                            );
                        }
                    }
                }
            }
            Undo::Unsubscribed(removed) => {
                for sub in removed {
                    self.resubscribe(sub);
                }
            }
            Undo::Released(pid) => {
                self.session.lock().add_incoming_qos2(pid, usize::MAX, None);
            }
        }
    }

    fn resubscribe(&mut self, sub: StoredSubscription) {
        // Refused only if the session ended meanwhile (nothing to put back then).
        let _ = self
            .state
            .sessions
            .subscribe(&self.session, &self.routes, sub, None);
    }

    /// An acknowledgement whose writes failed (see the module header).
    fn refuse(&mut self, packet: Packet, error: StorageError) -> Result<(), BrokerError> {
        let v5 = self.frames.protocol().is_v5();
        let client_id = &self.session.key.client_id;
        let is_rec = matches!(packet, Packet::PubRec(_));
        match packet {
            Packet::PubAck(ref r) | Packet::PubRec(ref r) if !r.reason.is_success() => {
                // Already a refusal (nothing was routed): send it as it is.
                self.frames.queue(&packet)
            }
            Packet::PubAck(mut r) | Packet::PubRec(mut r) => {
                self.state
                    .stats
                    .publishes_refused_storage
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%client_id, error = %error, "publish refused: not stored");
                if is_rec {
                    // The exchange ends here: a resend is a new message, to be routed.
                    self.session.lock().release_incoming_qos2(r.packet_id, None);
                }
                if !v5 {
                    return Err(BrokerError::Storage(error));
                }
                r.reason = ReasonCode::UnspecifiedError;
                r.properties.reason_string =
                    Some("the message could not be stored; send it again later".into());
                let refusal = if is_rec {
                    Packet::PubRec(r)
                } else {
                    Packet::PubAck(r)
                };
                self.frames.queue(&refusal)
            }
            Packet::SubAck(mut a) => {
                tracing::warn!(%client_id, error = %error, "subscribe refused: not stored");
                // 0x80 is Failure in 3.1.1 too.
                for reason in a.reasons.iter_mut().filter(|r| r.is_success()) {
                    *reason = ReasonCode::UnspecifiedError;
                }
                self.frames.queue(&Packet::SubAck(a))
            }
            Packet::UnsubAck(mut a) if v5 => {
                tracing::warn!(%client_id, error = %error, "unsubscribe refused: not stored");
                for reason in a.reasons.iter_mut() {
                    *reason = ReasonCode::UnspecifiedError;
                }
                self.frames.queue(&Packet::UnsubAck(a))
            }
            _ => {
                // PUBCOMP, PUBREL and a 3.1.1 UNSUBACK have no way to say it failed: the
                // connection ends, and the client sends the packet again when it is back.
                tracing::warn!(%client_id, error = %error, "session change not stored: closing the connection");
                Err(BrokerError::Storage(error))
            }
        }
    }
}
