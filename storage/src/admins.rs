//! The admin registry: operator accounts of the HTTP admin plane, their refresh-token
//! families, and API keys. Plain records: what a role may do, how a password is checked or
//! a TOTP code verified is the admin plane's business.
//!
//! ```text
//! admins CF  [1][len u8][username]                 account
//!            [2][len u8][username][family 16 B]     refresh-token family of that account
//!            [3][id 16 B]                           API key
//! ```
//!
//! An API key made by another key names it (`parent`): revoking a key revokes every key
//! below it in one write ([`Store::revoke_api_key`]). API-key records are version 2 (with
//! the parent); version 1 records (before keys could make keys) read as having none.
//!
//! Password hashes, their history and TOTP secrets are sealed with the store's key when one
//! is configured. Refresh-token and API-key secrets are never stored: only SHA-256 digests
//! of 256-bit random values, which is enough for secrets nobody chose. Changes are
//! read-modify-write under the registry lock and wait until durable.

use crate::error::StorageError;
use crate::record::{Dec, Enc};
use crate::writer::{Batch, Op};
use crate::{keys, Cf, Store};

const RECORD_V1: u8 = 1;
/// API keys with their parent key.
const API_KEY_V2: u8 = 2;

mod kind {
    pub const ACCOUNT: u8 = 1;
    pub const REFRESH: u8 = 2;
    pub const API_KEY: u8 = 3;
}

/// Longest admin username.
pub const MAX_ADMIN_NAME_LEN: usize = 64;
/// Most admin accounts (every login scans none, but listings return all).
pub const MAX_ADMINS: usize = 1000;
/// Most API keys.
pub const MAX_API_KEYS: usize = 10_000;
/// Hashes of earlier refresh tokens a family keeps, to recognise a reused one.
pub const MAX_PRIOR_TOKENS: usize = 32;

/// An operator account.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AdminRecord {
    /// Login name.
    pub username: String,
    /// Role name (the admin plane defines them).
    pub role: String,
    /// The one tenant a tenant-scoped role may act on.
    pub tenant: Option<String>,
    /// argon2id PHC string.
    pub password_hash: String,
    /// PHC strings of earlier passwords, newest first (the reuse check).
    pub password_history: Vec<String>,
    /// The password was generated or set by another admin and must be changed before
    /// anything else is done.
    pub must_change_password: bool,
    /// TOTP secret once enrolment is confirmed.
    pub totp_secret: Option<Vec<u8>>,
    /// TOTP secret offered by an enrolment not yet confirmed.
    pub totp_pending: Option<Vec<u8>>,
    /// The last TOTP time step accepted (a code is accepted once).
    pub totp_last_step: u64,
    /// SHA-256 digests of unused recovery codes.
    pub recovery_codes: Vec<[u8; 32]>,
    /// Failed logins since the last success. No longer used: the admin plane locks out
    /// per (account, source address), in memory (admin-http `login_guard.rs`), since an
    /// account-wide lock let anyone keep an admin out. Kept so existing records decode;
    /// written as 0 by an unlock.
    pub failed_logins: u32,
    /// Logins were refused until then (Unix ms). No longer used, as `failed_logins`.
    pub locked_until_ms: u64,
    /// A disabled account cannot log in, and its tokens stop working.
    pub enabled: bool,
    /// Unix ms.
    pub created_ms: u64,
}

/// One refresh-token family: the chain of tokens one login rotates through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshFamily {
    /// Account.
    pub username: String,
    /// Random family id.
    pub family: [u8; 16],
    /// Generation of the current token.
    pub generation: u32,
    /// SHA-256 of the current token's secret.
    pub current: [u8; 32],
    /// SHA-256 of rotated-out secrets, newest first (at most [`MAX_PRIOR_TOKENS`]).
    pub prior: Vec<[u8; 32]>,
    /// Unix ms.
    pub created_ms: u64,
    /// The family ends then, however often it is rotated (Unix ms).
    pub expires_ms: u64,
}

