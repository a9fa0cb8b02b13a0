//! Helpers the admin plane's test crates share.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::net::SocketAddr;

use bytes::BytesMut;
use messs_codec::{decode, encode, Connect, Limits, Packet, Protocol};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An MQTT 5 client that has its CONNACK.
pub async fn mqtt_client(addr: SocketAddr, client_id: &str) -> TcpStream {
    let (stream, first) = connect_raw(addr, client_id).await;
    assert!(
        matches!(&first, Packet::ConnAck(a) if a.code == messs_codec::ReasonCode::Success),
        "{first:?}"
    );
    stream
}

/// Sends an MQTT 5 CONNECT with `client_id`; the socket and the broker's first packet.
pub async fn connect_raw(addr: SocketAddr, client_id: &str) -> (TcpStream, Packet) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let connect = Connect {
        protocol: Protocol::V5,
        clean_start: true,
        keep_alive: 60,
        properties: Default::default(),
        client_id: client_id.to_owned(),
        will: None,
        username: None,
        password: None,
    };
    let mut buf = BytesMut::new();
    encode(&Packet::Connect(Box::new(connect)), Protocol::V5, &mut buf).unwrap();
    stream.write_all(&buf).await.unwrap();
    let mut input = BytesMut::new();
    loop {
        if let Some(p) = decode(&mut input, Protocol::V5, &Limits::default()).unwrap() {
            return (stream, p);
        }
        assert!(stream.read_buf(&mut input).await.unwrap() > 0, "closed");
    }
}
