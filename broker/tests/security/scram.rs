//! SCRAM-SHA-256 (MQTT 5 enhanced authentication): opt-in devices, decoys, lockout, bans.

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
    let server_proven = ack.properties.authentication_method.as_deref() == Some("SCRAM-SHA-256")
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
