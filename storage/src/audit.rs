//! The audit log: append-only records, each holding the link of the one before it, and
//! the newest record's link kept in `meta` as the chain head. Changing, removing or
//! reordering any record breaks a link that [`Store::verify_audit`] reports.
//!
//! ```text
//! key    [seq u64]
//! value  v1/v2  [version][seq u64][time ms u64][previous link 32][actor][action][detail]
//!        v3/v4  [version][seq u64][time ms u64][previous link 32][tenant][action]
//!               [details digest 32] [details present u8]([actor][detail])
//! ```
//!
//! A record's link is the HMAC-SHA256 under the audit key (versions 2 and 4), or, with no
//! key configured, the plain SHA-256 (versions 1 and 3), of its bytes — for versions 3 and
//! 4, of its header: everything up to the digest of its details (actor and detail). So a
//! tenant's retention can drop a record's details (*redact* it) and the chain still
//! verifies: the header, with the details' digest, stays, and details still present must
//! match their digest. Without the key nobody can rewrite a keyed record and its successors
//! so that they verify; a store that had no key keeps its old records as an unkeyed prefix,
//! and an unkeyed record after a keyed one is a break. Versions 1 and 2 are read, never
//! written any more.
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
//! (90 days by default), by age and by bytes; then, per tenant, it redacts the records of
//! tenants with their own age or byte caps (never younger than the same floor). The chain stays verifiable from what is left:
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
/// Redactable records (see the module header), unkeyed and keyed.
const AUDIT_V3: u8 = 3;
const AUDIT_KEYED_V4: u8 = 4;
/// Redactions written per batch while a retention run goes through the log.
const REDACT_BATCH: usize = 1024;

/// Something to record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditEvent {
    /// When it happened (Unix ms).
    pub time_ms: u64,
    /// The tenant it concerns, if one: that tenant's audit retention applies to it.
    pub tenant: Option<String>,
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
    /// Its details (actor and detail, empty now) were dropped by its tenant's retention;
    /// its time, tenant and action remain, and its link still verifies.
    pub redacted: bool,
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

/// A tenant's own audit retention: its records' details go past either cap (never one
/// younger than the broker-wide floor, [`AuditRetention::keep_at_least_ms`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TenantAuditRetention {
    /// Details older than this (ms) are dropped; `None`: kept regardless of age.
    pub max_age_ms: Option<u64>,
    /// Beyond this many bytes of the tenant's details the oldest are dropped.
    pub max_bytes: Option<u64>,
}

