//! messs-storage: the broker's durable state in RocksDB.
//!
//! - [`Store`] opens a data directory (column families and schema version in
//!   [`schema`]), and owns the one writer thread ([`writer`]): every change is a [`Batch`]
//!   submitted to it, group-committed, and acknowledged through a [`Ticket`] at the
//!   configured [`Durability`].
//! - Typed records: persistent sessions and their queues ([`sessions`]), retained messages
//!   ([`retained`]), telemetry with retention and queries ([`telemetry`]), and the
//!   hash-chained audit log ([`audit`]). Payloads and secret values are sealed with
//!   AES-256-GCM when a key is configured ([`crypto`]).
//! - Operator tasks: online checkpoints, compaction, and a full verify ([`maintenance`]).
//!
//! The crate knows nothing of sockets or MQTT sessions; the broker decides what to store
//! and when, and reads happen on its blocking pool, never on the async reactor.

pub mod admins;
pub mod audit;
pub mod crypto;
mod error;
pub mod keys;
pub mod maintenance;
pub mod record;
pub mod registry;
pub mod retained;
pub mod schema;
pub mod seal;
pub mod sessions;
pub mod space;
pub mod telemetry;
pub mod wal;
pub mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{Cache, ColumnFamily, Options, DB};

pub use crypto::KeyRing;
pub use error::StorageError;
pub use schema::{Cf, SCHEMA_VERSION};
pub use writer::{Batch, Durability, Durable, Ticket, WriterStats};

/// Bytes RocksDB holds in memory (see [`Store::memory`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreMemory {
    /// The block cache's.
    pub block_cache_bytes: u64,
    /// Every family's memtables'.
    pub memtable_bytes: u64,
}

/// How to open a store.
#[derive(Debug)]
pub struct StoreOptions {
    /// The data directory (created if missing).
    pub path: PathBuf,
    /// When writes count as done.
    pub durability: Durability,
    /// Most bytes of submitted, unwritten batches with new data before further ones are
    /// refused ([`StorageError::Busy`]).
    pub max_pending_bytes: usize,
    /// Bytes of RocksDB's block cache (reads of queued messages and large retained
    /// payloads).
    pub block_cache_bytes: usize,
    /// Key material for encryption at rest; `None` stores values plain.
    pub keys: Option<KeyRing>,
    /// The key audit records are linked with (HMAC-SHA256); `None`: plain SHA-256 links,
    /// which show accidents but not a rewrite by someone who can write the data directory.
    /// Keep it outside the data directory.
    pub audit_key: Option<[u8; 32]>,
    /// Below this many free bytes on the store's file system, new data is refused (see
    /// [`writer`]); 0 turns the check off.
    pub min_free_disk_bytes: u64,
    /// Open even if the write-ahead log is damaged, keeping what is before the damage
    /// (point-in-time recovery; the log files are copied aside first). Off: a damaged
    /// log is an error ([`StorageError::WalDamaged`]) and nothing changes (see [`wal`]).
    pub recover_wal: bool,
    /// Open without changing anything in the directory (verify): no writes, no WAL
    /// replay written back, no lock taken.
    pub read_only: bool,
}

impl StoreOptions {
    /// Defaults for `path`: `wal` durability, 64 MiB of pending writes, a 32 MiB cache, no
    /// encryption, new data refused below 64 MiB of free disk.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        StoreOptions {
            path: path.into(),
            durability: Durability::Wal,
            max_pending_bytes: 64 << 20,
            block_cache_bytes: 32 << 20,
            keys: None,
            audit_key: None,
            min_free_disk_bytes: 64 << 20,
            recover_wal: false,
            read_only: false,
        }
    }
}

