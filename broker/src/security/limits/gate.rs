//! `Gate`: who may open a connection and how many at once — the operator's bans and
//! flapping detection, per-address admission, and the handshakes in progress — with the
//! settings they were last given (start, reload or the admin plane), for showing them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::addresses::Addresses;
use super::bans::Bans;
use crate::config::{BansConfig, Config, RateLimitsConfig};
use crate::error::BrokerError;

/// The connection gate (see the module header).
pub(crate) struct Gate {
    /// The operator's bans and flapping detection.
    pub bans: Bans,
    /// Per-address admission at accept.
    pub addresses: Arc<Addresses>,
    /// Handshakes (TLS and CONNECT) that may be in progress at once.
    pub handshakes: Arc<tokio::sync::Semaphore>,
    /// `max_handshakes` now (the semaphore's size).
    max_handshakes: AtomicUsize,
    /// `[rate_limits]` as last set, for showing them.
    rate_limits_listed: Mutex<RateLimitsConfig>,
    /// The operator's ban list as last given, for showing it.
    bans_listed: Mutex<BansConfig>,
}

impl Gate {
    /// The gate `config` describes.
    pub(crate) fn new(config: &Config) -> Result<Self, BrokerError> {
        let limits = &config.rate_limits;
        Ok(Gate {
            bans: Bans::new(config.bans.compile()?, config.flapping),
            addresses: Addresses::new(limits.addresses()),
            handshakes: Arc::new(tokio::sync::Semaphore::new(limits.max_handshakes)),
            max_handshakes: AtomicUsize::new(limits.max_handshakes),
            rate_limits_listed: Mutex::new(limits.clone()),
            bans_listed: Mutex::new(config.bans.clone()),
        })
    }

    /// `[rate_limits]` in force.
    pub(crate) fn rate_limits_now(&self) -> RateLimitsConfig {
        self.rate_limits_listed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The ban list in force, as given.
    pub(crate) fn bans_listed(&self) -> BansConfig {
        self.bans_listed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Records the ban list as given (the compiled bans are set on `bans`).
    pub(crate) fn list_bans(&self, bans: &BansConfig) {
        *self
            .bans_listed
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = bans.clone();
    }

    /// Takes changed address limits and handshake places (the packet limits are the
    /// admission's).
    pub(crate) fn set_rate_limits(&self, limits: &RateLimitsConfig) {
        *self
            .rate_limits_listed
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = limits.clone();
        self.addresses.set_policy(limits.addresses());
        let old = self
            .max_handshakes
            .swap(limits.max_handshakes, Ordering::AcqRel);
        if limits.max_handshakes > old {
            self.handshakes.add_permits(limits.max_handshakes - old);
        } else {
            // Free places go at once; places in use are not given back when they end.
            let mut owed = old - limits.max_handshakes;
            owed -= self.handshakes.forget_permits(owed);
            if owed > 0 {
                let handshakes = self.handshakes.clone();
                tokio::spawn(async move {
                    if let Ok(p) = handshakes.acquire_many_owned(owed as u32).await {
                        p.forget();
                    }
                });
            }
        }
    }
}
