//! A minimal MQTT client on messs-codec: just what load generation needs (CONNECT,
//! SUBSCRIBE, PUBLISH with acks), over any transport `dial` opens, split into halves so
//! one task can write while another reads.

use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::BytesMut;
use messs_codec::{
    decode, encode, Connect, ConnectProperties, Limits, Packet, Protocol, QoS, ReasonCode,
    Subscribe, Subscription, SubscriptionOptions, TopicFilter,
};

use crate::dial::{Dial, ReadHalf, WriteHalf};

/// How one client connects.
#[derive(Clone)]
pub struct ConnectOptions {
    pub addr: SocketAddr,
    pub protocol: Protocol,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub keep_alive: u16,
    pub clean: bool,
    /// Session Expiry Interval to ask for (v5).
    pub session_expiry: Option<u32>,
    /// The transport.
    pub dial: Dial,
    /// The local address to connect from (TCP-based transports; `None`: the system's
    /// choice), so one machine can look like many devices' addresses on loopback.
    pub local_ip: Option<std::net::IpAddr>,
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("addr", &self.addr)
            .field("protocol", &self.protocol)
            .field("client_id", &self.client_id)
            .field("transport", &self.dial.name())
            .finish()
    }
}

/// A TLS client configuration trusting the CA certificates of a PEM file (aws-lc-rs).
pub fn tls_client_config(ca_file: &std::path::Path) -> anyhow::Result<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca_file)
        .with_context(|| format!("reading {}", ca_file.display()))?
    {
        roots.add(cert.with_context(|| format!("a certificate in {}", ca_file.display()))?)?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// The reading half with its buffer.
pub struct Reader {
    half: ReadHalf,
    buf: BytesMut,
    protocol: Protocol,
}

/// The writing half with its buffer.
pub struct Writer {
    half: WriteHalf,
    pub buf: BytesMut,
    pub protocol: Protocol,
}

impl Reader {
    /// The next packet; `None` when the broker closed the connection.
    pub async fn next(&mut self) -> anyhow::Result<Option<Packet>> {
        loop {
            if let Some(p) = decode(&mut self.buf, self.protocol, &Limits::default())? {
                return Ok(Some(p));
            }
            if self.buf.capacity() - self.buf.len() < 1024 {
                self.buf.reserve(64 * 1024);
            }
            if self.half.read_into(&mut self.buf).await? == 0 {
                return Ok(None);
            }
        }
    }

    /// Reads once more into the buffer (cancel-safe), then returns every complete packet.
    pub async fn next_batch(&mut self, out: &mut Vec<Packet>) -> anyhow::Result<bool> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(64 * 1024);
        }
        if self.half.read_into(&mut self.buf).await? == 0 {
            return Ok(false);
        }
        while let Some(p) = decode(&mut self.buf, self.protocol, &Limits::default())? {
            out.push(p);
        }
        Ok(true)
    }
}

impl Writer {
    /// Encodes a packet into the buffer (sent by `flush`).
    pub fn queue(&mut self, packet: &Packet) -> anyhow::Result<()> {
        encode(packet, self.protocol, &mut self.buf)?;
        Ok(())
    }

    /// Sends everything queued.
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        if !self.buf.is_empty() {
            self.half.write_all(&self.buf).await?;
            self.buf.clear();
        }
        Ok(())
    }
}

/// Opens a connection over the run's transport, sends CONNECT and waits for a successful
/// CONNACK.
pub async fn connect(opts: &ConnectOptions, timeout: Duration) -> anyhow::Result<(Reader, Writer)> {
    let (r, w): (ReadHalf, WriteHalf) =
        crate::dial::open(&opts.dial, opts.addr, opts.local_ip, timeout).await?;
    let mut reader = Reader {
        half: r,
        buf: BytesMut::new(),
        protocol: opts.protocol,
    };
    let mut writer = Writer {
        half: w,
        buf: BytesMut::new(),
        protocol: opts.protocol,
    };
    let mut properties = ConnectProperties::default();
    if opts.protocol.is_v5() {
        // Let the broker queue for us as a v5 client would ask; no limit on our side.
        properties.receive_maximum = NonZeroU16::new(u16::MAX);
        properties.session_expiry_interval = opts.session_expiry;
    }
    let connect = Connect {
        protocol: opts.protocol,
        clean_start: opts.clean,
        keep_alive: opts.keep_alive,
        properties,
        client_id: opts.client_id.clone(),
        will: None,
        username: opts.username.clone(),
        password: opts.password.clone().map(Into::into),
    };
    writer.queue(&Packet::Connect(Box::new(connect)))?;
    writer.flush().await?;
    let ack = tokio::time::timeout(timeout, reader.next())
        .await
        .context("no CONNACK in time")??;
    match ack {
        Some(Packet::ConnAck(a)) if a.code == ReasonCode::Success => Ok((reader, writer)),
        Some(Packet::ConnAck(a)) => bail!("connection refused: {}", a.code),
        Some(other) => bail!("expected CONNACK, got {}", other.name()),
        None => bail!("connection closed before CONNACK"),
    }
}

/// Subscribes to one filter and waits for a successful SUBACK.
pub async fn subscribe(
    reader: &mut Reader,
    writer: &mut Writer,
    filter: &str,
    qos: QoS,
) -> anyhow::Result<()> {
    let sub = Subscribe {
        packet_id: NonZeroU16::MIN,
        properties: Default::default(),
        subscriptions: vec![Subscription {
            filter: TopicFilter::new(filter)?,
            options: SubscriptionOptions::new(qos),
        }],
    };
    writer.queue(&Packet::Subscribe(Box::new(sub)))?;
    writer.flush().await?;
    loop {
        match reader.next().await? {
            Some(Packet::SubAck(a)) => {
                if a.reasons.iter().any(|r| !r.is_success()) {
                    bail!("subscription to {filter} refused: {:?}", a.reasons);
                }
                return Ok(());
            }
            Some(_) => continue,
            None => bail!("connection closed before SUBACK"),
        }
    }
}
