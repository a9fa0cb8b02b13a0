//! Registry operations — tenants, devices, ACL rules, JWT keys, trusted CAs, revocations —
//! with their validation, password hashing and audit records in one place. The `messs`
//! CLI runs them on a stopped broker's store; a running broker runs them through
//! [`crate::BrokerHandle::registry`], which then applies the change to live state (rules
//! recompiled by every connection of the tenant, remembered logins forgotten, clients of a
//! disabled tenant or device disconnected).
//!
//! Every function here is blocking (RocksDB and argon2): call it from a blocking thread.

use messs_storage::audit::AuditEvent;
use messs_storage::registry::{
    cert_fingerprint, AclAction, AclRule, AclSubject, DeviceRecord, JwtKey, TenantRecord, TrustedCa,
};
use messs_storage::Store;

use crate::error::BrokerError;
use crate::security::auth::password::{hash_password, HashParams};

/// A change of ACL rules, as an operator states it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSpec {
    /// Allow (true) or deny.
    pub allow: bool,
    /// What it governs.
    pub action: AclAction,
    /// Topic filter, with `%c` and `%u`.
    pub filter: String,
    /// Whom it applies to.
    pub subject: AclSubject,
    /// QoS levels it applies to (bits: 1 = QoS 0, 2 = QoS 1, 4 = QoS 2).
    pub qos_mask: u8,
    /// Applies only to messages with this retain flag.
    pub retain: Option<bool>,
}

/// What a change touched, so a running broker can bring its live state in line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Touched {
    /// The tenant's record, rules or keys.
    Tenant(String),
    /// What the tenant's certificate logins rest on (a CA removed, a certificate revoked):
    /// as `Tenant`, and its live certificate logins are closed to log in again.
    Certificates(String),
    /// One device of a tenant.
    Device(String, String),
}

/// Registry operations on one store, audited as `actor`.
pub struct Registry<'a> {
    store: &'a Store,
    actor: String,
    params: HashParams,
    touched: Vec<Touched>,
}

fn now_ms() -> u64 {
    crate::clock::unix_ms()
}

impl<'a> Registry<'a> {
    /// Operations on `store`, audited as done by `actor`, hashing new passwords with
    /// `params`.
    pub fn new(store: &'a Store, actor: &str, params: HashParams) -> Self {
        Registry {
            store,
            actor: actor.to_owned(),
            params,
            touched: Vec::new(),
        }
    }

    pub(crate) fn take_touched(&mut self) -> Vec<Touched> {
        std::mem::take(&mut self.touched)
    }

    fn audit(&self, action: &str, detail: String) {
        let event = AuditEvent {
            time_ms: now_ms(),
            // An operator's change: kept by the broker-wide policy, not a tenant's.
            tenant: None,
            actor: self.actor.clone(),
            action: action.to_owned(),
            detail,
        };
        // An operator's change: written from the reserved margin of a full disk.
        if let Err(e) = self.store.append_operator_audit(&event) {
            tracing::warn!(error = %e, action, "audit record not written");
        }
    }

    fn tenant_record(&self, id: &str) -> Result<TenantRecord, BrokerError> {
        self.store
            .tenant(id)?
            .ok_or_else(|| BrokerError::Registry(format!("no tenant {id:?}")))
    }

    /// Creates a tenant.
    pub fn add_tenant(&mut self, id: &str, name: Option<&str>) -> Result<(), BrokerError> {
        self.store.add_tenant(&TenantRecord {
            id: id.to_owned(),
            name: name.unwrap_or(id).to_owned(),
            enabled: true,
            created_ms: now_ms(),
            limits: Vec::new(),
            cert_auto_register: false,
        })?;
        self.audit("tenant.add", format!("tenant {id:?}"));
        self.touched.push(Touched::Tenant(id.to_owned()));
        Ok(())
    }

    /// Enables or disables a tenant (a disabled tenant's clients are disconnected and
    /// cannot log in).
    pub fn set_tenant_enabled(&mut self, id: &str, enabled: bool) -> Result<(), BrokerError> {
        let mut t = self.tenant_record(id)?;
        t.enabled = enabled;
        self.store.update_tenant(&t)?;
        let what = if enabled { "enable" } else { "disable" };
        self.audit(&format!("tenant.{what}"), format!("tenant {id:?}"));
        self.touched.push(Touched::Tenant(id.to_owned()));
        Ok(())
    }

