//! Wire primitives shared by every packet: integers, variable byte integers, UTF-8 strings,
//! binary data, and the length-prefix trick the encoders use to avoid a second buffer.
//!
//! Readers work on a `Bytes` holding exactly one packet body, so binary fields (payloads,
//! correlation data) are zero-copy slices of the read buffer. Every read checks the remaining
//! length first: `Buf::get_*` would panic on a short buffer.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};

/// The largest value a variable byte integer can hold (spec §1.5.5).
pub const MAX_VARINT: u32 = 268_435_455;

pub(crate) fn read_u8(buf: &mut Bytes) -> Result<u8, DecodeError> {
    if buf.remaining() < 1 {
        return Err(DecodeError::Truncated);
    }
    Ok(buf.get_u8())
}

pub(crate) fn read_u16(buf: &mut Bytes) -> Result<u16, DecodeError> {
    if buf.remaining() < 2 {
        return Err(DecodeError::Truncated);
    }
    Ok(buf.get_u16())
}

pub(crate) fn read_u32(buf: &mut Bytes) -> Result<u32, DecodeError> {
    if buf.remaining() < 4 {
        return Err(DecodeError::Truncated);
    }
    Ok(buf.get_u32())
}

/// Reads a variable byte integer of at most 4 bytes.
pub(crate) fn read_varint(buf: &mut Bytes) -> Result<u32, DecodeError> {
    let mut value: u32 = 0;
    for i in 0..4 {
        let byte = read_u8(buf)?;
        value |= u32::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            // A last byte of 0 after others: more bytes than the value needs
            // [MQTT-1.5.5-1].
            if i > 0 && byte == 0 {
                return Err(DecodeError::MalformedVarInt);
            }
            return Ok(value);
        }
    }
    Err(DecodeError::MalformedVarInt)
}

/// Parses the remaining length that starts at `bytes[0]` without consuming anything.
/// Returns `Ok(None)` when more bytes are needed, else `(value, bytes used)`.
pub(crate) fn peek_remaining_length(bytes: &[u8]) -> Result<Option<(usize, usize)>, DecodeError> {
    let mut value: usize = 0;
    for i in 0..4 {
        let Some(&byte) = bytes.get(i) else {
            return Ok(None);
        };
        value |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            // Not the fewest bytes for the value [MQTT-1.5.5-1].
            if i > 0 && byte == 0 {
                return Err(DecodeError::MalformedRemainingLength);
            }
            return Ok(Some((value, i + 1)));
        }
    }
    Err(DecodeError::MalformedRemainingLength)
}

/// The whole length (fixed header included) of the packet that starts at `bytes[0]`, once
/// its fixed header is in: for code that must split a byte stream into packets without
/// decoding them (e.g. to merge several streams into one). `Ok(None)`: more bytes needed.
pub fn frame_length(bytes: &[u8]) -> Result<Option<usize>, DecodeError> {
    let Some(rest) = bytes.get(1..) else {
        return Ok(None);
    };
    Ok(peek_remaining_length(rest)?.map(|(len, used)| 1 + used + len))
}

pub(crate) fn read_binary(buf: &mut Bytes) -> Result<Bytes, DecodeError> {
    let len = usize::from(read_u16(buf)?);
    if buf.remaining() < len {
        return Err(DecodeError::Truncated);
    }
    Ok(buf.split_to(len))
}

/// Checks the MQTT UTF-8 rules: well-formed [MQTT-1.5.4-1] and no U+0000 [MQTT-1.5.4-2].
pub(crate) fn check_utf8(bytes: &[u8]) -> Result<&str, DecodeError> {
    let s = std::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8)?;
    if bytes.contains(&0) {
        return Err(DecodeError::NullCharacter);
    }
    Ok(s)
}

pub(crate) fn read_string(buf: &mut Bytes) -> Result<String, DecodeError> {
    let raw = read_binary(buf)?;
    Ok(check_utf8(&raw)?.to_owned())
}

#[cfg(test)]
pub(crate) fn varint_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Writes a variable byte integer (at most `MAX_VARINT`) into `out`; returns its length.
pub(crate) fn varint_into(out: &mut [u8; 4], mut value: usize) -> usize {
    let mut i = 0;
    loop {
        let mut byte = (value % 128) as u8;
        value /= 128;
        if value > 0 {
            byte |= 0x80;
        }
        out[i] = byte;
        i += 1;
        if value == 0 || i == 4 {
            return i;
        }
    }
}

pub(crate) fn write_varint(buf: &mut BytesMut, mut value: usize) {
    loop {
        let mut byte = (value % 128) as u8;
        value /= 128;
        if value > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if value == 0 {
            break;
        }
    }
}

pub(crate) fn write_binary(buf: &mut BytesMut, data: &[u8]) -> Result<(), EncodeError> {
    let len = u16::try_from(data.len()).map_err(|_| EncodeError::FieldTooLong(data.len()))?;
    buf.put_u16(len);
    buf.put_slice(data);
    Ok(())
}

