//! Security in the handshake and at the choke point, with real clients: password logins at
//! both protocol levels, remembered verifications, lockout, the verification queue, tenant
//! isolation, ACLs (subscribe coverage, publish, will, retained), rule changes reaching live
//! connections and queued deliveries, and the audit records of each.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "common/pki.rs"]
mod pki;

use bytes::Bytes;
use common::*;
use messs_broker::registry::RuleSpec;
use messs_broker::storage::registry::{AclAction, AclSubject};
use messs_broker::{Config, NoRules};
use messs_codec::{Connect, Packet, Protocol, QoS, QosPid, ReasonCode, Will};

/// A listener shared by tenants (devices log in as NAME@TENANT), deny by default.
fn secured(c: &mut Config) {
    c.listeners[0].allow_anonymous = false;
    c.listeners[0].tenant = None;
    c.acl.tenant_without_rules = NoRules::Deny;
}

fn rule(allow: bool, action: AclAction, filter: &str) -> RuleSpec {
    RuleSpec {
        allow,
        action,
        filter: filter.into(),
        subject: AclSubject::All,
        qos_mask: 7,
        retain: None,
    }
}

/// Two tenants, `acme` and `globex`, each with a device `sensor1` (different passwords)
/// and `rules` for acme (globex allows everything).
async fn start(adjust: impl FnOnce(&mut Config), acme_rules: Vec<RuleSpec>) -> TestBroker {
    let broker = TestBroker::start_with(|c| {
        secured(c);
        adjust(c);
    })
    .await;
    broker
        .broker
        .registry("test", move |r| {
            r.add_tenant("acme", Some("Acme"))?;
            r.add_tenant("globex", None)?;
            r.add_device("acme", "sensor1", Some("acme-password-1"), None, &[])?;
            r.add_device("acme", "pub", Some("pub-password-1"), None, &[])?;
            r.add_device("globex", "sensor1", Some("globex-password-1"), None, &[])?;
            for spec in acme_rules {
                r.add_rule("acme", spec, None)?;
            }
            r.add_rule("globex", rule(true, AclAction::Both, "#"), None)?;
            Ok(())
        })
        .await
        .unwrap();
    broker
}

fn login(protocol: Protocol, client_id: &str, user: Option<&str>, password: &str) -> Connect {
    let mut c = connect_packet(protocol, client_id, true);
    c.username = user.map(str::to_owned);
    c.password = Some(Bytes::copy_from_slice(password.as_bytes()));
    c
}

async fn connect_as(broker: &TestBroker, client_id: &str, user: &str, password: &str) -> Raw {
    let (raw, ack) = Raw::connect_with(
        broker.addr,
        login(Protocol::V5, client_id, Some(user), password),
    )
    .await;
    assert_eq!(ack.code, ReasonCode::Success, "{user} should log in");
    raw
}

/// Every audit record as (action, detail), read after the broker stopped.
fn audit(data: &tempfile::TempDir) -> Vec<(String, String)> {
    let store = messs_broker::open_store(&messs_broker::StorageConfig {
        data_dir: data.path().to_path_buf(),
        ..Default::default()
    })
    .unwrap();
    assert!(store.verify_audit().unwrap().broken.is_none());
    store
        .read_audit(1, 100_000)
        .unwrap()
        .into_iter()
        .map(|r| (r.event.action, r.event.detail))
        .collect()
}

fn has(audit: &[(String, String)], action: &str, detail_part: &str) -> bool {
    audit
        .iter()
        .any(|(a, d)| a == action && d.contains(detail_part))
}

#[tokio::test]
async fn passwords_are_checked_and_every_wrong_credential_gets_the_same_answer() {
    let broker = start(|_| {}, vec![]).await;
    broker
        .broker
        .registry("test", |r| {
            r.add_device("acme", "off", Some("off-password-1"), None, &[])?;
            r.set_device_enabled("acme", "off", false)
        })
        .await
        .unwrap();
    for protocol in [Protocol::V5, Protocol::V3_1_1] {
        let ok = login(protocol, "c1", Some("sensor1@acme"), "acme-password-1");
        let (raw, ack) = Raw::connect_with(broker.addr, ok).await;
        assert_eq!(ack.code, ReasonCode::Success, "{protocol:?}");
        raw.disconnect().await;
        for (user, password) in [
            ("sensor1@acme", "wrong-password"),
            ("sensor1@acme", "globex-password-1"), // another tenant's device's password
            ("nobody@acme", "acme-password-1"),
            ("sensor1@nowhere", "acme-password-1"),
            ("off@acme", "off-password-1"), // disabled
            ("sensor1", "acme-password-1"), // no tenant on a shared listener
        ] {
            let (mut raw, ack) =
                Raw::connect_with(broker.addr, login(protocol, "c2", Some(user), password)).await;
            // v5 0x86; 3.1.1 return code 4, which the codec reads back as the same code.
            assert_eq!(
                ack.code,
                ReasonCode::BadUserNameOrPassword,
                "{protocol:?} {user}"
            );
            raw.expect_closed().await;
        }
        let (mut raw, ack) =
            Raw::connect_with(broker.addr, connect_packet(protocol, "anon", true)).await;
        assert_eq!(
            ack.code,
            ReasonCode::NotAuthorized,
            "{protocol:?} anonymous"
        );
        raw.expect_closed().await;
    }
    let data = broker.data.clone();
    broker.stop().await;
    let audit = audit(&data);
    assert!(has(&audit, "client.connect", "sensor1@acme client \"c1\""));
    assert!(has(
        &audit,
        "auth.failure",
        "nobody@acme from 127.0.0.1: bad credentials"
    ));
    assert!(has(&audit, "auth.failure", "anonymous from 127.0.0.1"));
    assert!(has(&audit, "device.disable", "\"off\""));
    assert!(has(&audit, "client.disconnect", "client disconnected"));
    for (_, detail) in &audit {
        assert!(
            !detail.contains("password-1"),
            "secret in the audit log: {detail}"
        );
    }
}

#[tokio::test]
async fn a_remembered_login_skips_argon2_until_the_password_changes() {
    let broker = start(|_| {}, vec![]).await;
    let h = &broker.broker;
    connect_as(&broker, "c", "sensor1@acme", "acme-password-1")
        .await
        .disconnect()
        .await;
    let after_first = h.password_verifications();
    assert!(after_first >= 1);
    for _ in 0..5 {
        connect_as(&broker, "c", "sensor1@acme", "acme-password-1")
            .await
            .disconnect()
            .await;
    }
    assert_eq!(h.password_verifications(), after_first, "remembered");
    // The same password for the same name in another tenant is another credential.
    let (_raw, ack) = Raw::connect_with(
        broker.addr,
        login(Protocol::V5, "c", Some("sensor1@globex"), "acme-password-1"),
    )
    .await;
    assert_eq!(ack.code, ReasonCode::BadUserNameOrPassword);
    // A new password through the running broker: the old one stops working at once.
    h.registry("test", |r| {
        r.set_device_password("acme", "sensor1", Some("new-password-22"))
    })
    .await
    .unwrap();
    let (_raw, ack) = Raw::connect_with(
        broker.addr,
        login(Protocol::V5, "c", Some("sensor1@acme"), "acme-password-1"),
    )
    .await;
    assert_eq!(ack.code, ReasonCode::BadUserNameOrPassword);
    connect_as(&broker, "c", "sensor1@acme", "new-password-22")
        .await
        .disconnect()
        .await;
    broker.stop().await;
}

#[tokio::test]
async fn failures_lock_out_the_username_then_the_address_before_any_hashing() {
    let broker = start(
        |c| {
            c.auth.lockout_user_threshold = 3;
            c.auth.lockout_ip_threshold = 6;
            c.auth.lockout_base_secs = 60;
        },
        vec![],
    )
    .await;
    let h = &broker.broker;
    // A device that logged in before the attack: its credential is remembered.
    connect_as(&broker, "known", "pub@acme", "pub-password-1")
        .await
        .disconnect()
        .await;
    for _ in 0..3 {
        let (_r, ack) = Raw::connect_with(
            broker.addr,
            login(Protocol::V5, "c", Some("sensor1@acme"), "guess"),
        )
        .await;
        assert_eq!(ack.code, ReasonCode::BadUserNameOrPassword);
    }
    // Locked: even the right password (never verified, so not remembered) is refused.
    let (_r, ack) = Raw::connect_with(
        broker.addr,
        login(
            Protocol::V3_1_1,
            "c",
            Some("sensor1@acme"),
            "acme-password-1",
        ),
    )
    .await;
    assert_eq!(
        ack.code,
        ReasonCode::NotAuthorized,
        "3.1.1 code 5 for Banned"
    );
    let (_r, ack) = Raw::connect_with(
        broker.addr,
        login(Protocol::V5, "c", Some("sensor1@acme"), "acme-password-1"),
    )
    .await;
    assert_eq!(ack.code, ReasonCode::Banned);
    // Other usernames from the same address, until the address is locked out too.
    for i in 0..3 {
        let user = format!("other{i}@acme");
        let (_r, ack) =
            Raw::connect_with(broker.addr, login(Protocol::V5, "c", Some(&user), "guess")).await;
        assert_eq!(ack.code, ReasonCode::BadUserNameOrPassword);
    }
    let runs = h.password_verifications();
    for _ in 0..50 {
        let (_r, ack) = Raw::connect_with(
            broker.addr,
            login(
                Protocol::V5,
                "c",
                Some("sensor1@globex"),
                "globex-password-1",
            ),
        )
        .await;
        assert_eq!(ack.code, ReasonCode::Banned);
    }
    assert_eq!(
        h.password_verifications(),
        runs,
        "a locked-out address costs no argon2"
    );
    let locked = broker
        .stats
        .auth_locked_out
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(locked, 52, "2 for the username, 50 for the address");
    // The remembered device behind the same address still gets in, without hashing.
    connect_as(&broker, "known", "pub@acme", "pub-password-1")
        .await
        .disconnect()
        .await;
    assert_eq!(h.password_verifications(), runs);
    let data = broker.data.clone();
    broker.stop().await;
    let audit = audit(&data);
    assert!(has(
        &audit,
        "auth.lockout",
        "user sensor1@acme from 127.0.0.1 locked out for 60000 ms"
    ));
    assert!(has(&audit, "auth.lockout", "ip 127.0.0.1 locked out"));
    // The 50 refusals at the locked address are counted, not audited one by one.
    assert!(!has(&audit, "auth.failure", "address locked out"));
    assert_eq!(
        audit.iter().filter(|(a, _)| a == "auth.failure").count(),
        6,
        "3 + 3 verified failures"
    );
}

