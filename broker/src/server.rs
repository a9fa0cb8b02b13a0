//! Listeners and the broker's lifetime: bind, accept, run until shutdown, then close every
//! connection with DISCONNECT 0x8B (v5) and wait for them.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;

use crate::config::{Config, ListenerConfig, Transport};
use crate::error::BrokerError;
use crate::persist::Persistence;
use crate::state::BrokerState;
use crate::stats::Stats;

/// How long shutdown waits for connections to close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How often expired retained messages are purged.
const PURGE_INTERVAL: Duration = Duration::from_secs(60);

/// A bound listening socket.
struct Bound {
    socket: Listening,
    config: Arc<ListenerConfig>,
    /// The TLS acceptor of a `tls`, `wss` or `quic` listener.
    tls: Option<Arc<crate::transport::tls::TlsListener>>,
}

/// What a listener accepts on.
enum Listening {
    /// `tcp`, `tls`, `ws` and `wss`.
    Tcp(TcpListener),
    /// `quic`.
    Quic(quinn::Endpoint),
}

/// A socket bound before the store opens (so a taken port fails fast).
enum Socket {
    Tcp(TcpListener),
    Udp(std::net::UdpSocket),
}

impl Listening {
    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            Listening::Tcp(t) => t.local_addr(),
            Listening::Quic(q) => q.local_addr(),
        }
    }
}

/// A broker with its listeners bound, ready to run.
pub struct Broker {
    state: Arc<BrokerState>,
    listeners: Vec<Bound>,
}

impl Broker {
    /// Validates the config and binds every listener (port 0 picks a free port).
    pub async fn bind(config: Config) -> Result<Self, BrokerError> {
        config.validate()?;
        crate::transport::tls::install_default_provider();
        let mut sockets = Vec::new();
        for l in &config.listeners {
            let socket = match l.transport {
                Transport::Quic => crate::transport::quic::bind_udp(l.bind).map(Socket::Udp),
                _ => bind_tcp(l.bind, l.backlog).map(Socket::Tcp),
            }
            .map_err(|source| BrokerError::Bind {
                addr: l.bind,
                source,
            })?;
            sockets.push((socket, Arc::new(l.clone())));
        }
        let storage = config.storage.clone();
        let persist = tokio::task::spawn_blocking(move || Persistence::open(&storage))
            .await
            .map_err(|e| BrokerError::Config(format!("opening the store: {e}")))??;
        let state = Arc::new(BrokerState::new(config, Some(persist))?);
        let loading = state.clone();
        let tenants = tokio::task::spawn_blocking(move || match &loading.persist {
            Some(p) => loading.auth.load(&p.store),
            None => Ok(0),
        })
        .await
        .map_err(|e| BrokerError::Config(format!("loading the registry: {e}")))??;
        tracing::info!(tenants, "registry loaded");
        let mut listeners = Vec::new();
        for (socket, config) in sockets {
            let tls = match &config.tls {
                Some(t) => {
                    let l = Arc::new(crate::transport::tls::TlsListener::new(
                        t,
                        state.auth.client_cas.clone(),
                    )?);
                    state.add_tls_listener(l.clone());
                    Some(l)
                }
                None => None,
            };
            let socket = match (socket, &tls) {
                (Socket::Tcp(tcp), _) => Listening::Tcp(tcp),
                (Socket::Udp(udp), Some(tls)) => Listening::Quic(crate::transport::quic::endpoint(
                    udp,
                    &config,
                    tls,
                    &state.config.limits,
                    state.config.rate_limits.max_handshakes,
                )?),
                (Socket::Udp(_), None) => {
                    return Err(BrokerError::Config(format!(
                        "listener {}: a quic listener needs [listener.tls]",
                        config.bind
                    )))
                }
            };
            listeners.push(Bound {
                socket,
                config,
                tls,
            });
        }
        let restoring = state.clone();
        let report = tokio::task::spawn_blocking(move || restoring.restore())
            .await
            .map_err(|e| BrokerError::Config(format!("restoring from the store: {e}")))??;
        tracing::info!(
            data_dir = %state.config.storage.data_dir.display(),
            durability = ?state.config.storage.durability,
            sessions = report.sessions,
            expired_sessions = report.expired_sessions,
            queued_messages = report.queued_messages,
            retained = report.retained,
            shared_messages = report.shared_messages,
            shared_swept = report.shared_swept,
            dangling_refs = report.dangling_refs,
            "store opened"
        );
        if let Some(p) = &state.persist {
            if let Some((counted, newest)) = p.store.audit_head_restored() {
                tracing::error!(
                    head_counted = counted,
                    newest_record = newest,
                    "the audit log's head was missing or older than its newest record (removed \
                     or rolled back: they are written together); the log goes on after record \
                     {newest}, nothing overwritten. Compare it with a head exported earlier: \
                     messs storage verify --audit-head SEQ:HEX"
                );
                p.audit(
                    "audit.head_restored",
                    format!(
                        "the stored head counted {counted} records but the log holds {newest}: \
                         the head was removed or rolled back; continued after record {newest}"
                    ),
                );
            }
            if let Some(n) = p.store.audit_unsigned_records() {
                tracing::warn!(
                    records = n,
                    "the audit log's head is not signed with the audit key: the key was just \
                     configured, or the log was rewritten without it; records 1..={n} stay \
                     hash-linked only, later ones are keyed"
                );
                p.audit(
                    "audit.key_adopted",
                    format!("records 1..={n} were written without the audit key"),
                );
            }
            p.audit(
                "broker.start",
                format!(
                    "messs {}; restored {} sessions ({} expired while down), {} queued messages, {} retained",
                    env!("CARGO_PKG_VERSION"),
                    report.sessions,
                    report.expired_sessions,
                    report.queued_messages,
                    report.retained
                ),
            );
            let head = p.store.audit_head();
            if p.store.audit_keyed() {
                tracing::info!(audit_head = %head.encode(), "audit log head at start");
            } else {
                tracing::warn!(
                    audit_head = %head.encode(),
                    "the audit log is hash-linked only: set storage.audit_key_file (or an \
                     encryption key) so that rewriting it takes a key the data directory does not hold"
                );
            }
        }
        Ok(Broker { state, listeners })
    }

