//! Byte-vector tests: every packet type decoded from exact bytes and encoded back to the
//! same bytes, at each protocol level it exists in; and malformed inputs mapped to their
//! exact error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::num::{NonZeroU16, NonZeroU32};

use bytes::{Bytes, BytesMut};
use messs_codec::*;

const V3: Protocol = Protocol::V3_1_1;
const V5: Protocol = Protocol::V5;

fn pid(n: u16) -> NonZeroU16 {
    NonZeroU16::new(n).unwrap()
}

fn decode_all(bytes: &[u8], protocol: Protocol) -> Result<Packet, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    let packet = decode(&mut buf, protocol, &Limits::default())?.expect("a whole packet");
    assert!(buf.is_empty(), "decode consumed exactly one packet");
    Ok(packet)
}

/// Decodes `bytes` to `expected` and encodes `expected` back to `bytes`.
fn vector(bytes: &[u8], protocol: Protocol, expected: Packet) {
    assert_eq!(
        decode_all(bytes, protocol).unwrap(),
        expected,
        "decode {bytes:02X?}"
    );
    let mut out = BytesMut::new();
    encode(&expected, protocol, &mut out).unwrap();
    assert_eq!(&out[..], bytes, "encode {expected:?}");
}

fn malformed(bytes: &[u8], protocol: Protocol, expected: DecodeError) {
    assert_eq!(decode_all(bytes, protocol), Err(expected), "{bytes:02X?}");
}

fn connect(protocol: Protocol, id: &str) -> Connect {
    Connect {
        protocol,
        clean_start: true,
        keep_alive: 60,
        properties: ConnectProperties::default(),
        client_id: id.into(),
        will: None,
        username: None,
        password: None,
    }
}

#[test]
fn connect_v311_minimal() {
    vector(
        &[
            0x10, 0x0C, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 0,
        ],
        V3,
        Packet::Connect(Box::new(connect(V3, ""))),
    );
}

#[test]
fn connect_v311_will_and_credentials() {
    let mut c = connect(V3, "c");
    c.will = Some(Will {
        topic: TopicName::new("w").unwrap(),
        payload: Bytes::from_static(b"m"),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: WillProperties::default(),
    });
    c.username = Some("u".into());
    c.password = Some(Bytes::from_static(b"p"));
    vector(
        &[
            0x10, 0x19, 0, 4, b'M', b'Q', b'T', b'T', 4, 0xEE, 0, 60, 0, 1, b'c', 0, 1, b'w', 0, 1,
            b'm', 0, 1, b'u', 0, 1, b'p',
        ],
        V3,
        Packet::Connect(Box::new(c)),
    );
}

#[test]
fn connect_mqtt_3_1() {
    vector(
        &[
            0x10, 0x0F, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 0x02, 0, 60, 0, 1, b'c',
        ],
        V3,
        Packet::Connect(Box::new(connect(Protocol::V3_1, "c"))),
    );
}

#[test]
fn connect_v5_with_properties() {
    let mut c = connect(V5, "c");
    c.properties.session_expiry_interval = Some(120);
    vector(
        &[
            0x10, 0x13, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 5, 0x11, 0, 0, 0, 120, 0, 1,
            b'c',
        ],
        V5,
        Packet::Connect(Box::new(c)),
    );
}

#[test]
fn connect_v5_password_without_username_is_allowed() {
    let mut c = connect(V5, "c");
    c.password = Some(Bytes::from_static(b"p"));
    let mut out = BytesMut::new();
    encode(&Packet::Connect(Box::new(c.clone())), V5, &mut out).unwrap();
    assert_eq!(decode_all(&out, V5).unwrap(), Packet::Connect(Box::new(c)));
}

