//! The session table's transitions, driven without sockets: paused time for the timer
//! cases, real threads for the races. Each race test checks an invariant the old
//! lifecycle (check under one lock, act under another) broke: a session resumed with
//! `session_present = 1` must keep its subscriptions, and a live session is never ended.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use messs_codec::{QoS, SubscriptionOptions, TopicFilter, TopicName};

use super::*;
use crate::message::MessageProperties;
use crate::session::SessionLimits;

const START_MS: u64 = 1_000_000;

struct Fixture {
    table: Arc<SessionTable>,
    router: Arc<Router>,
    stats: Arc<Stats>,
}

fn fixture(max_sessions: usize) -> Fixture {
    let stats = Arc::new(Stats::default());
    let tenants = Arc::new(Tenants::default());
    let router = Arc::new(Router::new(
        100,
        1 << 20,
        false,
        stats.clone(),
        None,
        Box::new(|_| Arc::default()),
    ));
    let limits = TableLimits {
        max_sessions,
        session: SessionLimits {
            max_queued: 100,
            max_queued_bytes: 1 << 20,
            max_subscriptions: 10,
            max_subscription_bytes: usize::MAX,
            queue_full: crate::config::QueueFullPolicy::DropNew,
        },
    };
    let budget = Arc::new(ByteBudget::new(stats.clone(), usize::MAX));
    let table = Arc::new(SessionTable::new(
        limits,
        budget,
        tenants,
        router.clone(),
        stats.clone(),
        Clock::following_tokio(START_MS),
    ));
    Fixture {
        table,
        router,
        stats,
    }
}

fn key(id: &str) -> SessionKey {
    SessionKey {
        tenant: Arc::from("t"),
        client_id: Arc::from(id),
    }
}

fn will(topic: &str, delay: u32) -> Will {
    Will {
        message: message(topic),
        delay,
        access: None,
    }
}

fn message(topic: &str) -> Message {
    Message {
        topic: TopicName::new(topic).unwrap_or_else(|_| unreachable!()),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: MessageProperties::default(),
        expires_at: None,
        origin: 0,
    }
}

fn far() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(30)
}

impl Fixture {
    async fn attach(&self, id: &str, clean: bool, expiry: u32) -> Attached {
        let (attached, effects) = self.table.attach(key(id), clean, expiry, far()).await;
        assert!(effects.is_empty(), "no will expected from attaching {id}");
        match attached {
            Ok(a) => a,
            Err(e) => panic!("attach {id}: {e:?}"),
        }
    }

    fn subscribe(&self, a: &Attached, filter: &str) {
        let routes = self.router.tenant(&a.session.key.tenant);
        let sub = StoredSubscription {
            filter: TopicFilter::new(filter).unwrap_or_else(|_| unreachable!()),
            options: SubscriptionOptions::new(QoS::AtLeastOnce),
            id: None,
        };
        assert_eq!(
            self.table.subscribe(&a.session, &routes, sub, None),
            Ok(None)
        );
    }

    /// Subscriptions the router's trie holds for the tenant.
    fn trie_len(&self) -> usize {
        self.router.tenant(&Arc::from("t")).subscription_count()
    }

    /// Whether the table holds this very session under its key, and it is attached.
    fn live(&self, a: &Attached) -> bool {
        let registered = self
            .table
            .get(&a.session.key)
            .is_some_and(|s| s.id == a.session.id);
        let st = a.session.lock();
        registered && st.is_attached() && !st.is_ended() && st.generation() == a.generation
    }
}

fn wills(effects: &Effects) -> usize {
    effects
        .iter()
        .filter(|e| matches!(e, Effect::PublishWill(..)))
        .count()
}

