//! messs-admin: the HTTP admin plane over a [`BrokerHandle`].
//!
//! - `/healthz`, `/readyz`, `/metrics`: liveness, readiness, Prometheus (no login: keep the
//!   listener on a trusted network, which is why it binds to loopback by default; the
//!   per-tenant samples of `/metrics` need a bearer token unless configured otherwise);
//! - `/api/v1/...`: the versioned JSON API, described by `/api/v1/openapi.json`. Callers log
//!   in (`auth`), then every handler names what it touches and asks [`rbac`] first.
//!
//! The request path: [`headers`] (security headers, body limit, CORS) → [`principal`]
//! (bearer token → who; audit of every change) → a handler in [`routes`] → the broker
//! handle or the store (blocking calls on the blocking pool).

mod accounts;
mod anon_audit;
mod clock;
mod error;
mod extract;
mod headers;
mod limiter;
mod listen;
mod login_guard;
mod mfa;
mod openapi;
mod page;
mod password;
mod principal;
mod prometheus;
pub mod rbac;
mod routes;
mod secret;
mod tokens;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use messs_broker::{AdminConfig, BrokerHandle};
use messs_storage::Store;

pub use accounts::bootstrap;
pub use error::AdminError;
pub use mfa::code_at as totp_code_at;
pub use routes::route_table;

/// Re-reads the configuration file and applies what can change at runtime (what SIGHUP
/// does); says what it did, or why it could not. The binary provides it: only it knows the
/// file.
pub type Reloader = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

/// What the embedding binary gives the admin plane beyond the broker handle.
#[derive(Clone, Default)]
pub struct AdminOptions {
    /// `POST /api/v1/operations/reload`; `None`: no configuration file to reload.
    pub reload: Option<Reloader>,
}

/// What every handler reads.
pub(crate) struct AppState {
    pub broker: BrokerHandle,
    pub store: Option<Store>,
    pub config: AdminConfig,
    pub keys: tokens::AccessKeys,
    pub logins: limiter::LoginLimiter,
    /// Lockout per (account, source) and the slowing of an account under attack.
    pub guard: login_guard::LoginGuard,
    /// The audit records requests without credentials may write.
    pub anon_audit: anon_audit::AnonBudget,
    /// One password hash or check at a time (argon2 holds ~19 MiB and a core for ~20 ms):
    /// a burst of logins waits here instead of taking every blocking thread.
    pub hashing: tokio::sync::Semaphore,
    pub reload: Option<Reloader>,
}

pub(crate) type Shared = Arc<AppState>;

impl AppState {
    /// The store, or 503 for a broker without one.
    pub fn store(&self) -> Result<Store, AdminError> {
        self.store
            .clone()
            .ok_or(AdminError::Unavailable("this broker runs without a store"))
    }

    /// Runs `f` with the store on the blocking pool.
    pub async fn blocking<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<R, AdminError> + Send + 'static,
    ) -> Result<R, AdminError> {
        let store = self.store()?;
        tokio::task::spawn_blocking(move || f(&store)).await?
    }

    /// The one place for password work (argon2): a login flood from many addresses takes at
    /// most one core from the broker, never both.
    pub async fn hashing_permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, AdminError> {
        self.hashing
            .acquire()
            .await
            .map_err(|_| AdminError::Unavailable("shutting down"))
    }

    /// Runs password work (argon2) on the blocking pool, one at a time.
    pub async fn hashing<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<R, AdminError> + Send + 'static,
    ) -> Result<R, AdminError> {
        let _permit = self.hashing_permit().await?;
        self.blocking(f).await
    }

    /// Appends an audit record as `actor` (not awaited: the writer makes it durable with
    /// the next batch). For authenticated callers; a request without credentials goes
    /// through [`AppState::audit_anonymous`].
    pub fn audit(&self, actor: &str, action: &str, detail: String) {
        let _ = self.append_audit(actor, action, detail);
    }

    fn append_audit(
        &self,
        actor: &str,
        action: &str,
        detail: String,
    ) -> Option<messs_storage::Durable> {
        let store = self.store.as_ref()?;
        let event = messs_storage::audit::AuditEvent {
            time_ms: clock::unix_ms(),
            // The admin plane's records are the operator's: the broker-wide policy keeps them.
            tenant: None,
            actor: actor.to_owned(),
            action: action.to_owned(),
            detail,
        };
        // What an authenticated operator did is written from the reserved margin of a full
        // disk; what anonymous callers cause is bookkeeping (and budgeted).
        let appended = if actor == "anonymous" || actor == "broker" {
            store.append_audit(&event)
        } else {
            store.append_operator_audit(&event)
        };
        match appended {
            Ok(durable) => Some(durable),
            Err(e) => {
                tracing::warn!(error = %e, action, "audit record not written");
                None
            }
        }
    }

    /// Audits `event` of a request without credentials as `anonymous`, within the budget
    /// of `[admin] anonymous_audit_per_minute`: beyond it, the event is only counted (see
    /// [`anon_audit`]). `detail` is made only if the record is written; it must show
    /// what the caller sent only through [`anon_audit::clip`].
    pub fn audit_anonymous(
        &self,
        event: anon_audit::AnonEvent,
        action: &str,
        detail: impl FnOnce() -> String,
    ) {
        let admission = self
            .anon_audit
            .admit(event, std::time::Instant::now(), clock::unix_ms());
        if let Some(summary) = admission.summary {
            self.audit("anonymous", SUPPRESSED, summary);
        }
        if admission.record {
            self.audit("anonymous", action, detail());
        }
    }

    /// Writes the summary of suppressed anonymous events: with `force` whenever there is
    /// one (before the log is read), else only when it is due. Returns once it is durable,
    /// so a read that follows sees it.
    pub async fn flush_anonymous(&self, force: bool) {
        let admin = self.anon_audit.flush(std::time::Instant::now(), force);
        let admin = admin.map(|s| ("anonymous", SUPPRESSED, s));
        // The MQTT port's refused logins have a budget of their own: the same holds.
        let mqtt = self.broker.take_refusal_summary(force);
        let mqtt = mqtt.map(|s| ("broker", "auth.audit.suppressed", s));
        for (actor, action, summary) in admin.into_iter().chain(mqtt) {
            if let Some(durable) = self.append_audit(actor, action, summary) {
                if let Err(e) = durable.await {
                    tracing::warn!(error = %e, "audit summary not durable");
                }
            }
        }
    }
}

