//! `ClientCore` driven without sockets: packets are encoded into its read buffer, its
//! answers decoded from its write buffer, and time is whatever each event says (tokio's
//! clock is paused, so the session table's timers only move when a test moves them).
//! Each test names the rule it holds the core to.

use std::num::{NonZeroU16, NonZeroU32};
use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use messs_codec::{
    Connect, ConnectProperties, Limits, Packet, Protocol, PubResponse, Publish, PublishProperties,
    QoS, QosPid, ReasonCode, Subscribe, SubscribeProperties, Subscription, SubscriptionOptions,
    TopicFilter, TopicName,
};

use super::{ClientCore, End, Event, Negotiated, PauseRequest};
use crate::clock::{Clock, Now};
use crate::config::Config;
use crate::security::auth::{Access, Identity};
use crate::session::SessionKey;
use crate::state::BrokerState;
use crate::transport::framing::Framing;

const START_MS: u64 = 1_700_000_000_000;
const TENANT: &str = "t";

fn broker(config: Config) -> Arc<BrokerState> {
    let clock = Clock::following_tokio(START_MS);
    Arc::new(BrokerState::with_clock(config, None, clock).unwrap())
}

/// What a test's client asks for at CONNECT.
#[derive(Default)]
struct Terms {
    keep_alive: u16,
    /// The client's Receive Maximum (the broker's window towards it).
    receive_maximum: Option<u16>,
    topic_alias_maximum: Option<u16>,
    expiry: u32,
}

/// What the handshake settles for a v5 client: its attached session, its rights and the
/// negotiated terms, at `now`.
async fn admitted(
    state: &Arc<BrokerState>,
    client_id: &str,
    terms: &Terms,
    now: Now,
) -> (crate::session::table::Attached, Access, Negotiated) {
    let key = SessionKey {
        tenant: Arc::from(TENANT),
        client_id: Arc::from(client_id),
    };
    let deadline = now.instant + Duration::from_secs(5);
    let attached = state
        .attach(key, false, terms.expiry, deadline)
        .await
        .unwrap();
    let tenant = state.auth.tenants.get_or_insert(&Arc::from(TENANT), false);
    let access = Access::new(
        &state.auth,
        Identity::for_admin(tenant, None),
        Arc::from(client_id),
    );
    let connect = Connect {
        protocol: Protocol::V5,
        clean_start: false,
        keep_alive: terms.keep_alive,
        properties: ConnectProperties {
            receive_maximum: terms.receive_maximum.and_then(NonZeroU16::new),
            topic_alias_maximum: terms.topic_alias_maximum,
            session_expiry_interval: Some(terms.expiry),
            ..ConnectProperties::default()
        },
        client_id: client_id.to_owned(),
        will: None,
        username: None,
        password: None,
    };
    let neg = Negotiated::new(
        &connect,
        terms.keep_alive,
        &state.config.limits,
        now.instant,
    );
    (attached, access, neg)
}

/// A v5 client attached as the handshake would attach it, at `now`, its core started.
async fn connect(state: &Arc<BrokerState>, client_id: &str, terms: Terms, now: Now) -> ClientCore {
    let (attached, access, neg) = admitted(state, client_id, &terms, now).await;
    let limits = &state.config.limits;
    let mut frames = Framing::new(limits.codec_limits());
    frames.configure(Protocol::V5, limits.codec_limits());
    let mut core = ClientCore::new(
        state.clone(),
        frames,
        attached,
        neg,
        None,
        access,
        crate::config::Transport::Tcp,
        now,
    );
    assert!(core.handle(Event::Start, now).is_continue());
    core
}

/// Encodes `packets` into the core's read buffer and reports them received at `now`.
fn send(core: &mut ClientCore, packets: &[Packet], now: Now) -> ControlFlow<End> {
    let mut buf = BytesMut::new();
    for p in packets {
        messs_codec::encode(p, Protocol::V5, &mut buf).unwrap();
    }
    core.frames.receive(&buf);
    core.handle(Event::Received, now)
}

/// Everything the core has encoded since the last call, decoded.
fn written(core: &mut ClientCore) -> Vec<Packet> {
    let mut buf = core.frames.take_written();
    let mut out = Vec::new();
    while let Some(p) = messs_codec::decode(&mut buf, Protocol::V5, &Limits::default()).unwrap() {
        out.push(p);
    }
    assert!(buf.is_empty(), "a partial packet was written");
    out
}

