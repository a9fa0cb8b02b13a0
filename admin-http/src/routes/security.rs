//! A tenant's access rules and trust anchors: ordered ACL rules, the keys its devices' JWTs
//! are signed with, the CAs its device certificates come from, and revoked certificates.
//! Secret key material goes in and never comes out (an HS256 secret is shown as its
//! length).

use crate::extract::{Path, Query};
use crate::page::{Page, PageQuery};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use base64::Engine;
use messs_broker::registry::{Registry, RuleSpec};
use messs_storage::registry::{AclAction, AclRule, AclSubject, JwtKey};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::tenants::{existing_tenant, tenant_access};
use crate::error::{AdminError, ApiResult, ErrorBody};
use crate::rbac::{Access, Area, Principal};
use crate::secret::hex;
use crate::Shared;

/// An ACL rule.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Rule {
    /// Id (assigned; ignored when adding).
    #[serde(default)]
    pub id: u32,
    /// Allow (true) or deny.
    pub allow: bool,
    /// `publish`, `subscribe` or `both`.
    pub action: String,
    /// Topic filter; `%c` is the client id, `%u` the username.
    pub filter: String,
    /// `all`, `anonymous`, `user:NAME` or `group:NAME`.
    #[serde(default = "all")]
    pub subject: String,
    /// QoS levels it covers (default all).
    #[serde(default = "all_qos")]
    pub qos: Vec<u8>,
    /// Only messages with this retain flag (null: either).
    #[serde(default)]
    pub retain: Option<bool>,
}

fn all() -> String {
    "all".into()
}

fn all_qos() -> Vec<u8> {
    vec![0, 1, 2]
}

/// A new rule and where it goes.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRule {
    /// The rule.
    #[serde(flatten)]
    pub rule: Rule,
    /// Position (0 = first); absent: last.
    pub position: Option<usize>,
}

fn view_rule(r: AclRule) -> Rule {
    Rule {
        id: r.id,
        allow: r.allow,
        action: match r.action {
            AclAction::Publish => "publish",
            AclAction::Subscribe => "subscribe",
            AclAction::Both => "both",
        }
        .into(),
        filter: r.filter,
        subject: match r.subject {
            AclSubject::All => "all".into(),
            AclSubject::Anonymous => "anonymous".into(),
            AclSubject::User(u) => format!("user:{u}"),
            AclSubject::Group(g) => format!("group:{g}"),
        },
        qos: (0..3).filter(|q| r.qos_mask & (1 << q) != 0).collect(),
        retain: r.retain,
    }
}

fn spec(r: Rule) -> ApiResult<RuleSpec> {
    let bad = |m: &str| AdminError::BadRequest(m.into());
    let action = match r.action.as_str() {
        "publish" => AclAction::Publish,
        "subscribe" => AclAction::Subscribe,
        "both" => AclAction::Both,
        _ => return Err(bad("action: publish, subscribe or both")),
    };
    let subject = match r.subject.split_once(':') {
        None if r.subject == "all" => AclSubject::All,
        None if r.subject == "anonymous" => AclSubject::Anonymous,
        Some(("user", u)) if !u.is_empty() => AclSubject::User(u.into()),
        Some(("group", g)) if !g.is_empty() => AclSubject::Group(g.into()),
        _ => return Err(bad("subject: all, anonymous, user:NAME or group:NAME")),
    };
    if r.filter.len() > 65_535 {
        return Err(bad("filter too long"));
    }
    let mut qos_mask = 0u8;
    for q in r.qos {
        if q > 2 {
            return Err(bad("qos: 0, 1, 2"));
        }
        qos_mask |= 1 << q;
    }
    Ok(RuleSpec {
        allow: r.allow,
        action,
        filter: r.filter,
        subject,
        qos_mask,
        retain: r.retain,
    })
}

