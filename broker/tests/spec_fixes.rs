//! Conformance fixes, each as a raw-packet test with a bystander that keeps working.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use messs_codec::{
    ConnectProperties, Disconnect, Packet, Protocol, PubResponse, QoS, QosPid, ReasonCode, Will,
    WillProperties,
};

async fn bystander(broker: &TestBroker) -> Raw {
    let mut b = Raw::v5(broker.addr, "bystander").await;
    b.subscribe("by/t", QoS::AtLeastOnce).await;
    b
}

/// 1. A CleanSession=0 connection taking over an open clean session gets a new session:
/// Session Present 0 and none of the old subscriptions [MQTT-3.1.2-6], [MQTT-3.2.2-2].
#[tokio::test]
async fn taking_over_a_clean_session_does_not_resume_it() {
    let broker = TestBroker::start().await;
    let mut by = bystander(&broker).await;
    for protocol in [Protocol::V3_1_1, Protocol::V5] {
        let id = format!("clean-{protocol:?}");
        let (mut old, _) =
            Raw::connect_with(broker.addr, connect_packet(protocol, &id, true)).await;
        old.subscribe("clean/t", QoS::AtMostOnce).await;
        let (mut new, ack) =
            Raw::connect_with(broker.addr, connect_packet(protocol, &id, false)).await;
        assert!(ack.code.is_success());
        assert!(!ack.session_present, "{protocol:?}");
        old.expect_closed().await;
        by.publish(publish("clean/t", b"x", QosPid::AtMostOnce, false))
            .await;
        new.expect_silence().await;
    }
    by.roundtrip("by/t").await;
}

/// 2. DISCONNECT of a clean session and an immediate reconnect (CleanSession=0): never a
/// resumed session, never two live connections for one client id [MQTT-3.1.4-3].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_and_immediate_reconnect_never_resume_an_ended_session() {
    let broker = TestBroker::start().await;
    let mut by = bystander(&broker).await;
    for round in 0..20 {
        let (mut c, _) =
            Raw::connect_with(broker.addr, connect_packet(Protocol::V3_1_1, "race", true)).await;
        c.subscribe("race/t", QoS::AtMostOnce).await;
        c.send(&Packet::Disconnect(Disconnect::new(ReasonCode::Success)))
            .await;
        let (mut again, ack) =
            Raw::connect_with(broker.addr, connect_packet(Protocol::V3_1_1, "race", false)).await;
        assert!(
            !ack.session_present,
            "round {round}: resumed an ended session"
        );
        let live: Vec<_> = broker
            .broker
            .sessions()
            .into_iter()
            .filter(|s| s.client_id == "race" && s.connected)
            .collect();
        assert_eq!(live.len(), 1, "round {round}");
        again.subscribe("race/t", QoS::AtMostOnce).await;
        by.publish(publish("race/t", b"r", QosPid::AtMostOnce, false))
            .await;
        assert_eq!(&again.recv_publish().await.payload[..], b"r");
        again.disconnect().await;
    }
    by.roundtrip("by/t").await;
}

/// 3. A delayed will is deleted when the client comes back before the delay, even with
/// Clean Start = 1 (which ends the old session) [MQTT-3.1.2-8].
#[tokio::test]
async fn delayed_will_is_deleted_by_a_clean_start_return() {
    let broker = TestBroker::start().await;
    let mut watcher = Raw::v5(broker.addr, "watcher").await;
    watcher.subscribe("will/#", QoS::AtMostOnce).await;
    let mut c = connect_packet(Protocol::V5, "returns", true);
    c.properties.session_expiry_interval = Some(60);
    c.will = Some(Will {
        topic: topic("will/returns"),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: WillProperties {
            will_delay_interval: Some(2),
            ..WillProperties::default()
        },
    });
    let (w, _) = Raw::connect_with(broker.addr, c).await;
    w.drop_connection();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_back, ack) =
        Raw::connect_with(broker.addr, connect_packet(Protocol::V5, "returns", true)).await;
    assert!(ack.code.is_success());
    assert!(
        watcher
            .recv_within(Duration::from_millis(2500))
            .await
            .is_none(),
        "the will was deleted"
    );
}

