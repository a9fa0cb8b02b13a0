//! Connection-layer limits: token buckets (`bucket`), per-address admission at accept
//! (`addresses`), bans and flapping detection (`bans`) and the per-connection packet
//! limiter (`throttle`).

pub mod addresses;
pub mod bans;
pub mod bucket;
pub mod throttle;
