//! The header every load-test payload starts with: when it was sent, by which publisher,
//! and its sequence number, so subscribers measure latency, loss and duplicates.

use std::time::{SystemTime, UNIX_EPOCH};

/// Bytes of header: 8 (sent, ns since the Unix epoch) + 4 (publisher) + 8 (sequence).
pub const HEADER_LEN: usize = 20;

/// Nanoseconds since the Unix epoch (wall clock: publisher and subscriber may be separate
/// processes on the same machine).
pub fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Fills `buf` (at least `HEADER_LEN` long) with a header; the rest is left as it is.
pub fn write_header(buf: &mut [u8], publisher: u32, seq: u64) {
    buf[0..8].copy_from_slice(&now_nanos().to_be_bytes());
    buf[8..12].copy_from_slice(&publisher.to_be_bytes());
    buf[12..20].copy_from_slice(&seq.to_be_bytes());
}

/// A decoded header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub sent_nanos: u64,
    pub publisher: u32,
    pub seq: u64,
}

/// Reads the header of a payload, if it is long enough.
pub fn read_header(payload: &[u8]) -> Option<Header> {
    let sent = payload.get(0..8)?.try_into().ok()?;
    let publisher = payload.get(8..12)?.try_into().ok()?;
    let seq = payload.get(12..20)?.try_into().ok()?;
    Some(Header {
        sent_nanos: u64::from_be_bytes(sent),
        publisher: u32::from_be_bytes(publisher),
        seq: u64::from_be_bytes(seq),
    })
}

/// Which sequence numbers of each publisher were seen: detects loss and duplicates.
#[derive(Debug, Default, Clone)]
pub struct SeenSet {
    bits: Vec<Vec<u64>>,
}

impl SeenSet {
    /// Marks a message seen; false if it was seen before (a duplicate).
    pub fn insert(&mut self, publisher: u32, seq: u64) -> bool {
        let p = publisher as usize;
        if self.bits.len() <= p {
            self.bits.resize_with(p + 1, Vec::new);
        }
        let words = &mut self.bits[p];
        let (w, b) = ((seq / 64) as usize, seq % 64);
        if words.len() <= w {
            words.resize(w + 1, 0);
        }
        let fresh = words[w] & (1 << b) == 0;
        words[w] |= 1 << b;
        fresh
    }

    /// Adds another set; returns how many of its entries were already here.
    pub fn merge(&mut self, other: &SeenSet) -> u64 {
        let mut overlap = 0;
        for (p, words) in other.bits.iter().enumerate() {
            if self.bits.len() <= p {
                self.bits.resize_with(p + 1, Vec::new);
            }
            let mine = &mut self.bits[p];
            if mine.len() < words.len() {
                mine.resize(words.len(), 0);
            }
            for (m, o) in mine.iter_mut().zip(words) {
                overlap += u64::from((*m & *o).count_ones());
                *m |= *o;
            }
        }
        overlap
    }

    /// Distinct messages seen from one publisher.
    pub fn count(&self, publisher: u32) -> u64 {
        self.bits
            .get(publisher as usize)
            .map_or(0, |w| w.iter().map(|x| u64::from(x.count_ones())).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let mut buf = vec![0u8; 64];
        write_header(&mut buf, 7, 123_456);
        let h = read_header(&buf).unwrap();
        assert_eq!((h.publisher, h.seq), (7, 123_456));
        assert!(h.sent_nanos > 0);
        assert!(read_header(&buf[..10]).is_none());
    }

    #[test]
    fn seen_set_counts_duplicates_and_merges() {
        let mut a = SeenSet::default();
        assert!(a.insert(0, 5));
        assert!(!a.insert(0, 5));
        assert!(a.insert(2, 1000));
        let mut b = SeenSet::default();
        b.insert(0, 5);
        b.insert(0, 6);
        assert_eq!(a.merge(&b), 1);
        assert_eq!(a.count(0), 2);
        assert_eq!(a.count(2), 1);
        assert_eq!(a.count(9), 0);
    }
}
