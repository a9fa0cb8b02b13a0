//! Device JWTs as the MQTT password: signed by a key of the device's tenant, selected by the
//! token's `kid`. The algorithm is the registered key's, never the token's choice: a token
//! whose `alg` differs from its key's (an RS256 public key used as an HS256 secret, or
//! `none`) is refused. `exp` is required and `nbf` checked, both with the configured
//! leeway; `sub` must be the username the device logged in with; `aud` is required and must
//! name the tenant (a string or a list that holds its id): a token minted for one tenant
//! is refused by another that trusts the same key (a shared issuer). Optional claims:
//! `groups` (for ACL rules that name groups), `acl` (`{"publish": [..], "subscribe":
//! [..]}`, which narrows the tenant's rules for this connection) and `client_id` (the
//! client ids the token may connect with, `*` wildcard and `%u`).

use std::str::FromStr;

use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use messs_storage::registry::JwtKey;
use serde::Deserialize;

use crate::security::acl::TokenScope;

/// Whether a password looks like a compact JWS (three base64url parts, a JSON header).
pub(crate) fn looks_like_jwt(password: &[u8]) -> bool {
    password.starts_with(b"eyJ")
        && password.iter().filter(|&&b| b == b'.').count() == 2
        && password
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    acl: Option<TokenScope>,
    #[serde(default)]
    client_id: Option<String>,
}

/// What a valid token says.
#[derive(Debug)]
pub(crate) struct Verified {
    pub subject: String,
    pub groups: Vec<String>,
    pub scope: Option<TokenScope>,
    /// The `client_id` claim: a pattern the connection's client id must match.
    pub client_id: Option<String>,
}

/// Why a token was refused (for the audit log; the client only learns "bad credentials").
pub(crate) fn verify(
    token: &[u8],
    keys: &[JwtKey],
    username: Option<&str>,
    tenant: &str,
    leeway_secs: u64,
) -> Result<Verified, String> {
    let header = decode_header(token).map_err(|e| format!("token header: {e}"))?;
    // RFC 7515 4.1.11: a token naming extensions it must not be accepted without
    // understanding is refused; messs understands none.
    if header.crit.is_some() {
        return Err("token header has crit (extensions messs does not implement)".into());
    }
    let kid = header.kid.ok_or("token has no kid")?;
    let key = keys
        .iter()
        .find(|k| k.kid == kid)
        .ok_or_else(|| format!("no key {:?}", super::clip(&kid)))?;
    let alg = Algorithm::from_str(&key.alg).map_err(|_| format!("key {kid:?}: bad algorithm"))?;
    if header.alg != alg {
        return Err(format!(
            "token algorithm {:?} is not key {kid:?}'s ({})",
            header.alg, key.alg
        ));
    }
    let decoding = match alg {
        Algorithm::HS256 => Ok(DecodingKey::from_secret(&key.key)),
        Algorithm::RS256 => DecodingKey::from_rsa_pem(&key.key),
        Algorithm::ES256 => DecodingKey::from_ec_pem(&key.key),
        Algorithm::EdDSA => DecodingKey::from_ed_pem(&key.key),
        other => return Err(format!("algorithm {other:?} is not accepted")),
    }
    .map_err(|e| format!("key {kid:?}: {e}"))?;
    let mut validation = Validation::new(alg);
    validation.leeway = leeway_secs;
    validation.validate_nbf = true;
    validation.set_required_spec_claims(&["exp", "sub", "aud"]);
    validation.set_audience(&[tenant]);
    if let Some(u) = username {
        validation.sub = Some(u.to_owned());
    }
    let data =
        decode::<Claims>(token, &decoding, &validation).map_err(|e| format!("token: {e}"))?;
    Ok(Verified {
        subject: data.claims.sub,
        groups: data.claims.groups,
        scope: data.claims.acl,
        client_id: data.claims.client_id,
    })
}
