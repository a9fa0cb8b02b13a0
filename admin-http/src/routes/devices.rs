//! `/api/v1/tenants/{tenant}/devices`: a tenant's devices and their credentials. Passwords
//! go in, never out: a device's view says only whether it has one.

use crate::extract::{Path, Query};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use messs_storage::registry::DeviceRecord;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::tenants::{existing_tenant, tenant_access};
use crate::error::{AdminError, ApiResult, ErrorBody};
use crate::page::{Page, PageQuery};
use crate::rbac::{Access, Area, Principal};
use crate::Shared;

/// A device (no secrets).
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceView {
    /// Tenant.
    pub tenant: String,
    /// Username.
    pub username: String,
    /// It has a password (else it logs in with a token or a certificate).
    pub has_password: bool,
    /// It may log in with SCRAM-SHA-256 (a verifier of its password is stored).
    pub scram: bool,
    /// Client ids it may use (`*` wildcard, `%u` = username); null: any.
    pub client_id_pattern: Option<String>,
    /// Groups, for ACL rules.
    pub groups: Vec<String>,
    /// Whether it may connect.
    pub enabled: bool,
    /// Connected clients of this device now.
    pub connected_clients: usize,
    /// Its per-connection limit overrides.
    pub limits: std::collections::BTreeMap<String, u64>,
}

fn view(state: &Shared, d: DeviceRecord) -> DeviceView {
    let connected = state
        .broker
        .clients(Some(&d.tenant))
        .iter()
        .filter(|c| c.username.as_deref() == Some(d.username.as_str()))
        .count();
    DeviceView {
        tenant: d.tenant,
        username: d.username,
        has_password: d.password_hash.is_some(),
        scram: d.scram.is_some(),
        client_id_pattern: d.client_id_pattern,
        groups: d.groups,
        enabled: d.enabled,
        connected_clients: connected,
        limits: d.limits.into_iter().collect(),
    }
}

/// A new device.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDevice {
    /// Username, unique in the tenant (devices log in as `username@tenant`).
    pub username: String,
    /// Password (argon2id-hashed before it is stored); absent: token or certificate only.
    pub password: Option<String>,
    /// Client ids it may use.
    pub client_id_pattern: Option<String>,
    /// Groups.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Also let it log in with SCRAM-SHA-256 (needs `password`): a PBKDF2 verifier of the
    /// password is stored beside its argon2 hash, a weaker target if the store is stolen.
    #[serde(default)]
    pub scram: bool,
}

/// Changes to a device; absent fields stay.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceChange {
    /// Enable or disable (disabling disconnects it).
    pub enabled: Option<bool>,
    /// Set or rotate its password (its remembered logins are forgotten).
    pub password: Option<String>,
    /// Remove its password.
    pub remove_password: Option<bool>,
    /// Per-connection limit overrides to set (`messages_per_sec`, `bytes_per_sec`, ...;
    /// see `[rate_limits]`); live connections take them at their next packet.
    pub limits: Option<std::collections::BTreeMap<String, u64>>,
    /// Limit overrides to remove.
    pub unset_limits: Option<Vec<String>>,
    /// true: let it log in with SCRAM-SHA-256 (needs `password` in the same request, whose
    /// verifier is stored); false: remove the verifier (the password stays).
    pub scram: Option<bool>,
}