/// An API key for automation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    /// Random id (public: it names the key).
    pub id: [u8; 16],
    /// What it is for.
    pub name: String,
    /// Role name.
    pub role: String,
    /// Tenant of a tenant-scoped role.
    pub tenant: Option<String>,
    /// Scopes it is limited to.
    pub scopes: Vec<String>,
    /// SHA-256 of its secret.
    pub secret_hash: [u8; 32],
    /// Unix ms.
    pub created_ms: u64,
    /// It stops working then (Unix ms).
    pub expires_ms: u64,
    /// Admin who made it.
    pub created_by: String,
    /// The API key that made it (`None`: an account did). It stops working when that key
    /// is revoked, expires or is gone.
    pub parent: Option<[u8; 16]>,
}

/// Checks an admin username: 1 to 64 letters, digits, `.`, `_`, `-` or `@`.
pub fn validate_admin_name(name: &str) -> Result<(), StorageError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_ADMIN_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(StorageError::Invalid(format!(
            "admin username {name:?}: use 1 to {MAX_ADMIN_NAME_LEN} letters, digits, '.', '_', '-' or '@'"
        )))
    }
}

fn account_key(username: &str) -> Result<Vec<u8>, StorageError> {
    let mut k = vec![kind::ACCOUNT];
    k.extend_from_slice(&keys::tenant_prefix(username)?);
    Ok(k)
}

fn families_prefix(username: &str) -> Result<Vec<u8>, StorageError> {
    let mut k = vec![kind::REFRESH];
    k.extend_from_slice(&keys::tenant_prefix(username)?);
    Ok(k)
}

fn family_key(username: &str, family: &[u8; 16]) -> Result<Vec<u8>, StorageError> {
    Ok(keys::join(&families_prefix(username)?, family))
}

fn api_key_key(id: &[u8; 16]) -> Vec<u8> {
    keys::join(&[kind::API_KEY], id)
}

fn array<const N: usize>(d: &mut Dec<'_>) -> Result<[u8; N], StorageError> {
    let b = d.bytes()?;
    b.try_into()
        .map_err(|_| d.error(format!("expected {N} bytes, found {}", b.len())))
}

fn opt_str(e: &mut Enc, v: Option<&str>) -> Result<(), StorageError> {
    match v {
        Some(s) => e.u8(1).bytes(s.as_bytes()).map(|_| ()),
        None => {
            e.u8(0);
            Ok(())
        }
    }
}

fn read_opt_str(d: &mut Dec<'_>) -> Result<Option<String>, StorageError> {
    Ok(match d.u8()? {
        0 => None,
        _ => Some(d.str()?.to_owned()),
    })
}

fn strings(e: &mut Enc, list: &[String]) -> Result<(), StorageError> {
    e.u32(list.len() as u32);
    for s in list {
        e.bytes(s.as_bytes())?;
    }
    Ok(())
}

fn read_strings(d: &mut Dec<'_>) -> Result<Vec<String>, StorageError> {
    let n = d.u32()?;
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(d.str()?.to_owned());
    }
    Ok(out)
}

fn digests(e: &mut Enc, list: &[[u8; 32]]) -> Result<(), StorageError> {
    e.u32(list.len() as u32);
    for h in list {
        e.bytes(h)?;
    }
    Ok(())
}

fn read_digests(d: &mut Dec<'_>) -> Result<Vec<[u8; 32]>, StorageError> {
    let n = d.u32()?;
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(array(d)?);
    }
    Ok(out)
}

impl Store {
    fn seal_opt(&self, key: &[u8], e: &mut Enc, v: Option<&[u8]>) -> Result<(), StorageError> {
        match v {
            Some(plain) => {
                e.u8(1).bytes(&self.seal_secret(key, plain)?)?;
            }
            None => {
                e.u8(0);
            }
        }
        Ok(())
    }

