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

/// The outside review's finding: failures were counted when their check ended, so 150
/// parallel CONNECTs from one source were all checked (the right password at #140 got
/// in), and each failure past the threshold wrote another lockout record. Checks in
/// flight now hold the places the thresholds leave; the rest are answered busy, unchecked.
#[tokio::test]
async fn parallel_guesses_from_one_source_get_no_more_checks_than_the_thresholds() {
    let broker = start(
        |c| {
            c.auth.lockout_user_threshold = 5;
            c.auth.lockout_ip_threshold = 20;
            c.auth.lockout_base_secs = 60;
            c.auth.failure_delay_ms = 0;
        },
        vec![],
    )
    .await;
    let h = &broker.broker;
    let before = h.password_verifications();
    let attacker = [127, 0, 0, 9];
    let mut tries = tokio::task::JoinSet::new();
    for i in 0..40 {
        let addr = broker.addr;
        // The right password last: if it is ever checked, it gets in.
        let password = if i == 39 { "acme-password-1" } else { "guess" };
        tries.spawn(async move {
            let raw = Raw::open_from(attacker.into(), addr).await.unwrap();
            let (_raw, ack) = raw
                .try_connect(login(Protocol::V5, "c", Some("sensor1@acme"), password))
                .await
                .unwrap();
            ack.code
        });
    }
    let mut codes = Vec::new();
    while let Some(code) = tries.join_next().await {
        codes.push(code.unwrap());
    }
    let checked = codes
        .iter()
        .filter(|c| **c == ReasonCode::BadUserNameOrPassword)
        .count();
    assert!(checked <= 5, "{checked} guesses checked: {codes:?}");
    assert!(!codes.contains(&ReasonCode::Success), "{codes:?}");
    assert!(
        codes.iter().all(|c| matches!(
            c,
            ReasonCode::BadUserNameOrPassword | ReasonCode::ServerBusy | ReasonCode::Banned
        )),
        "{codes:?}"
    );
    assert!(h.password_verifications() - before <= 5);
    let data = broker.data.clone();
    broker.stop().await;
    let lockouts = audit(&data)
        .into_iter()
        .filter(|(a, _)| a == "auth.lockout")
        .count();
    assert_eq!(lockouts, 1, "one lockout, one record");
}

/// The outside review's finding on the lockout fix: a verification remembered from the
/// device's own address was accepted from any address, a locked-out one too, so a locked
/// source kept a password oracle (a wrong guess refused, the right one let in). A
/// remembered verification now counts only from the source that proved it.
#[tokio::test]
async fn a_remembered_credential_is_no_oracle_for_a_locked_out_source() {
    let broker = start(
        |c| {
            c.auth.lockout_user_threshold = 2;
            c.auth.lockout_ip_threshold = 4;
            c.auth.lockout_base_secs = 60;
            c.auth.failure_delay_ms = 0;
        },
        vec![],
    )
    .await;
    let h = &broker.broker;
    let device = [127, 0, 0, 1];
    let attacker = [127, 0, 0, 3];
    let code = login_from(&broker, device, "sensor1@acme", "acme-password-1").await;
    assert_eq!(code, ReasonCode::Success);
    for _ in 0..2 {
        let code = login_from(&broker, attacker, "sensor1@acme", "guess").await;
        assert_eq!(code, ReasonCode::BadUserNameOrPassword);
    }
    // Locked out of the name: the right password and a wrong one get the same answer.
    for password in ["acme-password-1", "guess-2"] {
        let code = login_from(&broker, attacker, "sensor1@acme", password).await;
        assert_eq!(code, ReasonCode::Banned, "{password}: an oracle");
    }
    // Locked out as an address: the same.
    for i in 0..2 {
        let code = login_from(&broker, attacker, &format!("other{i}@acme"), "guess").await;
        assert_eq!(code, ReasonCode::BadUserNameOrPassword);
    }
    for password in ["acme-password-1", "guess-3"] {
        let code = login_from(&broker, attacker, "sensor1@acme", password).await;
        assert_eq!(code, ReasonCode::Banned, "{password}: an oracle");
    }
    // The device, from the address that proved its password, still gets in without hashing.
    let runs = h.password_verifications();
    let code = login_from(&broker, device, "sensor1@acme", "acme-password-1").await;
    assert_eq!(code, ReasonCode::Success);
    assert_eq!(
        h.password_verifications(),
        runs,
        "remembered at its own source"
    );
    broker.stop().await;
}

