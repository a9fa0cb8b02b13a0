//! Connection-layer limits: token buckets (`bucket`), per-address admission at accept
//! (`addresses`), bans and flapping detection (`bans`, counting in `recent`), the per-connection packet limiter
//! (`throttle`) and per-tenant quotas and shared rates (`tenant`).

pub mod addresses;
pub mod bans;
pub mod bucket;
pub mod gcra;
pub mod recent;
pub mod tenant;
pub mod throttle;
