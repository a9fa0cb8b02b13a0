//! `/api/v1/auth`: log in (password, then TOTP or a recovery code), refresh, log out,
//! who am I, change my password, enrol TOTP. These handlers do not call `allow`: a
//! restricted account (must change its password, must enrol TOTP) may use them.
//!
//! Login and refresh are called without credentials: what they audit before a login
//! succeeds goes through [`crate::anon_audit`] (a clipped username, a bounded number of
//! records). Failed logins feed [`crate::login_guard`] (a lockout per account and source,
//! the slowing of an account under attack); every refused credential gets one answer.

use std::time::Instant;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use messs_storage::admins::validate_admin_name;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::accounts::{check_login, Credentials, LoginResult};
use crate::anon_audit::{clip, AnonEvent};
use crate::error::{AdminError, ApiResult, ErrorBody};
use crate::login_guard::{source_label, Admission};
use crate::principal::ClientIp;
use crate::rbac::{Principal, Restriction, Role};
use crate::tokens::{self, RefreshToken, Rotation};
use crate::{clock, mfa, password, Shared};

/// A login.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// Account name.
    pub username: String,
    /// Password.
    pub password: String,
    /// The current TOTP code (6 digits), once the account has enrolled.
    pub totp: Option<String>,
    /// A recovery code, instead of `totp` (each works once).
    pub recovery_code: Option<String>,
}

/// Tokens of a login.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenPair {
    /// Bearer token for every other request.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds the access token lives.
    pub expires_in: u64,
    /// Trade it at `/api/v1/auth/refresh` for a new pair; it works once.
    pub refresh_token: String,
    /// What the account must do before anything else: `password_change` or
    /// `mfa_enrolment`; null when nothing.
    pub required_action: Option<&'static str>,
}

/// A refresh (or logout) request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    /// The refresh token.
    pub refresh_token: String,
}

/// The caller.
#[derive(Debug, Serialize, ToSchema)]
pub struct Me {
    /// Account name (`key:ID` for an API key).
    pub name: String,
    /// Role.
    pub role: Role,
    /// Tenant of a tenant-scoped role.
    pub tenant: Option<String>,
    /// An API key's scopes.
    pub scopes: Option<Vec<String>>,
    /// What the account must do first, if anything.
    pub required_action: Option<&'static str>,
}

/// A password change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    /// The current password.
    pub current_password: String,
    /// The new one (12+ characters, not common, not one of the last 5).
    pub new_password: String,
}

/// A TOTP enrolment offer.
#[derive(Debug, Serialize, ToSchema)]
pub struct TotpEnrolment {
    /// `otpauth://totp/...`: scan or import into an authenticator app.
    pub otpauth_uri: String,
    /// The secret in base 32, to type in instead.
    pub secret: String,
}

/// A TOTP code confirming an enrolment.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TotpConfirm {
    /// The authenticator's current code.
    pub code: String,
}

/// Recovery codes, shown once.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecoveryCodes {
    /// Each logs in once in place of a TOTP code. Store them offline.
    pub recovery_codes: Vec<String>,
}

fn action(r: Option<Restriction>) -> Option<&'static str> {
    r.map(|r| match r {
        Restriction::PasswordChange => "password_change",
        Restriction::MfaEnrolment => "mfa_enrolment",
    })
}

fn restriction_of(state: &Shared, a: &messs_storage::admins::AdminRecord) -> Option<Restriction> {
    if a.must_change_password {
        Some(Restriction::PasswordChange)
    } else if state.config.require_mfa && a.totp_secret.is_none() {
        Some(Restriction::MfaEnrolment)
    } else {
        None
    }
}

/// Issues the pair for a login family (new or rotated).
fn pair(
    state: &Shared,
    refresh: &RefreshToken,
    required: Option<Restriction>,
) -> ApiResult<TokenPair> {
    let ttl = state.config.access_token_secs;
    Ok(TokenPair {
        access_token: state.keys.issue(
            &refresh.username,
            &refresh.family,
            clock::unix_secs(),
            ttl,
        )?,
        token_type: "Bearer",
        expires_in: ttl,
        refresh_token: refresh.encode(),
        required_action: action(required),
    })
}

