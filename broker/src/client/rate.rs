//! The rate-limit charge for each packet a client sends: the connection's own limits
//! (broker-wide, or its device's) and its tenant's shared rate.

use std::sync::atomic::Ordering;
use std::time::Duration;

use messs_codec::ReasonCode;

use super::core::{ClientCore, End, PauseRequest};
use crate::clock::Now;
use crate::error::BrokerError;
use crate::security::limits::throttle::{Throttle, Verdict};

impl ClientCore {
    /// Charges a packet of `size` bytes to the connection's rate limiter and its tenant's:
    /// over either rate, reading pauses until it is back within both; kept over its own
    /// for too long, it is closed (0x96). Picks up changed limits first.
    pub(super) fn charge(&mut self, size: usize, now: Now) -> Result<(), End> {
        let epoch = self.state.throttle_epoch();
        if epoch != self.throttle_epoch {
            self.throttle_epoch = epoch;
            if let Some(limits) = self.session.lock().take_device_limits() {
                self.access.identity.device_limits = limits;
            }
            let policy = self
                .state
                .throttle_policy()
                .with(&self.access.identity.device_limits);
            let limiter = self.limiter.get_or_insert_with(Box::default);
            match limiter.own.as_mut() {
                Some(_) if policy.is_off() => limiter.own = None,
                Some(t) => t.set_policy(policy, now.mono_us()),
                None => limiter.own = Throttle::new(policy, now.mono_us()),
            }
        }
        // The tenant's shared rate counts too: a connection of a tenant that limits
        // packets gets a limiter even without limits of its own.
        let tenant = &self.access.identity.tenant.rates;
        if self.limiter.is_none() && !tenant.limits_packets() {
            return Ok(());
        }
        let more_buffered = self.frames.buffered() > 0;
        let limiter = self.limiter.get_or_insert_with(Box::default);
        let (own, shared) = limiter.charge(size, more_buffered, tenant);
        let own_wait = match own {
            Verdict::Go => Duration::ZERO,
            Verdict::Pause(wait) => {
                self.state.stats.throttled.fetch_add(1, Ordering::Relaxed);
                wait
            }
            Verdict::Disconnect => {
                self.state
                    .stats
                    .rate_limit_disconnects
                    .fetch_add(1, Ordering::Relaxed);
                return Err(End::Failed(BrokerError::protocol(
                    ReasonCode::MessageRateTooHigh,
                    "kept over the connection's rate limit",
                )));
            }
        };
        if !shared.is_zero() {
            self.state
                .stats
                .tenant_throttled
                .fetch_add(1, Ordering::Relaxed);
        }
        let wait = own_wait.max(shared);
        if !wait.is_zero() && !self.is_paused() {
            self.pause(PauseRequest::Throttled(wait));
        }
        Ok(())
    }
}
