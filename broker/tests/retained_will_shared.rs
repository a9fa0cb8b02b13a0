//! Retained messages (set, replace, delete, retain handling, retain as published), will
//! messages (abnormal end, keep-alive, DISCONNECT 0x00/0x04, delay, properties) and shared
//! subscriptions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use messs_codec::{
    Disconnect, Packet, Protocol, QoS, QosPid, ReasonCode, RetainHandling, SubscriptionOptions,
    Will, WillProperties,
};

#[tokio::test]
async fn retained_set_replace_delete() {
    let broker = TestBroker::start().await;
    let mut p = Raw::v5(broker.addr, "p").await;
    p.publish(publish("ret/a", b"v1", QosPid::AtLeastOnce(pid(1)), true))
        .await;
    p.publish(publish("ret/a", b"v2", QosPid::AtLeastOnce(pid(2)), true))
        .await;
    p.publish(publish("ret/b", b"b", QosPid::AtMostOnce, true))
        .await;

    let mut s = Raw::v311(broker.addr, "s1").await;
    s.subscribe("ret/#", QoS::AtLeastOnce).await;
    let mut got = [s.recv_publish_ack().await, s.recv_publish_ack().await];
    got.sort_by(|x, y| x.topic.cmp(&y.topic));
    assert_eq!(&got[0].payload[..], b"v2", "replaced");
    assert!(
        got[0].retain && got[1].retain,
        "retained flag set on subscribe delivery"
    );
    assert_eq!(got[1].qos_pid.qos(), QoS::AtMostOnce, "stored QoS, capped");
    s.expect_silence().await;

    // Empty payload deletes; it still reaches current subscribers, without RETAIN.
    p.publish(publish("ret/a", b"", QosPid::AtLeastOnce(pid(3)), true))
        .await;
    let live = s.recv_publish_ack().await;
    assert!(live.payload.is_empty() && !live.retain);
    let mut s2 = Raw::v5(broker.addr, "s2").await;
    s2.subscribe("ret/#", QoS::AtLeastOnce).await;
    assert_eq!(s2.recv_publish_ack().await.topic.as_str(), "ret/b");
    s2.expect_silence().await;
}

#[tokio::test]
async fn retain_handling_0_1_2() {
    let broker = TestBroker::start().await;
    let mut p = Raw::v5(broker.addr, "p").await;
    p.publish(publish("rh", b"r", QosPid::AtLeastOnce(pid(1)), true))
        .await;
    let mut s = Raw::v5(broker.addr, "s").await;
    let mut opts = SubscriptionOptions::new(QoS::AtMostOnce);

    opts.retain_handling = RetainHandling::DoNotSend;
    s.subscribe_opts(1, "rh", opts, None).await;
    s.expect_silence().await;

    s.send(&Packet::Unsubscribe(Box::new(messs_codec::Unsubscribe {
        packet_id: pid(2),
        properties: Default::default(),
        filters: vec![messs_codec::TopicFilter::new("rh").unwrap()],
    })))
    .await;
    assert!(matches!(s.recv().await, Packet::UnsubAck(_)));

    opts.retain_handling = RetainHandling::SendIfNewSubscription;
    s.subscribe_opts(3, "rh", opts, None).await;
    assert!(s.recv_publish().await.retain, "new subscription: sent");
    s.subscribe_opts(4, "rh", opts, None).await;
    s.expect_silence().await; // existing subscription: not sent again

    opts.retain_handling = RetainHandling::SendAtSubscribe;
    s.subscribe_opts(5, "rh", opts, None).await;
    assert!(
        s.recv_publish().await.retain,
        "handling 0: sent on every subscribe"
    );
}

#[tokio::test]
async fn retain_as_published() {
    let broker = TestBroker::start().await;
    let mut keep = Raw::v5(broker.addr, "keep").await;
    let mut opts = SubscriptionOptions::new(QoS::AtMostOnce);
    opts.retain_as_published = true;
    keep.subscribe_opts(1, "rap", opts, None).await;
    let mut clear = Raw::v5(broker.addr, "clear").await;
    clear.subscribe("rap", QoS::AtMostOnce).await;
    let mut p = Raw::v5(broker.addr, "p").await;
    p.publish(publish("rap", b"x", QosPid::AtMostOnce, true))
        .await;
    assert!(keep.recv_publish().await.retain);
    assert!(!clear.recv_publish().await.retain);
}

