//! Shared body of the decode fuzz targets: decode a stream of packets from arbitrary bytes;
//! every packet that decodes must encode and decode back to itself.

use bytes::BytesMut;
use messs_codec::{decode, encode, Limits, Packet, Protocol};

pub fn fuzz_decode(data: &[u8], protocol: Protocol) {
    let limits = Limits::with_max_packet_size(64 * 1024);
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.len();
        match decode(&mut buf, protocol, &limits) {
            Ok(Some(packet)) => {
                assert!(buf.len() < before, "a decoded packet consumes bytes");
                check_roundtrip(&packet, protocol);
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "need-more consumes nothing");
                return;
            }
            Err(e) => {
                let _ = e.reason_code();
                return;
            }
        }
    }
}

fn check_roundtrip(packet: &Packet, protocol: Protocol) {
    // CONNECT carries its own level; everything else is encoded at the connection's.
    let level = match packet {
        Packet::Connect(c) => c.protocol,
        _ => protocol,
    };
    let mut out = BytesMut::new();
    encode(packet, level, &mut out).expect("a decoded packet re-encodes");
    let again = decode(&mut out, level, &Limits::default())
        .expect("re-encoded bytes decode")
        .expect("a whole packet");
    assert_eq!(&again, packet, "round trip");
}
