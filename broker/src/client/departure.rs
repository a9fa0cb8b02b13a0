//! The end of a connection: the DISCONNECT it is told why with (v5), the audit record,
//! and the session's detach with its will.

use std::sync::atomic::Ordering;

use messs_codec::{Disconnect, Packet, ReasonCode};

use super::{ClientCore, End};
use crate::clock::Now;
use crate::error::BrokerError;
use crate::message::Message;
use crate::security::auth::{clip, Access};
use crate::session::table::Will;
use crate::session::Departure;

impl ClientCore {
    /// Logs the end and queues the DISCONNECT that says why (v5, when the broker ends it);
    /// the shell writes it before it closes the socket.
    pub(crate) fn farewell(&mut self, end: &End) {
        let client_id = &self.session.key.client_id;
        match end {
            End::Failed(e) => {
                if matches!(e, BrokerError::WriteTimeout) {
                    self.state
                        .stats
                        .write_timeouts
                        .fetch_add(1, Ordering::Relaxed);
                }
                tracing::info!(%client_id, error = %e, "closing connection")
            }
            End::KeepAlive => tracing::info!(%client_id, "keep-alive timeout"),
            _ => tracing::debug!(%client_id, "disconnected"),
        }
        let reason = match end {
            End::TakenOver => Some(ReasonCode::SessionTakenOver),
            End::Kicked(code) => Some(*code),
            End::Shutdown => Some(ReasonCode::ServerShuttingDown),
            End::KeepAlive => Some(ReasonCode::KeepAliveTimeout),
            End::Failed(e) => e.disconnect_reason(),
            End::Disconnect { .. } | End::Closed => None,
        };
        if let (Some(code), true) = (reason, self.frames.protocol().is_v5()) {
            let mut disconnect = Disconnect::new(code);
            if let End::Failed(e) = end {
                // Protocol text only: errors never carry credentials or payloads.
                disconnect.properties.reason_string = Some(e.to_string());
            }
            let max = self.neg.client_max_packet as usize;
            let _ = self
                .frames
                .queue_within(Packet::Disconnect(disconnect), max);
        }
    }

    /// Detaches the connection from its session at `now` (after the socket is closed):
    /// the will, if the end publishes it and the ACL allows it, goes with the detach; the
    /// end is audited.
    pub(crate) fn leave(&mut self, end: End, now: Now) {
        let end_name = match &end {
            End::Disconnect { with_will: false } => "client disconnected".to_owned(),
            End::Disconnect { with_will: true } => "client disconnected with will".to_owned(),
            End::Closed => "connection closed by the client".to_owned(),
            End::KeepAlive => "keep-alive timeout".to_owned(),
            End::TakenOver => "session taken over".to_owned(),
            End::Kicked(code) => format!("kicked ({code})"),
            End::Shutdown => "broker shutting down".to_owned(),
            End::Failed(e) => format!("closed: {e}"),
        };
        let departure = match end {
            End::Disconnect { with_will: false } => Departure::Clean,
            End::TakenOver => Departure::TakenOver,
            End::Shutdown => Departure::Shutdown,
            _ => Departure::Abnormal,
        };
        let publishes = !matches!(departure, Departure::Clean | Departure::Shutdown);
        let will = self
            .will
            .take()
            .filter(|_| publishes)
            .map(|w| {
                let delay = w.properties.will_delay_interval.unwrap_or(0);
                (Message::from_will(*w, self.session.id, now.unix_ms), delay)
            })
            .filter(|(m, _)| self.state.admission.will_allowed(&mut self.access, m))
            .map(|(message, delay)| Will {
                message,
                delay,
                // Checked again when it is published (after its delay, the rules may
                // have changed).
                access: Some(Box::new(Access::new(
                    &self.state.auth,
                    self.access.identity.clone(),
                    self.access.client_id.clone(),
                ))),
            });
        let a = &self.access;
        let denied = if a.denied > 0 {
            format!(
                "; {} messages or subscriptions refused by the ACL",
                a.denied
            )
        } else {
            String::new()
        };
        self.state.audit_for(
            &a.identity.tenant.id,
            "client.disconnect",
            format!(
                "{} client {:?}: {end_name}{denied}",
                a.identity.describe(),
                clip(&a.client_id),
            ),
        );
        self.state
            .detach(&self.session, self.generation, departure, will);
        self.state.stats.connections.fetch_sub(1, Ordering::Relaxed);
        self.state.stats.connections_by_transport[self.transport.index()]
            .fetch_sub(1, Ordering::Relaxed);
        self.access
            .identity
            .tenant
            .counters
            .connected
            .fetch_sub(1, Ordering::Relaxed);
    }
}
