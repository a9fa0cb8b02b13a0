//! The broker's in-memory view of the tenants: which exist and are enabled, and each one's
//! ACL rules with an epoch that moves when they change (connections compare it to the
//! epoch they compiled at, so a rule change reaches every live connection at its next
//! packet or delivery). Loaded from the registry at start and changed through the broker
//! handle, which writes the registry first.
//!
//! A tenant that a listener names for anonymous clients need not be registered: it is
//! enabled and has no rules until the registry says otherwise.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use messs_storage::registry::{AclRule, JwtKey};

use crate::session::TenantId;

/// One tenant's security settings.
#[derive(Debug)]
pub(crate) struct TenantSecurity {
    /// Its id (shared with session keys).
    pub id: TenantId,
    /// In the registry (false: a listener's anonymous tenant never registered).
    pub registered: AtomicBool,
    enabled: AtomicBool,
    rules: RwLock<Arc<Vec<AclRule>>>,
    epoch: AtomicU64,
    jwt_keys: RwLock<Arc<Vec<JwtKey>>>,
    /// Traffic counters for `$SYS`.
    pub counters: crate::sys::TenantCounters,
    /// SHA-256 fingerprints of revoked device certificates.
    revoked: RwLock<std::collections::HashSet<[u8; 32]>>,
}

impl TenantSecurity {
    fn new(id: TenantId, registered: bool) -> Self {
        TenantSecurity {
            id,
            registered: AtomicBool::new(registered),
            enabled: AtomicBool::new(true),
            rules: RwLock::default(),
            epoch: AtomicU64::new(1),
            jwt_keys: RwLock::default(),
            revoked: RwLock::default(),
            counters: crate::sys::TenantCounters::default(),
        }
    }

    /// Whether its devices may connect.
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
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
        let entry = map
            .entry(id.clone())
            .or_insert_with(|| Arc::new(TenantSecurity::new(id.clone(), registered)));
        if registered {
            entry.registered.store(true, Ordering::Release);
        }
        entry.clone()
    }
}
