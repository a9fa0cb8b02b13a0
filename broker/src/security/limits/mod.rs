//! Connection-layer limits: token buckets (`bucket`), the connection gate (`gate`: bans,
//! address admission and handshake places together), per-address admission at accept
//! (`addresses`), bans and flapping detection (`bans`, counting in `recent`), the per-connection packet limiter
//! (`throttle`) and per-tenant quotas and shared rates (`tenant`).

pub mod addresses;
pub mod bans;
pub mod bucket;
pub mod gate;
pub mod gcra;
pub mod recent;
pub mod tenant;
pub mod throttle;

use std::net::{IpAddr, Ipv6Addr};

/// The source an address counts as, wherever clients are counted by address (admission
/// at accept, the login lockout, the admin plane's login limits): an IPv4 address (an
/// IPv4-mapped IPv6 one too), or the /64 of an IPv6 address — one host commonly holds a
/// whole /64, and must not escape a count by cycling its addresses.
pub fn source(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}