/// Logs in from the local address `from` and returns the CONNACK's code.
async fn login_from(broker: &TestBroker, from: [u8; 4], user: &str, password: &str) -> ReasonCode {
    let raw = Raw::open_from(from.into(), broker.addr).await.unwrap();
    let (_raw, ack) = raw
        .try_connect(login(Protocol::V5, "c", Some(user), password))
        .await
        .unwrap();
    ack.code
}

/// The audit's finding: one wrong guess per lockout period kept a known device out for
/// good, because the lock was the username's, from everywhere. Now a guesser locks only
/// its own source out of that username, and guesses from many sources slow the username
/// down without locking it: the device, never verified before (nothing remembered), still
/// logs in with its password.
#[tokio::test]
async fn guessing_at_a_device_from_elsewhere_never_locks_the_device_out() {
    let broker = start(
        |c| {
            c.auth.lockout_user_threshold = 3;
            c.auth.lockout_user_slow_after = 6;
            c.auth.lockout_slow_max_ms = 1500;
            c.auth.lockout_base_secs = 1;
            c.auth.failure_delay_ms = 0;
        },
        vec![],
    )
    .await;
    let attacker = [127, 0, 0, 2];
    for _ in 0..4 {
        let code = login_from(&broker, attacker, "sensor1@acme", "guess").await;
        assert!(matches!(
            code,
            ReasonCode::BadUserNameOrPassword | ReasonCode::Banned
        ));
    }
    // The attacker's source is locked out of the name, even with the right password...
    let code = login_from(&broker, attacker, "sensor1@acme", "acme-password-1").await;
    assert_eq!(code, ReasonCode::Banned);
    // ...and the device, from its own address, is not.
    let device = [127, 0, 0, 1];
    let code = login_from(&broker, device, "sensor1@acme", "acme-password-1").await;
    assert_eq!(
        code,
        ReasonCode::Success,
        "the device was locked out by a guesser"
    );

    // Guesses from many sources at the other tenant's device: slowed, not locked.
    for i in 0..8u8 {
        let code = login_from(&broker, [127, 0, 1, i], "sensor1@globex", "guess").await;
        assert_eq!(code, ReasonCode::BadUserNameOrPassword);
    }
    let started = std::time::Instant::now();
    let code = login_from(
        &broker,
        [127, 0, 2, 1],
        "sensor1@globex",
        "globex-password-1",
    )
    .await;
    let waited = started.elapsed();
    assert_eq!(code, ReasonCode::Success, "slowed, never locked");
    assert!(
        waited >= std::time::Duration::from_millis(1400),
        "a slowed username waits before its password is checked: {waited:?}"
    );
    broker.stop().await;
}

/// The audit's finding: a verification in flight when the device's password changed put
/// the old password into the verification cache after the change had emptied it, so the
/// old password kept working until the cache entry expired.
#[tokio::test]
async fn a_password_changed_during_its_verification_is_not_remembered() {
    let broker = start(|c| c.auth.failure_delay_ms = 0, vec![]).await;
    // An imported hash far costlier than the broker's own (up to `check_hash`'s bound), so
    // the change below lands while the login is still verifying.
    let slow = messs_broker::hash_password(
        "slow-password-1",
        messs_broker::HashParams {
            memory_kib: 128 * 1024,
            iterations: 8,
            parallelism: 1,
            scram_iterations: 4096,
        },
    )
    .unwrap();
    broker
        .broker
        .registry("test", move |r| r.import_device("acme", "slow", &slow))
        .await
        .unwrap();
    let addr = broker.addr;
    let started = std::time::Instant::now();
    let in_flight = tokio::spawn(async move {
        let (_c, ack) = Raw::connect_with(
            addr,
            login(Protocol::V5, "s1", Some("slow@acme"), "slow-password-1"),
        )
        .await;
        ack.code
    });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    broker
        .broker
        .registry("admin", |r| {
            r.set_device_password("acme", "slow", Some("new-password-22"))
        })
        .await
        .unwrap();
    let changed_after = started.elapsed();
    // Checked against the hash it read, the old password was right.
    assert_eq!(in_flight.await.unwrap(), ReasonCode::Success);
    assert!(
        started.elapsed() > changed_after,
        "the change landed while the login was verifying"
    );
    // But it is not remembered: the old password is refused, the new one gets in.
    let (_c, ack) = Raw::connect_with(
        addr,
        login(Protocol::V5, "s2", Some("slow@acme"), "slow-password-1"),
    )
    .await;
    assert_eq!(ack.code, ReasonCode::BadUserNameOrPassword);
    connect_as(&broker, "s3", "slow@acme", "new-password-22").await;
    broker.stop().await;
}

/// The audit's finding: which path a refused login took — a password hashed against a
/// dummy, a token checked against the tenant's keys, nothing at all — showed in when the
/// refusal came (the delay was counted from the end of the work), telling which tenants
/// have token keys. A refusal now comes `failure_delay_ms` after the CONNECT, whatever the
/// work.
#[tokio::test]
async fn a_refusal_takes_as_long_whichever_path_the_credentials_took() {
    let broker = start(
        |c| {
            c.auth.failure_delay_ms = 1500;
            c.auth.argon2_memory_kib = 64 * 1024;
            c.auth.argon2_iterations = 6;
            c.limits.connect_timeout_secs = 10;
        },
        vec![],
    )
    .await;
    broker
        .broker
        .registry("test", |r| {
            r.put_jwt_key(
                "acme",
                messs_broker::storage::registry::JwtKey {
                    kid: "k".into(),
                    alg: "HS256".into(),
                    key: b"an hmac secret of the acme tenant".to_vec(),
                },
            )
        })
        .await
        .unwrap();
    // A JWT-shaped password: acme checks it as a token (no hashing); globex has no keys,
    // so it is hashed as a password.
    let token = "eyJhbGciOiJIUzI1NiIsImtpZCI6ImsifQ.eyJzdWIiOiJkZXYifQ.c2lnbmF0dXJl";
    let mut took = Vec::new();
    for user in ["dev@acme", "dev@globex"] {
        let started = std::time::Instant::now();
        let (_c, ack) =
            Raw::connect_with(broker.addr, login(Protocol::V5, "c", Some(user), token)).await;
        took.push(started.elapsed());
        assert_eq!(ack.code, ReasonCode::BadUserNameOrPassword, "{user}");
    }
    let (token_path, password_path) = (took[0], took[1]);
    assert!(
        token_path >= std::time::Duration::from_millis(1500),
        "{took:?}"
    );
    assert!(
        password_path < token_path + std::time::Duration::from_millis(250),
        "the hashed refusal came later than the token's: {took:?}"
    );
    broker.stop().await;
}

#[tokio::test]
async fn a_refused_login_waits_for_its_answer_and_bystanders_do_not() {
    let broker = start(
        |c| {
            c.auth.failure_delay_ms = 2500;
            c.auth.lockout_ip_threshold = 2;
            c.auth.lockout_base_secs = 60;
        },
        vec![rule(true, AclAction::Both, "t/#")],
    )
    .await;
    let mut bystander = connect_as(&broker, "bystander", "pub@acme", "pub-password-1").await;
    bystander.subscribe("t/#", QoS::AtLeastOnce).await;
    let addr = broker.addr;
    let guess = |i: u32| async move {
        let started = std::time::Instant::now();
        let (_r, ack) = Raw::connect_with(
            addr,
            login(
                Protocol::V5,
                "g",
                Some(&format!("guesser{i}@acme")),
                "guess",
            ),
        )
        .await;
        (ack.code, started.elapsed())
    };
    // Two wrong passwords (verified), then a third from the now locked-out address: each
    // answered only after the delay.
    for i in 0..2 {
        let (code, took) = guess(i).await;
        assert_eq!(code, ReasonCode::BadUserNameOrPassword);
        assert!(took >= std::time::Duration::from_millis(2500), "{took:?}");
    }
    let pending = tokio::spawn(guess(2));
    // While that refusal is held, the connected client is served.
    bystander.roundtrip("t/alive").await;
    assert!(!pending.is_finished(), "the refusal is still held");
    let (code, took) = pending.await.unwrap();
    assert_eq!(code, ReasonCode::Banned);
    assert!(took >= std::time::Duration::from_millis(2500), "{took:?}");
    broker.stop().await;
}

