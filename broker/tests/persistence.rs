//! Durable state across broker restarts, on real RocksDB in a temporary directory: a
//! persistent session's subscriptions, queued and in-flight messages, incoming QoS 2 state
//! and pending will; retained messages; telemetry; online checkpoints; and what a failing
//! disk does to acknowledgements. (The SIGKILL crash test runs the `messs` binary: see
//! `tests/crash.rs` at the repository root.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::num::NonZeroU16;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use messs_codec::{
    Packet, Protocol, PubResponse, QoS, QosPid, ReasonCode, SubscriptionOptions, Will,
};

const EXPIRY: u32 = 3600;

/// A v5 client resuming (or starting) the persistent session `id`.
async fn persistent(addr: std::net::SocketAddr, id: &str, clean: bool) -> (Raw, bool) {
    let mut c = connect_packet(Protocol::V5, id, clean);
    c.properties.session_expiry_interval = Some(EXPIRY);
    let (raw, ack) = Raw::connect_with(addr, c).await;
    assert_eq!(ack.code, ReasonCode::Success);
    (raw, ack.session_present)
}

/// A broker started on the checkpoint at `dir` (moved into a temporary directory of its
/// own beside it, removed with it).
async fn start_on_checkpoint(dir: &std::path::Path) -> TestBroker {
    let parent = dir.parent().unwrap();
    let restored = tempfile::TempDir::new_in(parent).unwrap();
    std::fs::remove_dir(restored.path()).unwrap();
    std::fs::rename(dir, restored.path()).unwrap();
    TestBroker::start_in(std::sync::Arc::new(restored), |_| {}).await
}

async fn restart(broker: TestBroker) -> TestBroker {
    let data = broker.data.clone();
    broker.stop().await;
    TestBroker::start_in(data, |_| {}).await
}

#[tokio::test]
async fn a_persistent_session_and_retained_messages_survive_a_restart() {
    let broker = TestBroker::start().await;
    let (mut sub, present) = persistent(broker.addr, "sub", true).await;
    assert!(!present);
    sub.subscribe_opts(
        1,
        "t/#",
        SubscriptionOptions::new(QoS::AtLeastOnce),
        Some(9),
    )
    .await;
    sub.disconnect().await;

    let mut publisher = Raw::v5(broker.addr, "pub").await;
    for i in 0..50u16 {
        let payload: &'static [u8] = Box::leak(format!("m{i}").into_bytes().into_boxed_slice());
        publisher
            .publish(publish("t/x", payload, QosPid::AtLeastOnce(pid(1)), false))
            .await;
    }
    publisher
        .publish(publish("r/1", b"kept", QosPid::AtLeastOnce(pid(1)), true))
        .await;
    publisher.disconnect().await;
    assert_eq!(broker.stats.queued_on_disk.load(Ordering::Relaxed), 50);

    let broker = restart(broker).await;
    assert_eq!(
        broker.stats.queued_on_disk.load(Ordering::Relaxed),
        50,
        "the queue is on disk after the restart, not in memory"
    );
    let (mut sub, present) = persistent(broker.addr, "sub", false).await;
    assert!(present, "the session was restored");
    for i in 0..50u16 {
        let p = sub.recv_publish_ack().await;
        assert_eq!(p.payload, format!("m{i}").as_bytes(), "in order, none lost");
        assert!(!p.dup, "never sent before the restart: not a redelivery");
        assert_eq!(
            p.properties.subscription_identifiers,
            vec![std::num::NonZeroU32::new(9).unwrap()],
            "the subscription (with its identifier) was restored"
        );
    }
    sub.expect_silence().await;
    // Live messages still reach the restored subscription.
    let mut publisher = Raw::v5(broker.addr, "pub").await;
    publisher
        .publish(publish(
            "t/live",
            b"live",
            QosPid::AtLeastOnce(pid(1)),
            false,
        ))
        .await;
    assert_eq!(sub.recv_publish_ack().await.payload, &b"live"[..]);
    // And the retained message was restored.
    let mut fresh = Raw::v5(broker.addr, "fresh").await;
    fresh.subscribe("r/#", QoS::AtLeastOnce).await;
    let r = fresh.recv_publish_ack().await;
    assert_eq!(
        (r.topic.as_str(), &r.payload[..], r.retain),
        ("r/1", &b"kept"[..], true)
    );
    broker.stop().await;
}

