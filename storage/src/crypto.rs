//! Encryption at rest: AES-256-GCM for payloads and secret values. Each sealed value
//! carries the id of its key, so a new key can become active while values sealed with the
//! older ones stay readable (rotation without rewriting). The record's key is the
//! associated data, so a sealed value moved to another key does not open. With a key
//! configured, a value in clear is refused, not read: see [`crate::seal`] for sealing a
//! store that ran without encryption.
//!
//! ```text
//! plain   [0][bytes]
//! sealed  [1][key id u32][nonce 12][ciphertext + 16-byte tag]
//! ```
//!
//! Key material: one or more `id:hex` entries (64 hex digits each) separated by commas or
//! newlines; the last is the active key. A bare 64-hex-digit string is key id 1.

use std::collections::BTreeMap;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};

use crate::error::StorageError;

const PLAIN: u8 = 0;
const SEALED: u8 = 1;

/// Most values one key seals. AES-GCM with random 96-bit nonces is safe for 2^32 of them
/// per key (NIST SP 800-38D); the ring stops at half that, and says to add a key and run
/// `messs storage rekey`.
pub const KEY_USAGE_LIMIT: u64 = 1 << 31;

/// Seals between two writes of the active key's count to the store.
const USAGE_PERSIST_EVERY: u64 = 1 << 16;

/// The keys values are sealed and opened with.
pub struct KeyRing {
    keys: BTreeMap<u32, LessSafeKey>,
    active: u32,
    /// Values the active key has sealed, across restarts (loaded from and written to the
    /// store, at most `USAGE_PERSIST_EVERY` behind after a crash), and the bound on it.
    usage: AtomicU64,
    usage_limit: u64,
    /// The count in the store is `USAGE_PERSIST_EVERY` or more behind.
    usage_persist_due: AtomicBool,
    rng: SystemRandom,
    /// Derived from the lowest-numbered key (see [`KeyRing::audit_key`]).
    audit_key: [u8; 32],
    /// Whether values stored in clear may be read (only while sealing a store written
    /// without encryption: see [`crate::seal`]).
    allow_unsealed: bool,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key bytes.
        f.debug_struct("KeyRing")
            .field("key_ids", &self.keys.keys().collect::<Vec<_>>())
            .field("active", &self.active)
            .finish()
    }
}

fn hex_key(hex: &str) -> Result<[u8; 32], StorageError> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return Err(StorageError::Crypto(format!(
            "a key must be 64 hex digits (32 bytes), this one has {}",
            hex.len()
        )));
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        let pair = hex.get(2 * i..2 * i + 2).unwrap_or("");
        *byte = u8::from_str_radix(pair, 16)
            .map_err(|_| StorageError::Crypto("a key has a character that is not hex".into()))?;
    }
    Ok(key)
}

