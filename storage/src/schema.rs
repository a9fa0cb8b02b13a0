//! Column families, the schema version in `meta`, and migrations. Opening a directory
//! written by a newer messs, or one that is not a messs data directory, is an error: the
//! store never resets data it does not understand.

use rocksdb::{BlockBasedOptions, Cache, ColumnFamilyDescriptor, Options, DB};

use crate::error::StorageError;

/// The schema this build writes. Bump it with a migration in [`MIGRATIONS`].
pub const SCHEMA_VERSION: u32 = 3;

/// Key of the schema version in `meta`.
const VERSION_KEY: &[u8] = b"schema_version";

/// One step from version `from` to `from + 1`.
type Migration = fn(&DB) -> Result<(), StorageError>;

/// Migrations by the version they start from; `MIGRATIONS[n]` takes n+1 to n+2. Each runs
/// once, then the version is written.
const MIGRATIONS: &[Migration] = &[add_tenants, add_messages];

/// 1 -> 2: the `tenants` family, created empty when the store opens with every family of
/// this version (`create_missing_column_families`); nothing to copy.
fn add_tenants(db: &DB) -> Result<(), StorageError> {
    db.cf_handle(Cf::Tenants.name())
        .map(|_| ())
        .ok_or(StorageError::MissingColumnFamily(Cf::Tenants.name()))
}

/// 2 -> 3: the `messages` family (messages stored once for several sessions' queues),
/// created empty like `tenants`. A queue written before holds whole messages, which this
/// version still reads; an older messs refuses the directory from now on (it could not
/// read a queue that refers to a shared message).
fn add_messages(db: &DB) -> Result<(), StorageError> {
    db.cf_handle(Cf::Messages.name())
        .map(|_| ())
        .ok_or(StorageError::MissingColumnFamily(Cf::Messages.name()))
}

/// The column families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cf {
    /// Schema version, audit chain head, and other singletons.
    Meta,
    /// Persistent sessions: record, subscriptions, incoming QoS 2 ids, pending will.
    Sessions,
    /// Messages queued for persistent sessions (offline, or not yet acknowledged).
    Queue,
    /// Outgoing QoS 1/2 state of queued messages: packet id, and whether PUBREL was sent.
    Inflight,
    /// Retained messages.
    Retained,
    /// Telemetry: messages on configured filters, by tenant and time.
    Telemetry,
    /// The hash-chained audit log.
    Audit,
    /// Device credentials (the security issue's registry).
    Devices,
    /// Topic ACL rules (the security issue's registry).
    Acls,
    /// Admin accounts and roles (the admin issue's registry).
    Admins,
    /// Tenants and their JWT keys, trusted CAs and revoked certificates (schema 2).
    Tenants,
    /// Messages stored once for the queues of several persistent sessions, which refer
    /// to them (schema 3).
    Messages,
}

impl Cf {
    /// Every column family, in creation order.
    pub const ALL: [Cf; 12] = [
        Cf::Meta,
        Cf::Sessions,
        Cf::Queue,
        Cf::Inflight,
        Cf::Retained,
        Cf::Telemetry,
        Cf::Audit,
        Cf::Devices,
        Cf::Acls,
        Cf::Admins,
        Cf::Tenants,
        Cf::Messages,
    ];

    /// Its name on disk.
    pub const fn name(self) -> &'static str {
        match self {
            Cf::Meta => "meta",
            Cf::Sessions => "sessions",
            Cf::Queue => "queue",
            Cf::Inflight => "inflight",
            Cf::Retained => "retained",
            Cf::Telemetry => "telemetry",
            Cf::Audit => "audit",
            Cf::Devices => "devices",
            Cf::Acls => "acls",
            Cf::Admins => "admins",
            Cf::Tenants => "tenants",
            Cf::Messages => "messages",
        }
    }
}

/// Options for a column family: LZ4 for data that compresses (payloads, records), and
/// 16 MiB memtables (RocksDB's 64 MiB default, per family, would let a busy queue hold
/// 128 MiB of memory before its first flush) — 2 MiB for the audit log and `meta` (see
/// [`SMALL_MEMTABLE_BYTES`]).
///
/// Every family reads through `cache`, the one block cache of `storage.block_cache_bytes`,
/// with its index and filter blocks in it too: a family given no cache of its own gets a
/// private 32 MiB one from RocksDB, so thirteen families could hold 416 MiB of blocks
/// whatever the setting, and index blocks held outside a cache grow with the number of
/// table files.
fn cf_options(cf: Option<Cf>, cache: &Cache) -> Options {
    let mut o = Options::default();
    o.set_compression_type(rocksdb::DBCompressionType::Lz4);
    let memtable = match cf {
        Some(Cf::Audit | Cf::Meta) => SMALL_MEMTABLE_BYTES,
        _ => 16 << 20,
    };
    o.set_write_buffer_size(memtable);
    o.set_max_write_buffer_number(2);
    o.set_block_based_table_factory(&table_options(cache));
    o
}

/// Table files read through `cache`, their index and filter blocks in it too (see
/// [`cf_options`]); also the database's own options, which a read-only open takes for
/// every family.
pub(crate) fn table_options(cache: &Cache) -> BlockBasedOptions {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    table.set_cache_index_and_filter_blocks(true);
    // The newest files' index and filter blocks stay in the cache (counted in it): every
    // read looks at them first.
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    table
}

