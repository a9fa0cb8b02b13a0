//! Every transport is the same door: rumqttc (an independent MQTT client) runs one test set
//! — password login refused and accepted, pub/sub at QoS 0, 1 and 2, retained messages,
//! a will — over TCP, TLS, WebSocket, WebSocket over TLS and QUIC. rumqttc speaks TCP, so
//! for the others each client talks through a small local tunnel that carries its bytes
//! over the real transport to the real broker (a tokio-tungstenite WebSocket, a quinn QUIC
//! stream). Then what only some transports have: QUIC connection migration, a client
//! certificate over QUIC, WebSocket frame limits, subprotocol, path and Origin checks.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "common/pki.rs"]
mod pki;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use messs_broker::registry::RuleSpec;
use messs_broker::storage::registry::{AclAction, AclSubject};
use messs_broker::{Config, NoRules, Transport};
use messs_codec::{Connect, Protocol, QoS, QosPid, ReasonCode};
use pki::Pki;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const PASSWORD: &str = "acme-password-1";

/// A broker whose one listener speaks `transport` (TLS-based ones with the test PKI's
/// server certificate), deny by default: tenant `acme` may use every topic, `globex`
/// nothing; devices `sensor1` and `watcher` of acme log in with a password, and acme
/// trusts the `acme` device CA.
async fn start(pki: &Pki, transport: Transport, adjust: impl FnOnce(&mut Config)) -> TestBroker {
    let tls = pki.tls_config();
    let broker = TestBroker::start_with(|c| {
        let l = &mut c.listeners[0];
        l.transport = transport;
        l.tls = transport.uses_tls().then_some(tls);
        l.allow_anonymous = false;
        l.tenant = None;
        c.acl.tenant_without_rules = NoRules::Deny;
        adjust(c);
    })
    .await;
    let acme_ca = pki.acme.cert.der().to_vec();
    broker
        .broker
        .registry("test", move |r| {
            r.add_tenant("acme", None)?;
            r.add_tenant("globex", None)?;
            r.add_device("acme", "sensor1", Some(PASSWORD), None, &[])?;
            r.add_device("acme", "watcher", Some(PASSWORD), None, &[])?;
            r.add_device("globex", "sensor1", Some(PASSWORD), None, &[])?;
            r.add_rule(
                "acme",
                RuleSpec {
                    allow: true,
                    action: AclAction::Both,
                    filter: "#".into(),
                    subject: AclSubject::All,
                    qos_mask: 7,
                    retain: None,
                },
                None,
            )?;
            r.add_ca("acme", &acme_ca)?;
            Ok(())
        })
        .await
        .unwrap();
    broker
}

/// How a tunnel reaches the broker.
#[derive(Clone)]
struct Ends {
    broker: SocketAddr,
    transport: Transport,
    tls: tokio_rustls::TlsConnector,
    quic: Option<quinn::Endpoint>,
}

impl Ends {
    fn new(pki: &Pki, broker: SocketAddr, transport: Transport) -> Ends {
        Ends {
            broker,
            transport,
            tls: pki.client(None, false),
            quic: (transport == Transport::Quic).then(|| quic_endpoint(pki, None)),
        }
    }

    /// A TCP or TLS stream to the broker.
    async fn socket(&self) -> Box<dyn Stream> {
        let tcp = TcpStream::connect(self.broker).await.unwrap();
        match self.transport {
            Transport::Tls | Transport::Wss => {
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                Box::new(self.tls.connect(name, tcp).await.unwrap())
            }
            _ => Box::new(tcp),
        }
    }

    /// Carries one client's bytes to the broker until either side closes.
    async fn carry(self, mut client: TcpStream) {
        match self.transport {
            Transport::Tcp | Transport::Tls => {
                let mut broker = self.socket().await;
                let _ = tokio::io::copy_bidirectional(&mut client, &mut broker).await;
            }
            Transport::Ws | Transport::Wss => {
                let ws = ws_open(self.socket().await, "/mqtt", Some("mqtt"))
                    .await
                    .unwrap();
                pump_websocket(client, ws).await;
            }
            Transport::Quic => {
                let endpoint = self.quic.clone().unwrap();
                let (_connection, mut broker) = quic_open(&endpoint, self.broker).await;
                let _ = tokio::io::copy_bidirectional(&mut client, &mut broker).await;
            }
        }
    }
}

