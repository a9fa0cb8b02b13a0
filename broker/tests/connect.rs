//! CONNECT/CONNACK, client ids, takeover, keep-alive, anonymous access, shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use messs_codec::{Packet, Protocol, QoS, ReasonCode};
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn v5_connack_advertises_limits() {
    let broker = TestBroker::start_with(|c| {
        c.limits.max_packet_size = 4096;
        c.limits.receive_maximum = 7;
        c.limits.topic_alias_maximum = 9;
    })
    .await;
    let (_c, ack) = Raw::connect_with(broker.addr, connect_packet(Protocol::V5, "lim", true)).await;
    assert_eq!(ack.code, ReasonCode::Success);
    assert!(!ack.session_present);
    assert_eq!(
        ack.properties.maximum_packet_size.map(|m| m.get()),
        Some(4096)
    );
    assert_eq!(ack.properties.receive_maximum.map(|m| m.get()), Some(7));
    assert_eq!(ack.properties.topic_alias_maximum, Some(9));
}

#[tokio::test]
async fn empty_client_id_v5_is_assigned() {
    let broker = TestBroker::start().await;
    let (mut c, ack) = Raw::connect_with(broker.addr, connect_packet(Protocol::V5, "", true)).await;
    let id = ack
        .properties
        .assigned_client_identifier
        .expect("assigned client id");
    assert!(!id.is_empty());
    // The assigned id is a working session.
    c.subscribe("x", QoS::AtMostOnce).await;
    c.roundtrip("x").await;
    // Two empty-id clients get different ids.
    let (_d, ack2) = Raw::connect_with(broker.addr, connect_packet(Protocol::V5, "", true)).await;
    assert_ne!(ack2.properties.assigned_client_identifier, Some(id));
}

#[tokio::test]
async fn empty_client_id_v311_needs_clean_session() {
    let broker = TestBroker::start().await;
    let (_ok, ack) =
        Raw::connect_with(broker.addr, connect_packet(Protocol::V3_1_1, "", true)).await;
    assert_eq!(ack.code, ReasonCode::Success);
    let (mut refused, ack) =
        Raw::connect_with(broker.addr, connect_packet(Protocol::V3_1_1, "", false)).await;
    // 3.1.1 return code 2 = identifier rejected, then the socket closes.
    assert_eq!(ack.code, ReasonCode::ClientIdentifierNotValid);
    refused.expect_closed().await;
}

#[tokio::test]
async fn mqtt_3_1_mqisdp_connects() {
    let broker = TestBroker::start().await;
    let (mut c, ack) = Raw::connect_with(
        broker.addr,
        connect_packet(Protocol::V3_1, "old-timer", true),
    )
    .await;
    assert_eq!(ack.code, ReasonCode::Success);
    c.subscribe("legacy/t", QoS::AtLeastOnce).await;
    c.roundtrip("legacy/t").await;
}

#[tokio::test]
async fn unsupported_protocol_level_gets_return_code_1() {
    let broker = TestBroker::start().await;
    let mut c = Raw::open(broker.addr).await;
    c.protocol = Protocol::V3_1_1;
    // CONNECT "MQTT" level 6.
    c.send_bytes(&[
        0x10, 0x0C, 0, 4, b'M', b'Q', b'T', b'T', 6, 0x02, 0, 60, 0, 0,
    ])
    .await;
    let seen = c.expect_closed().await;
    match seen.first() {
        Some(Packet::ConnAck(ack)) => assert_eq!(ack.code, ReasonCode::UnsupportedProtocolVersion),
        other => panic!("expected CONNACK 1, got {other:?}"),
    }
}

#[tokio::test]
async fn an_enhanced_auth_method_not_offered_is_refused_with_0x8c() {
    let broker = TestBroker::start().await;
    let mut connect = connect_packet(Protocol::V5, "auth", true);
    connect.properties.authentication_method = Some("SCRAM-SHA-1".into());
    let (mut c, ack) = Raw::connect_with(broker.addr, connect).await;
    assert_eq!(ack.code, ReasonCode::BadAuthenticationMethod);
    c.expect_closed().await;
}

#[tokio::test]
async fn anonymous_refused_unless_listener_allows() {
    let broker = TestBroker::start_with(|c| c.listeners[0].allow_anonymous = false).await;
    let (mut c, ack) =
        Raw::connect_with(broker.addr, connect_packet(Protocol::V5, "a", true)).await;
    assert_eq!(ack.code, ReasonCode::NotAuthorized);
    c.expect_closed().await;
    let (mut c, ack) =
        Raw::connect_with(broker.addr, connect_packet(Protocol::V3_1_1, "b", true)).await;
    assert_eq!(ack.code, ReasonCode::NotAuthorized); // return code 5
    c.expect_closed().await;
}