/// A tenant's devices.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/devices", tag = "devices",
    params(("tenant" = String, Path, description = "tenant id"), PageQuery),
    responses((status = 200, body = Page<DeviceView>), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_devices(
    State(state): State<Shared>,
    p: Principal,
    Path(tenant): Path<String>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<Page<DeviceView>>> {
    tenant_access(&p, Area::Devices, Access::Read, &tenant)?;
    existing_tenant(&state, &tenant).await?;
    let limit = q.limit()?;
    let after = q.after.clone();
    let t = tenant.clone();
    let mut devices = state
        .blocking(move |s| Ok(s.devices(&t, after.as_deref(), limit + 1)?))
        .await?;
    let more = devices.len() > limit;
    devices.truncate(limit);
    let next = more
        .then(|| devices.last().map(|d| d.username.clone()))
        .flatten();
    let items = devices.into_iter().map(|d| view(&state, d)).collect();
    Ok(Json(Page { items, next }))
}

/// Add a device.
#[utoipa::path(post, path = "/api/v1/tenants/{tenant}/devices", tag = "devices",
    request_body = NewDevice,
    params(("tenant" = String, Path, description = "tenant id")),
    responses((status = 201, body = DeviceView), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_device(
    State(state): State<Shared>,
    p: Principal,
    Path(tenant): Path<String>,
    crate::extract::Json(req): crate::extract::Json<NewDevice>,
) -> ApiResult<(StatusCode, Json<DeviceView>)> {
    tenant_access(&p, Area::Devices, Access::Write, &tenant)?;
    existing_tenant(&state, &tenant).await?;
    if req.groups.len() > 64 || req.groups.iter().any(|g| g.is_empty() || g.len() > 128) {
        return Err(AdminError::BadRequest(
            "groups: at most 64, each 1 to 128 bytes".into(),
        ));
    }
    if req.scram && req.password.is_none() {
        return Err(AdminError::BadRequest(
            "scram: needs the device's password".into(),
        ));
    }
    let (t, u) = (tenant.clone(), req.username.clone());
    let _permit = state.hashing_permit().await?;
    state
        .broker
        .registry(&p.name, move |r| {
            r.add_device(
                &t,
                &u,
                req.password.as_deref(),
                req.client_id_pattern.as_deref(),
                &req.groups,
            )?;
            if req.scram {
                r.set_device_scram(&t, &u, req.password.as_deref())?;
            }
            Ok(())
        })
        .await
        .map_err(|e| match AdminError::from(e) {
            AdminError::BadRequest(m) if m.contains("already exists") => AdminError::Conflict(m),
            e => e,
        })?;
    let d = device(&state, &tenant, &req.username).await?;
    Ok((StatusCode::CREATED, Json(view(&state, d))))
}

async fn device(state: &Shared, tenant: &str, username: &str) -> ApiResult<DeviceRecord> {
    let (t, u) = (tenant.to_owned(), username.to_owned());
    state
        .blocking(move |s| {
            s.device(&t, &u)
                .ok()
                .flatten()
                .ok_or_else(|| AdminError::NotFound(format!("device {u:?}")))
        })
        .await
}

/// One device.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/devices/{username}", tag = "devices",
    params(("tenant" = String, Path, description = "tenant id"),
        ("username" = String, Path, description = "device username")),
    responses((status = 200, body = DeviceView), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_device(
    State(state): State<Shared>,
    p: Principal,
    Path((tenant, username)): Path<(String, String)>,
) -> ApiResult<Json<DeviceView>> {
    tenant_access(&p, Area::Devices, Access::Read, &tenant)?;
    let d = device(&state, &tenant, &username).await?;
    Ok(Json(view(&state, d)))
}

/// Change a device: enable or disable it, set, rotate or remove its password.
#[utoipa::path(patch, path = "/api/v1/tenants/{tenant}/devices/{username}", tag = "devices",
    request_body = DeviceChange,
    params(("tenant" = String, Path, description = "tenant id"),
        ("username" = String, Path, description = "device username")),
    responses((status = 200, body = DeviceView), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn update_device(
    State(state): State<Shared>,
    p: Principal,
    Path((tenant, username)): Path<(String, String)>,
    crate::extract::Json(req): crate::extract::Json<DeviceChange>,
) -> ApiResult<Json<DeviceView>> {
    tenant_access(&p, Area::Devices, Access::Write, &tenant)?;
    device(&state, &tenant, &username).await?;
    if req.password.is_some() && req.remove_password == Some(true) {
        return Err(AdminError::BadRequest(
            "password and remove_password contradict each other".into(),
        ));
    }
    if req.scram == Some(true) && req.password.is_none() {
        return Err(AdminError::BadRequest(
            "scram: true needs the device's password in the same request".into(),
        ));
    }
    let (t, u) = (tenant.clone(), username.clone());
    let _permit = state.hashing_permit().await?;
    state
        .broker
        .registry(&p.name, move |r| {
            match (&req.password, req.scram) {
                (Some(pw), Some(true)) => r.set_device_scram(&t, &u, Some(pw))?,
                (Some(pw), _) => r.set_device_password(&t, &u, Some(pw))?,
                (None, _) => {}
            }
            if req.scram == Some(false) {
                r.set_device_scram(&t, &u, None)?;
            }
            if req.remove_password == Some(true) {
                r.set_device_password(&t, &u, None)?;
            }
            if let Some(e) = req.enabled {
                r.set_device_enabled(&t, &u, e)?;
            }
            for (name, value) in req.limits.unwrap_or_default() {
                r.set_device_limit(&t, &u, &name, Some(value))?;
            }
            for name in req.unset_limits.unwrap_or_default() {
                r.set_device_limit(&t, &u, &name, None)?;
            }
            Ok(())
        })
        .await?;
    let d = device(&state, &tenant, &username).await?;
    Ok(Json(view(&state, d)))
}

/// Remove a device (its clients are disconnected).
#[utoipa::path(delete, path = "/api/v1/tenants/{tenant}/devices/{username}", tag = "devices",
    params(("tenant" = String, Path, description = "tenant id"),
        ("username" = String, Path, description = "device username")),
    responses((status = 204), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete_device(
    State(state): State<Shared>,
    p: Principal,
    Path((tenant, username)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    tenant_access(&p, Area::Devices, Access::Write, &tenant)?;
    let (t, u) = (tenant.clone(), username.clone());
    let gone = state
        .broker
        .registry(&p.name, move |r| r.remove_device(&t, &u))
        .await?;
    if gone {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(AdminError::NotFound(format!("device {username:?}")))
    }
}
