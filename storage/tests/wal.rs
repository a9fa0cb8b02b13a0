//! A damaged store is never made worse by opening it: a damaged write-ahead log is refused
//! (nothing on disk changes) until the operator asks for a recovery, a read-only open
//! (verify) changes nothing at all, and a directory whose CURRENT file is gone is an error,
//! never a new empty database over the old files.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use messs_storage::sessions::{MessageRecord, QueuedRecord, SessionPrefix};
use messs_storage::{Batch, StorageError, Store, StoreOptions, Ticket};

const RECORDS: u64 = 3000;

fn prefix() -> SessionPrefix {
    SessionPrefix::new("t", "c").unwrap()
}

/// A store with `RECORDS` queued messages, each its own acknowledged write, closed
/// without a flush: they are in the write-ahead log only.
fn store_in_the_wal(dir: &Path) {
    store_n_in_the_wal(dir, RECORDS);
}

fn store_n_in_the_wal(dir: &Path, records: u64) {
    let store = Store::open(StoreOptions::new(dir)).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for seq in 0..records {
        let (ticket, durable) = Ticket::new();
        let mut b = Batch::new();
        let record = QueuedRecord {
            qos: 1,
            retain: false,
            subscription_ids: vec![],
            message: MessageRecord {
                topic: "t".into(),
                payload: Bytes::from(vec![b'x'; 100]),
                qos: 1,
                retain: false,
                expires_at: None,
                origin: 0,
                properties: Bytes::new(),
            },
            shared: None,
        };
        store.put_queued(&mut b, &prefix(), seq, &record).unwrap();
        store.submit(b, Some(&ticket)).unwrap();
        drop(ticket);
        rt.block_on(durable).unwrap();
    }
}

fn wal_files(dir: &Path) -> Vec<PathBuf> {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs
}

/// Every file in `dir`, with its size and a hash of its contents; `with_info_log`: RocksDB's
/// own diagnostic `LOG` files too (a read-write open writes them, as it should).
fn snapshot(dir: &Path, with_info_log: bool) -> BTreeMap<String, (usize, u64)> {
    use std::hash::{Hash, Hasher};
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_file() && (with_info_log || !name.starts_with("LOG")) {
            let bytes = std::fs::read(&path).unwrap();
            let mut h = std::collections::hash_map::DefaultHasher::new();
            bytes.hash(&mut h);
            files.insert(name, (bytes.len(), h.finish()));
        }
    }
    files
}

fn flip_a_byte_in_the_middle(file: &Path) {
    let mut bytes = std::fs::read(file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(file, &bytes).unwrap();
}

/// The outside audit: a flipped byte in the WAL dropped everything after it on open
/// (1,522 of 3,000 came back), silently, and a verify made that permanent.
#[test]
fn a_damaged_wal_is_refused_and_nothing_changes_until_a_recovery_is_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    store_in_the_wal(dir.path());
    let wal = wal_files(dir.path());
    assert!(!wal.is_empty());
    flip_a_byte_in_the_middle(wal.last().unwrap());
    let before = snapshot(dir.path(), false);
    let original = std::fs::read(wal.last().unwrap()).unwrap();

    let err = Store::open(StoreOptions::new(dir.path())).unwrap_err();
    let StorageError::WalDamaged { damage, .. } = &err else {
        panic!("{err}")
    };
    assert!(damage.lost() > 100 && damage.lost() < RECORDS, "{damage:?}");
    assert!(err.to_string().contains("--recover-wal"), "{err}");
    assert_eq!(
        snapshot(dir.path(), false),
        before,
        "a refused open changed files"
    );

    let before = snapshot(dir.path(), true);
    let mut read_only = StoreOptions::new(dir.path());
    read_only.read_only = true;
    let err = Store::open(read_only).unwrap_err();
    assert!(matches!(err, StorageError::WalDamaged { .. }), "{err}");
    assert_eq!(
        snapshot(dir.path(), true),
        before,
        "a read-only open changed files"
    );

    let mut recover = StoreOptions::new(dir.path());
    recover.recover_wal = true;
    let store = Store::open(recover).unwrap();
    let kept = store
        .read_queue(&prefix(), 0, RECORDS as usize, usize::MAX)
        .unwrap()
        .len() as u64;
    assert!(kept > 0 && kept < RECORDS, "{kept} kept");
    drop(store);
    // The damaged log was copied aside before the recovery dropped its tail.
    let aside: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir() && p.to_string_lossy().contains("wal-damaged-"))
        .collect();
    assert_eq!(aside.len(), 1);
    let copied = wal_files(&aside[0]);
    let name = wal.last().unwrap().file_name().unwrap();
    assert!(copied
        .iter()
        .any(|c| c.file_name() == Some(name) && std::fs::read(c).unwrap() == original));
    // And the store opens normally from now on.
    drop(Store::open(StoreOptions::new(dir.path())).unwrap());
}

