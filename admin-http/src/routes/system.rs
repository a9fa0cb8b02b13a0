//! Health, readiness, metrics and the OpenAPI document: no login (scrapers and probes
//! carry no tokens); the listener's address is what guards them. Except the per-tenant
//! samples of `/metrics`, whose `tenant` label names every tenant: by default they go
//! only to a bearer token that may read metrics (`Area::Metrics`), for the tenants it
//! may see (`[admin] metrics_tenant_labels`).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use messs_broker::metrics::{MetricKind, Sample};
use messs_broker::MetricsTenantLabels;
use serde::Serialize;
use utoipa::ToSchema;

use crate::principal::MaybePrincipal;
use crate::rbac::{Access, Area, Principal};
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

/// Label names whose values name a tenant: samples with one are shown only to callers
/// who may read that tenant's metrics.
const TENANT_LABELS: [&str; 1] = ["tenant"];

/// Whether `caller` may see `sample` (`public`: tenant labels for everyone).
fn visible(sample: &Sample, caller: Option<&Principal>, public: bool) -> bool {
    let tenant = sample
        .labels
        .iter()
        .find(|(name, _)| TENANT_LABELS.contains(name))
        .map(|(_, value)| value.as_str());
    match tenant {
        None => true,
        Some(_) if public => true,
        Some(t) => caller.is_some_and(|p| p.allow(Area::Metrics, Access::Read, Some(t)).is_ok()),
    }
}

/// Every metric, in the Prometheus text exposition format 0.0.4. Without a bearer token
/// (by default), the per-tenant samples are left out; with one, those of the tenants it
/// may read (an API key needs the scope `metrics:read`, or `read`).
#[utoipa::path(get, path = "/metrics", tag = "system",
    responses((status = 200, description = "Prometheus text format", body = String,
        content_type = "text/plain"), (status = 401, body = crate::error::ErrorBody)))]
pub async fn metrics(
    State(s): State<Shared>,
    MaybePrincipal(caller): MaybePrincipal,
) -> impl IntoResponse {
    let public = s.config.metrics_tenant_labels == MetricsTenantLabels::Public;
    let mut samples = s.broker.metrics();
    samples.retain(|sample| visible(sample, caller.as_ref(), public));
    samples.push(Sample::new(
        "messs_admin_login_addresses_tracked",
        "Client addresses the admin login rate limit tracks ([admin] max_tracked_addresses bounds it).",
        MetricKind::Gauge,
        s.logins.tracked() as u64,
    ));
    for (map, n) in s.guard.sizes() {
        samples.push(
            Sample::new(
                "messs_admin_login_lockout_entries",
                "Entries of the admin login lockout's maps: (account, source) failures, accounts' failures, known (account, source) pairs ([admin] max_tracked_logins bounds each).",
                MetricKind::Gauge,
                n as u64,
            )
            .label("map", map),
        );
    }
    samples.push(Sample::new(
        "messs_admin_login_lockout_refusals_total",
        "Admin logins refused because their source was locked out of the account (audited once per lockout, not one by one).",
        MetricKind::Counter,
        s.guard.refused(),
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
