//! The security registry: tenants and their settings (JWT keys, trusted client CAs, revoked
//! certificates), devices, and each tenant's ordered ACL rules. The records are plain data;
//! what they mean (password hashing, rule matching, certificate checks) is the broker's.
//!
//! ```text
//! tenants CF  [tenant prefix][kind u8][tail]   kind: record, jwt key (kid), ca (sha-256), revoked (sha-256)
//! devices CF  [tenant prefix][username]
//! acls CF     [tenant prefix]                  the tenant's whole rule list, in order
//! ```
//!
//! Changes are read-modify-write under one lock and wait until durable, so two operators
//! (or an operator and the admin plane) cannot lose each other's change. Secret values
//! (password hashes, HMAC keys) are sealed with the store's key when one is configured.

use std::sync::PoisonError;

use crate::error::StorageError;
use crate::keys;
use crate::record::{Dec, Enc};
use crate::writer::{Batch, Op, Ticket};
use crate::{block_on, Cf, Store};

const RECORD_V1: u8 = 1;
/// Device records from schema 2 on: version 1 plus an optional SCRAM credential and the
/// device's limit overrides.
const DEVICE_V2: u8 = 2;
/// Tenant records with flags.
const TENANT_V2: u8 = 2;

/// Kinds of record under a tenant's prefix in the tenants column family.
mod kind {
    pub const TENANT: u8 = 0;
    pub const JWT_KEY: u8 = 1;
    pub const CA: u8 = 2;
    pub const REVOKED: u8 = 3;
}

/// Longest tenant id.
pub const MAX_TENANT_LEN: usize = 64;
/// Longest username.
pub const MAX_USERNAME_LEN: usize = 256;
/// Most ACL rules one tenant may have (they are compiled into every connection).
pub const MAX_ACL_RULES: usize = 4096;

/// A tenant: a namespace of its own for topics, sessions, retained messages and telemetry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRecord {
    /// Its id: what devices name after `@` in their username, and the storage key.
    pub id: String,
    /// A display name.
    pub name: String,
    /// A disabled tenant's devices cannot connect.
    pub enabled: bool,
    /// When it was created (Unix ms).
    pub created_ms: u64,
    /// Per-tenant limits by name (interpreted by the broker's limits).
    pub limits: Vec<(String, u64)>,
    /// A client certificate from one of the tenant's CAs whose name has no device record
    /// registers that device at its first login (off: it is refused). Off by default.
    pub cert_auto_register: bool,
}

/// A device: one identity that may connect to one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// Its tenant.
    pub tenant: String,
    /// Its username (unique within the tenant).
    pub username: String,
    /// argon2id PHC string; `None`: no password (it logs in with a token or certificate).
    pub password_hash: Option<String>,
    /// Client ids it may use: `*` matches any run of characters, `%u` is the username;
    /// `None`: any.
    pub client_id_pattern: Option<String>,
    /// Groups, for ACL rules that name a group.
    pub groups: Vec<String>,
    /// A disabled device cannot connect.
    pub enabled: bool,
    /// Bumped at every change, so cached verifications of an older version are stale.
    pub version: u64,
    /// SCRAM-SHA-256 verifier for MQTT 5 enhanced authentication, derived from the same
    /// password; `None` when no plaintext was ever given (an imported hash).
    pub scram: Option<ScramCredential>,
    /// Per-device overrides of the per-connection limits, by name (interpreted by the
    /// broker).
    pub limits: Vec<(String, u64)>,
}

/// What a server keeps to check a SCRAM-SHA-256 login (RFC 5802, 7677): never the
/// password, nor anything a client could log in with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScramCredential {
    /// PBKDF2 iterations.
    pub iterations: u32,
    /// PBKDF2 salt.
    pub salt: Vec<u8>,
    /// H(ClientKey).
    pub stored_key: [u8; 32],
    /// HMAC(SaltedPassword, "Server Key").
    pub server_key: [u8; 32],
}

/// What an ACL rule governs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AclAction {
    /// PUBLISH (and wills).
    Publish,
    /// SUBSCRIBE (and every delivery: retained, queued, live).
    Subscribe,
    /// Both.
    Both,
}

