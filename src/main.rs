//! The `messs` binary: command line, configuration, logging, signals. Thin by design: all
//! protocol logic lives in the library crates.

use std::net::SocketAddr;
use std::path::PathBuf;

mod registry_cli;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use messs_broker::{Broker, Config, ListenerConfig, Transport};
use registry_cli::{AclCmd, CaCmd, DeviceCmd, JwtKeyCmd, RegistryCmd, TenantCmd};

/// With the `mimalloc` feature: mimalloc instead of glibc's malloc. Measured against glibc
/// and jemalloc (docs/PERFORMANCE.md, "Allocator"): a message's buffers are allocated on the
/// publisher's thread and freed on each subscriber's, which mimalloc's per-thread free lists
/// take at 15-25% less broker CPU per message (jemalloc was no better than glibc); but it
/// holds 8 MiB more at start and more per connection after connection churn, so the default
/// is glibc's, whose memory follows the connections more closely.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "messs",
    version,
    about = "A secure, high-performance MQTT broker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker.
    Serve {
        /// TOML configuration file (see messs.example.toml). Without one, messs listens on
        /// tcp://127.0.0.1:1883 and allows anonymous clients there (loopback only).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Listen on this address instead of the configured listeners (repeatable):
        /// tcp://, tls://, ws://, wss:// or quic://IP[:PORT], e.g. quic://127.0.0.1:14567
        /// or ws://127.0.0.1:8083/mqtt. Without --config, anonymous clients are allowed on
        /// loopback addresses only, and TLS, WSS and QUIC use a self-signed certificate
        /// kept in the data directory (its fingerprint is logged).
        #[arg(long = "listen", value_name = "SCHEME://IP:PORT")]
        listen: Vec<String>,
        /// Directory for durable state (overrides storage.data_dir).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Serve the HTTP admin plane here instead of [admin] bind (default
        /// 127.0.0.1:8080); `off` serves none.
        #[arg(long, value_name = "HOST:PORT|off")]
        admin_listen: Option<String>,
        /// Start even though the write-ahead log is damaged, keeping what is before the
        /// damage and dropping what is after it (the damaged log files are copied into a
        /// wal-damaged-* directory in the data directory first). Without it a damaged log
        /// stops the start with an error that says how much would be lost.
        #[arg(long)]
        recover_wal: bool,
    },
    /// Operator tasks on a data directory (the broker using it must be stopped; a running
    /// broker takes online checkpoints through its admin plane).
    Storage {
        #[command(subcommand)]
        task: StorageTask,
        /// TOML configuration file, for storage.data_dir and the encryption key settings.
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        /// The data directory (overrides storage.data_dir).
        #[arg(long, global = true, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Tenants, on a stopped broker's data directory.
    Tenant {
        #[command(subcommand)]
        cmd: TenantCmd,
        #[command(flatten)]
        dir: DataDirArgs,
    },
    /// Devices and their credentials, on a stopped broker's data directory.
    Device {
        #[command(subcommand)]
        cmd: DeviceCmd,
        #[command(flatten)]
        dir: DataDirArgs,
    },
    /// Topic ACL rules of a tenant, on a stopped broker's data directory.
    Acl {
        #[command(subcommand)]
        cmd: AclCmd,
        #[command(flatten)]
        dir: DataDirArgs,
    },
    /// Keys a tenant signs device JWTs with, on a stopped broker's data directory.
    JwtKey {
        #[command(subcommand)]
        cmd: JwtKeyCmd,
        #[command(flatten)]
        dir: DataDirArgs,
    },
    /// Client CAs a tenant trusts, and revoked device certificates, on a stopped broker's
    /// data directory.
    Ca {
        #[command(subcommand)]
        cmd: CaCmd,
        #[command(flatten)]
        dir: DataDirArgs,
    },
}

