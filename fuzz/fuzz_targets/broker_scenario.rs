//! The scenario of the stateful broker fuzz targets: three clients send arbitrary
//! sequences of packets (valid ones from a dictionary of deep topics, wildcards, shared
//! filters and large counts, and raw bytes) to an in-process broker over in-memory streams.
//! `broker` runs it on a paused clock on one thread (deep and fast); `broker_mt` on two
//! worker threads in real time, so connection tasks, takeovers and the session table's
//! transitions really interleave. It must never panic or abort (libfuzzer turns a panic in
//! any task into a crash), and:
//! - no client receives a PUBLISH on a topic that no filter its client id subscribed to
//!   matches;
//! - after everything settles, at most one CONNACKed connection per client id is still
//!   open, and the session table agrees: a client id with a live connection has a session
//!   that is connected, one without has none connected (a session ended or taken from under
//!   a live connection, or a second live session, fails this).
use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use messs_broker::fuzz_support::FuzzBroker;
use messs_broker::Config;
use messs_codec::{
    decode, encode, topic_matches, Connect, ConnectProperties, Disconnect, Limits, Packet,
    Protocol, PubResponse, Publish, PublishProperties, QoS, QosPid, ReasonCode, Subscribe,
    Subscription, SubscriptionOptions, TopicFilter, TopicName, Unsubscribe,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

const CLIENT_IDS: [&str; 2] = ["a", "b"];

fn filters() -> Vec<String> {
    vec![
        "#".into(),
        "+/+".into(),
        "a/b".into(),
        "a/#".into(),
        "$share/g/a/+".into(),
        "/".repeat(200),
        vec!["+"; 140].join("/"),
        "$SYS/#".into(),
    ]
}

fn topics() -> Vec<String> {
    vec![
        "a/b".into(),
        "a".into(),
        "x/y".into(),
        "$SYS/x".into(),
        "/".repeat(127),
        vec!["x"; 140].join("/"),
    ]
}

struct Client {
    stream: Option<DuplexStream>,
    protocol: Protocol,
    buf: BytesMut,
    client_id: Option<&'static str>,
    connacked: bool,
    next_pid: u16,
}

impl Client {
    fn pid(&mut self) -> std::num::NonZeroU16 {
        self.next_pid = self.next_pid.wrapping_add(1).max(1);
        std::num::NonZeroU16::new(self.next_pid).unwrap_or(std::num::NonZeroU16::MIN)
    }

    async fn send(&mut self, packet: &Packet, protocol: Protocol) {
        let mut out = BytesMut::new();
        if encode(packet, protocol, &mut out).is_ok() {
            self.send_raw(&out).await;
        }
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        if let Some(s) = self.stream.as_mut() {
            if tokio::time::timeout(Duration::from_millis(50), s.write_all(bytes))
                .await
                .map_or(true, |r| r.is_err())
            {
                // Broker closed, or its buffer is full (a client that pushes too fast).
            }
        }
    }

    /// Reads what is available, checks every PUBLISH against the filters its client id
    /// subscribed to, and answers QoS flows. Returns false once the broker closed it.
    async fn pump(&mut self, subscribed: &HashMap<&'static str, HashSet<String>>) {
        let Some(stream) = self.stream.as_mut() else {
            return;
        };
        let mut chunk = [0u8; 8192];
        loop {
            match tokio::time::timeout(Duration::from_millis(1), stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    self.stream = None;
                    self.connacked = false;
                    return;
                }
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Err(_) => break,
            }
        }
        let mut answers = Vec::new();
        while let Ok(Some(packet)) = decode(&mut self.buf, self.protocol, &Limits::default()) {
            match packet {
                Packet::ConnAck(ack) => self.connacked = ack.code.is_success(),
                Packet::Publish(p) => {
                    let id = self.client_id.unwrap_or("");
                    let ok = subscribed.get(id).is_some_and(|fs| {
                        fs.iter().any(|f| {
                            let inner = TopicFilter::new(f).map(|t| t.filter().to_owned());
                            inner.is_ok_and(|i| topic_matches(&i, p.topic.as_str()))
                        })
                    });
                    // An empty topic means a topic alias the client did not track: skip.
                    assert!(
                        ok || p.topic.is_empty(),
                        "client {id} got {} without a matching subscription",
                        p.topic
                    );
                    match p.qos_pid {
                        QosPid::AtMostOnce => {}
                        QosPid::AtLeastOnce(id) => {
                            answers.push(Packet::PubAck(PubResponse::success(id)))
                        }
                        QosPid::ExactlyOnce(id) => {
                            answers.push(Packet::PubRec(PubResponse::success(id)))
                        }
                    }
                }
                Packet::PubRel(r) => {
                    answers.push(Packet::PubComp(PubResponse::success(r.packet_id)))
                }
                _ => {}
            }
        }
        let protocol = self.protocol;
        for a in answers {
            self.send(&a, protocol).await;
        }
    }
}

/// Which clock the scenario runs on (each target uses one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(dead_code)]
pub enum Clock {
    /// tokio's paused clock, one thread: waits cost nothing.
    Paused,
    /// Real time on worker threads: waits are scaled down to keep inputs fast.
    Threads,
}

impl Clock {
    fn wait(self, ms: u64) -> Duration {
        match self {
            Clock::Paused => Duration::from_millis(ms),
            Clock::Threads => Duration::from_millis(ms / 20),
        }
    }
}