fn pid(n: u16) -> NonZeroU16 {
    NonZeroU16::new(n).unwrap()
}

fn subscribe(filter: &str, qos: QoS) -> Packet {
    Packet::Subscribe(Box::new(Subscribe {
        packet_id: pid(1),
        properties: SubscribeProperties::default(),
        subscriptions: vec![Subscription {
            filter: TopicFilter::new(filter).unwrap(),
            options: SubscriptionOptions::new(qos),
        }],
    }))
}

fn publish(topic: &str, qos_pid: QosPid, properties: PublishProperties) -> Packet {
    Packet::Publish(Box::new(Publish {
        dup: false,
        qos_pid,
        retain: false,
        topic: TopicName::new(topic).unwrap(),
        properties,
        payload: Bytes::from_static(b"payload"),
    }))
}

fn expiring(secs: u32) -> PublishProperties {
    PublishProperties {
        message_expiry_interval: Some(secs),
        ..PublishProperties::default()
    }
}

fn publishes(packets: &[Packet]) -> Vec<&Publish> {
    packets
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(&**p),
            _ => None,
        })
        .collect()
}

/// A subscriber to `filter` at QoS 1 with the given terms, its SUBACK checked.
async fn subscriber(
    state: &Arc<BrokerState>,
    id: &str,
    filter: &str,
    terms: Terms,
    now: Now,
) -> ClientCore {
    let mut core = connect(state, id, terms, now).await;
    assert!(send(&mut core, &[subscribe(filter, QoS::AtLeastOnce)], now).is_continue());
    let out = written(&mut core);
    assert!(
        matches!(&out[..], [Packet::SubAck(a)] if a.reasons == [ReasonCode::GrantedQoS1]),
        "{out:?}"
    );
    core
}

/// A broker at its start with a subscriber `s` to `filter` at QoS 1 (its Receive Maximum
/// `window`) and a publisher `p`.
async fn pair(
    config: Config,
    filter: &str,
    window: Option<u16>,
) -> (Arc<BrokerState>, Now, ClientCore, ClientCore) {
    let state = broker(config);
    let t0 = state.sessions.clock().now();
    let terms = Terms {
        receive_maximum: window,
        ..Terms::default()
    };
    let sub = subscriber(&state, "s", filter, terms, t0).await;
    let publisher = connect(&state, "p", Terms::default(), t0).await;
    (state, t0, sub, publisher)
}

#[tokio::test(start_paused = true)]
async fn keep_alive_closes_after_one_and_a_half_times_its_silence_and_input_restarts_it() {
    let state = broker(Config::try_out());
    let t0 = state.sessions.clock().now();
    let terms = Terms {
        keep_alive: 10,
        ..Terms::default()
    };
    let mut core = connect(&state, "k", terms, t0).await;
    assert_eq!(
        core.keep_alive_deadline(),
        Some(t0.instant + Duration::from_secs(15))
    );
    // A timer that fires early (it is reset lazily) changes nothing.
    assert!(core
        .handle(
            Event::KeepAliveTimer { input_held: false },
            t0.after(Duration::from_millis(14_999))
        )
        .is_continue());
    // A PINGREQ at 10 s is answered and moves the deadline to 25 s.
    let t10 = t0.after(Duration::from_secs(10));
    assert!(send(&mut core, &[Packet::PingReq], t10).is_continue());
    assert!(matches!(&written(&mut core)[..], [Packet::PingResp]));
    assert_eq!(
        core.keep_alive_deadline(),
        Some(t0.instant + Duration::from_secs(25))
    );
    assert!(core
        .handle(
            Event::KeepAliveTimer { input_held: false },
            t0.after(Duration::from_secs(15))
        )
        .is_continue());
    match core.handle(
        Event::KeepAliveTimer { input_held: false },
        t0.after(Duration::from_secs(25)),
    ) {
        ControlFlow::Break(End::KeepAlive) => {}
        other => panic!("expected a keep-alive end, got {other:?}"),
    }
    // The end is told with 0x8D.
    core.farewell(&End::KeepAlive);
    match &written(&mut core)[..] {
        [Packet::Disconnect(d)] => assert_eq!(d.reason, ReasonCode::KeepAliveTimeout),
        other => panic!("{other:?}"),
    }
}

