//! Health, readiness, metrics and the OpenAPI document: no login (scrapers and probes
//! carry no tokens); the listener's address is what guards them.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use messs_broker::metrics::{MetricKind, Sample};
use serde::Serialize;
use utoipa::ToSchema;

use crate::{prometheus, Shared};

/// What readiness depends on.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReadinessView {
    /// Accept loops running.
    pub listeners_up: usize,
    /// Listeners configured.
    pub listeners_configured: usize,
    /// Whether the store's writes fail (null: no store).
    pub storage_failing: Option<bool>,
}

/// Liveness: the process answers (nothing is checked, so a busy store never fails it).
#[utoipa::path(get, path = "/healthz", tag = "system",
    responses((status = 200, description = "alive", body = String, content_type = "text/plain")))]
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: 200 when every listener accepts and the store writes, else 503.
#[utoipa::path(get, path = "/readyz", tag = "system",
    responses((status = 200, body = ReadinessView), (status = 503, body = ReadinessView)))]
pub async fn readyz(State(s): State<Shared>) -> impl IntoResponse {
    let r = s.broker.readiness();
    let code = if r.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(ReadinessView {
            listeners_up: r.listeners_up,
            listeners_configured: r.listeners_configured,
            storage_failing: r.storage_failing,
        }),
    )
}

/// Every metric, in the Prometheus text exposition format 0.0.4.
#[utoipa::path(get, path = "/metrics", tag = "system",
    responses((status = 200, description = "Prometheus text format", body = String,
        content_type = "text/plain")))]
pub async fn metrics(State(s): State<Shared>) -> impl IntoResponse {
    let mut samples = s.broker.metrics();
    samples.push(Sample::new(
        "messs_admin_login_addresses_tracked",
        "Client addresses the admin login rate limit tracks ([admin] max_tracked_addresses bounds it).",
        MetricKind::Gauge,
        s.logins.tracked() as u64,
    ));
    for (event, n) in s.anon_audit.suppressed() {
        samples.push(
            Sample::new(
                "messs_admin_audit_suppressed_total",
                "Events of requests without credentials not audited one by one ([admin] anonymous_audit_per_minute): counted in admin.audit.suppressed records instead.",
                MetricKind::Counter,
                n,
            )
            .label("event", event.label()),
        );
    }
    (
        [(header::CONTENT_TYPE, prometheus::CONTENT_TYPE)],
        prometheus::render(&samples),
    )
}

/// This API's OpenAPI 3 document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "system",
    responses((status = 200, description = "OpenAPI 3.1 document", body = Object)))]
pub async fn openapi_json() -> impl IntoResponse {
    Json(crate::openapi::document())
}