    fn open_opt(&self, key: &[u8], d: &mut Dec<'_>) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(match d.u8()? {
            0 => None,
            _ => Some(self.open_secret(key, d.bytes()?)?),
        })
    }

    fn encode_admin(&self, key: &[u8], a: &AdminRecord) -> Result<Vec<u8>, StorageError> {
        let mut e = Enc::new(RECORD_V1, 512);
        e.bytes(a.role.as_bytes())?;
        opt_str(&mut e, a.tenant.as_deref())?;
        e.bytes(&self.seal_secret(key, a.password_hash.as_bytes())?)?;
        e.bytes(&self.seal_secret(key, a.password_history.join("\n").as_bytes())?)?;
        e.u8(u8::from(a.must_change_password));
        self.seal_opt(key, &mut e, a.totp_secret.as_deref())?;
        self.seal_opt(key, &mut e, a.totp_pending.as_deref())?;
        e.u64(a.totp_last_step);
        digests(&mut e, &a.recovery_codes)?;
        e.u32(a.failed_logins)
            .u64(a.locked_until_ms)
            .u8(u8::from(a.enabled))
            .u64(a.created_ms);
        Ok(e.finish())
    }

    fn decode_admin(
        &self,
        username: &str,
        key: &[u8],
        value: &[u8],
    ) -> Result<AdminRecord, StorageError> {
        let (mut d, version) = Dec::new("admins", value)?;
        if version != RECORD_V1 {
            return Err(d.error(format!("admin record version {version}")));
        }
        let role = d.str()?.to_owned();
        let tenant = read_opt_str(&mut d)?;
        let password_hash = String::from_utf8(self.open_secret(key, d.bytes()?)?)
            .map_err(|_| d.error("password hash is not UTF-8"))?;
        let history = String::from_utf8(self.open_secret(key, d.bytes()?)?)
            .map_err(|_| d.error("password history is not UTF-8"))?;
        let password_history = history
            .split('\n')
            .filter(|h| !h.is_empty())
            .map(str::to_owned)
            .collect();
        let must_change_password = d.u8()? != 0;
        let totp_secret = self.open_opt(key, &mut d)?;
        let totp_pending = self.open_opt(key, &mut d)?;
        let totp_last_step = d.u64()?;
        let recovery_codes = read_digests(&mut d)?;
        let failed_logins = d.u32()?;
        let locked_until_ms = d.u64()?;
        let enabled = d.u8()? != 0;
        let created_ms = d.u64()?;
        d.end()?;
        Ok(AdminRecord {
            username: username.to_owned(),
            role,
            tenant,
            password_hash,
            password_history,
            must_change_password,
            totp_secret,
            totp_pending,
            totp_last_step,
            recovery_codes,
            failed_logins,
            locked_until_ms,
            enabled,
            created_ms,
        })
    }

    /// One admin account. Blocking.
    pub fn admin(&self, username: &str) -> Result<Option<AdminRecord>, StorageError> {
        let key = account_key(username)?;
        self.get(Cf::Admins, &key)?
            .map(|v| self.decode_admin(username, &key, &v))
            .transpose()
    }

    /// Every admin account, by name length then name. Blocking.
    pub fn admins(&self) -> Result<Vec<AdminRecord>, StorageError> {
        let mut out = Vec::new();
        for (k, v) in self.scan(Cf::Admins, &[kind::ACCOUNT], &[], MAX_ADMINS)? {
            let (name, _) = keys::split_tenant_key(&k[1..])
                .ok_or_else(|| StorageError::corrupt("admins", "account key"))?;
            out.push(self.decode_admin(name, &k, &v)?);
        }
        Ok(out)
    }

    /// Creates an account; an error if it exists or [`MAX_ADMINS`] do. Blocking.
    pub fn create_admin(&self, a: &AdminRecord) -> Result<(), StorageError> {
        validate_admin_name(&a.username)?;
        let _g = self.registry_guard();
        let key = account_key(&a.username)?;
        if self.get(Cf::Admins, &key)?.is_some() {
            return Err(StorageError::Invalid(format!(
                "admin {:?} already exists",
                a.username
            )));
        }
        if self.admins()?.len() >= MAX_ADMINS {
            return Err(StorageError::Invalid(format!(
                "at most {MAX_ADMINS} admin accounts"
            )));
        }
        let mut b = Batch::new();
        b.push(Op::Put(
            Cf::Admins,
            key.clone(),
            self.encode_admin(&key, a)?,
        ));
        self.write_now(b)
    }

    /// Changes an account with `change` under the registry lock and stores it when
    /// `change` returns `Ok((result, true))`; `NotFound` if there is no such account.
    /// Blocking.
    pub fn update_admin<R>(
        &self,
        username: &str,
        change: impl FnOnce(&mut AdminRecord) -> Result<(R, bool), StorageError>,
    ) -> Result<R, StorageError> {
        let _g = self.registry_guard();
        let key = account_key(username)?;
        let Some(v) = self.get(Cf::Admins, &key)? else {
            return Err(StorageError::NotFound(format!("admin {username:?}")));
        };
        let mut record = self.decode_admin(username, &key, &v)?;
        let (out, write) = change(&mut record)?;
        if write {
            record.username = username.to_owned();
            let mut b = Batch::new();
            b.push(Op::Put(
                Cf::Admins,
                key.clone(),
                self.encode_admin(&key, &record)?,
            ));
            // Logins (and lockouts) must work on a full disk: the operator may be logging
            // in to free it.
            self.write_now_reserved(b)?;
        }
        Ok(out)
    }

    /// Deletes an account and its refresh-token families; false if there was none.
    /// Blocking.
    pub fn delete_admin(&self, username: &str) -> Result<bool, StorageError> {
        let _g = self.registry_guard();
        let key = account_key(username)?;
        if self.get(Cf::Admins, &key)?.is_none() {
            return Ok(false);
        }
        let prefix = families_prefix(username)?;
        let mut b = Batch::new();
        b.push(Op::Delete(Cf::Admins, key));
        if let Some(end) = keys::prefix_end(&prefix) {
            b.push(Op::DeleteRange(Cf::Admins, prefix, end));
        }
        self.write_now(b)?;
        Ok(true)
    }

    // --- refresh-token families ---

    fn encode_family(f: &RefreshFamily) -> Result<Vec<u8>, StorageError> {
        let mut e = Enc::new(RECORD_V1, 96 + 34 * f.prior.len());
        e.u32(f.generation).bytes(&f.current)?;
        digests(&mut e, &f.prior)?;
        e.u64(f.created_ms).u64(f.expires_ms);
        Ok(e.finish())
    }

    fn decode_family(
        username: &str,
        family: [u8; 16],
        value: &[u8],
    ) -> Result<RefreshFamily, StorageError> {
        let (mut d, version) = Dec::new("admins", value)?;
        if version != RECORD_V1 {
            return Err(d.error(format!("refresh family version {version}")));
        }
        let generation = d.u32()?;
        let current = array(&mut d)?;
        let prior = read_digests(&mut d)?;
        let created_ms = d.u64()?;
        let expires_ms = d.u64()?;
        d.end()?;
        Ok(RefreshFamily {
            username: username.to_owned(),
            family,
            generation,
            current,
            prior,
            created_ms,
            expires_ms,
        })
    }

    /// Every refresh-token family of an account (at most `limit`). Blocking.
    pub fn refresh_families(
        &self,
        username: &str,
        limit: usize,
    ) -> Result<Vec<RefreshFamily>, StorageError> {
        let prefix = families_prefix(username)?;
        let mut out = Vec::new();
        for (k, v) in self.scan(Cf::Admins, &prefix, &[], limit)? {
            let family = k[prefix.len()..]
                .try_into()
                .map_err(|_| StorageError::corrupt("admins", "refresh family key"))?;
            out.push(Self::decode_family(username, family, &v)?);
        }
        Ok(out)
    }

    /// One refresh-token family. Blocking.
    pub fn refresh_family(
        &self,
        username: &str,
        family: &[u8; 16],
    ) -> Result<Option<RefreshFamily>, StorageError> {
        self.get(Cf::Admins, &family_key(username, family)?)?
            .map(|v| Self::decode_family(username, *family, &v))
            .transpose()
    }

    /// Stores a family and deletes `drop` (expired or surplus families of the same
    /// account) in one write; the account must exist. Blocking.
    pub fn put_refresh_family(
        &self,
        f: &RefreshFamily,
        drop: &[[u8; 16]],
    ) -> Result<(), StorageError> {
        let _g = self.registry_guard();
        if self.get(Cf::Admins, &account_key(&f.username)?)?.is_none() {
            return Err(StorageError::NotFound(format!("admin {:?}", f.username)));
        }
        let mut b = Batch::new();
        for family in drop {
            b.push(Op::Delete(Cf::Admins, family_key(&f.username, family)?));
        }
        b.push(Op::Put(
            Cf::Admins,
            family_key(&f.username, &f.family)?,
            Self::encode_family(f)?,
        ));
        self.write_now_reserved(b)
    }

    /// Changes a family with `change` under the registry lock: `Some` stores the family
    /// it returns, `None` deletes it. `NotFound` if there is no such family. Blocking.
    pub fn update_refresh_family<R>(
        &self,
        username: &str,
        family: &[u8; 16],
        change: impl FnOnce(RefreshFamily) -> (R, Option<RefreshFamily>),
    ) -> Result<R, StorageError> {
        let _g = self.registry_guard();
        let key = family_key(username, family)?;
        let Some(v) = self.get(Cf::Admins, &key)? else {
            return Err(StorageError::NotFound("refresh token".into()));
        };
        let (out, next) = change(Self::decode_family(username, *family, &v)?);
        let mut b = Batch::new();
        match next {
            Some(mut f) => {
                f.prior.truncate(MAX_PRIOR_TOKENS);
                b.push(Op::Put(Cf::Admins, key, Self::encode_family(&f)?));
            }
            None => b.push(Op::Delete(Cf::Admins, key)),
        }
        self.write_now_reserved(b)?;
        Ok(out)
    }

    /// Deletes every refresh-token family of an account (password change, disable).
    /// Blocking.
    pub fn delete_refresh_families(&self, username: &str) -> Result<(), StorageError> {
        let _g = self.registry_guard();
        let prefix = families_prefix(username)?;
        let Some(end) = keys::prefix_end(&prefix) else {
            return Ok(());
        };
        let mut b = Batch::new();
        b.push(Op::DeleteRange(Cf::Admins, prefix, end));
        self.write_now(b)
    }

    // --- API keys ---

    fn encode_api_key(k: &ApiKeyRecord) -> Result<Vec<u8>, StorageError> {
        let mut e = Enc::new(API_KEY_V2, 160);
        e.bytes(k.name.as_bytes())?.bytes(k.role.as_bytes())?;
        opt_str(&mut e, k.tenant.as_deref())?;
        strings(&mut e, &k.scopes)?;
        e.bytes(&k.secret_hash)?
            .u64(k.created_ms)
            .u64(k.expires_ms)
            .bytes(k.created_by.as_bytes())?;
        match &k.parent {
            Some(p) => {
                e.u8(1).bytes(p)?;
            }
            None => {
                e.u8(0);
            }
        }
        Ok(e.finish())
    }

    fn decode_api_key(id: [u8; 16], value: &[u8]) -> Result<ApiKeyRecord, StorageError> {
        let (mut d, version) = Dec::new("admins", value)?;
        if version != RECORD_V1 && version != API_KEY_V2 {
            return Err(d.error(format!("api key version {version}")));
        }
        let name = d.str()?.to_owned();
        let role = d.str()?.to_owned();
        let tenant = read_opt_str(&mut d)?;
        let scopes = read_strings(&mut d)?;
        let secret_hash = array(&mut d)?;
        let created_ms = d.u64()?;
        let expires_ms = d.u64()?;
        let created_by = d.str()?.to_owned();
        let parent = match version {
            RECORD_V1 => None,
            _ => match d.u8()? {
                0 => None,
                _ => Some(array(&mut d)?),
            },
        };
        d.end()?;
        Ok(ApiKeyRecord {
            id,
            name,
            role,
            tenant,
            scopes,
            secret_hash,
            created_ms,
            expires_ms,
            created_by,
            parent,
        })
    }

    /// Stores a new API key; an error if [`MAX_API_KEYS`] exist, or if its parent key is
    /// gone (revoked while this one was being made: checked under the same lock as
    /// [`Store::revoke_api_key`], so no key outlives the revocation of its parent).
    /// Blocking.
    pub fn create_api_key(&self, k: &ApiKeyRecord) -> Result<(), StorageError> {
        let _g = self.registry_guard();
        if let Some(parent) = &k.parent {
            if self.get(Cf::Admins, &api_key_key(parent))?.is_none() {
                return Err(StorageError::NotFound("the parent API key".into()));
            }
        }
        if self.api_keys()?.len() >= MAX_API_KEYS {
            return Err(StorageError::Invalid(format!(
                "at most {MAX_API_KEYS} API keys"
            )));
        }
        let mut b = Batch::new();
        b.push(Op::Put(
            Cf::Admins,
            api_key_key(&k.id),
            Self::encode_api_key(k)?,
        ));
        self.write_now(b)
    }

    /// One API key. Blocking.
    pub fn api_key(&self, id: &[u8; 16]) -> Result<Option<ApiKeyRecord>, StorageError> {
        self.get(Cf::Admins, &api_key_key(id))?
            .map(|v| Self::decode_api_key(*id, &v))
            .transpose()
    }

    /// Every API key, by id. Blocking.
    pub fn api_keys(&self) -> Result<Vec<ApiKeyRecord>, StorageError> {
        let mut out = Vec::new();
        for (k, v) in self.scan(Cf::Admins, &[kind::API_KEY], &[], MAX_API_KEYS)? {
            let id = k[1..]
                .try_into()
                .map_err(|_| StorageError::corrupt("admins", "api key id"))?;
            out.push(Self::decode_api_key(id, &v)?);
        }
        Ok(out)
    }

    /// Revokes an API key and every key it made, transitively, in one write. Returns the
    /// ids deleted, `id` first (empty if there was no such key). Blocking.
    pub fn revoke_api_key(&self, id: &[u8; 16]) -> Result<Vec<[u8; 16]>, StorageError> {
        let _g = self.registry_guard();
        if self.get(Cf::Admins, &api_key_key(id))?.is_none() {
            return Ok(Vec::new());
        }
        let mut children: std::collections::HashMap<[u8; 16], Vec<[u8; 16]>> =
            std::collections::HashMap::new();
        for k in self.api_keys()? {
            if let Some(p) = k.parent {
                children.entry(p).or_default().push(k.id);
            }
        }
        // Breadth first over the parent links, iteratively; `seen` also ends a cycle, which
        // only a corrupt store could hold.
        let mut out = vec![*id];
        let mut seen = std::collections::HashSet::from([*id]);
        let mut next = 0;
        while let Some(parent) = out.get(next).copied() {
            next += 1;
            for child in children.get(&parent).into_iter().flatten() {
                if seen.insert(*child) {
                    out.push(*child);
                }
            }
        }
        let mut b = Batch::new();
        for k in &out {
            b.push(Op::Delete(Cf::Admins, api_key_key(k)));
        }
        self.write_now(b)?;
        Ok(out)
    }

    /// Deletes one API key (not the keys it made: see [`Store::revoke_api_key`]); false
    /// if there was none. Blocking.
    pub fn delete_api_key(&self, id: &[u8; 16]) -> Result<bool, StorageError> {
        let _g = self.registry_guard();
        let key = api_key_key(id);
        if self.get(Cf::Admins, &key)?.is_none() {
            return Ok(false);
        }
        let mut b = Batch::new();
        b.push(Op::Delete(Cf::Admins, key));
        self.write_now(b)?;
        Ok(true)
    }
}

