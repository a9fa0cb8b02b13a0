//! A tenant's messages: retained messages (list, delete), publishing one through the
//! choke point, stored telemetry, and a session's subscriptions. Payloads travel as
//! base64 (they are bytes), with the UTF-8 text beside it when they are text.

use crate::extract::{Path, Query};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use base64::Engine;
use messs_broker::AdminPublish;
use messs_storage::telemetry::{Cursor, TelemetryQuery};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::tenants::{existing_tenant, tenant_access};
use crate::error::{AdminError, ApiResult, ErrorBody};
use crate::page::Page;
use crate::rbac::{Access, Area, Principal};
use crate::Shared;

/// Largest payload shown inline in a list; longer ones are listed by length only.
const SHOWN_PAYLOAD: usize = 64 * 1024;
/// Largest payload the API publishes.
const MAX_PUBLISH: usize = 128 * 1024;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A message as listed.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageView {
    /// Topic.
    pub topic: String,
    /// QoS it was published with.
    pub qos: u8,
    /// Payload length.
    pub payload_len: usize,
    /// Payload, base64 (null when kept on disk only or over 64 KiB).
    pub payload_base64: Option<String>,
    /// Payload as text, when it is UTF-8 and shown.
    pub payload_text: Option<String>,
    /// When it arrived (telemetry) or expires (retained), Unix ms.
    pub time_ms: Option<u64>,
}

fn message_view(
    topic: String,
    qos: u8,
    len: usize,
    payload: Option<&[u8]>,
    time_ms: Option<u64>,
) -> MessageView {
    let shown = payload.filter(|p| p.len() <= SHOWN_PAYLOAD);
    MessageView {
        topic,
        qos,
        payload_len: len,
        payload_base64: shown.map(b64),
        payload_text: shown.and_then(|p| std::str::from_utf8(p).ok().map(str::to_owned)),
        time_ms,
    }
}

/// Which retained messages.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RetainedQuery {
    /// Topic filter (default `#`).
    pub filter: Option<String>,
    /// Items per page (1..=1000; default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// Continue after this topic (the `next` of the previous page).
    pub after: Option<String>,
}

/// A tenant's retained messages.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/retained", tag = "retained",
    params(("tenant" = String, Path, description = "tenant id"), RetainedQuery),
    responses((status = 200, body = Page<MessageView>), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_retained(
    State(state): State<Shared>,
    p: Principal,
    Path(tenant): Path<String>,
    Query(q): Query<RetainedQuery>,
) -> ApiResult<Json<Page<MessageView>>> {
    tenant_access(&p, Area::Retained, Access::Read, &tenant)?;
    existing_tenant(&state, &tenant).await?;
    let limit = crate::page::limit(q.limit)?;
    let filter = q.filter.unwrap_or_else(|| "#".into());
    let (items, next) = state
        .broker
        .retained(&tenant, &filter, q.after.as_deref(), limit)?;
    let items = items
        .into_iter()
        .map(|m| {
            message_view(
                m.topic,
                m.qos,
                m.payload_len,
                m.payload.as_deref(),
                m.expires_ms,
            )
        })
        .collect();
    Ok(Json(Page { items, next }))
}

/// Which retained message.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TopicQuery {
    /// Topic name.
    pub topic: String,
}

/// Delete a retained message (subscribers get nothing).
#[utoipa::path(delete, path = "/api/v1/tenants/{tenant}/retained", tag = "retained",
    params(("tenant" = String, Path, description = "tenant id"), TopicQuery),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete_retained(
    State(state): State<Shared>,
    p: Principal,
    Path(tenant): Path<String>,
    Query(q): Query<TopicQuery>,
) -> ApiResult<StatusCode> {
    tenant_access(&p, Area::Retained, Access::Write, &tenant)?;
    existing_tenant(&state, &tenant).await?;
    if state.broker.delete_retained(&tenant, &q.topic)? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(AdminError::NotFound("retained message".into()))
    }
}

/// A message to publish.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    /// Topic name.
    pub topic: String,
    /// Payload as text (or give `payload_base64`).
    pub payload: Option<String>,
    /// Payload as base64.
    pub payload_base64: Option<String>,
    /// 0, 1 or 2 (default 0).
    #[serde(default)]
    #[schema(maximum = 2)]
    pub qos: u8,
    /// Retain it.
    #[serde(default)]
    pub retain: bool,
    /// Publish under this device's ACL; absent: under an anonymous client's rules.
    pub as_device: Option<String>,
}

/// What a publish reached.
#[derive(Debug, Serialize, ToSchema)]
pub struct Published {
    /// Sessions it was queued for.
    pub matched: usize,
}

