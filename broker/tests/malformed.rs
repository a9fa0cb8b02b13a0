//! Bad input closes only the connection that sent it, with the right reason code (v5), and
//! leaves other clients and stored state untouched.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use messs_codec::{Packet, Protocol, QoS, QosPid, ReasonCode};

/// A broker with a bystander subscribed to `bystander/t`, a retained message on `keep/me`,
/// and a limit of 1 KiB per packet.
async fn setup() -> (TestBroker, Raw) {
    let broker = TestBroker::start_with(|c| c.limits.max_packet_size = 1024).await;
    let mut bystander = Raw::v5(broker.addr, "bystander").await;
    bystander.subscribe("bystander/t", QoS::AtLeastOnce).await;
    bystander
        .publish(publish(
            "keep/me",
            b"retained",
            QosPid::AtLeastOnce(pid(1)),
            true,
        ))
        .await;
    (broker, bystander)
}

/// The bystander still publishes and receives, and the retained message is intact.
async fn check_unharmed(broker: &TestBroker, bystander: &mut Raw) {
    bystander.roundtrip("bystander/t").await;
    let mut late = Raw::v311(broker.addr, "late-reader").await;
    late.subscribe("keep/#", QoS::AtLeastOnce).await;
    let p = late.recv_publish().await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("keep/me", &b"retained"[..])
    );
}

async fn v5_attacker(broker: &TestBroker) -> Raw {
    Raw::v5(broker.addr, "attacker").await
}

#[tokio::test]
async fn remaining_length_over_four_bytes() {
    let (broker, mut bystander) = setup().await;
    let mut bad = v5_attacker(&broker).await;
    bad.send_bytes(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]).await;
    bad.expect_disconnect(ReasonCode::MalformedPacket).await;
    check_unharmed(&broker, &mut bystander).await;
}

#[tokio::test]
async fn invalid_utf8_topic() {
    let (broker, mut bystander) = setup().await;
    let mut bad = v5_attacker(&broker).await;
    // PUBLISH QoS 0, topic length 2 = C0 80 (overlong NUL), no properties, payload "x".
    bad.send_bytes(&[0x30, 0x06, 0x00, 0x02, 0xC0, 0x80, 0x00, b'x'])
        .await;
    bad.expect_disconnect(ReasonCode::MalformedPacket).await;
    check_unharmed(&broker, &mut bystander).await;
}

#[tokio::test]
async fn null_character_in_topic() {
    let (broker, mut bystander) = setup().await;
    let mut bad = v5_attacker(&broker).await;
    bad.send_bytes(&[0x30, 0x06, 0x00, 0x02, b'a', 0x00, 0x00, b'x'])
        .await;
    bad.expect_disconnect(ReasonCode::MalformedPacket).await;
    check_unharmed(&broker, &mut bystander).await;
}

#[tokio::test]
async fn reserved_flag_bits() {
    let (broker, mut bystander) = setup().await;
    let mut bad = v5_attacker(&broker).await;
    // SUBSCRIBE must have flags 0010; send 0000.
    bad.send_bytes(&[0x80, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x00])
        .await;
    bad.expect_disconnect(ReasonCode::MalformedPacket).await;
    check_unharmed(&broker, &mut bystander).await;
}

#[tokio::test]
async fn first_packet_not_connect() {
    let (broker, mut bystander) = setup().await;
    let mut bad = Raw::open(broker.addr).await;
    bad.send(&Packet::PingReq).await;
    let seen = bad.expect_closed().await;
    assert!(
        seen.is_empty(),
        "nothing may be sent before CONNECT: {seen:?}"
    );
    check_unharmed(&broker, &mut bystander).await;
}

#[tokio::test]
async fn second_connect() {
    let (broker, mut bystander) = setup().await;
    let mut bad = v5_attacker(&broker).await;
    bad.send(&Packet::Connect(Box::new(connect_packet(
        Protocol::V5,
        "again",
        true,
    ))))
    .await;
    bad.expect_disconnect(ReasonCode::ProtocolError).await;
    check_unharmed(&broker, &mut bystander).await;
}

