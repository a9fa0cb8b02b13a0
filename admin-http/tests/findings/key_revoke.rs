//! Finding: a key scoped to `api-keys:write` could revoke any key its role and tenant
//! could read, the operator's own automation keys included: one leaked low-scope key took
//! down every other key. Now a key revokes only itself and the keys it made (directly or
//! through keys it made); accounts revoke any key their role reaches.

use super::*;

/// Mints a superadmin key with `scopes` as `token`, living `secs`; returns (key, id).
async fn mint(e: &Env, token: &str, scopes: Value, secs: u64) -> (String, String) {
    let (s, b) = e
        .call(
            Method::POST,
            "/api/v1/api-keys",
            Some(token),
            Some(json!({"name": "auto", "role": "superadmin", "tenant": null,
                "scopes": scopes, "expires_in_secs": secs})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    (
        b["key"].as_str().unwrap().to_owned(),
        b["info"]["id"].as_str().unwrap().to_owned(),
    )
}

async fn revoke(e: &Env, token: &str, id: &str) -> (StatusCode, Value) {
    e.call(
        Method::DELETE,
        &format!("/api/v1/api-keys/{id}"),
        Some(token),
        None,
    )
    .await
}

/// Does `key` still authenticate?
async fn alive(e: &Env, key: &str) -> bool {
    let (s, _) = e
        .call(Method::GET, "/api/v1/api-keys", Some(key), None)
        .await;
    s != StatusCode::UNAUTHORIZED
}

#[tokio::test]
async fn a_key_revokes_only_itself_and_the_keys_it_made() {
    let e = super::super::env(|_| {}).await;
    let (root, _, _) = e.ready("admin", ADMIN_PASSWORD).await;
    // The operator's automation key, and a low-scope key that leaks.
    let (ops, ops_id) = mint(&e, &root, json!(["write"]), 3600).await;
    let (leaked, leaked_id) = mint(&e, &root, json!(["api-keys:write"]), 3600).await;
    let (_child, child_id) = mint(&e, &leaked, json!(["api-keys:read"]), 60).await;
    let (sibling, sibling_id) = mint(&e, &ops, json!(["api-keys:write"]), 600).await;

    // The leaked key cannot revoke the operator's key, nor a key that key made.
    for id in [&ops_id, &sibling_id] {
        let (s, b) = revoke(&e, &leaked, id).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
        assert!(
            b["message"].as_str().unwrap().contains("keys it made"),
            "{b}"
        );
    }
    assert!(alive(&e, &ops).await && alive(&e, &sibling).await);
    // A key made by a key cannot revoke its maker either.
    let (s, _) = revoke(&e, &sibling, &ops_id).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(alive(&e, &ops).await);

    // Its own subtree: allowed (a key it made, then itself).
    let (s, b) = revoke(&e, &leaked, &child_id).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{b}");
    let (s, b) = revoke(&e, &leaked, &leaked_id).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{b}");
    assert!(!alive(&e, &leaked).await);
    // A key revokes keys its descendants made too; an account revokes any key.
    let (_grandchild, grandchild_id) = mint(&e, &sibling, json!(["api-keys:read"]), 60).await;
    let (s, _) = revoke(&e, &ops, &grandchild_id).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = revoke(&e, &root, &ops_id).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert!(!alive(&e, &ops).await && !alive(&e, &sibling).await);
}
