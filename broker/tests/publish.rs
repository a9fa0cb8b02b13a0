//! PUBLISH in both directions: QoS 0/1/2 flows, the inflight window, resume with DUP,
//! QoS downgrade, wildcards and `$` topics, overlapping subscriptions, and the MQTT 5
//! message features (properties, expiry, aliases, subscription ids, no local, size limits).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::num::{NonZeroU16, NonZeroU32};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use messs_codec::{
    Packet, Protocol, PubResponse, QoS, QosPid, ReasonCode, SubscriptionOptions, TopicFilter,
    Unsubscribe,
};

#[tokio::test]
async fn qos_0_1_2_both_directions_both_levels() {
    let broker = TestBroker::start().await;
    for (sub_proto, pub_proto) in [
        (Protocol::V5, Protocol::V5),
        (Protocol::V3_1_1, Protocol::V5),
        (Protocol::V5, Protocol::V3_1_1),
        (Protocol::V3_1_1, Protocol::V3_1_1),
    ] {
        let (mut sub, _) =
            Raw::connect_with(broker.addr, connect_packet(sub_proto, "sub", true)).await;
        let (mut publ, _) =
            Raw::connect_with(broker.addr, connect_packet(pub_proto, "pub", true)).await;
        sub.subscribe("q/#", QoS::ExactlyOnce).await;
        for (i, qos_pid) in [
            QosPid::AtMostOnce,
            QosPid::AtLeastOnce(pid(10)),
            QosPid::ExactlyOnce(pid(11)),
        ]
        .into_iter()
        .enumerate()
        {
            publ.publish(publish(&format!("q/{i}"), b"hello", qos_pid, false))
                .await;
            let got = sub.recv_publish_ack().await;
            assert_eq!(got.topic.as_str(), format!("q/{i}"));
            assert_eq!(
                got.qos_pid.qos(),
                qos_pid.qos(),
                "{sub_proto:?}<-{pub_proto:?}"
            );
            assert_eq!(&got.payload[..], b"hello");
            assert!(!got.retain);
        }
    }
}

#[tokio::test]
async fn qos_is_downgraded_to_the_subscription() {
    let broker = TestBroker::start().await;
    let mut sub = Raw::v5(broker.addr, "low").await;
    sub.subscribe("d", QoS::AtLeastOnce).await;
    let mut publ = Raw::v5(broker.addr, "high").await;
    publ.publish(publish("d", b"x", QosPid::ExactlyOnce(pid(1)), false))
        .await;
    assert_eq!(sub.recv_publish_ack().await.qos_pid.qos(), QoS::AtLeastOnce);
}