/// Whom an ACL rule applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AclSubject {
    /// Every client of the tenant.
    All,
    /// Clients logged in with this username.
    User(String),
    /// Clients whose device is in this group.
    Group(String),
    /// Clients without credentials (anonymous listeners).
    Anonymous,
}

/// One ordered allow/deny rule of a tenant. The first rule that matches decides; when none
/// does, the answer is deny.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclRule {
    /// Stable id, for removal.
    pub id: u32,
    /// Allow (true) or deny.
    pub allow: bool,
    /// What it governs.
    pub action: AclAction,
    /// Topic filter; `%c` and `%u` stand for the client id and username.
    pub filter: String,
    /// Whom it applies to.
    pub subject: AclSubject,
    /// QoS levels it applies to, as bits (1 = QoS 0, 2 = QoS 1, 4 = QoS 2); 7 = any.
    pub qos_mask: u8,
    /// Applies only to messages with this retain flag; `None`: either.
    pub retain: Option<bool>,
}

/// A key a tenant signs device JWTs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtKey {
    /// The `kid` header value that selects it.
    pub kid: String,
    /// Algorithm: HS256, RS256, ES256 or EdDSA.
    pub alg: String,
    /// The HMAC secret (HS256) or the public key in PEM.
    pub key: Vec<u8>,
}

/// A CA whose certificates identify the tenant's devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedCa {
    /// SHA-256 of the DER.
    pub fingerprint: [u8; 32],
    /// The certificate, DER.
    pub der: Vec<u8>,
}

fn tenant_key(tenant: &str, k: u8, tail: &[u8]) -> Result<Vec<u8>, StorageError> {
    let mut key = keys::tenant_prefix(tenant)?;
    key.push(k);
    key.extend_from_slice(tail);
    Ok(key)
}

/// Checks a tenant id: 1 to 64 of `A-Z a-z 0-9 - _ .`.
pub fn validate_tenant_id(id: &str) -> Result<(), StorageError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_TENANT_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(StorageError::Invalid(format!(
            "tenant id {id:?}: use 1 to {MAX_TENANT_LEN} letters, digits, '-', '_' or '.'"
        )))
    }
}

fn validate_username(name: &str) -> Result<(), StorageError> {
    if name.is_empty() || name.len() > MAX_USERNAME_LEN || name.chars().any(char::is_control) {
        return Err(StorageError::Invalid(format!(
            "a username has 1 to {MAX_USERNAME_LEN} bytes and no control characters"
        )));
    }
    Ok(())
}

/// Named limits (a tenant's or a device's overrides): a count, then name and value pairs.
fn encode_limits(e: &mut Enc, limits: &[(String, u64)]) -> Result<(), StorageError> {
    e.u32(limits.len() as u32);
    for (name, value) in limits {
        e.bytes(name.as_bytes())?.u64(*value);
    }
    Ok(())
}

fn decode_limits(d: &mut Dec<'_>) -> Result<Vec<(String, u64)>, StorageError> {
    let n = d.u32()?;
    let mut limits = Vec::new();
    for _ in 0..n {
        let k = d.str()?.to_owned();
        limits.push((k, d.u64()?));
    }
    Ok(limits)
}

/// Tenant record flags (version 2 on).
const TENANT_CERT_AUTO_REGISTER: u8 = 1;

impl TenantRecord {
    fn encode(&self) -> Result<Vec<u8>, StorageError> {
        let mut e = Enc::new(TENANT_V2, 64);
        e.bytes(self.name.as_bytes())?
            .u8(u8::from(self.enabled))
            .u64(self.created_ms);
        encode_limits(&mut e, &self.limits)?;
        let mut flags = 0;
        if self.cert_auto_register {
            flags |= TENANT_CERT_AUTO_REGISTER;
        }
        e.u8(flags);
        Ok(e.finish())
    }

    /// Version 1 (before flags) reads with every flag off.
    fn decode(id: &str, value: &[u8]) -> Result<Self, StorageError> {
        let (mut d, version) = Dec::new("tenants", value)?;
        if version != RECORD_V1 && version != TENANT_V2 {
            return Err(d.error(format!("tenant record version {version}")));
        }
        let name = d.str()?.to_owned();
        let enabled = d.u8()? != 0;
        let created_ms = d.u64()?;
        let limits = decode_limits(&mut d)?;
        let flags = if version == TENANT_V2 { d.u8()? } else { 0 };
        d.end()?;
        Ok(TenantRecord {
            id: id.to_owned(),
            name,
            enabled,
            created_ms,
            limits,
            cert_auto_register: flags & TENANT_CERT_AUTO_REGISTER != 0,
        })
    }
}