    /// Sets whether certificates from the tenant's CAs register their device at its first
    /// login (off by default: a certificate logs in only as a device that exists and is
    /// enabled). Each registration is audited as `device.auto_register`.
    pub fn set_cert_auto_register(&mut self, id: &str, on: bool) -> Result<(), BrokerError> {
        let mut t = self.tenant_record(id)?;
        t.cert_auto_register = on;
        self.store.update_tenant(&t)?;
        let what = if on { "on" } else { "off" };
        self.audit(
            "tenant.cert_auto_register",
            format!("tenant {id:?}: {what}"),
        );
        self.touched.push(Touched::Tenant(id.to_owned()));
        Ok(())
    }

    /// Overrides one of the configuration's tenant limits for `id` (`None`: back to the
    /// configuration's). The name must be one of `TENANT_LIMIT_NAMES`.
    pub fn set_tenant_limit(
        &mut self,
        id: &str,
        name: &str,
        value: Option<u64>,
    ) -> Result<(), BrokerError> {
        if !crate::security::limits::tenant::NAMES.contains(&name) {
            return Err(BrokerError::Registry(format!(
                "unknown tenant limit {name:?} (known: {})",
                crate::security::limits::tenant::NAMES.join(", ")
            )));
        }
        let mut t = self.tenant_record(id)?;
        t.limits.retain(|(n, _)| n != name);
        if let Some(v) = value {
            t.limits.push((name.to_owned(), v));
        }
        self.store.update_tenant(&t)?;
        let detail = match value {
            Some(v) => format!("tenant {id:?}: {name} = {v}"),
            None => format!("tenant {id:?}: {name} unset"),
        };
        self.audit("tenant.limit", detail);
        self.touched.push(Touched::Tenant(id.to_owned()));
        Ok(())
    }

    /// Every tenant.
    pub fn tenants(&self) -> Result<Vec<TenantRecord>, BrokerError> {
        Ok(self.store.tenants()?)
    }

    /// Adds a device; `password` `None` for one that logs in with a token or certificate.
    pub fn add_device(
        &mut self,
        tenant: &str,
        username: &str,
        password: Option<&str>,
        client_id_pattern: Option<&str>,
        groups: &[String],
    ) -> Result<(), BrokerError> {
        let password_hash = password.map(|p| self.hash(p)).transpose()?;
        // No SCRAM verifier unless asked for (`set_device_scram`): it is only as strong as
        // its PBKDF2 iterations, weaker than the argon2 hash beside it.
        let scram = None;
        self.store.put_device(
            &DeviceRecord {
                tenant: tenant.to_owned(),
                username: username.to_owned(),
                password_hash,
                client_id_pattern: client_id_pattern.map(str::to_owned),
                groups: groups.to_vec(),
                enabled: true,
                version: 0,
                scram,
                limits: Vec::new(),
            },
            true,
        )?;
        self.audit(
            "device.add",
            format!("device {username:?} in tenant {tenant:?}"),
        );
        self.touched
            .push(Touched::Device(tenant.to_owned(), username.to_owned()));
        Ok(())
    }

    /// Adds a device whose credential is either a password or an argon2id PHC hash made
    /// elsewhere (a `$argon2id$...` string is taken as the hash; see `check_hash`).
    pub fn import_device(
        &mut self,
        tenant: &str,
        username: &str,
        password_or_hash: &str,
    ) -> Result<(), BrokerError> {
        // No SCRAM verifier (an imported hash could not give one anyway; see
        // `set_device_scram`).
        let (hash, scram) = if password_or_hash.starts_with("$argon2") {
            crate::security::auth::password::check_hash(password_or_hash)?;
            (password_or_hash.to_owned(), None)
        } else {
            (self.hash(password_or_hash)?, None)
        };
        self.store.put_device(
            &DeviceRecord {
                tenant: tenant.to_owned(),
                username: username.to_owned(),
                password_hash: Some(hash),
                client_id_pattern: None,
                groups: Vec::new(),
                enabled: true,
                version: 0,
                scram,
                limits: Vec::new(),
            },
            true,
        )?;
        self.audit(
            "device.add",
            format!("device {username:?} in tenant {tenant:?} (imported)"),
        );
        self.touched
            .push(Touched::Device(tenant.to_owned(), username.to_owned()));
        Ok(())
    }