#[tokio::test]
async fn takeover_disconnects_old_connection_with_0x8e() {
    let broker = TestBroker::start().await;
    let mut first = connect_packet(Protocol::V5, "twin", true);
    first.properties.session_expiry_interval = Some(60);
    let (mut old, _) = Raw::connect_with(broker.addr, first).await;
    old.subscribe("twin/t", QoS::AtLeastOnce).await;
    let (mut new, ack) =
        Raw::connect_with(broker.addr, connect_packet(Protocol::V5, "twin", false)).await;
    assert_eq!(ack.code, ReasonCode::Success);
    assert!(
        ack.session_present,
        "the session (and its subscription) is resumed"
    );
    old.expect_disconnect(ReasonCode::SessionTakenOver).await;
    new.roundtrip("twin/t").await;
}

#[tokio::test]
async fn takeover_v311_closes_old_socket() {
    let broker = TestBroker::start().await;
    let mut old = Raw::v311(broker.addr, "twin3").await;
    let _new = Raw::v311(broker.addr, "twin3").await;
    let seen = old.expect_closed().await;
    assert!(seen.is_empty());
}

#[tokio::test]
async fn connect_timeout_closes_silent_socket() {
    let broker = TestBroker::start_with(|c| c.limits.connect_timeout_secs = 1).await;
    let mut c = Raw::open(broker.addr).await;
    let started = std::time::Instant::now();
    c.expect_closed().await;
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[tokio::test]
async fn ping_gets_pong() {
    let broker = TestBroker::start().await;
    for mut c in [
        Raw::v5(broker.addr, "p5").await,
        Raw::v311(broker.addr, "p3").await,
    ] {
        c.send(&Packet::PingReq).await;
        assert_eq!(c.recv().await, Packet::PingResp);
    }
}

#[tokio::test]
async fn keep_alive_timeout_after_one_and_a_half_intervals() {
    let broker = TestBroker::start().await;
    let mut connect = connect_packet(Protocol::V5, "sleepy", true);
    connect.keep_alive = 1;
    let (mut c, _) = Raw::connect_with(broker.addr, connect).await;
    let started = std::time::Instant::now();
    // Pings keep it alive past the 1.5 s limit...
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        c.send(&Packet::PingReq).await;
        assert_eq!(c.recv().await, Packet::PingResp);
    }
    // ...then silence ends it with 0x8D, no earlier than 1.5 s after the last packet.
    let last = std::time::Instant::now();
    c.expect_disconnect(ReasonCode::KeepAliveTimeout).await;
    assert!(
        last.elapsed() >= Duration::from_millis(1400),
        "{:?}",
        last.elapsed()
    );
    assert!(started.elapsed() >= Duration::from_millis(2100));
}

/// A v5 client with Keep Alive 1 and a 4 KiB receive buffer, subscribed to "busy", and a
/// flood of 8 KB messages to "busy" (until the returned flag is set): the broker's writes
/// to the client block as soon as it stops reading.
async fn flooded_subscriber(
    broker: &TestBroker,
    client_id: &str,
) -> (
    Raw,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    tokio::task::JoinHandle<()>,
) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(broker.addr).await.unwrap();
    let mut connect = connect_packet(Protocol::V5, client_id, true);
    connect.keep_alive = 1;
    let (mut client, _) = Raw::over(Box::new(stream)).connect(connect).await;
    client.subscribe("busy", QoS::AtMostOnce).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut p = Raw::v5(broker.addr, "flooder").await;
    let flooding = stop.clone();
    let flooder = tokio::spawn(async move {
        static BIG: [u8; 8000] = [7; 8000];
        while !flooding.load(std::sync::atomic::Ordering::Relaxed) {
            p.send(&Packet::Publish(Box::new(publish(
                "busy",
                &BIG,
                messs_codec::QosPid::AtMostOnce,
                false,
            ))))
            .await;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    (client, stop, flooder)
}

/// How long after `since` the broker has one connection left (the flooder's), checking
/// every 100 ms and calling `tick` each time, for at most `within`.
async fn until_one_connection_left(
    broker: &TestBroker,
    since: std::time::Instant,
    within: Duration,
    mut tick: impl AsyncFnMut(),
) -> Option<Duration> {
    while since.elapsed() < within {
        tick().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        if broker
            .stats
            .connections
            .load(std::sync::atomic::Ordering::Relaxed)
            < 2
        {
            return Some(since.elapsed());
        }
    }
    None
}

/// A client that sends nothing for 1.5 x its keep-alive is closed even while the broker is
/// blocked writing to it (it does not read either): the keep-alive, not the (longer) write
/// timeout, ends it [MQTT-3.1.2-24]. The outside audit's finding: such a subscriber of a
/// busy topic stayed until the write timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_closes_a_silent_client_the_broker_is_blocked_writing_to() {
    let broker = TestBroker::start_with(|c| c.limits.write_timeout_secs = 20).await;
    let (silent, stop, flooder) = flooded_subscriber(&broker, "silent").await;
    // Its last packet: it neither sends nor reads from here on.
    let last_packet = std::time::Instant::now();
    let closed_after =
        until_one_connection_left(&broker, last_packet, Duration::from_secs(12), async || {}).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flooder.await.unwrap();
    drop(silent);
    let closed_after = closed_after.expect("the silent client was never closed");
    assert!(
        closed_after < Duration::from_secs(10),
        "closed after {closed_after:?}: the keep-alive is 1 s (1.5 s of silence), the write timeout 20 s"
    );
}

/// ... while one that keeps sending PINGREQs but does not read is alive as far as the
/// keep-alive goes (the broker reads it while its write waits): the write timeout ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinging_client_that_does_not_read_is_ended_by_the_write_timeout_not_the_keep_alive() {
    let broker = TestBroker::start_with(|c| c.limits.write_timeout_secs = 5).await;
    let (pinger, stop, flooder) = flooded_subscriber(&broker, "pinger").await;
    let started = std::time::Instant::now();
    let mut ping = bytes::BytesMut::new();
    messs_codec::encode(&Packet::PingReq, Protocol::V5, &mut ping).unwrap();
    let (mut stream, _, _) = pinger.into_parts();
    // A PINGREQ every 100 ms, never reading.
    let closed_after =
        until_one_connection_left(&broker, started, Duration::from_secs(15), async || {
            let _ = stream.write_all(&ping).await;
        })
        .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flooder.await.unwrap();
    let closed_after = closed_after.expect("never closed");
    assert!(
        closed_after >= Duration::from_secs(5),
        "closed after {closed_after:?}: before the write timeout, though it kept pinging"
    );
}

