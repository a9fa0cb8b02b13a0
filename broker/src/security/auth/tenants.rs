//! The broker's in-memory view of the tenants: which exist and are enabled, and each one's
//! ACL rules with an epoch that moves when they change (connections compare it to the
//! epoch they compiled at, so a rule change reaches every live connection at its next
//! packet or delivery). Loaded from the registry at start and changed through the broker
//! handle, which writes the registry first.
//!
//! A tenant that a listener names for anonymous clients need not be registered: it is
//! enabled and has no rules until the registry says otherwise.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use messs_storage::registry::{AclRule, JwtKey};

use crate::security::limits::tenant::{TenantLimits, TenantRates};
use crate::session::TenantId;

/// One tenant's security settings.
#[derive(Debug)]
pub(crate) struct TenantSecurity {
    /// Its id (shared with session keys).
    pub id: TenantId,
    /// In the registry (false: a listener's anonymous tenant never registered).
    pub registered: AtomicBool,
    enabled: AtomicBool,
    /// Certificates of its CAs register their device at first login.
    cert_auto_register: AtomicBool,
    rules: RwLock<Arc<Vec<AclRule>>>,
    epoch: AtomicU64,
    jwt_keys: RwLock<Arc<Vec<JwtKey>>>,
    /// Traffic counters for `$SYS`.
    pub counters: crate::stats::TenantCounters,
    /// SHA-256 fingerprints of revoked device certificates.
    revoked: RwLock<std::collections::HashSet<[u8; 32]>>,
    /// Its quotas and shared rates (the configuration's, with the registry's overrides).
    pub rates: TenantRates,
    /// The registry's overrides of the configured limits.
    overrides: RwLock<Vec<(String, u64)>>,
    /// Sessions it holds, online or offline.
    pub sessions: AtomicUsize,
}

impl TenantSecurity {
    fn new(id: TenantId, registered: bool) -> Self {
        TenantSecurity {
            id,
            registered: AtomicBool::new(registered),
            enabled: AtomicBool::new(true),
            cert_auto_register: AtomicBool::new(false),
            rules: RwLock::default(),
            epoch: AtomicU64::new(1),
            jwt_keys: RwLock::default(),
            revoked: RwLock::default(),
            counters: crate::stats::TenantCounters::default(),
            rates: TenantRates::default(),
            overrides: RwLock::default(),
            sessions: AtomicUsize::new(0),
        }
    }

    /// Its limits now.
    pub fn limits(&self) -> TenantLimits {
        self.rates.limits()
    }

    /// Whether its devices may connect.
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// Whether a certificate login without a device record registers one.
    pub fn cert_auto_register(&self) -> bool {
        self.cert_auto_register.load(Ordering::Acquire)
    }

    pub fn set_cert_auto_register(&self, on: bool) {
        self.cert_auto_register.store(on, Ordering::Release);
    }

    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Release);
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// The rules and the epoch they belong to.
    pub fn rules(&self) -> (Arc<Vec<AclRule>>, u64) {
        let rules = self
            .rules
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        (rules, self.epoch())
    }

    /// Moves when the rules (or the tenant's status) change.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    pub fn set_rules(&self, rules: Vec<AclRule>) {
        *self.rules.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(rules);
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    pub fn jwt_keys(&self) -> Arc<Vec<JwtKey>> {
        self.jwt_keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn is_revoked(&self, fingerprint: &[u8; 32]) -> bool {
        self.revoked
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(fingerprint)
    }

    pub fn set_revoked(&self, revoked: Vec<[u8; 32]>) {
        *self.revoked.write().unwrap_or_else(PoisonError::into_inner) =
            revoked.into_iter().collect();
    }

    pub fn set_jwt_keys(&self, keys: Vec<JwtKey>) {
        *self
            .jwt_keys
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
    }
}

/// Every tenant the broker knows.
#[derive(Debug, Default)]
pub(crate) struct Tenants {
    map: RwLock<HashMap<TenantId, Arc<TenantSecurity>>>,
    /// `[tenant_limits]`: every tenant's limits before its overrides.
    defaults: RwLock<TenantLimits>,
}

impl Tenants {
    /// A registered tenant, or a listener's tenant.
    pub fn get(&self, id: &str) -> Option<Arc<TenantSecurity>> {
        self.map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    /// The entry for `id`, created (unregistered, enabled, no rules) if missing.
    pub fn get_or_insert(&self, id: &TenantId, registered: bool) -> Arc<TenantSecurity> {
        let mut map = self.map.write().unwrap_or_else(PoisonError::into_inner);
        let defaults = *self.defaults.read().unwrap_or_else(PoisonError::into_inner);
        let entry = map.entry(id.clone()).or_insert_with(|| {
            let t = TenantSecurity::new(id.clone(), registered);
            t.rates.set(defaults, crate::clock::mono_us());
            Arc::new(t)
        });
        if registered {
            entry.registered.store(true, Ordering::Release);
        }
        entry.clone()
    }

    /// Every tenant known now.
    pub fn all(&self) -> Vec<Arc<TenantSecurity>> {
        self.map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// New `[tenant_limits]` (start, reload): every tenant's limits are recomputed.
    /// Every tenant's limits unless its record overrides them.
    pub fn defaults(&self) -> TenantLimits {
        *self.defaults.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn set_defaults(&self, defaults: TenantLimits) {
        *self
            .defaults
            .write()
            .unwrap_or_else(PoisonError::into_inner) = defaults;
        for t in self.all() {
            self.apply(&t);
        }
    }

    /// A tenant's registry overrides (checked by name first).
    pub fn set_overrides(
        &self,
        tenant: &TenantSecurity,
        overrides: Vec<(String, u64)>,
    ) -> Result<(), String> {
        TenantLimits::default().with(&overrides)?;
        *tenant
            .overrides
            .write()
            .unwrap_or_else(PoisonError::into_inner) = overrides;
        self.apply(tenant);
        Ok(())
    }

    fn apply(&self, tenant: &TenantSecurity) {
        let defaults = *self.defaults.read().unwrap_or_else(PoisonError::into_inner);
        let overrides = tenant
            .overrides
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        // Names were checked when the overrides were set.
        let limits = defaults.with(&overrides).unwrap_or(defaults);
        tenant.rates.set(limits, crate::clock::mono_us());
    }
}
