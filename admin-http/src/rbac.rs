//! Who may do what. Three roles:
//!
//! - `superadmin`: everything;
//! - `tenant-admin` (of one tenant): read and change that tenant's resources, nothing
//!   of any other tenant and nothing broker-wide;
//! - `viewer`: read only; either of everything, or (with a tenant) of that tenant's
//!   resources only.
//!
//! An API key carries a role and a tenant like an account, and also scopes
//! (`AREA:read`, `AREA:write`, or `read`/`write` for every area; `write` implies `read`)
//! that narrow it further. Every handler states the area, the access and the tenant (if
//! any) it touches, and calls [`Principal::allow`] before doing anything else: the check
//! lives in one place, and the RBAC matrix test walks every route through it.

use serde::{Deserialize, Serialize};

use crate::error::AdminError;

/// A role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Everything.
    Superadmin,
    /// One tenant, read and write.
    TenantAdmin,
    /// Read only (of one tenant, if it has one).
    Viewer,
}

impl Role {
    /// Its stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Superadmin => "superadmin",
            Role::TenantAdmin => "tenant-admin",
            Role::Viewer => "viewer",
        }
    }

    /// From its stored name.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "superadmin" => Some(Role::Superadmin),
            "tenant-admin" => Some(Role::TenantAdmin),
            "viewer" => Some(Role::Viewer),
            _ => None,
        }
    }

    /// Checks that a role goes with the tenant given (a tenant-admin needs one, a
    /// superadmin has none).
    pub fn check_tenant(self, tenant: Option<&str>) -> Result<(), AdminError> {
        match (self, tenant) {
            (Role::TenantAdmin, None) => Err(AdminError::BadRequest(
                "a tenant-admin needs a tenant".into(),
            )),
            (Role::Superadmin, Some(_)) => Err(AdminError::BadRequest(
                "a superadmin is not bound to a tenant".into(),
            )),
            _ => Ok(()),
        }
    }

    fn rank(self) -> u8 {
        match self {
            Role::Superadmin => 2,
            Role::TenantAdmin => 1,
            Role::Viewer => 0,
        }
    }
}

/// What a route touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Area {
    /// Tenants and their settings.
    Tenants,
    /// Devices and their credentials.
    Devices,
    /// ACL rules.
    Acl,
    /// JWT keys, trusted CAs, revoked certificates.
    Keys,
    /// Connected clients (list, kick).
    Clients,
    /// Sessions and their subscriptions.
    Sessions,
    /// Retained messages.
    Retained,
    /// Publishing a message.
    Publish,
    /// Stored telemetry.
    Telemetry,
    /// Limits and quotas.
    Limits,
    /// The audit log (broker-wide).
    Audit,
    /// Bans (broker-wide).
    Bans,
    /// Configuration reload and backups (broker-wide).
    Operations,
    /// Admin accounts (broker-wide).
    Admins,
    /// API keys.
    ApiKeys,
    /// The per-tenant samples of `/metrics` (their `tenant` label names tenants; the
    /// broker-wide samples need no login). Read only; a tenant-scoped caller sees its
    /// tenant's.
    Metrics,
}

impl Area {
    /// Every area, for scope parsing and the matrix test.
    pub const ALL: [Area; 16] = [
        Area::Tenants,
        Area::Devices,
        Area::Acl,
        Area::Keys,
        Area::Clients,
        Area::Sessions,
        Area::Retained,
        Area::Publish,
        Area::Telemetry,
        Area::Limits,
        Area::Audit,
        Area::Bans,
        Area::Operations,
        Area::Admins,
        Area::ApiKeys,
        Area::Metrics,
    ];

    /// Its name in scopes.
    pub fn as_str(self) -> &'static str {
        match self {
            Area::Tenants => "tenants",
            Area::Devices => "devices",
            Area::Acl => "acl",
            Area::Keys => "keys",
            Area::Clients => "clients",
            Area::Sessions => "sessions",
            Area::Retained => "retained",
            Area::Publish => "publish",
            Area::Telemetry => "telemetry",
            Area::Limits => "limits",
            Area::Audit => "audit",
            Area::Bans => "bans",
            Area::Operations => "operations",
            Area::Admins => "admins",
            Area::ApiKeys => "api-keys",
            Area::Metrics => "metrics",
        }
    }
}

/// Reading or changing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// GET.
    Read,
    /// Anything that changes state.
    Write,
}

/// Checks scope strings: `read`, `write`, `AREA:read`, `AREA:write`.
pub fn check_scopes(scopes: &[String]) -> Result<(), AdminError> {
    if scopes.is_empty() || scopes.len() > 64 {
        return Err(AdminError::BadRequest(
            "an API key has 1 to 64 scopes".into(),
        ));
    }
    for s in scopes {
        let ok = match s.split_once(':') {
            None => s == "read" || s == "write",
            Some((area, access)) => {
                Area::ALL.iter().any(|a| a.as_str() == area)
                    && (access == "read" || access == "write")
            }
        };
        if !ok {
            return Err(AdminError::BadRequest(format!(
                "unknown scope {s:?}: use read, write, AREA:read or AREA:write"
            )));
        }
    }
    Ok(())
}