/// The data directory a command works on (the broker using it must be stopped).
#[derive(Args)]
struct DataDirArgs {
    /// TOML configuration file, for storage.data_dir, the encryption key settings and the
    /// password hashing parameters.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// The data directory (overrides storage.data_dir).
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum StorageTask {
    /// Reads and decodes every record (payloads too, so a wrong or missing key shows up)
    /// and checks the audit log's chain. Exits 1 if anything is wrong.
    Verify {
        /// An audit head copied out earlier (`SEQ:HEX`, from the broker's log, its
        /// metrics or GET /api/v1/audit/head): the chain must still reach it and hold the
        /// same record there, or the store was rolled back.
        #[arg(long, value_name = "SEQ:HEX")]
        audit_head: Option<String>,
    },
    /// Writes a consistent copy of the data directory to DIR (which must not exist).
    /// Start a broker with --data-dir DIR to restore it.
    Checkpoint {
        /// Where to write the copy.
        #[arg(value_name = "DIR")]
        to: PathBuf,
    },
    /// Compacts the store, giving back the space of deleted data.
    Compact,
    /// Seals a store that ran without encryption with the configured key
    /// (storage.encryption_key_file or encryption_key_env), on a stopped broker: every
    /// payload and secret stored in clear is written back encrypted. With a key configured
    /// a value in clear is refused, so run this once when turning encryption on. Values
    /// already sealed are sealed again with the active key (finishing a rotation).
    Encrypt,
    /// Re-seals every sealed value with the active key (the last one in
    /// storage.encryption_key_file or encryption_key_env), on a stopped broker: after a new
    /// key was added — a rotation, or because the old one has sealed as many values as one
    /// key may — so the older keys can then be removed. Messages are rewritten in the
    /// current format, whose clear fields (topic, QoS, expiry) are authenticated.
    Rekey,
}

/// A `--listen` URL: `SCHEME://HOST:PORT`, the port optional (each transport's usual one),
/// and for `ws`/`wss` an optional path (default `/mqtt`).
struct ListenUrl {
    transport: Transport,
    bind: SocketAddr,
    path: Option<String>,
}

fn parse_listen(url: &str) -> anyhow::Result<ListenUrl> {
    const USAGE: &str = "use tcp://, tls://, ws://, wss:// or quic:// followed by IP:PORT, e.g. quic://127.0.0.1:14567 or ws://127.0.0.1:8083/mqtt";
    let (scheme, rest) = url
        .split_once("://")
        .with_context(|| format!("unsupported listener {url:?}: {USAGE}"))?;
    let transport = Transport::from_scheme(&scheme.to_ascii_lowercase())
        .with_context(|| format!("unsupported listener {url:?}: {USAGE}"))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(rest[i..].to_owned())),
        None => (rest, None),
    };
    if path.is_some() && !transport.is_websocket() {
        bail!("{url:?}: only ws:// and wss:// listeners have a path");
    }
    let bind = host
        .parse::<SocketAddr>()
        .or_else(|_| {
            let ip = host.trim_start_matches('[').trim_end_matches(']');
            ip.parse::<std::net::IpAddr>()
                .map(|ip| SocketAddr::new(ip, transport.default_port()))
        })
        .with_context(|| format!("{url:?} is not SCHEME://IP:PORT: {USAGE}"))?;
    Ok(ListenUrl {
        transport,
        bind,
        path,
    })
}

fn build_config(
    config: Option<PathBuf>,
    listen: Vec<String>,
    data_dir: Option<PathBuf>,
    admin_listen: Option<String>,
) -> anyhow::Result<Config> {
    let from_file = config.is_some();
    let mut cfg = match &config {
        Some(path) => Config::from_file(path)?,
        None => Config::try_out(),
    };
    if !listen.is_empty() {
        // With a file, --listen listeners inherit the first configured listener's access
        // rules; without one, anonymous clients (in tenant `default`) only on loopback.
        let first = cfg.listeners.first().cloned().unwrap_or_default();
        let mut listeners = Vec::new();
        for url in &listen {
            let ListenUrl {
                transport,
                bind,
                path,
            } = parse_listen(url)?;
            let (allow_anonymous, tenant) = if from_file {
                (first.allow_anonymous, first.tenant.clone())
            } else if bind.ip().is_loopback() {
                (true, Some(messs_broker::DEFAULT_TENANT.to_owned()))
            } else {
                (false, None)
            };
            // A TLS-based listener takes its certificate from the configuration's first TLS
            // listener; without a configuration, from the self-signed one (below).
            let tls = match (transport.uses_tls(), from_file) {
                (false, _) | (true, false) => None,
                (true, true) => Some(
                    cfg.listeners
                        .iter()
                        .find_map(|l| l.tls.clone())
                        .with_context(|| format!("--listen {url} needs a certificate: give --config a listener whose [listener.tls] names cert_file and key_file (without --config, messs makes a self-signed one)"))?,
                ),
            };
            let mut websocket = first.websocket.clone();
            if let Some(path) = path {
                websocket.path = path;
            }
            listeners.push(ListenerConfig {
                bind,
                transport,
                tls,
                websocket,
                quic: first.quic.clone(),
                allow_anonymous,
                tenant,
                ..ListenerConfig::default()
            });
        }
        cfg.listeners = listeners;
    }
    if let Some(dir) = data_dir {
        cfg.storage.data_dir = dir;
    }
    if !from_file {
        self_signed_where_needed(&mut cfg)?;
    }
    match admin_listen.as_deref() {
        None => {}
        Some("off") => cfg.admin.enabled = false,
        Some(addr) => {
            cfg.admin.enabled = true;
            cfg.admin.bind = addr.parse().with_context(|| {
                format!("--admin-listen {addr:?} is not HOST:PORT (e.g. 127.0.0.1:8080) or off")
            })?;
        }
    }
    cfg.validate()?;
    Ok(cfg)
}

