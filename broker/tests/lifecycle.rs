//! The session lifecycle under real concurrency: many client ids reconnect (rumqttc, MQTT 5)
//! around the moment their sessions expire, some by taking over a connection that is still
//! open, on a multi-threaded runtime. Whatever the interleaving, a client id never has two
//! live connections, and `session_present = 1` always comes with the subscription and the
//! message queued while the client was away.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::TestBroker;
use rumqttc::v5::mqttbytes::v5::{ConnectProperties, Packet};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions, StateError};
use tokio::sync::mpsc;

const CLIENTS: usize = 24;
const ROUNDS: usize = 6;
/// Session expiry of every client (seconds); they come back this long after leaving, give
/// or take `JITTER_MS`.
const EXPIRY_S: u32 = 1;
const JITTER_MS: u64 = 60;
const WAIT: Duration = Duration::from_secs(10);

#[derive(Debug)]
enum Seen {
    ConnAck(bool),
    SubAck,
    PubAck,
    Publish(Vec<u8>),
    /// DISCONNECT from the broker, with its reason code.
    Disconnect(u8),
    /// The connection ended.
    Closed,
}

struct Conn {
    client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Conn {
    async fn open(port: u16, id: &str, clean_start: bool) -> (Self, bool) {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_clean_start(clean_start);
        o.set_connect_properties(ConnectProperties {
            session_expiry_interval: Some(EXPIRY_S),
            ..ConnectProperties::default()
        });
        let (client, mut el) = AsyncClient::new(o, 64);
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let seen = match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(a))) => Seen::ConnAck(a.session_present),
                    Ok(Event::Incoming(Packet::SubAck(_))) => Seen::SubAck,
                    Ok(Event::Incoming(Packet::PubAck(_))) => Seen::PubAck,
                    Ok(Event::Incoming(Packet::Publish(p))) => Seen::Publish(p.payload.to_vec()),
                    Ok(Event::Incoming(Packet::Disconnect(d))) => {
                        Seen::Disconnect(d.reason_code as u8)
                    }
                    Ok(_) => continue,
                    // rumqttc reports the broker's DISCONNECT as the end of its event loop.
                    Err(ConnectionError::MqttState(StateError::ServerDisconnect {
                        reason_code,
                        ..
                    })) => {
                        let _ = tx.send(Seen::Disconnect(reason_code as u8));
                        return;
                    }
                    Err(_) => {
                        let _ = tx.send(Seen::Closed);
                        return;
                    }
                };
                if tx.send(seen).is_err() {
                    return;
                }
            }
        });
        let mut conn = Conn { client, rx, task };
        let present = match conn.next().await {
            Seen::ConnAck(present) => present,
            other => panic!("{id}: CONNACK expected, got {other:?}"),
        };
        (conn, present)
    }

    async fn next(&mut self) -> Seen {
        match tokio::time::timeout(WAIT, self.rx.recv()).await {
            Ok(Some(seen)) => seen,
            Ok(None) => Seen::Closed,
            Err(_) => panic!("nothing within {WAIT:?}"),
        }
    }

    /// Waits for the publish of `payload`, skipping others (redeliveries of earlier ones).
    async fn expect_publish(&mut self, id: &str, payload: &[u8]) {
        loop {
            match self.next().await {
                Seen::Publish(p) if p == payload => return,
                Seen::Publish(_) => {}
                other => panic!(
                    "{id}: {:?} expected, got {other:?}",
                    String::from_utf8_lossy(payload)
                ),
            }
        }
    }

    /// Drops the connection without DISCONNECT (as a device losing power).
    fn drop_abruptly(self) {
        self.task.abort();
    }
}

/// One publisher that waits for each PUBACK.
struct Publisher(Conn);

impl Publisher {
    async fn send(&mut self, topic: &str, payload: &[u8]) {
        self.0
            .client
            .publish(topic, QoS::AtLeastOnce, false, payload.to_vec())
            .await
            .unwrap_or_else(|e| panic!("publish: {e}"));
        loop {
            match self.0.next().await {
                Seen::PubAck => return,
                Seen::Closed | Seen::Disconnect(_) => panic!("the publisher was closed"),
                _ => {}
            }
        }
    }
}

