//! Acknowledgements that wait for the store. A PUBACK or PUBREC for a message that had to be
//! stored, a PUBCOMP after a stored PUBREL, and a SUBACK or UNSUBACK of a persistent
//! session are sent only once their writes are durable; every acknowledgement after a
//! waiting one queues behind it, because MQTT requires them in order [MQTT-4.6.0-2]. The
//! connection keeps reading and delivering meanwhile; only when `max` acknowledgements wait
//! does it stop reading until the store catches up.
//!
//! A write that failed turns the acknowledgement of a publish into a refusal: v5 gets
//! 0x80 with a reason string, 3.1.1 (which has no way to refuse) loses the connection
//! without the acknowledgement, so the client sends the message again.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use messs_codec::{Packet, ReasonCode};
use messs_storage::{Durable, StorageError};

use super::Client;
use crate::connection::Transport;
use crate::error::BrokerError;

/// One acknowledgement in order, with the writes it waits for (if any).
pub(super) struct PendingAck {
    packet: Packet,
    wait: Option<Durable>,
}

/// Acknowledgements waiting, in the order they must be sent.
#[derive(Default)]
pub(super) struct PendingAcks(VecDeque<PendingAck>);

impl PendingAcks {
    /// Resolves when the first waiting acknowledgement's writes are done (pending
    /// forever if none waits: the `select!` branch is disabled then anyway).
    pub(super) async fn front_done(&mut self) -> Result<(), StorageError> {
        match self.0.front_mut().and_then(|a| a.wait.as_mut()) {
            Some(wait) => wait.await,
            None => std::future::pending().await,
        }
    }
}

impl<S: Transport> Client<S> {
    /// Sends `packet` now, or after the writes in `wait` (and every acknowledgement queued
    /// before it).
    pub(super) fn send_ack(
        &mut self,
        packet: Packet,
        wait: Option<Durable>,
    ) -> Result<(), BrokerError> {
        let queued = self.acks.as_ref().is_some_and(|a| !a.0.is_empty());
        if wait.is_none() && !queued {
            return self.conn.queue(&packet);
        }
        self.acks
            .get_or_insert_default()
            .0
            .push_back(PendingAck { packet, wait });
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
                Ok(()) => self.conn.queue(&ack.packet)?,
                Err(e) => self.refuse(ack.packet, e)?,
            }
        }
    }

    /// An acknowledgement whose writes failed.
    fn refuse(&mut self, packet: Packet, error: StorageError) -> Result<(), BrokerError> {
        let is_rec = matches!(packet, Packet::PubRec(_));
        match packet {
            Packet::PubAck(mut r) | Packet::PubRec(mut r) if r.reason.is_success() => {
                self.state
                    .stats
                    .publishes_refused_storage
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(client_id = %self.session.key.client_id, error = %error, "publish refused: not stored");
                if !self.conn.protocol().is_v5() {
                    return Err(BrokerError::Storage(error));
                }
                r.reason = ReasonCode::UnspecifiedError;
                r.properties.reason_string =
                    Some("the message could not be stored; send it again later".into());
                if is_rec {
                    // A failed PUBREC ends the exchange; no PUBREL will follow.
                    self.session.lock().release_incoming_qos2(r.packet_id, None);
                    self.conn.queue(&Packet::PubRec(r))
                } else {
                    self.conn.queue(&Packet::PubAck(r))
                }
            }
            other => {
                // Subscriptions and releases took effect in memory; the store catches up
                // with the next change or restart. Answer as usual, and say so in the log.
                tracing::warn!(client_id = %self.session.key.client_id, error = %error, "session change not stored");
                self.conn.queue(&other)
            }
        }
    }
}
