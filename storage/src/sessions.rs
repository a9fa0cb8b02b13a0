//! Persistent sessions: the session record, its subscriptions, incoming QoS 2 packet ids,
//! its pending will, and its queue of messages (offline, or sent and not yet acknowledged)
//! with their outgoing QoS 1/2 state. Everything of one session lives under its
//! [`SessionPrefix`], so ending a session is three range deletes.
//!
//! A message queued for several persistent sessions of a tenant is stored once, in the
//! `messages` family under the tenant and a message id (see [`Store::put_shared_message`]);
//! each queue then holds a small record that refers to it. The reference is resolved under
//! the session's own tenant, so a queue can never name another tenant's message, and the
//! reference's head (QoS, retain, subscription ids, the id) is authenticated like a
//! message's clear fields. The broker counts the references and deletes the message with
//! the last one; at start-up the count is rebuilt from the queues.

use bytes::Bytes;

use crate::error::StorageError;
use crate::keys::{self, tag};
use crate::record::{Dec, Enc};
use crate::writer::{Batch, Op};
use crate::{crypto, Cf, Store};

/// The key prefix of one session (see [`keys`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionPrefix(Vec<u8>);

impl SessionPrefix {
    /// The prefix of `client_id` in `tenant`.
    pub fn new(tenant: &str, client_id: &str) -> Result<Self, StorageError> {
        keys::session_prefix(tenant, client_id).map(SessionPrefix)
    }

    fn tagged(&self, t: u8, tail: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.0.len() + 1 + tail.len());
        k.extend_from_slice(&self.0);
        k.push(t);
        k.extend_from_slice(tail);
        k
    }

    fn seq_key(&self, seq: u64) -> Vec<u8> {
        keys::with_u64(&self.0, seq)
    }

    fn range(&self) -> (Vec<u8>, Vec<u8>) {
        // A session prefix ends with client-id bytes after a length, so it always has an end
        // below the next session's; fall back to one byte past the longest key otherwise.
        let end = keys::prefix_end(&self.0).unwrap_or_else(|| keys::join(&self.0, &[0xFF; 9]));
        (self.0.clone(), end)
    }
}

/// An application message as stored: the topic in clear, payload and properties sealed.
/// What is in clear (QoS, retain, expiry, origin, topic — and the head of the record it is
/// the tail of, e.g. a queued message's QoS and subscription ids) is the sealed part's
/// associated data, with the record's key: changing any of it makes the record
/// unreadable, not different (version 2; version 1 authenticated the key only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRecord {
    /// Topic name.
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// QoS it was published with (0-2).
    pub qos: u8,
    /// Retain flag as published.
    pub retain: bool,
    /// Expiry in Unix milliseconds.
    pub expires_at: Option<u64>,
    /// The publishing session's id (No Local).
    pub origin: u64,
    /// The MQTT properties that travel with the message, encoded by the broker.
    pub properties: Bytes,
}

const MESSAGE_V1: u8 = 1;
const MESSAGE_V2: u8 = 2;

/// The associated data of a version 2 message: the record's key, the head of the record
/// before the message, and the message's own clear header (each length-prefixed, so no
/// two different splits give the same bytes).
fn message_aad(key: &[u8], head: &[u8], header: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(key.len() + head.len() + header.len() + 12);
    for part in [key, head, header] {
        aad.extend_from_slice(&(part.len() as u32).to_be_bytes());
        aad.extend_from_slice(part);
    }
    aad
}

