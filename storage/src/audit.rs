//! The audit log: append-only records, each holding the link of the one before it, and
//! the newest record's link kept in `meta` as the chain head. Changing, removing or
//! reordering any record breaks a link that [`Store::verify_audit`] reports.
//!
//! ```text
//! key    [seq u64]
//! value  [version][seq u64][time ms u64][previous link 32][actor][action][detail]
//! ```
//!
//! A record's link is the HMAC-SHA256 of its bytes under the audit key (version 2), or,
//! with no key configured, their plain SHA-256 (version 1). Without the key nobody can
//! rewrite a keyed record and its successors so that they verify; a store that had no key
//! keeps its old records as an unkeyed prefix, and an unkeyed record after a keyed one is
//! a break.
//!
//! What no chain inside the store can show is a store rolled back to an older copy, or its
//! newest records cut off with the head rewritten to match: the rest is internally
//! consistent. So the head — the newest record's sequence number and link, [`AuditHead`] —
//! is meant to be copied out (the broker logs it, exports it as a metric and the admin API
//! serves it signed), and [`Store::verify_audit_against`] checks the store against such a
//! copy: a chain that ends before it, or holds another record at its position, was rolled
//! back.
//!
//! Retention ([`Store::prune_audit`]) drops the oldest records, never younger than a floor
//! (90 days by default), by age and by bytes. The chain stays verifiable from what is left:
//! the first kept record's sequence number and the link it holds (`prev`) are stored as the
//! anchor in `meta`, signed with the audit key when there is one, and the walk starts there.
//! Without a key, as for the records themselves, whoever can write the directory can forge
//! an anchor; with one they cannot.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use aws_lc_rs::digest::{digest, SHA256};
use aws_lc_rs::hmac;
use rocksdb::{IteratorMode, DB};

use crate::error::StorageError;
use crate::record::{Dec, Enc};
use crate::writer::{Batch, Durable, Op, Ticket};
use crate::{Cf, Store};

const HEAD_KEY: &[u8] = b"audit_head";
/// `[first kept seq u64][the link it holds 32]`, then a signature when keyed.
const ANCHOR_KEY: &[u8] = b"audit_anchor";
/// What signs the anchor (domain-separated from links and heads).
const ANCHOR_LABEL: &[u8] = b"messs audit anchor v1";
const AUDIT_V1: u8 = 1;
const AUDIT_KEYED: u8 = 2;

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
    /// The first record linked with the audit key (earlier ones are an unkeyed prefix);
    /// `None`: no keyed record.
    pub keyed_from: Option<u64>,
    /// The head the walk ended at.
    pub head: AuditHead,
}

/// The chain's head: the newest record's sequence number (0: no record) and its link.
/// Copied out of the store, it is what a rollback is detected against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditHead {
    /// Sequence number of the newest record.
    pub seq: u64,
    /// Its link (HMAC or hash).
    pub link: [u8; 32],
}

impl AuditHead {
    /// `SEQ:HEX`, the form it is exported and given back in.
    pub fn encode(&self) -> String {
        let hex: String = self.link.iter().map(|b| format!("{b:02x}")).collect();
        format!("{}:{hex}", self.seq)
    }

    /// Parses `SEQ:HEX`.
    pub fn parse(s: &str) -> Result<AuditHead, StorageError> {
        let bad = || StorageError::Invalid("an audit head is SEQ:64-HEX-DIGITS".into());
        let (seq, hex) = s.trim().split_once(':').ok_or_else(bad)?;
        let seq = seq.parse::<u64>().map_err(|_| bad())?;
        if hex.len() != 64 || !hex.is_ascii() {
            return Err(bad());
        }
        let mut link = [0u8; 32];
        for (i, b) in link.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(AuditHead { seq, link })
    }
}

/// How long the audit log is kept (see [`Store::prune_audit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditRetention {
    /// Records older than this (ms) are dropped; `None`: kept regardless of age.
    pub max_age_ms: Option<u64>,
    /// Beyond this many bytes the oldest records are dropped; `None`: no cap.
    pub max_bytes: Option<u64>,
    /// Records younger than this (ms) are kept whatever the caps say.
    pub keep_at_least_ms: u64,
}