#[tokio::test]
async fn an_offline_queue_costs_disk_not_memory_and_pages_back_in_order() {
    // Memory queues hold 16 messages; the persistent session keeps 2,000 on disk.
    let broker = TestBroker::start_with(|c| c.limits.max_queued_messages = 16).await;
    let (mut sub, _) = persistent(broker.addr, "sub", true).await;
    sub.subscribe("q/#", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let bytes_before = broker.stats.session_bytes.load(Ordering::Relaxed);
    let mut publisher = Raw::v5(broker.addr, "pub").await;
    for i in 0..2000u32 {
        let payload: &'static [u8] = Box::leak(i.to_be_bytes().to_vec().into_boxed_slice());
        publisher
            .publish(publish("q/1", payload, QosPid::AtLeastOnce(pid(1)), false))
            .await;
    }
    assert_eq!(broker.stats.queued_on_disk.load(Ordering::Relaxed), 2000);
    let held = broker.stats.session_bytes.load(Ordering::Relaxed) - bytes_before;
    assert!(
        held < 4096,
        "2,000 offline messages hold {held} bytes of memory"
    );
    assert_eq!(broker.stats.dropped_queue_full.load(Ordering::Relaxed), 0);

    let (mut sub, present) = persistent(broker.addr, "sub", false).await;
    assert!(present);
    for i in 0..2000u32 {
        let p = sub.recv_publish_ack().await;
        assert_eq!(&p.payload[..], &i.to_be_bytes(), "message {i}");
    }
    sub.expect_silence().await;
    assert_eq!(broker.stats.queued_on_disk.load(Ordering::Relaxed), 0);
    broker.stop().await;
}

/// The outside audit's finding: a persistent session coming back with Receive Maximum 1 and
/// reading nothing had its whole stored queue paged into memory (64 MB against a
/// `max_queued_bytes` of 16 MiB). Paging in stops at the session's byte limit now; the
/// rest stay on disk until the queue drains, and every message still arrives, in order.
#[tokio::test]
async fn paging_in_a_stored_queue_stops_at_the_sessions_byte_limit() {
    const LIMIT: usize = 1024 * 1024;
    let broker = TestBroker::start_with(|c| {
        c.limits.max_queued_bytes = LIMIT;
        c.limits.max_packet_size = 256 * 1024;
    })
    .await;
    let (mut sub, _) = persistent(broker.addr, "slow", true).await;
    sub.subscribe("big/#", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let payload: &'static [u8] = Box::leak(vec![7u8; 200 * 1024].into_boxed_slice());
    let mut publisher = Raw::v5(broker.addr, "pub").await;
    for i in 0..16u16 {
        publisher
            .publish(publish(
                "big/1",
                payload,
                QosPid::AtLeastOnce(pid(i + 1)),
                false,
            ))
            .await;
    }
    assert_eq!(broker.stats.queued_on_disk.load(Ordering::Relaxed), 16);

    let mut again = connect_packet(Protocol::V5, "slow", false);
    again.properties.session_expiry_interval = Some(EXPIRY);
    again.properties.receive_maximum = NonZeroU16::new(1);
    let (mut sub, ack) = Raw::connect_with(broker.addr, again).await;
    assert!(ack.session_present);
    let first = sub.recv_publish().await;
    // Give the page-in time to run past the limit if it were going to.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let info = broker
        .broker
        .sessions()
        .into_iter()
        .find(|s| s.client_id == "slow")
        .unwrap();
    assert!(
        info.queued_bytes <= LIMIT + payload.len() + 4096,
        "{} bytes paged into memory for a limit of {LIMIT}",
        info.queued_bytes
    );
    let mut received = vec![first];
    while received.len() < 16 {
        let last = received.last().unwrap();
        let QosPid::AtLeastOnce(id) = last.qos_pid else {
            panic!("{last:?}")
        };
        sub.send(&Packet::PubAck(PubResponse::success(id))).await;
        received.push(sub.recv_publish().await);
    }
    assert!(received.iter().all(|p| p.payload.len() == payload.len()));
    broker.stop().await;
}

#[tokio::test]
async fn in_flight_messages_are_resent_with_their_packet_ids_after_a_restart() {
    let broker = TestBroker::start().await;
    let (mut sub, _) = persistent(broker.addr, "sub", true).await;
    sub.subscribe("f/#", QoS::ExactlyOnce).await;
    let mut publisher = Raw::v5(broker.addr, "pub").await;
    publisher
        .publish(publish("f/1", b"one", QosPid::AtLeastOnce(pid(1)), false))
        .await;
    publisher
        .publish(publish("f/2", b"two", QosPid::ExactlyOnce(pid(5)), false))
        .await;
    // QoS 1: received, never acknowledged.
    let first = sub.recv_publish().await;
    let QosPid::AtLeastOnce(first_id) = first.qos_pid else {
        panic!("{first:?}")
    };
    // QoS 2: PUBREC sent, PUBREL received, PUBCOMP never sent.
    let second = sub.recv_publish().await;
    let QosPid::ExactlyOnce(second_id) = second.qos_pid else {
        panic!("{second:?}")
    };
    sub.send(&Packet::PubRec(PubResponse::success(second_id)))
        .await;
    assert!(matches!(sub.recv().await, Packet::PubRel(r) if r.packet_id == second_id));
    sub.drop_connection();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let broker = restart(broker).await;
    let (mut sub, present) = persistent(broker.addr, "sub", false).await;
    assert!(present);
    let again = sub.recv_publish().await;
    assert!(again.dup, "a redelivery is flagged DUP");
    assert_eq!(
        again.qos_pid,
        QosPid::AtLeastOnce(first_id),
        "same packet id"
    );
    assert_eq!(&again.payload[..], b"one");
    match sub.recv().await {
        Packet::PubRel(r) => assert_eq!(r.packet_id, second_id),
        other => panic!("expected the PUBREL again, got {other:?}"),
    }
    sub.send(&Packet::PubAck(PubResponse::success(first_id)))
        .await;
    sub.send(&Packet::PubComp(PubResponse::success(second_id)))
        .await;
    sub.expect_silence().await;
    sub.drop_connection();
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Completed exchanges stay completed across another restart.
    let broker = restart(broker).await;
    let (mut sub, present) = persistent(broker.addr, "sub", false).await;
    assert!(present);
    sub.expect_silence().await;
    broker.stop().await;
}

#[tokio::test]
async fn an_unreleased_incoming_qos2_message_is_not_routed_twice_after_a_restart() {
    let broker = TestBroker::start().await;
    let (mut publisher, _) = persistent(broker.addr, "pub", true).await;
    publisher
        .send(&Packet::Publish(Box::new(publish(
            "q2/t",
            b"once",
            QosPid::ExactlyOnce(pid(7)),
            false,
        ))))
        .await;
    assert!(matches!(publisher.recv().await, Packet::PubRec(r) if r.packet_id == pid(7)));
    publisher.drop_connection();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let broker = restart(broker).await;
    let mut sub = Raw::v5(broker.addr, "sub").await;
    sub.subscribe("q2/#", QoS::ExactlyOnce).await;
    let (mut publisher, present) = persistent(broker.addr, "pub", false).await;
    assert!(present);
    let mut resend = publish("q2/t", b"once", QosPid::ExactlyOnce(pid(7)), false);
    resend.dup = true;
    publisher.send(&Packet::Publish(Box::new(resend))).await;
    assert!(matches!(publisher.recv().await, Packet::PubRec(r) if r.packet_id == pid(7)));
    publisher
        .send(&Packet::PubRel(PubResponse::success(pid(7))))
        .await;
    match publisher.recv().await {
        Packet::PubComp(r) => assert_eq!(r.reason, ReasonCode::Success, "the packet id was known"),
        other => panic!("{other:?}"),
    }
    sub.expect_silence().await;
    broker.stop().await;
}

#[tokio::test]
async fn a_pending_delayed_will_survives_a_restart() {
    let broker = TestBroker::start().await;
    let mut c = connect_packet(Protocol::V5, "dying", true);
    c.properties.session_expiry_interval = Some(EXPIRY);
    let mut will = Will {
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: topic("wills/dying"),
        payload: bytes::Bytes::from_static(b"gone"),
        properties: Default::default(),
    };
    will.properties.will_delay_interval = Some(2);
    c.will = Some(will);
    let (client, _) = Raw::connect_with(broker.addr, c).await;
    client.drop_connection();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let broker = restart(broker).await;
    let mut watcher = Raw::v5(broker.addr, "watcher").await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;
    let p = watcher.recv_publish_ack().await;
    assert_eq!(&p.payload[..], b"gone");
    broker.stop().await;
}

#[tokio::test]
async fn a_failing_store_refuses_publishes_that_need_it_and_recovers() {
    let broker = TestBroker::start().await;
    let store = broker.broker.store().unwrap();
    let (mut durable_sub, _) = persistent(broker.addr, "durable", true).await;
    durable_sub.subscribe("d/#", QoS::AtLeastOnce).await;
    let mut live_sub = Raw::v5(broker.addr, "live").await;
    live_sub.subscribe("l/#", QoS::AtLeastOnce).await;
    let mut v5 = Raw::v5(broker.addr, "pub5").await;

    store.set_write_fault(true);
    // v5: refused with 0x80 and a reason string.
    v5.send(&Packet::Publish(Box::new(publish(
        "d/1",
        b"x",
        QosPid::AtLeastOnce(pid(1)),
        false,
    ))))
    .await;
    match v5.recv().await {
        Packet::PubAck(r) => {
            assert_eq!(r.reason, ReasonCode::UnspecifiedError);
            assert!(r.properties.reason_string.is_some());
        }
        other => panic!("{other:?}"),
    }
    // A message that needs no storage is routed as usual, at any QoS.
    v5.publish(publish(
        "l/1",
        b"in memory",
        QosPid::AtLeastOnce(pid(1)),
        false,
    ))
    .await;
    assert_eq!(live_sub.recv_publish_ack().await.payload, &b"in memory"[..]);
    // 3.1.1 has no refusal: the connection closes without the PUBACK.
    let mut v3 = Raw::v311(broker.addr, "pub3").await;
    v3.send(&Packet::Publish(Box::new(publish(
        "d/1",
        b"x",
        QosPid::AtLeastOnce(pid(1)),
        false,
    ))))
    .await;
    let seen = v3.expect_closed().await;
    assert!(seen.is_empty(), "no PUBACK: {seen:?}");
    assert!(
        broker
            .stats
            .publishes_refused_storage
            .load(Ordering::Relaxed)
            >= 2
    );

    // Space comes back: the same publish succeeds, nothing restarted.
    store.set_write_fault(false);
    v5.publish(publish("d/1", b"after", QosPid::AtLeastOnce(pid(1)), false))
        .await;
    // The refused message may or may not have reached the online subscriber; the one sent
    // after recovery must.
    loop {
        let p = durable_sub.recv_publish_ack().await;
        if &p.payload[..] == b"after" {
            break;
        }
    }
    assert!(!store.is_failing());
    broker.stop().await;
}

#[tokio::test]
async fn telemetry_filters_capture_messages_in_the_store() {
    let broker = TestBroker::start_with(|c| {
        c.storage.telemetry.filters = vec!["sensors/+/temp".into()];
    })
    .await;
    let mut publisher = Raw::v5(broker.addr, "pub").await;
    publisher
        .publish(publish(
            "sensors/a/temp",
            b"21.5",
            QosPid::AtLeastOnce(pid(1)),
            false,
        ))
        .await;
    publisher
        .publish(publish(
            "sensors/a/hum",
            b"40",
            QosPid::AtLeastOnce(pid(1)),
            false,
        ))
        .await;
    let store = broker.broker.store().unwrap();
    let page = store
        .query_telemetry(&messs_storage::telemetry::TelemetryQuery {
            tenant: messs_broker::DEFAULT_TENANT.into(),
            filter: "#".into(),
            from_ms: 0,
            to_ms: u64::MAX,
            limit: 10,
            cursor: None,
        })
        .unwrap();
    let topics: Vec<&str> = page
        .records
        .iter()
        .map(|r| r.message.topic.as_str())
        .collect();
    assert_eq!(
        topics,
        vec!["sensors/a/temp"],
        "only the filter's topic, once"
    );
    assert_eq!(&page.records[0].message.payload[..], b"21.5");
    broker.stop().await;
}

#[tokio::test]
async fn an_online_checkpoint_restores_into_a_new_broker() {
    let broker = TestBroker::start().await;
    let (mut sub, _) = persistent(broker.addr, "sub", true).await;
    sub.subscribe("c/#", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publisher = Raw::v5(broker.addr, "pub").await;
    publisher
        .publish(publish(
            "c/1",
            b"queued",
            QosPid::AtLeastOnce(pid(1)),
            false,
        ))
        .await;
    publisher
        .publish(publish(
            "c/r",
            b"retained",
            QosPid::AtLeastOnce(pid(1)),
            true,
        ))
        .await;
    let backup = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let target = backup.path().join("checkpoint");
    broker.broker.checkpoint(target.clone()).await.unwrap();
    // The original keeps serving.
    publisher
        .publish(publish(
            "c/2",
            b"after the checkpoint",
            QosPid::AtLeastOnce(pid(1)),
            false,
        ))
        .await;
    broker.stop().await;

    let broker = start_on_checkpoint(&target).await;
    let (mut sub, present) = persistent(broker.addr, "sub", false).await;
    assert!(present);
    let got: Vec<Vec<u8>> = vec![
        sub.recv_publish_ack().await.payload.to_vec(),
        sub.recv_publish_ack().await.payload.to_vec(),
    ];
    assert!(
        got.contains(&b"queued".to_vec()) && got.contains(&b"retained".to_vec()),
        "{got:?}"
    );
    sub.expect_silence().await;
    broker.stop().await;
}

#[tokio::test]
async fn clean_sessions_never_wait_for_the_store() {
    let broker = TestBroker::start().await;
    let store = broker.broker.store().unwrap();
    let mut sub = Raw::v5(broker.addr, "sub").await;
    sub.subscribe("m/#", QoS::AtLeastOnce).await;
    store.set_write_fault(true);
    let mut publisher = Raw::v5(broker.addr, "pub").await;
    publisher
        .publish(publish(
            "m/1",
            b"memory only",
            QosPid::AtLeastOnce(pid(1)),
            false,
        ))
        .await;
    assert_eq!(sub.recv_publish_ack().await.payload, &b"memory only"[..]);
    store.set_write_fault(false);
    broker.stop().await;
}

#[tokio::test]
async fn large_retained_payloads_stay_on_disk_and_are_read_on_delivery() {
    let small_inline = |c: &mut messs_broker::Config| c.storage.retained_inline_bytes = 100;
    let broker = TestBroker::start_with(small_inline).await;
    let big: &'static [u8] = Box::leak(vec![7u8; 10_000].into_boxed_slice());
    let mut publisher = Raw::v5(broker.addr, "pub").await;
    for i in 0..40 {
        let t = format!("big/{i}");
        publisher
            .publish(publish(&t, big, QosPid::AtLeastOnce(pid(1)), true))
            .await;
    }
    publisher
        .publish(publish(
            "big/small",
            b"inline",
            QosPid::AtLeastOnce(pid(1)),
            true,
        ))
        .await;
    let check = |broker: &TestBroker| {
        let addr = broker.addr;
        async move {
            let mut sub = Raw::v5(addr, "reader").await;
            sub.subscribe("big/#", QoS::AtLeastOnce).await;
            let mut bigs = 0;
            for _ in 0..41 {
                let p = sub.recv_publish_ack().await;
                if p.topic.as_str() == "big/small" {
                    assert_eq!(&p.payload[..], b"inline");
                } else {
                    assert_eq!(p.payload.len(), 10_000, "{}", p.topic.as_str());
                    bigs += 1;
                }
            }
            assert_eq!(
                bigs, 40,
                "every on-disk payload was read (in batches of 32)"
            );
            sub.expect_silence().await;
        }
    };
    check(&broker).await;
    let data = broker.data.clone();
    broker.stop().await;
    let broker = TestBroker::start_in(data, small_inline).await;
    check(&broker).await;
    broker.stop().await;
}

#[tokio::test]
async fn periodic_backups_are_written_and_pruned() {
    let backups = tempfile::tempdir().unwrap();
    let dir = backups.path().to_path_buf();
    let broker = TestBroker::start_with(|c| {
        c.storage.backup.dir = Some(dir.clone());
        c.storage.backup.every_secs = 1;
        c.storage.backup.keep = 2;
    })
    .await;
    let mut publisher = Raw::v5(broker.addr, "pub").await;
    publisher
        .publish(publish(
            "b/r",
            b"backed up",
            QosPid::AtLeastOnce(pid(1)),
            true,
        ))
        .await;
    tokio::time::sleep(Duration::from_millis(3600)).await;
    broker.stop().await;
    let mut names: Vec<u64> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names.len(),
        2,
        "three or more were written, two kept: {names:?}"
    );
    // The newest restores.
    let newest = dir.join(names[1].to_string());
    let broker = start_on_checkpoint(&newest).await;
    let mut sub = Raw::v5(broker.addr, "sub").await;
    sub.subscribe("b/#", QoS::AtLeastOnce).await;
    assert_eq!(&sub.recv_publish_ack().await.payload[..], b"backed up");
    broker.stop().await;
}

#[tokio::test]
async fn encrypted_at_rest_with_a_key_from_the_environment_and_audited() {
    // A variable name of this test's own, so parallel tests never see it.
    let var = "MESSS_TEST_STORAGE_KEY_PERSISTENCE";
    std::env::set_var(var, format!("3:{}", "5a".repeat(32)));
    let with_key = |c: &mut messs_broker::Config| c.storage.encryption_key_env = Some(var.into());
    let broker = TestBroker::start_with(with_key).await;
    let secret: &'static [u8] = b"confidential-reading-31337";
    let (mut sub, _) = persistent(broker.addr, "sub", true).await;
    sub.subscribe("enc/#", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publisher = Raw::v5(broker.addr, "pub").await;
    publisher
        .publish(publish("enc/1", secret, QosPid::AtLeastOnce(pid(1)), true))
        .await;
    let data = broker.data.clone();
    broker.stop().await;
    let mut on_disk = Vec::new();
    for entry in std::fs::read_dir(data.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            on_disk.extend(std::fs::read(path).unwrap());
        }
    }
    assert!(
        !on_disk.windows(secret.len()).any(|w| w == secret),
        "the payload is on disk in clear"
    );
    // The broker logged its start and stop in the audit chain, and the chain verifies.
    let store = messs_broker::open_store(&messs_broker::StorageConfig {
        data_dir: data.path().to_path_buf(),
        encryption_key_env: Some(var.into()),
        ..Default::default()
    })
    .unwrap();
    let report = store.verify().unwrap();
    assert!(report.is_ok(), "{report:?}");
    let actions: Vec<String> = store
        .read_audit(1, 10)
        .unwrap()
        .into_iter()
        .map(|r| r.event.action)
        .collect();
    assert_eq!(actions.first().map(String::as_str), Some("broker.start"));
    assert_eq!(actions.last().map(String::as_str), Some("broker.stop"));
    assert!(actions.iter().any(|a| a == "client.connect"), "{actions:?}");
    drop(store);
    // With the key, the message is readable after a restart.
    let broker = TestBroker::start_in(data, with_key).await;
    let (mut sub, _) = persistent(broker.addr, "sub", false).await;
    assert_eq!(&sub.recv_publish_ack().await.payload[..], secret);
    broker.stop().await;
}

/// Client `id` connects with a session that lives 1 s and a QoS 1 will on `wills/ID`
/// (delayed longer than the session lives, so it goes out when the session ends), drops
/// its connection; the broker stops, stays down longer than that second (wall-clock) and
/// starts again on the same store.
async fn expire_while_down(
    broker: TestBroker,
    id: &str,
    retain: bool,
    payload: &'static [u8],
) -> TestBroker {
    let mut c = connect_packet(Protocol::V5, id, true);
    c.properties.session_expiry_interval = Some(1);
    let mut will = Will {
        qos: QoS::AtLeastOnce,
        retain,
        topic: topic(&format!("wills/{id}")),
        payload: bytes::Bytes::from_static(payload),
        properties: Default::default(),
    };
    will.properties.will_delay_interval = Some(60);
    c.will = Some(will);
    let (client, _) = Raw::connect_with(broker.addr, c).await;
    client.drop_connection();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let data = broker.data.clone();
    broker.stop().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    TestBroker::start_in(data, |_| {}).await
}

#[tokio::test]
async fn a_session_that_expires_while_the_broker_is_down_ends_at_start_with_its_will() {
    let broker = TestBroker::start().await;
    let broker = expire_while_down(broker, "short", true, b"expired").await;
    assert!(
        broker
            .broker
            .sessions()
            .iter()
            .all(|s| s.client_id != "short"),
        "the expired session was not restored"
    );
    // Its will was published (retained, so a late subscriber sees it).
    let mut watcher = Raw::v5(broker.addr, "watcher").await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;
    assert_eq!(&watcher.recv_publish_ack().await.payload[..], b"expired");
    broker.stop().await;
}

/// Issue 21's finding: the will of a session that expired while the broker was down was
/// published while the sessions were still being restored, so only the persistent
/// subscribers restored before it got it. Here the subscriber ("z-...") sorts after the
/// expired session ("a-...") in the store, so it is restored after it; the will (not
/// retained) must still be in its queue.
#[tokio::test]
async fn a_will_published_at_start_reaches_sessions_restored_after_it() {
    let broker = TestBroker::start().await;
    let (mut listener, _) = persistent(broker.addr, "z-listener", true).await;
    listener.subscribe("wills/#", QoS::AtLeastOnce).await;
    listener.disconnect().await;
    let broker = expire_while_down(broker, "a-dying", false, b"gone while down").await;
    let (mut listener, present) = persistent(broker.addr, "z-listener", false).await;
    assert!(present);
    assert_eq!(
        &listener.recv_publish_ack().await.payload[..],
        b"gone while down",
        "the will missed a session restored after the expired one"
    );
    broker.stop().await;
}

/// QoS 1 messages sent together share one stored record of their packet ids: after some are
/// acknowledged and the broker restarts, exactly the others come back, each with DUP and
/// its packet id.
#[tokio::test]
async fn of_a_batch_in_flight_only_the_unacknowledged_come_back() {
    let broker = TestBroker::start().await;
    let (mut sub, _) = persistent(broker.addr, "sub", true).await;
    sub.subscribe("g/#", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publisher = Raw::v5(broker.addr, "pub").await;
    for i in 0..5u8 {
        let payload: &'static [u8] = Box::leak(vec![i].into_boxed_slice());
        publisher
            .publish(publish("g/1", payload, QosPid::AtLeastOnce(pid(1)), false))
            .await;
    }
    // On reconnect the five are sent in one batch; acknowledge 0, 2 and 4 only.
    let (mut sub, _) = persistent(broker.addr, "sub", false).await;
    let mut unacked = Vec::new();
    for _ in 0..5 {
        let p = sub.recv_publish().await;
        let QosPid::AtLeastOnce(id) = p.qos_pid else {
            panic!("{p:?}")
        };
        if p.payload[0] % 2 == 0 {
            sub.send(&Packet::PubAck(PubResponse::success(id))).await;
        } else {
            unacked.push((p.payload[0], id));
        }
    }
    sub.expect_silence().await;
    sub.drop_connection();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let broker = restart(broker).await;
    let (mut sub, present) = persistent(broker.addr, "sub", false).await;
    assert!(present);
    let mut again = Vec::new();
    for _ in 0..2 {
        let p = sub.recv_publish().await;
        assert!(p.dup, "{p:?}");
        let QosPid::AtLeastOnce(id) = p.qos_pid else {
            panic!("{p:?}")
        };
        again.push((p.payload[0], id));
        sub.send(&Packet::PubAck(PubResponse::success(id))).await;
    }
    assert_eq!(again, unacked, "the unacknowledged two, same ids, in order");
    sub.expect_silence().await;
    sub.drop_connection();
    tokio::time::sleep(Duration::from_millis(100)).await;

    // All acknowledged now: nothing after one more restart.
    let broker = restart(broker).await;
    let (mut sub, _) = persistent(broker.addr, "sub", false).await;
    sub.expect_silence().await;
    broker.stop().await;
}

/// The outside audit: SUBACK and UNSUBACK were sent as successes after their writes failed,
/// so a subscription the client was told it had was gone after a restart (and one it was
/// told was removed came back). A failed write now gets the failure reason code, and the
/// session stays as the store has it.
#[tokio::test]
async fn subscribe_and_unsubscribe_whose_writes_fail_are_refused_and_undone() {
    let broker = TestBroker::start().await;
    let store = broker.broker.store().unwrap();
    let (mut s, _) = persistent(broker.addr, "s", true).await;
    assert_eq!(
        s.subscribe("kept/#", QoS::AtLeastOnce).await.reasons,
        vec![ReasonCode::GrantedQoS1]
    );

    store.set_write_fault(true);
    let ack = s.subscribe("new/#", QoS::AtLeastOnce).await;
    assert_eq!(ack.reasons, vec![ReasonCode::UnspecifiedError]);
    s.send(&Packet::Unsubscribe(Box::new(messs_codec::Unsubscribe {
        packet_id: pid(2),
        properties: Default::default(),
        filters: vec![messs_codec::TopicFilter::new("kept/#").unwrap()],
    })))
    .await;
    match s.recv().await {
        Packet::UnsubAck(a) => assert_eq!(a.reasons, vec![ReasonCode::UnspecifiedError]),
        other => panic!("{other:?}"),
    }
    store.set_write_fault(false);

    // As the acknowledgements said: not subscribed to new/#, still to kept/#.
    let mut publisher = Raw::v5(broker.addr, "pub").await;
    for t in ["new/1", "kept/1"] {
        publisher
            .publish(publish(t, b"x", QosPid::AtLeastOnce(pid(1)), false))
            .await;
    }
    assert_eq!(s.recv_publish_ack().await.topic.as_str(), "kept/1");
    s.expect_silence().await;
    s.disconnect().await;

    // And the same after a restart.
    drop(store);
    let broker = restart(broker).await;
    let (mut s, present) = persistent(broker.addr, "s", false).await;
    assert!(present);
    let mut publisher = Raw::v5(broker.addr, "pub").await;
    for t in ["new/2", "kept/2"] {
        publisher
            .publish(publish(t, b"x", QosPid::AtLeastOnce(pid(1)), false))
            .await;
    }
    assert_eq!(s.recv_publish_ack().await.topic.as_str(), "kept/2");
    s.expect_silence().await;
    broker.stop().await;
}

/// The outside audit: PUBCOMP was sent after the release of the packet id failed to be
/// stored, so after a restart the stale id swallowed the next message that reused it.
#[tokio::test]
async fn a_release_whose_write_fails_gets_no_pubcomp_and_is_retried() {
    let broker = TestBroker::start().await;
    let store = broker.broker.store().unwrap();
    let mut sub = Raw::v5(broker.addr, "sub").await;
    sub.subscribe("q2/#", QoS::AtLeastOnce).await;
    let (mut p, _) = persistent(broker.addr, "pub", true).await;
    p.send(&Packet::Publish(Box::new(publish(
        "q2/1",
        b"first",
        QosPid::ExactlyOnce(pid(5)),
        false,
    ))))
    .await;
    assert!(matches!(p.recv().await, Packet::PubRec(r) if r.reason == ReasonCode::Success));
    assert_eq!(&sub.recv_publish_ack().await.payload[..], b"first");

    store.set_write_fault(true);
    p.send(&Packet::PubRel(PubResponse::success(pid(5)))).await;
    let seen = p.expect_closed().await;
    assert!(
        !seen.iter().any(|x| matches!(x, Packet::PubComp(_))),
        "PUBCOMP after a failed write: {seen:?}"
    );
    store.set_write_fault(false);

    // The client sends PUBREL again; now it is stored and completed.
    let (mut p, present) = persistent(broker.addr, "pub", false).await;
    assert!(present);
    p.send(&Packet::PubRel(PubResponse::success(pid(5)))).await;
    assert!(matches!(p.recv().await, Packet::PubComp(r) if r.reason == ReasonCode::Success));
    p.disconnect().await;

    // After a restart the id is free: a new message with it is routed.
    drop(store);
    let broker = restart(broker).await;
    let mut sub = Raw::v5(broker.addr, "sub").await;
    sub.subscribe("q2/#", QoS::AtLeastOnce).await;
    let (mut p, _) = persistent(broker.addr, "pub", false).await;
    p.send(&Packet::Publish(Box::new(publish(
        "q2/1",
        b"second",
        QosPid::ExactlyOnce(pid(5)),
        false,
    ))))
    .await;
    assert!(matches!(p.recv().await, Packet::PubRec(_)));
    assert_eq!(&sub.recv_publish_ack().await.payload[..], b"second");
    broker.stop().await;
}

/// The outside audit: a 3.1.1 QoS 2 publish whose store write was refused closed the
/// connection, but its packet id stayed known, so the DUP resend got PUBREC without being
/// routed: acknowledged, never stored.
#[tokio::test]
async fn a_311_qos2_publish_whose_write_fails_is_routed_when_sent_again() {
    let broker = TestBroker::start().await;
    let store = broker.broker.store().unwrap();
    // An offline persistent subscriber: its copy exists only in the store.
    let (mut s, _) = persistent(broker.addr, "s", true).await;
    s.subscribe("q2/#", QoS::ExactlyOnce).await;
    s.disconnect().await;

    let v3_session = || connect_packet(Protocol::V3_1_1, "pub3", false);
    let (mut p, _) = Raw::connect_with(broker.addr, v3_session()).await;
    store.set_write_fault(true);
    let mut message = publish("q2/1", b"once", QosPid::ExactlyOnce(pid(3)), false);
    p.send(&Packet::Publish(Box::new(message.clone()))).await;
    let seen = p.expect_closed().await;
    assert!(
        seen.is_empty(),
        "no PUBREC for what was not stored: {seen:?}"
    );
    store.set_write_fault(false);

    let (mut p, ack) = Raw::connect_with(broker.addr, v3_session()).await;
    assert!(ack.session_present);
    message.dup = true;
    p.send(&Packet::Publish(Box::new(message))).await;
    assert!(matches!(p.recv().await, Packet::PubRec(_)));
    p.send(&Packet::PubRel(PubResponse::success(pid(3)))).await;
    assert!(matches!(p.recv().await, Packet::PubComp(_)));

    let (mut s, _) = persistent(broker.addr, "s", false).await;
    let got = s.recv_publish().await;
    assert_eq!(&got.payload[..], b"once");
    broker.stop().await;
}

fn free_bytes(dir: &std::path::Path) -> u64 {
    let st = rustix::fs::statvfs(dir).unwrap();
    st.f_bavail * st.f_frsize
}

/// Waits until everything submitted to the store is written (audit records are not
/// waited for by the broker).
async fn sync(store: &messs_storage::Store) {
    let store = store.clone();
    tokio::task::spawn_blocking(move || store.sync())
        .await
        .unwrap()
        .unwrap();
}

fn audit_actions(store: &messs_storage::Store) -> Vec<String> {
    store
        .read_audit(0, 100_000)
        .unwrap()
        .into_iter()
        .map(|r| r.event.action)
        .collect()
}

/// The outside audit: two audit records per connection, never deleted and outside the
/// watermark, let anonymous connection churn alone fill the disk. While space is low they
/// are counted and summed up instead; and the operator can still disable a device — and
/// have it audited — when even bookkeeping is refused.
#[tokio::test]
async fn connection_churn_on_a_low_disk_is_summed_up_and_the_operator_still_acts() {
    let broker = TestBroker::start().await;
    broker
        .broker
        .registry("test", |r| {
            r.add_tenant("acme", None)?;
            r.add_device("acme", "sensor", Some("right-password-1"), None, &[])
        })
        .await
        .unwrap();
    let store = broker.broker.store().unwrap();
    let free = free_bytes(broker.data.path());
    let connects = |actions: &[String]| actions.iter().filter(|a| *a == "client.connect").count();
    let before = audit_actions(&store);

    // Within twice the watermark, above it: connections are summed up already, while a
    // persistent session's messages are still stored (the outside audit's finding: churn
    // wrote its records down to the watermark, and then everyone's messages were refused).
    store.set_min_free_disk_bytes(free * 2 / 3);
    for i in 0..20 {
        Raw::v5(broker.addr, &format!("margin-{i}"))
            .await
            .disconnect()
            .await;
    }
    let (mut keeper, _) = persistent(broker.addr, "keeper", true).await;
    keeper.subscribe("keep/#", QoS::AtLeastOnce).await;
    keeper.disconnect().await;
    let mut publisher = Raw::v5(broker.addr, "margin-pub").await;
    publisher
        .publish(publish(
            "keep/1",
            b"kept",
            QosPid::AtLeastOnce(pid(1)),
            false,
        ))
        .await;
    publisher.disconnect().await;
    sync(&store).await;
    assert_eq!(broker.stats.queued_on_disk.load(Ordering::Relaxed), 1);
    assert_eq!(
        connects(&audit_actions(&store)),
        connects(&before),
        "connects within the margin were written"
    );
    assert!(broker.stats.audit_withheld.load(Ordering::Relaxed) >= 40);

    // Below the watermark: 50 connections leave one summary, not 100 records.
    store.set_min_free_disk_bytes(free + free / 2);
    for i in 0..50 {
        Raw::v5(broker.addr, &format!("churn-{i}"))
            .await
            .disconnect()
            .await;
    }
    sync(&store).await;
    let during = audit_actions(&store);
    assert_eq!(
        connects(&during),
        connects(&before),
        "connects were written"
    );
    assert_eq!(
        during.iter().filter(|a| *a == "audit.withheld").count(),
        1,
        "{:?}",
        &during[before.len()..]
    );
    assert!(broker.stats.audit_withheld.load(Ordering::Relaxed) >= 100);

    // Below half of it: the operator disables the device; it is stored and audited.
    store.set_min_free_disk_bytes(free.saturating_mul(4));
    broker
        .broker
        .registry("admin", |r| r.set_device_enabled("acme", "sensor", false))
        .await
        .unwrap();
    sync(&store).await;
    assert!(audit_actions(&store).iter().any(|a| a == "device.disable"));
    assert!(!store.device("acme", "sensor").unwrap().unwrap().enabled);

    // Space is back: the summary of the rest comes first, then records as usual.
    store.set_min_free_disk_bytes(0);
    Raw::v5(broker.addr, "after").await.disconnect().await;
    sync(&store).await;
    let after = audit_actions(&store);
    let tail = &after[during.len()..];
    let summary = tail.iter().position(|a| a == "audit.withheld");
    let connect = tail.iter().position(|a| a == "client.connect");
    assert!(
        matches!((summary, connect), (Some(s), Some(c)) if s < c),
        "{tail:?}"
    );
    assert!(store.verify().unwrap().is_ok());
    broker.stop().await;
}

/// The outside audit: with 512 or more in-flight messages restored, the page-in read the
/// same page of them again and again (about 90% of a core) until the client acknowledged,
/// and the messages queued behind them never came.
#[tokio::test]
async fn many_restored_in_flight_messages_do_not_stall_the_queue_behind_them() {
    const IN_FLIGHT: u16 = 600;
    const BEHIND: u16 = 100;
    let broker = TestBroker::start().await;
    let connect = |clean: bool| {
        let mut c = connect_packet(Protocol::V5, "sub", clean);
        c.properties.session_expiry_interval = Some(EXPIRY);
        c.properties.receive_maximum = std::num::NonZeroU16::new(1000);
        c
    };
    let (mut sub, _) = Raw::connect_with(broker.addr, connect(true)).await;
    sub.subscribe("p/#", QoS::AtLeastOnce).await;
    let mut publisher = Raw::v5(broker.addr, "pub").await;
    for _ in 0..IN_FLIGHT {
        publisher
            .publish(publish(
                "p/1",
                b"in flight",
                QosPid::AtLeastOnce(pid(1)),
                false,
            ))
            .await;
    }
    // Received, never acknowledged.
    for _ in 0..IN_FLIGHT {
        sub.recv_publish().await;
    }
    sub.drop_connection();
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..BEHIND {
        publisher
            .publish(publish(
                "p/2",
                b"behind",
                QosPid::AtLeastOnce(pid(1)),
                false,
            ))
            .await;
    }
    drop(publisher);

    let broker = restart(broker).await;
    let (mut sub, ack) = Raw::connect_with(broker.addr, connect(false)).await;
    assert!(ack.session_present);
    let (mut resent, mut behind) = (0, 0);
    while let Some(p) = sub.recv_within(Duration::from_secs(3)).await {
        match p {
            Packet::Publish(p) if p.dup => resent += 1,
            Packet::Publish(p) if &p.payload[..] == b"behind" => behind += 1,
            other => panic!("{other:?}"),
        }
        if resent == IN_FLIGHT && behind == BEHIND {
            break;
        }
    }
    assert_eq!((resent, behind), (IN_FLIGHT, BEHIND));
    broker.stop().await;
}

/// The outside audit: a stored message that could not be read (sealed with a key the broker
/// no longer has) failed its whole page, retried every second, and its session got nothing
/// (0 of 55 delivered), silently. It is moved to the quarantine and reported; the rest of
/// the queue is delivered.
#[tokio::test]
async fn an_unreadable_stored_message_is_quarantined_and_the_queue_goes_on() {
    let key_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(key_file.path(), format!("1:{}\n", "5a".repeat(32))).unwrap();
    let path = key_file.path().to_path_buf();
    let with_key = move |c: &mut messs_broker::Config| {
        c.storage.encryption_key_file = Some(path.clone());
    };
    let broker = TestBroker::start_with(with_key.clone()).await;
    let (mut sub, _) = persistent(broker.addr, "sub", true).await;
    sub.subscribe("q/#", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publisher = Raw::v5(broker.addr, "pub").await;
    for m in [b"m1", b"m2"] {
        publisher
            .publish(publish("q/1", m, QosPid::AtLeastOnce(pid(1)), false))
            .await;
    }
    drop(publisher);
    let data = broker.data.clone();
    broker.stop().await;

    // A record sealed with a key of the same id but other bytes: it cannot be opened.
    {
        let other = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(other.path(), format!("1:{}\n", "77".repeat(32))).unwrap();
        let store = messs_broker::open_store(&messs_broker::StorageConfig {
            data_dir: data.path().to_path_buf(),
            encryption_key_file: Some(other.path().to_path_buf()),
            ..Default::default()
        })
        .unwrap();
        let prefix =
            messs_storage::sessions::SessionPrefix::new(messs_broker::DEFAULT_TENANT, "sub")
                .unwrap();
        let record = messs_storage::sessions::QueuedRecord {
            qos: 1,
            retain: false,
            subscription_ids: vec![],
            message: messs_storage::sessions::MessageRecord {
                topic: "q/1".into(),
                payload: bytes::Bytes::from_static(b"unreadable"),
                qos: 1,
                retain: false,
                expires_at: None,
                origin: 0,
                properties: bytes::Bytes::new(),
            },
            shared: None,
        };
        // One the restore reads (in flight when the broker stopped), one a page-in reads.
        let mut b = messs_storage::Batch::new();
        store.put_queued(&mut b, &prefix, 1000, &record).unwrap();
        store.put_inflight(
            &mut b,
            &prefix,
            1000,
            messs_storage::sessions::InflightRecord::Published(77),
        );
        store.put_queued(&mut b, &prefix, 1001, &record).unwrap();
        // And a retained message: read at start, it must not stop the broker.
        store
            .put_retained(&mut b, messs_broker::DEFAULT_TENANT, &record.message)
            .unwrap();
        store.submit(b, None).unwrap();
        store.sync().unwrap();
    }

    let broker = TestBroker::start_in(data, with_key).await;
    let mut publisher = Raw::v5(broker.addr, "pub").await;
    publisher
        .publish(publish("q/1", b"m3", QosPid::AtLeastOnce(pid(1)), false))
        .await;
    let (mut sub, present) = persistent(broker.addr, "sub", false).await;
    assert!(present);
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(sub.recv_publish_ack().await.payload.to_vec());
    }
    assert_eq!(got, [b"m1".to_vec(), b"m2".to_vec(), b"m3".to_vec()]);
    sub.expect_silence().await;
    assert_eq!(broker.stats.records_quarantined.load(Ordering::Relaxed), 3);
    let store = broker.broker.store().unwrap();
    assert!(store
        .read_audit(0, 1000)
        .unwrap()
        .iter()
        .any(|r| r.event.action == "storage.quarantine"));
    // Kept, not lost: verify counts it and passes.
    assert!(store.verify().unwrap().is_ok());
    broker.stop().await;
}

/// The outside audit: other clients' session churn evicted offline sessions that held
/// acknowledged messages. Sessions without stored messages go first; when only sessions
/// holding acknowledged messages are left, a new session is refused (0x97) instead.
#[tokio::test]
async fn eviction_never_drops_acknowledged_messages() {
    let broker = TestBroker::start_with(|c| c.limits.max_sessions = 3).await;
    let persistent_for = |id: &str, expiry: u32| {
        let mut c = connect_packet(Protocol::V5, id, true);
        c.properties.session_expiry_interval = Some(expiry);
        c
    };
    // Expires first: the old choice of victim.
    let (mut holder, _) = Raw::connect_with(broker.addr, persistent_for("holder", 100)).await;
    holder.subscribe("q/#", QoS::AtLeastOnce).await;
    holder.disconnect().await;
    let mut publisher = Raw::v5(broker.addr, "pub").await;
    for _ in 0..5 {
        publisher
            .publish(publish("q/1", b"acked", QosPid::AtLeastOnce(pid(1)), false))
            .await;
    }
    publisher.disconnect().await;
    let (empty, _) = Raw::connect_with(broker.addr, persistent_for("empty", 1000)).await;
    empty.disconnect().await;

    // Full (holder, empty, c1): c2 takes the empty session's room, not the holder's.
    let c1 = Raw::v5(broker.addr, "c1").await;
    let c2 = Raw::v5(broker.addr, "c2").await;
    // Only the holder is offline now: c3 is refused.
    let mut c3 = connect_packet(Protocol::V5, "c3", true);
    c3.properties.session_expiry_interval = None;
    let (_, ack) = Raw::connect_with(broker.addr, c3).await;
    assert_eq!(ack.code, ReasonCode::QuotaExceeded);
    c1.disconnect().await;
    c2.disconnect().await;

    let mut resume = connect_packet(Protocol::V5, "holder", false);
    resume.properties.session_expiry_interval = Some(100);
    let (mut holder, ack) = Raw::connect_with(broker.addr, resume).await;
    assert!(
        ack.session_present,
        "the session holding acknowledged messages was evicted"
    );
    for _ in 0..5 {
        assert_eq!(&holder.recv_publish_ack().await.payload[..], b"acked");
    }
    broker.stop().await;
}

/// Bytes of the values in one column family of a stopped broker's store.
fn family_bytes(dir: &std::path::Path, family: &str) -> (usize, u64) {
    let names = rocksdb::DB::list_cf(&rocksdb::Options::default(), dir).unwrap();
    let db = rocksdb::DB::open_cf_for_read_only(&rocksdb::Options::default(), dir, names, false)
        .unwrap();
    let cf = db.cf_handle(family).unwrap();
    let mut n = 0;
    let mut bytes = 0;
    for item in db.iterator_cf(cf, rocksdb::IteratorMode::Start) {
        let (_, v) = item.unwrap();
        n += 1;
        bytes += v.len() as u64;
    }
    (n, bytes)
}

/// A publish to many offline persistent sessions stores its payload once: each queue
/// holds a reference. Every session still gets the message after a restart, and the
/// message goes with the last acknowledgement; a session that ends lets it go too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_to_persistent_sessions_stores_the_payload_once() {
    const SESSIONS: usize = 100;
    const PAYLOAD: usize = 64 * 1024;
    let broker = TestBroker::start().await;
    for i in 0..SESSIONS {
        let (mut s, _) = persistent(broker.addr, &format!("once-{i}"), true).await;
        s.subscribe("once/#", QoS::AtLeastOnce).await;
        s.disconnect().await;
    }
    let payload: &'static [u8] = Box::leak(vec![0x5Au8; PAYLOAD].into_boxed_slice());
    let mut p = Raw::v5(broker.addr, "once-pub").await;
    p.publish(publish(
        "once/x",
        payload,
        QosPid::AtLeastOnce(pid(1)),
        false,
    ))
    .await;
    assert_eq!(broker.stats.shared_messages.load(Ordering::Relaxed), 1);
    let data = broker.data.clone();
    broker.stop().await;

    let (messages, message_bytes) = family_bytes(data.path(), "messages");
    let (queued, queue_bytes) = family_bytes(data.path(), "queue");
    assert_eq!(messages, 1, "one shared message");
    assert!(message_bytes as usize >= PAYLOAD);
    assert_eq!(queued, SESSIONS);
    assert!(
        (queue_bytes as usize) < SESSIONS * 100,
        "the queues hold references, not copies: {queue_bytes} bytes"
    );

    // After a restart each session reads the payload through its reference.
    let broker = TestBroker::start_in(data.clone(), |_| {}).await;
    assert_eq!(broker.stats.shared_messages.load(Ordering::Relaxed), 1);
    let mut kept = Vec::new();
    for i in 0..SESSIONS {
        let (mut s, present) = persistent(broker.addr, &format!("once-{i}"), false).await;
        assert!(present);
        let got = s.recv_publish().await;
        assert_eq!(got.payload.len(), PAYLOAD);
        assert!(got.payload.iter().all(|&b| b == 0x5A));
        let QosPid::AtLeastOnce(id) = got.qos_pid else {
            panic!("QoS 1 expected")
        };
        if i < SESSIONS - 2 {
            // PUBACK: this session lets go of it.
            s.send(&Packet::PubAck(PubResponse::success(id))).await;
            s.disconnect().await;
        } else {
            kept.push((s, id));
        }
    }
    // Two sessions still hold it: one ends (clean start), one acknowledges.
    let (mut last, last_id) = kept.pop().unwrap();
    let (ender, _) = kept.pop().unwrap();
    ender.drop_connection();
    let (ended, present) = persistent(broker.addr, &format!("once-{}", SESSIONS - 2), true).await;
    assert!(!present);
    ended.disconnect().await;
    assert_eq!(broker.stats.shared_messages.load(Ordering::Relaxed), 1);
    last.send(&Packet::PubAck(PubResponse::success(last_id)))
        .await;
    last.disconnect().await;
    let data = broker.data.clone();
    let mut waited = 0;
    while broker.stats.shared_messages.load(Ordering::Relaxed) != 0 && waited < 800 {
        tokio::time::sleep(Duration::from_millis(25)).await;
        waited += 1;
    }
    assert_eq!(broker.stats.shared_messages.load(Ordering::Relaxed), 0);
    broker.stop().await;
    assert_eq!(
        family_bytes(data.path(), "messages").0,
        0,
        "gone with the last"
    );
    assert_eq!(family_bytes(data.path(), "queue").0, 0);
}