/// A local TCP port that carries each connection to the broker over the transport. Dropping
/// it cuts every connection through it at once, as a lost network would.
struct Tunnel {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Tunnel {
    async fn open(ends: &Ends) -> Tunnel {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let ends = ends.clone();
        let task = tokio::spawn(async move {
            let mut carried = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                carried.spawn(ends.clone().carry(client));
            }
        });
        Tunnel { port, task }
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binary WebSocket messages to bytes and back.
async fn pump_websocket<S>(mut client: TcpStream, mut ws: tokio_tungstenite::WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            n = client.read(&mut buf) => match n {
                Ok(0) | Err(_) => {
                    let _ = ws.close(None).await;
                    return;
                }
                Ok(n) => {
                    let data = Bytes::copy_from_slice(&buf[..n]);
                    if ws.send(Message::Binary(data)).await.is_err() {
                        return;
                    }
                }
            },
            m = ws.next() => match m {
                Some(Ok(Message::Binary(data))) => {
                    if client.write_all(&data).await.is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            },
        }
    }
}

/// The WebSocket handshake at `path`, offering `protocol`.
async fn ws_open<S>(
    stream: S,
    path: &str,
    protocol: Option<&str>,
) -> Result<tokio_tungstenite::WebSocketStream<S>, tokio_tungstenite::tungstenite::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut request = format!("ws://localhost{path}")
        .into_client_request()
        .unwrap();
    if let Some(p) = protocol {
        request
            .headers_mut()
            .insert("sec-websocket-protocol", p.parse().unwrap());
    }
    tokio_tungstenite::client_async(request, stream)
        .await
        .map(|(ws, _)| ws)
}