/// Starts a login for an account whose credentials were checked. Blocking.
fn start_login(
    state: &Shared,
    store: &messs_storage::Store,
    username: &str,
) -> ApiResult<TokenPair> {
    let account = store.admin(username)?.ok_or(AdminError::Unauthenticated(
        "invalid username, password or code",
    ))?;
    let token = tokens::start_family(
        store,
        username,
        clock::unix_ms(),
        state.config.refresh_token_secs,
        state.config.max_logins_per_admin,
    )?;
    pair(state, &token, restriction_of(state, &account))
}

/// Log in.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = TokenPair), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn login(
    State(state): State<Shared>,
    ClientIp(ip): ClientIp,
    crate::extract::Json(req): crate::extract::Json<LoginRequest>,
) -> ApiResult<Json<TokenPair>> {
    let ip = ip.unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    // Until it is checked, the username is whatever the caller sent (up to the body
    // limit): records show only its clipped, escaped form, and within the anonymous
    // budget.
    let shown = || clip(&req.username);
    if let Err(secs) = state.logins.attempt(ip, Instant::now()) {
        state.audit_anonymous(
            AnonEvent::RateLimitedLogin,
            "admin.login.rate_limited",
            || format!("from {ip} as {}", shown()),
        );
        return Err(AdminError::TooManyRequests(secs));
    }
    if req.password.len() > password::MAX_LEN || validate_admin_name(&req.username).is_err() {
        // No account has such a name (creating one checks it): nothing to look up.
        state.audit_anonymous(AnonEvent::FailedLogin, "admin.login.failed", || {
            format!("from {ip} as {}: malformed username or password", shown())
        });
        return Err(AdminError::Unauthenticated(
            "invalid username, password or code",
        ));
    }
    let username = req.username.clone();
    // Lockout and slowing (login_guard.rs) ask nothing about the account, so an unknown
    // name is treated exactly as a real one.
    let delay = match state.guard.admit(&username, ip, Instant::now()) {
        // Audited once, when the lockout began; the refusals are only counted.
        Admission::Locked(secs) => return Err(AdminError::TooManyRequests(secs)),
        Admission::Proceed(delay) => delay,
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let creds = Credentials {
        username: req.username,
        password: req.password,
        totp: req.totp,
        recovery_code: req.recovery_code,
    };
    // One check at a time, admitted under its turn: every failure before it is counted by
    // then, so parallel guesses get no more checks than the lockout allows. The permit is
    // held until this one's failure is counted too.
    let _turn = state.hashing_permit().await?;
    if let Admission::Locked(secs) = state.guard.admit(&username, ip, Instant::now()) {
        return Err(AdminError::TooManyRequests(secs));
    }
    let s = state.clone();
    let params = state.broker.hash_params();
    let result = state
        .blocking(move |store| {
            let r = check_login(store, params, &creds)?;
            match r {
                LoginResult::Ok { used_recovery } => Ok(Ok((
                    start_login(&s, store, &creds.username)?,
                    used_recovery,
                ))),
                LoginResult::Refused(why, e) => Ok(Err((why, e))),
            }
        })
        .await?;
    match result {
        Ok((pair, used_recovery)) => {
            state.guard.succeeded(&username, ip, Instant::now());
            let how = if used_recovery {
                " with a recovery code"
            } else {
                ""
            };
            state.audit(&username, "admin.login", format!("from {ip}{how}"));
            Ok(Json(pair))
        }
        Err((why, e)) => {
            // A valid name by now (checked above): at most 64 safe characters.
            match state.guard.failed(&username, ip, Instant::now()) {
                Some(lock) => state.audit_anonymous(
                    AnonEvent::FailedLogin,
                    "admin.login.lockout",
                    || {
                        format!(
                            "from {ip} as {}: {why}; {} failures in a row: {} is locked out of this account for {} s",
                            clip(&username),
                            state.config.lockout_failures,
                            source_label(ip),
                            lock.as_secs()
                        )
                    },
                ),
                None => state.audit_anonymous(AnonEvent::FailedLogin, "admin.login.failed", || {
                    format!("from {ip} as {}: {why}", clip(&username))
                }),
            }
            Err(e)
        }
    }
}

/// Trade a refresh token for a new pair. A token used twice revokes its whole login.
#[utoipa::path(post, path = "/api/v1/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses((status = 200, body = TokenPair), (status = 401, body = ErrorBody)))]
pub async fn refresh(
    State(state): State<Shared>,
    crate::extract::Json(req): crate::extract::Json<RefreshRequest>,
) -> ApiResult<Json<TokenPair>> {
    const BAD: AdminError = AdminError::Unauthenticated("invalid or expired refresh token");
    let token = RefreshToken::parse(&req.refresh_token).ok_or(BAD)?;
    let s = state.clone();
    let t = token.clone();
    let outcome = state
        .blocking(move |store| {
            let account = store.admin(&t.username)?.filter(|a| a.enabled);
            let Some(account) = account else {
                return Ok(Err(Rotation::Invalid));
            };
            match tokens::rotate(store, &t, clock::unix_ms())? {
                Rotation::Rotated(next) => Ok(Ok(pair(&s, &next, restriction_of(&s, &account))?)),
                other => Ok(Err(other)),
            }
        })
        .await?;
    match outcome {
        Ok(pair) => Ok(Json(pair)),
        Err(Rotation::Reused) => {
            // Not an anonymous record: the token is a real one of an existing, enabled
            // account (else `Invalid`), and its login is deleted here, so there are at
            // most as many of these as successful logins.
            state.audit(
                &token.username,
                "admin.refresh.reuse",
                "a retired refresh token was presented: the whole login is revoked".into(),
            );
            Err(BAD)
        }
        Err(_) => Err(BAD),
    }
}

/// End this login: its refresh token and every access token of it stop working.
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth",
    responses((status = 204), (status = 401, body = ErrorBody)), security(("bearer" = [])))]
