//! The store on real RocksDB in temporary directories: what is written survives a reopen,
//! tickets resolve at their durability level, bad directories are refused, encryption,
//! telemetry retention and queries, the audit chain, checkpoints and write faults.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use bytes::Bytes;
use messs_storage::audit::AuditEvent;
use messs_storage::sessions::{
    InflightRecord, MessageRecord, QueuedRecord, SessionPrefix, SessionRecord, SubscriptionRecord,
    WillRecord,
};
use messs_storage::telemetry::{RetentionPolicy, TelemetryQuery};
use messs_storage::{Batch, Durability, KeyRing, StorageError, Store, StoreOptions, Ticket};

const KEY: &str = "7:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

fn open(dir: &Path) -> Store {
    Store::open(StoreOptions::new(dir)).unwrap()
}

fn message(topic: &str, payload: &[u8]) -> MessageRecord {
    MessageRecord {
        topic: topic.into(),
        payload: Bytes::copy_from_slice(payload),
        qos: 1,
        retain: false,
        expires_at: Some(123),
        origin: 42,
        properties: Bytes::from_static(b"props"),
    }
}

fn queued(payload: &[u8]) -> QueuedRecord {
    QueuedRecord {
        qos: 1,
        retain: false,
        subscription_ids: vec![3, 9],
        message: message("t/1", payload),
        shared: None,
    }
}

/// Submits `batch` and waits until it is durable.
fn write(store: &Store, batch: Batch) -> Result<(), StorageError> {
    let (ticket, durable) = Ticket::new();
    store.submit(batch, Some(&ticket))?;
    drop(ticket);
    futures_block_on(durable)
}

fn futures_block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn sessions_queues_and_retained_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let p = SessionPrefix::new("acme", "dev-1").unwrap();
    let other = SessionPrefix::new("acme", "dev-10").unwrap();
    {
        let store = open(dir.path());
        let mut b = Batch::new();
        let record = SessionRecord {
            session_id: 77,
            expiry_interval: 3600,
            disconnected_at: Some(1_000),
        };
        store.put_session(&mut b, &p, &record);
        store.put_session(&mut b, &other, &record);
        store.put_subscription(
            &mut b,
            &p,
            &SubscriptionRecord {
                filter: "a/+/c".into(),
                options: 0x21,
                id: Some(5),
            },
        );
        store.put_incoming_qos2(&mut b, &p, 17);
        store
            .put_will(
                &mut b,
                &p,
                &WillRecord {
                    due_at: 9_000,
                    message: message("will/t", b"bye"),
                },
            )
            .unwrap();
        for seq in 1..=5 {
            store
                .put_queued(&mut b, &p, seq, &queued(format!("m{seq}").as_bytes()))
                .unwrap();
            store
                .put_queued(&mut b, &other, seq, &queued(b"x"))
                .unwrap();
        }
        store.put_inflight(&mut b, &p, 1, InflightRecord::Published(300));
        store.release_queued(&mut b, &p, 2, 301);
        store.delete_queued(&mut b, &p, 3);
        let mut retained = message("r/1", b"retained");
        retained.retain = true;
        store.put_retained(&mut b, "acme", &retained).unwrap();
        store
            .put_retained(&mut b, "acme", &message("r/big", &[7; 5000]))
            .unwrap();
        write(&store, b).unwrap();
    }
    let store = open(dir.path());
    let sessions = store.load_sessions().unwrap();
    assert_eq!(sessions.len(), 2);
    let s = sessions.iter().find(|s| s.client_id == "dev-1").unwrap();
    assert_eq!(s.tenant, "acme");
    assert_eq!(s.record.session_id, 77);
    assert_eq!(s.record.disconnected_at, Some(1_000));
    assert_eq!(s.subscriptions.len(), 1);
    assert_eq!(s.subscriptions[0].filter, "a/+/c");
    assert_eq!(s.subscriptions[0].options, 0x21);
    assert_eq!(s.subscriptions[0].id, Some(5));
    assert_eq!(s.incoming_qos2, vec![17]);
    assert_eq!(s.will.as_ref().unwrap().message.payload.as_ref(), b"bye");
    assert_eq!(
        s.inflight,
        vec![
            (1, InflightRecord::Published(300)),
            (2, InflightRecord::Released(301))
        ]
    );
    assert_eq!(
        s.queued, 3,
        "1, 4 and 5 are left (2 released, 3 acknowledged)"
    );
    assert_eq!(s.next_seq, 6);
    let q = store.read_queue(&p, 0, 10, usize::MAX).unwrap();
    let seqs: Vec<u64> = q.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, vec![1, 4, 5]);
    assert_eq!(q[0].1, queued(b"m1"));
    assert_eq!(store.read_queue(&p, 4, 1, usize::MAX).unwrap()[0].0, 4);
    let (retained, quarantined) = store.load_retained(1024).unwrap();
    assert!(quarantined.is_empty());
    assert_eq!(retained.len(), 2);
    let big = retained
        .iter()
        .find(|r| r.message.topic == "r/big")
        .unwrap();
    assert!(big.payload_on_disk && big.message.payload.is_empty());
    assert_eq!(big.payload_len, 5000);
    let read = store.read_retained("acme", "r/big").unwrap().unwrap();
    assert_eq!(read.payload.len(), 5000);
    // Ending one session removes all of it and nothing of its neighbour.
    let mut b = Batch::new();
    store.delete_session(&mut b, &p);
    write(&store, b).unwrap();
    let sessions = store.load_sessions().unwrap();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].client_id, "dev-10");
    assert_eq!(sessions[0].queued, 5);
    assert!(store.read_queue(&p, 0, 10, usize::MAX).unwrap().is_empty());
}

#[test]
fn tickets_resolve_after_the_write_and_writes_are_grouped() {
    for durability in [Durability::None, Durability::Wal, Durability::Fsync] {
        let dir = tempfile::tempdir().unwrap();
        let mut options = StoreOptions::new(dir.path());
        options.durability = durability;
        let store = Store::open(options).unwrap();
        let p = SessionPrefix::new("t", "c").unwrap();
        let mut waits = Vec::new();
        for seq in 0..2000u64 {
            let (ticket, durable) = Ticket::new();
            let mut b = Batch::new();
            store
                .put_queued(&mut b, &p, seq, &queued(b"payload"))
                .unwrap();
            store.submit(b, Some(&ticket)).unwrap();
            assert!(ticket.is_used());
            waits.push(durable);
        }
        futures_block_on(async {
            for w in waits {
                w.await.unwrap();
            }
        });
        let stats = store.writer_stats();
        let writes = stats.writes.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            (1..2000).contains(&writes),
            "{durability:?}: {writes} writes for 2000 submits"
        );
        assert_eq!(
            store.read_queue(&p, 0, 5000, usize::MAX).unwrap().len(),
            2000
        );
    }
}

#[test]
fn a_ticket_without_writes_resolves_when_dropped() {
    let (ticket, durable) = Ticket::new();
    assert!(!ticket.is_used());
    drop(ticket);
    futures_block_on(durable).unwrap();
}

#[test]
fn newer_schema_and_foreign_directories_are_refused_never_reset() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    {
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(false);
        let cfs = rocksdb::DB::list_cf(&opts, dir.path()).unwrap();
        let db = rocksdb::DB::open_cf(&opts, dir.path(), cfs).unwrap();
        let meta = db.cf_handle("meta").unwrap();
        db.put_cf(meta, b"schema_version", 99u32.to_be_bytes())
            .unwrap();
    }
    let err = Store::open(StoreOptions::new(dir.path())).unwrap_err();
    assert!(
        matches!(err, StorageError::NewerSchema { found: 99, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("newer"), "{err}");

    let foreign = tempfile::tempdir().unwrap();
    {
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        let db = rocksdb::DB::open(&opts, foreign.path()).unwrap();
        db.put(b"k", b"v").unwrap();
    }
    let err = Store::open(StoreOptions::new(foreign.path())).unwrap_err();
    assert!(matches!(err, StorageError::MissingColumnFamily(_)), "{err}");
    // Still the foreign data, untouched.
    let db = rocksdb::DB::open_default(foreign.path()).unwrap();
    assert_eq!(db.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
}

/// Every file of the data directory, concatenated (WAL and SST files hold the values).
fn all_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            out.extend(std::fs::read(path).unwrap());
        }
    }
    out
}

#[test]
fn encrypted_payloads_never_reach_the_disk_in_clear_and_keys_rotate() {
    let dir = tempfile::tempdir().unwrap();
    let secret = b"very-secret-payload-0123456789";
    let p = SessionPrefix::new("t", "c").unwrap();
    {
        let mut options = StoreOptions::new(dir.path());
        options.keys = Some(KeyRing::parse(KEY).unwrap());
        let store = Store::open(options).unwrap();
        let mut b = Batch::new();
        store.put_queued(&mut b, &p, 1, &queued(secret)).unwrap();
        store
            .put_retained(&mut b, "t", &message("r", secret))
            .unwrap();
        write(&store, b).unwrap();
        store.compact().unwrap();
    }
    let bytes = all_bytes(dir.path());
    assert!(
        !bytes.windows(secret.len()).any(|w| w == secret),
        "the payload is on disk in clear"
    );
    // Without the key: a clear error, no garbage.
    let store = open(dir.path());
    let err = store.read_queue(&p, 0, 10, usize::MAX).unwrap_err();
    assert!(err.to_string().contains("no key is configured"), "{err}");
    assert!(!store.verify().unwrap().is_ok());
    drop(store);
    // A rotated key ring (new active key 8) still reads what key 7 sealed.
    let mut options = StoreOptions::new(dir.path());
    let rotated = format!("{KEY}\n8:{}", "ab".repeat(32));
    options.keys = Some(KeyRing::parse(&rotated).unwrap());
    let store = Store::open(options).unwrap();
    assert_eq!(
        store.read_queue(&p, 0, 10, usize::MAX).unwrap()[0]
            .1
            .message
            .payload
            .as_ref(),
        secret
    );
    assert!(store.verify().unwrap().is_ok());
}

