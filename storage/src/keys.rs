//! Key layouts. Every key starts with its tenant, so one tenant's data is one contiguous
//! range in each column family. Strings are length-prefixed, never separator-terminated:
//! client `b` of tenant `a` and client `bc` can never share a prefix, so a range delete of
//! one session's prefix touches nothing else.
//!
//! ```text
//! tenant prefix   [len u8][tenant]
//! session prefix  [tenant prefix][len u16][client id]
//! sessions CF     [session prefix][tag u8][...]   tag: record, subscription, incoming QoS 2, will
//! queue CF        [session prefix][seq u64]
//! messages CF     [tenant prefix][message id u64]
//! inflight CF     [session prefix][seq u64]
//! retained CF     [tenant prefix][topic]
//! telemetry CF    [tenant prefix][timestamp ms u64][seq u32]
//! audit CF        [seq u64]
//! ```

use crate::error::StorageError;

/// Tag bytes after a session prefix in the sessions column family.
pub(crate) mod tag {
    /// The session record itself.
    pub const RECORD: u8 = 0;
    /// One subscription (followed by the filter).
    pub const SUBSCRIPTION: u8 = 1;
    /// One incoming QoS 2 packet id awaiting PUBREL (followed by the id, u16).
    pub const INCOMING_QOS2: u8 = 2;
    /// The pending (delayed) will.
    pub const WILL: u8 = 3;
}

/// `[len u8][tenant]`.
pub fn tenant_prefix(tenant: &str) -> Result<Vec<u8>, StorageError> {
    let len = u8::try_from(tenant.len()).map_err(|_| StorageError::TooLong("a tenant name"))?;
    let mut k = Vec::with_capacity(1 + tenant.len());
    k.push(len);
    k.extend_from_slice(tenant.as_bytes());
    Ok(k)
}

/// `[tenant prefix][len u16][client id]`: every key of one session starts with this.
pub fn session_prefix(tenant: &str, client_id: &str) -> Result<Vec<u8>, StorageError> {
    let mut k = tenant_prefix(tenant)?;
    let len = u16::try_from(client_id.len()).map_err(|_| StorageError::TooLong("a client id"))?;
    k.extend_from_slice(&len.to_be_bytes());
    k.extend_from_slice(client_id.as_bytes());
    Ok(k)
}

/// Splits a key starting with a session prefix into (tenant, client id, rest).
pub fn split_session_key(key: &[u8]) -> Option<(&str, &str, &[u8])> {
    let (&tlen, rest) = key.split_first()?;
    let tlen = usize::from(tlen);
    let tenant = std::str::from_utf8(rest.get(..tlen)?).ok()?;
    let rest = rest.get(tlen..)?;
    let clen = usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?]));
    let client = std::str::from_utf8(rest.get(2..2 + clen)?).ok()?;
    Some((tenant, client, rest.get(2 + clen..)?))
}

/// Splits a key starting with a tenant prefix into (tenant, rest).
pub fn split_tenant_key(key: &[u8]) -> Option<(&str, &[u8])> {
    let (&tlen, rest) = key.split_first()?;
    let tlen = usize::from(tlen);
    let tenant = std::str::from_utf8(rest.get(..tlen)?).ok()?;
    Some((tenant, rest.get(tlen..)?))
}

/// `prefix` followed by `tail`.
pub fn join(prefix: &[u8], tail: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + tail.len());
    k.extend_from_slice(prefix);
    k.extend_from_slice(tail);
    k
}

/// `prefix` followed by a big-endian u64 (keys then sort by the number).
pub fn with_u64(prefix: &[u8], n: u64) -> Vec<u8> {
    join(prefix, &n.to_be_bytes())
}

/// The smallest key greater than every key starting with `prefix`, for range deletes and
/// iterator bounds; `None` if there is none (a prefix of only 0xFF bytes).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_prefixes_never_overlap() {
        let b = session_prefix("a", "b").unwrap();
        let bc = session_prefix("a", "bc").unwrap();
        assert!(!bc.starts_with(&b) && !b.starts_with(&bc));
        let end = prefix_end(&b).unwrap();
        assert!(bc < b || bc >= end, "client bc inside client b's range");
    }

    #[test]
    fn keys_split_back() {
        let k = with_u64(&session_prefix("tenant", "client/1").unwrap(), 7);
        let (t, c, rest) = split_session_key(&k).unwrap();
        assert_eq!((t, c), ("tenant", "client/1"));
        assert_eq!(rest, 7u64.to_be_bytes());
        assert!(split_session_key(&k[..5]).is_none());
    }

    #[test]
    fn prefix_end_carries() {
        assert_eq!(prefix_end(&[1, 2]).unwrap(), vec![1, 3]);
        assert_eq!(prefix_end(&[1, 0xFF]).unwrap(), vec![2]);
        assert!(prefix_end(&[0xFF]).is_none());
    }

    #[test]
    fn too_long_names_are_errors() {
        assert!(tenant_prefix(&"t".repeat(256)).is_err());
        assert!(session_prefix("t", &"c".repeat(70_000)).is_err());
    }
}