/// Whether every scope of `child` is implied by `parent` (what a key may hand on to a
/// key it makes): `write` implies `read`, `read`/`write` cover every `AREA:read`/
/// `AREA:write`, `AREA:write` implies `AREA:read`. Checked by what each scope allows, over
/// every area and access, so the rule is [`scopes_allow`]'s and cannot drift from it.
/// `Err` names the first scope of `child` that asks for more.
pub fn scopes_within<'a>(child: &'a [String], parent: &[String]) -> Result<(), &'a str> {
    for scope in child {
        let one = std::slice::from_ref(scope);
        let wider = Area::ALL.iter().any(|&area| {
            [Access::Read, Access::Write].into_iter().any(|access| {
                scopes_allow(one, area, access) && !scopes_allow(parent, area, access)
            })
        });
        if wider {
            return Err(scope.as_str());
        }
    }
    Ok(())
}

fn scopes_allow(scopes: &[String], area: Area, access: Access) -> bool {
    scopes.iter().any(|s| {
        let (a, level) = match s.split_once(':') {
            None => (None, s.as_str()),
            Some((a, l)) => (Some(a), l),
        };
        let area_ok = a.is_none_or(|a| a == area.as_str());
        let level_ok = level == "write" || (level == "read" && access == Access::Read);
        area_ok && level_ok
    })
}

/// Why an authenticated account may not do anything yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restriction {
    /// Its password was set by someone else (or generated) and must be changed first.
    PasswordChange,
    /// MFA is required and the account has not enrolled.
    MfaEnrolment,
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Account name, or `key:ID` for an API key (what the audit log shows).
    pub name: String,
    /// Role.
    pub role: Role,
    /// Tenant of a tenant-scoped role.
    pub tenant: Option<String>,
    /// An API key's scopes (`None` for an account).
    pub scopes: Option<Vec<String>>,
    /// The id of the API key presented (`None` for an account): the parent of any key it
    /// makes.
    pub api_key: Option<[u8; 16]>,
    /// The login's refresh-token family (an account's access token).
    pub family: Option<[u8; 16]>,
    /// Set while the account must first change its password or enrol MFA.
    pub restriction: Option<Restriction>,
}

impl Principal {
    /// The account's name, if the caller is an account (not an API key).
    pub fn account(&self) -> Option<&str> {
        self.scopes.is_none().then_some(self.name.as_str())
    }

    /// Allows `access` to `area`, of `tenant` (`None`: broker-wide), or says why not.
    pub fn allow(
        &self,
        area: Area,
        access: Access,
        tenant: Option<&str>,
    ) -> Result<(), AdminError> {
        match self.restriction {
            Some(Restriction::PasswordChange) => {
                return Err(AdminError::Forbidden(
                    "change your password first (POST /api/v1/auth/password)",
                ))
            }
            Some(Restriction::MfaEnrolment) => {
                return Err(AdminError::Forbidden(
                    "enrol TOTP first (POST /api/v1/auth/totp/enrol)",
                ))
            }
            None => {}
        }
        if let Some(scopes) = &self.scopes {
            if !scopes_allow(scopes, area, access) {
                return Err(AdminError::Forbidden(
                    "the API key's scopes do not allow this",
                ));
            }
        }
        let in_tenant = match (&self.tenant, tenant) {
            (None, _) => true,
            (Some(mine), Some(t)) => mine == t,
            (Some(_), None) => false,
        };
        let ok = match self.role {
            Role::Superadmin => true,
            Role::TenantAdmin => in_tenant && tenant.is_some(),
            Role::Viewer => access == Access::Read && in_tenant,
        };
        if ok {
            Ok(())
        } else if !in_tenant {
            Err(AdminError::Forbidden("not your tenant"))
        } else {
            Err(AdminError::Forbidden("your role does not allow this"))
        }
    }

    /// Whether the caller may see everything of `tenant` (list filters use it).
    pub fn sees_tenant(&self, tenant: &str) -> bool {
        self.tenant.as_deref().is_none_or(|t| t == tenant)
    }