#[test]
fn telemetry_queries_page_stay_in_their_tenant_and_retention_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut b = Batch::new();
    for i in 0..100u64 {
        let topic = if i % 2 == 0 { "s/temp" } else { "s/hum" };
        store
            .put_telemetry(&mut b, "a", 1_000 + i, &message(topic, &[1; 100]))
            .unwrap();
    }
    store
        .put_telemetry(&mut b, "b", 1_050, &message("s/temp", b"other tenant"))
        .unwrap();
    write(&store, b).unwrap();

    let mut query = TelemetryQuery {
        tenant: "a".into(),
        filter: "s/temp".into(),
        from_ms: 1_010,
        to_ms: 1_060,
        limit: 10,
        cursor: None,
    };
    let mut got = Vec::new();
    loop {
        let page = store.query_telemetry(&query).unwrap();
        got.extend(page.records.iter().map(|r| r.timestamp_ms));
        match page.next {
            Some(c) => query.cursor = Some(c.to_string().parse().unwrap()),
            None => break,
        }
    }
    let want: Vec<u64> = (1_010..1_060).filter(|t| t % 2 == 0).collect();
    assert_eq!(got, want);
    // A cursor from tenant b cannot read tenant a.
    let b_page = store
        .query_telemetry(&TelemetryQuery {
            tenant: "b".into(),
            filter: "#".into(),
            from_ms: 0,
            to_ms: u64::MAX,
            limit: 1,
            cursor: None,
        })
        .unwrap();
    assert_eq!(b_page.records.len(), 1);
    assert_eq!(b_page.records[0].message.payload.as_ref(), b"other tenant");

    let before = store.telemetry_usage("a");
    assert_eq!(before.records, 100);
    // Age: everything before 1_050 goes.
    let report = store
        .apply_telemetry_retention(
            &RetentionPolicy {
                max_age_ms: Some(100),
                max_bytes_per_tenant: None,
            },
            1_150,
        )
        .unwrap();
    assert_eq!(report.records, 50);
    assert_eq!(store.telemetry_usage("a").records, 50);
    assert_eq!(
        store.telemetry_usage("b").records,
        1,
        "tenant b's one record is newer"
    );
    // Size: keep about a fifth of what is left.
    let left = store.telemetry_usage("a").bytes;
    store
        .apply_telemetry_retention(
            &RetentionPolicy {
                max_age_ms: None,
                max_bytes_per_tenant: Some(left / 5),
            },
            1_150,
        )
        .unwrap();
    let usage = store.telemetry_usage("a");
    assert!(usage.bytes <= left / 5, "{usage:?}");
    let all = store
        .query_telemetry(&TelemetryQuery {
            tenant: "a".into(),
            filter: "#".into(),
            from_ms: 0,
            to_ms: u64::MAX,
            limit: 1000,
            cursor: None,
        })
        .unwrap();
    assert_eq!(all.records.len() as u64, usage.records);
    assert_eq!(
        all.records.last().unwrap().timestamp_ms,
        1_099,
        "the newest are kept"
    );
    drop(store);
    // Usage is recounted from disk at open.
    assert_eq!(open(dir.path()).telemetry_usage("a"), usage);
}

fn event(i: u64) -> AuditEvent {
    AuditEvent {
        time_ms: i,
        tenant: None,
        actor: "admin".into(),
        action: "test.event".into(),
        detail: format!("event {i}"),
    }
}

#[test]
fn audit_verify_finds_a_changed_record_and_a_removed_tail() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        for i in 1..=10 {
            futures_block_on(store.append_audit(&event(i)).unwrap()).unwrap();
        }
        let report = store.verify_audit().unwrap();
        assert_eq!(report.records, 10);
        assert!(report.broken.is_none());
        assert_eq!(store.read_audit(4, 2).unwrap()[0].event, event(4));
    }
    // Appends go on after a reopen, on the same chain.
    {
        let store = open(dir.path());
        futures_block_on(store.append_audit(&event(11)).unwrap()).unwrap();
        assert!(store.verify_audit().unwrap().broken.is_none());
    }
    let raw = |f: &dyn Fn(&rocksdb::DB)| {
        let opts = rocksdb::Options::default();
        let cfs = rocksdb::DB::list_cf(&opts, dir.path()).unwrap();
        let db = rocksdb::DB::open_cf(&opts, dir.path(), cfs).unwrap();
        f(&db);
    };
    // Change one byte of the detail of record 5.
    raw(&|db| {
        let cf = db.cf_handle("audit").unwrap();
        let mut v = db.get_cf(cf, 5u64.to_be_bytes()).unwrap().unwrap();
        let last = v.len() - 1;
        v[last] ^= 0x01;
        db.put_cf(cf, 5u64.to_be_bytes(), v).unwrap();
    });
    let report = open(dir.path()).verify_audit().unwrap();
    let broken = report.broken.expect("the change went unnoticed");
    assert_eq!(broken.seq, 5, "{broken:?}");

    // On a fresh chain, removing the newest record is found as well.
    let dir2 = tempfile::tempdir().unwrap();
    {
        let store = open(dir2.path());
        for i in 1..=3 {
            futures_block_on(store.append_audit(&event(i)).unwrap()).unwrap();
        }
    }
    let opts = rocksdb::Options::default();
    {
        let cfs = rocksdb::DB::list_cf(&opts, dir2.path()).unwrap();
        let db = rocksdb::DB::open_cf(&opts, dir2.path(), cfs).unwrap();
        db.delete_cf(db.cf_handle("audit").unwrap(), 3u64.to_be_bytes())
            .unwrap();
    }
    let report = open(dir2.path()).verify_audit().unwrap();
    assert_eq!(report.broken.unwrap().seq, 3);
}

/// Issue 21's finding: telemetry usage was counted when a record was queued, so writes the
/// store refused later (a full disk) counted as stored, and size-based retention deleted a
/// tenant's whole telemetry. Retention now measures what is stored before it deletes for
/// size.
#[test]
fn refused_telemetry_writes_do_not_make_retention_delete_what_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut b = Batch::new();
    for i in 0..10 {
        store
            .put_telemetry(&mut b, "a", 1_000 + i, &message("s/t", &[1; 100]))
            .unwrap();
    }
    write(&store, b).unwrap();
    let stored = store.telemetry_usage("a").bytes;
    store.set_write_fault(true);
    let mut b = Batch::new();
    for i in 0..100 {
        store
            .put_telemetry(&mut b, "a", 2_000 + i, &message("s/t", &[2; 100]))
            .unwrap();
    }
    assert!(write(&store, b).is_err(), "the fault refuses the write");
    store.set_write_fault(false);
    let report = store
        .apply_telemetry_retention(
            &RetentionPolicy {
                max_age_ms: None,
                max_bytes_per_tenant: Some(stored + 100),
            },
            5_000,
        )
        .unwrap();
    assert_eq!(report.records, 0, "deleted stored records for refused ones");
    let page = store
        .query_telemetry(&TelemetryQuery {
            tenant: "a".into(),
            filter: "#".into(),
            from_ms: 0,
            to_ms: u64::MAX,
            limit: 100,
            cursor: None,
        })
        .unwrap();
    assert_eq!(page.records.len(), 10);
    assert_eq!(
        store.telemetry_usage("a").bytes,
        stored,
        "the count corrected"
    );
}

/// What an attacker who can write the data directory (but holds no key) does to the audit
/// log: rewrite a record's detail and recompute every SHA-256 link after it and the head.
fn rewrite_audit_record(dir: &Path, seq: u64, detail: &str) {
    use aws_lc_rs::digest::{digest, SHA256};
    let opts = rocksdb::Options::default();
    let cfs = rocksdb::DB::list_cf(&opts, dir).unwrap();
    let db = rocksdb::DB::open_cf(&opts, dir, cfs).unwrap();
    let audit = db.cf_handle("audit").unwrap();
    let mut records: Vec<Vec<u8>> = db
        .iterator_cf(audit, rocksdb::IteratorMode::Start)
        .map(|i| i.unwrap().1.to_vec())
        .collect();
    // Layout: [version][seq 8][time 8][prev 32][tenant][action][details digest 32]
    // [present 1][actor][detail], strings u32-prefixed; the link covers up to the digest.
    let header_len = |r: &[u8]| {
        let mut at = 49;
        for _ in 0..2 {
            let len = u32::from_be_bytes(r[at..at + 4].try_into().unwrap()) as usize;
            at += 4 + len;
        }
        at + 32
    };
    let r = &mut records[(seq - 1) as usize];
    let end = header_len(r);
    let actor_len = u32::from_be_bytes(r[end + 1..end + 5].try_into().unwrap()) as usize;
    let mut details = r[end + 1..end + 5 + actor_len].to_vec();
    details.extend_from_slice(&(detail.len() as u32).to_be_bytes());
    details.extend_from_slice(detail.as_bytes());
    r.truncate(end - 32);
    r.extend_from_slice(digest(&SHA256, &details).as_ref());
    r.push(1);
    r.extend_from_slice(&details);
    let mut prev = [0u8; 32];
    for (i, r) in records.iter_mut().enumerate() {
        r[0] = 3; // a plain hash-linked record: the only kind the attacker can make
        r[17..49].copy_from_slice(&prev);
        let end = header_len(r);
        prev.copy_from_slice(digest(&SHA256, &r[..end]).as_ref());
        db.put_cf(audit, (i as u64 + 1).to_be_bytes(), &r[..])
            .unwrap();
    }
    let mut head = (records.len() as u64 + 1).to_be_bytes().to_vec();
    head.extend_from_slice(&prev);
    db.put_cf(db.cf_handle("meta").unwrap(), b"audit_head", head)
        .unwrap();
}

fn keyed(dir: &Path, key: [u8; 32]) -> Store {
    let mut o = StoreOptions::new(dir);
    o.audit_key = Some(key);
    Store::open(o).unwrap()
}

