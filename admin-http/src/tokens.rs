//! Tokens: short-lived access JWTs, rotating refresh tokens, and API keys.
//!
//! - **Access token**: an HS256 JWT (`sub`, `fam`, `iat`, `exp`, `iss`) signed with a key
//!   made at start and kept only in memory. A restart therefore ends every access token
//!   (a client refreshes); nothing secret about it is ever stored. Each request also checks
//!   that the account is enabled and its login (refresh family) still exists, so logout,
//!   a detected token reuse, a password change or disabling the account end it at once.
//! - **Refresh token** `mrt.HEX(username).HEX(family).GENERATION.HEX(secret)`: one login is
//!   one family; each refresh gives the next generation and retires the one presented.
//!   Presenting a retired token means two parties hold the chain, so the whole family is
//!   revoked (OAuth 2.0 Security BCP, refresh token rotation).
//! - **API key** `mak.HEX(id).HEX(secret)`: presented as a bearer token on each request.
//!
//! Secrets are 256-bit random; only their SHA-256 is stored.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use messs_storage::admins::{ApiKeyRecord, RefreshFamily};
use messs_storage::Store;
use serde::{Deserialize, Serialize};

use crate::error::AdminError;
use crate::secret::{self, hex, unhex};

const ISSUER: &str = "messs-admin";

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessClaims {
    /// Account.
    pub sub: String,
    /// Refresh family (hex).
    pub fam: String,
    /// Issued (Unix s).
    pub iat: u64,
    /// Expires (Unix s).
    pub exp: u64,
    /// Always `messs-admin`.
    pub iss: String,
}

/// Signs and checks access tokens.
pub struct AccessKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl AccessKeys {
    /// A fresh random key.
    pub fn generate() -> Result<Self, AdminError> {
        let key: [u8; 32] = secret::random()?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        Ok(AccessKeys {
            encoding: EncodingKey::from_secret(&key),
            decoding: DecodingKey::from_secret(&key),
            validation,
        })
    }

    /// An access token for `username`'s login `family`, valid `ttl_secs`.
    pub fn issue(
        &self,
        username: &str,
        family: &[u8; 16],
        now_secs: u64,
        ttl_secs: u64,
    ) -> Result<String, AdminError> {
        let claims = AccessClaims {
            sub: username.to_owned(),
            fam: hex(family),
            iat: now_secs,
            exp: now_secs + ttl_secs,
            iss: ISSUER.into(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(AdminError::internal)
    }

    /// The account and family of a valid, unexpired access token.
    pub fn check(&self, token: &str) -> Option<(String, [u8; 16])> {
        let data =
            jsonwebtoken::decode::<AccessClaims>(token, &self.decoding, &self.validation).ok()?;
        let fam = unhex::<16>(&data.claims.fam)?;
        Some((data.claims.sub, fam))
    }
}

/// A parsed refresh token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshToken {
    /// Account.
    pub username: String,
    /// Family.
    pub family: [u8; 16],
    /// Generation.
    pub generation: u32,
    /// Secret.
    pub secret: [u8; 32],
}

impl RefreshToken {
    /// Its text form.
    pub fn encode(&self) -> String {
        format!(
            "mrt.{}.{}.{}.{}",
            hex(self.username.as_bytes()),
            hex(&self.family),
            self.generation,
            hex(&self.secret)
        )
    }