#[tokio::test]
async fn qos2_resend_before_pubrel_is_not_routed_twice() {
    let broker = TestBroker::start().await;
    let mut sub = Raw::v5(broker.addr, "s").await;
    sub.subscribe("once", QoS::ExactlyOnce).await;
    let mut publ = Raw::v5(broker.addr, "p").await;
    let mut p = publish("once", b"1", QosPid::ExactlyOnce(pid(5)), false);
    publ.send(&Packet::Publish(Box::new(p.clone()))).await;
    assert!(matches!(publ.recv().await, Packet::PubRec(_)));
    p.dup = true;
    publ.send(&Packet::Publish(Box::new(p))).await;
    assert!(matches!(publ.recv().await, Packet::PubRec(_)));
    publ.send(&Packet::PubRel(PubResponse::success(pid(5))))
        .await;
    assert!(matches!(publ.recv().await, Packet::PubComp(_)));
    sub.recv_publish_ack().await;
    sub.expect_silence().await;
    // PUBREL for an unknown id gets PUBCOMP 0x92.
    publ.send(&Packet::PubRel(PubResponse::success(pid(99))))
        .await;
    match publ.recv().await {
        Packet::PubComp(c) => assert_eq!(c.reason, ReasonCode::PacketIdentifierNotFound),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn receive_maximum_limits_the_outgoing_window() {
    let broker = TestBroker::start().await;
    let mut connect = connect_packet(Protocol::V5, "slow", true);
    connect.properties.receive_maximum = NonZeroU16::new(2);
    let (mut sub, _) = Raw::connect_with(broker.addr, connect).await;
    sub.subscribe("w", QoS::AtLeastOnce).await;
    let mut publ = Raw::v5(broker.addr, "fast").await;
    for i in 1..=5 {
        publ.publish(publish("w", b"m", QosPid::AtLeastOnce(pid(i)), false))
            .await;
    }
    let a = sub.recv_publish().await;
    let b = sub.recv_publish().await;
    sub.expect_silence().await; // window of 2 is full
    sub.send(&Packet::PubAck(PubResponse::success(
        a.qos_pid.packet_id().unwrap(),
    )))
    .await;
    let c = sub.recv_publish().await;
    sub.expect_silence().await;
    for p in [b, c] {
        sub.send(&Packet::PubAck(PubResponse::success(
            p.qos_pid.packet_id().unwrap(),
        )))
        .await;
    }
    sub.recv_publish_ack().await;
    sub.recv_publish_ack().await;
    sub.expect_silence().await;
}

#[tokio::test]
async fn incoming_receive_maximum_is_enforced() {
    let broker = TestBroker::start_with(|c| c.limits.receive_maximum = 2).await;
    let mut publ = Raw::v5(broker.addr, "flood").await;
    for i in 1..=3 {
        publ.send(&Packet::Publish(Box::new(publish(
            "r",
            b"x",
            QosPid::ExactlyOnce(pid(i)),
            false,
        ))))
        .await;
    }
    let seen = publ.expect_closed().await;
    assert!(
        matches!(seen.last(), Some(Packet::Disconnect(d)) if d.reason == ReasonCode::ReceiveMaximumExceeded),
        "{seen:?}"
    );
}

#[tokio::test]
async fn resumed_session_redelivers_unacked_with_dup_then_queued() {
    let broker = TestBroker::start().await;
    let mut connect = connect_packet(Protocol::V5, "resumer", true);
    connect.properties.session_expiry_interval = Some(300);
    let (mut sub, _) = Raw::connect_with(broker.addr, connect.clone()).await;
    sub.subscribe("r/#", QoS::ExactlyOnce).await;
    let mut publ = Raw::v5(broker.addr, "producer").await;
    publ.publish(publish("r/1", b"one", QosPid::AtLeastOnce(pid(1)), false))
        .await;
    publ.publish(publish("r/2", b"two", QosPid::ExactlyOnce(pid(2)), false))
        .await;
    let one = sub.recv_publish().await;
    let two = sub.recv_publish().await;
    assert!(!one.dup && !two.dup);
    // Acknowledge neither; PUBREC the QoS 2 one so it waits for PUBCOMP.
    sub.send(&Packet::PubRec(PubResponse::success(
        two.qos_pid.packet_id().unwrap(),
    )))
    .await;
    assert!(matches!(sub.recv().await, Packet::PubRel(_)));
    sub.drop_connection();
    tokio::time::sleep(Duration::from_millis(100)).await;
    publ.publish(publish("r/3", b"three", QosPid::AtLeastOnce(pid(3)), false))
        .await;

    connect.clean_start = false;
    let (mut back, ack) = Raw::connect_with(broker.addr, connect).await;
    assert!(ack.session_present);
    let again = back.recv_publish().await;
    assert!(again.dup, "unacknowledged PUBLISH is resent with DUP");
    assert_eq!(again.qos_pid, one.qos_pid, "same packet id");
    assert_eq!(&again.payload[..], b"one");
    match back.recv().await {
        Packet::PubRel(r) => assert_eq!(Some(r.packet_id), two.qos_pid.packet_id()),
        other => panic!("expected PUBREL resend, got {other:?}"),
    }
    let three = back.recv_publish().await;
    assert_eq!(&three.payload[..], b"three", "queued while offline");
    assert!(!three.dup);
}

#[tokio::test]
async fn offline_queue_is_bounded_and_counted() {
    // A persistent session's queue is bounded by what the store may keep for it.
    let broker = TestBroker::start_with(|c| c.storage.max_stored_messages_per_session = 3).await;
    let mut connect = connect_packet(Protocol::V3_1_1, "offline", false);
    let (mut sub, _) = Raw::connect_with(broker.addr, connect.clone()).await;
    sub.subscribe("off", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publ = Raw::v5(broker.addr, "p").await;
    for i in 1..=5u16 {
        publ.publish(publish("off", b"q", QosPid::AtLeastOnce(pid(i)), false))
            .await;
    }
    publ.publish(publish(
        "off",
        b"qos0-not-queued",
        QosPid::AtMostOnce,
        false,
    ))
    .await;
    connect.clean_start = false;
    let (mut back, ack) = Raw::connect_with(broker.addr, connect).await;
    assert!(ack.session_present);
    for _ in 0..3 {
        assert_eq!(&back.recv_publish_ack().await.payload[..], b"q");
    }
    back.expect_silence().await;
    use std::sync::atomic::Ordering;
    assert_eq!(broker.stats.dropped_queue_full.load(Ordering::Relaxed), 2);
    assert_eq!(broker.stats.dropped_offline.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn clean_start_discards_the_old_session() {
    let broker = TestBroker::start().await;
    let mut connect = connect_packet(Protocol::V5, "cs", false);
    connect.properties.session_expiry_interval = Some(60);
    let (mut c, _) = Raw::connect_with(broker.addr, connect.clone()).await;
    c.subscribe("cs/t", QoS::AtLeastOnce).await;
    c.disconnect().await;
    connect.clean_start = true;
    let (mut c, ack) = Raw::connect_with(broker.addr, connect).await;
    assert!(!ack.session_present);
    let mut p = Raw::v5(broker.addr, "p").await;
    p.publish(publish("cs/t", b"x", QosPid::AtLeastOnce(pid(1)), false))
        .await;
    c.expect_silence().await;
}

#[tokio::test]
async fn session_expiry_interval_ends_the_session() {
    let broker = TestBroker::start().await;
    let mut connect = connect_packet(Protocol::V5, "brief", false);
    connect.properties.session_expiry_interval = Some(1);
    let (mut c, _) = Raw::connect_with(broker.addr, connect.clone()).await;
    c.subscribe("b", QoS::AtLeastOnce).await;
    c.disconnect().await;
    // Within the interval the session is still there...
    let (c, ack) = Raw::connect_with(broker.addr, connect.clone()).await;
    assert!(ack.session_present);
    c.disconnect().await;
    // ...after it, gone.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_c, ack) = Raw::connect_with(broker.addr, connect).await;
    assert!(!ack.session_present);
}

#[tokio::test]
async fn zero_session_expiry_ends_at_disconnect() {
    let broker = TestBroker::start().await;
    let connect = connect_packet(Protocol::V5, "zero", false);
    let (c, _) = Raw::connect_with(broker.addr, connect.clone()).await;
    c.disconnect().await;
    let (_c, ack) = Raw::connect_with(broker.addr, connect).await;
    assert!(!ack.session_present);
}

#[tokio::test]
async fn wildcards_and_dollar_topics() {
    let broker = TestBroker::start().await;
    let mut all = Raw::v5(broker.addr, "all").await;
    all.subscribe("#", QoS::AtMostOnce).await;
    let mut plus = Raw::v5(broker.addr, "plus").await;
    plus.subscribe("+/status", QoS::AtMostOnce).await;
    let mut sys = Raw::v5(broker.addr, "sys").await;
    sys.subscribe("$internal/#", QoS::AtMostOnce).await;
    let mut p = Raw::v5(broker.addr, "p").await;
    p.publish(publish("dev/status", b"1", QosPid::AtMostOnce, false))
        .await;
    assert_eq!(all.recv_publish().await.topic.as_str(), "dev/status");
    assert_eq!(plus.recv_publish().await.topic.as_str(), "dev/status");
    p.publish(publish("$internal/x", b"2", QosPid::AtMostOnce, false))
        .await;
    assert_eq!(sys.recv_publish().await.topic.as_str(), "$internal/x");
    all.expect_silence().await; // '#' does not match '$' topics
    p.publish(publish("a/b/status", b"3", QosPid::AtMostOnce, false))
        .await;
    assert_eq!(all.recv_publish().await.topic.as_str(), "a/b/status");
    plus.expect_silence().await; // '+' is one level
}

#[tokio::test]
async fn clients_cannot_publish_to_sys() {
    let broker = TestBroker::start().await;
    let mut watcher = Raw::v5(broker.addr, "w").await;
    watcher.subscribe("$SYS/#", QoS::AtMostOnce).await;
    let mut p = Raw::v5(broker.addr, "p").await;
    p.send(&Packet::Publish(Box::new(publish(
        "$SYS/fake",
        b"x",
        QosPid::AtLeastOnce(pid(1)),
        false,
    ))))
    .await;
    match p.recv().await {
        Packet::PubAck(a) => assert_eq!(a.reason, ReasonCode::NotAuthorized),
        other => panic!("{other:?}"),
    }
    watcher.expect_silence().await;
}

#[tokio::test]
async fn overlapping_subscriptions_give_one_message_with_max_qos_and_all_ids() {
    let broker = TestBroker::start().await;
    let mut sub = Raw::v5(broker.addr, "overlap").await;
    sub.subscribe_opts(1, "o/+", SubscriptionOptions::new(QoS::AtMostOnce), Some(7))
        .await;
    sub.subscribe_opts(
        2,
        "o/#",
        SubscriptionOptions::new(QoS::AtLeastOnce),
        Some(9),
    )
    .await;
    let mut p = Raw::v5(broker.addr, "p").await;
    p.publish(publish("o/x", b"x", QosPid::ExactlyOnce(pid(1)), false))
        .await;
    let got = sub.recv_publish_ack().await;
    assert_eq!(got.qos_pid.qos(), QoS::AtLeastOnce);
    let mut ids: Vec<u32> = got
        .properties
        .subscription_identifiers
        .iter()
        .map(|i| i.get())
        .collect();
    ids.sort();
    assert_eq!(ids, vec![7, 9]);
    sub.expect_silence().await;
}

#[tokio::test]
async fn unsubscribe_stops_delivery_and_reports_missing() {
    let broker = TestBroker::start().await;
    let mut sub = Raw::v5(broker.addr, "u").await;
    sub.subscribe("u/t", QoS::AtMostOnce).await;
    sub.send(&Packet::Unsubscribe(Box::new(Unsubscribe {
        packet_id: pid(3),
        properties: Default::default(),
        filters: vec![
            TopicFilter::new("u/t").unwrap(),
            TopicFilter::new("nope").unwrap(),
        ],
    })))
    .await;
    match sub.recv().await {
        Packet::UnsubAck(a) => assert_eq!(
            a.reasons,
            vec![ReasonCode::Success, ReasonCode::NoSubscriptionExisted]
        ),
        other => panic!("{other:?}"),
    }
    let mut p = Raw::v5(broker.addr, "p").await;
    p.publish(publish("u/t", b"x", QosPid::AtMostOnce, false))
        .await;
    sub.expect_silence().await;
}

#[tokio::test]
async fn properties_pass_through_unchanged() {
    let broker = TestBroker::start().await;
    let mut sub = Raw::v5(broker.addr, "props-sub").await;
    sub.subscribe("props", QoS::AtLeastOnce).await;
    let mut p = Raw::v5(broker.addr, "props-pub").await;
    let mut m = publish("props", b"{\"a\":1}", QosPid::AtLeastOnce(pid(1)), false);
    m.properties.payload_format_indicator = Some(true);
    m.properties.content_type = Some("application/json".into());
    m.properties.response_topic = Some(topic("reply/here"));
    m.properties.correlation_data = Some(Bytes::from_static(b"\x00\x01corr"));
    m.properties.user_properties = vec![("k".into(), "v1".into()), ("k".into(), "v2".into())];
    let sent = m.properties.clone();
    p.publish(m).await;
    let got = sub.recv_publish_ack().await;
    assert_eq!(
        got.properties.payload_format_indicator,
        sent.payload_format_indicator
    );
    assert_eq!(got.properties.content_type, sent.content_type);
    assert_eq!(got.properties.response_topic, sent.response_topic);
    assert_eq!(got.properties.correlation_data, sent.correlation_data);
    assert_eq!(got.properties.user_properties, sent.user_properties);
}

#[tokio::test]
async fn message_expiry_counts_down_and_drops() {
    let broker = TestBroker::start().await;
    let mut connect = connect_packet(Protocol::V5, "exp", false);
    connect.properties.session_expiry_interval = Some(60);
    let (mut sub, _) = Raw::connect_with(broker.addr, connect.clone()).await;
    sub.subscribe("e/#", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut p = Raw::v5(broker.addr, "p").await;
    let mut short = publish("e/short", b"s", QosPid::AtLeastOnce(pid(1)), false);
    short.properties.message_expiry_interval = Some(1);
    p.publish(short).await;
    let mut long = publish("e/long", b"l", QosPid::AtLeastOnce(pid(2)), false);
    long.properties.message_expiry_interval = Some(100);
    p.publish(long).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (mut back, _) = Raw::connect_with(broker.addr, connect).await;
    let got = back.recv_publish_ack().await;
    assert_eq!(
        got.topic.as_str(),
        "e/long",
        "the expired message was dropped"
    );
    let left = got.properties.message_expiry_interval.unwrap();
    assert!(
        (98..=99).contains(&left),
        "remaining lifetime is sent: {left}"
    );
    back.expect_silence().await;
}

#[tokio::test]
async fn no_local_skips_own_messages() {
    let broker = TestBroker::start().await;
    let mut c = Raw::v5(broker.addr, "self").await;
    let mut opts = SubscriptionOptions::new(QoS::AtMostOnce);
    opts.no_local = true;
    c.subscribe_opts(1, "nl", opts, None).await;
    c.publish(publish("nl", b"mine", QosPid::AtMostOnce, false))
        .await;
    c.expect_silence().await;
    let mut other = Raw::v5(broker.addr, "other").await;
    other
        .publish(publish("nl", b"theirs", QosPid::AtMostOnce, false))
        .await;
    assert_eq!(&c.recv_publish().await.payload[..], b"theirs");
}

#[tokio::test]
async fn inbound_topic_aliases() {
    let broker = TestBroker::start_with(|c| c.limits.topic_alias_maximum = 2).await;
    let mut sub = Raw::v5(broker.addr, "as").await;
    sub.subscribe("alias/#", QoS::AtMostOnce).await;
    let mut p = Raw::v5(broker.addr, "ap").await;
    let mut first = publish("alias/long/topic", b"1", QosPid::AtMostOnce, false);
    first.properties.topic_alias = NonZeroU16::new(1);
    p.publish(first).await;
    let mut second = publish("alias/x", b"2", QosPid::AtMostOnce, false);
    second.topic = messs_codec::TopicName::empty();
    second.properties.topic_alias = NonZeroU16::new(1);
    p.publish(second).await;
    for payload in [b"1", b"2"] {
        let got = sub.recv_publish().await;
        assert_eq!(got.topic.as_str(), "alias/long/topic");
        assert_eq!(&got.payload[..], payload);
    }
    // An alias above the maximum closes with 0x94.
    let mut bad = publish("alias/y", b"3", QosPid::AtMostOnce, false);
    bad.properties.topic_alias = NonZeroU16::new(3);
    p.send(&Packet::Publish(Box::new(bad))).await;
    p.expect_disconnect(ReasonCode::TopicAliasInvalid).await;
    // An unknown alias is a protocol error.
    let mut q = Raw::v5(broker.addr, "aq").await;
    let mut unknown = publish("alias/z", b"4", QosPid::AtMostOnce, false);
    unknown.topic = messs_codec::TopicName::empty();
    unknown.properties.topic_alias = NonZeroU16::new(2);
    q.send(&Packet::Publish(Box::new(unknown))).await;
    q.expect_disconnect(ReasonCode::ProtocolError).await;
}

#[tokio::test]
async fn outbound_topic_aliases() {
    let broker = TestBroker::start().await;
    let mut connect = connect_packet(Protocol::V5, "alias-rx", true);
    connect.properties.topic_alias_maximum = Some(1);
    let (mut sub, _) = Raw::connect_with(broker.addr, connect).await;
    sub.subscribe("oa/#", QoS::AtMostOnce).await;
    let mut p = Raw::v5(broker.addr, "alias-tx").await;
    for t in ["oa/a", "oa/a", "oa/b"] {
        p.publish(publish(t, b"x", QosPid::AtMostOnce, false)).await;
    }
    let first = sub.recv_publish().await;
    assert_eq!(first.topic.as_str(), "oa/a");
    let alias = first.properties.topic_alias.expect("alias assigned");
    let second = sub.recv_publish().await;
    assert!(second.topic.is_empty(), "known alias: topic omitted");
    assert_eq!(second.properties.topic_alias, Some(alias));
    let third = sub.recv_publish().await;
    assert_eq!(third.topic.as_str(), "oa/b", "no alias left: full topic");
    assert_eq!(third.properties.topic_alias, None);
}

#[tokio::test]
async fn client_maximum_packet_size_is_respected() {
    let broker = TestBroker::start().await;
    let mut connect = connect_packet(Protocol::V5, "tiny", true);
    connect.properties.maximum_packet_size = NonZeroU32::new(64);
    let (mut sub, _) = Raw::connect_with(broker.addr, connect).await;
    sub.subscribe("sz", QoS::AtLeastOnce).await;
    let mut p = Raw::v5(broker.addr, "big").await;
    p.publish(publish(
        "sz",
        &[b'x'; 200],
        QosPid::AtLeastOnce(pid(1)),
        false,
    ))
    .await;
    p.publish(publish("sz", b"small", QosPid::AtLeastOnce(pid(2)), false))
        .await;
    assert_eq!(&sub.recv_publish_ack().await.payload[..], b"small");
    sub.expect_silence().await;
}

#[tokio::test]
async fn no_matching_subscribers_is_reported_to_v5_publishers() {
    let broker = TestBroker::start().await;
    let mut p = Raw::v5(broker.addr, "lonely").await;
    p.send(&Packet::Publish(Box::new(publish(
        "nobody/listens",
        b"x",
        QosPid::AtLeastOnce(pid(1)),
        false,
    ))))
    .await;
    match p.recv().await {
        Packet::PubAck(a) => assert_eq!(a.reason, ReasonCode::NoMatchingSubscribers),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn slow_subscriber_slows_the_publisher_instead_of_dropping() {
    let broker = TestBroker::start_with(|c| c.limits.max_queued_messages = 20).await;
    let mut connect = connect_packet(Protocol::V5, "slowpoke", true);
    connect.properties.receive_maximum = NonZeroU16::new(1);
    let (mut sub, _) = Raw::connect_with(broker.addr, connect).await;
    sub.subscribe("bp", QoS::AtLeastOnce).await;
    let mut publ = Raw::v5(broker.addr, "firehose").await;
    // 200 QoS 1 messages pipelined at once: ten times the subscriber's queue.
    let sender = tokio::spawn(async move {
        for i in 1..=200u16 {
            publ.send(&Packet::Publish(Box::new(publish(
                "bp",
                b"m",
                QosPid::AtLeastOnce(pid(i)),
                false,
            ))))
            .await;
        }
        for _ in 1..=200 {
            assert!(matches!(publ.recv().await, Packet::PubAck(_)));
        }
    });
    for _ in 0..200 {
        sub.recv_publish_ack().await;
    }
    sender.await.unwrap();
    use std::sync::atomic::Ordering;
    assert_eq!(broker.stats.dropped_queue_full.load(Ordering::Relaxed), 0);
    sub.expect_silence().await;
}

/// A burst larger than one write round (about 256 KiB of deliveries) is delivered in full:
/// the connection comes back for the rest after each flush instead of waiting for a wake-up
/// that only an empty queue gets.
#[tokio::test]
async fn a_burst_larger_than_one_write_round_is_delivered_in_full() {
    let broker = TestBroker::start().await;
    let mut sub = Raw::v5(broker.addr, "burst-sub").await;
    sub.subscribe("burst/#", QoS::AtMostOnce).await;
    let mut p = Raw::v5(broker.addr, "burst-pub").await;
    static PAYLOAD: [u8; 2000] = [5; 2000];
    let mut bytes = bytes::BytesMut::new();
    for _ in 0..500 {
        messs_codec::encode(
            &Packet::Publish(Box::new(publish(
                "burst/t",
                &PAYLOAD,
                QosPid::AtMostOnce,
                false,
            ))),
            Protocol::V5,
            &mut bytes,
        )
        .unwrap();
    }
    p.send_bytes(&bytes).await;
    for n in 0..500 {
        let got = sub.recv_publish().await;
        assert_eq!(got.payload.len(), 2000, "message {n}");
    }
}

/// A subscriber whose retained replay is long still has its own packets read: the broker
/// walks the replay a chunk per pass, yielding between passes, and keeps reading the client
/// meanwhile, so a PINGREQ sent during the replay is answered long before it ends. (A
/// shell that only yielded between chunks, polling neither the socket nor the keep-alive,
/// answered it after the last retained message.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_is_answered_during_a_long_retained_replay() {
    const RETAINED: usize = 20_000;
    let broker = TestBroker::start().await;
    let mut publisher = Raw::v311(broker.addr, "retainer").await;
    for i in 1..RETAINED {
        publisher
            .send(&Packet::Publish(Box::new(publish(
                &format!("r/{i}"),
                b"kept",
                QosPid::AtMostOnce,
                true,
            ))))
            .await;
    }
    // Packets are handled in order: once this one is acknowledged, every one is retained.
    publisher
        .publish(publish("r/0", b"kept", QosPid::AtLeastOnce(pid(1)), true))
        .await;
    let mut sub = Raw::v311(broker.addr, "replayed").await;
    sub.subscribe("r/#", QoS::AtMostOnce).await;
    let mut before = 0;
    let first = sub.recv().await;
    assert!(matches!(first, Packet::Publish(_)), "{first:?}");
    before += 1;
    sub.send(&Packet::PingReq).await;
    loop {
        match sub.recv().await {
            Packet::Publish(_) => before += 1,
            Packet::PingResp => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        before < RETAINED / 2,
        "the PINGRESP came after {before} of {RETAINED} retained messages"
    );
}