pub async fn logout(State(state): State<Shared>, p: Principal) -> ApiResult<StatusCode> {
    let (Some(name), Some(family)) = (p.account().map(str::to_owned), p.family) else {
        return Err(AdminError::BadRequest(
            "an API key has no login to end".into(),
        ));
    };
    state
        .blocking(
            move |store| match store.update_refresh_family(&name, &family, |_| ((), None)) {
                Ok(()) | Err(messs_storage::StorageError::NotFound(_)) => Ok(()),
                Err(e) => Err(e.into()),
            },
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Who am I.
#[utoipa::path(get, path = "/api/v1/auth/me", tag = "auth",
    responses((status = 200, body = Me), (status = 401, body = ErrorBody)), security(("bearer" = [])))]
pub async fn me(p: Principal) -> Json<Me> {
    Json(Me {
        required_action: action(p.restriction),
        name: p.name,
        role: p.role,
        tenant: p.tenant,
        scopes: p.scopes,
    })
}

fn account_of(p: &Principal) -> ApiResult<String> {
    p.account()
        .map(str::to_owned)
        .ok_or(AdminError::Forbidden("an API key has no password or TOTP"))
}

/// Change my password. Every other login of the account ends; a new pair is returned.
#[utoipa::path(post, path = "/api/v1/auth/password", tag = "auth", request_body = PasswordChange,
    responses((status = 200, body = TokenPair), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody)), security(("bearer" = [])))]
