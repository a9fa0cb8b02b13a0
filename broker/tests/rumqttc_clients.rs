//! The broker as an independent client library sees it: rumqttc at protocol levels 4
//! (3.1.1) and 5, over a real socket.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{TestBroker, QUIET, WAIT};
use tokio::sync::mpsc;

/// What a client's event loop saw, reduced to what the tests check.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    ConnAck {
        session_present: bool,
    },
    SubAck,
    Publish {
        topic: String,
        payload: Vec<u8>,
        qos: u8,
        retain: bool,
        props: Vec<(String, String)>,
        sub_ids: Vec<usize>,
    },
    Other,
}

struct Watch {
    rx: mpsc::UnboundedReceiver<Seen>,
}

impl Watch {
    async fn next(&mut self) -> Seen {
        tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("an event in time")
            .expect("event loop alive")
    }

    async fn until(&mut self, want: impl Fn(&Seen) -> bool) -> Seen {
        loop {
            let s = self.next().await;
            if want(&s) {
                return s;
            }
        }
    }

    async fn publish(&mut self) -> Seen {
        self.until(|s| matches!(s, Seen::Publish { .. })).await
    }

    async fn no_publish(&mut self) {
        let quiet = tokio::time::timeout(QUIET, async {
            loop {
                match self.rx.recv().await {
                    Some(Seen::Publish { .. }) | None => return,
                    Some(_) => {}
                }
            }
        })
        .await;
        assert!(quiet.is_err(), "expected no PUBLISH");
    }
}