    fn change_device(
        &mut self,
        tenant: &str,
        username: &str,
        (action, note): (&str, &str),
        change: impl FnOnce(&mut DeviceRecord) -> Result<(), BrokerError>,
    ) -> Result<(), BrokerError> {
        let mut d = self.store.device(tenant, username)?.ok_or_else(|| {
            BrokerError::Registry(format!("no device {username:?} in tenant {tenant:?}"))
        })?;
        change(&mut d)?;
        self.store.put_device(&d, false)?;
        self.audit(
            action,
            format!("device {username:?} in tenant {tenant:?}{note}"),
        );
        self.touched
            .push(Touched::Device(tenant.to_owned(), username.to_owned()));
        Ok(())
    }

    /// Sets (or, with `None`, removes) a device's password. A device that logs in with
    /// SCRAM keeps doing so: its verifier is derived again from the new password (removing
    /// the password removes it).
    pub fn set_device_password(
        &mut self,
        tenant: &str,
        username: &str,
        password: Option<&str>,
    ) -> Result<(), BrokerError> {
        let had_scram = self
            .store
            .device(tenant, username)?
            .is_some_and(|d| d.scram.is_some());
        let (hash, scram) = match password {
            Some(p) => (
                Some(self.hash(p)?),
                had_scram.then(|| self.scram(p)).transpose()?,
            ),
            None => (None, None),
        };
        self.change_device(tenant, username, ("device.set_password", ""), |d| {
            d.password_hash = hash;
            d.scram = scram;
            Ok(())
        })
    }

    /// Lets a device log in with SCRAM-SHA-256 (MQTT 5 enhanced authentication): sets its
    /// password (`Some`) and stores a SCRAM verifier of it beside the argon2 hash; `None`
    /// removes the verifier (the password stays). Opt-in, per device: a verifier is
    /// PBKDF2-HMAC-SHA256 with `auth.scram_iterations`, which a stolen store can be
    /// attacked through far faster than argon2id (docs/SECURITY.md).
    pub fn set_device_scram(
        &mut self,
        tenant: &str,
        username: &str,
        password: Option<&str>,
    ) -> Result<(), BrokerError> {
        let secrets = match password {
            Some(p) => Some((self.hash(p)?, self.scram(p)?)),
            None => None,
        };
        let note = format!(
            ": SCRAM {} ({} iterations)",
            if secrets.is_some() { "on" } else { "off" },
            self.params.scram_iterations
        );
        self.change_device(tenant, username, ("device.scram", &note), |d| {
            match secrets {
                Some((hash, scram)) => {
                    d.password_hash = Some(hash);
                    d.scram = Some(scram);
                }
                None => d.scram = None,
            }
            Ok(())
        })
    }

    /// A SCRAM-SHA-256 verifier of `password` with this registry's iterations.
    fn scram(
        &self,
        password: &str,
    ) -> Result<messs_storage::registry::ScramCredential, BrokerError> {
        check_password(password)?;
        crate::security::auth::scram::credential(password, self.params.scram_iterations)
            .map_err(|e| BrokerError::Registry(format!("SCRAM verifier: {e}")))
    }

    /// Overrides one of the per-connection rate limits for a device (`None`: back to the
    /// configuration's). On a running broker its live connections take it at their next
    /// packet, and every later login of the device (password, SCRAM, certificate or JWT:
    /// each reads the device's record) starts with it. Only stricter than the
    /// operator's limits: see `ThrottlePolicy::with`.
    pub fn set_device_limit(
        &mut self,
        tenant: &str,
        username: &str,
        name: &str,
        value: Option<u64>,
    ) -> Result<(), BrokerError> {
        let names = crate::security::limits::throttle::DEVICE_NAMES;
        if !names.contains(&name) {
            return Err(BrokerError::Registry(format!(
                "unknown device limit {name:?} (known: {})",
                names.join(", ")
            )));
        }
        let note = match value {
            Some(v) => format!(": {name} = {v}"),
            None => format!(": {name} unset"),
        };
        self.change_device(tenant, username, ("device.limit", &note), |d| {
            d.limits.retain(|(n, _)| n != name);
            if let Some(v) = value {
                d.limits.push((name.to_owned(), v));
            }
            Ok(())
        })
    }

    /// Enables or disables a device (a disabled device is disconnected and cannot log in).
    pub fn set_device_enabled(
        &mut self,
        tenant: &str,
        username: &str,
        enabled: bool,
    ) -> Result<(), BrokerError> {
        let action = if enabled {
            "device.enable"
        } else {
            "device.disable"
        };
        self.change_device(tenant, username, (action, ""), |d| {
            d.enabled = enabled;
            Ok(())
        })
    }

