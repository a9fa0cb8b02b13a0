//! The broker's side of durable storage: opening the store from the configuration, deciding
//! what a publish must store (persistent subscribers, retained topics, telemetry filters)
//! and holding its acknowledgement until that is durable ([`AckTicket`]), and rebuilding
//! sessions and retained messages at start-up (`restore`). The storage crate itself knows
//! nothing of MQTT; this module translates (`codec`).

pub(crate) mod codec;
mod restore;
pub(crate) mod shared;
mod withheld;

use std::sync::Arc;

use messs_storage::sessions::SessionPrefix;
use messs_storage::telemetry::RetentionPolicy;
use messs_storage::{Durable, KeyRing, Store, StoreOptions, Ticket};

use crate::config::StorageConfig;
use crate::error::BrokerError;
use crate::session::{DiskLimits, SessionDisk, SessionKey};
use crate::stats::Stats;

/// The open store and what the configuration says to keep in it.
pub(crate) struct Persistence {
    pub store: Store,
    telemetry: Vec<String>,
    disk_limits: DiskLimits,
    pub retained_inline_bytes: usize,
    pub retention: RetentionPolicy,
    /// Client-caused audit records withheld while free space is low (see `withheld`).
    pub audit_withheld: withheld::Withheld,
    /// Messages stored once for several sessions' queues, and who holds them.
    pub shared: Arc<shared::SharedMessages>,
}

/// Reads the key material named by the configuration. Errors name the file or variable,
/// never its contents.
fn key_ring(config: &StorageConfig) -> Result<Option<KeyRing>, BrokerError> {
    let text = if let Some(path) = &config.encryption_key_file {
        std::fs::read_to_string(path).map_err(|e| {
            BrokerError::Config(format!(
                "storage.encryption_key_file {}: {e}",
                path.display()
            ))
        })?
    } else if let Some(var) = &config.encryption_key_env {
        std::env::var(var).map_err(|_| {
            BrokerError::Config(format!(
                "storage.encryption_key_env: environment variable {var} is not set"
            ))
        })?
    } else {
        return Ok(None);
    };
    KeyRing::parse(&text)
        .map(Some)
        .map_err(|e| BrokerError::Config(format!("storage encryption key: {e}")))
}