/// What a retention run dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuditPruned {
    /// Records dropped.
    pub records: u64,
    /// Their bytes.
    pub bytes: u64,
    /// The first record kept (the chain's anchor), if any was dropped.
    pub first_kept: Option<u64>,
}

fn anchor_signature(key: &hmac::Key, first: u64, prev: &[u8; 32]) -> [u8; 32] {
    let mut data = Vec::with_capacity(ANCHOR_LABEL.len() + 40);
    data.extend_from_slice(ANCHOR_LABEL);
    data.extend_from_slice(&first.to_be_bytes());
    data.extend_from_slice(prev);
    mac(key, &data)
}

fn encode_anchor(key: Option<&hmac::Key>, first: u64, prev: &[u8; 32]) -> Vec<u8> {
    let mut e = Enc::raw(72);
    e.u64(first).tail(prev);
    if let Some(k) = key {
        e.tail(&anchor_signature(k, first, prev));
    }
    e.finish()
}

/// The first kept record's sequence number, the link it holds, and the anchor's signature.
type Anchor = (u64, [u8; 32], Option<[u8; 32]>);

/// The anchor: where the chain starts after retention, and the link that record holds.
fn decode_anchor(v: &[u8]) -> Result<Anchor, StorageError> {
    let bad = || StorageError::corrupt("meta", "audit anchor length");
    let first = u64::from_be_bytes(v.get(..8).and_then(|b| b.try_into().ok()).ok_or_else(bad)?);
    let prev: [u8; 32] = v
        .get(8..40)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(bad)?;
    let signature = match v.len() {
        40 => None,
        72 => Some(v[40..72].try_into().map_err(|_| bad())?),
        _ => return Err(bad()),
    };
    Ok((first, prev, signature))
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
    /// The MAC of the head under the audit key, when one was written.
    signature: Option<[u8; 32]>,
}

/// What signs the head kept in `meta` (domain-separated from record links and from the
/// exported head's signature).
const META_HEAD_LABEL: &[u8] = b"messs audit meta head v1";

fn head_signature(key: &hmac::Key, next_seq: u64, last: &[u8; 32]) -> [u8; 32] {
    let mut data = Vec::with_capacity(META_HEAD_LABEL.len() + 40);
    data.extend_from_slice(META_HEAD_LABEL);
    data.extend_from_slice(&next_seq.to_be_bytes());
    data.extend_from_slice(last);
    mac(key, &data)
}

/// `[next seq u64][last link 32]`, then the head's signature when keyed.
fn encode_head(key: Option<&hmac::Key>, next_seq: u64, last: &[u8; 32]) -> Vec<u8> {
    let mut e = Enc::raw(72);
    e.u64(next_seq).tail(last);
    if let Some(k) = key {
        e.tail(&head_signature(k, next_seq, last));
    }
    e.finish()
}

/// The chain's head, appended to under a lock so records are linked and submitted in
/// order, and the audit key (if one is configured).
pub(crate) struct Chain {
    head: Mutex<Head>,
    key: Option<hmac::Key>,
    /// Set by the writer when an audit record's write failed: the head in memory is then
    /// ahead of the disk. Every audit write still queued is dropped while it is set, and
    /// the next append reads the head back from the disk before it links a record.
    stale: Arc<AtomicBool>,
    /// `(records the head in meta counted, newest record held)` when the head was
    /// missing or older than the newest record at open, and the chain continued after
    /// the newest record instead.
    restored: Option<(u64, u64)>,
}

fn hash(record: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, record).as_ref());
    out
}

fn mac(key: &hmac::Key, data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(hmac::sign(key, data).as_ref());
    out
}

/// What signs an exported head (domain-separated from record links).
const HEAD_SIGNATURE_LABEL: &[u8] = b"messs audit head v1";