/// The audit's finding: the chain was unkeyed, so a record rewritten with its links
/// recomputed verified as intact. With an audit key the rewrite is found; without one it
/// still is not (which is why the broker warns), but the exported head shows it.
#[test]
fn a_rewritten_audit_record_fails_a_keyed_chain_and_an_exported_head() {
    let key = [7u8; 32];
    for with_key in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let head = {
            let store = if with_key {
                keyed(dir.path(), key)
            } else {
                open(dir.path())
            };
            for i in 1..=10 {
                futures_block_on(store.append_audit(&event(i)).unwrap()).unwrap();
            }
            assert_eq!(store.audit_keyed(), with_key);
            let head = store.audit_head();
            assert_eq!(head.seq, 10);
            assert_eq!(store.verify_audit().unwrap().head, head);
            head
        };
        rewrite_audit_record(dir.path(), 5, "nothing happened here");
        let store = if with_key {
            keyed(dir.path(), key)
        } else {
            open(dir.path())
        };
        assert_eq!(
            store.read_audit(5, 1).unwrap()[0].event.detail,
            "nothing happened here"
        );
        let alone = store.verify_audit().unwrap();
        if with_key {
            let broken = alone
                .broken
                .expect("a rewrite without the key went unnoticed");
            assert!(broken.reason.contains("not signed"), "{broken:?}");
            assert_eq!(store.audit_unsigned_records(), Some(10));
        } else {
            assert!(alone.broken.is_none(), "unkeyed: internally consistent");
        }
        let against = store.verify_audit_against(Some(&head)).unwrap();
        assert!(
            against.broken.is_some(),
            "the exported head shows it (key: {with_key})"
        );
    }
}

/// Rolling the store back to an older checkpoint, or deleting the newest records and
/// rewriting the head to match, leaves a chain that verifies on its own: an exported head
/// is what shows it, and a wrong audit key shows as a broken link.
#[test]
fn a_rolled_back_or_truncated_audit_log_fails_against_an_exported_head() {
    let key = [9u8; 32];
    let dir = tempfile::tempdir().unwrap();
    let old_copy = tempfile::tempdir().unwrap();
    let old_copy = old_copy.path().join("checkpoint");
    let head = {
        let store = keyed(dir.path(), key);
        for i in 1..=5 {
            futures_block_on(store.append_audit(&event(i)).unwrap()).unwrap();
        }
        store.checkpoint(&old_copy).unwrap();
        for i in 6..=10 {
            futures_block_on(store.append_audit(&event(i)).unwrap()).unwrap();
        }
        store.audit_head()
    };
    let text = head.encode();
    assert_eq!(messs_storage::audit::AuditHead::parse(&text).unwrap(), head);
    let store = keyed(dir.path(), key);
    assert!(store
        .verify_audit_against(Some(&head))
        .unwrap()
        .broken
        .is_none());
    // The head signed under the key; another key signs differently.
    let sig = store.sign_audit_head(&head).unwrap();
    drop(store);
    let other = tempfile::tempdir().unwrap();
    assert_ne!(
        keyed(other.path(), [1u8; 32]).sign_audit_head(&head),
        Some(sig)
    );

    // The older checkpoint, put in place of the data directory.
    let old = keyed(&old_copy, key);
    assert!(
        old.verify_audit().unwrap().broken.is_none(),
        "consistent alone"
    );
    let report = old.verify_audit_against(Some(&head)).unwrap();
    let broken = report.broken.expect("a rollback went unnoticed");
    assert!(broken.reason.contains("rolled back"), "{broken:?}");
    assert_eq!(report.head.seq, 5);
    drop(old);

    // The newest three records deleted and the head set to what record 8 held as its
    // predecessor's link (the attacker can read it there, but cannot sign it).
    {
        let opts = rocksdb::Options::default();
        let cfs = rocksdb::DB::list_cf(&opts, dir.path()).unwrap();
        let db = rocksdb::DB::open_cf(&opts, dir.path(), cfs).unwrap();
        let audit = db.cf_handle("audit").unwrap();
        let r8 = db.get_cf(audit, 8u64.to_be_bytes()).unwrap().unwrap();
        for seq in 8..=10u64 {
            db.delete_cf(audit, seq.to_be_bytes()).unwrap();
        }
        let mut h = 8u64.to_be_bytes().to_vec();
        h.extend_from_slice(&r8[17..49]);
        db.put_cf(db.cf_handle("meta").unwrap(), b"audit_head", h)
            .unwrap();
    }
    let store = keyed(dir.path(), key);
    let alone = store.verify_audit().unwrap().broken;
    assert!(
        alone.is_some_and(|b| b.reason.contains("not signed")),
        "the head needs the key"
    );
    assert!(store
        .verify_audit_against(Some(&head))
        .unwrap()
        .broken
        .is_some());
    drop(store);
    // The wrong key: every keyed link fails.
    let wrong = keyed(dir.path(), [8u8; 32]);
    assert!(wrong.verify_audit().unwrap().broken.is_some());
    drop(wrong);
    // No key at all: keyed records cannot be checked, and say so.
    let report = open(dir.path()).verify_audit().unwrap();
    assert!(report.broken.unwrap().reason.contains("audit key"));
}

/// The outside review's finding: with the audit head removed from `meta` (or rolled back
/// below the newest record), the store started numbering at 1 again and its next records
/// overwrote the history. Now the chain continues after the newest record it holds, and
/// the store says the head was missing so the broker can record that.
#[test]
fn a_missing_or_stale_audit_head_never_overwrites_records() {
    for stale in [None, Some(2u64)] {
        let dir = tempfile::tempdir().unwrap();
        let key = [3u8; 32];
        {
            let store = keyed(dir.path(), key);
            for i in 1..=5 {
                futures_block_on(store.append_audit(&event(i)).unwrap()).unwrap();
            }
            assert_eq!(store.audit_head_restored(), None);
        }
        {
            let opts = rocksdb::Options::default();
            let cfs = rocksdb::DB::list_cf(&opts, dir.path()).unwrap();
            let db = rocksdb::DB::open_cf(&opts, dir.path(), cfs).unwrap();
            let meta = db.cf_handle("meta").unwrap();
            match stale {
                None => db.delete_cf(meta, b"audit_head").unwrap(),
                Some(seq) => {
                    // The head as it was after record `seq` (an older copy of `meta`).
                    let audit = db.cf_handle("audit").unwrap();
                    let next = db.get_cf(audit, (seq + 1).to_be_bytes()).unwrap().unwrap();
                    let mut h = (seq + 1).to_be_bytes().to_vec();
                    h.extend_from_slice(&next[17..49]);
                    db.put_cf(meta, b"audit_head", h).unwrap();
                }
            }
        }
        let store = keyed(dir.path(), key);
        assert_eq!(
            store.audit_head_restored(),
            Some((stale.unwrap_or(0), 5)),
            "{stale:?}"
        );
        assert_eq!(store.audit_head().seq, 5);
        futures_block_on(store.append_audit(&event(6)).unwrap()).unwrap();
        let all = store.read_audit(1, 100).unwrap();
        let events: Vec<_> = all.iter().map(|r| r.event.clone()).collect();
        assert_eq!(events, (1..=6).map(event).collect::<Vec<_>>(), "{stale:?}");
        let report = store.verify_audit().unwrap();
        assert!(report.broken.is_none(), "{stale:?}: {:?}", report.broken);
        assert_eq!(report.head.seq, 6);
    }
}

#[test]
fn a_checkpoint_restores() {
    let dir = tempfile::tempdir().unwrap();
    let backup = dir.path().join("backup");
    let data = dir.path().join("data");
    let p = SessionPrefix::new("t", "c").unwrap();
    {
        let store = open(&data);
        let mut b = Batch::new();
        store.put_queued(&mut b, &p, 1, &queued(b"before")).unwrap();
        // Not waited for: the checkpoint waits for everything submitted.
        store.submit(b, None).unwrap();
        store.checkpoint(&backup).unwrap();
        let mut b = Batch::new();
        store.put_queued(&mut b, &p, 2, &queued(b"after")).unwrap();
        write(&store, b).unwrap();
        assert!(store.checkpoint(&backup).is_err(), "never overwrites");
    }
    let restored = open(&backup);
    let q = restored.read_queue(&p, 0, 10, usize::MAX).unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].1.message.payload.as_ref(), b"before");
    assert!(restored.verify().unwrap().is_ok());
}

#[test]
fn a_failed_write_fails_its_ticket_and_the_next_write_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let p = SessionPrefix::new("t", "c").unwrap();
    store.set_write_fault(true);
    let mut b = Batch::new();
    store.put_queued(&mut b, &p, 1, &queued(b"lost")).unwrap();
    let err = write(&store, b).unwrap_err();
    assert!(matches!(err, StorageError::WriteFailed(_)), "{err}");
    assert!(store.is_failing());
    store.set_write_fault(false);
    let mut b = Batch::new();
    store.put_queued(&mut b, &p, 2, &queued(b"kept")).unwrap();
    write(&store, b).unwrap();
    assert!(!store.is_failing());
    let q = store.read_queue(&p, 0, 10, usize::MAX).unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].0, 2);
    assert_eq!(
        store
            .writer_stats()
            .failures
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn new_data_is_refused_when_the_writer_is_too_far_behind() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = StoreOptions::new(dir.path());
    options.max_pending_bytes = 64 * 1024;
    let store = Store::open(options).unwrap();
    let p = SessionPrefix::new("t", "c").unwrap();
    let mut refused = 0;
    for seq in 0..2000 {
        let mut b = Batch::new();
        store
            .put_queued(&mut b, &p, seq, &queued(&[0; 4096]))
            .unwrap();
        if let Err(e) = store.submit(b, None) {
            assert!(matches!(e, StorageError::Busy(_)));
            refused += 1;
        }
    }
    // Deletes are never refused.
    for seq in 0..2000 {
        let mut b = Batch::new();
        store.delete_queued(&mut b, &p, seq);
        store.submit(b, None).unwrap();
    }
    assert!(
        refused > 0,
        "8 MiB submitted at once against a 64 KiB limit"
    );
    store.sync().unwrap();
    assert!(store.read_queue(&p, 0, 10, usize::MAX).unwrap().is_empty());
}

