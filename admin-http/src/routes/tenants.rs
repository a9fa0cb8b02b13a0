//! `/api/v1/tenants`: tenants, their status and limits. Creating one is a superadmin's
//! job; a tenant-scoped caller sees only its own.

use crate::extract::{Path, Query};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use messs_storage::registry::TenantRecord;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{AdminError, ApiResult, ErrorBody};
use crate::page::{Page, PageQuery};
use crate::rbac::{Access, Area, Principal};
use crate::Shared;

/// A tenant.
#[derive(Debug, Serialize, ToSchema)]
pub struct TenantView {
    /// Id: what devices name after `@`.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Whether its devices may connect.
    pub enabled: bool,
    /// Created (Unix ms).
    pub created_ms: u64,
    /// Limits that override `[tenant_limits]`, by name.
    pub limits: std::collections::BTreeMap<String, u64>,
    /// Certificates of its CAs register their device at first login.
    pub cert_auto_register: bool,
    /// Clients connected now.
    pub connected_clients: usize,
}

fn view(t: TenantRecord, connected_clients: usize) -> TenantView {
    TenantView {
        id: t.id,
        name: t.name,
        enabled: t.enabled,
        created_ms: t.created_ms,
        limits: t.limits.into_iter().collect(),
        cert_auto_register: t.cert_auto_register,
        connected_clients,
    }
}

/// A new tenant.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    /// Id: 1 to 64 letters, digits, `-`, `_`, `.`.
    pub id: String,
    /// Display name (default: the id).
    pub name: Option<String>,
}

/// Changes to a tenant; absent fields stay.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantChange {
    /// Enable or disable (disabling disconnects its clients).
    pub enabled: Option<bool>,
    /// Limit overrides to set (name to value); see `[tenant_limits]` for the names.
    pub limits: Option<std::collections::BTreeMap<String, u64>>,
    /// Limit overrides to remove (back to `[tenant_limits]`).
    pub unset_limits: Option<Vec<String>>,
    /// Whether a client certificate of the tenant's CAs whose name is no device yet
    /// registers that device at its first login (default off: refused). The tenant's
    /// own admin may change it (area `keys`).
    pub cert_auto_register: Option<bool>,
}

/// Checks a tenant id from a path and that the caller may touch it; an unknown tenant and
/// another's tenant look the same (404) to a tenant-scoped caller.
pub(crate) fn tenant_access(
    p: &Principal,
    area: Area,
    access: Access,
    tenant: &str,
) -> ApiResult<()> {
    if !p.sees_tenant(tenant) {
        return Err(AdminError::NotFound(format!("tenant {tenant:?}")));
    }
    p.allow(area, access, Some(tenant))
}

/// Fails with 404 unless the tenant exists.
pub(crate) async fn existing_tenant(state: &Shared, tenant: &str) -> ApiResult<TenantRecord> {
    let t = tenant.to_owned();
    state
        .blocking(move |s| {
            s.tenant(&t)
                .ok()
                .flatten()
                .ok_or_else(|| AdminError::NotFound(format!("tenant {t:?}")))
        })
        .await
}

/// List tenants.
#[utoipa::path(get, path = "/api/v1/tenants", tag = "tenants", params(PageQuery),
    responses((status = 200, body = Page<TenantView>), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_tenants(
    State(state): State<Shared>,
    p: Principal,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<Page<TenantView>>> {
    p.allow(Area::Tenants, Access::Read, p.tenant.as_deref())?;
    let all = state.blocking(|s| Ok(s.tenants()?)).await?;
    let clients = state.broker.clients(None);
    let views = all
        .into_iter()
        .filter(|t| p.sees_tenant(&t.id))
        .map(|t| {
            let n = clients.iter().filter(|c| c.tenant == t.id).count();
            view(t, n)
        })
        .collect();
    Ok(Json(Page::of(views, &q, |t: &TenantView| t.id.clone())?))
}

/// Create a tenant.
#[utoipa::path(post, path = "/api/v1/tenants", tag = "tenants", request_body = NewTenant,
    responses((status = 201, body = TenantView), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_tenant(
    State(state): State<Shared>,
    p: Principal,
    crate::extract::Json(req): crate::extract::Json<NewTenant>,
) -> ApiResult<(StatusCode, Json<TenantView>)> {
    p.allow(Area::Tenants, Access::Write, None)?;
    if req.name.as_ref().is_some_and(|n| n.chars().count() > 256) {
        return Err(AdminError::BadRequest(
            "name: at most 256 characters".into(),
        ));
    }
    let id = req.id.clone();
    state
        .broker
        .registry(&p.name, move |r| r.add_tenant(&req.id, req.name.as_deref()))
        .await
        .map_err(|e| match AdminError::from(e) {
            AdminError::BadRequest(m) if m.contains("already exists") => AdminError::Conflict(m),
            e => e,
        })?;
    let t = existing_tenant(&state, &id).await?;
    Ok((StatusCode::CREATED, Json(view(t, 0))))
}

/// One tenant.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}", tag = "tenants",
    params(("tenant" = String, Path, description = "tenant id")),
    responses((status = 200, body = TenantView), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_tenant(
    State(state): State<Shared>,
    p: Principal,
    Path(tenant): Path<String>,
) -> ApiResult<Json<TenantView>> {
    tenant_access(&p, Area::Tenants, Access::Read, &tenant)?;
    let t = existing_tenant(&state, &tenant).await?;
    let n = state.broker.clients(Some(&tenant)).len();
    Ok(Json(view(t, n)))
}

/// Change a tenant: enable/disable (superadmin) and limits.
#[utoipa::path(patch, path = "/api/v1/tenants/{tenant}", tag = "tenants", request_body = TenantChange,
    params(("tenant" = String, Path, description = "tenant id")),
    responses((status = 200, body = TenantView), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn update_tenant(
    State(state): State<Shared>,
    p: Principal,
    Path(tenant): Path<String>,
    crate::extract::Json(req): crate::extract::Json<TenantChange>,
) -> ApiResult<Json<TenantView>> {
    tenant_access(&p, Area::Tenants, Access::Read, &tenant)?;
    // Status and quotas bound what the tenant may use: the operator's call, not the
    // tenant-admin's.
    if req.enabled.is_some() || req.limits.is_some() || req.unset_limits.is_some() {
        p.allow(Area::Limits, Access::Write, None)?;
    }
    if req.cert_auto_register.is_some() {
        p.allow(Area::Keys, Access::Write, Some(&tenant))?;
    }
    existing_tenant(&state, &tenant).await?;
    let t = tenant.clone();
    state
        .broker
        .registry(&p.name, move |r| {
            if let Some(e) = req.enabled {
                r.set_tenant_enabled(&t, e)?;
            }
            if let Some(on) = req.cert_auto_register {
                r.set_cert_auto_register(&t, on)?;
            }
            for (name, value) in req.limits.unwrap_or_default() {
                r.set_tenant_limit(&t, &name, Some(value))?;
            }
            for name in req.unset_limits.unwrap_or_default() {
                r.set_tenant_limit(&t, &name, None)?;
            }
            Ok(())
        })
        .await?;
    let t = existing_tenant(&state, &tenant).await?;
    let n = state.broker.clients(Some(&tenant)).len();
    Ok(Json(view(t, n)))
}
