//! Sealing a store written without encryption (`messs storage encrypt`).
//!
//! With a key configured, a value stored in clear is an error when read (see
//! [`crate::crypto`]): otherwise anyone who can write the data directory could plant a
//! plaintext record — a superadmin's password hash, a device's — and have it trusted. A
//! store that ran without encryption is therefore sealed once, explicitly, on a stopped
//! broker: opened with a key ring that [`KeyRing::allowing_unsealed`] lets read clear values,
//! every record that carries a secret is read and written back sealed with the active key.
//! Values already sealed are sealed again under the active key (so the same run finishes a
//! key rotation). Each record is re-encoded by the code that owns its layout: messages
//! (retained, telemetry, shared, queued, wills) by their message tail, devices, JWT keys and admin
//! accounts through the registry's own encoders.
//!
//! [`KeyRing::allowing_unsealed`]: crate::KeyRing::allowing_unsealed

use rocksdb::IteratorMode;

use crate::error::StorageError;
use crate::record::Dec;
use crate::sessions::MessageRecord;
use crate::writer::{Batch, Op};
use crate::{keys, Cf, Store};

/// Records rewritten per batch.
const BATCH: usize = 512;

/// What a sealing run rewrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SealReport {
    /// Messages (retained, telemetry, queued, wills).
    pub messages: u64,
    /// Device records.
    pub devices: u64,
    /// JWT keys.
    pub jwt_keys: u64,
    /// Admin accounts.
    pub admins: u64,
}

impl Store {
    /// Rewrites every record that carries a secret or a payload sealed with the active key.
    /// Needs a key ring that allows unsealed values (the one the store was opened with).
    /// Ends with a full compaction, so the old copies in clear leave the disk too. Run it
    /// on a stopped broker's store. Blocking.
    pub fn seal_all(&self) -> Result<SealReport, StorageError> {
        if self.keys().is_none() {
            return Err(StorageError::Crypto(
                "sealing needs an encryption key (storage.encryption_key_file or storage.encryption_key_env)"
                    .into(),
            ));
        }
        let mut report = SealReport::default();
        for cf in [
            Cf::Retained,
            Cf::Telemetry,
            Cf::Messages,
            Cf::Queue,
            Cf::Sessions,
        ] {
            report.messages += self.reseal_messages(cf)?;
        }
        for tenant in self.tenants()? {
            let mut after: Option<String> = None;
            loop {
                let page = self.devices(&tenant.id, after.as_deref(), BATCH)?;
                for d in &page {
                    self.put_device(d, false)?;
                    report.devices += 1;
                }
                match page.last() {
                    Some(last) if page.len() == BATCH => after = Some(last.username.clone()),
                    _ => break,
                }
            }
            for k in self.jwt_keys(&tenant.id)? {
                self.put_jwt_key(&tenant.id, &k)?;
                report.jwt_keys += 1;
            }
        }
        for admin in self.admins()? {
            self.update_admin(&admin.username, |_| Ok(((), true)))?;
            report.admins += 1;
        }
        // The data directory's own secrets (`Store::local_secret`).
        let mut b = Batch::new();
        for (key, value) in self.scan(Cf::Meta, b"secret:", &[], usize::MAX)? {
            let plain = self.open_secret(&key, &value)?;
            b.push(Op::Put(
                Cf::Meta,
                key.to_vec(),
                self.seal_secret(&key, &plain)?,
            ));
        }
        self.write_now(b)?;
        // Recorded in the audit log; with an audit key (derived from the encryption key
        // unless one is set apart) this record is the first keyed one and signs the head:
        // the operator's explicit step is what adopts the older, hash-linked records.
        let unsigned = self.audit_unsigned_records();
        let detail = format!(
            "sealed {} messages, {} devices, {} JWT keys, {} admin accounts{}",
            report.messages,
            report.devices,
            report.jwt_keys,
            report.admins,
            unsigned.map_or(String::new(), |n| format!(
                "; audit records 1..={n} were written without the audit key"
            ))
        );
        drop(
            self.append_audit(&crate::audit::AuditEvent {
                time_ms: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                actor: "operator".into(),
                action: "storage.encrypt".into(),
                detail,
                tenant: None,
            })?,
        );
        // The values in clear are overwritten, not gone: a full compaction rewrites the
        // files that still hold them (after the writer has written everything).
        self.compact()?;
        Ok(report)
    }

    /// Re-seals the message of every record of `cf` that holds one.
    fn reseal_messages(&self, cf: Cf) -> Result<u64, StorageError> {
        let mut n = 0;
        let mut b = Batch::new();
        let mut in_batch = 0;
        for item in self.inner.db.iterator_cf(self.cf(cf)?, IteratorMode::Start) {
            let (key, value) = item?;
            let reference = match cf {
                Cf::Queue => self.reseal_queued_ref(&key, &value)?,
                _ => None,
            };
            if let Some(sealed) = reference {
                b.push(Op::Put(cf, key.to_vec(), sealed));
            } else {
                let Some(at) = message_offset(cf, &key, &value)? else {
                    continue;
                };
                let (head, tail) = value.split_at(at.min(value.len()));
                let message = MessageRecord::decode(cf.name(), self.keys(), &key, head, tail)?;
                let mut sealed = head.to_vec();
                sealed.extend_from_slice(&message.encode(self.keys(), &key, head)?);
                b.push(Op::Put(cf, key.to_vec(), sealed));
            }
            n += 1;
            in_batch += 1;
            if in_batch == BATCH {
                self.write_now(std::mem::take(&mut b))?;
                in_batch = 0;
            }
        }
        if in_batch > 0 {
            self.write_now(b)?;
        }
        Ok(n)
    }
}

/// Where the message record starts in a value of `cf`, if the value holds one.
fn message_offset(cf: Cf, key: &[u8], value: &[u8]) -> Result<Option<usize>, StorageError> {
    match cf {
        Cf::Retained | Cf::Telemetry | Cf::Messages => Ok(Some(0)),
        // [version][qos][retain][ids u16][ids u32 each] then the message (a reference to a
        // shared message is resealed before this is asked).
        Cf::Queue => {
            let (mut d, _) = Dec::new("queue", value)?;
            d.u8()?;
            d.u8()?;
            let ids = usize::from(d.u16()?);
            Ok(Some(5 + 4 * ids))
        }
        // A will: [version][due u64] then the message; nothing else there has one.
        Cf::Sessions => {
            let (_, _, rest) = keys::split_session_key(key)
                .ok_or_else(|| StorageError::corrupt("sessions", "undecodable key"))?;
            Ok((rest.first() == Some(&keys::tag::WILL)).then_some(9))
        }
        _ => Ok(None),
    }
}