#[test]
fn bookkeeping_is_bounded_too_when_the_writer_is_too_far_behind() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = StoreOptions::new(dir.path());
    options.max_pending_bytes = 64 * 1024;
    let store = Store::open(options).unwrap();
    let p = SessionPrefix::new("t", "c").unwrap();
    let mut refused = 0;
    for i in 0..2000 {
        // Subscription records: bookkeeping, which a client's subscribe churn causes.
        let mut b = Batch::new();
        let sub = SubscriptionRecord {
            filter: format!("{i}/{}", "f".repeat(4096)),
            options: 1,
            id: None,
        };
        store.put_subscription(&mut b, &p, &sub);
        if let Err(e) = store.submit(b, None) {
            assert!(matches!(e, StorageError::Busy(_)), "{e}");
            refused += 1;
        }
        let pending = store
            .writer_stats()
            .pending_bytes
            .load(std::sync::atomic::Ordering::Relaxed);
        assert!(pending <= 2 * 64 * 1024 + 8192, "{pending} bytes wait");
    }
    assert!(refused > 0, "8 MiB submitted at once against 2 x 64 KiB");
    // Deletes are never refused.
    for i in 0..2000 {
        let mut b = Batch::new();
        store.delete_subscription(&mut b, &p, &format!("{i}/{}", "f".repeat(4096)));
        store.submit(b, None).unwrap();
    }
}

#[test]
fn below_the_free_space_watermark_new_data_is_refused_until_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let free = {
        let st = rustix::fs::statvfs(dir.path()).unwrap();
        st.f_bavail * st.f_frsize
    };
    // A watermark above what the disk has free: the store sees a full disk.
    let mut options = StoreOptions::new(dir.path());
    options.min_free_disk_bytes = free + (1 << 30);
    let store = Store::open(options).unwrap();
    let p = SessionPrefix::new("t", "c").unwrap();
    let mut b = Batch::new();
    store
        .put_queued(&mut b, &p, 1, &queued(b"refused"))
        .unwrap();
    let err = write(&store, b).unwrap_err();
    assert!(matches!(err, StorageError::DiskLow { .. }), "{err}");
    assert!(store.is_failing());
    // Deletes still go through (they only ever free space).
    let mut b = Batch::new();
    store.delete_queued(&mut b, &p, 1);
    write(&store, b).unwrap();
    assert_eq!(
        store
            .writer_stats()
            .refused_disk_low
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert!(store.read_queue(&p, 0, 10, usize::MAX).unwrap().is_empty());

    // Space comes back (the watermark drops below what is free): the same store writes
    // again by itself.
    store.set_min_free_disk_bytes(1);
    std::thread::sleep(std::time::Duration::from_millis(150));
    let mut b = Batch::new();
    store.put_queued(&mut b, &p, 2, &queued(b"kept")).unwrap();
    write(&store, b).unwrap();
    assert!(!store.is_failing());
    assert_eq!(store.read_queue(&p, 0, 10, usize::MAX).unwrap().len(), 1);
}

mod registry {
    use super::*;
    use messs_storage::registry::{
        AclAction, AclRule, AclSubject, DeviceRecord, JwtKey, ScramCredential, TenantRecord,
    };

    fn tenant(id: &str) -> TenantRecord {
        TenantRecord {
            id: id.into(),
            name: format!("{id} Inc."),
            enabled: true,
            created_ms: 5,
            limits: vec![("max_connections".into(), 10)],
            cert_auto_register: false,
        }
    }

    fn device(tenant: &str, username: &str) -> DeviceRecord {
        DeviceRecord {
            tenant: tenant.into(),
            username: username.into(),
            password_hash: Some("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into()),
            client_id_pattern: Some("%u-*".into()),
            groups: vec!["sensors".into()],
            enabled: true,
            version: 0,
            scram: Some(ScramCredential {
                iterations: 4096,
                salt: b"pinch of salt".to_vec(),
                stored_key: *b"stored-key-in-the-clear-32-bytes",
                server_key: [9; 32],
            }),
            limits: vec![("messages_per_sec".into(), 10)],
        }
    }

    fn keyed_store(dir: &Path, allow_unsealed: bool) -> Store {
        let mut opts = StoreOptions::new(dir);
        let ring = KeyRing::parse(KEY).unwrap();
        opts.keys = Some(if allow_unsealed {
            ring.allowing_unsealed()
        } else {
            ring
        });
        Store::open(opts).unwrap()
    }

    /// The audit's finding: with encryption on, a superadmin record written in clear into
    /// the store (by someone who can write the data directory but has no key) was read and
    /// logged in. A value in clear is now refused, and a store that ran without encryption
    /// is sealed explicitly (`messs storage encrypt`), after which it reads again.
    #[test]
    fn a_record_planted_in_clear_is_refused_and_encrypt_seals_a_plain_store() {
        use messs_storage::admins::AdminRecord;
        let admin = |name: &str| AdminRecord {
            username: name.into(),
            role: "superadmin".into(),
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"
                .into(),
            enabled: true,
            created_ms: 1,
            ..AdminRecord::default()
        };
        let dir = tempfile::tempdir().unwrap();
        {
            let store = keyed_store(dir.path(), false);
            store.create_admin(&admin("root")).unwrap();
            store.add_tenant(&tenant("acme")).unwrap();
            store.put_device(&device("acme", "d1"), true).unwrap();
        }
        {
            // The plant: records encoded in clear (by a store without the key), copied
            // byte for byte into the encrypted store's column families.
            let donor = tempfile::tempdir().unwrap();
            {
                let store = Store::open(StoreOptions::new(donor.path())).unwrap();
                store.create_admin(&admin("mallory")).unwrap();
                store.add_tenant(&tenant("acme")).unwrap();
                store.put_device(&device("acme", "planted"), true).unwrap();
            }
            let opts = rocksdb::Options::default();
            let read = |cf: &str| -> Vec<(Vec<u8>, Vec<u8>)> {
                let cfs = rocksdb::DB::list_cf(&opts, donor.path()).unwrap();
                let db = rocksdb::DB::open_cf(&opts, donor.path(), cfs).unwrap();
                db.iterator_cf(db.cf_handle(cf).unwrap(), rocksdb::IteratorMode::Start)
                    .map(|i| {
                        let (k, v) = i.unwrap();
                        (k.to_vec(), v.to_vec())
                    })
                    .filter(|(k, _)| {
                        k.windows(7).any(|w| w == b"mallory")
                            || k.windows(7).any(|w| w == b"planted")
                    })
                    .collect()
            };
            let planted = [("admins", read("admins")), ("devices", read("devices"))];
            let cfs = rocksdb::DB::list_cf(&opts, dir.path()).unwrap();
            let db = rocksdb::DB::open_cf(&opts, dir.path(), cfs).unwrap();
            for (cf, records) in planted {
                assert!(!records.is_empty(), "{cf}");
                for (k, v) in records {
                    db.put_cf(db.cf_handle(cf).unwrap(), k, v).unwrap();
                }
            }
        }
        let store = keyed_store(dir.path(), false);
        assert!(store.admin("root").unwrap().is_some());
        let err = store.admin("mallory").unwrap_err().to_string();
        assert!(err.contains("stored in clear"), "{err}");
        assert!(store.device("acme", "d1").unwrap().is_some());
        assert!(store.device("acme", "planted").is_err());
        let report = store.verify().unwrap();
        assert_eq!(
            report.first_bad_record.as_ref().map(|b| b.0),
            Some("devices"),
            "verify shows the planted device: {report:?}"
        );
        drop(store);
        // The planted admin alone: verify decodes the admins family too (the outside
        // review found it passed there while the broker refused to start on it).
        {
            let opts = rocksdb::Options::default();
            let cfs = rocksdb::DB::list_cf(&opts, dir.path()).unwrap();
            let db = rocksdb::DB::open_cf(&opts, dir.path(), cfs).unwrap();
            let devices = db.cf_handle("devices").unwrap();
            let planted: Vec<Vec<u8>> = db
                .iterator_cf(devices, rocksdb::IteratorMode::Start)
                .map(|i| i.unwrap().0.to_vec())
                .filter(|k| k.windows(7).any(|w| w == b"planted"))
                .collect();
            for k in planted {
                db.delete_cf(devices, k).unwrap();
            }
        }
        let store = keyed_store(dir.path(), false);
        let report = store.verify().unwrap();
        let (cf, why) = report
            .first_bad_record
            .clone()
            .expect("the planted admin passed");
        assert_eq!(cf, "admins");
        assert!(why.contains("stored in clear"), "{why}");
        drop(store);

        // A store that ran without encryption: every kind of sealed value in clear.
        let plain = tempfile::tempdir().unwrap();
        {
            let store = Store::open(StoreOptions::new(plain.path())).unwrap();
            store.create_admin(&admin("root")).unwrap();
            store.add_tenant(&tenant("acme")).unwrap();
            store.put_device(&device("acme", "d1"), true).unwrap();
            store
                .put_jwt_key(
                    "acme",
                    &JwtKey {
                        kid: "k1".into(),
                        alg: "HS256".into(),
                        key: b"super-secret-hmac-key".to_vec(),
                    },
                )
                .unwrap();
            let mut b = Batch::new();
            let p = messs_storage::sessions::SessionPrefix::new("acme", "c").unwrap();
            store
                .put_queued(&mut b, &p, 1, &queued(b"queued-in-clear"))
                .unwrap();
            store
                .put_retained(&mut b, "acme", &message("t/r", b"retained-in-clear"))
                .unwrap();
            let will = messs_storage::sessions::WillRecord {
                due_at: 5,
                message: message("t/will", b"will-in-clear"),
            };
            store.put_will(&mut b, &p, &will).unwrap();
            write(&store, b).unwrap();
        }
        assert!(contains(&all_bytes(plain.path()), b"super-secret-hmac-key"));
        assert!(keyed_store(plain.path(), false).admin("root").is_err());
        let report = keyed_store(plain.path(), true).seal_all().unwrap();
        assert_eq!(
            (
                report.admins,
                report.devices,
                report.jwt_keys,
                report.messages
            ),
            (1, 1, 1, 3),
            "{report:?}"
        );
        let store = keyed_store(plain.path(), false);
        assert!(store.admin("root").unwrap().is_some());
        assert!(store.device("acme", "d1").unwrap().is_some());
        assert_eq!(
            store.jwt_keys("acme").unwrap()[0].key,
            b"super-secret-hmac-key"
        );
        assert!(
            store.verify().unwrap().is_ok(),
            "{:?}",
            store.verify().unwrap()
        );
        drop(store);
        // Written back sealed, and the run's compaction dropped the old values: no secret is
        // left in clear on disk.
        let raw = all_bytes(plain.path());
        assert!(!contains(&raw, b"super-secret-hmac-key"));
        for clear in [
            &b"retained-in-clear"[..],
            b"queued-in-clear",
            b"will-in-clear",
        ] {
            let files: Vec<_> = std::fs::read_dir(plain.path())
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.is_file() && contains(&std::fs::read(p).unwrap(), clear))
                .collect();
            assert!(
                files.is_empty(),
                "{} in clear in {files:?}",
                String::from_utf8_lossy(clear)
            );
        }
    }