/// The action of the record that sums up suppressed anonymous events.
const SUPPRESSED: &str = "admin.audit.suppressed";

/// How often a due summary of suppressed anonymous events is looked for, when no request
/// comes to write it.
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Writes due summaries while the state lives (it holds only a weak reference, so it
/// ends with the router). Needs a Tokio runtime; without one, summaries are written by
/// the next anonymous event or read of the log.
fn spawn_flusher(state: &Shared) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let weak = Arc::downgrade(state);
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(state) = weak.upgrade() else { return };
            state.flush_anonymous(false).await;
        }
    });
}

/// The admin plane's routes over `broker`, configured by its `[admin]` section.
pub fn app(broker: BrokerHandle) -> Result<Router, AdminError> {
    app_with(broker, AdminOptions::default())
}

/// [`app`] with the binary's extras.
pub fn app_with(broker: BrokerHandle, options: AdminOptions) -> Result<Router, AdminError> {
    let config = broker.config().admin.clone();
    let state = Arc::new(AppState {
        store: broker.store(),
        keys: tokens::AccessKeys::generate()?,
        logins: limiter::LoginLimiter::new(
            config.login_attempts_per_minute,
            config.max_tracked_addresses,
        ),
        guard: login_guard::LoginGuard::new(login_guard::GuardSettings::from_config(&config)),
        anon_audit: anon_audit::AnonBudget::new(
            config.anonymous_audit_per_minute,
            std::time::Instant::now(),
        ),
        hashing: tokio::sync::Semaphore::new(1),
        reload: options.reload,
        broker,
        config,
    });
    spawn_flusher(&state);
    Ok(headers::wrap(routes::router(state.clone()), &state.config))
}

/// The admin plane ready to serve: its routes built and, for HTTPS, its certificate read,
/// so a bad `[admin]` setting fails at start rather than in a background task.
pub struct Prepared {
    listener: tokio::net::TcpListener,
    app: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    max_connections: usize,
    idle: std::time::Duration,
}

/// Prepares [`app_with`] on `listener`: HTTPS (TLS 1.3) when `[admin]` names a certificate
/// and key, plain HTTP otherwise.
pub fn prepare(
    listener: tokio::net::TcpListener,
    broker: BrokerHandle,
    options: AdminOptions,
) -> Result<Prepared, AdminError> {
    let admin = &broker.config().admin;
    let tls = match (&admin.cert_file, &admin.key_file) {
        (Some(cert), Some(key)) => Some(
            messs_broker::https_acceptor(cert, key)
                .map_err(|e| AdminError::BadRequest(format!("[admin] {e}")))?,
        ),
        _ => None,
    };
    Ok(Prepared {
        listener,
        max_connections: admin.max_connections,
        idle: std::time::Duration::from_secs(admin.idle_timeout_secs),
        app: app_with(broker.clone(), options)?,
        tls,
    })
}

impl Prepared {
    /// Whether it serves HTTPS.
    pub fn is_https(&self) -> bool {
        self.tls.is_some()
    }

    /// Serves until `shutdown` completes.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), AdminError> {
        let service = self
            .app
            .into_make_service_with_connect_info::<listen::PeerAddr>();
        match self.tls {
            None => axum::serve(
                listen::PlainListener::new(self.listener, self.max_connections, self.idle),
                service,
            )
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(AdminError::internal),
            Some(acceptor) => {
                let listener = listen::HttpsListener::new(
                    self.listener,
                    acceptor,
                    self.max_connections,
                    self.idle,
                )
                .map_err(AdminError::internal)?;
                axum::serve(listener, service)
                    .with_graceful_shutdown(shutdown)
                    .await
                    .map_err(AdminError::internal)
            }
        }
    }
}

/// Serves the admin plane on `listener` until `shutdown` completes ([`prepare`], then
/// [`Prepared::run`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    broker: BrokerHandle,
    options: AdminOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AdminError> {
    prepare(listener, broker, options)?.run(shutdown).await
}