/// The audit chain's key: `storage.audit_key_file` (64 hex digits), else derived from the
/// encryption key ring, else none. A key file inside the data directory is refused: whoever
/// can rewrite the store could then rewrite the chain too.
fn audit_key(
    config: &StorageConfig,
    ring: Option<&KeyRing>,
) -> Result<Option<[u8; 32]>, BrokerError> {
    let Some(path) = &config.audit_key_file else {
        return Ok(ring.map(KeyRing::audit_key));
    };
    let bad = |why: String| {
        BrokerError::Config(format!("storage.audit_key_file {}: {why}", path.display()))
    };
    let absolute = |p: &std::path::Path| {
        std::path::absolute(p).map(|a| a.components().collect::<std::path::PathBuf>())
    };
    let (file, dir) = (
        absolute(path).map_err(|e| bad(e.to_string()))?,
        absolute(&config.data_dir).map_err(|e| bad(e.to_string()))?,
    );
    // As written and with every symlink resolved: a link outside the data directory to
    // a file inside it (or a data directory reached through a link) is still inside.
    let resolved = |p: &std::path::Path| std::fs::canonicalize(p).ok();
    let inside_resolved = match (resolved(path), resolved(&config.data_dir)) {
        (Some(f), Some(d)) => f.starts_with(d),
        _ => false,
    };
    if file.starts_with(&dir) || inside_resolved {
        return Err(bad(
            "it is inside the data directory; keep the audit key where a copy of the store does not reach"
                .into(),
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let hex = text.trim();
    let mut key = [0u8; 32];
    let parsed = hex.len() == 64
        && hex.is_ascii()
        && key.iter_mut().enumerate().all(|(i, b)| {
            u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                .map(|v| *b = v)
                .is_ok()
        });
    if !parsed {
        // The file's content never reaches the message.
        return Err(bad("expected 64 hex digits (32 bytes)".into()));
    }
    Ok(Some(key))
}

/// Seals a store written without encryption with the configured key (`messs storage
/// encrypt`, on a stopped broker): every value in clear is read and written back sealed.
/// Blocking.
pub fn seal_store(config: &StorageConfig) -> Result<messs_storage::seal::SealReport, BrokerError> {
    let ring = key_ring(config)?.ok_or_else(|| {
        BrokerError::Config(
            "messs storage encrypt needs a key: set storage.encryption_key_file or storage.encryption_key_env"
                .into(),
        )
    })?;
    let mut options = StoreOptions::new(&config.data_dir);
    options.audit_key = audit_key(config, Some(&ring))?;
    options.keys = Some(ring.allowing_unsealed());
    Ok(Store::open(options)?.seal_all()?)
}

impl Persistence {
    /// Opens the store. Blocking (RocksDB opens and replays its log).
    pub fn open(config: &StorageConfig) -> Result<Self, BrokerError> {
        let store = Store::open(store_options(config)?)?;
        let telemetry = config.telemetry.filters.clone();
        let t = &config.telemetry;
        Ok(Persistence {
            store,
            telemetry,
            disk_limits: DiskLimits {
                max_messages: config.max_stored_messages_per_session as u64,
                max_bytes: config.max_stored_bytes_per_session,
            },
            retained_inline_bytes: config.retained_inline_bytes,
            audit_withheld: withheld::Withheld::default(),
            shared: Arc::new(shared::SharedMessages::new(
                crate::clock::unix_ms(),
                Arc::new(Stats::default()),
            )),
            retention: RetentionPolicy {
                max_age_ms: (t.max_age_secs > 0).then(|| t.max_age_secs.saturating_mul(1000)),
                max_bytes_per_tenant: (t.max_bytes_per_tenant > 0)
                    .then_some(t.max_bytes_per_tenant),
            },
        })
    }

    /// The same store, its shared-message count reported in `stats` (the broker's).
    pub fn counted_in(mut self, stats: &Arc<Stats>) -> Self {
        self.shared = Arc::new(shared::SharedMessages::new(
            crate::clock::unix_ms(),
            stats.clone(),
        ));
        self
    }

    /// Whether acknowledgements wait for the store (`wal`, `fsync`).
    pub fn waits(&self) -> bool {
        self.store.durability().waits()
    }

    /// The store mirror for a session about to become persistent; `None` (logged) if its
    /// names cannot be stored.
    pub fn session_disk(
        &self,
        key: &SessionKey,
        session_id: u64,
        next_seq: u64,
        stats: &Arc<Stats>,
    ) -> Option<SessionDisk> {
        let prefix = match SessionPrefix::new(&key.tenant, &key.client_id) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "session cannot be stored; it stays in memory");
                return None;
            }
        };
        Some(SessionDisk::new(
            self.store.clone(),
            session_id,
            prefix,
            key.tenant.clone(),
            self.shared.clone(),
            self.disk_limits,
            stats.clone(),
            next_seq,
        ))
    }

    /// Appends an event by the broker itself to the audit log (not waited for; a failure is
    /// logged). While free space is below twice the watermark, records clients cause are
    /// withheld and summed up instead (see `withheld`): then it returns true.
    pub fn audit(&self, action: &str, detail: String) -> bool {
        self.audit_for(None, action, detail)
    }

    /// As `audit`, for an event of `tenant`'s (its own audit retention applies).
    pub fn audit_for(&self, tenant: Option<&str>, action: &str, detail: String) -> bool {
        let now_ms = crate::clock::unix_ms();
        if withheld::is_client_caused(action) && self.store.disk_nearly_low() {
            if self.audit_withheld.is_empty() {
                tracing::warn!(
                    "free disk space is below twice storage.min_free_disk_bytes: audit records clients cause (connects, disconnects, ACL denials, refused logins) are summed up in audit.withheld records until space is back"
                );
            }
            if let Some(summary) =
                self.audit_withheld
                    .withhold(action, std::time::Instant::now(), now_ms)
            {
                self.write_withheld_summary(summary, now_ms);
            }
            return true;
        }
        if let Some(summary) = self.audit_withheld.pending() {
            self.write_withheld_summary(summary, now_ms);
        }
        self.append(tenant, "broker", action, detail, now_ms);
        false
    }

    fn write_withheld_summary(&self, summary: String, now_ms: u64) {
        if self.append(None, "broker", "audit.withheld", summary, now_ms) {
            self.audit_withheld.written();
        }
    }

    fn append(
        &self,
        tenant: Option<&str>,
        actor: &str,
        action: &str,
        detail: String,
        time_ms: u64,
    ) -> bool {
        let event = messs_storage::audit::AuditEvent {
            time_ms,
            tenant: tenant.map(str::to_owned),
            actor: actor.into(),
            action: action.into(),
            detail,
        };
        // The operator's security actions that reach the log through the broker are
        // written from the reserved margin of a full disk, like the registry's.
        let appended = if matches!(action, "bans.set" | "client.kick") {
            self.store.append_operator_audit(&event)
        } else {
            self.store.append_audit(&event)
        };
        match appended {
            Ok(_) => true,
            Err(e) => {
                tracing::debug!(error = %e, action, "audit record not written");
                false
            }
        }
    }

    /// Whether messages on `topic` are kept as telemetry.
    pub fn is_telemetry(&self, topic: &str) -> bool {
        self.telemetry
            .iter()
            .any(|f| messs_storage::telemetry::topic_matches(f, topic))
    }
}

