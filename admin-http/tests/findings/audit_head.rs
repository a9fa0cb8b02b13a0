//! `GET /api/v1/audit/head`: the chain's head, signed with the audit key, grows with each
//! audited action; `GET /api/v1/audit/verify?head=` accepts a head the chain reaches and
//! reports a rollback for one it does not; only audit readers may ask.

use super::*;

/// HMAC-SHA256 of the head under `key`, as docs/SECURITY.md describes it, computed here
/// and not by the store's code.
fn signature(key: &[u8; 32], seq: u64, link_hex: &str) -> String {
    use aws_lc_rs::hmac;
    let link: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&link_hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let mut data = b"messs audit head v1".to_vec();
    data.extend_from_slice(&seq.to_be_bytes());
    data.extend_from_slice(&link);
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), &data);
    tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

async fn get(e: &Env, path: &str, token: &str) -> Answer {
    let ip = "127.0.0.1".parse().unwrap();
    request(e, ip, Method::GET, path, Some(token), None).await
}

/// Verification against `head`, once the writer has stored what the head shows (the
/// head moves when a record is appended, the walk reads what is committed).
async fn verify(e: &Env, token: &str, head: &str, want_intact: bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let a = get(e, &format!("/api/v1/audit/verify?head={head}"), token).await;
        assert_eq!(a.status, StatusCode::OK, "{a:?}");
        if a.body["intact"] == want_intact || Instant::now() > deadline {
            return a.body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_head_grows_is_signed_and_catches_a_rollback() {
    let keys = tempfile::tempdir().unwrap();
    let key = [0x5au8; 32];
    let key_file = keys.path().join("audit.key");
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(&key_file, format!("{hex}\n")).unwrap();
    let e = super::super::env(move |c| c.storage.audit_key_file = Some(key_file)).await;
    let (root, _, _) = e.ready("admin", ADMIN_PASSWORD).await;

    let before = get(&e, "/api/v1/audit/head", &root).await;
    assert_eq!(before.status, StatusCode::OK, "{before:?}");
    let seq0 = before.body["seq"].as_u64().unwrap();
    // An audited action: a tenant made (its own record and the request's).
    let made = request(
        &e,
        "127.0.0.1".parse().unwrap(),
        Method::POST,
        "/api/v1/tenants",
        Some(&root),
        Some(json!({"id": "t1"})),
    )
    .await;
    assert_eq!(made.status, StatusCode::CREATED, "{made:?}");
    let after = get(&e, "/api/v1/audit/head", &root).await;
    let h = &after.body;
    let seq = h["seq"].as_u64().unwrap();
    assert!(seq > seq0, "{seq0} -> {seq}");
    let link = h["link"].as_str().unwrap();
    assert_eq!(link.len(), 64);
    assert_eq!(h["head"], format!("{seq}:{link}"));
    assert_eq!(h["keyed"], true);
    assert_eq!(h["signature"], signature(&key, seq, link), "{h}");

    let head = h["head"].as_str().unwrap();
    let v = verify(&e, &root, head, true).await;
    assert_eq!(v["intact"], true, "{v}");
    assert!(v["records"].as_u64().unwrap() >= seq, "{v}");

    // A head beyond the chain: what a store rolled back to an older copy looks like.
    let ahead = format!("{}:{link}", seq + 1000);
    let v = verify(&e, &root, &ahead, false).await;
    assert_eq!(v["intact"], false, "{v}");
    assert!(
        v["problem"].as_str().unwrap().contains("rolled back"),
        "{v}"
    );

    // Only audit readers: a tenant-admin is refused.
    let ta = super::super::account(&e, &root, "ta", "tenant-admin", Some("t1")).await;
    let refused = get(&e, "/api/v1/audit/head", &ta).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{refused:?}");
    let refused = get(&e, &format!("/api/v1/audit/verify?head={head}"), &ta).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{refused:?}");
}

#[tokio::test]
async fn without_an_audit_key_the_head_is_unsigned() {
    let e = super::super::env(|_| {}).await;
    let (root, _, _) = e.ready("admin", ADMIN_PASSWORD).await;
    let a = get(&e, "/api/v1/audit/head", &root).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert_eq!(a.body["keyed"], false);
    assert_eq!(a.body["signature"], Value::Null);
    let head = a.body["head"].as_str().unwrap().to_owned();
    let v = verify(&e, &root, &head, true).await;
    assert_eq!(v["intact"], true, "{v}");
}

#[tokio::test]
async fn an_encryption_key_alone_signs_the_head_with_the_key_derived_from_it() {
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("storage.key");
    std::fs::write(&key_file, format!("1:{}\n", "3c".repeat(32))).unwrap();
    let e = super::super::env(move |c| c.storage.encryption_key_file = Some(key_file)).await;
    let (root, _, _) = e.ready("admin", ADMIN_PASSWORD).await;
    let a = get(&e, "/api/v1/audit/head", &root).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert_eq!(a.body["keyed"], true);
    let sig = a.body["signature"].as_str().unwrap();
    assert!(
        sig.len() == 64 && sig.bytes().all(|b| b.is_ascii_hexdigit()),
        "{sig}"
    );
    let head = a.body["head"].as_str().unwrap().to_owned();
    let v = verify(&e, &root, &head, true).await;
    assert_eq!(v["intact"], true, "{v}");
}
