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
use crate::rbac::{check_scopes, scopes_within, Access, Area, Principal, Role};
use crate::secret::{hex, sha256, unhex};
use crate::tokens::ApiKeyToken;
use crate::{clock, Shared};

/// Longest lifetime of a key: one year.
pub const MAX_KEY_SECS: u64 = 366 * 24 * 3600;

/// Generations of a chain of keys: a key made by an account is the first, a key made by
/// it the second, ...; a key of the last generation cannot make keys.
pub const MAX_KEY_GENERATIONS: usize = 4;

/// The generation of `key` (1: made by an account) if every key above it still exists
/// and is unexpired at `now_ms`; `None` if its chain is broken or deeper than
/// [`MAX_KEY_GENERATIONS`]. At most that many reads. Blocking.
pub(crate) fn chain_intact(
    store: &messs_storage::Store,
    key: &ApiKeyRecord,
    now_ms: u64,
) -> Result<Option<usize>, AdminError> {
    let mut generation = 1;
    let mut parent = key.parent;
    while let Some(id) = parent {
        generation += 1;
        if generation > MAX_KEY_GENERATIONS {
            return Ok(None);
        }
        match store.api_key(&id)? {
            Some(p) if p.expires_ms > now_ms => parent = p.parent,
            _ => return Ok(None),
        }
    }
    Ok(Some(generation))
}

/// What the audit record of a new key says: everything granted, never the secret.
fn grant_detail(k: &ApiKeyRecord) -> String {
    format!(
        "key {} {:?}: role {}, tenant {}, scopes [{}], expires {} (Unix ms), parent {}",
        hex(&k.id),
        k.name,
        k.role,
        k.tenant.as_deref().unwrap_or("none"),
        k.scopes.join(", "),
        k.expires_ms,
        k.parent
            .as_ref()
            .map_or_else(|| "none".to_owned(), |p| hex(p)),
    )
}

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
    /// The key that made it (hex); null when an account did. Revoking that key revokes
    /// this one.
    pub parent: Option<String>,
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
            parent: k.parent.as_ref().map(|p| hex(p)),
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

/// Make a key. A key made by a key gets no scope its maker's scopes do not imply, and
/// no later expiry than its maker's.
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
    if let Some(mine) = &p.scopes {
        scopes_within(&req.scopes, mine).map_err(|_| {
            AdminError::Forbidden(
                "a key can only make keys with scopes its own scopes imply (write covers read; read and write cover every AREA:read and AREA:write; AREA:write covers AREA:read)",
            )
        })?;
    }
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
        parent: p.api_key,
    };
    let r = record.clone();
    state
        .blocking(move |s| {
            if let Some(t) = &r.tenant {
                s.tenant(t)?
                    .ok_or_else(|| AdminError::BadRequest(format!("no tenant {t:?}")))?;
            }
            if let Some(id) = &r.parent {
                check_parent(s, id, &r, now)?;
            }
            match s.create_api_key(&r) {
                // The parent was revoked meanwhile: so is the caller.
                Err(messs_storage::StorageError::NotFound(_)) => {
                    Err(AdminError::Unauthenticated("invalid or expired token"))
                }
                other => Ok(other?),
            }
        })
        .await?;
    state.audit(&p.name, "api_key.create", grant_detail(&record));
    Ok((
        StatusCode::CREATED,
        Json(CreatedApiKey {
            key: token.encode(),
            info: ApiKeyView::from(&record),
        }),
    ))
}

/// Checks that the key `parent_id` may make `child`: its chain is short enough and it
/// expires no sooner. Blocking.
fn check_parent(
    s: &messs_storage::Store,
    parent_id: &[u8; 16],
    child: &ApiKeyRecord,
    now: u64,
) -> Result<(), AdminError> {
    const GONE: AdminError = AdminError::Unauthenticated("invalid or expired token");
    let parent = s.api_key(parent_id)?.ok_or(GONE)?;
    let generation = chain_intact(s, &parent, now)?.ok_or(GONE)?;
    if generation >= MAX_KEY_GENERATIONS {
        return Err(AdminError::Forbidden(
            "this key is the last generation of its chain (keys made by keys are at most 4 deep): it cannot make keys",
        ));
    }
    if child.expires_ms > parent.expires_ms {
        let latest = parent.expires_ms.saturating_sub(now) / 1000;
        return Err(AdminError::BadRequest(format!(
            "expires_in_secs: at most {latest} for a key made by this key, which expires at {} (Unix ms); a key cannot outlive the key that makes it",
            parent.expires_ms
        )));
    }
    Ok(())
}

/// Whether the key `id` (`record`) is `ancestor` or was made by it, directly or through
/// keys it made: a key's chain is at most [`MAX_KEY_GENERATIONS`] long, so at most that
/// many reads. Blocking.
fn descends_from(
    s: &messs_storage::Store,
    id: &[u8; 16],
    record: &ApiKeyRecord,
    ancestor: &[u8; 16],
) -> Result<bool, AdminError> {
    if id == ancestor {
        return Ok(true);
    }
    let mut parent = record.parent;
    for _ in 0..MAX_KEY_GENERATIONS {
        match parent {
            Some(p) if &p == ancestor => return Ok(true),
            Some(p) => parent = s.api_key(&p)?.and_then(|k| k.parent),
            None => return Ok(false),
        }
    }
    Ok(false)
}

/// Revoke a key, and every key it made (directly or through keys it made). A key
/// revokes only itself and the keys it made; an account, any key its role reaches.
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
    if let Some(me) = p.api_key {
        let made_by_me = state
            .blocking(move |s| descends_from(s, &id, &record, &me))
            .await?;
        if !made_by_me {
            return Err(AdminError::Forbidden(
                "a key can revoke only itself and the keys it made (directly or through keys it made); an account can revoke any key its role reaches",
            ));
        }
    }
    let revoked = state.blocking(move |s| Ok(s.revoke_api_key(&id)?)).await?;
    let Some((first, below)) = revoked.split_first() else {
        return Err(AdminError::NotFound("API key".into()));
    };
    let below: Vec<String> = below.iter().map(|k| hex(k)).collect();
    let detail = if below.is_empty() {
        format!("key {} revoked; it had made no keys", hex(first))
    } else {
        format!(
            "key {} revoked, and with it the {} keys it made, directly or not: {}",
            hex(first),
            below.len(),
            below.join(", ")
        )
    };
    state.audit(&p.name, "api_key.revoke", detail);
    Ok(StatusCode::NO_CONTENT)
}
