//! Admin accounts: the first one, and the login check (password, then TOTP or a recovery
//! code; lockouts are [`crate::login_guard`]'s). Blocking functions; handlers run them on
//! the blocking pool.

use messs_broker::{BrokerHandle, HashParams};
use messs_storage::admins::AdminRecord;
use messs_storage::Store;

use crate::error::AdminError;
use crate::rbac::Role;
use crate::{clock, mfa, password, secret};

/// The first account's name.
pub const FIRST_ADMIN: &str = "admin";

/// Creates the superadmin `admin` if the store has no admin account: with `password`
/// (`MESSS_ADMIN_PASSWORD`), which must meet the policy, or else with a generated one
/// that must be changed at the first login. Returns the generated password, for the
/// caller to print once; `None` if an account existed or `password` was given.
pub async fn bootstrap(
    broker: &BrokerHandle,
    password: Option<String>,
) -> Result<Option<String>, AdminError> {
    let Some(store) = broker.store() else {
        return Ok(None);
    };
    let params = broker.hash_params();
    tokio::task::spawn_blocking(move || bootstrap_blocking(&store, params, password)).await?
}

fn bootstrap_blocking(
    store: &Store,
    params: HashParams,
    password: Option<String>,
) -> Result<Option<String>, AdminError> {
    if !store.admins()?.is_empty() {
        return Ok(None);
    }
    let (pw, generated) = match password {
        Some(p) => {
            password::check_policy(FIRST_ADMIN, &p).map_err(|e| {
                AdminError::BadRequest(format!(
                    "MESSS_ADMIN_PASSWORD does not meet the password policy: {e}"
                ))
            })?;
            (p, false)
        }
        None => (secret::token_hex(12), true),
    };
    let record = AdminRecord {
        username: FIRST_ADMIN.into(),
        role: Role::Superadmin.as_str().into(),
        password_hash: password::hash(&pw, params)?,
        must_change_password: generated,
        enabled: true,
        created_ms: clock::unix_ms(),
        ..AdminRecord::default()
    };
    store.create_admin(&record)?;
    Ok(generated.then_some(pw))
}

/// What a login presents.
pub struct Credentials {
    /// Account.
    pub username: String,
    /// Password.
    pub password: String,
    /// TOTP code, once enrolled.
    pub totp: Option<String>,
    /// A recovery code instead of the TOTP code.
    pub recovery_code: Option<String>,
}

/// How a login ended, for the audit record.
pub enum LoginResult {
    /// Logged in; `used_recovery` if a recovery code stood in for TOTP.
    Ok {
        /// A recovery code was used.
        used_recovery: bool,
    },
    /// Refused, and why (for the audit log only; the caller sees one message).
    Refused(&'static str, AdminError),
}

const INVALID: AdminError = AdminError::Unauthenticated("invalid username, password or code");

/// Checks a login's credentials. Blocking (argon2).
///
/// Every refusal is the same [`INVALID`] after the same work (one argon2 verification):
/// an unknown account, a wrong password, and a right password without a valid TOTP or
/// recovery code cannot be told apart by an unauthenticated caller. There is no
/// "TOTP required" answer: a client that does not know whether an account has TOTP
/// sends the field anyway, or asks its user. Lockouts are not decided here (see
/// [`crate::login_guard`]); a refusal writes nothing to the store, so it takes the same
/// time for a real account as for an unknown one.
pub fn check_login(
    store: &Store,
    params: HashParams,
    c: &Credentials,
) -> Result<LoginResult, AdminError> {
    let now = clock::unix_ms();
    let Some(account) = store.admin(&c.username).ok().flatten() else {
        // The same argon2 work as for a real account, so timing tells nothing.
        let _ = password::verify(&c.password, &password::decoy(params));
        return Ok(LoginResult::Refused("unknown account", INVALID));
    };
    // `account.failed_logins` and `account.locked_until_ms` are not read: the lockout is
    // per (account, source), in memory (login_guard.rs).
    let password_ok = password::verify(&c.password, &account.password_hash);
    let mut used_recovery = false;
    let mut step = None;
    let second_factor_ok = match (&account.totp_secret, password_ok) {
        (_, false) => false,
        (None, true) => true,
        (Some(secret), true) => {
            if let Some(code) = &c.totp {
                step = mfa::check(secret, code, now / 1000, account.totp_last_step);
                step.is_some()
            } else {
                let code = c.recovery_code.as_deref().unwrap_or("");
                let mut codes = account.recovery_codes.clone();
                used_recovery = mfa::use_recovery_code(&mut codes, code);
                used_recovery
            }
        }
    };
    let why = match (password_ok, second_factor_ok, account.enabled) {
        (false, _, _) => "wrong password",
        (true, false, _) if c.totp.is_none() && c.recovery_code.is_none() => "TOTP code missing",
        (true, false, _) => "wrong TOTP or recovery code",
        (true, true, false) => "account disabled",
        (true, true, true) => "",
    };
    if !why.is_empty() {
        return Ok(LoginResult::Refused(why, INVALID));
    }
    let code = c.recovery_code.clone();
    // The account is read again under the registry lock: a code accepted by a concurrent
    // login (the same TOTP step, the same recovery code) is refused here.
    let fresh = store.update_admin(&c.username, |a| {
        let fresh = match step {
            Some(s) => s > a.totp_last_step,
            None if used_recovery => code
                .as_deref()
                .is_some_and(|code| mfa::use_recovery_code(&mut a.recovery_codes, code)),
            None => true,
        };
        if let Some(s) = step.filter(|_| fresh) {
            a.totp_last_step = s;
        }
        Ok((fresh, fresh && (step.is_some() || used_recovery)))
    })?;
    if !fresh {
        return Ok(LoginResult::Refused(
            "TOTP or recovery code used by a concurrent login",
            INVALID,
        ));
    }
    Ok(LoginResult::Ok { used_recovery })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_admin_is_made_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(messs_storage::StoreOptions::new(dir.path())).unwrap();
        let p = HashParams {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
            scram_iterations: 1,
        };
        assert!(
            bootstrap_blocking(&store, p, Some("password".into())).is_err(),
            "policy"
        );
        let generated = bootstrap_blocking(&store, p, None).unwrap().unwrap();
        let a = store.admin(FIRST_ADMIN).unwrap().unwrap();
        assert!(a.must_change_password && password::verify(&generated, &a.password_hash));
        assert_eq!(
            bootstrap_blocking(&store, p, None).unwrap(),
            None,
            "only once"
        );
    }
}
