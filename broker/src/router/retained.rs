//! The retained messages of one tenant: the last retained message per topic (spec §3.3.1.3),
//! bounded in count.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use messs_codec::{topic_matches, TopicName};

use crate::message::Message;

/// Retained messages keyed by topic.
pub(crate) struct RetainedStore {
    messages: HashMap<TopicName, Arc<Message>>,
    max: usize,
}

/// The store is at its limit and the topic is new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RetainedFull;

impl RetainedStore {
    pub fn new(max: usize) -> Self {
        RetainedStore {
            messages: HashMap::new(),
            max,
        }
    }

    /// Stores, replaces, or (empty payload) deletes the retained message of a topic
    /// [MQTT-3.3.1-6], [MQTT-3.3.1-10].
    pub fn set(&mut self, message: Arc<Message>) -> Result<(), RetainedFull> {
        if message.payload.is_empty() {
            self.messages.remove(&message.topic);
            return Ok(());
        }
        if self.messages.len() >= self.max && !self.messages.contains_key(&message.topic) {
            return Err(RetainedFull);
        }
        self.messages.insert(message.topic.clone(), message);
        Ok(())
    }

    /// The unexpired retained messages matching a filter.
    pub fn matching(&self, filter: &str, now: Instant) -> Vec<Arc<Message>> {
        self.messages
            .values()
            .filter(|m| !m.is_expired(now) && topic_matches(filter, m.topic.as_str()))
            .cloned()
            .collect()
    }

    /// Drops expired messages; returns how many.
    pub fn purge_expired(&mut self, now: Instant) -> usize {
        let before = self.messages.len();
        self.messages.retain(|_, m| !m.is_expired(now));
        before - self.messages.len()
    }
}
