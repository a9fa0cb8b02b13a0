//! `/api/v1/admins`: operator accounts (superadmins only; a global viewer may list them).

use crate::extract::{Path, Query};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use messs_storage::admins::AdminRecord;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{AdminError, ApiResult, ErrorBody};
use crate::page::{Page, PageQuery};
use crate::rbac::{Access, Area, Principal, Role};
use crate::{clock, password, Shared};

/// An account as the API shows it (no secrets).
#[derive(Debug, Serialize, ToSchema)]
pub struct AdminView {
    /// Login name.
    pub username: String,
    /// Role.
    pub role: Role,
    /// Tenant of a tenant-scoped role.
    pub tenant: Option<String>,
    /// Whether it can log in.
    pub enabled: bool,
    /// TOTP enrolled.
    pub mfa_enrolled: bool,
    /// Unused recovery codes.
    pub recovery_codes_left: usize,
    /// Must change its password at the next login.
    pub must_change_password: bool,
    /// Always 0: an account is no longer locked as a whole (kept for API clients). See
    /// `locked_sources` and `recent_failures`.
    pub locked_until_ms: u64,
    /// Source addresses (IPv6: /64s) locked out of this account now, after repeated
    /// failures from each; other addresses can still log in.
    pub locked_sources: usize,
    /// Failed logins for this account from all addresses not yet forgotten; past
    /// `[admin] account_slow_after`, its logins are answered late.
    pub recent_failures: u32,
    /// Created (Unix ms).
    pub created_ms: u64,
}

impl AdminView {
    /// The view of `a`, with its lockout state from the login guard.
    fn of(state: &Shared, a: &AdminRecord) -> Self {
        let (locked_sources, recent_failures) =
            state.guard.status(&a.username, std::time::Instant::now());
        AdminView {
            locked_sources,
            recent_failures,
            ..AdminView::from(a)
        }
    }
}

impl From<&AdminRecord> for AdminView {
    fn from(a: &AdminRecord) -> Self {
        AdminView {
            username: a.username.clone(),
            role: Role::parse(&a.role).unwrap_or(Role::Viewer),
            tenant: a.tenant.clone(),
            enabled: a.enabled,
            mfa_enrolled: a.totp_secret.is_some(),
            recovery_codes_left: a.recovery_codes.len(),
            must_change_password: a.must_change_password,
            locked_until_ms: 0,
            locked_sources: 0,
            recent_failures: 0,
            created_ms: a.created_ms,
        }
    }
}

/// A new account. Its password is set by the creator and must be changed at first login.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAdmin {
    /// Login name: 1 to 64 letters, digits, `.`, `_`, `-`, `@`.
    pub username: String,
    /// Initial password (the policy applies).
    pub password: String,
    /// Role.
    pub role: Role,
    /// Tenant, for a tenant-admin (required) or a tenant viewer.
    pub tenant: Option<String>,
}

/// Changes to an account; absent fields stay.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminChange {
    /// New role (with `tenant` when it needs one).
    pub role: Option<Role>,
    /// New tenant (`role` must be given too).
    pub tenant: Option<String>,
    /// Enable or disable; disabling ends its logins.
    pub enabled: Option<bool>,
    /// Remove its TOTP (it must enrol again) and recovery codes.
    pub reset_mfa: Option<bool>,
    /// Set a new password it must change at the next login; ends its logins.
    pub password: Option<String>,
    /// Lift every lockout of the account (of each source locked out of it) and forget
    /// its failed logins, which ends its slowing.
    pub unlock: Option<bool>,
}