    #[test]
    fn tenants_devices_and_keys_survive_a_reopen_and_secrets_are_sealed() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = StoreOptions::new(dir.path());
        opts.keys = Some(KeyRing::parse(KEY).unwrap());
        let store = Store::open(opts).unwrap();
        store.add_tenant(&tenant("acme")).unwrap();
        let dup = store.add_tenant(&tenant("acme")).unwrap_err();
        assert!(dup.to_string().contains("already exists"), "{dup}");
        assert!(store.add_tenant(&tenant("bad tenant")).is_err());
        assert!(store.add_tenant(&tenant("a@b")).is_err());
        // A device needs its tenant.
        assert!(matches!(
            store.put_device(&device("nope", "d1"), true),
            Err(StorageError::NotFound(_))
        ));
        assert_eq!(store.put_device(&device("acme", "d1"), true).unwrap(), 1);
        assert!(store.put_device(&device("acme", "d1"), true).is_err());
        let mut changed = device("acme", "d1");
        changed.enabled = false;
        assert_eq!(store.put_device(&changed, false).unwrap(), 2);
        store.put_device(&device("acme", "d2"), true).unwrap();
        store
            .put_jwt_key(
                "acme",
                &JwtKey {
                    kid: "k1".into(),
                    alg: "HS256".into(),
                    key: b"super-secret-hmac-key".to_vec(),
                },
            )
            .unwrap();
        let fp = store.add_ca("acme", b"not really DER").unwrap();
        store.revoke_cert("acme", &[7; 32]).unwrap();
        drop(store);

        // Neither the hash nor the HMAC key is stored in the clear.
        let raw = all_bytes(dir.path());
        assert!(
            !contains(&raw, b"$argon2id$v=19"),
            "password hash in the clear"
        );
        assert!(
            !contains(&raw, b"super-secret-hmac-key"),
            "jwt key in the clear"
        );
        assert!(
            !contains(&raw, b"stored-key-in-the-clear"),
            "SCRAM keys in the clear"
        );

        let mut opts = StoreOptions::new(dir.path());
        opts.keys = Some(KeyRing::parse(KEY).unwrap());
        let store = Store::open(opts).unwrap();
        assert_eq!(store.tenants().unwrap(), vec![tenant("acme")]);
        let d1 = store.device("acme", "d1").unwrap().unwrap();
        assert!(!d1.enabled);
        assert_eq!(d1.version, 2);
        assert_eq!(d1.password_hash, device("acme", "d1").password_hash);
        assert_eq!(d1.groups, vec!["sensors".to_owned()]);
        assert_eq!(d1.scram, device("acme", "d1").scram);
        assert_eq!(d1.limits, device("acme", "d1").limits);
        let page = store.devices("acme", None, 1).unwrap();
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].username, "d1");
        let page = store.devices("acme", Some("d1"), 10).unwrap();
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].username, "d2");
        assert!(store.device("other", "d1").unwrap().is_none());
        assert_eq!(
            store.jwt_keys("acme").unwrap()[0].key,
            b"super-secret-hmac-key"
        );
        assert_eq!(store.cas("acme").unwrap()[0].fingerprint, fp);
        assert_eq!(store.revoked_certs("acme").unwrap(), vec![[7; 32]]);
        assert!(store.delete_device("acme", "d2").unwrap());
        assert!(!store.delete_device("acme", "d2").unwrap());
        let report = store.verify().unwrap();
        assert!(report.is_ok(), "{report:?}");
    }

    #[test]
    fn acl_rules_keep_their_order_and_ids() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let rule = |id, allow, filter: &str| AclRule {
            id,
            allow,
            action: AclAction::Both,
            filter: filter.into(),
            subject: AclSubject::Group("g".into()),
            qos_mask: 3,
            retain: Some(false),
        };
        for (allow, filter) in [(false, "secret/#"), (true, "devices/%c/#"), (true, "x")] {
            store
                .update_acl_rules("acme", |rules, id| {
                    rules.push(rule(id, allow, filter));
                    Ok(())
                })
                .unwrap();
        }
        // Insert at the front, then remove the middle one by id.
        store
            .update_acl_rules("acme", |rules, id| {
                rules.insert(0, rule(id, true, "first"));
                Ok(())
            })
            .unwrap();
        store
            .update_acl_rules("acme", |rules, _| {
                rules.retain(|r| r.id != 2);
                Ok(())
            })
            .unwrap();
        let rules = store.acl_rules("acme").unwrap();
        let got: Vec<(u32, &str)> = rules.iter().map(|r| (r.id, r.filter.as_str())).collect();
        assert_eq!(got, vec![(4, "first"), (1, "secret/#"), (3, "x")]);
        assert_eq!(rules[1], rule(1, false, "secret/#"));
        assert!(store.acl_rules("other").unwrap().is_empty());
    }

    #[test]
    fn a_version_1_directory_is_migrated_to_the_registry_schema() {
        let dir = tempfile::tempdir().unwrap();
        drop(open(dir.path()));
        {
            // Make it what a version-1 messs wrote: no tenants or messages family, version 1.
            let opts = rocksdb::Options::default();
            let cfs = rocksdb::DB::list_cf(&opts, dir.path()).unwrap();
            let mut db = rocksdb::DB::open_cf(&opts, dir.path(), cfs).unwrap();
            db.drop_cf("tenants").unwrap();
            db.drop_cf("messages").unwrap();
            let meta = db.cf_handle("meta").unwrap();
            db.put_cf(meta, b"schema_version", 1u32.to_be_bytes())
                .unwrap();
        }
        let store = open(dir.path());
        store.add_tenant(&tenant("t")).unwrap();
        drop(store);
        let opts = rocksdb::Options::default();
        let cfs = rocksdb::DB::list_cf(&opts, dir.path()).unwrap();
        assert!(cfs.iter().any(|c| c == "tenants"));
        assert!(cfs.iter().any(|c| c == "messages"));
        let db = rocksdb::DB::open_cf(&opts, dir.path(), cfs).unwrap();
        let meta = db.cf_handle("meta").unwrap();
        let v = db.get_cf(meta, b"schema_version").unwrap().unwrap();
        assert_eq!(v, messs_storage::SCHEMA_VERSION.to_be_bytes());
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }
}

/// Store of `n` queued messages for `p` from `from`, each its own batch on `ticket`.
fn submit_queued(store: &Store, p: &SessionPrefix, seqs: std::ops::Range<u64>, ticket: &Ticket) {
    for seq in seqs {
        let mut b = Batch::new();
        store
            .put_queued(&mut b, p, seq, &queued(b"payload"))
            .unwrap();
        store.submit(b, Some(ticket)).unwrap();
    }
}

/// The outside audit's QoS 2 finding at its root: the writer ended a RocksDB write in the
/// middle of what one packet stored (a group is capped at 4096 requests, and a write starts
/// with whatever has arrived), so a crash could keep the packet id and lose the copies.
#[test]
fn a_unit_goes_into_one_write_even_when_submitted_slowly_and_past_the_group_cap() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let p = SessionPrefix::new("t", "c").unwrap();
    let writes = || {
        store
            .writer_stats()
            .writes
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    store.sync().unwrap();
    let before = writes();
    let (ticket, durable) = Ticket::unit();
    submit_queued(&store, &p, 0..2500, &ticket);
    // The writer has had time to write what it had: a unit must keep it waiting.
    std::thread::sleep(std::time::Duration::from_millis(200));
    submit_queued(&store, &p, 2500..5000, &ticket);
    ticket.seal();
    drop(ticket);
    futures_block_on(durable).unwrap();
    let st = store.writer_stats();
    eprintln!("max_group {:?} requests {:?}", st.max_group, st.requests);
    assert_eq!(writes() - before, 1, "the unit was split across writes");
    assert_eq!(
        store.read_queue(&p, 0, 10_000, usize::MAX).unwrap().len(),
        5000
    );
}

/// A unit is admitted as a whole: once its first batch of new data is taken, the rest is not
/// refused for a writer behind (which would store half a message), while other new data is.
#[test]
fn a_unit_admitted_is_not_refused_half_way_for_a_busy_writer() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = StoreOptions::new(dir.path());
    options.max_pending_bytes = 1;
    let store = Store::open(options).unwrap();
    let p = SessionPrefix::new("t", "c").unwrap();
    let (unit, durable) = Ticket::unit();
    // The first batch is admitted (nothing pending); the writer then waits for the rest,
    // so bytes stay pending.
    submit_queued(&store, &p, 0..3, &unit);
    let (other, _) = Ticket::new();
    let mut b = Batch::new();
    store
        .put_queued(&mut b, &p, 100, &queued(b"other"))
        .unwrap();
    assert!(matches!(
        store.submit(b, Some(&other)),
        Err(StorageError::Busy(_))
    ));
    unit.seal();
    drop(unit);
    futures_block_on(durable).unwrap();
    assert_eq!(store.read_queue(&p, 0, 10, usize::MAX).unwrap().len(), 3);
}

