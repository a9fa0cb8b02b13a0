//! Brute-force protection and refusals: lockout per source and per (username, source),
//! slowing, checks in flight, the verification cache per source, the refusal delay, the
//! verification queue, and the audit budget for refused logins.

use super::*;

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
