//! The harness the crash tests share: the real `messs` binary as a child process, and a
//! raw MQTT client on messs-codec that sends exactly the packets a test writes.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use messs_codec::{
    decode, encode, Connect, ConnectProperties, Limits, Packet, Protocol, Publish,
    PublishProperties, QoS, QosPid, ReasonCode, Subscribe, Subscription, SubscriptionOptions,
    TopicFilter, TopicName, Will,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a test waits for a packet it expects.
pub const WAIT: Duration = Duration::from_secs(10);

/// The broker process; its log goes to a file in the data directory's parent.
pub struct Broker {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Broker {
    pub fn start(dir: &Path, durability: &str) -> Broker {
        let config = dir.join("messs.toml");
        std::fs::write(
            &config,
            format!(
                "[[listener]]\nbind = \"127.0.0.1:0\"\nallow_anonymous = true\ntenant = \"default\"\n\n\
                 [acl]\ntenant_without_rules = \"allow\"\n\n\
                 [storage]\ndata_dir = \"{}\"\ndurability = \"{durability}\"\n",
                dir.join("data").display()
            ),
        )
        .unwrap();
        Broker::run(&config)
    }

    /// Starts the broker on an existing configuration file.
    pub fn run(config: &Path) -> Broker {
        Broker::run_with(config, &[])
    }

    /// Starts the broker on an existing configuration file, with more `serve` arguments.
    pub fn run_with(config: &Path, args: &[&str]) -> Broker {
        let mut child = Command::new(env!("CARGO_BIN_EXE_messs"))
            .args(["serve", "--admin-listen", "off", "--config"])
            .arg(config)
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("the broker printed its listening address")
                .unwrap();
            if let Some(at) = line.find("addr=") {
                if line.contains("listening") {
                    let rest = &line[at + 5..];
                    let addr = rest.split_whitespace().next().unwrap();
                    break addr.parse().unwrap();
                }
            }
        };
        // Keep draining its output so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Broker { child, addr }
    }