#[tokio::test]
async fn retained_message_expires() {
    let broker = TestBroker::start().await;
    let mut p = Raw::v5(broker.addr, "p").await;
    let mut m = publish("rx", b"soon-gone", QosPid::AtLeastOnce(pid(1)), true);
    m.properties.message_expiry_interval = Some(1);
    p.publish(m).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut s = Raw::v5(broker.addr, "s").await;
    s.subscribe("rx", QoS::AtLeastOnce).await;
    s.expect_silence().await;
}

#[tokio::test]
async fn retained_store_is_bounded() {
    let broker = TestBroker::start_with(|c| c.limits.max_retained_messages = 1).await;
    let mut p = Raw::v5(broker.addr, "p").await;
    p.publish(publish("bound/1", b"a", QosPid::AtLeastOnce(pid(1)), true))
        .await;
    p.send(&Packet::Publish(Box::new(publish(
        "bound/2",
        b"b",
        QosPid::AtLeastOnce(pid(2)),
        true,
    ))))
    .await;
    match p.recv().await {
        Packet::PubAck(a) => assert_eq!(a.reason, ReasonCode::QuotaExceeded),
        other => panic!("{other:?}"),
    }
    let mut s = Raw::v5(broker.addr, "s").await;
    s.subscribe("bound/#", QoS::AtLeastOnce).await;
    assert_eq!(s.recv_publish_ack().await.topic.as_str(), "bound/1");
    s.expect_silence().await;
}

fn will_connect(
    protocol: Protocol,
    id: &str,
    delay: Option<u32>,
    expiry: Option<u32>,
) -> messs_codec::Connect {
    let mut c = connect_packet(protocol, id, true);
    c.properties.session_expiry_interval = expiry;
    c.will = Some(Will {
        topic: topic("will/t"),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: WillProperties {
            will_delay_interval: delay,
            content_type: Some("text/plain".into()),
            user_properties: vec![("why".into(), "test".into())],
            ..WillProperties::default()
        },
    });
    c
}

async fn watcher(broker: &TestBroker) -> Raw {
    let mut w = Raw::v5(broker.addr, &format!("watcher-{}", rand_id())).await;
    w.subscribe("will/#", QoS::AtLeastOnce).await;
    w
}

fn rand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[tokio::test]
async fn will_on_abnormal_disconnect_with_properties() {
    let broker = TestBroker::start().await;
    let mut w = watcher(&broker).await;
    for protocol in [Protocol::V5, Protocol::V3_1_1] {
        let (c, _) =
            Raw::connect_with(broker.addr, will_connect(protocol, "dies", None, None)).await;
        c.drop_connection();
        let got = w.recv_publish_ack().await;
        assert_eq!(&got.payload[..], b"gone");
        if protocol.is_v5() {
            assert_eq!(got.properties.content_type.as_deref(), Some("text/plain"));
            assert_eq!(
                got.properties.user_properties,
                vec![("why".into(), "test".into())]
            );
        }
    }
}

#[tokio::test]
async fn no_will_after_normal_disconnect() {
    let broker = TestBroker::start().await;
    let mut w = watcher(&broker).await;
    let (c, _) = Raw::connect_with(
        broker.addr,
        will_connect(Protocol::V5, "polite", None, None),
    )
    .await;
    c.disconnect().await;
    let (c, _) = Raw::connect_with(
        broker.addr,
        will_connect(Protocol::V3_1_1, "polite3", None, None),
    )
    .await;
    c.disconnect().await;
    w.expect_silence().await;
}

#[tokio::test]
async fn disconnect_0x04_sends_the_will() {
    let broker = TestBroker::start().await;
    let mut w = watcher(&broker).await;
    let (mut c, _) =
        Raw::connect_with(broker.addr, will_connect(Protocol::V5, "w4", None, None)).await;
    c.send(&Packet::Disconnect(Disconnect::new(
        ReasonCode::DisconnectWithWillMessage,
    )))
    .await;
    assert_eq!(&w.recv_publish_ack().await.payload[..], b"gone");
}

#[tokio::test]
async fn will_on_keep_alive_timeout() {
    let broker = TestBroker::start().await;
    let mut w = watcher(&broker).await;
    let mut connect = will_connect(Protocol::V3_1_1, "silent", None, None);
    connect.keep_alive = 1;
    let (_c, _) = Raw::connect_with(broker.addr, connect).await;
    assert_eq!(&w.recv_publish_ack().await.payload[..], b"gone");
}