/// The outside review's finding: every refused MQTT login was an audit record of its own
/// (400 in 8 s from one attacker), and a username's U+202E was written as itself. Now
/// refusals beyond `auth.failure_audit_per_minute` are counted and summed up in one
/// record, and invisible formatting characters are escaped.
#[tokio::test]
async fn refused_logins_have_an_audit_budget_and_names_are_escaped() {
    let broker = start(
        |c| {
            c.auth.failure_audit_per_minute = 3;
            c.auth.lockout_ip_threshold = 1000;
            c.auth.failure_delay_ms = 0;
        },
        vec![],
    )
    .await;
    let names: Vec<String> = (0..10)
        .map(|i| format!("evil{i}\u{202e}nimda@acme"))
        .collect();
    for name in &names {
        let (_r, ack) =
            Raw::connect_with(broker.addr, login(Protocol::V5, "c", Some(name), "guess")).await;
        assert_eq!(ack.code, ReasonCode::BadUserNameOrPassword);
    }
    let metrics = broker.broker.metrics();
    let suppressed = metrics
        .iter()
        .find(|m| m.name == "messs_auth_audit_suppressed_total")
        .map(|m| m.value);
    assert_eq!(suppressed, Some(7.0));
    let data = broker.data.clone();
    broker.stop().await;
    let audit = audit(&data);
    let failures: Vec<&String> = audit
        .iter()
        .filter(|(a, _)| a == "auth.failure")
        .map(|(_, d)| d)
        .collect();
    assert_eq!(failures.len(), 3, "{failures:?}");
    for d in &failures {
        assert!(!d.contains('\u{202e}'), "unescaped: {d:?}");
        assert!(d.contains("\\u{202e}"), "{d:?}");
    }
    // The rest, summed up once (at shutdown at the latest).
    assert!(
        has(
            &audit,
            "auth.audit.suppressed",
            "7 login events not recorded one by one (7 refused logins, 0 lockouts)"
        ),
        "{audit:?}"
    );
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
            memory_kib: 64 * 1024,
            iterations: 4,
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
        (ack.code, started.elapsed())
    });
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    broker
        .broker
        .registry("admin", |r| {
            r.set_device_password("acme", "slow", Some("new-password-22"))
        })
        .await
        .unwrap();
    let changed_after = started.elapsed();
    // Checked against the hash it read, the old password was right; and the login ended
    // after the change (else this test would prove nothing).
    let (code, answered_after) = in_flight.await.unwrap();
    assert_eq!(code, ReasonCode::Success);
    assert!(
        answered_after > changed_after,
        "the change landed while the login was verifying: {changed_after:?} {answered_after:?}"
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
///
/// The hash is made to take ~0.5 s, over twice the tolerance, so a delay counted from the
/// end of the work fails; the delay is 4 s, so only a machine that starves the
/// verification thread for 3.5 s could make a correct broker fail.
#[tokio::test]
async fn a_refusal_takes_as_long_whichever_path_the_credentials_took() {
    let broker = start(
        |c| {
            c.auth.failure_delay_ms = 4000;
            c.auth.argon2_memory_kib = 64 * 1024;
            c.auth.argon2_iterations = 12;
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
        token_path >= std::time::Duration::from_millis(4000),
        "{took:?}"
    );
    assert!(
        password_path < token_path + std::time::Duration::from_millis(200),
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

#[path = "security/tokens.rs"]
mod tokens;

#[path = "security/tls.rs"]
mod tls;

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
#[path = "security/scram.rs"]
mod scram;