/// A QUIC client endpoint on a fresh local port that trusts the test server CA, offers
/// ALPN `mqtt` and presents `identity` if given.
fn quic_endpoint(
    pki: &Pki,
    identity: Option<&(rcgen::Certificate, rcgen::KeyPair)>,
) -> quinn::Endpoint {
    let mut tls = pki.client_config(identity, false);
    tls.alpn_protocols = vec![b"mqtt".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    endpoint
}

/// A QUIC connection and its first bidirectional stream, as a byte stream.
async fn quic_open(
    endpoint: &quinn::Endpoint,
    broker: SocketAddr,
) -> (
    quinn::Connection,
    tokio::io::Join<quinn::RecvStream, quinn::SendStream>,
) {
    let connection = endpoint
        .connect(broker, "localhost")
        .unwrap()
        .await
        .unwrap();
    let (send, recv) = connection.open_bi().await.unwrap();
    (connection, tokio::io::join(recv, send))
}

mod set {
    //! The test set every transport runs, with rumqttc (MQTT 3.1.1 and 5).
    use super::*;
    use rumqttc::{AsyncClient, ConnectionError, Event, LastWill, MqttOptions, Packet};
    use tokio::sync::mpsc;

    /// A connected rumqttc client through its own tunnel, and what it receives.
    struct Client {
        client: AsyncClient,
        received: mpsc::UnboundedReceiver<rumqttc::Publish>,
        tunnel: Tunnel,
        task: tokio::task::JoinHandle<()>,
    }

    impl Client {
        async fn next(&mut self) -> rumqttc::Publish {
            tokio::time::timeout(WAIT, self.received.recv())
                .await
                .expect("a message in time")
                .expect("the client is running")
        }

        /// Subscribes and waits until the broker has the subscription (SUBACK).
        async fn subscribe(
            &mut self,
            filter: &str,
            qos: rumqttc::QoS,
            acked: &mut mpsc::UnboundedReceiver<()>,
        ) {
            self.client.subscribe(filter, qos).await.unwrap();
            tokio::time::timeout(WAIT, acked.recv())
                .await
                .unwrap()
                .unwrap();
        }

        /// Cuts the network under the client: no DISCONNECT, just gone.
        fn cut(self) {
            self.task.abort();
            drop(self.tunnel);
        }
    }

    fn options(tunnel: &Tunnel, id: &str, user: &str, password: &str) -> MqttOptions {
        let mut o = MqttOptions::new(id, "127.0.0.1", tunnel.port);
        o.set_keep_alive(Duration::from_secs(5));
        o.set_credentials(user, password);
        o.set_max_packet_size(1024 * 1024, 1024 * 1024);
        o
    }

    /// Connects through a new tunnel; the CONNACK's outcome, and the client if accepted.
    async fn connect(
        ends: &Ends,
        id: &str,
        user: &str,
        password: &str,
        will: Option<LastWill>,
    ) -> Result<(Client, mpsc::UnboundedReceiver<()>), ConnectionError> {
        let tunnel = Tunnel::open(ends).await;
        let mut opts = options(&tunnel, id, user, password);
        if let Some(w) = will {
            opts.set_last_will(w);
        }
        let (client, mut eventloop) = AsyncClient::new(opts, 100);
        // The first event is the CONNACK or the refusal.
        let first = tokio::time::timeout(WAIT, eventloop.poll())
            .await
            .expect("CONNACK in time");
        match first {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {}
            Ok(other) => panic!("expected CONNACK, got {other:?}"),
            Err(e) => return Err(e),
        }
        let (tx, received) = mpsc::unbounded_channel();
        let (ack_tx, acked) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok(ev) = eventloop.poll().await {
                match ev {
                    Event::Incoming(Packet::Publish(p)) => {
                        let _ = tx.send(p);
                    }
                    Event::Incoming(Packet::SubAck(_)) => {
                        let _ = ack_tx.send(());
                    }
                    _ => {}
                }
            }
        });
        Ok((
            Client {
                client,
                received,
                tunnel,
                task,
            },
            acked,
        ))
    }

    /// The whole set over `transport`.
    pub async fn run(transport: Transport) {
        run_with(transport, |_| {}).await;
    }

    /// The whole set over `transport`, the broker's config adjusted.
    pub async fn run_with(transport: Transport, adjust: impl FnOnce(&mut Config)) {
        let pki = Pki::new();
        let broker = start(&pki, transport, adjust).await;
        let ends = Ends::new(&pki, broker.addr, transport);

        // Authentication: a wrong password is refused in CONNACK; the right one gets in.
        match connect(&ends, "intruder", "sensor1@acme", "wrong-password-1", None).await {
            Err(ConnectionError::ConnectionRefused(code)) => {
                assert_eq!(
                    code,
                    rumqttc::ConnectReturnCode::BadUserNamePassword,
                    "{transport:?}"
                )
            }
            Err(e) => panic!("{transport:?}: expected a refusal in CONNACK, got {e:?}"),
            Ok(_) => panic!("{transport:?}: a wrong password got in"),
        }
        let (mut sub, mut sub_acks) = connect(&ends, "sub", "watcher@acme", PASSWORD, None)
            .await
            .unwrap();
        let (publisher, _) = connect(&ends, "pub", "sensor1@acme", PASSWORD, None)
            .await
            .unwrap();
        let clients = broker.broker.clients(Some("acme"));
        assert_eq!(clients.len(), 2, "{clients:?}");
        assert!(
            clients.iter().all(|c| c.transport == transport.name()),
            "{clients:?}"
        );

        // Pub/sub at every QoS: each arrives once, at the QoS it was sent with.
        sub.subscribe("data/#", rumqttc::QoS::ExactlyOnce, &mut sub_acks)
            .await;
        for (i, qos) in [
            rumqttc::QoS::AtMostOnce,
            rumqttc::QoS::AtLeastOnce,
            rumqttc::QoS::ExactlyOnce,
        ]
        .into_iter()
        .enumerate()
        {
            let payload = format!("reading {i} over {}", transport.name());
            publisher
                .client
                .publish(format!("data/{i}"), qos, false, payload.clone())
                .await
                .unwrap();
            let got = sub.next().await;
            assert_eq!(got.topic, format!("data/{i}"));
            assert_eq!(&got.payload[..], payload.as_bytes());
            assert_eq!(got.qos, qos, "{transport:?}");
        }

        // A big message (128 KiB: many TCP segments, WebSocket frames or QUIC packets).
        let big = vec![0x5a_u8; 128 * 1024];
        publisher
            .client
            .publish("data/big", rumqttc::QoS::AtLeastOnce, false, big.clone())
            .await
            .unwrap();
        assert_eq!(&sub.next().await.payload[..], &big[..]);

        // Retained: a later subscriber gets it, flagged.
        publisher
            .client
            .publish("state/door", rumqttc::QoS::AtLeastOnce, true, "open")
            .await
            .unwrap();
        // Wait until it is routed (the live subscriber sees it) before subscribing anew.
        sub.subscribe("state/#", rumqttc::QoS::AtLeastOnce, &mut sub_acks)
            .await;
        let live = sub.next().await;
        assert_eq!(live.topic, "state/door");
        let (mut late, mut late_acks) = connect(&ends, "late", "watcher@acme", PASSWORD, None)
            .await
            .unwrap();
        late.subscribe("state/#", rumqttc::QoS::AtLeastOnce, &mut late_acks)
            .await;
        let retained = late.next().await;
        assert_eq!(retained.topic, "state/door");
        assert!(retained.retain, "{transport:?}: retained flag");
        assert_eq!(&retained.payload[..], b"open");

        // Will: a client whose network vanishes has its will published.
        sub.subscribe("wills/#", rumqttc::QoS::AtLeastOnce, &mut sub_acks)
            .await;
        let will = LastWill::new("wills/sensor1", "gone", rumqttc::QoS::AtLeastOnce, false);
        let (mortal, _) = connect(&ends, "mortal", "sensor1@acme", PASSWORD, Some(will))
            .await
            .unwrap();
        mortal.cut();
        let got = sub.next().await;
        assert_eq!(got.topic, "wills/sensor1");
        assert_eq!(&got.payload[..], b"gone");

        // Same door for everyone: the ACL binds here too (globex may use nothing).
        match connect(&ends, "other", "sensor1@globex", PASSWORD, None).await {
            Ok((mut other, mut acks)) => {
                other
                    .subscribe("data/#", rumqttc::QoS::AtLeastOnce, &mut acks)
                    .await;
                publisher
                    .client
                    .publish("data/secret", rumqttc::QoS::AtLeastOnce, false, "acme only")
                    .await
                    .unwrap();
                assert_eq!(sub.next().await.topic, "data/secret");
                let leaked = tokio::time::timeout(QUIET, other.received.recv()).await;
                assert!(
                    leaked.is_err(),
                    "{transport:?}: another tenant got acme's message"
                );
            }
            Err(e) => panic!("{transport:?}: globex's device should log in: {e:?}"),
        }
        broker.stop().await;
    }
}