#[test]
fn connack_both_levels() {
    let ack = |present, code| {
        Packet::ConnAck(Box::new(ConnAck {
            session_present: present,
            code,
            properties: ConnAckProperties::default(),
        }))
    };
    vector(
        &[0x20, 0x02, 0x01, 0x00],
        V3,
        ack(true, ReasonCode::Success),
    );
    vector(
        &[0x20, 0x02, 0x00, 0x05],
        V3,
        ack(false, ReasonCode::NotAuthorized),
    );
    vector(
        &[0x20, 0x02, 0x00, 0x01],
        V3,
        ack(false, ReasonCode::UnsupportedProtocolVersion),
    );
    vector(
        &[0x20, 0x03, 0x00, 0x00, 0x00],
        V5,
        ack(false, ReasonCode::Success),
    );
    let mut with_id = ConnAck {
        session_present: false,
        code: ReasonCode::Success,
        properties: ConnAckProperties::default(),
    };
    with_id.properties.assigned_client_identifier = Some("id".into());
    vector(
        &[0x20, 0x08, 0x00, 0x00, 0x05, 0x12, 0, 2, b'i', b'd'],
        V5,
        Packet::ConnAck(Box::new(with_id)),
    );
}

#[test]
fn v5_failure_codes_map_to_v311_return_codes() {
    let mut out = BytesMut::new();
    let ack = ConnAck {
        session_present: false,
        code: ReasonCode::Banned,
        properties: ConnAckProperties::default(),
    };
    encode(&Packet::ConnAck(Box::new(ack)), V3, &mut out).unwrap();
    assert_eq!(&out[..], &[0x20, 0x02, 0x00, 0x05]);
}

fn publish(topic: &str, qos_pid: QosPid, retain: bool, payload: &'static [u8]) -> Publish {
    Publish {
        dup: false,
        qos_pid,
        retain,
        topic: TopicName::new(topic).unwrap(),
        properties: PublishProperties::default(),
        payload: Bytes::from_static(payload),
    }
}

#[test]
fn publish_vectors() {
    vector(
        &[0x32, 0x07, 0, 1, b'a', 0, 10, b'h', b'i'],
        V3,
        Packet::Publish(Box::new(publish(
            "a",
            QosPid::AtLeastOnce(pid(10)),
            false,
            b"hi",
        ))),
    );
    let mut p = publish("a", QosPid::ExactlyOnce(pid(1)), false, b"");
    p.dup = true;
    vector(
        &[0x3C, 0x05, 0, 1, b'a', 0, 1],
        V3,
        Packet::Publish(Box::new(p)),
    );
    let mut p = publish("a", QosPid::AtMostOnce, true, b"x");
    p.properties.payload_format_indicator = Some(true);
    vector(
        &[0x31, 0x07, 0, 1, b'a', 0x02, 0x01, 0x01, b'x'],
        V5,
        Packet::Publish(Box::new(p)),
    );
    let mut p = publish("a", QosPid::AtMostOnce, false, b"");
    p.properties.subscription_identifiers = vec![NonZeroU32::new(128).unwrap()];
    p.properties.user_properties = vec![("k".into(), "v".into())];
    vector(
        &[
            0x30, 0x0E, 0, 1, b'a', 0x0A, 0x0B, 0x80, 0x01, 0x26, 0, 1, b'k', 0, 1, b'v',
        ],
        V5,
        Packet::Publish(Box::new(p)),
    );
}

