//! Device JWT logins: algorithms, claims, the tenant binding and the registry checks.

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
        let n = chunk.iter().fold(0u32, |a, &b| a << 8 | u32::from(b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

async fn try_login(broker: &TestBroker, protocol: Protocol, user: &str, token: &str) -> ReasonCode {
    let (_raw, ack) = Raw::connect_with(broker.addr, login(protocol, "t", Some(user), token)).await;
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
    let claims = |sub: &str, exp: u64| serde_json::json!({ "sub": sub, "exp": exp, "aud": "acme" });
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
    // A critical extension messs does not implement (RFC 7515 4.1.11): refused, though
    // correctly signed.
    let mut crit = Header::new(Algorithm::HS256);
    crit.kid = Some("hs".into());
    crit.crit = Some(vec!["exp-binding".into()]);
    let crit = encode(&crit, &claims("dev", good), &hs).unwrap();
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
        crit,
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