#[tokio::test]
async fn server_keep_alive_caps_the_client() {
    let broker = TestBroker::start_with(|c| c.limits.max_keep_alive_secs = 1).await;
    let mut connect = connect_packet(Protocol::V5, "capped", true);
    connect.keep_alive = 600;
    let (mut c, ack) = Raw::connect_with(broker.addr, connect).await;
    assert_eq!(ack.properties.server_keep_alive, Some(1));
    c.expect_disconnect(ReasonCode::KeepAliveTimeout).await;
}

#[tokio::test]
async fn client_disconnect_with_reason_is_accepted() {
    let broker = TestBroker::start().await;
    let mut c = Raw::v5(broker.addr, "leaver").await;
    let mut d = messs_codec::Disconnect::new(ReasonCode::UnspecifiedError);
    d.properties.reason_string = Some("bye".into());
    c.send(&Packet::Disconnect(d)).await;
    let seen = c.expect_closed().await;
    assert!(
        seen.is_empty(),
        "the broker answers a DISCONNECT by closing: {seen:?}"
    );
}

#[tokio::test]
async fn raising_session_expiry_from_zero_at_disconnect_is_a_protocol_error() {
    let broker = TestBroker::start().await;
    let mut c = Raw::v5(broker.addr, "raiser").await;
    let mut d = messs_codec::Disconnect::new(ReasonCode::Success);
    d.properties.session_expiry_interval = Some(60);
    c.send(&Packet::Disconnect(d)).await;
    let seen = c.expect_closed().await;
    match seen.last() {
        Some(Packet::Disconnect(d)) => {
            assert_eq!(d.reason, ReasonCode::ProtocolError);
            let why = d.properties.reason_string.as_deref().unwrap_or_default();
            assert!(
                why.contains("MQTT-3.14.2-2"),
                "reason string explains: {why:?}"
            );
        }
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
}

#[tokio::test]
async fn graceful_shutdown_sends_0x8b() {
    let broker = TestBroker::start().await;
    let mut c5 = Raw::v5(broker.addr, "s5").await;
    let mut c3 = Raw::v311(broker.addr, "s3").await;
    let addr = broker.addr;
    broker.stop().await;
    c5.expect_disconnect(ReasonCode::ServerShuttingDown).await;
    assert!(c3.expect_closed().await.is_empty());
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener is closed"
    );
}

#[tokio::test]
async fn half_written_connect_then_close_leaves_no_session() {
    let broker = TestBroker::start().await;
    let mut s = tokio::net::TcpStream::connect(broker.addr).await.unwrap();
    s.write_all(&[0x10, 0x20, 0, 4]).await.unwrap();
    drop(s);
    let mut c = Raw::v5(broker.addr, "after").await;
    c.subscribe("a", QoS::AtMostOnce).await;
    c.roundtrip("a").await;
}
