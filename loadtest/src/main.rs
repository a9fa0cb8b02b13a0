//! messs-load: a load-test harness for any MQTT broker (it depends on messs-codec only).
//!
//! Every run is bounded by a count and a duration and stops by itself; the default target is
//! 127.0.0.1:1883. See `messs-load --help` and `loadtest/README.md`.

mod bench;
mod conn;
mod dial;
mod hostile;
mod payload;
mod procstat;
mod proto;
mod report;

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use messs_codec::{Protocol, QoS};

use crate::bench::{Plan, Topology};
use crate::conn::ConnPlan;
use crate::hostile::{Attack, AttackPlan};
use crate::proto::ConnectOptions;

#[derive(Parser)]
#[command(name = "messs-load", version, about = "Load-test any MQTT broker")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Open N connections at a target rate and hold them.
    Conn {
        #[command(flatten)]
        common: Common,
        /// Connections to open.
        #[arg(long, default_value_t = 1000)]
        connections: u32,
        /// New connections per second (0 = as fast as --concurrency allows).
        #[arg(long, default_value_t = 0)]
        rate: u32,
        /// Handshakes in flight at once.
        #[arg(long, default_value_t = 128)]
        concurrency: u32,
        /// How long to hold the connections once all are open.
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        hold: Duration,
        /// Connect from this many loopback addresses in turn (127.0.1.0 on; 0: the
        /// system's choice), as devices on many addresses would: a broker counts logins
        /// per source address.
        #[arg(long, default_value_t = 0)]
        sources: u32,
    },
    /// Publish only (subscribers are elsewhere).
    Pub {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        flow: Flow,
        /// Publisher connections; publisher i uses the topic with {i} = i.
        #[arg(long, default_value_t = 1)]
        publishers: u32,
    },
    /// Subscribe only, until --count messages arrive or --duration passes.
    Sub {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        flow: Flow,
        /// Subscriber connections (each subscribes to the topic with {i} replaced by +).
        #[arg(long, default_value_t = 1)]
        subscribers: u32,
    },
    /// Publishers and subscribers in one process, in a topology.
    Bench {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        flow: Flow,
        /// fan-in: many publishers, one wildcard subscriber; fan-out: one publisher, many
        /// subscribers; pairs: publisher i to subscriber i; shared: a $share group.
        #[arg(long, value_enum, default_value_t = Topology::FanIn)]
        topology: Topology,
        #[arg(long, default_value_t = 4)]
        publishers: u32,
        #[arg(long, default_value_t = 1)]
        subscribers: u32,
    },
    /// An innocent publisher/subscriber pair measured alone, then beside hostile clients;
    /// reports the pair's rate and p99 in both phases and the broker's RSS.
    Hostile {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        flow: Flow,
        /// Attacks to run (comma-separated).
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            default_value = "never-read,deep,hash-flood,churn,retained-flood"
        )]
        attacks: Vec<Attack>,
        /// Attacker connections per attack kind.
        #[arg(long, default_value_t = 30)]
        attackers: u32,
        /// How long a never-reading subscriber stays before it reconnects.
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        reconnect: Duration,
        /// Send the attackers to this port instead of the pair's (another broker on the
        /// same machine): what is left of the pair's slowdown is the machine's, not the
        /// broker's.
        #[arg(long)]
        attack_port: Option<u16>,
    },
}