/// Input the shell held back (behind a blocked write past its byte cap) is the broker's
/// doing, not the client's silence: the timer rearms for another grace instead of closing;
/// with nothing held back, the same firing closes it.
#[tokio::test(start_paused = true)]
async fn input_held_back_behind_a_blocked_write_is_not_silence() {
    let state = broker(Config::try_out());
    let t0 = state.sessions.clock().now();
    let terms = Terms {
        keep_alive: 4,
        ..Terms::default()
    };
    let mut core = connect(&state, "held", terms, t0).await;
    let late = t0.after(Duration::from_secs(7));
    let held = Event::KeepAliveTimer { input_held: true };
    assert!(core.handle(held, late).is_continue());
    assert_eq!(
        core.keep_alive_deadline(),
        Some(late.instant + Duration::from_secs(6)),
        "another grace"
    );
    let silent = Event::KeepAliveTimer { input_held: false };
    let later = late.after(Duration::from_secs(6));
    assert!(matches!(
        core.handle(silent, later),
        ControlFlow::Break(End::KeepAlive)
    ));
}

/// The outside audit's finding: any byte restarted the keep-alive clock, so a client sending
/// one byte of a PUBLISH every few seconds held its connection forever. Only a whole packet
/// counts now.
#[tokio::test(start_paused = true)]
async fn bytes_of_an_unfinished_packet_do_not_restart_the_keep_alive_clock() {
    let state = broker(Config::try_out());
    let t0 = state.sessions.clock().now();
    let terms = Terms {
        keep_alive: 4,
        ..Terms::default()
    };
    let mut core = connect(&state, "trickle", terms, t0).await;
    let mut bytes = BytesMut::new();
    let p = Packet::Publish(Box::new(Publish {
        dup: false,
        qos_pid: QosPid::AtMostOnce,
        retain: false,
        topic: TopicName::new("t").unwrap(),
        payload: Bytes::from_static(b"0123456789"),
        properties: Default::default(),
    }));
    messs_codec::encode(&p, Protocol::V5, &mut bytes).unwrap();
    // One byte every 2 s (well under the 6 s grace), the packet never complete.
    for i in 0..2 {
        core.frames.receive(&bytes[i..=i]);
        let now = t0.after(Duration::from_secs(2 * (i as u64 + 1)));
        assert!(core.handle(Event::Received, now).is_continue());
    }
    match core.handle(
        Event::KeepAliveTimer { input_held: false },
        t0.after(Duration::from_secs(6)),
    ) {
        ControlFlow::Break(End::KeepAlive) => {}
        other => panic!("a trickle of bytes kept the connection: {other:?}"),
    }
}

/// The outside audit's finding: acknowledgements paid nothing, so PUBACKs carrying 60 KB of
/// properties each went past a bytes rate at over 1 GB/s. They pay their bytes now (and
/// still do not count as messages).
#[tokio::test(start_paused = true)]
async fn acknowledgements_pay_the_bytes_rate() {
    let mut config = Config::try_out();
    config.rate_limits.bytes_per_sec = 10_000;
    config.rate_limits.bytes_burst = 10_000;
    let state = broker(config);
    let t0 = state.sessions.clock().now();
    let mut core = connect(&state, "acker", Terms::default(), t0).await;
    let heavy_ack = |id: u16| {
        let mut ack = PubResponse::success(pid(id));
        ack.properties.reason_string = Some("r".repeat(8 * 1024));
        Packet::PubAck(ack)
    };
    let acks: Vec<Packet> = (1..=4).map(heavy_ack).collect();
    assert!(send(&mut core, &acks, t0).is_continue());
    match core.take_pause() {
        Some(PauseRequest::Throttled(wait)) => assert!(!wait.is_zero()),
        other => panic!(
            "32 KB of acknowledgements against a 10 KB/s rate: no throttle ({})",
            other.is_some()
        ),
    }
}

