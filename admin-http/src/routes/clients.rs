//! `/api/v1/tenants/{tenant}/clients` and `/sessions`: who is connected (filter, kick), and
//! every session the broker holds for the tenant.

use crate::extract::{Path, Query};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::tenants::tenant_access;
use crate::error::{AdminError, ApiResult, ErrorBody};
use crate::page::{Page, PageQuery};
use crate::rbac::{Access, Area, Principal};
use crate::Shared;

/// A connected client.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClientView {
    /// Tenant.
    pub tenant: String,
    /// Client id.
    pub client_id: String,
    /// Device username (null: anonymous).
    pub username: Option<String>,
    /// Address and port.
    pub address: String,
    /// `3.1`, `3.1.1` or `5`.
    pub protocol: &'static str,
    /// Listener transport.
    pub transport: &'static str,
    /// Connected since (Unix ms).
    pub connected_ms: u64,
    /// Subscriptions.
    pub subscriptions: usize,
    /// Messages queued for it.
    pub queued_messages: usize,
}

/// Filters of the client list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ClientFilter {
    /// Only clients whose id contains this.
    pub client_id: Option<String>,
    /// Only clients of this device.
    pub username: Option<String>,
    /// Only clients from this IP address.
    pub address: Option<String>,
    /// Items per page (1..=1000; default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// Start after this client id.
    pub after: Option<String>,
}

/// A session, online or not.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionView {
    /// Client id.
    pub client_id: String,
    /// A connection is attached.
    pub connected: bool,
    /// Subscriptions.
    pub subscriptions: usize,
    /// Messages queued in memory.
    pub queued_messages: usize,
    /// Bytes queued or in flight.
    pub queued_bytes: usize,
    /// Seconds it outlives its connection.
    pub expiry_interval: u32,
    /// Messages kept in the store for it.
    pub stored_messages: u64,
}

fn protocol_name(level: u8) -> &'static str {
    match level {
        3 => "3.1",
        4 => "3.1.1",
        _ => "5",
    }
}

/// Connected clients of a tenant.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/clients", tag = "clients",
    params(("tenant" = String, Path, description = "tenant id"), ClientFilter),
    responses((status = 200, body = Page<ClientView>), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_clients(
    State(state): State<Shared>,
    p: Principal,
    Path(tenant): Path<String>,
    Query(f): Query<ClientFilter>,
) -> ApiResult<Json<Page<ClientView>>> {
    tenant_access(&p, Area::Clients, Access::Read, &tenant)?;
    let views = state
        .broker
        .clients(Some(&tenant))
        .into_iter()
        .filter(|c| {
            f.client_id
                .as_ref()
                .is_none_or(|id| c.client_id.contains(id.as_str()))
        })
        .filter(|c| f.username.is_none() || c.username == f.username)
        .filter(|c| {
            f.address
                .as_ref()
                .is_none_or(|a| c.peer.ip().to_string() == *a)
        })
        .map(|c| ClientView {
            tenant: c.tenant,
            address: c.peer.to_string(),
            protocol: protocol_name(c.protocol_level),
            transport: c.transport,
            connected_ms: c.connected_ms,
            subscriptions: c.subscriptions,
            queued_messages: c.queued_messages,
            username: c.username,
            client_id: c.client_id,
        })
        .collect();
    let q = PageQuery {
        limit: f.limit,
        after: f.after,
    };
    Ok(Json(Page::of(views, &q, |c: &ClientView| {
        c.client_id.clone()
    })?))
}

/// Disconnect a client (MQTT 5: DISCONNECT 0x98 Administrative action). Its session stays.
#[utoipa::path(delete, path = "/api/v1/tenants/{tenant}/clients/{client_id}", tag = "clients",
    params(("tenant" = String, Path, description = "tenant id"),
        ("client_id" = String, Path, description = "client id")),
    responses((status = 204), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn kick_client(
    State(state): State<Shared>,
    p: Principal,
    Path((tenant, client_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    tenant_access(&p, Area::Clients, Access::Write, &tenant)?;
    if state.broker.kick(&tenant, &client_id) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(AdminError::NotFound(format!(
            "connected client {client_id:?}"
        )))
    }
}

/// Sessions of a tenant.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/sessions", tag = "sessions",
    params(("tenant" = String, Path, description = "tenant id"), PageQuery),
    responses((status = 200, body = Page<SessionView>), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_sessions(
    State(state): State<Shared>,
    p: Principal,
    Path(tenant): Path<String>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<Page<SessionView>>> {
    tenant_access(&p, Area::Sessions, Access::Read, &tenant)?;
    let views = state
        .broker
        .sessions()
        .into_iter()
        .filter(|s| s.tenant == tenant)
        .map(|s| SessionView {
            client_id: s.client_id,
            connected: s.connected,
            subscriptions: s.subscriptions,
            queued_messages: s.queued_messages,
            queued_bytes: s.queued_bytes,
            expiry_interval: s.expiry_interval,
            stored_messages: s.stored_messages,
        })
        .collect();
    Ok(Json(Page::of(views, &q, |s: &SessionView| {
        s.client_id.clone()
    })?))
}
