//! Logins whose cryptography is done before the registry is asked: a client certificate
//! the TLS handshake verified, and a device JWT. Both then look the device up, so a
//! removed or disabled device stays out and its client-id pattern, groups and limits
//! apply whatever the credential.

use std::net::IpAddr;
use std::sync::Arc;

use messs_storage::registry::DeviceRecord;
use messs_storage::Store;

use super::tenants::TenantSecurity;
use super::{clip, device_limits, groups, jwt, Auth, Denied, Identity, Login, Method, Refusal};
use crate::error::BrokerError;

impl Auth {
    /// Logs in with a client certificate the TLS handshake verified: the tenant is the one
    /// whose CA issued it, and the certificate's name must be a device of that tenant that
    /// exists and is enabled. A removed device stays out even though its certificate still
    /// verifies; only a tenant that turned on `cert_auto_register` has a missing device
    /// registered (and audited) at its first login.
    pub(super) async fn certificate(
        &self,
        cert: &crate::transport::tls::CertLogin,
        peer: IpAddr,
        store: Option<&Store>,
    ) -> Result<Identity, Refusal> {
        let who = format!(
            "{}@{} from {peer} (certificate)",
            clip(&cert.name),
            cert.tenant
        );
        let refuse = |why: &str| Refusal {
            denied: Denied::BadCredentials,
            detail: format!("{who}: {why}"),
            lockouts: Vec::new(),
        };
        let Some(tenant) = self.tenants.get(&cert.tenant).filter(|t| t.is_enabled()) else {
            return Err(refuse("tenant disabled"));
        };
        if tenant.is_revoked(&cert.fingerprint) {
            return Err(refuse("certificate revoked"));
        }
        let Some(store) = store.cloned() else {
            return Err(refuse("no registry to find the device in"));
        };
        let auto_register = tenant.cert_auto_register();
        let (t, n) = (cert.tenant.to_string(), cert.name.clone());
        let detail = format!("device {:?} in tenant {t:?} from {peer}", clip(&n));
        let found = tokio::task::spawn_blocking(move || -> Result<_, BrokerError> {
            match store.device(&t, &n)? {
                Some(d) => Ok(Some(d)),
                None if auto_register => {
                    let d = DeviceRecord {
                        tenant: t,
                        username: n,
                        password_hash: None,
                        client_id_pattern: None,
                        groups: Vec::new(),
                        enabled: true,
                        version: 0,
                        scram: None,
                        limits: Vec::new(),
                    };
                    store.put_device(&d, true)?;
                    let event = messs_storage::audit::AuditEvent {
                        time_ms: crate::clock::unix_ms(),
                        tenant: Some(d.tenant.clone()),
                        actor: "broker".into(),
                        action: "device.auto_register".into(),
                        detail,
                    };
                    if let Err(e) = store.append_audit(&event) {
                        tracing::warn!(error = %e, "audit record not written");
                    }
                    Ok(Some(d))
                }
                None => Ok(None),
            }
        })
        .await;
        let device = match found {
            Ok(Ok(Some(d))) => d,
            Ok(Ok(None)) => return Err(refuse("no such device")),
            _ => return Err(refuse("registry unreadable")),
        };
        if !device.enabled {
            return Err(refuse("device disabled"));
        }
        Ok(Identity {
            tenant,
            username: Some(Arc::from(cert.name.as_str())),
            groups: groups(device.groups),
            method: Method::Certificate,
            client_id_pattern: device.client_id_pattern.map(Arc::from),
            token_client_id: None,
            scope: None,
            device_limits: device_limits(device.limits),
        })
    }

    /// Logs in with a device JWT of `tenant` (subject to the username's lockout). The token
    /// must name the tenant in `aud` (see `jwt::verify`). If its subject is a registered
    /// device, that device must be enabled, and its client-id pattern, groups and limits
    /// apply as for a password login; a token's own `client_id` claim narrows further.
    pub(super) async fn token(
        &self,
        login: &Login<'_>,
        tenant: Arc<TenantSecurity>,
        keys: &[messs_storage::registry::JwtKey],
        (name, who): (&str, &str),
        store: Option<&Store>,
        now_ms: u64,
    ) -> Result<Identity, Refusal> {
        if let Some(ms) = self
            .lockout
            .user_locked(login.peer, &tenant.id, name, now_ms)
        {
            return Err(Refusal {
                denied: Denied::LockedOut,
                detail: format!("{who}: username locked out for {ms} ms more"),
                lockouts: Vec::new(),
            });
        }
        let username = login.username.map(|_| name);
        let password = login.password.unwrap_or(b"");
        let v = match jwt::verify(password, keys, username, &tenant.id, self.jwt_leeway_secs) {
            Ok(v) => v,
            Err(why) => {
                return Err(self.bad_credentials(
                    login.peer,
                    &tenant.id,
                    name,
                    format!("{who}: {why}"),
                    now_ms,
                ))
            }
        };
        let refuse = |why: &str| Refusal {
            denied: Denied::BadCredentials,
            detail: format!("{who} (token): {why}"),
            lockouts: Vec::new(),
        };
        let device = match store.cloned() {
            Some(store) => {
                let (t, n) = (tenant.id.to_string(), v.subject.clone());
                match tokio::task::spawn_blocking(move || store.device(&t, &n)).await {
                    Ok(Ok(d)) => d,
                    _ => return Err(refuse("registry unreadable")),
                }
            }
            None => None,
        };
        if device.as_ref().is_some_and(|d| !d.enabled) {
            return Err(refuse("device disabled"));
        }
        self.lockout.succeeded(login.peer, &tenant.id, name);
        let (mut group_list, device_pattern, limits) = device
            .map(|d| (d.groups, d.client_id_pattern, d.limits))
            .unwrap_or_default();
        group_list.extend(v.groups);
        Ok(Identity {
            tenant,
            username: Some(Arc::from(v.subject.as_str())),
            groups: groups(group_list),
            method: Method::Jwt,
            client_id_pattern: device_pattern.map(Arc::from),
            token_client_id: v.client_id.map(Arc::from),
            scope: v.scope.map(Arc::new),
            device_limits: device_limits(limits),
        })
    }
}