impl MessageRecord {
    /// Encodes it for the record at `key`, after `head` (the record's bytes before the
    /// message; empty when the message is the whole record).
    pub(crate) fn encode(
        &self,
        keys: Option<&crate::KeyRing>,
        key: &[u8],
        head: &[u8],
    ) -> Result<Vec<u8>, StorageError> {
        let mut secret = Enc::raw(self.payload.len() + self.properties.len() + 4);
        secret.bytes(&self.payload)?.tail(&self.properties);
        let mut e = Enc::new(MESSAGE_V2, self.topic.len() + 64);
        e.u8(self.qos)
            .u8(u8::from(self.retain))
            .opt_u64(self.expires_at)
            .u64(self.origin)
            .bytes(self.topic.as_bytes())?;
        let mut out = e.finish();
        let sealed = crypto::seal(keys, &message_aad(key, head, &out), &secret.finish())?;
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Decodes the message at the end of the record at `key`, after `head`.
    pub(crate) fn decode(
        cf: &'static str,
        keys: Option<&crate::KeyRing>,
        key: &[u8],
        head: &[u8],
        buf: &[u8],
    ) -> Result<Self, StorageError> {
        let (mut d, version) = Dec::new(cf, buf)?;
        if version != MESSAGE_V1 && version != MESSAGE_V2 {
            return Err(d.error(format!("message record version {version}")));
        }
        let qos = d.u8()?;
        if qos > 2 {
            return Err(d.error(format!("QoS {qos}")));
        }
        let retain = d.u8()? != 0;
        let expires_at = d.opt_u64()?;
        let origin = d.u64()?;
        let topic = d.str()?.to_owned();
        let sealed = d.tail();
        let secret = if version == MESSAGE_V1 {
            crypto::open(keys, key, sealed)?
        } else {
            let header = &buf[..buf.len() - sealed.len()];
            crypto::open(keys, &message_aad(key, head, header), sealed)?
        };
        let mut s = Dec::raw(cf, &secret);
        let payload = Bytes::copy_from_slice(s.bytes()?);
        let properties = Bytes::copy_from_slice(s.tail());
        Ok(MessageRecord {
            topic,
            payload,
            qos,
            retain,
            expires_at,
            origin,
            properties,
        })
    }
}

/// The session itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionRecord {
    /// The broker's id of the session (No Local), unique across restarts.
    pub session_id: u64,
    /// Seconds the session outlives its connection.
    pub expiry_interval: u32,
    /// When its last connection ended (Unix ms); `None` while one was attached. A session
    /// that was attached when the broker stopped counts as disconnected at restart.
    pub disconnected_at: Option<u64>,
}

const SESSION_V1: u8 = 1;

/// One stored subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionRecord {
    /// Topic filter (with any `$share/` prefix).
    pub filter: String,
    /// The subscription options byte as MQTT 5 encodes it.
    pub options: u8,
    /// Subscription identifier.
    pub id: Option<u32>,
}

/// One queued message for one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedRecord {
    /// QoS of this delivery.
    pub qos: u8,
    /// RETAIN flag to send.
    pub retain: bool,
    /// Subscription identifiers to send.
    pub subscription_ids: Vec<u32>,
    /// The message.
    pub message: MessageRecord,
    /// The id of the shared message it refers to, if it is stored once for several
    /// sessions (read back resolved into `message`; written as a reference only).
    pub shared: Option<u64>,
}

/// A queue record holding its message.
const QUEUED_V1: u8 = 1;
/// A queue record referring to a shared message: `[2][qos][retain][ids u16][ids u32
/// each][message id u64]`, then a seal of nothing over the key and that head.
const QUEUED_REF: u8 = 2;
/// In-flight record state: a group of QoS 1 packet ids (see `put_inflight_group`).
const GROUP: u8 = 2;

/// The outgoing state of a queued message that was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflightRecord {
    /// PUBLISH sent with this packet id; waiting for PUBACK or PUBREC.
    Published(u16),
    /// PUBREL sent for this packet id; waiting for PUBCOMP (the message is gone).
    Released(u16),
}

/// A will waiting for its delay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WillRecord {
    /// When to publish it (Unix ms).
    pub due_at: u64,
    /// The will message.
    pub message: MessageRecord,
}