/// 4. The client's Maximum Packet Size holds for CONNACK and DISCONNECT too: the Reason
/// String goes first [MQTT-3.1.2-24], [MQTT-3.2.2-19].
#[tokio::test]
async fn reason_strings_are_dropped_to_fit_the_client_maximum() {
    let broker = TestBroker::start_with(|c| c.listeners[0].allow_anonymous = false).await;
    let mut c = connect_packet(Protocol::V5, "small", true);
    c.properties = ConnectProperties {
        maximum_packet_size: std::num::NonZeroU32::new(16),
        ..ConnectProperties::default()
    };
    let (mut raw, ack) = Raw::connect_with(broker.addr, c).await;
    assert_eq!(ack.code, ReasonCode::NotAuthorized);
    assert_eq!(ack.properties.reason_string, None, "too long for 16 bytes");
    raw.expect_closed().await;

    let broker = TestBroker::start().await;
    let mut c = connect_packet(Protocol::V5, "small2", true);
    c.properties.maximum_packet_size = std::num::NonZeroU32::new(64);
    let (mut raw, ack) = Raw::connect_with(broker.addr, c).await;
    assert!(ack.code.is_success());
    // A protocol error: the DISCONNECT would carry a long reason string.
    raw.send(&Packet::PingResp).await;
    let seen = raw.expect_closed().await;
    match seen.last() {
        Some(Packet::Disconnect(d)) => {
            assert_eq!(d.reason, ReasonCode::ProtocolError);
            assert_eq!(d.properties.reason_string, None);
        }
        other => panic!("{other:?}"),
    }
}

/// 5. 3.1.1: the wrong acknowledgement type for an outgoing message closes the connection
/// [MQTT-4.8.0-1] (PUBREC or PUBCOMP for QoS 1, PUBACK or PUBCOMP for QoS 2).
#[tokio::test]
async fn wrong_ack_type_closes_the_connection() {
    let broker = TestBroker::start().await;
    let mut by = bystander(&broker).await;
    type WrongAck = fn(std::num::NonZeroU16) -> Packet;
    let cases: [(QoS, WrongAck); 4] = [
        (QoS::AtLeastOnce, |p| {
            Packet::PubRec(PubResponse::success(p))
        }),
        (QoS::AtLeastOnce, |p| {
            Packet::PubComp(PubResponse::success(p))
        }),
        (QoS::ExactlyOnce, |p| {
            Packet::PubAck(PubResponse::success(p))
        }),
        (QoS::ExactlyOnce, |p| {
            Packet::PubComp(PubResponse::success(p))
        }),
    ];
    for (i, (qos, wrong)) in cases.into_iter().enumerate() {
        let id = format!("wrong-{i}");
        let t = format!("wrong/{i}");
        let mut c = Raw::v311(broker.addr, &id).await;
        c.subscribe(&t, qos).await;
        let qos_pid = QosPid::new(qos, pid(1));
        by.publish(publish(&t, b"m", qos_pid, false)).await;
        let p = c.recv_publish().await;
        let packet_id = p.qos_pid.packet_id().unwrap();
        c.send(&wrong(packet_id)).await;
        c.expect_closed().await;
    }
    by.roundtrip("by/t").await;
}

/// 6. A CONNECT whose protocol name is not MQTT is closed without a CONNACK [MQTT-3.1.4-1].
#[tokio::test]
async fn unknown_protocol_name_closes_without_connack() {
    let broker = TestBroker::start().await;
    let mut by = bystander(&broker).await;
    let mut raw = Raw::open(broker.addr).await;
    // CONNECT, protocol name "MQTX", level 4, clean session, keep-alive 60, client id "x".
    raw.send_bytes(&[
        0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'X', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x01, b'x',
    ])
    .await;
    let seen = raw.expect_closed().await;
    assert!(seen.is_empty(), "no CONNACK: {seen:?}");
    by.roundtrip("by/t").await;
}

/// 7. v5: Maximum QoS 3 in a subscription is a Protocol Error, 0x82 (§3.8.3.1).
#[tokio::test]
async fn subscription_qos_3_is_a_protocol_error() {
    let broker = TestBroker::start().await;
    let mut by = bystander(&broker).await;
    let mut c = Raw::v5(broker.addr, "qos3").await;
    c.send_bytes(&[0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x03])
        .await;
    c.expect_disconnect(ReasonCode::ProtocolError).await;
    by.roundtrip("by/t").await;
}