fn encode_strings(e: &mut Enc, list: &[String]) -> Result<(), StorageError> {
    e.u32(list.len() as u32);
    for s in list {
        e.bytes(s.as_bytes())?;
    }
    Ok(())
}

fn decode_strings(d: &mut Dec<'_>) -> Result<Vec<String>, StorageError> {
    let n = d.u32()?;
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(d.str()?.to_owned());
    }
    Ok(out)
}

fn encode_opt_str(e: &mut Enc, v: Option<&str>) -> Result<(), StorageError> {
    match v {
        Some(s) => {
            e.u8(1).bytes(s.as_bytes())?;
        }
        None => {
            e.u8(0);
        }
    }
    Ok(())
}

fn decode_opt_str(d: &mut Dec<'_>) -> Result<Option<String>, StorageError> {
    Ok(match d.u8()? {
        0 => None,
        _ => Some(d.str()?.to_owned()),
    })
}

impl AclRule {
    fn encode(&self, e: &mut Enc) -> Result<(), StorageError> {
        let action = match self.action {
            AclAction::Publish => 0,
            AclAction::Subscribe => 1,
            AclAction::Both => 2,
        };
        e.u32(self.id)
            .u8(u8::from(self.allow))
            .u8(action)
            .bytes(self.filter.as_bytes())?;
        match &self.subject {
            AclSubject::All => e.u8(0),
            AclSubject::User(u) => e.u8(1).bytes(u.as_bytes())?,
            AclSubject::Group(g) => e.u8(2).bytes(g.as_bytes())?,
            AclSubject::Anonymous => e.u8(3),
        };
        e.u8(self.qos_mask).u8(match self.retain {
            None => 0,
            Some(false) => 1,
            Some(true) => 2,
        });
        Ok(())
    }

    fn decode(d: &mut Dec<'_>) -> Result<Self, StorageError> {
        let id = d.u32()?;
        let allow = d.u8()? != 0;
        let action = match d.u8()? {
            0 => AclAction::Publish,
            1 => AclAction::Subscribe,
            2 => AclAction::Both,
            n => return Err(d.error(format!("acl action {n}"))),
        };
        let filter = d.str()?.to_owned();
        let subject = match d.u8()? {
            0 => AclSubject::All,
            1 => AclSubject::User(d.str()?.to_owned()),
            2 => AclSubject::Group(d.str()?.to_owned()),
            3 => AclSubject::Anonymous,
            n => return Err(d.error(format!("acl subject {n}"))),
        };
        let qos_mask = d.u8()? & 7;
        let retain = match d.u8()? {
            0 => None,
            1 => Some(false),
            _ => Some(true),
        };
        Ok(AclRule {
            id,
            allow,
            action,
            filter,
            subject,
            qos_mask,
            retain,
        })
    }
}

/// A key and its value, as read.
pub(crate) type KeyValue = (Box<[u8]>, Box<[u8]>);