/// The free-space verdict is made once per unit: space running low half-way through a unit
/// stores all of it (the watermark's margin is for that), never half.
#[test]
fn a_unit_is_stored_or_refused_whole_when_the_disk_runs_low_half_way() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let p = SessionPrefix::new("t", "c").unwrap();
    let (unit, durable) = Ticket::unit();
    submit_queued(&store, &p, 0..2, &unit);
    std::thread::sleep(std::time::Duration::from_millis(50));
    store.set_min_free_disk_bytes(u64::MAX);
    // A lone batch now is refused; the rest of an admitted unit is not.
    let mut b = Batch::new();
    store.put_queued(&mut b, &p, 99, &queued(b"alone")).unwrap();
    assert!(store.submit(b, None).is_err());
    submit_queued(&store, &p, 2..4, &unit);
    unit.seal();
    drop(unit);
    futures_block_on(durable).unwrap();
    assert_eq!(store.read_queue(&p, 0, 10, usize::MAX).unwrap().len(), 4);

    // A unit that starts below the watermark is refused whole.
    let (unit, durable) = Ticket::unit();
    let mut b = Batch::new();
    store
        .put_queued(&mut b, &p, 10, &queued(b"payload"))
        .unwrap();
    assert!(matches!(
        store.submit(b, Some(&unit)),
        Err(StorageError::DiskLow { .. })
    ));
    assert!(unit.is_failed());
    store.set_min_free_disk_bytes(0);
    let mut b = Batch::new();
    store
        .put_queued(&mut b, &p, 12, &queued(b"payload"))
        .unwrap();
    assert!(
        store.submit(b, Some(&unit)).is_err(),
        "the rest of a refused unit"
    );
    unit.seal();
    drop(unit);
    assert!(futures_block_on(durable).is_err());
    assert_eq!(store.read_queue(&p, 0, 100, usize::MAX).unwrap().len(), 4);
}

fn free_bytes(dir: &Path) -> u64 {
    let st = rustix::fs::statvfs(dir).unwrap();
    st.f_bavail * st.f_frsize
}

fn audit_event(action: &str) -> AuditEvent {
    AuditEvent {
        time_ms: 1,
        tenant: None,
        actor: "broker".into(),
        action: action.into(),
        detail: "d".into(),
    }
}

/// The outside audit: audit records and other bookkeeping ignored the watermark, so
/// connection churn alone filled the disk. Each class of write now has its floor: new data
/// stops at the watermark, bookkeeping at half of it, and the operator's security changes
/// and deletes always go through.
#[test]
fn each_class_of_write_stops_at_its_own_floor() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let p = SessionPrefix::new("t", "c").unwrap();
    let free = free_bytes(dir.path());
    let record = SessionRecord {
        session_id: 1,
        expiry_interval: 60,
        disconnected_at: None,
    };
    // Below the watermark, above half of it.
    store.set_min_free_disk_bytes(free + free / 2);
    let mut b = Batch::new();
    store.put_queued(&mut b, &p, 1, &queued(b"x")).unwrap();
    assert!(matches!(
        store.submit(b, None),
        Err(StorageError::DiskLow { .. })
    ));
    assert!(store.disk_low());
    let mut b = Batch::new();
    store.put_session(&mut b, &p, &record);
    write(&store, b).unwrap();
    futures_block_on(store.append_audit(&audit_event("kept")).unwrap()).unwrap();

    // Below half of it: only deletes and the operator's changes.
    store.set_min_free_disk_bytes(free.saturating_mul(4));
    let mut b = Batch::new();
    store.put_session(&mut b, &p, &record);
    assert!(matches!(
        store.submit(b, None),
        Err(StorageError::DiskLow { .. })
    ));
    assert!(matches!(
        store.append_audit(&audit_event("refused")),
        Err(StorageError::DiskLow { .. })
    ));
    futures_block_on(
        store
            .append_operator_audit(&audit_event("device.disable"))
            .unwrap(),
    )
    .unwrap();
    let mut b = Batch::new();
    store.delete_session(&mut b, &p);
    write(&store, b).unwrap();

    // Refused records left no hole: the chain is whole.
    store.set_min_free_disk_bytes(0);
    futures_block_on(store.append_audit(&audit_event("after")).unwrap()).unwrap();
    let actions: Vec<String> = store
        .read_audit(0, 100)
        .unwrap()
        .into_iter()
        .map(|r| r.event.action)
        .collect();
    assert_eq!(actions, ["kept", "device.disable", "after"]);
    assert!(store.verify().unwrap().is_ok());
}

/// An audit record whose write fails after it was linked must not leave the next record
/// linked to a record that is not on disk.
#[test]
fn audit_records_whose_writes_fail_leave_the_chain_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    futures_block_on(store.append_audit(&audit_event("one")).unwrap()).unwrap();
    store.set_write_fault(true);
    let failed: Vec<_> = (0..3)
        .map(|_| store.append_audit(&audit_event("lost")).unwrap())
        .collect();
    for f in failed {
        assert!(futures_block_on(f).is_err());
    }
    store.set_write_fault(false);
    futures_block_on(store.append_audit(&audit_event("two")).unwrap()).unwrap();
    let report = store.verify().unwrap();
    assert!(report.audit.broken.is_none(), "{:?}", report.audit.broken);
    let actions: Vec<String> = store
        .read_audit(0, 100)
        .unwrap()
        .into_iter()
        .map(|r| r.event.action)
        .collect();
    assert_eq!(actions, ["one", "two"]);
}

/// The outside audit: the topic, QoS and expiry of a sealed message were stored in clear
/// and not authenticated, so someone who can write the data directory could redirect a
/// message to another topic or change its QoS or expiry without the key. They are the
/// sealed payload's associated data now: a change makes the record unreadable.
#[test]
fn what_is_stored_in_clear_beside_a_sealed_payload_cannot_be_changed() {
    let dir = tempfile::tempdir().unwrap();
    let p = SessionPrefix::new("t", "c").unwrap();
    let mut q = queued(b"sealed payload");
    q.message.expires_at = Some(5_000_000_000_000);
    {
        let mut options = StoreOptions::new(dir.path());
        options.keys = Some(KeyRing::parse(KEY).unwrap());
        let store = Store::open(options).unwrap();
        let mut b = Batch::new();
        for seq in 1..=4 {
            store.put_queued(&mut b, &p, seq, &q).unwrap();
        }
        write(&store, b).unwrap();
    }
    // Tamper with each clear field of one record (found by the bytes it is made of).
    {
        let opts = rocksdb::Options::default();
        let cfs = rocksdb::DB::list_cf(&opts, dir.path()).unwrap();
        let db = rocksdb::DB::open_cf(&opts, dir.path(), cfs).unwrap();
        let queue = db.cf_handle("queue").unwrap();
        type KeyValue = (Box<[u8]>, Box<[u8]>);
        let records: Vec<KeyValue> = db
            .iterator_cf(queue, rocksdb::IteratorMode::Start)
            .map(Result::unwrap)
            .collect();
        assert_eq!(records.len(), 4);
        let find = |v: &[u8], what: &[u8]| v.windows(what.len()).position(|w| w == what).unwrap();
        // 2: the topic "t/1" becomes "t/2".
        let (k, v) = &records[1];
        let mut v = v.to_vec();
        let at = find(&v, b"t/1") + 2;
        v[at] = b'2';
        db.put_cf(queue, k, v).unwrap();
        // 3: the expiry, a year later.
        let (k, v) = &records[2];
        let mut v = v.to_vec();
        let at = find(&v, &5_000_000_000_000u64.to_be_bytes());
        v[at + 4] ^= 0x01;
        db.put_cf(queue, k, v).unwrap();
        // 4: the queued copy's QoS (after the record's version byte), 1 to 2.
        let (k, v) = &records[3];
        let mut v = v.to_vec();
        assert_eq!(v[1], 1);
        v[1] = 2;
        db.put_cf(queue, k, v).unwrap();
    }
    let mut options = StoreOptions::new(dir.path());
    options.keys = Some(KeyRing::parse(KEY).unwrap());
    let store = Store::open(options).unwrap();
    let entries = store.read_queue_entries(&p, 0, 10, usize::MAX).unwrap();
    let readable: Vec<u64> = entries
        .iter()
        .filter(|(_, r)| r.is_ok())
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(readable, [1], "tampered records read as changed messages");
    for (_, r) in &entries[1..] {
        assert!(matches!(r, Err(StorageError::Crypto(_))), "{r:?}");
    }
}

/// One key seals a bounded number of values (random nonces): past the bound the store
/// refuses to seal, says what to do, and the count survives a restart; a new key (and
/// `messs storage rekey`, which is `seal_all`) goes on.
#[test]
fn a_key_seals_a_bounded_number_of_values_and_a_new_key_takes_over() {
    let dir = tempfile::tempdir().unwrap();
    let p = SessionPrefix::new("t", "c").unwrap();
    let ring = |spec: &str| Some(KeyRing::parse(spec).unwrap().with_usage_limit(5));
    let put = |store: &Store, seq: u64| {
        let mut b = Batch::new();
        store.put_queued(&mut b, &p, seq, &queued(b"x")).map(|()| b)
    };
    {
        let mut options = StoreOptions::new(dir.path());
        options.keys = ring(KEY);
        let store = Store::open(options).unwrap();
        for seq in 1..=3 {
            write(&store, put(&store, seq).unwrap()).unwrap();
        }
    }
    let mut options = StoreOptions::new(dir.path());
    options.keys = ring(KEY);
    let store = Store::open(options).unwrap();
    assert_eq!(
        store.key_usage(),
        Some((7, 3)),
        "the count survives a restart"
    );
    for seq in 4..=5 {
        write(&store, put(&store, seq).unwrap()).unwrap();
    }
    let err = put(&store, 6).unwrap_err();
    assert!(err.to_string().contains("messs storage rekey"), "{err}");
    drop(store);

    let rotated = format!("{KEY}\n8:{}", "ab".repeat(32));
    let mut options = StoreOptions::new(dir.path());
    options.keys = ring(&rotated);
    let store = Store::open(options).unwrap();
    write(&store, put(&store, 6).unwrap()).unwrap();
    assert_eq!(store.read_queue(&p, 0, 10, usize::MAX).unwrap().len(), 6);
}

