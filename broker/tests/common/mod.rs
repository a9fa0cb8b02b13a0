//! Test harness: the real broker on 127.0.0.1:0, and a raw MQTT client built on our codec so
//! tests can send exact packets (valid or not) and see exact answers.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use messs_broker::{Broker, BrokerHandle, Config, Stats};
use messs_codec::{
    decode, encode, ConnAck, Connect, ConnectProperties, Disconnect, Limits, Packet, Protocol,
    PubResponse, Publish, PublishProperties, QoS, QosPid, SubAck, Subscribe, Subscription,
    SubscriptionOptions, TopicFilter, TopicName,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long a test waits for something that should happen.
/// How long a test waits for a packet it expects: long, because a busy machine (a build on
/// both cores) can be slow, and a wait for what must come costs nothing when it comes.
pub const WAIT: Duration = Duration::from_secs(20);
/// How long a test waits to be sure something does not happen.
pub const QUIET: Duration = Duration::from_millis(300);

pub struct TestBroker {
    pub addr: SocketAddr,
    pub stats: Arc<Stats>,
    pub broker: BrokerHandle,
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<()>,
    /// The broker's data directory (a fresh temporary one unless the test chose one).
    pub data: Arc<tempfile::TempDir>,
}

impl TestBroker {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        Self::start_in(Arc::new(tempfile::tempdir().unwrap()), adjust).await
    }

    /// Starts on the data directory `data` (a restart of an earlier broker uses its).
    pub async fn start_in(data: Arc<tempfile::TempDir>, adjust: impl FnOnce(&mut Config)) -> Self {
        // The try-out setup (anonymous clients in tenant `default`, every topic allowed)
        // unless a test says otherwise.
        let mut config = Config::try_out();
        config.listeners[0].bind = "127.0.0.1:0".parse().unwrap();
        config.storage.data_dir = data.path().to_path_buf();
        // Refusals answer at once so the lockout tests do not wait a second per guess;
        // the delay itself has a test of its own in security.rs.
        config.auth.failure_delay_ms = 0;
        // Race and churn tests reconnect one client id dozens of times a second: flapping
        // bans are off unless a test turns them on (limits.rs does).
        config.flapping.max_connects_per_client_id = 0;
        adjust(&mut config);
        let broker = Broker::bind(config).await.expect("broker binds");
        let addr = broker.local_addrs()[0];
        let stats = broker.stats();
        let broker_handle = broker.handle();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            broker
                .run(async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        TestBroker {
            addr,
            stats,
            broker: broker_handle,
            stop: Some(tx),
            handle,
            data,
        }
    }

    /// Graceful shutdown; waits for the broker to finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(15), &mut self.handle)
            .await
            .expect("broker stops in time")
            .unwrap();
    }
}

pub fn topic(s: &str) -> TopicName {
    TopicName::new(s).unwrap()
}

pub fn pid(n: u16) -> NonZeroU16 {
    NonZeroU16::new(n).unwrap()
}

pub fn connect_packet(protocol: Protocol, client_id: &str, clean: bool) -> Connect {
    Connect {
        protocol,
        clean_start: clean,
        keep_alive: 60,
        properties: ConnectProperties::default(),
        client_id: client_id.to_owned(),
        will: None,
        username: None,
        password: None,
    }
}

pub fn publish(t: &str, payload: &'static [u8], qos_pid: QosPid, retain: bool) -> Publish {
    Publish {
        dup: false,
        qos_pid,
        retain,
        topic: topic(t),
        properties: PublishProperties::default(),
        payload: Bytes::from_static(payload),
    }
}

/// A byte stream a raw client runs over (TCP, or TLS over TCP).
pub trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// A raw MQTT client using messs-codec, over TCP or any other stream.
pub struct Raw {
    stream: Box<dyn Stream>,
    buf: BytesMut,
    pub protocol: Protocol,
}

impl Raw {
    pub async fn open(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        Self::over(Box::new(stream))
    }

    /// A client over an already open stream (e.g. TLS).
    pub fn over(stream: Box<dyn Stream>) -> Self {
        Raw {
            stream,
            buf: BytesMut::new(),
            protocol: Protocol::V5,
        }
    }

    /// Opens a socket, sends CONNECT and returns the CONNACK.
    pub async fn connect_with(addr: SocketAddr, connect: Connect) -> (Self, ConnAck) {
        let raw = Self::open(addr).await;
        raw.connect(connect).await
    }