fn sha256(data: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl Store {
    /// Submits `batch` and waits until it is durable. Blocking.
    pub(crate) fn write_now(&self, mut batch: Batch) -> Result<(), StorageError> {
        batch.mark_new_data();
        self.write_batch_now(batch)
    }

    /// As `write_now`, for a security-critical operator change (disabling or deleting a
    /// device, a revocation, an admin login): written from the reserved margin of free
    /// space, so a full disk never locks the operator out (see [`crate::space`]).
    pub(crate) fn write_now_reserved(&self, mut batch: Batch) -> Result<(), StorageError> {
        batch.mark_reserved();
        self.write_batch_now(batch)
    }

    fn write_batch_now(&self, batch: Batch) -> Result<(), StorageError> {
        let (ticket, durable) = Ticket::new();
        self.submit(batch, Some(&ticket))?;
        drop(ticket);
        block_on(durable)
    }

    pub(crate) fn registry_guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.inner
            .registry
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.inner.db.get_cf(self.cf(cf)?, key)?)
    }

    /// Every key and value in `cf` starting with `prefix`, from `from` (inclusive) on, at
    /// most `limit`.
    pub(crate) fn scan(
        &self,
        cf: Cf,
        prefix: &[u8],
        from: &[u8],
        limit: usize,
    ) -> Result<Vec<KeyValue>, StorageError> {
        let start = keys::join(prefix, from);
        let mut out = Vec::new();
        let mode = rocksdb::IteratorMode::From(&start, rocksdb::Direction::Forward);
        for item in self.inner.db.iterator_cf(self.cf(cf)?, mode) {
            let (k, v) = item?;
            if !k.starts_with(prefix) || out.len() >= limit {
                break;
            }
            out.push((k, v));
        }
        Ok(out)
    }

    // --- tenants ---

    /// Creates a tenant; an error if it exists. Blocking.
    pub fn add_tenant(&self, t: &TenantRecord) -> Result<(), StorageError> {
        validate_tenant_id(&t.id)?;
        let _g = self.registry_guard();
        let key = tenant_key(&t.id, kind::TENANT, &[])?;
        if self.get(Cf::Tenants, &key)?.is_some() {
            return Err(StorageError::Invalid(format!(
                "tenant {:?} already exists",
                t.id
            )));
        }
        let mut b = Batch::new();
        b.push(Op::Put(Cf::Tenants, key, t.encode()?));
        self.write_now(b)
    }

    /// Replaces a tenant's record (status, name, limits); an error if it does not exist.
    /// Blocking.
    pub fn update_tenant(&self, t: &TenantRecord) -> Result<(), StorageError> {
        let _g = self.registry_guard();
        let key = tenant_key(&t.id, kind::TENANT, &[])?;
        if self.get(Cf::Tenants, &key)?.is_none() {
            return Err(StorageError::NotFound(format!("tenant {:?}", t.id)));
        }
        let mut b = Batch::new();
        b.push(Op::Put(Cf::Tenants, key, t.encode()?));
        self.write_now(b)
    }

    /// One tenant. Blocking.
    pub fn tenant(&self, id: &str) -> Result<Option<TenantRecord>, StorageError> {
        let key = tenant_key(id, kind::TENANT, &[])?;
        self.get(Cf::Tenants, &key)?
            .map(|v| TenantRecord::decode(id, &v))
            .transpose()
    }

    /// Every tenant, ordered by id length then id (the key order). Blocking.
    pub fn tenants(&self) -> Result<Vec<TenantRecord>, StorageError> {
        let mut out = Vec::new();
        for item in self
            .inner
            .db
            .iterator_cf(self.cf(Cf::Tenants)?, rocksdb::IteratorMode::Start)
        {
            let (k, v) = item?;
            let (tenant, rest) = keys::split_tenant_key(&k)
                .ok_or_else(|| StorageError::corrupt("tenants", "undecodable key"))?;
            if rest == [kind::TENANT] {
                out.push(TenantRecord::decode(tenant, &v)?);
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    // --- devices ---

    fn device_key(tenant: &str, username: &str) -> Result<Vec<u8>, StorageError> {
        Ok(keys::join(
            &keys::tenant_prefix(tenant)?,
            username.as_bytes(),
        ))
    }

    fn encode_device(&self, key: &[u8], d: &DeviceRecord) -> Result<Vec<u8>, StorageError> {
        let mut e = Enc::new(DEVICE_V2, 192);
        match &d.password_hash {
            Some(h) => {
                let sealed = self.seal_secret(key, h.as_bytes())?;
                e.u8(1).bytes(&sealed)?;
            }
            None => {
                e.u8(0);
            }
        }
        encode_opt_str(&mut e, d.client_id_pattern.as_deref())?;
        encode_strings(&mut e, &d.groups)?;
        e.u8(u8::from(d.enabled)).u64(d.version);
        match &d.scram {
            Some(c) => {
                let mut keys = [0u8; 64];
                keys[..32].copy_from_slice(&c.stored_key);
                keys[32..].copy_from_slice(&c.server_key);
                let sealed = self.seal_secret(key, &keys)?;
                e.u8(1).u32(c.iterations).bytes(&c.salt)?.bytes(&sealed)?;
            }
            None => {
                e.u8(0);
            }
        }
        encode_limits(&mut e, &d.limits)?;
        Ok(e.finish())
    }

    fn decode_device(
        &self,
        tenant: &str,
        username: &str,
        key: &[u8],
        value: &[u8],
    ) -> Result<DeviceRecord, StorageError> {
        let (mut d, version) = Dec::new("devices", value)?;
        if version != RECORD_V1 && version != DEVICE_V2 {
            return Err(d.error(format!("device record version {version}")));
        }
        let password_hash = match d.u8()? {
            0 => None,
            _ => {
                let plain = self.open_secret(key, d.bytes()?)?;
                Some(
                    String::from_utf8(plain)
                        .map_err(|_| StorageError::corrupt("devices", "hash is not UTF-8"))?,
                )
            }
        };
        let client_id_pattern = decode_opt_str(&mut d)?;
        let groups = decode_strings(&mut d)?;
        let enabled = d.u8()? != 0;
        let record_version = version;
        let version = d.u64()?;
        let scram = match record_version == DEVICE_V2 && d.u8()? != 0 {
            false => None,
            true => {
                let iterations = d.u32()?;
                let salt = d.bytes()?.to_vec();
                let keys = self.open_secret(key, d.bytes()?)?;
                if keys.len() != 64 {
                    return Err(StorageError::corrupt(
                        "devices",
                        "SCRAM keys are not 64 bytes",
                    ));
                }
                let (mut stored_key, mut server_key) = ([0u8; 32], [0u8; 32]);
                stored_key.copy_from_slice(&keys[..32]);
                server_key.copy_from_slice(&keys[32..]);
                Some(ScramCredential {
                    iterations,
                    salt,
                    stored_key,
                    server_key,
                })
            }
        };
        let limits = if record_version == DEVICE_V2 {
            decode_limits(&mut d)?
        } else {
            Vec::new()
        };
        d.end()?;
        Ok(DeviceRecord {
            tenant: tenant.to_owned(),
            username: username.to_owned(),
            password_hash,
            client_id_pattern,
            groups,
            enabled,
            version,
            scram,
            limits,
        })
    }

    /// Creates a device (`create`) or replaces an existing one (`!create`); its `version`
    /// is set one past the stored one. The tenant must exist. Returns the new version.
    /// Blocking.
    pub fn put_device(&self, d: &DeviceRecord, create: bool) -> Result<u64, StorageError> {
        validate_username(&d.username)?;
        let _g = self.registry_guard();
        if self
            .get(Cf::Tenants, &tenant_key(&d.tenant, kind::TENANT, &[])?)?
            .is_none()
        {
            return Err(StorageError::NotFound(format!("tenant {:?}", d.tenant)));
        }
        let key = Self::device_key(&d.tenant, &d.username)?;
        let old = self.get(Cf::Devices, &key)?;
        let previous = match (&old, create) {
            (Some(_), true) => {
                return Err(StorageError::Invalid(format!(
                    "device {:?} already exists in tenant {:?}",
                    d.username, d.tenant
                )))
            }
            (None, false) => {
                return Err(StorageError::NotFound(format!(
                    "device {:?} in tenant {:?}",
                    d.username, d.tenant
                )))
            }
            (Some(v), false) => self.decode_device(&d.tenant, &d.username, &key, v)?.version,
            (None, true) => 0,
        };
        let mut record = d.clone();
        record.version = previous + 1;
        let mut b = Batch::new();
        b.push(Op::Put(
            Cf::Devices,
            key.clone(),
            self.encode_device(&key, &record)?,
        ));
        if record.enabled {
            self.write_now(b)?;
        } else {
            // Disabling a device must work on a full disk: it may be what fills it.
            self.write_now_reserved(b)?;
        }
        Ok(record.version)
    }

    /// One device. Blocking.
    pub fn device(
        &self,
        tenant: &str,
        username: &str,
    ) -> Result<Option<DeviceRecord>, StorageError> {
        let key = Self::device_key(tenant, username)?;
        self.get(Cf::Devices, &key)?
            .map(|v| self.decode_device(tenant, username, &key, &v))
            .transpose()
    }

    /// Up to `limit` devices of a tenant in username order, starting after `after`.
    /// Blocking.
    pub fn devices(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeviceRecord>, StorageError> {
        let prefix = keys::tenant_prefix(tenant)?;
        let mut from = after.map(|a| a.as_bytes().to_vec()).unwrap_or_default();
        if after.is_some() {
            from.push(0);
        }
        let mut out = Vec::new();
        for (k, v) in self.scan(Cf::Devices, &prefix, &from, limit)? {
            let username = std::str::from_utf8(&k[prefix.len()..])
                .map_err(|_| StorageError::corrupt("devices", "username is not UTF-8"))?;
            out.push(self.decode_device(tenant, username, &k, &v)?);
        }
        Ok(out)
    }

    /// Deletes a device; false if there was none. Blocking.
    pub fn delete_device(&self, tenant: &str, username: &str) -> Result<bool, StorageError> {
        let _g = self.registry_guard();
        let key = Self::device_key(tenant, username)?;
        if self.get(Cf::Devices, &key)?.is_none() {
            return Ok(false);
        }
        let mut b = Batch::new();
        b.push(Op::Delete(Cf::Devices, key));
        self.write_now(b)?;
        Ok(true)
    }

    // --- ACL rules ---

    /// A tenant's rules, in order. Blocking.
    pub fn acl_rules(&self, tenant: &str) -> Result<Vec<AclRule>, StorageError> {
        let key = keys::tenant_prefix(tenant)?;
        let Some(v) = self.get(Cf::Acls, &key)? else {
            return Ok(Vec::new());
        };
        let (mut d, version) = Dec::new("acls", &v)?;
        if version != RECORD_V1 {
            return Err(d.error(format!("acl list version {version}")));
        }
        let n = d.u32()?;
        let mut rules = Vec::new();
        for _ in 0..n {
            rules.push(AclRule::decode(&mut d)?);
        }
        d.end()?;
        Ok(rules)
    }

    /// Changes a tenant's rule list with `change` (which gets the rules and the next free
    /// id) and stores the result; returns what `change` returned. Blocking.
    pub fn update_acl_rules<R>(
        &self,
        tenant: &str,
        change: impl FnOnce(&mut Vec<AclRule>, u32) -> Result<R, StorageError>,
    ) -> Result<R, StorageError> {
        validate_tenant_id(tenant)?;
        let _g = self.registry_guard();
        let mut rules = self.acl_rules(tenant)?;
        let next_id = rules.iter().map(|r| r.id).max().unwrap_or(0) + 1;
        let out = change(&mut rules, next_id)?;
        if rules.len() > MAX_ACL_RULES {
            return Err(StorageError::Invalid(format!(
                "a tenant has at most {MAX_ACL_RULES} ACL rules"
            )));
        }
        let mut e = Enc::new(RECORD_V1, 64 * rules.len());
        e.u32(rules.len() as u32);
        for r in &rules {
            r.encode(&mut e)?;
        }
        let mut b = Batch::new();
        b.push(Op::Put(Cf::Acls, keys::tenant_prefix(tenant)?, e.finish()));
        self.write_now(b)?;
        Ok(out)
    }

    // --- JWT keys, CAs, revocations ---

    /// Adds or replaces a tenant's JWT key by `kid`. Blocking.
    pub fn put_jwt_key(&self, tenant: &str, k: &JwtKey) -> Result<(), StorageError> {
        let _g = self.registry_guard();
        let key = tenant_key(tenant, kind::JWT_KEY, k.kid.as_bytes())?;
        let mut e = Enc::new(RECORD_V1, 64 + k.key.len());
        e.bytes(k.alg.as_bytes())?
            .bytes(&self.seal_secret(&key, &k.key)?)?;
        let mut b = Batch::new();
        b.push(Op::Put(Cf::Tenants, key, e.finish()));
        self.write_now(b)
    }

    /// A tenant's JWT keys. Blocking.
    pub fn jwt_keys(&self, tenant: &str) -> Result<Vec<JwtKey>, StorageError> {
        let prefix = tenant_key(tenant, kind::JWT_KEY, &[])?;
        let mut out = Vec::new();
        for (k, v) in self.scan(Cf::Tenants, &prefix, &[], usize::MAX)? {
            let kid = std::str::from_utf8(&k[prefix.len()..])
                .map_err(|_| StorageError::corrupt("tenants", "kid is not UTF-8"))?;
            let (mut d, _) = Dec::new("tenants", &v)?;
            let alg = d.str()?.to_owned();
            let key = self.open_secret(&k, d.bytes()?)?;
            d.end()?;
            out.push(JwtKey {
                kid: kid.to_owned(),
                alg,
                key,
            });
        }
        Ok(out)
    }

    /// Removes a JWT key; false if there was none. Blocking.
    pub fn delete_jwt_key(&self, tenant: &str, kid: &str) -> Result<bool, StorageError> {
        self.delete_tenant_item(tenant_key(tenant, kind::JWT_KEY, kid.as_bytes())?)
    }

    /// Trusts a CA for a tenant's device certificates; returns its fingerprint. Blocking.
    pub fn add_ca(&self, tenant: &str, der: &[u8]) -> Result<[u8; 32], StorageError> {
        let _g = self.registry_guard();
        self.put_ca(tenant, der)
    }

    /// Trusts a CA for `tenant` unless another tenant trusts one that `same_anchor` says
    /// is the same trust anchor (the caller knows X.509; this crate does not). The check
    /// and the write are one step under the registry lock, so two tenants adding the same
    /// anchor at once cannot both succeed. `Ok(None)`: another tenant has it. Blocking.
    pub fn add_ca_exclusive(
        &self,
        tenant: &str,
        der: &[u8],
        same_anchor: impl Fn(&[u8]) -> bool,
    ) -> Result<Option<[u8; 32]>, StorageError> {
        let _g = self.registry_guard();
        for other in self.tenants()? {
            if other.id != tenant && self.cas(&other.id)?.iter().any(|c| same_anchor(&c.der)) {
                return Ok(None);
            }
        }
        self.put_ca(tenant, der).map(Some)
    }

    fn put_ca(&self, tenant: &str, der: &[u8]) -> Result<[u8; 32], StorageError> {
        let fingerprint = sha256(der);
        let mut b = Batch::new();
        b.push(Op::Put(
            Cf::Tenants,
            tenant_key(tenant, kind::CA, &fingerprint)?,
            der.to_vec(),
        ));
        self.write_now(b)?;
        Ok(fingerprint)
    }

    /// A tenant's trusted CAs. Blocking.
    pub fn cas(&self, tenant: &str) -> Result<Vec<TrustedCa>, StorageError> {
        let prefix = tenant_key(tenant, kind::CA, &[])?;
        self.scan(Cf::Tenants, &prefix, &[], usize::MAX)?
            .into_iter()
            .map(|(k, v)| {
                let fingerprint: [u8; 32] = k[prefix.len()..]
                    .try_into()
                    .map_err(|_| StorageError::corrupt("tenants", "CA key"))?;
                Ok(TrustedCa {
                    fingerprint,
                    der: v.into_vec(),
                })
            })
            .collect()
    }

    /// Stops trusting a CA; false if it was not trusted. Blocking.
    pub fn delete_ca(&self, tenant: &str, fingerprint: &[u8; 32]) -> Result<bool, StorageError> {
        self.delete_tenant_item(tenant_key(tenant, kind::CA, fingerprint)?)
    }

    /// Revokes a certificate by the SHA-256 of its DER. Blocking.
    pub fn revoke_cert(&self, tenant: &str, fingerprint: &[u8; 32]) -> Result<(), StorageError> {
        let _g = self.registry_guard();
        let mut b = Batch::new();
        b.push(Op::Put(
            Cf::Tenants,
            tenant_key(tenant, kind::REVOKED, fingerprint)?,
            Vec::new(),
        ));
        self.write_now_reserved(b)
    }

    /// A tenant's revoked certificate fingerprints. Blocking.
    pub fn revoked_certs(&self, tenant: &str) -> Result<Vec<[u8; 32]>, StorageError> {
        let prefix = tenant_key(tenant, kind::REVOKED, &[])?;
        self.scan(Cf::Tenants, &prefix, &[], usize::MAX)?
            .into_iter()
            .map(|(k, _)| {
                k[prefix.len()..]
                    .try_into()
                    .map_err(|_| StorageError::corrupt("tenants", "revocation key"))
            })
            .collect()
    }

    fn delete_tenant_item(&self, key: Vec<u8>) -> Result<bool, StorageError> {
        let _g = self.registry_guard();
        if self.get(Cf::Tenants, &key)?.is_none() {
            return Ok(false);
        }
        let mut b = Batch::new();
        b.push(Op::Delete(Cf::Tenants, key));
        self.write_now(b)?;
        Ok(true)
    }
}

/// The SHA-256 fingerprint of a DER certificate (how CAs and revocations are keyed).
pub fn cert_fingerprint(der: &[u8]) -> [u8; 32] {
    sha256(der)
}

/// Decodes one registry record, secrets opened (`messs storage verify`).
pub(crate) fn verify_value(
    store: &Store,
    cf: Cf,
    key: &[u8],
    value: &[u8],
) -> Result<(), StorageError> {
    let (tenant, rest) = keys::split_tenant_key(key)
        .ok_or_else(|| StorageError::corrupt(cf.name(), "undecodable key"))?;
    match cf {
        Cf::Devices => {
            let username = std::str::from_utf8(rest)
                .map_err(|_| StorageError::corrupt("devices", "username is not UTF-8"))?;
            store
                .decode_device(tenant, username, key, value)
                .map(|_| ())
        }
        Cf::Acls => store.acl_rules(tenant).map(|_| ()),
        Cf::Tenants => match rest.first() {
            Some(&kind::TENANT) => TenantRecord::decode(tenant, value).map(|_| ()),
            Some(&kind::JWT_KEY) => store.jwt_keys(tenant).map(|_| ()),
            Some(&kind::CA | &kind::REVOKED) => Ok(()),
            _ => Err(StorageError::corrupt("tenants", "unknown record kind")),
        },
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreOptions;

    /// Tenant records from before flags (version 1) read with every flag off, and a
    /// record with a flag set reads back with it.
    #[test]
    fn a_version_1_tenant_record_reads_with_flags_off() {
        let mut e = Enc::new(RECORD_V1, 64);
        e.bytes(b"Acme")
            .unwrap_or_else(|e| panic!("{e}"))
            .u8(1)
            .u64(7);
        encode_limits(&mut e, &[("max_connections".into(), 3)]).unwrap_or_else(|e| panic!("{e}"));
        let old = TenantRecord::decode("acme", &e.finish()).unwrap_or_else(|e| panic!("{e}"));
        assert!(!old.cert_auto_register);
        assert_eq!(old.limits, vec![("max_connections".to_owned(), 3)]);
        let new = TenantRecord {
            cert_auto_register: true,
            ..old
        };
        let bytes = new.encode().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            TenantRecord::decode("acme", &bytes).unwrap_or_else(|e| panic!("{e}")),
            new
        );
    }

    /// Device records written before SCRAM verifiers existed (record version 1) still
    /// read, as devices without one; rewriting them writes version 2.
    #[test]
    fn a_version_1_device_record_reads_without_a_scram_verifier() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = Store::open(StoreOptions::new(dir.path())).unwrap_or_else(|e| panic!("{e}"));
        store
            .add_tenant(&TenantRecord {
                id: "acme".into(),
                name: "Acme".into(),
                enabled: true,
                created_ms: 1,
                limits: Vec::new(),
                cert_auto_register: false,
            })
            .unwrap_or_else(|e| panic!("{e}"));
        let key = Store::device_key("acme", "old").unwrap_or_else(|e| panic!("{e}"));
        let mut e = Enc::new(RECORD_V1, 64);
        e.u8(0);
        encode_opt_str(&mut e, Some("old-*")).unwrap_or_else(|e| panic!("{e}"));
        encode_strings(&mut e, &["g".to_owned()]).unwrap_or_else(|e| panic!("{e}"));
        e.u8(1).u64(3);
        let mut b = Batch::new();
        b.push(Op::Put(Cf::Devices, key, e.finish()));
        store.write_now(b).unwrap_or_else(|e| panic!("{e}"));
        let d = store
            .device("acme", "old")
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("no device"));
        assert_eq!(d.scram, None);
        assert_eq!(d.client_id_pattern.as_deref(), Some("old-*"));
        assert_eq!((d.enabled, d.version), (true, 3));
        assert_eq!(
            store
                .put_device(&d, false)
                .unwrap_or_else(|e| panic!("{e}")),
            4
        );
        assert!(store.verify().unwrap_or_else(|e| panic!("{e}")).is_ok());
    }
}