    /// Parses the text form.
    pub fn parse(s: &str) -> Option<RefreshToken> {
        let mut parts = s.strip_prefix("mrt.")?.split('.');
        let user_hex = parts.next()?;
        if user_hex.len() > 2 * messs_storage::admins::MAX_ADMIN_NAME_LEN
            || !user_hex.len().is_multiple_of(2)
        {
            return None;
        }
        let mut user = Vec::with_capacity(user_hex.len() / 2);
        for i in (0..user_hex.len()).step_by(2) {
            user.push(u8::from_str_radix(user_hex.get(i..i + 2)?, 16).ok()?);
        }
        let token = RefreshToken {
            username: String::from_utf8(user).ok()?,
            family: unhex(parts.next()?)?,
            generation: parts.next()?.parse().ok()?,
            secret: unhex(parts.next()?)?,
        };
        parts.next().is_none().then_some(token)
    }
}

/// Starts a login's family for `username`: the first refresh token. Expired families of
/// the account are deleted, and the oldest beyond `max_logins - 1` too. Blocking.
pub fn start_family(
    store: &Store,
    username: &str,
    now_ms: u64,
    ttl_secs: u64,
    max_logins: usize,
) -> Result<RefreshToken, AdminError> {
    let token = RefreshToken {
        username: username.to_owned(),
        family: secret::random()?,
        generation: 1,
        secret: secret::random()?,
    };
    let mut existing = store.refresh_families(username, 10_000)?;
    existing.sort_by_key(|f| std::cmp::Reverse(f.created_ms));
    let drop: Vec<[u8; 16]> = existing
        .iter()
        .enumerate()
        .filter(|(i, f)| f.expires_ms <= now_ms || *i + 1 >= max_logins)
        .map(|(_, f)| f.family)
        .collect();
    let family = RefreshFamily {
        username: username.to_owned(),
        family: token.family,
        generation: 1,
        current: secret::sha256(&token.secret),
        prior: Vec::new(),
        created_ms: now_ms,
        expires_ms: now_ms.saturating_add(ttl_secs.saturating_mul(1000)),
    };
    store.put_refresh_family(&family, &drop)?;
    Ok(token)
}

/// What presenting a refresh token did.
#[derive(Debug, PartialEq, Eq)]
pub enum Rotation {
    /// It was current: here is the next one.
    Rotated(RefreshToken),
    /// It was retired already: the family is revoked now.
    Reused,
    /// Unknown, expired, or forged.
    Invalid,
}

/// Rotates a refresh token. Blocking.
pub fn rotate(store: &Store, token: &RefreshToken, now_ms: u64) -> Result<Rotation, AdminError> {
    let presented = secret::sha256(&token.secret);
    let next_secret: [u8; 32] = secret::random()?;
    let outcome = store.update_refresh_family(&token.username, &token.family, |mut f| {
        if f.expires_ms <= now_ms {
            return (Rotation::Invalid, None);
        }
        if token.generation == f.generation && secret::same(&presented, &f.current) {
            let next = RefreshToken {
                username: token.username.clone(),
                family: token.family,
                generation: f.generation + 1,
                secret: next_secret,
            };
            f.prior.insert(0, f.current);
            f.current = secret::sha256(&next_secret);
            f.generation += 1;
            return (Rotation::Rotated(next), Some(f));
        }
        if f.prior.iter().any(|p| secret::same(p, &presented)) {
            return (Rotation::Reused, None);
        }
        (Rotation::Invalid, Some(f))
    });
    match outcome {
        Ok(r) => Ok(r),
        Err(messs_storage::StorageError::NotFound(_)) => Ok(Rotation::Invalid),
        Err(e) => Err(e.into()),
    }
}

/// A parsed API key.
pub struct ApiKeyToken {
    /// Id.
    pub id: [u8; 16],
    /// Secret.
    pub secret: [u8; 32],
}

impl ApiKeyToken {
    /// A new random key.
    pub fn generate() -> Result<Self, AdminError> {
        Ok(ApiKeyToken {
            id: secret::random()?,
            secret: secret::random()?,
        })
    }

    /// Its text form (shown once, when made).
    pub fn encode(&self) -> String {
        format!("mak.{}.{}", hex(&self.id), hex(&self.secret))
    }

    /// Parses the text form.
    pub fn parse(s: &str) -> Option<ApiKeyToken> {
        let (id, secret) = s.strip_prefix("mak.")?.split_once('.')?;
        Some(ApiKeyToken {
            id: unhex(id)?,
            secret: unhex(secret)?,
        })
    }

    /// Whether this key is `record`'s and still valid at `now_ms`.
    pub fn matches(&self, record: &ApiKeyRecord, now_ms: u64) -> bool {
        secret::same(&secret::sha256(&self.secret), &record.secret_hash)
            && record.expires_ms > now_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_tokens_parse_back_and_reject_junk() {
        let t = RefreshToken {
            username: "ops.team@x".into(),
            family: [1; 16],
            generation: 42,
            secret: [2; 32],
        };
        assert_eq!(RefreshToken::parse(&t.encode()), Some(t.clone()));
        assert_eq!(RefreshToken::parse(&format!("{}.x", t.encode())), None);
        assert_eq!(RefreshToken::parse("mrt.zz.00.1.00"), None);
        assert_eq!(RefreshToken::parse(&"mrt.".repeat(1000)), None);
        let k = ApiKeyToken::generate().unwrap();
        let back = ApiKeyToken::parse(&k.encode()).unwrap();
        assert_eq!((back.id, back.secret), (k.id, k.secret));
    }

    #[test]
    fn access_tokens_check_signature_and_expiry() {
        let keys = AccessKeys::generate().unwrap();
        let now = crate::clock::unix_secs();
        let t = keys.issue("admin", &[7; 16], now, 60).unwrap();
        assert_eq!(keys.check(&t), Some(("admin".into(), [7; 16])));
        let other = AccessKeys::generate().unwrap();
        assert_eq!(other.check(&t), None, "another key's token");
        let old = keys.issue("admin", &[7; 16], now - 120, 60).unwrap();
        assert_eq!(keys.check(&old), None, "expired");
        // alg "none" with the same claims is refused.
        let none = format!(
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
            t.split('.').nth(1).unwrap()
        );
        assert_eq!(keys.check(&none), None);
    }
}
