//! The storage crate's error enum.

/// Errors from opening, reading or writing the store.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// RocksDB reported an error (I/O, corruption it detected itself, a lock held by another
    /// process, ...).
    #[error("rocksdb: {0}")]
    Db(#[from] rocksdb::Error),
    /// The data directory was written by a newer messs: never opened, never reset.
    #[error(
        "the data directory has schema version {found}, newer than this messs supports \
         ({supported}): run the messs release that wrote it, or restore a backup"
    )]
    NewerSchema {
        /// Version found on disk.
        found: u32,
        /// Highest version this build understands.
        supported: u32,
    },
    /// A stored record could not be decoded.
    #[error("corrupt record in column family {cf}: {what}")]
    Corrupt {
        /// Column family it was read from.
        cf: &'static str,
        /// What was wrong with it.
        what: String,
    },
    /// The write-ahead log is damaged: opening would drop what is after the damage.
    #[error(
        "the write-ahead log in {} is damaged: recovery would stop at change {} and drop \
         about {} changes written after the damage. Nothing was changed. Copy the data \
         directory aside, then start once with `messs serve --recover-wal` to keep what is \
         before the damage (the damaged log files are copied into a wal-damaged-* \
         directory first)",
        path.display(), damage.kept, damage.lost()
    )]
    WalDamaged {
        /// The data directory.
        path: std::path::PathBuf,
        /// How much is past the damage.
        damage: crate::wal::WalDamage,
    },
    /// The data directory is damaged in a way that opening it would make worse.
    #[error("the data directory {} is damaged: {what}", path.display())]
    Damaged {
        /// The data directory.
        path: std::path::PathBuf,
        /// What is wrong, and what to do.
        what: &'static str,
    },
    /// A column family the schema needs is missing from an existing data directory.
    #[error("the data directory lacks column family {0}: it is not a messs data directory, or it is damaged")]
    MissingColumnFamily(&'static str),
    /// Writes are backed up beyond `max_pending_bytes`: the caller refuses or retries.
    #[error("the storage writer is behind: {0} bytes of writes are waiting")]
    Busy(usize),
    /// A write was refused because free disk space is below what its class needs (see
    /// the `space` module): RocksDB must never find the disk full.
    #[error(
        "free disk space is low: {free} bytes free, this write needs {needed} \
         (storage.min_free_disk_bytes); it resumes by itself once space is freed"
    )]
    DiskLow {
        /// Free bytes on the data directory's file system.
        free: u64,
        /// What the write's class needs free.
        needed: u64,
    },
    /// A write batch failed (disk full, I/O error); the message is RocksDB's, without data.
    #[error("storage write failed: {0}")]
    WriteFailed(String),
    /// The writer thread is gone (the store was closed).
    #[error("the storage writer has stopped")]
    WriterStopped,
    /// A value could not be encrypted or decrypted, or the key material is unusable.
    #[error("encryption at rest: {0}")]
    Crypto(String),
    /// A key or value is larger than its encoding allows.
    #[error("{0} is too long to store")]
    TooLong(&'static str),
    /// A registry change was refused: a bad name, a duplicate, a limit.
    #[error("{0}")]
    Invalid(String),
    /// A registry entry does not exist.
    #[error("no such {0}")]
    NotFound(String),
    /// File-system error outside RocksDB (key files, checkpoint directories).
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl StorageError {
    /// A corrupt-record error for column family (or record kind) `cf`.
    pub fn corrupt(cf: &'static str, what: impl Into<String>) -> Self {
        StorageError::Corrupt {
            cf,
            what: what.into(),
        }
    }
}