pub async fn change_password(
    State(state): State<Shared>,
    p: Principal,
    crate::extract::Json(req): crate::extract::Json<PasswordChange>,
) -> ApiResult<Json<TokenPair>> {
    let name = account_of(&p)?;
    password::check_policy(&name, &req.new_password)?;
    let params = state.broker.hash_params();
    let s = state.clone();
    let pair = state
        .hashing(move |store| {
            let a = store
                .admin(&name)?
                .ok_or(AdminError::Unauthenticated("account gone"))?;
            if !password::verify(&req.current_password, &a.password_hash) {
                return Err(AdminError::BadRequest(
                    "the current password is wrong".into(),
                ));
            }
            if password::reused(&req.new_password, &a.password_hash, &a.password_history) {
                return Err(AdminError::BadRequest(format!(
                    "the new password may not be one of the last {}",
                    password::HISTORY
                )));
            }
            let new_hash = password::hash(&req.new_password, params)?;
            store.update_admin(&name, |a| {
                let old = std::mem::replace(&mut a.password_hash, new_hash);
                a.password_history.insert(0, old);
                a.password_history.truncate(password::HISTORY - 1);
                a.must_change_password = false;
                Ok(((), true))
            })?;
            store.delete_refresh_families(&name)?;
            start_login(&s, store, &name)
        })
        .await?;
    Ok(Json(pair))
}

/// Start TOTP enrolment: a new secret to put in an authenticator app; confirm it with a
/// code at `/api/v1/auth/totp/confirm`.
#[utoipa::path(post, path = "/api/v1/auth/totp/enrol", tag = "auth",
    responses((status = 200, body = TotpEnrolment), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn totp_enrol(
    State(state): State<Shared>,
    p: Principal,
) -> ApiResult<Json<TotpEnrolment>> {
    let name = account_of(&p)?;
    if p.restriction == Some(Restriction::PasswordChange) {
        return Err(AdminError::Forbidden("change your password first"));
    }
    let secret = mfa::new_secret()?;
    let (otpauth_uri, b32) = mfa::enrolment(&secret, &name)?;
    state
        .blocking(move |store| {
            store.update_admin(&name, |a| {
                if a.totp_secret.is_some() {
                    return Err(messs_storage::StorageError::Invalid(
                        "TOTP is enrolled already; a superadmin can reset it".into(),
                    ));
                }
                a.totp_pending = Some(secret.to_vec());
                Ok(((), true))
            })?;
            Ok(())
        })
        .await
        .map_err(|e| match e {
            AdminError::BadRequest(m) => AdminError::Conflict(m),
            e => e,
        })?;
    Ok(Json(TotpEnrolment {
        otpauth_uri,
        secret: b32,
    }))
}

/// Confirm TOTP enrolment with a current code; returns the recovery codes, once.
#[utoipa::path(post, path = "/api/v1/auth/totp/confirm", tag = "auth", request_body = TotpConfirm,
    responses((status = 200, body = RecoveryCodes), (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn totp_confirm(
    State(state): State<Shared>,
    p: Principal,
    crate::extract::Json(req): crate::extract::Json<TotpConfirm>,
) -> ApiResult<Json<RecoveryCodes>> {
    let name = account_of(&p)?;
    let (codes, digests) = mfa::recovery_codes()?;
    let now = clock::unix_secs();
    state
        .blocking(move |store| {
            Ok(store.update_admin(&name, |a| {
                let Some(pending) = a.totp_pending.clone() else {
                    return Ok((
                        Err("no enrolment started: POST /api/v1/auth/totp/enrol"),
                        false,
                    ));
                };
                let Some(step) = mfa::check(&pending, &req.code, now, 0) else {
                    return Ok((
                        Err("that code does not match; check the device's clock"),
                        false,
                    ));
                };
                a.totp_secret = Some(pending);
                a.totp_pending = None;
                a.totp_last_step = step;
                a.recovery_codes = digests;
                Ok((Ok(()), true))
            })?)
        })
        .await?
        .map_err(|m| AdminError::BadRequest(m.into()))?;
    state.audit(&p.name, "admin.totp.enrolled", String::new());
    Ok(Json(RecoveryCodes {
        recovery_codes: codes,
    }))
}
