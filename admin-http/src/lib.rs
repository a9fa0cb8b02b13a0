//! messs-admin: the HTTP admin plane over a [`BrokerHandle`].
//!
//! Built so far: `/healthz` (the process answers), `/readyz` (every listener accepting and
//! the store writing; 503 with the reasons otherwise) and `/metrics` (the broker's figures
//! in the Prometheus text format, collected when scraped). The versioned API, admin
//! accounts, MFA and RBAC come with the rest of the admin-plane issue; `messs serve` starts
//! no admin listener until then.

mod prometheus;

use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use messs_broker::BrokerHandle;

/// What every handler reads.
struct AdminState {
    broker: BrokerHandle,
}

/// The admin plane's routes over `broker`.
pub fn app(broker: BrokerHandle) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(Arc::new(AdminState { broker }))
}

/// Serves [`app`] on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    broker: BrokerHandle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app(broker))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Liveness: the process answers (nothing is checked, so a busy store never fails it).
async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: 200 when every listener accepts and the store writes, else 503; the body
/// says which.
async fn readyz(State(s): State<Arc<AdminState>>) -> impl IntoResponse {
    let r = s.broker.readiness();
    let code = if r.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(r))
}

/// Every metric, in the Prometheus text exposition format 0.0.4.
async fn metrics(State(s): State<Arc<AdminState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, prometheus::CONTENT_TYPE)],
        prometheus::render(&s.broker.metrics()),
    )
}