/// Everything stored for one session, as read at start-up. Queued messages stay on disk
/// (see [`Store::read_queue`]); only their count and sequence range are loaded.
#[derive(Debug, Clone)]
pub struct LoadedSession {
    /// Tenant.
    pub tenant: String,
    /// Client id.
    pub client_id: String,
    /// The session record.
    pub record: SessionRecord,
    /// Its subscriptions.
    pub subscriptions: Vec<SubscriptionRecord>,
    /// Incoming QoS 2 packet ids awaiting PUBREL.
    pub incoming_qos2: Vec<u16>,
    /// A will waiting for its delay.
    pub will: Option<WillRecord>,
    /// Outgoing QoS 1/2 state by queue sequence number, in order (group records
    /// expanded).
    pub inflight: Vec<(u64, InflightRecord)>,
    /// Keys (first sequence numbers) of the group records `inflight` was expanded from:
    /// the restore rewrites what is left of them as single records and deletes these.
    pub inflight_groups: Vec<u64>,
    /// Messages in its queue.
    pub queued: u64,
    /// Bytes of those messages as stored (a shared message counted in full in every
    /// queue that refers to it).
    pub queued_bytes: u64,
    /// Queue records that refer to a shared message: (sequence number, message id).
    pub shared_refs: Vec<(u64, u64)>,
    /// Queue records whose shared message is gone: every session that referred to it had
    /// let it go, and this record's delete was not written before a crash. Not counted
    /// in `queued`; the restore deletes them.
    pub dangling_refs: Vec<u64>,
    /// The next sequence number to use (one past the highest stored).
    pub next_seq: u64,
}

/// A stored message read from a queue: its sequence number and the record, or why it
/// could not be read.
pub type QueueEntry = (u64, Result<QueuedRecord, StorageError>);

/// Prefix (in `meta`) of quarantined records: see [`Store::quarantine_queued`].
pub const QUARANTINE: &[u8] = b"quarantine:";

impl Store {
    /// Writes the session record.
    pub fn put_session(&self, b: &mut Batch, p: &SessionPrefix, r: &SessionRecord) {
        let mut e = Enc::new(SESSION_V1, 24);
        e.u64(r.session_id)
            .u32(r.expiry_interval)
            .opt_u64(r.disconnected_at);
        b.push(Op::Put(
            Cf::Sessions,
            p.tagged(tag::RECORD, &[]),
            e.finish(),
        ));
    }

    /// Deletes everything of a session: record, subscriptions, will, queue, inflight state.
    pub fn delete_session(&self, b: &mut Batch, p: &SessionPrefix) {
        let (from, to) = p.range();
        for cf in [Cf::Sessions, Cf::Queue, Cf::Inflight] {
            b.push(Op::DeleteRange(cf, from.clone(), to.clone()));
        }
    }

    /// Adds or replaces a subscription.
    pub fn put_subscription(&self, b: &mut Batch, p: &SessionPrefix, s: &SubscriptionRecord) {
        let mut e = Enc::new(1, 8);
        e.u8(s.options).opt_u64(s.id.map(u64::from));
        b.push(Op::Put(
            Cf::Sessions,
            p.tagged(tag::SUBSCRIPTION, s.filter.as_bytes()),
            e.finish(),
        ));
    }

    /// Removes a subscription.
    pub fn delete_subscription(&self, b: &mut Batch, p: &SessionPrefix, filter: &str) {
        b.push(Op::Delete(
            Cf::Sessions,
            p.tagged(tag::SUBSCRIPTION, filter.as_bytes()),
        ));
    }

    /// Records an incoming QoS 2 packet id (the message was routed; PUBREL is awaited). It
    /// counts as new data: it is admitted (or refused) with the copies of its message.
    pub fn put_incoming_qos2(&self, b: &mut Batch, p: &SessionPrefix, pid: u16) {
        b.mark_new_data();
        b.push(Op::Put(
            Cf::Sessions,
            p.tagged(tag::INCOMING_QOS2, &pid.to_be_bytes()),
            Vec::new(),
        ));
    }

    /// Forgets an incoming QoS 2 packet id (PUBREL arrived).
    pub fn delete_incoming_qos2(&self, b: &mut Batch, p: &SessionPrefix, pid: u16) {
        b.push(Op::Delete(
            Cf::Sessions,
            p.tagged(tag::INCOMING_QOS2, &pid.to_be_bytes()),
        ));
    }

    /// Stores the pending will.
    pub fn put_will(
        &self,
        b: &mut Batch,
        p: &SessionPrefix,
        w: &WillRecord,
    ) -> Result<(), StorageError> {
        let key = p.tagged(tag::WILL, &[]);
        let mut e = Enc::new(1, 8);
        e.u64(w.due_at);
        let mut value = e.finish();
        let message = w.message.encode(self.keys(), &key, &value)?;
        value.extend_from_slice(&message);
        b.push(Op::Put(Cf::Sessions, key, value));
        b.mark_new_data();
        Ok(())
    }