/// Without a configuration file, a TLS, WSS or QUIC listener gets the data directory's
/// self-signed certificate (made on first use), so every transport can be tried with one
/// command. Its fingerprint is logged for clients to pin.
fn self_signed_where_needed(cfg: &mut Config) -> anyhow::Result<()> {
    if !cfg
        .listeners
        .iter()
        .any(|l| l.transport.uses_tls() && l.tls.is_none())
    {
        return Ok(());
    }
    let cert = messs_broker::self_signed::ensure(&cfg.storage.data_dir)
        .context("cannot make a self-signed certificate in the data directory (use --data-dir, or --config with [listener.tls])")?;
    tracing::warn!(
        cert = %cert.tls.cert_file.display(),
        sha256 = %cert.fingerprint,
        created = cert.created,
        "TLS, WSS and QUIC listeners use a self-signed certificate (for trying messs out; configure [listener.tls] for production)"
    );
    for l in &mut cfg.listeners {
        if l.transport.uses_tls() && l.tls.is_none() {
            l.tls = Some(cert.tls.clone());
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received"),
        _ = term => tracing::info!("SIGTERM received"),
    }
}

/// On SIGHUP: re-reads TLS certificates (live connections keep theirs) and, with a
/// configuration file, its `[rate_limits]`, `[bans]` and `[flapping]` (applied to live
/// connections too). Other
/// sections take a restart; a file that does not parse changes nothing.
async fn reload_on_sighup(handle: messs_broker::BrokerHandle, config: Option<PathBuf>) {
    #[cfg(unix)]
    {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP");
                return;
            }
        };
        while hup.recv().await.is_some() {
            match handle.reload_tls() {
                Ok(n) => tracing::info!(listeners = n, "SIGHUP: TLS certificates reloaded"),
                Err(e) => tracing::error!(error = %e, "SIGHUP: TLS reload failed"),
            }
            let Some(path) = &config else { continue };
            match Config::from_file(path)
                .map_err(anyhow::Error::from)
                .and_then(|c| handle.reload_limits(&c).map_err(Into::into))
            {
                Ok(()) => {
                    tracing::info!("SIGHUP: rate limits, bans and flapping settings reloaded")
                }
                Err(e) => tracing::error!(error = %e, "SIGHUP: configuration not reloaded"),
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (handle, config);
}

fn main() -> anyhow::Result<()> {
    // Before the runtime starts any thread: every file and directory the broker makes is
    // its user's alone (tests/crash.rs checks a running broker's data directory).
    messs_broker::restrict_new_files();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config,
            listen,
            data_dir,
            admin_listen,
            recover_wal,
        } => {
            let mut cfg = build_config(config.clone(), listen, data_dir, admin_listen)?;
            cfg.storage.recover_wal = recover_wal;
            let dir = cfg.storage.data_dir.display().to_string();
            let admin = cfg.admin.clone();
            let broker = Broker::bind(cfg).await.map_err(|e| {
                // A hint only where it fits: RocksDB's lock file means another process.
                let hint = match &e {
                    messs_broker::BrokerError::Storage(s) if s.to_string().contains("lock") => {
                        " (is another messs using it?)"
                    }
                    _ => "",
                };
                anyhow::anyhow!("cannot start with data directory {dir}{hint}: {e}")
            })?;
            let (stop, stopped) = tokio::sync::watch::channel(false);
            if admin.enabled {
                start_admin(&broker, &admin, config.clone(), stopped).await?;
            }
            tokio::spawn(reload_on_sighup(broker.handle(), config));
            broker
                .run(async move {
                    shutdown_signal().await;
                    let _ = stop.send(true);
                })
                .await?;
            tracing::info!("stopped");
        }
        Command::Storage {
            task,
            config,
            data_dir,
        } => {
            let cfg = build_config(config, Vec::new(), data_dir, None)?;
            let outcome = tokio::task::spawn_blocking(move || storage_task(&cfg, task)).await?;
            return outcome;
        }
        Command::Tenant { cmd, dir } => return registry(dir, RegistryCmd::Tenant(cmd)).await,
        Command::Device { cmd, dir } => return registry(dir, RegistryCmd::Device(cmd)).await,
        Command::Acl { cmd, dir } => return registry(dir, RegistryCmd::Acl(cmd)).await,
        Command::JwtKey { cmd, dir } => return registry(dir, RegistryCmd::JwtKey(cmd)).await,
        Command::Ca { cmd, dir } => return registry(dir, RegistryCmd::Ca(cmd)).await,
    }
    Ok(())
}

