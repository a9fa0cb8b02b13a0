//! Retained messages, one per tenant and topic: `[tenant prefix][topic]`.

use crate::error::StorageError;
use crate::keys;
use crate::sessions::MessageRecord;
use crate::writer::{Batch, Op};
use crate::{Cf, Store};

/// A record moved to the quarantine at start-up: its tenant, and why it could not be read.
pub type Quarantined = (String, String);

/// A retained message read at start-up.
#[derive(Debug, Clone)]
pub struct LoadedRetained {
    /// Tenant.
    pub tenant: String,
    /// The message; its payload is empty when `payload_on_disk` (see
    /// [`Store::load_retained`]).
    pub message: MessageRecord,
    /// The payload was larger than the inline limit and was left on disk: read it with
    /// [`Store::read_retained`] when it is delivered.
    pub payload_on_disk: bool,
    /// Size of the payload in bytes (also when left on disk).
    pub payload_len: usize,
}

impl Store {
    fn retained_key(tenant: &str, topic: &str) -> Result<Vec<u8>, StorageError> {
        Ok(keys::join(&keys::tenant_prefix(tenant)?, topic.as_bytes()))
    }

    /// Stores (or replaces) the retained message of its topic.
    pub fn put_retained(
        &self,
        b: &mut Batch,
        tenant: &str,
        m: &MessageRecord,
    ) -> Result<(), StorageError> {
        let key = Self::retained_key(tenant, &m.topic)?;
        let value = m.encode(self.keys(), &key, &[])?;
        b.push(Op::Put(Cf::Retained, key, value));
        b.mark_new_data();
        Ok(())
    }

    /// Deletes the retained message of `topic`.
    pub fn delete_retained(
        &self,
        b: &mut Batch,
        tenant: &str,
        topic: &str,
    ) -> Result<(), StorageError> {
        b.push(Op::Delete(Cf::Retained, Self::retained_key(tenant, topic)?));
        Ok(())
    }

    /// Reads one retained message. Blocking.
    pub fn read_retained(
        &self,
        tenant: &str,
        topic: &str,
    ) -> Result<Option<MessageRecord>, StorageError> {
        let key = Self::retained_key(tenant, topic)?;
        match self.inner.db.get_pinned_cf(self.cf(Cf::Retained)?, &key)? {
            Some(v) => MessageRecord::decode("retained", self.keys(), &key, &[], &v).map(Some),
            None => Ok(None),
        }
    }

    /// Reads every retained message (start-up). Payloads larger than `max_inline` bytes are
    /// not kept: memory holds the topic tree and small payloads. A record that cannot be
    /// read (a missing key, altered clear fields) is moved to the quarantine and returned
    /// as `(tenant, error)` in the second list: one bad record must not stop the broker.
    /// Blocking.
    pub fn load_retained(
        &self,
        max_inline: usize,
    ) -> Result<(Vec<LoadedRetained>, Vec<Quarantined>), StorageError> {
        let mut out = Vec::new();
        let mut quarantined = Vec::new();
        let mut moves = Batch::new();
        for item in self
            .inner
            .db
            .iterator_cf(self.cf(Cf::Retained)?, rocksdb::IteratorMode::Start)
        {
            let (key, value) = item?;
            let (tenant, _) = keys::split_tenant_key(&key)
                .ok_or_else(|| StorageError::corrupt("retained", "undecodable key"))?;
            let mut message =
                match MessageRecord::decode("retained", self.keys(), &key, &[], &value) {
                    Ok(m) => m,
                    Err(e) => {
                        self.quarantine(&mut moves, Cf::Retained, &key, &value);
                        quarantined.push((tenant.to_owned(), e.to_string()));
                        continue;
                    }
                };
            let payload_len = message.payload.len();
            let payload_on_disk = payload_len > max_inline;
            if payload_on_disk {
                message.payload = bytes::Bytes::new();
            }
            out.push(LoadedRetained {
                tenant: tenant.to_owned(),
                message,
                payload_on_disk,
                payload_len,
            });
        }
        self.submit(moves, None)?;
        Ok((out, quarantined))
    }
}