pub async fn run(data: &[u8], clock: Clock) {
    // The try-out setup: anonymous clients, every topic allowed (ACLs have their own tests).
    let mut config = Config::try_out();
    config.limits.max_queued_messages = 50;
    config.limits.max_retained_messages = 20;
    config.limits.max_filters_per_subscribe = 16;
    config.limits.max_subscriptions_per_session = 8;
    config.limits.max_sessions = 4;
    if clock == Clock::Threads {
        // A handshake left half-done ends within the settle time.
        config.limits.connect_timeout_secs = 1;
    }
    let broker = FuzzBroker::new(config).expect("the fuzz broker starts");
    let (filters, topics) = (filters(), topics());
    let mut clients: Vec<Client> = (0..3)
        .map(|_| Client {
            stream: None,
            protocol: Protocol::V5,
            buf: BytesMut::new(),
            client_id: None,
            connacked: false,
            next_pid: 0,
        })
        .collect();
    let mut subscribed: HashMap<&'static str, HashSet<String>> = HashMap::new();
    let mut bytes = data.iter().copied();
    while let Some(op) = bytes.next() {
        let arg = bytes.next().unwrap_or(0);
        let c = &mut clients[usize::from(op % 3)];
        let protocol = c.protocol;
        match (op / 3) % 8 {
            0 => {
                let mut client = Client {
                    stream: Some(broker.connect()),
                    protocol: if arg & 1 == 0 {
                        Protocol::V5
                    } else {
                        Protocol::V3_1_1
                    },
                    buf: BytesMut::new(),
                    client_id: Some(CLIENT_IDS[usize::from(arg >> 1 & 1)]),
                    connacked: false,
                    next_pid: 0,
                };
                let mut properties = ConnectProperties::default();
                if arg & 4 != 0 {
                    properties.session_expiry_interval = Some(u32::from(arg >> 4));
                }
                let connect = Connect {
                    protocol: client.protocol,
                    clean_start: arg & 8 != 0,
                    keep_alive: 60,
                    properties,
                    client_id: client.client_id.unwrap_or("").to_owned(),
                    will: None,
                    username: None,
                    password: None,
                };
                let p = client.protocol;
                client.send(&Packet::Connect(Box::new(connect)), p).await;
                *c = client;
            }
            1 => {
                let filter = &filters[usize::from(arg) % filters.len()];
                let count = 1 + usize::from(arg >> 4);
                if let (Ok(f), Some(id)) = (TopicFilter::new(filter), c.client_id) {
                    subscribed.entry(id).or_default().insert(filter.clone());
                    let pid = c.pid();
                    let sub = Subscribe {
                        packet_id: pid,
                        properties: Default::default(),
                        subscriptions: vec![
                            Subscription {
                                filter: f,
                                options: SubscriptionOptions::new(QoS::AtLeastOnce),
                            };
                            count
                        ],
                    };
                    c.send(&Packet::Subscribe(Box::new(sub)), protocol).await;
                }
            }
            2 => {
                let topic = &topics[usize::from(arg) % topics.len()];
                if let Ok(t) = TopicName::new(topic) {
                    let qos_pid = match arg >> 6 {
                        1 => QosPid::AtLeastOnce(c.pid()),
                        2 => QosPid::ExactlyOnce(c.pid()),
                        _ => QosPid::AtMostOnce,
                    };
                    let publish = Publish {
                        dup: false,
                        qos_pid,
                        retain: arg & 0x20 != 0,
                        topic: t,
                        properties: PublishProperties::default(),
                        payload: Bytes::from_static(b"fuzz"),
                    };
                    c.send(&Packet::Publish(Box::new(publish)), protocol).await;
                }
            }
            3 => {
                let n = usize::from(arg % 32);
                let raw: Vec<u8> = bytes.by_ref().take(n).collect();
                c.send_raw(&raw).await;
            }
            4 => {
                let filter = &filters[usize::from(arg) % filters.len()];
                if let Ok(f) = TopicFilter::new(filter) {
                    let pid = c.pid();
                    let unsub = Unsubscribe {
                        packet_id: pid,
                        properties: Default::default(),
                        filters: vec![f],
                    };
                    c.send(&Packet::Unsubscribe(Box::new(unsub)), protocol)
                        .await;
                }
            }
            5 => {
                let code = if arg & 1 == 0 {
                    ReasonCode::Success
                } else {
                    ReasonCode::DisconnectWithWillMessage
                };
                c.send(&Packet::Disconnect(Disconnect::new(code)), protocol)
                    .await;
            }
            6 => {
                c.stream = None;
                c.connacked = false;
            }
            _ => {
                tokio::time::sleep(clock.wait(u64::from(arg) * 10)).await;
            }
        }
        tokio::task::yield_now().await;
        for c in clients.iter_mut() {
            c.pump(&subscribed).await;
        }
    }
    // Settle: handshakes finish or time out, takeovers complete.
    let rounds = match clock {
        Clock::Paused => 20,
        Clock::Threads => 40,
    };
    for _ in 0..rounds {
        tokio::time::sleep(clock.wait(600).max(Duration::from_millis(30))).await;
        for c in clients.iter_mut() {
            c.pump(&subscribed).await;
        }
    }
    let mut open: HashMap<&str, usize> = HashMap::new();
    for c in &clients {
        if let (Some(_), true, Some(id)) = (&c.stream, c.connacked, c.client_id) {
            *open.entry(id).or_default() += 1;
        }
    }
    for (id, n) in &open {
        assert!(*n <= 1, "{n} live connections for client id {id}");
    }
    // The session table agrees with what the clients see.
    let sessions = broker.handle().sessions();
    for id in CLIENT_IDS {
        let live = open.get(id).copied().unwrap_or(0) == 1;
        let connected = sessions
            .iter()
            .filter(|s| s.client_id == id && s.connected)
            .count();
        assert_eq!(
            connected,
            usize::from(live),
            "client id {id}: live connection {live}, connected sessions {connected}"
        );
    }
    broker.shutdown().await;
}