/// Creates the first admin account if there is none, binds the admin listener and serves
/// the admin plane until `stopped` turns true.
async fn start_admin(
    broker: &Broker,
    admin: &messs_broker::AdminConfig,
    config: Option<PathBuf>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let handle = broker.handle();
    let password = std::env::var("MESSS_ADMIN_PASSWORD")
        .ok()
        .filter(|p| !p.is_empty());
    // Startup errors go to the operator whole (`?` would print only "internal error").
    let for_operator = |e: messs_admin::AdminError| anyhow::anyhow!("{}", e.for_operator());
    let bootstrapped = messs_admin::bootstrap(&handle, password)
        .await
        .map_err(for_operator)
        .context("setting up the admin plane (messs storage verify checks the store)")?;
    if let Some(generated) = bootstrapped {
        tracing::warn!(
            "created admin account \"admin\" with the one-time password {generated} \
             (shown only now; it must be changed at the first login: see docs/ADMIN.md)"
        );
    }
    let listener = tokio::net::TcpListener::bind(admin.bind)
        .await
        .with_context(|| format!("cannot listen for the admin plane on {} (taken? use --admin-listen HOST:PORT or --admin-listen off)", admin.bind))?;
    let addr = listener.local_addr()?;
    let options = messs_admin::AdminOptions {
        reload: config.map(|path| {
            let handle = handle.clone();
            let reload: messs_admin::Reloader = std::sync::Arc::new(move || {
                let cfg = Config::from_file(&path).map_err(|e| e.to_string())?;
                let tls = handle.reload_tls().map_err(|e| e.to_string())?;
                handle.reload_limits(&cfg).map_err(|e| e.to_string())?;
                Ok(format!(
                    "{tls} TLS listener certificates, [rate_limits], [tenant_limits], [bans] and [flapping] reloaded"
                ))
            });
            reload
        }),
    };
    let prepared = messs_admin::prepare(listener, handle, options).map_err(for_operator)?;
    let scheme = if prepared.is_https() { "https" } else { "http" };
    tracing::info!(%addr, "admin plane on {scheme}://{addr} (API at /api/v1, metrics at /metrics)");
    tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        if let Err(e) = prepared.run(shutdown).await {
            tracing::error!(error = %e, "admin plane stopped");
        }
    });
    Ok(())
}

/// Runs one registry command on the configured data directory (created if missing, so the
/// first tenant can be added before the broker ever ran).
async fn registry(dir: DataDirArgs, cmd: RegistryCmd) -> anyhow::Result<()> {
    let cfg = build_config(dir.config, Vec::new(), dir.data_dir, None)?;
    tokio::task::spawn_blocking(move || {
        let store = open_store(&cfg)?;
        let params = messs_broker::HashParams {
            memory_kib: cfg.auth.argon2_memory_kib,
            iterations: cfg.auth.argon2_iterations,
            parallelism: cfg.auth.argon2_parallelism,
            scram_iterations: cfg.auth.scram_iterations,
        };
        let mut registry = messs_broker::registry::Registry::new(&store, "cli", params);
        registry_cli::run(&mut registry, cmd)
    })
    .await?
}

/// Opens the configured data directory for an operator task.
fn open_store(cfg: &Config) -> anyhow::Result<messs_broker::storage::Store> {
    let dir = &cfg.storage.data_dir;
    messs_broker::open_store(&cfg.storage).with_context(|| {
        format!(
            "cannot open the data directory {} (if a broker is running on it, stop it first, or take an online checkpoint through the broker)",
            dir.display()
        )
    })
}