/// List accounts.
#[utoipa::path(get, path = "/api/v1/admins", tag = "admins", params(PageQuery),
    responses((status = 200, body = Page<AdminView>), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_admins(
    State(state): State<Shared>,
    p: Principal,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<Page<AdminView>>> {
    p.allow(Area::Admins, Access::Read, None)?;
    let all = state.blocking(|s| Ok(s.admins()?)).await?;
    let views = all.iter().map(|a| AdminView::of(&state, a)).collect();
    Ok(Json(Page::of(views, &q, |a: &AdminView| {
        a.username.clone()
    })?))
}

/// Create an account.
#[utoipa::path(post, path = "/api/v1/admins", tag = "admins", request_body = NewAdmin,
    responses((status = 201, body = AdminView), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_admin(
    State(state): State<Shared>,
    p: Principal,
    crate::extract::Json(req): crate::extract::Json<NewAdmin>,
) -> ApiResult<(StatusCode, Json<AdminView>)> {
    p.allow(Area::Admins, Access::Write, None)?;
    req.role.check_tenant(req.tenant.as_deref())?;
    messs_storage::admins::validate_admin_name(&req.username)?;
    password::check_policy(&req.username, &req.password)?;
    let params = state.broker.hash_params();
    let record = state
        .hashing(move |s| {
            if let Some(t) = &req.tenant {
                s.tenant(t)?
                    .ok_or_else(|| AdminError::BadRequest(format!("no tenant {t:?}")))?;
            }
            let record = AdminRecord {
                username: req.username.clone(),
                role: req.role.as_str().into(),
                tenant: req.tenant.clone(),
                password_hash: password::hash(&req.password, params)?,
                must_change_password: true,
                enabled: true,
                created_ms: clock::unix_ms(),
                ..AdminRecord::default()
            };
            s.create_admin(&record).map_err(|e| match e {
                messs_storage::StorageError::Invalid(m) if m.contains("exists") => {
                    AdminError::Conflict(m)
                }
                e => e.into(),
            })?;
            Ok(record)
        })
        .await?;
    Ok((StatusCode::CREATED, Json(AdminView::of(&state, &record))))
}

/// One account.
#[utoipa::path(get, path = "/api/v1/admins/{username}", tag = "admins",
    params(("username" = String, Path, description = "account name")),
    responses((status = 200, body = AdminView), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_admin(
    State(state): State<Shared>,
    p: Principal,
    Path(username): Path<String>,
) -> ApiResult<Json<AdminView>> {
    p.allow(Area::Admins, Access::Read, None)?;
    let a = state
        .blocking(move |s| {
            s.admin(&username)
                .ok()
                .flatten()
                .ok_or_else(|| AdminError::NotFound(format!("admin {username:?}")))
        })
        .await?;
    Ok(Json(AdminView::of(&state, &a)))
}

/// Change an account: role, tenant, enabled, MFA reset, password reset, unlock.
#[utoipa::path(patch, path = "/api/v1/admins/{username}", tag = "admins", request_body = AdminChange,
    params(("username" = String, Path, description = "account name")),
    responses((status = 200, body = AdminView), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn update_admin(
    State(state): State<Shared>,
    p: Principal,
    Path(username): Path<String>,
    crate::extract::Json(req): crate::extract::Json<AdminChange>,
) -> ApiResult<Json<AdminView>> {
    p.allow(Area::Admins, Access::Write, None)?;
    if req.tenant.is_some() && req.role.is_none() {
        return Err(AdminError::BadRequest(
            "give the role with the tenant".into(),
        ));
    }
    if let Some(role) = req.role {
        role.check_tenant(req.tenant.as_deref())?;
    }
    if let Some(pw) = &req.password {
        password::check_policy(&username, pw)?;
    }
    if p.account() == Some(username.as_str())
        && (req.role.is_some_and(|r| r != Role::Superadmin) || req.enabled == Some(false))
    {
        return Err(AdminError::BadRequest(
            "you cannot demote or disable yourself (another superadmin can)".into(),
        ));
    }
    let params = state.broker.hash_params();
    let req_unlock = req.unlock == Some(true);
    let a = state
        .hashing(move |s| {
            if let Some(t) = &req.tenant {
                s.tenant(t)?
                    .ok_or_else(|| AdminError::BadRequest(format!("no tenant {t:?}")))?;
            }
            let new_hash = match &req.password {
                Some(pw) => Some(password::hash(pw, params)?),
                None => None,
            };
            let ends_logins = new_hash.is_some() || req.enabled == Some(false);
            let a = s.update_admin(&username, |a| {
                if let Some(role) = req.role {
                    a.role = role.as_str().into();
                    a.tenant = req.tenant.clone();
                }
                if let Some(e) = req.enabled {
                    a.enabled = e;
                }
                if req.reset_mfa == Some(true) {
                    a.totp_secret = None;
                    a.totp_pending = None;
                    a.recovery_codes.clear();
                }
                if let Some(h) = new_hash {
                    let old = std::mem::replace(&mut a.password_hash, h);
                    a.password_history.insert(0, old);
                    a.password_history.truncate(password::HISTORY - 1);
                    a.must_change_password = true;
                }
                if req.unlock == Some(true) {
                    // No longer used (login_guard.rs); cleared so an old record is tidy.
                    a.locked_until_ms = 0;
                    a.failed_logins = 0;
                }
                Ok((a.clone(), true))
            })?;
            if ends_logins {
                s.delete_refresh_families(&username)?;
            }
            Ok(a)
        })
        .await?;
    if req_unlock {
        state.guard.unlock(&a.username);
    }
    Ok(Json(AdminView::of(&state, &a)))
}

/// Delete an account (not your own).
#[utoipa::path(delete, path = "/api/v1/admins/{username}", tag = "admins",
    params(("username" = String, Path, description = "account name")),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete_admin(
    State(state): State<Shared>,
    p: Principal,
    Path(username): Path<String>,
) -> ApiResult<StatusCode> {
    p.allow(Area::Admins, Access::Write, None)?;
    if p.account() == Some(username.as_str()) {
        return Err(AdminError::BadRequest("you cannot delete yourself".into()));
    }
    let gone = state
        .blocking(move |s| Ok(s.delete_admin(&username)?))
        .await?;
    if gone {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(AdminError::NotFound("admin".into()))
    }
}
