//! Random secrets, their digests and constant-time comparison (aws-lc-rs, the one crypto
//! provider of the whole tree).

use aws_lc_rs::rand::{SecureRandom, SystemRandom};

/// `N` random bytes from the system's CSPRNG. An RNG failure (which aws-lc treats as fatal
/// for the process elsewhere) gives an error instead of a weak value.
pub fn random<const N: usize>() -> Result<[u8; N], crate::error::AdminError> {
    let mut out = [0u8; N];
    SystemRandom::new()
        .fill(&mut out)
        .map_err(|_| crate::error::AdminError::internal("the system RNG failed"))?;
    Ok(out)
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses exactly `N` bytes of hex.
pub fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// `n` random bytes as hex (for one-time passwords and decoys); empty if the RNG fails.
pub fn token_hex(n: usize) -> String {
    let mut out = vec![0u8; n];
    if SystemRandom::new().fill(&mut out).is_err() {
        return String::new();
    }
    hex(&out)
}

/// SHA-256.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Equality that takes the same time wherever the first difference is.
pub fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    #[allow(deprecated)] // the replacement is the same function under another name
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_rejects_bad_input() {
        let r: [u8; 16] = random().unwrap();
        assert_eq!(unhex::<16>(&hex(&r)), Some(r));
        assert_eq!(unhex::<2>("zz00"), None);
        assert_eq!(unhex::<2>("00"), None);
        assert_eq!(unhex::<2>("é0"), None);
        assert!(same(&sha256(b"a"), &sha256(b"a")));
        assert!(!same(&sha256(b"a"), &sha256(b"b")));
    }
}
