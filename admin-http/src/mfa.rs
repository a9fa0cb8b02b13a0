//! TOTP (RFC 6238: SHA-1, 6 digits, 30 s steps, one step of clock skew either way; what
//! every authenticator app does) and one-time recovery codes.
//!
//! A code is accepted once: the step it matched must be later than the last step accepted
//! for the account. Recovery codes are 20 random base-32 characters (100 bits); only their
//! SHA-256 is stored, and each is crossed off when used.

use totp_rs::{Algorithm, Builder, Totp};

use crate::error::AdminError;
use crate::secret;

/// Issuer shown by authenticator apps.
pub const ISSUER: &str = "messs";
/// Recovery codes made at enrolment.
pub const RECOVERY_CODES: usize = 10;

fn totp(secret: &[u8], account: &str) -> Result<Totp, AdminError> {
    Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(6)
        .with_skew(1)
        .with_step_duration(30)
        .with_secret(secret.to_vec())
        .with_issuer(Some(ISSUER))
        .with_account_name(account)
        .build()
        .map_err(AdminError::internal)
}

/// A new 160-bit TOTP secret.
pub fn new_secret() -> Result<[u8; 20], AdminError> {
    secret::random()
}

/// The `otpauth://` URI an authenticator app scans or imports, and the secret in base 32
/// for typing in.
pub fn enrolment(secret: &[u8], account: &str) -> Result<(String, String), AdminError> {
    let t = totp(secret, account)?;
    let uri = t.to_url().map_err(AdminError::internal)?;
    Ok((uri, t.secret().to_base32()))
}

/// The step `code` matches at `unix_secs`, if it is later than `last_step`.
pub fn check(secret: &[u8], code: &str, unix_secs: u64, last_step: u64) -> Option<u64> {
    let t = totp(secret, "x").ok()?;
    let code = code.trim();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.check(code, unix_secs).filter(|&step| step > last_step)
}

/// The code for `unix_secs` (tests and the operator walkthrough's scripts use it).
pub fn code_at(secret: &[u8], unix_secs: u64) -> Result<String, AdminError> {
    Ok(totp(secret, "x")?.generate(unix_secs).to_string())
}

const BASE32: &[u8; 32] = b"abcdefghijkmnpqrstuvwxyz23456789";

/// New recovery codes, shown once, and the digests to store.
pub fn recovery_codes() -> Result<(Vec<String>, Vec<[u8; 32]>), AdminError> {
    let mut codes = Vec::with_capacity(RECOVERY_CODES);
    for _ in 0..RECOVERY_CODES {
        let raw: [u8; 20] = secret::random()?;
        let chars: String = raw
            .iter()
            .map(|b| char::from(BASE32[usize::from(b & 31)]))
            .collect();
        codes.push(format!(
            "{}-{}-{}-{}",
            &chars[0..5],
            &chars[5..10],
            &chars[10..15],
            &chars[15..20]
        ));
    }
    let digests = codes.iter().map(|c| recovery_digest(c)).collect();
    Ok((codes, digests))
}

/// The digest of a recovery code as typed: case, spaces and dashes do not matter.
pub fn recovery_digest(code: &str) -> [u8; 32] {
    let norm: String = code
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    secret::sha256(norm.as_bytes())
}

/// Crosses off the recovery code `code` if it is one of `stored`; true if it was.
pub fn use_recovery_code(stored: &mut Vec<[u8; 32]>, code: &str) -> bool {
    let d = recovery_digest(code);
    let found = stored.iter().position(|s| secret::same(s, &d));
    if let Some(i) = found {
        stored.remove(i);
    }
    found.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_works_once_and_within_one_step() {
        let s = new_secret().unwrap();
        let now = 1_800_000_000;
        let code = code_at(&s, now).unwrap();
        let step = check(&s, &code, now, 0).unwrap();
        assert_eq!(step, now / 30);
        assert!(check(&s, &code, now, step).is_none(), "replayed");
        assert!(check(&s, &code, now + 30, 0).is_some(), "one step of skew");
        assert!(check(&s, &code, now + 90, 0).is_none(), "too late");
        assert!(check(&s, "12345", now, 0).is_none());
        assert!(check(&s, "abcdef", now, 0).is_none());
    }

    #[test]
    fn enrolment_uri_names_issuer_and_account() {
        let (uri, b32) = enrolment(&[1; 20], "ops@example").unwrap();
        assert!(
            uri.starts_with("otpauth://totp/messs:ops%40example?"),
            "{uri}"
        );
        assert!(uri.contains(&format!("secret={b32}")), "{uri}");
    }

    #[test]
    fn recovery_codes_are_single_use() {
        let (codes, mut stored) = recovery_codes().unwrap();
        assert_eq!(codes.len(), RECOVERY_CODES);
        let upper = codes[3].to_uppercase().replace('-', " ");
        assert!(use_recovery_code(&mut stored, &upper));
        assert!(!use_recovery_code(&mut stored, &codes[3]));
        assert_eq!(stored.len(), RECOVERY_CODES - 1);
    }
}