/// Deletes of acknowledged messages deferred with bookkeeping puts (QoS 1 in-flight ids)
/// still reach the disk when free space is too low for bookkeeping: the acknowledged
/// messages must not come back after a restart, and deletes give space back.
#[test]
fn deletes_deferred_with_bookkeeping_survive_a_refusal_for_space() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let p = SessionPrefix::new("t", "c").unwrap();
    let mut b = Batch::new();
    store.put_queued(&mut b, &p, 1, &queued(b"acked")).unwrap();
    write(&store, b).unwrap();
    store.set_min_free_disk_bytes(free_bytes(dir.path()).saturating_mul(4));
    let mut b = Batch::new();
    store.delete_queued(&mut b, &p, 1);
    store.put_inflight_group(&mut b, &p, &[(2, 7)]);
    b.deletes_survive_refusal();
    write(&store, b).unwrap();
    assert!(store.read_queue(&p, 0, 10, usize::MAX).unwrap().is_empty());
    // Without the mark the same batch is refused whole.
    let mut b = Batch::new();
    store.put_queued(&mut b, &p, 3, &queued(b"x")).unwrap();
    store.set_min_free_disk_bytes(0);
    write(&store, b).unwrap();
    store.set_min_free_disk_bytes(free_bytes(dir.path()).saturating_mul(4));
    let mut b = Batch::new();
    store.delete_queued(&mut b, &p, 3);
    store.put_inflight_group(&mut b, &p, &[(4, 8)]);
    assert!(matches!(
        store.submit(b, None),
        Err(StorageError::DiskLow { .. })
    ));
    assert_eq!(store.read_queue(&p, 0, 10, usize::MAX).unwrap().len(), 1);
}

/// The outside audit's full-disk finding: free space was read at most every 100 ms and
/// not held against what had been admitted since, so one client's burst of large
/// messages went 85 MiB through a 6 MiB margin. Each admitted batch now counts (twice: log
/// and table file) until the disk shows it.
#[test]
fn admitted_writes_count_against_free_space_before_the_disk_shows_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let p = SessionPrefix::new("t", "c").unwrap();
    // 4 MiB above the watermark.
    store.set_min_free_disk_bytes(free_bytes(dir.path()).saturating_sub(4 << 20));
    let big = vec![7u8; 1 << 20];
    let mut admitted = 0;
    for seq in 0..10 {
        let mut b = Batch::new();
        store.put_queued(&mut b, &p, seq, &queued(&big)).unwrap();
        if store.submit(b, None).is_ok() {
            admitted += 1;
        }
    }
    assert!(
        admitted <= 2,
        "{admitted} MiB admitted through a 4 MiB margin"
    );
}

/// An admitted unit is not refused for a busy writer, but what waits for the writer has a
/// hard cap: one publish fanned out to many persistent sessions must not queue without a
/// byte bound.
#[test]
fn an_admitted_unit_stops_at_the_writers_hard_cap() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = StoreOptions::new(dir.path());
    options.max_pending_bytes = 1;
    let store = Store::open(options).unwrap();
    let p = SessionPrefix::new("t", "c").unwrap();
    let (unit, durable) = Ticket::unit();
    let big = vec![1u8; 1 << 20];
    let mut queued_mib = 0;
    for seq in 0..200 {
        let mut b = Batch::new();
        store.put_queued(&mut b, &p, seq, &queued(&big)).unwrap();
        if store.submit(b, Some(&unit)).is_err() {
            break;
        }
        queued_mib += 1;
    }
    assert!((60..=66).contains(&queued_mib), "{queued_mib} MiB queued");
    assert!(unit.is_failed());
    unit.seal();
    drop(unit);
    assert!(futures_block_on(durable).is_err());
}

fn reference(id: u64) -> QueuedRecord {
    QueuedRecord {
        shared: Some(id),
        subscription_ids: vec![5],
        ..queued(b"")
    }
}

/// Rewrites the value of queue record `seq` of `client` in `tenant` (an attacker with the
/// data directory).
fn rewrite_queued(dir: &Path, tenant: &str, client: &str, seq: u64, change: impl Fn(&mut Vec<u8>)) {
    let names = rocksdb::DB::list_cf(&rocksdb::Options::default(), dir).unwrap();
    let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), dir, names).unwrap();
    let cf = db.cf_handle("queue").unwrap();
    let mut key = messs_storage::keys::session_prefix(tenant, client).unwrap();
    key.extend_from_slice(&seq.to_be_bytes());
    let mut value = db.get_cf(cf, &key).unwrap().unwrap();
    change(&mut value);
    db.put_cf(cf, &key, value).unwrap();
}

#[test]
fn a_shared_message_is_stored_once_read_through_references_and_swept() {
    let dir = tempfile::tempdir().unwrap();
    let payload = vec![9u8; 64 * 1024];
    let (one, two) = (
        SessionPrefix::new("a", "one").unwrap(),
        SessionPrefix::new("a", "two").unwrap(),
    );
    let other = SessionPrefix::new("b", "one").unwrap();
    {
        let mut options = StoreOptions::new(dir.path());
        options.keys = Some(KeyRing::parse(KEY).unwrap());
        let store = Store::open(options).unwrap();
        let mut b = Batch::new();
        store
            .put_shared_message(&mut b, "a", 77, &message("t/1", &payload))
            .unwrap();
        store
            .put_shared_message(&mut b, "a", 78, &message("t/2", b"orphan"))
            .unwrap();
        for p in [&one, &two] {
            store.put_session(
                &mut b,
                p,
                &SessionRecord {
                    session_id: 1,
                    expiry_interval: 60,
                    disconnected_at: Some(1),
                },
            );
            store.put_queued(&mut b, p, 1, &reference(77)).unwrap();
        }
        // Tenant b names the same id: it resolves in b, where there is no such message.
        store.put_session(
            &mut b,
            &other,
            &SessionRecord {
                session_id: 2,
                expiry_interval: 60,
                disconnected_at: Some(1),
            },
        );
        store.put_queued(&mut b, &other, 1, &reference(77)).unwrap();
        write(&store, b).unwrap();
        for p in [&one, &two] {
            let read = store.read_queue(p, 0, 10, usize::MAX).unwrap();
            assert_eq!(read.len(), 1);
            assert_eq!(read[0].1.message.payload.as_ref(), &payload[..]);
            assert_eq!(read[0].1.shared, Some(77));
            assert_eq!(read[0].1.subscription_ids, vec![5]);
        }
        let err = store.read_queue(&other, 0, 10, usize::MAX).unwrap_err();
        assert!(err.to_string().contains("gone"), "{err}");

        let loaded = store.load_sessions().unwrap();
        let of = |t: &str, c: &str| {
            loaded
                .iter()
                .find(|s| s.tenant == t && s.client_id == c)
                .unwrap()
                .clone()
        };
        let a1 = of("a", "one");
        assert_eq!(a1.shared_refs, vec![(1, 77)]);
        assert_eq!(a1.queued, 1);
        assert!(a1.queued_bytes > 64 * 1024, "the message counts in full");
        let b1 = of("b", "one");
        assert_eq!((b1.queued, b1.dangling_refs.clone()), (0, vec![1]));
        assert_eq!(b1.next_seq, 2, "a dangling record still holds its number");

        // Nobody refers to 78: the sweep deletes it, and 77 stays.
        assert_eq!(store.sweep_shared_messages(|id| id == 77).unwrap(), 1);
        store.wait_written().unwrap();
        assert_eq!(store.read_queue(&one, 0, 10, usize::MAX).unwrap().len(), 1);
        store.compact().unwrap();
        assert!(store.verify().unwrap().is_ok());
    }
    // Sealed: the payload is not on disk in clear, and it is on disk once.
    let bytes = all_bytes(dir.path());
    assert!(!bytes.windows(4096).any(|w| w == &payload[..4096]));

    // A reference's head is authenticated: pointing it at another message fails.
    // (The head ends with the id; the seal after it is 1 + 4 + 12 + 16 bytes.)
    rewrite_queued(dir.path(), "a", "one", 1, |v| {
        let last_id_byte = v.len() - 33 - 1;
        v[last_id_byte] ^= 1;
    });
    let mut options = StoreOptions::new(dir.path());
    options.keys = Some(KeyRing::parse(KEY).unwrap());
    let store = Store::open(options).unwrap();
    assert!(store.read_queue(&one, 0, 10, usize::MAX).is_err());
    assert_eq!(store.read_queue(&two, 0, 10, usize::MAX).unwrap().len(), 1);
}

const DAY: u64 = 86_400_000;

/// Retention drops the oldest audit records by age and by bytes, never younger than the
/// floor, and the chain still verifies from its anchor; an anchor moved by someone without
/// the audit key (old records cut away to hide them) is found.
#[test]
fn audit_retention_keeps_the_chain_verifiable_from_a_signed_anchor() {
    let key = [9u8; 32];
    let dir = tempfile::tempdir().unwrap();
    let now = 400 * DAY;
    let store = keyed(dir.path(), key);
    // One record a day for 300 days, ending yesterday.
    for d in 0..300u64 {
        let e = AuditEvent {
            time_ms: now - (300 - d) * DAY,
            ..event(d)
        };
        futures_block_on(store.append_audit(&e).unwrap()).unwrap();
    }
    let policy = messs_storage::audit::AuditRetention {
        max_age_ms: Some(200 * DAY),
        max_bytes: None,
        keep_at_least_ms: 90 * DAY,
    };
    let pruned = store.prune_audit(&policy, None, now).unwrap();
    assert_eq!(pruned.records, 100, "{pruned:?}");
    assert_eq!(pruned.first_kept, Some(101));
    let report = store.verify_audit().unwrap();
    assert!(report.broken.is_none(), "{report:?}");
    assert_eq!(report.head.seq, 300);
    // Appends go on and verify.
    futures_block_on(store.append_audit(&event(301)).unwrap()).unwrap();
    assert!(store.verify_audit().unwrap().broken.is_none());

    // A byte cap drops more, but never the last 90 days.
    let tiny = messs_storage::audit::AuditRetention {
        max_age_ms: None,
        max_bytes: Some(1),
        keep_at_least_ms: 90 * DAY,
    };
    let pruned = store.prune_audit(&tiny, None, now).unwrap();
    let kept = store.read_audit(0, 10_000).unwrap();
    assert!(pruned.records > 0);
    assert!(kept
        .iter()
        .all(|r| r.event.time_ms >= now - 90 * DAY || r.seq == 301));
    assert!(kept.len() >= 90, "{} kept", kept.len());
    assert!(store.verify_audit().unwrap().broken.is_none());
    // Even with no floor, the newest record stays (it is the anchor).
    let all = messs_storage::audit::AuditRetention {
        max_age_ms: Some(0),
        max_bytes: None,
        keep_at_least_ms: 0,
    };
    store.prune_audit(&all, None, now + 10 * DAY).unwrap();
    assert_eq!(store.read_audit(0, 10).unwrap().len(), 1);
    assert!(store.verify_audit().unwrap().broken.is_none());
    futures_block_on(store.append_audit(&event(302)).unwrap()).unwrap();
    assert!(store.verify_audit().unwrap().broken.is_none());
    drop(store);

    // Someone without the key rewrites the anchor to hide a record: found.
    {
        let names = rocksdb::DB::list_cf(&rocksdb::Options::default(), dir.path()).unwrap();
        let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), dir.path(), names).unwrap();
        let meta = db.cf_handle("meta").unwrap();
        let audit = db.cf_handle("audit").unwrap();
        let first = db
            .iterator_cf(audit, rocksdb::IteratorMode::Start)
            .next()
            .unwrap()
            .unwrap()
            .0;
        db.delete_cf(audit, &first).unwrap();
        let mut anchor = db.get_cf(meta, b"audit_anchor").unwrap().unwrap();
        let seq = u64::from_be_bytes(anchor[..8].try_into().unwrap()) + 1;
        anchor[..8].copy_from_slice(&seq.to_be_bytes());
        db.put_cf(meta, b"audit_anchor", anchor).unwrap();
    }
    let store = keyed(dir.path(), key);
    let report = store.verify_audit().unwrap();
    assert!(
        report
            .broken
            .as_ref()
            .is_some_and(|b| b.reason.contains("anchor")),
        "{report:?}"
    );
}