    /// Deletes the pending will.
    pub fn delete_will(&self, b: &mut Batch, p: &SessionPrefix) {
        b.push(Op::Delete(Cf::Sessions, p.tagged(tag::WILL, &[])));
    }

    /// Appends a message to a session's queue at `seq`.
    pub fn put_queued(
        &self,
        b: &mut Batch,
        p: &SessionPrefix,
        seq: u64,
        q: &QueuedRecord,
    ) -> Result<(), StorageError> {
        let key = p.seq_key(seq);
        let ids = u16::try_from(q.subscription_ids.len())
            .map_err(|_| StorageError::TooLong("a subscription id list"))?;
        let version = if q.shared.is_some() {
            QUEUED_REF
        } else {
            QUEUED_V1
        };
        let mut e = Enc::new(version, 16 + 4 * q.subscription_ids.len());
        e.u8(q.qos).u8(u8::from(q.retain)).u16(ids);
        for id in &q.subscription_ids {
            e.u32(*id);
        }
        if let Some(id) = q.shared {
            e.u64(id);
        }
        let mut value = e.finish();
        let tail = match q.shared {
            // The message itself is elsewhere: only the head is authenticated here.
            Some(_) => crypto::seal(self.keys(), &message_aad(&key, &value, &[]), &[])?,
            None => q.message.encode(self.keys(), &key, &value)?,
        };
        value.extend_from_slice(&tail);
        b.push(Op::Put(Cf::Queue, key, value));
        b.mark_new_data();
        Ok(())
    }

    /// Stores `m` once as shared message `id` of `tenant`, for the queue records that will
    /// refer to it (`QueuedRecord::shared`). Ids are the caller's, unique in the store.
    pub fn put_shared_message(
        &self,
        b: &mut Batch,
        tenant: &str,
        id: u64,
        m: &MessageRecord,
    ) -> Result<(), StorageError> {
        let key = keys::with_u64(&keys::tenant_prefix(tenant)?, id);
        let value = m.encode(self.keys(), &key, &[])?;
        b.push(Op::Put(Cf::Messages, key, value));
        b.mark_new_data();
        Ok(())
    }

    /// Deletes shared message `id` of `tenant` (once no queue refers to it).
    pub fn delete_shared_message(
        &self,
        b: &mut Batch,
        tenant: &str,
        id: u64,
    ) -> Result<(), StorageError> {
        let key = keys::with_u64(&keys::tenant_prefix(tenant)?, id);
        b.push(Op::Delete(Cf::Messages, key));
        Ok(())
    }

    /// Deletes every shared message that no queue refers to (`referred` says which are):
    /// left by a crash between a message's last reference going and the message itself.
    /// Start-up only, before any new reference. Blocking. Returns how many were deleted.
    pub fn sweep_shared_messages(
        &self,
        referred: impl Fn(u64) -> bool,
    ) -> Result<u64, StorageError> {
        let mut b = Batch::new();
        let mut n = 0;
        for item in self
            .inner
            .db
            .iterator_cf(self.cf(Cf::Messages)?, rocksdb::IteratorMode::Start)
        {
            let (key, _) = item?;
            let id = keys::split_tenant_key(&key)
                .and_then(|(_, rest)| <[u8; 8]>::try_from(rest).ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| StorageError::corrupt("messages", "undecodable key"))?;
            if !referred(id) {
                b.push(Op::Delete(Cf::Messages, key.to_vec()));
                n += 1;
            }
        }
        if n > 0 {
            self.submit(b, None)?;
        }
        Ok(n)
    }

    /// Removes a message from a session's queue, with its outgoing state.
    pub fn delete_queued(&self, b: &mut Batch, p: &SessionPrefix, seq: u64) {
        let key = p.seq_key(seq);
        b.push(Op::Delete(Cf::Inflight, key.clone()));
        b.push(Op::Delete(Cf::Queue, key));
    }