#[tokio::test(start_paused = true)]
async fn an_offline_session_expires_on_time_and_takes_its_subscriptions() {
    let f = fixture(100);
    let a = f.attach("c", false, 10).await;
    f.subscribe(&a, "a/#");
    assert!(f
        .table
        .detach(&a.session, a.generation, Departure::Abnormal, None)
        .is_empty());
    tokio::time::advance(Duration::from_millis(9_999)).await;
    let (_, next) = f.table.fire_due();
    assert_eq!(next, Some(START_MS + 10_000));
    assert!(f.table.get(&key("c")).is_some(), "not due yet");
    tokio::time::advance(Duration::from_millis(1)).await;
    f.table.fire_due();
    assert!(f.table.get(&key("c")).is_none());
    assert_eq!(
        f.trie_len(),
        0,
        "an ended session leaves nothing in the trie"
    );
    assert_eq!(f.stats.sessions.load(Ordering::Relaxed), 0);
    assert_eq!(f.table.timer_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_resume_at_the_expiry_moment_keeps_the_session_whole() {
    let f = fixture(100);
    let a = f.attach("c", false, 10).await;
    f.subscribe(&a, "a/#");
    f.table
        .detach(&a.session, a.generation, Departure::Abnormal, None);
    // The expiry is due; the client is back before the timer task gets to it.
    tokio::time::advance(Duration::from_secs(10)).await;
    let b = f.attach("c", false, 10).await;
    assert!(b.session_present);
    assert_eq!(b.session.id, a.session.id);
    let (effects, _) = f.table.fire_due();
    assert!(effects.is_empty());
    assert!(
        f.live(&b),
        "the resumed session was ended by its old expiry"
    );
    assert_eq!(f.trie_len(), 1, "its subscription was removed");
    // And a stale detach of the old generation changes nothing.
    f.table
        .detach(&a.session, a.generation, Departure::Abnormal, None);
    assert!(f.live(&b));
}

#[tokio::test(start_paused = true)]
async fn an_expired_session_is_not_resumed() {
    let f = fixture(100);
    let a = f.attach("c", false, 10).await;
    f.subscribe(&a, "a/#");
    f.table
        .detach(&a.session, a.generation, Departure::Abnormal, None);
    tokio::time::advance(Duration::from_secs(10)).await;
    f.table.fire_due();
    let b = f.attach("c", false, 10).await;
    assert!(!b.session_present);
    assert_ne!(b.session.id, a.session.id);
    assert_eq!(f.trie_len(), 0);
    assert!(a.session.lock().is_ended());
}

#[tokio::test(start_paused = true)]
async fn a_stale_connection_cannot_subscribe_into_an_ended_session() {
    let f = fixture(100);
    let a = f.attach("c", false, 0).await;
    // A clean-start takeover whose old connection did not let go in time ends the old
    // session under it; the old connection's late SUBSCRIBE must not reach the trie.
    let (b, effects) = {
        let (r, e) = f.table.attach(key("c"), true, 0, far()).await;
        (r.unwrap_or_else(|e| panic!("{e:?}")), e)
    };
    assert!(effects.is_empty());
    assert!(a.session.lock().is_ended());
    let routes = f.router.tenant(&a.session.key.tenant);
    let sub = StoredSubscription {
        filter: TopicFilter::new("x").unwrap_or_else(|_| unreachable!()),
        options: SubscriptionOptions::new(QoS::AtMostOnce),
        id: None,
    };
    assert_eq!(
        f.table.subscribe(&a.session, &routes, sub, None),
        Err(SubscribeRefused::Ended)
    );
    assert_eq!(f.trie_len(), 0);
    // Its detach still sends its will (the session ended under it) and touches nothing else.
    let effects = f.table.detach(
        &a.session,
        a.generation,
        Departure::Abnormal,
        Some(will("w", 60)),
    );
    assert_eq!(wills(&effects), 1);
    assert!(f.live(&b));
}

#[tokio::test(start_paused = true)]
async fn a_delayed_will_waits_and_a_return_in_time_deletes_it() {
    let f = fixture(100);
    // Back within the delay: no will, ever [MQTT-3.1.2-8].
    let a = f.attach("back", false, 60).await;
    f.table.detach(
        &a.session,
        a.generation,
        Departure::Abnormal,
        Some(will("w", 5)),
    );
    tokio::time::advance(Duration::from_millis(4_900)).await;
    assert_eq!(wills(&f.table.fire_due().0), 0);
    let b = f.attach("back", false, 60).await;
    assert!(b.session_present);
    tokio::time::advance(Duration::from_secs(120)).await;
    assert_eq!(wills(&f.table.fire_due().0), 0);
    assert!(f.live(&b));

    // Not back: the will at its delay, once, and the session ends later at its expiry.
    let c = f.attach("gone", false, 10).await;
    f.table.detach(
        &c.session,
        c.generation,
        Departure::Abnormal,
        Some(will("w", 5)),
    );
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(wills(&f.table.fire_due().0), 1);
    assert!(f.table.get(&key("gone")).is_some());
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(wills(&f.table.fire_due().0), 0, "the will went once");
    assert!(f.table.get(&key("gone")).is_none());

    // A delay past the expiry: the will goes when the session ends [MQTT-3.1.3-9].
    let d = f.attach("short", false, 3).await;
    f.table.detach(
        &d.session,
        d.generation,
        Departure::Abnormal,
        Some(will("w", 30)),
    );
    tokio::time::advance(Duration::from_secs(3)).await;
    assert_eq!(wills(&f.table.fire_due().0), 1);
    assert!(f.table.get(&key("short")).is_none());
    assert_eq!(f.table.timer_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_clean_departure_drops_the_will_and_a_zero_expiry_ends_at_once() {
    let f = fixture(100);
    let a = f.attach("c", false, 0).await;
    f.subscribe(&a, "a/#");
    let effects = f.table.detach(
        &a.session,
        a.generation,
        Departure::Clean,
        Some(will("w", 0)),
    );
    assert_eq!(wills(&effects), 0);
    assert!(f.table.get(&key("c")).is_none());
    assert_eq!(f.trie_len(), 0);
}

#[tokio::test(start_paused = true)]
async fn eviction_takes_the_soonest_offline_session_and_never_a_resumed_one() {
    let f = fixture(2);
    let a = f.attach("a", false, 100).await;
    let b = f.attach("b", false, 50).await;
    f.table
        .detach(&a.session, a.generation, Departure::Abnormal, None);
    f.table
        .detach(&b.session, b.generation, Departure::Abnormal, None);
    // `b` expires first but is back: its timer is gone, so `a` makes room.
    let b2 = f.attach("b", false, 50).await;
    assert!(b2.session_present);
    let c = f.attach("c", false, 10).await;
    assert!(!c.session_present);
    assert!(f.live(&b2), "the resumed session was evicted");
    assert!(f.table.get(&key("a")).is_none());
    assert_eq!(f.stats.sessions_evicted.load(Ordering::Relaxed), 1);
    // Nothing offline any more: the next one is refused, nobody live is touched.
    let (refused, _) = f.table.attach(key("d"), false, 10, far()).await;
    assert!(matches!(refused, Err(AttachRefused::Quota)));
    assert!(f.live(&b2) && f.live(&c));
}

/// The outside audit's finding: at `max_sessions`, fresh client ids of one tenant ended
/// another tenant's offline persistent session. A newcomer now evicts only within its own
/// tenant or from a tenant holding more sessions than its own.
#[tokio::test(start_paused = true)]
async fn one_tenants_churn_does_not_evict_a_smaller_tenants_sessions() {
    let f = fixture(4);
    let in_tenant = |tenant: &str, id: &str| SessionKey {
        tenant: Arc::from(tenant),
        client_id: Arc::from(id),
    };
    let attach = |k: SessionKey, expiry: u32| {
        let table = f.table.clone();
        async move { table.attach(k, false, expiry, far()).await.0 }
    };
    // The victim tenant: one persistent session, offline, due first.
    let v = attach(in_tenant("victim", "v"), 10).await.unwrap();
    f.table
        .detach(&v.session, v.generation, Departure::Abnormal, None);
    // The attacker fills the table with sessions that expire last.
    for i in 0..3 {
        let a = attach(in_tenant("attacker", &format!("a{i}")), 1000)
            .await
            .unwrap();
        f.table
            .detach(&a.session, a.generation, Departure::Abnormal, None);
    }
    // More fresh ids: its own sessions make room, the victim's is never taken.
    for i in 3..20 {
        let a = attach(in_tenant("attacker", &format!("a{i}")), 1000).await;
        let a = a.unwrap_or_else(|e| panic!("a{i}: {e:?}"));
        f.table
            .detach(&a.session, a.generation, Departure::Abnormal, None);
        assert!(
            f.table.get(&in_tenant("victim", "v")).is_some(),
            "round {i}"
        );
    }
    // The victim's new session takes the place of one of the bigger tenant's.
    let w = attach(in_tenant("victim", "w"), 10).await.unwrap();
    assert!(!w.session_present);
    assert!(f.table.get(&in_tenant("victim", "v")).is_some());
    let resumed = attach(in_tenant("victim", "v"), 10).await.unwrap();
    assert!(resumed.session_present);
}

/// A connection as the table sees it: it lets go of its session (detach, `TakenOver`)
/// when told to, as a client task does.
fn run_connection(table: Arc<SessionTable>, a: Attached) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        loop {
            if a.session.kicked(a.generation).is_some() {
                table.detach(&a.session, a.generation, Departure::TakenOver, None);
                return a.generation;
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), a.session.woken(a.generation))
                .await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn takeovers_racing_takeovers_leave_one_live_connection() {
    let f = fixture(1000);
    for round in 0..50 {
        let id = format!("c{round}");
        let first = f.attach(&id, false, 60).await;
        let mut connections = vec![run_connection(f.table.clone(), first)];
        // Each new connection runs as soon as it is attached, as a client task would.
        let attaches: Vec<_> = (0..4)
            .map(|_| {
                let table = f.table.clone();
                let key = key(&id);
                tokio::spawn(async move {
                    let a = table.attach(key, false, 60, far()).await.0;
                    let a = a.unwrap_or_else(|e| panic!("{e:?}"));
                    let seen = (a.session.clone(), a.generation, a.session_present);
                    (seen, run_connection(table, a))
                })
            })
            .collect();
        let mut live = Vec::new();
        for a in attaches {
            let ((session, generation, present), connection) =
                a.await.unwrap_or_else(|e| panic!("{e}"));
            assert!(present, "a takeover lost the session");
            live.push((session, generation));
            connections.push(connection);
        }
        // Exactly one of the five connections is not told to go, and it is the table's.
        let session = f.table.get(&key(&id)).unwrap_or_else(|| unreachable!());
        let not_kicked: Vec<u64> = live
            .iter()
            .filter(|(s, g)| s.kicked(*g).is_none())
            .map(|(_, g)| *g)
            .collect();
        assert_eq!(not_kicked.len(), 1, "round {round}: {not_kicked:?}");
        assert_eq!(session.lock().generation(), not_kicked[0]);
        assert!(session.lock().is_attached());
        for c in connections {
            c.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expiry_racing_resumes_never_ends_a_resumed_session() {
    // Many sessions due at one moment, resumed from other threads while the timer fires.
    const SESSIONS: usize = 400;
    let f = fixture(10_000);
    let mut first = Vec::new();
    for i in 0..SESSIONS {
        let a = f.attach(&format!("c{i}"), false, 1).await;
        f.subscribe(&a, &format!("t/{i}"));
        first.push(a);
    }
    for a in &first {
        f.table
            .detach(&a.session, a.generation, Departure::Abnormal, None);
    }
    tokio::time::sleep(Duration::from_millis(995)).await;
    let timer = {
        let table = f.table.clone();
        tokio::spawn(async move {
            for _ in 0..400 {
                table.fire_due();
                tokio::task::yield_now().await;
                tokio::time::sleep(Duration::from_micros(50)).await;
            }
        })
    };
    let resumes: Vec<_> = (0..SESSIONS)
        .map(|i| {
            let table = f.table.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_micros((i as u64 % 40) * 250)).await;
                let (a, effects) = table.attach(key(&format!("c{i}")), false, 1, far()).await;
                assert!(effects.is_empty());
                a.unwrap_or_else(|e| panic!("{e:?}"))
            })
        })
        .collect();
    let mut resumed = Vec::new();
    for r in resumes {
        resumed.push(r.await.unwrap_or_else(|e| panic!("{e}")));
    }
    timer.await.unwrap_or_else(|e| panic!("{e}"));
    let (mut present, mut fresh) = (0, 0);
    for (i, b) in resumed.iter().enumerate() {
        assert!(f.live(b), "c{i}: a live session was ended");
        if b.session_present {
            present += 1;
            assert_eq!(b.session.id, first[i].session.id);
            assert_eq!(b.session.lock().subscription_count(), 1, "c{i}");
        } else {
            fresh += 1;
            assert!(first[i].session.lock().is_ended());
            assert_eq!(b.session.lock().subscription_count(), 0);
        }
    }
    // The trie follows the sessions exactly: one entry per resumed session.
    assert_eq!(f.trie_len(), present, "present {present}, fresh {fresh}");
    assert_eq!(f.stats.sessions.load(Ordering::Relaxed), SESSIONS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn churn_at_the_session_limit_never_evicts_a_live_session() {
    // Clients reconnect in a loop, each before its old connection finished closing, while
    // the table is full, so every attach evicts an offline session: none of them may be
    // one that is attached.
    const CLIENTS: usize = 24;
    let f = fixture(CLIENTS - 4);
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let table = f.table.clone();
            tokio::spawn(async move {
                let (mut refused, mut detaching) = (0, Vec::new());
                for round in 0..200 {
                    let (a, effects) = table.attach(key(&format!("c{i}")), false, 60, far()).await;
                    drop(effects);
                    let Ok(a) = a else {
                        refused += 1;
                        continue;
                    };
                    for _ in 0..(round % 3) {
                        tokio::task::yield_now().await;
                    }
                    let registered = table
                        .get(&a.session.key)
                        .is_some_and(|s| s.id == a.session.id);
                    {
                        let st = a.session.lock();
                        assert!(
                            registered && st.is_attached() && !st.is_ended(),
                            "c{i} round {round}: the live session was evicted"
                        );
                    }
                    if round % 2 == 0 {
                        // The old connection's task closes while the client reconnects.
                        let closing = table.clone();
                        detaching.push(tokio::spawn(async move {
                            closing.detach(&a.session, a.generation, Departure::Abnormal, None);
                        }));
                    } else {
                        // Gone for a moment: its session is offline, a candidate for room.
                        table.detach(&a.session, a.generation, Departure::Abnormal, None);
                        tokio::time::sleep(std::time::Duration::from_micros(200)).await;
                    }
                }
                for d in detaching {
                    d.await.unwrap_or_else(|e| panic!("{e}"));
                }
                refused
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap_or_else(|e| panic!("{e}"));
    }
    assert!(f.stats.sessions_evicted.load(Ordering::Relaxed) > 0);
    assert!(f.stats.sessions.load(Ordering::Relaxed) <= CLIENTS - 4);
}
