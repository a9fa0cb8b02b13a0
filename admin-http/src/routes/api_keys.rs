//! `/api/v1/api-keys`: keys for automation. A key has a role, maybe a tenant, scopes and an
//! expiry; it is shown once when made and stored only as a digest. Nobody makes a key
//! with more than they have: a tenant-admin makes keys of its tenant only.

use crate::extract::{Path, Query};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use messs_storage::admins::ApiKeyRecord;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{AdminError, ApiResult, ErrorBody};
use crate::page::{Page, PageQuery};
use crate::rbac::{check_scopes, Access, Area, Principal, Role};
use crate::secret::{hex, sha256, unhex};
use crate::tokens::ApiKeyToken;
use crate::{clock, Shared};

/// Longest lifetime of a key: one year.
pub const MAX_KEY_SECS: u64 = 366 * 24 * 3600;

/// A key as listed (no secret).
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyView {
    /// Id (hex).
    pub id: String,
    /// What it is for.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Tenant.
    pub tenant: Option<String>,
    /// Scopes.
    pub scopes: Vec<String>,
    /// Created (Unix ms).
    pub created_ms: u64,
    /// Expires (Unix ms).
    pub expires_ms: u64,
    /// Who made it.
    pub created_by: String,
}

impl From<&ApiKeyRecord> for ApiKeyView {
    fn from(k: &ApiKeyRecord) -> Self {
        ApiKeyView {
            id: hex(&k.id),
            name: k.name.clone(),
            role: Role::parse(&k.role).unwrap_or(Role::Viewer),
            tenant: k.tenant.clone(),
            scopes: k.scopes.clone(),
            created_ms: k.created_ms,
            expires_ms: k.expires_ms,
            created_by: k.created_by.clone(),
        }
    }
}

/// A new key.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewApiKey {
    /// What it is for (1 to 128 characters).
    pub name: String,
    /// Role.
    pub role: Role,
    /// Tenant (a tenant-admin key needs one).
    pub tenant: Option<String>,
    /// Scopes: `read`, `write`, `AREA:read`, `AREA:write`.
    pub scopes: Vec<String>,
    /// Lifetime in seconds (1 to one year).
    #[schema(minimum = 1, maximum = 31_622_400)]
    pub expires_in_secs: u64,
}

/// A key just made: `key` is shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedApiKey {
    /// The bearer token (`mak.ID.SECRET`).
    pub key: String,
    /// What was stored.
    pub info: ApiKeyView,
}

/// List keys (a tenant-scoped caller sees its tenant's).
#[utoipa::path(get, path = "/api/v1/api-keys", tag = "api-keys", params(PageQuery),
    responses((status = 200, body = Page<ApiKeyView>), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_api_keys(
    State(state): State<Shared>,
    p: Principal,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<Page<ApiKeyView>>> {
    p.allow(Area::ApiKeys, Access::Read, p.tenant.as_deref())?;
    let keys = state.blocking(|s| Ok(s.api_keys()?)).await?;
    let views = keys
        .iter()
        .filter(|k| p.tenant.is_none() || k.tenant == p.tenant)
        .map(ApiKeyView::from)
        .collect();
    Ok(Json(Page::of(views, &q, |k: &ApiKeyView| k.id.clone())?))
}

/// Make a key.
#[utoipa::path(post, path = "/api/v1/api-keys", tag = "api-keys", request_body = NewApiKey,
    responses((status = 201, body = CreatedApiKey), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_api_key(
    State(state): State<Shared>,
    p: Principal,
    crate::extract::Json(req): crate::extract::Json<NewApiKey>,
) -> ApiResult<(StatusCode, Json<CreatedApiKey>)> {
    p.allow(Area::ApiKeys, Access::Write, req.tenant.as_deref())?;
    p.may_grant(req.role, req.tenant.as_deref())?;
    check_scopes(&req.scopes)?;
    if req.name.is_empty() || req.name.chars().count() > 128 {
        return Err(AdminError::BadRequest("name: 1 to 128 characters".into()));
    }
    if req.expires_in_secs == 0 || req.expires_in_secs > MAX_KEY_SECS {
        return Err(AdminError::BadRequest(format!(
            "expires_in_secs: 1 to {MAX_KEY_SECS}"
        )));
    }
    let token = ApiKeyToken::generate()?;
    let now = clock::unix_ms();
    let record = ApiKeyRecord {
        id: token.id,
        name: req.name,
        role: req.role.as_str().into(),
        tenant: req.tenant,
        scopes: req.scopes,
        secret_hash: sha256(&token.secret),
        created_ms: now,
        expires_ms: now + req.expires_in_secs * 1000,
        created_by: p.name.clone(),
    };
    let r = record.clone();
    state
        .blocking(move |s| {
            if let Some(t) = &r.tenant {
                s.tenant(t)?
                    .ok_or_else(|| AdminError::BadRequest(format!("no tenant {t:?}")))?;
            }
            Ok(s.create_api_key(&r)?)
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedApiKey {
            key: token.encode(),
            info: ApiKeyView::from(&record),
        }),
    ))
}

/// Revoke a key.
#[utoipa::path(delete, path = "/api/v1/api-keys/{id}", tag = "api-keys",
    params(("id" = String, Path, description = "key id (hex)")),
    responses((status = 204), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete_api_key(
    State(state): State<Shared>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    // May the caller revoke keys at all (within its own tenant, if it has one)?
    p.allow(Area::ApiKeys, Access::Write, p.tenant.as_deref())?;
    let id = unhex::<16>(&id).ok_or_else(|| AdminError::NotFound("API key".into()))?;
    let record = state
        .blocking(move |s| Ok(s.api_key(&id)?))
        .await?
        .ok_or_else(|| AdminError::NotFound("API key".into()))?;
    if p.allow(Area::ApiKeys, Access::Read, record.tenant.as_deref())
        .is_err()
    {
        // Another tenant's key is not there, as far as this caller can tell.
        return Err(AdminError::NotFound("API key".into()));
    }
    p.allow(Area::ApiKeys, Access::Write, record.tenant.as_deref())?;
    state.blocking(move |s| Ok(s.delete_api_key(&id)?)).await?;
    Ok(StatusCode::NO_CONTENT)
}