fn decode_head(v: &[u8]) -> Result<Head, StorageError> {
    let mut d = Dec::raw("meta", v);
    let next_seq = d.u64()?;
    let mut last_hash = [0u8; 32];
    last_hash.copy_from_slice(
        v.get(8..40)
            .ok_or_else(|| StorageError::corrupt("meta", "audit head length"))?,
    );
    let signature = match v.len() {
        40 => None,
        72 => {
            let mut sig = [0u8; 32];
            sig.copy_from_slice(&v[40..72]);
            Some(sig)
        }
        _ => return Err(StorageError::corrupt("meta", "audit head length")),
    };
    Ok(Head {
        next_seq,
        last_hash,
        signature,
    })
}

fn empty_head() -> Head {
    Head {
        next_seq: 1,
        last_hash: [0; 32],
        signature: None,
    }
}

impl Chain {
    pub(crate) fn load(db: &DB, key: Option<[u8; 32]>) -> Result<Self, StorageError> {
        let key = key.map(|k| hmac::Key::new(hmac::HMAC_SHA256, &k));
        let (head, restored) = read_head(db, key.as_ref())?;
        Ok(Chain {
            head: Mutex::new(head),
            key,
            stale: Arc::new(AtomicBool::new(false)),
            restored,
        })
    }

    fn link(&self, record: &[u8]) -> [u8; 32] {
        match &self.key {
            Some(k) => mac(k, record),
            None => hash(record),
        }
    }
}

/// The chain's head as the disk has it, and — when the head in `meta` is missing or older
/// than the newest record — `(records the head counted, newest record)`: the chain then
/// continues after the newest record.
fn read_head(db: &DB, key: Option<&hmac::Key>) -> Result<(Head, Option<(u64, u64)>), StorageError> {
    let meta = db
        .cf_handle(Cf::Meta.name())
        .ok_or(StorageError::MissingColumnFamily(Cf::Meta.name()))?;
    let mut head = match db.get_cf(meta, HEAD_KEY)? {
        Some(v) => decode_head(&v)?,
        None => empty_head(),
    };
    // Records and head are written in one batch, so a newest record beyond the head
    // means the head was removed or rolled back. Numbering from the head would
    // overwrite those records: continue after the newest one instead, linked to it.
    let audit = db
        .cf_handle(Cf::Audit.name())
        .ok_or(StorageError::MissingColumnFamily(Cf::Audit.name()))?;
    let mut restored = None;
    if let Some(item) = db.iterator_cf(audit, IteratorMode::End).next() {
        let (k, value) = item?;
        let newest = <[u8; 8]>::try_from(&k[..])
            .map(u64::from_be_bytes)
            .map_err(|_| StorageError::corrupt("audit", "record key length"))?;
        if newest >= head.next_seq {
            restored = Some((head.next_seq.saturating_sub(1), newest));
            let last_hash = match (value.first().copied(), key) {
                (Some(AUDIT_KEYED), Some(k)) => mac(k, &value),
                _ => hash(&value),
            };
            head = Head {
                next_seq: newest.saturating_add(1),
                last_hash,
                signature: None,
            };
        }
    }
    Ok((head, restored))
}

