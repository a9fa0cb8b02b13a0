//! Broker-wide operations: the limits in force, the ban list, configuration reload and
//! backup checkpoints. Superadmins change them; global viewers read them.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{AdminError, ApiResult, ErrorBody};
use crate::rbac::{Access, Area, Principal};
use crate::{clock, Shared};

/// The limits in force: per connection and address (`[rate_limits]`), every tenant's
/// defaults (`[tenant_limits]`), flapping detection (`[flapping]`).
#[derive(Debug, Serialize, ToSchema)]
pub struct LimitsView {
    /// `[rate_limits]`.
    #[schema(value_type = Object)]
    pub rate_limits: serde_json::Value,
    /// `[tenant_limits]` (a tenant's own overrides are on the tenant).
    #[schema(value_type = Object)]
    pub tenant_limits: serde_json::Value,
    /// `[flapping]`.
    #[schema(value_type = Object)]
    pub flapping: serde_json::Value,
}

/// The operator's ban list.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BanList {
    /// Addresses and networks: `192.0.2.7`, `10.0.0.0/8`, `2001:db8::/32`.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Client ids, in every tenant.
    #[serde(default)]
    pub client_ids: Vec<String>,
    /// `NAME@TENANT`.
    #[serde(default)]
    pub usernames: Vec<String>,
}

/// The outcome of an operation.
#[derive(Debug, Serialize, ToSchema)]
pub struct Done {
    /// What was done.
    pub detail: String,
}

fn json<T: Serialize>(v: &T) -> ApiResult<serde_json::Value> {
    serde_json::to_value(v).map_err(AdminError::internal)
}

/// The limits in force.
#[utoipa::path(get, path = "/api/v1/limits", tag = "operations",
    responses((status = 200, body = LimitsView), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_limits(State(state): State<Shared>, p: Principal) -> ApiResult<Json<LimitsView>> {
    p.allow(Area::Limits, Access::Read, None)?;
    let l = state.broker.limits();
    Ok(Json(LimitsView {
        rate_limits: json(&l.0)?,
        tenant_limits: json(&l.1)?,
        flapping: json(&l.2)?,
    }))
}

/// The ban list.
#[utoipa::path(get, path = "/api/v1/bans", tag = "operations",
    responses((status = 200, body = BanList), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_bans(State(state): State<Shared>, p: Principal) -> ApiResult<Json<BanList>> {
    p.allow(Area::Bans, Access::Read, None)?;
    let b = state.broker.bans();
    Ok(Json(BanList {
        addresses: b.addresses,
        client_ids: b.client_ids,
        usernames: b.usernames,
    }))
}

/// Replace the ban list (until the next reload or restart, which read the configuration
/// file's `[bans]`).
#[utoipa::path(put, path = "/api/v1/bans", tag = "operations", request_body = BanList,
    responses((status = 200, body = BanList), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn put_bans(
    State(state): State<Shared>,
    p: Principal,
    crate::extract::Json(req): crate::extract::Json<BanList>,
) -> ApiResult<Json<BanList>> {
    p.allow(Area::Bans, Access::Write, None)?;
    let total = req.addresses.len() + req.client_ids.len() + req.usernames.len();
    if total > 100_000
        || req
            .addresses
            .iter()
            .chain(&req.client_ids)
            .chain(&req.usernames)
            .any(|s| s.len() > 65_535)
    {
        return Err(AdminError::BadRequest(
            "at most 100,000 entries of at most 65,535 bytes".into(),
        ));
    }
    let config = messs_broker::BansConfig {
        addresses: req.addresses.clone(),
        client_ids: req.client_ids.clone(),
        usernames: req.usernames.clone(),
    };
    state
        .broker
        .set_bans(&p.name, config)
        .map_err(|e| AdminError::BadRequest(e.to_string()))?;
    Ok(Json(req))
}

/// Re-read the configuration file: TLS certificates, `[rate_limits]`, `[tenant_limits]`,
/// `[bans]`, `[flapping]` (as SIGHUP does).
#[utoipa::path(post, path = "/api/v1/operations/reload", tag = "operations",
    responses((status = 200, body = Done), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn reload(State(state): State<Shared>, p: Principal) -> ApiResult<Json<Done>> {
    p.allow(Area::Operations, Access::Write, None)?;
    let Some(reload) = state.reload.clone() else {
        return Err(AdminError::BadRequest(
            "this broker was started without --config: there is no file to reload".into(),
        ));
    };
    let detail = tokio::task::spawn_blocking(move || reload())
        .await?
        .map_err(AdminError::BadRequest)?;
    Ok(Json(Done { detail }))
}

/// Take an online backup: a consistent checkpoint of the store in
/// `storage.backup.dir/UNIX_MS`.
#[utoipa::path(post, path = "/api/v1/operations/checkpoint", tag = "operations",
    responses((status = 201, body = Done), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn checkpoint(
    State(state): State<Shared>,
    p: Principal,
) -> ApiResult<(StatusCode, Json<Done>)> {
    p.allow(Area::Operations, Access::Write, None)?;
    let Some(dir) = state.broker.config().storage.backup.dir.clone() else {
        return Err(AdminError::BadRequest(
            "set storage.backup.dir to take checkpoints".into(),
        ));
    };
    let target = dir.join(clock::unix_ms().to_string());
    std::fs::create_dir_all(&dir).map_err(AdminError::internal)?;
    state.broker.checkpoint(target.clone()).await?;
    Ok((
        StatusCode::CREATED,
        Json(Done {
            detail: format!("checkpoint written to {}", target.display()),
        }),
    ))
}