impl KeyRing {
    /// Parses key material (see the module header). Error messages never contain it.
    pub fn parse(spec: &str) -> Result<Self, StorageError> {
        let entries: Vec<&str> = spec
            .split([',', '\n'])
            .map(str::trim)
            .filter(|e| !e.is_empty() && !e.starts_with('#'))
            .collect();
        if entries.is_empty() {
            return Err(StorageError::Crypto("the key material is empty".into()));
        }
        let mut keys = BTreeMap::new();
        let mut raw = BTreeMap::new();
        let mut active = 0;
        for entry in entries {
            let (id, hex) = match entry.split_once(':') {
                Some((id, hex)) => {
                    let id = id.trim().parse::<u32>().map_err(|_| {
                        StorageError::Crypto("a key id is not a number (expected id:hex)".into())
                    })?;
                    (id, hex)
                }
                None => (1, entry),
            };
            let bytes = hex_key(hex)?;
            let unbound = UnboundKey::new(&AES_256_GCM, &bytes)
                .map_err(|_| StorageError::Crypto("the key was rejected".into()))?;
            raw.insert(id, bytes);
            if keys.insert(id, LessSafeKey::new(unbound)).is_some() {
                return Err(StorageError::Crypto(format!("key id {id} appears twice")));
            }
            active = id;
        }
        let lowest = raw
            .values()
            .next()
            .ok_or_else(|| StorageError::Crypto("the key material is empty".into()))?;
        let derived = aws_lc_rs::hmac::sign(
            &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, lowest),
            b"messs audit chain key v1",
        );
        let mut audit_key = [0u8; 32];
        audit_key.copy_from_slice(derived.as_ref());
        Ok(KeyRing {
            keys,
            active,
            usage: AtomicU64::new(0),
            usage_limit: KEY_USAGE_LIMIT,
            usage_persist_due: AtomicBool::new(false),
            rng: SystemRandom::new(),
            audit_key,
            allow_unsealed: false,
        })
    }

    /// This ring, also reading values stored in clear: for `messs storage encrypt` only,
    /// which reads a store written without encryption and writes every value back sealed.
    pub fn allowing_unsealed(mut self) -> Self {
        self.allow_unsealed = true;
        self
    }

    /// A key for the audit chain, derived from the lowest-numbered key of the ring (so a
    /// rotation, which adds a higher one, keeps it; removing that key changes it).
    pub fn audit_key(&self) -> [u8; 32] {
        self.audit_key
    }

    /// The id new values are sealed with.
    pub fn active_id(&self) -> u32 {
        self.active
    }

    /// This ring with a lower bound on what one key seals (drills and tests; the default
    /// is [`KEY_USAGE_LIMIT`]).
    pub fn with_usage_limit(mut self, limit: u64) -> Self {
        self.usage_limit = limit;
        self
    }

    /// Values the active key has sealed.
    pub fn usage(&self) -> u64 {
        self.usage.load(Ordering::Relaxed)
    }

    /// Starts the count from what the store says the active key sealed before.
    pub(crate) fn set_usage(&self, n: u64) {
        self.usage.store(n, Ordering::Relaxed);
    }

    /// Whether the count should be written to the store now (clears the flag).
    pub(crate) fn take_usage_persist_due(&self) -> bool {
        self.usage_persist_due.swap(false, Ordering::AcqRel)
    }

    /// Counts one value sealed by the active key, refusing past the bound.
    fn count_seal(&self) -> Result<(), StorageError> {
        let n = self.usage.fetch_add(1, Ordering::Relaxed) + 1;
        if n > self.usage_limit {
            self.usage.fetch_sub(1, Ordering::Relaxed);
            return Err(StorageError::Crypto(format!(
                "the active key {} has sealed {} values, as many as one key may (random nonces): add a new key as the last of storage.encryption_key_file and run `messs storage rekey`",
                self.active, self.usage_limit
            )));
        }
        if n == self.usage_limit - self.usage_limit / 10 {
            tracing::warn!(
                key_id = self.active,
                sealed = n,
                limit = self.usage_limit,
                "the active encryption key is near the most values one key may seal: add a new key and run `messs storage rekey`"
            );
        }
        if n.is_multiple_of(USAGE_PERSIST_EVERY) {
            self.usage_persist_due.store(true, Ordering::Release);
        }
        Ok(())
    }
}

/// Seals `plain` with the active key (or stores it plain when there is no key ring).
pub(crate) fn seal(
    ring: Option<&KeyRing>,
    aad: &[u8],
    plain: &[u8],
) -> Result<Vec<u8>, StorageError> {
    let Some(ring) = ring else {
        let mut out = Vec::with_capacity(plain.len() + 1);
        out.push(PLAIN);
        out.extend_from_slice(plain);
        return Ok(out);
    };
    let key = ring
        .keys
        .get(&ring.active)
        .ok_or_else(|| StorageError::Crypto("the active key is missing".into()))?;
    ring.count_seal()?;
    let mut nonce = [0u8; NONCE_LEN];
    ring.rng
        .fill(&mut nonce)
        .map_err(|_| StorageError::Crypto("the system random source failed".into()))?;
    let mut out = Vec::with_capacity(1 + 4 + NONCE_LEN + plain.len() + 16);
    out.push(SEALED);
    out.extend_from_slice(&ring.active.to_be_bytes());
    out.extend_from_slice(&nonce);
    let mut body = plain.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut body,
    )
    .map_err(|_| StorageError::Crypto("sealing failed".into()))?;
    out.extend_from_slice(&body);
    Ok(out)
}