/// The memtable of the audit log and of `meta`. Audit records (one per connect and
/// disconnect, ~400 bytes) are appended under ever-growing keys and seldom read, and
/// `meta`'s few keys (the audit chain's head, key usage) are overwritten with every
/// append, so a large memtable buys them nothing but memory: 16 MiB each were 420 bytes per
/// connection of the first 40,000 (the idle byte table in docs/PERFORMANCE.md) and 32 MiB
/// of a client id's reconnect churn. Flushed audit files of increasing keys do not
/// overlap, so the extra flushes cost little compaction.
const SMALL_MEMTABLE_BYTES: usize = 2 << 20;

/// Opens (or creates) the database at `path` with `db_opts`, every family reading through
/// `cache`, then checks or writes the schema version and runs pending migrations. With
/// `read_only` it only opens and checks: nothing in the directory changes.
pub(crate) fn open(
    path: &std::path::Path,
    mut db_opts: Options,
    cache: &Cache,
    read_only: bool,
) -> Result<DB, StorageError> {
    let existing = DB::list_cf(&Options::default(), path).ok();
    match &existing {
        Some(names) => {
            // An existing directory must have every family of its version; a new version's
            // families are created by its migration, so only the first ones are required.
            for cf in [Cf::Meta, Cf::Sessions, Cf::Queue, Cf::Retained] {
                if !names.iter().any(|n| n == cf.name()) {
                    return Err(StorageError::MissingColumnFamily(cf.name()));
                }
            }
            db_opts.create_if_missing(false);
        }
        None if crate::wal::has_database_files(path) => {
            // RocksDB would make a new, empty database here and delete the old files.
            return Err(StorageError::Damaged {
                path: path.to_path_buf(),
                what: "it holds database files but no readable CURRENT file; nothing was \
                       changed. Restore CURRENT (it names the newest MANIFEST-* file) or a \
                       backup",
            });
        }
        None if read_only => {
            return Err(StorageError::Damaged {
                path: path.to_path_buf(),
                what: "there is no database in it",
            });
        }
        None => db_opts.create_if_missing(true),
    }
    if read_only {
        let names = existing.unwrap_or_default();
        let _log = crate::wal::InfoLogElsewhere::set(&mut db_opts);
        let db = DB::open_cf_for_read_only(&db_opts, path, names, false)?;
        check_supported(read_version(&db)?.ok_or_else(no_version)?)?;
        return Ok(db);
    }
    db_opts.create_missing_column_families(true);
    // RocksDB's unused `default` family is opened too, with RocksDB's default options
    // unless given ours: its 64 MiB memtable would be the largest, and after a full disk
    // RocksDB waits for that much free space before it writes again (and preallocates WAL
    // files of 1.1 times it) — on a small disk, never.
    let default =
        ColumnFamilyDescriptor::new(rocksdb::DEFAULT_COLUMN_FAMILY_NAME, cf_options(None, cache));
    let descriptors = Cf::ALL
        .iter()
        .map(|cf| ColumnFamilyDescriptor::new(cf.name(), cf_options(Some(*cf), cache)))
        .chain(std::iter::once(default));
    let db = DB::open_cf_descriptors(&db_opts, path, descriptors)?;
    let meta = db
        .cf_handle(Cf::Meta.name())
        .ok_or(StorageError::MissingColumnFamily(Cf::Meta.name()))?;
    let found = match read_version(&db)? {
        None if existing.is_some() => return Err(no_version()),
        None => {
            db.put_cf(meta, VERSION_KEY, SCHEMA_VERSION.to_be_bytes())?;
            db.flush_wal(true)?;
            SCHEMA_VERSION
        }
        Some(v) => v,
    };
    check_supported(found)?;
    for version in found..SCHEMA_VERSION {
        let index = (version - 1) as usize;
        if let Some(migrate) = MIGRATIONS.get(index) {
            tracing::info!(
                from = version,
                to = version + 1,
                "migrating the data directory"
            );
            migrate(&db)?;
        }
        db.put_cf(meta, VERSION_KEY, (version + 1).to_be_bytes())?;
        db.flush_wal(true)?;
    }
    Ok(db)
}

fn no_version() -> StorageError {
    StorageError::corrupt("meta", "no schema version in an existing data directory")
}

/// The schema version stored in `meta`, if any.
fn read_version(db: &DB) -> Result<Option<u32>, StorageError> {
    let meta = db
        .cf_handle(Cf::Meta.name())
        .ok_or(StorageError::MissingColumnFamily(Cf::Meta.name()))?;
    let Some(v) = db.get_cf(meta, VERSION_KEY)? else {
        return Ok(None);
    };
    let bytes: [u8; 4] = v
        .as_slice()
        .try_into()
        .map_err(|_| StorageError::corrupt("meta", "schema version is not 4 bytes"))?;
    Ok(Some(u32::from_be_bytes(bytes)))
}

/// A version this build can open (older ones are migrated).
fn check_supported(found: u32) -> Result<(), StorageError> {
    if found > SCHEMA_VERSION {
        return Err(StorageError::NewerSchema {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    if found == 0 {
        return Err(StorageError::corrupt("meta", "schema version 0"));
    }
    Ok(())
}