mod v4 {
    use super::*;
    use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};

    pub fn options(broker: &TestBroker, id: &str) -> MqttOptions {
        let mut o = MqttOptions::new(id, "127.0.0.1", broker.addr.port());
        o.set_keep_alive(Duration::from_secs(5));
        o
    }

    pub async fn client(opts: MqttOptions) -> (AsyncClient, Watch, tokio::task::JoinHandle<()>) {
        let (c, w, t, _) = client_present(opts).await;
        (c, w, t)
    }

    /// Also returns CONNACK's session-present flag.
    pub async fn client_present(
        opts: MqttOptions,
    ) -> (AsyncClient, Watch, tokio::task::JoinHandle<()>, bool) {
        let (client, mut el) = AsyncClient::new(opts, 100);
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok(ev) = el.poll().await {
                let seen = match ev {
                    Event::Incoming(Packet::ConnAck(a)) => Seen::ConnAck {
                        session_present: a.session_present,
                    },
                    Event::Incoming(Packet::SubAck(_)) => Seen::SubAck,
                    Event::Incoming(Packet::Publish(p)) => Seen::Publish {
                        topic: p.topic.clone(),
                        payload: p.payload.to_vec(),
                        qos: p.qos as u8,
                        retain: p.retain,
                        props: vec![],
                        sub_ids: vec![],
                    },
                    _ => Seen::Other,
                };
                if tx.send(seen).is_err() {
                    break;
                }
            }
        });
        let mut watch = Watch { rx };
        let present = match watch.until(|s| matches!(s, Seen::ConnAck { .. })).await {
            Seen::ConnAck { session_present } => session_present,
            _ => false,
        };
        (client, watch, task, present)
    }

    #[tokio::test]
    async fn pubsub_all_qos_and_retained() {
        let broker = TestBroker::start().await;
        let (sub, mut sw, _t1) = client(options(&broker, "v4-sub")).await;
        let (publ, _pw, _t2) = client(options(&broker, "v4-pub")).await;
        sub.subscribe("v4/#", QoS::ExactlyOnce).await.unwrap();
        sw.until(|s| *s == Seen::SubAck).await;
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            publ.publish(format!("v4/{}", qos as u8), qos, false, vec![qos as u8])
                .await
                .unwrap();
            match sw.publish().await {
                Seen::Publish {
                    topic,
                    payload,
                    qos: q,
                    retain,
                    ..
                } => {
                    assert_eq!(topic, format!("v4/{}", qos as u8));
                    assert_eq!(payload, vec![qos as u8]);
                    assert_eq!(q, qos as u8);
                    assert!(!retain);
                }
                other => panic!("{other:?}"),
            }
        }
        publ.publish("v4/keep", QoS::AtLeastOnce, true, "kept")
            .await
            .unwrap();
        sw.publish().await;
        let (late, mut lw, _t3) = client(options(&broker, "v4-late")).await;
        late.subscribe("v4/keep", QoS::AtLeastOnce).await.unwrap();
        match lw.publish().await {
            Seen::Publish {
                payload, retain, ..
            } => {
                assert_eq!(payload, b"kept");
                assert!(retain);
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn will_when_client_vanishes() {
        let broker = TestBroker::start().await;
        let (watcher, mut ww, _t) = client(options(&broker, "v4-watch")).await;
        watcher
            .subscribe("status/+", QoS::AtLeastOnce)
            .await
            .unwrap();
        ww.until(|s| *s == Seen::SubAck).await;
        let mut o = options(&broker, "v4-mortal");
        o.set_last_will(LastWill::new(
            "status/mortal",
            "offline",
            QoS::AtLeastOnce,
            false,
        ));
        let (_c, _w, task) = client(o).await;
        task.abort(); // the socket closes without DISCONNECT
        match ww.publish().await {
            Seen::Publish { topic, payload, .. } => {
                assert_eq!(topic, "status/mortal");
                assert_eq!(payload, b"offline");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn persistent_session_gets_what_it_missed() {
        let broker = TestBroker::start().await;
        let mut o = options(&broker, "v4-durable");
        o.set_clean_session(false);
        let (c, mut w, task) = client(o.clone()).await;
        c.subscribe("missed", QoS::AtLeastOnce).await.unwrap();
        w.until(|s| *s == Seen::SubAck).await;
        c.disconnect().await.unwrap();
        let _ = tokio::time::timeout(WAIT, task).await;

        let (p, _pw, _t) = client(options(&broker, "v4-sender")).await;
        for i in 0..3u8 {
            p.publish("missed", QoS::AtLeastOnce, false, vec![i])
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (_c, mut w, _t, present) = client_present(o).await;
        assert!(present);
        for i in 0..3u8 {
            match w.publish().await {
                Seen::Publish { payload, .. } => assert_eq!(payload, vec![i]),
                other => panic!("{other:?}"),
            }
        }
        w.no_publish().await;
    }
}

mod v5 {
    use super::*;
    use rumqttc::v5::mqttbytes::v5::{Filter, Packet, PublishProperties, SubscribeProperties};
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};

    pub fn options(broker: &TestBroker, id: &str) -> MqttOptions {
        let mut o = MqttOptions::new(id, "127.0.0.1", broker.addr.port());
        o.set_keep_alive(Duration::from_secs(5));
        o
    }

    pub async fn client(opts: MqttOptions) -> (AsyncClient, Watch, tokio::task::JoinHandle<()>) {
        let (c, w, t, _) = client_present(opts).await;
        (c, w, t)
    }

    /// Also returns CONNACK's session-present flag.
    pub async fn client_present(
        opts: MqttOptions,
    ) -> (AsyncClient, Watch, tokio::task::JoinHandle<()>, bool) {
        let (client, mut el) = AsyncClient::new(opts, 100);
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok(ev) = el.poll().await {
                let seen = match ev {
                    Event::Incoming(Packet::ConnAck(a)) => Seen::ConnAck {
                        session_present: a.session_present,
                    },
                    Event::Incoming(Packet::SubAck(_)) => Seen::SubAck,
                    Event::Incoming(Packet::Publish(p)) => {
                        let props = p.properties.clone().unwrap_or_default();
                        Seen::Publish {
                            topic: String::from_utf8_lossy(&p.topic).into_owned(),
                            payload: p.payload.to_vec(),
                            qos: p.qos as u8,
                            retain: p.retain,
                            props: props.user_properties,
                            sub_ids: props.subscription_identifiers,
                        }
                    }
                    _ => Seen::Other,
                };
                if tx.send(seen).is_err() {
                    break;
                }
            }
        });
        let mut watch = Watch { rx };
        let present = match watch.until(|s| matches!(s, Seen::ConnAck { .. })).await {
            Seen::ConnAck { session_present } => session_present,
            _ => false,
        };
        (client, watch, task, present)
    }

    #[tokio::test]
    async fn pubsub_with_properties_and_subscription_id() {
        let broker = TestBroker::start().await;
        let (sub, mut sw, _t1) = client(options(&broker, "v5-sub")).await;
        let (publ, _pw, _t2) = client(options(&broker, "v5-pub")).await;
        let props = SubscribeProperties {
            id: Some(42),
            user_properties: vec![],
        };
        sub.subscribe_with_properties("v5/+", QoS::ExactlyOnce, props)
            .await
            .unwrap();
        sw.until(|s| *s == Seen::SubAck).await;
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let props = PublishProperties {
                user_properties: vec![("trace".into(), format!("{}", qos as u8))],
                ..Default::default()
            };
            publ.publish_with_properties("v5/x", qos, false, vec![1, 2, 3], props)
                .await
                .unwrap();
            match sw.publish().await {
                Seen::Publish {
                    topic,
                    payload,
                    qos: q,
                    props,
                    sub_ids,
                    ..
                } => {
                    assert_eq!(topic, "v5/x");
                    assert_eq!(payload, vec![1, 2, 3]);
                    assert_eq!(q, qos as u8);
                    assert_eq!(props, vec![("trace".to_string(), format!("{}", qos as u8))]);
                    assert_eq!(sub_ids, vec![42]);
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn shared_subscription_and_no_local() {
        let broker = TestBroker::start().await;
        let (a, mut aw, _ta) = client(options(&broker, "v5-a")).await;
        let (b, mut bw, _tb) = client(options(&broker, "v5-b")).await;
        a.subscribe("$share/g/work", QoS::AtLeastOnce)
            .await
            .unwrap();
        aw.until(|s| *s == Seen::SubAck).await;
        b.subscribe("$share/g/work", QoS::AtLeastOnce)
            .await
            .unwrap();
        bw.until(|s| *s == Seen::SubAck).await;
        let (p, mut pw, _tp) = client(options(&broker, "v5-p")).await;
        let mut nl = Filter::new("work", QoS::AtLeastOnce);
        nl.nolocal = true;
        p.subscribe_many(vec![nl]).await.unwrap();
        pw.until(|s| *s == Seen::SubAck).await;
        for i in 0..4u8 {
            p.publish("work", QoS::AtLeastOnce, false, vec![i])
                .await
                .unwrap();
        }
        let (mut na, mut nb) = (0, 0);
        for _ in 0..4 {
            tokio::select! {
                s = aw.publish() => { assert!(matches!(s, Seen::Publish { .. })); na += 1; }
                s = bw.publish() => { assert!(matches!(s, Seen::Publish { .. })); nb += 1; }
            }
        }
        assert_eq!((na, nb), (2, 2));
        pw.no_publish().await; // its own messages do not come back (No Local)
    }

    #[tokio::test]
    async fn session_resume_reports_session_present() {
        let broker = TestBroker::start().await;
        let mut o = options(&broker, "v5-resume");
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(60));
        let (c, mut w, task) = client(o.clone()).await;
        c.subscribe("resume/t", QoS::AtLeastOnce).await.unwrap();
        w.until(|s| *s == Seen::SubAck).await;
        c.disconnect().await.unwrap();
        let _ = tokio::time::timeout(WAIT, task).await;
        let (p, _pw, _t) = client(options(&broker, "v5-resume-pub")).await;
        p.publish("resume/t", QoS::AtLeastOnce, false, "while-away")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (_c, mut w, _t, present) = client_present(o).await;
        assert!(present, "CONNACK says the session was resumed");
        match w.publish().await {
            Seen::Publish { payload, .. } => assert_eq!(payload, b"while-away"),
            other => panic!("{other:?}"),
        }
    }
}