fn decode(value: &[u8]) -> Result<(AuditRecord, [u8; 32]), StorageError> {
    let (mut d, version) = Dec::new("audit", value)?;
    if version != AUDIT_V1 && version != AUDIT_KEYED {
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
    /// Appends an event; the returned future resolves once it is durable. Written as
    /// bookkeeping: refused (at once, the chain unchanged) below half the free-space
    /// watermark.
    pub fn append_audit(&self, event: &AuditEvent) -> Result<Durable, StorageError> {
        self.append_audit_as(event, false)
    }

    /// Appends an operator's security change (disabling a device, a revocation, a login):
    /// written from the reserved margin of free space (see [`crate::space`]).
    pub fn append_operator_audit(&self, event: &AuditEvent) -> Result<Durable, StorageError> {
        self.append_audit_as(event, true)
    }

    fn append_audit_as(&self, event: &AuditEvent, reserved: bool) -> Result<Durable, StorageError> {
        let chain = &self.inner.audit;
        let mut head = chain.head.lock().unwrap_or_else(PoisonError::into_inner);
        if chain.stale.load(Ordering::Acquire) {
            // A write failed after this head was linked: let the writer drop what is still
            // queued (the flag is still set), then link to what is on disk.
            self.inner.writer.wait_written()?;
            *head = read_head(&self.inner.db, chain.key.as_ref())?.0;
            chain.stale.store(false, Ordering::Release);
        }
        let seq = head.next_seq;
        let version = if chain.key.is_some() {
            AUDIT_KEYED
        } else {
            AUDIT_V1
        };
        let mut e = Enc::new(version, 64 + event.detail.len());
        e.u64(seq).u64(event.time_ms);
        for b in head.last_hash {
            e.u8(b);
        }
        e.bytes(event.actor.as_bytes())?
            .bytes(event.action.as_bytes())?
            .bytes(event.detail.as_bytes())?;
        let record = e.finish();
        let h = chain.link(&record);
        let new_head = encode_head(chain.key.as_ref(), seq + 1, &h);
        let mut b = Batch::new();
        b.push(Op::Put(Cf::Audit, seq.to_be_bytes().to_vec(), record));
        b.push(Op::Put(Cf::Meta, HEAD_KEY.to_vec(), new_head));
        b.flag_failure(chain.stale.clone());
        if reserved {
            b.mark_reserved();
        }
        let (ticket, durable) = Ticket::new();
        self.submit(b, Some(&ticket))?;
        head.next_seq = seq + 1;
        head.last_hash = h;
        head.signature = None; // what is in memory is trusted; only `meta`'s is checked
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

    /// `(records the stored head counted, newest record held)` when the head was missing
    /// or older than the newest record at open (removed or rolled back: records and head
    /// are written together): the chain went on after the newest record, overwriting
    /// nothing. The broker records it in the log it describes.
    pub fn audit_head_restored(&self) -> Option<(u64, u64)> {
        self.inner.audit.restored
    }

    /// The head as this process last wrote it.
    pub fn audit_head(&self) -> AuditHead {
        let head = self
            .inner
            .audit
            .head
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        AuditHead {
            seq: head.next_seq.saturating_sub(1),
            link: head.last_hash,
        }
    }

    /// Whether records are linked with an audit key.
    pub fn audit_keyed(&self) -> bool {
        self.inner.audit.key.is_some()
    }

    /// With an audit key configured, the number of records the store held when it was
    /// opened under a head the key did not sign: the key was just configured, or the log
    /// was rewritten by someone without it. The broker says so, in its log and in the
    /// audit log; `None`: nothing to say.
    pub fn audit_unsigned_records(&self) -> Option<u64> {
        let chain = &self.inner.audit;
        let key = chain.key.as_ref()?;
        if chain.restored.is_some() {
            // There was no head to sign: `audit_head_restored` says more.
            return None;
        }
        let head = chain.head.lock().unwrap_or_else(PoisonError::into_inner);
        let records = head.next_seq.saturating_sub(1);
        let signed = head
            .signature
            .is_some_and(|s| s == head_signature(key, head.next_seq, &head.last_hash));
        (records > 0 && !signed).then_some(records)
    }

    /// A signature of `head` under the audit key (`None` without one): whoever holds the
    /// key can check that a head copied out of the broker is one it wrote.
    pub fn sign_audit_head(&self, head: &AuditHead) -> Option<[u8; 32]> {
        let key = self.inner.audit.key.as_ref()?;
        let mut data = Vec::with_capacity(HEAD_SIGNATURE_LABEL.len() + 40);
        data.extend_from_slice(HEAD_SIGNATURE_LABEL);
        data.extend_from_slice(&head.seq.to_be_bytes());
        data.extend_from_slice(&head.link);
        Some(mac(key, &data))
    }

    /// Walks the whole chain and reports the first broken link. Blocking.
    pub fn verify_audit(&self) -> Result<AuditReport, StorageError> {
        self.verify_audit_against(None)
    }

    /// As [`Store::verify_audit`], and checks the chain against a head exported earlier:
    /// the chain must reach it and hold the same record there. Blocking.
    pub fn verify_audit_against(
        &self,
        exported: Option<&AuditHead>,
    ) -> Result<AuditReport, StorageError> {
        let db = &self.inner.db;
        let chain = &self.inner.audit;
        let mut expected_seq = 1u64;
        let mut prev_hash = [0u8; 32];
        let mut records = 0u64;
        let mut keyed_from = None;
        let mut at_exported = None;
        // After retention the walk starts at the anchor (checked against the audit key).
        if let Some(v) = db.get_cf(self.cf(Cf::Meta)?, ANCHOR_KEY)? {
            let (first, prev, signature) = decode_anchor(&v)?;
            if let Some(k) = &chain.key {
                if signature != Some(anchor_signature(k, first, &prev)) {
                    return Ok(AuditReport {
                        records: 0,
                        broken: Some(BrokenLink {
                            seq: first,
                            reason: "the retention anchor is not signed with the audit key: \
                                     older records were removed by someone without it"
                                .to_owned(),
                        }),
                        keyed_from: None,
                        head: AuditHead { seq: 0, link: prev },
                    });
                }
            }
            expected_seq = first;
            prev_hash = prev;
            records = first.saturating_sub(1);
        }
        let report = |records, seq, reason: &str, keyed_from, prev_hash| {
            Ok(AuditReport {
                records,
                broken: Some(BrokenLink {
                    seq,
                    reason: reason.to_owned(),
                }),
                keyed_from,
                head: AuditHead {
                    seq: records,
                    link: prev_hash,
                },
            })
        };
        for item in db.iterator_cf(self.cf(Cf::Audit)?, IteratorMode::Start) {
            let (key, value) = item?;
            let key_seq = <[u8; 8]>::try_from(&key[..]).map(u64::from_be_bytes).ok();
            if key_seq != Some(expected_seq) {
                let why = "a record is missing or out of order";
                return report(records, expected_seq, why, keyed_from, prev_hash);
            }
            let Ok((record, prev)) = decode(&value) else {
                let why = "the record cannot be decoded";
                return report(records, expected_seq, why, keyed_from, prev_hash);
            };
            if record.seq != expected_seq {
                let why = "the record's own sequence number was changed";
                return report(records, expected_seq, why, keyed_from, prev_hash);
            }
            if prev != prev_hash {
                // Record n-1 was changed (its link no longer matches what n holds), or n's
                // link itself was.
                let why = "the link does not match: this record or the one after it was changed";
                let at = expected_seq.saturating_sub(1).max(1);
                return report(records, at, why, keyed_from, prev_hash);
            }
            prev_hash = match (value.first().copied(), &chain.key) {
                (Some(AUDIT_KEYED), Some(k)) => {
                    keyed_from.get_or_insert(expected_seq);
                    mac(k, &value)
                }
                (Some(AUDIT_KEYED), None) => {
                    let why = "the record is linked with an audit key and none is configured \
                               (storage.audit_key_file, or the encryption key it is derived from)";
                    return report(records, expected_seq, why, keyed_from, prev_hash);
                }
                _ if keyed_from.is_some() => {
                    let why = "an unkeyed record after keyed ones: written without the audit key";
                    return report(records, expected_seq, why, keyed_from, prev_hash);
                }
                _ => hash(&value),
            };
            if exported.is_some_and(|h| h.seq == expected_seq) {
                at_exported = Some(prev_hash);
            }
            expected_seq += 1;
            records += 1;
        }
        let meta = self.cf(Cf::Meta)?;
        let head = match db.get_cf(meta, HEAD_KEY)? {
            Some(v) => decode_head(&v)?,
            None => empty_head(),
        };
        if let Some(k) = &chain.key {
            let signed = head
                .signature
                .is_some_and(|s| s == head_signature(k, head.next_seq, &head.last_hash));
            if records > 0 && !signed {
                let why = "the head is not signed with the audit key: the log was last written \
                           without it (rewritten, or the key was only just configured: a broker \
                           start signs it and records that it did)";
                return report(records, records, why, keyed_from, prev_hash);
            }
        }
        if head.next_seq != expected_seq {
            let why = "records at the end of the chain were removed";
            return report(records, expected_seq, why, keyed_from, prev_hash);
        }
        if head.last_hash != prev_hash {
            let why = "the newest record was changed";
            return report(records, records, why, keyed_from, prev_hash);
        }
        if let Some(h) = exported.filter(|h| h.seq > 0) {
            match at_exported {
                None => {
                    let why = format!(
                        "the chain ends at record {records}, but an exported head showed record {}: \
                         newer records were removed or the store was rolled back",
                        h.seq
                    );
                    return report(records, records + 1, &why, keyed_from, prev_hash);
                }
                Some(link) if link != h.link => {
                    let why = "this record is not the one the exported head showed: the chain \
                               was rolled back and written again";
                    return report(records, h.seq, why, keyed_from, prev_hash);
                }
                Some(_) => {}
            }
        }
        Ok(AuditReport {
            records,
            broken: None,
            keyed_from,
            head: AuditHead {
                seq: records,
                link: prev_hash,
            },
        })
    }
}

impl Store {
    /// Drops the oldest audit records that `policy` no longer keeps (never one younger than
    /// `keep_at_least_ms` before `now_ms`), and moves the chain's anchor to the first one
    /// kept, in one write: the chain stays verifiable from there. The newest record is
    /// always kept. Written from the reserved margin (it frees space). Blocking. Returns
    /// what was dropped.
    pub fn prune_audit(
        &self,
        policy: &AuditRetention,
        now_ms: u64,
    ) -> Result<AuditPruned, StorageError> {
        if policy.max_age_ms.is_none() && policy.max_bytes.is_none() {
            return Ok(AuditPruned::default());
        }
        let floor = now_ms.saturating_sub(policy.keep_at_least_ms);
        let age_cut = policy
            .max_age_ms
            .map_or(0, |age| now_ms.saturating_sub(age))
            .min(floor);
        let db = &self.inner.db;
        let cf = self.cf(Cf::Audit)?;
        // Bytes held (one pass over the values' sizes: the log is read at most once a
        // retention interval, and dropping is what keeps it short).
        let total: u64 = match policy.max_bytes {
            Some(_) => {
                let mut total = 0u64;
                for item in db.iterator_cf(cf, IteratorMode::Start) {
                    total += item?.1.len() as u64;
                }
                total
            }
            None => 0,
        };
        let over = policy.max_bytes.map_or(0, |cap| total.saturating_sub(cap));
        let mut pruned = AuditPruned::default();
        let mut b = Batch::new();
        let mut anchor = None;
        let mut records = db.iterator_cf(cf, IteratorMode::Start).peekable();
        while let Some(item) = records.next() {
            let (key, value) = item?;
            let (record, prev) = decode(&value)?;
            let t = record.event.time_ms;
            let too_old = t < age_cut;
            let too_many = pruned.bytes < over && t < floor;
            // The newest record is always kept: it is the anchor if all else goes, and
            // records appended meanwhile link to it.
            let newest = records.peek().is_none();
            if (!too_old && !too_many) || newest {
                anchor = Some((record.seq, prev));
                break;
            }
            b.push(Op::Delete(Cf::Audit, key.to_vec()));
            pruned.records += 1;
            pruned.bytes += value.len() as u64;
        }
        let Some((first, prev)) = anchor.filter(|_| pruned.records > 0) else {
            return Ok(AuditPruned::default());
        };
        let chain = &self.inner.audit;
        b.push(Op::Put(
            Cf::Meta,
            ANCHOR_KEY.to_vec(),
            encode_anchor(chain.key.as_ref(), first, &prev),
        ));
        // Mostly deletes, and the anchor that must go with them: from the reserved margin.
        self.write_now_reserved(b)?;
        pruned.first_kept = Some(first);
        Ok(pruned)
    }
}
