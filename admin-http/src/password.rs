//! Admin passwords: the policy a new one must meet, and argon2id hashing and checking.
//!
//! The policy: at least 12 characters (and at most 256), not on the bundled list of the
//! 10,000 most common passwords, not one whose letters are on it once digits and symbols at
//! its ends are taken off and common letter swaps undone (`P@ssw0rd2024!` is `password`),
//! not the username, not digits only (under 20) or mostly runs like `1234`/`abcd`, and not
//! one of the account's last 5.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock, PoisonError};

use argon2::{PasswordHash, PasswordVerifier};
use messs_broker::HashParams;

use crate::error::AdminError;

/// Shortest password.
pub const MIN_LEN: usize = 12;
/// Longest password (argon2 hashes any length, but a 1 MB password is a way to waste it).
pub const MAX_LEN: usize = 256;
/// Earlier passwords a new one may not repeat.
pub const HISTORY: usize = 5;

static COMMON: OnceLock<HashSet<&'static str>> = OnceLock::new();

fn common() -> &'static HashSet<&'static str> {
    COMMON.get_or_init(|| {
        include_str!("../data/common-passwords.txt")
            .lines()
            .filter(|l| !l.is_empty())
            .collect()
    })
}

/// The letters of a password with leetspeak undone and the digits and symbols at its ends
/// taken off, lower case.
fn core(password: &str) -> String {
    let swapped: String = password
        .chars()
        .map(|c| match c {
            '0' => 'o',
            '1' | '!' => 'i',
            '3' => 'e',
            '4' | '@' => 'a',
            '5' | '$' => 's',
            '7' => 't',
            c => c.to_ascii_lowercase(),
        })
        .collect();
    let plain = password.to_lowercase();
    // Strip from the original so a trailing "123" is not read as "ize".
    let start = plain
        .char_indices()
        .find(|(_, c)| c.is_alphabetic())
        .map_or(plain.len(), |(i, _)| i);
    let end = plain
        .char_indices()
        .rev()
        .find(|(_, c)| c.is_alphabetic())
        .map_or(start, |(i, c)| i + c.len_utf8());
    swapped.get(start..end.max(start)).unwrap_or("").to_owned()
}

/// Checks a new password against the policy (not the history: see [`reused`]).
pub fn check_policy(username: &str, password: &str) -> Result<(), AdminError> {
    let n = password.chars().count();
    if n < MIN_LEN {
        return Err(AdminError::BadRequest(format!(
            "a password has at least {MIN_LEN} characters"
        )));
    }
    if password.len() > MAX_LEN {
        return Err(AdminError::BadRequest(format!(
            "a password has at most {MAX_LEN} bytes"
        )));
    }
    let lower = password.to_lowercase();
    let core = core(password);
    if common().contains(lower.as_str()) || (core.len() >= 4 && common().contains(core.as_str())) {
        return Err(AdminError::BadRequest(
            "that password is on the list of common and breached passwords".into(),
        ));
    }
    // (Only names of 3 or more characters: any password contains some one-letter name.)
    if username.len() >= 3 && lower.contains(&username.to_lowercase()) {
        return Err(AdminError::BadRequest(
            "a password may not contain the username".into(),
        ));
    }
    let chars: Vec<char> = password.chars().collect();
    let steps = chars
        .windows(2)
        .filter(|w| (w[1] as i64 - w[0] as i64).abs() == 1)
        .count();
    if password.bytes().all(|b| b.is_ascii_digit()) && n < 20 || steps * 4 >= (n - 1) * 3 {
        return Err(AdminError::BadRequest(
            "a password of digits only (under 20) or of runs like 1234 or abcd is easy to guess"
                .into(),
        ));
    }
    let distinct: HashSet<char> = password.chars().collect();
    if distinct.len() < 4 {
        return Err(AdminError::BadRequest(
            "a password needs at least 4 different characters".into(),
        ));
    }
    Ok(())
}

/// Hashes a password (argon2id, the broker's parameters). Blocking (~20 ms).
pub fn hash(password: &str, params: HashParams) -> Result<String, AdminError> {
    messs_broker::hash_password(password, params).map_err(AdminError::internal)
}

/// Whether `password` matches the PHC string `phc`. Blocking.
pub fn verify(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// Whether `password` is the current one or in `history`. Blocking (one argon2 run each).
pub fn reused(password: &str, current: &str, history: &[String]) -> bool {
    std::iter::once(current)
        .chain(history.iter().take(HISTORY - 1).map(String::as_str))
        .any(|phc| verify(password, phc))
}

/// A hash of a random password, verified when the account does not exist so an unknown
/// username costs the same time as a wrong password. Made once per set of parameters
/// (with the parameters the caller hashes with, not the first ever asked for: a
/// cheaper decoy would tell unknown names apart by their speed).
pub fn decoy(params: HashParams) -> String {
    /// Parameter sets remembered (one in a running broker; tests use several).
    const KEPT: usize = 4;
    static DECOYS: Mutex<Vec<(HashParams, String)>> = Mutex::new(Vec::new());
    let mut decoys = DECOYS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((_, phc)) = decoys.iter().find(|(p, _)| *p == params) {
        return phc.clone();
    }
    let phc = hash(&crate::secret::token_hex(16), params).unwrap_or_default();
    if decoys.len() >= KEPT {
        decoys.remove(0);
    }
    decoys.push((params, phc.clone()));
    phc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_refuses_short_common_and_disguised_passwords() {
        for bad in [
            "short",
            "password1234",
            "P@ssw0rd2024!",
            "Qwertyuiop12",
            "123456789012",
            "admin-is-me-admin",
            "aaaaaaaaaaaaaaa",
            "abababababab",
        ] {
            assert!(check_policy("admin", bad).is_err(), "{bad} accepted");
        }
        for good in [
            "correct horse battery staple",
            "vT8#kq2!Lm9zR",
            "m0untain-Otter-42",
        ] {
            assert!(check_policy("admin", good).is_ok(), "{good} refused");
        }
        assert!(common().len() >= 9_000, "the bundled list is there");
    }

    #[test]
    fn core_strips_ends_and_undoes_swaps() {
        assert_eq!(core("P@ssw0rd2024!"), "password");
        assert_eq!(core("!!Dragon99"), "dragon");
        assert_eq!(core("1234"), "");
    }

    #[test]
    fn history_is_checked() {
        let p = HashParams {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
            scram_iterations: 1,
        };
        let old = hash("first password here", p).unwrap();
        let older = hash("second password here", p).unwrap();
        let now = hash("third password here", p).unwrap();
        let history = vec![old, older];
        assert!(reused("third password here", &now, &history));
        assert!(reused("second password here", &now, &history));
        assert!(!reused("a fourth one entirely", &now, &history));
    }
}
