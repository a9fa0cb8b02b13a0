//! Compact binary records: a version byte, then fixed-width big-endian integers and
//! length-prefixed byte strings. Every decode is bounds-checked and fails with
//! [`StorageError::Corrupt`]; nothing a file holds can make the reader panic or allocate
//! more than the record's own length.

use crate::error::StorageError;

/// Builds one record.
#[derive(Debug, Default)]
pub struct Enc(Vec<u8>);

impl Enc {
    /// A record of `version`, with room for `capacity` bytes.
    pub fn new(version: u8, capacity: usize) -> Self {
        let mut v = Vec::with_capacity(capacity + 1);
        v.push(version);
        Enc(v)
    }

    /// An unversioned buffer (for keys and nested blobs).
    pub fn raw(capacity: usize) -> Self {
        Enc(Vec::with_capacity(capacity))
    }

    /// Appends one byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }

    /// Appends a big-endian u16.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// Appends a big-endian u32.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// Appends a big-endian u64.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// Appends an optional u64 (a presence byte, then the value).
    pub fn opt_u64(&mut self, v: Option<u64>) -> &mut Self {
        match v {
            Some(v) => self.u8(1).u64(v),
            None => self.u8(0),
        }
    }

    /// Appends a byte string with a u32 length.
    pub fn bytes(&mut self, v: &[u8]) -> Result<&mut Self, StorageError> {
        let len = u32::try_from(v.len()).map_err(|_| StorageError::TooLong("a value"))?;
        self.u32(len);
        self.0.extend_from_slice(v);
        Ok(self)
    }

    /// Appends bytes with no length (the rest of the record).
    pub fn tail(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(v);
        self
    }

    /// The bytes so far.
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }

    /// The record's bytes.
    pub fn finish(self) -> Vec<u8> {
        self.0
    }
}

/// Reads one record.
#[derive(Debug)]
pub struct Dec<'a> {
    buf: &'a [u8],
    cf: &'static str,
}

impl<'a> Dec<'a> {
    /// Starts reading `buf` (from column family `cf`, for error messages); returns the
    /// reader and the record's version byte.
    pub fn new(cf: &'static str, buf: &'a [u8]) -> Result<(Self, u8), StorageError> {
        let mut d = Dec { buf, cf };
        let version = d.u8()?;
        Ok((d, version))
    }

    /// Reads an unversioned buffer.
    pub fn raw(cf: &'static str, buf: &'a [u8]) -> Self {
        Dec { buf, cf }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], StorageError> {
        if self.buf.len() < n {
            return Err(StorageError::corrupt(
                self.cf,
                format!("truncated: needs {n} more bytes, {} left", self.buf.len()),
            ));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], StorageError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    /// Reads one byte.
    pub fn u8(&mut self) -> Result<u8, StorageError> {
        Ok(self.array::<1>()?[0])
    }

    /// Reads a big-endian u16.
    pub fn u16(&mut self) -> Result<u16, StorageError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    /// Reads a big-endian u32.
    pub fn u32(&mut self) -> Result<u32, StorageError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// Reads a big-endian u64.
    pub fn u64(&mut self) -> Result<u64, StorageError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// Reads an optional u64.
    pub fn opt_u64(&mut self) -> Result<Option<u64>, StorageError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.u64()?)),
            other => Err(StorageError::corrupt(
                self.cf,
                format!("presence byte {other}"),
            )),
        }
    }

    /// Reads a byte string with a u32 length.
    pub fn bytes(&mut self) -> Result<&'a [u8], StorageError> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    /// Reads a UTF-8 string with a u32 length.
    pub fn str(&mut self) -> Result<&'a str, StorageError> {
        let b = self.bytes()?;
        std::str::from_utf8(b).map_err(|_| StorageError::corrupt(self.cf, "invalid UTF-8"))
    }

    /// The unread rest.
    pub fn tail(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// Fails unless everything was read (a record longer than its version allows).
    pub fn end(&self) -> Result<(), StorageError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(StorageError::corrupt(
                self.cf,
                format!("{} unexpected trailing bytes", self.buf.len()),
            ))
        }
    }

    /// A corrupt-record error for this column family.
    pub fn error(&self, what: impl Into<String>) -> StorageError {
        StorageError::corrupt(self.cf, what)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let mut e = Enc::new(3, 0);
        e.u8(1).u16(2).u32(3).u64(4).opt_u64(Some(5)).opt_u64(None);
        e.bytes(b"hello").unwrap().tail(b"rest");
        let buf = e.finish();
        let (mut d, v) = Dec::new("t", &buf).unwrap();
        assert_eq!(v, 3);
        assert_eq!(d.u8().unwrap(), 1);
        assert_eq!(d.u16().unwrap(), 2);
        assert_eq!(d.u32().unwrap(), 3);
        assert_eq!(d.u64().unwrap(), 4);
        assert_eq!(d.opt_u64().unwrap(), Some(5));
        assert_eq!(d.opt_u64().unwrap(), None);
        assert_eq!(d.str().unwrap(), "hello");
        assert_eq!(d.tail(), b"rest");
        d.end().unwrap();
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let mut e = Enc::new(1, 0);
        e.u64(9).bytes(&[7; 40]).unwrap();
        let buf = e.finish();
        for cut in 0..buf.len() {
            let short = &buf[..cut];
            let result = Dec::new("t", short).and_then(|(mut d, _)| {
                d.u64()?;
                d.bytes().map(|b| b.len())
            });
            assert!(result.is_err(), "cut at {cut} decoded");
        }
    }

    #[test]
    fn a_huge_length_fails_without_allocating() {
        let mut e = Enc::new(1, 0);
        e.u32(u32::MAX);
        let buf = e.finish();
        let (mut d, _) = Dec::new("t", &buf).unwrap();
        assert!(d.bytes().is_err());
    }
}