pub(crate) struct Inner {
    pub(crate) db: Arc<DB>,
    pub(crate) writer: writer::Writer,
    pub(crate) keys: Option<KeyRing>,
    pub(crate) durability: Durability,
    pub(crate) path: PathBuf,
    pub(crate) audit: audit::Chain,
    pub(crate) telemetry: telemetry::Usage,
    /// The block cache every family reads through (`block_cache_bytes`).
    pub(crate) cache: Cache,
    /// Serialises registry changes (read-modify-write; see [`registry`]).
    pub(crate) registry: std::sync::Mutex<()>,
    pub(crate) read_only: bool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.writer.stop();
        if self.read_only {
            return;
        }
        if let Some(ring) = &self.keys {
            // The count since the last write (the writer has stopped: written directly).
            let mut b = rocksdb::WriteBatch::default();
            if let (writer::Op::Put(cf, k, v), Some(handle)) =
                (key_usage_op(ring), self.db.cf_handle(Cf::Meta.name()))
            {
                debug_assert!(cf == Cf::Meta);
                b.put_cf(handle, k, v);
                if let Err(e) = self.db.write(b) {
                    tracing::warn!(error = %e, "the encryption key's use count was not saved");
                }
            }
        }
        if let Err(e) = self.db.flush_wal(true) {
            tracing::warn!(error = %e, "flushing the write-ahead log at close failed");
        }
    }
}

/// Key in `meta` of the count of values key `id` sealed.
fn key_usage_key(id: u32) -> Vec<u8> {
    [b"key_usage:".as_slice(), &id.to_be_bytes()].concat()
}

/// The write of the active key's use count.
fn key_usage_op(ring: &KeyRing) -> writer::Op {
    writer::Op::Put(
        Cf::Meta,
        key_usage_key(ring.active_id()),
        ring.usage().to_be_bytes().to_vec(),
    )
}

/// Free space RocksDB needs to resume writing after it found the disk full: its largest
/// memtable (`schema::cf_options`).
const RESUME_FREE_BYTES: u64 = 16 << 20;

/// Opens the database: strict about the write-ahead log, unless the operator asked for
/// a recovery (see [`wal`]).
fn open_db(
    options: &StoreOptions,
    mut db_opts: Options,
    cache: &Cache,
) -> Result<DB, StorageError> {
    use rocksdb::DBRecoveryMode;
    let path = &options.path;
    db_opts.set_wal_recovery_mode(DBRecoveryMode::TolerateCorruptedTailRecords);
    let strict = schema::open(path, db_opts.clone(), cache, options.read_only);
    let error = match strict {
        Ok(db) => return Ok(db),
        Err(e) if wal::is_corruption(&e) => e,
        Err(e) => return Err(e),
    };
    let Some(damage) = wal::diagnose(path) else {
        return Err(error);
    };
    if !options.recover_wal || options.read_only {
        return Err(StorageError::WalDamaged {
            path: path.clone(),
            damage,
        });
    }
    let aside = wal::set_aside(path)?;
    tracing::warn!(
        kept = damage.kept,
        lost = damage.lost(),
        copy = %aside.display(),
        "the write-ahead log is damaged: recovering what is before the damage, as asked (--recover-wal); about {} changes after it are dropped",
        damage.lost()
    );
    db_opts.set_wal_recovery_mode(DBRecoveryMode::PointInTime);
    schema::open(path, db_opts, cache, false)
}

/// Makes a directory the owner's alone (0700): it holds credentials, sealed or not, and
/// the audit log. (The `messs` binary also sets a umask of 077, so the files in it are
/// 0600.)
pub(crate) fn owner_only(dir: &Path) -> Result<(), StorageError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// An open data directory. Cheap to clone; the writer stops (after writing what is
/// queued) when the last clone is dropped.
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .field("durability", &self.inner.durability)
            .finish()
    }
}