    /// Records the outgoing state of queued message `seq`.
    pub fn put_inflight(&self, b: &mut Batch, p: &SessionPrefix, seq: u64, r: InflightRecord) {
        let (state, pid) = match r {
            InflightRecord::Published(pid) => (0u8, pid),
            InflightRecord::Released(pid) => (1u8, pid),
        };
        let mut e = Enc::new(1, 3);
        e.u8(state).u16(pid);
        b.push(Op::Put(Cf::Inflight, p.seq_key(seq), e.finish()));
    }

    /// A QoS 2 message was received by the client (PUBREC): the message is dropped from
    /// the queue and only its packet id stays, released.
    pub fn release_queued(&self, b: &mut Batch, p: &SessionPrefix, seq: u64, pid: u16) {
        b.push(Op::Delete(Cf::Queue, p.seq_key(seq)));
        self.put_inflight(b, p, seq, InflightRecord::Released(pid));
    }

    /// Records the packet ids of QoS 1 messages sent together, as one record keyed by the
    /// first one's sequence number (one change per batch of deliveries instead of one per
    /// message). Delete it with [`Store::delete_inflight`] once all of them are
    /// acknowledged; their queue records go with [`Store::delete_queued_only`].
    pub fn put_inflight_group(&self, b: &mut Batch, p: &SessionPrefix, sent: &[(u64, u16)]) {
        let Some(&(first, _)) = sent.first() else {
            return;
        };
        let mut e = Enc::new(1, 3 + sent.len() * 10);
        e.u8(GROUP)
            .u16(u16::try_from(sent.len()).unwrap_or(u16::MAX));
        for &(seq, pid) in sent.iter().take(usize::from(u16::MAX)) {
            e.u64(seq).u16(pid);
        }
        b.push(Op::Put(Cf::Inflight, p.seq_key(first), e.finish()));
    }

    /// Removes a queued message whose outgoing state is in a group record (or that has
    /// none): only its queue record.
    pub fn delete_queued_only(&self, b: &mut Batch, p: &SessionPrefix, seq: u64) {
        b.push(Op::Delete(Cf::Queue, p.seq_key(seq)));
    }

    /// Forgets the outgoing state of `seq` (PUBCOMP).
    pub fn delete_inflight(&self, b: &mut Batch, p: &SessionPrefix, seq: u64) {
        b.push(Op::Delete(Cf::Inflight, p.seq_key(seq)));
    }