#[tokio::test]
async fn tcp_runs_the_set() {
    set::run(Transport::Tcp).await;
}

#[tokio::test]
async fn tls_runs_the_set() {
    set::run(Transport::Tls).await;
}

#[tokio::test]
async fn websocket_runs_the_set() {
    set::run(Transport::Ws).await;
}

#[tokio::test]
async fn websocket_over_tls_runs_the_set() {
    set::run(Transport::Wss).await;
}

#[tokio::test]
async fn quic_runs_the_set() {
    set::run(Transport::Quic).await;
}

/// A listener in multi-stream mode serves single-stream clients as before.
#[tokio::test]
async fn quic_multi_stream_listener_runs_the_set() {
    set::run_with(Transport::Quic, |c| c.listeners[0].quic.max_streams = 4).await;
}

fn login(client_id: &str, user: &str) -> Connect {
    let mut c = connect_packet(Protocol::V5, client_id, false);
    c.username = Some(user.to_owned());
    c.password = Some(Bytes::from_static(PASSWORD.as_bytes()));
    c.properties.session_expiry_interval = Some(300);
    c
}

/// A client that moves to a new local address (a phone switching networks) keeps its QUIC
/// connection and with it its MQTT session: no new connection, messages keep arriving.
#[tokio::test]
async fn quic_client_keeps_its_session_across_an_address_change() {
    let pki = Pki::new();
    let broker = start(&pki, Transport::Quic, |_| {}).await;
    let mover_end = quic_endpoint(&pki, None);
    let (connection, stream) = quic_open(&mover_end, broker.addr).await;
    // Nothing but streams: no unreliable datagrams to buffer.
    assert_eq!(connection.max_datagram_size(), None);
    let (mut mover, ack) = Raw::over(Box::new(stream))
        .connect(login("mover", "watcher@acme"))
        .await;
    assert_eq!(ack.code, ReasonCode::Success);
    mover.subscribe("moves/#", QoS::AtLeastOnce).await;

    let pub_end = quic_endpoint(&pki, None);
    let (_pub_connection, stream) = quic_open(&pub_end, broker.addr).await;
    let (mut publisher, _) = Raw::over(Box::new(stream))
        .connect(login("pub", "sensor1@acme"))
        .await;
    publisher
        .publish(publish("moves/1", b"before", QosPid::AtMostOnce, false))
        .await;
    assert_eq!(&mover.recv_publish().await.payload[..], b"before");
    let connections = broker.stats.connections_total.load(Ordering::Relaxed);

    let before = mover_end.local_addr().unwrap();
    mover_end
        .rebind(std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
        .unwrap();
    let after = mover_end.local_addr().unwrap();
    assert_ne!(before.port(), after.port(), "the client moved");

    // Both directions work from the new address: the broker's deliveries reach it, and
    // its own packets (an ack, a publish) reach the broker.
    publisher
        .publish(publish("moves/2", b"after", QosPid::AtMostOnce, false))
        .await;
    assert_eq!(&mover.recv_publish().await.payload[..], b"after");
    mover.roundtrip("moves/3").await;
    assert_eq!(
        broker.stats.connections_total.load(Ordering::Relaxed),
        connections,
        "no reconnect: the same connection carried on"
    );
    let clients = broker.broker.clients(Some("acme"));
    assert!(clients
        .iter()
        .any(|c| c.client_id == "mover" && c.transport == "quic"));
    broker.stop().await;
}

/// A device certificate issued by tenant acme's CA logs in over QUIC without a password,
/// lands in acme under the certificate's name, and sees acme's messages only.
#[tokio::test]
async fn quic_client_certificate_lands_in_its_tenant() {
    let pki = Pki::new();
    let broker = start(&pki, Transport::Quic, |_| {}).await;
    let identity = pki.acme.issue("sensor1", vec![], false);
    let end = quic_endpoint(&pki, Some(&identity));
    let (_connection, stream) = quic_open(&end, broker.addr).await;
    let mut connect = connect_packet(Protocol::V5, "cert-device", true);
    connect.username = None;
    connect.password = None;
    let (mut device, ack) = Raw::over(Box::new(stream)).connect(connect).await;
    assert_eq!(ack.code, ReasonCode::Success, "{ack:?}");
    let clients = broker.broker.clients(None);
    let me = clients
        .iter()
        .find(|c| c.client_id == "cert-device")
        .expect("connected");
    assert_eq!(me.tenant, "acme");
    assert_eq!(me.username.as_deref(), Some("sensor1"));
    assert_eq!(me.transport, "quic");
    device.subscribe("data/#", QoS::AtLeastOnce).await;

    // A password client of acme reaches it.
    let end2 = quic_endpoint(&pki, None);
    let (_c2, stream) = quic_open(&end2, broker.addr).await;
    let (mut publisher, _) = Raw::over(Box::new(stream))
        .connect(login("pub", "watcher@acme"))
        .await;
    publisher
        .publish(publish("data/x", b"for acme", QosPid::AtMostOnce, false))
        .await;
    assert_eq!(&device.recv_publish().await.payload[..], b"for acme");

    // A certificate from a CA no tenant trusts never gets a session.
    let stranger = pki.globex.issue("sensor1", vec![], false);
    let end3 = quic_endpoint(&pki, Some(&stranger));
    let refused = match end3.connect(broker.addr, "localhost").unwrap().await {
        Err(_) => true,
        Ok(c) => match c.open_bi().await {
            Err(_) => true,
            Ok((send, recv)) => {
                let mut connect = connect_packet(Protocol::V5, "stranger", true);
                connect.username = None;
                Raw::over(Box::new(tokio::io::join(recv, send)))
                    .try_connect(connect)
                    .await
                    .is_none_or(|(_, ack)| ack.code != ReasonCode::Success)
            }
        },
    };
    assert!(refused, "an untrusted certificate got in");
    broker.stop().await;
}

/// A QUIC client that does not offer ALPN `mqtt` fails the handshake.
#[tokio::test]
async fn quic_needs_alpn_mqtt() {
    let pki = Pki::new();
    let broker = start(&pki, Transport::Quic, |_| {}).await;
    let mut tls = pki.client_config(None, false);
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut end = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    end.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let result = tokio::time::timeout(WAIT, end.connect(broker.addr, "localhost").unwrap())
        .await
        .expect("an answer in time");
    assert!(result.is_err(), "a handshake without ALPN mqtt succeeded");
    broker.stop().await;
}

/// A WebSocket client connected and subscribed, for the frame-limit and upgrade tests.
async fn ws_client(pki: &Pki, broker: &TestBroker) -> (Raw, Tunnel) {
    let ends = Ends::new(pki, broker.addr, Transport::Ws);
    let tunnel = Tunnel::open(&ends).await;
    let tcp = TcpStream::connect(("127.0.0.1", tunnel.port))
        .await
        .unwrap();
    let (mut raw, ack) = Raw::over(Box::new(tcp))
        .connect(login("victim", "watcher@acme"))
        .await;
    assert_eq!(ack.code, ReasonCode::Success);
    raw.subscribe("data/#", QoS::AtMostOnce).await;
    (raw, tunnel)
}

/// A frame over `max_frame_size` closes that connection (close code 1009) and only it; a
/// text frame closes its connection too [MQTT-6.0.0-1].
#[tokio::test]
async fn websocket_frame_over_the_limit_closes_only_that_connection() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    let pki = Pki::new();
    let broker = start(&pki, Transport::Ws, |c| {
        c.listeners[0].websocket.max_frame_size = 4096;
        c.listeners[0].websocket.max_message_size = 8192;
    })
    .await;
    let (mut victim, _tunnel) = ws_client(&pki, &broker).await;

    for (what, message) in [
        (
            "a 5000-byte frame",
            Message::Binary(Bytes::from(vec![0u8; 5000])),
        ),
        ("a text frame", Message::Text("hello".into())),
    ] {
        let tcp = TcpStream::connect(broker.addr).await.unwrap();
        let mut attacker = ws_open(tcp, "/mqtt", Some("mqtt")).await.unwrap();
        let _ = attacker.send(message).await;
        let end = tokio::time::timeout(WAIT, async {
            loop {
                match attacker.next().await {
                    Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return None,
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{what}: the connection stayed open"));
        let want = if what.contains("text") {
            CloseCode::Unsupported
        } else {
            CloseCode::Size
        };
        assert_eq!(end, Some(want), "{what}");
    }
    // The bystander is untouched.
    victim.roundtrip("data/still-here").await;
    assert_eq!(broker.broker.clients(Some("acme")).len(), 1);
    broker.stop().await;
}

/// The upgrade's checks: the path, the subprotocol (`mqtt` or `mqttv3.1`, echoed) and, when
/// configured, the Origin; each refusal is an HTTP error that names the reason.
#[tokio::test]
async fn websocket_upgrade_checks_path_subprotocol_and_origin() {
    use tokio_tungstenite::tungstenite::Error as WsError;
    let pki = Pki::new();
    let broker = start(&pki, Transport::Ws, |c| {
        c.listeners[0].websocket.allowed_origins = vec!["https://app.example.com".into()];
    })
    .await;
    let status = |r: Result<_, WsError>| match r {
        Err(WsError::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => 101,
    };
    let open =
        |path: &'static str, protocol: Option<&'static str>, origin: Option<&'static str>| {
            let addr = broker.addr;
            async move {
                let tcp = TcpStream::connect(addr).await.unwrap();
                let mut request = format!("ws://localhost{path}")
                    .into_client_request()
                    .unwrap();
                if let Some(p) = protocol {
                    request
                        .headers_mut()
                        .insert("sec-websocket-protocol", p.parse().unwrap());
                }
                if let Some(o) = origin {
                    request.headers_mut().insert("origin", o.parse().unwrap());
                }
                tokio_tungstenite::client_async(request, tcp).await
            }
        };
    assert_eq!(status(open("/other", Some("mqtt"), None).await), 404);
    assert_eq!(status(open("/mqtt", None, None).await), 400);
    assert_eq!(status(open("/mqtt", Some("chat"), None).await), 400);
    assert_eq!(
        status(open("/mqtt", Some("mqtt"), Some("https://evil.example")).await),
        403
    );
    let (_, response) = open("/mqtt", Some("mqttv3.1"), Some("https://app.example.com"))
        .await
        .unwrap();
    assert_eq!(
        response.headers().get("sec-websocket-protocol").unwrap(),
        "mqttv3.1"
    );
    // No Origin: not a browser page; let through.
    let (_, response) = open("/mqtt", Some("chat, mqtt"), None).await.unwrap();
    assert_eq!(
        response.headers().get("sec-websocket-protocol").unwrap(),
        "mqtt"
    );
    assert!(
        broker
            .stats
            .websocket_upgrade_failures
            .load(Ordering::Relaxed)
            >= 4
    );
    broker.stop().await;
}

/// A QUIC client endpoint that resumes sessions with early data (0-RTT) when it can.
fn quic_endpoint_0rtt(
    pki: &Pki,
    identity: Option<&(rcgen::Certificate, rcgen::KeyPair)>,
) -> quinn::Endpoint {
    let mut tls = pki.client_config(identity, false);
    tls.alpn_protocols = vec![b"mqtt".to_vec()];
    tls.enable_early_data = true;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    endpoint
}

/// One full connection (CONNECT, CONNACK, DISCONNECT) so the client holds a session ticket.
async fn quic_first_visit(endpoint: &quinn::Endpoint, broker: SocketAddr, connect: Connect) {
    let (connection, stream) = quic_open(endpoint, broker).await;
    let (raw, ack) = Raw::over(Box::new(stream)).connect(connect).await;
    assert_eq!(ack.code, ReasonCode::Success, "{ack:?}");
    raw.disconnect().await;
    // Tickets arrive after the handshake; give them a moment, then close.
    tokio::time::sleep(Duration::from_millis(100)).await;
    connection.close(0u32.into(), b"");
}

/// 0-RTT is off by default: a resuming client cannot send early data. On, a CONNECT in
/// early data is answered, with a password or with the certificate of the first visit.
#[tokio::test]
async fn quic_0rtt_only_when_enabled() {
    let pki = Pki::new();
    let off = start(&pki, Transport::Quic, |_| {}).await;
    let end = quic_endpoint_0rtt(&pki, None);
    quic_first_visit(&end, off.addr, login("early", "watcher@acme")).await;
    let connecting = end.connect(off.addr, "localhost").unwrap();
    assert!(
        connecting.into_0rtt().is_err(),
        "early data offered while 0-RTT is off"
    );
    off.stop().await;

    let on = start(&pki, Transport::Quic, |c| {
        c.listeners[0].quic.enable_0rtt = true
    })
    .await;
    for identity in [None, Some(pki.acme.issue("sensor1", vec![], false))] {
        let end = quic_endpoint_0rtt(&pki, identity.as_ref());
        let connect = |id: &str| {
            let mut c = login(id, "watcher@acme");
            if identity.is_some() {
                c.username = None;
                c.password = None;
            }
            c
        };
        quic_first_visit(&end, on.addr, connect("early")).await;
        let connecting = end.connect(on.addr, "localhost").unwrap();
        let (connection, accepted) = connecting
            .into_0rtt()
            .unwrap_or_else(|_| panic!("no early data offered"));
        let (send, recv) = connection.open_bi().await.unwrap();
        let (mut raw, ack) = Raw::over(Box::new(tokio::io::join(recv, send)))
            .connect(connect("early"))
            .await;
        assert_eq!(ack.code, ReasonCode::Success, "{ack:?}");
        assert!(accepted.await, "the server accepted the early data");
        raw.subscribe("early/#", QoS::AtMostOnce).await;
        raw.roundtrip("early/x").await;
        let me = on
            .broker
            .clients(Some("acme"))
            .into_iter()
            .find(|c| c.client_id == "early")
            .unwrap();
        let want = if identity.is_some() {
            "sensor1"
        } else {
            "watcher"
        };
        assert_eq!(me.username.as_deref(), Some(want));
        raw.disconnect().await;
    }
    on.stop().await;
}

/// Encodes one packet (MQTT 5).
fn encoded(packet: messs_codec::Packet) -> Vec<u8> {
    let mut out = bytes::BytesMut::new();
    messs_codec::encode(&packet, Protocol::V5, &mut out).unwrap();
    out.to_vec()
}

/// Reads one packet from a QUIC data stream.
async fn read_packet(recv: &mut quinn::RecvStream) -> messs_codec::Packet {
    let mut buf = bytes::BytesMut::new();
    tokio::time::timeout(WAIT, async {
        loop {
            let limits = messs_codec::Limits::default();
            if let Some(p) = messs_codec::decode(&mut buf, Protocol::V5, &limits).unwrap() {
                return p;
            }
            let mut chunk = [0u8; 4096];
            let n = recv.read(&mut chunk).await.unwrap().expect("stream open");
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("a packet in time")
}

/// Multi-stream mode: PUBLISHes on further client streams are delivered and acknowledged
/// on their own stream, and one stuck half-way holds up neither another stream nor the
/// control stream. A data stream that carries anything but PUBLISH or PUBREL closes the
/// connection.
#[tokio::test]
async fn quic_data_streams_do_not_block_each_other() {
    static BIG: [u8; 60_000] = [0x42; 60_000];
    let pki = Pki::new();
    let broker = start(&pki, Transport::Quic, |c| {
        c.listeners[0].quic.max_streams = 4
    })
    .await;
    let sub_end = quic_endpoint(&pki, None);
    let (_s, stream) = quic_open(&sub_end, broker.addr).await;
    let (mut sub, _) = Raw::over(Box::new(stream))
        .connect(login("sub", "watcher@acme"))
        .await;
    sub.subscribe("lanes/#", QoS::AtLeastOnce).await;

    let end = quic_endpoint(&pki, None);
    let (connection, stream) = quic_open(&end, broker.addr).await;
    let (mut control, ack) = Raw::over(Box::new(stream))
        .connect(login("multi", "sensor1@acme"))
        .await;
    assert_eq!(ack.code, ReasonCode::Success);

    // Stream A: the first half of a big QoS 1 PUBLISH, then nothing for now.
    let slow = encoded(messs_codec::Packet::Publish(Box::new(publish(
        "lanes/slow",
        &BIG,
        QosPid::AtLeastOnce(pid(1)),
        false,
    ))));
    let (mut a_send, mut a_recv) = connection.open_bi().await.unwrap();
    a_send.write_all(&slow[..slow.len() / 2]).await.unwrap();
    // Stream B: a whole small one.
    let (mut b_send, mut b_recv) = connection.open_bi().await.unwrap();
    b_send
        .write_all(&encoded(messs_codec::Packet::Publish(Box::new(publish(
            "lanes/fast",
            b"fast",
            QosPid::AtLeastOnce(pid(2)),
            false,
        )))))
        .await
        .unwrap();
    let got = sub.recv_publish().await;
    assert_eq!(got.topic.as_str(), "lanes/fast", "B waited for A");
    match read_packet(&mut b_recv).await {
        messs_codec::Packet::PubAck(a) => assert_eq!(a.packet_id, pid(2)),
        other => panic!("expected PUBACK on stream B, got {other:?}"),
    }
    // The control stream is not held up either.
    control
        .publish(publish("lanes/control", b"ctl", QosPid::AtMostOnce, false))
        .await;
    assert_eq!(sub.recv_publish().await.topic.as_str(), "lanes/control");

    // A completes: delivered, acknowledged on A.
    a_send.write_all(&slow[slow.len() / 2..]).await.unwrap();
    let got = sub.recv_publish().await;
    assert_eq!(got.topic.as_str(), "lanes/slow");
    assert_eq!(got.payload.len(), BIG.len());
    match read_packet(&mut a_recv).await {
        messs_codec::Packet::PubAck(a) => assert_eq!(a.packet_id, pid(1)),
        other => panic!("expected PUBACK on stream A, got {other:?}"),
    }

    // A SUBSCRIBE on a data stream is a protocol error: the connection closes.
    let (mut c_send, _c_recv) = connection.open_bi().await.unwrap();
    let subscribe = messs_codec::Packet::Subscribe(Box::new(messs_codec::Subscribe {
        packet_id: pid(9),
        properties: Default::default(),
        subscriptions: vec![messs_codec::Subscription {
            filter: messs_codec::TopicFilter::new("x/#").unwrap(),
            options: messs_codec::SubscriptionOptions::new(QoS::AtMostOnce),
        }],
    }));
    c_send.write_all(&encoded(subscribe)).await.unwrap();
    let closed = tokio::time::timeout(WAIT, connection.closed()).await;
    assert!(closed.is_ok(), "the connection stayed open");
    // Everyone else carries on.
    sub.roundtrip("lanes/after").await;
    broker.stop().await;
}

/// A graceful shutdown reaches clients on every new transport: an MQTT 5 client over
/// WebSocket, WebSocket over TLS and QUIC is told DISCONNECT 0x8B before its connection
/// closes.
#[tokio::test]
async fn shutdown_says_goodbye_over_websocket_and_quic() {
    for transport in [Transport::Ws, Transport::Wss, Transport::Quic] {
        let pki = Pki::new();
        let broker = start(&pki, transport, |_| {}).await;
        let ends = Ends::new(&pki, broker.addr, transport);
        // What carries the client lives until the end of the round.
        let mut tunnel = None;
        let mut connection = None;
        let stream: Box<dyn Stream> = match transport {
            Transport::Quic => {
                let (c, stream) = quic_open(ends.quic.as_ref().unwrap(), broker.addr).await;
                connection = Some(c);
                Box::new(stream)
            }
            _ => {
                let t = Tunnel::open(&ends).await;
                let tcp = TcpStream::connect(("127.0.0.1", t.port)).await.unwrap();
                tunnel = Some(t);
                Box::new(tcp)
            }
        };
        let (mut client, ack) = Raw::over(stream)
            .connect(login("leaving", "watcher@acme"))
            .await;
        assert_eq!(ack.code, ReasonCode::Success);
        let stopping = tokio::spawn(broker.stop());
        client
            .expect_disconnect(ReasonCode::ServerShuttingDown)
            .await;
        stopping.await.unwrap();
        drop((tunnel, connection));
    }
}