    /// The addresses actually bound, in config order.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|b| b.socket.local_addr().ok())
            .collect()
    }

    /// The broker's counters.
    pub fn stats(&self) -> Arc<Stats> {
        self.state.stats.clone()
    }

    /// A handle for the admin plane: stats, sessions, kick.
    pub fn handle(&self) -> crate::BrokerHandle {
        crate::BrokerHandle::new(self.state.clone())
    }

    /// Serves until `shutdown` completes, then closes all connections gracefully.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), BrokerError> {
        let state = self.state;
        let permits = Arc::new(Semaphore::new(state.config.limits.max_connections));
        for bound in self.listeners {
            let addr = bound.socket.local_addr()?;
            if bound.config.allow_anonymous {
                tracing::warn!(
                    %addr,
                    tenant = bound.config.tenant.as_deref().unwrap_or(""),
                    "listener allows anonymous clients"
                );
            }
            let transport = bound.config.transport.name();
            tracing::info!(%addr, "listening (mqtt over {transport})");
            match bound.socket {
                Listening::Tcp(tcp) => {
                    let (config, tls) = (bound.config, bound.tls);
                    tokio::spawn(crate::transport::accept::accept_loop(
                        state.clone(),
                        tcp,
                        config,
                        tls,
                        permits.clone(),
                    ));
                }
                Listening::Quic(endpoint) => {
                    let Some(tls) = bound.tls else {
                        continue;
                    };
                    tokio::spawn(crate::transport::quic::accept_loop(
                        state.clone(),
                        endpoint,
                        bound.config,
                        tls,
                        permits.clone(),
                    ));
                }
            }
        }
        let timers = tokio::spawn(state.clone().run_timers(PURGE_INTERVAL));
        let retention = tokio::spawn(run_retention(state.clone()));
        let audit_retention = tokio::spawn(run_audit_retention(state.clone()));
        let backups = tokio::spawn(run_backups(state.clone()));
        let sys_every = state.config.sys.interval_secs;
        let sys = (sys_every > 0).then(|| {
            tokio::spawn(crate::sys::run(
                state.clone(),
                Duration::from_secs(sys_every),
            ))
        });
        shutdown.await;
        tracing::info!("shutting down: closing client connections");
        state.shutdown.cancel();
        state
            .sessions
            .kick_all(messs_codec::ReasonCode::ServerShuttingDown);
        state.tasks.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, state.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("some connections did not close within the grace period");
        }
        timers.abort();
        retention.abort();
        audit_retention.abort();
        backups.abort();
        if let Some(sys) = sys {
            sys.abort();
        }
        if let Some(persist) = &state.persist {
            state.flush_refusal_audit(true);
            persist.audit("broker.stop", "graceful shutdown".into());
            let store = persist.store.clone();
            match tokio::task::spawn_blocking(move || store.flush()).await {
                Ok(Ok(())) => tracing::info!(
                    audit_head = %persist.store.audit_head().encode(),
                    "store flushed; keep the audit head to check the store against later"
                ),
                Ok(Err(e)) => tracing::error!(error = %e, "flushing the store at shutdown failed"),
                Err(e) => tracing::error!(error = %e, "flushing the store at shutdown failed"),
            }
        }
        Ok(())
    }
}