/// 8. MQTT 3.1 (MQIsdp): the CONNACK's first byte is reserved, even for a resumed session.
#[tokio::test]
async fn mqtt_3_1_connack_never_sets_session_present() {
    let broker = TestBroker::start().await;
    let (c, ack) =
        Raw::connect_with(broker.addr, connect_packet(Protocol::V3_1, "old", false)).await;
    assert!(!ack.session_present);
    c.disconnect().await;
    let mut raw = Raw::open(broker.addr).await;
    raw.protocol = Protocol::V3_1;
    raw.send(&Packet::Connect(Box::new(connect_packet(
        Protocol::V3_1,
        "old",
        false,
    ))))
    .await;
    let mut buf = [0u8; 4];
    use tokio::io::AsyncReadExt;
    raw.stream_mut().read_exact(&mut buf).await.unwrap();
    assert_eq!(
        buf,
        [0x20, 0x02, 0x00, 0x00],
        "flags byte reserved, accepted"
    );
    assert!(
        broker
            .broker
            .sessions()
            .iter()
            .any(|s| s.client_id == "old" && s.connected),
        "the persistent session was resumed all the same"
    );
}

/// A client may send packets right behind its CONNECT without waiting for the CONNACK
/// (MQTT 5 §3.1.4, 3.1.1 §3.1.4): a SUBSCRIBE in the same TCP segment as the CONNECT is
/// answered at once, not when more bytes happen to arrive (paho-mqtt does this; the
/// disk-full drill waited 5 s for a SUBACK that never came).
#[tokio::test]
async fn a_subscribe_sent_with_the_connect_is_answered() {
    let broker = TestBroker::start().await;
    for protocol in [Protocol::V5, Protocol::V3_1_1] {
        let mut bytes = bytes::BytesMut::new();
        let connect = connect_packet(protocol, "eager", true);
        messs_codec::encode(&Packet::Connect(Box::new(connect)), protocol, &mut bytes).unwrap();
        let sub = Packet::Subscribe(Box::new(messs_codec::Subscribe {
            packet_id: pid(1),
            properties: Default::default(),
            subscriptions: vec![messs_codec::Subscription {
                filter: messs_codec::TopicFilter::new("eager/t").unwrap(),
                options: messs_codec::SubscriptionOptions::new(QoS::AtLeastOnce),
            }],
        }));
        messs_codec::encode(&sub, protocol, &mut bytes).unwrap();
        let mut c = Raw::open(broker.addr).await;
        c.protocol = protocol;
        c.send_bytes(&bytes).await;
        assert!(matches!(c.recv().await, Packet::ConnAck(_)), "{protocol:?}");
        assert!(matches!(c.recv().await, Packet::SubAck(_)), "{protocol:?}");
        c.disconnect().await;
    }
    broker.stop().await;
}

/// The outside audit's finding: a CONNACK larger than the client's Maximum Packet Size was
/// left out and the connection accepted, so the client never saw a CONNACK yet held a live
/// session. The first packet must be the CONNACK [MQTT-3.2.0-1]: one that cannot fit is a
/// refusal (0x95, when even that fits; else just the close), and no session is attached.
#[tokio::test]
async fn a_connack_too_large_for_the_client_is_a_refusal_not_a_silent_session() {
    let broker = TestBroker::start().await;
    let mut by = bystander(&broker).await;
    for (max, refusal_fits) in [(12u32, true), (4, false)] {
        let mut connect = connect_packet(Protocol::V5, "tiny", true);
        connect.properties = ConnectProperties {
            maximum_packet_size: std::num::NonZeroU32::new(max),
            ..ConnectProperties::default()
        };
        let mut c = Raw::open(broker.addr).await;
        c.send(&Packet::Connect(Box::new(connect))).await;
        let seen = c.expect_closed().await;
        match (&seen[..], refusal_fits) {
            ([Packet::ConnAck(ack)], true) => assert_eq!(ack.code, ReasonCode::PacketTooLarge),
            ([], false) => {}
            (other, _) => panic!("max {max}: {other:?}"),
        }
        assert!(
            broker
                .broker
                .sessions()
                .iter()
                .all(|s| s.client_id != "tiny"),
            "a session was attached for a client that got no CONNACK"
        );
    }
    // A client that takes a CONNACK of 16 bytes still gets in.
    let mut connect = connect_packet(Protocol::V5, "small", true);
    connect.properties.maximum_packet_size = std::num::NonZeroU32::new(64);
    let (c, ack) = Raw::connect_with(broker.addr, connect).await;
    assert_eq!(ack.code, ReasonCode::Success);
    c.disconnect().await;
    by.roundtrip("by/t").await;
    broker.stop().await;
}