pub(crate) fn write_string(buf: &mut BytesMut, s: &str) -> Result<(), EncodeError> {
    write_binary(buf, s.as_bytes())
}

/// Writes `body` (whatever the closure puts in `buf`) preceded by its length as a variable
/// byte integer, where the length also counts `extra` bytes the caller appends afterwards
/// (a PUBLISH payload). Four bytes are reserved up front and the body is shifted left once
/// the length is known, so no scratch buffer is needed; only the (small) body moves.
pub(crate) fn write_length_prefixed<F>(
    buf: &mut BytesMut,
    extra: usize,
    body: F,
) -> Result<(), EncodeError>
where
    F: FnOnce(&mut BytesMut) -> Result<(), EncodeError>,
{
    let start = buf.len();
    buf.put_slice(&[0u8; 4]);
    body(buf)?;
    let body_len = buf.len() - start - 4;
    let total = body_len + extra;
    if total > MAX_VARINT as usize {
        buf.truncate(start);
        return Err(EncodeError::PacketTooLarge(total));
    }
    let mut prefix = [0u8; 4];
    let prefix_len = varint_into(&mut prefix, total);
    let body_start = start + 4;
    let new_body_start = start + prefix_len;
    if prefix_len < 4 {
        buf.copy_within(body_start..body_start + body_len, new_body_start);
    }
    buf[start..start + prefix_len].copy_from_slice(&prefix[..prefix_len]);
    buf.truncate(new_body_start + body_len);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_length_counts_the_fixed_header() {
        assert_eq!(frame_length(&[]).unwrap(), None);
        assert_eq!(frame_length(&[0x30]).unwrap(), None);
        assert_eq!(frame_length(&[0xC0, 0x00]).unwrap(), Some(2));
        assert_eq!(frame_length(&[0x30, 0x80]).unwrap(), None);
        assert_eq!(frame_length(&[0x30, 0x80, 0x01]).unwrap(), Some(3 + 128));
        assert!(frame_length(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF]).is_err());
    }

    #[test]
    fn varint_boundaries_round_trip() {
        for v in [
            0usize,
            127,
            128,
            16_383,
            16_384,
            2_097_151,
            2_097_152,
            268_435_455,
        ] {
            let mut b = BytesMut::new();
            write_varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v));
            let mut bytes = b.freeze();
            assert_eq!(read_varint(&mut bytes).unwrap() as usize, v);
        }
    }

    #[test]
    fn five_byte_varint_is_malformed() {
        let mut b = Bytes::from_static(&[0xFF, 0xFF, 0xFF, 0xFF, 0x01]);
        assert_eq!(read_varint(&mut b), Err(DecodeError::MalformedVarInt));
        assert_eq!(
            peek_remaining_length(&[0xFF, 0xFF, 0xFF, 0xFF, 0x01]),
            Err(DecodeError::MalformedRemainingLength)
        );
        assert_eq!(peek_remaining_length(&[0xFF, 0xFF]), Ok(None));
    }

    /// The outside audit's finding: `c0 80 00` (a PINGREQ whose length 0 took two bytes)
    /// was accepted; a varint must use the fewest bytes [MQTT-1.5.5-1].
    #[test]
    fn a_varint_longer_than_its_value_needs_is_malformed() {
        for bytes in [
            &[0x80, 0x00][..],
            &[0xFF, 0x80, 0x00],
            &[0x80, 0x80, 0x80, 0x00],
        ] {
            assert_eq!(
                peek_remaining_length(bytes),
                Err(DecodeError::MalformedRemainingLength),
                "{bytes:x?}"
            );
            let mut b = Bytes::copy_from_slice(bytes);
            assert_eq!(read_varint(&mut b), Err(DecodeError::MalformedVarInt));
        }
        assert!(frame_length(&[0xC0, 0x80, 0x00]).is_err());
        // One byte of 0 is the value 0, and 0x80 0x01 is 128: both minimal.
        assert_eq!(peek_remaining_length(&[0x00]), Ok(Some((0, 1))));
        assert_eq!(peek_remaining_length(&[0x80, 0x01]), Ok(Some((128, 2))));
    }

    #[test]
    fn utf8_rules() {
        assert_eq!(check_utf8(b"a\0b"), Err(DecodeError::NullCharacter));
        assert_eq!(check_utf8(&[0xC0, 0x80]), Err(DecodeError::InvalidUtf8));
        assert_eq!(
            check_utf8(&[0xED, 0xA0, 0x80]),
            Err(DecodeError::InvalidUtf8)
        );
        assert_eq!(check_utf8("héllo".as_bytes()), Ok("héllo"));
    }

    #[test]
    fn length_prefix_shifts_body() {
        let mut b = BytesMut::from(&b"X"[..]);
        write_length_prefixed(&mut b, 200, |b| {
            b.put_slice(b"abc");
            Ok(())
        })
        .unwrap();
        // 203 = 0xCB 0x01
        assert_eq!(&b[..], &[b'X', 0xCB, 0x01, b'a', b'b', b'c']);
    }
}
