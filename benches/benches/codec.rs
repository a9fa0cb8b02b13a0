//! Codec throughput: decode and encode of PUBLISH (16 B, 256 B, 4 KiB payloads) at both
//! protocol levels, CONNECT, and the fan-out encode: one message to 100 subscribers, as an
//! owned `Publish` per subscriber (the general path) and by reference (the broker's path
//! for deliveries without properties).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::num::NonZeroU16;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use messs_codec::{
    decode, encode, encode_plain_publish, encode_publish, Connect, ConnectProperties, Limits,
    Packet, Protocol, Publish, PublishFlags, PublishProperties, QosPid, TopicName,
};

fn publish(size: usize) -> Publish {
    Publish {
        dup: false,
        qos_pid: QosPid::AtLeastOnce(NonZeroU16::new(7).unwrap()),
        retain: false,
        topic: TopicName::new("sensors/building-7/floor-3/temperature").unwrap(),
        properties: PublishProperties::default(),
        payload: Bytes::from(vec![0xA5; size]),
    }
}

fn connect() -> Connect {
    Connect {
        protocol: Protocol::V5,
        clean_start: true,
        keep_alive: 30,
        properties: ConnectProperties {
            session_expiry_interval: Some(3600),
            ..ConnectProperties::default()
        },
        client_id: "device-0001-abcdef".into(),
        will: None,
        username: Some("device-0001".into()),
        password: Some(Bytes::from_static(b"a-long-enough-device-password")),
    }
}

fn bench_publish(c: &mut Criterion) {
    for protocol in [Protocol::V3_1_1, Protocol::V5] {
        let mut group = c.benchmark_group(format!("publish/{protocol:?}"));
        for size in [16usize, 256, 4096] {
            let p = publish(size);
            let mut wire = BytesMut::new();
            encode_publish(&p, protocol, &mut wire).unwrap();
            let wire = wire.freeze();
            group.throughput(Throughput::Bytes(wire.len() as u64));
            group.bench_with_input(BenchmarkId::new("decode", size), &wire, |b, wire| {
                let limits = Limits::default();
                b.iter(|| {
                    let mut buf = BytesMut::from(&wire[..]);
                    black_box(decode(&mut buf, protocol, &limits).unwrap())
                })
            });
            group.bench_with_input(BenchmarkId::new("encode", size), &p, |b, p| {
                let mut out = BytesMut::with_capacity(8192);
                b.iter(|| {
                    out.clear();
                    encode_publish(black_box(p), protocol, &mut out).unwrap();
                    black_box(out.len())
                })
            });
        }
        group.finish();
    }
}

fn bench_connect(c: &mut Criterion) {
    let packet = Packet::Connect(Box::new(connect()));
    let mut wire = BytesMut::new();
    encode(&packet, Protocol::V5, &mut wire).unwrap();
    let wire = wire.freeze();
    let mut group = c.benchmark_group("connect/V5");
    group.bench_function("decode", |b| {
        let limits = Limits::default();
        b.iter(|| {
            let mut buf = BytesMut::from(&wire[..]);
            black_box(decode(&mut buf, Protocol::V5, &limits).unwrap())
        })
    });
    group.bench_function("encode", |b| {
        let mut out = BytesMut::with_capacity(256);
        b.iter(|| {
            out.clear();
            encode(black_box(&packet), Protocol::V5, &mut out).unwrap();
            black_box(out.len())
        })
    });
    group.finish();
}

/// One 64-byte QoS 1 message encoded for 100 subscribers into one write buffer, each with
/// its own packet id: the work a fan-out does per message on the subscribers' side.
fn bench_fan_out_encode(c: &mut Criterion) {
    const SUBSCRIBERS: u16 = 100;
    let message = publish(64);
    let mut group = c.benchmark_group("fan_out_encode/100");
    group.throughput(Throughput::Elements(u64::from(SUBSCRIBERS)));
    for protocol in [Protocol::V3_1_1, Protocol::V5] {
        group.bench_function(
            BenchmarkId::new("owned_publish", format!("{protocol:?}")),
            |b| {
                let mut out = BytesMut::with_capacity(16 * 1024);
                b.iter(|| {
                    out.clear();
                    for i in 1..=SUBSCRIBERS {
                        let p = Publish {
                            qos_pid: QosPid::AtLeastOnce(NonZeroU16::new(i).unwrap()),
                            topic: message.topic.clone(),
                            properties: message.properties.clone(),
                            payload: message.payload.clone(),
                            ..message
                        };
                        encode_publish(black_box(&p), protocol, &mut out).unwrap();
                    }
                    black_box(out.len())
                })
            },
        );
        group.bench_function(
            BenchmarkId::new("plain_by_reference", format!("{protocol:?}")),
            |b| {
                let mut out = BytesMut::with_capacity(16 * 1024);
                b.iter(|| {
                    out.clear();
                    for i in 1..=SUBSCRIBERS {
                        let flags = PublishFlags {
                            dup: false,
                            qos_pid: QosPid::AtLeastOnce(NonZeroU16::new(i).unwrap()),
                            retain: false,
                        };
                        let (topic, payload) = (message.topic.as_str(), &message.payload[..]);
                        encode_plain_publish(flags, black_box(topic), payload, protocol, &mut out)
                            .unwrap();
                    }
                    black_box(out.len())
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench_publish, bench_connect, bench_fan_out_encode);
criterion_main!(benches);