/// Runs one `messs storage` task on the configured data directory.
fn storage_task(cfg: &Config, task: StorageTask) -> anyhow::Result<()> {
    let dir = &cfg.storage.data_dir;
    if !dir.exists() {
        bail!("data directory {} does not exist", dir.display());
    }
    if let StorageTask::Encrypt | StorageTask::Rekey = task {
        let r = messs_broker::seal_store(&cfg.storage)?;
        println!(
            "sealed {} messages, {} devices, {} JWT keys, {} admin accounts with the active key",
            r.messages, r.devices, r.jwt_keys, r.admins
        );
        return Ok(());
    }
    if let StorageTask::Verify { audit_head } = task {
        return verify(cfg, audit_head.as_deref());
    }
    let store = open_store(cfg)?;
    match task {
        StorageTask::Verify { .. } => {}
        StorageTask::Checkpoint { to } => {
            store.checkpoint(&to)?;
            println!("checkpoint written to {}", to.display());
        }
        StorageTask::Compact => {
            store.compact()?;
            println!("compacted");
        }
        StorageTask::Encrypt | StorageTask::Rekey => {}
    }
    Ok(())
}

/// `messs storage verify`: opens the directory read-only (nothing in it changes, a damaged
/// write-ahead log is reported, never recovered), reads and decodes every record, and
/// checks the audit chain. Exits 1 if anything is wrong.
fn verify(cfg: &Config, audit_head: Option<&str>) -> anyhow::Result<()> {
    let dir = &cfg.storage.data_dir;
    let store = messs_broker::open_store_read_only(&cfg.storage)
        .map_err(|e| anyhow::anyhow!("cannot read the data directory {}: {e}", dir.display()))?;
    let exported = audit_head
        .map(messs_broker::storage::audit::AuditHead::parse)
        .transpose()?;
    let report = store.verify_against(exported.as_ref())?;
    for (cf, n) in &report.records {
        println!("{cf:>10}: {n} records");
    }
    if let Some((cf, error)) = &report.first_bad_record {
        println!("first bad record in {cf}: {error}");
    }
    match &report.audit.broken {
        Some(link) => println!(
            "audit chain: BROKEN at record {}: {}",
            link.seq, link.reason
        ),
        None => println!(
            "audit chain: {} records, intact{}; head {}",
            report.audit.records,
            match report.audit.keyed_from {
                Some(1) => ", keyed".to_owned(),
                Some(n) => format!(", keyed from record {n} (earlier ones hash-linked only)"),
                None => ", NOT keyed (set storage.audit_key_file)".to_owned(),
            },
            report.audit.head.encode()
        ),
    }
    if !report.is_ok() {
        std::process::exit(1);
    }
    println!("ok");
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn listen_urls_name_transport_address_and_path() {
        let u = parse_listen("quic://127.0.0.1").unwrap();
        assert_eq!(
            (u.transport, u.bind.port(), u.path),
            (Transport::Quic, 14567, None)
        );
        let u = parse_listen("wss://127.0.0.1").unwrap();
        assert_eq!((u.transport, u.bind.port()), (Transport::Wss, 8084));
        let u = parse_listen("ws://[::1]:9000/ws").unwrap();
        assert_eq!(u.transport, Transport::Ws);
        assert_eq!(u.bind, "[::1]:9000".parse().unwrap());
        assert_eq!(u.path.as_deref(), Some("/ws"));
        let u = parse_listen("mqtts://127.0.0.1:0").unwrap();
        assert_eq!(u.transport, Transport::Tls);
        for bad in [
            "udp://127.0.0.1:1",
            "tcp://127.0.0.1:1/x",
            "quic://localhost:1",
            "127.0.0.1:1",
        ] {
            assert!(parse_listen(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn self_signed_certificate_only_without_a_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let listen = vec![
            "quic://127.0.0.1:0".to_owned(),
            "tcp://127.0.0.1:0".to_owned(),
        ];
        let cfg = build_config(None, listen, Some(dir.path().into()), Some("off".into())).unwrap();
        let tls = cfg.listeners[0].tls.as_ref().unwrap();
        assert!(
            tls.cert_file.starts_with(dir.path()),
            "{}",
            tls.cert_file.display()
        );
        assert!(cfg.listeners[1].tls.is_none());

        let file = dir.path().join("messs.toml");
        std::fs::write(&file, "[[listener]]\nbind = \"127.0.0.1:0\"\n").unwrap();
        let err = build_config(Some(file), vec!["wss://127.0.0.1:0".into()], None, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs a certificate"), "{err}");
    }
}
