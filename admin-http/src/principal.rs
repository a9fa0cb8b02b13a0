//! Who is calling: the bearer token of a request becomes a [`Principal`] (or a 401), and
//! every request of a logged-in caller that changes something is written to the audit log
//! with its outcome.
//!
//! An access token is checked against the account on each request (enabled, its login
//! still open), and an API key against its chain of parent keys, so revoking takes effect
//! at once rather than when the token expires.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::AdminError;
use crate::rbac::{Principal, Restriction, Role};
use crate::routes::chain_intact;
use crate::tokens::ApiKeyToken;
use crate::{clock, secret, Shared};

/// Paths whose handlers write their own audit records (they know the username).
const SELF_AUDITED: [&str; 2] = ["/api/v1/auth/login", "/api/v1/auth/refresh"];

fn bearer(req: &Request) -> Option<&str> {
    let v = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

async fn resolve(state: &Shared, token: &str) -> Result<Principal, AdminError> {
    const BAD: AdminError = AdminError::Unauthenticated("invalid or expired token");
    let now = clock::unix_ms();
    if let Some(key) = ApiKeyToken::parse(token) {
        // A key made by a key works only while every key above it does (revoking one
        // revokes those below it; this holds even if the store was changed otherwise).
        let record = state
            .blocking(move |s| {
                let Some(r) = s.api_key(&key.id)?.filter(|r| key.matches(r, now)) else {
                    return Ok(None);
                };
                Ok(chain_intact(s, &r, now)?.map(|_| r))
            })
            .await?
            .ok_or(BAD)?;
        let role = Role::parse(&record.role).ok_or(BAD)?;
        return Ok(Principal {
            name: format!("key:{}", secret::hex(&record.id)),
            role,
            tenant: record.tenant,
            scopes: Some(record.scopes),
            api_key: Some(record.id),
            family: None,
            restriction: None,
        });
    }
    let (username, family) = state.keys.check(token).ok_or(BAD)?;
    let require_mfa = state.config.require_mfa;
    state
        .blocking(move |s| {
            let Some(account) = s.admin(&username)?.filter(|a| a.enabled) else {
                return Err(BAD);
            };
            if s.refresh_family(&username, &family)?
                .is_none_or(|f| f.expires_ms <= now)
            {
                return Err(BAD);
            }
            let role = Role::parse(&account.role).ok_or(BAD)?;
            let restriction = if account.must_change_password {
                Some(Restriction::PasswordChange)
            } else if require_mfa && account.totp_secret.is_none() {
                Some(Restriction::MfaEnrolment)
            } else {
                None
            };
            Ok(Principal {
                name: username,
                role,
                tenant: account.tenant,
                scopes: None,
                api_key: None,
                family: Some(family),
                restriction,
            })
        })
        .await
}

/// Middleware: resolves the caller, runs the handler, audits a change.
pub async fn authenticate(State(state): State<Shared>, mut req: Request, next: Next) -> Response {
    let principal = match bearer(&req) {
        None => None,
        Some(token) => match resolve(&state, token).await {
            Ok(p) => Some(p),
            Err(e) => return e.into_response(),
        },
    };
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    // Only callers with valid credentials are audited here: an anonymous request changes
    // nothing, and auditing it would let anyone who reaches the port grow the log.
    let actor = principal.as_ref().map(|p| p.name.clone());
    if let Some(p) = principal {
        req.extensions_mut().insert(p);
    }
    let response = next.run(req).await;
    let changes = method != Method::GET && method != Method::HEAD;
    if let (true, Some(actor)) = (changes, actor) {
        if !SELF_AUDITED.contains(&path.as_str()) {
            state.audit(
                &actor,
                "admin.request",
                format!("{method} {path} -> {}", response.status().as_u16()),
            );
        }
    }
    response
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or(AdminError::Unauthenticated(
                "log in first: Authorization: Bearer TOKEN",
            ))
    }
}

/// The caller if it presented valid credentials, `None` for a request without any (for
/// routes open to both, such as `/metrics`: an invalid token is refused before).
pub struct MaybePrincipal(pub Option<Principal>);

impl<S: Send + Sync> FromRequestParts<S> for MaybePrincipal {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(MaybePrincipal(parts.extensions.get::<Principal>().cloned()))
    }
}

/// The client's address (from the listener; absent in `oneshot` tests without one).
pub struct ClientIp(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let plain = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip());
        let tls = || {
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<crate::listen::PeerAddr>>()
                .map(|c| c.0 .0.ip())
        };
        Ok(ClientIp(plain.or_else(tls)))
    }
}
