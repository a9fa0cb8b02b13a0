//! Telemetry: messages on configured topic filters, stored with their arrival time under
//! `[tenant prefix][timestamp ms][seq]`, so one tenant's data is one time-ordered range.
//! Retention by age and by bytes per tenant deletes whole ranges (a range delete, then a
//! compaction of that range, so the space is given back). Queries walk one tenant's time
//! range and page with an opaque cursor.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, PoisonError};

use rocksdb::{Direction, IteratorMode, ReadOptions, DB};

use crate::error::StorageError;
use crate::keys;
use crate::sessions::MessageRecord;
use crate::writer::{Batch, Op};
use crate::{Cf, Store};

/// Bytes and records each tenant holds, kept in memory (read once at open, then counted
/// as records are added and deleted) so retention by size need not scan.
#[derive(Default)]
pub(crate) struct Usage {
    tenants: Mutex<HashMap<String, TenantUsage>>,
    seq: AtomicU32,
}

/// What one tenant's telemetry holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TenantUsage {
    /// Bytes of keys and values.
    pub bytes: u64,
    /// Records.
    pub records: u64,
}

impl Usage {
    pub(crate) fn load(db: &DB) -> Result<Self, StorageError> {
        let cf = db
            .cf_handle(Cf::Telemetry.name())
            .ok_or(StorageError::MissingColumnFamily(Cf::Telemetry.name()))?;
        let mut tenants: HashMap<String, TenantUsage> = HashMap::new();
        for item in db.iterator_cf(cf, IteratorMode::Start) {
            let (key, value) = item?;
            let (tenant, _) = keys::split_tenant_key(&key)
                .ok_or_else(|| StorageError::corrupt("telemetry", "undecodable key"))?;
            let u = tenants.entry(tenant.to_owned()).or_default();
            u.bytes += (key.len() + value.len()) as u64;
            u.records += 1;
        }
        Ok(Usage {
            tenants: Mutex::new(tenants),
            seq: AtomicU32::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, TenantUsage>> {
        self.tenants.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One stored telemetry message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryRecord {
    /// When it arrived (Unix ms).
    pub timestamp_ms: u64,
    /// The message.
    pub message: MessageRecord,
}

/// Where a query page ended; pass it back to get the next page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor(Vec<u8>);

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Cursor {
    type Err = StorageError;

    fn from_str(s: &str) -> Result<Self, StorageError> {
        if !s.len().is_multiple_of(2) || s.len() > 2048 {
            return Err(StorageError::corrupt("telemetry", "invalid cursor"));
        }
        (0..s.len())
            .step_by(2)
            .map(|i| {
                s.get(i..i + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| StorageError::corrupt("telemetry", "invalid cursor"))
            })
            .collect::<Result<Vec<u8>, _>>()
            .map(Cursor)
    }
}

/// A telemetry query.
#[derive(Debug, Clone)]
pub struct TelemetryQuery {
    /// Tenant whose data is read (never another's).
    pub tenant: String,
    /// MQTT topic filter the topics must match.
    pub filter: String,
    /// From this time (Unix ms, inclusive).
    pub from_ms: u64,
    /// Up to this time (Unix ms, exclusive).
    pub to_ms: u64,
    /// Most records returned.
    pub limit: usize,
    /// Continue after a previous page.
    pub cursor: Option<Cursor>,
}

/// One page of a query.
#[derive(Debug, Clone)]
pub struct TelemetryPage {
    /// Matching records, oldest first.
    pub records: Vec<TelemetryRecord>,
    /// Set when there may be more: pass it as the next query's cursor.
    pub next: Option<Cursor>,
}

/// How long and how much telemetry is kept.
#[derive(Debug, Clone, Copy, Default)]
pub struct RetentionPolicy {
    /// Records older than this are deleted.
    pub max_age_ms: Option<u64>,
    /// Beyond this many bytes per tenant the oldest records are deleted.
    pub max_bytes_per_tenant: Option<u64>,
}

/// What one retention run deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Records deleted.
    pub records: u64,
    /// Bytes deleted.
    pub bytes: u64,
}

/// Whether `topic` matches the MQTT filter `filter` (`+`, `#`; wildcards at the first
/// level never match `$` topics).
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    let mut first = true;
    loop {
        match (f.next(), t.next()) {
            (Some("#"), Some(level)) | (Some("+"), Some(level))
                if first && level.starts_with('$') =>
            {
                return false
            }
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
        first = false;
    }
}

fn time_key(prefix: &[u8], ts: u64, seq: u32) -> Vec<u8> {
    let mut k = keys::with_u64(prefix, ts);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn timestamp_of(key: &[u8], prefix_len: usize) -> Result<u64, StorageError> {
    key.get(prefix_len..prefix_len + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| StorageError::corrupt("telemetry", "timestamp length"))
}

impl Store {
    /// Stores a telemetry message that arrived at `timestamp_ms`.
    pub fn put_telemetry(
        &self,
        b: &mut Batch,
        tenant: &str,
        timestamp_ms: u64,
        m: &MessageRecord,
    ) -> Result<(), StorageError> {
        let prefix = keys::tenant_prefix(tenant)?;
        let seq = self.inner.telemetry.seq.fetch_add(1, Ordering::Relaxed);
        let key = time_key(&prefix, timestamp_ms, seq);
        let value = m.encode(self.keys(), &key, &[])?;
        {
            let mut usage = self.inner.telemetry.lock();
            let u = usage.entry(tenant.to_owned()).or_default();
            u.bytes += (key.len() + value.len()) as u64;
            u.records += 1;
        }
        b.push(Op::Put(Cf::Telemetry, key, value));
        b.mark_new_data();
        Ok(())
    }

    /// What a tenant's telemetry holds.
    pub fn telemetry_usage(&self, tenant: &str) -> TenantUsage {
        self.inner
            .telemetry
            .lock()
            .get(tenant)
            .copied()
            .unwrap_or_default()
    }

    /// Runs a telemetry query. Blocking.
    pub fn query_telemetry(&self, q: &TelemetryQuery) -> Result<TelemetryPage, StorageError> {
        let prefix = keys::tenant_prefix(&q.tenant)?;
        let start = match &q.cursor {
            // Strictly after the cursor's key, and never outside the tenant.
            Some(Cursor(k)) if k.starts_with(&prefix) => {
                let mut k = k.clone();
                k.push(0);
                k
            }
            Some(_) => {
                return Err(StorageError::corrupt(
                    "telemetry",
                    "cursor of another tenant",
                ))
            }
            None => keys::with_u64(&prefix, q.from_ms),
        };
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(keys::with_u64(&prefix, q.to_ms));
        let iter = self.inner.db.iterator_cf_opt(
            self.cf(Cf::Telemetry)?,
            opts,
            IteratorMode::From(&start, Direction::Forward),
        );
        let mut records = Vec::new();
        let mut last = None;
        for item in iter {
            let (key, value) = item?;
            if records.len() >= q.limit {
                return Ok(TelemetryPage {
                    records,
                    next: last.map(Cursor),
                });
            }
            let timestamp_ms = timestamp_of(&key, prefix.len())?;
            // The topic is stored in clear: filter before opening the payload.
            let message = MessageRecord::decode("telemetry", self.keys(), &key, &[], &value)?;
            if topic_matches(&q.filter, &message.topic) {
                records.push(TelemetryRecord {
                    timestamp_ms,
                    message,
                });
            }
            last = Some(key.to_vec());
        }
        Ok(TelemetryPage {
            records,
            next: None,
        })
    }

    /// Deletes telemetry older than the policy's age, then the oldest beyond its size, in
    /// every tenant, and compacts what was deleted so the disk space is given back.
    /// Blocking.
    pub fn apply_telemetry_retention(
        &self,
        policy: &RetentionPolicy,
        now_ms: u64,
    ) -> Result<RetentionReport, StorageError> {
        let tenants: Vec<(String, TenantUsage)> = self
            .inner
            .telemetry
            .lock()
            .iter()
            .map(|(t, u)| (t.clone(), *u))
            .collect();
        let mut report = RetentionReport::default();
        for (tenant, usage) in tenants {
            let prefix = keys::tenant_prefix(&tenant)?;
            let mut cut: Option<Vec<u8>> = policy
                .max_age_ms
                .map(|age| keys::with_u64(&prefix, now_ms.saturating_sub(age)));
            let (mut records, mut bytes) = match &cut {
                Some(c) => self.measure(&prefix, c)?,
                None => (0, 0),
            };
            if let Some(max) = policy.max_bytes_per_tenant {
                let mut remaining = usage.bytes.saturating_sub(bytes);
                if remaining > max {
                    // The count is kept as records are queued, so writes the store refused
                    // later (a full disk, a failed write) are in it: measure what is
                    // stored before deleting anything for its size, and correct the count.
                    let stored = self.measure_tenant(&prefix)?;
                    let mut all = self.inner.telemetry.lock();
                    if let Some(u) = all.get_mut(&tenant) {
                        // Records queued since the snapshot stay counted.
                        u.bytes = stored.1 + u.bytes.saturating_sub(usage.bytes);
                        u.records = stored.0 + u.records.saturating_sub(usage.records);
                    }
                    remaining = stored.1.saturating_sub(bytes);
                }
                if remaining > max {
                    // Walk past the age cut until enough has been dropped.
                    let from = cut.clone().unwrap_or_else(|| prefix.clone());
                    let (end, (r, b)) = self.measure_from(&prefix, &from, remaining - max)?;
                    records += r;
                    bytes += b;
                    cut = Some(end);
                }
            }
            let Some(cut) = cut.filter(|_| records > 0) else {
                continue;
            };
            let cf = self.cf(Cf::Telemetry)?;
            self.inner.db.delete_range_cf(cf, &prefix, &cut)?;
            self.inner
                .db
                .compact_range_cf(cf, Some(prefix.as_slice()), Some(cut.as_slice()));
            let mut all = self.inner.telemetry.lock();
            if let Some(u) = all.get_mut(&tenant) {
                u.bytes = u.bytes.saturating_sub(bytes);
                u.records = u.records.saturating_sub(records);
            }
            report.records += records;
            report.bytes += bytes;
        }
        if report.records > 0 {
            tracing::info!(
                records = report.records,
                bytes = report.bytes,
                "telemetry retention deleted old data"
            );
        }
        Ok(report)
    }

    /// Records and bytes of all a tenant's telemetry.
    fn measure_tenant(&self, prefix: &[u8]) -> Result<(u64, u64), StorageError> {
        let end = keys::prefix_end(prefix).unwrap_or_else(|| keys::join(prefix, &[0xFF; 13]));
        self.measure(prefix, &end)
    }

    /// Records and bytes of a tenant's telemetry below `end`.
    fn measure(&self, prefix: &[u8], end: &[u8]) -> Result<(u64, u64), StorageError> {
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(end.to_vec());
        let (mut r, mut b) = (0, 0);
        for item in self.inner.db.iterator_cf_opt(
            self.cf(Cf::Telemetry)?,
            opts,
            IteratorMode::From(prefix, Direction::Forward),
        ) {
            let (k, v) = item?;
            r += 1;
            b += (k.len() + v.len()) as u64;
        }
        Ok((r, b))
    }

    /// From `from`, the key just past the oldest records that add up to `need` bytes, and
    /// their count and bytes.
    fn measure_from(
        &self,
        prefix: &[u8],
        from: &[u8],
        need: u64,
    ) -> Result<(Vec<u8>, (u64, u64)), StorageError> {
        let end = keys::prefix_end(prefix).unwrap_or_else(|| keys::join(prefix, &[0xFF; 13]));
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(end.clone());
        let (mut r, mut b) = (0, 0);
        for item in self.inner.db.iterator_cf_opt(
            self.cf(Cf::Telemetry)?,
            opts,
            IteratorMode::From(from, Direction::Forward),
        ) {
            let (k, v) = item?;
            r += 1;
            b += (k.len() + v.len()) as u64;
            if b >= need {
                let mut past = k.to_vec();
                past.push(0);
                return Ok((past, (r, b)));
            }
        }
        Ok((end, (r, b)))
    }
}

#[cfg(test)]
mod tests {
    use super::topic_matches;

    #[test]
    fn filters_match_like_mqtt() {
        assert!(topic_matches("a/+/c", "a/b/c"));
        assert!(topic_matches("a/#", "a"));
        assert!(topic_matches("a/#", "a/b/c"));
        assert!(topic_matches("#", "x"));
        assert!(!topic_matches("#", "$SYS/x"));
        assert!(!topic_matches("+/x", "$SYS/x"));
        assert!(!topic_matches("a/+", "a/b/c"));
        assert!(!topic_matches("a/b", "a"));
    }
}