#[tokio::test(start_paused = true)]
async fn a_rate_limit_pause_holds_input_back_and_does_not_count_as_the_clients_silence() {
    let mut config = Config::try_out();
    config.rate_limits.messages_per_sec = 1;
    config.rate_limits.messages_burst = 1;
    let state = broker(config);
    let t0 = state.sessions.clock().now();
    let terms = Terms {
        keep_alive: 2,
        ..Terms::default()
    };
    let mut core = connect(&state, "r", terms, t0).await;
    let pings = [
        Packet::PingReq,
        Packet::PingReq,
        Packet::PingReq,
        Packet::PingReq,
    ];
    assert!(send(&mut core, &pings, t0).is_continue());
    let answered = written(&mut core).len();
    assert!(
        answered < 4,
        "all {answered} PINGREQs answered despite the rate"
    );
    let Some(PauseRequest::Throttled(wait)) = core.take_pause() else {
        panic!("no throttle pause asked for");
    };
    assert!(!wait.is_zero());
    assert!(!core.wants().read, "reads while paused");
    // Long past the 3 s keep-alive grace, still paused: not the client's silence.
    assert!(core
        .handle(
            Event::KeepAliveTimer { input_held: false },
            t0.after(Duration::from_secs(4))
        )
        .is_continue());
    // The pause ends: what was held back is handled (at most a burst more per pause).
    let mut now = t0.after(Duration::from_secs(4));
    let mut total = answered;
    for _ in 0..8 {
        assert!(core
            .handle(Event::PauseOver { lasted_ms: 0 }, now)
            .is_continue());
        total += written(&mut core).len();
        if core.take_pause().is_none() {
            break;
        }
        now = now.after(Duration::from_secs(1));
    }
    assert_eq!(total, 4, "every PINGREQ answered once the rate allows");
    assert!(core.wants().read);
}

