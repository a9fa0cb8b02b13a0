//! messs-admin: the HTTP admin plane (admin MFA, RBAC, OpenAPI, Prometheus metrics).
//!
//! Not built yet: the admin-plane issue fills this crate. `messs serve` starts no admin
//! listener until then.