#[test]
fn a_read_only_open_of_a_healthy_store_changes_nothing_and_reads_everything() {
    let dir = tempfile::tempdir().unwrap();
    store_in_the_wal(dir.path());
    let before = snapshot(dir.path(), true);
    let mut read_only = StoreOptions::new(dir.path());
    read_only.read_only = true;
    let store = Store::open(read_only).unwrap();
    assert_eq!(
        store
            .read_queue(&prefix(), 0, RECORDS as usize, usize::MAX)
            .unwrap()
            .len() as u64,
        RECORDS
    );
    assert!(store.verify().unwrap().is_ok());
    drop(store);
    assert_eq!(snapshot(dir.path(), true), before);
}

/// The outside audit: with CURRENT (and the WAL) gone, opening made a new empty database
/// and deleted every SST file.
#[test]
fn a_missing_current_file_is_an_error_never_an_empty_database() {
    let dir = tempfile::tempdir().unwrap();
    store_in_the_wal(dir.path());
    {
        // Into SST files, so there is data outside the log.
        let store = Store::open(StoreOptions::new(dir.path())).unwrap();
        store.compact().unwrap();
    }
    std::fs::remove_file(dir.path().join("CURRENT")).unwrap();
    for wal in wal_files(dir.path()) {
        std::fs::remove_file(wal).unwrap();
    }
    let before = snapshot(dir.path(), false);
    assert!(before.keys().any(|n| n.ends_with(".sst")));
    for read_only in [false, true] {
        let mut options = StoreOptions::new(dir.path());
        options.read_only = read_only;
        let err = Store::open(options).unwrap_err();
        assert!(matches!(err, StorageError::Damaged { .. }), "{err}");
        assert!(err.to_string().contains("CURRENT"), "{err}");
        assert_eq!(snapshot(dir.path(), false), before);
    }
}

/// The outside audit of the first fix: in a log of one 32 KiB block, damage made RocksDB
/// skip the whole block, and the error said "about 0 changes" would be lost (164 were).
/// The estimate reads the log's own framing.
#[test]
fn the_loss_a_small_damaged_log_would_cost_is_counted() {
    const FEW: u64 = 100;
    let dir = tempfile::tempdir().unwrap();
    store_n_in_the_wal(dir.path(), FEW);
    let wal = wal_files(dir.path());
    let file = wal.last().unwrap();
    let mut bytes = std::fs::read(file).unwrap();
    assert!(
        bytes.len() < 32 * 1024,
        "{} bytes: more than one block",
        bytes.len()
    );
    let at = bytes.len() / 3;
    bytes[at] ^= 0xff;
    std::fs::write(file, &bytes).unwrap();
    let err = Store::open(StoreOptions::new(dir.path())).unwrap_err();
    let StorageError::WalDamaged { damage, .. } = &err else {
        panic!("{err}")
    };
    let mut recover = StoreOptions::new(dir.path());
    recover.recover_wal = true;
    let store = Store::open(recover).unwrap();
    let kept = store
        .read_queue(&prefix(), 0, FEW as usize, usize::MAX)
        .unwrap()
        .len() as u64;
    let lost = FEW - kept;
    assert!(lost > 10, "{lost} lost");
    assert!(
        damage.lost() >= lost && damage.lost() <= lost + 5,
        "said {} for {lost} lost",
        damage.lost()
    );
}
