//! Connection-layer limits: token buckets (`bucket`), per-address admission at accept
//! (`addresses`) and the per-connection packet limiter (`throttle`).

pub mod addresses;
pub mod bucket;
pub mod throttle;