/// Writes a checkpoint into `storage.backup.dir` every `every_secs` and deletes all but the
/// newest `keep`, on the blocking pool.
async fn run_backups(state: Arc<BrokerState>) {
    let (Some(persist), Some(dir)) = (&state.persist, &state.config.storage.backup.dir) else {
        return;
    };
    let backup = &state.config.storage.backup;
    let every = Duration::from_secs(backup.every_secs);
    loop {
        tokio::time::sleep(every).await;
        let store = persist.store.clone();
        let (dir, keep) = (dir.clone(), backup.keep);
        let done = tokio::task::spawn_blocking(move || backup_once(&store, &dir, keep)).await;
        match done {
            Ok(Ok(path)) => {
                tracing::info!(path = %path.display(), "backup checkpoint written");
                persist.audit(
                    "storage.checkpoint",
                    format!("periodic backup to {}", path.display()),
                );
            }
            Ok(Err(e)) => tracing::error!(error = %e, "backup checkpoint failed"),
            Err(e) => tracing::error!(error = %e, "backup checkpoint failed"),
        }
    }
}

/// One checkpoint into `dir`, then the oldest beyond `keep` removed.
fn backup_once(
    store: &messs_storage::Store,
    dir: &std::path::Path,
    keep: usize,
) -> Result<std::path::PathBuf, BrokerError> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(crate::clock::unix_ms().to_string());
    store.checkpoint(&path)?;
    let mut existing: Vec<(u64, std::path::PathBuf)> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_str()?.parse::<u64>().ok()?;
            Some((name, e.path()))
        })
        .collect();
    existing.sort();
    let excess = existing.len().saturating_sub(keep);
    for (_, old) in existing.into_iter().take(excess) {
        std::fs::remove_dir_all(&old)?;
    }
    Ok(path)
}

/// Applies telemetry retention every `storage.telemetry.retention_interval_secs`, on the
/// blocking pool.
async fn run_retention(state: Arc<BrokerState>) {
    let Some(persist) = &state.persist else {
        return;
    };
    let every = Duration::from_secs(state.config.storage.telemetry.retention_interval_secs);
    loop {
        tokio::time::sleep(every).await;
        let store = persist.store.clone();
        let policy = persist.retention;
        let now = crate::clock::unix_ms();
        match tokio::task::spawn_blocking(move || store.apply_telemetry_retention(&policy, now))
            .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "telemetry retention failed"),
            Err(e) => tracing::warn!(error = %e, "telemetry retention failed"),
        }
    }
}

/// Applies the audit log's retention every `storage.audit.retention_interval_secs` (the
/// first run a minute after the start), on the blocking pool: the broker-wide policy, then
/// each tenant's own (`[tenant_limits]` `audit_max_age_days`, `audit_max_bytes`, as its
/// registry record may override them). What it dropped is itself recorded in the log.
async fn run_audit_retention(state: Arc<BrokerState>) {
    let Some(persist) = &state.persist else {
        return;
    };
    let config = &state.config.storage.audit;
    let policy = config.policy();
    let every = Duration::from_secs(config.retention_interval_secs.max(1));
    let mut wait = Duration::from_secs(60).min(every);
    loop {
        tokio::time::sleep(wait).await;
        wait = every;
        let store = persist.store.clone();
        let now = crate::clock::unix_ms();
        let tenants = state.auth.tenants.clone();
        // A pass over every tenant's records only when some tenant has a retention of its
        // own (a tenant's registry overrides, or `[tenant_limits]` for all).
        let own = tenants.defaults().audit_retention() != Default::default()
            || tenants
                .all()
                .iter()
                .any(|t| t.limits().audit_retention() != Default::default());
        let per_tenant = move |name: &str| match tenants.get(name) {
            Some(t) => t.limits().audit_retention(),
            None => tenants.defaults().audit_retention(),
        };
        let run = move || {
            let per_tenant: &dyn Fn(&str) -> messs_storage::audit::TenantAuditRetention =
                &per_tenant;
            store.prune_audit(&policy, own.then_some(per_tenant), now)
        };
        match tokio::task::spawn_blocking(run).await {
            Ok(Ok(p)) if p.records > 0 || p.redacted > 0 => {
                let stats = &state.stats;
                stats
                    .audit_dropped
                    .fetch_add(p.records, std::sync::atomic::Ordering::Relaxed);
                stats
                    .audit_redacted
                    .fetch_add(p.redacted, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(records = p.records, bytes = p.bytes, first_kept = ?p.first_kept, redacted = p.redacted, "audit log retention");
                persist.audit(
                    "audit.retention",
                    format!(
                        "dropped {} records ({} bytes) past the retention policy; the chain \
                         starts at record {}; details of {} records ({} bytes) dropped past \
                         their tenants' retention",
                        p.records,
                        p.bytes,
                        p.first_kept.unwrap_or(1),
                        p.redacted,
                        p.redacted_bytes
                    ),
                );
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "audit retention failed"),
            Err(e) => tracing::warn!(error = %e, "audit retention failed"),
        }
    }
}

/// Binds a TCP listener with an explicit backlog (tokio's `bind` uses a short fixed one).
fn bind_tcp(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}