    /// Reads up to `limit` queued messages of a session with sequence numbers from `from`,
    /// stopping after about `max_bytes` (at least one). Blocking.
    pub fn read_queue(
        &self,
        p: &SessionPrefix,
        from: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<(u64, QueuedRecord)>, StorageError> {
        self.read_queue_entries(p, from, limit, max_bytes)?
            .into_iter()
            .map(|(seq, record)| record.map(|r| (seq, r)))
            .collect()
    }

    /// As [`Store::read_queue`], but a record that cannot be decoded (a missing key, a
    /// damaged value) is returned as its error instead of failing the page: one bad record
    /// must not stall a session's whole queue (see [`Store::quarantine_queued`]).
    pub fn read_queue_entries(
        &self,
        p: &SessionPrefix,
        from: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<QueueEntry>, StorageError> {
        let (_, end) = p.range();
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_iterate_upper_bound(end);
        let start = p.seq_key(from);
        let iter = self.inner.db.iterator_cf_opt(
            self.cf(Cf::Queue)?,
            opts,
            rocksdb::IteratorMode::From(&start, rocksdb::Direction::Forward),
        );
        let mut out = Vec::new();
        let mut bytes = 0;
        for item in iter {
            let (key, value) = item?;
            if out.len() >= limit || (bytes >= max_bytes && !out.is_empty()) {
                break;
            }
            let seq = seq_of(&key, &p.0, "queue")?;
            bytes += value.len();
            out.push((seq, self.decode_queued(&key, &value)));
        }
        Ok(out)
    }

    /// Moves stored message `seq` of a session out of its queue into the quarantine (in
    /// `meta`, under `quarantine:queue:` and its queue key, as it was stored) with `b`: kept for
    /// the operator (e.g. to read once a removed key is back), out of the session's way.
    /// Blocking (reads the record).
    pub fn quarantine_queued(
        &self,
        b: &mut Batch,
        p: &SessionPrefix,
        seq: u64,
    ) -> Result<(), StorageError> {
        let key = p.seq_key(seq);
        match self.get(Cf::Queue, &key)? {
            Some(value) => self.quarantine(b, Cf::Queue, &key, &value),
            None => b.push(Op::Delete(Cf::Queue, key)),
        }
        Ok(())
    }

    /// Moves record `key` of `cf` (holding `value`) into the quarantine with `b`: in
    /// `meta` under `quarantine:<family>:<key>`, as it was stored.
    pub(crate) fn quarantine(&self, b: &mut Batch, cf: Cf, key: &[u8], value: &[u8]) {
        let at = [QUARANTINE, cf.name().as_bytes(), b":", key].concat();
        b.push(Op::Put(Cf::Meta, at, value.to_vec()));
        b.push(Op::Delete(cf, key.to_vec()));
    }

    fn decode_queued(&self, key: &[u8], value: &[u8]) -> Result<QueuedRecord, StorageError> {
        let (mut d, version) = Dec::new("queue", value)?;
        if version != QUEUED_V1 && version != QUEUED_REF {
            return Err(d.error(format!("queued record version {version}")));
        }
        let qos = d.u8()?;
        let retain = d.u8()? != 0;
        let n = d.u16()?;
        let mut subscription_ids = Vec::with_capacity(usize::from(n).min(64));
        for _ in 0..n {
            subscription_ids.push(d.u32()?);
        }
        let shared = if version == QUEUED_REF {
            Some(d.u64()?)
        } else {
            None
        };
        let tail = d.tail();
        let head = &value[..value.len() - tail.len()];
        let message = match shared {
            None => MessageRecord::decode("queue", self.keys(), key, head, tail)?,
            Some(id) => {
                crypto::open(self.keys(), &message_aad(key, head, &[]), tail)?;
                self.shared_message(key, id)?
            }
        };
        Ok(QueuedRecord {
            qos,
            retain,
            subscription_ids,
            message,
            shared,
        })
    }

    /// The key of shared message `id` of the tenant that owns queue key `queue_key`.
    fn shared_key(queue_key: &[u8], id: u64) -> Result<Vec<u8>, StorageError> {
        let (tenant, _, _) = keys::split_session_key(queue_key)
            .ok_or_else(|| StorageError::corrupt("queue", "undecodable key"))?;
        Ok(keys::with_u64(&keys::tenant_prefix(tenant)?, id))
    }

    /// Shared message `id` as seen from the queue record at `queue_key` (its tenant's).
    fn shared_message(&self, queue_key: &[u8], id: u64) -> Result<MessageRecord, StorageError> {
        let key = Self::shared_key(queue_key, id)?;
        let value = self.get(Cf::Messages, &key)?.ok_or_else(|| {
            StorageError::corrupt("queue", format!("shared message {id} is gone"))
        })?;
        MessageRecord::decode("messages", self.keys(), &key, &[], &value)
    }

    /// A queue value that refers to a shared message, sealed again under the active key
    /// (`messs storage encrypt`); `None` if the value holds its message itself.
    pub(crate) fn reseal_queued_ref(
        &self,
        key: &[u8],
        value: &[u8],
    ) -> Result<Option<Vec<u8>>, StorageError> {
        let Some(head_len) = Self::queued_ref_head(value)? else {
            return Ok(None);
        };
        let (head, tail) = value.split_at(head_len);
        let aad = message_aad(key, head, &[]);
        crypto::open(self.keys(), &aad, tail)?;
        let mut out = head.to_vec();
        out.extend_from_slice(&crypto::seal(self.keys(), &aad, &[])?);
        Ok(Some(out))
    }

    /// The length of a reference's head, if the queue value is a reference.
    fn queued_ref_head(value: &[u8]) -> Result<Option<usize>, StorageError> {
        let (mut d, version) = Dec::new("queue", value)?;
        if version != QUEUED_REF {
            return Ok(None);
        }
        d.u8()?;
        d.u8()?;
        for _ in 0..d.u16()? {
            d.u32()?;
        }
        d.u64()?;
        Ok(Some(value.len() - d.tail().len()))
    }

    /// The shared message id a queue value refers to, if it is a reference.
    fn queued_ref(value: &[u8]) -> Result<Option<u64>, StorageError> {
        let Some(head_len) = Self::queued_ref_head(value)? else {
            return Ok(None);
        };
        let id: [u8; 8] = value
            .get(head_len - 8..head_len)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| StorageError::corrupt("queue", "reference head"))?;
        Ok(Some(u64::from_be_bytes(id)))
    }

    /// Reads every stored session (start-up). Blocking.
    pub fn load_sessions(&self) -> Result<Vec<LoadedSession>, StorageError> {
        let db = &self.inner.db;
        let mut sessions: Vec<LoadedSession> = Vec::new();
        let mut orphans = 0u64;
        for item in db.iterator_cf(self.cf(Cf::Sessions)?, rocksdb::IteratorMode::Start) {
            let (key, value) = item?;
            let (tenant, client, rest) = keys::split_session_key(&key)
                .ok_or_else(|| StorageError::corrupt("sessions", "undecodable key"))?;
            let Some((&t, tail)) = rest.split_first() else {
                return Err(StorageError::corrupt("sessions", "key without a tag"));
            };
            if t == tag::RECORD {
                let (mut d, _) = Dec::new("sessions", &value)?;
                let record = SessionRecord {
                    session_id: d.u64()?,
                    expiry_interval: d.u32()?,
                    disconnected_at: d.opt_u64()?,
                };
                sessions.push(LoadedSession {
                    tenant: tenant.to_owned(),
                    client_id: client.to_owned(),
                    record,
                    subscriptions: Vec::new(),
                    incoming_qos2: Vec::new(),
                    will: None,
                    inflight: Vec::new(),
                    inflight_groups: Vec::new(),
                    queued: 0,
                    queued_bytes: 0,
                    shared_refs: Vec::new(),
                    dangling_refs: Vec::new(),
                    next_seq: 1,
                });
                continue;
            }
            // The record sorts first within its prefix, so the last loaded session owns
            // every other tag that follows; one without a record is left from a crash
            // mid-delete and is skipped (deleted with the next range delete).
            let Some(s) = sessions
                .last_mut()
                .filter(|s| s.tenant == tenant && s.client_id == client)
            else {
                orphans += 1;
                continue;
            };
            match t {
                tag::SUBSCRIPTION => {
                    let (mut d, _) = Dec::new("sessions", &value)?;
                    let options = d.u8()?;
                    let id = d.opt_u64()?.and_then(|v| u32::try_from(v).ok());
                    let filter = std::str::from_utf8(tail)
                        .map_err(|_| StorageError::corrupt("sessions", "filter is not UTF-8"))?;
                    s.subscriptions.push(SubscriptionRecord {
                        filter: filter.to_owned(),
                        options,
                        id,
                    });
                }
                tag::INCOMING_QOS2 => {
                    let pid: [u8; 2] = tail
                        .try_into()
                        .map_err(|_| StorageError::corrupt("sessions", "packet id length"))?;
                    s.incoming_qos2.push(u16::from_be_bytes(pid));
                }
                tag::WILL => {
                    let (mut d, _) = Dec::new("sessions", &value)?;
                    let due_at = d.u64()?;
                    let tail = d.tail();
                    let head = &value[..value.len() - tail.len()];
                    let message = MessageRecord::decode("sessions", self.keys(), &key, head, tail)?;
                    s.will = Some(WillRecord { due_at, message });
                }
                other => {
                    return Err(StorageError::corrupt(
                        "sessions",
                        format!("unknown tag {other}"),
                    ))
                }
            }
        }
        if orphans > 0 {
            tracing::warn!(
                orphans,
                "session entries without a session record were skipped"
            );
        }
        // Sizes of shared messages by key (`None`: gone), looked up once each.
        let mut shared_sizes = std::collections::HashMap::new();
        for s in &mut sessions {
            self.load_queue_shape(s, &mut shared_sizes)?;
        }
        Ok(sessions)
    }

    /// Counts a session's queue (resolving the size of the shared messages it refers to,
    /// through `shared_sizes`) and reads its inflight state.
    fn load_queue_shape(
        &self,
        s: &mut LoadedSession,
        shared_sizes: &mut std::collections::HashMap<Vec<u8>, Option<u64>>,
    ) -> Result<(), StorageError> {
        let p = SessionPrefix::new(&s.tenant, &s.client_id)?;
        let (from, to) = p.range();
        let db = &self.inner.db;
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_iterate_upper_bound(to.clone());
        let mut max_seq = 0;
        for item in db.iterator_cf_opt(
            self.cf(Cf::Queue)?,
            opts,
            rocksdb::IteratorMode::From(&from, rocksdb::Direction::Forward),
        ) {
            let (key, value) = item?;
            let seq = seq_of(&key, &p.0, "queue")?;
            max_seq = seq;
            let mut bytes = value.len() as u64;
            if let Some(id) = Self::queued_ref(&value)? {
                // Keyed by the message's key: an id resolves in the session's own tenant.
                let shared_key = Self::shared_key(&key, id)?;
                let size = match shared_sizes.get(&shared_key) {
                    Some(size) => *size,
                    None => {
                        let size = self.get(Cf::Messages, &shared_key)?.map(|v| v.len() as u64);
                        shared_sizes.insert(shared_key, size);
                        size
                    }
                };
                let Some(size) = size else {
                    s.dangling_refs.push(seq);
                    continue;
                };
                bytes += size;
                s.shared_refs.push((seq, id));
            }
            s.queued += 1;
            s.queued_bytes += bytes;
        }
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_iterate_upper_bound(to);
        for item in db.iterator_cf_opt(
            self.cf(Cf::Inflight)?,
            opts,
            rocksdb::IteratorMode::From(&from, rocksdb::Direction::Forward),
        ) {
            let (key, value) = item?;
            let seq = seq_of(&key, &p.0, "inflight")?;
            max_seq = max_seq.max(seq);
            let (mut d, _) = Dec::new("inflight", &value)?;
            let state = d.u8()?;
            if state == GROUP {
                let n = d.u16()?;
                for _ in 0..n {
                    let member = d.u64()?;
                    let pid = d.u16()?;
                    max_seq = max_seq.max(member);
                    s.inflight.push((member, InflightRecord::Published(pid)));
                }
                s.inflight_groups.push(seq);
                continue;
            }
            let pid = d.u16()?;
            let r = match state {
                0 => InflightRecord::Published(pid),
                1 => InflightRecord::Released(pid),
                other => return Err(d.error(format!("inflight state {other}"))),
            };
            s.inflight.push((seq, r));
        }
        s.inflight.sort_by_key(|(seq, _)| *seq);
        s.next_seq = max_seq + 1;
        Ok(())
    }
}

fn seq_of(key: &[u8], prefix: &[u8], cf: &'static str) -> Result<u64, StorageError> {
    let tail = key
        .strip_prefix(prefix)
        .ok_or_else(|| StorageError::corrupt(cf, "key outside its session"))?;
    let bytes: [u8; 8] = tail
        .try_into()
        .map_err(|_| StorageError::corrupt(cf, "sequence number length"))?;
    Ok(u64::from_be_bytes(bytes))
}

/// For the maintenance verify: decodes the value at `key` in `cf` (payloads opened), where
/// the record kind has a decoder here.
pub(crate) fn verify_value(
    store: &Store,
    cf: Cf,
    key: &[u8],
    value: &[u8],
) -> Result<(), StorageError> {
    match cf {
        // A reference: its head's seal (the message is verified in its own family; one
        // already gone is a crash's leftover the next start deletes, not damage).
        Cf::Queue => match Store::queued_ref_head(value)? {
            Some(head_len) => {
                let (head, tail) = value.split_at(head_len);
                crypto::open(store.keys(), &message_aad(key, head, &[]), tail).map(|_| ())
            }
            None => store.decode_queued(key, value).map(|_| ()),
        },
        Cf::Sessions => {
            let (_, _, rest) = keys::split_session_key(key)
                .ok_or_else(|| StorageError::corrupt("sessions", "undecodable key"))?;
            if rest.first() == Some(&tag::WILL) {
                let (mut d, _) = Dec::new("sessions", value)?;
                d.u64()?;
                let tail = d.tail();
                let head = &value[..value.len() - tail.len()];
                MessageRecord::decode("sessions", store.keys(), key, head, tail).map(|_| ())
            } else {
                Ok(())
            }
        }
        _ => Ok(()),
    }
}