/// A tenant's ACL rules, in order (the first that matches decides; none: deny).
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/acl", tag = "acl",
    params(("tenant" = String, Path, description = "tenant id"), PageQuery),
    responses((status = 200, body = Page<Rule>), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_rules(
    State(state): State<Shared>,
    p: Principal,
    Path(tenant): Path<String>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<Page<Rule>>> {
    tenant_access(&p, Area::Acl, Access::Read, &tenant)?;
    existing_tenant(&state, &tenant).await?;
    let rules = state.blocking(move |s| Ok(s.acl_rules(&tenant)?)).await?;
    // In evaluation order: the cursor is the position, not the id.
    let views: Vec<(usize, Rule)> = rules.into_iter().map(view_rule).enumerate().collect();
    let page = Page::of(views, &q, |(i, _)| format!("{i:05}"))?;
    Ok(Json(Page {
        items: page.items.into_iter().map(|(_, r)| r).collect(),
        next: page.next,
    }))
}

/// Add a rule (live connections of the tenant apply it at their next packet).
#[utoipa::path(post, path = "/api/v1/tenants/{tenant}/acl", tag = "acl", request_body = NewRule,
    params(("tenant" = String, Path, description = "tenant id")),
    responses((status = 201, body = Rule), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn add_rule(
    State(state): State<Shared>,
    p: Principal,
    Path(tenant): Path<String>,
    crate::extract::Json(req): crate::extract::Json<NewRule>,
) -> ApiResult<(StatusCode, Json<Rule>)> {
    tenant_access(&p, Area::Acl, Access::Write, &tenant)?;
    existing_tenant(&state, &tenant).await?;
    let spec = spec(req.rule)?;
    let t = tenant.clone();
    let id = state
        .broker
        .registry(&p.name, move |r| r.add_rule(&t, spec, req.position))
        .await?;
    let rules = state.blocking(move |s| Ok(s.acl_rules(&tenant)?)).await?;
    let rule = rules
        .into_iter()
        .find(|r| r.id == id)
        .ok_or_else(|| AdminError::internal("an added rule is missing"))?;
    Ok((StatusCode::CREATED, Json(view_rule(rule))))
}

/// Remove a rule.
#[utoipa::path(delete, path = "/api/v1/tenants/{tenant}/acl/{id}", tag = "acl",
    params(("tenant" = String, Path, description = "tenant id"),
        ("id" = u32, Path, description = "rule id")),
    responses((status = 204), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn remove_rule(
    State(state): State<Shared>,
    p: Principal,
    Path((tenant, id)): Path<(String, u32)>,
) -> ApiResult<StatusCode> {
    tenant_access(&p, Area::Acl, Access::Write, &tenant)?;
    existing_tenant(&state, &tenant).await?;
    let gone = state
        .broker
        .registry(&p.name, move |r| r.remove_rule(&tenant, id))
        .await?;
    if gone {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(AdminError::NotFound(format!("rule {id}")))
    }
}

/// A JWT verification key as listed.
#[derive(Debug, Serialize, ToSchema)]
pub struct JwtKeyView {
    /// `kid`.
    pub kid: String,
    /// Algorithm.
    pub alg: String,
    /// The public key (PEM) for RS256/ES256/EdDSA; null for an HS256 secret.
    pub public_key_pem: Option<String>,
    /// Key length in bytes.
    pub key_len: usize,
}

/// A new JWT key.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewJwtKey {
    /// `kid` devices' tokens name.
    pub kid: String,
    /// HS256, RS256, ES256 or EdDSA.
    pub alg: String,
    /// The public key in PEM (RS256, ES256, EdDSA).
    pub public_key_pem: Option<String>,
    /// The HMAC secret, base64 (HS256; at least 32 bytes).
    pub secret_base64: Option<String>,
}

/// A tenant's JWT keys.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/jwt-keys", tag = "keys",
    params(("tenant" = String, Path, description = "tenant id"), PageQuery),
    responses((status = 200, body = Page<JwtKeyView>), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_jwt_keys(
    State(state): State<Shared>,
    p: Principal,
    Path(tenant): Path<String>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<Page<JwtKeyView>>> {
    tenant_access(&p, Area::Keys, Access::Read, &tenant)?;
    existing_tenant(&state, &tenant).await?;
    let keys = state.blocking(move |s| Ok(s.jwt_keys(&tenant)?)).await?;
    let views = keys
        .into_iter()
        .map(|k| JwtKeyView {
            public_key_pem: (k.alg != "HS256")
                .then(|| String::from_utf8_lossy(&k.key).into_owned()),
            key_len: k.key.len(),
            kid: k.kid,
            alg: k.alg,
        })
        .collect();
    Ok(Json(Page::of(views, &q, |k: &JwtKeyView| k.kid.clone())?))
}

/// Add or replace a JWT key by `kid`.
#[utoipa::path(post, path = "/api/v1/tenants/{tenant}/jwt-keys", tag = "keys",
    request_body = NewJwtKey,
    params(("tenant" = String, Path, description = "tenant id")),
    responses((status = 201), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn put_jwt_key(
    State(state): State<Shared>,
    p: Principal,
    Path(tenant): Path<String>,
    crate::extract::Json(req): crate::extract::Json<NewJwtKey>,
) -> ApiResult<StatusCode> {
    tenant_access(&p, Area::Keys, Access::Write, &tenant)?;
    existing_tenant(&state, &tenant).await?;
    let key = match (req.alg.as_str(), req.public_key_pem, req.secret_base64) {
        ("HS256", None, Some(b64)) => base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|_| AdminError::BadRequest("secret_base64 is not base64".into()))?,
        ("RS256" | "ES256" | "EdDSA", Some(pem), None) => pem.into_bytes(),
        _ => {
            return Err(AdminError::BadRequest(
                "HS256 takes secret_base64; RS256, ES256 and EdDSA take public_key_pem".into(),
            ))
        }
    };
    if req.kid.is_empty() || req.kid.len() > 128 || key.len() > 16 * 1024 {
        return Err(AdminError::BadRequest(
            "kid: 1 to 128 bytes; key: at most 16 KiB".into(),
        ));
    }
    let k = JwtKey {
        kid: req.kid,
        alg: req.alg,
        key,
    };
    state
        .broker
        .registry(&p.name, move |r| r.put_jwt_key(&tenant, k))
        .await?;
    Ok(StatusCode::CREATED)
}

/// Remove a JWT key.
#[utoipa::path(delete, path = "/api/v1/tenants/{tenant}/jwt-keys/{kid}", tag = "keys",
    params(("tenant" = String, Path, description = "tenant id"),
        ("kid" = String, Path, description = "key id")),
    responses((status = 204), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn remove_jwt_key(
    State(state): State<Shared>,
    p: Principal,
    Path((tenant, kid)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    tenant_access(&p, Area::Keys, Access::Write, &tenant)?;
    existing_tenant(&state, &tenant).await?;
    let gone = state
        .broker
        .registry(&p.name, move |r| r.remove_jwt_key(&tenant, &kid))
        .await?;
    if gone {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(AdminError::NotFound("JWT key".into()))
    }
}

/// A trusted CA or a revoked certificate.
#[derive(Debug, Serialize, ToSchema)]
pub struct CertView {
    /// SHA-256 of the DER, hex.
    pub fingerprint: String,
}

/// A certificate to trust or revoke.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CertUpload {
    /// The certificate in PEM.
    pub pem: String,
}

/// What a tenant trusts: its CAs and its revoked certificates.
#[derive(Debug, Serialize, ToSchema)]
pub struct TrustView {
    /// CAs whose certificates identify its devices.
    pub cas: Vec<CertView>,
    /// Device certificates refused even though a CA signed them.
    pub revoked: Vec<CertView>,
}

fn der_of(pem: &str) -> ApiResult<Vec<u8>> {
    let certs = messs_broker::parse_pem_certs(pem.as_bytes())
        .map_err(|_| AdminError::BadRequest("not a PEM certificate".into()))?;
    match certs.as_slice() {
        [one] => Ok(one.to_vec()),
        _ => Err(AdminError::BadRequest(
            "give exactly one PEM certificate".into(),
        )),
    }
}

/// A tenant's CAs and revoked certificates.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/cas", tag = "keys",
    params(("tenant" = String, Path, description = "tenant id")),
    responses((status = 200, body = TrustView), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_cas(
    State(state): State<Shared>,
    p: Principal,
    Path(tenant): Path<String>,
) -> ApiResult<Json<TrustView>> {
    tenant_access(&p, Area::Keys, Access::Read, &tenant)?;
    existing_tenant(&state, &tenant).await?;
    let (cas, revoked) = state
        .blocking(move |s| Ok((s.cas(&tenant)?, s.revoked_certs(&tenant)?)))
        .await?;
    Ok(Json(TrustView {
        cas: cas
            .iter()
            .map(|c| CertView {
                fingerprint: hex(&c.fingerprint),
            })
            .collect(),
        revoked: revoked
            .iter()
            .map(|f| CertView {
                fingerprint: hex(f),
            })
            .collect(),
    }))
}

/// Trust a CA for the tenant's device certificates.
#[utoipa::path(post, path = "/api/v1/tenants/{tenant}/cas", tag = "keys", request_body = CertUpload,
    params(("tenant" = String, Path, description = "tenant id")),
    responses((status = 201, body = CertView), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn add_ca(
    State(state): State<Shared>,
    p: Principal,
    Path(tenant): Path<String>,
    crate::extract::Json(req): crate::extract::Json<CertUpload>,
) -> ApiResult<(StatusCode, Json<CertView>)> {
    cert_change(&state, &p, tenant, &req.pem, |r, t, d| r.add_ca(t, d)).await
}

/// Stop trusting a CA: its certificates no longer log in (connections already open stay
/// until they end or are kicked).
#[utoipa::path(delete, path = "/api/v1/tenants/{tenant}/cas/{fingerprint}", tag = "keys",
    params(("tenant" = String, Path, description = "tenant id"),
        ("fingerprint" = String, Path, description = "SHA-256 of the CA's DER, hex (as listed)")),
    responses((status = 204), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn remove_ca(
    State(state): State<Shared>,
    p: Principal,
    Path((tenant, fingerprint)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    tenant_access(&p, Area::Keys, Access::Write, &tenant)?;
    existing_tenant(&state, &tenant).await?;
    let fp = crate::secret::unhex::<32>(&fingerprint.to_ascii_lowercase())
        .ok_or_else(|| AdminError::NotFound("CA".into()))?;
    let gone = state
        .broker
        .registry(&p.name, move |r| r.remove_ca(&tenant, &fp))
        .await?;
    if gone {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(AdminError::NotFound("CA".into()))
    }
}

/// A registry change that takes a certificate (DER) and returns its fingerprint.
type CertChange = fn(&mut Registry<'_>, &str, &[u8]) -> Result<[u8; 32], messs_broker::BrokerError>;

/// What both certificate uploads do: check access, read the PEM, change the registry.
async fn cert_change(
    state: &Shared,
    p: &Principal,
    tenant: String,
    pem: &str,
    change: CertChange,
) -> ApiResult<(StatusCode, Json<CertView>)> {
    tenant_access(p, Area::Keys, Access::Write, &tenant)?;
    existing_tenant(state, &tenant).await?;
    let der = der_of(pem)?;
    let fp = state
        .broker
        .registry(&p.name, move |r| change(r, &tenant, &der))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CertView {
            fingerprint: hex(&fp),
        }),
    ))
}

/// Revoke a device certificate of the tenant.
#[utoipa::path(post, path = "/api/v1/tenants/{tenant}/revoked-certs", tag = "keys",
    request_body = CertUpload,
    params(("tenant" = String, Path, description = "tenant id")),
    responses((status = 201, body = CertView), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn revoke_cert(
    State(state): State<Shared>,
    p: Principal,
    Path(tenant): Path<String>,
    crate::extract::Json(req): crate::extract::Json<CertUpload>,
) -> ApiResult<(StatusCode, Json<CertView>)> {
    cert_change(&state, &p, tenant, &req.pem, |r, t, d| r.revoke_cert(t, d)).await
}
