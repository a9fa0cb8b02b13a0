//! Property tests: anything we encode decodes back to the same packet, at both protocol
//! levels, and no byte string makes the decoder panic or over-consume.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::num::{NonZeroU16, NonZeroU32};

use bytes::{Bytes, BytesMut};
use messs_codec::*;
use proptest::prelude::*;

fn topic_level() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_ é$-]{0,8}"
}

fn topic_name() -> impl Strategy<Value = TopicName> {
    prop::collection::vec(topic_level(), 1..5)
        .prop_map(|levels| levels.join("/"))
        .prop_filter("non-empty", |t| !t.is_empty())
        .prop_map(|t| TopicName::new(&t).unwrap())
}

fn topic_filter() -> impl Strategy<Value = TopicFilter> {
    (
        prop::collection::vec(prop_oneof![topic_level(), Just("+".to_string())], 1..4),
        any::<bool>(),
        prop::option::of("[a-z]{1,5}"),
    )
        .prop_filter_map("non-empty filter", |(levels, hash, group)| {
            let mut f = levels.join("/");
            if hash {
                f.push_str("/#");
            }
            if f.is_empty() {
                return None;
            }
            if let Some(g) = group {
                f = format!("$share/{g}/{f}");
            }
            Some(TopicFilter::new(&f).unwrap())
        })
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn pid() -> impl Strategy<Value = NonZeroU16> {
    (1u16..).prop_map(|n| NonZeroU16::new(n).unwrap())
}

fn user_props() -> impl Strategy<Value = UserProperties> {
    prop::collection::vec(("[a-z]{0,4}", "[ -~]{0,6}"), 0..3)
}

fn publish_props() -> impl Strategy<Value = PublishProperties> {
    (
        prop::option::of(any::<bool>()),
        prop::option::of(any::<u32>()),
        prop::option::of(pid()),
        prop::option::of(topic_name()),
        prop::option::of(prop::collection::vec(any::<u8>(), 0..8)),
        user_props(),
        prop::collection::vec(1u32..=268_435_455, 0..3),
        prop::option::of("[a-z/]{0,10}"),
    )
        .prop_map(|(pf, exp, alias, rt, cd, up, ids, ct)| PublishProperties {
            payload_format_indicator: pf,
            message_expiry_interval: exp,
            topic_alias: alias,
            response_topic: rt,
            correlation_data: cd.map(Bytes::from),
            user_properties: up,
            subscription_identifiers: ids.into_iter().filter_map(NonZeroU32::new).collect(),
            content_type: ct,
        })
}

fn publish(v5: bool) -> impl Strategy<Value = Publish> {
    (
        qos(),
        pid(),
        any::<bool>(),
        any::<bool>(),
        topic_name(),
        publish_props(),
        prop::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(move |(q, id, dup, retain, topic, props, payload)| Publish {
            dup: dup && q != QoS::AtMostOnce,
            qos_pid: QosPid::new(q, id),
            retain,
            topic,
            properties: if v5 {
                props
            } else {
                PublishProperties::default()
            },
            payload: Bytes::from(payload),
        })
}

fn subscribe(v5: bool) -> impl Strategy<Value = Subscribe> {
    (
        pid(),
        prop::collection::vec(
            (topic_filter(), qos(), any::<bool>(), any::<bool>(), 0u8..3),
            1..4,
        ),
        prop::option::of(1u32..=268_435_455),
    )
        .prop_map(move |(id, subs, sid)| Subscribe {
            packet_id: id,
            properties: SubscribeProperties {
                subscription_identifier: if v5 {
                    sid.and_then(NonZeroU32::new)
                } else {
                    None
                },
                user_properties: vec![],
            },
            subscriptions: subs
                .into_iter()
                .map(|(filter, q, nl, rap, rh)| Subscription {
                    options: SubscriptionOptions {
                        qos: q,
                        no_local: v5 && nl && filter.share_group().is_none(),
                        retain_as_published: v5 && rap,
                        retain_handling: match (v5, rh) {
                            (false, _) | (_, 0) => RetainHandling::SendAtSubscribe,
                            (_, 1) => RetainHandling::SendIfNewSubscription,
                            _ => RetainHandling::DoNotSend,
                        },
                    },
                    filter,
                })
                .collect(),
        })
}

fn connect(v5: bool) -> impl Strategy<Value = Connect> {
    (
        any::<bool>(),
        any::<u16>(),
        "[a-zA-Z0-9-]{0,23}",
        prop::option::of((
            topic_name(),
            prop::collection::vec(any::<u8>(), 0..16),
            qos(),
            any::<bool>(),
        )),
        prop::option::of("[a-z]{0,8}"),
        prop::option::of(prop::collection::vec(any::<u8>(), 0..8)),
        prop::option::of(any::<u32>()),
        user_props(),
    )
        .prop_map(move |(clean, ka, id, will, user, pass, expiry, up)| {
            let mut properties = ConnectProperties::default();
            if v5 {
                properties.session_expiry_interval = expiry;
                properties.user_properties = up;
            }
            Connect {
                protocol: if v5 { Protocol::V5 } else { Protocol::V3_1_1 },
                clean_start: clean,
                keep_alive: ka,
                properties,
                client_id: id,
                will: will.map(|(topic, payload, qos, retain)| Will {
                    topic,
                    payload: Bytes::from(payload),
                    qos,
                    retain,
                    properties: WillProperties::default(),
                }),
                // 3.1.1 needs a user name to send a password.
                password: pass.filter(|_| v5 || user.is_some()).map(Bytes::from),
                username: user,
            }
        })
}

fn roundtrip(packet: Packet, protocol: Protocol) -> Result<(), TestCaseError> {
    let mut buf = BytesMut::new();
    encode(&packet, protocol, &mut buf).unwrap();
    let len = buf.len();
    let decoded = decode(&mut buf, protocol, &Limits::default()).unwrap();
    prop_assert_eq!(decoded, Some(packet));
    prop_assert!(buf.is_empty(), "consumed all {} bytes", len);
    Ok(())
}

proptest! {
    #[test]
    fn publish_v5(p in publish(true)) {
        roundtrip(Packet::Publish(Box::new(p)), Protocol::V5)?;
    }

    #[test]
    fn publish_v311(p in publish(false)) {
        roundtrip(Packet::Publish(Box::new(p)), Protocol::V3_1_1)?;
    }

    #[test]
    fn subscribe_both(s5 in subscribe(true), s3 in subscribe(false)) {
        roundtrip(Packet::Subscribe(Box::new(s5)), Protocol::V5)?;
        roundtrip(Packet::Subscribe(Box::new(s3)), Protocol::V3_1_1)?;
    }

    #[test]
    fn connect_both(c5 in connect(true), c3 in connect(false)) {
        roundtrip(Packet::Connect(Box::new(c5)), Protocol::V5)?;
        roundtrip(Packet::Connect(Box::new(c3)), Protocol::V3_1_1)?;
    }

    /// Several packets back to back decode one at a time, in order.
    #[test]
    fn stream_of_packets(ps in prop::collection::vec(publish(true), 1..6)) {
        let mut buf = BytesMut::new();
        for p in &ps {
            encode(&Packet::Publish(Box::new(p.clone())), Protocol::V5, &mut buf).unwrap();
        }
        for p in ps {
            let got = decode(&mut buf, Protocol::V5, &Limits::default()).unwrap();
            prop_assert_eq!(got, Some(Packet::Publish(Box::new(p))));
        }
        prop_assert!(buf.is_empty());
    }

    /// Arbitrary bytes never panic; a packet, a need-more, or an error.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256), v5 in any::<bool>()) {
        let protocol = if v5 { Protocol::V5 } else { Protocol::V3_1_1 };
        let mut buf = BytesMut::from(&bytes[..]);
        let before = buf.len();
        match decode(&mut buf, protocol, &Limits::default()) {
            Ok(None) => prop_assert_eq!(buf.len(), before),
            Ok(Some(_)) => prop_assert!(buf.len() < before),
            Err(e) => { let _ = e.reason_code(); }
        }
    }
}