#[derive(Args, Clone)]
struct Common {
    /// Broker host.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Broker port.
    #[arg(long, default_value_t = 1883)]
    port: u16,
    /// Transport: tcp, tls, ws, wss or quic (ALPN mqtt).
    #[arg(long, value_enum, default_value_t = TransportArg::Tcp)]
    transport: TransportArg,
    /// For tls, wss and quic: PEM file with the CA certificate(s) to trust (for messs's
    /// self-signed certificate, DATA_DIR/self-signed/cert.pem).
    #[arg(long)]
    tls_ca: Option<std::path::PathBuf>,
    /// For tls, wss and quic: the name the server's certificate must carry.
    #[arg(long, default_value = "localhost")]
    tls_server_name: String,
    /// For ws and wss: the HTTP path of the MQTT endpoint.
    #[arg(long, default_value = "/mqtt")]
    ws_path: String,
    /// MQTT protocol level: 4 (3.1.1) or 5.
    #[arg(long, default_value_t = 5)]
    protocol: u8,
    /// User name; {i} is replaced by the client index.
    #[arg(long)]
    username: Option<String>,
    /// Password; {i} is replaced by the client index.
    #[arg(long)]
    password: Option<String>,
    /// Client id prefix.
    #[arg(long, default_value = "messs-load")]
    client_prefix: String,
    /// The broker's process id, to report its CPU and memory use.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Upper bound on the run's length.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Clone)]
struct Flow {
    /// Topic template; {i} is the publisher index.
    #[arg(long, default_value = "messs-load/{i}")]
    topic: String,
    /// QoS 0, 1 or 2.
    #[arg(long, default_value_t = 0)]
    qos: u8,
    /// Payload bytes (at least 20: timestamp, publisher and sequence number).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Total messages per second over all publishers (0 = as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Unacknowledged QoS 1/2 messages per publisher.
    #[arg(long, default_value_t = 100)]
    window: u16,
    /// Total messages to publish (or, for `sub`, to receive).
    #[arg(long, default_value_t = 100_000)]
    count: u64,
    /// Subscribers use persistent sessions (clean start 0, session expiry 1 h): a broker
    /// with durable storage then stores what it queues for them.
    #[arg(long)]
    persistent: bool,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum TransportArg {
    Tcp,
    Tls,
    Ws,
    Wss,
    Quic,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| (&s[..i], &s[i..]));
    let n: f64 = num
        .parse()
        .map_err(|_| format!("bad duration {s:?} (e.g. 10s, 500ms, 2m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("bad duration unit in {s:?} (ms, s or m)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

impl Common {
    fn connect_options(&self) -> anyhow::Result<ConnectOptions> {
        let protocol = match self.protocol {
            4 => Protocol::V3_1_1,
            5 => Protocol::V5,
            other => bail!("--protocol must be 4 or 5, not {other}"),
        };
        let addr: SocketAddr = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .with_context(|| format!("resolving {}", self.host))?
            .next()
            .context("no address for host")?;
        let tls = match self.transport {
            TransportArg::Tcp | TransportArg::Ws => None,
            TransportArg::Tls | TransportArg::Wss | TransportArg::Quic => {
                let ca = self
                    .tls_ca
                    .as_deref()
                    .context("--transport tls, wss and quic need --tls-ca FILE")?;
                Some(proto::tls_client_config(ca)?)
            }
        };
        let tls_to = |config: rustls::ClientConfig| -> anyhow::Result<dial::TlsTo> {
            let name = rustls_pki_types::ServerName::try_from(self.tls_server_name.clone())
                .context("--tls-server-name")?;
            Ok((
                tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)),
                name,
            ))
        };
        let dial = match (self.transport, tls) {
            (TransportArg::Tcp, _) => dial::Dial::Tcp,
            (TransportArg::Ws, _) => dial::Dial::Ws {
                path: self.ws_path.clone(),
                tls: None,
            },
            (TransportArg::Tls, Some(c)) => dial::Dial::Tls(tls_to(c)?),
            (TransportArg::Wss, Some(c)) => dial::Dial::Ws {
                path: self.ws_path.clone(),
                tls: Some(tls_to(c)?),
            },
            (TransportArg::Quic, Some(c)) => dial::Dial::Quic {
                endpoint: dial::quic_endpoint(c, addr.is_ipv6())?,
                server_name: self.tls_server_name.clone(),
            },
            (_, None) => bail!("--transport {} needs --tls-ca", self.transport_name()),
        };
        Ok(ConnectOptions {
            addr,
            protocol,
            client_id: String::new(),
            username: self.username.clone(),
            password: self.password.clone(),
            keep_alive: 300,
            clean: true,
            session_expiry: None,
            dial,
            local_ip: None,
        })
    }

    fn transport_name(&self) -> &'static str {
        match self.transport {
            TransportArg::Tcp => "tcp",
            TransportArg::Tls => "tls",
            TransportArg::Ws => "ws",
            TransportArg::Wss => "wss",
            TransportArg::Quic => "quic",
        }
    }
}

fn qos(q: u8) -> anyhow::Result<QoS> {
    QoS::from_u8(q).map_err(|_| anyhow::anyhow!("--qos must be 0, 1 or 2"))
}

fn plan(
    common: &Common,
    flow: &Flow,
    topology: Topology,
    publishers: u32,
    subscribers: u32,
) -> anyhow::Result<Plan> {
    if flow.payload < payload::HEADER_LEN {
        bail!("--payload must be at least {} bytes", payload::HEADER_LEN);
    }
    if topology == Topology::Pairs && publishers != subscribers && publishers > 0 && subscribers > 0
    {
        bail!("--topology pairs needs as many publishers as subscribers");
    }
    Ok(Plan {
        topology,
        publishers,
        subscribers,
        qos: qos(flow.qos)?,
        payload: flow.payload,
        rate: flow.rate,
        window: flow.window,
        count: flow.count,
        duration: common.duration,
        topic: flow.topic.clone(),
        connect: common.connect_options()?,
        client_prefix: common.client_prefix.clone(),
        persistent_subscribers: flow.persistent,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Conn {
            common,
            connections,
            rate,
            concurrency,
            hold,
            sources,
        } => {
            let plan = ConnPlan {
                connections,
                rate,
                concurrency,
                hold,
                sources,
                duration: common.duration,
                connect: common.connect_options()?,
                client_prefix: common.client_prefix.clone(),
            };
            report::conn(plan, common.broker_pid, common.json).await
        }
        Command::Pub {
            common,
            flow,
            publishers,
        } => {
            let p = plan(&common, &flow, Topology::FanIn, publishers, 0)?;
            report::bench("pub", p, common.broker_pid, common.json).await
        }
        Command::Sub {
            common,
            flow,
            subscribers,
        } => {
            let p = plan(&common, &flow, Topology::FanIn, 0, subscribers)?;
            report::bench("sub", p, common.broker_pid, common.json).await
        }
        Command::Bench {
            common,
            flow,
            topology,
            publishers,
            subscribers,
        } => {
            let (p, s) = match topology {
                Topology::FanOut => (1, subscribers),
                Topology::Pairs => (publishers, publishers),
                _ => (publishers, subscribers),
            };
            let p = plan(&common, &flow, topology, p, s)?;
            report::bench("bench", p, common.broker_pid, common.json).await
        }
        Command::Hostile {
            common,
            flow,
            attacks,
            attackers,
            reconnect,
            attack_port,
        } => {
            let pair = plan(&common, &flow, Topology::Pairs, 1, 1)?;
            let mut connect = common.connect_options()?;
            if let Some(port) = attack_port {
                connect.addr.set_port(port);
            }
            let attack = AttackPlan {
                attacks,
                clients: attackers,
                reconnect,
                connect,
                client_prefix: format!("{}-hostile", common.client_prefix),
            };
            report::hostile(pair, attack, common.broker_pid, common.json).await
        }
    }
}