    /// Checks that the caller may hand out `role` of `tenant` (an API key or an account
    /// it creates): never more than it has, never outside its tenant.
    pub fn may_grant(&self, role: Role, tenant: Option<&str>) -> Result<(), AdminError> {
        role.check_tenant(tenant)?;
        let inside = match (&self.tenant, tenant) {
            (None, _) => true,
            (Some(mine), Some(t)) => mine == t,
            (Some(_), None) => false,
        };
        if role.rank() > self.role.rank() || !inside {
            return Err(AdminError::Forbidden("you cannot grant more than you have"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(role: Role, tenant: Option<&str>, scopes: Option<&[&str]>) -> Principal {
        Principal {
            name: "x".into(),
            role,
            tenant: tenant.map(str::to_owned),
            scopes: scopes.map(|s| s.iter().map(|x| x.to_string()).collect()),
            api_key: None,
            family: None,
            restriction: None,
        }
    }

    #[test]
    fn roles_and_tenants() {
        use Access::*;
        let sa = p(Role::Superadmin, None, None);
        let ta = p(Role::TenantAdmin, Some("a"), None);
        let v = p(Role::Viewer, None, None);
        let va = p(Role::Viewer, Some("a"), None);
        assert!(sa.allow(Area::Bans, Write, None).is_ok());
        assert!(ta.allow(Area::Devices, Write, Some("a")).is_ok());
        assert!(ta.allow(Area::Devices, Read, Some("b")).is_err());
        assert!(ta.allow(Area::Audit, Read, None).is_err());
        assert!(v.allow(Area::Audit, Read, None).is_ok());
        assert!(v.allow(Area::Devices, Write, Some("a")).is_err());
        assert!(va.allow(Area::Devices, Read, Some("a")).is_ok());
        assert!(va.allow(Area::Devices, Read, Some("b")).is_err());
        assert!(va.allow(Area::Audit, Read, None).is_err());
        // Metrics of a tenant: every reader of that tenant.
        assert!(v.allow(Area::Metrics, Read, Some("a")).is_ok());
        assert!(va.allow(Area::Metrics, Read, Some("a")).is_ok());
        assert!(va.allow(Area::Metrics, Read, Some("b")).is_err());
        assert!(ta.allow(Area::Metrics, Read, Some("a")).is_ok());
        assert!(ta.allow(Area::Metrics, Read, Some("b")).is_err());
    }

    #[test]
    fn scopes_narrow_a_key() {
        use Access::*;
        let k = p(
            Role::Superadmin,
            None,
            Some(&["devices:write", "audit:read"]),
        );
        assert!(k.allow(Area::Devices, Write, Some("a")).is_ok());
        assert!(k.allow(Area::Devices, Read, Some("a")).is_ok());
        assert!(k.allow(Area::Audit, Read, None).is_ok());
        assert!(k.allow(Area::Audit, Write, None).is_err());
        assert!(k.allow(Area::Tenants, Read, None).is_err());
        let r = p(Role::Superadmin, None, Some(&["read"]));
        assert!(r.allow(Area::Bans, Read, None).is_ok());
        assert!(r.allow(Area::Bans, Write, None).is_err());
        assert!(check_scopes(&["devices:admin".into()]).is_err());
        assert!(check_scopes(&["nope:read".into()]).is_err());
        assert!(check_scopes(&[]).is_err());
    }

    #[test]
    fn a_key_hands_on_only_the_scopes_it_has() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let within = |child: &[&str], parent: &[&str]| {
            scopes_within(&v(child), &v(parent)).map_err(str::to_owned)
        };
        // write > read > AREA:read; write > AREA:write > AREA:read.
        assert!(within(&["read"], &["write"]).is_ok());
        assert!(within(&["devices:write", "audit:read"], &["write"]).is_ok());
        assert!(within(&["devices:read"], &["read"]).is_ok());
        assert!(within(&["api-keys:read"], &["api-keys:write"]).is_ok());
        assert!(within(&["api-keys:write"], &["api-keys:write"]).is_ok());
        assert_eq!(within(&["write"], &["read"]), Err("write".into()));
        assert_eq!(
            within(&["devices:write"], &["read"]),
            Err("devices:write".into())
        );
        assert_eq!(within(&["write"], &["api-keys:write"]), Err("write".into()));
        assert_eq!(within(&["read"], &["api-keys:write"]), Err("read".into()));
        assert_eq!(
            within(&["api-keys:read", "admins:write"], &["api-keys:write"]),
            Err("admins:write".into())
        );
        assert_eq!(
            within(&["api-keys:write"], &["api-keys:read"]),
            Err("api-keys:write".into())
        );
        // Every area's read, listed one by one, is as much as `read`.
        let every: Vec<String> = Area::ALL
            .iter()
            .map(|a| format!("{}:read", a.as_str()))
            .collect();
        assert!(scopes_within(&v(&["read"]), &every).is_ok());
        assert!(scopes_within(&every, &v(&["read"])).is_ok());
    }

    #[test]
    fn nobody_grants_more_than_they_have() {
        let ta = p(Role::TenantAdmin, Some("a"), None);
        assert!(ta.may_grant(Role::Viewer, Some("a")).is_ok());
        assert!(ta.may_grant(Role::TenantAdmin, Some("a")).is_ok());
        assert!(ta.may_grant(Role::TenantAdmin, Some("b")).is_err());
        assert!(ta.may_grant(Role::Viewer, None).is_err());
        assert!(ta.may_grant(Role::Superadmin, None).is_err());
        let v = p(Role::Viewer, None, None);
        assert!(v.may_grant(Role::TenantAdmin, Some("a")).is_err());
    }

    #[test]
    fn a_restricted_account_can_do_nothing() {
        let mut sa = p(Role::Superadmin, None, None);
        sa.restriction = Some(Restriction::MfaEnrolment);
        assert!(sa.allow(Area::Tenants, Access::Read, None).is_err());
    }
}
