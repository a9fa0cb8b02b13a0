//! Connection-layer limits: token buckets (`bucket`), per-address admission at accept
//! (`addresses`), bans and flapping detection (`bans`), the per-connection packet limiter
//! (`throttle`) and per-tenant quotas and shared rates (`tenant`).

pub mod addresses;
pub mod bans;
pub mod bucket;
pub mod gcra;
pub mod tenant;
pub mod throttle;
