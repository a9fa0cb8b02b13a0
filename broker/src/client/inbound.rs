//! Packets from the client after CONNECT: PUBLISH and its acks, SUBSCRIBE, UNSUBSCRIBE,
//! PINGREQ, DISCONNECT. Each handler checks the rule it owns and queues its answer; a
//! violation returns an error carrying the reason code the connection closes with.

use std::num::NonZeroU16;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use messs_codec::{
    AckProperties, Disconnect, Packet, PubResponse, Publish, QoS, QosPid, ReasonCode,
    RetainHandling, SubAck, Subscribe, TopicFilter, TopicName, UnsubAck, Unsubscribe,
};

use super::acks::Undo;
use super::{aliases, ClientCore, End};
use crate::admission::{topic_levels, Refused, Source};
use crate::clock::Now;
use crate::error::BrokerError;
use crate::message::Message;
use crate::persist::AckTicket;
use crate::session::{AckMatch, StoredSubscription};

/// The violation for an acknowledgement of the wrong type for its packet id (3.1.1 closes
/// the connection [MQTT-4.8.0-1]; v5 calls it a Protocol Error).
fn wrong_ack(name: &'static str) -> BrokerError {
    BrokerError::protocol(ReasonCode::ProtocolError, name)
}

impl ClientCore {
    /// Handles one packet; `Some(end)` when the connection should end.
    pub(super) fn handle_packet(
        &mut self,
        packet: Packet,
        now: Now,
    ) -> Result<Option<End>, BrokerError> {
        match packet {
            Packet::Publish(p) => self.on_publish(*p, now)?,
            Packet::PubAck(r) => {
                if self.session.lock().on_puback(r.packet_id) == AckMatch::WrongType {
                    return Err(wrong_ack("PUBACK for a message not sent at QoS 1"));
                }
            }
            Packet::PubRec(r) => self.on_pubrec(r)?,
            Packet::PubRel(r) => self.on_pubrel(r)?,
            Packet::PubComp(r) => {
                if self.session.lock().on_pubcomp(r.packet_id) == AckMatch::WrongType {
                    return Err(wrong_ack("PUBCOMP for a message not released at QoS 2"));
                }
            }
            Packet::Subscribe(s) => self.on_subscribe(*s)?,
            Packet::Unsubscribe(u) => self.on_unsubscribe(*u)?,
            Packet::PingReq => self.frames.queue(&Packet::PingResp)?,
            Packet::Disconnect(d) => return self.on_disconnect(d).map(Some),
            Packet::Connect(_) => {
                return Err(BrokerError::protocol(
                    ReasonCode::ProtocolError,
                    "second CONNECT [MQTT-3.1.0-2]",
                ))
            }
            Packet::Auth(_)
                if self.access.identity.method == crate::security::auth::Method::Scram =>
            {
                // Re-authentication [MQTT-4.12.1] is not offered: the connection ends, and
                // the device logs in again with a new CONNECT.
                return Err(BrokerError::protocol(
                    ReasonCode::ImplementationSpecificError,
                    "re-authentication is not supported",
                ));
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
            let known = self.in_aliases.as_ref().and_then(|m| m.get(alias.get()));
            known.cloned().ok_or_else(|| {
                BrokerError::protocol(ReasonCode::ProtocolError, "unknown topic alias")
            })
        } else {
            let max = self.state.config.limits.max_topic_alias_bytes;
            let stats = &self.state.stats;
            self.in_aliases
                .get_or_insert_with(|| Box::new(aliases::Inbound::new(max, stats.clone())))
                .set(alias.get(), p.topic.clone())
                .map_err(|aliases::OverQuota| {
                    BrokerError::protocol(
                        ReasonCode::QuotaExceeded,
                        "topic aliases hold more than limits.max_topic_alias_bytes",
                    )
                })?;
            Ok(p.topic.clone())
        }
    }

    fn on_publish(&mut self, mut p: Publish, now: Now) -> Result<(), BrokerError> {
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
        // The acknowledgement waits for whatever this publish stores (QoS 0 never waits).
        let mut store_ack = AckTicket::new(qos_pid != QosPid::AtMostOnce && self.state.acks_wait());
        if let QosPid::ExactlyOnce(pid) = qos_pid {
            let mut st = self.session.lock();
            if st.has_incoming_qos2(pid) {
                // A resend of a message already accepted: acknowledge, don't route twice.
                drop(st);
                return self.ack(qos_pid, ReasonCode::Success, None);
            }
            let ticket = if self.session.is_durable() {
                store_ack.get()
            } else {
                None
            };
            if !st.add_incoming_qos2(pid, usize::from(self.neg.receive_maximum), ticket) {
                return Err(BrokerError::protocol(
                    ReasonCode::ReceiveMaximumExceeded,
                    "more unreleased QoS 2 messages than Receive Maximum [MQTT-3.3.4-9]",
                ));
            }
        }
        let message = Message::from_publish(p, topic, self.session.id, now.unix_ms);
        let published = self.state.admission.publish(
            &self.session.key.tenant,
            &self.routes,
            Source::Client,
            Arc::new(message),
            &mut store_ack,
            Some(&mut self.access),
        );
        let outcome = match published {
            Ok(outcome) => outcome,
            Err(Refused::ReservedTopic | Refused::NotAuthorized) => {
                // 3.1.1 has no way to say so: the acknowledgement is positive and the
                // message is dropped [MQTT-3.3.5-2].
                return self.ack(qos_pid, ReasonCode::NotAuthorized, store_ack.finish());
            }
            Err(Refused::TooDeep) => {
                return Err(BrokerError::protocol(
                    ReasonCode::TopicNameInvalid,
                    "topic name has more levels than the broker allows",
                ))
            }
        };
        if let Some(session) = outcome.pressure {
            self.pause_for(session, now);
        }
        self.pass_work = self
            .pass_work
            .saturating_add(u32::try_from(outcome.matched).unwrap_or(u32::MAX));
        let reason = if outcome.retained_rejected {
            ReasonCode::QuotaExceeded
        } else if outcome.matched == 0 {
            ReasonCode::NoMatchingSubscribers
        } else {
            ReasonCode::Success
        };
        self.ack(qos_pid, reason, store_ack.finish())
    }

    /// PUBACK or PUBREC for an incoming PUBLISH (nothing for QoS 0), sent once `wait` (the
    /// writes the message needed) is durable.
    fn ack(
        &mut self,
        qos_pid: QosPid,
        reason: ReasonCode,
        wait: Option<messs_storage::Durable>,
    ) -> Result<(), BrokerError> {
        let make = |pid: NonZeroU16| PubResponse {
            packet_id: pid,
            reason,
            properties: AckProperties::default(),
        };
        match qos_pid {
            QosPid::AtMostOnce => Ok(()),
            QosPid::AtLeastOnce(pid) => self.send_ack(Packet::PubAck(make(pid)), wait),
            QosPid::ExactlyOnce(pid) => {
                if !reason.is_success() {
                    // A failed PUBREC ends the exchange; no PUBREL will follow.
                    self.session.lock().release_incoming_qos2(pid, None);
                }
                self.send_ack(Packet::PubRec(make(pid)), wait)
            }
        }
    }

    fn on_pubrec(&mut self, r: PubResponse) -> Result<(), BrokerError> {
        let failed = !r.reason.is_success();
        // PUBREL waits until the release is stored (see `SessionState::on_pubrec`).
        let mut store_ack = AckTicket::new(self.session.is_durable());
        let matched = self
            .session
            .lock()
            .on_pubrec(r.packet_id, failed, store_ack.get());
        if matched == AckMatch::WrongType {
            return Err(wrong_ack("PUBREC for a message not sent at QoS 2"));
        }
        if failed {
            return Ok(());
        }
        let mut rel = PubResponse::success(r.packet_id);
        if matched == AckMatch::Unknown {
            rel.reason = ReasonCode::PacketIdentifierNotFound;
        }
        self.send_ack(Packet::PubRel(rel), store_ack.finish())
    }

    fn on_pubrel(&mut self, r: PubResponse) -> Result<(), BrokerError> {
        // PUBCOMP waits until the release is stored: a packet id still stored as unreleased
        // after a restart would make the broker drop the client's next message with it.
        let mut store_ack = AckTicket::new(self.state.acks_wait() && self.session.is_durable());
        let known = self
            .session
            .lock()
            .release_incoming_qos2(r.packet_id, store_ack.get());
        let mut comp = PubResponse::success(r.packet_id);
        if !known {
            comp.reason = ReasonCode::PacketIdentifierNotFound;
        }
        let undo = known.then_some(Undo::Released(r.packet_id));
        self.send_ack_or_undo(Packet::PubComp(comp), store_ack.finish(), undo)
    }

    /// Closes the connection if a filter is deeper than `max_topic_levels`.
    fn check_filter_depth(&self, filter: &TopicFilter) -> Result<(), BrokerError> {
        if topic_levels(filter.filter()) > self.state.config.limits.max_topic_levels {
            return Err(BrokerError::protocol(
                ReasonCode::TopicFilterInvalid,
                "topic filter has more levels than the broker allows",
            ));
        }
        Ok(())
    }

    fn on_subscribe(&mut self, s: Subscribe) -> Result<(), BrokerError> {
        for sub in &s.subscriptions {
            self.check_filter_depth(&sub.filter)?;
        }
        let id = s.properties.subscription_identifier;
        let mut reasons = Vec::with_capacity(s.subscriptions.len());
        let mut store_ack = AckTicket::new(self.state.acks_wait() && self.session.is_durable());
        // What each granted filter replaced, to undo if the writes fail.
        let mut granted = Vec::new();
        self.refresh_access();
        for sub in s.subscriptions {
            // Every topic the filter can match must be allowed (a `$share/group/` prefix
            // changes who gets a message, not which messages).
            if !self
                .access
                .acl()
                .may_subscribe(sub.filter.filter(), sub.options.qos)
            {
                self.state
                    .admission
                    .acl_denied(&mut self.access, "subscribe", sub.filter.as_str());
                reasons.push(ReasonCode::NotAuthorized);
                continue;
            }
            // The tenant's quota on subscriptions (replacing one of the session's own
            // always works).
            let tenant_max = self.access.identity.tenant.limits().max_subscriptions;
            if tenant_max > 0
                && !crate::security::limits::tenant::below(
                    tenant_max,
                    self.routes.subscription_count(),
                )
                && !self.session.lock().has_subscription(sub.filter.as_str())
            {
                self.state
                    .stats
                    .tenant_quota_refusals
                    .fetch_add(1, Ordering::Relaxed);
                reasons.push(ReasonCode::QuotaExceeded);
                continue;
            }
            let stored = StoredSubscription {
                filter: sub.filter,
                options: sub.options,
                id,
            };
            let added = self.state.sessions.subscribe(
                &self.session,
                &self.routes,
                stored.clone(),
                store_ack.get(),
            );
            let existed = match added {
                Ok(replaced) => {
                    let existed = replaced.is_some();
                    granted.push((stored.filter.clone(), replaced));
                    existed
                }
                Err(refused) => {
                    tracing::debug!(client_id = %self.session.key.client_id, ?refused, "subscription refused");
                    self.state
                        .stats
                        .subscriptions_refused
                        .fetch_add(1, Ordering::Relaxed);
                    reasons.push(ReasonCode::QuotaExceeded);
                    continue;
                }
            };
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
                self.schedule_replay(stored.filter, sub.options.qos, id);
            }
        }
        let suback = Packet::SubAck(Box::new(SubAck {
            packet_id: s.packet_id,
            properties: AckProperties::default(),
            reasons,
        }));
        self.send_ack_or_undo(suback, store_ack.finish(), Some(Undo::Subscribed(granted)))
    }

