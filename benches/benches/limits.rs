//! The rate limiter's cost per packet when limits are set but never reached: one
//! connection's buckets and its tenant's shared rates charged for every packet of a read
//! pass (the clock read once per pass), for passes of 1 and of 16 packets.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use messs_broker::bench_support::BenchLimiter;

fn bench_limiter(c: &mut Criterion) {
    let mut group = c.benchmark_group("limiter");
    for packets in [1u32, 16] {
        group.throughput(Throughput::Elements(u64::from(packets)));
        group.bench_with_input(
            BenchmarkId::new("charge, rates on, never reached; packets per pass", packets),
            &packets,
            |b, &packets| {
                let mut limiter = BenchLimiter::default();
                b.iter(|| {
                    let go = limiter.pass(black_box(packets), black_box(90));
                    assert_eq!(go, packets, "a limit far above the bench was reached");
                });
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench_limiter);
criterion_main!(benches);