/// A tenant's own audit retention drops the details of its records past its age or byte
/// cap (never one younger than the broker-wide floor), leaves other tenants' records and
/// the broker's alone, and the chain still verifies; details changed in place are found.
#[test]
fn a_tenants_audit_retention_redacts_its_records_and_the_chain_still_verifies() {
    use messs_storage::audit::{AuditRetention, TenantAuditRetention};
    let dir = tempfile::tempdir().unwrap();
    let now = 400 * DAY;
    let store = keyed(dir.path(), [7u8; 32]);
    // One record a day for 200 days, ending yesterday, for tenants a, b and the broker.
    let owner = |d: u64| match d % 3 {
        0 => Some("a".to_owned()),
        1 => Some("b".to_owned()),
        _ => None,
    };
    for d in 0..200u64 {
        let e = AuditEvent {
            time_ms: now - (200 - d) * DAY,
            tenant: owner(d),
            ..event(d)
        };
        futures_block_on(store.append_audit(&e).unwrap()).unwrap();
    }
    let broker_wide = AuditRetention {
        max_age_ms: None,
        max_bytes: None,
        keep_at_least_ms: 90 * DAY,
    };
    // Tenant a keeps 30 days (the 90-day floor wins), tenant b has no cap of its own.
    let per_tenant = |t: &str| match t {
        "a" => TenantAuditRetention {
            max_age_ms: Some(30 * DAY),
            max_bytes: None,
        },
        _ => TenantAuditRetention::default(),
    };
    let pruned = store
        .prune_audit(&broker_wide, Some(&per_tenant), now)
        .unwrap();
    assert_eq!(pruned.records, 0, "nothing dropped broker-wide");
    let records = store.read_audit(0, 1000).unwrap();
    assert_eq!(records.len(), 200);
    let floor = now - 90 * DAY;
    for r in &records {
        let a_and_old = r.event.tenant.as_deref() == Some("a") && r.event.time_ms < floor;
        assert_eq!(r.redacted, a_and_old, "{r:?}");
        if r.redacted {
            assert!(r.event.detail.is_empty() && r.event.actor.is_empty());
            assert_eq!(r.event.action, "test.event", "the action stays");
        } else {
            assert!(!r.event.detail.is_empty());
        }
    }
    let expected = records.iter().filter(|r| r.redacted).count() as u64;
    assert_eq!(pruned.redacted, expected);
    assert!(expected > 30, "{expected}");
    assert!(pruned.redacted_bytes > 0);
    let report = store.verify_audit().unwrap();
    assert!(report.broken.is_none(), "{report:?}");
    assert_eq!(report.head.seq, 200);

    // A byte cap on b: its oldest details go until it is under it, never past the floor.
    let capped = |t: &str| match t {
        "b" => TenantAuditRetention {
            max_age_ms: None,
            max_bytes: Some(1),
        },
        _ => TenantAuditRetention::default(),
    };
    store.prune_audit(&broker_wide, Some(&capped), now).unwrap();
    let records = store.read_audit(0, 1000).unwrap();
    assert!(records
        .iter()
        .filter(|r| r.event.tenant.as_deref() == Some("b"))
        .all(|r| r.redacted == (r.event.time_ms < floor)));
    assert!(records
        .iter()
        .filter(|r| r.event.tenant.is_none())
        .all(|r| !r.redacted));
    assert!(store.verify_audit().unwrap().broken.is_none());
    futures_block_on(store.append_audit(&event(999)).unwrap()).unwrap();
    assert!(store.verify_audit().unwrap().broken.is_none());
    drop(store);

    // A record's details changed in place (its header untouched) are found.
    {
        let opts = rocksdb::Options::default();
        let cfs = rocksdb::DB::list_cf(&opts, dir.path()).unwrap();
        let db = rocksdb::DB::open_cf(&opts, dir.path(), cfs).unwrap();
        let cf = db.cf_handle("audit").unwrap();
        let mut v = db.get_cf(cf, 200u64.to_be_bytes()).unwrap().unwrap();
        let last = v.len() - 1;
        v[last] ^= 0x01;
        db.put_cf(cf, 200u64.to_be_bytes(), v).unwrap();
    }
    let report = keyed(dir.path(), [7u8; 32]).verify_audit().unwrap();
    let broken = report.broken.expect("changed details went unnoticed");
    assert_eq!(broken.seq, 200, "{broken:?}");
}

/// A log written before redactable records (versions 1 and 2) is read and verified as it
/// was, and new records (version 3) go on linked to it.
#[test]
fn an_audit_log_of_the_older_format_goes_on_with_redactable_records() {
    use aws_lc_rs::digest::{digest, SHA256};
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    // Three records in the old layout: [1][seq][time][prev][actor][action][detail], each
    // linked by the SHA-256 of its bytes, and the head after them.
    {
        let opts = rocksdb::Options::default();
        let cfs = rocksdb::DB::list_cf(&opts, dir.path()).unwrap();
        let db = rocksdb::DB::open_cf(&opts, dir.path(), cfs).unwrap();
        let audit = db.cf_handle("audit").unwrap();
        let mut prev = [0u8; 32];
        for seq in 1..=3u64 {
            let mut r = vec![1u8];
            r.extend_from_slice(&seq.to_be_bytes());
            r.extend_from_slice(&seq.to_be_bytes());
            r.extend_from_slice(&prev);
            for s in ["admin", "test.event", &format!("event {seq}")] {
                r.extend_from_slice(&(s.len() as u32).to_be_bytes());
                r.extend_from_slice(s.as_bytes());
            }
            prev.copy_from_slice(digest(&SHA256, &r).as_ref());
            db.put_cf(audit, seq.to_be_bytes(), &r).unwrap();
        }
        let mut head = 4u64.to_be_bytes().to_vec();
        head.extend_from_slice(&prev);
        db.put_cf(db.cf_handle("meta").unwrap(), b"audit_head", head)
            .unwrap();
    }
    let store = open(dir.path());
    assert_eq!(store.read_audit(2, 1).unwrap()[0].event, event(2));
    for i in 4..=5 {
        futures_block_on(store.append_audit(&event(i)).unwrap()).unwrap();
    }
    let report = store.verify_audit().unwrap();
    assert!(report.broken.is_none(), "{report:?}");
    assert_eq!(report.head.seq, 5);
    let all = store.read_audit(0, 10).unwrap();
    assert_eq!(
        all.iter().map(|r| r.event.clone()).collect::<Vec<_>>(),
        (1..=5).map(event).collect::<Vec<_>>()
    );
}

/// `block_cache_bytes` bounds what every family caches: reading 4.8 MiB of retained
/// messages and queued records back from their table files through a 1 MiB cache fills
/// that cache (every family reads through it: with private caches it would stay empty)
/// and never more.
#[test]
fn every_family_reads_through_the_one_block_cache_of_the_configured_size() {
    const CACHE: usize = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    let options = || {
        let mut o = StoreOptions::new(dir.path());
        o.block_cache_bytes = CACHE;
        o
    };
    let p = SessionPrefix::new("acme", "dev-1").unwrap();
    // Payloads that LZ4 cannot shrink, so the blocks are as large as what is read.
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    let mut noise = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    {
        let store = Store::open(options()).unwrap();
        for chunk in 0..6u64 {
            let mut b = Batch::new();
            for i in chunk * 100..(chunk + 1) * 100 {
                let mut retained = message(&format!("r/{i}"), &noise(4096));
                retained.retain = true;
                store.put_retained(&mut b, "acme", &retained).unwrap();
                store
                    .put_queued(&mut b, &p, i + 1, &queued(&noise(4096)))
                    .unwrap();
            }
            write(&store, b).unwrap();
        }
        store.flush().unwrap();
    }
    let store = Store::open(options()).unwrap();
    // Opening reads the table files' index blocks (pinned in the cache) and little else.
    let at_open = store.memory().block_cache_bytes;
    for i in 0..600u64 {
        let found = store.read_retained("acme", &format!("r/{i}")).unwrap();
        assert!(found.is_some(), "retained r/{i}");
    }
    let mut from = 1;
    loop {
        let page = store.read_queue(&p, from, 100, 1 << 20).unwrap();
        let Some((last, _)) = page.last() else { break };
        from = last + 1;
    }
    assert_eq!(from, 601, "every queued record read");
    let used = store.memory().block_cache_bytes;
    assert!(
        used > at_open + CACHE as u64 / 2,
        "the reads went through the configured cache: {used} bytes in it ({at_open} at open)"
    );
    assert!(
        used <= CACHE as u64,
        "the cache holds at most block_cache_bytes: {used} > {CACHE}"
    );
}