impl Store {
    /// Opens or creates the data directory. A directory written by a newer messs, one that
    /// is not a messs directory, or a corrupt one is an error, never reset; so is a
    /// damaged write-ahead log unless `recover_wal` (see [`wal`]). With `read_only` the
    /// directory must exist and nothing in it changes.
    pub fn open(options: StoreOptions) -> Result<Store, StorageError> {
        if !options.read_only {
            std::fs::create_dir_all(&options.path)?;
            owner_only(&options.path)?;
        }
        let mut db_opts = Options::default();
        db_opts.increase_parallelism(2);
        db_opts.set_max_background_jobs(2);
        db_opts.set_keep_log_file_num(4);
        // The log's files go once every memtable with changes in them is flushed: at most
        // the memtables' own budget, so deletes give their space back on a small disk too.
        db_opts.set_max_total_wal_size(64 << 20);
        db_opts.set_paranoid_checks(true);
        // All memtables together: flushed early rather than grow past this.
        db_opts.set_db_write_buffer_size(64 << 20);
        // One cache for every family (see `schema::cf_options`).
        let cache = Cache::new_lru_cache(options.block_cache_bytes);
        db_opts.set_block_based_table_factory(&schema::table_options(&cache));
        let db = Arc::new(open_db(&options, db_opts, &cache)?);
        let min_free = options.min_free_disk_bytes;
        if min_free > 0 && min_free / 2 < RESUME_FREE_BYTES && !options.read_only {
            tracing::warn!(
                min_free,
                "storage.min_free_disk_bytes is below 32 MiB: after a full disk RocksDB needs 16 MiB free to write again, and bookkeeping may use the watermark's upper half"
            );
        }
        if let Some(ring) = &options.keys {
            let meta = db
                .cf_handle(Cf::Meta.name())
                .ok_or(StorageError::MissingColumnFamily(Cf::Meta.name()))?;
            let used = db
                .get_cf(meta, key_usage_key(ring.active_id()))?
                .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
                .map_or(0, u64::from_be_bytes);
            ring.set_usage(used);
        }
        let audit = audit::Chain::load(&db, options.audit_key)?;
        let telemetry = telemetry::Usage::load(&db)?;
        let writer = writer::Writer::start(
            db.clone(),
            options.durability,
            options.max_pending_bytes,
            (options.path.clone(), options.min_free_disk_bytes),
        );
        Ok(Store {
            inner: Arc::new(Inner {
                db,
                writer,
                keys: options.keys,
                durability: options.durability,
                path: options.path,
                audit,
                telemetry,
                cache,
                registry: std::sync::Mutex::new(()),
                read_only: options.read_only,
            }),
        })
    }

    /// A random 32-byte secret of this data directory, made at its first use and kept in
    /// `meta` (sealed when encryption is on): what must stay the same across restarts but
    /// never leave the store, e.g. the key that derives SCRAM decoys for unknown users (a
    /// per-process key would change them at each restart, and a stable real salt would
    /// then tell a real device from a decoy). Blocking.
    pub fn local_secret(&self, name: &str) -> Result<[u8; 32], StorageError> {
        let _g = self.registry_guard();
        let key = [b"secret:".as_slice(), name.as_bytes()].concat();
        if let Some(v) = self.get(Cf::Meta, &key)? {
            let plain = self.open_secret(&key, &v)?;
            return plain
                .as_slice()
                .try_into()
                .map_err(|_| StorageError::corrupt("meta", "local secret length"));
        }
        let mut secret = [0u8; 32];
        aws_lc_rs::rand::fill(&mut secret)
            .map_err(|_| StorageError::Crypto("the system random source failed".into()))?;
        let mut b = writer::Batch::new();
        b.push(writer::Op::Put(
            Cf::Meta,
            key.clone(),
            self.seal_secret(&key, &secret)?,
        ));
        self.write_now(b)?;
        Ok(secret)
    }

    /// The configured durability level.
    pub fn durability(&self) -> Durability {
        self.inner.durability
    }

    /// The data directory.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The writer's counters.
    pub fn writer_stats(&self) -> &WriterStats {
        &self.inner.writer.stats
    }

    /// What RocksDB holds in memory now: the block cache's bytes (at most
    /// `block_cache_bytes`, give or take the entries readers hold pinned) and the
    /// memtables' of every family (at most two of each family's write buffer).
    pub fn memory(&self) -> StoreMemory {
        let memtable_bytes = Cf::ALL
            .iter()
            .filter_map(|cf| self.inner.db.cf_handle(cf.name()))
            .filter_map(|h| {
                self.inner
                    .db
                    .property_int_value_cf(h, "rocksdb.cur-size-all-mem-tables")
                    .ok()
                    .flatten()
            })
            .sum();
        StoreMemory {
            block_cache_bytes: self.inner.cache.get_usage() as u64,
            memtable_bytes,
        }
    }