#[tokio::test(start_paused = true)]
async fn queued_messages_expire_by_the_time_of_the_event_and_carry_what_is_left_of_their_interval()
{
    // A window of one: the second and third messages wait in the session queue.
    let (state, t0, mut sub, mut publisher) = pair(Config::try_out(), "e/#", Some(1)).await;
    let sent = [
        publish("e/1", QosPid::AtLeastOnce(pid(1)), expiring(100)),
        publish("e/2", QosPid::AtLeastOnce(pid(2)), expiring(5)),
        publish("e/3", QosPid::AtLeastOnce(pid(3)), expiring(10)),
    ];
    assert!(send(&mut publisher, &sent, t0).is_continue());
    assert!(sub.handle(Event::Woken, t0).is_continue());
    let out = written(&mut sub);
    let first = publishes(&out);
    assert_eq!(first.len(), 1, "{out:?}");
    assert_eq!(first[0].topic.as_str(), "e/1");
    assert_eq!(first[0].properties.message_expiry_interval, Some(100));
    let QosPid::AtLeastOnce(first_pid) = first[0].qos_pid else {
        panic!("not QoS 1: {:?}", first[0].qos_pid)
    };
    // 6 s later the PUBACK opens the window: e/2 (5 s) has expired, e/3 has 4 s left.
    let t6 = t0.after(Duration::from_secs(6));
    let ack = Packet::PubAck(PubResponse::success(first_pid));
    assert!(send(&mut sub, &[ack], t6).is_continue());
    let out = written(&mut sub);
    let next = publishes(&out);
    assert_eq!(next.len(), 1, "{out:?}");
    assert_eq!(next[0].topic.as_str(), "e/3");
    assert_eq!(next[0].properties.message_expiry_interval, Some(4));
    assert_eq!(state.stats.dropped_expired.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn the_window_holds_deliveries_until_acknowledged_and_qos2_is_routed_once() {
    let (_state, t0, mut sub, mut publisher) = pair(Config::try_out(), "w/#", Some(2)).await;
    // QoS 2 in: PUBREC; the same packet id again (a resend) is acknowledged, not routed.
    let q2 = publish(
        "w/a",
        QosPid::ExactlyOnce(pid(7)),
        PublishProperties::default(),
    );
    assert!(send(&mut publisher, &[q2.clone(), q2], t0).is_continue());
    let out = written(&mut publisher);
    assert_eq!(out.len(), 2, "{out:?}");
    assert!(out
        .iter()
        .all(|p| matches!(p, Packet::PubRec(r) if r.packet_id == pid(7) && r.reason.is_success())));
    let rel = Packet::PubRel(PubResponse::success(pid(7)));
    assert!(send(&mut publisher, &[rel], t0).is_continue());
    assert!(matches!(&written(&mut publisher)[..], [Packet::PubComp(c)] if c.packet_id == pid(7)));
    // Three more at QoS 1: the subscriber gets two (its window), then one per PUBACK.
    let more: Vec<_> = (1..=3)
        .map(|i| {
            publish(
                "w/b",
                QosPid::AtLeastOnce(pid(i)),
                PublishProperties::default(),
            )
        })
        .collect();
    assert!(send(&mut publisher, &more, t0).is_continue());
    assert_eq!(written(&mut publisher).len(), 3, "three PUBACKs");
    assert!(sub.handle(Event::Woken, t0).is_continue());
    let out = written(&mut sub);
    let got = publishes(&out);
    assert_eq!(got.len(), 2, "window of two: {out:?}");
    assert_eq!(
        got[0].topic.as_str(),
        "w/a",
        "the QoS 2 message once, first"
    );
    let pids: Vec<_> = got.iter().filter_map(|p| p.qos_pid.packet_id()).collect();
    assert!(sub.handle(Event::Woken, t0).is_continue());
    assert!(written(&mut sub).is_empty(), "nothing beyond the window");
    let ack = Packet::PubAck(PubResponse::success(pids[0]));
    assert!(send(&mut sub, &[ack], t0).is_continue());
    assert_eq!(publishes(&written(&mut sub)).len(), 1);
    // Acknowledging with the wrong type for a packet id is a protocol error.
    let wrong = Packet::PubComp(PubResponse::success(pids[1]));
    match send(&mut sub, &[wrong], t0) {
        ControlFlow::Break(End::Failed(e)) => {
            assert_eq!(e.disconnect_reason(), Some(ReasonCode::ProtocolError))
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn topic_aliases_resolve_inbound_and_an_alias_above_the_maximum_closes_with_0x94() {
    let mut config = Config::try_out();
    config.limits.topic_alias_maximum = 4;
    let (_state, t0, mut sub, mut publisher) = pair(config, "x/#", None).await;
    let with_alias = |topic: &str, alias: u16| {
        Packet::Publish(Box::new(Publish {
            dup: false,
            qos_pid: QosPid::AtMostOnce,
            retain: false,
            topic: if topic.is_empty() {
                TopicName::empty()
            } else {
                TopicName::new(topic).unwrap()
            },
            properties: PublishProperties {
                topic_alias: NonZeroU16::new(alias),
                ..PublishProperties::default()
            },
            payload: Bytes::from_static(b"a"),
        }))
    };
    let sent = [with_alias("x/y", 1), with_alias("", 1)];
    assert!(send(&mut publisher, &sent, t0).is_continue());
    assert!(sub.handle(Event::Woken, t0).is_continue());
    let out = written(&mut sub);
    let topics: Vec<_> = publishes(&out)
        .iter()
        .map(|p| p.topic.to_string())
        .collect();
    assert_eq!(topics, ["x/y", "x/y"]);
    match send(&mut publisher, &[with_alias("x/z", 5)], t0) {
        ControlFlow::Break(End::Failed(e)) => {
            assert_eq!(e.disconnect_reason(), Some(ReasonCode::TopicAliasInvalid))
        }
        other => panic!("{other:?}"),
    }
}

/// The outside audit's finding: a subscriber announcing Topic Alias Maximum 65,535 made the
/// broker keep one alias per distinct topic delivered, each topic up to 64 KiB, for the life
/// of the connection. The broker now stops assigning aliases at
/// `limits.max_topic_alias_bytes` and sends the full topic instead; a client whose own
/// aliases would pass it is closed with 0x97.
#[tokio::test(start_paused = true)]
async fn topic_aliases_hold_no_more_than_their_bytes_either_way() {
    let mut config = Config::try_out();
    config.limits.max_topic_alias_bytes = 8 * 1024;
    config.limits.topic_alias_maximum = 1000;
    let state = broker(config);
    let t0 = state.sessions.clock().now();
    let terms = Terms {
        topic_alias_maximum: Some(65_535),
        ..Terms::default()
    };
    let mut sub = subscriber(&state, "s", "l/#", terms, t0).await;
    let mut publisher = connect(&state, "p", Terms::default(), t0).await;
    let long = |i: usize| format!("l/{i:04}/{}", "t".repeat(994));
    let topic_bytes = || state.stats.topic_alias_bytes.load(Ordering::Relaxed);
    let mut aliased = 0;
    for i in 0..20 {
        let message = publish(&long(i), QosPid::AtMostOnce, PublishProperties::default());
        assert!(send(&mut publisher, &[message], t0).is_continue());
        assert!(sub.handle(Event::Woken, t0).is_continue());
        let out = written(&mut sub);
        let [p] = &publishes(&out)[..] else {
            panic!("{out:?}")
        };
        assert_eq!(p.topic.as_str(), long(i), "a new topic is sent in full");
        aliased += usize::from(p.properties.topic_alias.is_some());
    }
    assert!(
        (1..20).contains(&aliased),
        "{aliased} of 20 topics got an alias"
    );
    assert!(topic_bytes() <= 8 * 1024, "{} bytes held", topic_bytes());
    // Inbound: the publisher's own aliases of 1 KiB topics stop at the bound with 0x97.
    let with_alias = |i: usize| {
        let mut p = publish(&long(i), QosPid::AtMostOnce, PublishProperties::default());
        if let Packet::Publish(p) = &mut p {
            p.properties.topic_alias = NonZeroU16::new(i as u16 + 1);
        }
        p
    };
    let end = (0..20).find_map(|i| send(&mut publisher, &[with_alias(i)], t0).break_value());
    match end {
        Some(End::Failed(e)) => assert_eq!(e.disconnect_reason(), Some(ReasonCode::QuotaExceeded)),
        other => panic!("the publisher's aliases were not bounded: {other:?}"),
    }
    assert!(
        topic_bytes() <= 2 * 8 * 1024,
        "{} bytes held",
        topic_bytes()
    );
    drop((sub, publisher));
    assert_eq!(
        topic_bytes(),
        0,
        "the gauge gives back what connections held"
    );
}

#[tokio::test(start_paused = true)]
async fn a_taken_over_core_ends_without_taking_the_sessions_deliveries() {
    let state = broker(Config::try_out());
    let t0 = state.sessions.clock().now();
    let terms = || Terms {
        expiry: 60,
        ..Terms::default()
    };
    let mut old = subscriber(&state, "same", "o/#", terms(), t0).await;
    let mut publisher = connect(&state, "p", Terms::default(), t0).await;
    // The takeover: a second CONNECT with the same id waits for the old connection to go,
    // which it does when its shell feeds it the kick's wake-up.
    let state2 = state.clone();
    let takeover = tokio::spawn(async move {
        let now = state2.sessions.clock().now();
        let mut new = connect(&state2, "same", terms(), now).await;
        // Its first pass (at `Start`) may already deliver what the session queued.
        let out = written(&mut new);
        (new, out)
    });
    tokio::task::yield_now().await;
    let message = publish(
        "o/1",
        QosPid::AtLeastOnce(pid(1)),
        PublishProperties::default(),
    );
    assert!(send(&mut publisher, &[message], t0).is_continue());
    match old.handle(Event::Woken, t0) {
        ControlFlow::Break(End::TakenOver) => {}
        other => panic!("expected a takeover, got {other:?}"),
    }
    assert!(
        publishes(&written(&mut old)).is_empty(),
        "the old connection took a delivery"
    );
    old.farewell(&End::TakenOver);
    match &written(&mut old)[..] {
        [Packet::Disconnect(d)] => assert_eq!(d.reason, ReasonCode::SessionTakenOver),
        other => panic!("{other:?}"),
    }
    old.leave(End::TakenOver, t0);
    let (mut new, mut out) = takeover.await.unwrap();
    // The new connection resumed the session: its subscription and the queued message.
    assert!(new.handle(Event::Woken, t0).is_continue());
    out.extend(written(&mut new));
    let got = publishes(&out);
    assert_eq!(got.len(), 1, "{out:?}");
    assert_eq!(got[0].topic.as_str(), "o/1");
}

#[tokio::test(start_paused = true)]
async fn a_second_connect_and_a_server_only_packet_are_protocol_errors() {
    let state = broker(Config::try_out());
    let t0 = state.sessions.clock().now();
    let mut core = connect(&state, "c", Terms::default(), t0).await;
    let pingresp = send(&mut core, &[Packet::PingResp], t0);
    let ControlFlow::Break(End::Failed(e)) = pingresp else {
        panic!("{pingresp:?}")
    };
    assert_eq!(e.disconnect_reason(), Some(ReasonCode::ProtocolError));
    let mut core = connect(&state, "d", Terms::default(), t0).await;
    let sub_id = Packet::Publish(Box::new(Publish {
        dup: false,
        qos_pid: QosPid::AtMostOnce,
        retain: false,
        topic: TopicName::new("a").unwrap(),
        properties: PublishProperties {
            subscription_identifiers: vec![NonZeroU32::new(1).unwrap()],
            ..PublishProperties::default()
        },
        payload: Bytes::new(),
    }));
    let ControlFlow::Break(End::Failed(e)) = send(&mut core, &[sub_id], t0) else {
        panic!("a client PUBLISH with a subscription identifier was accepted")
    };
    assert_eq!(e.disconnect_reason(), Some(ReasonCode::ProtocolError));
}

#[tokio::test(start_paused = true)]
async fn a_publish_that_breaks_the_rate_limit_for_good_is_refused_not_routed() {
    let mut config = Config::try_out();
    config.rate_limits.messages_per_sec = 1;
    config.rate_limits.messages_burst = 1;
    config.rate_limits.disconnect_multiple = 1;
    let (_state, t0, mut sub, mut publisher) = pair(config, "r/#", None).await;
    // A client that keeps pushing: two publishes per read, every 300 ms.
    let one = |n: u16| {
        publish(
            &format!("r/{n:02}"),
            QosPid::AtLeastOnce(pid(n)),
            PublishProperties::default(),
        )
    };
    let mut encoded = BytesMut::new();
    messs_codec::encode(&one(1), Protocol::V5, &mut encoded).unwrap();
    let size = encoded.len();
    let (mut now, mut sent, mut acked) = (t0, 0usize, 0usize);
    let error = loop {
        let pair = [one(sent as u16 + 1), one(sent as u16 + 2)];
        sent += 2;
        let flow = send(&mut publisher, &pair, now);
        acked += written(&mut publisher)
            .iter()
            .filter(|p| matches!(p, Packet::PubAck(_)))
            .count();
        if let ControlFlow::Break(end) = flow {
            break end;
        }
        now = now.after(Duration::from_millis(300));
        if publisher.take_pause().is_some() {
            let flow = publisher.handle(Event::PauseOver { lasted_ms: 300 }, now);
            acked += written(&mut publisher)
                .iter()
                .filter(|p| matches!(p, Packet::PubAck(_)))
                .count();
            if let ControlFlow::Break(end) = flow {
                break end;
            }
        }
        assert!(sent < 40, "never disconnected");
    };
    let End::Failed(e) = error else {
        panic!("{error:?}")
    };
    assert_eq!(e.disconnect_reason(), Some(ReasonCode::MessageRateTooHigh));
    // Packets decoded: all sent but what is still buffered; the last decoded one broke
    // the limit and was neither acknowledged nor routed.
    let decoded = sent - publisher.frames.buffered() / size;
    assert_eq!(acked, decoded - 1);
    assert!(sub.handle(Event::Woken, now).is_continue());
    assert_eq!(publishes(&written(&mut sub)).len(), acked);
}

/// What every idle connection holds besides its buffers and session: its task (the
/// connection permit and a pointer) and the boxed client (core and shell). tokio's task
/// cell is 256 bytes on x86_64 for any future up to ~110 bytes, so the task's future must
/// stay below that. Before issue 23 it held `select!`'s branches (a 512-byte cell), and the
/// client (328 bytes) a boxed timer (112 more).
#[test]
fn an_idle_connection_holds_a_small_client_and_a_small_task() {
    type Permit = (
        tokio::sync::OwnedSemaphorePermit,
        crate::security::limits::addresses::AddressSlot,
    );
    let task = std::mem::size_of::<super::ClientTask<tokio::net::TcpStream, Permit>>();
    let client = std::mem::size_of::<super::Client<tokio::net::TcpStream>>();
    assert!(task <= 96, "task future {task} bytes");
    assert!(client <= 352, "client {client} bytes");
}