#[tokio::test]
async fn a_full_verification_queue_answers_server_busy_and_others_still_connect() {
    let broker = start(
        |c| {
            c.auth.verify_threads = 1;
            c.auth.verify_queue = 1;
            c.auth.lockout_ip_threshold = 1000;
            c.auth.lockout_user_threshold = 1000;
        },
        vec![rule(true, AclAction::Both, "t/#")],
    )
    .await;
    // A client connected before the flood keeps working through it.
    let mut bystander = connect_as(&broker, "bystander", "pub@acme", "pub-password-1").await;
    bystander.subscribe("t/#", QoS::AtLeastOnce).await;
    let addr = broker.addr;
    let flood: Vec<_> = (0..24)
        .map(|i| {
            tokio::spawn(async move {
                let user = format!("flood{i}@acme");
                let (_r, ack) =
                    Raw::connect_with(addr, login(Protocol::V5, "f", Some(&user), "guess")).await;
                ack.code
            })
        })
        .collect();
    bystander.roundtrip("t/alive").await;
    let mut busy = 0;
    for f in flood {
        match f.await.unwrap() {
            ReasonCode::ServerBusy => busy += 1,
            ReasonCode::BadUserNameOrPassword => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert!(
        busy > 0,
        "some of 24 concurrent logins found the queue of 1 full"
    );
    connect_as(&broker, "late", "sensor1@acme", "acme-password-1")
        .await
        .disconnect()
        .await;
    broker.stop().await;
}

#[tokio::test]
async fn a_tenant_sees_nothing_of_another_by_any_path() {
    let broker = start(|_| {}, vec![rule(true, AclAction::Both, "#")]).await;
    // acme: a wildcard, a shared and a dollar-free catch-all subscriber, same client id as
    // globex's client.
    let mut spy = connect_as(&broker, "dup", "sensor1@acme", "acme-password-1").await;
    spy.subscribe("#", QoS::AtLeastOnce).await;
    spy.subscribe_opts(
        2,
        "$share/g/#",
        messs_codec::SubscriptionOptions::new(QoS::AtLeastOnce),
        None,
    )
    .await;
    // globex: the same client id is another client (no takeover), with a will, a retained
    // message, a topic alias and odd topic bytes.
    let mut c = login(
        Protocol::V5,
        "dup",
        Some("sensor1@globex"),
        "globex-password-1",
    );
    c.will = Some(Will {
        topic: topic("status/dup"),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: Default::default(),
    });
    c.properties.topic_alias_maximum = Some(4);
    let (mut victim, ack) = Raw::connect_with(broker.addr, c).await;
    assert_eq!(ack.code, ReasonCode::Success);
    victim
        .publish(publish("x", b"globex-1", QosPid::AtLeastOnce(pid(1)), true))
        .await;
    let mut aliased = publish("a/b", b"globex-2", QosPid::AtLeastOnce(pid(2)), false);
    aliased.properties.topic_alias = std::num::NonZeroU16::new(1);
    victim.publish(aliased).await;
    for odd in ["acme/x", "/", "..", "+x", "$share/g/x", " #"] {
        if let Ok(t) = messs_codec::TopicName::new(odd) {
            let mut p = publish("x", b"globex-odd", QosPid::AtLeastOnce(pid(3)), false);
            p.topic = t;
            victim.publish(p).await;
        }
    }
    victim.drop_connection(); // the will fires, retained, in globex
                              // A new acme subscriber to everything gets no retained message from globex either.
    let mut late = connect_as(&broker, "late", "pub@acme", "pub-password-1").await;
    late.subscribe("#", QoS::AtLeastOnce).await;
    spy.expect_silence().await;
    late.expect_silence().await;
    // Still a working subscriber in its own tenant.
    late.publish(publish("mine", b"acme", QosPid::AtLeastOnce(pid(9)), false))
        .await;
    let got = spy.recv_publish_ack().await;
    assert_eq!(&got.payload[..], b"acme");
    // And globex's own subscriber sees its will and retained messages.
    let mut own = connect_as(&broker, "own", "sensor1@globex", "globex-password-1").await;
    own.subscribe("#", QoS::AtLeastOnce).await;
    let mut topics = vec![
        own.recv_publish_ack().await.topic.to_string(),
        own.recv_publish_ack().await.topic.to_string(),
    ];
    topics.sort();
    assert_eq!(topics, ["status/dup", "x"]);
    broker.stop().await;
}

#[tokio::test]
async fn acl_rules_govern_subscribe_publish_wills_and_retained_messages() {
    let mut no_retained_config = rule(false, AclAction::Publish, "devices/%c/config");
    no_retained_config.retain = Some(true);
    let mut public = rule(true, AclAction::Subscribe, "public/#");
    public.qos_mask = 0b011;
    let rules = vec![
        no_retained_config,
        rule(true, AclAction::Both, "devices/%c/#"),
        public,
    ];
    let broker = start(|_| {}, rules).await;
    let mut d1 = connect_as(&broker, "d1", "sensor1@acme", "acme-password-1").await;
    for (filter, qos, want) in [
        ("#", QoS::AtMostOnce, ReasonCode::NotAuthorized),
        ("devices/+/x", QoS::AtMostOnce, ReasonCode::NotAuthorized),
        ("devices/d2/#", QoS::AtMostOnce, ReasonCode::NotAuthorized),
        ("devices/d1/#", QoS::ExactlyOnce, ReasonCode::GrantedQoS2),
        ("public/#", QoS::AtLeastOnce, ReasonCode::GrantedQoS1),
        ("public/#", QoS::ExactlyOnce, ReasonCode::NotAuthorized),
        (
            "$share/g/devices/d2/#",
            QoS::AtMostOnce,
            ReasonCode::NotAuthorized,
        ),
    ] {
        let ack = d1.subscribe(filter, qos).await;
        assert_eq!(ack.reasons, [want], "{filter} {qos:?}");
    }
    // 3.1.1 gets 0x80 for a refused filter.
    let mut old = Raw::connect_with(
        broker.addr,
        login(Protocol::V3_1_1, "d9", Some("pub@acme"), "pub-password-1"),
    )
    .await
    .0;
    let ack = old.subscribe("#", QoS::AtMostOnce).await;
    assert_eq!(ack.reasons, [ReasonCode::UnspecifiedError]);

    // Publishing outside its rules: PUBACK 0x87, and nobody gets it.
    d1.send(&Packet::Publish(Box::new(publish(
        "devices/d2/cmd",
        b"no",
        QosPid::AtLeastOnce(pid(5)),
        false,
    ))))
    .await;
    match d1.recv().await {
        Packet::PubAck(r) => assert_eq!(r.reason, ReasonCode::NotAuthorized),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    // A retained message the rules forbid is refused and not retained; the same topic
    // without retain is allowed.
    d1.send(&Packet::Publish(Box::new(publish(
        "devices/d1/config",
        b"retained",
        QosPid::AtLeastOnce(pid(6)),
        true,
    ))))
    .await;
    match d1.recv().await {
        Packet::PubAck(r) => assert_eq!(r.reason, ReasonCode::NotAuthorized),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    d1.publish(publish(
        "devices/d1/config",
        b"live",
        QosPid::AtLeastOnce(pid(7)),
        false,
    ))
    .await;
    assert_eq!(&d1.recv_publish_ack().await.payload[..], b"live");
    // Subscribing again replays retained messages: there is none.
    let ack = d1.subscribe("devices/d1/#", QoS::AtLeastOnce).await;
    assert_eq!(ack.reasons, [ReasonCode::GrantedQoS1]);
    d1.expect_silence().await;

    // A will the rules forbid refuses the CONNECT.
    let mut c = login(Protocol::V5, "d3", Some("sensor1@acme"), "acme-password-1");
    c.will = Some(Will {
        topic: topic("devices/d4/status"),
        payload: Bytes::from_static(b"x"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Default::default(),
    });
    let (mut refused, ack) = Raw::connect_with(broker.addr, c).await;
    assert_eq!(ack.code, ReasonCode::NotAuthorized);
    refused.expect_closed().await;
    assert!(
        broker
            .stats
            .acl_publish_denied
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2
    );
    let data = broker.data.clone();
    broker.stop().await;
    let audit = audit(&data);
    assert!(has(&audit, "acl.deny", "subscribe \"#\""));
    assert!(has(&audit, "auth.failure", "will topic denied by the ACL"));
    assert!(has(&audit, "client.disconnect", "refused by the ACL"));
}

#[tokio::test]
async fn rule_changes_reach_live_connections_queued_messages_and_wills() {
    let mut publisher = rule(true, AclAction::Publish, "devices/#");
    publisher.subject = AclSubject::User("pub".into());
    let broker = start(
        |_| {},
        vec![publisher, rule(true, AclAction::Both, "devices/%c/#")],
    )
    .await;
    let h = broker.broker.clone();
    let mut c = login(Protocol::V5, "d1", Some("sensor1@acme"), "acme-password-1");
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(600);
    let (mut d1, _) = Raw::connect_with(broker.addr, c.clone()).await;
    d1.subscribe("devices/d1/#", QoS::AtLeastOnce).await;
    let mut p = connect_as(&broker, "p", "pub@acme", "pub-password-1").await;
    p.publish(publish(
        "devices/d1/a",
        b"a",
        QosPid::AtLeastOnce(pid(1)),
        false,
    ))
    .await;
    assert_eq!(&d1.recv_publish_ack().await.payload[..], b"a");

    // A deny inserted first: the live subscriber stops getting that topic.
    h.registry("test", |r| {
        r.add_rule(
            "acme",
            rule(false, AclAction::Subscribe, "devices/+/secret"),
            Some(0),
        )
    })
    .await
    .unwrap();
    p.publish(publish(
        "devices/d1/secret",
        b"s1",
        QosPid::AtLeastOnce(pid(2)),
        false,
    ))
    .await;
    p.publish(publish(
        "devices/d1/b",
        b"b",
        QosPid::AtLeastOnce(pid(3)),
        false,
    ))
    .await;
    assert_eq!(&d1.recv_publish_ack().await.payload[..], b"b");

    // Offline: what was queued under the old rules is checked at delivery.
    d1.disconnect().await;
    p.publish(publish(
        "devices/d1/secret",
        b"s2",
        QosPid::AtLeastOnce(pid(4)),
        false,
    ))
    .await;
    p.publish(publish(
        "devices/d1/c",
        b"c",
        QosPid::AtLeastOnce(pid(5)),
        false,
    ))
    .await;
    let (mut d1, ack) = Raw::connect_with(broker.addr, c).await;
    assert!(ack.session_present);
    assert_eq!(&d1.recv_publish_ack().await.payload[..], b"c");
    d1.expect_silence().await;
    assert!(
        broker
            .stats
            .acl_delivery_denied
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2
    );

    // The publisher loses its rule: its next publish is refused.
    let id = h
        .registry("test", |r| Ok(r.rules("acme")?[1].id))
        .await
        .unwrap();
    h.registry("test", move |r| r.remove_rule("acme", id))
        .await
        .unwrap();
    p.send(&Packet::Publish(Box::new(publish(
        "devices/d1/d",
        b"d",
        QosPid::AtLeastOnce(pid(6)),
        false,
    ))))
    .await;
    match p.recv().await {
        Packet::PubAck(r) => assert_eq!(r.reason, ReasonCode::NotAuthorized),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    d1.expect_silence().await;

    // Disabling the device disconnects it (v5 0x98) and it cannot log in again.
    h.registry("test", |r| r.set_device_enabled("acme", "sensor1", false))
        .await
        .unwrap();
    d1.expect_disconnect(ReasonCode::AdministrativeAction).await;
    let (_r, ack) = Raw::connect_with(
        broker.addr,
        login(Protocol::V5, "d1", Some("sensor1@acme"), "acme-password-1"),
    )
    .await;
    assert_eq!(ack.code, ReasonCode::BadUserNameOrPassword);
    // An operator's kick.
    assert!(h.kick("acme", "p"));
    p.expect_disconnect(ReasonCode::AdministrativeAction).await;
    drop(h); // the handle holds the store open
    let data = broker.data.clone();
    broker.stop().await;
    let audit = audit(&data);
    assert!(has(
        &audit,
        "client.kick",
        "client \"p\" of tenant \"acme\""
    ));
    assert!(has(
        &audit,
        "acl.add",
        "deny Subscribe \"devices/+/secret\""
    ));
    assert!(has(&audit, "acl.remove", "rule"));
    assert!(has(&audit, "client.disconnect", "kicked"));
}

mod tokens {
    use super::*;
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    use messs_broker::storage::registry::JwtKey;

    const SECRET: &[u8] = b"an hmac secret of the acme tenant";

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn token(alg: Algorithm, kid: &str, key: &EncodingKey, claims: serde_json::Value) -> String {
        let mut header = Header::new(alg);
        header.kid = Some(kid.into());
        encode(&header, &claims, key).unwrap()
    }

    fn b64(data: &[u8]) -> String {
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in data.chunks(3) {
            let n =
                chunk.iter().fold(0u32, |a, &b| a << 8 | u32::from(b)) << (8 * (3 - chunk.len()));
            for i in 0..=chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }

    async fn try_login(
        broker: &TestBroker,
        protocol: Protocol,
        user: &str,
        token: &str,
    ) -> ReasonCode {
        let (_raw, ack) =
            Raw::connect_with(broker.addr, login(protocol, "t", Some(user), token)).await;
        ack.code
    }

    #[tokio::test]
    async fn device_tokens_are_verified_with_the_tenants_keys_and_narrow_the_acl() {
        let broker = start(
            |c| c.auth.lockout_user_threshold = 100,
            vec![rule(true, AclAction::Both, "devices/%c/#")],
        )
        .await;
        let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let rsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        let keys = vec![
            ("hs", "HS256", SECRET.to_vec()),
            ("ec", "ES256", ec.public_key_pem().into_bytes()),
            ("ed", "EdDSA", ed.public_key_pem().into_bytes()),
            ("rsa", "RS256", rsa.public_key_pem().into_bytes()),
        ];
        let rsa_public = rsa.public_key_pem();
        broker
            .broker
            .registry("test", move |r| {
                for (kid, alg, key) in keys {
                    r.put_jwt_key(
                        "acme",
                        JwtKey {
                            kid: kid.into(),
                            alg: alg.into(),
                            key,
                        },
                    )?;
                }
                Ok(())
            })
            .await
            .unwrap();
        let claims =
            |sub: &str, exp: u64| serde_json::json!({ "sub": sub, "exp": exp, "aud": "acme" });
        let hs = EncodingKey::from_secret(SECRET);
        let good = now() + 600;
        // Each algorithm, at both protocol levels.
        let signed = [
            token(Algorithm::HS256, "hs", &hs, claims("dev", good)),
            token(
                Algorithm::ES256,
                "ec",
                &EncodingKey::from_ec_pem(ec.serialize_pem().as_bytes()).unwrap(),
                claims("dev", good),
            ),
            token(
                Algorithm::EdDSA,
                "ed",
                &EncodingKey::from_ed_pem(ed.serialize_pem().as_bytes()).unwrap(),
                claims("dev", good),
            ),
            token(
                Algorithm::RS256,
                "rsa",
                &EncodingKey::from_rsa_pem(rsa.serialize_pem().as_bytes()).unwrap(),
                claims("dev", good),
            ),
        ];
        for t in &signed {
            for protocol in [Protocol::V5, Protocol::V3_1_1] {
                assert_eq!(
                    try_login(&broker, protocol, "dev@acme", t).await,
                    ReasonCode::Success,
                    "{protocol:?} {t}"
                );
            }
        }
        // Refused: expired, not yet valid, forged, another subject, unknown kid, alg none,
        // algorithm confusion (the RSA public key used as an HMAC secret), another tenant.
        let header_none = b64(br#"{"alg":"none","kid":"hs"}"#);
        let body = b64(format!(r#"{{"sub":"dev","exp":{good},"aud":"acme"}}"#).as_bytes());
        let refused = [
            token(Algorithm::HS256, "hs", &hs, claims("dev", now() - 3600)),
            token(
                Algorithm::HS256,
                "hs",
                &hs,
                serde_json::json!({ "sub": "dev", "exp": good, "aud": "acme", "nbf": now() + 3600 }),
            ),
            token(
                Algorithm::HS256,
                "hs",
                &EncodingKey::from_secret(b"guessed"),
                claims("dev", good),
            ),
            token(Algorithm::HS256, "hs", &hs, claims("other", good)),
            token(Algorithm::HS256, "nope", &hs, claims("dev", good)),
            format!("{header_none}.{body}."),
            token(
                Algorithm::HS256,
                "rsa",
                &EncodingKey::from_secret(rsa_public.as_bytes()),
                claims("dev", good),
            ),
        ];
        for t in &refused {
            for protocol in [Protocol::V5, Protocol::V3_1_1] {
                assert_eq!(
                    try_login(&broker, protocol, "dev@acme", t).await,
                    ReasonCode::BadUserNameOrPassword,
                    "{protocol:?} {t}"
                );
            }
        }
        assert_eq!(
            try_login(&broker, Protocol::V5, "dev@globex", &signed[0]).await,
            ReasonCode::BadUserNameOrPassword,
            "globex has no such key"
        );

        // An acl claim narrows the tenant's rules.
        let scoped = token(
            Algorithm::HS256,
            "hs",
            &hs,
            serde_json::json!({
                "sub": "dev", "exp": good, "aud": ["acme"],
                "acl": { "publish": ["devices/d1/up"], "subscribe": ["devices/d1/down/#"] }
            }),
        );
        let (mut d1, ack) = Raw::connect_with(
            broker.addr,
            login(Protocol::V5, "d1", Some("dev@acme"), &scoped),
        )
        .await;
        assert_eq!(ack.code, ReasonCode::Success);
        let ack = d1.subscribe("devices/d1/#", QoS::AtLeastOnce).await;
        assert_eq!(
            ack.reasons,
            [ReasonCode::NotAuthorized],
            "wider than the token"
        );
        let ack = d1.subscribe("devices/d1/down/#", QoS::AtLeastOnce).await;
        assert_eq!(ack.reasons, [ReasonCode::GrantedQoS1]);
        d1.send(&Packet::Publish(Box::new(publish(
            "devices/d1/other",
            b"x",
            QosPid::AtLeastOnce(pid(1)),
            false,
        ))))
        .await;
        match d1.recv().await {
            Packet::PubAck(r) => assert_eq!(r.reason, ReasonCode::NotAuthorized),
            other => panic!("expected PUBACK, got {other:?}"),
        }
        d1.publish(publish(
            "devices/d1/up",
            b"ok",
            QosPid::AtLeastOnce(pid(2)),
            false,
        ))
        .await;
        let data = broker.data.clone();
        broker.stop().await;
        let audit = audit(&data);
        assert!(has(&audit, "client.connect", "(jwt, "));
        assert!(has(&audit, "auth.failure", "ExpiredSignature"));
        assert!(has(&audit, "auth.failure", "is not key \"rsa\"'s"));
    }

    /// The audit's lower findings on device tokens: a token was bound to no tenant, so two
    /// tenants trusting the same issuer's key accepted each other's tokens; and a token
    /// login ignored the device's client-id pattern and its disabled flag.
    #[tokio::test]
    async fn a_token_is_bound_to_its_tenant_and_its_devices_client_ids() {
        let broker = start(|c| c.auth.lockout_user_threshold = 100, vec![]).await;
        broker
            .broker
            .registry("test", |r| {
                // One issuer's key, trusted by both tenants.
                for t in ["acme", "globex"] {
                    r.put_jwt_key(
                        t,
                        JwtKey {
                            kid: "shared".into(),
                            alg: "HS256".into(),
                            key: SECRET.to_vec(),
                        },
                    )?;
                }
                r.add_device("acme", "pinned", None, Some("pinned-*"), &[])?;
                r.add_device("acme", "off", None, None, &[])?;
                r.set_device_enabled("acme", "off", false)
            })
            .await
            .unwrap();
        let hs = EncodingKey::from_secret(SECRET);
        let good = now() + 600;
        let mint = |claims: serde_json::Value| token(Algorithm::HS256, "shared", &hs, claims);
        let for_acme = mint(serde_json::json!({ "sub": "dev", "exp": good, "aud": "acme" }));
        assert_eq!(
            try_login(&broker, Protocol::V5, "dev@acme", &for_acme).await,
            ReasonCode::Success
        );
        assert_eq!(
            try_login(&broker, Protocol::V5, "dev@globex", &for_acme).await,
            ReasonCode::BadUserNameOrPassword,
            "acme's token used in globex"
        );
        let unbound = mint(serde_json::json!({ "sub": "dev", "exp": good }));
        assert_eq!(
            try_login(&broker, Protocol::V5, "dev@acme", &unbound).await,
            ReasonCode::BadUserNameOrPassword,
            "a token without aud"
        );
        // A registered device's client-id pattern holds for its tokens too.
        let pinned = mint(serde_json::json!({ "sub": "pinned", "exp": good, "aud": "acme" }));
        let connect = |id: &str| login(Protocol::V5, id, Some("pinned@acme"), &pinned);
        let (_c, ack) = Raw::connect_with(broker.addr, connect("someone-else")).await;
        assert_eq!(ack.code, ReasonCode::ClientIdentifierNotValid);
        let (_c, ack) = Raw::connect_with(broker.addr, connect("pinned-1")).await;
        assert_eq!(ack.code, ReasonCode::Success);
        // A token's own client_id claim narrows further.
        let narrowed = mint(serde_json::json!({
            "sub": "dev", "exp": good, "aud": "acme", "client_id": "%u-gw"
        }));
        let (_c, ack) = Raw::connect_with(
            broker.addr,
            login(Protocol::V5, "dev-other", Some("dev@acme"), &narrowed),
        )
        .await;
        assert_eq!(ack.code, ReasonCode::ClientIdentifierNotValid);
        let (_c, ack) = Raw::connect_with(
            broker.addr,
            login(Protocol::V5, "dev-gw", Some("dev@acme"), &narrowed),
        )
        .await;
        assert_eq!(ack.code, ReasonCode::Success);
        // A disabled device's tokens stop working.
        let off = mint(serde_json::json!({ "sub": "off", "exp": good, "aud": "acme" }));
        assert_eq!(
            try_login(&broker, Protocol::V5, "off@acme", &off).await,
            ReasonCode::BadUserNameOrPassword
        );
        broker.stop().await;
    }
}

mod tls {
    use super::*;
    use crate::pki::{Ca, Pki};
    use rustls::pki_types::ServerName;

    type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

    async fn tls_open(
        addr: std::net::SocketAddr,
        c: &tokio_rustls::TlsConnector,
    ) -> std::io::Result<Tls> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        c.connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
    }

    /// Whether a client gets as far as a CONNACK (false if the TLS handshake, the CONNECT
    /// write or the read fails, or the connection closes first).
    async fn gets_connack(addr: std::net::SocketAddr, c: &tokio_rustls::TlsConnector) -> bool {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Ok(mut s) = tls_open(addr, c).await else {
            return false;
        };
        let mut out = bytes::BytesMut::new();
        let connect = connect_packet(Protocol::V5, "probe", true);
        messs_codec::encode(&Packet::Connect(Box::new(connect)), Protocol::V5, &mut out).unwrap();
        if s.write_all(&out).await.is_err() {
            return false;
        }
        let mut buf = bytes::BytesMut::new();
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            loop {
                let limits = messs_codec::Limits::default();
                if let Ok(Some(p)) = messs_codec::decode(&mut buf, Protocol::V5, &limits) {
                    return matches!(p, Packet::ConnAck(_));
                }
                match s.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return false,
                    Ok(_) => {}
                }
            }
        })
        .await;
        read.unwrap_or(false)
    }

    /// A TLS listener (tenant from the username or certificate), deny by default.
    async fn start_tls(pki: &Pki, adjust: impl FnOnce(&mut Config)) -> TestBroker {
        let tls = pki.tls_config();
        let acme_ca = pki.acme.cert.der().to_vec();
        let globex_ca = pki.globex.cert.der().to_vec();
        let broker = start(
            move |c| {
                c.listeners[0].transport = messs_broker::Transport::Tls;
                c.listeners[0].tls = Some(tls);
                adjust(c);
            },
            vec![rule(true, AclAction::Both, "devices/%u/#")],
        )
        .await;
        broker
            .broker
            .registry("test", move |r| {
                r.add_ca("acme", &acme_ca)?;
                r.add_ca("globex", &globex_ca)?;
                Ok(())
            })
            .await
            .unwrap();
        broker
    }

    #[tokio::test]
    async fn tls_13_with_post_quantum_key_exchange_and_password_login() {
        let pki = Pki::new();
        let broker = start_tls(&pki, |_| {}).await;
        let stream = tls_open(broker.addr, &pki.client(None, false))
            .await
            .unwrap();
        let (_, conn) = stream.get_ref();
        assert_eq!(
            conn.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        assert_eq!(
            conn.negotiated_key_exchange_group().map(|g| g.name()),
            Some(rustls::NamedGroup::X25519MLKEM768),
            "the hybrid post-quantum group is accepted"
        );
        let (mut c, ack) = Raw::over(Box::new(stream))
            .connect(login(
                Protocol::V5,
                "pw",
                Some("sensor1@acme"),
                "acme-password-1",
            ))
            .await;
        assert_eq!(ack.code, ReasonCode::Success);
        c.subscribe("devices/sensor1/#", QoS::AtLeastOnce).await;
        c.roundtrip("devices/sensor1/x").await;
        // TLS 1.2 is refused unless the listener allows it.
        assert!(tls_open(broker.addr, &pki.client(None, true))
            .await
            .is_err());
        broker.stop().await;
        // A socket that never finishes the TLS handshake is closed at the connect timeout
        // (1 s on this broker).
        let broker = start_tls(&pki, |c| c.limits.connect_timeout_secs = 1).await;
        let mut idle = tokio::net::TcpStream::connect(broker.addr).await.unwrap();
        let mut buf = [0u8; 1];
        let closed = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            tokio::io::AsyncReadExt::read(&mut idle, &mut buf).await
        })
        .await;
        assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
        broker.stop().await;
    }

    #[tokio::test]
    async fn a_client_certificate_logs_in_to_the_tenant_of_its_ca() {
        let pki = Pki::new();
        let broker = start_tls(&pki, |_| {}).await;
        let acme_meter = pki.acme.issue("meter-7", vec![], false);
        let globex_meter = pki.globex.issue("meter-7", vec![], false);
        let revoked = pki.acme.issue("meter-8", vec![], false);
        let stranger = Ca::new("not trusted").issue("meter-7", vec![], false);
        let revoked_der = revoked.0.der().to_vec();
        broker
            .broker
            .registry("test", move |r| {
                r.add_device("acme", "meter-7", None, None, &[])?;
                r.add_device("acme", "meter-8", None, None, &[])?;
                r.add_device("globex", "meter-7", None, None, &[])?;
                r.revoke_cert("acme", &revoked_der).map(|_| ())
            })
            .await
            .unwrap();

        // Same name, two tenants: each lands in its CA's tenant. The username sent (if any)
        // is ignored: the certificate is the credential.
        let s = tls_open(broker.addr, &pki.client(Some(&acme_meter), false))
            .await
            .unwrap();
        let mut c = connect_packet(Protocol::V5, "m7", true);
        c.username = Some("someone@globex".into());
        let (mut acme_c, ack) = Raw::over(Box::new(s)).connect(c).await;
        assert_eq!(ack.code, ReasonCode::Success);
        acme_c
            .subscribe("devices/meter-7/#", QoS::AtLeastOnce)
            .await;
        let s = tls_open(broker.addr, &pki.client(Some(&globex_meter), false))
            .await
            .unwrap();
        let (mut globex_c, ack) = Raw::over(Box::new(s))
            .connect(connect_packet(Protocol::V3_1_1, "m7", true))
            .await;
        assert_eq!(ack.code, ReasonCode::Success);
        globex_c
            .publish(publish(
                "devices/meter-7/x",
                b"globex",
                QosPid::AtLeastOnce(pid(1)),
                false,
            ))
            .await;
        acme_c.expect_silence().await;
        // The certificate's name is not a password device.
        let s = tls_open(broker.addr, &pki.client(None, false))
            .await
            .unwrap();
        let (_pw, ack) = Raw::over(Box::new(s))
            .connect(login(Protocol::V5, "p", Some("meter-7@acme"), "x"))
            .await;
        assert_eq!(ack.code, ReasonCode::BadUserNameOrPassword);
        // The certificate client works in acme (its ACL: devices/%u/#, %u = meter-7).
        acme_c.roundtrip("devices/meter-7/y").await;

        // Revoked: refused at CONNECT, both protocol levels.
        for protocol in [Protocol::V5, Protocol::V3_1_1] {
            let s = tls_open(broker.addr, &pki.client(Some(&revoked), false))
                .await
                .unwrap();
            let (_c, ack) = Raw::over(Box::new(s))
                .connect(connect_packet(protocol, "m8", true))
                .await;
            assert_eq!(ack.code, ReasonCode::BadUserNameOrPassword, "{protocol:?}");
        }
        // A CA no tenant trusts: the TLS handshake itself fails (TLS 1.3 client auth: the
        // client learns at its first read), and no CONNACK ever comes.
        assert!(!gets_connack(broker.addr, &pki.client(Some(&stranger), false)).await);
        // Disabling a device named by certificates refuses it too.
        broker
            .broker
            .registry("test", |r| r.set_device_enabled("acme", "meter-7", false))
            .await
            .unwrap();
        acme_c
            .expect_disconnect(ReasonCode::AdministrativeAction)
            .await;
        let s = tls_open(broker.addr, &pki.client(Some(&acme_meter), false))
            .await
            .unwrap();
        let (_c, ack) = Raw::over(Box::new(s))
            .connect(connect_packet(Protocol::V5, "m7", true))
            .await;
        assert_eq!(ack.code, ReasonCode::BadUserNameOrPassword);
        let data = broker.data.clone();
        broker.stop().await;
        let audit = audit(&data);
        assert!(has(&audit, "client.connect", "meter-7@acme client \"m7\""));
        assert!(has(
            &audit,
            "client.connect",
            "meter-7@globex client \"m7\""
        ));
        assert!(has(&audit, "auth.failure", "certificate revoked"));
        assert!(has(&audit, "cert.revoke", "tenant \"acme\""));
    }

    #[tokio::test]
    async fn a_reload_serves_the_new_certificate_and_keeps_live_connections() {
        let pki = Pki::new();
        let broker = start_tls(&pki, |c| {
            c.listeners[0].tls.as_mut().unwrap().require_client_cert = true
        })
        .await;
        broker
            .broker
            .registry("test", |r| r.add_device("acme", "meter-7", None, None, &[]))
            .await
            .unwrap();
        let meter = pki.acme.issue("meter-7", vec![], false);
        let s = tls_open(broker.addr, &pki.client(Some(&meter), false))
            .await
            .unwrap();
        let first = s.get_ref().1.peer_certificates().unwrap()[0].to_vec();
        let (mut live, ack) = Raw::over(Box::new(s))
            .connect(connect_packet(Protocol::V5, "m7", true))
            .await;
        assert_eq!(ack.code, ReasonCode::Success);
        live.subscribe("devices/meter-7/#", QoS::AtLeastOnce).await;
        // Without a certificate: refused in the handshake on this listener.
        assert!(!gets_connack(broker.addr, &pki.client(None, false)).await);

        let new_der = pki.write_server_cert("localhost");
        assert_eq!(broker.broker.reload_tls().unwrap(), 1);
        let s = tls_open(broker.addr, &pki.client(Some(&meter), false))
            .await
            .unwrap();
        let second = s.get_ref().1.peer_certificates().unwrap()[0].to_vec();
        assert_ne!(first, second);
        assert_eq!(second, new_der);
        live.roundtrip("devices/meter-7/still-here").await;
        // A broken file keeps the old certificate.
        std::fs::write(pki.dir.path().join("server.key"), "not a key").unwrap();
        assert!(broker.broker.reload_tls().is_err());
        let s = tls_open(broker.addr, &pki.client(Some(&meter), false))
            .await
            .unwrap();
        assert_eq!(
            s.get_ref().1.peer_certificates().unwrap()[0].to_vec(),
            new_der
        );
        broker.stop().await;
    }

    /// Connects over TLS with `identity` and returns the CONNACK's code (`None`: no
    /// CONNACK came).
    async fn cert_login(
        broker: &TestBroker,
        pki: &Pki,
        identity: &(rcgen::Certificate, rcgen::KeyPair),
        client_id: &str,
    ) -> Option<(Raw, ReasonCode)> {
        let s = tls_open(broker.addr, &pki.client(Some(identity), false))
            .await
            .ok()?;
        let (raw, ack) = Raw::over(Box::new(s))
            .try_connect(connect_packet(Protocol::V5, client_id, true))
            .await?;
        Some((raw, ack.code))
    }

    /// The audit's first high finding: globex's admin uploads a copy of acme's public
    /// device CA (same subject and key, a new serial, signed by globex's own key). The
    /// registry refused only an identical DER, and the certificate-to-tenant lookup took
    /// the first tenant of a list that reordered itself, so after acme's next registry
    /// change acme's devices logged in to globex and received its commands.
    #[tokio::test]
    async fn a_copy_of_another_tenants_ca_is_refused_and_never_captures_its_devices() {
        let pki = Pki::new();
        let broker = start_tls(&pki, |_| {}).await;
        let forged = pki.acme.forged_copy(&pki.globex);
        assert_ne!(forged, pki.acme.cert.der().to_vec(), "a different DER");
        let meter = pki.acme.issue("meter-7", vec![], false);
        let f = forged.clone();
        let err = broker
            .broker
            .registry("globex-admin", move |r| {
                r.add_device("acme", "meter-7", None, None, &[])?;
                // The attacker registers the same name in its own tenant.
                r.add_device("globex", "meter-7", None, None, &[])?;
                r.add_ca("globex", &f).map(|_| ())
            })
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("another tenant already trusts"), "{err}");
        assert!(!err.contains("acme"), "the refusal names no tenant: {err}");
        // The identical DER is refused the same way.
        let acme_der = pki.acme.cert.der().to_vec();
        assert!(broker
            .broker
            .registry("globex-admin", move |r| r
                .add_ca("globex", &acme_der)
                .map(|_| ()))
            .await
            .is_err());
        // acme changes its registry (what reordered the old list): its device still lands
        // in acme.
        broker
            .broker
            .registry("acme-admin", |r| {
                r.add_device("acme", "other", None, None, &[])
            })
            .await
            .unwrap();
        let (mut acme_c, code) = cert_login(&broker, &pki, &meter, "m7").await.unwrap();
        assert_eq!(code, ReasonCode::Success);
        acme_c
            .subscribe("devices/meter-7/#", QoS::AtLeastOnce)
            .await;
        acme_c.roundtrip("devices/meter-7/in-acme").await;
        acme_c.disconnect().await;
        let data = broker.data.clone();
        broker.stop().await;

        // A store that holds such a copy already (planted before this fix, or written
        // around the registry): a certificate two tenants would take logs in to neither,
        // whichever order the tenants load in.
        {
            let store = messs_broker::open_store(&messs_broker::StorageConfig {
                data_dir: data.path().to_path_buf(),
                ..Default::default()
            })
            .unwrap();
            store.add_ca("globex", &forged).unwrap();
        }
        let tls = pki.tls_config();
        let broker = TestBroker::start_in(data.clone(), move |c| {
            secured(c);
            c.listeners[0].transport = messs_broker::Transport::Tls;
            c.listeners[0].tls = Some(tls);
        })
        .await;
        for round in 0..2 {
            if let Some((_c, code)) = cert_login(&broker, &pki, &meter, "m7").await {
                assert_ne!(code, ReasonCode::Success, "round {round}: captured");
            }
            // Each tenant's CAs reloaded, in both orders.
            let order = if round == 0 {
                ["globex", "acme"]
            } else {
                ["acme", "globex"]
            };
            broker
                .broker
                .registry("test", move |r| {
                    for t in order {
                        r.add_rule(t, rule(true, AclAction::Both, "x/#"), None)?;
                    }
                    Ok(())
                })
                .await
                .unwrap();
        }
        // globex's own devices are not affected.
        let globex_meter = pki.globex.issue("meter-7", vec![], false);
        let (_g, code) = cert_login(&broker, &pki, &globex_meter, "g7")
            .await
            .unwrap();
        assert_eq!(code, ReasonCode::Success);
        broker.stop().await;
        let audit = audit(&data);
        assert!(has(&audit, "ca.refused", "tenant \"globex\""));
        assert!(has(&audit, "auth.failure", "more than one tenant trusts"));
        assert!(!has(
            &audit,
            "client.connect",
            "meter-7@globex client \"m7\""
        ));
    }

    /// A certificate logs in only as a device that exists and is enabled: removing the
    /// device keeps it out even though its certificate still verifies. A tenant may turn
    /// on auto-registration instead, and each registration is audited.
    #[tokio::test]
    async fn a_removed_device_cannot_log_back_in_with_its_certificate() {
        let pki = Pki::new();
        let broker = start_tls(&pki, |_| {}).await;
        broker
            .broker
            .registry("test", |r| r.add_device("acme", "meter-7", None, None, &[]))
            .await
            .unwrap();
        let meter = pki.acme.issue("meter-7", vec![], false);
        let (mut live, code) = cert_login(&broker, &pki, &meter, "m7").await.unwrap();
        assert_eq!(code, ReasonCode::Success);
        broker
            .broker
            .registry("test", |r| r.remove_device("acme", "meter-7").map(|_| ()))
            .await
            .unwrap();
        live.expect_disconnect(ReasonCode::AdministrativeAction)
            .await;
        let (_c, code) = cert_login(&broker, &pki, &meter, "m7").await.unwrap();
        assert_eq!(code, ReasonCode::BadUserNameOrPassword, "removed device");
        // A name that was never a device: refused too, until the tenant opts in.
        let new_meter = pki.acme.issue("meter-9", vec![], false);
        let (_c, code) = cert_login(&broker, &pki, &new_meter, "m9").await.unwrap();
        assert_eq!(code, ReasonCode::BadUserNameOrPassword, "unknown device");
        broker
            .broker
            .registry("acme-admin", |r| r.set_cert_auto_register("acme", true))
            .await
            .unwrap();
        let (mut c, code) = cert_login(&broker, &pki, &new_meter, "m9").await.unwrap();
        assert_eq!(code, ReasonCode::Success, "auto-registered");
        c.subscribe("devices/meter-9/#", QoS::AtLeastOnce).await;
        c.roundtrip("devices/meter-9/x").await;
        let registered = broker
            .broker
            .registry("test", |r| r.device("acme", "meter-9"))
            .await
            .unwrap();
        assert!(registered.is_some_and(|d| d.enabled && d.password_hash.is_none()));
        // globex did not opt in: its unknown names stay out.
        let stranger = pki.globex.issue("meter-9", vec![], false);
        let (_c, code) = cert_login(&broker, &pki, &stranger, "g9").await.unwrap();
        assert_eq!(code, ReasonCode::BadUserNameOrPassword);
        let data = broker.data.clone();
        broker.stop().await;
        let audit = audit(&data);
        assert!(has(
            &audit,
            "auth.failure",
            "meter-7@acme from 127.0.0.1 (certificate): no such device"
        ));
        assert!(has(
            &audit,
            "tenant.cert_auto_register",
            "tenant \"acme\": on"
        ));
        assert!(has(
            &audit,
            "device.auto_register",
            "device \"meter-9\" in tenant \"acme\""
        ));
    }

    /// The operator's username ban applies to the identity authentication settles on: a
    /// certificate login sends no User Name, and once slipped past a ban on `NAME@TENANT`.
    #[tokio::test]
    async fn a_banned_username_stays_out_when_it_logs_in_with_a_certificate() {
        let pki = Pki::new();
        let broker = start_tls(&pki, |c| c.bans.usernames = vec!["meter-7@acme".into()]).await;
        broker
            .broker
            .registry("test", |r| {
                r.add_device("acme", "meter-7", None, None, &[])?;
                r.add_device("acme", "meter-8", None, None, &[])
            })
            .await
            .unwrap();
        let banned = pki.acme.issue("meter-7", vec![], false);
        let (_c, code) = cert_login(&broker, &pki, &banned, "m7").await.unwrap();
        assert_eq!(code, ReasonCode::Banned);
        let other = pki.acme.issue("meter-8", vec![], false);
        let (_c, code) = cert_login(&broker, &pki, &other, "m8").await.unwrap();
        assert_eq!(code, ReasonCode::Success);
        broker.stop().await;
    }
}

#[tokio::test]
async fn each_tenant_sees_only_its_own_sys_statistics() {
    let mut sys = rule(true, AclAction::Subscribe, "$SYS/#");
    sys.subject = AclSubject::User("sensor1".into());
    let broker = start(
        |c| c.sys.interval_secs = 1,
        vec![sys, rule(true, AclAction::Both, "#")],
    )
    .await;
    let mut acme = connect_as(&broker, "watch", "sensor1@acme", "acme-password-1").await;
    let ack = acme.subscribe("#", QoS::AtMostOnce).await;
    assert_eq!(ack.reasons, [ReasonCode::Success]);
    let mut g1 = connect_as(&broker, "g1", "sensor1@globex", "globex-password-1").await;
    let _g2 = connect_as(&broker, "g2", "sensor1@globex", "globex-password-1").await;
    let ack = acme
        .subscribe_opts(
            2,
            "$SYS/broker/clients/connected",
            messs_codec::SubscriptionOptions::new(QoS::AtMostOnce),
            None,
        )
        .await;
    assert_eq!(ack.reasons, [ReasonCode::Success]);
    // globex's `#` rule does not reach $SYS: it needs a rule of its own.
    let ack = g1.subscribe("$SYS/#", QoS::AtMostOnce).await;
    assert_eq!(ack.reasons, [ReasonCode::NotAuthorized]);
    broker
        .broker
        .registry("test", |r| {
            r.add_rule("globex", rule(true, AclAction::Subscribe, "$SYS/#"), None)
                .map(|_| ())
        })
        .await
        .unwrap();
    let ack = g1
        .subscribe("$SYS/broker/clients/connected", QoS::AtMostOnce)
        .await;
    assert_eq!(ack.reasons, [ReasonCode::Success]);
    // `#` never matches $SYS; the subscription to $SYS/... gets the tenant's own count.
    let p = acme.recv_publish().await;
    assert_eq!(p.topic.as_str(), "$SYS/broker/clients/connected");
    assert_eq!(&p.payload[..], b"1", "acme has one client");
    let p = g1.recv_publish().await;
    assert_eq!(&p.payload[..], b"2", "globex has two");
    // A device without the rule cannot subscribe to $SYS, nor anyone publish there.
    let mut other = connect_as(&broker, "o", "pub@acme", "pub-password-1").await;
    let ack = other.subscribe("$SYS/#", QoS::AtMostOnce).await;
    assert_eq!(ack.reasons, [ReasonCode::NotAuthorized]);
    other
        .send(&Packet::Publish(Box::new(publish(
            "$SYS/broker/clients/connected",
            b"999",
            QosPid::AtLeastOnce(pid(1)),
            true,
        ))))
        .await;
    match other.recv().await {
        Packet::PubAck(r) => assert_eq!(r.reason, ReasonCode::NotAuthorized),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    broker.stop().await;
}

/// MQTT 5 enhanced authentication with SCRAM-SHA-256: the client side is written here
/// from RFC 5802 (the server's side is checked against RFC 7677's example in its unit
/// tests), so the two meet only on the wire.
mod scram {
    use super::*;
    use aws_lc_rs::{digest, hmac, pbkdf2};
    use base64::engine::general_purpose::STANDARD as B64;
    use base64::Engine;
    use messs_codec::{Auth, AuthProperties};

    fn mac(key: &[u8], data: &[u8]) -> Vec<u8> {
        hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data)
            .as_ref()
            .to_vec()
    }

    fn scram_connect(client_id: &str, first: &str) -> Connect {
        let mut c = connect_packet(Protocol::V5, client_id, true);
        c.properties.authentication_method = Some("SCRAM-SHA-256".into());
        c.properties.authentication_data = Some(Bytes::copy_from_slice(first.as_bytes()));
        c
    }

    fn auth(data: String) -> Packet {
        Packet::Auth(Box::new(Auth {
            reason: ReasonCode::ContinueAuthentication,
            properties: AuthProperties {
                authentication_method: Some("SCRAM-SHA-256".into()),
                authentication_data: Some(Bytes::from(data)),
                ..AuthProperties::default()
            },
        }))
    }

    /// The outcome of a client-side SCRAM login.
    struct Outcome {
        raw: Raw,
        ack: messs_codec::ConnAck,
        /// Whether the CONNACK's server signature is the one the password implies.
        server_proven: bool,
    }

    /// The two tenants of `start`, with acme's `sensor1` and `pub` opted in to SCRAM (at
    /// RFC 7677's minimum iterations, to keep debug tests fast); globex's `sensor1` is not.
    async fn start_scram(adjust: impl FnOnce(&mut Config), rules: Vec<RuleSpec>) -> TestBroker {
        let broker = start(
            |c| {
                c.auth.scram_iterations = 4096;
                adjust(c)
            },
            rules,
        )
        .await;
        broker
            .broker
            .registry("test", |r| {
                r.set_device_scram("acme", "sensor1", Some("acme-password-1"))?;
                r.set_device_scram("acme", "pub", Some("pub-password-1"))
            })
            .await
            .unwrap();
        broker
    }

    async fn login(broker: &TestBroker, client_id: &str, user: &str, password: &str) -> Outcome {
        let mut nonce = [0u8; 18];
        aws_lc_rs::rand::fill(&mut nonce).unwrap();
        let client_nonce = B64.encode(nonce);
        let bare = format!(
            "n={},r={client_nonce}",
            user.replace('=', "=3D").replace(',', "=2C")
        );
        let mut raw = Raw::open(broker.addr).await;
        raw.protocol = Protocol::V5;
        raw.send(&Packet::Connect(Box::new(scram_connect(
            client_id,
            &format!("n,,{bare}"),
        ))))
        .await;
        let challenge = match raw.recv().await {
            Packet::Auth(a) => *a,
            other => panic!("expected AUTH, got {other:?}"),
        };
        assert_eq!(challenge.reason, ReasonCode::ContinueAuthentication);
        assert_eq!(
            challenge.properties.authentication_method.as_deref(),
            Some("SCRAM-SHA-256")
        );
        let server_first =
            String::from_utf8(challenge.properties.authentication_data.unwrap().to_vec()).unwrap();
        let mut r = None;
        let mut s = None;
        let mut i = None;
        for attr in server_first.split(',') {
            match attr.split_at(2) {
                ("r=", v) => r = Some(v.to_owned()),
                ("s=", v) => s = Some(B64.decode(v).unwrap()),
                ("i=", v) => i = Some(v.parse::<u32>().unwrap()),
                _ => {}
            }
        }
        let (r, s, i) = (r.unwrap(), s.unwrap(), i.unwrap());
        assert!(r.starts_with(&client_nonce) && r.len() > client_nonce.len());
        assert!(i >= 4096);
        let mut salted = [0u8; 32];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            std::num::NonZeroU32::new(i).unwrap(),
            &s,
            password.as_bytes(),
            &mut salted,
        );
        let client_key = mac(&salted, b"Client Key");
        let stored_key = digest::digest(&digest::SHA256, &client_key);
        let without_proof = format!("c=biws,r={r}");
        let auth_message = format!("{bare},{server_first},{without_proof}");
        let signature = mac(stored_key.as_ref(), auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(a, b)| a ^ b)
            .collect();
        raw.send(&auth(format!("{without_proof},p={}", B64.encode(proof))))
            .await;
        let ack = match raw.recv().await {
            Packet::ConnAck(a) => *a,
            other => panic!("expected CONNACK, got {other:?}"),
        };
        let server_key = mac(&salted, b"Server Key");
        let expected = format!(
            "v={}",
            B64.encode(mac(&server_key, auth_message.as_bytes()))
        );
        let server_proven = ack.properties.authentication_method.as_deref()
            == Some("SCRAM-SHA-256")
            && ack.properties.authentication_data.as_deref() == Some(expected.as_bytes());
        Outcome {
            raw,
            ack,
            server_proven,
        }
    }

    #[tokio::test]
    async fn a_device_logs_in_with_scram_and_wrong_or_unknown_credentials_are_refused() {
        let broker = start_scram(
            |c| c.auth.lockout_user_threshold = 3,
            vec![rule(true, AclAction::Both, "t/#")],
        )
        .await;
        broker
            .broker
            .registry("test", |r| {
                // An imported hash has no SCRAM verifier.
                let hash = r.hash("imported-password-1")?;
                r.import_device("acme", "imported", &hash)
            })
            .await
            .unwrap();
        let runs = broker.broker.password_verifications();
        let mut ok = login(&broker, "s1", "sensor1@acme", "acme-password-1").await;
        assert_eq!(ok.ack.code, ReasonCode::Success);
        assert!(ok.server_proven, "the server proved it knows the verifier");
        ok.raw.subscribe("t/#", QoS::AtLeastOnce).await;
        ok.raw.roundtrip("t/scram").await;
        // Wrong password, unknown device, unknown tenant, imported device, a device that
        // did not opt in to SCRAM (no verifier is stored for it): the same exchange and
        // the same answer.
        for (user, password) in [
            ("sensor1@acme", "wrong-password"),
            ("nobody@acme", "acme-password-1"),
            ("sensor1@nowhere", "acme-password-1"),
            ("imported@acme", "imported-password-1"),
            ("sensor1@globex", "globex-password-1"),
        ] {
            let refused = login(&broker, "s2", user, password).await;
            assert_eq!(
                refused.ack.code,
                ReasonCode::BadUserNameOrPassword,
                "{user}"
            );
            assert!(!refused.server_proven);
        }
        // No argon2 ran for any of it: SCRAM costs the broker HMACs only.
        assert_eq!(broker.broker.password_verifications(), runs);
        // The device logged in before is unaffected by the refusals; re-authentication is
        // not offered and ends its connection.
        ok.raw.roundtrip("t/still").await;
        ok.raw.send(&auth("n,,n=sensor1@acme,r=again".into())).await;
        ok.raw
            .expect_disconnect(ReasonCode::ImplementationSpecificError)
            .await;
        let data = broker.data.clone();
        broker.stop().await;
        let audit = audit(&data);
        assert!(has(&audit, "client.connect", "sensor1@acme client \"s1\""));
        assert!(has(&audit, "client.connect", "scram-sha-256"));
        assert!(has(
            &audit,
            "auth.failure",
            "sensor1@acme from 127.0.0.1 (SCRAM): wrong proof"
        ));
        assert!(has(
            &audit,
            "auth.failure",
            "imported@acme from 127.0.0.1 (SCRAM)"
        ));
    }

    /// The operator's username ban once applied only to the CONNECT's User Name, which a
    /// SCRAM login leaves out (the user is named inside the exchange).
    #[tokio::test]
    async fn a_banned_username_stays_out_when_it_logs_in_with_scram() {
        let broker = start_scram(
            |c| c.bans.usernames = vec!["sensor1@acme".into()],
            vec![rule(true, AclAction::Both, "t/#")],
        )
        .await;
        let banned = login(&broker, "s1", "sensor1@acme", "acme-password-1").await;
        assert_eq!(banned.ack.code, ReasonCode::Banned);
        let other = login(&broker, "s2", "pub@acme", "pub-password-1").await;
        assert_eq!(other.ack.code, ReasonCode::Success);
        broker.stop().await;
    }

    /// The salt the broker's first SCRAM message gives `user`.
    async fn server_salt(broker: &TestBroker, user: &str) -> String {
        let (mut raw, _) = (Raw::open(broker.addr).await, ());
        raw.protocol = Protocol::V5;
        raw.send(&Packet::Connect(Box::new(scram_connect(
            "salt",
            &format!("n,,n={user},r=fixednonce"),
        ))))
        .await;
        match raw.recv().await {
            Packet::Auth(a) => {
                let first = String::from_utf8(
                    a.properties
                        .authentication_data
                        .unwrap_or_default()
                        .to_vec(),
                )
                .unwrap();
                first
                    .split(',')
                    .find_map(|attr| attr.strip_prefix("s="))
                    .unwrap()
                    .to_owned()
            }
            other => panic!("expected AUTH, got {other:?}"),
        }
    }

    /// The audit's finding: an unknown device's decoy salt came from a per-process key, so
    /// it changed at every restart while a real device's stayed: two looks across a
    /// restart told which usernames exist. The decoy key is now the data directory's.
    #[tokio::test]
    async fn an_unknown_devices_decoy_salt_survives_a_restart_like_a_real_one() {
        let broker = start_scram(|_| {}, vec![]).await;
        let users = ["sensor1@acme", "nobody@acme", "sensor1@globex", "x@nowhere"];
        let mut before = Vec::new();
        for u in users {
            before.push(server_salt(&broker, u).await);
        }
        let data = broker.data.clone();
        broker.stop().await;
        let broker = TestBroker::start_in(data, |c| {
            secured(c);
            c.auth.scram_iterations = 4096;
        })
        .await;
        for (u, salt) in users.iter().zip(&before) {
            assert_eq!(&server_salt(&broker, u).await, salt, "{u}");
        }
        broker.stop().await;
    }

    #[tokio::test]
    async fn scram_failures_lock_out_and_a_broken_exchange_is_a_protocol_error() {
        let broker = start_scram(|c| c.auth.lockout_user_threshold = 2, vec![]).await;
        for _ in 0..2 {
            let r = login(&broker, "s", "sensor1@acme", "guess").await;
            assert_eq!(r.ack.code, ReasonCode::BadUserNameOrPassword);
        }
        // Locked: refused at the first message, before any challenge.
        let (_raw, ack) = Raw::connect_with(
            broker.addr,
            scram_connect("s", "n,,n=sensor1@acme,r=abcdef"),
        )
        .await;
        assert_eq!(ack.code, ReasonCode::Banned);
        // Another device, a malformed first message: refused like bad credentials.
        let (_raw, ack) = Raw::connect_with(
            broker.addr,
            scram_connect("s", "p=tls-unique,,n=pub@acme,r=x"),
        )
        .await;
        assert_eq!(ack.code, ReasonCode::BadUserNameOrPassword);
        // Answering the challenge with anything but AUTH breaks the exchange.
        let mut raw = Raw::open(broker.addr).await;
        raw.send(&Packet::Connect(Box::new(scram_connect(
            "s",
            "n,,n=pub@acme,r=abcdef",
        ))))
        .await;
        assert!(matches!(raw.recv().await, Packet::Auth(_)));
        raw.send(&Packet::PingReq).await;
        match raw.recv().await {
            Packet::ConnAck(a) => assert_eq!(a.code, ReasonCode::ProtocolError),
            other => panic!("expected CONNACK, got {other:?}"),
        }
        broker.stop().await;
    }
}
