//! Broker types to and from storage records: a message's MQTT properties become an opaque,
//! versioned blob the storage crate stores (and seals) without understanding, and a
//! subscription's options become the MQTT 5 options byte.

use std::num::NonZeroU32;
use std::sync::Arc;

use bytes::Bytes;
use messs_codec::{QoS, RetainHandling, SubscriptionOptions, TopicFilter, TopicName};
use messs_storage::record::{Dec, Enc};
use messs_storage::sessions::{MessageRecord, QueuedRecord, SubscriptionRecord};
use messs_storage::StorageError;

use crate::message::{Delivery, Message, MessageProperties};
use crate::session::StoredSubscription;

const PROPERTIES_V1: u8 = 1;

fn opt_bytes(e: &mut Enc, v: Option<&[u8]>) -> Result<(), StorageError> {
    match v {
        Some(b) => {
            e.u8(1).bytes(b)?;
        }
        None => {
            e.u8(0);
        }
    }
    Ok(())
}

fn read_opt<'a>(d: &mut Dec<'a>) -> Result<Option<&'a [u8]>, StorageError> {
    match d.u8()? {
        0 => Ok(None),
        _ => Ok(Some(d.bytes()?)),
    }
}

fn utf8(d: &Dec<'_>, b: &[u8]) -> Result<String, StorageError> {
    String::from_utf8(b.to_vec()).map_err(|_| d.error("property is not UTF-8"))
}

/// Encodes the pass-through properties.
fn encode_properties(p: &MessageProperties) -> Result<Vec<u8>, StorageError> {
    let mut e = Enc::new(PROPERTIES_V1, 16);
    e.u8(match p.payload_format_indicator {
        None => 0,
        Some(false) => 1,
        Some(true) => 2,
    });
    opt_bytes(&mut e, p.content_type.as_deref().map(str::as_bytes))?;
    opt_bytes(
        &mut e,
        p.response_topic.as_ref().map(|t| t.as_str().as_bytes()),
    )?;
    opt_bytes(&mut e, p.correlation_data.as_deref())?;
    let n = u32::try_from(p.user_properties.len())
        .map_err(|_| StorageError::TooLong("user properties"))?;
    e.u32(n);
    for (k, v) in &p.user_properties {
        e.bytes(k.as_bytes())?.bytes(v.as_bytes())?;
    }
    Ok(e.finish())
}

fn decode_properties(buf: &[u8]) -> Result<MessageProperties, StorageError> {
    if buf.is_empty() {
        return Ok(MessageProperties::default());
    }
    let (mut d, version) = Dec::new("properties", buf)?;
    if version != PROPERTIES_V1 {
        return Err(d.error(format!("properties version {version}")));
    }
    let payload_format_indicator = match d.u8()? {
        0 => None,
        1 => Some(false),
        _ => Some(true),
    };
    let content_type = read_opt(&mut d)?.map(|b| utf8(&d, b)).transpose()?;
    let response_topic = match read_opt(&mut d)? {
        Some(b) => {
            let s = utf8(&d, b)?;
            Some(TopicName::new(&s).map_err(|_| d.error("invalid response topic"))?)
        }
        None => None,
    };
    let correlation_data = read_opt(&mut d)?.map(Bytes::copy_from_slice);
    let n = d.u32()?;
    let mut user_properties = Vec::with_capacity((n as usize).min(64));
    for _ in 0..n {
        let k = d.bytes()?;
        let k = utf8(&d, k)?;
        let v = d.bytes()?;
        let v = utf8(&d, v)?;
        user_properties.push((k, v));
    }
    d.end()?;
    Ok(MessageProperties {
        payload_format_indicator,
        content_type,
        response_topic,
        correlation_data,
        user_properties,
    })
}

/// A message as the storage crate stores it.
pub(crate) fn message_record(m: &Message) -> Result<MessageRecord, StorageError> {
    Ok(MessageRecord {
        topic: m.topic.as_str().to_owned(),
        payload: m.payload.clone(),
        qos: m.qos as u8,
        retain: m.retain,
        expires_at: m.expires_at,
        origin: m.origin,
        properties: Bytes::from(encode_properties(&m.properties)?),
    })
}

/// A stored message back as the router holds it.
pub(crate) fn message_from_record(r: MessageRecord) -> Result<Message, StorageError> {
    let qos = QoS::from_u8(r.qos).map_err(|_| StorageError::corrupt("message", "QoS"))?;
    let topic =
        TopicName::new(&r.topic).map_err(|_| StorageError::corrupt("message", "invalid topic"))?;
    Ok(Message {
        topic,
        payload: r.payload,
        qos,
        retain: r.retain,
        properties: decode_properties(&r.properties)?,
        expires_at: r.expires_at,
        origin: r.origin,
    })
}

