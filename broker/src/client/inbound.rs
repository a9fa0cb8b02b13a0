//! Packets from the client after CONNECT: PUBLISH and its acks, SUBSCRIBE, UNSUBSCRIBE,
//! PINGREQ, DISCONNECT. Each handler checks the rule it owns and queues its answer; a
//! violation returns an error carrying the reason code the connection closes with.

use std::num::NonZeroU16;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use messs_codec::{
    AckProperties, Disconnect, Packet, PubResponse, Publish, QoS, QosPid, ReasonCode,
    RetainHandling, SubAck, Subscribe, TopicName, UnsubAck, Unsubscribe,
};

use super::{Client, End};
use crate::connection::Transport;
use crate::error::BrokerError;
use crate::message::{Delivery, Message};
use crate::session::StoredSubscription;

/// Topics whose first level is this belong to the broker; clients may not publish to them.
const SYS_LEVEL: &str = "$SYS";

impl<S: Transport> Client<S> {
    /// Handles one packet; `Some(end)` when the connection should end.
    pub(super) fn handle(&mut self, packet: Packet) -> Result<Option<End>, BrokerError> {
        match packet {
            Packet::Publish(p) => self.on_publish(*p)?,
            Packet::PubAck(r) => {
                self.session.lock().on_puback(r.packet_id);
            }
            Packet::PubRec(r) => self.on_pubrec(r)?,
            Packet::PubRel(r) => self.on_pubrel(r)?,
            Packet::PubComp(r) => {
                self.session.lock().on_pubcomp(r.packet_id);
            }
            Packet::Subscribe(s) => self.on_subscribe(*s)?,
            Packet::Unsubscribe(u) => self.on_unsubscribe(*u)?,
            Packet::PingReq => self.conn.queue(&Packet::PingResp)?,
            Packet::Disconnect(d) => return self.on_disconnect(d).map(Some),
            Packet::Connect(_) => {
                return Err(BrokerError::protocol(
                    ReasonCode::ProtocolError,
                    "second CONNECT [MQTT-3.1.0-2]",
                ))
            }
            Packet::Auth(_) => {
                return Err(BrokerError::protocol(
                    ReasonCode::ProtocolError,
                    "AUTH without enhanced authentication [MQTT-4.12.0-1]",
                ))
            }
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                return Err(BrokerError::protocol(
                    ReasonCode::ProtocolError,
                    "a packet only a server may send",
                ))
            }
        }
        Ok(None)
    }

    /// Resolves the topic of an incoming PUBLISH through its Topic Alias, if any.
    fn resolve_topic(&mut self, p: &mut Publish) -> Result<TopicName, BrokerError> {
        let Some(alias) = p.properties.topic_alias.take() else {
            return Ok(p.topic.clone());
        };
        if alias.get() > self.neg.alias_max {
            return Err(BrokerError::protocol(
                ReasonCode::TopicAliasInvalid,
                "topic alias above the Topic Alias Maximum [MQTT-3.3.2-9]",
            ));
        }
        if p.topic.is_empty() {
            let known = self.in_aliases.as_ref().and_then(|m| m.get(&alias.get()));
            known.cloned().ok_or_else(|| {
                BrokerError::protocol(ReasonCode::ProtocolError, "unknown topic alias")
            })
        } else {
            self.in_aliases
                .get_or_insert_default()
                .insert(alias.get(), p.topic.clone());
            Ok(p.topic.clone())
        }
    }

    fn on_publish(&mut self, mut p: Publish) -> Result<(), BrokerError> {
        self.state
            .stats
            .messages_received
            .fetch_add(1, Ordering::Relaxed);
        let topic = self.resolve_topic(&mut p)?;
        if !p.properties.subscription_identifiers.is_empty() {
            return Err(BrokerError::protocol(
                ReasonCode::ProtocolError,
                "subscription identifier in a client PUBLISH [MQTT-3.3.4-6]",
            ));
        }
        let qos_pid = p.qos_pid;
        if let QosPid::ExactlyOnce(pid) = qos_pid {
            let mut st = self.session.lock();
            if st.incoming_qos2.contains(&pid) {
                // A resend of a message already accepted: acknowledge, don't route twice.
                drop(st);
                return self.ack(qos_pid, ReasonCode::Success);
            }
            if st.incoming_qos2.len() >= usize::from(self.neg.receive_maximum) {
                return Err(BrokerError::protocol(
                    ReasonCode::ReceiveMaximumExceeded,
                    "more unreleased QoS 2 messages than Receive Maximum [MQTT-3.3.4-9]",
                ));
            }
            st.incoming_qos2.insert(pid);
        }
        if topic.as_str().split('/').next() == Some(SYS_LEVEL) {
            return self.ack(qos_pid, ReasonCode::NotAuthorized);
        }
        let message = Message::from_publish(p, topic, self.session.id);
        let outcome = self
            .state
            .router
            .publish_to(&self.routes, Arc::new(message));
        if let Some(session) = outcome.pressure {
            self.pause_for(session);
        }
        let reason = if outcome.retained_rejected {
            ReasonCode::QuotaExceeded
        } else if outcome.matched == 0 {
            ReasonCode::NoMatchingSubscribers
        } else {
            ReasonCode::Success
        };
        self.ack(qos_pid, reason)
    }

    /// PUBACK or PUBREC for an incoming PUBLISH (nothing for QoS 0).
    fn ack(&mut self, qos_pid: QosPid, reason: ReasonCode) -> Result<(), BrokerError> {
        let make = |pid: NonZeroU16| PubResponse {
            packet_id: pid,
            reason,
            properties: AckProperties::default(),
        };
        match qos_pid {
            QosPid::AtMostOnce => Ok(()),
            QosPid::AtLeastOnce(pid) => self.conn.queue(&Packet::PubAck(make(pid))),
            QosPid::ExactlyOnce(pid) => {
                if !reason.is_success() {
                    // A failed PUBREC ends the exchange; no PUBREL will follow.
                    self.session.lock().incoming_qos2.remove(&pid);
                }
                self.conn.queue(&Packet::PubRec(make(pid)))
            }
        }
    }

    fn on_pubrec(&mut self, r: PubResponse) -> Result<(), BrokerError> {
        let failed = !r.reason.is_success();
        let known = self.session.lock().on_pubrec(r.packet_id, failed);
        if failed {
            return Ok(());
        }
        let mut rel = PubResponse::success(r.packet_id);
        if !known {
            rel.reason = ReasonCode::PacketIdentifierNotFound;
        }
        self.conn.queue(&Packet::PubRel(rel))
    }

    fn on_pubrel(&mut self, r: PubResponse) -> Result<(), BrokerError> {
        let known = self.session.lock().incoming_qos2.remove(&r.packet_id);
        let mut comp = PubResponse::success(r.packet_id);
        if !known {
            comp.reason = ReasonCode::PacketIdentifierNotFound;
        }
        self.conn.queue(&Packet::PubComp(comp))
    }

    fn on_subscribe(&mut self, s: Subscribe) -> Result<(), BrokerError> {
        let tenant = self.session.key.tenant.clone();
        let id = s.properties.subscription_identifier;
        let now = Instant::now();
        let mut reasons = Vec::with_capacity(s.subscriptions.len());
        let mut retained = Vec::new();
        for sub in s.subscriptions {
            let stored = StoredSubscription {
                filter: sub.filter,
                options: sub.options,
                id,
            };
            let existed = self.state.router.subscribe(&tenant, &self.session, &stored);
            reasons.push(match sub.options.qos {
                QoS::AtMostOnce => ReasonCode::Success,
                QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
                QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
            });
            // Shared subscriptions never get retained messages (§4.8.2); otherwise
            // Retain Handling decides [MQTT-3.3.1-9], [MQTT-3.3.1-10], [MQTT-3.3.1-11].
            let send_retained = stored.filter.share_group().is_none()
                && match sub.options.retain_handling {
                    RetainHandling::SendAtSubscribe => true,
                    RetainHandling::SendIfNewSubscription => !existed,
                    RetainHandling::DoNotSend => false,
                };
            if send_retained {
                for m in self
                    .state
                    .router
                    .retained_matching(&tenant, stored.filter.filter(), now)
                {
                    retained.push(Delivery {
                        qos: m.qos.min(sub.options.qos),
                        message: m,
                        retain: true,
                        subscription_ids: id.into_iter().collect(),
                    });
                }
            }
            self.session
                .lock()
                .subscriptions
                .insert(Arc::from(stored.filter.as_str()), stored);
        }
        self.conn.queue(&Packet::SubAck(Box::new(SubAck {
            packet_id: s.packet_id,
            properties: AckProperties::default(),
            reasons,
        })))?;
        for d in retained {
            if self.session.enqueue(d, true).is_err() {
                self.state
                    .stats
                    .dropped_queue_full
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    fn on_unsubscribe(&mut self, u: Unsubscribe) -> Result<(), BrokerError> {
        let tenant = self.session.key.tenant.clone();
        let reasons = u
            .filters
            .iter()
            .map(|f| {
                self.session.lock().subscriptions.remove(f.as_str());
                if self.state.router.unsubscribe(&tenant, self.session.id, f) {
                    ReasonCode::Success
                } else {
                    ReasonCode::NoSubscriptionExisted
                }
            })
            .collect();
        self.conn.queue(&Packet::UnsubAck(Box::new(UnsubAck {
            packet_id: u.packet_id,
            properties: AckProperties::default(),
            reasons,
        })))
    }

    fn on_disconnect(&mut self, d: Disconnect) -> Result<End, BrokerError> {
        if let Some(expiry) = d.properties.session_expiry_interval {
            if self.neg.expiry_was_zero && expiry != 0 {
                return Err(BrokerError::protocol(
                    ReasonCode::ProtocolError,
                    "session expiry raised from 0 at DISCONNECT [MQTT-3.14.2-2]",
                ));
            }
            let max = self.state.config.session.max_expiry_secs;
            self.session.lock().expiry_interval = expiry.min(max);
        }
        Ok(End::Disconnect {
            with_will: d.reason == ReasonCode::DisconnectWithWillMessage,
        })
    }
}