/// Decodes one record of the `admins` family as the admin plane would (secrets opened, so
/// a plain value in an encrypted store or a planted record shows up): `messs storage
/// verify` must find what would stop the broker. Blocking.
pub(crate) fn verify_value(store: &Store, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
    let bad_key = || StorageError::corrupt("admins", "undecodable key");
    match key.split_first() {
        Some((&kind::ACCOUNT, rest)) => {
            let (name, tail) = keys::split_tenant_key(rest).ok_or_else(bad_key)?;
            if !tail.is_empty() {
                return Err(bad_key());
            }
            store.decode_admin(name, key, value).map(|_| ())
        }
        Some((&kind::REFRESH, rest)) => {
            let (name, family) = keys::split_tenant_key(rest).ok_or_else(bad_key)?;
            let family = family.try_into().map_err(|_| bad_key())?;
            Store::decode_family(name, family, value).map(|_| ())
        }
        Some((&kind::API_KEY, rest)) => {
            let id = rest.try_into().map_err(|_| bad_key())?;
            Store::decode_api_key(id, value).map(|_| ())
        }
        _ => Err(StorageError::corrupt("admins", "unknown record kind")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreOptions;

    fn account(name: &str) -> AdminRecord {
        AdminRecord {
            username: name.into(),
            role: "superadmin".into(),
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
            password_history: vec!["old1".into(), "old2".into()],
            totp_secret: Some(vec![7; 20]),
            recovery_codes: vec![[1; 32], [2; 32]],
            enabled: true,
            created_ms: 5,
            ..AdminRecord::default()
        }
    }

    #[test]
    fn accounts_families_and_keys_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(StoreOptions::new(dir.path())).unwrap();
        let a = account("admin");
        store.create_admin(&a).unwrap();
        assert!(store.create_admin(&a).is_err(), "duplicate account");
        assert_eq!(store.admin("admin").unwrap().unwrap(), a);
        // A name that is a prefix of another is a different account.
        store.create_admin(&account("admi")).unwrap();
        assert_eq!(store.admins().unwrap().len(), 2);

        let fam = RefreshFamily {
            username: "admin".into(),
            family: [9; 16],
            generation: 1,
            current: [3; 32],
            prior: vec![],
            created_ms: 1,
            expires_ms: 2,
        };
        store.put_refresh_family(&fam, &[]).unwrap();
        assert!(store.refresh_families("admi", 10).unwrap().is_empty());
        assert_eq!(
            store.refresh_families("admin", 10).unwrap(),
            vec![fam.clone()]
        );
        store
            .update_refresh_family("admin", &[9; 16], |mut f| {
                f.prior.insert(0, f.current);
                f.current = [4; 32];
                f.generation += 1;
                ((), Some(f))
            })
            .unwrap();
        let f = store.refresh_family("admin", &[9; 16]).unwrap().unwrap();
        assert_eq!((f.generation, f.prior.clone()), (2, vec![[3; 32]]));

        let key = ApiKeyRecord {
            id: [5; 16],
            name: "ci".into(),
            role: "viewer".into(),
            tenant: Some("t".into()),
            scopes: vec!["devices:read".into()],
            secret_hash: [6; 32],
            created_ms: 1,
            expires_ms: 9,
            created_by: "admin".into(),
            parent: None,
        };
        store.create_api_key(&key).unwrap();
        assert_eq!(store.api_key(&[5; 16]).unwrap().unwrap(), key);
        assert_eq!(store.api_keys().unwrap().len(), 1);

        // Deleting an account takes its families and leaves the other account alone.
        assert!(store.delete_admin("admin").unwrap());
        assert!(store.refresh_family("admin", &[9; 16]).unwrap().is_none());
        assert!(store.admin("admi").unwrap().is_some());
        assert!(store.delete_api_key(&[5; 16]).unwrap());
        assert!(!store.delete_api_key(&[5; 16]).unwrap());
    }

    fn key(id: u8, parent: Option<u8>) -> ApiKeyRecord {
        ApiKeyRecord {
            id: [id; 16],
            name: format!("k{id}"),
            role: "superadmin".into(),
            tenant: None,
            scopes: vec!["api-keys:write".into()],
            secret_hash: [id; 32],
            created_ms: 1,
            expires_ms: 9,
            created_by: "admin".into(),
            parent: parent.map(|p| [p; 16]),
        }
    }

    #[test]
    fn a_version_1_key_reads_without_a_parent() {
        let k = key(1, None);
        // The version 1 layout, as written before keys could make keys.
        let mut e = Enc::new(RECORD_V1, 128);
        e.bytes(k.name.as_bytes()).unwrap();
        e.bytes(k.role.as_bytes()).unwrap();
        opt_str(&mut e, None).unwrap();
        strings(&mut e, &k.scopes).unwrap();
        e.bytes(&k.secret_hash).unwrap().u64(1).u64(9);
        e.bytes(b"admin").unwrap();
        assert_eq!(Store::decode_api_key([1; 16], &e.finish()).unwrap(), k);
        let child = key(2, Some(1));
        let v2 = Store::encode_api_key(&child).unwrap();
        assert_eq!(Store::decode_api_key([2; 16], &v2).unwrap(), child);
        let mut future = v2.clone();
        future[0] = 3;
        assert!(Store::decode_api_key([2; 16], &future).is_err());
    }

    #[test]
    fn revoking_a_key_revokes_what_it_made() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(StoreOptions::new(dir.path())).unwrap();
        // 1 -> 2 -> 3, 1 -> 4; 5 is another tree.
        for (id, parent) in [
            (1, None),
            (2, Some(1)),
            (3, Some(2)),
            (4, Some(1)),
            (5, None),
        ] {
            store.create_api_key(&key(id, parent)).unwrap();
        }
        assert!(matches!(
            store.create_api_key(&key(6, Some(7))),
            Err(StorageError::NotFound(_))
        ));
        assert_eq!(
            store.revoke_api_key(&[2; 16]).unwrap(),
            vec![[2; 16], [3; 16]]
        );
        let mut gone = store.revoke_api_key(&[1; 16]).unwrap();
        gone.sort();
        assert_eq!(gone, vec![[1; 16], [4; 16]]);
        assert!(store.revoke_api_key(&[1; 16]).unwrap().is_empty());
        let left: Vec<_> = store.api_keys().unwrap().iter().map(|k| k.id).collect();
        assert_eq!(left, vec![[5; 16]]);
    }

    #[test]
    fn update_writes_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(StoreOptions::new(dir.path())).unwrap();
        store.create_admin(&account("a")).unwrap();
        store
            .update_admin("a", |r| {
                r.failed_logins = 3;
                Ok(((), false))
            })
            .unwrap();
        assert_eq!(store.admin("a").unwrap().unwrap().failed_logins, 0);
        store
            .update_admin("a", |r| {
                r.failed_logins = 3;
                Ok(((), true))
            })
            .unwrap();
        assert_eq!(store.admin("a").unwrap().unwrap().failed_logins, 3);
        assert!(matches!(
            store.update_admin("b", |_| Ok(((), true))),
            Err(StorageError::NotFound(_))
        ));
        assert!(validate_admin_name("bad name").is_err());
    }
}
