//! Finding: `/metrics` listed every tenant's id (the `tenant` label of the per-tenant
//! families) to anyone who reached the admin port. Now per-tenant samples go only to a
//! bearer token that may read metrics, for the tenants it may see, unless the operator
//! sets `[admin] metrics_tenant_labels = "public"`.

use super::*;
use crate::common::mqtt_client;

async fn scrape(e: &Env, token: Option<&str>) -> Answer {
    let ip = "127.0.0.1".parse().unwrap();
    request(e, ip, Method::GET, "/metrics", token, None).await
}

fn text(a: &Answer) -> &str {
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    a.body.as_str().unwrap()
}

#[tokio::test]
async fn anonymous_scrapes_name_no_tenant_and_readers_see_their_own() {
    let e = super::super::env(|_| {}).await;
    let (root, _, _) = e.ready("admin", ADMIN_PASSWORD).await;
    for t in ["acme-secret", "b"] {
        let a = request(
            &e,
            "127.0.0.1".parse().unwrap(),
            Method::POST,
            "/api/v1/tenants",
            Some(&root),
            Some(json!({"id": t})),
        )
        .await;
        assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
    }
    // A client of the try-out's tenant `default`.
    let _client = mqtt_client(e.mqtt, "c1").await;

    let anonymous = scrape(&e, None).await;
    let anonymous = text(&anonymous);
    for id in ["acme-secret", "\"b\"", "default"] {
        assert!(!anonymous.contains(id), "{id} in an anonymous scrape");
    }
    assert!(!anonymous.contains("tenant=\""), "{anonymous}");
    // The broker-wide figures are still there.
    assert!(anonymous.contains("\nmesss_connections 1\n"), "{anonymous}");

    let viewer = super::super::account(&e, &root, "v", "viewer", None).await;
    let seen = scrape(&e, Some(&viewer)).await;
    let seen = text(&seen);
    assert!(
        seen.contains("messs_tenant_connections{tenant=\"default\"} 1"),
        "{seen}"
    );
    assert!(
        seen.contains("messs_tenant_connections{tenant=\"acme-secret\"} 0"),
        "{seen}"
    );

    // A viewer of tenant b sees b's samples only.
    let viewer_b = super::super::account(&e, &root, "vb", "viewer", Some("b")).await;
    let seen = scrape(&e, Some(&viewer_b)).await;
    let seen = text(&seen);
    assert!(seen.contains("{tenant=\"b\"}"), "{seen}");
    assert!(
        !seen.contains("acme-secret") && !seen.contains("tenant=\"default\""),
        "{seen}"
    );

    // A scraper's API key with the scope metrics:read sees them; a key scoped to
    // something else does not.
    let mut keys = Vec::new();
    for scopes in [json!(["metrics:read"]), json!(["devices:read"])] {
        let body = json!({"name": "prometheus", "role": "viewer", "tenant": null,
            "scopes": scopes, "expires_in_secs": 3600});
        let a = request(
            &e,
            "127.0.0.1".parse().unwrap(),
            Method::POST,
            "/api/v1/api-keys",
            Some(&root),
            Some(body),
        )
        .await;
        assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
        keys.push(a.body["key"].as_str().unwrap().to_owned());
    }
    let seen = scrape(&e, Some(&keys[0])).await;
    assert!(text(&seen).contains("tenant=\"acme-secret\""));
    let seen = scrape(&e, Some(&keys[1])).await;
    assert!(!text(&seen).contains("tenant=\""));
    // A token that is not one is refused, not treated as anonymous.
    let bad = scrape(&e, Some("not-a-token")).await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_operator_can_make_tenant_labels_public() {
    let e = super::super::env(|c| {
        c.admin.metrics_tenant_labels = messs_broker::MetricsTenantLabels::Public;
    })
    .await;
    let anonymous = scrape(&e, None).await;
    assert!(
        text(&anonymous).contains("messs_tenant_connections{tenant=\"default\"} 0"),
        "{anonymous:?}"
    );
}