#[tokio::test]
async fn oversized_packet_is_refused_from_its_header() {
    let (broker, mut bystander) = setup().await;
    let mut bad = v5_attacker(&broker).await;
    // Claims a 2 MB body but sends only the fixed header: the broker must not wait for it.
    bad.send_bytes(&[0x30, 0x80, 0x80, 0x80, 0x01]).await;
    bad.expect_disconnect(ReasonCode::PacketTooLarge).await;
    check_unharmed(&broker, &mut bystander).await;
}

#[tokio::test]
async fn oversized_publish() {
    let (broker, mut bystander) = setup().await;
    let mut bad = v5_attacker(&broker).await;
    let big: &'static [u8] = Box::leak(vec![7u8; 2000].into_boxed_slice());
    bad.send(&Packet::Publish(Box::new(publish(
        "bystander/t",
        big,
        QosPid::AtMostOnce,
        false,
    ))))
    .await;
    bad.expect_disconnect(ReasonCode::PacketTooLarge).await;
    bystander.expect_silence().await;
    check_unharmed(&broker, &mut bystander).await;
}

#[tokio::test]
async fn wildcard_in_topic_name() {
    let (broker, mut bystander) = setup().await;
    let mut bad = v5_attacker(&broker).await;
    bad.send_bytes(&[0x30, 0x06, 0x00, 0x02, b'a', b'#', 0x00, b'x'])
        .await;
    bad.expect_disconnect(ReasonCode::TopicNameInvalid).await;
    check_unharmed(&broker, &mut bystander).await;
}

#[tokio::test]
async fn invalid_topic_filter() {
    let (broker, mut bystander) = setup().await;
    let mut bad = v5_attacker(&broker).await;
    // SUBSCRIBE pid 1, no properties, filter "a/#/b", options 0.
    bad.send_bytes(&[
        0x82, 0x0B, 0x00, 0x01, 0x00, 0x00, 0x05, b'a', b'/', b'#', b'/', b'b', 0x00,
    ])
    .await;
    bad.expect_disconnect(ReasonCode::TopicFilterInvalid).await;
    check_unharmed(&broker, &mut bystander).await;
}

#[tokio::test]
async fn packet_id_zero() {
    let (broker, mut bystander) = setup().await;
    let mut bad = v5_attacker(&broker).await;
    // PUBLISH QoS 1 with packet id 0.
    bad.send_bytes(&[0x32, 0x07, 0x00, 0x01, b'a', 0x00, 0x00, 0x00, b'x'])
        .await;
    bad.expect_disconnect(ReasonCode::ProtocolError).await;
    check_unharmed(&broker, &mut bystander).await;
}

#[tokio::test]
async fn qos_three() {
    let (broker, mut bystander) = setup().await;
    let mut bad = v5_attacker(&broker).await;
    bad.send_bytes(&[0x36, 0x07, 0x00, 0x01, b'a', 0x00, 0x01, 0x00, b'x'])
        .await;
    bad.expect_disconnect(ReasonCode::MalformedPacket).await;
    check_unharmed(&broker, &mut bystander).await;
}

#[tokio::test]
async fn duplicate_property() {
    let (broker, mut bystander) = setup().await;
    let mut bad = v5_attacker(&broker).await;
    // PUBLISH QoS 0 "a", properties: message expiry twice.
    bad.send_bytes(&[
        0x30, 0x0F, 0x00, 0x01, b'a', 0x0A, 0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 2, b'x',
    ])
    .await;
    bad.expect_disconnect(ReasonCode::ProtocolError).await;
    check_unharmed(&broker, &mut bystander).await;
}

#[tokio::test]
async fn v311_protocol_error_closes_without_disconnect() {
    let (broker, mut bystander) = setup().await;
    let mut bad = Raw::v311(broker.addr, "old-attacker").await;
    bad.send_bytes(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]).await;
    let seen = bad.expect_closed().await;
    assert!(
        seen.is_empty(),
        "3.1.1 has no DISCONNECT from the server: {seen:?}"
    );
    check_unharmed(&broker, &mut bystander).await;
}

#[tokio::test]
async fn truncated_connect_and_garbage_close_quietly() {
    let (broker, mut bystander) = setup().await;
    let mut bad = Raw::open(broker.addr).await;
    bad.send_bytes(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    bad.expect_closed().await;
    check_unharmed(&broker, &mut bystander).await;
}