    /// Deletes a device; false if there was none. Its connected clients are disconnected
    /// (v5: 0x98) and cannot log in again.
    pub fn remove_device(&mut self, tenant: &str, username: &str) -> Result<bool, BrokerError> {
        let removed = self.store.delete_device(tenant, username)?;
        if removed {
            self.audit(
                "device.remove",
                format!("device {username:?} of tenant {tenant:?}"),
            );
            self.touched
                .push(Touched::Device(tenant.to_owned(), username.to_owned()));
        }
        Ok(removed)
    }

    /// One device.
    pub fn device(
        &self,
        tenant: &str,
        username: &str,
    ) -> Result<Option<DeviceRecord>, BrokerError> {
        Ok(self.store.device(tenant, username)?)
    }

    /// One tenant.
    pub fn tenant(&self, id: &str) -> Result<Option<TenantRecord>, BrokerError> {
        Ok(self.store.tenant(id)?)
    }

    /// The argon2id hash of a password, with this registry's parameters.
    pub fn hash(&self, password: &str) -> Result<String, BrokerError> {
        check_password(password)?;
        hash_password(password, self.params)
    }

    /// A page of a tenant's devices, after `after`.
    pub fn devices(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeviceRecord>, BrokerError> {
        Ok(self.store.devices(tenant, after, limit)?)
    }

    /// Adds a rule at `position` (0 = first; `None` = last); returns its id.
    pub fn add_rule(
        &mut self,
        tenant: &str,
        rule: RuleSpec,
        position: Option<usize>,
    ) -> Result<u32, BrokerError> {
        self.tenant_record(tenant)?;
        let filter = rule.filter.replace("%c", "c").replace("%u", "u");
        if messs_codec::TopicFilter::new(&filter).is_err() || filter.starts_with("$share/") {
            return Err(BrokerError::Registry(format!(
                "{:?} is not a valid topic filter",
                rule.filter
            )));
        }
        if rule.qos_mask & 7 == 0 {
            return Err(BrokerError::Registry(
                "a rule must apply to at least one QoS".into(),
            ));
        }
        let detail = format!(
            "tenant {tenant:?}: {} {:?} {:?} for {:?}",
            if rule.allow { "allow" } else { "deny" },
            rule.action,
            rule.filter,
            rule.subject
        );
        let id = self.store.update_acl_rules(tenant, |rules, id| {
            let new = AclRule {
                id,
                allow: rule.allow,
                action: rule.action,
                filter: rule.filter,
                subject: rule.subject,
                qos_mask: rule.qos_mask & 7,
                retain: rule.retain,
            };
            let at = position.unwrap_or(rules.len()).min(rules.len());
            rules.insert(at, new);
            Ok(id)
        })?;
        self.audit("acl.add", format!("{detail} (rule {id})"));
        self.touched.push(Touched::Tenant(tenant.to_owned()));
        Ok(id)
    }

    /// Removes a rule by id; false if there was none.
    pub fn remove_rule(&mut self, tenant: &str, id: u32) -> Result<bool, BrokerError> {
        let removed = self.store.update_acl_rules(tenant, |rules, _| {
            let before = rules.len();
            rules.retain(|r| r.id != id);
            Ok(rules.len() != before)
        })?;
        if removed {
            self.audit("acl.remove", format!("tenant {tenant:?}: rule {id}"));
            self.touched.push(Touched::Tenant(tenant.to_owned()));
        }
        Ok(removed)
    }

    /// A tenant's rules, in order.
    pub fn rules(&self, tenant: &str) -> Result<Vec<AclRule>, BrokerError> {
        Ok(self.store.acl_rules(tenant)?)
    }

    /// Adds or replaces a JWT verification key of a tenant.
    pub fn put_jwt_key(&mut self, tenant: &str, key: JwtKey) -> Result<(), BrokerError> {
        self.tenant_record(tenant)?;
        if !matches!(key.alg.as_str(), "HS256" | "RS256" | "ES256" | "EdDSA") {
            return Err(BrokerError::Registry(format!(
                "algorithm {:?}: use HS256, RS256, ES256 or EdDSA",
                key.alg
            )));
        }
        let detail = format!("tenant {tenant:?}: key {:?} ({})", key.kid, key.alg);
        self.store.put_jwt_key(tenant, &key)?;
        self.audit("jwt_key.put", detail);
        self.touched.push(Touched::Tenant(tenant.to_owned()));
        Ok(())
    }

    /// A tenant's JWT keys.
    pub fn jwt_keys(&self, tenant: &str) -> Result<Vec<JwtKey>, BrokerError> {
        Ok(self.store.jwt_keys(tenant)?)
    }

    /// Removes a JWT key; false if there was none.
    pub fn remove_jwt_key(&mut self, tenant: &str, kid: &str) -> Result<bool, BrokerError> {
        let removed = self.store.delete_jwt_key(tenant, kid)?;
        if removed {
            self.audit("jwt_key.remove", format!("tenant {tenant:?}: key {kid:?}"));
            self.touched.push(Touched::Tenant(tenant.to_owned()));
        }
        Ok(removed)
    }

    /// A tenant's trusted CAs.
    pub fn cas(&self, tenant: &str) -> Result<Vec<TrustedCa>, BrokerError> {
        Ok(self.store.cas(tenant)?)
    }

    /// A tenant's revoked certificate fingerprints.
    pub fn revoked(&self, tenant: &str) -> Result<Vec<[u8; 32]>, BrokerError> {
        Ok(self.store.revoked_certs(tenant)?)
    }

    /// Trusts a CA (DER) for a tenant's device certificates; returns its fingerprint.
    ///
    /// A trust anchor is its public key (see [`crate::transport::tls::anchor_key`]): a key another
    /// tenant already trusts is refused, whatever the certificate around it says, and the
    /// refusal does not say which tenant has it.
    pub fn add_ca(&mut self, tenant: &str, der: &[u8]) -> Result<[u8; 32], BrokerError> {
        self.tenant_record(tenant)?;
        let key = crate::transport::tls::anchor_key(der)
            .map_err(|e| BrokerError::Registry(format!("a trusted CA: {e}")))?;
        let same_key =
            |other: &[u8]| crate::transport::tls::anchor_key(other).is_ok_and(|k| k == key);
        let Some(fp) = self.store.add_ca_exclusive(tenant, der, same_key)? else {
            self.audit(
                "ca.refused",
                format!(
                    "tenant {tenant:?}: CA with public key {} is another tenant's",
                    hex(&key)
                ),
            );
            return Err(BrokerError::Registry(
                "another tenant already trusts a CA with this public key: a CA identifies \
                 one tenant's devices"
                    .into(),
            ));
        };
        self.audit(
            "ca.add",
            format!(
                "tenant {tenant:?}: CA {} (public key {})",
                hex(&fp),
                hex(&key)
            ),
        );
        self.touched.push(Touched::Tenant(tenant.to_owned()));
        Ok(fp)
    }

    /// Stops trusting a tenant's CA, by the SHA-256 of its DER (as `cas` lists it): its
    /// certificates no longer log in, and on a running broker the tenant's live certificate
    /// logins are closed (0x98), so only those another CA still vouches for come back.
    /// False if the tenant did not trust it.
    pub fn remove_ca(&mut self, tenant: &str, fingerprint: &[u8; 32]) -> Result<bool, BrokerError> {
        self.tenant_record(tenant)?;
        let removed = self.store.delete_ca(tenant, fingerprint)?;
        if removed {
            self.audit(
                "ca.remove",
                format!("tenant {tenant:?}: CA {}", hex(fingerprint)),
            );
            self.touched.push(Touched::Certificates(tenant.to_owned()));
        }
        Ok(removed)
    }

    /// Revokes a device certificate (DER) of a tenant; on a running broker the tenant's
    /// live certificate logins are closed (0x98) and only unrevoked ones come back.
    pub fn revoke_cert(&mut self, tenant: &str, der: &[u8]) -> Result<[u8; 32], BrokerError> {
        self.tenant_record(tenant)?;
        let fp = cert_fingerprint(der);
        self.store.revoke_cert(tenant, &fp)?;
        self.audit(
            "cert.revoke",
            format!("tenant {tenant:?}: certificate {}", hex(&fp)),
        );
        self.touched.push(Touched::Certificates(tenant.to_owned()));
        Ok(fp)
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Refuses passwords too short to be worth hashing.
fn check_password(p: &str) -> Result<(), BrokerError> {
    if p.chars().count() < 8 {
        return Err(BrokerError::Registry(
            "a device password needs at least 8 characters".into(),
        ));
    }
    Ok(())
}