/// One delivery as a queue record.
/// A delivery as its queue record: holding its message, or referring to shared message
/// `shared` (stored once for several sessions; the message is then not encoded here).
pub(crate) fn queued_record(
    d: &Delivery,
    shared: Option<u64>,
) -> Result<QueuedRecord, StorageError> {
    let message = match shared {
        Some(_) => MessageRecord {
            topic: String::new(),
            payload: Bytes::new(),
            qos: 0,
            retain: false,
            expires_at: None,
            origin: 0,
            properties: Bytes::new(),
        },
        None => message_record(&d.message)?,
    };
    Ok(QueuedRecord {
        qos: d.qos as u8,
        retain: d.retain,
        subscription_ids: d.subscription_ids.iter().map(|i| i.get()).collect(),
        message,
        shared,
    })
}

/// A queue record back as a delivery with its sequence number.
pub(crate) fn delivery_from_record(seq: u64, r: QueuedRecord) -> Result<Delivery, StorageError> {
    let qos = QoS::from_u8(r.qos).map_err(|_| StorageError::corrupt("queue", "QoS"))?;
    Ok(Delivery {
        message: Arc::new(message_from_record(r.message)?),
        qos,
        retain: r.retain,
        subscription_ids: r
            .subscription_ids
            .into_iter()
            .filter_map(NonZeroU32::new)
            .collect(),
        stored_seq: seq,
    })
}

/// A subscription as stored: MQTT 5's options byte.
pub(crate) fn subscription_record(s: &StoredSubscription) -> SubscriptionRecord {
    let o = &s.options;
    let options = o.qos as u8
        | u8::from(o.no_local) << 2
        | u8::from(o.retain_as_published) << 3
        | (o.retain_handling as u8) << 4;
    SubscriptionRecord {
        filter: s.filter.as_str().to_owned(),
        options,
        id: s.id.map(NonZeroU32::get),
    }
}

/// A stored subscription back.
pub(crate) fn subscription_from_record(
    r: &SubscriptionRecord,
) -> Result<StoredSubscription, StorageError> {
    let bad = |what: &str| StorageError::corrupt("sessions", what.to_owned());
    let qos = QoS::from_u8(r.options & 0x03).map_err(|_| bad("subscription QoS"))?;
    let retain_handling = match (r.options >> 4) & 0x03 {
        0 => RetainHandling::SendAtSubscribe,
        1 => RetainHandling::SendIfNewSubscription,
        _ => RetainHandling::DoNotSend,
    };
    Ok(StoredSubscription {
        filter: TopicFilter::new(&r.filter).map_err(|_| bad("invalid topic filter"))?,
        options: SubscriptionOptions {
            qos,
            no_local: r.options & 0x04 != 0,
            retain_as_published: r.options & 0x08 != 0,
            retain_handling,
        },
        id: r.id.and_then(NonZeroU32::new),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_subscriptions_round_trip() {
        let m = Message {
            topic: TopicName::new("a/b").unwrap(),
            payload: Bytes::from_static(b"payload"),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties: MessageProperties {
                payload_format_indicator: Some(true),
                content_type: Some("text/plain".into()),
                response_topic: Some(TopicName::new("r/t").unwrap()),
                correlation_data: Some(Bytes::from_static(b"\x00\x01")),
                user_properties: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
            },
            expires_at: Some(99),
            origin: 7,
        };
        let back = message_from_record(message_record(&m).unwrap()).unwrap();
        assert_eq!(back.topic, m.topic);
        assert_eq!(back.payload, m.payload);
        assert_eq!(back.qos, m.qos);
        assert_eq!(back.properties, m.properties);
        assert_eq!(
            (back.expires_at, back.origin, back.retain),
            (Some(99), 7, true)
        );

        let s = StoredSubscription {
            filter: TopicFilter::new("$share/g/x/+").unwrap(),
            options: SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                no_local: true,
                retain_as_published: true,
                retain_handling: RetainHandling::DoNotSend,
            },
            id: NonZeroU32::new(12),
        };
        let back = subscription_from_record(&subscription_record(&s)).unwrap();
        assert_eq!(back.filter, s.filter);
        assert_eq!(back.options, s.options);
        assert_eq!(back.id, s.id);
    }
}
