//! Topic matching against 10k / 100k / 1M subscriptions (exact and wildcard-heavy), and
//! router fan-out of one message to 1 / 100 / 10k subscribers.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use messs_broker::bench_support::{BenchRouter, BenchTrie};
use messs_codec::TopicName;

/// Exact filters: `site/{s}/dev/{d}/temp`, all distinct.
fn exact(n: usize) -> BenchTrie {
    let mut t = BenchTrie::new(1000);
    for i in 0..n {
        t.subscribe(&format!("site/{}/dev/{}/temp", i / 100, i % 100), i);
    }
    t
}

/// Wildcard-heavy: a quarter each of `site/{s}/+/{d}/#`, `+/{s}/dev/+/temp`,
/// `site/{s}/dev/{d}/#` and exact filters.
fn wildcard(n: usize) -> BenchTrie {
    let mut t = BenchTrie::new(1000);
    for i in 0..n {
        let (s, d) = (i / 100, i % 100);
        let f = match i % 4 {
            0 => format!("site/{s}/+/{d}/#"),
            1 => format!("+/{s}/dev/+/temp"),
            2 => format!("site/{s}/dev/{d}/#"),
            _ => format!("site/{s}/dev/{d}/temp"),
        };
        t.subscribe(&f, i);
    }
    t
}

fn bench_matching(c: &mut Criterion) {
    let mut group = c.benchmark_group("match");
    group
        .sample_size(30)
        .measurement_time(Duration::from_secs(3));
    for n in [10_000usize, 100_000, 1_000_000] {
        let topic = format!("site/{}/dev/{}/temp", (n / 2) / 100, (n / 2) % 100);
        let t = exact(n);
        assert_eq!(t.count_matches(&topic), 1);
        group.bench_with_input(BenchmarkId::new("exact", n), &topic, |b, topic| {
            b.iter(|| black_box(t.count_matches(black_box(topic))))
        });
        drop(t);
        let t = wildcard(n);
        assert!(t.count_matches(&topic) >= 1);
        group.bench_with_input(BenchmarkId::new("wildcard", n), &topic, |b, topic| {
            b.iter(|| black_box(t.count_matches(black_box(topic))))
        });
    }
    group.finish();
}

fn bench_fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout");
    group
        .sample_size(30)
        .measurement_time(Duration::from_secs(3));
    let topic = TopicName::new("sensors/42/temp").unwrap();
    let payload = Bytes::from(vec![0u8; 64]);
    for n in [1usize, 100, 10_000] {
        let router = BenchRouter::new(n, "sensors/+/temp");
        assert_eq!(router.publish(&topic, &payload), n);
        router.drain();
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    let t0 = Instant::now();
                    black_box(router.publish(&topic, &payload));
                    timed += t0.elapsed();
                    router.drain();
                }
                timed
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_matching, bench_fanout);
criterion_main!(benches);