    /// Sends CONNECT on this stream and returns the CONNACK.
    pub async fn connect(mut self, connect: Connect) -> (Self, ConnAck) {
        self.protocol = connect.protocol;
        self.send(&Packet::Connect(Box::new(connect))).await;
        match self.recv().await {
            Packet::ConnAck(ack) => (self, *ack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// A connected v5 client (clean start) with a successful CONNACK.
    pub async fn v5(addr: SocketAddr, client_id: &str) -> Self {
        let (raw, ack) =
            Self::connect_with(addr, connect_packet(Protocol::V5, client_id, true)).await;
        assert_eq!(ack.code, messs_codec::ReasonCode::Success);
        raw
    }

    /// A connected 3.1.1 client (clean session) with a successful CONNACK.
    pub async fn v311(addr: SocketAddr, client_id: &str) -> Self {
        let (raw, ack) =
            Self::connect_with(addr, connect_packet(Protocol::V3_1_1, client_id, true)).await;
        assert_eq!(ack.code, messs_codec::ReasonCode::Success);
        raw
    }

    /// Opens a socket from the local address `from` (e.g. 127.0.0.2: another client
    /// address on the same machine).
    pub async fn open_from(from: std::net::IpAddr, addr: SocketAddr) -> std::io::Result<Self> {
        let socket = match from {
            std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.bind(SocketAddr::new(from, 0))?;
        let stream = socket.connect(addr).await?;
        Ok(Self::over(Box::new(stream)))
    }

    /// Sends CONNECT and waits for the answer: the CONNACK, or `None` if the broker closed
    /// the socket without one (e.g. refused at accept).
    pub async fn try_connect(mut self, connect: Connect) -> Option<(Self, ConnAck)> {
        self.protocol = connect.protocol;
        let mut out = BytesMut::new();
        encode(&Packet::Connect(Box::new(connect)), self.protocol, &mut out).unwrap();
        // A refused socket may be closed before or while the CONNECT is written.
        if self.stream.write_all(&out).await.is_err() {
            return None;
        }
        match tokio::time::timeout(WAIT, self.read_packet_or_reset()).await {
            Ok(Some(Packet::ConnAck(ack))) => Some((self, *ack)),
            Ok(None) => None,
            Ok(Some(other)) => panic!("expected CONNACK, got {other:?}"),
            Err(_) => panic!("no CONNACK and no close within {WAIT:?}"),
        }
    }

    /// Like `read_packet`, but a connection reset reads as a close.
    async fn read_packet_or_reset(&mut self) -> Option<Packet> {
        loop {
            if let Some(p) = decode(&mut self.buf, self.protocol, &Limits::default()).unwrap() {
                return Some(p);
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// The stream, what was read and not decoded, and the protocol: for tests that read
    /// and write from two tasks.
    pub fn into_parts(self) -> (Box<dyn Stream>, BytesMut, Protocol) {
        (self.stream, self.buf, self.protocol)
    }

    /// The stream itself, for tests that read exact bytes.
    pub fn stream_mut(&mut self) -> &mut dyn Stream {
        &mut *self.stream
    }

    pub async fn send(&mut self, packet: &Packet) {
        let mut out = BytesMut::new();
        encode(packet, self.protocol, &mut out).unwrap();
        self.stream.write_all(&out).await.unwrap();
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next packet, or `None` on timeout. Panics if the socket closes.
    pub async fn recv_within(&mut self, wait: Duration) -> Option<Packet> {
        match tokio::time::timeout(wait, self.read_packet()).await {
            Ok(Some(p)) => Some(p),
            Ok(None) => panic!("connection closed while waiting for a packet"),
            Err(_) => None,
        }
    }

    pub async fn recv(&mut self) -> Packet {
        self.recv_within(WAIT)
            .await
            .expect("a packet within the wait time")
    }

    /// Asserts nothing arrives for a short while.
    pub async fn expect_silence(&mut self) {
        if let Some(p) = self.recv_within(QUIET).await {
            panic!("expected nothing, got {p:?}");
        }
    }

    async fn read_packet(&mut self) -> Option<Packet> {
        loop {
            if let Some(p) = decode(&mut self.buf, self.protocol, &Limits::default()).unwrap() {
                return Some(p);
            }
            let n = self.stream.read_buf(&mut self.buf).await.ok()?;
            if n == 0 {
                return None;
            }
        }
    }

    /// Reads until the broker closes the socket; returns the packets seen on the way.
    pub async fn expect_closed(&mut self) -> Vec<Packet> {
        let mut seen = Vec::new();
        let result = tokio::time::timeout(WAIT, async {
            while let Some(p) = self.read_packet().await {
                seen.push(p);
            }
        })
        .await;
        assert!(result.is_ok(), "connection was not closed; saw {seen:?}");
        seen
    }

    /// Expects the broker to send DISCONNECT with `code` and close.
    pub async fn expect_disconnect(&mut self, code: messs_codec::ReasonCode) {
        let seen = self.expect_closed().await;
        match seen.last() {
            Some(Packet::Disconnect(d)) => assert_eq!(d.reason, code, "{d:?}"),
            other => panic!("expected DISCONNECT {code}, got {other:?} (all: {seen:?})"),
        }
    }

    pub async fn subscribe_opts(
        &mut self,
        packet_id: u16,
        filter: &str,
        options: SubscriptionOptions,
        id: Option<u32>,
    ) -> SubAck {
        let mut sub = Subscribe {
            packet_id: pid(packet_id),
            properties: Default::default(),
            subscriptions: vec![Subscription {
                filter: TopicFilter::new(filter).unwrap(),
                options,
            }],
        };
        sub.properties.subscription_identifier = id.and_then(std::num::NonZeroU32::new);
        self.send(&Packet::Subscribe(Box::new(sub))).await;
        match self.recv().await {
            Packet::SubAck(ack) => *ack,
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> SubAck {
        self.subscribe_opts(1, filter, SubscriptionOptions::new(qos), None)
            .await
    }

    /// Sends 24 MB of QoS 0 PUBLISHes to `t` (400 of 60,000 bytes): enough to fill the
    /// broker's socket to a subscriber of `t` that does not read, and that subscriber's,
    /// so the broker's write to it blocks.
    pub async fn fill_sockets(&mut self, t: &str) {
        static BIG: [u8; 60_000] = [7; 60_000];
        for _ in 0..400 {
            self.send(&Packet::Publish(Box::new(publish(
                t,
                &BIG,
                QosPid::AtMostOnce,
                false,
            ))))
            .await;
        }
    }

    /// Publishes and completes the QoS flow as a well-behaved client.
    pub async fn publish(&mut self, p: Publish) {
        let qos_pid = p.qos_pid;
        self.send(&Packet::Publish(Box::new(p))).await;
        match qos_pid {
            QosPid::AtMostOnce => {}
            QosPid::AtLeastOnce(id) => match self.recv().await {
                Packet::PubAck(r) => assert_eq!(r.packet_id, id),
                other => panic!("expected PUBACK, got {other:?}"),
            },
            QosPid::ExactlyOnce(id) => {
                match self.recv().await {
                    Packet::PubRec(r) => assert_eq!(r.packet_id, id),
                    other => panic!("expected PUBREC, got {other:?}"),
                }
                self.send(&Packet::PubRel(PubResponse::success(id))).await;
                match self.recv().await {
                    Packet::PubComp(r) => assert_eq!(r.packet_id, id),
                    other => panic!("expected PUBCOMP, got {other:?}"),
                }
            }
        }
    }

    /// Receives a PUBLISH (panics on anything else).
    pub async fn recv_publish(&mut self) -> Publish {
        match self.recv().await {
            Packet::Publish(p) => *p,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    /// Receives a PUBLISH and completes its QoS flow.
    pub async fn recv_publish_ack(&mut self) -> Publish {
        let p = self.recv_publish().await;
        match p.qos_pid {
            QosPid::AtMostOnce => {}
            QosPid::AtLeastOnce(id) => self.send(&Packet::PubAck(PubResponse::success(id))).await,
            QosPid::ExactlyOnce(id) => {
                self.send(&Packet::PubRec(PubResponse::success(id))).await;
                match self.recv().await {
                    Packet::PubRel(r) => assert_eq!(r.packet_id, id),
                    other => panic!("expected PUBREL, got {other:?}"),
                }
                self.send(&Packet::PubComp(PubResponse::success(id))).await;
            }
        }
        p
    }

    pub async fn disconnect(mut self) {
        self.send(&Packet::Disconnect(Disconnect::new(
            messs_codec::ReasonCode::Success,
        )))
        .await;
        let _ = self.expect_closed().await;
    }

    /// Drops the socket without DISCONNECT (an abnormal end).
    pub fn drop_connection(self) {
        drop(self);
    }

    /// A bystander check: this client publishes to and receives from `t` (it must be
    /// subscribed to it at QoS 1).
    pub async fn roundtrip(&mut self, t: &str) {
        self.publish(publish(t, b"still-alive", QosPid::AtMostOnce, false))
            .await;
        let p = self.recv_publish().await;
        assert_eq!(p.topic.as_str(), t);
        assert_eq!(&p.payload[..], b"still-alive");
    }
}