    pub fn kill(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw MQTT client on messs-codec: exact packets, no automatic acknowledgements.
pub struct Client {
    stream: TcpStream,
    buf: BytesMut,
    protocol: Protocol,
    /// Packets that arrived while waiting for a SUBACK (a server may send a subscription's
    /// messages before its SUBACK (MQTT 3.1.1 and 5.0, section 3.8.4), and messs does while the SUBACK waits for
    /// the store).
    stash: std::collections::VecDeque<Packet>,
}

pub fn pid(n: u16) -> NonZeroU16 {
    NonZeroU16::new(n).unwrap()
}

pub fn connect_packet(id: &str, clean: bool, will: Option<Will>) -> Connect {
    Connect {
        protocol: Protocol::V5,
        clean_start: clean,
        keep_alive: 60,
        properties: ConnectProperties {
            session_expiry_interval: Some(3600),
            ..ConnectProperties::default()
        },
        client_id: id.to_owned(),
        will,
        username: None,
        password: None,
    }
}

pub fn publish(topic: &str, payload: Vec<u8>, qos_pid: QosPid, retain: bool) -> Packet {
    Packet::Publish(Box::new(Publish {
        dup: false,
        qos_pid,
        retain,
        topic: TopicName::new(topic).unwrap(),
        properties: PublishProperties::default(),
        payload: Bytes::from(payload),
    }))
}

impl Client {
    /// Sends CONNECT on a new socket; the client and the CONNACK's code and session flag.
    pub async fn try_connect(addr: SocketAddr, connect: Connect) -> (Client, ReasonCode, bool) {
        let stream = TcpStream::connect(addr).await.unwrap();
        let mut c = Client {
            stream,
            buf: BytesMut::new(),
            protocol: Protocol::V5,
            stash: Default::default(),
        };
        c.send(&Packet::Connect(Box::new(connect))).await;
        match c.recv().await {
            Packet::ConnAck(a) => (c, a.code, a.session_present),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Sends CONNECT and returns the CONNACK's reason code.
    pub async fn connack_code(addr: SocketAddr, connect: Connect) -> ReasonCode {
        Self::try_connect(addr, connect).await.1
    }

    /// Connects; returns the client and whether the session was present.
    pub async fn connect(addr: SocketAddr, connect: Connect) -> (Client, bool) {
        let (c, code, present) = Self::try_connect(addr, connect).await;
        assert_eq!(code, ReasonCode::Success);
        (c, present)
    }

    pub async fn send(&mut self, p: &Packet) {
        let mut out = BytesMut::new();
        encode(p, self.protocol, &mut out).unwrap();
        self.stream.write_all(&out).await.unwrap();
    }

    pub async fn recv_within(&mut self, wait: Duration) -> Option<Packet> {
        if let Some(p) = self.stash.pop_front() {
            return Some(p);
        }
        self.read_within(wait).await
    }

    pub async fn read_within(&mut self, wait: Duration) -> Option<Packet> {
        tokio::time::timeout(wait, async {
            loop {
                if let Some(p) = decode(&mut self.buf, self.protocol, &Limits::default()).unwrap() {
                    return p;
                }
                let n = self.stream.read_buf(&mut self.buf).await.unwrap();
                assert!(n > 0, "connection closed");
            }
        })
        .await
        .ok()
    }

    pub async fn recv(&mut self) -> Packet {
        self.recv_within(WAIT).await.expect("a packet in time")
    }

    pub async fn subscribe(&mut self, filter: &str, qos: QoS) {
        self.send(&Packet::Subscribe(Box::new(Subscribe {
            packet_id: pid(1),
            properties: Default::default(),
            subscriptions: vec![Subscription {
                filter: TopicFilter::new(filter).unwrap(),
                options: SubscriptionOptions::new(qos),
            }],
        })))
        .await;
        loop {
            match self.read_within(WAIT).await.expect("SUBACK in time") {
                Packet::SubAck(_) => return,
                p @ Packet::Publish(_) => self.stash.push_back(p),
                other => panic!("expected SUBACK for {filter}, got {other:?}"),
            }
        }
    }
}

/// The connection was closed (the broker was killed, or closed it).
#[derive(Debug)]
pub struct Closed;

impl Client {
    /// Connects, or `None` if the broker is not there (killed) or closes the connection.
    pub async fn connect_or_closed(
        addr: SocketAddr,
        connect: Connect,
    ) -> Result<(Client, ReasonCode, bool), Closed> {
        let stream = TcpStream::connect(addr).await.map_err(|_| Closed)?;
        let mut c = Client {
            stream,
            buf: BytesMut::new(),
            protocol: Protocol::V5,
            stash: Default::default(),
        };
        c.try_send(&Packet::Connect(Box::new(connect))).await?;
        match c.next_packet(WAIT).await? {
            Some(Packet::ConnAck(a)) => Ok((c, a.code, a.session_present)),
            _ => Err(Closed),
        }
    }

    /// Sends a packet, or says the connection is closed.
    pub async fn try_send(&mut self, p: &Packet) -> Result<(), Closed> {
        let mut out = BytesMut::new();
        encode(p, self.protocol, &mut out).unwrap();
        self.stream.write_all(&out).await.map_err(|_| Closed)
    }

    /// The next packet; `Ok(None)` if none came within `wait`.
    pub async fn next_packet(&mut self, wait: Duration) -> Result<Option<Packet>, Closed> {
        if let Some(p) = self.stash.pop_front() {
            return Ok(Some(p));
        }
        let read = tokio::time::timeout(wait, async {
            loop {
                match decode(&mut self.buf, self.protocol, &Limits::default()) {
                    Ok(Some(p)) => return Ok(p),
                    Ok(None) => {}
                    Err(_) => return Err(Closed),
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return Err(Closed),
                    Ok(_) => {}
                }
            }
        })
        .await;
        match read {
            Ok(p) => p.map(Some),
            Err(_) => Ok(None),
        }
    }
}