#[tokio::test]
async fn will_on_protocol_error() {
    let broker = TestBroker::start().await;
    let mut w = watcher(&broker).await;
    let (mut c, _) =
        Raw::connect_with(broker.addr, will_connect(Protocol::V5, "bad", None, None)).await;
    c.send_bytes(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]).await;
    assert_eq!(&w.recv_publish_ack().await.payload[..], b"gone");
}

#[tokio::test]
async fn will_delay_waits_and_reconnect_cancels_it() {
    let broker = TestBroker::start().await;
    let mut w = watcher(&broker).await;
    // Delay 1 s, session lasts 60 s: published after ~1 s.
    let (c, _) = Raw::connect_with(
        broker.addr,
        will_connect(Protocol::V5, "delayed", Some(1), Some(60)),
    )
    .await;
    c.drop_connection();
    assert!(
        w.recv_within(Duration::from_millis(600)).await.is_none(),
        "not before the delay"
    );
    assert_eq!(&w.recv_publish_ack().await.payload[..], b"gone");

    // Reconnecting within the delay cancels the will.
    let mut again = will_connect(Protocol::V5, "returns", Some(2), Some(60));
    let (c, _) = Raw::connect_with(broker.addr, again.clone()).await;
    c.drop_connection();
    tokio::time::sleep(Duration::from_millis(300)).await;
    again.clean_start = false;
    again.will = None;
    let (_c, ack) = Raw::connect_with(broker.addr, again).await;
    assert!(ack.session_present);
    assert!(
        w.recv_within(Duration::from_millis(2500)).await.is_none(),
        "will cancelled"
    );
}

#[tokio::test]
async fn will_delay_is_cut_short_by_session_expiry() {
    let broker = TestBroker::start().await;
    let mut w = watcher(&broker).await;
    // Delay 100 s, but the session ends at disconnect (expiry 0): sent at once.
    let (c, _) = Raw::connect_with(
        broker.addr,
        will_connect(Protocol::V5, "short", Some(100), None),
    )
    .await;
    c.drop_connection();
    assert_eq!(&w.recv_publish_ack().await.payload[..], b"gone");
}

#[tokio::test]
async fn shared_subscription_spreads_and_skips_retained() {
    let broker = TestBroker::start().await;
    let mut p = Raw::v5(broker.addr, "p").await;
    p.publish(publish(
        "jobs/old",
        b"retained",
        QosPid::AtLeastOnce(pid(1)),
        true,
    ))
    .await;
    let mut workers = Vec::new();
    for i in 0..3 {
        let mut w = if i == 2 {
            Raw::v311(broker.addr, &format!("worker{i}")).await
        } else {
            Raw::v5(broker.addr, &format!("worker{i}")).await
        };
        w.subscribe("$share/pool/jobs/+", QoS::AtLeastOnce).await;
        w.expect_silence().await; // no retained messages for shared subscriptions
        workers.push(w);
    }
    let mut plain = Raw::v5(broker.addr, "plain").await;
    plain.subscribe("jobs/+", QoS::AtLeastOnce).await;
    let _ = plain.recv_publish_ack().await; // its retained message

    for i in 1..=6u16 {
        p.publish(publish(
            "jobs/new",
            b"job",
            QosPid::AtLeastOnce(pid(i + 1)),
            false,
        ))
        .await;
    }
    let mut per_worker = Vec::new();
    for w in &mut workers {
        let mut n = 0;
        while let Some(Packet::Publish(m)) = w.recv_within(Duration::from_millis(300)).await {
            if let QosPid::AtLeastOnce(id) = m.qos_pid {
                w.send(&Packet::PubAck(messs_codec::PubResponse::success(id)))
                    .await;
            }
            n += 1;
        }
        per_worker.push(n);
    }
    assert_eq!(
        per_worker.iter().sum::<i32>(),
        6,
        "each job exactly once: {per_worker:?}"
    );
    assert!(
        per_worker.iter().all(|&n| n == 2),
        "spread evenly: {per_worker:?}"
    );
    for _ in 0..6 {
        plain.recv_publish_ack().await; // a normal subscription still gets every message
    }
}
