//! The storage writer: QoS 1-sized queue writes (a 100-byte payload), each waited for as a
//! publisher's PUBACK would be, from 1 and 16 concurrent submitters, at each durability
//! level. Prints the mean and largest number of requests group-committed into one RocksDB
//! write after each run, since batching is what makes `wal` and `fsync` affordable.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use messs_storage::sessions::{MessageRecord, QueuedRecord, SessionPrefix};
use messs_storage::{Batch, Durability, Store, StoreOptions, Ticket};

/// Writes per submitter per iteration.
const PER_SUBMITTER: u64 = 200;

fn record() -> QueuedRecord {
    QueuedRecord {
        qos: 1,
        retain: false,
        subscription_ids: Vec::new(),
        message: MessageRecord {
            topic: "site/1/dev/2/temp".into(),
            payload: Bytes::from(vec![7u8; 100]),
            qos: 1,
            retain: false,
            expires_at: None,
            origin: 1,
            properties: Bytes::new(),
        },
        shared: None,
    }
}

/// `submitters` threads each write `PER_SUBMITTER` records, waiting for each one.
fn run(store: &Arc<Store>, submitters: u64, seq_base: &mut u64) -> Duration {
    let record = Arc::new(record());
    let started = Instant::now();
    let threads: Vec<_> = (0..submitters)
        .map(|t| {
            let store = store.clone();
            let record = record.clone();
            let base = *seq_base;
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                let prefix = SessionPrefix::new("bench", &format!("c{t}")).unwrap();
                for i in 0..PER_SUBMITTER {
                    let mut b = Batch::new();
                    store
                        .put_queued(&mut b, &prefix, base + i, &record)
                        .unwrap();
                    let (ticket, durable) = Ticket::new();
                    store.submit(b, Some(&ticket)).unwrap();
                    drop(ticket);
                    rt.block_on(durable).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    *seq_base += PER_SUBMITTER;
    started.elapsed()
}

fn bench_writer(c: &mut Criterion) {
    let mut group = c.benchmark_group("storage_writer");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(4));
    for (name, durability) in [
        ("none", Durability::None),
        ("wal", Durability::Wal),
        ("fsync", Durability::Fsync),
    ] {
        for submitters in [1u64, 16] {
            let dir = tempfile::tempdir().unwrap();
            let mut options = StoreOptions::new(dir.path());
            options.durability = durability;
            let store = Arc::new(Store::open(options).unwrap());
            let mut seq = 0;
            group.throughput(Throughput::Elements(submitters * PER_SUBMITTER));
            group.bench_function(
                BenchmarkId::new(name, format!("{submitters}_submitters")),
                |b| {
                    b.iter_custom(|iters| {
                        (0..iters).map(|_| run(&store, submitters, &mut seq)).sum()
                    })
                },
            );
            let s = store.writer_stats();
            let writes = s.writes.load(Ordering::Relaxed).max(1);
            let requests = s.requests.load(Ordering::Relaxed);
            eprintln!(
                "storage_writer/{name}/{submitters}_submitters: {requests} writes in {writes} RocksDB writes, {:.1} per write on average, {} at most",
                requests as f64 / writes as f64,
                s.max_group.load(Ordering::Relaxed)
            );
        }
    }
    group.finish();
}

criterion_group!(benches, bench_writer);
criterion_main!(benches);