    /// Whether the last write failed (cleared by the next that succeeds).
    pub fn is_failing(&self) -> bool {
        self.inner
            .writer
            .stats
            .failing
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Queues `batch` for the writer; `ticket` (if any) resolves once it is durable.
    pub fn submit(&self, mut batch: Batch, ticket: Option<&Ticket>) -> Result<(), StorageError> {
        if let Some(ring) = self.keys() {
            if ring.take_usage_persist_due() {
                batch.push(key_usage_op(ring));
            }
        }
        self.inner.writer.submit(batch, ticket)
    }

    /// Changes the free-space watermark below which new data is refused (0: off); it takes
    /// effect within 100 ms.
    pub fn set_min_free_disk_bytes(&self, bytes: u64) {
        self.inner.writer.set_min_free(bytes);
    }

    /// Whether free disk space is below the watermark: new data is refused.
    pub fn disk_low(&self) -> bool {
        self.inner.writer.space_is_low()
    }

    /// Whether free disk space is below twice the watermark: the broker sums up the audit
    /// records clients can cause instead of writing each, so that connection churn alone
    /// never brings the disk down to where messages are refused.
    pub fn disk_nearly_low(&self) -> bool {
        self.inner.writer.space_is_nearly_low()
    }

    /// While `on`, every write fails as on a full disk, until it is turned off again
    /// (fault drills and tests; nothing in the broker turns it on).
    pub fn set_write_fault(&self, on: bool) {
        self.inner.writer.set_fault(on);
    }

    /// Waits until the writer has finished everything submitted before this call (written
    /// or failed), without writing anything itself: a reader calls it to see every change
    /// submitted so far. Blocking.
    pub fn wait_written(&self) -> Result<(), StorageError> {
        self.inner.writer.wait_written()
    }

    /// Waits until everything submitted so far is written (tests, shutdown, checkpoints).
    /// Blocking: call from a blocking thread.
    pub fn sync(&self) -> Result<(), StorageError> {
        let (ticket, durable) = Ticket::new();
        let mut batch = Batch::new();
        // A no-op write that orders behind everything queued.
        batch.push(writer::Op::Delete(Cf::Meta, b"sync-barrier".to_vec()));
        self.submit(batch, Some(&ticket))?;
        drop(ticket);
        block_on(durable)
    }

    /// Writes everything submitted so far and syncs the write-ahead log (shutdown).
    /// Blocking.
    pub fn flush(&self) -> Result<(), StorageError> {
        self.sync()?;
        self.inner.db.flush_wal(true)?;
        Ok(())
    }

    pub(crate) fn cf(&self, cf: Cf) -> Result<&ColumnFamily, StorageError> {
        self.inner
            .db
            .cf_handle(cf.name())
            .ok_or(StorageError::MissingColumnFamily(cf.name()))
    }

    /// The active encryption key's id and how many values it has sealed (of
    /// [`crypto::KEY_USAGE_LIMIT`]); `None` without encryption.
    pub fn key_usage(&self) -> Option<(u32, u64)> {
        self.keys().map(|r| (r.active_id(), r.usage()))
    }

    pub(crate) fn keys(&self) -> Option<&KeyRing> {
        self.inner.keys.as_ref()
    }

    /// Seals a secret value for `key` in `cf` (the registries of the security and admin
    /// issues store credentials this way).
    pub fn seal_secret(&self, key: &[u8], plain: &[u8]) -> Result<Vec<u8>, StorageError> {
        crypto::seal(self.keys(), key, plain)
    }

    /// Opens a value sealed by [`Store::seal_secret`] for the same key.
    pub fn open_secret(&self, key: &[u8], stored: &[u8]) -> Result<Vec<u8>, StorageError> {
        crypto::open(self.keys(), key, stored)
    }
}

/// Waits for a future on the current (non-async) thread: the storage writer resolves it
/// from its own thread, so no runtime is needed.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    use std::task::{Context, Poll, Wake, Waker};
    struct ThreadWaker(std::thread::Thread);
    impl Wake for ThreadWaker {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(v) = future.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}