/// The store's options from the configuration (keys read from their files).
pub(crate) fn store_options(config: &StorageConfig) -> Result<StoreOptions, BrokerError> {
    let mut options = StoreOptions::new(&config.data_dir);
    options.durability = config.durability.to_storage();
    options.max_pending_bytes = config.max_pending_bytes;
    options.block_cache_bytes = config.block_cache_bytes;
    options.min_free_disk_bytes = config.min_free_disk_bytes;
    options.recover_wal = config.recover_wal;
    options.keys = key_ring(config)?;
    options.audit_key = audit_key(config, options.keys.as_ref())?;
    Ok(options)
}

/// The store writes one inbound packet causes, and the acknowledgement that waits for
/// them. The ticket is made on first use, so a publish that stores nothing costs nothing.
/// It is a unit ticket: the writer puts everything the packet stores into one RocksDB
/// write, and stores or refuses its new data as a whole — a QoS 2 packet id is never on
/// disk without the copies of its message. The unit is sealed when the packet's handler
/// is done with it (`finish`, or dropping it on an early return).
pub(crate) struct AckTicket {
    enabled: bool,
    ticket: Option<(Ticket, Durable)>,
}

impl AckTicket {
    /// A slot that hands out a ticket only if `enabled` (the store's level waits and the
    /// packet's acknowledgement may be held).
    pub fn new(enabled: bool) -> Self {
        AckTicket {
            enabled,
            ticket: None,
        }
    }

    /// The ticket to submit writes with, made on first use.
    pub fn get(&mut self) -> Option<&Ticket> {
        if !self.enabled {
            return None;
        }
        Some(&self.ticket.get_or_insert_with(Ticket::unit).0)
    }

    /// What the acknowledgement waits for: `None` when nothing was stored.
    pub fn finish(mut self) -> Option<Durable> {
        let (ticket, durable) = self.ticket.take()?;
        ticket.seal();
        // A write that could not even be submitted failed the ticket: the durable future
        // then resolves to that error.
        let wait = ticket.is_used() || ticket.is_failed();
        drop(ticket);
        wait.then_some(durable)
    }
}

impl Drop for AckTicket {
    fn drop(&mut self) {
        if let Some((ticket, _)) = &self.ticket {
            ticket.seal();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_key_file(data_dir: &std::path::Path, key_file: &std::path::Path) -> StorageConfig {
        StorageConfig {
            data_dir: data_dir.to_path_buf(),
            audit_key_file: Some(key_file.to_path_buf()),
            ..StorageConfig::default()
        }
    }

    /// The outside review's finding: the "inside the data directory" check compared paths
    /// as written, so a symlink outside the data directory to a key file inside it passed.
    #[test]
    fn an_audit_key_inside_the_data_directory_is_refused_even_through_a_link() {
        let root = tempfile::tempdir().unwrap();
        let data = root.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let key = "ab".repeat(32);
        let inside = data.join("audit.key");
        std::fs::write(&inside, &key).unwrap();
        let outside = root.path().join("audit.key");
        std::fs::write(&outside, &key).unwrap();
        let link = root.path().join("link.key");
        std::os::unix::fs::symlink(&inside, &link).unwrap();
        let data_link = root.path().join("data-link");
        std::os::unix::fs::symlink(&data, &data_link).unwrap();

        for (dir, file) in [(&data, &inside), (&data, &link), (&data_link, &inside)] {
            let err = audit_key(&with_key_file(dir, file), None).unwrap_err();
            assert!(
                err.to_string().contains("inside the data directory"),
                "{dir:?} {file:?}: {err}"
            );
        }
        assert_eq!(
            audit_key(&with_key_file(&data, &outside), None).unwrap(),
            Some([0xab; 32])
        );
    }
}