    fn on_unsubscribe(&mut self, u: Unsubscribe) -> Result<(), BrokerError> {
        for f in &u.filters {
            self.check_filter_depth(f)?;
        }
        let mut reasons = Vec::with_capacity(u.filters.len());
        let mut store_ack = AckTicket::new(self.state.acks_wait() && self.session.is_durable());
        let mut removed_subs = Vec::new();
        for f in &u.filters {
            self.cancel_replay(f.as_str());
            let had =
                self.state
                    .sessions
                    .unsubscribe(&self.session, &self.routes, f, store_ack.get());
            let had = match had {
                Some(sub) => {
                    removed_subs.push(sub);
                    true
                }
                None => false,
            };
            reasons.push(if had {
                ReasonCode::Success
            } else {
                ReasonCode::NoSubscriptionExisted
            });
        }
        if self.access.check_deliveries {
            // The subscription that was not wholly allowed may be gone.
            self.recheck_subscriptions();
        }
        let unsuback = Packet::UnsubAck(Box::new(UnsubAck {
            packet_id: u.packet_id,
            properties: AckProperties::default(),
            reasons,
        }));
        let undo = Some(Undo::Unsubscribed(removed_subs));
        self.send_ack_or_undo(unsuback, store_ack.finish(), undo)
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
            self.session.lock().set_expiry_interval(expiry.min(max));
        }
        Ok(End::Disconnect {
            with_will: d.reason == ReasonCode::DisconnectWithWillMessage,
        })
    }
}
