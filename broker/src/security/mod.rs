//! Who may connect and what they may do: `auth` (identities, passwords, tokens,
//! certificates, SCRAM, tenants, lockout), `acl` (topic rules, compiled per connection), and
//! `limits` (rate limits, quotas, bans, per-address admission). The choke point
//! (`admission`) and the handshake call into these; nothing here depends on them.

pub(crate) mod acl;
pub(crate) mod auth;
pub(crate) mod limits;