impl TenantAuditRetention {
    fn is_off(&self) -> bool {
        self.max_age_ms.is_none() && self.max_bytes.is_none()
    }
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
    /// Records whose details a tenant's retention dropped.
    pub redacted: u64,
    /// The bytes that freed.
    pub redacted_bytes: u64,
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
            // A record that cannot be decoded is linked over all its bytes (as before the
            // redactable formats): the verify reports it, the store still opens.
            let linked_len = decode(&value).map_or(value.len(), |d| d.linked_len);
            let linked = &value[..linked_len];
            let last_hash = match (value.first().copied(), key) {
                (Some(AUDIT_KEYED | AUDIT_KEYED_V4), Some(k)) => mac(k, linked),
                _ => hash(linked),
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

/// One stored record, read.
struct Decoded {
    record: AuditRecord,
    /// The link it holds (its predecessor's).
    prev: [u8; 32],
    /// The bytes its own link covers: the whole record (v1, v2) or its header (v3, v4).
    linked_len: usize,
    /// v3, v4: the digest of its details, and where they start when present.
    details: Option<([u8; 32], Option<usize>)>,
}

impl Decoded {
    /// Whether its details are missing or match their digest.
    fn details_intact(&self, value: &[u8]) -> bool {
        match self.details {
            Some((digest, Some(start))) => value.get(start..).is_some_and(|d| hash(d) == digest),
            _ => true,
        }
    }
}

fn decode(value: &[u8]) -> Result<Decoded, StorageError> {
    let (mut d, version) = Dec::new("audit", value)?;
    if !matches!(version, AUDIT_V1 | AUDIT_KEYED | AUDIT_V3 | AUDIT_KEYED_V4) {
        return Err(d.error(format!("audit record version {version}")));
    }
    let seq = d.u64()?;
    let time_ms = d.u64()?;
    let mut prev = [0u8; 32];
    for b in &mut prev {
        *b = d.u8()?;
    }
    if matches!(version, AUDIT_V1 | AUDIT_KEYED) {
        let actor = d.str()?.to_owned();
        let action = d.str()?.to_owned();
        let detail = d.str()?.to_owned();
        d.end()?;
        let event = AuditEvent {
            time_ms,
            tenant: None,
            actor,
            action,
            detail,
        };
        return Ok(Decoded {
            record: AuditRecord {
                seq,
                event,
                redacted: false,
            },
            prev,
            linked_len: value.len(),
            details: None,
        });
    }
    let tenant = d.str()?;
    let tenant = (!tenant.is_empty()).then(|| tenant.to_owned());
    let action = d.str()?.to_owned();
    let mut digest = [0u8; 32];
    for b in &mut digest {
        *b = d.u8()?;
    }
    let linked_len = value.len() - d.remaining();
    let present = d.u8()? == 1;
    let (actor, detail, start) = if present {
        let start = value.len() - d.remaining();
        (d.str()?.to_owned(), d.str()?.to_owned(), Some(start))
    } else {
        (String::new(), String::new(), None)
    };
    d.end()?;
    let event = AuditEvent {
        time_ms,
        tenant,
        actor,
        action,
        detail,
    };
    Ok(Decoded {
        record: AuditRecord {
            seq,
            event,
            redacted: !present,
        },
        prev,
        linked_len,
        details: Some((digest, start)),
    })
}

/// A record's details (actor, detail) as stored after its header, and their digest.
fn encode_details(event: &AuditEvent) -> Result<(Vec<u8>, [u8; 32]), StorageError> {
    let mut e = Enc::raw(8 + event.actor.len() + event.detail.len());
    e.bytes(event.actor.as_bytes())?
        .bytes(event.detail.as_bytes())?;
    let details = e.finish();
    let digest = hash(&details);
    Ok((details, digest))
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
            AUDIT_KEYED_V4
        } else {
            AUDIT_V3
        };
        let (details, digest) = encode_details(event)?;
        let tenant = event.tenant.as_deref().unwrap_or("");
        let mut e = Enc::new(version, 128 + tenant.len() + details.len());
        e.u64(seq).u64(event.time_ms);
        for b in head.last_hash {
            e.u8(b);
        }
        e.bytes(tenant.as_bytes())?
            .bytes(event.action.as_bytes())?
            .tail(&digest);
        let h = chain.link(e.as_slice());
        e.u8(1).tail(&details);
        let record = e.finish();
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
            out.push(decode(&value)?.record);
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
            let Ok(decoded) = decode(&value) else {
                let why = "the record cannot be decoded";
                return report(records, expected_seq, why, keyed_from, prev_hash);
            };
            let (record, prev) = (&decoded.record, decoded.prev);
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
            if !decoded.details_intact(&value) {
                let why = "the record's details do not match the digest its link covers: they \
                           were changed";
                return report(records, expected_seq, why, keyed_from, prev_hash);
            }
            let linked = &value[..decoded.linked_len];
            prev_hash = match (value.first().copied(), &chain.key) {
                (Some(AUDIT_KEYED | AUDIT_KEYED_V4), Some(k)) => {
                    keyed_from.get_or_insert(expected_seq);
                    mac(k, linked)
                }
                (Some(AUDIT_KEYED | AUDIT_KEYED_V4), None) => {
                    let why = "the record is linked with an audit key and none is configured \
                               (storage.audit_key_file, or the encryption key it is derived from)";
                    return report(records, expected_seq, why, keyed_from, prev_hash);
                }
                _ if keyed_from.is_some() => {
                    let why = "an unkeyed record after keyed ones: written without the audit key";
                    return report(records, expected_seq, why, keyed_from, prev_hash);
                }
                _ => hash(linked),
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
    /// Applies the audit retention at `now_ms`: drops the oldest records `policy` no longer
    /// keeps (see `drop_oldest_audit`), then redacts the records of tenants whose own
    /// retention (`tenant_policy`, asked once per tenant met) no longer keeps their details
    /// (see `redact_audit`). Written from the reserved margin (it frees space). Blocking.
    /// `tenant_policy`: `None` when no tenant has a retention of its own (no pass for it).
    pub fn prune_audit(
        &self,
        policy: &AuditRetention,
        tenant_policy: Option<&dyn Fn(&str) -> TenantAuditRetention>,
        now_ms: u64,
    ) -> Result<AuditPruned, StorageError> {
        let mut pruned = self.drop_oldest_audit(policy, now_ms)?;
        let Some(tenant_policy) = tenant_policy else {
            return Ok(pruned);
        };
        let floor = now_ms.saturating_sub(policy.keep_at_least_ms);
        let (records, bytes) = self.redact_audit(tenant_policy, floor, now_ms)?;
        pruned.redacted = records;
        pruned.redacted_bytes = bytes;
        Ok(pruned)
    }

    /// Redacts the records of tenants with their own retention that it no longer keeps:
    /// past the tenant's age cap, or the oldest of its details beyond its byte cap — never a
    /// record at or after `floor`. Two passes over the log (bytes per tenant, then the
    /// redactions, written in batches). Returns the records redacted and the bytes freed.
    fn redact_audit(
        &self,
        tenant_policy: &dyn Fn(&str) -> TenantAuditRetention,
        floor: u64,
        now_ms: u64,
    ) -> Result<(u64, u64), StorageError> {
        let db = &self.inner.db;
        let cf = self.cf(Cf::Audit)?;
        // Per tenant met: its policy and the bytes of its details still held. Bounded by the
        // tenants the log names.
        let mut tenants: std::collections::HashMap<String, (TenantAuditRetention, u64)> =
            std::collections::HashMap::new();
        let mut any = false;
        for item in db.iterator_cf(cf, IteratorMode::Start) {
            let (_, value) = item?;
            let decoded = decode(&value)?;
            let (Some(tenant), Some((_, Some(start)))) =
                (&decoded.record.event.tenant, decoded.details)
            else {
                continue;
            };
            let entry = tenants
                .entry(tenant.clone())
                .or_insert_with(|| (tenant_policy(tenant), 0));
            any |= !entry.0.is_off();
            entry.1 += (value.len() - start) as u64;
        }
        if !any {
            return Ok((0, 0));
        }
        let (mut records, mut bytes) = (0u64, 0u64);
        let mut b = Batch::new();
        let mut queued = 0usize;
        for item in db.iterator_cf(cf, IteratorMode::Start) {
            let (key, value) = item?;
            let decoded = decode(&value)?;
            let t = decoded.record.event.time_ms;
            if t >= floor {
                break;
            }
            let (Some(tenant), Some((_, Some(start)))) =
                (&decoded.record.event.tenant, decoded.details)
            else {
                continue;
            };
            let Some((policy, held)) = tenants.get_mut(tenant) else {
                continue;
            };
            let too_old = policy
                .max_age_ms
                .is_some_and(|age| t < now_ms.saturating_sub(age));
            let too_big = policy.max_bytes.is_some_and(|cap| *held > cap);
            if !too_old && !too_big {
                continue;
            }
            let freed = (value.len() - start) as u64;
            *held = held.saturating_sub(freed);
            // The header and a "no details" byte: the link covers exactly the header.
            let mut redacted = value[..decoded.linked_len].to_vec();
            redacted.push(0);
            b.push(Op::Put(Cf::Audit, key.to_vec(), redacted));
            records += 1;
            bytes += freed;
            queued += 1;
            if queued >= REDACT_BATCH {
                self.write_now_reserved(std::mem::take(&mut b))?;
                queued = 0;
            }
        }
        if queued > 0 {
            self.write_now_reserved(b)?;
        }
        Ok((records, bytes))
    }

    /// Drops the oldest audit records that `policy` no longer keeps (never one younger than
    /// `keep_at_least_ms` before `now_ms`), and moves the chain's anchor to the first one
    /// kept, in one write: the chain stays verifiable from there. The newest record is
    /// always kept. Returns what was dropped.
    fn drop_oldest_audit(
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
            let Decoded { record, prev, .. } = decode(&value)?;
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