async fn subscribe(conn: &mut Conn, id: &str, topic: &str) {
    conn.client
        .subscribe(topic, QoS::AtLeastOnce)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    match conn.next().await {
        Seen::SubAck => {}
        other => panic!("{id}: SUBACK expected, got {other:?}"),
    }
}

/// One client id's rounds; returns how often its session was resumed and how often it
/// had expired.
async fn run_client(port: u16, n: usize) -> (usize, usize) {
    let id = format!("life-{n}");
    let topic = format!("life/{n}");
    let (publisher, _) = Conn::open(port, &format!("life-pub-{n}"), true).await;
    let mut publisher = Publisher(publisher);
    let (mut conn, _) = Conn::open(port, &id, true).await;
    subscribe(&mut conn, &id, &topic).await;
    let (mut resumed, mut expired) = (0, 0);
    for round in 0..=ROUNDS {
        // The session holds the subscription (made again only after an expiry).
        let live = format!("live-{round}");
        publisher.send(&topic, live.as_bytes()).await;
        conn.expect_publish(&id, live.as_bytes()).await;
        if round == ROUNDS {
            break;
        }
        if round % 2 == 1 {
            // Take over the open connection: the session is attached, so it is resumed,
            // and the old connection is closed (DISCONNECT 0x8E first; rumqttc may report
            // only the close when both arrive in one read): never two live connections.
            let (mut taker, present) = Conn::open(port, &id, false).await;
            assert!(present, "{id} round {round}: a takeover lost the session");
            loop {
                match conn.next().await {
                    Seen::Disconnect(code) => {
                        assert_eq!(code, 0x8E, "{id}: the old connection's reason");
                        break;
                    }
                    Seen::Closed => break,
                    Seen::Publish(_) => {}
                    other => panic!("{id}: {other:?}"),
                }
            }
            conn.drop_abruptly();
            let taken = format!("taken-{round}");
            publisher.send(&topic, taken.as_bytes()).await;
            taker.expect_publish(&id, taken.as_bytes()).await;
            conn = taker;
        }
        conn.drop_abruptly();
        // Give the broker a moment to see the connection gone, then queue a message (if
        // it has not, the message goes in flight on the dying connection: a resumed
        // session sends it again all the same).
        tokio::time::sleep(Duration::from_millis(20)).await;
        let queued = format!("queued-{round}");
        publisher.send(&topic, queued.as_bytes()).await;
        // Back around the expiry moment: before, at or after it.
        let jitter = (n as u64 * 7 + round as u64 * 13) % (2 * JITTER_MS);
        let away = u64::from(EXPIRY_S) * 1000 - 20 - JITTER_MS + jitter;
        tokio::time::sleep(Duration::from_millis(away)).await;
        let (mut back, present) = Conn::open(port, &id, false).await;
        if present {
            resumed += 1;
            back.expect_publish(&id, queued.as_bytes()).await;
        } else {
            expired += 1;
            subscribe(&mut back, &id, &topic).await;
        }
        conn = back;
    }
    conn.client.disconnect().await.ok();
    (resumed, expired)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconnects_around_the_expiry_moment_keep_sessions_whole() {
    let broker = TestBroker::start().await;
    let port = broker.addr.port();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|n| tokio::spawn(run_client(port, n)))
        .collect();
    let (mut resumed, mut expired) = (0, 0);
    for c in clients {
        let (r, e) = c.await.unwrap_or_else(|e| panic!("{e}"));
        resumed += r;
        expired += e;
    }
    // Which side of the expiry moment each return fell on depends on the machine's load;
    // the invariants above hold on both.
    eprintln!("{resumed} returns resumed their session, {expired} found it expired");
    assert_eq!(resumed + expired, CLIENTS * ROUNDS);
    broker.stop().await;
}