/// Publish a message in the tenant, under its ACL.
#[utoipa::path(post, path = "/api/v1/tenants/{tenant}/publish", tag = "publish",
    request_body = PublishRequest,
    params(("tenant" = String, Path, description = "tenant id")),
    responses((status = 200, body = Published), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn publish(
    State(state): State<Shared>,
    p: Principal,
    Path(tenant): Path<String>,
    crate::extract::Json(req): crate::extract::Json<PublishRequest>,
) -> ApiResult<Json<Published>> {
    tenant_access(&p, Area::Publish, Access::Write, &tenant)?;
    existing_tenant(&state, &tenant).await?;
    let payload = match (req.payload, req.payload_base64) {
        (Some(text), None) => text.into_bytes(),
        (None, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b.trim())
            .map_err(|_| AdminError::BadRequest("payload_base64 is not base64".into()))?,
        (None, None) => Vec::new(),
        (Some(_), Some(_)) => {
            return Err(AdminError::BadRequest(
                "give payload or payload_base64, not both".into(),
            ))
        }
    };
    if payload.len() > MAX_PUBLISH {
        return Err(AdminError::BadRequest(format!(
            "payload: at most {MAX_PUBLISH} bytes"
        )));
    }
    let matched = state
        .broker
        .publish_as_admin(AdminPublish {
            tenant,
            topic: req.topic,
            payload: bytes::Bytes::from(payload),
            qos: req.qos,
            retain: req.retain,
            as_device: req.as_device,
        })
        .await?;
    Ok(Json(Published { matched }))
}

/// Which telemetry.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TelemetryParams {
    /// Topic filter (default `#`).
    pub filter: Option<String>,
    /// From (Unix ms, inclusive; default 0).
    #[param(minimum = 0)]
    pub from_ms: Option<i64>,
    /// To (Unix ms, exclusive; default now + 1 s).
    #[param(minimum = 0)]
    pub to_ms: Option<i64>,
    /// Records per page (1..=1000; default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// Continue after this cursor (the `next` of the previous page).
    pub after: Option<String>,
}

/// Stored telemetry of the tenant, oldest first.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/telemetry", tag = "telemetry",
    params(("tenant" = String, Path, description = "tenant id"), TelemetryParams),
    responses((status = 200, body = Page<MessageView>), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn query_telemetry(
    State(state): State<Shared>,
    p: Principal,
    Path(tenant): Path<String>,
    Query(q): Query<TelemetryParams>,
) -> ApiResult<Json<Page<MessageView>>> {
    tenant_access(&p, Area::Telemetry, Access::Read, &tenant)?;
    existing_tenant(&state, &tenant).await?;
    let filter = q.filter.unwrap_or_else(|| "#".into());
    messs_codec::TopicFilter::new(&filter)
        .map_err(|e| AdminError::BadRequest(format!("filter: {e}")))?;
    let cursor = match q.after {
        Some(c) => Some(
            c.parse::<Cursor>()
                .map_err(|_| AdminError::BadRequest("after: not a cursor of this API".into()))?,
        ),
        None => None,
    };
    let time = |v: Option<i64>, name: &str| match v {
        Some(n) if n < 0 => Err(AdminError::BadRequest(format!("{name}: at least 0"))),
        v => Ok(v.map(|n| n as u64)),
    };
    let (from_ms, to_ms) = (time(q.from_ms, "from_ms")?, time(q.to_ms, "to_ms")?);
    let query = TelemetryQuery {
        tenant,
        filter,
        from_ms: from_ms.unwrap_or(0),
        to_ms: to_ms.unwrap_or_else(|| crate::clock::unix_ms().saturating_add(1000)),
        limit: crate::page::limit(q.limit)?,
        cursor,
    };
    let page = state
        .blocking(move |s| {
            s.query_telemetry(&query).map_err(|e| match e {
                messs_storage::StorageError::Corrupt { .. } => {
                    AdminError::BadRequest("after: not a cursor of this query".into())
                }
                e => e.into(),
            })
        })
        .await?;
    let items = page
        .records
        .into_iter()
        .map(|r| {
            let m = r.message;
            let len = m.payload.len();
            message_view(m.topic, m.qos, len, Some(&m.payload), Some(r.timestamp_ms))
        })
        .collect();
    Ok(Json(Page {
        items,
        next: page.next.map(|c| c.to_string()),
    }))
}

/// A subscription.
#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionView {
    /// Filter as subscribed (with any `$share/GROUP/` prefix).
    pub filter: String,
    /// Maximum QoS.
    pub qos: u8,
    /// No Local.
    pub no_local: bool,
    /// Retain As Published.
    pub retain_as_published: bool,
    /// Subscription identifier.
    pub subscription_id: Option<u32>,
}

/// A session's subscriptions.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/sessions/{client_id}/subscriptions",
    tag = "sessions",
    params(("tenant" = String, Path, description = "tenant id"),
        ("client_id" = String, Path, description = "client id"), crate::page::PageQuery),
    responses((status = 200, body = Page<SubscriptionView>), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_subscriptions(
    State(state): State<Shared>,
    p: Principal,
    Path((tenant, client_id)): Path<(String, String)>,
    Query(q): Query<crate::page::PageQuery>,
) -> ApiResult<Json<Page<SubscriptionView>>> {
    tenant_access(&p, Area::Sessions, Access::Read, &tenant)?;
    let subs = state
        .broker
        .subscriptions(&tenant, &client_id)
        .ok_or_else(|| AdminError::NotFound(format!("session {client_id:?}")))?;
    let views = subs
        .into_iter()
        .map(|s| SubscriptionView {
            filter: s.filter,
            qos: s.qos,
            no_local: s.no_local,
            retain_as_published: s.retain_as_published,
            subscription_id: s.id,
        })
        .collect();
    Ok(Json(Page::of(views, &q, |s: &SubscriptionView| {
        s.filter.clone()
    })?))
}