#[test]
fn publish_v5_alias_only() {
    let bytes = [0x30, 0x07, 0, 0, 0x03, 0x23, 0, 5, b'x'];
    match decode_all(&bytes, V5).unwrap() {
        Packet::Publish(p) => {
            assert!(p.topic.is_empty());
            assert_eq!(p.properties.topic_alias, NonZeroU16::new(5));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn publish_payload_is_zero_copy() {
    let mut buf = BytesMut::from(&[0x30, 0x07, 0, 1, b'a', b'p', b'a', b'y', b'!'][..]);
    let base = buf.as_ptr() as usize;
    let Some(Packet::Publish(p)) = decode(&mut buf, V3, &Limits::default()).unwrap() else {
        panic!("publish expected");
    };
    assert_eq!(
        p.payload.as_ptr() as usize,
        base + 5,
        "payload points into the read buffer"
    );
}

#[test]
fn qos_acks_both_levels() {
    let r = |reason| PubResponse {
        packet_id: pid(5),
        reason,
        properties: AckProperties::default(),
    };
    vector(
        &[0x40, 0x02, 0, 5],
        V3,
        Packet::PubAck(r(ReasonCode::Success)),
    );
    vector(
        &[0x50, 0x02, 0, 5],
        V3,
        Packet::PubRec(r(ReasonCode::Success)),
    );
    vector(
        &[0x62, 0x02, 0, 5],
        V3,
        Packet::PubRel(r(ReasonCode::Success)),
    );
    vector(
        &[0x70, 0x02, 0, 5],
        V3,
        Packet::PubComp(r(ReasonCode::Success)),
    );
    vector(
        &[0x40, 0x02, 0, 5],
        V5,
        Packet::PubAck(r(ReasonCode::Success)),
    );
    vector(
        &[0x40, 0x03, 0, 5, 0x10],
        V5,
        Packet::PubAck(r(ReasonCode::NoMatchingSubscribers)),
    );
    vector(
        &[0x70, 0x03, 0, 5, 0x92],
        V5,
        Packet::PubComp(r(ReasonCode::PacketIdentifierNotFound)),
    );
    let mut with_reason = r(ReasonCode::NotAuthorized);
    with_reason.properties.reason_string = Some("x".into());
    vector(
        &[0x50, 0x08, 0, 5, 0x87, 0x04, 0x1F, 0, 1, b'x'],
        V5,
        Packet::PubRec(with_reason),
    );
    // v5 short form with an explicit empty property block also decodes.
    assert_eq!(
        decode_all(&[0x40, 0x04, 0, 5, 0x00, 0x00], V5).unwrap(),
        Packet::PubAck(r(ReasonCode::Success))
    );
}

#[test]
fn subscribe_vectors() {
    let sub = |filter: &str, options| Subscription {
        filter: TopicFilter::new(filter).unwrap(),
        options,
    };
    vector(
        &[0x82, 0x06, 0, 1, 0, 1, b'a', 0x01],
        V3,
        Packet::Subscribe(Box::new(Subscribe {
            packet_id: pid(1),
            properties: SubscribeProperties::default(),
            subscriptions: vec![sub("a", SubscriptionOptions::new(QoS::AtLeastOnce))],
        })),
    );
    let opts = SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        no_local: true,
        retain_as_published: true,
        retain_handling: RetainHandling::DoNotSend,
    };
    vector(
        &[0x82, 0x09, 0, 1, 0x02, 0x0B, 0x07, 0, 1, b'a', 0x2D],
        V5,
        Packet::Subscribe(Box::new(Subscribe {
            packet_id: pid(1),
            properties: SubscribeProperties {
                subscription_identifier: NonZeroU32::new(7),
                user_properties: vec![],
            },
            subscriptions: vec![sub("a", opts)],
        })),
    );
}

#[test]
fn suback_unsubscribe_unsuback_vectors() {
    vector(
        &[0x90, 0x04, 0, 1, 0x01, 0x80],
        V3,
        Packet::SubAck(Box::new(SubAck {
            packet_id: pid(1),
            properties: AckProperties::default(),
            reasons: vec![ReasonCode::GrantedQoS1, ReasonCode::UnspecifiedError],
        })),
    );
    vector(
        &[0x90, 0x05, 0, 1, 0x00, 0x02, 0x8F],
        V5,
        Packet::SubAck(Box::new(SubAck {
            packet_id: pid(1),
            properties: AckProperties::default(),
            reasons: vec![ReasonCode::GrantedQoS2, ReasonCode::TopicFilterInvalid],
        })),
    );
    let unsub = Unsubscribe {
        packet_id: pid(2),
        properties: UnsubscribeProperties::default(),
        filters: vec![TopicFilter::new("a").unwrap()],
    };
    vector(
        &[0xA2, 0x05, 0, 2, 0, 1, b'a'],
        V3,
        Packet::Unsubscribe(Box::new(unsub.clone())),
    );
    vector(
        &[0xA2, 0x06, 0, 2, 0, 0, 1, b'a'],
        V5,
        Packet::Unsubscribe(Box::new(unsub)),
    );
    vector(
        &[0xB0, 0x02, 0, 2],
        V3,
        Packet::UnsubAck(Box::new(UnsubAck {
            packet_id: pid(2),
            properties: AckProperties::default(),
            reasons: vec![],
        })),
    );
    vector(
        &[0xB0, 0x05, 0, 2, 0, 0x00, 0x11],
        V5,
        Packet::UnsubAck(Box::new(UnsubAck {
            packet_id: pid(2),
            properties: AckProperties::default(),
            reasons: vec![ReasonCode::Success, ReasonCode::NoSubscriptionExisted],
        })),
    );
}

#[test]
fn ping_disconnect_auth_vectors() {
    vector(&[0xC0, 0x00], V3, Packet::PingReq);
    vector(&[0xD0, 0x00], V5, Packet::PingResp);
    vector(
        &[0xE0, 0x00],
        V3,
        Packet::Disconnect(Disconnect::new(ReasonCode::Success)),
    );
    vector(
        &[0xE0, 0x00],
        V5,
        Packet::Disconnect(Disconnect::new(ReasonCode::Success)),
    );
    vector(
        &[0xE0, 0x01, 0x04],
        V5,
        Packet::Disconnect(Disconnect::new(ReasonCode::DisconnectWithWillMessage)),
    );
    let mut d = Disconnect::new(ReasonCode::SessionTakenOver);
    d.properties.session_expiry_interval = Some(10);
    vector(
        &[0xE0, 0x07, 0x8E, 0x05, 0x11, 0, 0, 0, 10],
        V5,
        Packet::Disconnect(d),
    );
    vector(
        &[0xF0, 0x00],
        V5,
        Packet::Auth(Box::new(Auth {
            reason: ReasonCode::Success,
            properties: AuthProperties::default(),
        })),
    );
    vector(
        &[0xF0, 0x08, 0x18, 0x06, 0x15, 0, 3, b'a', b'b', b'c'],
        V5,
        Packet::Auth(Box::new(Auth {
            reason: ReasonCode::ContinueAuthentication,
            properties: AuthProperties {
                authentication_method: Some("abc".into()),
                ..AuthProperties::default()
            },
        })),
    );
    let mut out = BytesMut::new();
    assert_eq!(
        encode(
            &Packet::Auth(Box::new(Auth {
                reason: ReasonCode::Success,
                properties: AuthProperties::default()
            })),
            V3,
            &mut out
        ),
        Err(EncodeError::NotInProtocol("AUTH"))
    );
}

#[test]
fn partial_input_needs_more_and_consumes_nothing() {
    let full = [0x32, 0x07, 0, 1, b'a', 0, 10, b'h', b'i'];
    for cut in 0..full.len() {
        let mut buf = BytesMut::from(&full[..cut]);
        assert_eq!(
            decode(&mut buf, V3, &Limits::default()),
            Ok(None),
            "cut at {cut}"
        );
        assert_eq!(buf.len(), cut);
    }
}

#[test]
fn too_large_is_refused_from_the_fixed_header() {
    let limits = Limits::with_max_packet_size(10);
    // Only the header is present: the size is known, so the error comes at once.
    let mut buf = BytesMut::from(&[0x30, 0x0A][..]);
    assert_eq!(
        decode(&mut buf, V3, &limits),
        Err(DecodeError::PacketTooLarge { size: 12, max: 10 })
    );
    assert_eq!(
        DecodeError::PacketTooLarge { size: 12, max: 10 }.reason_code(),
        ReasonCode::PacketTooLarge
    );
}

#[test]
fn malformed_fixed_headers() {
    malformed(
        &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
        V5,
        DecodeError::MalformedRemainingLength,
    );
    malformed(&[0x00, 0x00], V5, DecodeError::InvalidPacketType(0));
    malformed(&[0xF0, 0x00], V3, DecodeError::InvalidPacketType(15));
    malformed(
        &[0x80, 0x06, 0, 1, 0, 1, b'a', 1],
        V3,
        DecodeError::ReservedFlags { packet_type: 8 },
    );
    malformed(
        &[0x60, 0x02, 0, 1],
        V3,
        DecodeError::ReservedFlags { packet_type: 6 },
    );
    malformed(
        &[0xA0, 0x05, 0, 2, 0, 1, b'a'],
        V3,
        DecodeError::ReservedFlags { packet_type: 10 },
    );
    malformed(
        &[0xC1, 0x00],
        V3,
        DecodeError::ReservedFlags { packet_type: 12 },
    );
    malformed(&[0x36, 0x05, 0, 1, b'a', 0, 1], V3, DecodeError::InvalidQoS);
    malformed(
        &[0x38, 0x03, 0, 1, b'a'],
        V3,
        DecodeError::ReservedFlags { packet_type: 3 },
    );
    malformed(&[0xC0, 0x01, 0x00], V3, DecodeError::TrailingBytes);
    malformed(&[0xE0, 0x01, 0x00], V3, DecodeError::TrailingBytes);
}

#[test]
fn malformed_connect() {
    let base = |flags: u8| {
        vec![
            0x10, 0x0C, 0, 4, b'M', b'Q', b'T', b'T', 4, flags, 0, 60, 0, 0,
        ]
    };
    malformed(&base(0x03), V3, DecodeError::ConnectReservedFlag);
    malformed(&base(0x0A), V3, DecodeError::WillFlags);
    malformed(&base(0x22), V3, DecodeError::WillFlags);
    malformed(&base(0x1E), V3, DecodeError::InvalidQoS);
    malformed(&base(0x42), V3, DecodeError::PasswordWithoutUsername);
    let mut level6 = base(0x02);
    level6[8] = 6;
    malformed(
        &level6,
        V3,
        DecodeError::UnsupportedProtocol {
            name: "MQTT".into(),
            level: 6,
        },
    );
    let mut trailing = base(0x02);
    trailing[1] = 0x0D;
    trailing.push(0xAA);
    malformed(&trailing, V3, DecodeError::TrailingBytes);
    // Client id claims 5 bytes; none follow.
    malformed(
        &[
            0x10, 0x0C, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 5,
        ],
        V3,
        DecodeError::Truncated,
    );
    malformed(
        &[
            0x10, 0x0E, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 2, 0xC3, 0x28,
        ],
        V3,
        DecodeError::InvalidUtf8,
    );
    // v5 Receive Maximum 0.
    malformed(
        &[
            0x10, 0x10, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 3, 0x21, 0, 0, 0, 0,
        ],
        V5,
        DecodeError::InvalidPropertyValue { id: 0x21 },
    );
}

#[test]
fn malformed_publish() {
    malformed(
        &[0x30, 0x05, 0, 2, b'a', 0, b'x'],
        V3,
        DecodeError::NullCharacter,
    );
    malformed(
        &[0x30, 0x05, 0, 2, b'a', b'+', b'x'],
        V3,
        DecodeError::TopicNameInvalid("contains a wildcard"),
    );
    malformed(
        &[0x30, 0x03, 0, 0, 0],
        V5,
        DecodeError::EmptyTopicWithoutAlias,
    );
    malformed(
        &[0x30, 0x03, 0, 0, b'x'],
        V3,
        DecodeError::TopicNameInvalid("empty"),
    );
    malformed(
        &[0x30, 0x07, 0, 1, b'a', 3, 0x23, 0, 0],
        V5,
        DecodeError::TopicAliasZero,
    );
    malformed(
        &[0x30, 0x09, 0, 1, b'a', 5, 0x11, 0, 0, 0, 1],
        V5,
        DecodeError::InvalidProperty { id: 0x11 },
    );
    malformed(
        &[0x30, 0x06, 0, 1, b'a', 2, 0x7F, 0],
        V5,
        DecodeError::InvalidProperty { id: 0x7F },
    );
    malformed(
        &[0x30, 0x08, 0, 1, b'a', 4, 1, 1, 1, 0],
        V5,
        DecodeError::DuplicateProperty { id: 0x01 },
    );
    malformed(
        &[0x30, 0x06, 0, 1, b'a', 2, 1, 2],
        V5,
        DecodeError::InvalidPropertyValue { id: 0x01 },
    );
    malformed(
        &[0x32, 0x05, 0, 1, b'a', 0, 0],
        V3,
        DecodeError::ZeroPacketId,
    );
    malformed(
        &[
            0x30, 0x0A, 0, 1, b'a', 6, 0x0B, 0xFF, 0xFF, 0xFF, 0xFF, 0x01,
        ],
        V5,
        DecodeError::MalformedVarInt,
    );
    // Property length runs past the packet.
    malformed(&[0x30, 0x05, 0, 1, b'a', 9, 1], V5, DecodeError::Truncated);
}

#[test]
fn malformed_subscribe_and_acks() {
    malformed(&[0x82, 0x02, 0, 1], V3, DecodeError::NoTopicFilters);
    malformed(&[0xA2, 0x02, 0, 1], V3, DecodeError::NoTopicFilters);
    malformed(
        &[0x82, 0x06, 0, 1, 0, 1, b'a', 0x04],
        V3,
        DecodeError::SubscriptionOptionsReserved,
    );
    malformed(
        &[0x82, 0x07, 0, 1, 0, 0, 1, b'a', 0x40],
        V5,
        DecodeError::SubscriptionOptionsReserved,
    );
    malformed(
        &[0x82, 0x07, 0, 1, 0, 0, 1, b'a', 0x30],
        V5,
        DecodeError::InvalidRetainHandling,
    );
    malformed(
        &[0x82, 0x06, 0, 1, 0, 1, b'a', 0x03],
        V3,
        DecodeError::SubscriptionQoSInvalid,
    );
    let shared = b"$share/g/a";
    let mut bytes = vec![0x82, 6 + shared.len() as u8, 0, 1, 0, 0, shared.len() as u8];
    bytes.extend_from_slice(shared);
    bytes.push(0x04);
    malformed(&bytes, V5, DecodeError::SharedSubscriptionNoLocal);
    malformed(
        &[0x82, 0x0A, 0, 1, 0, 5, b'a', b'/', b'#', b'/', b'b', 0],
        V3,
        DecodeError::TopicFilterInvalid("'#' must be the whole last level"),
    );
    malformed(&[0x40, 0x02, 0, 0], V3, DecodeError::ZeroPacketId);
    malformed(
        &[0x40, 0x03, 0, 1, 0x05],
        V5,
        DecodeError::InvalidReasonCode { code: 0x05 },
    );
    malformed(&[0x40, 0x03, 0, 1, 0x00], V3, DecodeError::TrailingBytes);
    malformed(
        &[0x20, 0x02, 0x02, 0x00],
        V3,
        DecodeError::ReservedFlags { packet_type: 2 },
    );
    malformed(
        &[0x20, 0x02, 0x00, 0x06],
        V3,
        DecodeError::InvalidReasonCode { code: 6 },
    );
}

#[test]
fn errors_carry_reason_codes() {
    assert_eq!(
        DecodeError::MalformedRemainingLength.reason_code(),
        ReasonCode::MalformedPacket
    );
    assert_eq!(
        DecodeError::DuplicateProperty { id: 1 }.reason_code(),
        ReasonCode::ProtocolError
    );
    assert_eq!(
        DecodeError::TopicNameInvalid("x").reason_code(),
        ReasonCode::TopicNameInvalid
    );
    assert_eq!(
        DecodeError::TopicFilterInvalid("x").reason_code(),
        ReasonCode::TopicFilterInvalid
    );
    assert_eq!(
        DecodeError::TopicAliasZero.reason_code(),
        ReasonCode::TopicAliasInvalid
    );
    assert_eq!(
        DecodeError::UnsupportedProtocol {
            name: "x".into(),
            level: 9
        }
        .reason_code(),
        ReasonCode::UnsupportedProtocolVersion
    );
}

#[test]
fn subscription_max_qos_3_is_a_protocol_error_in_v5() {
    // SUBSCRIBE id 1, no properties, filter "a", options 0x03.
    let bytes = [0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x03];
    malformed(&bytes, V5, DecodeError::SubscriptionQoSInvalid);
    assert_eq!(
        DecodeError::SubscriptionQoSInvalid.reason_code(),
        ReasonCode::ProtocolError
    );
}

#[test]
fn user_properties_beyond_the_limit_fail_before_allocation() {
    // PUBLISH QoS 0 to "t" with three empty user properties (0x26, "", "").
    let mut bytes = vec![0x30, 0x13, 0x00, 0x01, b't', 0x0F];
    for _ in 0..3 {
        bytes.extend_from_slice(&[0x26, 0, 0, 0, 0]);
    }
    let limits = |n| Limits {
        max_user_properties: n,
        ..Limits::default()
    };
    let mut ok = BytesMut::from(&bytes[..]);
    assert!(decode(&mut ok, V5, &limits(3)).unwrap().is_some());
    let mut too_many = BytesMut::from(&bytes[..]);
    let err = decode(&mut too_many, V5, &limits(2)).unwrap_err();
    assert_eq!(err, DecodeError::TooManyUserProperties { max: 2 });
    assert_eq!(err.reason_code(), ReasonCode::QuotaExceeded);
}

#[test]
fn topic_filters_beyond_the_limit_fail_the_packet() {
    // 3.1.1 SUBSCRIBE id 1 with three filters "a", "b", "c" at QoS 0.
    let bytes = [
        0x82, 0x0E, 0x00, 0x01, 0, 1, b'a', 0, 0, 1, b'b', 0, 0, 1, b'c', 0,
    ];
    let limits = |n| Limits {
        max_topic_filters: n,
        ..Limits::default()
    };
    let mut ok = BytesMut::from(&bytes[..]);
    assert!(decode(&mut ok, V3, &limits(3)).unwrap().is_some());
    let mut too_many = BytesMut::from(&bytes[..]);
    assert_eq!(
        decode(&mut too_many, V3, &limits(2)),
        Err(DecodeError::TooManyTopicFilters { max: 2 })
    );
    // UNSUBSCRIBE the same three.
    let unsub = [0xA2, 0x0B, 0x00, 0x01, 0, 1, b'a', 0, 1, b'b', 0, 1, b'c'];
    let mut too_many = BytesMut::from(&unsub[..]);
    assert_eq!(
        decode(&mut too_many, V3, &limits(2)),
        Err(DecodeError::TooManyTopicFilters { max: 2 })
    );
}

#[test]
fn connack_session_present_only_where_it_exists() {
    let ack = |code| {
        Packet::ConnAck(Box::new(ConnAck {
            session_present: true,
            code,
            properties: ConnAckProperties::default(),
        }))
    };
    let bytes = |packet: &Packet, protocol| {
        let mut out = BytesMut::new();
        encode(packet, protocol, &mut out).unwrap();
        out.to_vec()
    };
    // MQTT 3.1 reserves the first byte of CONNACK.
    assert_eq!(
        bytes(&ack(ReasonCode::Success), Protocol::V3_1),
        [0x20, 2, 0, 0]
    );
    assert_eq!(bytes(&ack(ReasonCode::Success), V3), [0x20, 2, 1, 0]);
    // A refusal never claims a session [MQTT-3.2.2-4].
    assert_eq!(bytes(&ack(ReasonCode::NotAuthorized), V3), [0x20, 2, 0, 5]);
}

/// The fan-out fast path writes exactly what the general encoder writes for a PUBLISH with
/// no properties, at every QoS, flag and protocol level, with a short and a long (two-byte
/// length) payload; and refuses a topic too long to encode, appending nothing.
#[test]
fn a_plain_publish_encodes_as_the_general_encoder_does() {
    for protocol in [Protocol::V3_1, V3, V5] {
        for qos_pid in [
            QosPid::AtMostOnce,
            QosPid::AtLeastOnce(pid(7)),
            QosPid::ExactlyOnce(pid(65535)),
        ] {
            for (dup, retain) in [(false, false), (true, false), (false, true), (true, true)] {
                for len in [0usize, 5, 200] {
                    let payload = Bytes::from(vec![0xA5; len]);
                    let publish = Publish {
                        dup,
                        qos_pid,
                        retain,
                        topic: TopicName::new("a/b/c").unwrap(),
                        properties: PublishProperties::default(),
                        payload: payload.clone(),
                    };
                    let mut general = BytesMut::new();
                    encode_publish(&publish, protocol, &mut general).unwrap();
                    let mut plain = BytesMut::from(&b"kept"[..]);
                    let flags = PublishFlags {
                        dup,
                        qos_pid,
                        retain,
                    };
                    encode_plain_publish(flags, "a/b/c", &payload, protocol, &mut plain).unwrap();
                    assert_eq!(&plain[..4], b"kept", "appends");
                    assert_eq!(&plain[4..], &general[..], "{protocol:?} {qos_pid:?} {len}");
                }
            }
        }
    }
    let flags = PublishFlags {
        dup: false,
        qos_pid: QosPid::AtMostOnce,
        retain: false,
    };
    let mut out = BytesMut::new();
    let long = "t".repeat(65_536);
    assert_eq!(
        encode_plain_publish(flags, &long, b"x", V5, &mut out),
        Err(EncodeError::FieldTooLong(65_536))
    );
    assert!(out.is_empty());
}