/// Opens a value written by [`seal`]. A sealed value needs the key ring and its key id.
pub(crate) fn open(
    ring: Option<&KeyRing>,
    aad: &[u8],
    stored: &[u8],
) -> Result<Vec<u8>, StorageError> {
    match stored.split_first() {
        Some((&PLAIN, rest)) => match ring {
            // With encryption on, a value in clear was not written by this broker: trusting
            // it would let anyone who can write the data directory plant credentials.
            Some(r) if !r.allow_unsealed => Err(StorageError::Crypto(
                "a value is stored in clear but encryption is on: refused (a store written \
                 without encryption is sealed once with `messs storage encrypt`)"
                    .into(),
            )),
            _ => Ok(rest.to_vec()),
        },
        Some((&SEALED, rest)) => {
            let ring = ring.ok_or_else(|| {
                StorageError::Crypto(
                    "a value is encrypted but no key is configured (storage.encryption_key_file or storage.encryption_key_env)".into(),
                )
            })?;
            if rest.len() < 4 + NONCE_LEN + 16 {
                return Err(StorageError::Crypto("a sealed value is truncated".into()));
            }
            let (id, rest) = rest.split_at(4);
            let id = u32::from_be_bytes([id[0], id[1], id[2], id[3]]);
            let key = ring.keys.get(&id).ok_or_else(|| {
                StorageError::Crypto(format!(
                    "a value is sealed with key id {id}, which is not in the configured key material"
                ))
            })?;
            let (nonce, body) = rest.split_at(NONCE_LEN);
            let nonce = Nonce::try_assume_unique_for_key(nonce)
                .map_err(|_| StorageError::Crypto("bad nonce".into()))?;
            let mut body = body.to_vec();
            let plain_len = key
                .open_in_place(nonce, Aad::from(aad), &mut body)
                .map_err(|_| {
                    StorageError::Crypto(
                        "a sealed value failed authentication (wrong key or altered data)".into(),
                    )
                })?
                .len();
            body.truncate(plain_len);
            Ok(body)
        }
        Some((other, _)) => Err(StorageError::Crypto(format!(
            "unknown value envelope {other}"
        ))),
        None => Err(StorageError::Crypto("an empty value envelope".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "1:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const K2: &str = "2:1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100";

    #[test]
    fn seals_and_opens_and_hides_the_plaintext() {
        let ring = KeyRing::parse(K1).unwrap();
        let sealed = seal(Some(&ring), b"key", b"secret payload").unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(
            open(Some(&ring), b"key", &sealed).unwrap(),
            b"secret payload"
        );
    }

    #[test]
    fn rotation_keeps_old_values_readable() {
        let old = KeyRing::parse(K1).unwrap();
        let sealed_old = seal(Some(&old), b"k", b"old").unwrap();
        let rotated = KeyRing::parse(&format!("{K1}\n{K2}")).unwrap();
        assert_eq!(rotated.active_id(), 2);
        assert_eq!(open(Some(&rotated), b"k", &sealed_old).unwrap(), b"old");
        let sealed_new = seal(Some(&rotated), b"k", b"new").unwrap();
        assert!(
            open(Some(&old), b"k", &sealed_new).is_err(),
            "key 2 is unknown to the old ring"
        );
    }

    #[test]
    fn altered_data_wrong_key_or_moved_value_fail() {
        let ring = KeyRing::parse(K1).unwrap();
        let mut sealed = seal(Some(&ring), b"k", b"payload").unwrap();
        assert!(
            open(Some(&ring), b"other", &sealed).is_err(),
            "moved to another key"
        );
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert!(open(Some(&ring), b"k", &sealed).is_err(), "altered");
        assert!(open(None, b"k", &seal(Some(&ring), b"k", b"p").unwrap()).is_err());
    }

    #[test]
    fn a_value_in_clear_is_refused_when_encryption_is_on() {
        let plain = seal(None, b"k", b"planted").unwrap();
        assert_eq!(open(None, b"k", &plain).unwrap(), b"planted");
        let ring = KeyRing::parse(K1).unwrap();
        let err = open(Some(&ring), b"k", &plain).unwrap_err().to_string();
        assert!(err.contains("messs storage encrypt"), "{err}");
        let migrating = KeyRing::parse(K1).unwrap().allowing_unsealed();
        assert_eq!(open(Some(&migrating), b"k", &plain).unwrap(), b"planted");
    }

    #[test]
    fn bad_key_material_is_a_clear_error_without_the_key() {
        for spec in ["", "abc", "x:00", &K1.replace('0', "g")] {
            let err = KeyRing::parse(spec).unwrap_err().to_string();
            assert!(!err.contains("0102030405"), "{err}");
        }
        assert!(KeyRing::parse(&format!("{K1},{K1}")).is_err());
    }
}
