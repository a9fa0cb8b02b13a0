//! The audit log: append-only records, each holding the SHA-256 of the one before it, and
//! the newest record's hash kept in `meta` as the chain head. Changing, removing or
//! reordering any record breaks a link that [`Store::verify_audit`] reports.
//!
//! ```text
//! key    [seq u64]
//! value  [1][seq u64][time ms u64][previous hash 32][actor][action][detail]
//! ```

use std::sync::{Mutex, PoisonError};

use aws_lc_rs::digest::{digest, SHA256};
use rocksdb::{IteratorMode, DB};

use crate::error::StorageError;
use crate::record::{Dec, Enc};
use crate::writer::{Batch, Durable, Op, Ticket};
use crate::{Cf, Store};

const HEAD_KEY: &[u8] = b"audit_head";
const AUDIT_V1: u8 = 1;

/// Something to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// When it happened (Unix ms).
    pub time_ms: u64,
    /// Who did it (an admin, a device, `broker`).
    pub actor: String,
    /// What kind of event (`auth.failed`, `admin.login`, ...).
    pub action: String,
    /// Details, never secrets.
    pub detail: String,
}

/// A stored audit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Position in the chain, from 1.
    pub seq: u64,
    /// The event.
    pub event: AuditEvent,
}

/// The result of a verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditReport {
    /// Records checked.
    pub records: u64,
    /// The first broken link, if any.
    pub broken: Option<BrokenLink>,
}

/// Where the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenLink {
    /// Sequence number of the first record that fails.
    pub seq: u64,
    /// What is wrong.
    pub reason: String,
}

struct Head {
    next_seq: u64,
    last_hash: [u8; 32],
}

/// The chain's head, appended to under a lock so records are hashed and submitted in order.
pub(crate) struct Chain(Mutex<Head>);

fn hash(record: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, record).as_ref());
    out
}

fn decode_head(v: &[u8]) -> Result<Head, StorageError> {
    let mut d = Dec::raw("meta", v);
    let next_seq = d.u64()?;
    let mut last_hash = [0u8; 32];
    last_hash.copy_from_slice(
        v.get(8..40)
            .ok_or_else(|| StorageError::corrupt("meta", "audit head length"))?,
    );
    Ok(Head {
        next_seq,
        last_hash,
    })
}

impl Chain {
    pub(crate) fn load(db: &DB) -> Result<Self, StorageError> {
        let meta = db
            .cf_handle(Cf::Meta.name())
            .ok_or(StorageError::MissingColumnFamily(Cf::Meta.name()))?;
        let head = match db.get_cf(meta, HEAD_KEY)? {
            Some(v) => decode_head(&v)?,
            None => Head {
                next_seq: 1,
                last_hash: [0; 32],
            },
        };
        Ok(Chain(Mutex::new(head)))
    }
}

fn decode(value: &[u8]) -> Result<(AuditRecord, [u8; 32]), StorageError> {
    let (mut d, version) = Dec::new("audit", value)?;
    if version != AUDIT_V1 {
        return Err(d.error(format!("audit record version {version}")));
    }
    let seq = d.u64()?;
    let time_ms = d.u64()?;
    let mut prev = [0u8; 32];
    for b in &mut prev {
        *b = d.u8()?;
    }
    let actor = d.str()?.to_owned();
    let action = d.str()?.to_owned();
    let detail = d.str()?.to_owned();
    d.end()?;
    let event = AuditEvent {
        time_ms,
        actor,
        action,
        detail,
    };
    Ok((AuditRecord { seq, event }, prev))
}

impl Store {
    /// Appends an event; the returned future resolves once it is durable.
    pub fn append_audit(&self, event: &AuditEvent) -> Result<Durable, StorageError> {
        let mut head = self
            .inner
            .audit
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let seq = head.next_seq;
        let mut e = Enc::new(AUDIT_V1, 64 + event.detail.len());
        e.u64(seq).u64(event.time_ms);
        for b in head.last_hash {
            e.u8(b);
        }
        e.bytes(event.actor.as_bytes())?
            .bytes(event.action.as_bytes())?
            .bytes(event.detail.as_bytes())?;
        let record = e.finish();
        let h = hash(&record);
        let mut new_head = Enc::raw(40);
        new_head.u64(seq + 1).tail(&h);
        let mut b = Batch::new();
        b.push(Op::Put(Cf::Audit, seq.to_be_bytes().to_vec(), record));
        b.push(Op::Put(Cf::Meta, HEAD_KEY.to_vec(), new_head.finish()));
        let (ticket, durable) = Ticket::new();
        self.submit(b, Some(&ticket))?;
        head.next_seq = seq + 1;
        head.last_hash = h;
        Ok(durable)
    }

    /// Reads up to `limit` audit records from `from_seq`. Blocking.
    pub fn read_audit(
        &self,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StorageError> {
        let start = from_seq.to_be_bytes();
        let mut out = Vec::new();
        for item in self.inner.db.iterator_cf(
            self.cf(Cf::Audit)?,
            IteratorMode::From(&start, rocksdb::Direction::Forward),
        ) {
            if out.len() >= limit {
                break;
            }
            let (_, value) = item?;
            out.push(decode(&value)?.0);
        }
        Ok(out)
    }

    /// Walks the whole chain and reports the first broken link. Blocking.
    pub fn verify_audit(&self) -> Result<AuditReport, StorageError> {
        let db = &self.inner.db;
        let mut expected_seq = 1u64;
        let mut prev_hash = [0u8; 32];
        let mut records = 0u64;
        let broken = |records, seq, reason: &str| {
            Ok(AuditReport {
                records,
                broken: Some(BrokenLink {
                    seq,
                    reason: reason.to_owned(),
                }),
            })
        };
        for item in db.iterator_cf(self.cf(Cf::Audit)?, IteratorMode::Start) {
            let (key, value) = item?;
            let key_seq = <[u8; 8]>::try_from(&key[..]).map(u64::from_be_bytes).ok();
            if key_seq != Some(expected_seq) {
                return broken(records, expected_seq, "a record is missing or out of order");
            }
            let Ok((record, prev)) = decode(&value) else {
                return broken(records, expected_seq, "the record cannot be decoded");
            };
            if record.seq != expected_seq {
                return broken(
                    records,
                    expected_seq,
                    "the record's own sequence number was changed",
                );
            }
            if prev != prev_hash {
                // Record n-1 was changed (its hash no longer matches what n holds), or n's
                // link itself was.
                return broken(
                    records,
                    expected_seq.saturating_sub(1).max(1),
                    "the hash link does not match: this record or the one after it was changed",
                );
            }
            prev_hash = hash(&value);
            expected_seq += 1;
            records += 1;
        }
        let meta = self.cf(Cf::Meta)?;
        let head = match db.get_cf(meta, HEAD_KEY)? {
            Some(v) => decode_head(&v)?,
            None => Head {
                next_seq: 1,
                last_hash: [0; 32],
            },
        };
        if head.next_seq != expected_seq {
            return broken(
                records,
                expected_seq,
                "records at the end of the chain were removed",
            );
        }
        if head.last_hash != prev_hash {
            return broken(records, records, "the newest record was changed");
        }
        Ok(AuditReport {
            records,
            broken: None,
        })
    }
}
