//! The `/api/v1` admin API over a real broker (RocksDB in a temp dir), driven through one
//! router with `oneshot`: MFA logins with TOTP codes computed here from RFC 6238 (not by the
//! server's library), refresh rotation and reuse detection, lockout, the login rate limit,
//! API key scopes and expiry, the RBAC matrix over every route, kicking a real MQTT client,
//! and the OpenAPI document against the route table.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use bytes::BytesMut;
use http_body_util::BodyExt;
use messs_broker::{Broker, BrokerHandle, Config};
use messs_codec::{decode, Limits, Packet, Protocol};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower::ServiceExt;

mod common;
use common::mqtt_client;
mod findings;

const ADMIN_PASSWORD: &str = "first-Operator-pass-42";

struct Env {
    app: Router,
    mqtt: SocketAddr,
    handle: BrokerHandle,
    _stop: tokio::sync::oneshot::Sender<()>,
    _data: tempfile::TempDir,
}

async fn env(tune: impl FnOnce(&mut Config)) -> Env {
    let data = tempfile::tempdir().unwrap();
    let mut config = Config::try_out();
    config.listeners[0].bind = "127.0.0.1:0".parse().unwrap();
    config.storage.data_dir = data.path().to_path_buf();
    // Every request of these tests comes from one address unless a test says otherwise.
    config.admin.login_attempts_per_minute = 1000;
    tune(&mut config);
    let broker = Broker::bind(config).await.unwrap();
    let mqtt = broker.local_addrs()[0];
    let handle = broker.handle();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        broker
            .run(async {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    assert_eq!(
        messs_admin::bootstrap(&handle, Some(ADMIN_PASSWORD.into()))
            .await
            .unwrap(),
        None
    );
    Env {
        app: messs_admin::app(handle.clone()).unwrap(),
        mqtt,
        handle,
        _stop: tx,
        _data: data,
    }
}

/// A request from `ip` (as the listener would mark it), with a bearer token and a JSON
/// body if given.
fn build_request(
    ip: IpAddr,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Request<Body> {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let mut req = match body {
        Some(b) => req
            .header("content-type", "application/json")
            .body(Body::from(b.to_string()))
            .unwrap(),
        None => req.body(Body::empty()).unwrap(),
    };
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::new(ip, 40000)));
    req
}

impl Env {
    /// One request from `ip`; the JSON body (or `Null`).
    async fn call_from(
        &self,
        ip: [u8; 4],
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let req = build_request(IpAddr::from(ip), method, path, token, body);
        let res = self.app.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, value)
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.call_from([127, 0, 0, 1], method, path, token, body)
            .await
    }

    async fn login(&self, user: &str, password: &str, totp: Option<String>) -> (StatusCode, Value) {
        let mut body = json!({"username": user, "password": password});
        if let Some(code) = totp {
            body["totp"] = json!(code);
        }
        self.call(Method::POST, "/api/v1/auth/login", None, Some(body))
            .await
    }

    /// Logs `user` in for the first time: changes the password if asked to, enrols TOTP,
    /// then logs in with a code. Returns the access token, the TOTP secret and the
    /// recovery codes.
    async fn ready(&self, user: &str, password: &str) -> (String, Vec<u8>, Vec<String>) {
        let (status, body) = self.login(user, password, None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let mut access = body["access_token"].as_str().unwrap().to_owned();
        let mut password = password.to_owned();
        if body["required_action"] == "password_change" {
            let new = format!("{password}-renewed");
            let (status, body) = self
                .call(
                    Method::POST,
                    "/api/v1/auth/password",
                    Some(&access),
                    Some(json!({"current_password": password, "new_password": new})),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert_eq!(body["required_action"], "mfa_enrolment");
            access = body["access_token"].as_str().unwrap().to_owned();
            password = new;
        }
        let (status, body) = self
            .call(Method::POST, "/api/v1/auth/totp/enrol", Some(&access), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let uri = body["otpauth_uri"].as_str().unwrap();
        assert!(uri.starts_with("otpauth://totp/messs:"), "{uri}");
        let secret = base32(body["secret"].as_str().unwrap());
        let (status, body) = self
            .call(
                Method::POST,
                "/api/v1/auth/totp/confirm",
                Some(&access),
                Some(json!({"code": totp(&secret, now() )})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let codes: Vec<String> = serde_json::from_value(body["recovery_codes"].clone()).unwrap();
        // The confirming code's step is used up: the next step's code (within the one step
        // of skew) logs in.
        let (status, body) = self
            .login(user, &password, Some(totp(&secret, now() + 30)))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["required_action"], Value::Null);
        (
            body["access_token"].as_str().unwrap().to_owned(),
            secret,
            codes,
        )
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// RFC 4648 base 32, no padding.
fn base32(s: &str) -> Vec<u8> {
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let (mut bits, mut value, mut out) = (0u32, 0u64, Vec::new());
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = alphabet.iter().position(|&a| a == c).unwrap() as u64;
        value = (value << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((value >> bits) as u8);
        }
    }
    out
}

/// RFC 6238 TOTP (HMAC-SHA-1, 30 s, 6 digits), written out here so the test does not
/// trust the server's TOTP library.
fn totp(secret: &[u8], unix: u64) -> String {
    use aws_lc_rs::hmac;
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    let tag = hmac::sign(&key, &(unix / 30).to_be_bytes());
    let h = tag.as_ref();
    let offset = usize::from(h[19] & 0x0f);
    let bin = u32::from_be_bytes([
        h[offset] & 0x7f,
        h[offset + 1],
        h[offset + 2],
        h[offset + 3],
    ]);
    format!("{:06}", bin % 1_000_000)
}

#[tokio::test]
async fn mfa_login_refresh_rotation_reuse_and_logout() {
    let e = env(|_| {}).await;
    // Before enrolment the account can only enrol.
    let (status, body) = e.login("admin", ADMIN_PASSWORD, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["required_action"], "mfa_enrolment");
    let restricted = body["access_token"].as_str().unwrap().to_owned();
    let (status, _) = e
        .call(Method::GET, "/api/v1/tenants", Some(&restricted), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let (access, secret, codes) = e.ready("admin", ADMIN_PASSWORD).await;
    let (status, me) = e
        .call(Method::GET, "/api/v1/auth/me", Some(&access), None)
        .await;
    assert_eq!(
        (status, me["role"].as_str()),
        (StatusCode::OK, Some("superadmin"))
    );

    // Now a password alone is not enough, and a wrong or replayed code fails.
    let (status, body) = e.login("admin", ADMIN_PASSWORD, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let wrong = format!(
        "{:06}",
        (totp(&secret, now()).parse::<u32>().unwrap() + 1) % 1_000_000
    );
    assert_eq!(
        e.login("admin", ADMIN_PASSWORD, Some(wrong)).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        e.login("admin", ADMIN_PASSWORD, Some(totp(&secret, now() + 30)))
            .await
            .0,
        StatusCode::UNAUTHORIZED,
        "the step used by the last login is not accepted again"
    );
    // A recovery code works once.
    let body = json!({"username": "admin", "password": ADMIN_PASSWORD, "recovery_code": codes[0]});
    let (status, login) = e
        .call(Method::POST, "/api/v1/auth/login", None, Some(body.clone()))
        .await;
    assert_eq!(status, StatusCode::OK, "{login}");
    let (status, _) = e
        .call(Method::POST, "/api/v1/auth/login", None, Some(body))
        .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a recovery code is single-use"
    );

    // Refresh rotates; presenting the retired token revokes the whole login.
    let r1 = login["refresh_token"].as_str().unwrap().to_owned();
    let (status, pair2) = e
        .call(
            Method::POST,
            "/api/v1/auth/refresh",
            None,
            Some(json!({"refresh_token": r1})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{pair2}");
    let a2 = pair2["access_token"].as_str().unwrap().to_owned();
    let r2 = pair2["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(r1, r2);
    assert_eq!(
        e.call(Method::GET, "/api/v1/auth/me", Some(&a2), None)
            .await
            .0,
        StatusCode::OK
    );
    let (status, _) = e
        .call(
            Method::POST,
            "/api/v1/auth/refresh",
            None,
            Some(json!({"refresh_token": r1})),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "reuse");
    let (status, _) = e
        .call(
            Method::POST,
            "/api/v1/auth/refresh",
            None,
            Some(json!({"refresh_token": r2})),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the family is revoked");
    assert_eq!(
        e.call(Method::GET, "/api/v1/auth/me", Some(&a2), None)
            .await
            .0,
        StatusCode::UNAUTHORIZED,
        "and its access tokens with it"
    );

    // Logout ends that login only; the other login still works.
    assert_eq!(
        e.call(Method::POST, "/api/v1/auth/logout", Some(&access), None)
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        e.call(Method::GET, "/api/v1/auth/me", Some(&access), None)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );

    // The audit log has the logins, the reuse and the failures, and its chain holds.
    let again = json!({"username": "admin", "password": ADMIN_PASSWORD, "recovery_code": codes[1]});
    let (status, b) = e
        .call(Method::POST, "/api/v1/auth/login", None, Some(again))
        .await;
    assert_eq!(status, StatusCode::OK, "{b}");
    let access = b["access_token"].as_str().unwrap().to_owned();
    let (status, log) = e
        .call(
            Method::GET,
            "/api/v1/audit?action=admin.&limit=1000",
            Some(&access),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let actions: Vec<&str> = log["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["action"].as_str().unwrap())
        .collect();
    for want in [
        "admin.login",
        "admin.login.failed",
        "admin.refresh.reuse",
        "admin.totp.enrolled",
    ] {
        assert!(actions.contains(&want), "{want} missing from {actions:?}");
    }
    let (status, v) = e
        .call(Method::GET, "/api/v1/audit/verify", Some(&access), None)
        .await;
    assert_eq!(
        (status, v["intact"].as_bool()),
        (StatusCode::OK, Some(true))
    );
}

#[tokio::test]
async fn lockout_after_repeated_failures_and_rate_limit_per_address() {
    let e = env(|c| {
        c.admin.lockout_failures = 3;
        c.admin.login_attempts_per_minute = 5;
    })
    .await;
    // Failures from different addresses lock nothing (findings/lockout.rs has the rest).
    for i in 0..3u8 {
        let body = json!({"username": "admin", "password": "wrong password!!"});
        let (status, _) = e
            .call_from(
                [10, 0, 0, i],
                Method::POST,
                "/api/v1/auth/login",
                None,
                Some(body),
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let body = json!({"username": "admin", "password": ADMIN_PASSWORD});
    let (status, b) = e
        .call_from(
            [10, 0, 1, 1],
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(body.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{b}");
    // From one address they lock that address out of the account, even with the right
    // password.
    for _ in 0..3 {
        let wrong = json!({"username": "admin", "password": "wrong password!!"});
        let (status, _) = e
            .call_from(
                [10, 0, 0, 9],
                Method::POST,
                "/api/v1/auth/login",
                None,
                Some(wrong),
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let (status, b) = e
        .call_from(
            [10, 0, 0, 9],
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(body),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "locked even with the right password: {b}"
    );

    // One address gets 5 attempts a minute, whatever the accounts; another is unaffected.
    for i in 0..5 {
        let body = json!({"username": format!("nobody{i}"), "password": "x"});
        let (status, _) = e
            .call_from(
                [10, 0, 2, 1],
                Method::POST,
                "/api/v1/auth/login",
                None,
                Some(body),
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let body = json!({"username": "nobody", "password": "x"});
    let (status, _) = e
        .call_from(
            [10, 0, 2, 1],
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(body.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let (status, _) = e
        .call_from(
            [10, 0, 2, 2],
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(body),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// Creates an account and readies it; returns its access token.
async fn account(e: &Env, root: &str, name: &str, role: &str, tenant: Option<&str>) -> String {
    let password = "Initial-pass-7-matrix".to_owned();
    let (status, body) = e
        .call(
            Method::POST,
            "/api/v1/admins",
            Some(root),
            Some(json!({"username": name, "password": password, "role": role, "tenant": tenant})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    e.ready(name, &password).await.0
}

/// A request body that passes validation for each route that takes one, in tenant `t`.
fn body_for(method: &Method, path: &str, t: &str) -> Option<Value> {
    let v = match (method.as_str(), path) {
        ("POST", "/api/v1/auth/login") => json!({"username": "x", "password": "y"}),
        ("POST", "/api/v1/auth/refresh") => json!({"refresh_token": "mrt.00"}),
        ("POST", "/api/v1/auth/password") => {
            json!({"current_password": "wrong", "new_password": "another-Long-pass-9"})
        }
        ("POST", "/api/v1/auth/totp/confirm") => json!({"code": "000000"}),
        ("POST", "/api/v1/admins") => {
            json!({"username": format!("new-{t}"), "password": "Some-long-pass-31", "role": "viewer", "tenant": t})
        }
        ("PATCH", "/api/v1/admins/{username}") => json!({"unlock": true}),
        ("POST", "/api/v1/api-keys") => {
            json!({"name": "k", "role": "viewer", "tenant": t, "scopes": ["read"], "expires_in_secs": 60})
        }
        ("POST", "/api/v1/tenants") => json!({"id": format!("{t}-new")}),
        ("PATCH", "/api/v1/tenants/{tenant}") => json!({"limits": {"max_connections": 100}}),
        ("POST", "/api/v1/tenants/{tenant}/devices") => {
            json!({"username": "matrix-dev", "password": "device-Pass-123"})
        }
        ("PATCH", "/api/v1/tenants/{tenant}/devices/{username}") => json!({"enabled": true}),
        ("POST", "/api/v1/tenants/{tenant}/acl") => {
            json!({"allow": true, "action": "both", "filter": "x/#"})
        }
        ("POST", "/api/v1/tenants/{tenant}/jwt-keys") => {
            json!({"kid": "k1", "alg": "HS256", "secret_base64": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="})
        }
        ("POST", "/api/v1/tenants/{tenant}/cas" | "/api/v1/tenants/{tenant}/revoked-certs") => {
            json!({"pem": cert_pem()})
        }
        ("POST", "/api/v1/tenants/{tenant}/publish") => json!({"topic": "x/1", "payload": "hi"}),
        ("PUT", "/api/v1/bans") => json!({"addresses": []}),
        _ => return None,
    };
    Some(v)
}

fn concrete(path: &str, t: &str) -> String {
    let p = path
        .replace("{tenant}", t)
        .replace("{username}", "dev1")
        .replace("{client_id}", "c1")
        .replace("{kid}", "k1")
        .replace("{fingerprint}", &"0".repeat(64))
        .replace("{id}", "00000000000000000000000000000000");
    if path == "/api/v1/tenants/{tenant}/retained" {
        format!("{p}?topic=x/1")
    } else {
        p
    }
}

/// A self-signed CA certificate in PEM.
fn cert_pem() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.self_signed(&key).unwrap().pem()
}

#[tokio::test]
async fn rbac_matrix_over_every_route() {
    let e = env(|_| {}).await;
    let (root, _, _) = e.ready("admin", ADMIN_PASSWORD).await;
    for t in ["a", "b"] {
        let (s, b) = e
            .call(
                Method::POST,
                "/api/v1/tenants",
                Some(&root),
                Some(json!({"id": t})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        let (s, b) = e
            .call(
                Method::POST,
                &format!("/api/v1/tenants/{t}/devices"),
                Some(&root),
                Some(json!({"username": "dev1", "password": "device-Pass-123"})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
    }
    let ta = account(&e, &root, "ta", "tenant-admin", Some("a")).await;
    let va = account(&e, &root, "va", "viewer", Some("a")).await;
    let v = account(&e, &root, "v", "viewer", None).await;

    let mut checked = 0;
    for (method, path) in messs_admin::route_table() {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let public = !path.starts_with("/api/v1/") || path == "/api/v1/openapi.json";
        let own = path.starts_with("/api/v1/auth/");
        let tenant_route = path.contains("{tenant}");
        let write = method != Method::GET;
        for (who, token, tenant, may_write, global) in [
            ("tenant-admin of a", &ta, Some("a"), true, false),
            ("viewer of a", &va, Some("a"), false, false),
            ("global viewer", &v, None, false, true),
        ] {
            if public || own {
                continue;
            }
            // Another tenant's resources: never reachable for a tenant-scoped account.
            if tenant_route && tenant.is_some() {
                let p = concrete(&path, "b");
                let (s, body) = e
                    .call(
                        method.clone(),
                        &p,
                        Some(token),
                        body_for(&method, &path, "b"),
                    )
                    .await;
                assert!(
                    s == StatusCode::NOT_FOUND || s == StatusCode::FORBIDDEN,
                    "{who}: {method} {p} -> {s} {body}"
                );
                checked += 1;
            }
            let t = tenant.unwrap_or("a");
            let p = concrete(&path, t);
            let (s, body) = e
                .call(method.clone(), &p, Some(token), body_for(&method, &path, t))
                .await;
            let broker_wide_write = !tenant_route && write && !path.starts_with("/api/v1/api-keys");
            let tenant_limits = path == "/api/v1/tenants/{tenant}" && write;
            let denied = (write && !may_write)
                || (!global
                    && !tenant_route
                    && !path.starts_with("/api/v1/api-keys")
                    && path != "/api/v1/tenants")
                || broker_wide_write
                || tenant_limits;
            if denied {
                assert_eq!(s, StatusCode::FORBIDDEN, "{who}: {method} {p} -> {body}");
            } else {
                assert!(
                    s.is_success() || s == StatusCode::NOT_FOUND,
                    "{who}: {method} {p} -> {s} {body}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 120, "{checked} checks");
    // Tenant b is as it was: one device, no new admin, no limits.
    let (_, devices) = e
        .call(Method::GET, "/api/v1/tenants/b/devices", Some(&root), None)
        .await;
    assert_eq!(devices["items"].as_array().unwrap().len(), 1, "{devices}");
    let (_, tb) = e
        .call(Method::GET, "/api/v1/tenants/b", Some(&root), None)
        .await;
    assert_eq!(tb["limits"], json!({}));
    // A tenant-admin lists only its own tenant.
    let (_, list) = e
        .call(Method::GET, "/api/v1/tenants", Some(&ta), None)
        .await;
    let ids: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a"]);
}

#[tokio::test]
async fn api_keys_are_bound_by_scope_tenant_and_expiry() {
    let e = env(|_| {}).await;
    let (root, _, _) = e.ready("admin", ADMIN_PASSWORD).await;
    for t in ["a", "b"] {
        e.call(
            Method::POST,
            "/api/v1/tenants",
            Some(&root),
            Some(json!({"id": t})),
        )
        .await;
    }
    let make = |scopes: Value, secs: u64, role: &str, tenant: Option<&str>| json!({"name": "ci", "role": role, "tenant": tenant, "scopes": scopes, "expires_in_secs": secs});
    let (s, k) = e
        .call(
            Method::POST,
            "/api/v1/api-keys",
            Some(&root),
            Some(make(
                json!(["devices:write"]),
                3600,
                "tenant-admin",
                Some("a"),
            )),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{k}");
    let key = k["key"].as_str().unwrap().to_owned();
    let dev = json!({"username": "d", "password": "device-Pass-123"});
    let (s, b) = e
        .call(
            Method::POST,
            "/api/v1/tenants/a/devices",
            Some(&key),
            Some(dev.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(
        e.call(Method::GET, "/api/v1/tenants/a/devices", Some(&key), None)
            .await
            .0,
        StatusCode::OK,
        "write implies read"
    );
    assert_eq!(
        e.call(
            Method::POST,
            "/api/v1/tenants/b/devices",
            Some(&key),
            Some(dev)
        )
        .await
        .0,
        StatusCode::NOT_FOUND,
        "another tenant"
    );
    assert_eq!(
        e.call(Method::GET, "/api/v1/tenants/a/clients", Some(&key), None)
            .await
            .0,
        StatusCode::FORBIDDEN,
        "outside its scopes"
    );
    // Listed without its secret; a key cannot make a bigger key.
    let (_, list) = e
        .call(Method::GET, "/api/v1/api-keys", Some(&root), None)
        .await;
    assert!(!list.to_string().contains(key.rsplit('.').next().unwrap()));
    let (s, _) = e
        .call(
            Method::POST,
            "/api/v1/api-keys",
            Some(&key),
            Some(make(json!(["write"]), 60, "superadmin", None)),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // Expiry.
    let (_, short) = e
        .call(
            Method::POST,
            "/api/v1/api-keys",
            Some(&root),
            Some(make(json!(["read"]), 1, "viewer", None)),
        )
        .await;
    let short = short["key"].as_str().unwrap().to_owned();
    assert_eq!(
        e.call(Method::GET, "/api/v1/tenants", Some(&short), None)
            .await
            .0,
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        e.call(Method::GET, "/api/v1/tenants", Some(&short), None)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    // Revocation.
    let id = k["info"]["id"].as_str().unwrap();
    assert_eq!(
        e.call(
            Method::DELETE,
            &format!("/api/v1/api-keys/{id}"),
            Some(&root),
            None
        )
        .await
        .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        e.call(Method::GET, "/api/v1/tenants/a/devices", Some(&key), None)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn clients_are_listed_and_kicked() {
    let e = env(|_| {}).await;
    let (root, _, _) = e.ready("admin", ADMIN_PASSWORD).await;
    let mut client = mqtt_client(e.mqtt, "sensor-1").await;
    let (s, list) = e
        .call(
            Method::GET,
            "/api/v1/tenants/default/clients?client_id=sensor",
            Some(&root),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let c = &list["items"][0];
    assert_eq!(c["client_id"], "sensor-1");
    assert_eq!(c["protocol"], "5");
    assert_eq!(c["transport"], "tcp");
    assert!(
        c["address"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{c}"
    );
    let (s, _) = e
        .call(
            Method::DELETE,
            "/api/v1/tenants/default/clients/sensor-1",
            Some(&root),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    // The client gets DISCONNECT 0x98 and the socket closes.
    let mut input = BytesMut::new();
    let got = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(p) = decode(&mut input, Protocol::V5, &Limits::default()).unwrap() {
                return Some(p);
            }
            if client.read_buf(&mut input).await.unwrap() == 0 {
                return None;
            }
        }
    })
    .await
    .unwrap();
    match got {
        Some(Packet::Disconnect(d)) => {
            assert_eq!(d.reason, messs_codec::ReasonCode::AdministrativeAction)
        }
        other => panic!("expected DISCONNECT 0x98, got {other:?}"),
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !e.handle.clients(Some("default")).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "still listed after the kick"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        e.call(
            Method::DELETE,
            "/api/v1/tenants/default/clients/sensor-1",
            Some(&root),
            None
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn openapi_lists_every_route() {
    let e = env(|_| {}).await;
    let (s, doc) = e
        .call(Method::GET, "/api/v1/openapi.json", None, None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                documented.push((method.to_uppercase(), path.clone()));
            }
        }
    }
    let mut routes = messs_admin::route_table();
    documented.sort();
    routes.sort();
    assert_eq!(documented, routes);
    // And each documented route answers (not 404/405) without credentials.
    for (method, path) in routes {
        let p = concrete(&path, "a");
        let (s, _) = e
            .call(
                Method::from_bytes(method.as_bytes()).unwrap(),
                &p,
                None,
                None,
            )
            .await;
        assert!(
            s != StatusCode::NOT_FOUND && s != StatusCode::METHOD_NOT_ALLOWED,
            "{method} {p} -> {s}"
        );
    }
}

#[tokio::test]
async fn errors_hide_internals_and_responses_carry_security_headers() {
    let e = env(|_| {}).await;
    let req = Request::get("/api/v1/tenants")
        .header("authorization", "Bearer not-a-token")
        .body(Body::empty())
        .unwrap();
    let res = e.app.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    for h in [
        "x-content-type-options",
        "x-frame-options",
        "content-security-policy",
        "cache-control",
    ] {
        assert!(res.headers().contains_key(h), "{h}");
    }
    assert!(
        !res.headers().contains_key("access-control-allow-origin"),
        "CORS off"
    );
    // Oversized bodies are refused before they are read whole.
    let big = json!({"username": "x".repeat(300 * 1024), "password": "y"});
    let (s, _) = e
        .call(Method::POST, "/api/v1/auth/login", None, Some(big))
        .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn publish_retained_telemetry_acl_bans_and_operations() {
    let backups = tempfile::tempdir().unwrap();
    let backup_dir = backups.path().join("b");
    let bd = backup_dir.clone();
    let e = env(move |c| {
        c.storage.telemetry.filters = vec!["data/#".into()];
        c.storage.backup.dir = Some(bd);
    })
    .await;
    let (root, _, _) = e.ready("admin", ADMIN_PASSWORD).await;
    let (s, b) = e
        .call(
            Method::POST,
            "/api/v1/tenants",
            Some(&root),
            Some(json!({"id": "default"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");

    // A real subscriber (rumqttc) gets what the API publishes.
    let mut opts = rumqttc::MqttOptions::new("watcher", "127.0.0.1", e.mqtt.port());
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = rumqttc::AsyncClient::new(opts, 16);
    client
        .subscribe("data/#", rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(ev) = events.poll().await {
            match ev {
                rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) => {
                    let _ = tx.send(None);
                }
                rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) => {
                    let _ = tx.send(Some(p));
                }
                _ => {}
            }
        }
    });
    assert!(rx.recv().await.unwrap().is_none(), "SUBACK first");
    let publish = json!({"topic": "data/1", "payload": "hello", "qos": 1, "retain": true});
    let (s, b) = e
        .call(
            Method::POST,
            "/api/v1/tenants/default/publish",
            Some(&root),
            Some(publish),
        )
        .await;
    assert_eq!((s, b["matched"].as_u64()), (StatusCode::OK, Some(1)), "{b}");
    let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("data/1", &b"hello"[..])
    );

    // Its subscription, the retained message, the telemetry record.
    let (_, subs) = e
        .call(
            Method::GET,
            "/api/v1/tenants/default/sessions/watcher/subscriptions",
            Some(&root),
            None,
        )
        .await;
    assert_eq!(subs["items"][0]["filter"], "data/#", "{subs}");
    let (_, ret) = e
        .call(
            Method::GET,
            "/api/v1/tenants/default/retained?filter=data/%23",
            Some(&root),
            None,
        )
        .await;
    assert_eq!(ret["items"][0]["payload_text"], "hello", "{ret}");
    let (_, tel) = e
        .call(
            Method::GET,
            "/api/v1/tenants/default/telemetry?filter=data/%2B",
            Some(&root),
            None,
        )
        .await;
    assert_eq!(tel["items"].as_array().unwrap().len(), 1, "{tel}");
    assert_eq!(tel["items"][0]["topic"], "data/1");
    let (s, _) = e
        .call(
            Method::GET,
            "/api/v1/tenants/default/telemetry?after=zz",
            Some(&root),
            None,
        )
        .await;
    assert_eq!(
        s,
        StatusCode::BAD_REQUEST,
        "a bad cursor is the caller's error"
    );

    // Deleting the retained message delivers nothing.
    let (s, _) = e
        .call(
            Method::DELETE,
            "/api/v1/tenants/default/retained?topic=data/1",
            Some(&root),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (_, ret) = e
        .call(
            Method::GET,
            "/api/v1/tenants/default/retained",
            Some(&root),
            None,
        )
        .await;
    assert_eq!(ret["items"], json!([]));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), rx.recv())
            .await
            .is_err(),
        "a retained delete is not a publish"
    );

    // The tenant's ACL binds the API's publish; $SYS stays the broker's.
    let rule = json!({"allow": true, "action": "both", "filter": "data/#"});
    let (s, b) = e
        .call(
            Method::POST,
            "/api/v1/tenants/default/acl",
            Some(&root),
            Some(rule),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (s, _) = e
        .call(
            Method::POST,
            "/api/v1/tenants/default/publish",
            Some(&root),
            Some(json!({"topic": "secret/x", "payload": "no"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = e
        .call(
            Method::POST,
            "/api/v1/tenants/default/publish",
            Some(&root),
            Some(json!({"topic": "$SYS/x", "payload": "no"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    // Rules page in evaluation order; one added at position 0 comes first.
    let first =
        json!({"allow": false, "action": "publish", "filter": "data/private/#", "position": 0});
    let (s, _) = e
        .call(
            Method::POST,
            "/api/v1/tenants/default/acl",
            Some(&root),
            Some(first),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (_, p1) = e
        .call(
            Method::GET,
            "/api/v1/tenants/default/acl?limit=1",
            Some(&root),
            None,
        )
        .await;
    assert_eq!(p1["items"][0]["filter"], "data/private/#", "{p1}");
    let next = p1["next"].as_str().unwrap();
    let (_, p2) = e
        .call(
            Method::GET,
            &format!("/api/v1/tenants/default/acl?limit=1&after={next}"),
            Some(&root),
            None,
        )
        .await;
    assert_eq!(p2["items"][0]["filter"], "data/#", "{p2}");
    assert_eq!(p2["next"], Value::Null);
    let (s, _) = e
        .call(
            Method::POST,
            "/api/v1/tenants/default/publish",
            Some(&root),
            Some(json!({"topic": "data/private/x", "payload": "no"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "the deny rule comes first");

    // A ban set at runtime refuses the client id at its next CONNECT.
    let (s, b) = e
        .call(
            Method::PUT,
            "/api/v1/bans",
            Some(&root),
            Some(json!({"client_ids": ["evil"]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (_, bans) = e.call(Method::GET, "/api/v1/bans", Some(&root), None).await;
    assert_eq!(bans["client_ids"], json!(["evil"]));
    let (_stream, ack) = common::connect_raw(e.mqtt, "evil").await;
    match ack {
        Packet::ConnAck(a) => assert_eq!(a.code, messs_codec::ReasonCode::Banned),
        other => panic!("{other:?}"),
    }
    let (s, b) = e
        .call(
            Method::PUT,
            "/api/v1/bans",
            Some(&root),
            Some(json!({"addresses": ["not-an-ip"]})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");

    // Limits, reload, checkpoint.
    let (s, l) = e
        .call(Method::GET, "/api/v1/limits", Some(&root), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(l["rate_limits"]["messages_per_sec"].is_u64(), "{l}");
    let (s, _) = e
        .call(Method::POST, "/api/v1/operations/reload", Some(&root), None)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "started without a file");
    let (s, b) = e
        .call(
            Method::POST,
            "/api/v1/operations/checkpoint",
            Some(&root),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(std::fs::read_dir(&backup_dir).unwrap().count(), 1);
}

#[tokio::test]
async fn https_serves_tls13_only() {
    use tokio_rustls::rustls;
    static V13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
    static V12: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (cert_file, key_file) = (dir.path().join("admin.pem"), dir.path().join("admin.key"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let (cf, kf) = (cert_file.clone(), key_file.clone());
    let e = env(move |c| {
        c.admin.cert_file = Some(cf);
        c.admin.key_file = Some(kf);
    })
    .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let prepared = messs_admin::prepare(listener, e.handle.clone(), Default::default()).unwrap();
    assert!(prepared.is_https());
    let server = tokio::spawn(prepared.run(async {
        let _ = stopped.await;
    }));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let connect = |versions: &'static [&'static rustls::SupportedProtocolVersion]| {
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
    };
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    // A TLS 1.3 client gets an answer, with the security headers.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = connect(V13).connect(name.clone(), tcp).await.unwrap();
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tls.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("strict-transport-security"), "{response}");
    assert!(response.ends_with("ok\n"), "{response}");
    // A TLS 1.2 client is refused in the handshake.
    let tcp = TcpStream::connect(addr).await.unwrap();
    assert!(connect(V12).connect(name, tcp).await.is_err());
    // A plain HTTP request gets no answer.
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let got = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut buf)).await;
    assert!(
        !String::from_utf8_lossy(&buf).contains("200"),
        "{got:?}: {buf:?}"
    );
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_and_anonymous_requests_leave_no_audit_trail() {
    let e = env(|c| {
        c.admin.max_connections = 2;
        c.admin.idle_timeout_secs = 2;
    })
    .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let prepared = messs_admin::prepare(listener, e.handle.clone(), Default::default()).unwrap();
    tokio::spawn(prepared.run(std::future::pending()));
    let get = |mut s: TcpStream| async move {
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    };
    // Two idle connections take both places; a third is not served until one closes.
    let idle1 = TcpStream::connect(addr).await.unwrap();
    let idle2 = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let third = tokio::spawn(get(TcpStream::connect(addr).await.unwrap()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!third.is_finished(), "served beyond max_connections");
    drop(idle1);
    let answer = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .unwrap()
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // A connection that says nothing is closed after the idle timeout, giving its place back.
    let mut idle2 = idle2;
    let mut buf = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(5), idle2.read(&mut buf))
        .await
        .expect("an idle connection stays open past idle_timeout_secs");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");

    // Anonymous requests that would change something get 401 and no audit record.
    let (root, _, _) = e.ready("admin", ADMIN_PASSWORD).await;
    // Read once the writer has stored the login's own records (appended without waiting).
    let before = audit_log(&e, &root).await;
    for _ in 0..20 {
        let (s, _) = e
            .call(
                Method::POST,
                "/api/v1/tenants",
                None,
                Some(json!({"id": "x"})),
            )
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    let after = audit_log(&e, &root).await;
    assert_eq!(
        after.len(),
        before.len(),
        "{:?}",
        &after[before.len().min(after.len())..]
    );
}

#[tokio::test]
async fn cors_answers_only_the_configured_origins() {
    let e = env(|c| c.admin.cors_origins = vec!["https://ops.example".into()]).await;
    let preflight = |origin: &'static str| {
        Request::builder()
            .method(Method::OPTIONS)
            .uri("/api/v1/tenants")
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .body(Body::empty())
            .unwrap()
    };
    let res = e
        .app
        .clone()
        .oneshot(preflight("https://ops.example"))
        .await
        .unwrap();
    assert_eq!(
        res.headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap()),
        Some("https://ops.example")
    );
    let res = e
        .app
        .clone()
        .oneshot(preflight("https://evil.example"))
        .await
        .unwrap();
    assert!(!res.headers().contains_key("access-control-allow-origin"));
}

/// Every audit record, once the writer has caught up (two reads in a row agree).
async fn audit_log(e: &Env, token: &str) -> Vec<Value> {
    let read = || async {
        let mut out = Vec::new();
        let mut from = 1u64;
        loop {
            let (s, page) = e
                .call(
                    Method::GET,
                    &format!("/api/v1/audit?limit=1000&from={from}"),
                    Some(token),
                    None,
                )
                .await;
            assert_eq!(s, StatusCode::OK, "{page}");
            out.extend(page["items"].as_array().unwrap().iter().cloned());
            match page["next"].as_u64() {
                Some(n) => from = n,
                None => return out,
            }
        }
    };
    let mut last = read().await;
    loop {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let now = read().await;
        // The read itself may add records (an `admin.audit.suppressed` summary); the
        // anonymous ones of the test are what must settle.
        let anon = |v: &[Value]| v.iter().filter(|r| r["actor"] == "anonymous").count();
        if anon(&now) == anon(&last) && now.len() <= last.len() + 1 {
            return now;
        }
        last = now;
    }
}

fn detail_bytes(log: &[Value]) -> usize {
    log.iter()
        .map(|r| r["detail"].as_str().unwrap().len() + r["actor"].as_str().unwrap().len())
        .sum()
}

/// The audit's attacker: a key scoped to `api-keys:write` tries to mint itself more than it
/// has (broader scopes, a longer life, a deeper chain), and the keys it minted must fall
/// with it.
#[tokio::test]
async fn a_key_cannot_mint_a_key_with_more_than_it_has() {
    let e = env(|_| {}).await;
    let (root, _, _) = e.ready("admin", ADMIN_PASSWORD).await;
    let make = |scopes: Value, secs: u64| json!({"name": "auto", "role": "superadmin", "tenant": null, "scopes": scopes, "expires_in_secs": secs});
    let mint = |token: String, body: Value| {
        let e = &e;
        async move {
            e.call(Method::POST, "/api/v1/api-keys", Some(&token), Some(body))
                .await
        }
    };
    let (s, parent) = mint(root.clone(), make(json!(["api-keys:write"]), 3600)).await;
    assert_eq!(s, StatusCode::CREATED, "{parent}");
    let pkey = parent["key"].as_str().unwrap().to_owned();
    let pid = parent["info"]["id"].as_str().unwrap().to_owned();
    let parent_expires = parent["info"]["expires_ms"].as_u64().unwrap();

    // Broader scopes: refused with 403, and nothing is stored.
    for scopes in [
        json!(["write"]),
        json!(["read"]),
        json!(["admins:write"]),
        json!(["api-keys:write", "devices:read"]),
    ] {
        let (s, b) = mint(pkey.clone(), make(scopes.clone(), 60)).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{scopes}: {b}");
        assert!(b["message"].as_str().unwrap().contains("scope"), "{b}");
    }
    // A longer life: refused with 400 naming the latest allowed, not clipped.
    let (s, b) = mint(pkey.clone(), make(json!(["api-keys:write"]), 7200)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    assert!(b["message"].as_str().unwrap().contains("at most"), "{b}");
    let (_, list) = e
        .call(Method::GET, "/api/v1/api-keys", Some(&root), None)
        .await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list}");

    // What it has, for less time: allowed; `api-keys:write` implies `api-keys:read`.
    let (s, child) = mint(pkey.clone(), make(json!(["api-keys:write"]), 600)).await;
    assert_eq!(s, StatusCode::CREATED, "{child}");
    assert!(child["info"]["expires_ms"].as_u64().unwrap() <= parent_expires);
    let ckey = child["key"].as_str().unwrap().to_owned();
    let cid = child["info"]["id"].as_str().unwrap().to_owned();
    let (s, b) = mint(pkey.clone(), make(json!(["api-keys:read"]), 60)).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");

    // The child cannot make a superadmin account, nor widen itself either.
    let (s, b) = e
        .call(
            Method::POST,
            "/api/v1/admins",
            Some(&ckey),
            Some(json!({"username": "mallory", "password": "Mallory-long-pass-77", "role": "superadmin", "tenant": null})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    let (s, _) = mint(ckey.clone(), make(json!(["write"]), 60)).await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // The chain is at most four generations deep.
    let (s, g3) = mint(ckey.clone(), make(json!(["api-keys:write"]), 300)).await;
    assert_eq!(s, StatusCode::CREATED, "{g3}");
    let g3key = g3["key"].as_str().unwrap().to_owned();
    let (s, g4) = mint(g3key.clone(), make(json!(["api-keys:write"]), 200)).await;
    assert_eq!(s, StatusCode::CREATED, "{g4}");
    let g4key = g4["key"].as_str().unwrap().to_owned();
    let (s, b) = mint(g4key.clone(), make(json!(["api-keys:read"]), 100)).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "a fifth generation: {b}");

    // The audit log says what each mint granted and from which key, never the secret.
    let log = audit_log(&e, &root).await;
    let grant = log
        .iter()
        .find(|r| r["action"] == "api_key.create" && r["detail"].as_str().unwrap().contains(&cid))
        .unwrap_or_else(|| panic!("no grant record for {cid}: {log:?}"));
    assert_eq!(grant["actor"], format!("key:{pid}"));
    let detail = grant["detail"].as_str().unwrap();
    for want in [
        "role superadmin",
        "tenant none",
        "scopes [api-keys:write]",
        "expires",
        &format!("parent {pid}"),
    ] {
        assert!(detail.contains(want), "{want:?} missing from {detail:?}");
    }
    assert!(
        !detail.contains(ckey.rsplit('.').next().unwrap()),
        "{detail}"
    );

    // Revoking the parent revokes everything it minted, transitively.
    let (s, _) = e
        .call(
            Method::DELETE,
            &format!("/api/v1/api-keys/{pid}"),
            Some(&root),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    for k in [&pkey, &ckey, &g3key, &g4key] {
        assert_eq!(
            e.call(Method::GET, "/api/v1/api-keys", Some(k), None)
                .await
                .0,
            StatusCode::UNAUTHORIZED
        );
    }
    let (_, list) = e
        .call(Method::GET, "/api/v1/api-keys", Some(&root), None)
        .await;
    assert_eq!(list["items"].as_array().unwrap().len(), 0, "{list}");
    let log = audit_log(&e, &root).await;
    let revoke = log
        .iter()
        .find(|r| r["action"] == "api_key.revoke")
        .unwrap_or_else(|| panic!("no revoke record: {log:?}"));
    let detail = revoke["detail"].as_str().unwrap();
    assert!(detail.contains(&pid) && detail.contains(&cid), "{detail}");

    // Defence in depth: a key whose parent is gone (removed behind the API's back) does
    // not authenticate.
    let (_, p2) = mint(root.clone(), make(json!(["api-keys:write"]), 3600)).await;
    let p2key = p2["key"].as_str().unwrap().to_owned();
    let (s, c2) = mint(p2key, make(json!(["api-keys:read"]), 60)).await;
    assert_eq!(s, StatusCode::CREATED, "{c2}");
    let c2key = c2["key"].as_str().unwrap().to_owned();
    assert_eq!(
        e.call(Method::GET, "/api/v1/api-keys", Some(&c2key), None)
            .await
            .0,
        StatusCode::OK
    );
    let p2id = p2["info"]["id"].as_str().unwrap();
    let raw: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&p2id[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let store = e.handle.store().unwrap();
    assert!(store.delete_api_key(&raw.try_into().unwrap()).unwrap());
    assert_eq!(
        e.call(Method::GET, "/api/v1/api-keys", Some(&c2key), None)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
}

/// The audit's attacker: anonymous logins with a 1 MB username, beyond the per-address
/// rate limit, used to write each username into the audit log in full.
#[tokio::test]
async fn rate_limited_logins_with_huge_usernames_barely_grow_the_audit_log() {
    let e = env(|c| {
        c.admin.max_body_bytes = 4 << 20;
        c.admin.login_attempts_per_minute = 3;
    })
    .await;
    let (root, _, _) = e.ready("admin", ADMIN_PASSWORD).await;
    let before = audit_log(&e, &root).await;
    let huge = "\u{1b}[31m".to_owned() + &"x".repeat(1 << 20);
    let body = json!({"username": huge, "password": "whatever"});
    let mut limited = 0;
    for _ in 0..24 {
        let (s, _) = e
            .call_from(
                [10, 9, 9, 9],
                Method::POST,
                "/api/v1/auth/login",
                None,
                Some(body.clone()),
            )
            .await;
        assert!(
            s == StatusCode::TOO_MANY_REQUESTS || s == StatusCode::UNAUTHORIZED,
            "{s}"
        );
        limited += usize::from(s == StatusCode::TOO_MANY_REQUESTS);
    }
    assert!(limited >= 20, "{limited}");
    let after = audit_log(&e, &root).await;
    let grown = detail_bytes(&after) - detail_bytes(&before);
    assert!(grown <= 4096, "24 anonymous logins wrote {grown} bytes");
    let new = &after[before.len()..];
    assert!(
        new.iter()
            .any(|r| r["action"] == "admin.login.rate_limited"),
        "{new:?}"
    );
    for r in new {
        let d = r["detail"].as_str().unwrap();
        assert!(
            !d.contains('\u{1b}'),
            "an escape sequence reached the log: {d:?}"
        );
    }
}

/// Failed logins beyond the anonymous audit budget (60 a minute by default) are counted,
/// then written as one aggregated record, and counted in /metrics.
#[tokio::test]
async fn failed_logins_beyond_the_budget_leave_one_aggregated_record() {
    let e = env(|c| {
        // Cheap hashes: the flood is about the log, not argon2.
        c.auth.argon2_memory_kib = 8;
        c.auth.argon2_iterations = 1;
    })
    .await;
    let (root, _, _) = e.ready("admin", ADMIN_PASSWORD).await;
    let before = audit_log(&e, &root).await;
    let flood = 100;
    let started = std::time::Instant::now();
    for i in 0..flood {
        let body = json!({"username": format!("nobody{i}"), "password": "wrong password!!"});
        let (s, _) = e
            .call_from(
                [10, 7, 7, 7],
                Method::POST,
                "/api/v1/auth/login",
                None,
                Some(body),
            )
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    let secs = started.elapsed().as_secs() as usize;
    let after = audit_log(&e, &root).await;
    let new = &after[before.len()..];
    let failed = new
        .iter()
        .filter(|r| r["action"] == "admin.login.failed")
        .count();
    let summaries: Vec<&Value> = new
        .iter()
        .filter(|r| r["action"] == "admin.audit.suppressed")
        .collect();
    assert!(
        failed <= 60 + secs + 1,
        "{failed} failed logins recorded one by one"
    );
    assert_eq!(summaries.len(), 1, "{new:?}");
    let detail = summaries[0]["detail"].as_str().unwrap();
    let suppressed = flood - failed;
    assert!(
        detail.starts_with(&format!("{suppressed} unauthenticated events"))
            && detail.contains(&format!("{suppressed} failed logins")),
        "{detail}"
    );
    let res = e
        .app
        .clone()
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let text =
        String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(
        text.contains(&format!(
            "messs_admin_audit_suppressed_total{{event=\"failed_login\"}} {suppressed}"
        )),
        "{text}"
    );
}
